package edge

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
)

// TestIdentityReload: an edge certificate re-issued into the edge's PKI
// directory is picked up without a restart; a certificate of another
// identity is refused; only the root issues edge certificates.
func TestIdentityReload(t *testing.T) {
	in := pkitest.New(t, "fra")
	dir := t.TempDir()
	if _, err := IssueIdentity(in.Regions["fra"], dir, "par", "meridian.localhost", time.Now(), time.Hour); err == nil {
		t.Fatal("a region's intermediate issued an edge certificate")
	}
	first, err := IssueIdentity(in.Root, dir, "par", "meridian.localhost", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id.ID() != pki.EdgeID(pkitest.TrustDomain, "par") || id.Leaf().Cert.DNSNames[0] != "*.meridian.localhost" {
		t.Fatalf("identity %s, names %v", id.ID(), id.Leaf().Cert.DNSNames)
	}
	if changed, err := id.Reload(); changed || err != nil {
		t.Fatalf("reload without a change: %v %v", changed, err)
	}
	if _, err := IssueIdentity(in.Root, dir, "par", "meridian.localhost", time.Now(), 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	if changed, err := id.Reload(); !changed || err != nil {
		t.Fatalf("reload after re-issue: %v %v", changed, err)
	}
	if id.Leaf().Cert.SerialNumber.Cmp(first.Cert.SerialNumber) == 0 {
		t.Fatal("still the first certificate")
	}
	if _, err := IssueIdentity(in.Root, dir, "nyc", "meridian.localhost", time.Now(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := id.Reload(); err == nil {
		t.Fatal("a certificate for another location was taken")
	}
	if _, err := LoadIdentity(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing directory loaded")
	}
}

// TestRegionsDropped: a region global no longer lists is no longer
// routed to; its routes go.
func TestRegionsDropped(t *testing.T) {
	s := startEdge(t, nil)
	f1, w1 := newBackend(t, "fra-1", nil), newBackend(t, "was-1", nil)
	seed(t, s, fra, service("web", nil, endpointOf("f1", f1)))
	seed(t, s, was, service("web", nil, endpointOf("w1", w1)))
	if got := answers(t, client(), s.URL(), 3); got["fra-1"] != 3 {
		t.Fatalf("before: %v", got)
	}
	s.mu.Lock()
	var keep []Region
	for _, r := range s.global {
		if r.ID == "was" {
			keep = append(keep, r)
		}
	}
	s.global = keep
	s.mu.Unlock()
	s.setRegions(keep, nil)
	if got := answers(t, client(), s.URL(), 3); got["was-1"] != 3 {
		t.Fatalf("after fra was dropped: %v", got)
	}
	if st := s.Status(); len(st.Regions) != 1 || st.Regions[0].ID != "was" {
		t.Fatalf("regions: %+v", st.Regions)
	}
}
