package driver

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// shimEnv marks a process started by the Process driver as the shim of the
// instance whose directory is its value.
const shimEnv = "MERIDIAN_DRIVER_SHIM_DIR"

// File descriptors the driver hands the shim: the shim reads "go" on
// shimSyncIn once the driver has put it in its cgroup, and answers on
// shimSyncOut with "ok <pid>" or "err <message>".
const (
	shimSyncIn  = 3
	shimSyncOut = 4
)

// Files of an instance directory.
const (
	fileSpec   = "spec.json"   // the resolved spec, read by the shim
	fileState  = "state.json"  // pid and start time, read by Recover
	fileExit   = "exit.json"   // the workload's exit status, written by the shim
	fileResolv = "resolv.conf" // bind-mounted on /etc/resolv.conf
	fileLog    = "output.log"  // the workload's stdout and stderr
	fileShim   = "shim.log"    // the shim's own stderr
	dirWork    = "work"        // default working directory
)

// forwardedSignals are the signals the shim passes on to the workload.
var forwardedSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// forwardable reports whether Handle.Signal can deliver sig.
func forwardable(sig os.Signal) bool {
	return sig == syscall.SIGKILL || slices.Contains(forwardedSignals, sig)
}

// defaultPath is the PATH used to look up a command when the spec's env sets
// none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// MaybeRunShim runs the instance shim and exits if this process was started
// by the Process driver (or the OCI driver, see runOCIShim) as one; otherwise it returns at once. Programs that
// use the Process driver with its default shim (/proc/self/exe) call it first
// thing in main, and tests in TestMain.
//
// The shim is the instance's PID 1. Inside the instance's new namespaces it
// makes all mounts private, mounts a fresh /proc, bind-mounts the instance's
// resolv.conf on /etc/resolv.conf, sets the host name and changes directory;
// once the driver says go, it starts the workload, forwards SIGTERM, SIGINT,
// SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, reaps every zombie, writes the
// workload's stdout and stderr to the bounded instance log, and when the
// workload exits, kills what is left in the namespace, records the exit
// status in the instance directory and exits with it (128+signal when the
// workload was killed by a signal).
func MaybeRunShim() {
	if dir := os.Getenv(ociShimEnv); dir != "" {
		os.Exit(runOCIShim(dir)) // the OCI driver's shim
	}
	dir := os.Getenv(shimEnv)
	if dir == "" {
		return
	}
	os.Exit(runShim(dir))
}

func runShim(dir string) int {
	syscall.CloseOnExec(shimSyncIn)
	syscall.CloseOnExec(shimSyncOut)
	out := os.NewFile(shimSyncOut, "sync-out")
	fail := func(format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		fmt.Fprintf(os.Stderr, "meridian shim: %s\n", msg)
		fmt.Fprintf(out, "err %s\n", strings.ReplaceAll(msg, "\n", " "))
		out.Close()
		return 1
	}

	b, err := os.ReadFile(filepath.Join(dir, fileSpec))
	if err != nil {
		return fail("read spec: %v", err)
	}
	var spec Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fail("read spec: %v", err)
	}
	if err := shimSetup(dir, spec); err != nil {
		return fail("%v", err)
	}
	prog, err := lookProgram(spec.Command[0], spec.Env, spec.WorkDir)
	if err != nil {
		return fail("spec.command[0]: %v", err)
	}
	logf, err := openRotatingLog(filepath.Join(dir, fileLog), spec.LogMaxBytes)
	if err != nil {
		return fail("%v", err)
	}

	// Wait for the driver: it puts this process in its cgroup first, so the
	// workload is born inside it.
	in := os.NewFile(shimSyncIn, "sync-in")
	word, _ := io.ReadAll(io.LimitReader(in, 16))
	in.Close()
	if strings.TrimSpace(string(word)) != "go" {
		fmt.Fprintln(os.Stderr, "meridian shim: driver went away before starting the workload")
		return 1
	}

	// Let the OOM killer prefer the workload over its shim; the workload
	// gets the normal score back below. Best effort.
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-999"), 0)

	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, append(forwardedSignals[:len(forwardedSignals):len(forwardedSignals)], syscall.SIGCHLD)...)

	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail("open %s: %v", os.DevNull, err)
	}
	outR, outW, err := blockingPipe()
	if err != nil {
		return fail("%v", err)
	}
	errR, errW, err := blockingPipe()
	if err != nil {
		return fail("%v", err)
	}
	argv := append(append([]string{}, spec.Command...), spec.Args...)
	sys := &syscall.SysProcAttr{Setsid: true}
	if spec.User != nil {
		sys.Credential = &syscall.Credential{Uid: spec.User.UID, Gid: spec.User.GID, Groups: []uint32{}}
	}
	workDir := spec.WorkDir
	if spec.MountedWorkDir != "" {
		workDir = spec.MountedWorkDir
	}
	child, err := syscall.ForkExec(prog, argv, &syscall.ProcAttr{
		Dir:   workDir,
		Env:   spec.Env,
		Files: []uintptr{devnull.Fd(), uintptr(outW), uintptr(errW)},
		Sys:   sys,
	})
	syscall.Close(outW)
	syscall.Close(errW)
	devnull.Close()
	if err != nil {
		return fail("start %s: %v", prog, err)
	}
	_ = os.WriteFile("/proc/"+strconv.Itoa(child)+"/oom_score_adj", []byte("0"), 0)
	fmt.Fprintf(out, "ok %d\n", child)
	out.Close()

	var copying sync.WaitGroup
	for _, s := range []struct {
		fd     int
		stream string
	}{{outR, "stdout"}, {errR, "stderr"}} {
		copying.Add(1)
		f := os.NewFile(uintptr(s.fd), s.stream)
		go func() {
			defer copying.Done()
			defer f.Close()
			copyLines(logf, s.stream, f)
		}()
	}

	// A SIGCHLD may be lost when the channel is full; the ticker makes sure
	// zombies are reaped anyway.
	reapTick := time.NewTicker(2 * time.Second)
	var status syscall.WaitStatus
	exited := false
	for !exited {
		select {
		case sig := <-sigs:
			if sig != syscall.SIGCHLD {
				_ = syscall.Kill(child, sig.(syscall.Signal))
				continue
			}
		case <-reapTick.C:
		}
		if ws, ok := reapChildren(child); ok {
			status, exited = ws, true
		}
	}
	exitedAt := time.Now()
	signal.Stop(sigs)
	reapTick.Stop()

	// The workload is gone: kill everything left in the namespace (the shim
	// itself is spared by kill(-1)), reap it, and drain the pipes.
	_ = syscall.Kill(-1, syscall.SIGKILL)
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			break
		}
	}
	drainLogs(&copying, logf, "meridian shim")

	es, code := shimExit(status, exitedAt)
	if err := writeJSONFile(filepath.Join(dir, fileExit), es); err != nil {
		fmt.Fprintf(os.Stderr, "meridian shim: %v\n", err)
	}
	return code
}

// shimSetup prepares the namespaces the shim was born in.
func shimSetup(dir string, spec Spec) error {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if spec.ResolvConf != "" {
		src := filepath.Join(dir, fileResolv)
		if err := syscall.Mount(src, "/etc/resolv.conf", "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("spec.resolv_conf: bind-mount on /etc/resolv.conf: %w", err)
		}
		if err := syscall.Mount("", "/etc/resolv.conf", "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("spec.resolv_conf: make /etc/resolv.conf read-only: %w", err)
		}
	}
	if err := syscall.Sethostname([]byte(spec.Hostname)); err != nil {
		return fmt.Errorf("spec.hostname: %w", err)
	}
	if spec.MountedWorkDir != "" {
		if err := syscall.Mount(spec.WorkDir, spec.MountedWorkDir, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("spec.user: bind-mount the working directory on %s: %w", spec.MountedWorkDir, err)
		}
	}
	if err := os.Chdir(spec.WorkDir); err != nil {
		return fmt.Errorf("spec.work_dir: %w", err)
	}
	return nil
}

// blockingPipe returns a pipe whose write end is blocking (it becomes the
// workload's stdout or stderr) and whose read end is non-blocking, for the
// shim's poller.
func blockingPipe() (r, w int, err error) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return 0, 0, fmt.Errorf("pipe: %w", err)
	}
	if err := syscall.SetNonblock(p[0], true); err != nil {
		syscall.Close(p[0])
		syscall.Close(p[1])
		return 0, 0, fmt.Errorf("pipe: %w", err)
	}
	return p[0], p[1], nil
}

// lookProgram finds prog as a shell would: as given if it holds a slash
// (relative to workDir), else in the PATH of env.
func lookProgram(prog string, env []string, workDir string) (string, error) {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", p)
		}
		return nil
	}
	if strings.Contains(prog, "/") {
		p := prog
		if !filepath.IsAbs(p) {
			p = filepath.Join(workDir, p)
		}
		if err := check(p); err != nil {
			return "", err
		}
		return p, nil
	}
	path := defaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(workDir, d)
		}
		p := filepath.Join(d, prog)
		if check(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %q", prog, path)
}

// writeJSONFile writes v to path atomically (temporary file and rename).
func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil { // specs hold secret values
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

// readJSONFile reads path into v.
func readJSONFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", filepath.Base(path), err)
	}
	return nil
}

// readShimLog returns the last lines of the shim's own log, for errors.
func readShimLog(dir string) string {
	f, err := os.Open(filepath.Join(dir, fileShim))
	if err != nil {
		return ""
	}
	defer f.Close()
	var last []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		last = append(last, sc.Text())
		if len(last) > 5 {
			last = last[1:]
		}
	}
	return strings.Join(last, "; ")
}

var errShimGone = errors.New("shim exited without answering")
