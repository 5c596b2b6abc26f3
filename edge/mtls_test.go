package edge

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/agent"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// TestInstancesOnlyOverMutualTLS: the edge reaches instances only
// through their machines' node proxies, over mutual TLS: it dials the
// mesh port, never the instance's; GETs, bodies and pooled connections
// go that way. It sends nothing in clear and refuses a machine that
// cannot prove it is the one the feed names: a listener that is not TLS
// (it sees a TLS handshake, no request), a node proxy with another
// machine's certificate, one with the machine's identity minted by
// another region's CA. A node proxy that refuses the call (the port has
// no public route there) is a failed connection: the next instance is
// tried.
func TestInstancesOnlyOverMutualTLS(t *testing.T) {
	w := world(t)
	var mu sync.Mutex
	dialed := map[string]int{}
	s := startEdge(t, func(c *Config) {
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			dialed[addr]++
			mu.Unlock()
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	})
	good := echoBackend(t)
	seed(t, s, fra, service("web", nil, endpointOf("good", good)))
	c := client()
	for range 5 {
		if code, _, _ := get(t, c, s.URL(), testHost, "/"); code != 200 {
			t.Fatalf("GET: %d", code)
		}
	}
	resp, err := do(c, "POST", s.URL(), testHost, "/", strings.NewReader("through the hop"))
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeEcho(t, resp); m["body"] != "through the hop" {
		t.Fatalf("POST: %v", m)
	}
	mesh := w.machine(t, "fra", "m-good").addr()
	mu.Lock()
	got := fmt.Sprint(dialed)
	onlyMesh := len(dialed) == 1 && dialed[mesh] > 0 && dialed[mesh] <= 3
	mu.Unlock()
	if !onlyMesh {
		t.Fatalf("the edge dialed %s; want only the machine's mesh port %s, its connections kept", got, mesh)
	}

	// Impostors at the mesh port the feed names for machine fra1-x.
	machine := pki.MachineID(pkitest.TrustDomain, "fra", "fra1-x")
	impostor := func(leaf *pki.Leaf) int {
		rl, err := pki.NewReloader(leaf)
		if err != nil {
			t.Fatal(err)
		}
		np, err := agent.StartNodeProxy(agent.NodeProxyConfig{Address: "127.0.0.1", TrustDomain: pkitest.TrustDomain, Roots: w.in.Root.Pool(),
			Certs: rl, Instances: func(string) (agent.NodeInstance, bool) {
				return agent.NodeInstance{Org: "demo", App: "hello", Service: "web", Ports: map[int]int{8080: good.port}, Public: []int{8080}}, true
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(np.Close)
		return np.Port()
	}
	clear, firstBytes := plainListener(t)
	for _, tc := range []struct {
		name string
		port int
	}{
		{"a listener that is not TLS", clear},
		{"another machine's node proxy", impostor(issueMachine(t, w.in.Regions["fra"], pki.MachineID(pkitest.TrustDomain, "fra", "fra1-y")))},
		{"fra1-x's identity minted by was's CA", impostor(pkitest.Forge(t, w.in.Regions["was"], machine, pki.UsageBoth))},
		{"fra1-x's identity minted by the root", impostor(pkitest.Forge(t, w.in.Root, machine, pki.UsageBoth))},
	} {
		ep := regionapi.Endpoint{Instance: "x", Machine: "fra1-x", Address: "127.0.0.1", Ports: map[string]int{"8080": good.port},
			MeshPort: tc.port, Healthy: true}
		setServices(t, s, "fra", service("web", nil, ep))
		for _, method := range []string{"GET", "POST"} {
			resp, err := do(c, method, s.URL(), testHost, "/", strings.NewReader("secret"))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(ErrorHeader) != ReasonConnectFailed {
				t.Fatalf("%s, %s: %d %s %q", tc.name, method, resp.StatusCode, resp.Header.Get(ErrorHeader), b)
			}
		}
	}
	if b := firstBytes(); len(b) == 0 || b[0] != 0x16 || strings.Contains(string(b), "GET") || strings.Contains(string(b), "secret") {
		t.Fatalf("the plain listener got %q; want a TLS handshake record and nothing in clear", b)
	}

	// A node proxy that refuses the call (in fra, the closest region, so
	// tried first): the instance in was is tried next.
	private := newBackend(t, "private", nil)
	m := w.machine(t, "fra", "m-private")
	refusing := endpointOf("private", private)
	refusing.MeshPort = m.proxy.Port()
	refusing.Machine = "m-private"
	m.mu.Lock()
	m.instances["private"] = agent.NodeInstance{Org: "demo", App: "hello", Service: "web", Ports: map[int]int{8080: private.port}}
	m.mu.Unlock()
	setServices(t, s, "fra", service("web", nil, refusing))
	seed(t, s, was, service("web", nil, endpointOf("good-was", good)))
	for range 6 {
		if code, body, _ := get(t, c, s.URL(), testHost, "/"); code != 200 || !strings.Contains(body, testHost) {
			t.Fatalf("with a refusing node proxy: %d %q", code, body)
		}
	}
	if private.hits.Load() != 0 {
		t.Fatalf("a port without a public route was reached %d times", private.hits.Load())
	}
	testutil.Eventually(t, 5*time.Second, "the refusal logged by the node proxy", func() (bool, string) {
		return strings.Contains(m.logs.String(), "has no public route"), m.logs.String()
	})
}

// issueMachine issues a machine certificate from a region's CA.
func issueMachine(t testing.TB, ca *pki.CA, id pki.ID) *pki.Leaf {
	t.Helper()
	l, err := ca.Issue(pki.LeafRequest{ID: id, Usage: pki.UsageBoth, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// plainListener accepts connections and keeps the first bytes any of them
// sent, answering like a plain HTTP server would if it had a request.
func plainListener(t testing.TB) (port int, first func() []byte) {
	var mu sync.Mutex
	var got []byte
	return testutil.ServeTCP(t, func(c net.Conn) {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 4096)
			n, _ := c.Read(b)
			mu.Lock()
			if got == nil {
				got = b[:n]
			}
			mu.Unlock()
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nclear!")
		}), func() []byte {
			mu.Lock()
			defer mu.Unlock()
			return got
		}
}
