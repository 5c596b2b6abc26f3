package pki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
)

func TestHierarchy(t *testing.T) {
	f := newFixture(t)
	if !f.root.IsRoot() || f.root.Root != f.root.Cert || len(f.root.Chain) != 0 {
		t.Fatalf("root CA: IsRoot=%v chain=%d", f.root.IsRoot(), len(f.root.Chain))
	}
	rc := f.root.Cert
	if !rc.IsCA || rc.MaxPathLen != 1 || rc.CheckSignatureFrom(rc) != nil {
		t.Fatalf("root: IsCA=%v MaxPathLen=%d", rc.IsCA, rc.MaxPathLen)
	}
	if _, ok := rc.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("root key is %T, want ECDSA", rc.PublicKey)
	}
	ic := f.fra.Cert
	if f.fra.Region != "fra" || f.fra.TrustDomain != td || f.fra.IsRoot() {
		t.Fatalf("fra CA: region=%q td=%q", f.fra.Region, f.fra.TrustDomain)
	}
	if !ic.IsCA || ic.MaxPathLen != 0 || !ic.MaxPathLenZero {
		t.Fatalf("intermediate: IsCA=%v MaxPathLen=%d zero=%v", ic.IsCA, ic.MaxPathLen, ic.MaxPathLenZero)
	}
	for _, c := range []*x509.Certificate{rc, ic} {
		if len(c.PermittedURIDomains) != 1 || c.PermittedURIDomains[0] != td {
			t.Fatalf("%s: PermittedURIDomains = %v, want [%s]", c.Subject.CommonName, c.PermittedURIDomains, td)
		}
	}
	if err := ic.CheckSignatureFrom(rc); err != nil {
		t.Fatalf("intermediate not signed by root: %v", err)
	}

	id := pki.MachineID(td, "fra", "m1")
	leaf := f.issue(t, f.fra, id, pki.UsageClient)
	if len(leaf.Chain) != 2 || !bytes.Equal(leaf.Chain[1], ic.Raw) {
		t.Fatalf("leaf chain: %d certs, want leaf + fra intermediate", len(leaf.Chain))
	}
	if got, err := leaf.ID(); err != nil || got != id {
		t.Fatalf("leaf ID = %v, %v; want %v", got, err, id)
	}
	if leaf.Cert.IsCA || leaf.Cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("leaf: IsCA=%v KeyUsage=%v", leaf.Cert.IsCA, leaf.Cert.KeyUsage)
	}
	if len(leaf.Cert.ExtKeyUsage) != 1 || leaf.Cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("client leaf ExtKeyUsage = %v", leaf.Cert.ExtKeyUsage)
	}
	chains, err := leaf.Verify(f.root.Pool(), f.now)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(chains) != 1 || len(chains[0]) != 3 || !chains[0][1].Equal(ic) || !chains[0][2].Equal(rc) {
		t.Fatalf("verified chain does not go leaf -> fra -> root")
	}
	if _, err := leaf.Verify(f.root.Pool(), leaf.Cert.NotAfter.Add(time.Second)); err == nil {
		t.Fatal("Verify after NotAfter succeeded")
	}
	// A different installation's root does not verify it.
	other, err := pki.NewRoot(td, f.now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(other.Pool(), f.now); err == nil {
		t.Fatal("Verify against another installation's root succeeded")
	}

	srv := f.issue(t, f.fra, pki.ServerID(td, "fra"), pki.UsageBoth)
	if len(srv.Cert.ExtKeyUsage) != 2 || srv.Cert.DNSNames[0] != "localhost" || !srv.Cert.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("server leaf: EKU=%v DNS=%v IPs=%v", srv.Cert.ExtKeyUsage, srv.Cert.DNSNames, srv.Cert.IPAddresses)
	}
	if !srv.Cert.NotBefore.Equal(f.now.Add(-pki.Backdate).Truncate(time.Second)) {
		t.Fatalf("NotBefore = %v, want now - %v", srv.Cert.NotBefore, pki.Backdate)
	}

	// Root-issued identities chain directly to the root.
	g := f.issue(t, f.root, pki.GlobalID(td), pki.UsageClient)
	if len(g.Chain) != 1 {
		t.Fatalf("global leaf chain has %d certs, want 1", len(g.Chain))
	}
	if _, err := g.Verify(f.root.Pool(), f.now); err != nil {
		t.Fatalf("verify global leaf: %v", err)
	}
}

func TestIssueRejects(t *testing.T) {
	f := newFixture(t)
	ok := func(id pki.ID) pki.LeafRequest {
		return pki.LeafRequest{ID: id, Usage: pki.UsageBoth, TTL: time.Hour, Now: f.now}
	}
	m := pki.MachineID(td, "fra", "m1")
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		ca      *pki.CA
		req     pki.LeafRequest
		wantErr string
	}{
		{"root issues machine", f.root, ok(m), "issued by the region's intermediate CA, not the root"},
		{"root issues workload", f.root, ok(pki.WorkloadID(td, "o", "a", "s")), "not the root"},
		{"fra issues was machine", f.fra, ok(pki.MachineID(td, "was", "m1")), `region "was" does not match this intermediate's region "fra"`},
		{"fra issues was server", f.fra, ok(pki.ServerID(td, "was")), `region "was" does not match`},
		{"fra issues global", f.fra, ok(pki.GlobalID(td)), "issued by the root CA"},
		{"fra issues edge", f.fra, ok(pki.EdgeID(td, "par")), "issued by the root CA"},
		{"other trust domain", f.fra, ok(pki.MachineID("evil.example", "fra", "m1")), `trust domain "evil.example" is not this CA's`},
		{"invalid ID", f.fra, ok(pki.MachineID(td, "fra", "")), "LeafRequest.ID: spiffe ID: machine: must not be empty"},
		{"no usage", f.fra, func() pki.LeafRequest { r := ok(m); r.Usage = 0; return r }(), "LeafRequest.Usage"},
		{"bad usage", f.fra, func() pki.LeafRequest { r := ok(m); r.Usage = 8; return r }(), "LeafRequest.Usage"},
		{"no now", f.fra, func() pki.LeafRequest { r := ok(m); r.Now = time.Time{}; return r }(), "LeafRequest.Now: must be set"},
		{"no ttl", f.fra, func() pki.LeafRequest { r := ok(m); r.TTL = 0; return r }(), "LeafRequest.TTL: must be positive"},
		{"bad dns", f.fra, func() pki.LeafRequest { r := ok(m); r.DNSNames = []string{"ok", "a b"}; return r }(), "LeafRequest.DNSNames[1]"},
		{"bad ip", f.fra, func() pki.LeafRequest { r := ok(m); r.IPs = []net.IP{{1, 2, 3}}; return r }(), "LeafRequest.IPs[0]"},
		{"p384 key", f.fra, func() pki.LeafRequest { r := ok(m); r.PublicKey = p384.Public(); return r }(), "LeafRequest.PublicKey: public key: want ECDSA P-256"},
		{"before CA validity", f.fra, func() pki.LeafRequest { r := ok(m); r.Now = f.now.Add(-48 * time.Hour); return r }(), "CA certificate not valid until"},
		{"after CA validity", f.fra, func() pki.LeafRequest { r := ok(m); r.Now = f.now.Add(400 * 24 * time.Hour); return r }(), "CA certificate expired at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := tt.ca.Issue(tt.req)
			if err == nil {
				t.Fatalf("Issue succeeded (%s), want error", l.Cert.URIs[0])
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Issue error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}

	if _, err := f.fra.NewIntermediate("sub", f.now, time.Hour); err == nil || !strings.Contains(err.Error(), "only the root CA signs intermediates") {
		t.Fatalf("intermediate signing an intermediate: err = %v", err)
	}
	if _, err := f.root.NewIntermediate("a/b", f.now, time.Hour); err == nil || !strings.Contains(err.Error(), "region:") {
		t.Fatalf("bad region: err = %v", err)
	}
	if _, err := pki.NewRoot("Bad Domain", f.now, time.Hour); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("bad trust domain: err = %v", err)
	}
	if _, err := pki.NewRoot(td, time.Time{}, time.Hour); err == nil || !strings.Contains(err.Error(), "now: must be set") {
		t.Fatalf("zero now: err = %v", err)
	}
	if _, err := pki.NewRoot(td, f.now, -time.Hour); err == nil || !strings.Contains(err.Error(), "ttl: must be positive") {
		t.Fatalf("negative ttl: err = %v", err)
	}
}

func TestLifetimeClampedToCA(t *testing.T) {
	f := newFixture(t)
	l, err := f.fra.Issue(pki.LeafRequest{ID: pki.MachineID(td, "fra", "m1"), Usage: pki.UsageClient, TTL: 10 * 365 * 24 * time.Hour, Now: f.now})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Cert.NotAfter.Equal(f.fra.Cert.NotAfter) {
		t.Fatalf("leaf NotAfter %v, want clamped to intermediate's %v", l.Cert.NotAfter, f.fra.Cert.NotAfter)
	}
	inter, err := f.root.NewIntermediate("sin", f.now, 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !inter.Cert.NotAfter.Equal(f.root.Cert.NotAfter) {
		t.Fatalf("intermediate NotAfter %v, want clamped to root's %v", inter.Cert.NotAfter, f.root.Cert.NotAfter)
	}
}

// forge signs a certificate with a CA's key directly, bypassing Issue's
// policy, to check what verification itself enforces.
func forge(t *testing.T, tmpl *x509.Certificate, parent *x509.Certificate, parentKey any) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	signer := key
	if parentKey != nil {
		signer = parentKey.(*ecdsa.PrivateKey)
	}
	if parent == nil {
		parent = tmpl
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func TestNameConstraintsAndPathLength(t *testing.T) {
	f := newFixture(t)
	leafTmpl := func(uri string) *x509.Certificate {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		return &x509.Certificate{
			Subject:     pkix.Name{CommonName: "forged"},
			NotBefore:   f.now.Add(-time.Minute),
			NotAfter:    f.now.Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			URIs:        []*url.URL{u},
		}
	}
	verify := func(leaf *x509.Certificate, inters ...*x509.Certificate) error {
		p := x509.NewCertPool()
		for _, c := range inters {
			p.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: f.root.Pool(), Intermediates: p, CurrentTime: f.now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}

	// The control: a forged leaf inside the trust domain verifies.
	good, _ := forge(t, leafTmpl("spiffe://meridian.local/region/fra/machine/x"), f.fra.Cert, f.fra.Key)
	if err := verify(good, f.fra.Cert); err != nil {
		t.Fatalf("control leaf: %v", err)
	}
	// Outside the trust domain: the name constraints refuse it even
	// though the intermediate's key signed it.
	evil, _ := forge(t, leafTmpl("spiffe://evil.example/global"), f.fra.Cert, f.fra.Key)
	err := verify(evil, f.fra.Cert)
	if err == nil || !strings.Contains(err.Error(), "constraint") {
		t.Fatalf("leaf outside trust domain: err = %v, want a name-constraint error", err)
	}
	// A sub-CA under the intermediate: path length 0 refuses the chain.
	sub, subKey := forge(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "rogue sub-CA"},
		NotBefore:             f.now.Add(-time.Minute),
		NotAfter:              f.now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, f.fra.Cert, f.fra.Key)
	under, _ := forge(t, leafTmpl("spiffe://meridian.local/region/fra/machine/y"), sub, subKey)
	if err := verify(under, sub, f.fra.Cert); err == nil {
		t.Fatal("leaf under a sub-CA of the intermediate verified; path length not enforced")
	}
}

func TestCSRFlowIgnoresClaims(t *testing.T) {
	f := newFixture(t)
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	// The agent claims to be the global control plane, with extra names.
	claimed, err := url.Parse("spiffe://meridian.local/global")
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "global", Organization: []string{"evil"}},
		URIs:        []*url.URL{claimed},
		DNSNames:    []string{"evil.example"},
		IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})

	want := pki.MachineID(td, "fra", "m7")
	issued, err := f.fra.IssueFromCSR(csrPEM, pki.LeafRequest{ID: want, Usage: pki.UsageClient, TTL: time.Hour, Now: f.now})
	if err != nil {
		t.Fatalf("IssueFromCSR: %v", err)
	}
	if issued.Key != nil {
		t.Fatal("leaf issued from a CSR carries a key")
	}
	if got, err := issued.ID(); err != nil || got != want {
		t.Fatalf("issued ID = %v, %v; want the CA-chosen %v", got, err, want)
	}
	c := issued.Cert
	if len(c.URIs) != 1 || len(c.DNSNames) != 0 || len(c.IPAddresses) != 0 || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "Meridian" {
		t.Fatalf("CSR claims leaked into the certificate: URIs=%v DNS=%v IPs=%v Subject=%v", c.URIs, c.DNSNames, c.IPAddresses, c.Subject)
	}
	if !key.PublicKey.Equal(c.PublicKey) {
		t.Fatal("certificate does not certify the CSR's key")
	}
	if _, err := issued.TLSCertificate(); err == nil {
		t.Fatal("TLSCertificate without a key succeeded")
	}

	// The agent assembles its leaf from the returned chain and its key.
	leaf, err := pki.NewLeaf(issued.ChainPEM(), key)
	if err != nil {
		t.Fatalf("NewLeaf: %v", err)
	}
	if _, err := leaf.TLSCertificate(); err != nil {
		t.Fatalf("TLSCertificate: %v", err)
	}
	if _, err := leaf.Verify(f.root.Pool(), f.now); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	other, _ := pki.GenerateKey()
	if _, err := pki.NewLeaf(issued.ChainPEM(), other); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("NewLeaf with the wrong key: err = %v", err)
	}

	// NewCSR produces an acceptable CSR; its claim is ignored too.
	own, err := pki.NewCSR(key, pki.WorkloadID(td, "evil", "a", "s"))
	if err != nil {
		t.Fatal(err)
	}
	l2, err := f.fra.IssueFromCSR(own, pki.LeafRequest{ID: want, Usage: pki.UsageClient, TTL: time.Hour, Now: f.now})
	if err != nil {
		t.Fatalf("IssueFromCSR(NewCSR): %v", err)
	}
	if got, _ := l2.ID(); got != want {
		t.Fatalf("issued ID %v, want %v", got, want)
	}

	// Bad CSRs.
	tampered := bytes.Clone(der)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p384)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		pem     []byte
		req     pki.LeafRequest
		wantErr string
	}{
		"tampered":     {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), pki.LeafRequest{ID: want, Usage: pki.UsageClient, TTL: time.Hour, Now: f.now}, "CSR"},
		"not pem":      {[]byte("hello"), pki.LeafRequest{ID: want, Usage: pki.UsageClient, TTL: time.Hour, Now: f.now}, "CSR PEM: not PEM"},
		"wrong type":   {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pki.LeafRequest{ID: want, Usage: pki.UsageClient, TTL: time.Hour, Now: f.now}, `type "CERTIFICATE"`},
		"p384":         {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der384}), pki.LeafRequest{ID: want, Usage: pki.UsageClient, TTL: time.Hour, Now: f.now}, "want ECDSA P-256"},
		"public key":   {csrPEM, pki.LeafRequest{ID: want, Usage: pki.UsageClient, TTL: time.Hour, Now: f.now, PublicKey: key.Public()}, "LeafRequest.PublicKey: must be nil"},
		"other region": {csrPEM, pki.LeafRequest{ID: pki.MachineID(td, "was", "m7"), Usage: pki.UsageClient, TTL: time.Hour, Now: f.now}, "does not match this intermediate's region"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.fra.IssueFromCSR(tc.pem, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("IssueFromCSR: err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestSaveLoadRoundTrip(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	rootDir, fraDir := filepath.Join(dir, "root"), filepath.Join(dir, "fra")
	if err := pki.SaveCA(rootDir, f.root); err != nil {
		t.Fatalf("SaveCA(root): %v", err)
	}
	if err := pki.SaveCA(fraDir, f.fra); err != nil {
		t.Fatalf("SaveCA(fra): %v", err)
	}
	for _, d := range []string{rootDir, fraDir} {
		if m := fileMode(t, filepath.Join(d, pki.CAKeyFile)); m != 0o600 {
			t.Fatalf("%s key mode %v, want 0600", d, m)
		}
		if m := fileMode(t, d); m != 0o700 {
			t.Fatalf("%s mode %v, want 0700", d, m)
		}
	}
	root, err := pki.LoadCA(rootDir)
	if err != nil {
		t.Fatalf("LoadCA(root): %v", err)
	}
	if !root.IsRoot() || root.TrustDomain != td || !root.Cert.Equal(f.root.Cert) || len(root.Chain) != 0 {
		t.Fatalf("loaded root: region=%q td=%q", root.Region, root.TrustDomain)
	}
	fra, err := pki.LoadCA(fraDir)
	if err != nil {
		t.Fatalf("LoadCA(fra): %v", err)
	}
	if fra.Region != "fra" || fra.TrustDomain != td || !fra.Cert.Equal(f.fra.Cert) || !fra.Root.Equal(f.root.Cert) || len(fra.Chain) != 1 {
		t.Fatalf("loaded fra: region=%q td=%q chain=%d", fra.Region, fra.TrustDomain, len(fra.Chain))
	}
	// The loaded CAs work: issue from them and verify against the original root.
	leaf := f.issue(t, fra, pki.MachineID(td, "fra", "m1"), pki.UsageBoth)
	if _, err := leaf.Verify(f.root.Pool(), f.now); err != nil {
		t.Fatalf("leaf from loaded CA: %v", err)
	}
	if _, err := root.NewIntermediate("sin", f.now, time.Hour); err != nil {
		t.Fatalf("intermediate from loaded root: %v", err)
	}

	// Leaves.
	leafDir := filepath.Join(dir, "agent")
	if err := pki.SaveLeaf(leafDir, "machine", leaf); err != nil {
		t.Fatalf("SaveLeaf: %v", err)
	}
	if m := fileMode(t, filepath.Join(leafDir, "machine-key.pem")); m != 0o600 {
		t.Fatalf("leaf key mode %v, want 0600", m)
	}
	got, err := pki.LoadLeaf(leafDir, "machine")
	if err != nil {
		t.Fatalf("LoadLeaf: %v", err)
	}
	if !got.Cert.Equal(leaf.Cert) || len(got.Chain) != 2 || !bytes.Equal(got.Chain[1], leaf.Chain[1]) {
		t.Fatal("loaded leaf differs")
	}
	if _, err := got.TLSCertificate(); err != nil {
		t.Fatalf("loaded leaf TLSCertificate: %v", err)
	}
	if err := pki.SaveRoots(filepath.Join(dir, "roots.pem"), f.root.Cert); err != nil {
		t.Fatal(err)
	}
	pool, err := pki.LoadRoots(filepath.Join(dir, "roots.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := got.Verify(pool, f.now); err != nil {
		t.Fatalf("verify against loaded roots: %v", err)
	}

	// Mismatches and damage are reported.
	other := f.issue(t, f.fra, pki.MachineID(td, "fra", "m2"), pki.UsageBoth)
	if err := pki.SaveLeaf(leafDir, "other", other); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(leafDir, "other-key.pem"), filepath.Join(leafDir, "machine-key.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadLeaf(leafDir, "machine"); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("LoadLeaf with a foreign key: err = %v", err)
	}
	if err := pki.SaveLeaf(leafDir, "../escape", leaf); err == nil || !strings.Contains(err.Error(), "leaf name") {
		t.Fatalf("SaveLeaf(../escape): err = %v", err)
	}
	if _, err := pki.LoadLeaf(leafDir, "missing"); err == nil || !strings.Contains(err.Error(), `load leaf "missing"`) {
		t.Fatalf("LoadLeaf(missing): err = %v", err)
	}
	if err := os.WriteFile(filepath.Join(fraDir, pki.RootFile), pki.EncodeCertsPEM(f.was.Cert.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(fraDir); err == nil || !strings.Contains(err.Error(), pki.RootFile) {
		t.Fatalf("LoadCA with a wrong root file: err = %v", err)
	}
	otherRoot, err := pki.NewRoot(td, f.now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fraDir, pki.RootFile), pki.EncodeCertsPEM(otherRoot.Cert.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(fraDir); err == nil || !strings.Contains(err.Error(), "is not signed by") {
		t.Fatalf("LoadCA with another installation's root: err = %v", err)
	}
	if err := os.WriteFile(filepath.Join(rootDir, pki.CAKeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(rootDir); err == nil || !strings.Contains(err.Error(), pki.CAKeyFile) {
		t.Fatalf("LoadCA with a junk key: err = %v", err)
	}
	if _, err := pki.LoadCA(filepath.Join(dir, "nope")); err == nil {
		t.Fatal("LoadCA of a missing directory succeeded")
	}
}

func TestPEMHelpers(t *testing.T) {
	f := newFixture(t)
	both := pki.EncodeCertsPEM(f.fra.Cert.Raw, f.root.Cert.Raw)
	certs, err := pki.ParseCertsPEM(both)
	if err != nil || len(certs) != 2 || !certs[1].Equal(f.root.Cert) {
		t.Fatalf("ParseCertsPEM = %d certs, %v", len(certs), err)
	}
	keyPEM, err := pki.EncodeKeyPEM(f.fra.Key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := pki.ParseKeyPEM(keyPEM)
	if err != nil || !k.Public().(*ecdsa.PublicKey).Equal(f.fra.Key.Public()) {
		t.Fatalf("ParseKeyPEM: %v", err)
	}
	for name, tc := range map[string]struct {
		in      []byte
		wantErr string
	}{
		"empty":    {nil, "no certificate found"},
		"garbage":  {[]byte("garbage"), "block 1: not PEM"},
		"trailing": {append(bytes.Clone(both), "x"...), "block 3: not PEM"},
		"key":      {keyPEM, `block 1: type "PRIVATE KEY"`},
		"bad der":  {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), "block 1:"},
	} {
		if _, err := pki.ParseCertsPEM(tc.in); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ParseCertsPEM(%s): err = %v, want %q", name, err, tc.wantErr)
		}
	}
	if _, err := pki.ParseKeyPEM(both); err == nil || !strings.Contains(err.Error(), `type "CERTIFICATE"`) {
		t.Errorf("ParseKeyPEM(cert): err = %v", err)
	}
}
