package e2e

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/dev"
	"github.com/meridian-run/meridian/testutil"
)

// TestDevStartsAgainOnPortClash: a port dev picked as free and another
// program took before the component bound it makes global, an edge and
// the local registry exit at start; dev starts each again on another port
// and comes up.
func TestDevStartsAgainOnPortClash(t *testing.T) {
	var held []net.Listener
	t.Cleanup(func() {
		for _, ln := range held {
			ln.Close()
		}
	})
	var mu sync.Mutex
	taken := map[string]string{} // purpose -> the address handed out taken
	free := func(purpose string) (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		mu.Lock()
		defer mu.Unlock()
		if (purpose == "global" || purpose == "edge par" || purpose == "registry") && taken[purpose] == "" {
			held = append(held, ln) // kept open: the component cannot bind it
			taken[purpose] = ln.Addr().String()
			return ln.Addr().String(), nil
		}
		defer ln.Close()
		return ln.Addr().String(), nil
	}
	topo := smallTopology(t, 1)
	topo.Regions = topo.Regions[:1]
	topo.Edges = topo.Edges[:1]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	env, err := dev.Start(ctx, dev.Config{StateDir: t.TempDir(), Topology: topo, Binary: meridianBin, APIListen: "127.0.0.1:0",
		FreeAddr: free, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatalf("meridian dev with taken ports: %v", err)
	}
	defer env.Close()
	info := env.Info()
	mu.Lock()
	g, e, r := taken["global"], taken["edge par"], taken["registry"]
	mu.Unlock()
	if g == "" || e == "" || r == "" {
		t.Fatalf("the test handed out no taken port (global %q, edge %q, registry %q)", g, e, r)
	}
	if info.Registry == "" || info.Registry == r {
		t.Fatalf("registry listed at %q (the taken address was %s)", info.Registry, r)
	}
	if resp, err := http.Get("http://" + info.Registry + "/v2/"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the registry on its new address %s: %v %v", info.Registry, resp, err)
	} else {
		resp.Body.Close()
	}
	if strings.Contains(info.API, g) {
		t.Fatalf("global listed on the taken address %s", g)
	}
	resp, err := http.Get(info.API + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("global on its new address %s: %v %v", info.API, resp, err)
	}
	resp.Body.Close()
	edges := 0
	for _, c := range info.Components {
		if c.Role != "edge" {
			continue
		}
		edges++
		if strings.Contains(c.Address, e) {
			t.Fatalf("edge listed on the taken address %s", e)
		}
		resp, err := http.Get(c.Admin + "/readyz")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("edge %s not ready at %s: %v %v", c.Location, c.Admin, resp, err)
		}
		resp.Body.Close()
	}
	if edges != 1 {
		t.Fatalf("dev.json lists %d edges, want 1 (the clashed one replaced)", edges)
	}
}
