package region

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
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

// helloPath is the demo app examples/hello, built by TestMain; agents of
// this package's tests run it.
var helloPath string

func TestMain(m *testing.M) {
	if testutil.SlowPackage("starts etcd") {
		return
	}
	os.Exit(testutil.Main(m, map[string]*string{"examples/hello": &helloPath}))
}

// freeMeshNets returns n loopback /16 octets whose DNS address
// (127.o.1.1:53) is free, for agents' meshes.
func freeMeshNets(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	start := 180 + rand.IntN(60)
	for i := 0; i < 70 && len(out) < n; i++ {
		o := 180 + (start-180+i)%70
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.%d.1.1:53", o))
		if err != nil {
			continue
		}
		pc.Close()
		out = append(out, o)
	}
	if len(out) < n {
		t.Fatalf("only %d free mesh nets", len(out))
	}
	return out
}

// startAgent starts a real agent (process driver, mesh, heartbeats, full
// reports every second) as machine name of s's region, and waits until it
// is ready.
func startAgent(t *testing.T, in *pkitest.Installation, s *Server, name, dc string, meshOctet, portBase int) *agent.Agent {
	t.Helper()
	tok, err := s.CreateJoinToken(testutil.Context(t, 10*time.Second), time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.Start(testutil.Context(t, 30*time.Second), agent.Config{
		Region: s.cfg.Region, RegionURLs: []string{s.URL()}, JoinToken: tok.Value, Roots: in.Root.Pool(),
		TrustDomain: pkitest.TrustDomain, Datacenter: dc, Name: name, MilliCPU: 4000, MemoryMB: 4096,
		DataDir: filepath.Join(t.TempDir(), name), PortMin: portBase, PortMax: portBase + 39,
		Logger: testutil.Logger(t).With("test_machine", name), StopTimeout: 2 * time.Second,
		ReportDebounce: 50 * time.Millisecond, FullReportInterval: time.Second,
		Mesh: &agent.MeshConfig{Net: fmt.Sprintf("127.%d.0.0/16", meshOctet)},
	})
	if err != nil {
		t.Fatalf("start agent %s: %v", name, err)
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
		t.Fatalf("agent %s: %v", name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("agent %s not ready within 30s", name)
	}
	return a
}

// feedCounter follows one feed stream and counts its updates (after the
// first feed, which a new subscriber always gets) and keepalives.
type feedCounter struct {
	updates, keepalives atomic.Int64
	err                 atomic.Value
}

func countFeed(ctx context.Context, hc *http.Client, url string) *feedCounter {
	fc := &feedCounter{}
	stream := *hc
	stream.Timeout = 0 // a feed is a stream: ctx ends it, not a whole-request timeout
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := stream.Do(req)
		if err != nil {
			fc.err.Store(err)
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		first := true
		for sc.Scan() {
			switch {
			case sc.Text() == "{}":
				fc.keepalives.Add(1)
			case first:
				first = false
			default:
				fc.updates.Add(1)
			}
		}
		if ctx.Err() == nil {
			fc.err.Store(fmt.Errorf("feed %s ended: %v", url, sc.Err()))
		}
	}()
	return fc
}

// TestIdleRegionsSendNoFeedUpdate runs two peered regions with real agents
// (meshes following their merged feeds, heartbeats, a full report every
// second) and healthy instances, and then leaves them alone for 30s: no
// feed, local or merged, sends an update (only keepalives), and neither
// region writes anything to etcd.
func TestIdleRegionsSendNoFeedUpdate(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	fra := single(t, in, "fra", nil)
	was := single(t, in, "was", nil)
	ctx := testutil.Context(t, 3*time.Minute)
	regions := []*Server{fra, was}
	peerOf := func(s *Server, lat float64) regionapi.Peer {
		return regionapi.Peer{ID: s.cfg.Region, URL: s.URL(), Latitude: lat, Longitude: lat}
	}
	for i, s := range regions {
		gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
		other := regions[1-i]
		if err := gc.SetPeers(ctx, regionapi.Peers{Self: peerOf(s, float64(10*i)), Peers: []regionapi.Peer{peerOf(other, float64(10*(1-i)))}}); err != nil {
			t.Fatal(err)
		}
	}
	nets := freeMeshNets(t, 3)
	portBase := 24000 + rand.IntN(200)*40
	startAgent(t, in, fra, "fra1-a", "fra1", nets[0], portBase)
	startAgent(t, in, fra, "fra1-b", "fra1", nets[1], portBase+40)
	startAgent(t, in, was, "was1-a", "was1", nets[2], portBase+80)
	def := func(region string, count int) api.RegionalDefinition {
		return api.RegionalDefinition{Region: region, Name: "web", Type: "web", Command: []string{helloPath},
			Ports: []api.Port{{Port: 8080, Protocol: "http"}}, Scaling: api.ScalingRange{Min: count, Max: count},
			InstanceType: api.InstanceType{Name: "small", MilliCPU: 250, MemoryMB: 256},
			HealthChecks: []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"}, Interval: "300ms", Timeout: "1s"}}}
	}
	for i, s := range regions {
		gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
		if _, err := gc.Apply(ctx, regionapi.Apply{Generation: 1, Org: "acme", App: "shop", Service: "web", DeploymentID: "dep-1",
			Version: 1, Definition: def(s.cfg.Region, 2-i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Running: every instance healthy in its region's feed, and each
	// region's merged feed carries the other's, connected.
	for i, s := range regions {
		gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
		want := 2 - i
		testutil.Eventually(t, time.Minute, s.cfg.Region+"'s instances healthy and its peer's feed merged", func() (bool, string) {
			f := latestFeed(t, gc, false)
			healthy := 0
			for _, svc := range f.Services {
				for _, ep := range svc.Endpoints {
					if ep.Healthy && ep.MeshPort > 0 {
						healthy++
					}
				}
			}
			peered := len(f.Peers) == 1 && f.Peers[0].Connected && len(f.Peers[0].Services) == 1 && len(f.Peers[0].Services[0].Endpoints) == 1+i
			return healthy == want && peered, fmt.Sprintf("%d healthy, peers %+v", healthy, f.Peers)
		})
	}
	revision := func(s *Server) int64 {
		resp, err := s.cli.Get(ctx, s.keys.peers()) // any read answers the revision
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	// Settled: nothing written for 3s (the last health reports landed).
	var revs [2]int64
	var since time.Time
	testutil.Eventually(t, time.Minute, "the regions settled", func() (bool, string) {
		now := [2]int64{revision(fra), revision(was)}
		if now != revs {
			revs, since = now, time.Now()
		}
		return time.Since(since) > 3*time.Second, fmt.Sprint(now)
	})

	// 30s idle, followed as an edge (local feeds) and as global (merged).
	edgeLeaf, err := in.Root.Issue(pki.LeafRequest{ID: pki.EdgeID(pkitest.TrustDomain, "par"), Usage: pki.UsageClient, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	type stream struct {
		name string
		fc   *feedCounter
	}
	var streams []stream
	for _, s := range regions {
		streams = append(streams,
			stream{s.cfg.Region + " local (edge)", countFeed(watchCtx, in.Client(t, edgeLeaf), s.URL()+"/v1/feed?local=true")},
			stream{s.cfg.Region + " merged (global)", countFeed(watchCtx, in.GlobalClient(t), s.URL()+"/v1/feed?local=false")})
	}
	time.Sleep(30 * time.Second) // the measurement window itself: nothing is awaited
	stop()
	for _, st := range streams {
		if err, _ := st.fc.err.Load().(error); err != nil {
			t.Errorf("%s: %v", st.name, err)
		}
		if n := st.fc.updates.Load(); n != 0 {
			t.Errorf("%s: %d feed updates in 30s idle, want none", st.name, n)
		}
		if n := st.fc.keepalives.Load(); n < 2 {
			t.Errorf("%s: %d keepalives in 30s, want one every 10s", st.name, n)
		}
		t.Logf("%s: %d updates, %d keepalives in 30s", st.name, st.fc.updates.Load(), st.fc.keepalives.Load())
	}
	if now := [2]int64{revision(fra), revision(was)}; now != revs {
		t.Errorf("etcd revisions moved while idle: %v -> %v", revs, now)
	}
	// The machines heartbeated throughout.
	for _, s := range regions {
		ms, err := regionapi.NewClient(s.URL(), in.GlobalClient(t)).Machines(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if !m.Ready {
				t.Errorf("machine %s not ready after the idle window", m.ID)
			}
		}
	}
}
