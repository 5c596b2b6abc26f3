package e2e

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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/dev"
	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/linkproxy"
	"github.com/meridian-run/meridian/testutil"
)

// webDef is the demo app with a public route, two instances per region.
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

const webHost = "web-demo.meridian.localhost"

// Load during a failure: loadRate GETs per second, the failure injected
// after loadBefore, the load kept up loadAfter longer.
const (
	loadRate   = 200
	loadBefore = 2 * time.Second
	loadAfter  = 6 * time.Second
)

// edgeComp finds an edge of dev.json.
func (in *installation) edgeComp(location string) dev.Component {
	for _, c := range in.info.Components {
		if c.Role == "edge" && c.Location == location {
			return c
		}
	}
	in.t.Fatalf("no edge %s in dev.json", location)
	return dev.Component{}
}

// where is what the demo app answers: where it runs.
type where struct {
	Region, Instance string
}

// through sends GET / for the web app through an edge.
func through(c *http.Client, edgeURL string) (where, error) {
	req, err := http.NewRequest("GET", edgeURL+"/", nil)
	if err != nil {
		return where{}, err
	}
	req.Host = webHost
	resp, err := c.Do(req)
	if err != nil {
		return where{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return where{}, fmt.Errorf("%s (%s): %s", resp.Status, resp.Header.Get(edge.ErrorHeader), strings.TrimSpace(string(b)))
	}
	var w where
	if err := json.Unmarshal(b, &w); err != nil {
		return where{}, fmt.Errorf("%w: %s", err, b)
	}
	return w, nil
}

func edgeClient() *http.Client {
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxIdleConns: 512}}
}

// sample is one request of a load run.
type sample struct {
	start time.Time
	dur   time.Duration
	where where
	err   error
}

// load sends GETs through an edge at a fixed rate (open loop: a slow
// answer does not slow the sending) until stopped.
type load struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    sync.WaitGroup
}

func startLoad(edgeURL string, rate int) *load {
	l := &load{stop: make(chan struct{})}
	c := edgeClient()
	l.done.Add(1)
	go func() {
		defer l.done.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			l.done.Add(1)
			go func() {
				defer l.done.Done()
				s := sample{start: time.Now()}
				s.where, s.err = through(c, edgeURL)
				s.dur = time.Since(s.start)
				l.mu.Lock()
				l.samples = append(l.samples, s)
				l.mu.Unlock()
			}()
		}
	}()
	return l
}

func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.samples)
}

// run keeps the load up for d.
func (l *load) run(t *testing.T, d time.Duration) {
	n := l.count() + int(d.Seconds()*loadRate*0.9)
	testutil.Eventually(t, d+30*time.Second, "load sent", func() (bool, string) { return l.count() >= n, fmt.Sprint(l.count()) })
}

func (l *load) finish() []sample {
	close(l.stop)
	l.done.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.SortFunc(l.samples, func(a, b sample) int { return a.start.Compare(b.start) })
	return l.samples
}

// report sums up a load run around a failure at t0: requests, failures
// (with the first errors), answers per region after it, the slowest
// answer after it, and how long after it the last failure started.
type report struct {
	total, failed int
	errors        []string
	after         map[string]int
	maxLatency    time.Duration
	lastFailure   time.Duration
}

func summarize(samples []sample, t0 time.Time) report {
	r := report{after: map[string]int{}}
	for _, s := range samples {
		r.total++
		if s.err != nil {
			r.failed++
			if len(r.errors) < 5 {
				r.errors = append(r.errors, s.err.Error())
			}
			if d := s.start.Sub(t0); d > r.lastFailure {
				r.lastFailure = d
			}
			continue
		}
		if s.start.After(t0) {
			r.after[s.where.Region]++
			r.maxLatency = max(r.maxLatency, s.dur)
		}
	}
	return r
}

// edgeErrors returns the first lines of an edge's log about failed
// requests, for a failure's message.
func edgeErrors(c dev.Component) string {
	b, _ := os.ReadFile(c.Log)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if (strings.Contains(line, "log=access") && !strings.Contains(line, `error=""`)) || strings.Contains(line, "level=WARN") {
			out = append(out, line)
			if len(out) == 10 {
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

func (r report) String() string {
	return fmt.Sprintf("%d requests, %d failed (last one started %s after the failure) %v; answers after the failure by region %v; slowest answer after it %s",
		r.total, r.failed, r.lastFailure.Round(time.Millisecond), r.errors, r.after, r.maxLatency.Round(time.Millisecond))
}

// instancesIn returns the instances of the web service in a region.
func instancesIn(all []api.Instance, region string) []api.Instance {
	var out []api.Instance
	for _, i := range all {
		if i.Region == region && i.Service == "web" {
			out = append(out, i)
		}
	}
	return out
}

// edgeInstall starts a dev installation for one edge test, deploys the
// web service (two instances per region) and waits until each edge
// answers from its closest region with both of its instances: par from
// fra, nyc from was. Every edge test starts from here, so none depends on
// what another did.
func edgeInstall(t *testing.T) (in *installation, par, nyc dev.Component, c *http.Client) {
	t.Helper()
	topo := smallTopology(t, 1)
	topo.LeaseTTL = "3s" // dev's default: fewer lapses on a busy machine
	in = start(t, topo)
	def := in.writeDefinition("web", webDef)
	if code, out, errOut := in.cli("deploy", "-f", def, "--wait"); code != 0 {
		t.Fatalf("deploy: %d\n%s\n%s", code, out, errOut)
	}
	par, nyc = in.edgeComp("par"), in.edgeComp("nyc")
	c = edgeClient()
	for _, tc := range []struct {
		edge dev.Component
		want string
	}{{par, "fra"}, {nyc, "was"}} {
		seen := map[string]bool{}
		testutil.Eventually(t, 30*time.Second, tc.edge.Location+" answers from "+tc.want+", both instances", func() (bool, string) {
			w, err := through(c, tc.edge.Address)
			if err != nil {
				return false, err.Error()
			}
			if w.Region != tc.want {
				return false, "answered from " + w.Region
			}
			seen[w.Instance] = true
			return len(seen) == 2, fmt.Sprint(seen)
		})
	}
	return in, par, nyc, c
}

// underLoad runs the steady load through an edge for loadBefore, fails
// something, runs it loadAfter longer and summarizes what happened from
// the failure on.
func underLoad(t *testing.T, edgeURL string, fail func()) report {
	t.Helper()
	l := startLoad(edgeURL, loadRate)
	l.run(t, loadBefore)
	t0 := time.Now()
	fail()
	l.run(t, loadAfter)
	return summarize(l.finish(), t0)
}

// TestEdgeRoutesToTheClosestRegion: each edge answers from its closest
// region, every time.
func TestEdgeRoutesToTheClosestRegion(t *testing.T) {
	_, par, nyc, c := edgeInstall(t)
	for _, tc := range []struct {
		edge dev.Component
		want string
	}{{par, "fra"}, {nyc, "was"}} {
		for range 20 {
			if w, err := through(c, tc.edge.Address); err != nil || w.Region != tc.want {
				t.Fatalf("%s: %+v %v, want %s", tc.edge.Location, w, err, tc.want)
			}
		}
	}
}

// TestEdgeSurvivesKilledInstances: every instance of the service in par's
// region killed under load: no request fails, the next closest region
// answers.
func TestEdgeSurvivesKilledInstances(t *testing.T) {
	in, par, _, _ := edgeInstall(t)
	fra := instancesIn(in.instances(), "fra")
	var ids []string
	for _, i := range fra {
		ids = append(ids, i.ID)
	}
	pids := in.shims(ids...)
	if len(fra) != 2 || len(pids) != 2 {
		t.Fatalf("fra instances %v, shims %v", ids, pids)
	}
	r := underLoad(t, par.Address, func() {
		for _, pid := range pids {
			syscallKill(t, pid)
		}
	})
	t.Logf("par, fra's instances killed: %s", r)
	if r.failed != 0 || r.after["was"] == 0 {
		t.Fatalf("want no failure and answers from was (the next closest to Paris): %s\n%s", r, edgeErrors(par))
	}
}

// TestEdgeSurvivesKilledRegion: a whole region (server, agents,
// instances; refused links) killed under steady load: no request fails.
func TestEdgeSurvivesKilledRegion(t *testing.T) {
	in, _, nyc, _ := edgeInstall(t)
	was := instancesIn(in.instances(), "was")
	var ids []string
	for _, i := range was {
		ids = append(ids, i.ID)
	}
	pids := in.shims(ids...)
	r := underLoad(t, nyc.Address, func() {
		for _, pid := range pids {
			syscallKill(t, pid)
		}
		for _, comp := range in.info.Components {
			if comp.Region == "was" && (comp.Role == "agent" || comp.Role == "region") {
				in.kill(comp)
			}
		}
	})
	t.Logf("nyc, region was killed (server, agents, instances; refused links): %s", r)
	if r.failed != 0 || r.after["fra"] == 0 {
		t.Fatalf("want no failure and answers from fra (the next closest to New York): %s\n%s", r, edgeErrors(nyc))
	}
}

// TestEdgeSurvivesBlackholedRegion: an edge in this process whose links
// to fra's API and to the node proxies of fra's machines go through link
// proxies; those links blackholed under load: failures bounded (2%) and
// the next closest region (was) answers.
func TestEdgeSurvivesBlackholedRegion(t *testing.T) {
	in, _, _, c := edgeInstall(t)
	links := &linkProxies{t: t, m: map[string]*linkproxy.Proxy{}}
	fraAPI := strings.TrimPrefix(in.component("region", "fra", "").Address, "https://")
	var fraLinks []*linkproxy.Proxy
	fraLinks = append(fraLinks, links.get(fraAPI))
	for _, addr := range nodeProxies(t, in, "fra", "demo.web.web") {
		fraLinks = append(fraLinks, links.get(addr))
	}
	id, err := edge.LoadIdentity(filepath.Join(in.info.PKIDir, "edges", "par"))
	if err != nil {
		t.Fatal(err)
	}
	// The read-only edge token dev made for its edges, as a real edge.
	edgeToken, err := os.ReadFile(filepath.Join(in.info.StateDir, "edge.token"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := edge.Start(t.Context(), edge.Config{Location: "par", Latitude: 48.86, Longitude: 2.35, Domain: in.info.Domain,
		Listen: "127.0.0.1:0", StateDir: t.TempDir(), GlobalURL: in.info.API, GlobalToken: strings.TrimSpace(string(edgeToken)), Identity: id,
		Dial: links.dial, DialRegion: links.dial, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	testutil.Eventually(t, 30*time.Second, "the in-process edge routes to fra", func() (bool, string) {
		w, err := through(c, e.URL())
		return err == nil && w.Region == "fra", fmt.Sprint(w, err)
	})
	r := underLoad(t, e.URL(), func() {
		for _, p := range fraLinks {
			p.Blackhole()
		}
	})
	t.Logf("in-process par edge, fra's links blackholed (probe timeout %s): %s", time.Second, r)
	if r.failed > r.total/50 || r.after["was"] == 0 {
		t.Fatalf("want at most 2%% failed and answers from was (the next closest to Paris): %s", r)
	}
	for _, p := range fraLinks {
		p.Unblackhole()
	}
}

// TestEdgeKeepsRoutingWithGlobalDown: global killed, then a machine of fra
// lost: fra replaces its instance on its own and par routes to the new
// one.
func TestEdgeKeepsRoutingWithGlobalDown(t *testing.T) {
	in, par, _, c := edgeInstall(t)
	before := instancesIn(in.instances(), "fra")
	in.kill(in.component("global", "", ""))
	victim := before[0]
	in.kill(in.component("agent", "fra", victim.Machine))
	if pid := in.shims(victim.ID)[victim.ID]; pid > 0 {
		syscallKill(t, pid)
	}
	known := map[string]bool{}
	for _, i := range before {
		known[i.ID] = true
	}
	testutil.Eventually(t, 60*time.Second, "par answers from the instance fra added", func() (bool, string) {
		w, err := through(c, par.Address)
		if err != nil {
			return false, err.Error()
		}
		return w.Region == "fra" && !known[w.Instance], fmt.Sprint(w)
	})
}

// TestEdgeRestartsWithGlobalDown: an edge restarted with global and its
// region's API down serves from its snapshot (fra's instances keep
// running; only the snapshot knows their routes).
func TestEdgeRestartsWithGlobalDown(t *testing.T) {
	in, par, _, c := edgeInstall(t)
	in.kill(in.component("global", "", ""))
	in.kill(in.component("region", "fra", ""))
	in.kill(par)
	in.restart(par)
	var answered where
	testutil.Eventually(t, 30*time.Second, "the restarted edge answers from fra", func() (bool, string) {
		w, err := through(c, par.Address)
		answered = w
		return err == nil && w.Region == "fra", fmt.Sprint(w, err)
	})
	resp, err := http.Get(par.Admin + "/v1/state")
	if err != nil {
		t.Fatal(err)
	}
	var st edge.Status
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	for _, r := range st.Regions {
		if r.ID == "fra" && (r.Source != "snapshot" || r.Connected) {
			t.Fatalf("fra at the restarted edge: %+v", r)
		}
	}
	b, _ := os.ReadFile(filepath.Join(par.DataDir, edge.RegionsFile))
	t.Logf("restarted edge answered from %+v with the cached regions %s", answered, b)
}

// linkProxies puts link proxies on the way to chosen addresses.
type linkProxies struct {
	t  *testing.T
	mu sync.Mutex
	m  map[string]*linkproxy.Proxy
}

func (p *linkProxies) get(addr string) *linkproxy.Proxy {
	lp, err := p.proxy(addr)
	if err != nil {
		p.t.Fatal(err)
	}
	return lp
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
		p.t.Cleanup(func() { lp.Close() })
		p.m[addr] = lp
	}
	return lp, nil
}

// dial goes through the link proxy of addr if there is one, directly
// otherwise.
func (p *linkProxies) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	p.mu.Lock()
	lp := p.m[addr]
	p.mu.Unlock()
	if lp != nil {
		addr = lp.Addr()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}
