// Command system measures a whole Meridian installation, run as real
// processes on this machine by package dev (global, three regions of two
// data centers of two machines each, every component a process of the
// meridian binary, every instance a real shim and demo app), and prints the
// figures the project reports:
//
//   - dev ready: the time dev.Start takes, from the call until dev.json is
//     written and every machine heartbeats in its region;
//   - deploy to HEALTHY: from the Deploy API call until GetDeployment,
//     polled every 50ms, answers HEALTHY (3 regions, 2 instances each,
//     all_at_once, health checks every 500ms);
//   - machine failover: from the SIGKILL of a Frankfurt machine (its agent
//     and its instances' shims) until the fra region, polled every 50ms
//     with the global certificate, again reports the wanted count of
//     healthy instances on live machines; the target is at most the lease
//     TTL plus 2s.
//
// Without -meridian, -shim and -hello it builds the binaries into a
// temporary directory with `go build` (run it inside the module):
//
//	go run ./bench/system -runs 5
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/dev"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
)

// Deadlines of the waits; each failure names what it waited for.
const (
	startTimeout    = 90 * time.Second
	deployTimeout   = 2 * time.Minute
	teardownTimeout = time.Minute
	failoverTimeout = time.Minute
	rejoinTimeout   = time.Minute
	pollEvery       = 50 * time.Millisecond
	stopGrace       = 10 * time.Second
)

// app is the app the benchmark deploys its services into.
const app = "bench"

// shimEnv is the variable the process driver gives each shim: its
// instance's directory, under the agent's data dir.
const shimEnv = "MERIDIAN_DRIVER_SHIM_DIR"

func main() {
	meridian := flag.String("meridian", "", "the meridian binary (default: built with go build into a temporary directory)")
	shim := flag.String("shim", "", "the meridian-shim binary (default: built with go build)")
	hello := flag.String("hello", "", "the demo app binary examples/hello (default: built with go build)")
	runs := flag.Int("runs", 5, "how many times each figure is measured")
	leaseTTL := flag.Duration("lease-ttl", 3*time.Second, "the regions' machine lease TTL")
	verbose := flag.Bool("v", false, "log the installations' warnings and the benchmark's progress in detail")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments %q (all options are flags)", flag.Args()))
	}
	if *runs < 1 {
		fail(fmt.Errorf("-runs: must be at least 1, got %d", *runs))
	}
	if *leaseTTL < time.Second {
		fail(fmt.Errorf("-lease-ttl: must be at least 1s, got %s", *leaseTTL))
	}
	level := slog.LevelInfo
	if !*verbose {
		level = slog.LevelError // dev warns about every agent the benchmark kills
	}
	progress := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	devLog := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	b := &bench{log: progress, devLog: devLog, runs: *runs, leaseTTL: *leaseTTL}
	err := b.run(ctx, *meridian, *shim, *hello)
	stop()
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench/system:", err)
	os.Exit(1)
}

// bench is one run of the benchmark and everything it must clean up.
type bench struct {
	log      *slog.Logger
	devLog   *slog.Logger
	runs     int
	leaseTTL time.Duration

	root   string // temporary directory: binaries and state dirs
	binDir string

	mu     sync.Mutex
	envs   []*dev.Env
	agents []*agentProc // agents the benchmark restarted itself
}

// agentProc is an agent restarted by the benchmark.
type agentProc struct {
	comp dev.Component
	cmd  *exec.Cmd
	done chan struct{}
}

func (b *bench) run(ctx context.Context, meridian, shim, hello string) (err error) {
	if b.root, err = os.MkdirTemp("", "meridian-bench-system-"); err != nil {
		return err
	}
	defer func() {
		if cerr := b.cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	b.binDir = filepath.Join(b.root, "bin")
	if err := b.binaries(ctx, meridian, shim, hello); err != nil {
		return err
	}

	ready, env, err := b.measureReady(ctx)
	if err != nil {
		return err
	}
	info := env.Info()
	regions, err := regionClients(info)
	if err != nil {
		return err
	}
	deploys, err := b.measureDeploys(ctx, info, regions)
	if err != nil {
		return err
	}
	failovers, err := b.measureFailovers(ctx, info, regions)
	if err != nil {
		return err
	}

	fmt.Printf("Meridian system benchmark: dev default topology (3 regions x 2 DCs x 2 machines), lease TTL %s, %d runs each\n", b.leaseTTL, b.runs)
	fmt.Printf("  dev ready:         median %s  (runs: %s)\n", secs(median(ready)), list(ready))
	fmt.Printf("  deploy to HEALTHY: median %s  (runs: %s)  3 regions x 2 instances, all_at_once, checks every 500ms\n", secs(median(deploys)), list(deploys))
	target := b.leaseTTL + 2*time.Second
	verdict := "within"
	if median(failovers) > target.Seconds() {
		verdict = "OVER"
	}
	fmt.Printf("  machine failover:  median %s  (runs: %s)  lease TTL %s, target <= %s: median %s target\n",
		secs(median(failovers)), list(failovers), b.leaseTTL, target, verdict)
	return nil
}

// binaries puts meridian, meridian-shim and hello into binDir: copies of the
// given files, or fresh builds. The agent finds its shim next to the
// meridian binary, and instances find hello on the PATH dev gives agents.
func (b *bench) binaries(ctx context.Context, meridian, shim, hello string) error {
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
			if err := copyExecutable(bin.given, dst); err != nil {
				return fmt.Errorf("%s: %w", bin.flag, err)
			}
			continue
		}
		b.log.Info("building", "package", bin.pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", dst, bin.pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s (pass %s, or run inside the module): %w\n%s", bin.pkg, bin.flag, err, out)
		}
	}
	return nil
}

func copyExecutable(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", src)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s: %w", src, err)
	}
	return out.Close()
}

// startDev starts an installation in a fresh state dir and registers it
// for cleanup.
func (b *bench) startDev(ctx context.Context, name string) (*dev.Env, time.Duration, error) {
	topo := dev.DefaultTopology()
	topo.LeaseTTL = b.leaseTTL.String()
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	t0 := time.Now()
	env, err := dev.Start(sctx, dev.Config{StateDir: filepath.Join(b.root, name), Topology: topo,
		Binary: filepath.Join(b.binDir, "meridian"), PathDirs: []string{b.binDir},
		APIListen: "127.0.0.1:0", Logger: b.devLog})
	took := time.Since(t0)
	if err != nil {
		return nil, 0, fmt.Errorf("dev.Start (%s, deadline %s): %w", name, startTimeout, err)
	}
	b.mu.Lock()
	b.envs = append(b.envs, env)
	b.mu.Unlock()
	return env, took, nil
}

// closeEnv stops an installation and removes its state dir.
func (b *bench) closeEnv(env *dev.Env) {
	env.Close()
	b.mu.Lock()
	b.envs = slices.DeleteFunc(b.envs, func(e *dev.Env) bool { return e == env })
	b.mu.Unlock()
	os.RemoveAll(env.Info().StateDir)
}

// measureReady starts the default installation -runs times and returns the
// durations, keeping the last installation running for the other figures.
func (b *bench) measureReady(ctx context.Context) ([]float64, *dev.Env, error) {
	var ready []float64
	var last *dev.Env
	for i := range b.runs {
		if last != nil {
			b.closeEnv(last)
		}
		env, took, err := b.startDev(ctx, fmt.Sprintf("dev-%d", i+1))
		if err != nil {
			return nil, nil, err
		}
		last = env
		ready = append(ready, took.Seconds())
		b.log.Info("dev ready", "run", i+1, "seconds", round(took.Seconds()))
	}
	return ready, last, nil
}

// regionClients returns a client of each region's API with the global
// certificate from the installation's PKI dir.
func regionClients(info dev.Info) (map[string]*regionapi.Client, error) {
	leaf, err := pki.LoadLeaf(filepath.Join(info.PKIDir, "global"), "global")
	if err != nil {
		return nil, fmt.Errorf("global certificate: %w", err)
	}
	roots, err := pki.LoadRoots(filepath.Join(info.PKIDir, "global", pki.RootFile))
	if err != nil {
		return nil, fmt.Errorf("global roots: %w", err)
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		return nil, fmt.Errorf("global certificate: %w", err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(rl, roots, pki.AllowKinds(pki.KindServer))}}
	out := map[string]*regionapi.Client{}
	for _, c := range info.Components {
		if c.Role == "region" {
			out[c.Region] = regionapi.NewClient(c.Address, hc)
		}
	}
	for _, r := range []string{"fra", "was", "sin"} {
		if out[r] == nil {
			return nil, fmt.Errorf("dev.json lists no region %s", r)
		}
	}
	return out, nil
}

// definition is the demo app as examples/hello/meridian.yaml has it, with
// two instances in each of the three regions, an all_at_once rollout and
// quick health checks.
func definition(name string) []byte {
	return []byte(fmt.Sprintf(`name: %s
type: web
regions: [fra, was, sin]
command: [hello]
ports: [{port: 8080, protocol: http}]
routes: [{port: 8080, path: /}]
env:
  - {key: LOG_LEVEL, value: info}
scalings: [{min: 2, max: 2}]
instance_types: [{type: nano}]
health_checks: [{port: 8080, http: {path: /healthz}, grace_period: 1s, interval: 500ms, timeout: 400ms, restart_limit: 3}]
strategy: {type: all_at_once}
`, name))
}

func serviceKey(info dev.Info, service string) string {
	return info.Organization + "." + app + "." + service
}

// deploy sends a definition and polls the deployment every 50ms until it
// is HEALTHY; it returns the time from the Deploy call.
func deploy(ctx context.Context, c *api.Client, service string) (time.Duration, error) {
	t0 := time.Now()
	d, err := c.Deploy(ctx, app, definition(service), "application/yaml", "")
	if err != nil {
		return 0, fmt.Errorf("deploying %s: %w", service, err)
	}
	var took time.Duration
	err = poll(ctx, deployTimeout, "deployment "+d.ID+" of "+service+" HEALTHY", func() (bool, string, error) {
		got, err := c.GetDeployment(ctx, d.ID)
		if err != nil {
			return false, err.Error(), nil
		}
		switch got.Status {
		case api.StatusHealthy:
			took = time.Since(t0)
			return true, "", nil
		case api.StatusDegraded, api.StatusError, api.StatusCanceled, api.StatusSuperseded:
			return false, "", fmt.Errorf("deployment %s of %s ended %s: %s", d.ID, service, got.Status, got.Message)
		}
		return false, got.Status, nil
	})
	return took, err
}

// measureDeploys deploys a fresh service -runs times, then deletes it and
// waits until its instances are gone, so that each run deploys onto an idle
// installation.
func (b *bench) measureDeploys(ctx context.Context, info dev.Info, regions map[string]*regionapi.Client) ([]float64, error) {
	c := api.NewClient(info.API, info.Token)
	if _, err := c.CreateApp(ctx, app, ""); err != nil {
		return nil, fmt.Errorf("creating app %s: %w", app, err)
	}
	stamp := strconv.FormatInt(time.Now().Unix()%100000, 36)
	var out []float64
	for i := range b.runs {
		service := fmt.Sprintf("deploy-%d-%s", i+1, stamp)
		took, err := deploy(ctx, c, service)
		if err != nil {
			return nil, err
		}
		out = append(out, took.Seconds())
		b.log.Info("deployed to HEALTHY", "run", i+1, "service", service, "seconds", round(took.Seconds()))
		if err := c.DeleteService(ctx, app, service); err != nil {
			return nil, fmt.Errorf("deleting %s: %w", service, err)
		}
		key := serviceKey(info, service)
		if err := poll(ctx, teardownTimeout, "instances of deleted "+key+" gone", func() (bool, string, error) {
			left := 0
			for _, rc := range regions {
				is, err := rc.Instances(ctx)
				if err != nil {
					return false, err.Error(), nil
				}
				for _, in := range is {
					if in.Service == key {
						left++
					}
				}
			}
			return left == 0, fmt.Sprintf("%d instances left", left), nil
		}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// measureFailovers deploys a service, then -runs times kills a Frankfurt
// machine that runs one of its instances and times the region's repair.
func (b *bench) measureFailovers(ctx context.Context, info dev.Info, regions map[string]*regionapi.Client) ([]float64, error) {
	c := api.NewClient(info.API, info.Token)
	service := "failover-" + strconv.FormatInt(time.Now().Unix()%100000, 36)
	if _, err := deploy(ctx, c, service); err != nil {
		return nil, err
	}
	key := serviceKey(info, service)
	fra := regions["fra"]
	st, err := fra.Status(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("fra status of %s: %w", key, err)
	}
	machines := map[string]bool{}
	for _, in := range st.Instances {
		machines[in.Machine] = true
	}
	if st.Wanted != 2 || len(st.Instances) != 2 || len(machines) != 2 {
		return nil, fmt.Errorf("fra runs %s as %d instances on %d machines (wanted %d), want 2 on 2 machines", key, len(st.Instances), len(machines), st.Wanted)
	}

	// The agents as they run now: dev's children first, then the
	// benchmark's restarts.
	agents := map[string]dev.Component{}
	for _, comp := range info.Components {
		if comp.Role == "agent" && comp.Region == "fra" {
			agents[comp.Machine] = comp
		}
	}

	var out []float64
	for i := range b.runs {
		// Steady state: every fra machine ready, the service at its
		// wanted count of healthy instances.
		var victim regionapi.InstanceStatus
		if err := poll(ctx, failoverTimeout, "fra steady before run "+strconv.Itoa(i+1), func() (bool, string, error) {
			ms, err := fra.Machines(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			for _, m := range ms {
				if !m.Ready {
					return false, "machine " + m.ID + " not ready", nil
				}
			}
			st, err := fra.Status(ctx, key)
			if err != nil {
				return false, err.Error(), nil
			}
			if healthyOn(st, "") < st.Wanted || len(st.Instances) != st.Wanted {
				return false, fmt.Sprintf("%d of %d healthy, %d instances", healthyOn(st, ""), st.Wanted, len(st.Instances)), nil
			}
			// Kill a different machine each run when the service moved.
			sorted := slices.Clone(st.Instances)
			sort.Slice(sorted, func(a, b int) bool { return sorted[a].Machine < sorted[b].Machine })
			victim = sorted[i%len(sorted)]
			return true, "", nil
		}); err != nil {
			return nil, err
		}
		comp, ok := agents[victim.Machine]
		if !ok {
			return nil, fmt.Errorf("instance %s runs on machine %q, which dev.json does not list in fra", victim.ID, victim.Machine)
		}
		shims := shimsUnder(filepath.Join(comp.DataDir, "instances"))
		if !slices.ContainsFunc(shims, func(s shimProc) bool { return s.instance == victim.ID }) {
			return nil, fmt.Errorf("no shim process of instance %s found under %s (found %v)", victim.ID, comp.DataDir, shims)
		}
		pid := b.agentPID(comp)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return nil, fmt.Errorf("killing agent %s (pid %d): %w", comp.Machine, pid, err)
		}
		for _, s := range shims {
			if err := syscall.Kill(s.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return nil, fmt.Errorf("killing shim %d of machine %s: %w", s.pid, comp.Machine, err)
			}
		}
		killed := time.Now()
		var took time.Duration
		if err := poll(ctx, failoverTimeout, fmt.Sprintf("fra back to its wanted healthy instances off %s (run %d)", comp.Machine, i+1), func() (bool, string, error) {
			st, err := fra.Status(ctx, key)
			if err != nil {
				return false, err.Error(), nil
			}
			n := healthyOn(st, comp.Machine)
			if st.Wanted > 0 && n >= st.Wanted {
				took = time.Since(killed)
				return true, "", nil
			}
			return false, fmt.Sprintf("%d of %d healthy on live machines", n, st.Wanted), nil
		}); err != nil {
			return nil, err
		}
		out = append(out, took.Seconds())
		b.log.Info("machine failover", "run", i+1, "machine", comp.Machine, "instances_killed", len(shims), "seconds", round(took.Seconds()))

		// The region has declared the machine lost; bring it back.
		if err := waitMachine(ctx, fra, comp.Machine, false); err != nil {
			return nil, err
		}
		if err := b.restartAgent(comp); err != nil {
			return nil, err
		}
		if err := waitMachine(ctx, fra, comp.Machine, true); err != nil {
			return nil, fmt.Errorf("%w (see %s)", err, comp.Log)
		}
	}
	return out, nil
}

// healthyOn counts the healthy instances of the wanted deployment that
// are not on the lost machine.
func healthyOn(st regionapi.ServiceStatus, lost string) int {
	n := 0
	for _, in := range st.Instances {
		if in.Healthy && in.Machine != lost && (st.DeploymentID == "" || in.DeploymentID == st.DeploymentID) {
			n++
		}
	}
	return n
}

// waitMachine waits until the region reports a machine ready (or not).
func waitMachine(ctx context.Context, rc *regionapi.Client, machine string, ready bool) error {
	what := "machine " + machine + " ready again"
	if !ready {
		what = "machine " + machine + " marked not ready"
	}
	return poll(ctx, rejoinTimeout, what, func() (bool, string, error) {
		ms, err := rc.Machines(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		for _, m := range ms {
			if m.ID == machine {
				return m.Ready == ready, fmt.Sprintf("ready=%v", m.Ready), nil
			}
		}
		return false, "not listed", nil
	})
}

// agentPID returns the pid of a machine's agent: the benchmark's restart
// when there is one, else dev's child.
func (b *bench) agentPID(comp dev.Component) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := len(b.agents) - 1; i >= 0; i-- {
		if b.agents[i].comp.Machine == comp.Machine && b.agents[i].comp.Region == comp.Region {
			return b.agents[i].cmd.Process.Pid
		}
	}
	return comp.PID
}

// restartAgent starts a killed agent again with its arguments, minus the
// join token (its identity is on disk), logging to its log file.
func (b *bench) restartAgent(comp dev.Component) error {
	var args []string
	for i := 0; i < len(comp.Args); i++ {
		if comp.Args[i] == "--join-token-file" {
			i++
			continue
		}
		args = append(args, comp.Args[i])
	}
	logf, err := os.OpenFile(comp.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("agent %s log: %w", comp.Machine, err)
	}
	cmd := exec.Command(filepath.Join(b.binDir, "meridian"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+b.binDir+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("restarting agent %s: %w", comp.Machine, err)
	}
	p := &agentProc{comp: comp, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	b.mu.Lock()
	b.agents = append(b.agents, p)
	b.mu.Unlock()
	return nil
}

// cleanup stops the restarted agents, then every installation (which
// destroys the instances its agents leave), then kills any shim still
// running under the benchmark's directory, and removes it.
func (b *bench) cleanup() error {
	b.mu.Lock()
	agents, envs := b.agents, b.envs
	b.agents, b.envs = nil, nil
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-p.done:
				return
			default:
			}
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(stopGrace):
				p.cmd.Process.Kill()
				<-p.done
			}
		}()
	}
	wg.Wait()
	for _, env := range envs {
		env.Close()
	}
	var err error
	if b.root != "" {
		if left := shimsUnder(b.root); len(left) > 0 {
			for _, s := range left {
				syscall.Kill(s.pid, syscall.SIGKILL)
			}
			err = fmt.Errorf("cleanup: %d instance shims outlived their installation and were killed: %v", len(left), left)
		}
		os.RemoveAll(b.root)
	}
	return err
}

// shimProc is an instance's shim process.
type shimProc struct {
	pid      int
	instance string
}

// shimsUnder finds the shim processes whose instance directory is under
// dir, by their /proc cmdline ("meridian-shim <instance-id>") and
// environment.
func shimsUnder(dir string) []shimProc {
	var pids []shimProc
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) != 2 || !strings.HasSuffix(args[0], "meridian-shim") {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, shimEnv+"="); ok && strings.HasPrefix(v, dir+string(filepath.Separator)) {
				pids = append(pids, shimProc{pid: pid, instance: args[1]})
				break
			}
		}
	}
	return pids
}

// poll calls cond every 50ms until it is true, fails, or within passes;
// the timeout error names what was awaited and its last state.
func poll(ctx context.Context, within time.Duration, what string, cond func() (bool, string, error)) error {
	deadline := time.Now().Add(within)
	last := ""
	for {
		ok, state, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		last = state
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s; last: %s", within, what, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func round(s float64) float64 { return float64(int(s*1000+0.5)) / 1000 }

func secs(s float64) string { return strconv.FormatFloat(s, 'f', 2, 64) + " s" }

func list(v []float64) string {
	parts := make([]string, len(v))
	for i, s := range v {
		parts[i] = strconv.FormatFloat(s, 'f', 2, 64)
	}
	return strings.Join(parts, ", ")
}
