package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// Backdate is how far before the requested time certificates become
// valid, to tolerate small clock differences between machines.
const Backdate = time.Minute

// CA is a certificate authority: the installation's root, or a region's
// intermediate.
type CA struct {
	// Cert is the CA's own certificate.
	Cert *x509.Certificate
	// Key signs the certificates the CA issues.
	Key crypto.Signer
	// Chain holds the DER certificates to send after a leaf this CA
	// issued: Cert and any CA above it, excluding the root. It is empty
	// for the root.
	Chain [][]byte
	// Root is the installation's root certificate (Cert itself for the
	// root).
	Root *x509.Certificate
	// TrustDomain is the installation's trust domain, e.g. "meridian.local".
	TrustDomain string
	// Region is the region of an intermediate; empty for the root.
	Region string
}

// IsRoot reports whether ca is the installation's root CA.
func (ca *CA) IsRoot() bool { return ca.Region == "" }

// Pool returns a certificate pool holding only the root, for use as the
// trust anchors of TLS configurations.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root)
	return p
}

// GenerateKey returns a new ECDSA P-256 private key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate P-256 key: %w", err)
	}
	return k, nil
}

func serialNumber() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never zero
}

// caURI is the URI SAN placed on CA certificates: spiffe://<td> for the
// root (the SPIFFE trust-domain ID) and spiffe://<td>/region/<r> for a
// region's intermediate. It lets LoadCA recover the CA's role.
func caURI(td, region string) *url.URL {
	u := &url.URL{Scheme: Scheme, Host: td}
	if region != "" {
		u.Path = "/region/" + region
	}
	return u
}

// caRole reads the trust domain and region back from a CA certificate.
func caRole(cert *x509.Certificate) (td, region string, err error) {
	if len(cert.URIs) != 1 {
		return "", "", fmt.Errorf("pki: CA certificate %q: want exactly one URI SAN, got %d", cert.Subject.CommonName, len(cert.URIs))
	}
	u := cert.URIs[0]
	if u.Scheme != Scheme || ValidateTrustDomain(u.Host) != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("pki: CA certificate URI SAN %q: not a Meridian CA URI", u)
	}
	switch {
	case u.Path == "":
		return u.Host, "", nil
	case strings.HasPrefix(u.Path, "/region/"):
		r := strings.TrimPrefix(u.Path, "/region/")
		if err := validateSegment(r); err != nil {
			return "", "", fmt.Errorf("pki: CA certificate URI SAN %q: region: %w", u, err)
		}
		return u.Host, r, nil
	}
	return "", "", fmt.Errorf("pki: CA certificate URI SAN %q: not a Meridian CA URI", u)
}

// NewRoot creates the installation's self-signed root CA for trustDomain,
// valid from now for ttl. It may sign intermediates (path length 1), and
// its name constraints limit every URI SAN below it to the trust domain.
func NewRoot(trustDomain string, now time.Time, ttl time.Duration) (*CA, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, fmt.Errorf("pki: new root: %w", err)
	}
	if err := checkTime("new root", now, ttl); err != nil {
		return nil, err
	}
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization:       []string{"Meridian"},
			OrganizationalUnit: []string{trustDomain},
			CommonName:         "Meridian root CA " + trustDomain,
		},
		NotBefore:                   now.Add(-Backdate),
		NotAfter:                    now.Add(ttl),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  1,
		URIs:                        []*url.URL{caURI(trustDomain, "")},
		PermittedURIDomains:         []string{trustDomain},
		PermittedDNSDomainsCritical: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: new root: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: new root: parse: %w", err)
	}
	return &CA{Cert: cert, Key: key, Root: cert, TrustDomain: trustDomain}, nil
}

// NewIntermediate creates the intermediate CA of a region, signed by the
// root. It cannot sign further CAs (path length 0) and, like the root, is
// name-constrained to the trust domain's URIs. Its validity is clamped to
// the root's.
func (ca *CA) NewIntermediate(region string, now time.Time, ttl time.Duration) (*CA, error) {
	if !ca.IsRoot() {
		return nil, fmt.Errorf("pki: new intermediate %q: only the root CA signs intermediates, this is region %q's CA", region, ca.Region)
	}
	if err := validateSegment(region); err != nil {
		return nil, fmt.Errorf("pki: new intermediate: region: %w", err)
	}
	if err := checkTime("new intermediate", now, ttl); err != nil {
		return nil, err
	}
	notBefore, notAfter, err := ca.window(now, ttl)
	if err != nil {
		return nil, fmt.Errorf("pki: new intermediate %q: %w", region, err)
	}
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization:       []string{"Meridian"},
			OrganizationalUnit: []string{ca.TrustDomain},
			CommonName:         "Meridian region " + region + " CA",
		},
		NotBefore:                   notBefore,
		NotAfter:                    notAfter,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		URIs:                        []*url.URL{caURI(ca.TrustDomain, region)},
		PermittedURIDomains:         []string{ca.TrustDomain},
		PermittedDNSDomainsCritical: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: new intermediate %q: sign: %w", region, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: new intermediate %q: parse: %w", region, err)
	}
	return &CA{
		Cert:        cert,
		Key:         key,
		Chain:       [][]byte{der},
		Root:        ca.Root,
		TrustDomain: ca.TrustDomain,
		Region:      region,
	}, nil
}

func checkTime(op string, now time.Time, ttl time.Duration) error {
	if now.IsZero() {
		return fmt.Errorf("pki: %s: now: must be set", op)
	}
	if ttl <= 0 {
		return fmt.Errorf("pki: %s: ttl: must be positive, got %s", op, ttl)
	}
	return nil
}

// window returns the validity of a certificate issued at now for ttl,
// clamped to the CA's own validity.
func (ca *CA) window(now time.Time, ttl time.Duration) (time.Time, time.Time, error) {
	if now.Before(ca.Cert.NotBefore) {
		return time.Time{}, time.Time{}, fmt.Errorf("CA certificate not valid until %s (now %s)", ca.Cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !now.Before(ca.Cert.NotAfter) {
		return time.Time{}, time.Time{}, fmt.Errorf("CA certificate expired at %s (now %s)", ca.Cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	nb := now.Add(-Backdate)
	if nb.Before(ca.Cert.NotBefore) {
		nb = ca.Cert.NotBefore
	}
	na := now.Add(ttl)
	if na.After(ca.Cert.NotAfter) {
		na = ca.Cert.NotAfter
	}
	return nb, na, nil
}

// Usage says which side of a TLS connection a leaf certificate may take.
type Usage int

// Leaf usages.
const (
	// UsageServer allows TLS server authentication.
	UsageServer Usage = 1 << iota
	// UsageClient allows TLS client authentication.
	UsageClient
	// UsageBoth allows both.
	UsageBoth = UsageServer | UsageClient
)

// LeafRequest describes a leaf certificate to issue.
type LeafRequest struct {
	// ID is the identity to certify. Required.
	ID ID
	// DNSNames and IPs are optional extra SANs (for servers reached by
	// name or address).
	DNSNames []string
	IPs      []net.IP
	// Usage is UsageServer, UsageClient or UsageBoth. Required.
	Usage Usage
	// TTL is the certificate lifetime. Required; clamped to the CA's
	// validity.
	TTL time.Duration
	// Now is the issuing time. Required (no hidden clock).
	Now time.Time
	// PublicKey, if set, is certified instead of a freshly generated key,
	// and the returned Leaf has no Key. It must be an ECDSA P-256 key.
	PublicKey crypto.PublicKey
}

// Leaf is an issued end-entity certificate with its chain and key.
type Leaf struct {
	// Cert is the parsed leaf certificate.
	Cert *x509.Certificate
	// Chain holds the DER certificates to present: the leaf first, then
	// the intermediates. The root is never included.
	Chain [][]byte
	// Key is the leaf's private key; nil when the CA certified a public
	// key it was given (CSR), until the holder attaches its own key with
	// NewLeaf.
	Key crypto.Signer
}

// ID returns the leaf's SPIFFE identity.
func (l *Leaf) ID() (ID, error) { return IDFromCert(l.Cert) }

// TLSCertificate returns the leaf as a tls.Certificate. It fails if the
// leaf has no private key.
func (l *Leaf) TLSCertificate() (*tls.Certificate, error) {
	if l == nil || l.Cert == nil || len(l.Chain) == 0 {
		return nil, errors.New("pki: leaf: no certificate")
	}
	if l.Key == nil {
		return nil, errors.New("pki: leaf: no private key (issued from a CSR? attach the key with NewLeaf)")
	}
	return &tls.Certificate{Certificate: l.Chain, PrivateKey: l.Key, Leaf: l.Cert}, nil
}

// IDFromCert returns the SPIFFE identity of a leaf certificate, which
// must carry exactly one URI SAN.
func IDFromCert(cert *x509.Certificate) (ID, error) {
	if cert == nil {
		return ID{}, errors.New("pki: nil certificate")
	}
	if len(cert.URIs) != 1 {
		return ID{}, fmt.Errorf("pki: certificate %s: want exactly one URI SAN, got %d", cert.SerialNumber, len(cert.URIs))
	}
	return IDFromURI(cert.URIs[0])
}

func checkP256(pub crypto.PublicKey) error {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("public key: want ECDSA P-256, got %T", pub)
	}
	if k.Curve != elliptic.P256() {
		return fmt.Errorf("public key: want ECDSA P-256, got curve %s", k.Curve.Params().Name)
	}
	return nil
}

// checkPolicy enforces which identities a CA may issue (see mayIssue).
func (ca *CA) checkPolicy(id ID) error { return mayIssue(ca.TrustDomain, ca.Region, id) }

// mayIssue says whether the CA of trust domain caTD and region caRegion
// ("" for the root) may issue id: the root issues the global control plane
// and edges; a region's intermediate issues its own region's servers and
// machines, and workloads. Issue enforces it, and peer verification
// (VerifyPeer, ServerConfig, ClientConfig) refuses a certificate whose
// issuer was not allowed to issue its identity.
func mayIssue(caTD, caRegion string, id ID) error {
	if id.TrustDomain != caTD {
		return fmt.Errorf("ID %s: trust domain %q is not this CA's %q", id, id.TrustDomain, caTD)
	}
	root := caRegion == ""
	switch id.Kind {
	case KindGlobal, KindEdge:
		if !root {
			return fmt.Errorf("ID %s: %s identities are issued by the root CA, not region %q's intermediate", id, id.Kind, caRegion)
		}
	case KindServer, KindMachine:
		if root {
			return fmt.Errorf("ID %s: %s identities are issued by the region's intermediate CA, not the root", id, id.Kind)
		}
		if id.Region != caRegion {
			return fmt.Errorf("ID %s: region %q does not match this intermediate's region %q", id, id.Region, caRegion)
		}
	case KindWorkload:
		if root {
			return fmt.Errorf("ID %s: workload identities are issued by a region's intermediate CA, not the root", id)
		}
	default:
		return fmt.Errorf("ID %s: unknown kind %s", id, id.Kind)
	}
	return nil
}

// Issue signs a leaf certificate for req. Unless req.PublicKey is set, a
// new P-256 key is generated and returned in the Leaf.
func (ca *CA) Issue(req LeafRequest) (*Leaf, error) {
	if err := req.ID.Validate(); err != nil {
		return nil, fmt.Errorf("pki: issue: LeafRequest.ID: %w", err)
	}
	if err := ca.checkPolicy(req.ID); err != nil {
		return nil, fmt.Errorf("pki: issue: %w", err)
	}
	var eku []x509.ExtKeyUsage
	switch req.Usage {
	case UsageServer:
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case UsageClient:
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case UsageBoth:
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	default:
		return nil, fmt.Errorf("pki: issue %s: LeafRequest.Usage: must be UsageServer, UsageClient or UsageBoth, got %d", req.ID, int(req.Usage))
	}
	if req.Now.IsZero() {
		return nil, fmt.Errorf("pki: issue %s: LeafRequest.Now: must be set", req.ID)
	}
	if req.TTL <= 0 {
		return nil, fmt.Errorf("pki: issue %s: LeafRequest.TTL: must be positive, got %s", req.ID, req.TTL)
	}
	for i, n := range req.DNSNames {
		if err := validateDNSName(n); err != nil {
			return nil, fmt.Errorf("pki: issue %s: LeafRequest.DNSNames[%d]: %w", req.ID, i, err)
		}
	}
	for i, ip := range req.IPs {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, fmt.Errorf("pki: issue %s: LeafRequest.IPs[%d]: invalid IP %v", req.ID, i, ip)
		}
	}
	notBefore, notAfter, err := ca.window(req.Now, req.TTL)
	if err != nil {
		return nil, fmt.Errorf("pki: issue %s: %w", req.ID, err)
	}
	var key crypto.Signer
	pub := req.PublicKey
	if pub == nil {
		k, err := GenerateKey()
		if err != nil {
			return nil, err
		}
		key, pub = k, k.Public()
	} else if err := checkP256(pub); err != nil {
		return nil, fmt.Errorf("pki: issue %s: LeafRequest.PublicKey: %w", req.ID, err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization:       []string{"Meridian"},
			OrganizationalUnit: []string{req.ID.Kind.String()},
			CommonName:         commonName(req.ID),
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{req.ID.URI()},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: issue %s: sign: %w", req.ID, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: issue %s: parse: %w", req.ID, err)
	}
	chain := make([][]byte, 0, 1+len(ca.Chain))
	chain = append(chain, der)
	chain = append(chain, ca.Chain...)
	return &Leaf{Cert: cert, Chain: chain, Key: key}, nil
}

// CommonName is the subject common name Issue gives a leaf for id: a
// readable name for logs ("server fra", "machine fra1-a fra"); the
// identity is the URI SAN. Tools that check names but not URI SANs (etcd's
// --client-cert-allowed-cn) can match it: within one region's
// intermediate, "server <region>" names that region's servers only.
func CommonName(id ID) string { return commonName(id) }

// commonName is a readable subject for logs; identity is the URI SAN.
func commonName(id ID) string {
	var s string
	switch id.Kind {
	case KindGlobal:
		s = "global"
	case KindServer:
		s = "server " + id.Region
	case KindMachine:
		s = "machine " + id.Machine + " " + id.Region
	case KindEdge:
		s = "edge " + id.Edge
	case KindWorkload:
		s = "service " + id.Service + "." + id.App + " " + id.Org
	}
	if len(s) > 64 { // X.520 ub-common-name
		s = s[:64]
	}
	return s
}

func validateDNSName(n string) error {
	if n == "" {
		return errors.New("must not be empty")
	}
	if len(n) > 253 {
		return fmt.Errorf("%q: longer than 253 characters", n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' || (c == '*' && i == 0) {
			continue
		}
		return fmt.Errorf("%q: invalid character %q in DNS name", n, c)
	}
	return nil
}

// NewCSR returns a PEM certificate signing request for key, claiming id.
// The CA does not trust the claim (see IssueFromCSR); it is informative.
func NewCSR(key crypto.Signer, id ID) ([]byte, error) {
	if key == nil {
		return nil, errors.New("pki: new CSR: key: must not be nil")
	}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("pki: new CSR: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName(id)},
		URIs:    []*url.URL{id.URI()},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: new CSR: %w", err)
	}
	return encodePEM(pemCSR, der), nil
}

// IssueFromCSR certifies the public key of a PEM CSR after checking the
// CSR's self-signature (proof the requester holds the key). Everything
// else the CSR claims (subject, SANs) is ignored: identity and SANs come
// from req, chosen by the CA. req.PublicKey must be nil. The returned
// Leaf has no Key.
func (ca *CA) IssueFromCSR(csrPEM []byte, req LeafRequest) (*Leaf, error) {
	if req.PublicKey != nil {
		return nil, errors.New("pki: issue from CSR: LeafRequest.PublicKey: must be nil (the key comes from the CSR)")
	}
	csr, err := ParseCSRPEM(csrPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: issue from CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: issue from CSR: signature: %w", err)
	}
	if err := checkP256(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("pki: issue from CSR: %w", err)
	}
	req.PublicKey = csr.PublicKey
	return ca.Issue(req)
}

// NewLeaf builds a Leaf from a PEM chain (leaf first, as returned by
// Leaf.ChainPEM) and the private key that matches it: this is how an agent
// that sent a CSR assembles its certificate.
func NewLeaf(chainPEM []byte, key crypto.Signer) (*Leaf, error) {
	certs, err := ParseCertsPEM(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: new leaf: %w", err)
	}
	l := &Leaf{Cert: certs[0], Key: key}
	for _, c := range certs {
		l.Chain = append(l.Chain, c.Raw)
	}
	if key != nil {
		if err := keyMatches(l.Cert, key); err != nil {
			return nil, fmt.Errorf("pki: new leaf: %w", err)
		}
	}
	return l, nil
}

func keyMatches(cert *x509.Certificate, key crypto.Signer) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	if !ok {
		return fmt.Errorf("private key of type %T cannot be compared", key)
	}
	if !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("private key does not match certificate %q", cert.Subject.CommonName)
	}
	return nil
}

// Verify checks that l chains to the roots at time now and returns its
// verified chains. It is a consistency check for loaded or received
// leaves; TLS peers are verified by the TLS configurations.
func (l *Leaf) Verify(roots *x509.CertPool, now time.Time) ([][]*x509.Certificate, error) {
	if l == nil || l.Cert == nil || len(l.Chain) == 0 || !bytes.Equal(l.Chain[0], l.Cert.Raw) {
		return nil, errors.New("pki: verify leaf: chain does not start with the leaf")
	}
	inter := x509.NewCertPool()
	for _, der := range l.Chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("pki: verify leaf: intermediate: %w", err)
		}
		inter.AddCert(c)
	}
	chains, err := l.Cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("pki: verify leaf: %w", err)
	}
	return chains, nil
}
