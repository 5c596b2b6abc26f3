package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/agent"
	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// Coordinates of the test regions and edge locations.
var (
	fra = Region{ID: "fra", Latitude: 50.11, Longitude: 8.68}
	was = Region{ID: "was", Latitude: 38.91, Longitude: -77.04}
	sin = Region{ID: "sin", Latitude: 1.35, Longitude: 103.82}
)

const (
	parLat, parLon = 48.86, 2.35
	testHost       = "hello-demo.meridian.localhost"
)

// backend is a real HTTP server standing for an instance; by default it
// answers with its name.
type backend struct {
	name string
	ln   net.Listener
	srv  *http.Server
	hits atomic.Int64
	port int
}

func newBackend(t testing.TB, name string, h http.HandlerFunc) *backend {
	t.Helper()
	return newBackendWith(t, name, h, nil)
}

// newBackendWith is newBackend with the server tweaked before it serves.
func newBackendWith(t testing.TB, name string, h http.HandlerFunc, tweak func(*http.Server)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }
	}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		h(w, r)
	})}
	if tweak != nil {
		tweak(b.srv)
	}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// kill closes the backend's listener and connections: connections are
// refused from then on.
func (b *backend) kill() { b.srv.Close() }

// endpointOf is a healthy feed endpoint for a backend on declared port 8080.
func endpointOf(instance string, b *backend) regionapi.Endpoint {
	return regionapi.Endpoint{Instance: instance, Datacenter: "dc1", Machine: "m-" + instance, Address: "127.0.0.1",
		Ports: map[string]int{"8080": b.port}, Healthy: true}
}

// service is the demo org's app "hello", service "web", routing / (or
// the given prefixes) to port 8080.
func service(name string, prefixes []string, eps ...regionapi.Endpoint) regionapi.FeedService {
	if prefixes == nil {
		prefixes = []string{"/"}
	}
	fs := regionapi.FeedService{Key: "demo.hello." + name, Org: "demo", App: "hello", Service: name, Type: "web",
		Ports: []api.Port{{Port: 8080, Protocol: "http"}}, Endpoints: eps}
	for _, p := range prefixes {
		fs.Routes = append(fs.Routes, api.Route{Port: 8080, Path: p})
	}
	return fs
}

// testWorld is a test's installation: its PKI (regions fra, was and sin)
// and the machines the harness places the instances of the test's feeds
// on, each with the agent's real node proxy (agent.NodeProxy), so that
// the edge reaches every instance as it does in production: over mutual
// TLS to the machine's mesh port.
type testWorld struct {
	in *pkitest.Installation

	mu       sync.Mutex
	machines map[string]*testMachine // region/machine
}

// testMachine is a machine's node proxy and the instances it delivers to.
type testMachine struct {
	proxy *agent.NodeProxy
	logs  *testutil.Buffer

	mu        sync.Mutex
	instances map[string]agent.NodeInstance
}

var (
	worlds     sync.Map // testing.TB -> *testWorld
	edgeWorlds sync.Map // *Server -> *testWorld
)

// world returns the test's world, made at the first call.
func world(t testing.TB) *testWorld {
	if w, ok := worlds.Load(t); ok {
		return w.(*testWorld)
	}
	w := &testWorld{in: pkitest.New(t, "fra", "was", "sin"), machines: map[string]*testMachine{}}
	worlds.Store(t, w)
	t.Cleanup(func() { worlds.Delete(t) })
	return w
}

// machine returns a region's machine, started at the first call: a node
// proxy with the machine's certificate from the region's CA.
func (w *testWorld) machine(t testing.TB, region, name string) *testMachine {
	w.mu.Lock()
	defer w.mu.Unlock()
	key := region + "/" + name
	if m := w.machines[key]; m != nil {
		return m
	}
	leaf, err := w.in.Regions[region].Issue(pki.LeafRequest{ID: pki.MachineID(pkitest.TrustDomain, region, name), Usage: pki.UsageBoth,
		TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		t.Fatal(err)
	}
	m := &testMachine{logs: &testutil.Buffer{}, instances: map[string]agent.NodeInstance{}}
	m.proxy, err = agent.StartNodeProxy(agent.NodeProxyConfig{Address: "127.0.0.1", TrustDomain: pkitest.TrustDomain,
		Roots: w.in.Root.Pool(), Certs: rl, Instances: m.instance,
		Logger: slog.New(slog.NewTextHandler(m.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.proxy.Close()
		if t.Failed() && os.Getenv("MERIDIAN_TEST_DEBUG") != "" {
			t.Logf("--- node proxy of %s:\n%s", key, m.logs.String())
		}
	})
	w.machines[key] = m
	return m
}

func (m *testMachine) instance(id string) (agent.NodeInstance, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in, ok := m.instances[id]
	return in, ok
}

// addr is the machine's mesh address.
func (m *testMachine) addr() string { return "127.0.0.1:" + strconv.Itoa(m.proxy.Port()) }

// place puts a region's instances on machines, as agents run them: each
// endpoint's machine (m-<instance> when unnamed) delivers the instance's
// declared ports to the host ports the endpoint names, its routed ones to
// edges; the endpoints get the machine's mesh port, as a region's feed
// carries it. Endpoints that name a mesh port already are left alone. It
// returns copies: the caller's services are not changed.
func (w *testWorld) place(t testing.TB, region string, services []regionapi.FeedService) []regionapi.FeedService {
	out := make([]regionapi.FeedService, len(services))
	for i, svc := range services {
		svc.Endpoints = slices.Clone(svc.Endpoints)
		var public []int
		for _, r := range svc.Routes {
			public = append(public, r.Port)
		}
		for j := range svc.Endpoints {
			e := &svc.Endpoints[j]
			if e.MeshPort != 0 {
				continue
			}
			if e.Machine == "" {
				e.Machine = "m-" + e.Instance
			}
			ports := map[int]int{}
			for declared, host := range e.Ports {
				if p, err := strconv.Atoi(declared); err == nil {
					ports[p] = host
				}
			}
			m := w.machine(t, region, e.Machine)
			m.mu.Lock()
			m.instances[e.Instance] = agent.NodeInstance{Org: svc.Org, App: svc.App, Service: svc.Service, Ports: ports, Public: public}
			m.mu.Unlock()
			e.MeshPort = m.proxy.Port()
		}
		out[i] = svc
	}
	return out
}

// startEdge starts an edge at Paris with short timeouts, with an edge
// certificate of the test's world.
func startEdge(t testing.TB, tweak func(*Config)) *Server {
	t.Helper()
	w := world(t)
	cfg := Config{Location: "par", Latitude: parLat, Longitude: parLon, Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
		StateDir: t.TempDir(), Logger: testutil.Logger(t), EjectBase: 2 * time.Second, ShutdownTimeout: 5 * time.Second,
		Identity: edgeIdentity(t, w.in)}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	edgeWorlds.Store(s, w)
	t.Cleanup(func() { s.Close(); edgeWorlds.Delete(s) })
	return s
}

// worldOf is the world of the test that started an edge.
func worldOf(s *Server) *testWorld {
	w, _ := edgeWorlds.Load(s)
	return w.(*testWorld)
}

// startHTTPSEdge starts an edge with an HTTPS listener too, serving the
// edge certificate of the test's world (returned).
func startHTTPSEdge(t testing.TB) (*Server, *pkitest.Installation) {
	t.Helper()
	in := world(t).in
	s := startEdge(t, func(c *Config) {
		c.TLSListen = "127.0.0.1:0"
		c.TLSCertificates = edgeIdentity(t, in)
	})
	return s, in
}

// seed routes a region's services directly, as if its feed had sent
// them (routing choice tests use this state; feed tests use feedServer);
// their instances are placed on machines of the region.
func seed(t testing.TB, s *Server, r Region, services ...regionapi.FeedService) {
	t.Helper()
	services = worldOf(s).place(t, r.ID, services)
	if r.URL == "" {
		r.URL = "https://" + r.ID + ".invalid"
	}
	s.mu.Lock()
	list := append(append([]Region(nil), s.global...), r)
	s.global = list
	s.mu.Unlock()
	s.setRegions(list, &Snapshot{Regions: []SnapshotRegion{{Region: r, Services: services}}})
}

// setServices replaces a seeded region's services (their instances placed
// on machines of the region).
func setServices(t testing.TB, s *Server, id string, services ...regionapi.FeedService) {
	services = worldOf(s).place(t, id, services)
	s.mu.Lock()
	rs := s.regions[id]
	s.mu.Unlock()
	rs.mu.Lock()
	rs.services = services
	rs.mu.Unlock()
	s.rebuild()
}

// get sends GET path with the app's host through the edge and returns
// the status, the body and the response.
func get(t testing.TB, c *http.Client, base, host, path string) (int, string, *http.Response) {
	t.Helper()
	resp, err := do(c, "GET", base, host, path, nil)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), resp
}

func do(c *http.Client, method, base, host, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequest(method, base+path, body)
	if err != nil {
		return nil, err
	}
	req.Host = host
	return c.Do(req)
}

func client() *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
}

// metric reads one sample of the edge's /metrics whose line starts with
// prefix (name and labels in Prometheus's order), 0 when absent.
func metric(t testing.TB, s *Server, prefix string) float64 {
	t.Helper()
	resp, err := http.Get(s.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sum := 0.0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) {
			f, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			sum += f
		}
	}
	return sum
}

// feedServer serves a region's API endpoints that an edge reads — GET
// /v1/feed (NDJSON, the current feed at once and on every change) and GET
// /healthz — over mutual TLS with the region's server certificate, as
// region/feed.go does, and can send garbage or drop its streams, which a
// real region never does.
type feedServer struct {
	t      testing.TB
	w      *testWorld
	region string
	ln     net.Listener
	srv    *http.Server

	mu      sync.Mutex
	feed    regionapi.Feed
	changed chan struct{}
	garbage chan struct{}
	drop    chan struct{}
	streams atomic.Int64
}

func newFeedServer(t testing.TB, in *pkitest.Installation, region string) *feedServer {
	t.Helper()
	leaf, err := in.Regions[region].Issue(pki.LeafRequest{ID: pki.ServerID(pkitest.TrustDomain, region), Usage: pki.UsageServer,
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		t.Fatal(err)
	}
	tc := pki.ServerConfig(rl, in.Root.Pool(), pki.AllOf(pki.AllowKinds(pki.KindEdge), pki.RequireIssuer(in.Root.Root)))
	tc.NextProtos = []string{"h2", "http/1.1"}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	f := &feedServer{t: t, w: world(t), region: region, ln: ln, changed: make(chan struct{}), garbage: make(chan struct{}), drop: make(chan struct{}),
		feed: regionapi.Feed{Region: region, Revision: 1, Services: []regionapi.FeedService{}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /v1/feed", f.serveFeed)
	f.srv = &http.Server{Handler: mux}
	go f.srv.Serve(ln)
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *feedServer) URL() string { return "https://" + f.ln.Addr().String() }

func (f *feedServer) Region(base Region) Region {
	base.URL = f.URL()
	return base
}

// set publishes a new feed (its instances placed on machines of the
// region).
func (f *feedServer) set(services ...regionapi.FeedService) {
	services = f.w.place(f.t, f.region, services)
	f.mu.Lock()
	f.feed.Revision++
	f.feed.Services = services
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// resend makes every stream send the current feed again, unchanged (as
// regions did when nothing changed).
func (f *feedServer) resend() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// sendGarbage makes every stream send a line that is not a feed.
func (f *feedServer) sendGarbage() {
	f.mu.Lock()
	close(f.garbage)
	f.garbage = make(chan struct{})
	f.mu.Unlock()
}

// dropStreams ends every stream.
func (f *feedServer) dropStreams() {
	f.mu.Lock()
	close(f.drop)
	f.drop = make(chan struct{})
	f.mu.Unlock()
}

func (f *feedServer) serveFeed(w http.ResponseWriter, r *http.Request) {
	f.streams.Add(1)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	for {
		f.mu.Lock()
		b, _ := json.Marshal(f.feed)
		changed, garbage, drop := f.changed, f.garbage, f.drop
		f.mu.Unlock()
		w.Write(append(b, '\n'))
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		case <-garbage:
			w.Write([]byte("{\"region\": \"" + f.region + "\", \"services\": [{\"key\": 42\n"))
			fl.Flush()
			return
		case <-drop:
			return
		}
	}
}

// edgeIdentity issues the par edge's certificate from the root, naming
// the apps' domain for the public TLS listener.
func edgeIdentity(t testing.TB, in *pkitest.Installation) *Identity {
	t.Helper()
	leaf, err := in.Root.Issue(pki.LeafRequest{ID: pki.EdgeID(pkitest.TrustDomain, "par"), Usage: pki.UsageBoth,
		DNSNames: []string{"*.meridian.localhost", "meridian.localhost"}, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity(leaf, in.Root.Pool())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// answers counts which backend answered n GETs; failures are counted
// under their status and X-Meridian-Error.
func answers(t testing.TB, c *http.Client, base string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		code, body, resp := get(t, c, base, testHost, "/")
		if code != 200 {
			got[strconv.Itoa(code)+" "+resp.Header.Get(ErrorHeader)]++
			continue
		}
		got[body]++
	}
	return got
}
