package driver

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ociShimEnv marks a process started by the OCI driver as the shim of the
// instance whose directory is its value.
const ociShimEnv = "MERIDIAN_OCI_SHIM_DIR"

// Files of an OCI instance directory (besides those of the Process
// driver's: spec.json, state.json, exit.json, output.log, shim.log).
const (
	fileShimConfig = "shim.json"  // what the shim runs
	fileInitPid    = "init.pid"   // the container's init pid, written by runc
	fileRuncLog    = "runc.log"   // runc's own log (JSON lines)
	fileImage      = "image.json" // the image the instance runs, pinned
	fileHosts      = "hosts"      // bind-mounted on /etc/hosts
	fileHostname   = "hostname"   // bind-mounted on /etc/hostname
	dirBundle      = "bundle"     // the OCI bundle (config.json)
	dirRootfs      = "rootfs"     // the overlay the container runs in
	dirOverlay     = "overlay"    // upper/ (the instance's writes) and work/
)

// ociShimConfig is what the OCI shim runs, in shim.json.
type ociShimConfig struct {
	ID          string `json:"id"`
	Runc        string `json:"runc"`
	RuncRoot    string `json:"runc_root"`
	Bundle      string `json:"bundle"`
	Rootfs      string `json:"rootfs"`
	LogMaxBytes int64  `json:"log_max_bytes"`
	// MemoryCgroup is the container's cgroup v1 memory directory, read
	// for OOM kills before runc removes it.
	MemoryCgroup string `json:"memory_cgroup,omitempty"`
}

// runOCIShim is the OCI driver's instance shim. It is a child subreaper:
// it runs "runc run --detach" with the write ends of two pipes as the
// container's stdout and stderr (runc passes them through), so the
// container's init is reparented to the shim when runc exits. The shim
// answers the driver with the init's pid, writes the container's output to
// the bounded instance log in the Process driver's format, reaps the init
// when it exits, reads the memory cgroup's OOM kill count, has runc delete
// the container (its state and cgroups) and unmounts its root, records the
// exit status, and exits with it. The workload survives the agent.
func runOCIShim(dir string) int {
	syscall.CloseOnExec(shimSyncIn)
	syscall.CloseOnExec(shimSyncOut)
	out := os.NewFile(shimSyncOut, "sync-out")
	fail := func(format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		fmt.Fprintf(os.Stderr, "meridian oci shim: %s\n", msg)
		fmt.Fprintf(out, "err %s\n", strings.ReplaceAll(msg, "\n", " "))
		out.Close()
		return 1
	}
	var cfg ociShimConfig
	if err := readJSONFile(filepath.Join(dir, fileShimConfig), &cfg); err != nil {
		return fail("read shim config: %v", err)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fail("become a subreaper: %v", err)
	}
	logf, err := openRotatingLog(filepath.Join(dir, fileLog), cfg.LogMaxBytes)
	if err != nil {
		return fail("%v", err)
	}
	in := os.NewFile(shimSyncIn, "sync-in")
	word, _ := io.ReadAll(io.LimitReader(in, 16))
	in.Close()
	if strings.TrimSpace(string(word)) != "go" {
		fmt.Fprintln(os.Stderr, "meridian oci shim: driver went away before starting the container")
		return 1
	}
	outR, outW, err := blockingPipe()
	if err != nil {
		return fail("%v", err)
	}
	errR, errW, err := blockingPipe()
	if err != nil {
		return fail("%v", err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail("open %s: %v", os.DevNull, err)
	}
	stdout, stderr := os.NewFile(uintptr(outW), "stdout"), os.NewFile(uintptr(errW), "stderr")
	runcLog := filepath.Join(dir, fileRuncLog)
	_ = os.Remove(runcLog)
	run := exec.Command(cfg.Runc, "--root", cfg.RuncRoot, "--log", runcLog, "--log-format", "json",
		"run", "--detach", "--pid-file", filepath.Join(dir, fileInitPid), "--bundle", cfg.Bundle, cfg.ID)
	run.Stdin, run.Stdout, run.Stderr = devnull, stdout, stderr
	// Let the OOM killer prefer the container over its shim (and runc,
	// which passes the score to the container: set it back there).
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-999"), 0)

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
	runErr := run.Run()
	stdout.Close()
	stderr.Close()
	devnull.Close()
	if runErr != nil {
		// runc printed its error on the container's stderr too: the
		// instance log has it.
		ociCleanup(cfg)
		return fail("runc run: %s", runcError(runcLog, runErr))
	}
	b, err := os.ReadFile(filepath.Join(dir, fileInitPid))
	init, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || perr != nil || init <= 0 {
		ociCleanup(cfg)
		return fail("runc run: no init pid in %s (%v)", fileInitPid, err)
	}
	_ = os.WriteFile("/proc/"+strconv.Itoa(init)+"/oom_score_adj", []byte("0"), 0)
	fmt.Fprintf(out, "ok %d\n", init)
	out.Close()

	// Reap until the container's init exits: it is our child now, and so
	// is anything else orphaned under us.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGCHLD)
	reapTick := time.NewTicker(2 * time.Second)
	var status syscall.WaitStatus
	for exited := false; !exited; {
		select {
		case <-sigs:
		case <-reapTick.C:
		}
		if ws, ok := reapChildren(init); ok {
			status, exited = ws, true
		}
	}
	exitedAt := time.Now()
	reapTick.Stop()
	// The init was the PID 1 of the container's namespace: the kernel
	// killed the rest, which closes the pipes.
	drainLogs(&copying, logf, "meridian oci shim")

	es, code := shimExit(status, exitedAt)
	if cfg.MemoryCgroup != "" && oomKills(cfg.MemoryCgroup) > 0 {
		es.OOMKilled = true
	}
	ociCleanup(cfg)
	if err := writeJSONFile(filepath.Join(dir, fileExit), es); err != nil {
		fmt.Fprintf(os.Stderr, "meridian oci shim: %v\n", err)
	}
	return code
}

// ociCleanup has runc delete the container (killing what still runs, and
// removing its state and cgroups) and unmounts its root filesystem.
func ociCleanup(cfg ociShimConfig) {
	if out, err := exec.Command(cfg.Runc, "--root", cfg.RuncRoot, "delete", "--force", cfg.ID).CombinedOutput(); err != nil &&
		!strings.Contains(string(out), "does not exist") {
		fmt.Fprintf(os.Stderr, "meridian oci shim: runc delete: %v: %s\n", err, out)
	}
	if err := unmountAll(cfg.Rootfs); err != nil {
		fmt.Fprintf(os.Stderr, "meridian oci shim: %v\n", err)
	}
}

// unmountAll unmounts path until nothing is mounted there.
func unmountAll(path string) error {
	for range 8 {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err == unix.EINVAL || err == unix.ENOENT {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted", path)
}

// runcError returns the last error runc logged, else err.
func runcError(logPath string, err error) string {
	f, ferr := os.Open(logPath)
	if ferr != nil {
		return err.Error()
	}
	defer f.Close()
	last := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && (l.Level == "error" || l.Level == "fatal") && l.Msg != "" {
			last = l.Msg
		}
	}
	if last == "" {
		return err.Error()
	}
	return last
}
