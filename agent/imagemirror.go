package agent

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/meridian-run/meridian/pki"
)

// regionMirror carries the image store's requests to the region's image
// cache: every request to the mirror host goes to the region server the
// agent's API calls last reached (all agents of a region prefer the same
// server, so the region fetches each blob from upstream once), over mutual
// TLS with the machine certificate, failing over to the next server when
// one cannot be reached. It is set up once the machine has its identity;
// pulls happen only after that.
type regionMirror struct {
	state atomic.Pointer[mirrorState]
}

type mirrorState struct {
	hosts     []string
	tr        *http.Transport
	preferred *atomic.Int32 // shared with the region clients
}

// mirrorHeaderTimeout bounds the wait for a cache's answer: a blob the
// region is still fetching from a slow upstream answers once the upstream
// does.
const mirrorHeaderTimeout = 2 * time.Minute

// setup points the mirror at the region's servers.
func (m *regionMirror) setup(cfg Config, certs *pki.Reloader, rc *regionClients) error {
	st := &mirrorState{preferred: &rc.preferred}
	for _, u := range cfg.RegionURLs {
		pu, err := url.Parse(u)
		if err != nil {
			return fmt.Errorf("agent: region URL %q: %w", u, err)
		}
		st.hosts = append(st.hosts, pu.Host)
	}
	st.tr = newTransport(cfg, pki.ClientConfig(certs, cfg.Roots, serverOf(cfg.Region)), cfg.Clock)
	st.tr.ResponseHeaderTimeout = mirrorHeaderTimeout
	m.state.Store(st)
	return nil
}

func (m *regionMirror) close() {
	if st := m.state.Load(); st != nil {
		st.tr.CloseIdleConnections()
	}
}

// RoundTrip sends req to the preferred region server, then the others.
func (m *regionMirror) RoundTrip(req *http.Request) (*http.Response, error) {
	st := m.state.Load()
	if st == nil {
		return nil, errors.New("the region's image cache: the machine has not joined its region yet")
	}
	if req.Body != nil && req.Body != http.NoBody {
		return nil, fmt.Errorf("the region's image cache is read-only: %s %s", req.Method, req.URL.Path)
	}
	n := len(st.hosts)
	start := int(st.preferred.Load())
	var errs []error
	for i := range n {
		idx := (start + i) % n
		r := req.Clone(req.Context())
		r.URL.Scheme, r.URL.Host, r.Host = "https", st.hosts[idx], ""
		resp, err := st.tr.RoundTrip(r)
		if err == nil {
			st.preferred.Store(int32(idx))
			return resp, nil
		}
		if req.Context().Err() != nil || badServer(err) {
			return nil, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", st.hosts[idx], err))
	}
	return nil, fmt.Errorf("the region's image cache: no region server answered: %w", errors.Join(errs...))
}
