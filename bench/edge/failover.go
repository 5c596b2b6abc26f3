package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/dev"
	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/linkproxy"
	"github.com/meridian-run/meridian/pki"
)

// webDef is the demo app with a public route, twice in each region.
const webDef = `name: web
regions: [fra, was, sin]
command: [hello]
ports: [{port: 8080}]
routes: [{port: 8080, path: /}]
scalings: [{min: 2, max: 2}]
instance_types: [{type: nano}]
health_checks: [{port: 8080, http: {path: /healthz}, grace_period: 1s, interval: 500ms, timeout: 400ms, restart_limit: 3}]
strategy: {type: all_at_once}
`

// failover measures a region's failure through an edge, blackholed then
// refused (fra's links go through link proxies; the others are direct).
func (b *bench) failover(ctx context.Context) error {
	topo := dev.DefaultTopology()
	topo.Edges = nil
	topo.LeaseTTL = "3s"
	for i := range topo.Regions {
		for j := range topo.Regions[i].Datacenters {
			topo.Regions[i].Datacenters[j].Machines = 1
		}
	}
	b.log.Info("starting a dev installation")
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	env, err := dev.Start(sctx, dev.Config{StateDir: filepath.Join(b.root, "dev"), Topology: topo, Binary: filepath.Join(b.binDir, "meridian"),
		PathDirs: []string{b.binDir}, APIListen: "127.0.0.1:0", Logger: b.quiet})
	cancel()
	if err != nil {
		return err
	}
	defer env.Close()
	info := env.Info()
	c := api.NewClient(info.API, info.Token)
	if _, err := c.CreateApp(ctx, "web", ""); err != nil {
		return err
	}
	d, err := c.Deploy(ctx, "web", []byte(webDef), "application/yaml", "")
	if err != nil {
		return err
	}
	if err := poll(ctx, 2*time.Minute, "deployment HEALTHY", func() (bool, string) {
		got, err := c.GetDeployment(ctx, d.ID)
		if err != nil {
			return false, err.Error()
		}
		return got.Status == api.StatusHealthy, got.Status
	}); err != nil {
		return err
	}

	// An edge at Paris in this process, every link through a link proxy.
	root, err := pki.LoadCA(filepath.Join(info.PKIDir, "root"))
	if err != nil {
		return err
	}
	idDir := filepath.Join(b.root, "edge-pki")
	if _, err := edge.IssueIdentity(root, idDir, "par", info.Domain, time.Now(), 24*time.Hour); err != nil {
		return err
	}
	id, err := edge.LoadIdentity(idDir)
	if err != nil {
		return err
	}
	// fra's API and instances are reached through link proxies.
	links := &linkProxies{m: map[string]*linkproxy.Proxy{}}
	defer links.close()
	fraLinks, err := regionLinks(ctx, c, links, info, "fra")
	if err != nil {
		return err
	}
	e, err := edge.Start(ctx, edge.Config{Location: "par", Latitude: 48.86, Longitude: 2.35, Domain: info.Domain, Listen: "127.0.0.1:0",
		StateDir: filepath.Join(b.root, "edge-failover"), GlobalURL: info.API, GlobalToken: info.AdminToken, Identity: id,
		Dial: links.dial, DialRegion: links.dial, ProbeInterval: b.probeInterval, ProbeTimeout: b.probeTimeout, Logger: b.quiet})
	if err != nil {
		return err
	}
	defer e.Close()
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1024, MaxIdleConns: 1024}}
	fromFra := func() (bool, string) {
		w, err := through(hc, e.URL())
		if err != nil {
			return false, err.Error()
		}
		return w.Region == "fra", w.Region
	}
	if err := poll(ctx, 30*time.Second, "the edge routes to fra", fromFra); err != nil {
		return err
	}

	// Blackholed: fra's API and instances swallow every byte.
	b.log.Info("blackholing fra under load", "rate", b.rate, "duration", b.duration)
	black := b.underLoad(e.URL(), func() {
		for _, p := range fraLinks {
			p.Blackhole()
		}
	})
	for _, p := range fraLinks {
		p.Unblackhole()
	}
	if err := poll(ctx, 60*time.Second, "fra back at the edge", fromFra); err != nil {
		return err
	}

	// Refused: fra's server, agents and instances killed.
	b.log.Info("killing fra under load", "rate", b.rate, "duration", b.duration)
	var kills []int
	for _, comp := range info.Components {
		if comp.Region == "fra" && (comp.Role == "region" || comp.Role == "agent") {
			kills = append(kills, comp.PID)
		}
	}
	refused := b.underLoad(e.URL(), func() {
		for _, pid := range append(shimsOf(ctx, c, info.StateDir, "fra"), kills...) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	fmt.Printf("\nfailover: an edge at Paris, GET / at %d/s for %s after its closest region (fra) fails; probe every %s, timeout %s, connect timeout 500ms\n",
		b.rate, b.duration, b.probeInterval, b.probeTimeout)
	fmt.Printf("  %-42s %s\n", "fra blackholed (links swallow every byte):", black)
	fmt.Printf("  %-42s %s\n", "fra killed (connections refused):", refused)
	return nil
}

// regionLinks returns the link proxies to a region's API and to the node
// proxies of its instances of web (created now, so that the edge's next
// dials use them).
func regionLinks(ctx context.Context, c *api.Client, links *linkProxies, info dev.Info, region string) ([]*linkproxy.Proxy, error) {
	var out []*linkproxy.Proxy
	for _, comp := range info.Components {
		if comp.Role == "region" && comp.Region == region {
			p, err := links.proxy(strings.TrimPrefix(comp.Address, "https://"))
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	list, err := c.ListInstances(ctx)
	if err != nil {
		return nil, err
	}
	meshPorts := map[string]string{} // machine -> its node proxy's port (the agent's --mesh-port)
	for _, comp := range info.Components {
		if comp.Role == "agent" {
			if i := slices.Index(comp.Args, "--mesh-port"); i >= 0 && i+1 < len(comp.Args) {
				meshPorts[comp.Machine] = comp.Args[i+1]
			}
		}
	}
	for _, i := range list.Items {
		if i.Region == region {
			// The edge reaches the instance through its machine's node proxy.
			port, ok := meshPorts[i.Machine]
			if !ok {
				return nil, fmt.Errorf("no mesh port for machine %s in dev.json", i.Machine)
			}
			p, err := links.proxy(net.JoinHostPort(i.Address, port))
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// shimsOf finds the shim processes of a region's instances in the
// installation of stateDir.
func shimsOf(ctx context.Context, c *api.Client, stateDir, region string) []int {
	list, err := c.ListInstances(ctx)
	if err != nil {
		return nil
	}
	want := map[string]bool{}
	for _, i := range list.Items {
		if i.Region == region {
			want[i.ID] = true
		}
	}
	var pids []int
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
		if len(args) != 2 || !strings.HasSuffix(args[0], "meridian-shim") || !want[args[1]] {
			continue
		}
		// Instance ids repeat across installations: only this one's.
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && strings.Contains(string(env), "="+stateDir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// where is what the demo app answers.
type where struct{ Region, Instance string }

func through(c *http.Client, base string) (where, error) {
	req, err := http.NewRequest("GET", base+"/", nil)
	if err != nil {
		return where{}, err
	}
	req.Host = "web-demo.meridian.localhost"
	resp, err := c.Do(req)
	if err != nil {
		return where{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return where{}, fmt.Errorf("%s (%s)", resp.Status, resp.Header.Get(edge.ErrorHeader))
	}
	var w where
	err = json.Unmarshal(body, &w)
	return w, err
}

// sample is one request of a load run.
type sample struct {
	start time.Time
	dur   time.Duration
	where where
	err   error
}

// outcome sums up a load run around a failure.
type outcome struct {
	total, failed       int
	lastFailure, slowed time.Duration // after the failure: when the last failure / answer over 100ms started
	maxLatency          time.Duration
	before, after       map[string]int
	errors              map[string]int // the first kinds of failure
}

func (o outcome) String() string {
	errs := ""
	if len(o.errors) > 0 {
		errs = fmt.Sprintf("; failures: %v", o.errors)
	}
	return fmt.Sprintf("%d requests, %d failed; 100%% success from +%s; slowed (>100ms) until +%s; slowest %s; answered before by %v, after by %v%s",
		o.total, o.failed, o.lastFailure.Round(time.Millisecond), o.slowed.Round(time.Millisecond), o.maxLatency.Round(time.Millisecond), o.before, o.after, errs)
}

// underLoad sends GETs at b.rate per second (open loop), calls fail one
// second in, and keeps the load up for b.duration after.
func (b *bench) underLoad(url string, fail func()) outcome {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1024, MaxIdleConns: 1024}}
	var mu sync.Mutex
	var samples []sample
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(b.rate))
	defer tick.Stop()
	start := time.Now()
	var t0 time.Time
	for now := range tick.C {
		if t0.IsZero() && now.Sub(start) >= time.Second {
			t0 = time.Now()
			fail()
		}
		if !t0.IsZero() && now.Sub(t0) >= b.duration {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := sample{start: time.Now()}
			s.where, s.err = through(hc, url)
			s.dur = time.Since(s.start)
			mu.Lock()
			samples = append(samples, s)
			mu.Unlock()
		}()
	}
	wg.Wait()
	o := outcome{after: map[string]int{}, before: map[string]int{}, errors: map[string]int{}}
	slices.SortFunc(samples, func(a, b sample) int { return a.start.Compare(b.start) })
	for _, s := range samples {
		o.total++
		off := s.start.Sub(t0)
		if s.err != nil {
			o.failed++
			o.lastFailure = max(o.lastFailure, off)
			if o.errors[s.err.Error()] == 0 && len(o.errors) >= 3 {
				continue
			}
			o.errors[s.err.Error()]++
			continue
		}
		if off <= 0 {
			o.before[s.where.Region]++
		}
		if off > 0 {
			o.after[s.where.Region]++
			o.maxLatency = max(o.maxLatency, s.dur)
			if s.dur > 100*time.Millisecond {
				o.slowed = max(o.slowed, off)
			}
		}
	}
	return o
}

func poll(ctx context.Context, within time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return nil
		}
		last = state
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: not within %s (last: %s)", what, within, last)
}

// linkProxies puts a link proxy on every address dialed through it.
type linkProxies struct {
	mu sync.Mutex
	m  map[string]*linkproxy.Proxy
}

func (p *linkProxies) proxy(addr string) (*linkproxy.Proxy, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	lp := p.m[addr]
	if lp == nil {
		var err error
		if lp, err = linkproxy.New(linkproxy.Config{Target: addr}); err != nil {
			return nil, err
		}
		p.m[addr] = lp
	}
	return lp, nil
}

func (p *linkProxies) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	lp, err := p.proxy(addr)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, network, lp.Addr())
}

func (p *linkProxies) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, lp := range p.m {
		lp.Close()
	}
}
