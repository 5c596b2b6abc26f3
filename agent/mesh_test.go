package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/miekg/dns"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/meshwire"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// testDNSPort is the mesh DNS port of the unit tests (each node has its
// own loopback /16, so any port works; 53 is for real instances).
const testDNSPort = 10053

// meshNets hands out loopback /16s to test nodes.
var meshNets atomic.Int32

func init() { meshNets.Store(int32(100 + rand.IntN(60))) }

func nextMeshNet() string { return fmt.Sprintf("127.%d.0.0/16", meshNets.Add(1)) }

// offsetClock is the wall clock moved by an offset, with real timers.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) Now() time.Time                         { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) NewTimer(d time.Duration) clock.Timer   { return clock.Real().NewTimer(d) }
func (c *offsetClock) NewTicker(d time.Duration) clock.Ticker { return clock.Real().NewTicker(d) }
func (c *offsetClock) advance(d time.Duration)                { c.off.Add(int64(d)) }

// testNode is one machine's mesh, with real certificates from a test
// installation and real backends as its instances.
type testNode struct {
	t       testing.TB
	in      *pkitest.Installation
	region  string
	dc      string
	machine string
	m       *mesh
	clock   *offsetClock
	logs    *testutil.Buffer
	certs   *pki.Reloader
	issued  atomic.Int32
	certTTL atomic.Int64

	mu     sync.Mutex
	locals map[string]NodeInstance
	pids   map[string]int // callers' top processes (default: the test process)
}

func newTestNode(t testing.TB, in *pkitest.Installation, region, dc, machine string, tweak func(*meshDeps)) *testNode {
	t.Helper()
	n := &testNode{t: t, in: in, region: region, dc: dc, machine: machine, clock: &offsetClock{}, logs: &testutil.Buffer{},
		locals: map[string]NodeInstance{}}
	n.certTTL.Store(int64(time.Hour))
	leaf, err := in.Regions[region].Issue(pki.LeafRequest{ID: pki.MachineID(pkitest.TrustDomain, region, machine),
		Usage: pki.UsageBoth, TTL: 12 * time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	n.certs, _ = pki.NewReloader(leaf)
	cfg := MeshConfig{Net: nextMeshNet(), DNSPort: testDNSPort, ProbeInterval: time.Hour}
	cfg.setDefaults(func(f string, a ...any) { t.Fatalf(f, a...) })
	d := meshDeps{
		Config: cfg, Address: "127.0.0.1", Region: region, Datacenter: dc, Machine: machine,
		TrustDomain: pkitest.TrustDomain, Roots: in.Root.Pool(), NodeCerts: n.certs,
		StateDir: filepath.Join(t.TempDir(), "mesh"), HostResolvConf: "nameserver 192.0.2.1\nsearch example.test\noptions ndots:1\n",
		Dialer: &net.Dialer{Timeout: 2 * time.Second}, Clock: n.clock,
		Logger: slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Issue:  n.issue, Local: n.local, PID: n.pid,
	}
	if tweak != nil {
		tweak(&d)
	}
	m, err := newMesh(d)
	if err != nil {
		t.Fatal(err)
	}
	n.m = m
	t.Cleanup(func() {
		m.close()
		if t.Failed() {
			t.Logf("--- mesh log of %s:\n%s", machine, n.logs.String())
		}
	})
	return n
}

// issue is the region's workload certificate issuance, by the node's
// region CA.
func (n *testNode) issue(_ context.Context, service string, csr []byte) ([]byte, error) {
	parts := strings.Split(service, ".")
	leaf, err := n.in.Regions[n.region].IssueFromCSR(csr, pki.LeafRequest{ID: pki.WorkloadID(pkitest.TrustDomain, parts[0], parts[1], parts[2]),
		Usage: pki.UsageClient, TTL: time.Duration(n.certTTL.Load()), Now: n.clock.Now()})
	if err != nil {
		return nil, err
	}
	n.issued.Add(1)
	return leaf.ChainPEM(), nil
}

// pid is a caller instance's top process: the test process itself, which
// makes the calls, unless a test set another.
func (n *testNode) pid(id string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if pid, ok := n.pids[id]; ok {
		return pid
	}
	return os.Getpid()
}

func (n *testNode) setPID(id string, pid int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pids == nil {
		n.pids = map[string]int{}
	}
	n.pids[id] = pid
}

func (n *testNode) local(id string) (NodeInstance, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	li, ok := n.locals[id]
	return li, ok
}

// run makes instance id of org.app.svc run on the node, its port 8080
// served by backend.
func (n *testNode) run(id, org, app, svc string, backend int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.locals[id] = NodeInstance{Org: org, App: app, Service: svc, Ports: map[int]int{8080: backend}}
}

func (n *testNode) stopInstance(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.locals, id)
}

// endpoint is the feed entry of an instance of the node.
func (n *testNode) endpoint(id string, healthy bool) regionapi.Endpoint {
	return regionapi.Endpoint{Instance: id, Datacenter: n.dc, Machine: n.machine, Address: "127.0.0.1",
		Ports: map[string]int{"8080": 1}, MeshPort: n.m.port(), Healthy: healthy}
}

// caller starts a caller slot for org.app.svc on the node and returns its
// DNS server's address.
func (n *testNode) caller(id, org, app, svc string) string {
	n.t.Helper()
	rc, err := n.m.acquire(id, org, app, svc)
	if err != nil {
		n.t.Fatal(err)
	}
	for _, line := range strings.Split(rc, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "nameserver" {
			return net.JoinHostPort(f[1], strconv.Itoa(testDNSPort))
		}
	}
	n.t.Fatalf("no nameserver in %q", rc)
	return ""
}

func service(org, app, svc string, eps ...regionapi.Endpoint) regionapi.FeedService {
	if eps == nil {
		eps = []regionapi.Endpoint{}
	}
	return regionapi.FeedService{Key: regionapi.ServiceKey(org, app, svc), Org: org, App: app, Service: svc,
		Ports: []api.Port{{Port: 8080}}, Endpoints: eps}
}

// query asks a DNS server over udp (or tcp).
func query(t testing.TB, network, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return r
}

// resolveA returns the address a name resolves to.
func resolveA(t testing.TB, server, name string) net.IP {
	t.Helper()
	r := query(t, "udp", server, name, dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("%s: rcode %s, answers %v", name, dns.RcodeToString[r.Rcode], r.Answer)
	}
	return r.Answer[0].(*dns.A).A
}

// backend is a real HTTP server answering with its name, and echoing
// bodies of POSTs.
func backend(t testing.TB, name string) (int, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			io.Copy(w, r.Body)
			return
		}
		io.WriteString(w, name)
	})}
	go srv.Serve(ln)
	stop := func() { srv.Close() }
	t.Cleanup(stop)
	return ln.Addr().(*net.TCPAddr).Port, stop
}

// getVia calls http://ip:8080/ on a fresh connection.
func getVia(ip net.IP) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + net.JoinHostPort(ip.String(), "8080") + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func mustGet(t *testing.T, ip net.IP) string {
	t.Helper()
	s, err := getVia(ip)
	if err != nil {
		t.Fatalf("GET via %s: %v", ip, err)
	}
	return s
}

// TestMeshDNS checks the mesh's names: scoped to the caller's
// organization, region-qualified names, NXDOMAIN and NODATA, forwarding
// other names to the host's resolvers, and malformed packets.
func TestMeshDNS(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	// The host's resolver, a real DNS server on loopback.
	upPC, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := &dns.Server{PacketConn: upPC, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if strings.EqualFold(r.Question[0].Name, "example.test.") {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.IPv4(192, 0, 2, 7)}}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go upstream.ActivateAndServe()
	t.Cleanup(func() { upstream.Shutdown() })
	n := newTestNode(t, in, "fra", "fra1", "fra1-a", func(d *meshDeps) {
		d.Config.Upstreams = []string{upPC.LocalAddr().String()}
	})
	srv := n.caller("a-1", "acme", "shop", "a")

	// Before the first feed the mesh cannot know: SERVFAIL, so clients retry.
	if r := query(t, "udp", srv, "b.shop.internal.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("before any feed: %s", dns.RcodeToString[r.Rcode])
	}
	n.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{
		service("acme", "shop", "b"), service("acme", "shop", "a"), service("other", "shop", "c")},
		Peers: []regionapi.PeerFeed{{Region: "was", Connected: true, Services: []regionapi.FeedService{service("acme", "shop", "b")}}}})

	b := resolveA(t, srv, "b.shop.internal.")
	if !n.m.ipInNet(b) {
		t.Fatalf("b.shop.internal = %s, not in the mesh net %s", b, n.m.cfg.Net)
	}
	if again := resolveA(t, srv, "B.Shop.Internal."); !again.Equal(b) {
		t.Fatalf("names are case-insensitive: %s vs %s", again, b)
	}
	wasB := resolveA(t, srv, "was.b.shop.internal.")
	if wasB.Equal(b) {
		t.Fatal("a region-qualified name shares the address of the unqualified one")
	}
	if r := query(t, "tcp", srv, "was.b.shop.internal.", dns.TypeA); len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(wasB) {
		t.Fatalf("over tcp: %v", r.Answer)
	}
	for _, name := range []string{
		"c.shop.internal.",     // another organization's service
		"nope.shop.internal.",  // no such service
		"sin.b.shop.internal.", // a region without it
		"x.b.shop.internal.extra.internal.",
		"shop.internal.",
	} {
		start := time.Now()
		r := query(t, "udp", srv, name, dns.TypeA)
		if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
			t.Errorf("%s: %s (authority %v), want NXDOMAIN with the SOA", name, dns.RcodeToString[r.Rcode], r.Ns)
		}
		t.Logf("%s: NXDOMAIN in %s", name, time.Since(start))
	}
	if r := query(t, "udp", srv, "b.shop.internal.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA of a mesh name: %s %v, want NOERROR without answers", dns.RcodeToString[r.Rcode], r.Answer)
	}
	// Other names go to the host's resolvers.
	if r := query(t, "udp", srv, "example.test.", dns.TypeA); len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(net.IPv4(192, 0, 2, 7)) {
		t.Errorf("forwarded: %v", r)
	}
	if r := query(t, "udp", srv, "missing.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("forwarded NXDOMAIN: %s", dns.RcodeToString[r.Rcode])
	}

	// Malformed packets: nothing crashes, nothing is answered that the
	// client cannot use, and the server keeps answering.
	uc, err := net.Dial("udp", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	bad := [][]byte{
		{},
		{0x12},
		bytes.Repeat([]byte{0xff}, 11),
		bytes.Repeat([]byte{0xff}, 600),
		{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 'a', 'b'},               // truncated question
		{0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01}, // a response
		{0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01}, // qdcount 5
	}
	for _, p := range bad {
		uc.Write(p)
	}
	// Garbage over TCP too.
	if tc, err := net.Dial("tcp", srv); err == nil {
		tc.Write([]byte{0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0xff})
		tc.Close()
	}
	if got := resolveA(t, srv, "b.shop.internal."); !got.Equal(b) {
		t.Fatalf("after garbage: %s", got)
	}
}

// ipInNet reports whether ip is in the mesh's /16.
func (m *mesh) ipInNet(ip net.IP) bool {
	ip4 := ip.To4()
	return ip4 != nil && ip4[0] == m.net[0] && ip4[1] == m.net[1]
}

// meshPair is two machines of fra in two data centers, and one of was.
type meshPair struct {
	in           *pkitest.Installation
	a, b, c, was *testNode
}

func newMeshPair(t *testing.T) *meshPair {
	in := pkitest.New(t, "fra", "was")
	return &meshPair{in: in,
		a:   newTestNode(t, in, "fra", "fra1", "fra1-a", nil),
		b:   newTestNode(t, in, "fra", "fra1", "fra1-b", nil),
		c:   newTestNode(t, in, "fra", "fra2", "fra2-a", nil),
		was: newTestNode(t, in, "was", "was1", "was1-a", nil)}
}

// TestMeshCallsByNameOverMutualTLS calls a service by name through two
// node proxies: HTTP and raw TCP, the same data center first, a
// region-qualified name only in its region.
func TestMeshCallsByNameOverMutualTLS(t *testing.T) {
	p := newMeshPair(t)
	b1, _ := backend(t, "b-fra1")
	b2, _ := backend(t, "b-fra2")
	b3, _ := backend(t, "b-was")
	p.b.run("b-1", "acme", "shop", "b", b1)
	p.c.run("b-2", "acme", "shop", "b", b2)
	p.was.run("b-3", "acme", "shop", "b", b3)
	feed := regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{
		service("acme", "shop", "b", p.b.endpoint("b-1", true), p.c.endpoint("b-2", true))},
		Peers: []regionapi.PeerFeed{{Region: "was", Connected: true, Received: time.Now(),
			Services: []regionapi.FeedService{service("acme", "shop", "b", p.was.endpoint("b-3", true))}}}}
	p.a.m.setFeed(feed)
	srv := p.a.caller("a-1", "acme", "shop", "a")
	ip := resolveA(t, srv, "b.shop.internal.")
	for i := range 10 {
		if got := mustGet(t, ip); got != "b-fra1" {
			t.Fatalf("call %d answered by %s, want the same data center's b-fra1", i, got)
		}
	}
	// Raw TCP: a request and its answer byte for byte, with a half-close.
	c, err := net.Dial("tcp", net.JoinHostPort(ip.String(), "8080"))
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("0123456789", 50000)
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	c.Close()
	if string(got) != body {
		t.Fatalf("echo through the mesh: %d bytes back of %d", len(got), len(body))
	}
	// Region-qualified names reach only their region.
	wasIP := resolveA(t, srv, "was.b.shop.internal.")
	for range 5 {
		if got := mustGet(t, wasIP); got != "b-was" {
			t.Fatalf("was.b.shop.internal answered by %s", got)
		}
	}
	fraIP := resolveA(t, srv, "fra.b.shop.internal.")
	if got := mustGet(t, fraIP); got != "b-fra1" {
		t.Fatalf("fra.b.shop.internal answered by %s", got)
	}
	// The caller's identity was its workload's, issued once.
	if n := p.a.issued.Load(); n != 1 {
		t.Fatalf("%d workload certificates issued for one service, want 1", n)
	}
}

// TestMeshRetriesNextEndpoint checks failover: an endpoint whose instance
// is gone is ejected and the call goes on to the next (the other data
// center, then the next region); a stale endpoint of a disconnected peer
// is used while it answers and dropped when it fails.
func TestMeshRetriesNextEndpoint(t *testing.T) {
	p := newMeshPair(t)
	b1, stop1 := backend(t, "b-fra1")
	b2, stop2 := backend(t, "b-fra2")
	b3, _ := backend(t, "b-was")
	p.b.run("b-1", "acme", "shop", "b", b1)
	p.c.run("b-2", "acme", "shop", "b", b2)
	p.was.run("b-3", "acme", "shop", "b", b3)
	feed := func(connected bool) regionapi.Feed {
		return regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{
			service("acme", "shop", "b", p.b.endpoint("b-1", true), p.c.endpoint("b-2", true))},
			Peers: []regionapi.PeerFeed{{Region: "was", Connected: connected, Received: time.Unix(1000, 0),
				Services: []regionapi.FeedService{service("acme", "shop", "b", p.was.endpoint("b-3", true))}}}}
	}
	p.a.m.setFeed(feed(true))
	srv := p.a.caller("a-1", "acme", "shop", "a")
	ip := resolveA(t, srv, "b.shop.internal.")
	if got := mustGet(t, ip); got != "b-fra1" {
		t.Fatalf("answered by %s", got)
	}
	stop1()
	for i := range 5 {
		if got := mustGet(t, ip); got != "b-fra2" {
			t.Fatalf("call %d after b-fra1 died answered by %s, want b-fra2", i, got)
		}
	}
	if ej, _ := p.a.m.health.state(meshEndpoint{Region: "fra", Instance: "b-1"}, p.a.clock.Now()); !ej {
		t.Fatal("the dead endpoint is not ejected")
	}
	stop2()
	for i := range 5 {
		if got := mustGet(t, ip); got != "b-was" {
			t.Fatalf("call %d with fra down answered by %s, want b-was", i, got)
		}
	}
	// An instance that moved away (the node no longer runs it): next.
	p.b.stopInstance("b-1")
	p.a.m.health.ok(meshEndpoint{Region: "fra", Instance: "b-1"})
	if got := mustGet(t, ip); got != "b-was" {
		t.Fatalf("answered by %s", got)
	}

	// was's feed is gone: its endpoint is stale, used while it answers...
	p.a.m.setFeed(feed(false))
	if got := mustGet(t, ip); got != "b-was" {
		t.Fatalf("stale endpoint not used: %s", got)
	}
	// ...and dropped at its first failure, until a newer feed lists it.
	p.was.m.close()
	if _, err := getVia(ip); err == nil {
		t.Fatal("a call succeeded with every endpoint down")
	}
	stale := meshEndpoint{Region: "was", Instance: "b-3", Stale: true, Epoch: time.Unix(1000, 0)}
	// The failure is recorded as the call gives up on the endpoint, which
	// may finish just after the caller got its error.
	testutil.Eventually(t, 5*time.Second, "the failed stale endpoint dropped", func() (bool, string) {
		_, dropped := p.a.m.health.state(stale, p.a.clock.Now())
		return dropped, "not dropped"
	})
	t1 := p.a.m.table.Load()
	if eps := p.a.m.candidates(t1.services["acme.shop.b"], ""); len(eps) != 2 || eps[0].Region != "fra" {
		t.Fatalf("candidates after the stale endpoint failed: %+v", eps)
	}
}

// TestOrderEndpoints checks the choice order: same data center, same
// region, then regions by round trip (unknown last), ejected endpoints
// after every other, dropped and other regions' (for a qualified name) left
// out.
func TestOrderEndpoints(t *testing.T) {
	self := locality{"fra", "fra1"}
	ep := func(region, dc, inst string) meshEndpoint {
		return meshEndpoint{Region: region, Datacenter: dc, Instance: inst}
	}
	eps := []meshEndpoint{
		ep("sin", "sin1", "s1"), ep("was", "was1", "w1"), ep("fra", "fra2", "f2"), ep("fra", "fra1", "f1"),
		ep("syd", "syd1", "y1"), ep("was", "was2", "w2"), ep("fra", "fra2", "f3"),
	}
	rtts := map[string]time.Duration{"sin": 160 * time.Millisecond, "was": 80 * time.Millisecond}
	rtt := func(r string) (time.Duration, bool) { d, ok := rtts[r]; return d, ok }
	none := func(meshEndpoint) (bool, bool) { return false, false }
	rnd := rand.New(rand.NewPCG(1, 2))
	ids := func(eps []meshEndpoint) string {
		var s []string
		for _, e := range eps {
			s = append(s, e.Instance)
		}
		return strings.Join(s, ",")
	}
	seenFra2 := map[string]bool{}
	for range 50 {
		got := orderEndpoints(eps, self, "", rtt, none, rnd)
		s := ids(got)
		if !strings.HasPrefix(s, "f1,") || !strings.HasSuffix(s, ",s1,y1") {
			t.Fatalf("order %s", s)
		}
		mid := strings.Split(s, ",")[1:5]
		if !(mid[0][0] == 'f' && mid[1][0] == 'f' && mid[2][0] == 'w' && mid[3][0] == 'w') {
			t.Fatalf("order %s: same region before was", s)
		}
		seenFra2[mid[0]] = true
	}
	if len(seenFra2) != 2 {
		t.Fatalf("equal endpoints are not spread: first of fra2 was always %v", seenFra2)
	}
	// Ejected last, dropped gone.
	st := func(e meshEndpoint) (bool, bool) { return e.Instance == "f1" || e.Instance == "w1", e.Instance == "s1" }
	s := ids(orderEndpoints(eps, self, "", rtt, st, rnd))
	if !strings.HasSuffix(s, ",y1,f1,w1") || strings.Contains(s, "s1") {
		t.Fatalf("with f1, w1 ejected and s1 dropped: %s", s)
	}
	// A qualified name keeps its region only.
	if s := ids(orderEndpoints(eps, self, "was", rtt, none, rnd)); s != "w1,w2" && s != "w2,w1" {
		t.Fatalf("was only: %s", s)
	}
	// Close round trips count as equal (ties by region id), not noise.
	rtts = map[string]time.Duration{"sin": 60 * time.Microsecond, "was": 50 * time.Microsecond}
	if s := ids(orderEndpoints(eps[:2], self, "", rtt, none, rnd)); s != "s1,w1" {
		t.Fatalf("regions within a millisecond: %s, want by id", s)
	}
}

// TestMeshRanksUnmeasuredRegionsByCoordinates: before a region's round
// trip is measured, the coordinates global gave the regions (the merged
// feed's Self and peers) estimate it; a measurement then wins.
func TestMeshRanksUnmeasuredRegionsByCoordinates(t *testing.T) {
	in := pkitest.New(t, "fra")
	n := newTestNode(t, in, "fra", "fra1", "fra1-a", nil)
	closed := testutil.FreePort(t) // nothing listens: probes measure nothing
	ep := func(id string) regionapi.Endpoint {
		return regionapi.Endpoint{Instance: id, Datacenter: id + "1", Machine: id + "-m", Address: "127.0.0.1",
			Ports: map[string]int{"8080": 1}, MeshPort: closed, Healthy: true}
	}
	peer := func(region string, lat, lon float64) regionapi.PeerFeed {
		return regionapi.PeerFeed{Region: region, Latitude: lat, Longitude: lon, Connected: true, Received: time.Now(),
			Services: []regionapi.FeedService{service("acme", "shop", "b", ep(region))}}
	}
	// Listed in an order that is neither by id nor by distance.
	feed := regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{},
		Self:  &regionapi.Peer{ID: "fra", Latitude: 50.11, Longitude: 8.68},
		Peers: []regionapi.PeerFeed{peer("syd", -33.87, 151.21), peer("sin", 1.35, 103.82), peer("was", 38.9, -77.04)}}
	n.m.setFeed(feed)
	order := func() string {
		var ids []string
		for _, e := range n.m.candidates(n.m.table.Load().services["acme.shop.b"], "") {
			ids = append(ids, e.Region)
		}
		return strings.Join(ids, ",")
	}
	// From Frankfurt: Washington ~6,500 km, Singapore ~10,300 km, Sydney
	// ~16,500 km.
	if got := order(); got != "was,sin,syd" {
		t.Fatalf("unmeasured regions ranked %s, want was,sin,syd by distance", got)
	}
	n.m.rtt.observe("syd", 20*time.Millisecond)
	if got := order(); got != "syd,was,sin" {
		t.Fatalf("with syd measured at 20ms: %s, want syd first", got)
	}
	// Without the region's own coordinates, unmeasured regions come last by id.
	feed.Self = nil
	n.m.setFeed(feed)
	if got := order(); got != "syd,sin,was" {
		t.Fatalf("without coordinates: %s, want syd (measured), then sin, was by id", got)
	}
}

// TestMeshRefusesOtherOrganizations checks that another organization's
// workload is refused at the destination's node proxy, logged with both
// identities, and that its names do not resolve there.
func TestMeshRefusesOtherOrganizations(t *testing.T) {
	p := newMeshPair(t)
	b1, _ := backend(t, "b-fra1")
	p.b.run("b-1", "acme", "shop", "b", b1)
	p.a.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{
		service("acme", "shop", "b", p.b.endpoint("b-1", true)), service("evil", "shop", "x")}})
	srv := p.a.caller("x-1", "evil", "shop", "x")
	if r := query(t, "udp", srv, "b.shop.internal.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("another organization's name: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	// A proxy that presents evil's certificate anyway is refused by the
	// destination.
	p.a.m.mu.Lock()
	s := p.a.m.slots["evil.shop.x"]
	p.a.m.mu.Unlock()
	ep := p.a.m.table.Load().services["acme.shop.b"].Endpoints[0]
	_, err := p.a.m.dial(s, ep, 8080)
	var st *meshwire.StatusError
	if !errors.As(err, &st) || st.Code != meshwire.StatusRefused {
		t.Fatalf("dial as evil: %v, want a refusal", err)
	}
	logs := p.b.logs.String()
	if !strings.Contains(logs, "mesh: call refused") || !strings.Contains(logs, "caller=spiffe://meridian.test/org/evil/app/shop/service/x") ||
		!strings.Contains(logs, "callee=spiffe://meridian.test/org/acme/app/shop/service/b") {
		t.Fatalf("the refusal is not logged with both identities:\n%s", logs)
	}
	// The same organization passes.
	acme := p.a.caller("a-1", "acme", "shop", "a")
	if got := mustGet(t, resolveA(t, acme, "b.shop.internal.")); got != "b-fra1" {
		t.Fatalf("answered by %s", got)
	}
}

// TestMeshVerifiesCallers: a service address carries only connections
// made by a process of one of the slot's instances (its top process or a
// descendant, found through the kernel's socket table): another process
// of the machine that connects to it is refused and logged; the instance's
// own process tree gets through. With UnverifiedCallers any process
// passes; where services run as their own users, the socket's owner
// decides.
func TestMeshVerifiesCallers(t *testing.T) {
	p := newMeshPair(t)
	b1, _ := backend(t, "b-fra1")
	p.b.run("b-1", "acme", "shop", "b", b1)
	p.a.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{
		service("acme", "shop", "b", p.b.endpoint("b-1", true))}})
	ip := resolveA(t, p.a.caller("a-1", "acme", "shop", "a"), "b.shop.internal.")
	if got := mustGet(t, ip); got != "b-fra1" {
		t.Fatalf("from the instance (the test process): %s", got)
	}

	// The instance is now a shell waiting for a line; the test process is
	// no longer one of its processes.
	sh := exec.Command("bash", "-c", `read go; exec 3<>/dev/tcp/`+ip.String()+`/8080; `+
		`printf 'GET / HTTP/1.0\r\nHost: b\r\n\r\n' >&3; cat <&3`)
	stdin, _ := sh.StdinPipe()
	var out testutil.Buffer
	sh.Stdout = &out
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Process.Kill(); sh.Wait() })
	p.a.setPID("a-1", sh.Process.Pid)
	if got, err := getVia(ip); err == nil {
		t.Fatalf("a process outside the instance reached the service address: %s", got)
	}
	if logs := p.a.logs.String(); !strings.Contains(logs, "not from the service's instances") {
		t.Fatalf("the refusal is not logged:\n%s", logs)
	}
	io.WriteString(stdin, "go\n")
	done := make(chan error, 1)
	go func() { done <- sh.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.HasSuffix(strings.TrimSpace(out.String()), "b-fra1") {
			t.Fatalf("the instance's own process: %v, answered %q", err, out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the instance's own process got no answer: %q", out.String())
	}

	// A node configured without verification lets any process through.
	in := pkitest.New(t, "fra")
	src := newTestNode(t, in, "fra", "fra1", "fra1-u", func(d *meshDeps) {
		d.Config.UnverifiedCallers = true
		d.PID = func(string) int { return sh.Process.Pid }
	})
	dst := newTestNode(t, in, "fra", "fra2", "fra2-u", nil)
	dst.run("b-2", "acme", "shop", "b", b1)
	src.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{service("acme", "shop", "b", dst.endpoint("b-2", true))}})
	if got := mustGet(t, resolveA(t, src.caller("a-2", "acme", "shop", "a"), "b.shop.internal.")); got != "b-fra1" {
		t.Fatalf("unverified: %s", got)
	}

	// Where services run as their own users, the socket's owner decides:
	// this (root) process is refused, a process of the service's user
	// gets through.
	const svcUID = 4100777
	usr := newTestNode(t, in, "fra", "fra1", "fra1-v", func(d *meshDeps) {
		d.ServiceUID = func(string) (uint32, bool) { return svcUID, true }
	})
	usr.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{service("acme", "shop", "b", dst.endpoint("b-2", true))}})
	uip := resolveA(t, usr.caller("a-3", "acme", "shop", "a"), "b.shop.internal.")
	if got, err := getVia(uip); err == nil {
		t.Fatalf("root reached a service address of a service that runs as uid %d: %s", svcUID, got)
	}
	as := exec.Command("bash", "-c", `exec 3<>/dev/tcp/`+uip.String()+`/8080; printf 'GET / HTTP/1.0\r\nHost: b\r\n\r\n' >&3; cat <&3`)
	as.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: svcUID, Gid: svcUID}}
	out2, err := as.Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out2)), "b-fra1") {
		t.Fatalf("the service's user: %v, answered %q", err, out2)
	}
}

// TestMeshRefusesPlaintextAndForeignCertificates checks what a node proxy
// refuses: plaintext, TLS without a client certificate, a certificate of
// another installation, an expired one, a machine's instead of a
// workload's.
func TestMeshRefusesPlaintextAndForeignCertificates(t *testing.T) {
	p := newMeshPair(t)
	b1, _ := backend(t, "b-fra1")
	p.b.run("b-1", "acme", "shop", "b", b1)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.b.m.port()))

	// Plaintext: the connection closes without an answer of the instance.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: b\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	c.Close()
	if bytes.Contains(got, []byte("b-fra1")) || bytes.Contains(got, []byte("HTTP/")) {
		t.Fatalf("plaintext got an answer: %q", got)
	}
	testutil.Eventually(t, 5*time.Second, "plaintext logged", func() (bool, string) {
		return strings.Contains(p.b.logs.String(), "refused a connection that is not TLS"), ""
	})

	tryTLS := func(name string, cert *pki.Leaf, roots *x509.CertPool) error {
		var src pki.CertSource = noCert{}
		if cert != nil {
			rl, err := pki.NewReloader(cert)
			if err != nil {
				t.Fatal(err)
			}
			src = rl
		}
		cfg := pki.ClientConfig(src, roots, pki.AllowKinds(pki.KindMachine))
		cfg.NextProtos = []string{meshwire.MeshALPN}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		sess, err := yamux.Client(conn, muxConfig(p.b.m.log))
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := openStream(ctx, sess, "b-1", 8080)
		if err != nil {
			return err
		}
		st.Close()
		return nil
	}
	issue := func(ca *pki.CA, id pki.ID, now time.Time, ttl time.Duration) *pki.Leaf {
		l, err := ca.Issue(pki.LeafRequest{ID: id, Usage: pki.UsageBoth, TTL: ttl, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	roots := p.in.Root.Pool()
	acme := pki.WorkloadID(pkitest.TrustDomain, "acme", "shop", "a")
	if err := tryTLS("valid", issue(p.in.Regions["was"], acme, time.Now(), time.Hour), roots); err != nil {
		t.Fatalf("a valid workload certificate (another region's CA) is refused: %v", err)
	}
	if err := tryTLS("no certificate", nil, roots); err == nil {
		t.Fatal("TLS without a client certificate was accepted")
	}
	other := pkitest.New(t, "fra")
	if err := tryTLS("foreign", issue(other.Regions["fra"], acme, time.Now(), time.Hour), roots); err == nil {
		t.Fatal("a certificate of another installation was accepted")
	}
	if err := tryTLS("machine", issue(p.in.Regions["fra"], pki.MachineID(pkitest.TrustDomain, "fra", "fra9-z"), time.Now(), time.Hour), roots); err == nil {
		t.Fatal("a machine certificate was accepted as a workload")
	}
	short := issue(p.in.Regions["fra"], acme, time.Now(), time.Minute)
	p.b.clock.advance(2 * time.Minute)
	if err := tryTLS("expired", short, roots); err == nil {
		t.Fatal("an expired certificate was accepted")
	}
	logs := p.b.logs.String()
	for _, want := range []string{"certificate", "refused a caller at the handshake"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// TestMeshCertificateRotationKeepsConnections rotates the caller's
// workload certificate and the destination's machine certificate while a
// connection is open: it carries on, and new connections present the new
// certificates (the old ones have expired by then).
func TestMeshCertificateRotationKeepsConnections(t *testing.T) {
	p := newMeshPair(t)
	b1, _ := backend(t, "b-fra1")
	p.b.run("b-1", "acme", "shop", "b", b1)
	p.a.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{
		service("acme", "shop", "b", p.b.endpoint("b-1", true))}})
	p.a.certTTL.Store(int64(10 * time.Minute))
	srv := p.a.caller("a-1", "acme", "shop", "a")
	ip := resolveA(t, srv, "b.shop.internal.")
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	call := func(c *http.Client) error {
		resp, err := c.Post("http://"+net.JoinHostPort(ip.String(), "8080")+"/", "text/plain", strings.NewReader("ping"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "ping" {
			return fmt.Errorf("answer %q", b)
		}
		return nil
	}
	if err := call(hc); err != nil {
		t.Fatal(err)
	}
	open := p.a.m.conns.len()
	// Rotate both sides to certificates valid from 20 minutes on, then move
	// both clocks there: the old certificates have expired.
	later := time.Now().Add(20 * time.Minute)
	p.a.m.mu.Lock()
	s := p.a.m.slots["acme.shop.a"]
	p.a.m.mu.Unlock()
	key, _ := pki.GenerateKey()
	csr, _ := pki.NewCSR(key, s.id)
	w, err := p.in.Regions["fra"].IssueFromCSR(csr, pki.LeafRequest{ID: s.id, Usage: pki.UsageClient, TTL: time.Hour, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	w.Key = key
	if err := s.cert.rl.Load().Rotate(w); err != nil {
		t.Fatal(err)
	}
	nodeLeaf, err := p.in.Regions["fra"].Issue(pki.LeafRequest{ID: pki.MachineID(pkitest.TrustDomain, "fra", "fra1-b"),
		Usage: pki.UsageBoth, TTL: time.Hour, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.b.certs.Rotate(nodeLeaf); err != nil {
		t.Fatal(err)
	}
	p.a.clock.advance(25 * time.Minute)
	p.b.clock.advance(25 * time.Minute)
	// The open connection carries on.
	for i := range 5 {
		if err := call(hc); err != nil {
			t.Fatalf("call %d on the open connection after rotation: %v", i, err)
		}
	}
	if p.a.m.conns.len() != open {
		t.Fatalf("open proxied connections went from %d to %d", open, p.a.m.conns.len())
	}
	// New connections handshake with the new certificates.
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 3 {
		if err := call(fresh); err != nil {
			t.Fatalf("new connection %d after rotation: %v", i, err)
		}
	}
	if strings.Contains(p.b.logs.String(), "refused") {
		t.Fatalf("a call was refused:\n%s", p.b.logs.String())
	}
}

// TestMeshRenewsWorkloadCertificates checks that a workload certificate
// is renewed before it expires, for a new key, and saved.
func TestMeshRenewsWorkloadCertificates(t *testing.T) {
	in := pkitest.New(t, "fra")
	mc := clock.NewFake(time.Now())
	var n *testNode
	n = newTestNode(t, in, "fra", "fra1", "fra1-a", func(d *meshDeps) {
		d.Clock = mc
		d.Issue = func(ctx context.Context, service string, csr []byte) ([]byte, error) {
			parts := strings.Split(service, ".")
			leaf, err := in.Regions["fra"].IssueFromCSR(csr, pki.LeafRequest{ID: pki.WorkloadID(pkitest.TrustDomain, parts[0], parts[1], parts[2]),
				Usage: pki.UsageClient, TTL: 10 * time.Minute, Now: mc.Now()})
			if err != nil {
				return nil, err
			}
			n.issued.Add(1)
			return leaf.ChainPEM(), nil
		}
	})
	n.caller("a-1", "acme", "shop", "a")
	n.m.mu.Lock()
	s := n.m.slots["acme.shop.a"]
	n.m.mu.Unlock()
	if _, err := s.cert.source(testutil.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	first := s.cert.leaf()
	renewAt := first.Cert.NotAfter.Add(-first.Cert.NotAfter.Sub(first.Cert.NotBefore) / 3)
	// Wait until the renewer waits on its timer, then move past renewAt.
	if err := mc.WaitArmed(testutil.Context(t, 10*time.Second), nil); err != nil {
		t.Fatalf("the renewer did not wait on its timer: %v", err)
	}
	if n.issued.Load() != 1 {
		t.Fatalf("%d certificates issued before renewal time", n.issued.Load())
	}
	mc.Advance(renewAt.Sub(mc.Now()) + time.Second)
	testutil.Eventually(t, 10*time.Second, "renewed", func() (bool, string) {
		return s.cert.leaf().Cert.SerialNumber.Cmp(first.Cert.SerialNumber) != 0, ""
	})
	renewed := s.cert.leaf()
	if renewed.Cert.PublicKey.(*ecdsa.PublicKey).Equal(first.Cert.PublicKey) {
		t.Fatal("renewed for the same key")
	}
	if !renewed.Cert.NotAfter.After(first.Cert.NotAfter) {
		t.Fatal("the renewed certificate does not outlive the first")
	}
	saved, err := pki.LoadLeaf(filepath.Join(n.m.d.StateDir, "certs"), "acme.shop.a")
	if err != nil || saved.Cert.SerialNumber.Cmp(renewed.Cert.SerialNumber) != 0 {
		t.Fatalf("the renewed certificate is not saved: %v", err)
	}
}

// TestMeshStateSurvivesRestart checks that slots and names keep their
// addresses across a restart, and that the service addresses listen again
// once the feed arrives, before anyone resolves again.
func TestMeshStateSurvivesRestart(t *testing.T) {
	in := pkitest.New(t, "fra")
	dir := filepath.Join(t.TempDir(), "mesh")
	netw := nextMeshNet()
	tweak := func(d *meshDeps) { d.StateDir = dir; d.Config.Net = netw }
	n := newTestNode(t, in, "fra", "fra1", "fra1-a", tweak)
	b1, _ := backend(t, "b-1")
	n.run("b-1", "acme", "shop", "b", b1)
	feed := regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{
		service("acme", "shop", "b", n.endpoint("b-1", true))}}
	n.m.setFeed(feed)
	n.caller("z-1", "acme", "shop", "z") // takes slot 1
	srv := n.caller("a-1", "acme", "shop", "a")
	ip := resolveA(t, srv, "b.shop.internal.")
	n.m.close()

	n2 := newTestNode(t, in, "fra", "fra1", "fra1-a", tweak)
	n2.run("b-1", "acme", "shop", "b", b1)
	srv2 := n2.caller("a-1", "acme", "shop", "a")
	if srv2 != srv {
		t.Fatalf("DNS server moved from %s to %s", srv, srv2)
	}
	feed.Services[0].Endpoints = []regionapi.Endpoint{n2.endpoint("b-1", true)}
	n2.m.setFeed(feed)
	if got := mustGet(t, ip); got != "b-1" {
		t.Fatalf("the saved address answered %s", got)
	}
	if again := resolveA(t, srv2, "b.shop.internal."); !again.Equal(ip) {
		t.Fatalf("b.shop.internal moved from %s to %s", ip, again)
	}
	// The last instance of a service gone: its slot stops.
	n2.m.release("a-1")
	if _, err := net.Dial("tcp", net.JoinHostPort(ip.String(), "8080")); err == nil {
		t.Fatal("a stopped slot's service address still listens")
	}
}

// TestMeshSkipsTakenSlots checks that a caller slot whose DNS address
// something else holds (another agent given the same network) is skipped.
func TestMeshSkipsTakenSlots(t *testing.T) {
	in := pkitest.New(t, "fra")
	netw := nextMeshNet()
	n := newTestNode(t, in, "fra", "fra1", "fra1-a", func(d *meshDeps) { d.Config.Net = netw })
	taken, err := net.ListenPacket("udp", net.JoinHostPort(n.m.ip(1, 1).String(), strconv.Itoa(testDNSPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	srv := n.caller("a-1", "acme", "shop", "a")
	if want := net.JoinHostPort(n.m.ip(2, 1).String(), strconv.Itoa(testDNSPort)); srv != want {
		t.Fatalf("DNS server at %s, want %s (slot 1 is taken)", srv, want)
	}
	n.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{service("acme", "shop", "b")}})
	resolveA(t, srv, "b.shop.internal.")
}
