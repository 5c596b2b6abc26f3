package driver

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the shim (MaybeRunShim), as workloads
// (workloadEnv) and as an agent to kill (agentEnv).
const (
	workloadEnv = "DRIVER_TEST_WORKLOAD"
	agentEnv    = "DRIVER_TEST_AGENT_DIR"
)

func TestMain(m *testing.M) {
	MaybeRunShim()
	if os.Getenv(workloadEnv) != "" {
		os.Exit(runWorkload(os.Args[1:]))
	}
	if dir := os.Getenv(agentEnv); dir != "" {
		os.Exit(runTestAgent(dir))
	}
	if dir := os.Getenv(ociAgentEnv); dir != "" {
		os.Exit(runOCITestAgent(dir))
	}
	os.Exit(m.Run())
}

// workloadInfo is what the "info" workload reports about its world.
type workloadInfo struct {
	Pid      int      `json:"pid"`
	PPid     int      `json:"ppid"`
	Hostname string   `json:"hostname"`
	Resolv   string   `json:"resolv"`
	Env      []string `json:"env"`
	Cwd      string   `json:"cwd"`
	ProcPids []int    `json:"proc_pids"`
	UID      int      `json:"uid"`
	// CwdWritable says a file could be created in the working directory;
	// ProbeErr is the error reading the file named by $PROBE_PATH.
	CwdWritable bool   `json:"cwd_writable"`
	ProbeErr    string `json:"probe_err,omitempty"`
}

func runWorkload(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "workload: no mode")
		return 2
	}
	switch args[0] {
	case "info":
		var wi workloadInfo
		wi.Pid, wi.PPid = os.Getpid(), os.Getppid()
		wi.Hostname, _ = os.Hostname()
		b, _ := os.ReadFile("/etc/resolv.conf")
		wi.Resolv = string(b)
		wi.Env = os.Environ()
		wi.Cwd, _ = os.Getwd()
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if p, err := strconv.Atoi(e.Name()); err == nil {
				wi.ProcPids = append(wi.ProcPids, p)
			}
		}
		wi.UID = os.Getuid()
		wi.CwdWritable = os.WriteFile("written-by-workload", []byte("x"), 0o600) == nil
		if p := os.Getenv("PROBE_PATH"); p != "" {
			if _, err := os.ReadFile(p); err != nil {
				wi.ProbeErr = err.Error()
			}
		}
		out, _ := json.Marshal(wi)
		fmt.Printf("%s\n", out)
		return 0
	case "exit":
		code, _ := strconv.Atoi(args[1])
		fmt.Println("bye on stdout")
		fmt.Fprintln(os.Stderr, "bye on stderr")
		return code
	case "sleep":
		fmt.Println("ready")
		sleepForever()
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		sleepForever()
	case "term-exit":
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		fmt.Println("ready")
		<-c
		fmt.Println("got SIGTERM")
		return 3
	case "tick":
		for i := 0; ; i++ {
			fmt.Printf("tick %d\n", i)
			time.Sleep(20 * time.Millisecond)
		}
	case "spam":
		n, _ := strconv.Atoi(args[1])
		line := strings.Repeat("x", 90)
		for i := range n {
			fmt.Fprintf(os.Stdout, "out %05d %s\n", i, line)
		}
		fmt.Println("last line")
		return 0
	case "orphan":
		// An intermediate starts a grandchild and exits at once: the
		// grandchild is reparented to PID 1, the shim, which must reap it.
		exe, _ := os.Executable()
		c := exec.Command(exe, "spawn")
		c.Stdout = os.Stdout
		if err := c.Run(); err != nil {
			fmt.Println("spawn:", err)
			return 1
		}
		fmt.Println("spawned")
		sleepForever()
	case "spawn":
		exe, _ := os.Executable()
		c := exec.Command(exe, "exit-later")
		c.Stdout = os.Stdout
		if err := c.Start(); err != nil {
			return 1
		}
		return 0
	case "exit-later":
		time.Sleep(50 * time.Millisecond)
		fmt.Println("grandchild exiting")
		return 0
	case "alloc":
		mb, _ := strconv.Atoi(args[1])
		var keep [][]byte
		for range mb {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		fmt.Printf("survived %d MB\n", len(keep))
		return 0
	}
	fmt.Fprintf(os.Stderr, "workload: unknown mode %q\n", args[0])
	return 2
}

// runTestAgent plays an agent that starts one instance and then waits to be
// killed.
func runTestAgent(dir string) int {
	p, err := NewProcess(ProcessConfig{DataDir: dir, ShimEnv: []string{raceEnv}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	exe, _ := os.Executable()
	h, err := p.Start(bgCtx(), Spec{ID: "survivor", Command: []string{exe, "tick"}, Env: []string{workloadEnv + "=1", raceEnv}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("started %d\n", h.Pid())
	for {
		time.Sleep(time.Hour)
	}
}

// testExe is the test binary, used as the workload.
func testExe(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// workloadSpec is a spec running the test binary in mode args.
// (GORACE: a race-enabled binary otherwise sleeps a second before exiting.)
func workloadSpec(t testing.TB, id string, args ...string) Spec {
	return Spec{ID: id, Command: []string{testExe(t)}, Args: args, Env: []string{workloadEnv + "=1", raceEnv}}
}

const raceEnv = "GORACE=atexit_sleep_ms=0"

// readLog returns the parsed entries of the instance log (rotated file
// first).
func readLog(t testing.TB, path string) []LogEntry {
	t.Helper()
	var out []LogEntry
	for _, p := range []string{path + ".1", path} {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			e, err := ParseLogLine(sc.Bytes())
			if err != nil {
				t.Fatalf("%s: %v", filepath.Base(p), err)
			}
			out = append(out, e)
		}
		f.Close()
	}
	return out
}

// waitLog polls the instance log until a line satisfies ok.
func waitLog(t testing.TB, path string, ok func(LogEntry) bool) LogEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, e := range readLog(t, path) {
			if ok(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching line in %s within 10s; log: %+v", path, readLog(t, path))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func textIs(s string) func(LogEntry) bool {
	return func(e LogEntry) bool { return e.Text == s }
}

// sleepForever blocks without tripping the runtime's deadlock detector
// (select {} does in a process without other goroutines).
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}
