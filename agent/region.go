package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/supervise"
)

// newTransport returns an HTTP/1.1 transport to the region servers over
// the config's dialer.
func newTransport(cfg Config, tc *tls.Config, clock supervise.Clock) *http.Transport {
	tc.Time = clock.Now
	return &http.Transport{
		DialContext:           cfg.Dialer.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   cfg.RequestTimeout,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
	}
}

// regionClients calls the region's servers with the machine certificate,
// failing over between them.
type regionClients struct {
	urls      []string
	tr        *http.Transport
	clients   []*regionapi.Client
	preferred atomic.Int32 // index of the server that answered last
}

func newRegionClients(cfg Config, certs *pki.Reloader, clock supervise.Clock) *regionClients {
	tr := newTransport(cfg, pki.ClientConfig(certs, cfg.Roots, serverOf(cfg.Region)), clock)
	hc := &http.Client{Transport: tr}
	rc := &regionClients{urls: cfg.RegionURLs, tr: tr}
	for _, u := range cfg.RegionURLs {
		rc.clients = append(rc.clients, regionapi.NewClient(u, hc))
	}
	return rc
}

func (rc *regionClients) close() { rc.tr.CloseIdleConnections() }

// call runs fn against the region's servers, starting with the one that
// answered last and moving on to the next after a transport failure or a
// server error, each attempt bounded by timeout. A refusal (4xx) is
// returned at once: another server would refuse too.
func (rc *regionClients) call(ctx context.Context, timeout time.Duration, what string, fn func(context.Context, *regionapi.Client) error) error {
	n := len(rc.clients)
	start := int(rc.preferred.Load())
	var errs []error
	for i := range n {
		idx := (start + i) % n
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := fn(cctx, rc.clients[idx])
		cancel()
		if err == nil {
			rc.preferred.Store(int32(idx))
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if refused(err) {
			return fmt.Errorf("%s: %s: %w", what, rc.urls[idx], err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", rc.urls[idx], err))
	}
	return fmt.Errorf("%s: no region server answered: %w", what, errors.Join(errs...))
}

// heartbeatLoop keeps the machine's lease alive: a heartbeat every third
// of the lease TTL, failing over between servers. It logs once when the
// region becomes unreachable and once when it is back; instances keep
// running meanwhile.
func (a *Agent) heartbeatLoop(ctx context.Context) {
	reachable := true
	var downSince time.Time
	var lastRefusal string
	hb := regionapi.Heartbeat{Address: a.cfg.Address, MilliCPU: a.cfg.MilliCPU, MemoryMB: a.cfg.MemoryMB, MeshPort: a.MeshPort()}
	for {
		began := a.clock.Now()
		interval := time.Duration(a.leaseTTL.Load()) / 3
		timeout := max(min(interval, a.cfg.RequestTimeout), 200*time.Millisecond)
		var resp regionapi.HeartbeatResponse
		err := a.rc.call(ctx, timeout, "heartbeat", func(ctx context.Context, c *regionapi.Client) error {
			var err error
			resp, err = c.Heartbeat(ctx, hb)
			return err
		})
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && refused(err):
			if msg := err.Error(); msg != lastRefusal {
				a.log.Error("the region refuses the machine's heartbeat", "err", err)
				lastRefusal = msg
			}
		case err != nil:
			if reachable {
				reachable, downSince = false, a.clock.Now()
				a.log.Warn("region unreachable; instances keep running", "err", err)
			}
		default:
			lastRefusal = ""
			if !reachable {
				reachable = true
				a.log.Info("region reachable again", "unreachable_for", a.clock.Now().Sub(downSince).Round(time.Millisecond))
			}
			if d, err := time.ParseDuration(resp.LeaseTTL); err == nil && d > 0 && int64(d) != a.leaseTTL.Load() {
				a.log.Info("lease TTL", "ttl", d)
				a.leaseTTL.Store(int64(d))
			}
			a.mu.Lock()
			if resp.Draining != a.draining {
				a.draining = resp.Draining
				a.log.Info("machine draining", "draining", resp.Draining)
			}
			a.mu.Unlock()
		}
		wait := time.Duration(a.leaseTTL.Load())/3 - a.clock.Now().Sub(began)
		if !a.sleep(ctx, max(wait, 0)) {
			return
		}
	}
}
