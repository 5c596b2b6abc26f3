package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func bgCtx() context.Context { return context.Background() }

// testCtx is bounded so a hung process fails the test instead of hanging it.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newTestDriver returns a Process driver on a fresh data dir whose
// instances are cleaned up at the end of the test.
func newTestDriver(t testing.TB, cfg ProcessConfig) *Process {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.ShimEnv = append(cfg.ShimEnv, raceEnv)
	p, err := NewProcess(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ids, _ := p.List(bgCtx())
		for _, id := range ids {
			if err := p.Destroy(bgCtx(), id); err != nil {
				t.Errorf("destroy %s: %v", id, err)
			}
		}
	})
	return p
}

// uniqueID makes instance ids unique per test run, since cgroups are
// machine-wide.
func uniqueID(t testing.TB, name string) string {
	return fmt.Sprintf("t%d-%s", os.Getpid(), name)
}

func start(t testing.TB, p *Process, spec Spec) Handle {
	t.Helper()
	h, err := p.Start(testCtx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func wait(t testing.TB, h Handle) ExitStatus {
	t.Helper()
	es, err := h.Wait(testCtx(t))
	if err != nil {
		t.Fatalf("wait for %s: %v", h.ID(), err)
	}
	return es
}

func TestIsolation(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	hostBefore, _ := os.Hostname()
	resolvBefore, _ := os.ReadFile("/etc/resolv.conf")
	spec := workloadSpec(t, uniqueID(t, "iso"), "info")
	spec.Env = append(spec.Env, "FOO=bar baz")
	spec.Hostname = "meridian-iso"
	spec.ResolvConf = "nameserver 192.0.2.53\nsearch internal\n"
	h := start(t, p, spec)
	es := wait(t, h)
	if !es.Success() {
		t.Fatalf("exit status %v; log %+v", es, readLog(t, h.LogPath()))
	}
	e := waitLog(t, h.LogPath(), func(e LogEntry) bool { return strings.HasPrefix(e.Text, "{") })
	if e.Stream != "stdout" {
		t.Errorf("stream = %q, want stdout", e.Stream)
	}
	var wi workloadInfo
	if err := json.Unmarshal([]byte(e.Text), &wi); err != nil {
		t.Fatal(err)
	}
	// The shim is PID 1; its threads take the next few ids.
	if wi.Pid < 2 || wi.Pid > 64 || wi.PPid != 1 {
		t.Errorf("pid %d ppid %d inside, want a small pid whose parent is 1 (the shim)", wi.Pid, wi.PPid)
	}
	if !slices.Equal(wi.ProcPids, []int{1, wi.Pid}) {
		t.Errorf("/proc inside shows pids %v, want [1 %d]: the shim and the workload", wi.ProcPids, wi.Pid)
	}
	if wi.Hostname != "meridian-iso" {
		t.Errorf("hostname inside = %q", wi.Hostname)
	}
	if wi.Resolv != spec.ResolvConf {
		t.Errorf("/etc/resolv.conf inside = %q, want %q", wi.Resolv, spec.ResolvConf)
	}
	if !slices.Equal(wi.Env, spec.Env) {
		t.Errorf("env inside = %q, want exactly %q", wi.Env, spec.Env)
	}
	if want := filepath.Join(p.cfg.DataDir, spec.ID, "work"); wi.Cwd != want {
		t.Errorf("cwd inside = %q, want %q", wi.Cwd, want)
	}
	if h, _ := os.Hostname(); h != hostBefore {
		t.Errorf("host name changed to %q", h)
	}
	if b, _ := os.ReadFile("/etc/resolv.conf"); !bytes.Equal(b, resolvBefore) {
		t.Errorf("host resolv.conf changed")
	}
}

func TestWorkDirAndPathLookup(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	bin := t.TempDir()
	if err := os.Symlink(testExe(t), filepath.Join(bin, "wl")); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	spec := Spec{ID: uniqueID(t, "path"), Command: []string{"wl", "info"}, WorkDir: work,
		Env: []string{workloadEnv + "=1", raceEnv, "PATH=/nonexistent:" + bin}}
	h := start(t, p, spec)
	if es := wait(t, h); !es.Success() {
		t.Fatalf("exit %v", es)
	}
	var wi workloadInfo
	e := waitLog(t, h.LogPath(), func(e LogEntry) bool { return strings.HasPrefix(e.Text, "{") })
	if err := json.Unmarshal([]byte(e.Text), &wi); err != nil {
		t.Fatal(err)
	}
	if wi.Cwd != work {
		t.Errorf("cwd = %q, want %q", wi.Cwd, work)
	}
	if wi.Hostname != spec.ID {
		t.Errorf("default hostname = %q, want the id %q", wi.Hostname, spec.ID)
	}
}

// TestFilesArePrivate: an instance's spec (which holds its secrets'
// values) and its logs are readable by the agent's user only, and so are
// the directories holding them.
func TestFilesArePrivate(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "instances")
	if err := os.MkdirAll(dataDir, 0o755); err != nil { // as an older version left it
		t.Fatal(err)
	}
	p := newTestDriver(t, ProcessConfig{DataDir: dataDir})
	spec := Spec{ID: uniqueID(t, "private"), Command: []string{testExe(t), "info"},
		Env: []string{workloadEnv + "=1", raceEnv, "DB_PASSWORD=hunter2"}}
	h := start(t, p, spec)
	if es := wait(t, h); !es.Success() {
		t.Fatalf("exit %v", es)
	}
	dir := filepath.Join(dataDir, spec.ID)
	for path, want := range map[string]os.FileMode{dataDir: 0o700, dir: 0o700, filepath.Join(dir, fileSpec): 0o600,
		filepath.Join(dir, fileShim): 0o600, h.LogPath(): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
}

// TestRunAsUser: a workload with a User runs as that user, in its own
// working directory (mounted at UserWorkDir, writable by it), and cannot
// read its own instance's spec, which holds its secrets' values; root is
// refused as a User.
func TestRunAsUser(t *testing.T) {
	dataDir := t.TempDir()
	p := newTestDriver(t, ProcessConfig{DataDir: dataDir})
	// The workload binary where the user can reach it (the test's own
	// directories are closed to other users).
	binDir, err := os.MkdirTemp("", "meridian-user-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	exe, err := os.ReadFile(testExe(t))
	if err != nil {
		t.Fatal(err)
	}
	wl := filepath.Join(binDir, "wl")
	if err := os.WriteFile(wl, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	id := uniqueID(t, "user")
	user := &User{UID: 4000123, GID: 4000123}
	spec := Spec{ID: id, Command: []string{wl, "info"}, User: user,
		Env: []string{workloadEnv + "=1", raceEnv, "PROBE_PATH=" + filepath.Join(dataDir, id, fileSpec)}}
	h := start(t, p, spec)
	if es := wait(t, h); !es.Success() {
		t.Fatalf("exit %v: %v", es, readLog(t, h.LogPath()))
	}
	var wi workloadInfo
	e := waitLog(t, h.LogPath(), func(e LogEntry) bool { return strings.HasPrefix(e.Text, "{") })
	if err := json.Unmarshal([]byte(e.Text), &wi); err != nil {
		t.Fatal(err)
	}
	if wi.UID != int(user.UID) || wi.Cwd != UserWorkDir || !wi.CwdWritable {
		t.Fatalf("uid %d, cwd %q (writable %v); want uid %d in a writable %s", wi.UID, wi.Cwd, wi.CwdWritable, user.UID, UserWorkDir)
	}
	if !strings.Contains(wi.ProbeErr, "permission denied") {
		t.Fatalf("the workload read its spec (error %q)", wi.ProbeErr)
	}
	if _, err := os.Stat(filepath.Join(dataDir, id, dirWork, "written-by-workload")); err != nil {
		t.Fatalf("the file the workload wrote is not in its working directory: %v", err)
	}
	if _, err := p.Start(bgCtx(), Spec{ID: uniqueID(t, "root"), Command: []string{wl}, User: &User{UID: 0, GID: 0}}); err == nil ||
		!strings.Contains(err.Error(), "spec.user") {
		t.Fatalf("root as a User: %v, want an error naming spec.user", err)
	}
}

func TestStartErrors(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	notExec := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(notExec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		spec Spec
		want string
	}{
		{"bad id", Spec{ID: "../x", Command: []string{"true"}}, "spec.id"},
		{"no command", Spec{ID: "a"}, "spec.command"},
		{"image", Spec{ID: "a", Image: "reg/x:1", Command: []string{"true"}}, "spec.image"},
		{"bad env", Spec{ID: "a", Command: []string{"true"}, Env: []string{"NOEQUALS"}}, "spec.env[0]"},
		{"negative memory", Spec{ID: "a", Command: []string{"true"}, MemoryMB: -1}, "spec.memory_mb"},
		{"tiny log", Spec{ID: "a", Command: []string{"true"}, LogMaxBytes: 10}, "spec.log_max_bytes"},
		{"relative workdir", Spec{ID: "a", Command: []string{"true"}, WorkDir: "rel"}, "spec.work_dir"},
		{"not found", Spec{ID: uniqueID(t, "nf"), Command: []string{"no-such-program-xyz"}}, `spec.command[0]: "no-such-program-xyz" not found`},
		{"not executable", Spec{ID: uniqueID(t, "nx"), Command: []string{notExec}}, "spec.command[0]: " + notExec + " is not an executable file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := p.Start(testCtx(t), c.spec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
	// A failed first start leaves nothing behind.
	if ids, _ := p.List(bgCtx()); len(ids) != 0 {
		t.Errorf("instances left after failed starts: %v", ids)
	}
}

func TestExitStatusAndRestartKeepsLog(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	spec := workloadSpec(t, uniqueID(t, "exit"), "exit", "7")
	h := start(t, p, spec)
	es := wait(t, h)
	if es.Code != 7 || es.Signal != 0 || es.String() != "exited with status 7" {
		t.Fatalf("exit = %+v (%v), want status 7", es, es)
	}
	lines := readLog(t, h.LogPath())
	if len(lines) != 2 {
		t.Fatalf("log = %+v, want one stdout and one stderr line", lines)
	}
	got := map[string]string{}
	for _, l := range lines {
		got[l.Stream] = l.Text
	}
	if got["stdout"] != "bye on stdout" || got["stderr"] != "bye on stderr" {
		t.Errorf("log streams = %v", got)
	}
	if _, err := h.Stats(); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Stats after exit: %v", err)
	}

	// Start again under the same id: the log is appended to.
	h2 := start(t, p, spec)
	if es := wait(t, h2); es.Code != 7 {
		t.Fatalf("second run exit %v", es)
	}
	if n := len(readLog(t, h2.LogPath())); n != 4 {
		t.Errorf("log has %d lines after two runs, want 4", n)
	}
}

func TestStartWhileRunning(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	spec := workloadSpec(t, uniqueID(t, "dup"), "sleep")
	h := start(t, p, spec)
	if _, err := p.Start(testCtx(t), spec); !errors.Is(err, ErrExists) {
		t.Fatalf("second start: %v, want ErrExists", err)
	}
	if err := h.Signal(syscall.SIGWINCH); err == nil || !strings.Contains(err.Error(), "not one the shim forwards") {
		t.Errorf("SIGWINCH: %v, want a refusal", err)
	}
	if err := h.Stop(testCtx(t), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestLogBoundAndRotation(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	spec := workloadSpec(t, uniqueID(t, "log"), "spam", "200")
	const bound = 4096
	spec.LogMaxBytes = bound
	h := start(t, p, spec)
	if es := wait(t, h); !es.Success() {
		t.Fatalf("exit %v", es)
	}
	cur, err := os.Stat(h.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.Stat(h.LogPath() + ".1")
	if err != nil {
		t.Fatalf("no rotated log: %v", err)
	}
	if cur.Size() > bound || old.Size() > bound {
		t.Errorf("log sizes %d and %d, each must be <= %d", cur.Size(), old.Size(), bound)
	}
	if old.Size() < bound/2 {
		t.Errorf("rotated log has %d bytes, want it nearly full", old.Size())
	}
	entries := readLog(t, h.LogPath())
	if len(entries) == 0 || entries[len(entries)-1].Text != "last line" {
		t.Fatalf("the last line was not kept: %+v", entries)
	}
	for _, e := range entries[:len(entries)-1] {
		if !strings.HasPrefix(e.Text, "out ") || e.Stream != "stdout" {
			t.Fatalf("unexpected entry %+v", e)
		}
	}
	for i := 1; i < len(entries); i++ {
		if entries[i].Time.Before(entries[i-1].Time) {
			t.Fatalf("log entries out of order at %d", i)
		}
	}
}

func TestStopTermThenKill(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})

	t.Run("forwarded SIGTERM", func(t *testing.T) {
		h := start(t, p, workloadSpec(t, uniqueID(t, "term"), "term-exit"))
		waitLog(t, h.LogPath(), textIs("ready"))
		if err := h.Stop(testCtx(t), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if es := wait(t, h); es.Code != 3 {
			t.Fatalf("exit %v, want status 3 from the workload's SIGTERM handler", es)
		}
		waitLog(t, h.LogPath(), textIs("got SIGTERM"))
	})

	t.Run("SIGKILL after timeout", func(t *testing.T) {
		h := start(t, p, workloadSpec(t, uniqueID(t, "kill"), "ignore-term"))
		waitLog(t, h.LogPath(), textIs("ready"))
		begin := time.Now()
		if err := h.Stop(testCtx(t), 200*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		es := wait(t, h)
		if es.Signal != syscall.SIGKILL {
			t.Fatalf("exit %v, want killed by SIGKILL", es)
		}
		if d := time.Since(begin); d < 200*time.Millisecond {
			t.Fatalf("killed after %v, before the 200ms timeout", d)
		}
		if ok, _ := sameProcess(h.Pid(), 0); ok {
			t.Fatal("shim still running")
		}
	})
}

func TestShimReapsOrphans(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	h := start(t, p, workloadSpec(t, uniqueID(t, "orphan"), "orphan"))
	waitLog(t, h.LogPath(), textIs("spawned"))
	waitLog(t, h.LogPath(), textIs("grandchild exiting"))
	// Once the grandchild has exited, the shim has one child left, the
	// workload, and no zombie.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var children, zombies int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			var pid int
			if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
				continue
			}
			if st, err := readProcStat(pid); err == nil && st.PPid == h.Pid() {
				children++
				if st.State == 'Z' {
					zombies++
				}
			}
		}
		if children == 1 && zombies == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shim has %d children, %d zombies, want just the workload", children, zombies)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := h.Stop(testCtx(t), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverAfterDriverRestart(t *testing.T) {
	dir := t.TempDir()
	p1 := newTestDriver(t, ProcessConfig{DataDir: dir})
	id := uniqueID(t, "rec")
	h1 := start(t, p1, workloadSpec(t, id, "sleep"))
	waitLog(t, h1.LogPath(), textIs("ready"))

	p2 := newTestDriver(t, ProcessConfig{DataDir: dir}) // the agent restarted
	ids, err := p2.List(bgCtx())
	if err != nil || !slices.Equal(ids, []string{id}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	h2, err := p2.Recover(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if h2.Pid() != h1.Pid() || h2.Spec().ID != id || h2.LogPath() != h1.LogPath() {
		t.Fatalf("recovered pid %d spec %q, want pid %d", h2.Pid(), h2.Spec().ID, h1.Pid())
	}
	st, err := h2.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes != 2 || st.MemoryRSS == 0 {
		t.Errorf("stats %+v, want 2 processes (shim and workload) and some RSS", st)
	}
	if err := h2.Stop(testCtx(t), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	es := wait(t, h2)
	if es.Signal != syscall.SIGTERM {
		t.Errorf("recovered exit %v, want killed by SIGTERM (forwarded)", es)
	}
	if err := h2.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance directory left after Cleanup: %v", err)
	}
}

func TestRecoverAfterAgentKilled(t *testing.T) {
	dir := t.TempDir()
	pid := runAgentUntilStarted(t, agentEnv+"="+dir)

	p := newTestDriver(t, ProcessConfig{DataDir: dir})
	h, err := p.Recover(testCtx(t), "survivor")
	if err != nil {
		t.Fatalf("recover after the agent died: %v", err)
	}
	if h.Pid() != pid {
		t.Fatalf("recovered pid %d, agent started %d", h.Pid(), pid)
	}
	// The shim keeps writing the log without the agent.
	n := len(readLog(t, h.LogPath()))
	waitLog(t, h.LogPath(), func(LogEntry) bool { return len(readLog(t, h.LogPath())) > n+3 })
	if err := h.Stop(testCtx(t), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverGone(t *testing.T) {
	dir := t.TempDir()
	p1 := newTestDriver(t, ProcessConfig{DataDir: dir})

	t.Run("exited", func(t *testing.T) {
		id := uniqueID(t, "dead")
		h := start(t, p1, workloadSpec(t, id, "exit", "3"))
		wait(t, h)
		p2 := newTestDriver(t, ProcessConfig{DataDir: dir})
		_, err := p2.Recover(testCtx(t), id)
		var ge *GoneError
		if !errors.Is(err, ErrNotFound) || !errors.As(err, &ge) {
			t.Fatalf("recover dead: %v, want a GoneError", err)
		}
		if ge.Exit == nil || ge.Exit.Code != 3 {
			t.Errorf("gone error %v, want the recorded exit status 3", ge)
		}
		if _, err := os.Stat(filepath.Join(dir, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftovers not cleaned: %v", err)
		}
		if _, err := p2.Recover(testCtx(t), id); !errors.Is(err, ErrNotFound) {
			t.Errorf("second recover: %v", err)
		}
	})

	t.Run("pid reused", func(t *testing.T) {
		id := uniqueID(t, "reused")
		h := start(t, p1, workloadSpec(t, id, "sleep"))
		statePath := filepath.Join(dir, id, fileState)
		var s state
		if err := readJSONFile(statePath, &s); err != nil {
			t.Fatal(err)
		}
		s.StartTime++ // as if another process now had this pid
		if err := writeJSONFile(statePath, s); err != nil {
			t.Fatal(err)
		}
		p2 := newTestDriver(t, ProcessConfig{DataDir: dir})
		_, err := p2.Recover(testCtx(t), id)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "reused") {
			t.Fatalf("recover: %v, want gone because the pid was reused", err)
		}
		if ok, _ := sameProcess(h.Pid(), s.StartTime-1); !ok {
			t.Fatal("Recover killed a process it did not own")
		}
		if err := h.Cleanup(); err != nil {
			t.Fatal(err)
		}
	})
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const noLimitsLog = "memory limits disabled"

func TestMemoryLimit(t *testing.T) {
	var logs syncBuffer
	p := newTestDriver(t, ProcessConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	enforced, why := p.MemoryLimits()
	spec := workloadSpec(t, uniqueID(t, "oom"), "alloc", "512")
	spec.MemoryMB = 96
	h := start(t, p, spec)
	if !enforced {
		// This machine cannot limit memory: the driver must say so.
		if !strings.Contains(logs.String(), noLimitsLog) {
			t.Fatalf("cgroups not writable (%v) but no %q warning logged; logs: %s", why, noLimitsLog, logs.String())
		}
		wait(t, h)
		return
	}
	es := wait(t, h)
	if !es.OOMKilled || es.Signal != syscall.SIGKILL {
		t.Fatalf("cgroup v1 memory at %s is writable but a workload allocating 512 MB under a 96 MB limit ended with %v (%+v); log %+v",
			p.cg.dir, es, es, readLog(t, h.LogPath()))
	}
	if es.String() != "killed: out of memory (killed by signal 9 (killed))" {
		t.Errorf("reason %q", es.String())
	}
	if _, err := os.Stat(p.cg.path(spec.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup not removed after exit: %v", err)
	}
}

func TestMemoryLimitStats(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	if ok, _ := p.MemoryLimits(); !ok {
		// Covered by TestMemoryLimit (which asserts the warning) and
		// TestNoCgroupWarnsOnce; here check Stats without a cgroup.
		h := start(t, p, workloadSpec(t, uniqueID(t, "stats"), "sleep"))
		waitLog(t, h.LogPath(), textIs("ready"))
		if st, err := h.Stats(); err != nil || st.Processes != 2 || st.MemoryLimit != 0 {
			t.Fatalf("stats %+v, %v", st, err)
		}
		return
	}
	spec := workloadSpec(t, uniqueID(t, "stats"), "sleep")
	spec.MemoryMB = 200
	h := start(t, p, spec)
	waitLog(t, h.LogPath(), textIs("ready"))
	st, err := h.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryLimit != 200<<20 || st.Processes != 2 || st.MemoryRSS == 0 || st.MemoryUsage == 0 {
		t.Errorf("stats %+v, want limit 200 MB, 2 processes, some memory", st)
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.cg.path(spec.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup left after Cleanup: %v", err)
	}
}

func TestNoCgroupWarnsOnce(t *testing.T) {
	var logs syncBuffer
	p := newTestDriver(t, ProcessConfig{
		CgroupRoot: filepath.Join(t.TempDir(), "no-cgroup-here"),
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if ok, err := p.MemoryLimits(); ok || err == nil {
		t.Fatalf("MemoryLimits = %v, %v on a missing cgroup root", ok, err)
	}
	for i := range 2 {
		spec := workloadSpec(t, uniqueID(t, fmt.Sprintf("nocg%d", i)), "exit", "0")
		spec.MemoryMB = 64
		h := start(t, p, spec)
		if es := wait(t, h); !es.Success() {
			t.Fatalf("exit %v", es)
		}
	}
	if n := strings.Count(logs.String(), noLimitsLog); n != 1 {
		t.Fatalf("warning logged %d times, want once; logs: %s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("not a warning: %s", logs.String())
	}
}

func TestDestroyAndList(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	a := uniqueID(t, "a")
	b := uniqueID(t, "b")
	ha := start(t, p, workloadSpec(t, a, "sleep"))
	start(t, p, workloadSpec(t, b, "exit", "0"))
	ids, _ := p.List(bgCtx())
	if !slices.Equal(ids, []string{a, b}) {
		t.Fatalf("List = %v", ids)
	}
	if err := p.Destroy(testCtx(t), a); err != nil {
		t.Fatal(err)
	}
	if es := wait(t, ha); es.Signal != syscall.SIGKILL {
		t.Errorf("destroyed instance exit %v", es)
	}
	if err := p.Destroy(testCtx(t), "never-existed"); err != nil {
		t.Errorf("destroy unknown: %v", err)
	}
	ids, _ = p.List(bgCtx())
	if slices.Contains(ids, a) {
		t.Errorf("List after Destroy = %v", ids)
	}
}
