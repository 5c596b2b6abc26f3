// Command edge measures `meridian edge` and prints the figures the project
// reports:
//
//   - proxy: throughput and latency of the edge against nginx (Debian's
//     package) as reverse proxies to the same backend, each pinned to CPU 0
//     with taskset (the backend and wrk share CPU 1), measured with wrk in
//     one run: requests/s with 64 connections, and p50/p99 latency with 64
//     and with 1 connection, beside the backend alone, and each proxy's CPU
//     time per request (which other load on a shared machine disturbs less
//     than requests/s); rounds alternate the targets and figures are
//     medians. nginx gets the same
//     work: HTTP/1.1 keep-alive to the backend, X-Forwarded-For/Proto/Host
//     and X-Request-Id, no access log (the edge's access log is off too).
//     The edge does more: it reaches the backend as it reaches every
//     instance, over mutual TLS to the node proxy of the backend's machine
//     (the agent's, in a process of its own on CPU 1, whose CPU time per
//     request is reported too); nginx speaks plain HTTP to the backend.
//     Without nginx or wrk the part says so and is skipped.
//   - failover: a dev installation (3 regions, one machine per data
//     center, the demo app twice per region) and an edge at Paris in this
//     process whose links to Frankfurt's API and instances go through
//     link proxies; under a steady GET load, Frankfurt (its closest region) is
//     blackholed (every byte swallowed), then after it recovers, killed
//     (server, agents and instances: connections refused). For each:
//     failed requests, when the last failure started after the failure,
//     how long requests were slowed (the last one over 100ms), and the
//     slowest answer.
//   - rss: the resident memory of a `meridian edge` process serving a
//     routing table of 1,000 routes and 10,000 endpoints (a synthetic
//     snapshot: 1,000 apps, 10 instances each over 3 regions), against the
//     same process with an empty table.
//
// Without -meridian, -shim and -hello it builds the binaries with go build
// (run it inside the module):
//
//	apt-get install -y nginx wrk   # for the proxy part
//	go run ./bench/edge [-part proxy,failover,rss] [-duration 10s] [-rounds 3]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	backend := flag.String("backend", "", "internal: serve the benchmark's backend on this address")
	nodeProxy := flag.String("node-proxy", "", "internal: serve the backend machine's node proxy on this address (with -node-pki, and -backend naming the backend)")
	nodePKI := flag.String("node-pki", "", "internal: the node proxy's certificate directory")
	meridian := flag.String("meridian", "", "the meridian binary (default: built with go build into a temporary directory)")
	shim := flag.String("shim", "", "the meridian-shim binary (default: built with go build)")
	hello := flag.String("hello", "", "the demo app binary examples/hello (default: built with go build)")
	parts := flag.String("part", "proxy,failover,rss", "which parts to run: proxy, failover, rss (comma-separated)")
	duration := flag.Duration("duration", 10*time.Second, "how long each wrk run and each failover load lasts")
	conns := flag.Int("conns", 64, "wrk connections for the throughput runs")
	rounds := flag.Int("rounds", 3, "wrk rounds over the targets (figures are medians)")
	rate := flag.Int("rate", 200, "GETs per second during the failover runs")
	probeInterval := flag.Duration("probe-interval", time.Second, "the failover edge's region probe interval")
	probeTimeout := flag.Duration("probe-timeout", time.Second, "the failover edge's region probe timeout")
	verbose := flag.Bool("v", false, "log the installation's and the edge's warnings")
	cpuProfile := flag.String("cpuprofile", "", "proxy part: write a CPU profile of the edge, taken during an extra saturated wrk run, to this file")
	flag.Parse()
	if *nodeProxy != "" {
		serveNodeProxy(*nodeProxy, *nodePKI, *backend)
		return
	}
	if *backend != "" {
		serveBackend(*backend)
		return
	}
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments %q (all options are flags)", flag.Args()))
	}
	want := strings.Split(*parts, ",")
	for _, p := range want {
		if !slices.Contains([]string{"proxy", "failover", "rss"}, p) {
			fail(fmt.Errorf("-part: %q is not one of proxy, failover, rss", p))
		}
	}
	if *duration < time.Second || *conns < 1 || *rate < 1 || *rounds < 1 {
		fail(fmt.Errorf("-duration must be at least 1s, -conns, -rate and -rounds at least 1"))
	}
	level := slog.LevelError
	if *verbose {
		level = slog.LevelWarn
	}
	b := &bench{log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
		quiet:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		duration: *duration, conns: *conns, rate: *rate, rounds: *rounds, probeInterval: *probeInterval, probeTimeout: *probeTimeout, cpuProfile: *cpuProfile}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if b.root, err = os.MkdirTemp("", "meridian-bench-edge-"); err != nil {
		fail(err)
	}
	defer os.RemoveAll(b.root)
	if err := b.binaries(ctx, *meridian, *shim, *hello); err != nil {
		fail(err)
	}
	for _, p := range want {
		switch p {
		case "proxy":
			err = b.proxy(ctx)
		case "failover":
			err = b.failover(ctx)
		case "rss":
			err = b.rss(ctx)
		}
		if err != nil {
			b.cleanup()
			fail(fmt.Errorf("%s: %w", p, err))
		}
	}
	b.cleanup()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench/edge:", err)
	os.Exit(1)
}

// bench holds the run's settings and what it must clean up.
type bench struct {
	log, quiet *slog.Logger
	duration   time.Duration
	conns      int
	rate       int
	rounds     int

	probeInterval, probeTimeout time.Duration
	cpuProfile                  string
	root                        string
	binDir                      string
	procs                       []*proc
}

// proc is a process started by start.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// binaries puts meridian, meridian-shim and hello into a directory:
// copies of the given files, or fresh builds.
func (b *bench) binaries(ctx context.Context, meridian, shim, hello string) error {
	b.binDir = filepath.Join(b.root, "bin")
	if err := os.MkdirAll(b.binDir, 0o755); err != nil {
		return err
	}
	for _, bin := range []struct{ flag, given, name, pkg string }{
		{"-meridian", meridian, "meridian", "github.com/meridian-run/meridian/cmd/meridian"},
		{"-shim", shim, "meridian-shim", "github.com/meridian-run/meridian/driver/meridian-shim"},
		{"-hello", hello, "hello", "github.com/meridian-run/meridian/examples/hello"},
	} {
		dst := filepath.Join(b.binDir, bin.name)
		if bin.given != "" {
			data, err := os.ReadFile(bin.given)
			if err != nil {
				return fmt.Errorf("%s: %w", bin.flag, err)
			}
			if err := os.WriteFile(dst, data, 0o755); err != nil {
				return err
			}
			continue
		}
		b.log.Info("building", "package", bin.pkg)
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", dst, bin.pkg).CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s (pass %s, or run inside the module): %w\n%s", bin.pkg, bin.flag, err, out)
		}
	}
	return nil
}

// start runs a command (pinned to cpu with taskset when cpu >= 0), logging
// to a file under the run's directory; cleanup stops it.
func (b *bench) start(name string, cpu int, args ...string) (*proc, error) {
	if cpu >= 0 {
		args = append([]string{"taskset", "-c", fmt.Sprint(cpu)}, args...)
	}
	logf, err := os.Create(filepath.Join(b.root, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	b.procs = append(b.procs, p)
	return p, nil
}

// stop ends a process started by start: SIGTERM, SIGKILL after 10s.
func (b *bench) stop(p *proc) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	b.procs = slices.DeleteFunc(b.procs, func(q *proc) bool { return q == p })
}

func (b *bench) cleanup() {
	for _, p := range slices.Clone(b.procs) {
		b.stop(p)
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitHTTP polls url until it answers 200.
func waitHTTP(ctx context.Context, url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("%s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not answering within %s: %v", url, within, last)
}

// waitTCP polls addr until it accepts a connection.
func waitTCP(ctx context.Context, addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting within %s: %w", addr, within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serveBackend is the proxied backend: a small fixed answer, as a demo
// app's health or API call would be.
func serveBackend(addr string) {
	body := []byte(`{"region":"bench","instance":"bench-0","status":"ok"}` + "\n")
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})}
	if err := srv.ListenAndServe(); err != nil {
		fail(err)
	}
}
