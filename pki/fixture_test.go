package pki_test

import (
	"net"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
)

const td = "meridian.local"

// fixture is an installation with two regions, created at real time now
// (TLS handshakes check validity against the wall clock unless a test
// sets tls.Config.Time).
type fixture struct {
	now            time.Time
	root, fra, was *pki.CA
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	now := time.Now()
	root, err := pki.NewRoot(td, now.Add(-24*time.Hour), 10*365*24*time.Hour)
	if err != nil {
		t.Fatalf("NewRoot: %v", err)
	}
	f := &fixture{now: now, root: root}
	f.fra = f.intermediate(t, "fra")
	f.was = f.intermediate(t, "was")
	return f
}

func (f *fixture) intermediate(t testing.TB, region string) *pki.CA {
	t.Helper()
	ca, err := f.root.NewIntermediate(region, f.now.Add(-12*time.Hour), 365*24*time.Hour)
	if err != nil {
		t.Fatalf("NewIntermediate(%s): %v", region, err)
	}
	return ca
}

// issue issues a one-hour leaf valid now.
func (f *fixture) issue(t testing.TB, ca *pki.CA, id pki.ID, usage pki.Usage) *pki.Leaf {
	t.Helper()
	req := pki.LeafRequest{ID: id, Usage: usage, TTL: time.Hour, Now: f.now}
	if usage&pki.UsageServer != 0 {
		req.DNSNames = []string{"localhost"}
		req.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	l, err := ca.Issue(req)
	if err != nil {
		t.Fatalf("Issue(%s): %v", id, err)
	}
	return l
}

func reloader(t testing.TB, l *pki.Leaf) *pki.Reloader {
	t.Helper()
	r, err := pki.NewReloader(l)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	return r
}
