package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/pki"
)

// pkiLeaf is a leaf certificate of a PKI directory (NAME.pem and
// NAME-key.pem, with root.pem beside them), reloaded when its file
// changes: `meridian pki global` run again rotates the global plane's
// certificate without a restart.
type pkiLeaf struct {
	dir, name string
	rl        *pki.Reloader
	roots     *x509.CertPool
	last      []byte
}

// loadPKILeaf reads the leaf NAME of dir and the roots beside it.
func loadPKILeaf(dir, name string) (*pkiLeaf, error) {
	l := &pkiLeaf{dir: dir, name: name}
	leaf, err := pki.LoadLeaf(dir, name)
	if err != nil {
		return nil, fmt.Errorf("%s certificate: %w", name, err)
	}
	if l.rl, err = pki.NewReloader(leaf); err != nil {
		return nil, err
	}
	l.last = leaf.ChainPEM()
	if l.roots, err = pki.LoadRoots(filepath.Join(dir, pki.RootFile)); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	return l, nil
}

// Reload reads the leaf again and rotates to it when it changed.
func (l *pkiLeaf) Reload() (bool, error) {
	b, err := os.ReadFile(filepath.Join(l.dir, l.name+".pem"))
	if err != nil {
		return false, err
	}
	if bytes.Equal(b, l.last) {
		return false, nil
	}
	leaf, err := pki.LoadLeaf(l.dir, l.name)
	if err != nil {
		return false, err
	}
	if err := l.rl.Rotate(leaf); err != nil {
		return false, err
	}
	l.last = leaf.ChainPEM()
	return true, nil
}

// regionClient is an HTTP client that calls regions with the leaf as its
// client certificate, trusting only region servers under the roots.
func (l *pkiLeaf) regionClient() *http.Client {
	tc := pki.ClientConfig(l.rl, l.roots, pki.AllowKinds(pki.KindServer))
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}, Timeout: 30 * time.Second}
}

// servesHosts checks that the leaf can serve HTTPS: server usage and at
// least one host name or address.
func (l *pkiLeaf) servesHosts() error {
	c := l.rl.Leaf().Cert
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || len(c.DNSNames)+len(c.IPAddresses) == 0 {
		return fmt.Errorf("the certificate %s names no host to serve", filepath.Join(l.dir, l.name+".pem"))
	}
	return nil
}

// reloadable is a certificate source that reads its files again.
type reloadable interface {
	Reload() (changed bool, err error)
}

// watchHUP starts delivering SIGHUP to a channel; stop undoes it.
func watchHUP() (hup chan os.Signal, stop func()) {
	hup = make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// reloadCerts reloads the named certificate sources on SIGHUP (from hup)
// and every interval until ctx ends. A source that fails keeps its
// current certificate; the failure is logged.
func reloadCerts(ctx context.Context, log *slog.Logger, hup <-chan os.Signal, every time.Duration, srcs map[string]reloadable) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		why := "interval"
		select {
		case <-ctx.Done():
			return
		case <-hup:
			why = "SIGHUP"
		case <-t.C:
		}
		for name, s := range srcs {
			changed, err := s.Reload()
			switch {
			case err != nil:
				log.Error("reloading a certificate failed; keeping the current one", "certificate", name, "err", err, "trigger", why)
			case changed:
				log.Info("certificate reloaded", "certificate", name, "trigger", why)
			}
		}
	}
}

// serverTLS is a TLS server configuration whose certificate comes from get.
func serverTLS(get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{GetCertificate: get, MinVersion: tls.VersionTLS12}
}
