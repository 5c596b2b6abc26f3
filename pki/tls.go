package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

// CertSource supplies the local certificate for TLS handshakes. A
// Reloader is one; its certificate can be rotated without a restart.
type CertSource interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error)
}

// Peer is the authenticated other side of a TLS connection.
type Peer struct {
	// ID is the SPIFFE identity from the peer's leaf certificate.
	ID ID
	// Cert is the peer's leaf certificate.
	Cert *x509.Certificate
	// Chains are the verified chains from Cert to a root (Cert first).
	Chains [][]*x509.Certificate
}

// Authorizer decides whether an authenticated peer may connect. A nil
// error admits it.
type Authorizer func(Peer) error

// ServerConfig returns a TLS 1.3 server configuration that requires a
// client certificate chaining to roots and issued by a CA allowed to issue
// its identity (the root for global and edge IDs, the ID's own region's
// intermediate for servers and machines, a region's intermediate for
// workloads), extracts the client's SPIFFE ID and admits the connection
// only if authorize returns nil. A nil
// authorize refuses everyone. To inject a clock for certificate validity
// checks, set the returned config's Time field.
func ServerConfig(src CertSource, roots *x509.CertPool, authorize Authorizer) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: src.GetCertificate,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      roots,
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		// The chain has been verified (roots, time, client-auth usage)
		// before this is called.
		peer, err := peerFromState(cs)
		if err != nil {
			return err
		}
		return admit(authorize, peer)
	}
	return cfg
}

// ClientConfig returns a TLS 1.3 client configuration that presents the
// source's certificate and verifies the server's chain against roots (and
// its issuer, as ServerConfig does), by SPIFFE identity rather than host
// name: authorize must accept the
// server's Peer (e.g. AllowIDs(ServerID(td, "fra"))). A nil authorize
// refuses every server. ServerName may still be set for SNI. To inject a
// clock for certificate validity checks, set the returned config's Time
// field. A nil src presents no client certificate (a machine's first call,
// its join, authenticated by a join token instead).
func ClientConfig(src CertSource, roots *x509.CertPool, authorize Authorizer) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    roots,
		// Host-name verification does not apply to SPIFFE identities;
		// VerifyConnection verifies the chain and the identity instead.
		InsecureSkipVerify: true,
	}
	if src != nil {
		cfg.GetClientCertificate = src.GetClientCertificate
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		now := time.Now
		if cfg.Time != nil {
			now = cfg.Time
		}
		peer, err := VerifyPeer(cs.PeerCertificates, roots, x509.ExtKeyUsageServerAuth, now())
		if err != nil {
			return err
		}
		return admit(authorize, peer)
	}
	return cfg
}

func admit(authorize Authorizer, peer Peer) error {
	if authorize == nil {
		return fmt.Errorf("pki: peer %s refused: no authorizer configured", peer.ID)
	}
	if err := authorize(peer); err != nil {
		return fmt.Errorf("pki: peer %s refused: %w", peer.ID, err)
	}
	return nil
}

// VerifyPeer verifies a peer's presented chain (leaf first) against roots
// at time now for the given usage, checks that the issuing CA may issue
// the leaf's identity, and returns the peer with its SPIFFE ID.
func VerifyPeer(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) (Peer, error) {
	if len(certs) == 0 {
		return Peer{}, errors.New("pki: peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return Peer{}, fmt.Errorf("pki: verify peer certificate: %w", err)
	}
	return peerFromChains(certs[0], chains)
}

// peerFromChains returns the peer of verified chains, keeping only the
// chains whose issuing CA may issue the leaf's identity (mayIssue): a
// certificate that chains to the root but was signed by a CA not allowed
// to issue its ID (another region's intermediate for this region's
// server, an intermediate for a global or edge ID) is refused.
func peerFromChains(leaf *x509.Certificate, chains [][]*x509.Certificate) (Peer, error) {
	if leaf.IsCA {
		return Peer{}, errors.New("pki: peer presented a CA certificate as its leaf")
	}
	id, err := IDFromCert(leaf)
	if err != nil {
		return Peer{}, err
	}
	var allowed [][]*x509.Certificate
	var refusal error
	for _, ch := range chains {
		if err := issuedAsAllowed(id, ch); err != nil {
			refusal = err
			continue
		}
		allowed = append(allowed, ch)
	}
	if len(allowed) == 0 {
		if refusal == nil {
			refusal = errors.New("no verified chain")
		}
		return Peer{}, fmt.Errorf("pki: peer %s refused: %w", id, refusal)
	}
	return Peer{ID: id, Cert: leaf, Chains: allowed}, nil
}

// issuedAsAllowed checks one verified chain (leaf first, trust anchor
// last): the leaf's issuer must be allowed to issue id, the root directly
// (a two-certificate chain) or a region's intermediate signed by the root
// (three certificates).
func issuedAsAllowed(id ID, chain []*x509.Certificate) error {
	if len(chain) < 2 {
		return errors.New("the certificate is its own trust anchor")
	}
	issuer := chain[1]
	td, region, err := caRole(issuer)
	if err != nil {
		return fmt.Errorf("issuer %q: %w", issuer.Subject.CommonName, err)
	}
	want := 3 // leaf, intermediate, root
	if region == "" {
		want = 2 // leaf, root
	}
	if len(chain) != want {
		return fmt.Errorf("issuer %q: a chain of %d certificates, want %d", issuer.Subject.CommonName, len(chain), want)
	}
	if err := mayIssue(td, region, id); err != nil {
		return fmt.Errorf("certificate not issued by a CA allowed to issue it (issued by %q): %w", issuer.Subject.CommonName, err)
	}
	return nil
}

func peerFromState(cs tls.ConnectionState) (Peer, error) {
	if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
		return Peer{}, errors.New("pki: peer certificate not verified")
	}
	return peerFromChains(cs.PeerCertificates[0], cs.VerifiedChains)
}

// PeerFromConnectionState returns the peer of a connection established
// with ServerConfig (e.g. from http.Request.TLS), whose chain the TLS
// layer verified. It fails if the state has no verified chain.
func PeerFromConnectionState(cs *tls.ConnectionState) (Peer, error) {
	if cs == nil {
		return Peer{}, errors.New("pki: not a TLS connection")
	}
	return peerFromState(*cs)
}

// AuthorizeID adapts a check on the identity alone.
func AuthorizeID(f func(ID) error) Authorizer {
	return func(p Peer) error { return f(p.ID) }
}

// AllowKinds admits peers whose identity is of one of the kinds.
func AllowKinds(kinds ...Kind) Authorizer {
	return func(p Peer) error {
		if !slices.Contains(kinds, p.ID.Kind) {
			return fmt.Errorf("identity kind %s not allowed (want %v)", p.ID.Kind, kinds)
		}
		return nil
	}
}

// AllowIDs admits exactly the listed identities.
func AllowIDs(ids ...ID) Authorizer {
	return func(p Peer) error {
		if !slices.Contains(ids, p.ID) {
			return fmt.Errorf("identity %s not allowed", p.ID)
		}
		return nil
	}
}

// AllowRegion admits server or machine identities (restricted further to
// kinds, if given) whose region component is region. Peer verification
// has already checked that an intermediate of that region issued them;
// RegionMembers also pins which intermediate certificate (e.g. this
// region's current one).
func AllowRegion(region string, kinds ...Kind) Authorizer {
	if len(kinds) == 0 {
		kinds = []Kind{KindServer, KindMachine}
	}
	return func(p Peer) error {
		if !slices.Contains(kinds, p.ID.Kind) {
			return fmt.Errorf("identity kind %s not allowed (want %v)", p.ID.Kind, kinds)
		}
		if p.ID.Region != region {
			return fmt.Errorf("region %q does not match %q", p.ID.Region, region)
		}
		return nil
	}
}

// RequireIssuer admits peers whose leaf certificate was issued directly by
// issuer (a region's intermediate, or the root for global and edge
// identities) on a verified chain: it pins one CA certificate, beyond peer
// verification's rule of which CA may issue which identity.
func RequireIssuer(issuer *x509.Certificate) Authorizer {
	return func(p Peer) error {
		for _, ch := range p.Chains {
			if len(ch) >= 2 && ch[1].Equal(issuer) {
				return nil
			}
		}
		got := "none"
		if len(p.Chains) > 0 && len(p.Chains[0]) >= 2 {
			got = fmt.Sprintf("%q", p.Chains[0][1].Subject.CommonName)
		}
		return fmt.Errorf("certificate not issued by %q (issued by %s)", issuer.Subject.CommonName, got)
	}
}

// RegionMembers admits identities of the intermediate's region (servers
// and machines, or only kinds if given) whose certificate that same
// intermediate issued: both the ID's region and the issuing CA must match.
func RegionMembers(intermediate *x509.Certificate, kinds ...Kind) (Authorizer, error) {
	_, region, err := caRole(intermediate)
	if err != nil {
		return nil, err
	}
	if region == "" {
		return nil, errors.New("pki: region members: certificate is the root, not a region's intermediate")
	}
	return AllOf(AllowRegion(region, kinds...), RequireIssuer(intermediate)), nil
}

// AllOf admits a peer that every authorizer admits.
func AllOf(as ...Authorizer) Authorizer {
	return func(p Peer) error {
		for _, a := range as {
			if err := a(p); err != nil {
				return err
			}
		}
		return nil
	}
}

// AnyOf admits a peer that at least one authorizer admits; otherwise it
// returns all their refusals.
func AnyOf(as ...Authorizer) Authorizer {
	return func(p Peer) error {
		errs := make([]error, 0, len(as))
		for _, a := range as {
			err := a(p)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			return errors.New("no authorizer admits any peer")
		}
		return errors.Join(errs...)
	}
}
