package global

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/meridian-run/meridian/region/regiontest"
	"github.com/meridian-run/meridian/testutil"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/agent"
	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/linkproxy"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/region"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// helloPath is the demo app examples/hello, built by TestMain.
var helloPath string

func TestMain(m *testing.M) {
	os.Exit(testutil.Main(m, map[string]*string{"examples/hello": &helloPath}))
}

// topology is real regions (one embedded etcd member each), each with one
// machine running a real agent, reached by the global control plane
// through a link proxy.
type topology struct {
	in      *pkitest.Installation
	regions map[string]*region.Server
	links   map[string]*linkproxy.Proxy // global -> region
	direct  map[string]*regionapi.Client
	agents  map[string]*agent.Agent
}

var portBlock atomic.Int32

func newTopology(t testing.TB, names ...string) *topology {
	t.Helper()
	return newTopologyWith(t, nil, names...)
}

// newTopologyWith is newTopology with a hook on every instance change the
// agents announce.
func newTopologyWith(t testing.TB, onInstance func(region string, in agent.Instance), names ...string) *topology {
	t.Helper()
	tp := &topology{in: pkitest.New(t, names...), regions: map[string]*region.Server{}, links: map[string]*linkproxy.Proxy{},
		direct: map[string]*regionapi.Client{}, agents: map[string]*agent.Agent{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	for _, name := range names {
		wg.Go(func() {
			srv, err := regiontest.Start(t, tp.in, name)
			if err != nil {
				errs <- fmt.Errorf("start region %s: %w", name, err)
				return
			}
			link, err := linkproxy.New(linkproxy.Config{Target: srv.Addr()})
			if err != nil {
				errs <- err
				return
			}
			t.Cleanup(func() { link.Close() })
			mu.Lock()
			tp.regions[name], tp.links[name] = srv, link
			tp.direct[name] = regionapi.NewClient(srv.URL(), tp.in.GlobalClient(t))
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, name := range names {
		srv := tp.regions[name]
		testutil.Eventually(t, 30*time.Second, "region "+name+" leads", func() (bool, string) { return srv.IsLeader(), "not leading" })
		tp.startAgent(t, name, onInstance)
	}
	return tp
}

// startAgent joins one machine to a region and waits until it is ready;
// its instances are killed when the test ends.
func (tp *topology) startAgent(t testing.TB, name string, onInstance func(string, agent.Instance)) {
	t.Helper()
	srv := tp.regions[name]
	tok, err := srv.CreateJoinToken(context.Background(), time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	lo := 22000 + int(portBlock.Add(1))*60
	a, err := agent.Start(context.Background(), agent.Config{
		Region: name, RegionURLs: []string{srv.URL()}, JoinToken: tok.Value, Roots: tp.in.Root.Pool(),
		TrustDomain: pkitest.TrustDomain, Datacenter: name + "1", Name: name + "1-a",
		MilliCPU: 4000, MemoryMB: 4096, DataDir: t.TempDir(), PortMin: lo, PortMax: lo + 59,
		Logger: testutil.Logger(t).With("test_machine", name+"1-a"), RequestTimeout: 5 * time.Second,
		StopTimeout: 2 * time.Second, RestartBackoffMin: 100 * time.Millisecond, RestartBackoffMax: 300 * time.Millisecond,
		ReportDebounce: 50 * time.Millisecond,
		OnInstance: func(in agent.Instance) {
			if onInstance != nil {
				onInstance(name, in)
			}
		},
	})
	if err != nil {
		t.Fatalf("start agent of %s: %v", name, err)
	}
	t.Cleanup(func() {
		a.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ids, _ := a.Driver().List(ctx)
		for _, id := range ids {
			a.Driver().Destroy(ctx, id)
		}
	})
	select {
	case <-a.Ready():
	case err := <-a.Err():
		t.Fatalf("agent of %s: %v", name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("agent of %s not ready within 30s", name)
	}
	tp.agents[name] = a
}

// status reads a service's status straight from a region (not through
// the link).
func (tp *topology) status(t testing.TB, regionName, key string) (regionapi.ServiceStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return tp.direct[regionName].Status(ctx, key)
}

// calls records the region calls of every global of a test.
type calls struct {
	mu  sync.Mutex
	log []RegionCall
}

func (c *calls) hook(rc RegionCall) {
	c.mu.Lock()
	c.log = append(c.log, rc)
	c.mu.Unlock()
}

// checkOnce fails t if a region answered applied: true twice for one
// generation of one service; it returns how many applies were answered.
func (c *calls) checkOnce(t testing.TB) int {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]int{}
	n := 0
	for _, rc := range c.log {
		if rc.Kind != store.OpApply || rc.Err != nil {
			continue
		}
		n++
		if rc.Applied {
			k := fmt.Sprintf("%s/%s/%d", rc.Region, rc.ServiceKey, rc.Generation)
			seen[k]++
			if seen[k] > 1 {
				t.Errorf("generation %s was applied %d times", k, seen[k])
			}
		}
	}
	return n
}

// answers returns the apply answers for one generation.
func (c *calls) answers(regionName, key string, gen int64) (applied, unchanged int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rc := range c.log {
		if rc.Kind == store.OpApply && rc.Err == nil && rc.Region == regionName && rc.ServiceKey == key && rc.Generation == gen {
			if rc.Applied {
				applied++
			} else {
				unchanged++
			}
		}
	}
	return
}

// rolloutConfig is a global configured for fast rollouts against tp.
func rolloutConfig(t testing.TB, st store.Store, tp *topology, owner string, rec *calls) Config {
	key, _ := base64Key()
	smoke := api.Definition{Command: []string{helloPath}, Ports: []api.Port{{Port: 8080}},
		Env:          []api.EnvVar{{Key: "VERSION", Value: "smoke"}},
		Scalings:     []api.Scaling{{Min: 1, Max: 1}},
		HealthChecks: []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, GracePeriod: "100ms", Interval: "300ms", Timeout: "200ms"}}}
	return Config{
		Listen: "127.0.0.1:0", Store: st, AdminToken: testAdminToken, SecretKey: key,
		Logger:     testutil.Logger(t).With("test_global", owner),
		RegionHTTP: tp.in.GlobalClient(t), RolloutPoll: 100 * time.Millisecond, RegionTimeout: 2 * time.Second,
		RetryMin: 100 * time.Millisecond, RetryMax: time.Second, Owner: owner, LeaseTTL: 5 * time.Second,
		SmokeDefinition: &smoke, SmokeTimeout: 30 * time.Second, OnRegionCall: rec.hook,
	}
}

// startGlobal starts a global control plane from cfg, closed when the test
// ends.
func startGlobal(t testing.TB, cfg Config) *Server {
	t.Helper()
	srv, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start global: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	<-srv.Ready()
	return srv
}

// register registers the topology's regions in a global (provisioning).
func (tp *topology) register(t testing.TB, admin *api.Client) {
	t.Helper()
	for name, link := range tp.links {
		_, err := admin.CreateRegion(context.Background(), api.CreateRegionRequest{ID: name, Latitude: 1, Longitude: 1, URL: "https://" + link.Addr()}, "")
		if err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
	}
}

// helloDoc is a deployment definition of the demo app as YAML.
type helloDoc struct {
	name     string
	regions  []string
	version  string
	counts   map[string]int // per-region override; default 1
	base     int
	sick     []string // regions where HEALTHY=false
	limit    int      // restart limit (0: an unhealthy instance fails at once)
	strategy string   // YAML flow mapping
}

func (h helloDoc) yaml() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nregions: [%s]\ncommand: [%q]\nports: [{port: 8080}]\n", h.name, strings.Join(h.regions, ", "), helloPath)
	fmt.Fprintf(&b, "env:\n  - {key: VERSION, value: %q}\n", h.version)
	for _, r := range h.sick {
		fmt.Fprintf(&b, "  - {key: HEALTHY, value: \"false\", scopes: [\"region:%s\"]}\n", r)
	}
	base := max(h.base, 1)
	fmt.Fprintf(&b, "scalings:\n  - {min: %d, max: %d}\n", base, base)
	regions := make([]string, 0, len(h.counts))
	for r := range h.counts {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	for _, r := range regions {
		fmt.Fprintf(&b, "  - {min: %d, max: %d, scopes: [\"region:%s\"]}\n", h.counts[r], h.counts[r], r)
	}
	limit := h.limit
	fmt.Fprintf(&b, "instance_types: [{type: nano}]\n")
	fmt.Fprintf(&b, "health_checks: [{port: 8080, http: {path: /healthz}, grace_period: 100ms, interval: 400ms, timeout: 300ms, restart_limit: %d}]\n", limit)
	if h.strategy != "" {
		fmt.Fprintf(&b, "strategy: %s\n", h.strategy)
	}
	return []byte(b.String())
}

// waitDeployment waits until a deployment's status is final and returns
// it with its events.
func waitDeployment(t testing.TB, c *api.Client, id string, within time.Duration) api.Deployment {
	t.Helper()
	var d api.Deployment
	testutil.Eventually(t, within, "deployment "+id+" finished", func() (bool, string) {
		var err error
		d, err = c.GetDeployment(context.Background(), id)
		if err != nil {
			return false, err.Error()
		}
		return d.Status != api.StatusPending && d.Status != api.StatusProgressing, describe(d)
	})
	return d
}

// describe renders a deployment's state for failure messages.
func describe(d api.Deployment) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s v%d %s (%s)", d.ID, d.Version, d.Status, d.Message)
	for _, rd := range d.Regional {
		fmt.Fprintf(&b, "\n  %s gen %d %s: %s", rd.Region, rd.Generation, rd.Status, rd.Message)
	}
	for _, e := range d.Events {
		fmt.Fprintf(&b, "\n  event %s %s %s: %s", e.At.Format("15:04:05.000"), e.Region, e.Type, e.Message)
	}
	return b.String()
}

func perRegion(d api.Deployment) map[string]string {
	out := map[string]string{}
	for _, rd := range d.Regional {
		out[rd.Region] = rd.Status
	}
	return out
}

// onDeployment waits until a region runs a deployment, healthy.
func (tp *topology) onDeployment(t testing.TB, regionName, key, depID string, within time.Duration) regionapi.ServiceStatus {
	t.Helper()
	var ss regionapi.ServiceStatus
	testutil.Eventually(t, within, fmt.Sprintf("%s runs %s healthy in %s", key, depID, regionName), func() (bool, string) {
		var err error
		ss, err = tp.status(t, regionName, key)
		if err != nil {
			return false, err.Error()
		}
		return ss.DeploymentID == depID && ss.Phase == regionapi.PhaseHealthy, fmt.Sprintf("%+v", ss)
	})
	return ss
}

// serves asks every healthy instance of a deployment what it is and checks
// it answers with the version.
func serves(t testing.TB, ss regionapi.ServiceStatus, depID, version string) {
	t.Helper()
	n := 0
	for _, in := range ss.Instances {
		if in.DeploymentID != depID || !in.Healthy {
			continue
		}
		n++
		resp, err := http.Get(fmt.Sprintf("http://%s:%d/", in.Address, in.Ports["8080"]))
		if err != nil {
			t.Fatalf("instance %s: %v", in.ID, err)
		}
		var body map[string]string
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || body["version"] != version {
			t.Fatalf("instance %s answers %v (%v), want version %s", in.ID, body, err, version)
		}
	}
	if n == 0 {
		t.Fatalf("no healthy instance of %s serves", depID)
	}
}

func hasEvent(d api.Deployment, region, typ string, contains ...string) bool {
	for _, e := range d.Events {
		if e.Type != typ || (region != "" && e.Region != region) {
			continue
		}
		ok := true
		for _, c := range contains {
			ok = ok && strings.Contains(e.Message, c)
		}
		if ok {
			return true
		}
	}
	return false
}

func base64Key() ([]byte, error) { return base64.StdEncoding.DecodeString(NewSecretKey()) }
