package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
)

// workloadCert is the workload certificate of a local service, which the
// node proxy presents for the service's instances: its key never leaves
// the machine (DataDir/mesh/certs), the region signs it, and it is renewed
// a third of its lifetime before expiry; handshakes after a renewal present
// the new one while established connections carry on.
type workloadCert struct {
	id     pki.ID
	key    string
	rl     atomic.Pointer[pki.Reloader]
	ready  chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// source waits (until ctx ends) for the certificate and returns it.
func (w *workloadCert) source(ctx context.Context) (pki.CertSource, error) {
	select {
	case <-w.ready:
		return w.rl.Load(), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no workload certificate for %s yet: %w", w.id, ctx.Err())
	}
}

// leaf returns the current certificate, or nil before the first.
func (w *workloadCert) leaf() *pki.Leaf {
	if rl := w.rl.Load(); rl != nil {
		return rl.Leaf()
	}
	return nil
}

func (w *workloadCert) stop() {
	w.cancel()
	<-w.done
}

func (w *workloadCert) remove(m *mesh) {
	dir := filepath.Join(m.d.StateDir, "certs")
	for _, p := range []string{w.key + ".pem", w.key + "-key.pem"} {
		if err := os.Remove(filepath.Join(dir, p)); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("removing a workload key", "service", w.key, "err", err)
		}
	}
}

// startCert loads or obtains a slot's workload certificate and keeps it
// fresh in the background.
func (m *mesh) startCert(s *slot) *workloadCert {
	ctx, cancel := context.WithCancel(m.ctx)
	w := &workloadCert{id: s.id, key: s.key, ready: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		leaf := m.loadCert(w)
		backoff := 100 * time.Millisecond
		warned := false
		for leaf == nil {
			var err error
			if leaf, err = m.obtainCert(ctx, w); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if !warned {
				m.log.Warn("mesh: no workload certificate yet; retrying", "service", w.key, "err", err)
				warned = true
			}
			t := m.d.Clock.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		rl, err := pki.NewReloader(leaf)
		if err != nil {
			m.log.Error("mesh: workload certificate", "service", w.key, "err", err)
			return
		}
		w.rl.Store(rl)
		close(w.ready)
		err = rl.Renew(ctx, pki.RenewConfig{Clock: m.d.Clock, Logger: m.log.With("workload", w.id.String()),
			Issue: func(ctx context.Context) (*pki.Leaf, error) { return m.obtainCert(ctx, w) }})
		if !errors.Is(err, context.Canceled) {
			m.log.Error("mesh: workload certificate renewal stopped", "service", w.key, "err", err)
		}
	}()
	return w
}

// loadCert returns the saved certificate of a service if it is still good
// (chains to the roots, names the service, valid for over a third of its
// lifetime), else nil.
func (m *mesh) loadCert(w *workloadCert) *pki.Leaf {
	leaf, err := pki.LoadLeaf(filepath.Join(m.d.StateDir, "certs"), w.key)
	if err != nil {
		return nil
	}
	if err := m.checkWorkloadLeaf(w, leaf); err != nil {
		m.log.Info("mesh: saved workload certificate not reused", "service", w.key, "err", err)
		return nil
	}
	if left := leaf.Cert.NotAfter.Sub(m.d.Clock.Now()); left < leaf.Cert.NotAfter.Sub(leaf.Cert.NotBefore)/3 {
		return nil
	}
	return leaf
}

func (m *mesh) checkWorkloadLeaf(w *workloadCert, leaf *pki.Leaf) error {
	if _, err := leaf.Verify(m.d.Roots, m.d.Clock.Now()); err != nil {
		return err
	}
	id, err := leaf.ID()
	if err != nil {
		return err
	}
	if id != w.id {
		return fmt.Errorf("certificate names %s, not %s", id, w.id)
	}
	return nil
}

// obtainCert gets a new certificate for a fresh key from the region, and
// saves both.
func (m *mesh) obtainCert(ctx context.Context, w *workloadCert) (*pki.Leaf, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.NewCSR(key, w.id)
	if err != nil {
		return nil, err
	}
	chain, err := m.d.Issue(ctx, w.key, csr)
	if err != nil {
		return nil, err
	}
	leaf, err := pki.NewLeaf(chain, key)
	if err != nil {
		return nil, fmt.Errorf("workload certificate of %s: %w", w.key, err)
	}
	if err := m.checkWorkloadLeaf(w, leaf); err != nil {
		return nil, fmt.Errorf("workload certificate of %s: %w", w.key, err)
	}
	if err := pki.SaveLeaf(filepath.Join(m.d.StateDir, "certs"), w.key, leaf); err != nil {
		m.log.Warn("mesh: saving a workload certificate", "service", w.key, "err", err)
	}
	m.log.Info("mesh: workload certificate", "id", w.id.String(), "not_after", leaf.Cert.NotAfter)
	return leaf, nil
}

// workloadCertRequest and workloadCertResponse are the body and answer of
// the region's POST /v1/agent/workload-cert.
type workloadCertRequest struct {
	Service string `json:"service"`
	CSR     string `json:"csr"`
}

type workloadCertResponse struct {
	Service     string `json:"service"`
	ID          string `json:"id"`
	Certificate string `json:"certificate"`
	CA          string `json:"ca"`
}

// issueWorkloadCert asks the region for a service's workload certificate,
// failing over between its servers.
func (a *Agent) issueWorkloadCert(ctx context.Context, service string, csr []byte) ([]byte, error) {
	body, err := json.Marshal(workloadCertRequest{Service: service, CSR: string(csr)})
	if err != nil {
		return nil, err
	}
	var out workloadCertResponse
	err = a.rc.call(ctx, a.cfg.RequestTimeout, "workload certificate", func(ctx context.Context, c *regionapi.Client) error {
		return postJSON(ctx, c, "/v1/agent/workload-cert", body, &out)
	})
	if err != nil {
		return nil, err
	}
	return []byte(out.Certificate), nil
}

// postJSON posts a JSON body to a region server and decodes the answer or
// its error.
func postJSON(ctx context.Context, c *regionapi.Client, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, "POST", c.BaseURL+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if resp.StatusCode >= 300 {
		e := &api.Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Code = api.CodeInternal
			e.Message = fmt.Sprintf("POST %s: %s: %s", path, resp.Status, strings.TrimSpace(string(data)))
		}
		return e
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("POST %s: decoding the answer: %w", path, err)
	}
	return nil
}
