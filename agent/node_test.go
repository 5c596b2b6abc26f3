package agent

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/meshwire"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// edgeCall calls an instance's port through a node proxy as an edge does:
// TLS with leaf, the given ALPN protocols, the preamble, then one HTTP GET
// on the connection; it returns the answer's body, or the first failure.
func edgeCall(addr string, machine pki.ID, leaf *pki.Leaf, roots *x509.CertPool, alpn []string,
	instance string, port int) (string, error) {
	var src pki.CertSource = noCert{}
	if leaf != nil {
		rl, err := pki.NewReloader(leaf)
		if err != nil {
			return "", err
		}
		src = rl
	}
	cfg := pki.ClientConfig(src, roots, pki.AllowIDs(machine))
	cfg.NextProtos = alpn
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(meshwire.AppendPreamble(nil, instance, port)); err != nil {
		return "", err
	}
	if err := meshwire.ReadStatus(c); err != nil {
		return "", err
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestNodeProxyAdmitsEdgesOnlyOnTheirProtocol: an edge certificate issued
// by the root reaches, on the edge protocol, the instance's ports with a
// public route and no other; everything else is refused at the handshake
// — the edge protocol with an edge certificate minted by a region's CA,
// a workload's, a machine's, another installation's, an expired one, none
// at all, or plaintext; an edge certificate on the mesh protocol; any
// certificate naming no protocol. An edge's connection is closed when its
// certificate expires.
func TestNodeProxyAdmitsEdgesOnlyOnTheirProtocol(t *testing.T) {
	testutil.Slow(t) // waits for a certificate to expire
	in := pkitest.New(t, "fra", "was")
	n := newTestNode(t, in, "fra", "fra1", "fra1-a", nil)
	pub, _ := backend(t, "public")
	priv, _ := backend(t, "private")
	n.mu.Lock()
	n.locals["w-1"] = NodeInstance{Org: "acme", App: "shop", Service: "web", Ports: map[int]int{8080: pub, 9090: priv}, Public: []int{8080}}
	n.mu.Unlock()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(n.m.port()))
	machine := pki.MachineID(pkitest.TrustDomain, "fra", "fra1-a")
	roots := in.Root.Pool()
	edgeID := pki.EdgeID(pkitest.TrustDomain, "par")
	issue := func(ca *pki.CA, id pki.ID, ttl time.Duration) *pki.Leaf {
		l, err := ca.Issue(pki.LeafRequest{ID: id, Usage: pki.UsageBoth, TTL: ttl, Now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	edge := issue(in.Root, edgeID, time.Hour)
	edgeProto, meshProto := []string{meshwire.EdgeALPN}, []string{meshwire.MeshALPN}

	if got, err := edgeCall(addr, machine, edge, roots, edgeProto, "w-1", 8080); err != nil || got != "public" {
		t.Fatalf("an edge to the public port: %q %v", got, err)
	}
	_, err := edgeCall(addr, machine, edge, roots, edgeProto, "w-1", 9090)
	var se *meshwire.StatusError
	if !errors.As(err, &se) || se.Code != meshwire.StatusRefused {
		t.Fatalf("an edge to a port without a public route: %v, want a refusal", err)
	}
	other := pkitest.New(t, "fra")
	workload := issue(in.Regions["fra"], pki.WorkloadID(pkitest.TrustDomain, "acme", "shop", "web"), time.Hour)
	for _, tc := range []struct {
		name string
		leaf *pki.Leaf
		alpn []string
	}{
		{"an edge certificate minted with fra's CA", pkitest.Forge(t, in.Regions["fra"], edgeID, pki.UsageBoth), edgeProto},
		{"an edge certificate minted with was's CA", pkitest.Forge(t, in.Regions["was"], edgeID, pki.UsageBoth), edgeProto},
		{"a workload certificate on the edge protocol", workload, edgeProto},
		{"a machine certificate on the edge protocol", issue(in.Regions["fra"], pki.MachineID(pkitest.TrustDomain, "fra", "fra9-z"), time.Hour), edgeProto},
		{"another installation's edge certificate", issue(other.Root, edgeID, time.Hour), edgeProto},
		{"no certificate", nil, edgeProto},
		{"an edge certificate on the mesh protocol", edge, meshProto},
		{"an edge certificate naming no protocol", edge, nil},
		{"a workload certificate naming no protocol", workload, nil},
	} {
		if got, err := edgeCall(addr, machine, tc.leaf, roots, tc.alpn, "w-1", 8080); err == nil {
			t.Errorf("%s: admitted, answered %q", tc.name, got)
		}
	}
	// Plaintext: no answer of the instance.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(append(meshwire.AppendPreamble(nil, "w-1", 8080), "GET / HTTP/1.1\r\nHost: shop\r\n\r\n"...))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	c.Close()
	if strings.Contains(string(got), "public") || strings.Contains(string(got), "HTTP/") {
		t.Fatalf("plaintext got an answer: %q", got)
	}
	logs := n.logs.String()
	for _, want := range []string{"mesh: edge call refused", "refused a caller at the handshake", "is not an edge",
		"certificate not issued by a CA allowed to issue it", "no protocol named", "refused a connection that is not TLS"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}

	// A connection outlives no certificate: closed at its expiry.
	short := issue(in.Root, edgeID, 2*time.Second)
	rl, _ := pki.NewReloader(short)
	cfg := pki.ClientConfig(rl, roots, pki.AllowIDs(machine))
	cfg.NextProtos = edgeProto
	tc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.Write(meshwire.AppendPreamble(nil, "w-1", 8080))
	if err := meshwire.ReadStatus(tc); err != nil {
		t.Fatalf("a certificate valid for 2s more: %v", err)
	}
	closed := make(chan error, 1)
	go func() { _, err := io.ReadAll(tc); closed <- err }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("an edge's connection outlived its certificate by 8s")
	}
	testutil.Eventually(t, 5*time.Second, "the expiry logged", func() (bool, string) {
		return strings.Contains(n.logs.String(), "its certificate expired"), ""
	})
	// An expired certificate does not get in.
	n.clock.advance(time.Hour)
	if _, err := edgeCall(addr, machine, short, roots, edgeProto, "w-1", 8080); err == nil {
		t.Fatal("an expired edge certificate was admitted")
	}
}

// TestMeshRefusesForgedMachines: a node proxy whose certificate names the
// machine the feed lists, but was minted with another region's CA, is
// not called: the caller's connection fails and nothing reaches the
// instance behind it.
func TestMeshRefusesForgedMachines(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	forged, err := pki.NewReloader(pkitest.Forge(t, in.Regions["was"], pki.MachineID(pkitest.TrustDomain, "fra", "fra1-b"), pki.UsageBoth))
	if err != nil {
		t.Fatal(err)
	}
	a := newTestNode(t, in, "fra", "fra1", "fra1-a", nil)
	b := newTestNode(t, in, "fra", "fra1", "fra1-b", func(d *meshDeps) { d.NodeCerts = forged })
	hits := 0
	var mu sync.Mutex
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		io.WriteString(w, "secret")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	b.run("b-1", "acme", "shop", "b", ln.Addr().(*net.TCPAddr).Port)
	a.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{service("acme", "shop", "b", b.endpoint("b-1", true))}})
	ip := resolveA(t, a.caller("a-1", "acme", "shop", "a"), "b.shop.internal.")
	if got, err := getVia(ip); err == nil {
		t.Fatalf("a call reached a machine whose certificate was minted by was's CA: %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 0 {
		t.Fatalf("the instance behind the forged node proxy was reached %d times", hits)
	}
	if logs := a.logs.String(); !strings.Contains(logs, "not issued by a CA allowed to issue it") {
		t.Fatalf("the refusal does not say why:\n%s", logs)
	}
}
