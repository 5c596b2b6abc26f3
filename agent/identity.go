package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
)

// Files of the machine identity under DataDir/identity.
const (
	identityDir  = "identity"
	identityName = "machine"      // machine.pem and machine-key.pem (pki.SaveLeaf)
	metaFile     = "machine.json" // what the machine joined as
)

// meta is what the machine joined as, saved next to its certificate.
type meta struct {
	Region      string    `json:"region"`
	Machine     string    `json:"machine"`
	Datacenter  string    `json:"datacenter"`
	TrustDomain string    `json:"trust_domain"`
	LeaseTTL    string    `json:"lease_ttl"`
	JoinedAt    time.Time `json:"joined_at"`
}

func (m meta) leaseTTL() time.Duration {
	d, err := time.ParseDuration(m.LeaseTTL)
	if err != nil || d <= 0 {
		return DefaultLeaseTTL
	}
	return d
}

// identity is the machine's certificate and what it joined as.
type identity struct {
	meta  meta
	certs *pki.Reloader
}

func (a *Agent) identityPath(name string) string {
	return filepath.Join(a.cfg.DataDir, identityDir, name)
}

// loadOrJoin loads the identity saved in DataDir, or joins the region with
// the join token when there is none (or it expired).
func (a *Agent) loadOrJoin(ctx context.Context) (*identity, error) {
	id, err := a.loadIdentity()
	switch {
	case err == nil:
		a.log.Info("machine identity loaded", "not_after", id.certs.Leaf().Cert.NotAfter)
		return id, nil
	case errors.Is(err, errNoIdentity):
		if a.cfg.JoinToken == "" {
			return nil, fmt.Errorf("agent: config: JoinToken is required: %s holds no machine identity yet", a.cfg.DataDir)
		}
	case errors.Is(err, errExpired):
		if a.cfg.JoinToken == "" {
			return nil, fmt.Errorf("agent: %w; a JoinToken is needed to join again", err)
		}
		a.log.Warn("machine certificate expired; joining again with the join token", "err", err)
	default:
		return nil, err
	}
	return a.join(ctx)
}

var (
	errNoIdentity = errors.New("no machine identity")
	errExpired    = errors.New("machine certificate expired")
)

func (a *Agent) loadIdentity() (*identity, error) {
	b, err := os.ReadFile(a.identityPath(metaFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoIdentity
	}
	if err != nil {
		return nil, fmt.Errorf("agent: read machine identity: %w", err)
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("agent: read machine identity %s: %w", a.identityPath(metaFile), err)
	}
	if m.Region != a.cfg.Region || m.Machine != a.cfg.Name {
		return nil, fmt.Errorf("agent: config: DataDir %s holds the identity of machine %q of region %q, not machine %q of region %q",
			a.cfg.DataDir, m.Machine, m.Region, a.cfg.Name, a.cfg.Region)
	}
	if m.Datacenter != a.cfg.Datacenter {
		return nil, fmt.Errorf("agent: config: Datacenter %q: machine %q joined in data center %q; use a new DataDir (and join token) to move it",
			a.cfg.Datacenter, m.Machine, m.Datacenter)
	}
	leaf, err := pki.LoadLeaf(filepath.Join(a.cfg.DataDir, identityDir), identityName)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := a.checkLeaf(leaf); err != nil {
		return nil, err
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return &identity{meta: m, certs: rl}, nil
}

// checkLeaf checks that a machine certificate chains to the roots, is valid
// now, and names this machine of this region.
func (a *Agent) checkLeaf(leaf *pki.Leaf) error {
	now := a.clock.Now()
	if now.After(leaf.Cert.NotAfter) {
		return fmt.Errorf("%w at %s", errExpired, leaf.Cert.NotAfter.Format(time.RFC3339))
	}
	if _, err := leaf.Verify(a.cfg.Roots, now); err != nil {
		return fmt.Errorf("agent: machine certificate does not chain to Roots: %w", err)
	}
	id, err := leaf.ID()
	if err != nil {
		return fmt.Errorf("agent: machine certificate: %w", err)
	}
	if id.Kind != pki.KindMachine || id.Region != a.cfg.Region || id.Machine != a.cfg.Name {
		return fmt.Errorf("agent: machine certificate names %s, not machine %q of region %q", id, a.cfg.Name, a.cfg.Region)
	}
	return nil
}

// join registers the machine with the join token: a fresh key, a CSR, and
// the region's answer saved in DataDir.
func (a *Agent) join(ctx context.Context) (*identity, error) {
	if r, _, ok := strings.Cut(a.cfg.JoinToken, "."); ok && r != a.cfg.Region {
		return nil, fmt.Errorf("agent: config: JoinToken is for region %q, but Region is %q", r, a.cfg.Region)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("agent: join: %w", err)
	}
	csr, err := pki.NewCSR(key, pki.MachineID(a.cfg.TrustDomain, a.cfg.Region, a.cfg.Name))
	if err != nil {
		return nil, fmt.Errorf("agent: join: %w", err)
	}
	req := regionapi.JoinRequest{Token: a.cfg.JoinToken, Machine: a.cfg.Name, Datacenter: a.cfg.Datacenter,
		Address: a.cfg.Address, MilliCPU: a.cfg.MilliCPU, MemoryMB: a.cfg.MemoryMB, CSR: string(csr)}
	tr := newTransport(a.cfg, pki.ClientConfig(noCert{}, a.cfg.Roots, serverOf(a.cfg.Region)), a.clock)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	backoff := 200 * time.Millisecond
	warned := false
	for {
		var resp regionapi.JoinResponse
		var errs []error
		for _, u := range a.cfg.RegionURLs {
			cctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
			resp, err = regionapi.NewClient(u, hc).Join(cctx, req)
			cancel()
			if err == nil {
				return a.saveJoin(resp, key)
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("agent: join region %s: %w (last error: %v)", a.cfg.Region, ctx.Err(), err)
			}
			if refused(err) || badServer(err) {
				return nil, fmt.Errorf("agent: join region %s via %s: %w", a.cfg.Region, u, err)
			}
			errs = append(errs, fmt.Errorf("%s: %w", u, err))
		}
		if !warned {
			a.log.Warn("join: no region server answered; retrying", "err", errors.Join(errs...))
			warned = true
		}
		if !a.sleep(ctx, backoff) {
			return nil, fmt.Errorf("agent: join region %s: %w (last errors: %v)", a.cfg.Region, ctx.Err(), errors.Join(errs...))
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// saveJoin checks the region's answer and saves the identity.
func (a *Agent) saveJoin(resp regionapi.JoinResponse, key crypto.Signer) (*identity, error) {
	leaf, err := pki.NewLeaf([]byte(resp.Certificate), key)
	if err != nil {
		return nil, fmt.Errorf("agent: join: the region's certificate: %w", err)
	}
	if err := a.checkLeaf(leaf); err != nil {
		return nil, fmt.Errorf("agent: join: the region's certificate: %w", err)
	}
	id, _ := leaf.ID()
	m := meta{Region: a.cfg.Region, Machine: a.cfg.Name, Datacenter: a.cfg.Datacenter, TrustDomain: id.TrustDomain,
		LeaseTTL: resp.LeaseTTL, JoinedAt: a.clock.Now().UTC()}
	if err := a.saveIdentity(leaf, m); err != nil {
		return nil, err
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.log.Info("joined the region", "identity", id.String(), "lease_ttl", resp.LeaseTTL, "not_after", leaf.Cert.NotAfter)
	return &identity{meta: m, certs: rl}, nil
}

func (a *Agent) saveIdentity(leaf *pki.Leaf, m meta) error {
	if err := pki.SaveLeaf(filepath.Join(a.cfg.DataDir, identityDir), identityName, leaf); err != nil {
		return fmt.Errorf("agent: save machine identity: %w", err)
	}
	if err := writeJSONAtomic(a.identityPath(metaFile), m); err != nil {
		return fmt.Errorf("agent: save machine identity: %w", err)
	}
	return nil
}

// renewLoop renews the machine certificate RenewBefore its expiry (a third
// of its lifetime by default), for a fresh key, and saves it. It returns
// when ctx ends.
func (a *Agent) renewLoop(ctx context.Context) {
	err := a.id.certs.Renew(ctx, pki.RenewConfig{
		Clock:  a.clock,
		Before: a.cfg.RenewBefore,
		Logger: a.log,
		Issue:  a.renewCert,
		OnRenew: func(leaf *pki.Leaf) {
			if err := a.saveIdentity(leaf, a.id.meta); err != nil {
				a.log.Error("saving the renewed machine certificate", "err", err)
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		a.log.Error("certificate renewal stopped", "err", err)
		a.fatal(fmt.Errorf("agent: certificate renewal stopped: %w", err))
	}
}

func (a *Agent) renewCert(ctx context.Context) (*pki.Leaf, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	cur, _ := a.id.certs.Leaf().ID()
	csr, err := pki.NewCSR(key, cur)
	if err != nil {
		return nil, err
	}
	var resp regionapi.JoinResponse
	err = a.rc.call(ctx, a.cfg.RequestTimeout, "renew", func(ctx context.Context, c *regionapi.Client) error {
		var err error
		resp, err = c.Renew(ctx, regionapi.RenewRequest{CSR: string(csr)})
		return err
	})
	if err != nil {
		return nil, err
	}
	leaf, err := pki.NewLeaf([]byte(resp.Certificate), key)
	if err != nil {
		return nil, fmt.Errorf("renewed certificate: %w", err)
	}
	if err := a.checkLeaf(leaf); err != nil {
		return nil, fmt.Errorf("renewed certificate: %w", err)
	}
	return leaf, nil
}

// noCert is the certificate source of the join call: no client
// certificate.
type noCert struct{}

func (noCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return nil, errors.New("agent: no certificate before joining")
}

func (noCert) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return &tls.Certificate{}, nil
}

// errWrongServer marks a region server whose certificate is not the
// region's.
var errWrongServer = errors.New("not a server of the agent's region")

// serverOf admits the servers of a region only.
func serverOf(region string) pki.Authorizer {
	return func(p pki.Peer) error {
		if p.ID.Kind != pki.KindServer || p.ID.Region != region {
			return fmt.Errorf("%w %q", errWrongServer, region)
		}
		return nil
	}
}

// refused reports an answer of a region server refusing the request (4xx):
// retrying elsewhere will not help.
func refused(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Status != http.StatusRequestTimeout && ae.Status != http.StatusTooManyRequests
}

// badServer reports a region server that failed the TLS identity checks:
// a configuration error (wrong roots or region), not an outage.
func badServer(err error) bool {
	var uae x509.UnknownAuthorityError
	var cie x509.CertificateInvalidError
	return errors.Is(err, errWrongServer) || errors.As(err, &uae) || errors.As(err, &cie)
}
