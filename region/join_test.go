package region

import (
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// longLived is an installation (fra) whose CAs outlive a machine
// certificate by far, so a test can move its clock past one's expiry.
func longLived(t *testing.T) *pkitest.Installation {
	t.Helper()
	now := time.Now()
	root, err := pki.NewRoot(pkitest.TrustDomain, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	fra, err := root.NewIntermediate("fra", now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	global, err := root.Issue(pki.LeafRequest{ID: pki.GlobalID(pkitest.TrustDomain), Usage: pki.UsageClient, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return &pkitest.Installation{Root: root, Regions: map[string]*pki.CA{"fra": fra}, Global: global}
}

// TestJoinCannotTakeOverALiveMachine joins as fra1-a, a live machine
// running an instance with another organization's secret, with a new key
// and a valid join token: refused, the token unspent, the record and the
// machine untouched. The machine itself may join again with its own key
// (keeping its drain); after it renews, only the new key is its own; once
// its certificate expired, the name may be joined anew.
func TestJoinCannotTakeOverALiveMachine(t *testing.T) {
	in := longLived(t)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := single(t, in, "fra", func(c *Config) { c.Now = clock })
	ctx := testutil.Context(t, 2*time.Minute)
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	req := regionapi.JoinRequest{Machine: "fra1-a", Datacenter: "fra1", MilliCPU: 4000, MemoryMB: 4096}

	ownKey, _ := pki.GenerateKey()
	m, err := joinWithKey(t, in, s, req, ownKey)
	if err != nil {
		t.Fatal(err)
	}
	m.heartbeat(t)
	a := testApply("fra", 1, "dep-1", 1)
	a.Org = "victim"
	a.Definition.Env = []api.ResolvedEnv{{Key: "DB_PASSWORD", Secret: "db"}}
	a.Secrets = map[string]string{"db": "victims-secret"}
	if _, err := gc.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "fra1-a runs the victim's instance", func() (bool, string) {
		as := m.assignments(t)
		return len(as) == 1 && as[0].Secrets["db"] == "victims-secret", "not yet"
	})
	record := func() machineRecord {
		t.Helper()
		resp, err := s.cli.Get(ctx, s.keys.machine("fra1-a"))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("machine record: %v, %v", resp, err)
		}
		var r machineRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	keyOf := func(k crypto.Signer) []byte {
		leaf, err := in.Regions["fra"].Issue(pki.LeafRequest{ID: pki.MachineID(pkitest.TrustDomain, "fra", "x"),
			PublicKey: k.Public(), Usage: pki.UsageClient, TTL: time.Hour, Now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(leaf.Cert.RawSubjectPublicKeyInfo)
		return sum[:]
	}
	before := record()
	if string(before.KeySHA256) != string(keyOf(ownKey)) {
		t.Fatal("the machine record does not hold the machine's key")
	}

	// The takeover: a valid token, the live machine's name, another key.
	attacker, _ := pki.GenerateKey()
	tokensBefore := usedTokens(t, s)
	_, err = joinWithKey(t, in, s, req, attacker)
	ae := apiStatus(t, err, 409)
	if !strings.Contains(ae.Message, `machine "fra1-a" has already joined`) || !strings.Contains(ae.Message, "own key") {
		t.Errorf("refusal %q does not say why", ae.Message)
	}
	if used := usedTokens(t, s); used != tokensBefore {
		t.Errorf("the refused join spent its token: %d used, was %d", used, tokensBefore)
	}
	if after := record(); after.JoinedAt != before.JoinedAt || string(after.KeySHA256) != string(before.KeySHA256) {
		t.Errorf("the refused join replaced the record: %+v", after)
	}
	if as := m.assignments(t); len(as) != 1 {
		t.Errorf("fra1-a's assignments after the refused join: %d", len(as))
	}

	// The machine itself joins again with its own key; its drain stays.
	if _, err := gc.Drain(ctx, "fra1-a"); err != nil {
		t.Fatal(err)
	}
	m, err = joinWithKey(t, in, s, req, ownKey)
	if err != nil {
		t.Fatalf("re-join with the machine's own key: %v", err)
	}
	if r := record(); !r.Draining {
		t.Error("re-joining with its own key lifted the machine's drain")
	}
	m.heartbeat(t)

	// It renews for a new key: that one is its own from now on.
	renewed, _ := pki.GenerateKey()
	csr, _ := pki.NewCSR(renewed, pki.MachineID(pkitest.TrustDomain, "fra", "fra1-a"))
	resp, err := m.client.Renew(ctx, regionapi.RenewRequest{CSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pki.NewLeaf([]byte(resp.Certificate), renewed)
	if err != nil {
		t.Fatal(err)
	}
	if r := record(); string(r.KeySHA256) != string(keyOf(renewed)) || !r.CertNotAfter.Equal(leaf.Cert.NotAfter) {
		t.Fatalf("after renewal the record holds key %x valid until %s", r.KeySHA256, r.CertNotAfter)
	}
	apiStatus(t, err2(joinWithKey(t, in, s, req, ownKey)), 409)
	if _, err := joinWithKey(t, in, s, req, renewed); err != nil {
		t.Fatalf("re-join with the renewed key: %v", err)
	}

	// Once its last certificate expired, the name is free for a new key.
	mu.Lock()
	now = record().CertNotAfter.Add(time.Minute)
	mu.Unlock()
	newcomer, _ := pki.GenerateKey()
	if _, err := joinWithKey(t, in, s, req, newcomer); err != nil {
		t.Fatalf("join after the machine's certificate expired: %v", err)
	}
	if r := record(); string(r.KeySHA256) != string(keyOf(newcomer)) || r.Draining {
		t.Errorf("after a join with a new key the record is %+v", r)
	}
}

func err2[T any](_ T, err error) error { return err }

// usedTokens sums the uses of the region's join tokens.
func usedTokens(t *testing.T, s *Server) int {
	t.Helper()
	resp, err := s.cli.Get(testutil.Context(t, 10*time.Second), s.keys.token(""), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		var tok tokenRecord
		if err := json.Unmarshal(kv.Value, &tok); err != nil {
			t.Fatal(err)
		}
		n += tok.Used
	}
	return n
}
