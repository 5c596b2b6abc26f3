package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/meridian-run/meridian/region/regiontest"
	"github.com/meridian-run/meridian/testutil"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/region"
	"github.com/meridian-run/meridian/regionapi"
)

// helloPath is the demo app examples/hello, built by TestMain.
var helloPath string

func TestMain(m *testing.M) {
	os.Exit(testutil.Main(m, map[string]*string{"examples/hello": &helloPath}))
}

// testRegion is a real one-server region with an embedded etcd member.
type testRegion struct {
	name   string
	in     *pkitest.Installation
	srv    *region.Server
	global *regionapi.Client
}

func newRegion(t *testing.T, name string) *testRegion {
	t.Helper()
	return newRegionWith(t, name, pkitest.New(t, name))
}

// installation is a test installation whose CAs live for ttl.
func installation(t *testing.T, regionName string, ttl time.Duration) *pkitest.Installation {
	t.Helper()
	now := time.Now()
	root, err := pki.NewRoot(pkitest.TrustDomain, now, ttl)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := root.NewIntermediate(regionName, now, ttl)
	if err != nil {
		t.Fatal(err)
	}
	global, err := root.Issue(pki.LeafRequest{ID: pki.GlobalID(pkitest.TrustDomain), Usage: pki.UsageClient, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return &pkitest.Installation{Root: root, Regions: map[string]*pki.CA{regionName: ca}, Global: global}
}

// newRegionWith starts region name of installation in.
func newRegionWith(t *testing.T, name string, in *pkitest.Installation) *testRegion {
	t.Helper()
	srv, err := regiontest.Start(t, in, name)
	if err != nil {
		t.Fatalf("start region %s: %v", name, err)
	}
	r := &testRegion{name: name, in: in, srv: srv, global: regionapi.NewClient(srv.URL(), in.GlobalClient(t))}
	testutil.Eventually(t, 20*time.Second, "region leads", func() (bool, string) { return srv.IsLeader(), "not leading" })
	return r
}

// token creates a join token.
func (r *testRegion) token(t *testing.T, ttl time.Duration, uses int) regionapi.JoinToken {
	t.Helper()
	tok, err := r.srv.CreateJoinToken(testutil.Context(t, 10*time.Second), ttl, uses)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// portBase spreads the agents' host port ranges apart.
var portBase atomic.Int32

// agentConfig is a fast agent configuration for machine name in dc.
func (r *testRegion) agentConfig(t *testing.T, name, dc string) Config {
	lo := 21000 + int(portBase.Add(1))*40
	return Config{
		Region:            r.name,
		RegionURLs:        []string{r.srv.URL()},
		Roots:             r.in.Root.Pool(),
		TrustDomain:       pkitest.TrustDomain,
		Datacenter:        dc,
		Name:              name,
		MilliCPU:          4000,
		MemoryMB:          4096,
		DataDir:           filepath.Join(t.TempDir(), name),
		PortMin:           lo,
		PortMax:           lo + 39,
		Logger:            testutil.Logger(t).With("test_machine", name),
		RequestTimeout:    5 * time.Second,
		StopTimeout:       2 * time.Second,
		RestartBackoffMin: 100 * time.Millisecond,
		RestartBackoffMax: 400 * time.Millisecond,
		ReportDebounce:    50 * time.Millisecond,
	}
}

// testAgent is a running agent of a test.
type testAgent struct {
	*Agent
	cfg Config
}

// startAgent joins machine name of data center dc with a fresh token and
// waits until it has its first snapshot.
func (r *testRegion) startAgent(t *testing.T, name, dc string, tweak func(*Config)) *testAgent {
	t.Helper()
	cfg := r.agentConfig(t, name, dc)
	cfg.JoinToken = r.token(t, time.Hour, 1).Value
	if tweak != nil {
		tweak(&cfg)
	}
	return startWith(t, cfg)
}

// startWith starts an agent from cfg and waits until it is ready. Its
// instances are killed when the test ends.
func startWith(t *testing.T, cfg Config) *testAgent {
	t.Helper()
	a, err := Start(testutil.Context(t, 20*time.Second), cfg)
	if err != nil {
		t.Fatalf("start agent %s: %v", cfg.Name, err)
	}
	ta := &testAgent{Agent: a, cfg: cfg}
	t.Cleanup(ta.kill)
	select {
	case <-a.Ready():
	case err := <-a.Err():
		t.Fatalf("agent %s: %v", cfg.Name, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("agent %s not ready within 20s", cfg.Name)
	}
	return ta
}

// kill makes the machine die: the agent stops without a word to the
// region, and its instances are killed.
func (ta *testAgent) kill() {
	ta.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ids, _ := ta.Driver().List(ctx)
	for _, id := range ids {
		ta.Driver().Destroy(ctx, id)
	}
}

// helloDef is the demo app: count instances listening on declared port
// 8080 with an HTTP health check.
func helloDef(regionName string, count int, env ...api.ResolvedEnv) api.RegionalDefinition {
	return api.RegionalDefinition{
		Region:       regionName,
		Name:         "web",
		Type:         "web",
		Command:      []string{helloPath},
		Ports:        []api.Port{{Port: 8080, Protocol: "http"}},
		Env:          env,
		Scaling:      api.ScalingRange{Min: count, Max: count},
		InstanceType: api.InstanceType{Name: "small", MilliCPU: 250, MemoryMB: 256},
		HealthChecks: []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"}, Interval: "300ms", Timeout: "1s"}},
	}
}

// apply applies a service of org acme, app shop.
func (r *testRegion) apply(t *testing.T, service string, gen int64, dep string, def api.RegionalDefinition, secrets map[string]string) string {
	t.Helper()
	_, err := r.global.Apply(testutil.Context(t, 10*time.Second), regionapi.Apply{Generation: gen, Org: "acme", App: "shop", Service: service,
		DeploymentID: dep, Version: int(gen), Definition: def, Secrets: secrets})
	if err != nil {
		t.Fatalf("apply %s: %v", service, err)
	}
	return regionapi.ServiceKey("acme", "shop", service)
}

// waitService polls a service's status until cond holds.
func (r *testRegion) waitService(t *testing.T, key string, within time.Duration, what string, cond func(regionapi.ServiceStatus) bool) regionapi.ServiceStatus {
	t.Helper()
	var ss regionapi.ServiceStatus
	testutil.Eventually(t, within, what, func() (bool, string) {
		var err error
		ss, err = r.global.Status(testutil.Context(t, 5*time.Second), key)
		if err != nil {
			return false, err.Error()
		}
		return cond(ss), describe(ss)
	})
	return ss
}

func describe(ss regionapi.ServiceStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s phase=%s healthy=%d/%d %s;", ss.Service, ss.Phase, ss.Healthy, ss.Wanted, ss.Message)
	for _, is := range ss.Instances {
		fmt.Fprintf(&b, " [%s on %s/%s %s healthy=%v restarts=%d ports=%v %s]", is.ID, is.Datacenter, is.Machine, is.State, is.Healthy, is.Restarts, is.Ports, is.Message)
	}
	return b.String()
}

// healthyInstances returns the running, healthy instances of the wanted
// deployment.
func healthyInstances(ss regionapi.ServiceStatus) []regionapi.InstanceStatus {
	var out []regionapi.InstanceStatus
	for _, is := range ss.Instances {
		if is.DeploymentID == ss.DeploymentID && is.State == regionapi.StateRunning && is.Healthy {
			out = append(out, is)
		}
	}
	return out
}

// helloAnswer is what examples/hello answers on GET /.
type helloAnswer struct {
	Region     string `json:"region"`
	Datacenter string `json:"datacenter"`
	Machine    string `json:"machine"`
	Instance   string `json:"instance"`
	App        string `json:"app"`
	Service    string `json:"service"`
	Hostname   string `json:"hostname"`
}

// get asks an instance who it is, on its reported host port.
func get(t *testing.T, is regionapi.InstanceStatus) helloAnswer {
	t.Helper()
	port := is.Ports["8080"]
	if port == 0 {
		t.Fatalf("instance %s reports no host port for 8080: %v", is.ID, is.Ports)
	}
	ctx := testutil.Context(t, 5*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+net.JoinHostPort(is.Address, strconv.Itoa(port))+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET instance %s: %v", is.ID, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var h helloAnswer
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("GET instance %s: %v: %s", is.ID, err, b)
	}
	return h
}

// shims counts the shim processes of each instance id on the host.
func shims(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
		if len(args) == 2 && string(args[0]) == "meridian-shim" {
			out[string(args[1])]++
		}
	}
	return out
}

func ids(is []regionapi.InstanceStatus) []string {
	var out []string
	for _, i := range is {
		out = append(out, i.ID)
	}
	slices.Sort(out)
	return out
}

// linkProxy is a TCP link between an agent and its region that the test
// can cut (every connection reset, new ones refused), blackhole (every
// connection, old or new, stays open but never carries a byte again, as
// across a long partition) and restore (new connections work again).
type linkProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	blocked bool // cut: refuse
	holes   bool // blackhole: accept and swallow
	conns   map[*proxied]struct{}
}

// proxied is one proxied connection pair.
type proxied struct {
	c, u net.Conn
	dead atomic.Bool // blackholed: swallow everything
}

func newLinkProxy(t *testing.T, target string) *linkProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, target: target, conns: map[*proxied]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *linkProxy) URL() string { return "https://" + p.ln.Addr().String() }

func (p *linkProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.pipe(c)
	}
}

func (p *linkProxy) pipe(c net.Conn) {
	p.mu.Lock()
	blocked := p.blocked
	p.mu.Unlock()
	if blocked {
		c.Close()
		return
	}
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	pc := &proxied{c: c, u: u}
	p.mu.Lock()
	if p.blocked {
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	pc.dead.Store(p.holes)
	p.conns[pc] = struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	copyLive := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !pc.dead.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go copyLive(u, c)
	go copyLive(c, u)
	<-done
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// cut resets every connection and refuses new ones until restore.
func (p *linkProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	for pc := range p.conns {
		pc.c.Close()
		pc.u.Close()
	}
}

// blackhole silences every connection for good, and the new ones until
// restore.
func (p *linkProxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holes = true
	for pc := range p.conns {
		pc.dead.Store(true)
	}
}

func (p *linkProxy) restore() {
	p.mu.Lock()
	p.blocked, p.holes = false, false
	p.mu.Unlock()
}
