package region

import (
	"context"
	"crypto"
	"github.com/meridian-run/meridian/testutil"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
)

// fastEtcd shortens the embedded member's timeouts for tests.
func fastEtcd(c *embed.Config) {
	c.TickMs = 50
	c.ElectionMs = 500
}

// member describes one embedded etcd member of a test region.
type member struct {
	name, client, peer string
}

func members(t testing.TB, region string, n int) []member {
	ms := make([]member, n)
	for i := range ms {
		ms[i] = member{
			name:   region + "-" + strconv.Itoa(i+1),
			client: "https://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t)),
			peer:   "https://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t)),
		}
	}
	return ms
}

func initialCluster(ms []member) string {
	s := ""
	for i, m := range ms {
		if i > 0 {
			s += ","
		}
		s += m.name + "=" + m.peer
	}
	return s
}

// startRegion starts one server of a region as member m of cluster ms.
func startRegion(t testing.TB, in *pkitest.Installation, region string, ms []member, i int, tweak func(*Config)) *Server {
	t.Helper()
	s, err := startRegionErr(t, in, region, ms, i, tweak)
	if err != nil {
		t.Fatalf("start region %s member %s: %v", region, ms[i].name, err)
	}
	return s
}

// startRegionErr is startRegion returning its error.
func startRegionErr(t testing.TB, in *pkitest.Installation, region string, ms []member, i int, tweak func(*Config)) (*Server, error) {
	t.Helper()
	m := ms[i]
	testutil.NoLeaks(t)
	cfg := Config{
		Region:  region,
		DataDir: filepath.Join(t.TempDir(), m.name),
		Listen:  "127.0.0.1:0",
		CA:      in.Regions[region],
		Etcd: EtcdConfig{Name: m.name, ClientURL: m.client, PeerURL: m.peer,
			InitialCluster: initialCluster(ms)},
		EtcdTuning:       fastEtcd,
		LeaseTTL:         2 * time.Second,
		ScheduleInterval: time.Second,
		Logger:           testutil.Logger(t),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { s.Close() })
	return s, nil
}

// single starts a one-member region, with new ports when one it picked
// was taken meanwhile by another test package.
func single(t testing.TB, in *pkitest.Installation, region string, tweak func(*Config)) *Server {
	for attempt := 0; ; attempt++ {
		s, err := startRegionErr(t, in, region, members(t, region, 1), 0, tweak)
		if err == nil {
			return s
		}
		if !testutil.PortTaken(err) || attempt == 4 {
			t.Fatalf("start region %s: %v", region, err)
		}
	}
}

// startCluster starts n members concurrently (etcd needs a quorum to be
// ready).
func startCluster(t testing.TB, in *pkitest.Installation, region string, n int) []*Server {
	ms := members(t, region, n)
	out := make([]*Server, n)
	var wg sync.WaitGroup
	for i := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = startRegion(t, in, region, ms, i, nil)
		}()
	}
	wg.Wait()
	for _, s := range out {
		if s == nil {
			t.FailNow()
		}
	}
	return out
}

// fakeMachine is a machine that speaks the agent protocol over real mutual
// TLS, driven by the test instead of running processes.
type fakeMachine struct {
	id     string
	client *regionapi.Client
	leaf   *pki.Leaf
}

// joinMachine joins a machine with a fresh one-time token.
func joinMachine(t testing.TB, in *pkitest.Installation, s *Server, id, dc string, millicpu, memoryMB int) *fakeMachine {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	m, err := joinWithKey(t, in, s, regionapi.JoinRequest{Machine: id, Datacenter: dc, MilliCPU: millicpu, MemoryMB: memoryMB}, key)
	if err != nil {
		t.Fatalf("join %s: %v", id, err)
	}
	return m
}

// joinWithKey sends join request req (its machine, data center and
// capacity) with a fresh one-time token and a CSR for key, returning the
// region's refusal as an error.
func joinWithKey(t testing.TB, in *pkitest.Installation, s *Server, req regionapi.JoinRequest, key crypto.Signer) (*fakeMachine, error) {
	t.Helper()
	id := req.Machine
	ctx := testutil.Context(t, time.Minute)
	tok, err := s.CreateJoinToken(ctx, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, pki.MachineID(pkitest.TrustDomain, s.cfg.Region, id))
	if err != nil {
		t.Fatal(err)
	}
	anon := regionapi.NewClient(s.URL(), &http.Client{Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(nil, in.Root.Pool(), pki.AllowKinds(pki.KindServer))}})
	req.Token, req.Address, req.CSR = tok.Value, "127.0.0.1", string(csr)
	resp, err := anon.Join(ctx, req)
	if err != nil {
		return nil, err
	}
	leaf, err := pki.NewLeaf([]byte(resp.Certificate), key)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeMachine{id: id, client: regionapi.NewClient(s.URL(), in.Client(t, leaf)), leaf: leaf}, nil
}

func (m *fakeMachine) heartbeat(t testing.TB) {
	t.Helper()
	if _, err := m.client.Heartbeat(testutil.Context(t, time.Minute), regionapi.Heartbeat{}); err != nil {
		t.Fatalf("heartbeat %s: %v", m.id, err)
	}
}

// keepAlive heartbeats every 300ms until stop is closed.
func (m *fakeMachine) keepAlive(t testing.TB, stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan struct{})
	t.Cleanup(func() { cancel(); <-ended })
	go func() {
		defer close(ended)
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			m.client.Heartbeat(ctx, regionapi.Heartbeat{})
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// assignments reads the machine's current assignment set from the watch
// stream's snapshot.
func (m *fakeMachine) assignments(t testing.TB) []regionapi.Assignment {
	t.Helper()
	ctx, cancel := context.WithCancel(testutil.Context(t, time.Minute))
	defer cancel()
	var out []regionapi.Assignment
	errDone := context.Canceled
	err := m.client.Watch(ctx, 0, func(ev regionapi.WatchEvent) error {
		out = ev.Assignments
		return errDone
	})
	if err != errDone {
		t.Fatalf("watch %s: %v", m.id, err)
	}
	return out
}

// reportHealthy reports every assigned instance as running and healthy.
func (m *fakeMachine) reportHealthy(t testing.TB) {
	t.Helper()
	var rep regionapi.StatusReport
	for _, a := range m.assignments(t) {
		rep.Instances = append(rep.Instances, regionapi.InstanceReport{ID: a.ID, State: regionapi.StateRunning, Healthy: true,
			Ports: map[string]int{"8080": 20000}})
	}
	if err := m.client.Report(testutil.Context(t, time.Minute), rep); err != nil {
		t.Fatal(err)
	}
}

// testApply is an Apply of service acme.web.api with count instances.
func testApply(region string, gen int64, dep string, count int) regionapi.Apply {
	return regionapi.Apply{Generation: gen, Org: "acme", App: "web", Service: "api", DeploymentID: dep, Version: int(gen),
		Definition: api.RegionalDefinition{Region: region, Name: "api", Type: "web", Command: []string{"api"},
			Ports:        []api.Port{{Port: 8080, Protocol: "http"}},
			Scaling:      api.ScalingRange{Min: count, Max: count},
			InstanceType: api.InstanceType{Name: "small", MilliCPU: 1000, MemoryMB: 1024}}}
}
