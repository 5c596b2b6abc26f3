// Command agentrss measures the resident memory of an idle machine agent
// running N instances (default 10). It starts a real region in-process
// (embedded etcd, mutual TLS), starts the agent as a separate process (the
// agentproc binary, built on the fly, or this binary with -self), applies a
// service of N tiny HTTP instances with health checks, waits until they are
// all healthy, lets the agent idle, then samples its VmRSS.
//
//	go run ./bench/agentrss [-instances 10] [-idle 10s] [-samples 5] [-self]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/bench/benchproc"
	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/region"
	"github.com/meridian-run/meridian/regionapi"
)

func main() {
	driver.MaybeRunShim()
	benchproc.Maybe()
	instances := flag.Int("instances", 10, "instances the agent runs")
	idle := flag.Duration("idle", 10*time.Second, "how long the agent idles before sampling")
	samples := flag.Int("samples", 5, "RSS samples, one a second")
	self := flag.Bool("self", false, "run the agent as this binary (which links the region and etcd) instead of the minimal agentproc")
	flag.Parse()
	if *instances < 1 || *samples < 1 {
		fmt.Fprintln(os.Stderr, "agentrss: -instances and -samples must be at least 1")
		os.Exit(2)
	}
	if err := run(*instances, *idle, *samples, *self); err != nil {
		fmt.Fprintln(os.Stderr, "agentrss:", err)
		os.Exit(1)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func run(n int, idle time.Duration, samples int, self bool) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tmp, err := os.MkdirTemp("", "agentrss-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	bin, err := os.Executable()
	if err != nil {
		return err
	}
	if !self {
		bin = filepath.Join(tmp, "agentproc")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/meridian-run/meridian/bench/agentrss/agentproc").CombinedOutput()
		if err != nil {
			return fmt.Errorf("building agentproc: %w\n%s", err, out)
		}
	}

	// Trust: a root, the region's intermediate, the global client.
	now := time.Now()
	root, err := pki.NewRoot("meridian.bench", now, 48*time.Hour)
	if err != nil {
		return err
	}
	ca, err := root.NewIntermediate("rss", now, 48*time.Hour)
	if err != nil {
		return err
	}
	globalLeaf, err := root.Issue(pki.LeafRequest{ID: pki.GlobalID("meridian.bench"), Usage: pki.UsageClient, TTL: time.Hour, Now: now})
	if err != nil {
		return err
	}
	rootsFile := filepath.Join(tmp, "root.pem")
	if err := pki.SaveRoots(rootsFile, root.Cert); err != nil {
		return err
	}

	// The region.
	cp, err := freePort()
	if err != nil {
		return err
	}
	pp, err := freePort()
	if err != nil {
		return err
	}
	srv, err := region.Start(ctx, region.Config{Region: "rss", DataDir: filepath.Join(tmp, "region"), Listen: "127.0.0.1:0", CA: ca,
		Etcd:   region.EtcdConfig{ClientURL: "https://127.0.0.1:" + strconv.Itoa(cp), PeerURL: "https://127.0.0.1:" + strconv.Itoa(pp)},
		Logger: log})
	if err != nil {
		return err
	}
	defer srv.Close()
	for !srv.IsLeader() {
		if ctx.Err() != nil {
			return fmt.Errorf("region never led: %w", ctx.Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
	rl, err := pki.NewReloader(globalLeaf)
	if err != nil {
		return err
	}
	global := regionapi.NewClient(srv.URL(), &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(rl, root.Pool(), pki.AllowKinds(pki.KindServer))}})
	tok, err := srv.CreateJoinToken(ctx, time.Hour, 1)
	if err != nil {
		return err
	}

	// The agent, as its own process.
	dataDir := filepath.Join(tmp, "agent")
	cfg, _ := json.Marshal(benchproc.AgentConfig{Region: "rss", RegionURLs: []string{srv.URL()}, JoinToken: tok.Value,
		RootsFile: rootsFile, DataDir: dataDir, Machine: "m1", Datacenter: "dc1", PortMin: 24000, PortMax: 24999})
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), benchproc.RoleEnv+"=agent", benchproc.ConfigEnv+"="+string(cfg))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		// Whatever still runs (the agent leaves instances running).
		if d, derr := driver.NewProcess(driver.ProcessConfig{DataDir: filepath.Join(dataDir, "instances")}); derr == nil {
			ids, _ := d.List(context.Background())
			for _, id := range ids {
				d.Destroy(context.Background(), id)
			}
		}
	}()

	// N instances of the tiny workload, health-checked every 5s.
	key := regionapi.ServiceKey("bench", "rss", "idle")
	def := api.RegionalDefinition{Region: "rss", Name: "idle", Type: "web", Command: []string{bin},
		Env:          []api.ResolvedEnv{{Key: benchproc.RoleEnv, Value: "workload"}},
		Ports:        []api.Port{{Port: 8080, Protocol: "http"}},
		Scaling:      api.ScalingRange{Min: n, Max: n},
		InstanceType: api.InstanceType{Name: "tiny", MilliCPU: 100, MemoryMB: 64},
		HealthChecks: []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"}, Interval: "5s", Timeout: "2s"}}}
	if _, err := global.Apply(ctx, regionapi.Apply{Generation: 1, Org: "bench", App: "rss", Service: "idle",
		DeploymentID: "dep-1", Version: 1, Definition: def}); err != nil {
		return err
	}
	start := time.Now()
	for {
		ss, err := global.Status(ctx, key)
		if err == nil && ss.Healthy == n {
			break
		}
		select {
		case err := <-exited:
			return fmt.Errorf("agent exited: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("instances not healthy: %w (last: %+v, %v)", ctx.Err(), ss, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	fmt.Printf("agent pid %d (%s): %d instances healthy after %.1fs; idling %s\n", cmd.Process.Pid, filepath.Base(bin), n, time.Since(start).Seconds(), idle)
	time.Sleep(idle)

	var rss []float64
	var hwm float64
	for i := range samples {
		st, err := procStatus(cmd.Process.Pid)
		if err != nil {
			return err
		}
		rss = append(rss, st["VmRSS"])
		hwm = st["VmHWM"]
		if i < samples-1 {
			time.Sleep(time.Second)
		}
	}
	slices.Sort(rss)
	shimRSS, shimCount := shims()
	fmt.Printf("agent RSS with %d instances: %.1f MB (median of %d samples, min %.1f, max %.1f); peak (VmHWM) %.1f MB\n",
		n, rss[len(rss)/2], len(rss), rss[0], rss[len(rss)-1], hwm)
	if shimCount > 0 {
		fmt.Printf("shim RSS: %.1f MB per instance (%d shims)\n", shimRSS/float64(shimCount), shimCount)
	}

	// Stop the service: the agent stops its instances.
	if err := global.DeleteService(ctx, key, 2); err != nil {
		return err
	}
	for {
		ss, err := global.Status(ctx, key)
		if err == nil && ss.Phase == regionapi.PhaseDeleted {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("service not deleted: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// procStatus reads the kB fields of /proc/<pid>/status, in MB.
func procStatus(pid int) (map[string]float64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 2 && fs[1] == "kB" {
			if n, err := strconv.ParseFloat(fs[0], 64); err == nil {
				out[k] = n / 1024
			}
		}
	}
	return out, sc.Err()
}

// shims sums the RSS of the instances' shim processes.
func shims() (float64, int) {
	ents, _ := os.ReadDir("/proc")
	var sum float64
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.HasPrefix(string(b), "meridian-shim\x00") {
			continue
		}
		if st, err := procStatus(pid); err == nil {
			sum += st["VmRSS"]
			n++
		}
	}
	return sum, n
}
