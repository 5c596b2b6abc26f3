package region

import (
	"context"
	"crypto/tls"
	"errors"
	"github.com/meridian-run/meridian/testutil"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
)

func apiStatus(t testing.TB, err error, status int) *api.Error {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != status {
		t.Fatalf("want API error %d, got %v", status, err)
	}
	return ae
}

func TestApplyIsIdempotentAndRefusesStaleGenerations(t *testing.T) {
	in := pkitest.New(t, "fra")
	s := single(t, in, "fra", nil)
	c := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	ctx := testutil.Context(t, time.Minute)

	res, err := c.Apply(ctx, testApply("fra", 2, "dep-2", 1))
	if err != nil || !res.Applied {
		t.Fatalf("first apply: %+v, %v", res, err)
	}
	res, err = c.Apply(ctx, testApply("fra", 2, "dep-2", 1))
	if err != nil || res.Applied {
		t.Fatalf("same generation again: %+v, %v (want applied=false)", res, err)
	}
	_, err = c.Apply(ctx, testApply("fra", 1, "dep-1", 1))
	apiStatus(t, err, 409)
	_, err = c.Apply(ctx, testApply("fra", 2, "dep-other", 1))
	apiStatus(t, err, 409)
	st, err := c.Status(ctx, "acme.web.api")
	if err != nil || st.Generation != 2 || st.DeploymentID != "dep-2" {
		t.Fatalf("status after stale applies: %+v, %v", st, err)
	}

	bad := testApply("was", 0, "", 1)
	bad.Definition.InstanceType = api.InstanceType{Name: "huge"}
	bad.Definition.Env = []api.ResolvedEnv{{Key: "DB", Secret: "db"}}
	_, err = c.Apply(ctx, bad)
	ae := apiStatus(t, err, 400)
	paths := map[string]bool{}
	for _, f := range ae.Fields {
		paths[f.Path] = true
	}
	for _, p := range []string{"generation", "deployment_id", "definition.region", "definition.instance_type", "secrets"} {
		if !paths[p] {
			t.Errorf("no error for %s in %v", p, ae.Fields)
		}
	}
	// With no machines, the instance is pending with a reason.
	testutil.Eventually(t, 10*time.Second, "pending reason", func() (bool, string) {
		st, err := c.Status(ctx, "acme.web.api")
		if err != nil {
			return false, err.Error()
		}
		return len(st.Pending) == 1 && strings.Contains(st.Pending[0].Reason, "machine"), st.Message
	})
	_, err = c.Status(ctx, "acme.web.nope")
	apiStatus(t, err, 404)
}

func TestRegionServesMutualTLSOnly(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	s := single(t, in, "fra", nil)
	ctx := testutil.Context(t, time.Minute)

	// Plaintext never reaches a handler.
	resp, err := http.Get("http://" + s.Addr() + "/v1/services")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "HTTPS") {
			t.Fatalf("plaintext got %d %s", resp.StatusCode, body)
		}
	}
	// No client certificate: only join is open.
	anon := regionapi.NewClient(s.URL(), &http.Client{Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(nil, in.Root.Pool(), pki.AllowKinds(pki.KindServer))}})
	_, err = anon.Services(ctx)
	apiStatus(t, err, 401)

	// A machine of another region is refused at the handshake.
	was := single(t, in, "was", nil)
	wasMachine := joinMachine(t, in, was, "was1-a", "was1", 2000, 2048)
	wasMachine.client.BaseURL = s.URL()
	_, err = wasMachine.client.Heartbeat(ctx, regionapi.Heartbeat{})
	if err == nil {
		// TLS 1.3 checks the client certificate after the client's side of
		// the handshake; the refusal shows as a TLS alert or a closed pipe.
		t.Fatal("a machine of was was not refused by fra")
	}
	// A certificate claiming fra but issued by was's intermediate is refused.
	forged, err := in.Regions["was"].Issue(pki.LeafRequest{ID: pki.MachineID(pkitest.TrustDomain, "was", "x"), Usage: pki.UsageClient, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = regionapi.NewClient(s.URL(), in.Client(t, forged)).Heartbeat(ctx, regionapi.Heartbeat{})
	if err == nil {
		t.Fatal("was's intermediate admitted by fra")
	}
	// A machine may not call the global plane's routes.
	m := joinMachine(t, in, s, "fra1-a", "fra1", 2000, 2048)
	_, err = m.client.Services(ctx)
	apiStatus(t, err, 403)
	// TLS 1.2 is refused.
	rl, _ := pki.NewReloader(in.Global)
	tc := pki.ClientConfig(rl, in.Root.Pool(), pki.AllowKinds(pki.KindServer))
	tc.MaxVersion = tls.VersionTLS12
	_, err = regionapi.NewClient(s.URL(), &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}).Services(ctx)
	if err == nil {
		t.Fatal("TLS 1.2 accepted")
	}
}

func TestJoinTokens(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	now := time.Now()
	clock := &now
	s := single(t, in, "fra", func(c *Config) { c.Now = func() time.Time { return *clock } })
	was := single(t, in, "was", nil)
	ctx := testutil.Context(t, time.Minute)
	anon := regionapi.NewClient(s.URL(), &http.Client{Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(nil, in.Root.Pool(), pki.AllowKinds(pki.KindServer))}})
	key, _ := pki.GenerateKey()
	csr, _ := pki.NewCSR(key, pki.MachineID(pkitest.TrustDomain, "fra", "m1"))
	join := func(token string) error {
		_, err := anon.Join(ctx, regionapi.JoinRequest{Token: token, Machine: "m1", Datacenter: "fra1", Address: "127.0.0.1",
			MilliCPU: 1000, MemoryMB: 1024, CSR: string(csr)})
		return err
	}
	expiring, _ := s.CreateJoinToken(ctx, time.Minute, 1)
	revoked, _ := s.CreateJoinToken(ctx, time.Hour, 1)
	if err := s.RevokeJoinToken(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	other, _ := was.CreateJoinToken(ctx, time.Hour, 1)
	good, _ := s.CreateJoinToken(ctx, time.Hour, 1)
	parts := strings.Split(good.Value, ".")
	for _, tc := range []struct{ name, token, want string }{
		{"malformed", "nonsense", "malformed"},
		{"another region", other.Value, `for region "was"`},
		{"wrong secret", parts[0] + "." + parts[1] + ".wrong", "unknown join token"},
		{"unknown id", "fra.nope.secret", "unknown join token"},
		{"revoked", revoked.Value, "revoked"},
	} {
		err := join(tc.token)
		ae := apiStatus(t, err, 401)
		if !strings.Contains(ae.Message, tc.want) {
			t.Errorf("%s: message %q lacks %q", tc.name, ae.Message, tc.want)
		}
	}
	*clock = now.Add(2 * time.Minute)
	if ae := apiStatus(t, join(expiring.Value), 401); !strings.Contains(ae.Message, "expired") {
		t.Errorf("expired: %q", ae.Message)
	}
	*clock = now
	// Bad fields are named.
	_, err := anon.Join(ctx, regionapi.JoinRequest{Token: good.Value, Machine: "M!", Datacenter: "", Address: "nowhere", CSR: string(csr)})
	if ae := apiStatus(t, err, 400); len(ae.Fields) < 5 {
		t.Errorf("bad join fields: %+v", ae.Fields)
	}
	// Nothing was registered by the refused joins.
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	ms, err := gc.Machines(ctx)
	if err != nil || len(ms) != 0 {
		t.Fatalf("machines after refused joins: %+v, %v", ms, err)
	}
	if err := join(good.Value); err != nil {
		t.Fatalf("good token: %v", err)
	}
	if ae := apiStatus(t, join(good.Value), 401); !strings.Contains(ae.Message, "already used") {
		t.Errorf("one-time token reused: %q", ae.Message)
	}
	ms, _ = gc.Machines(ctx)
	if len(ms) != 1 || ms[0].ID != "m1" || ms[0].Datacenter != "fra1" {
		t.Fatalf("machines: %+v", ms)
	}
}

// TestSchedulingAndLiveness drives the region through the agent protocol
// over real mTLS: placement spreads across machines, a machine whose lease
// expires has its instance replaced in its data center, and the stale
// instance is stopped when the machine returns.
func TestSchedulingAndLiveness(t *testing.T) {
	in := pkitest.New(t, "fra")
	s := single(t, in, "fra", nil)
	ctx := testutil.Context(t, time.Minute)
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	a := joinMachine(t, in, s, "fra1-a", "fra1", 4000, 4096)
	b := joinMachine(t, in, s, "fra1-b", "fra1", 4000, 4096)
	c := joinMachine(t, in, s, "fra2-a", "fra2", 4000, 4096)
	stopA, stopB, stopC := make(chan struct{}), make(chan struct{}), make(chan struct{})
	a.keepAlive(t, stopA)
	b.keepAlive(t, stopB)
	c.keepAlive(t, stopC)
	defer close(stopB)
	defer close(stopC)

	testutil.Eventually(t, 10*time.Second, "every machine ready", func() (bool, string) {
		ms, err := gc.Machines(ctx)
		ready := 0
		for _, m := range ms {
			if m.Ready {
				ready++
			}
		}
		return err == nil && ready == 3, itoa(ready)
	})
	apply := testApply("fra", 1, "dep-1", 2)
	apply.Definition.Datacenters = []string{"fra1"}
	if _, err := gc.Apply(ctx, apply); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "one instance on each fra1 machine", func() (bool, string) {
		na, nb, nc := len(a.assignments(t)), len(b.assignments(t)), len(c.assignments(t))
		return na == 1 && nb == 1 && nc == 0, strings.Join([]string{itoa(na), itoa(nb), itoa(nc)}, ",")
	})
	a.reportHealthy(t)
	b.reportHealthy(t)
	testutil.Eventually(t, 10*time.Second, "service healthy", func() (bool, string) {
		st, err := gc.Status(ctx, "acme.web.api")
		return err == nil && st.Phase == regionapi.PhaseHealthy && st.Healthy == 2, st.Phase + " " + st.Message
	})
	lost := a.assignments(t)[0].ID

	// Machine a stops heartbeating: after its lease (2s) its instance goes to b.
	close(stopA)
	died := time.Now()
	testutil.Eventually(t, 10*time.Second, "replacement on fra1-b", func() (bool, string) {
		return len(b.assignments(t)) == 2, itoa(len(b.assignments(t)))
	})
	t.Logf("replacement placed %.1fs after the last heartbeat (lease TTL 2s)", time.Since(died).Seconds())
	st, _ := gc.Status(ctx, "acme.web.api")
	foundLost := false
	for _, is := range st.Instances {
		foundLost = foundLost || (is.ID == lost && is.State == "lost")
	}
	if !foundLost {
		t.Fatalf("the lost instance is not shown as lost: %+v", st.Instances)
	}
	if n := len(c.assignments(t)); n != 0 {
		t.Fatalf("fra2 got %d instances though only fra1 is allowed", n)
	}
	// a comes back: it gets nothing to run, and the lost record is removed.
	a.heartbeat(t)
	testutil.Eventually(t, 10*time.Second, "stale instance stopped", func() (bool, string) {
		st, _ := gc.Status(ctx, "acme.web.api")
		for _, is := range st.Instances {
			if is.ID == lost {
				return false, is.State
			}
		}
		return len(a.assignments(t)) == 0, ""
	})

	// Drain b: its instances move to a; the region reports both machines.
	a.keepAlive(t, make(chan struct{}))
	if _, err := gc.Drain(ctx, "fra1-b"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "replacements on fra1-a", func() (bool, string) {
		return len(a.assignments(t)) == 2, itoa(len(a.assignments(t)))
	})
	a.reportHealthy(t)
	testutil.Eventually(t, 10*time.Second, "drained machine empty", func() (bool, string) {
		return len(b.assignments(t)) == 0, itoa(len(b.assignments(t)))
	})
	dcs, err := gc.Datacenters(ctx)
	if err != nil || len(dcs) != 2 || dcs[0].ID != "fra1" || dcs[0].Machines != 2 || dcs[0].UsedMilliCPU != 2000 {
		t.Fatalf("datacenters: %+v, %v", dcs, err)
	}

	// Deleting the service stops everything.
	if err := gc.DeleteService(ctx, "acme.web.api", 2); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "service deleted", func() (bool, string) {
		st, err := gc.Status(ctx, "acme.web.api")
		return err == nil && st.Phase == regionapi.PhaseDeleted, st.Phase
	})
	if err := gc.DeleteService(ctx, "acme.web.api", 1); err == nil {
		t.Fatal("a stale delete was accepted")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestThreeServerRegionSurvivesLeaderLoss kills the leader of a
// three-member region: a new leader takes over, acknowledged writes are
// still there, and placement continues.
func TestThreeServerRegionSurvivesLeaderLoss(t *testing.T) {
	in := pkitest.New(t, "fra")
	servers := startCluster(t, in, "fra", 3)
	ctx := testutil.Context(t, time.Minute)
	var leader *Server
	testutil.Eventually(t, 15*time.Second, "a leader", func() (bool, string) {
		n := 0
		for _, s := range servers {
			if s.IsLeader() {
				leader, n = s, n+1
			}
		}
		return n == 1, itoa(n)
	})
	var follower *Server
	for _, s := range servers {
		if s != leader {
			follower = s
		}
	}
	m := joinMachine(t, in, follower, "fra1-a", "fra1", 8000, 8192)
	stop := make(chan struct{})
	defer close(stop)
	m.keepAlive(t, stop)
	gc := regionapi.NewClient(follower.URL(), in.GlobalClient(t))
	if _, err := gc.Apply(ctx, testApply("fra", 1, "dep-1", 1)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "placed before failover", func() (bool, string) { return len(m.assignments(t)) == 1, "" })

	leader.Close()
	testutil.Eventually(t, 20*time.Second, "a new leader", func() (bool, string) {
		for _, s := range servers {
			if s != leader && s.IsLeader() {
				return true, ""
			}
		}
		return false, "none"
	})
	st, err := gc.Status(ctx, "acme.web.api")
	if err != nil || st.Generation != 1 || len(st.Instances) != 1 {
		t.Fatalf("acknowledged state after failover: %+v, %v", st, err)
	}
	if _, err := gc.Apply(ctx, testApply("fra", 2, "dep-2", 3)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "placement continues under the new leader", func() (bool, string) {
		n := len(m.assignments(t))
		return n >= 3, itoa(n)
	})
	_ = context.Background
}

// TestFailedInstancesAreRemembered: an instance reported failed past its
// restart limit is replaced, and the service's status keeps it under
// Failures (with its reason) until the next apply.
func TestFailedInstancesAreRemembered(t *testing.T) {
	in := pkitest.New(t, "fra")
	s := single(t, in, "fra", nil)
	ctx := testutil.Context(t, time.Minute)
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	a := joinMachine(t, in, s, "fra1-a", "fra1", 4000, 4096)
	b := joinMachine(t, in, s, "fra1-b", "fra1", 4000, 4096)
	stop := make(chan struct{})
	defer close(stop)
	a.keepAlive(t, stop)
	b.keepAlive(t, stop)
	if _, err := gc.Apply(ctx, testApply("fra", 1, "dep-1", 1)); err != nil {
		t.Fatal(err)
	}
	var m *fakeMachine
	testutil.Eventually(t, 10*time.Second, "placed", func() (bool, string) {
		switch {
		case len(a.assignments(t)) == 1:
			m = a
		case len(b.assignments(t)) == 1:
			m = b
		}
		return m != nil, ""
	})
	id := m.assignments(t)[0].ID
	if err := m.client.Report(ctx, regionapi.StatusReport{Instances: []regionapi.InstanceReport{{ID: id,
		State: regionapi.StateFailed, Restarts: 3, Message: "health check http :8080/healthz: status 500"}}}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "failure remembered after the replacement", func() (bool, string) {
		st, err := gc.Status(ctx, "acme.web.api")
		if err != nil {
			return false, err.Error()
		}
		for _, i := range st.Instances {
			if i.ID == id {
				return false, "failed instance still listed"
			}
		}
		return len(st.Failures) == 1 && st.Failures[0].ID == id && st.Failures[0].State == regionapi.StateFailed &&
			strings.Contains(st.Failures[0].Message, "status 500") && len(st.Instances) == 1, st.Message
	})
	if _, err := gc.Apply(ctx, testApply("fra", 2, "dep-2", 1)); err != nil {
		t.Fatal(err)
	}
	st, err := gc.Status(ctx, "acme.web.api")
	if err != nil || len(st.Failures) != 0 {
		t.Fatalf("failures after a new apply: %+v, %v", st.Failures, err)
	}
}

// TestSecretsAreSealedInEtcd: secret values sent with an apply are stored
// sealed, and reach the machine that runs the instance in the clear.
func TestSecretsAreSealedInEtcd(t *testing.T) {
	in := pkitest.New(t, "fra")
	s := single(t, in, "fra", nil)
	ctx := testutil.Context(t, time.Minute)
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	m := joinMachine(t, in, s, "fra1-a", "fra1", 4000, 4096)
	m.heartbeat(t)
	a := testApply("fra", 1, "dep-1", 1)
	a.Definition.Env = []api.ResolvedEnv{{Key: "DB_PASSWORD", Secret: "db"}}
	a.Secrets = map[string]string{"db": "hunter2-plaintext"}
	if _, err := gc.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}
	resp, err := s.cli.Get(ctx, s.keys.spec("dep-1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("spec record: %v %v", resp, err)
	}
	if strings.Contains(string(resp.Kvs[0].Value), "hunter2") {
		t.Fatal("a secret value is stored in etcd in the clear")
	}
	testutil.Eventually(t, 10*time.Second, "the machine gets the secret", func() (bool, string) {
		as := m.assignments(t)
		return len(as) == 1 && as[0].Secrets["db"] == "hunter2-plaintext", "not yet"
	})
}

// TestUnusedSpecsAreCollected: the spec of a deployment that no service
// wants and no instance runs is deleted; the current one stays.
func TestUnusedSpecsAreCollected(t *testing.T) {
	in := pkitest.New(t, "fra")
	s := single(t, in, "fra", func(c *Config) { c.GCInterval = 100 * time.Millisecond })
	ctx := testutil.Context(t, time.Minute)
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	for i, dep := range []string{"dep-1", "dep-2"} {
		if _, err := gc.Apply(ctx, testApply("fra", int64(i+1), dep, 0)); err != nil {
			t.Fatal(err)
		}
	}
	count := func(dep string) int {
		resp, err := s.cli.Get(ctx, s.keys.spec(dep))
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Kvs)
	}
	testutil.Eventually(t, 10*time.Second, "dep-1's spec collected", func() (bool, string) { return count("dep-1") == 0, "still there" })
	if count("dep-2") != 1 {
		t.Fatal("the current deployment's spec was collected")
	}
}
