package edge

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/linkproxy"
	"github.com/meridian-run/meridian/testutil"
)

// regionFrom returns the edge's view of one region.
func regionFrom(s *Server, id string) RegionStatus {
	for _, r := range s.Status().Regions {
		if r.ID == id {
			return r
		}
	}
	return RegionStatus{}
}

// followFra starts an edge following fra's feed (from a test feed
// server, returned), which routes the app to the backend fra-1.
func followFra(t testing.TB, tweak func(*Config)) (*Server, *feedServer) {
	t.Helper()
	in := world(t).in
	ff := newFeedServer(t, in, "fra")
	ff.set(service("web", nil, endpointOf("f1", newBackend(t, "fra-1", nil))))
	s := startEdge(t, func(c *Config) {
		c.Identity = edgeIdentity(t, in)
		c.Regions = []Region{ff.Region(fra)}
		if tweak != nil {
			tweak(c)
		}
	})
	return s, ff
}

// TestFollowsRegionFeeds: the edge subscribes to every region's feed
// with its edge certificate, routes from them, follows changes, and
// writes its snapshot.
func TestFollowsRegionFeeds(t *testing.T) {
	in := world(t).in
	ff, wf := newFeedServer(t, in, "fra"), newFeedServer(t, in, "was")
	f1, w1 := newBackend(t, "fra-1", nil), newBackend(t, "was-1", nil)
	ff.set(service("web", nil, endpointOf("f1", f1)))
	wf.set(service("web", nil, endpointOf("w1", w1)))
	s := startEdge(t, func(c *Config) {
		c.Identity = edgeIdentity(t, in)
		c.Regions = []Region{ff.Region(fra), wf.Region(was)}
	})
	c := client()
	testutil.Eventually(t, 10*time.Second, "routing from fra's feed", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-1"] == 1, fmt.Sprint(got)
	})
	f2 := newBackend(t, "fra-2", nil)
	ff.set(service("web", nil, endpointOf("f2", f2)))
	testutil.Eventually(t, 10*time.Second, "the new instance", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-2"] == 1, fmt.Sprint(got)
	})
	testutil.Eventually(t, 10*time.Second, "snapshot written", func() (bool, string) {
		snap, err := ReadSnapshot(s.cfg.StateDir)
		if err != nil || len(snap.Regions) != 2 {
			return false, fmt.Sprint(snap, err)
		}
		for _, r := range snap.Regions {
			if r.Region.ID == "fra" && len(r.Services) == 1 && r.Services[0].Endpoints[0].Instance == "f2" {
				return true, ""
			}
		}
		return false, fmt.Sprint(snap.Regions)
	})
	if r := regionFrom(s, "fra"); !r.Connected || r.Source != "feed" || r.Rank != 0 {
		t.Fatalf("fra as the edge sees it: %+v", r)
	}
	resp, err := do(c, "GET", s.AdminURL(), "", "/readyz", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
}

// TestBadFeedsKeepTheLastGoodState: a feed that sends garbage or drops
// leaves the region's last good state in use; the edge reconnects and
// picks up the next good feed.
func TestBadFeedsKeepTheLastGoodState(t *testing.T) {
	testutil.Slow(t)
	s, ff := followFra(t, nil)
	c := client()
	testutil.Eventually(t, 10*time.Second, "routing", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-1"] == 1, fmt.Sprint(got)
	})
	ff.sendGarbage()
	testutil.Eventually(t, 10*time.Second, "the garbage seen", func() (bool, string) {
		n := metric(t, s, `meridian_edge_feed_errors_total{region="fra"}`)
		return n >= 1, fmt.Sprint(n)
	})
	if got := answers(t, c, s.URL(), 10); got["fra-1"] != 10 {
		t.Fatalf("after garbage: %v", got)
	}
	testutil.Eventually(t, 10*time.Second, "reconnected after the garbage", func() (bool, string) {
		return ff.streams.Load() >= 2 && regionFrom(s, "fra").Connected, fmt.Sprint(ff.streams.Load())
	})
	ff.dropStreams()
	testutil.Eventually(t, 10*time.Second, "the drop seen", func() (bool, string) {
		n := metric(t, s, `meridian_edge_feed_errors_total{region="fra"}`)
		return n >= 2, fmt.Sprint(n)
	})
	if got := answers(t, c, s.URL(), 10); got["fra-1"] != 10 {
		t.Fatalf("after a drop: %v", got)
	}
	f2 := newBackend(t, "fra-2", nil)
	ff.set(service("web", nil, endpointOf("f2", f2)))
	testutil.Eventually(t, 10*time.Second, "reconnected to the next good feed", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-2"] == 1, fmt.Sprint(got)
	})
	if ff.streams.Load() < 3 {
		t.Fatalf("streams opened: %d", ff.streams.Load())
	}
}

// TestSilentFeedIsReopened: a feed stream that sends nothing for
// FeedIdleTimeout (a real region sends a keepalive line every 10s) is
// closed as failed and opened again; routing goes on from the last good
// state meanwhile.
func TestSilentFeedIsReopened(t *testing.T) {
	testutil.Slow(t)
	// The test feed server sends on changes only: silent otherwise.
	s, ff := followFra(t, func(c *Config) { c.FeedIdleTimeout = 300 * time.Millisecond })
	c := client()
	testutil.Eventually(t, 10*time.Second, "routing", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-1"] == 1, fmt.Sprint(got)
	})
	testutil.Eventually(t, 10*time.Second, "the silent stream reopened twice", func() (bool, string) {
		n := metric(t, s, `meridian_edge_feed_errors_total{region="fra"}`)
		return ff.streams.Load() >= 3 && n >= 2, fmt.Sprintf("streams %d, errors %v", ff.streams.Load(), n)
	})
	if got := answers(t, c, s.URL(), 10); got["fra-1"] != 10 {
		t.Fatalf("while the feed is silent: %v", got)
	}
}

// TestRestartServesFromSnapshot: an edge restarted while global and the
// regions' APIs are down serves from its snapshot; a damaged snapshot is
// ignored with a warning, not fatal.
func TestRestartServesFromSnapshot(t *testing.T) {
	in := world(t).in
	ff := newFeedServer(t, in, "fra")
	f1 := newBackend(t, "fra-1", nil)
	ff.set(service("web", nil, endpointOf("f1", f1)))
	dir := t.TempDir()
	id := edgeIdentity(t, in)
	s := startEdge(t, func(c *Config) { c.Identity, c.StateDir, c.Regions = id, dir, []Region{ff.Region(fra)} })
	testutil.Eventually(t, 10*time.Second, "routing", func() (bool, string) {
		got := answers(t, client(), s.URL(), 1)
		return got["fra-1"] == 1, fmt.Sprint(got)
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ff.srv.Close() // the region's API is gone too; its instance is not
	s2 := startEdge(t, func(c *Config) { c.Identity, c.StateDir, c.Regions = id, dir, []Region{ff.Region(fra)} })
	if got := answers(t, client(), s2.URL(), 5); got["fra-1"] != 5 {
		t.Fatalf("from the snapshot: %v", got)
	}
	if r := regionFrom(s2, "fra"); r.Source != "snapshot" || r.Connected {
		t.Fatalf("fra after restart: %+v", r)
	}
	s2.Close()
	if err := os.WriteFile(filepath.Join(dir, SnapshotFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	s3 := startEdge(t, func(c *Config) { c.Identity, c.StateDir, c.Regions = id, dir, []Region{ff.Region(fra)} })
	if st := s3.Status(); st.Routes != 0 {
		t.Fatalf("a damaged snapshot was used: %+v", st)
	}
}

// proxies puts a link proxy on the way to every address dialed through
// it, created on first use.
type proxies struct {
	t  testing.TB
	mu sync.Mutex
	m  map[string]*linkproxy.Proxy
}

func newProxies(t testing.TB) *proxies { return &proxies{t: t, m: map[string]*linkproxy.Proxy{}} }

func (p *proxies) get(addr string) *linkproxy.Proxy {
	p.mu.Lock()
	defer p.mu.Unlock()
	lp := p.m[addr]
	if lp == nil {
		var err error
		if lp, err = linkproxy.New(linkproxy.Config{Target: addr}); err != nil {
			p.t.Fatal(err)
		}
		p.t.Cleanup(func() { lp.Close() })
		p.m[addr] = lp
	}
	return lp
}

func (p *proxies) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, p.get(addr).Addr())
}

// TestBlackholedRegion: the links to Frankfurt's API and its instance's
// machine swallow every byte: the probe times out, the region goes last, and the
// GETs waiting on it are cut and retried in Washington: none fails.
func TestBlackholedRegion(t *testing.T) {
	testutil.Slow(t)
	in := world(t).in
	ff, wf := newFeedServer(t, in, "fra"), newFeedServer(t, in, "was")
	f1, w1 := newBackend(t, "fra-1", nil), newBackend(t, "was-1", nil)
	ff.set(service("web", nil, endpointOf("f1", f1)))
	wf.set(service("web", nil, endpointOf("w1", w1)))
	links := newProxies(t)
	fraAPI := links.get(ff.ln.Addr().String())
	// The edge reaches f1 through its machine's node proxy.
	fraInst := links.get(world(t).machine(t, "fra", "m-f1").addr())
	s := startEdge(t, func(c *Config) {
		c.Identity = edgeIdentity(t, in)
		c.Regions = []Region{ff.Region(fra), wf.Region(was)}
		c.Dial, c.DialRegion = links.dial, links.dial
		c.ProbeInterval, c.ProbeTimeout = 100*time.Millisecond, 500*time.Millisecond
	})
	c := client()
	testutil.Eventually(t, 10*time.Second, "routing to fra", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-1"] == 1 && regionFrom(s, "was").Connected, fmt.Sprint(got)
	})
	// Steady load from 4 clients while the link goes dark.
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
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
				if err == nil && resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	testutil.Eventually(t, 5*time.Second, "load running", func() (bool, string) { return ok.Load() > 20, "" })
	fraAPI.Blackhole()
	fraInst.Blackhole()
	testutil.Eventually(t, 10*time.Second, "fra unreachable, was answering", func() (bool, string) {
		r := regionFrom(s, "fra")
		return r.Unreachable && w1.hits.Load() > 20, fmt.Sprintf("%+v, was hits %d", r, w1.hits.Load())
	})
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed while fra's link was blackholed", failed.Load(), failed.Load()+ok.Load())
	}
	t.Logf("%d requests, none failed; region cuts: %v", ok.Load(), metric(t, s, `meridian_edge_upstream_attempts_total{region="fra",result="region_cut"}`))
	fraAPI.Unblackhole()
	fraInst.Unblackhole()
	testutil.Eventually(t, 15*time.Second, "fra back", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-1"] == 1, fmt.Sprint(got, regionFrom(s, "fra"))
	})
}

// TestMeasuredRTTBeatsCoordinates: Frankfurt is closer on the map but 60
// ms away on the wire (a slow link); Washington answers in well under a
// millisecond: Washington is chosen; when the link is fast again,
// Frankfurt.
func TestMeasuredRTTBeatsCoordinates(t *testing.T) {
	in := world(t).in
	ff, wf := newFeedServer(t, in, "fra"), newFeedServer(t, in, "was")
	f1, w1 := newBackend(t, "fra-1", nil), newBackend(t, "was-1", nil)
	ff.set(service("web", nil, endpointOf("f1", f1)))
	wf.set(service("web", nil, endpointOf("w1", w1)))
	links := newProxies(t)
	slow := links.get(ff.ln.Addr().String())
	slow.SetLatency(30*time.Millisecond, 30*time.Millisecond)
	s := startEdge(t, func(c *Config) {
		c.Identity = edgeIdentity(t, in)
		c.Regions = []Region{ff.Region(fra), wf.Region(was)}
		c.DialRegion = links.dial
		c.ProbeInterval = 50 * time.Millisecond
	})
	c := client()
	testutil.Eventually(t, 15*time.Second, "fra's feed and RTT", func() (bool, string) {
		r := regionFrom(s, "fra")
		return r.Connected && r.RTTMillis > 50, fmt.Sprintf("%+v", r)
	})
	if got := answers(t, c, s.URL(), 10); got["was-1"] != 10 {
		t.Fatalf("answers with fra 60ms away: %v (fra %+v)", got, regionFrom(s, "fra"))
	}
	slow.SetLatency(0, 0)
	testutil.Eventually(t, 15*time.Second, "fra again", func() (bool, string) {
		got := answers(t, c, s.URL(), 1)
		return got["fra-1"] == 1, fmt.Sprint(got, regionFrom(s, "fra"))
	})
}

// TestIdleFeedChangesNothing: a region that keeps sending the same
// services (10 updates a second for 30s, as regions did while nothing
// changed) makes the edge neither build a new routing table nor write
// its snapshot; a real change afterwards does both.
func TestIdleFeedChangesNothing(t *testing.T) {
	testutil.Slow(t)
	t.Parallel()
	s, ff := followFra(t, nil)
	writes := func() float64 { return metric(t, s, `meridian_edge_snapshot_writes_total{result="ok"}`) }
	updates := func() float64 { return metric(t, s, `meridian_edge_feed_updates_total{region="fra"}`) }
	path := filepath.Join(s.cfg.StateDir, SnapshotFile)
	// Settled: fra's feed in the snapshot on disk, and no write for a
	// second since (the start and the first feed each ask for one).
	last, since := -1.0, time.Now()
	testutil.Eventually(t, 20*time.Second, "the snapshot written and the writer idle", func() (bool, string) {
		snap, err := ReadSnapshot(s.cfg.StateDir)
		if err != nil || len(snap.Regions) != 1 || len(snap.Regions[0].Services) != 1 {
			return false, fmt.Sprint(snap, err)
		}
		if n := writes(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) > time.Second, fmt.Sprintf("%v writes, the last %s ago", last, time.Since(since))
	})
	table := s.table.Load()
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	u0 := updates()
	end := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(end) {
		<-tick.C
		ff.resend()
	}
	testutil.Eventually(t, 10*time.Second, "the resent feeds received", func() (bool, string) {
		return updates()-u0 >= 200, fmt.Sprint(updates() - u0)
	})
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := writes(); n != last || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("idle for 30s (%v identical updates): snapshot writes %v -> %v, file %v -> %v", updates()-u0, last, n,
			before.ModTime(), after.ModTime())
	}
	if s.table.Load() != table {
		t.Fatal("identical feed updates built a new routing table")
	}
	// A real change: a new table and a write.
	f2 := newBackend(t, "fra-2", nil)
	ff.set(service("web", nil, endpointOf("f2", f2)))
	testutil.Eventually(t, 10*time.Second, "the change written", func() (bool, string) {
		return writes() > last && s.table.Load() != table, fmt.Sprint(writes())
	})
}
