package edge

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/meridian-run/meridian/meshwire"
	"github.com/meridian-run/meridian/pki"
)

// File names of an edge's PKI directory (as `meridian pki edge` writes
// them under pki/edges/<location>).
const (
	// IdentityName is the leaf's name: edge.pem and edge-key.pem.
	IdentityName = "edge"
)

// Identity is the edge's certificate, issued by the installation's root
// for spiffe://<td>/edge/<location>, with the root that verifies the
// regions. It presents the certificate to regions (client) and, when the
// certificate names the apps' domain (*.<domain>), to public clients of the
// TLS listener. Reload picks up a re-issued certificate without a restart.
type Identity struct {
	dir   string
	rl    *pki.Reloader
	roots *x509.CertPool
	id    pki.ID

	mu   sync.Mutex
	last []byte // the chain PEM last loaded
}

// NewIdentity wraps a leaf (with its key) and the installation's roots.
// The leaf must be an edge identity.
func NewIdentity(leaf *pki.Leaf, roots *x509.CertPool) (*Identity, error) {
	id, err := leaf.ID()
	if err != nil {
		return nil, fmt.Errorf("edge: identity: %w", err)
	}
	if id.Kind != pki.KindEdge {
		return nil, fmt.Errorf("edge: identity: the certificate is for %s, not an edge", id)
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		return nil, fmt.Errorf("edge: identity: %w", err)
	}
	return &Identity{rl: rl, roots: roots, id: id, last: leaf.ChainPEM()}, nil
}

// LoadIdentity reads an edge's PKI directory: edge.pem, edge-key.pem and
// root.pem.
func LoadIdentity(dir string) (*Identity, error) {
	leaf, err := pki.LoadLeaf(dir, IdentityName)
	if err != nil {
		return nil, fmt.Errorf("edge: identity in %s: %w (issue one with `meridian pki edge`)", dir, err)
	}
	roots, err := pki.LoadRoots(filepath.Join(dir, pki.RootFile))
	if err != nil {
		return nil, fmt.Errorf("edge: identity in %s: %w", dir, err)
	}
	in, err := NewIdentity(leaf, roots)
	if err != nil {
		return nil, err
	}
	in.dir = dir
	return in, nil
}

// Reload reads the directory again and rotates to the certificate there
// if it changed. It reports whether it rotated. An identity not loaded
// from a directory never changes.
func (i *Identity) Reload() (bool, error) {
	if i.dir == "" {
		return false, nil
	}
	b, err := os.ReadFile(filepath.Join(i.dir, IdentityName+".pem"))
	if err != nil {
		return false, fmt.Errorf("edge: reload identity: %w", err)
	}
	i.mu.Lock()
	same := bytes.Equal(b, i.last)
	i.mu.Unlock()
	if same {
		return false, nil
	}
	leaf, err := pki.LoadLeaf(i.dir, IdentityName)
	if err != nil {
		return false, fmt.Errorf("edge: reload identity: %w", err)
	}
	id, err := leaf.ID()
	if err != nil || id != i.id {
		return false, fmt.Errorf("edge: reload identity: the new certificate is for %v, not %s", id, i.id)
	}
	if err := i.rl.Rotate(leaf); err != nil {
		return false, fmt.Errorf("edge: reload identity: %w", err)
	}
	i.mu.Lock()
	i.last = leaf.ChainPEM()
	i.mu.Unlock()
	return true, nil
}

// ID is the edge's identity.
func (i *Identity) ID() pki.ID { return i.id }

// Roots is the installation's root pool.
func (i *Identity) Roots() *x509.CertPool { return i.roots }

// Leaf is the current certificate.
func (i *Identity) Leaf() *pki.Leaf { return i.rl.Leaf() }

// GetCertificate serves the certificate to TLS clients.
func (i *Identity) GetCertificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return i.rl.GetCertificate(h)
}

// GetClientCertificate presents the certificate to region servers.
func (i *Identity) GetClientCertificate(r *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return i.rl.GetClientCertificate(r)
}

// regionTLS is the client configuration for one region's API: the edge's
// certificate, and only that region's servers are accepted.
func (i *Identity) regionTLS(region string) *tls.Config {
	cfg := pki.ClientConfig(i, i.roots, pki.AllowIDs(pki.ServerID(i.id.TrustDomain, region)))
	cfg.NextProtos = []string{"h2", "http/1.1"}
	return cfg
}

// instanceTLS is the client configuration for a machine's node proxy:
// the edge's certificate, the edge protocol, and only that machine's
// certificate is accepted (pki refuses one its region's CA did not issue).
func (i *Identity) instanceTLS(region, machine string) *tls.Config {
	cfg := pki.ClientConfig(i, i.roots, pki.AllowIDs(pki.MachineID(i.id.TrustDomain, region, machine)))
	cfg.NextProtos = []string{meshwire.EdgeALPN}
	return cfg
}

// FileCert is a public certificate and key read from PEM files (e.g. from
// an operator's CA or a certificate manager). Reload reads them again.
type FileCert struct {
	certFile, keyFile string
	mu                sync.Mutex
	cert              *tls.Certificate
}

// LoadFileCert reads a certificate chain and its key.
func LoadFileCert(certFile, keyFile string) (*FileCert, error) {
	f := &FileCert{certFile: certFile, keyFile: keyFile}
	if _, err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload reads the files again; it reports whether the certificate changed.
func (f *FileCert) Reload() (bool, error) {
	c, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		return false, fmt.Errorf("edge: TLS certificate %s / key %s: %w", f.certFile, f.keyFile, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	changed := f.cert == nil || !bytes.Equal(f.cert.Certificate[0], c.Certificate[0])
	if changed {
		f.cert = &c
	}
	return changed, nil
}

// GetCertificate serves the certificate.
func (f *FileCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cert == nil {
		return nil, errors.New("edge: no TLS certificate loaded")
	}
	return f.cert, nil
}

// IssueIdentity issues an edge location's certificate from the
// installation's root CA and saves it to dir (edge.pem, edge-key.pem and
// root.pem): identity spiffe://<td>/edge/<location>, usable by the edge as
// a client of regions and as the public TLS server of *.<domain>.
func IssueIdentity(root *pki.CA, dir, location, domain string, now time.Time, ttl time.Duration) (*pki.Leaf, error) {
	if !root.IsRoot() {
		return nil, errors.New("edge: issue identity: edge certificates are issued by the root CA")
	}
	if err := pki.ValidateName(location); err != nil {
		return nil, fmt.Errorf("edge: issue identity: location: %w", err)
	}
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !validDomain(domain) {
		return nil, fmt.Errorf("edge: issue identity: domain: %q is not a DNS domain", domain)
	}
	leaf, err := root.Issue(pki.LeafRequest{ID: pki.EdgeID(root.TrustDomain, location), Usage: pki.UsageBoth,
		DNSNames: []string{"*." + domain, domain}, TTL: ttl, Now: now})
	if err != nil {
		return nil, fmt.Errorf("edge: issue identity: %w", err)
	}
	if err := pki.SaveLeaf(dir, IdentityName, leaf); err != nil {
		return nil, err
	}
	if err := pki.SaveRoots(filepath.Join(dir, pki.RootFile), root.Root); err != nil {
		return nil, err
	}
	return leaf, nil
}
