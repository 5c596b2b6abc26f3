package region

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/linkproxy"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// latestFeed reads one feed from a region.
func latestFeed(t testing.TB, c *regionapi.Client, local bool) regionapi.Feed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got regionapi.Feed
	stop := errors.New("got one")
	if err := c.Feed(ctx, local, func(f regionapi.Feed) error { got = f; return stop }); !errors.Is(err, stop) {
		t.Fatalf("feed: %v", err)
	}
	return got
}

// TestEndpointFeeds: a region's feed lists its services' endpoints (with
// address, host ports, mesh port and health) for an edge; a peer region
// that global told about it follows that feed directly and serves it to
// its agents merged with its own (and with its own coordinates), and
// keeps the endpoints (marked disconnected) when the link to the peer goes
// silent (then follows it again) and when the peer goes away.
func TestEndpointFeeds(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	// was takes fra's feed as dead after 500ms of silence: fra sends its
	// keepalive more often than that.
	fra := single(t, in, "fra", func(c *Config) { c.FeedKeepalive = 100 * time.Millisecond })
	was := single(t, in, "was", func(c *Config) { c.PeerFeedIdle = 500 * time.Millisecond })
	ctx := testutil.Context(t, time.Minute)
	gfra := regionapi.NewClient(fra.URL(), in.GlobalClient(t))
	m := joinMachine(t, in, fra, "fra1-a", "fra1", 4000, 4096)
	if _, err := m.client.Heartbeat(ctx, regionapi.Heartbeat{MeshPort: 7443}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	m.keepAlive(t, stop)
	apply := testApply("fra", 1, "dep-1", 1)
	if _, err := gfra.Apply(ctx, apply); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "placed", func() (bool, string) { return len(m.assignments(t)) == 1, "" })
	m.reportHealthy(t)

	edgeLeaf, err := in.Root.Issue(pki.LeafRequest{ID: pki.EdgeID(pkitest.TrustDomain, "par"), Usage: pki.UsageClient, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	edge := regionapi.NewClient(fra.URL(), in.Client(t, edgeLeaf))
	testutil.Eventually(t, 10*time.Second, "a healthy endpoint in fra's feed", func() (bool, string) {
		f := latestFeed(t, edge, true)
		if f.Region != "fra" || len(f.Services) != 1 || len(f.Services[0].Endpoints) != 1 {
			return false, "no endpoint yet"
		}
		e := f.Services[0].Endpoints[0]
		return e.Healthy && e.Address == "127.0.0.1" && e.Ports["8080"] == 20000 && e.MeshPort == 7443 &&
			f.Services[0].Key == "acme.web.api" && len(f.Services[0].Ports) == 1, "endpoint not complete"
	})

	// Global tells was about fra; was follows fra's feed and serves it merged.
	// was reaches fra through a link proxy that can blackhole the link.
	link, err := linkproxy.New(linkproxy.Config{Listen: "127.0.0.1:0", Target: strings.TrimPrefix(fra.URL(), "https://")})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	gwas := regionapi.NewClient(was.URL(), in.GlobalClient(t))
	if err := gwas.SetPeers(ctx, regionapi.Peers{Self: regionapi.Peer{ID: "was", URL: was.URL(), Latitude: 38.9, Longitude: -77.04},
		Peers: []regionapi.Peer{{ID: "fra", URL: "https://" + link.Addr(), Latitude: 50.1, Longitude: 8.7}}}); err != nil {
		t.Fatal(err)
	}
	wm := joinMachine(t, in, was, "was1-a", "was1", 4000, 4096)
	testutil.Eventually(t, 10*time.Second, "fra's endpoints in was's merged feed", func() (bool, string) {
		f := latestFeed(t, wm.client, false)
		return len(f.Peers) == 1 && f.Peers[0].Region == "fra" && f.Peers[0].Connected && len(f.Peers[0].Services) == 1 &&
			len(f.Peers[0].Services[0].Endpoints) == 1 && f.Peers[0].Latitude == 50.1 &&
			f.Self != nil && f.Self.ID == "was" && f.Self.Latitude == 38.9 && f.Self.Longitude == -77.04, "not yet"
	})
	if f := latestFeed(t, wm.client, true); len(f.Peers) != 0 {
		t.Fatalf("was's local feed carries peers: %+v", f.Peers)
	}
	// Bad peers are refused.
	if err := gwas.SetPeers(ctx, regionapi.Peers{Peers: []regionapi.Peer{{ID: "Bad!", URL: "http://x"}}}); err == nil {
		t.Fatal("a malformed peer list was accepted")
	}
	// An edge may read feeds but not apply.
	if _, err := edge.Apply(ctx, testApply("fra", 2, "dep-2", 1)); err == nil {
		t.Fatal("an edge applied a service")
	}

	// The link to fra goes silent (blackholed): after PeerFeedIdle was
	// keeps fra's endpoints, marked disconnected; the link back, fra's
	// feed is followed again.
	link.Blackhole()
	testutil.Eventually(t, 15*time.Second, "fra's endpoints kept, disconnected, while the link is silent", func() (bool, string) {
		f := latestFeed(t, wm.client, false)
		return len(f.Peers) == 1 && !f.Peers[0].Connected && len(f.Peers[0].Services) == 1, "still connected"
	})
	link.Unblackhole()
	testutil.Eventually(t, 30*time.Second, "fra's feed followed again", func() (bool, string) {
		f := latestFeed(t, wm.client, false)
		return len(f.Peers) == 1 && f.Peers[0].Connected, "disconnected"
	})

	// fra goes away: was keeps fra's endpoints, marked disconnected.
	fra.Close()
	testutil.Eventually(t, 15*time.Second, "fra's endpoints kept, disconnected", func() (bool, string) {
		f := latestFeed(t, wm.client, false)
		return len(f.Peers) == 1 && !f.Peers[0].Connected && len(f.Peers[0].Services) == 1, "still connected"
	})
}
