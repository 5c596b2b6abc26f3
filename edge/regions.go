package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/pprof"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/regionapi"
)

// applyRegions starts from the cached region list (and the static ones),
// seeded with the snapshot's feeds.
func (s *Server) applyRegions(snap Snapshot) {
	s.setRegions(s.global, &snap)
}

// setRegions makes the followed regions list ∪ the static ones: new
// regions are followed (seeded from snap when given, or from the state
// they replace), gone ones stopped.
func (s *Server) setRegions(list []Region, snap *Snapshot) {
	want := map[string]Region{}
	for _, r := range list {
		if r.ID != "" && strings.HasPrefix(r.URL, "https://") {
			want[r.ID] = r
		}
	}
	for _, r := range s.cfg.Regions {
		want[r.ID] = r
	}
	seeds := map[string]SnapshotRegion{}
	if snap != nil {
		for _, r := range snap.Regions {
			seeds[r.Region.ID] = r
		}
	}
	var started, stopped []*regionState
	s.mu.Lock()
	replaced := map[string]*regionState{}
	for id, rs := range s.regions {
		if r, ok := want[id]; !ok || r != rs.info {
			delete(s.regions, id)
			stopped = append(stopped, rs)
			replaced[id] = rs
		}
	}
	for id, r := range want {
		if _, ok := s.regions[id]; ok {
			continue
		}
		rs := newRegionState(r, s.cfg.Latitude, s.cfg.Longitude)
		if old, ok := replaced[id]; ok {
			old.mu.Lock()
			rs.services, rs.revision, rs.received, rs.hasFeed, rs.source = old.services, old.revision, old.received, old.hasFeed, old.source
			old.mu.Unlock()
		} else if seed, ok := seeds[id]; ok {
			rs.services, rs.revision, rs.received, rs.hasFeed, rs.source = seed.Services, seed.Revision, seed.Received, true, "snapshot"
		}
		s.regions[id] = rs
		started = append(started, rs)
	}
	s.mu.Unlock()
	for _, rs := range stopped {
		if rs.stop != nil {
			rs.stop()
		}
		s.metrics.feedConnected.DeleteLabelValues(rs.info.ID)
		if _, again := want[rs.info.ID]; !again {
			s.log.Info("region no longer listed; its routes are dropped", "region", rs.info.ID)
		}
	}
	for _, rs := range started {
		s.follow(rs)
	}
	s.rerank()
	s.rebuild()
	if len(started)+len(stopped) > 0 {
		s.markDirty()
	}
}

// refreshLoop reads the region list from global every RegionRefresh.
func (s *Server) refreshLoop() {
	for {
		clock.Sleep(s.ctx, clock.Real(), s.cfg.RegionRefresh)
		if s.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		if err := s.refreshRegions(ctx); err != nil && s.ctx.Err() == nil {
			s.log.Warn("global did not list the regions; keeping the current list", "err", err)
		}
		cancel()
	}
}

// globalTLS verifies global's HTTPS certificate for its host name against
// the system's roots (a certificate from a public CA) or, failing that,
// the installation's root (one from `meridian pki global --hosts`), so an
// edge needs no extra trust configuration either way.
func globalTLS(installation *x509.CertPool) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} // verified below, by name, against either pool
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("edge: global presented no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		opts := x509.VerifyOptions{DNSName: cs.ServerName, Intermediates: inter}
		system, err := x509.SystemCertPool()
		if err == nil {
			opts.Roots = system
			if _, err = cs.PeerCertificates[0].Verify(opts); err == nil {
				return nil
			}
		}
		if installation == nil {
			return fmt.Errorf("edge: global's certificate: %w", err)
		}
		opts.Roots = installation
		if _, ierr := cs.PeerCertificates[0].Verify(opts); ierr != nil {
			return fmt.Errorf("edge: global's certificate is trusted neither by the system (%v) nor by the installation's root (%w)", err, ierr)
		}
		return nil
	}
	return cfg
}

// refreshRegions reads the open and draining regions from global and
// follows them; the list is cached in the state directory.
func (s *Server) refreshRegions(ctx context.Context) error {
	c := api.NewClient(s.cfg.GlobalURL, s.cfg.GlobalToken)
	c.HTTP = &http.Client{Timeout: 10 * time.Second, Transport: s.globalTransport}
	var list []Region
	page := ""
	for {
		l, err := c.ListRegions(ctx, api.ListOptions{Limit: 100, PageToken: page})
		if err != nil {
			return fmt.Errorf("listing regions: %w", err)
		}
		for _, r := range l.Items {
			if (r.Status == api.RegionOpen || r.Status == api.RegionDraining) && r.URL != "" {
				list = append(list, Region{ID: r.ID, URL: r.URL, Latitude: r.Latitude, Longitude: r.Longitude})
			}
		}
		if l.NextPageToken == "" {
			break
		}
		page = l.NextPageToken
	}
	slices.SortFunc(list, func(a, b Region) int { return strings.Compare(a.ID, b.ID) })
	s.mu.Lock()
	changed := !slices.Equal(list, s.global)
	s.global = list
	s.mu.Unlock()
	if !changed {
		return nil
	}
	if err := writeRegions(s.cfg.StateDir, list); err != nil {
		s.log.Warn("caching the region list", "err", err)
	}
	s.log.Info("regions listed by global", "regions", len(list))
	s.setRegions(list, nil)
	return nil
}

// follow starts a region's feed and probe loops.
func (s *Server) follow(rs *regionState) {
	if s.cfg.Identity == nil {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	rs.stop = cancel
	tr := &http.Transport{
		DialContext:           s.cfg.DialRegion,
		TLSClientConfig:       s.cfg.Identity.regionTLS(rs.info.ID),
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		// A dead HTTP/2 connection (a blackholed link) is found by its
		// pings and closed, so the next probe and feed dial afresh.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 2 * time.Second, PingTimeout: 2 * time.Second},
	}
	probe := &http.Client{Transport: tr}
	feed := regionapi.NewClient(rs.info.URL, &http.Client{Transport: regionapi.IdleTransport{Base: tr, Idle: s.cfg.FeedIdleTimeout}})
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		defer tr.CloseIdleConnections()
		s.probeLoop(ctx, rs, probe)
	}()
	go func() { defer s.wg.Done(); s.feedLoop(ctx, rs, feed) }()
}

// feedLoop follows a region's local feed, reconnecting with backoff. A
// stream that breaks or sends garbage leaves the last good feed in use.
// An update whose services equal the ones in use (a region resending its
// state, or the same state after a reconnect) changes nothing: no new
// table, no snapshot write — an idle installation writes nothing.
func (s *Server) feedLoop(ctx context.Context, rs *regionState, c *regionapi.Client) {
	id := rs.info.ID
	backoff := clock.Backoff{Min: 250 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}
	for ctx.Err() == nil {
		err := c.Feed(ctx, true, func(f regionapi.Feed) error {
			if f.Region != id {
				return fmt.Errorf("region %s sent the feed of %q", id, f.Region)
			}
			rs.mu.Lock()
			same := rs.hasFeed && reflect.DeepEqual(rs.services, f.Services)
			if !same {
				rs.services = f.Services
			}
			rs.revision, rs.received = f.Revision, s.cfg.Now().UTC()
			rs.hasFeed, rs.connected, rs.source, rs.lastErr = true, true, "feed", ""
			rs.mu.Unlock()
			s.metrics.feedUpdates.WithLabelValues(id).Inc()
			s.metrics.feedConnected.WithLabelValues(id).Set(1)
			if !same {
				s.rebuild()
				s.markDirty()
			}
			backoff.Reset()
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		rs.mu.Lock()
		was := rs.connected
		rs.connected, rs.lastErr = false, err.Error()
		rs.mu.Unlock()
		s.metrics.feedErrors.WithLabelValues(id).Inc()
		s.metrics.feedConnected.WithLabelValues(id).Set(0)
		wait := backoff.Next()
		if was {
			s.log.Warn("region feed lost; keeping its last good state", "region", id, "err", err)
		} else {
			s.log.Debug("region feed unavailable", "region", id, "err", err, "retry_in", wait)
		}
		clock.Sleep(ctx, clock.Real(), wait)
	}
}

// probeLoop measures the round trip to a region's API every
// ProbeInterval.
func (s *Server) probeLoop(ctx context.Context, rs *regionState, hc *http.Client) {
	for ctx.Err() == nil {
		s.probe(ctx, rs, hc)
		clock.Sleep(ctx, clock.Real(), s.cfg.ProbeInterval)
	}
}

// probe times GET /healthz on a kept-alive connection. A timeout marks
// the region unreachable (its link swallows packets): it is ranked last
// and the retryable attempts waiting on it are cut and retried elsewhere;
// only an answer makes it reachable again. A refused or reset connection
// only leaves the RTT unmeasured: the API server is down, but its
// instances may still serve.
func (s *Server) probe(ctx context.Context, rs *regionState, hc *http.Client) {
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	reused := false
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(pctx, trace), "GET", rs.info.URL+"/healthz", nil)
	if err != nil {
		return
	}
	start := time.Now()
	resp, err := hc.Do(req)
	d := time.Since(start)
	if err == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
	}
	if ctx.Err() != nil {
		return
	}
	id := rs.info.ID
	old := time.Duration(rs.rtt.Load())
	wasUnreachable := rs.unreachable.Load()
	switch {
	case err == nil:
		rs.unreachable.Store(false)
		if reused { // a fresh connection's handshake is not a round trip
			rs.rtt.Store(int64(max(rs.rttSample(d), 1)))
		}
	case isTimeout(err) || pctx.Err() != nil:
		rs.unreachable.Store(true)
		rs.rttSample(0)
		rs.rtt.Store(0)
	default:
		// Refused, reset, a connection found dead: the RTT is unknown;
		// reachability changes only with an answer or a timeout.
		rs.rttSample(0)
		rs.rtt.Store(0)
	}
	now := rs.unreachable.Load()
	s.metrics.rtt.WithLabelValues(id).Set(time.Duration(rs.rtt.Load()).Seconds())
	if now {
		s.metrics.unreachable.WithLabelValues(id).Set(1)
	} else {
		s.metrics.unreachable.WithLabelValues(id).Set(0)
	}
	if now != wasUnreachable {
		if now {
			s.log.Warn("region unreachable: its probe timed out; routing elsewhere", "region", id, "timeout", s.cfg.ProbeTimeout)
		} else {
			s.log.Info("region reachable again", "region", id)
		}
	}
	newBucket := time.Duration(rs.rtt.Load()) / s.cfg.RTTTolerance
	if now != wasUnreachable || old/s.cfg.RTTTolerance != newBucket || (old == 0) != (rs.rtt.Load() == 0) {
		s.rerank()
	}
	if now && s.otherReachable(rs) {
		// Requests waiting on the region for longer than half a probe
		// timeout are stuck behind the dead link: cut and retried
		// elsewhere. (Younger ones may be fine, if the probe lost a race
		// with a starved CPU: they are cut at the next timeout if still
		// waiting.) When every region's probe times out, the trouble is
		// likely here: nothing is cut.
		s.interruptRegion(rs, time.Now().Add(-s.cfg.ProbeTimeout/2), !wasUnreachable)
	}
}

// otherReachable reports whether another region with a feed answers its
// probes.
func (s *Server) otherReachable(rs *regionState) bool {
	for _, o := range s.regionList() {
		if o == rs || o.unreachable.Load() {
			continue
		}
		o.mu.Lock()
		ok := o.hasFeed
		o.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// RegionStatus is one region as the edge sees it.
type RegionStatus struct {
	ID  string `json:"id"`
	URL string `json:"url"`
	// Connected is true while the feed stream is up.
	Connected bool `json:"connected"`
	// Source is where the routing state comes from: "feed", "snapshot",
	// or "" (none yet).
	Source    string    `json:"source"`
	Received  time.Time `json:"received,omitzero"`
	Revision  int64     `json:"revision"`
	RTTMillis float64   `json:"rtt_ms"`
	// GeoMillis is the round trip estimated from the coordinates.
	GeoMillis   float64 `json:"geo_ms"`
	Unreachable bool    `json:"unreachable"`
	Rank        int     `json:"rank"`
	Services    int     `json:"services"`
	Error       string  `json:"error,omitempty"`
}

// Status is the edge's routing state.
type Status struct {
	Location  string         `json:"location"`
	Domain    string         `json:"domain"`
	Routes    int            `json:"routes"`
	Endpoints int            `json:"endpoints"`
	Hosts     []string       `json:"hosts"`
	Regions   []RegionStatus `json:"regions"`
}

// Status reports the routing state.
func (s *Server) Status() Status {
	t := s.table.Load()
	st := Status{Location: s.cfg.Location, Domain: s.cfg.Domain, Routes: t.routes, Endpoints: t.endpoints, Hosts: []string{}, Regions: []RegionStatus{}}
	for h := range t.hosts {
		st.Hosts = append(st.Hosts, h)
	}
	slices.Sort(st.Hosts)
	for _, rs := range s.regionList() {
		rs.mu.Lock()
		st.Regions = append(st.Regions, RegionStatus{ID: rs.info.ID, URL: rs.info.URL, Connected: rs.connected, Source: rs.source,
			Received: rs.received, Revision: rs.revision, RTTMillis: float64(rs.rtt.Load()) / 1e6, GeoMillis: float64(rs.geoRTT) / 1e6,
			Unreachable: rs.unreachable.Load(), Rank: int(rs.rank.Load()), Services: len(rs.services), Error: rs.lastErr})
		rs.mu.Unlock()
	}
	return st
}

// ready reports whether the edge has routing state to serve from.
func (s *Server) ready() error {
	list := s.regionList()
	if len(list) == 0 {
		return errors.New("no region known yet (global not reached and no cached list)")
	}
	for _, rs := range list {
		rs.mu.Lock()
		ok := rs.hasFeed
		rs.mu.Unlock()
		if ok {
			return nil
		}
	}
	return errors.New("no region's feed received yet")
}

// adminHandler serves /metrics, /healthz, /readyz, /v1/state and the Go
// profiler (/debug/pprof/).
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /v1/state", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Status())
	})
	return mux
}
