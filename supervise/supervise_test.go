package supervise

import (
	"context"
	"errors"
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/driver"
)

// The test binary is also the instances' shim and their workload.
const (
	workloadEnv = "SUPERVISE_TEST_WORKLOAD"
	raceEnv     = "GORACE=atexit_sleep_ms=0" // race builds otherwise linger 1s at exit
)

func TestMain(m *testing.M) {
	driver.MaybeRunShim()
	if os.Getenv(workloadEnv) != "" {
		os.Exit(runWorkload(os.Args[1:]))
	}
	os.Exit(testutil.Main(m, nil))
}

func runWorkload(args []string) int {
	switch args[0] {
	case "exit":
		code, _ := strconv.Atoi(args[1])
		return code
	case "sleep":
		sleepForever()
	case "crash-once":
		// Fails on its first run; the working directory survives restarts.
		if _, err := os.Stat("crashed"); err != nil {
			_ = os.WriteFile("crashed", nil, 0o644)
			return 1
		}
		sleepForever()
	}
	return 2
}

func newDriver(t *testing.T, dir string) *driver.Process {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	d, err := driver.NewProcess(driver.ProcessConfig{DataDir: dir, ShimEnv: []string{raceEnv}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ids, _ := d.List(context.Background())
		for _, id := range ids {
			_ = d.Destroy(context.Background(), id)
		}
	})
	return d
}

func workload(t *testing.T, name string, args ...string) driver.Spec {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return driver.Spec{
		ID:      fmt.Sprintf("s%d-%s", os.Getpid(), name),
		Command: []string{exe}, Args: args,
		Env: []string{workloadEnv + "=1", raceEnv},
	}
}

func ptr[T any](v T) *T { return &v }

// recorder collects the reported transitions.
type recorder struct{ ch chan Status }

func newRecorder() *recorder { return &recorder{ch: make(chan Status, 256)} }

func (r *recorder) OnState(s Status) { r.ch <- s }

func (r *recorder) next(t *testing.T) Status {
	t.Helper()
	select {
	case s := <-r.ch:
		return s
	case <-time.After(15 * time.Second):
		t.Fatal("no state transition within 15s")
		return Status{}
	}
}

// expect takes the next transition and checks its state and health.
func (r *recorder) expect(t *testing.T, state State, health Health, restarts int) Status {
	t.Helper()
	s := r.next(t)
	if s.State != state || s.Health != health || s.Restarts != restarts {
		t.Fatalf("got %s/%q restarts %d (reason %q), want %s/%q restarts %d",
			s.State, s.Health, s.Restarts, s.Reason, state, health, restarts)
	}
	return s
}

func (r *recorder) quiet(t *testing.T) {
	t.Helper()
	select {
	case s := <-r.ch:
		t.Fatalf("unexpected transition %+v", s)
	default:
	}
}

// run starts s.Run in the background and returns its result channel.
func run(ctx context.Context, s *Supervisor) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	return errc
}

func result(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return within 15s")
		return nil
	}
}

func processGone(pid int) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

func TestCrashRestartsWithBackoffThenFails(t *testing.T) {
	clk, rec := newFakeClock(), newRecorder()
	s := New(Config{
		Driver: newDriver(t, ""), Spec: workload(t, "crash", "exit", "1"),
		RestartLimit: ptr(3), BackoffMin: time.Second, BackoffMax: 3 * time.Second,
		Clock: clk, OnState: rec.OnState,
	})
	errc := run(context.Background(), s)
	for i, backoff := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		rec.expect(t, StateStarting, HealthUnknown, i)
		rec.expect(t, StateRunning, HealthHealthy, i)
		st := rec.expect(t, StateRestarting, HealthUnknown, i+1)
		if st.Reason != "exited with status 1" || st.Exit == nil || st.Exit.Code != 1 {
			t.Fatalf("restart reason %q exit %+v", st.Reason, st.Exit)
		}
		waitTimer(t, clk, backoff)
		rec.quiet(t) // nothing happens until the backoff has passed
		clk.Advance(backoff)
	}
	rec.expect(t, StateStarting, HealthUnknown, 3)
	rec.expect(t, StateRunning, HealthHealthy, 3)
	st := rec.expect(t, StateFailed, HealthUnknown, 3)
	if st.Reason != "exited with status 1" {
		t.Errorf("failed reason %q", st.Reason)
	}
	if err := result(t, errc); !errors.Is(err, ErrFailed) {
		t.Fatalf("Run = %v, want ErrFailed", err)
	}
	if got := s.Status(); got.State != StateFailed {
		t.Errorf("Status() = %+v", got)
	}
}

func TestStartErrorIsARestartReason(t *testing.T) {
	clk, rec := newFakeClock(), newRecorder()
	spec := workload(t, "nocmd")
	spec.Command = []string{"no-such-program-xyz"}
	s := New(Config{Driver: newDriver(t, ""), Spec: spec, RestartLimit: ptr(0), Clock: clk, OnState: rec.OnState})
	errc := run(context.Background(), s)
	rec.expect(t, StateStarting, HealthUnknown, 0)
	st := rec.expect(t, StateFailed, HealthUnknown, 0)
	if !strings.HasPrefix(st.Reason, "start: ") || !strings.Contains(st.Reason, "spec.command[0]") {
		t.Errorf("reason %q", st.Reason)
	}
	if err := result(t, errc); !errors.Is(err, ErrFailed) {
		t.Fatalf("Run = %v", err)
	}
}

func TestHTTPHealthFailureRestartsWithReason(t *testing.T) {
	var status, hits atomic.Int32
	status.Store(http.StatusInternalServerError)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		hits.Add(1)
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	clk, rec := newFakeClock(), newRecorder()
	s := New(Config{
		Driver: newDriver(t, ""), Spec: workload(t, "http", "sleep"),
		HealthChecks: []api.HealthCheck{{Port: port, HTTP: &api.HTTPCheck{Path: "/healthz"},
			GracePeriod: "5s", Interval: "1s", Timeout: "2s", RestartLimit: ptr(1)}},
		Clock: clk, OnState: rec.OnState, StopTimeout: 5 * time.Second,
	})
	errc := run(context.Background(), s)
	rec.expect(t, StateStarting, HealthUnknown, 0)
	first := rec.expect(t, StateRunning, HealthUnknown, 0)
	// During the 5s grace period the check is retried every StartupPoll and
	// its failures do not count.
	for elapsed := time.Duration(0); elapsed < 5*time.Second; elapsed += StartupPoll {
		waitTimer(t, clk, StartupPoll)
		clk.Advance(StartupPoll)
	}
	rec.quiet(t)
	if n := hits.Load(); n < int32(5*time.Second/StartupPoll) {
		t.Fatalf("%d checks during the grace period, want one every %s", n, StartupPoll)
	}
	// After it, failures count: the check at the end of the grace period
	// failed (the next one waits an interval); two more make the threshold.
	waitTimer(t, clk, time.Second)
	base := hits.Load()
	clk.Advance(time.Second)
	waitTimer(t, clk, time.Second)
	if n := hits.Load() - base; n != 1 {
		t.Fatalf("%d checks one interval after the grace period, want 1", n)
	}
	clk.Advance(time.Second)
	want := fmt.Sprintf("health check http :%d/healthz: status 500", port)
	st := rec.expect(t, StateRunning, HealthUnhealthy, 0)
	if st.Reason != want {
		t.Fatalf("unhealthy reason %q, want %q", st.Reason, want)
	}
	st = rec.expect(t, StateRestarting, HealthUnknown, 1)
	if st.Reason != want || st.Exit == nil || st.Exit.Signal != syscall.SIGTERM {
		t.Fatalf("restarting reason %q exit %+v, want %q after a SIGTERM", st.Reason, st.Exit, want)
	}
	if !processGone(first.Pid) {
		t.Fatal("the unhealthy instance was not stopped")
	}

	// It comes back healthy.
	status.Store(http.StatusNoContent)
	waitTimer(t, clk, time.Second)
	clk.Advance(time.Second)
	rec.expect(t, StateStarting, HealthUnknown, 1)
	second := rec.expect(t, StateRunning, HealthUnknown, 1)
	if second.Pid == first.Pid {
		t.Fatal("same pid after restart")
	}
	// Checks run from the start: a passing instance is healthy at once,
	// within its grace period.
	rec.expect(t, StateRunning, HealthHealthy, 1)

	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	st = rec.expect(t, StateStopped, HealthUnknown, 1)
	if st.Exit == nil || st.Exit.Signal != syscall.SIGTERM {
		t.Errorf("stopped exit %+v", st.Exit)
	}
	if err := result(t, errc); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !processGone(second.Pid) {
		t.Fatal("instance still running after Stop")
	}
}

func TestTCPCheckGracePeriodHealthyThenUnhealthy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	clk, rec := newFakeClock(), newRecorder()
	s := New(Config{
		Driver: newDriver(t, ""), Spec: workload(t, "tcp", "sleep"),
		HealthChecks: []api.HealthCheck{{Port: port, TCP: &api.TCPCheck{}}},
		GracePeriod:  10 * time.Second, Interval: 2 * time.Second,
		Clock: clk, OnState: rec.OnState, Dialer: &net.Dialer{},
	})
	errc := run(context.Background(), s)
	rec.expect(t, StateStarting, HealthUnknown, 0)
	rec.expect(t, StateRunning, HealthUnknown, 0)
	// Checks run from the start: the listener answers, so the instance is
	// healthy at once, within its grace period.
	rec.expect(t, StateRunning, HealthHealthy, 0)
	// The check connected (the kernel completes the handshake before our
	// Accept runs, so wait for it).
	for deadline := time.Now().Add(10 * time.Second); accepted.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("healthy without a connection")
		}
	}

	// Through the 10s grace period the check keeps passing every interval.
	for range 5 {
		waitTimer(t, clk, 2*time.Second)
		clk.Advance(2 * time.Second)
	}
	// Six checks have connected (at 0, 2, 4, 6, 8 and 10s) before the
	// listener goes away.
	for deadline := time.Now().Add(10 * time.Second); accepted.Load() < 6; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d checks connected through the grace period, want 6", accepted.Load())
		}
	}
	rec.quiet(t)
	ln.Close()
	for range DefaultFailureThreshold {
		waitTimer(t, clk, 2*time.Second)
		clk.Advance(2 * time.Second)
	}
	st := rec.expect(t, StateRunning, HealthUnhealthy, 0)
	if want := fmt.Sprintf("health check tcp :%d: ", port); !strings.HasPrefix(st.Reason, want) || !strings.Contains(st.Reason, "refused") {
		t.Fatalf("reason %q, want %q... connection refused", st.Reason, want)
	}
	rec.expect(t, StateRestarting, HealthUnknown, 1)
	waitTimer(t, clk, DefaultBackoffMin)
	// Stop during the backoff.
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, StateStopped, HealthUnknown, 1)
	if err := result(t, errc); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func TestBackoffResetsAfterHealthyRun(t *testing.T) {
	clk, rec := newFakeClock(), newRecorder()
	s := New(Config{
		Driver: newDriver(t, ""), Spec: workload(t, "reset", "crash-once"),
		BackoffReset: time.Minute, Clock: clk, OnState: rec.OnState,
	})
	errc := run(context.Background(), s)
	rec.expect(t, StateStarting, HealthUnknown, 0)
	rec.expect(t, StateRunning, HealthHealthy, 0)
	rec.expect(t, StateRestarting, HealthUnknown, 1)
	waitTimer(t, clk, time.Second)
	clk.Advance(time.Second)
	rec.expect(t, StateStarting, HealthUnknown, 1)
	st := rec.expect(t, StateRunning, HealthHealthy, 1)

	clk.Advance(2 * time.Minute) // healthy for long
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st = rec.expect(t, StateRestarting, HealthUnknown, 1) // count reset, then this restart
	if st.Reason != "killed by signal 9 (killed)" {
		t.Errorf("reason %q", st.Reason)
	}
	waitTimer(t, clk, time.Second) // backoff reset too (it would be 2s)
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, StateStopped, HealthUnknown, 1)
	if err := result(t, errc); err != nil {
		t.Fatal(err)
	}
}

func TestSupervisesRecoveredHandle(t *testing.T) {
	dir := t.TempDir()
	d1 := newDriver(t, dir)
	spec := workload(t, "adopt", "sleep")
	if _, err := d1.Start(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	d2 := newDriver(t, dir) // the agent restarted
	h, err := d2.Recover(context.Background(), spec.ID)
	if err != nil {
		t.Fatal(err)
	}

	clk, rec := newFakeClock(), newRecorder()
	s := New(Config{Driver: d2, Handle: h, Clock: clk, OnState: rec.OnState})
	errc := run(context.Background(), s)
	st := rec.expect(t, StateRunning, HealthHealthy, 0)
	if st.Pid != h.Pid() || st.ID != spec.ID {
		t.Fatalf("adopted status %+v, want pid %d", st, h.Pid())
	}
	if err := h.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st = rec.expect(t, StateRestarting, HealthUnknown, 1)
	if st.Exit == nil || st.Exit.Signal != syscall.SIGKILL {
		t.Fatalf("exit of the adopted instance %+v (reason %q)", st.Exit, st.Reason)
	}
	waitTimer(t, clk, time.Second)
	clk.Advance(time.Second)
	rec.expect(t, StateStarting, HealthUnknown, 1)
	st = rec.expect(t, StateRunning, HealthHealthy, 1)
	if st.Pid == h.Pid() {
		t.Fatal("restarted with the same pid")
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, StateStopped, HealthUnknown, 1)
	if err := result(t, errc); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, spec.ID, "output.log")); err != nil {
		t.Errorf("instance files gone after Stop (they are the owner's to remove): %v", err)
	}
}

func TestContextEndDetaches(t *testing.T) {
	dir := t.TempDir()
	d := newDriver(t, dir)
	rec := newRecorder()
	spec := workload(t, "detach", "sleep")
	ctx, cancel := context.WithCancel(context.Background())
	s := New(Config{Driver: d, Spec: spec, Clock: newFakeClock(), OnState: rec.OnState})
	errc := run(ctx, s)
	rec.expect(t, StateStarting, HealthUnknown, 0)
	st := rec.expect(t, StateRunning, HealthHealthy, 0)
	cancel()
	if err := result(t, errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	// The instance still runs, for the next agent to recover.
	h, err := newDriver(t, dir).Recover(context.Background(), spec.ID)
	if err != nil {
		t.Fatalf("instance did not survive the detach: %v", err)
	}
	if h.Pid() != st.Pid {
		t.Fatalf("pid %d, was %d", h.Pid(), st.Pid)
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	d := newDriver(t, "")
	spec := workload(t, "cfg", "sleep")
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no driver", Config{Spec: spec}, "Config.Driver"},
		{"no id", Config{Driver: d}, "Config.Spec.ID"},
		{"both kinds", Config{Driver: d, Spec: spec, HealthChecks: []api.HealthCheck{{Port: 80, TCP: &api.TCPCheck{}, HTTP: &api.HTTPCheck{}}}}, "health_checks[0]: exactly one of tcp and http"},
		{"no kind", Config{Driver: d, Spec: spec, HealthChecks: []api.HealthCheck{{Port: 80}}}, "health_checks[0]: exactly one"},
		{"bad port", Config{Driver: d, Spec: spec, HealthChecks: []api.HealthCheck{{Port: 0, TCP: &api.TCPCheck{}}}}, "health_checks[0].port"},
		{"bad interval", Config{Driver: d, Spec: spec, HealthChecks: []api.HealthCheck{{Port: 80, TCP: &api.TCPCheck{}, Interval: "soon"}}}, "health_checks[0].interval"},
		{"bad limit", Config{Driver: d, Spec: spec, HealthChecks: []api.HealthCheck{{Port: 80, TCP: &api.TCPCheck{}, RestartLimit: ptr(-1)}}}, "health_checks[0].restart_limit"},
		{"negative limit", Config{Driver: d, Spec: spec, RestartLimit: ptr(-2)}, "Config.RestartLimit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := New(c.cfg).Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Run = %v, want an error naming %q", err, c.want)
			}
		})
	}
	// The smallest restart_limit of the checks applies.
	s := New(Config{Driver: d, Spec: spec, HealthChecks: []api.HealthCheck{
		{Port: 80, TCP: &api.TCPCheck{}, RestartLimit: ptr(5)},
		{Port: 81, TCP: &api.TCPCheck{}, RestartLimit: ptr(2)},
	}})
	if s.err != nil || s.limit != 2 {
		t.Fatalf("limit %d err %v", s.limit, s.err)
	}
}

// sleepForever blocks without tripping the runtime's deadlock detector
// (select {} does in a process without other goroutines).
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}
