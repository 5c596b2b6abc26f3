// Package pkitest builds a real test installation's trust: a root CA, an
// intermediate per region, and clients holding the global control plane's
// certificate, for tests of regions, agents and the global plane.
package pkitest

import (
	"net/http"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
)

// TrustDomain is the tests' trust domain.
const TrustDomain = "meridian.test"

// Installation is one test installation's CAs.
type Installation struct {
	Root    *pki.CA
	Regions map[string]*pki.CA
	Global  *pki.Leaf
}

// New creates a root and an intermediate for each region.
func New(t testing.TB, regions ...string) *Installation {
	t.Helper()
	now := time.Now()
	root, err := pki.NewRoot(TrustDomain, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	in := &Installation{Root: root, Regions: map[string]*pki.CA{}}
	for _, r := range regions {
		ca, err := root.NewIntermediate(r, now, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		in.Regions[r] = ca
	}
	in.Global, err = root.Issue(pki.LeafRequest{ID: pki.GlobalID(TrustDomain), Usage: pki.UsageClient, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// Client returns an HTTP client presenting leaf that trusts the root and
// accepts only region servers.
func (in *Installation) Client(t testing.TB, leaf *pki.Leaf) *http.Client {
	t.Helper()
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		t.Fatal(err)
	}
	tc := pki.ClientConfig(rl, in.Root.Pool(), pki.AllowKinds(pki.KindServer))
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}, Timeout: 30 * time.Second}
}

// GlobalClient returns an HTTP client with the global control plane's
// certificate.
func (in *Installation) GlobalClient(t testing.TB) *http.Client { return in.Client(t, in.Global) }
