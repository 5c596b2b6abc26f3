package agent

import (
	"crypto"
	"github.com/meridian-run/meridian/testutil"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
)

// aliveRevision is the create revision of the machine's liveness key (0 if
// absent): it changes only when the lease expired and was granted again.
func (r *testRegion) aliveRevision(t *testing.T, machine string) int64 {
	t.Helper()
	resp, err := r.srv.Client().Get(testutil.Context(t, 5*time.Second), "/meridian/"+r.name+"/alive/"+machine)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].CreateRevision
}

// TestRegionFailover: with two region URLs, losing either one keeps the
// machine alive (its lease never lapses), watched and reporting.
func TestRegionFailover(t *testing.T) {
	testutil.Slow(t)
	r := newRegion(t, "fra")
	pa, pb := newLinkProxy(t, r.srv.Addr()), newLinkProxy(t, r.srv.Addr())
	pa.cut() // the first server is down from the start: join fails over
	r.startAgent(t, "m1", "dc1", func(c *Config) {
		c.RegionURLs = []string{pa.URL(), pb.URL()}
		c.RequestTimeout = time.Second
	})
	key := r.apply(t, "web", 1, "dep-1", helloDef("fra", 1), nil)
	ss := r.waitService(t, key, 30*time.Second, "1 healthy", func(ss regionapi.ServiceStatus) bool { return len(healthyInstances(ss)) == 1 })
	first := healthyInstances(ss)[0].ID
	alive := r.aliveRevision(t, "m1")
	if alive == 0 {
		t.Fatal("machine not alive")
	}

	for i, step := range []struct{ up, down *linkProxy }{{pa, pb}, {pb, pa}} {
		step.up.restore()
		step.down.cut()
		cutAt := time.Now()
		count := 2 + i
		r.apply(t, "web", int64(2+i), "dep-1", helloDef("fra", count), nil)
		ss = r.waitService(t, key, 30*time.Second, "scaled up through the other server", func(ss regionapi.ServiceStatus) bool {
			return len(healthyInstances(ss)) == count
		})
		// Let more than a lease TTL pass with one server cut off.
		testutil.Eventually(t, 10*time.Second, "a lease TTL passed", func() (bool, string) {
			return time.Since(cutAt) > 3*time.Second, ""
		})
		if got := r.aliveRevision(t, "m1"); got != alive {
			t.Fatalf("step %d: the machine's lease lapsed (liveness key revision %d, was %d)", i, got, alive)
		}
		if got := ids(healthyInstances(ss)); !slices.Contains(got, first) {
			t.Fatalf("step %d: first instance replaced: %v", i, got)
		}
	}
}

// TestRenew: the machine certificate is renewed (for a new key) before it
// expires and saved; heartbeats carry on with it and a restarted agent
// loads it.
func TestRenew(t *testing.T) {
	testutil.Slow(t)
	// CAs outlive the machine certificates (24h), which renew 3s after
	// issue.
	r := newRegionWith(t, "fra", installation(t, "fra", 72*time.Hour))
	a := r.startAgent(t, "m1", "dc1", func(c *Config) { c.RenewBefore = 24*time.Hour - 3*time.Second })
	old := a.Certificate()
	var alive int64
	testutil.Eventually(t, 10*time.Second, "machine alive", func() (bool, string) {
		alive = r.aliveRevision(t, "m1")
		return alive != 0, "no liveness key"
	})
	dir := filepath.Join(a.cfg.DataDir, identityDir)
	var saved *pki.Leaf
	testutil.Eventually(t, 15*time.Second, "certificate renewed and saved", func() (bool, string) {
		var err error
		saved, err = pki.LoadLeaf(dir, identityName)
		if err != nil {
			return false, err.Error()
		}
		return !saved.Cert.Equal(old.Cert), "same certificate"
	})
	if saved.Cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(old.Cert.PublicKey) {
		t.Error("renewed certificate certifies the old key")
	}
	if id, _ := saved.ID(); id != pki.MachineID(id.TrustDomain, "fra", "m1") {
		t.Errorf("renewed identity %s", id)
	}
	// Heartbeats go on with the new certificate.
	hbAfter := time.Now()
	testutil.Eventually(t, 10*time.Second, "a lease TTL passed", func() (bool, string) { return time.Since(hbAfter) > 3*time.Second, "" })
	if got := r.aliveRevision(t, "m1"); got != alive {
		t.Fatalf("lease lapsed after renewal (revision %d, was %d)", got, alive)
	}
	a.Close()
	cfg := a.cfg
	cfg.JoinToken = ""
	b := startWith(t, cfg)
	if b.Certificate().Cert.Equal(old.Cert) {
		t.Error("restarted agent loaded the certificate of before the renewal")
	}
}
