// Package pkitest builds a real test installation's trust: a root CA, an
// intermediate per region, and clients holding the global control plane's
// certificate, for tests of regions, agents and the global plane.
package pkitest

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/url"
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

// Forge signs a leaf for id with ca's key as an attacker holding that key
// would, bypassing the issuing policy that pki.CA.Issue enforces: e.g.
// another region's server ID, or a global ID, from a region's
// intermediate. The leaf chains to the installation root, is valid for
// an hour, carries 127.0.0.1 and localhost for servers, and presents
// ca's chain.
func Forge(t testing.TB, ca *pki.CA, id pki.ID, usage pki.Usage) *pki.Leaf {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	var eku []x509.ExtKeyUsage
	if usage&pki.UsageServer != 0 {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	if usage&pki.UsageClient != 0 {
		eku = append(eku, x509.ExtKeyUsageClientAuth)
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      pkix.Name{CommonName: "forged " + id.Kind.String()},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
		URIs:         []*url.URL{id.URI()},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("forge %s with %q: %v", id, ca.Cert.Subject.CommonName, err)
	}
	leaf, err := pki.NewLeaf(pki.EncodeCertsPEM(append([][]byte{der}, ca.Chain...)...), key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(ca.Pool(), now); err != nil {
		t.Fatalf("forged %s should chain to the root: %v", id, err)
	}
	return leaf
}
