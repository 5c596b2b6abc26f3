package edge

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// TestRoutesToClosestRegion: from Paris, Frankfurt's instances answer,
// both of them; an unknown host and an unknown path get 404s that name
// nothing internal; the longest prefix wins.
func TestRoutesToClosestRegion(t *testing.T) {
	s := startEdge(t, nil)
	fra1, fra2 := newBackend(t, "fra-1", nil), newBackend(t, "fra-2", nil)
	was1, sin1 := newBackend(t, "was-1", nil), newBackend(t, "sin-1", nil)
	api := newBackend(t, "fra-api", nil)
	seed(t, s, fra, service("web", []string{"/"}, endpointOf("f1", fra1), endpointOf("f2", fra2)),
		service("api", []string{"/api"}, endpointOf("fa", api)))
	seed(t, s, was, service("web", nil, endpointOf("w1", was1)))
	seed(t, s, sin, service("web", nil, endpointOf("s1", sin1)))
	c := client()

	got := answers(t, c, s.URL(), 40)
	if got["fra-1"]+got["fra-2"] != 40 || got["fra-1"] == 0 || got["fra-2"] == 0 {
		t.Fatalf("answers from Paris = %v, want both Frankfurt instances only", got)
	}
	for path, want := range map[string]string{"/api": "fra-api", "/api/v1/x": "fra-api", "/apix": "fra-", "/": "fra-"} {
		code, body, resp := get(t, c, s.URL(), testHost, path)
		if code != 200 || !strings.HasPrefix(body, want) || resp.Header.Get(RegionHeader) != "fra" {
			t.Errorf("GET %s = %d %q (region %q), want %s*", path, code, body, resp.Header.Get(RegionHeader), want)
		}
	}
	// The host is case-insensitive and may carry a port.
	if code, body, _ := get(t, c, s.URL(), "Hello-Demo.Meridian.Localhost:8000", "/"); code != 200 || !strings.HasPrefix(body, "fra-") {
		t.Errorf("mixed-case host with port: %d %q", code, body)
	}

	code, body, resp := get(t, c, s.URL(), "nope-demo.meridian.localhost", "/")
	if code != 404 || resp.Header.Get(ErrorHeader) != ReasonUnknownHost || resp.Header.Get("X-Request-Id") == "" {
		t.Fatalf("unknown host: %d %q %v", code, body, resp.Header)
	}
	for _, internal := range []string{"fra", "127.0.0.1", "demo", "hello", "nope", "web"} {
		if strings.Contains(body, internal) {
			t.Errorf("the 404 body names %q: %q", internal, body)
		}
	}
	// An app with only a prefix route: other paths are 404 no-route.
	setServices(t, s, "fra", service("api", []string{"/api"}, endpointOf("fa", api)))
	setServices(t, s, "was")
	setServices(t, s, "sin")
	if code, _, resp := get(t, c, s.URL(), testHost, "/other"); code != 404 || resp.Header.Get(ErrorHeader) != ReasonNoRoute {
		t.Fatalf("no route: %d %v", code, resp.Header)
	}
}

// TestRankByRTTThenCoordinates: measured RTTs within the tolerance tie
// and the coordinates decide; a measurably closer region wins; a region
// whose probes time out goes last.
func TestRankByRTTThenCoordinates(t *testing.T) {
	mk := func(r Region) *regionState { return newRegionState(r, parLat, parLon) }
	f, w, sg := mk(fra), mk(was), mk(sin)
	list := []*regionState{sg, w, f}
	order := func() string {
		out := make([]string, 3)
		for _, rs := range list {
			out[rs.rank.Load()] = rs.info.ID
		}
		return strings.Join(out, ",")
	}
	rankRegions(list, 10*time.Millisecond)
	if got := order(); got != "fra,was,sin" {
		t.Fatalf("by coordinates: %s", got)
	}
	// Loopback: everything measured under a millisecond: coordinates decide.
	f.rtt.Store(int64(900 * time.Microsecond))
	w.rtt.Store(int64(200 * time.Microsecond))
	sg.rtt.Store(int64(100 * time.Microsecond))
	rankRegions(list, 10*time.Millisecond)
	if got := order(); got != "fra,was,sin" {
		t.Fatalf("sub-tolerance RTTs: %s", got)
	}
	// Frankfurt measurably farther than Washington (a congested path).
	f.rtt.Store(int64(95 * time.Millisecond))
	w.rtt.Store(int64(70 * time.Millisecond))
	rankRegions(list, 10*time.Millisecond)
	if got := order(); got != "sin,was,fra" {
		t.Fatalf("measured: %s", got)
	}
	sg.unreachable.Store(true)
	rankRegions(list, 10*time.Millisecond)
	if got := order(); got != "was,fra,sin" {
		t.Fatalf("unreachable last: %s", got)
	}
	if d := regionapi.GeoRTT(parLat, parLon, fra.Latitude, fra.Longitude); d < 4*time.Millisecond || d > 5*time.Millisecond {
		t.Fatalf("Paris-Frankfurt estimate %s, want about 4.8ms (480 km)", d)
	}
}

// TestPickBalancesAndSkips: power of two choices prefers the less loaded
// instance; ejected and tried ones are skipped; at most two attempts per
// region; everything ejected still gets tried rather than nothing.
func TestPickBalancesAndSkips(t *testing.T) {
	f, w := newRegionState(fra, parLat, parLon), newRegionState(was, parLat, parLon)
	rankRegions([]*regionState{f, w}, 10*time.Millisecond)
	eps := func(rs *regionState, n int) []*endpoint {
		out := make([]*endpoint, n)
		for i := range out {
			out[i] = &endpoint{key: fmt.Sprintf("%s/%d", rs.info.ID, i), region: rs}
		}
		return out
	}
	fe, we := eps(f, 3), eps(w, 2)
	rt := &route{prefix: "/", targets: []*target{{region: w, eps: we}, {region: f, eps: fe}}}
	now := time.Now().UnixNano()
	fe[0].inflight.Store(100)
	counts := map[*endpoint]int{}
	for i := 0; i < 3000; i++ {
		counts[pick(rt, nil, now)]++
	}
	if counts[we[0]]+counts[we[1]] != 0 {
		t.Fatalf("picked Washington while Frankfurt has instances: %v", counts)
	}
	// With 3 instances and one loaded, it is chosen only when drawn with
	// itself excluded... never: p2c draws two distinct ones.
	if counts[fe[0]] != 0 || counts[fe[1]] < 1000 || counts[fe[2]] < 1000 {
		t.Fatalf("loaded instance picked: %v", map[string]int{"loaded": counts[fe[0]], "b": counts[fe[1]], "c": counts[fe[2]]})
	}
	fe[1].ejectUntil.Store(now + int64(time.Minute))
	if got := pick(rt, []*endpoint{fe[2]}, now); got != fe[0] {
		t.Fatalf("with b ejected and c tried, picked %v", got.key)
	}
	if got := pick(rt, []*endpoint{fe[2], fe[0]}, now); got == nil || got.region != w {
		t.Fatalf("two attempts in fra: the next goes to was, got %v", got)
	}
	for _, e := range append(fe, we...) {
		e.ejectUntil.Store(now + int64(time.Minute))
	}
	if got := pick(rt, nil, now); got == nil || got.region != f {
		t.Fatalf("all ejected: want a try in the closest region anyway, got %v", got)
	}
	if got := pick(rt, append(append([]*endpoint{}, fe...), we...), now); got != nil {
		t.Fatalf("all tried: got %v", got.key)
	}
}

// TestFailoverOnRefusedConnections: every instance of the service in the
// closest region refuses connections: not one request fails; they go to
// the next region (even a POST: nothing was sent), and the dead
// instances are ejected.
func TestFailoverOnRefusedConnections(t *testing.T) {
	s := startEdge(t, nil)
	fra1, fra2, was1 := newBackend(t, "fra-1", nil), newBackend(t, "fra-2", nil), newBackend(t, "was-1", nil)
	seed(t, s, fra, service("web", nil, endpointOf("f1", fra1), endpointOf("f2", fra2)))
	seed(t, s, was, service("web", nil, endpointOf("w1", was1)))
	c := client()
	if got := answers(t, c, s.URL(), 4); got["fra-1"]+got["fra-2"] != 4 {
		t.Fatalf("before: %v", got)
	}
	fra1.kill()
	fra2.kill()
	if got := answers(t, c, s.URL(), 50); got["was-1"] != 50 {
		t.Fatalf("after Frankfurt's instances died: %v", got)
	}
	resp, err := do(c, "POST", s.URL(), testHost, "/", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get(RegionHeader) != "was" {
		t.Fatalf("POST after a refused connection: %d from %q", resp.StatusCode, resp.Header.Get(RegionHeader))
	}
	if n := metric(t, s, `meridian_edge_ejections_total{reason="connect",region="fra"}`); n != 2 {
		t.Fatalf("fra ejections = %v, want 2", n)
	}
	if n := metric(t, s, `meridian_edge_requests_total{app="hello",code="200",org="demo",region="was",service="web"}`); n != 51 {
		t.Fatalf("requests metric = %v, want 51", n)
	}
}

// TestRetryOnlyWhatIsSafe: an instance that takes the request and drops
// the connection without answering: a GET is retried on another
// instance; a POST is not (it may have been applied) and gets a 502 with
// the reason.
func TestRetryOnlyWhatIsSafe(t *testing.T) {
	s := startEdge(t, nil)
	// dropper reads a request and closes the connection.
	var mu sync.Mutex
	methods := []string{}
	dropper := &backend{name: "dropper", port: testutil.ServeTCP(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err == nil {
			io.Copy(io.Discard, req.Body)
			mu.Lock()
			methods = append(methods, req.Method)
			mu.Unlock()
		}
	})}
	good := newBackend(t, "good", nil)
	seed(t, s, fra, service("web", nil, endpointOf("f1", dropper)))
	seed(t, s, was, service("web", nil, endpointOf("w1", good)))
	c := client()
	code, body, _ := get(t, c, s.URL(), testHost, "/")
	if code != 200 || body != "good" {
		t.Fatalf("GET: %d %q, want a retry that reaches the good instance", code, body)
	}
	resp, err := do(c, "POST", s.URL(), testHost, "/", strings.NewReader("charge the card"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || resp.Header.Get(ErrorHeader) != ReasonUpstreamFailed {
		t.Fatalf("POST: %d %q %v", resp.StatusCode, b, resp.Header)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(methods) != "[GET POST]" {
		t.Fatalf("the dropper saw %v, want one GET and one POST (never retried)", methods)
	}
	if good.hits.Load() != 1 {
		t.Fatalf("the good instance saw %d requests, want 1 (the GET)", good.hits.Load())
	}
}

// TestClearErrorsNeverAHang: no healthy instance is 503; instances that
// all refuse are a 502 after the attempt budget; an instance that never
// answers is a 504 after the response header timeout.
func TestClearErrorsNeverAHang(t *testing.T) {
	s := startEdge(t, func(c *Config) { c.ResponseHeaderTimeout = 300 * time.Millisecond })
	c := client()
	dead := newBackend(t, "dead", nil)
	dead.kill()
	seed(t, s, fra, service("web", nil))
	if code, _, resp := get(t, c, s.URL(), testHost, "/"); code != 503 || resp.Header.Get(ErrorHeader) != ReasonNoInstance {
		t.Fatalf("no instance: %d %v", code, resp.Header)
	}
	// An instance the region calls unhealthy is tried when nothing else
	// is left (it might answer); this one is dead.
	unhealthy := endpointOf("u1", dead)
	unhealthy.Healthy = false
	setServices(t, s, "fra", service("web", nil, unhealthy))
	if code, _, resp := get(t, c, s.URL(), testHost, "/"); code != 502 || !deadReason(resp.Header.Get(ErrorHeader)) {
		t.Fatalf("only an unhealthy dead instance: %d %v", code, resp.Header)
	}
	alive := newBackend(t, "unhealthy-but-answering", nil)
	standby := endpointOf("u2", alive)
	standby.Healthy = false
	healthy := newBackend(t, "healthy", nil)
	setServices(t, s, "fra", service("web", nil, standby, endpointOf("h", healthy)))
	if got := answers(t, c, s.URL(), 10); got["healthy"] != 10 {
		t.Fatalf("a healthy instance beside an unhealthy one: %v", got)
	}
	healthy.kill()
	if got := answers(t, c, s.URL(), 10); got["unhealthy-but-answering"] != 10 {
		t.Fatalf("the healthy one dead: %v", got)
	}
	setServices(t, s, "fra", service("web", nil, endpointOf("f1", dead), endpointOf("f2", dead)))
	if code, _, resp := get(t, c, s.URL(), testHost, "/"); code != 502 || !deadReason(resp.Header.Get(ErrorHeader)) {
		t.Fatalf("all refuse: %d %v", code, resp.Header)
	}
	release := make(chan struct{})
	defer close(release)
	slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	setServices(t, s, "fra", service("web", nil, endpointOf("s1", slow)))
	resp, err := do(c, "POST", s.URL(), testHost, "/", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 504 || resp.Header.Get(ErrorHeader) != ReasonTimeout {
		t.Fatalf("silent instance: %d %v", resp.StatusCode, resp.Header)
	}
}

// deadReason accepts the reasons a dead backend's request may get: its
// port refuses (connect failed), or, when another test's server took the
// freed port meanwhile and drops what it does not expect, the exchange
// fails after the request was sent. Either is a clear 502, never a hang.
func deadReason(r string) bool { return r == ReasonConnectFailed || r == ReasonUpstreamFailed }

// TestEjectionAfter5xxBurst: an instance answering 500s is ejected after
// Eject5xx of them and traffic goes to its sibling; it comes back after
// the ejection.
func TestEjectionAfter5xxBurst(t *testing.T) {
	s := startEdge(t, func(c *Config) {
		c.Eject5xx = 3
		c.EjectBase = 300 * time.Millisecond
		c.EjectMax = 300 * time.Millisecond
	})
	var failing sync.Mutex
	fail := true
	bad := newBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) {
		failing.Lock()
		defer failing.Unlock()
		if fail {
			http.Error(w, "boom", 500)
			return
		}
		io.WriteString(w, "bad-recovered")
	})
	good := newBackend(t, "good", nil)
	seed(t, s, fra, service("web", nil, endpointOf("b", bad), endpointOf("g", good)))
	c := client()
	answers(t, c, s.URL(), 30)
	if n := bad.hits.Load(); n < 3 {
		t.Fatalf("the failing instance got %d requests", n)
	}
	if n := metric(t, s, `meridian_edge_ejections_total{reason="5xx",region="fra"}`); n < 1 {
		t.Fatalf("no 5xx ejection")
	}
	failing.Lock()
	fail = false
	failing.Unlock()
	testutil.Eventually(t, 5*time.Second, "the instance back after its ejection", func() (bool, string) {
		got := answers(t, c, s.URL(), 10)
		return got["bad-recovered"] > 0, fmt.Sprint(got)
	})
}

// TestRegionTargetsWithoutEndpoints: a region that lists the service
// with no healthy endpoint is skipped for the next.
func TestRegionTargetsWithoutEndpoints(t *testing.T) {
	s := startEdge(t, nil)
	was1 := newBackend(t, "was-1", nil)
	seed(t, s, fra, service("web", nil))
	seed(t, s, was, service("web", nil, endpointOf("w1", was1)))
	if got := answers(t, client(), s.URL(), 5); got["was-1"] != 5 {
		t.Fatalf("%v", got)
	}
	st := s.Status()
	if st.Routes != 1 || st.Endpoints != 1 || len(st.Regions) != 2 || st.Hosts[0] != testHost {
		t.Fatalf("status: %+v", st)
	}
}

// TestBuildTableSkipsInvalid: bad names, routes to undeclared or TCP
// ports, relative paths, endpoints without a host port, and endpoints
// without a machine or its mesh port (nothing reaches an instance but
// through its machine's node proxy) are left out; the rest routes.
func TestBuildTableSkipsInvalid(t *testing.T) {
	rs := newRegionState(fra, parLat, parLon)
	ok := regionapi.Endpoint{Instance: "i1", Machine: "m1", Address: "127.0.0.1", Ports: map[string]int{"8080": 20000}, MeshPort: 7443, Healthy: true}
	noPort := regionapi.Endpoint{Instance: "i2", Machine: "m1", Address: "127.0.0.1", Ports: map[string]int{"9090": 20001}, MeshPort: 7443, Healthy: true}
	noMesh := regionapi.Endpoint{Instance: "i3", Machine: "m2", Address: "127.0.0.1", Ports: map[string]int{"8080": 20002}, Healthy: true}
	noMachine := regionapi.Endpoint{Instance: "i4", Address: "127.0.0.1", Ports: map[string]int{"8080": 20003}, MeshPort: 7443, Healthy: true}
	good := service("web", []string{"/", "relative", "/bad path"}, ok, noPort, noMesh, noMachine)
	badName := service("web", nil, ok)
	badName.App = "Bad_App"
	tcp := service("tcp", []string{"/tcp"}, ok)
	tcp.Ports[0].Protocol = "tcp"
	undeclared := service("undeclared", []string{"/u"}, ok)
	undeclared.Routes[0].Port = 1234
	tb, eps := buildTable("meridian.localhost", []regionFeed{{rs: rs, services: []regionapi.FeedService{good, badName, tcp, undeclared}}}, nil)
	if tb.routes != 1 || tb.endpoints != 1 || len(eps) != 1 || len(tb.hosts) != 1 {
		t.Fatalf("routes %d endpoints %d hosts %v", tb.routes, tb.endpoints, tb.hosts)
	}
	// The same endpoint keeps its state across rebuilds.
	for _, e := range eps {
		e.inflight.Store(7)
	}
	_, eps2 := buildTable("meridian.localhost", []regionFeed{{rs: rs, services: []regionapi.FeedService{good}}}, eps)
	for _, e := range eps2 {
		if e.inflight.Load() != 7 {
			t.Fatalf("endpoint state lost across rebuilds")
		}
	}
	// Its machine's node proxy moved: another endpoint, dialed there.
	moved := service("web", nil, ok)
	moved.Endpoints[0].MeshPort = 7444
	_, eps3 := buildTable("meridian.localhost", []regionFeed{{rs: rs, services: []regionapi.FeedService{moved}}}, eps2)
	for _, e := range eps3 {
		if e.inflight.Load() != 0 || e.meshAddr != "127.0.0.1:7444" {
			t.Fatalf("an endpoint whose mesh port moved kept the old one's state, or address %s", e.meshAddr)
		}
	}
}

// TestFailoverUnderConcurrentLoad: clients keep sending GETs (over kept
// connections to the instances) while every instance in the closest
// region dies: none fails.
func TestFailoverUnderConcurrentLoad(t *testing.T) {
	s := startEdge(t, nil)
	fra1, fra2 := newBackend(t, "fra-1", nil), newBackend(t, "fra-2", nil)
	was1, was2 := newBackend(t, "was-1", nil), newBackend(t, "was-2", nil)
	seed(t, s, fra, service("web", nil, endpointOf("f1", fra1), endpointOf("f2", fra2)))
	seed(t, s, was, service("web", nil, endpointOf("w1", was1), endpointOf("w2", was2)))
	c := client()
	var mu sync.Mutex
	failures := map[string]int{}
	ok := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := do(c, "GET", s.URL(), testHost, "/", nil)
				mu.Lock()
				switch {
				case err != nil:
					failures[err.Error()]++
				case resp.StatusCode != 200:
					failures[resp.Status+" "+resp.Header.Get(ErrorHeader)]++
				default:
					ok++
				}
				mu.Unlock()
				if resp != nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return ok }
	testutil.Eventually(t, 10*time.Second, "load running", func() (bool, string) { return count() > 200, "" })
	fra1.kill()
	fra2.kill()
	before := was1.hits.Load() + was2.hits.Load()
	testutil.Eventually(t, 10*time.Second, "was serving", func() (bool, string) {
		n := was1.hits.Load() + was2.hits.Load() - before
		return n > 500, fmt.Sprint(n)
	})
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d ok, failures: %v", ok, failures)
	}
}
