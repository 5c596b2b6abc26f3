// Command mesh measures the private mesh on real processes and prints two
// figures:
//
//   - agent RSS with the mesh's DNS server and node proxy serving N
//     services (default 100): a caller instance on machine m1 (fra1)
//     resolves <service>.bench.internal for N services whose instances run
//     on m2 (fra2), and calls each once through both node proxies (mutual
//     TLS); m1's VmRSS is sampled before (the N services only in its feed)
//     and after;
//   - feed propagation: how long a new instance placed in region was takes
//     to be reachable by name from fra (resolved by m1's DNS server and
//     answering through the mesh), from when was reports it healthy, and
//     from the apply; median over -runs new services.
//
// Two regions run in-process (embedded etcd, mutual TLS, following each
// other's feeds); the agents are separate processes of a minimal binary
// (bench/mesh/meshagent: the agent and its driver, also the workload),
// built on the fly. It needs root (namespaces, DNS on port 53).
//
//	go run ./bench/mesh [-services 100] [-runs 10] [-idle 5s] [-samples 5]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
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

	"github.com/miekg/dns"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/bench/benchproc"
	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/region"
	"github.com/meridian-run/meridian/regionapi"
)

const trustDomain = "meridian.bench"

func main() {
	driver.MaybeRunShim()
	benchproc.Maybe()
	services := flag.Int("services", 100, "services the measured agent's caller resolves and calls")
	runs := flag.Int("runs", 10, "new instances placed in was for the propagation figure")
	idle := flag.Duration("idle", 5*time.Second, "how long the agent idles before RSS samples")
	samples := flag.Int("samples", 5, "RSS samples, one a second")
	flag.Parse()
	if *services < 1 || *services > 250 || *runs < 1 || *samples < 1 {
		fmt.Fprintln(os.Stderr, "mesh: -services must be 1 to 250, -runs and -samples at least 1")
		os.Exit(2)
	}
	if err := run(*services, *runs, *idle, *samples); err != nil {
		fmt.Fprintln(os.Stderr, "mesh:", err)
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

// bench is the running installation.
type bench struct {
	ctx     context.Context
	tmp     string
	log     *slog.Logger
	bin     string
	shim    string
	roots   string
	root    *pki.CA
	global  *pki.Leaf
	regions map[string]*region.Server
	clients map[string]*regionapi.Client
	agents  []*agentProc
}

// agentProc is an agent process.
type agentProc struct {
	cfg    benchproc.AgentConfig
	cmd    *exec.Cmd
	exited chan error
}

func run(n, runs int, idle time.Duration, samples int) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	tmp, err := os.MkdirTemp("", "meshbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{ctx: ctx, tmp: tmp, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		regions: map[string]*region.Server{}, clients: map[string]*regionapi.Client{}}
	defer b.close()
	if err := b.build(); err != nil {
		return err
	}
	if err := b.trust(); err != nil {
		return err
	}
	for _, r := range []string{"fra", "was"} {
		if err := b.startRegion(r); err != nil {
			return err
		}
	}
	if err := b.peer(); err != nil {
		return err
	}
	octet := 150 + rand.IntN(60)
	m1, err := b.startAgent("fra", "fra1", "m1", octet, 24000)
	if err != nil {
		return err
	}
	if _, err := b.startAgent("fra", "fra2", "m2", octet+1, 25000); err != nil {
		return err
	}
	if _, err := b.startAgent("was", "was1", "w1", octet+2, 26000); err != nil {
		return err
	}

	// The caller on m1, N services on m2.
	if err := b.apply("fra", "caller", []string{"fra1"}); err != nil {
		return err
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("s%03d", i)
		if err := b.apply("fra", names[i], []string{"fra2"}); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := b.waitHealthy("fra", n+1, 5*time.Minute); err != nil {
		return err
	}
	fmt.Printf("%d services and the caller healthy in fra after %.1fs\n", n, time.Since(start).Seconds())
	dnsAddr, err := callerDNS(m1)
	if err != nil {
		return err
	}
	// The feed lists the N services; nothing resolved yet.
	for _, name := range names {
		if _, err := b.reach(dnsAddr, name+".bench.internal.", time.Minute, false); err != nil {
			return fmt.Errorf("%s in m1's feed: %w", name, err)
		}
	}
	time.Sleep(idle)
	before, err := sampleRSS(m1.cmd.Process.Pid, samples)
	if err != nil {
		return err
	}
	// Resolve and call each.
	start = time.Now()
	for _, name := range names {
		if _, err := b.reach(dnsAddr, name+".bench.internal.", time.Minute, true); err != nil {
			return fmt.Errorf("calling %s: %w", name, err)
		}
	}
	fmt.Printf("resolved and called %d services through the mesh in %.2fs\n", n, time.Since(start).Seconds())
	time.Sleep(idle)
	after, err := sampleRSS(m1.cmd.Process.Pid, samples)
	if err != nil {
		return err
	}
	m2rss, _ := sampleRSS(b.agents[1].cmd.Process.Pid, 1)
	fmt.Printf("agent RSS (m1, the caller's machine), %d services in its feed, none resolved: %.1f MB (median of %d samples)\n", n, before, samples)
	fmt.Printf("agent RSS (m1) with its DNS server and node proxy serving %d services (resolved, each called once, sessions open): %.1f MB (median of %d samples)\n", n, after, samples)
	fmt.Printf("agent RSS (m2, running the %d instances and delivering the calls): %.1f MB\n", n, m2rss)

	// Propagation: new services in was, reached by name from fra.
	var sinceHealthy, sinceApply []time.Duration
	for k := range runs {
		name := fmt.Sprintf("p%02d", k)
		applied := time.Now()
		if err := b.apply("was", name, nil); err != nil {
			return err
		}
		type result struct {
			at  time.Time
			err error
		}
		reached := make(chan result, 1)
		go func() {
			at, err := b.reach(dnsAddr, name+".bench.internal.", time.Minute, true)
			reached <- result{at, err}
		}()
		healthy, err := b.waitServiceHealthy("was", regionapi.ServiceKey("bench", "bench", name), time.Minute)
		if err != nil {
			return err
		}
		r := <-reached
		if r.err != nil {
			return fmt.Errorf("%s from fra: %w", name, r.err)
		}
		sinceHealthy = append(sinceHealthy, r.at.Sub(healthy))
		sinceApply = append(sinceApply, r.at.Sub(applied))
	}
	slices.Sort(sinceHealthy)
	slices.Sort(sinceApply)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("new instance in was reachable by name from fra: %.0f ms after was reported it healthy (median of %d; min %.0f, max %.0f); %.0f ms after the apply (median)\n",
		ms(sinceHealthy[len(sinceHealthy)/2]), runs, ms(sinceHealthy[0]), ms(sinceHealthy[len(sinceHealthy)-1]), ms(sinceApply[len(sinceApply)/2]))
	return nil
}

// build builds the agent binary and the small shim.
func (b *bench) build() error {
	b.bin = filepath.Join(b.tmp, "meshagent")
	b.shim = filepath.Join(b.tmp, "meridian-shim")
	for pkg, out := range map[string]string{
		"github.com/meridian-run/meridian/bench/mesh/meshagent": b.bin,
		"github.com/meridian-run/meridian/driver/meridian-shim": b.shim,
	} {
		if o, err := exec.CommandContext(b.ctx, "go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %w\n%s", pkg, err, o)
		}
	}
	return nil
}

// trust creates the root, the global certificate and the roots file.
func (b *bench) trust() error {
	var err error
	if b.root, err = pki.NewRoot(trustDomain, time.Now(), 48*time.Hour); err != nil {
		return err
	}
	if b.global, err = b.root.Issue(pki.LeafRequest{ID: pki.GlobalID(trustDomain), Usage: pki.UsageClient, TTL: 24 * time.Hour, Now: time.Now()}); err != nil {
		return err
	}
	b.roots = filepath.Join(b.tmp, "root.pem")
	return pki.SaveRoots(b.roots, b.root.Cert)
}

func (b *bench) startRegion(id string) error {
	ca, err := b.root.NewIntermediate(id, time.Now(), 48*time.Hour)
	if err != nil {
		return err
	}
	cp, err := freePort()
	if err != nil {
		return err
	}
	pp, err := freePort()
	if err != nil {
		return err
	}
	srv, err := region.Start(b.ctx, region.Config{Region: id, DataDir: filepath.Join(b.tmp, "region-"+id), Listen: "127.0.0.1:0", CA: ca,
		Etcd:   region.EtcdConfig{ClientURL: "https://127.0.0.1:" + strconv.Itoa(cp), PeerURL: "https://127.0.0.1:" + strconv.Itoa(pp)},
		Logger: b.log.With("region", id)})
	if err != nil {
		return err
	}
	b.regions[id] = srv
	for !srv.IsLeader() {
		if b.ctx.Err() != nil {
			return fmt.Errorf("region %s never led: %w", id, b.ctx.Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
	rl, err := pki.NewReloader(b.global)
	if err != nil {
		return err
	}
	b.clients[id] = regionapi.NewClient(srv.URL(), &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(rl, b.root.Pool(), pki.AllowKinds(pki.KindServer))}})
	return nil
}

// peer tells each region about the other, as the global plane does.
func (b *bench) peer() error {
	all := []regionapi.Peer{
		{ID: "fra", URL: b.regions["fra"].URL(), Latitude: 50.11, Longitude: 8.68},
		{ID: "was", URL: b.regions["was"].URL(), Latitude: 38.91, Longitude: -77.04},
	}
	for i, p := range all {
		if err := b.clients[p.ID].SetPeers(b.ctx, regionapi.Peers{Self: all[i], Peers: all}); err != nil {
			return fmt.Errorf("peers of %s: %w", p.ID, err)
		}
	}
	return nil
}

func (b *bench) startAgent(regionID, dc, machine string, octet, portMin int) (*agentProc, error) {
	tok, err := b.regions[regionID].CreateJoinToken(b.ctx, time.Hour, 1)
	if err != nil {
		return nil, err
	}
	cfg := benchproc.AgentConfig{Region: regionID, RegionURLs: []string{b.regions[regionID].URL()}, JoinToken: tok.Value,
		RootsFile: b.roots, TrustDomain: trustDomain, DataDir: filepath.Join(b.tmp, "agent-"+machine), Machine: machine,
		Datacenter: dc, PortMin: portMin, PortMax: portMin + 999, ShimPath: b.shim,
		MeshNet: fmt.Sprintf("127.%d.0.0/16", octet),
		// This process resolves and calls on behalf of the caller
		// instance, so the agents carry calls from any local process.
		MeshUnverifiedCallers: true}
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(b.bin)
	cmd.Env = append(os.Environ(), benchproc.RoleEnv+"=agent", benchproc.ConfigEnv+"="+string(js))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &agentProc{cfg: cfg, cmd: cmd, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	b.agents = append(b.agents, p)
	return p, nil
}

// apply applies service bench.bench.<name>: one instance of the workload.
func (b *bench) apply(regionID, name string, dcs []string) error {
	def := api.RegionalDefinition{Region: regionID, Name: name, Type: "web", Command: []string{b.bin},
		Env:          []api.ResolvedEnv{{Key: benchproc.RoleEnv, Value: "workload"}},
		Ports:        []api.Port{{Port: 8080, Protocol: "http"}},
		Scaling:      api.ScalingRange{Min: 1, Max: 1},
		InstanceType: api.InstanceType{Name: "tiny", MilliCPU: 10, MemoryMB: 32},
		Datacenters:  dcs,
		HealthChecks: []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"}, Interval: "500ms", Timeout: "1s"}}}
	_, err := b.clients[regionID].Apply(b.ctx, regionapi.Apply{Generation: 1, Org: "bench", App: "bench", Service: name,
		DeploymentID: "dep-" + regionID + "-" + name, Version: 1, Definition: def})
	return err
}

// waitHealthy waits until n services of a region are healthy.
func (b *bench) waitHealthy(regionID string, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ss, err := b.clients[regionID].Services(b.ctx)
		healthy := 0
		for _, s := range ss {
			if s.Phase == regionapi.PhaseHealthy {
				healthy++
			}
		}
		if err == nil && healthy >= n {
			return nil
		}
		if err := b.agentsAlive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d services healthy in %s after %s (%v)", healthy, n, regionID, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitServiceHealthy polls a service every 20ms and returns when it was
// first seen healthy.
func (b *bench) waitServiceHealthy(regionID, key string, within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	for {
		ss, err := b.clients[regionID].Status(b.ctx, key)
		if err == nil && ss.Healthy >= 1 {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s not healthy in %s after %s (%v)", key, regionID, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *bench) agentsAlive() error {
	for _, a := range b.agents {
		select {
		case err := <-a.exited:
			a.exited <- err
			return fmt.Errorf("agent %s exited: %v", a.cfg.Machine, err)
		default:
		}
	}
	return nil
}

// reach polls, every 10ms, a name at the caller's DNS server until it
// resolves and (with call) answers GET / through the mesh; it returns when.
func (b *bench) reach(dnsAddr, name string, within time.Duration, call bool) (time.Time, error) {
	deadline := time.Now().Add(within)
	c := &dns.Client{Timeout: time.Second}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	for time.Now().Before(deadline) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := c.Exchange(m, dnsAddr)
		switch {
		case err != nil:
			last = err
		case r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0:
			last = fmt.Errorf("%s: %s", name, dns.RcodeToString[r.Rcode])
		case !call:
			return time.Now(), nil
		default:
			ip := r.Answer[0].(*dns.A).A
			resp, err := hc.Get("http://" + net.JoinHostPort(ip.String(), "8080") + "/")
			if err != nil {
				last = err
				break
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && len(body) > 0 {
				return time.Now(), nil
			}
			last = fmt.Errorf("%s answered %s %q", name, resp.Status, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("not within %s: %w", within, last)
}

// callerDNS reads which caller slot m1 gave the caller service, and
// returns its DNS server's address.
func callerDNS(m1 *agentProc) (string, error) {
	path := filepath.Join(m1.cfg.DataDir, "mesh", "state.json")
	var st struct {
		Slots map[string]struct {
			Slot int `json:"slot"`
		} `json:"slots"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		bs, err := os.ReadFile(path)
		if err == nil && json.Unmarshal(bs, &st) == nil {
			if s, ok := st.Slots["bench.bench.caller"]; ok {
				o := strings.Split(strings.TrimSuffix(m1.cfg.MeshNet, ".0.0/16"), ".")
				return fmt.Sprintf("%s.%s.%d.1:53", o[0], o[1], s.Slot), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s: no slot for the caller (%v)", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sampleRSS returns the median VmRSS of pid in MB over samples, one a
// second.
func sampleRSS(pid, samples int) (float64, error) {
	var rss []float64
	for i := range samples {
		v, err := vmRSS(pid)
		if err != nil {
			return 0, err
		}
		rss = append(rss, v)
		if i < samples-1 {
			time.Sleep(time.Second)
		}
	}
	slices.Sort(rss)
	return rss[len(rss)/2], nil
}

func vmRSS(pid int) (float64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(v)
			if len(fs) == 2 {
				n, err := strconv.ParseFloat(fs[0], 64)
				return n / 1024, err
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

// close stops the agents (and what they leave running) and the regions.
func (b *bench) close() {
	for _, a := range b.agents {
		a.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, a := range b.agents {
		select {
		case <-a.exited:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.exited
		}
		if d, err := driver.NewProcess(driver.ProcessConfig{DataDir: filepath.Join(a.cfg.DataDir, "instances")}); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			ids, _ := d.List(ctx)
			for _, id := range ids {
				d.Destroy(ctx, id)
			}
			cancel()
		}
	}
	for _, r := range b.regions {
		r.Close()
	}
}
