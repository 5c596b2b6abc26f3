// Package testutil holds what Meridian's tests share: a TestMain that
// builds the demo app (and serves the process driver's shim), a logger
// writing to the test's output, Slow for the tests `make unit` skips, free
// loopback ports, bounded contexts, a buffer safe for concurrent use, and
// polling a condition against a deadline instead of sleeping and hoping.
package testutil

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-run/meridian/driver"
)

// Main runs a package's tests after building the given programs of this
// module (import paths relative to the module root, e.g.
// "examples/hello") into a temporary directory, and returns the exit code.
// It first serves the process driver's shim when this binary was started
// as one (agents in tests re-execute the test binary). paths receives each
// built program's path by its base name. Once every test and cleanup has
// run, it fails the package if goroutines started meanwhile are still
// running (a component whose Close left something behind).
func Main(m *testing.M, paths map[string]*string) int {
	driver.MaybeRunShim()
	dir, err := os.MkdirTemp("", "meridian-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Reachable by instances that run as unprivileged users.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for pkg, dst := range paths {
		out := filepath.Join(dir, filepath.Base(pkg))
		if b, err := exec.Command("go", "build", "-o", out, filepath.Join(root, pkg)).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, b)
			return 1
		}
		*dst = out
	}
	before := goleak.IgnoreCurrent()
	code := m.Run()
	if code == 0 {
		// Every test and cleanup has run: whatever the package's
		// components started must have ended with their Close.
		if err := goleak.Find(append([]goleak.Option{before}, lingers...)...); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left running after every test and cleanup: %v\n", err)
			return 1
		}
	}
	return code
}

// lingers are goroutines a leak check ignores: a test's own HTTP clients'
// idle keep-alive connections, and EtcdLingers.
var lingers = append([]goleak.Option{
	goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
}, EtcdLingers...)

// EtcdLingers are goroutines of an embedded etcd member's peer listener
// (cmux over net/http) that outlive its Close while a peer's connection is
// still open: etcd's, not Meridian's.
var EtcdLingers = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/soheilhy/cmux.(*MuxConn).Read"),
	goleak.IgnoreAnyFunction("net/http.(*connReader).abortPendingRead"),
}

// moduleRoot is the directory of this module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Logger logs warnings and errors (everything, with MERIDIAN_TEST_DEBUG
// set) to the test's own output, t.Log's, so a component's logs show with
// the test that failed and stay out of the terminal otherwise. Records
// that arrive after the test ended (a goroutine still stopping) go to
// stderr rather than panicking in t.Log.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("MERIDIAN_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	w := &testWriter{t: t}
	t.Cleanup(w.end) // registered first: runs after the components' Close
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// testWriter writes to t.Log until the test ends, to stderr after.
type testWriter struct {
	mu    sync.Mutex
	t     testing.TB
	ended bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return os.Stderr.Write(p)
	}
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (w *testWriter) end() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
}

// SlowPackage, called first in a TestMain, reports whether the whole
// package is to be skipped: under -short (`make unit`), for a package
// whose every test is slow (why says what it starts). It says so on
// stdout.
func SlowPackage(why string) bool {
	flag.Parse()
	if !testing.Short() {
		return false
	}
	fmt.Printf("skipped by -short: every test here %s; make test runs them\n", why)
	return true
}

// leakChecked holds the tests NoLeaks checks already.
var leakChecked sync.Map

// NoLeaks checks, once the test and every cleanup registered after this
// call have run (components' Close among them), that no goroutine started
// since is left running: call it before starting a component; ignore
// names third-party goroutines known to outlive their owner's Close. Goroutines
// still ending are given goleak's grace (it retries for a while).
func NoLeaks(t testing.TB, ignore ...goleak.Option) {
	t.Helper()
	if _, checked := leakChecked.LoadOrStore(t, true); checked {
		return // the first call's check covers everything started since
	}
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, lingers...)
	opts = append(opts, ignore...)
	t.Cleanup(func() {
		leakChecked.Delete(t)
		if err := goleak.Find(opts...); err != nil {
			t.Errorf("goroutines left running after the test and its cleanups: %v", err)
		}
	})
}

// Slow marks a test that starts real processes, etcd members or whole
// installations, or otherwise runs for seconds: `make unit` (go test
// -short) skips it; `make test` and CI run it.
func Slow(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow (real processes, etcd or seconds of waiting): skipped by -short; make test runs it")
	}
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// PortTaken reports whether err is a failure to bind an address: a port
// picked with FreePort can be taken by another process (another test
// package runs in parallel) before it is bound. Callers start again with
// new ports.
func PortTaken(err error) bool {
	return err != nil && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use"))
}

// Context returns a context canceled after d or when the test ends.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond every 20ms until it holds, failing the test with
// the last state cond described when it does not within the deadline.
func Eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not true within %s; last state: %s", what, within, last)
}
