package edge

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Server is a running edge.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	table atomic.Pointer[table]

	mu      sync.Mutex
	regions map[string]*regionState
	global  []Region // the last list from global (or its cache)

	buildMu   sync.Mutex
	endpoints map[string]*endpoint

	transport, h2cTransport *http.Transport
	globalTransport         *http.Transport // to global's API (the region list)
	proxy                   *httputil.ReverseProxy
	bufs                    *bufferPool
	reqPrefix               string
	reqSeq                  atomic.Uint64

	plain, secure, admin       *http.Server
	plainH1                    *http.Server // the plain lane's malformed requests (front.malformed)
	plainLn, secureLn, adminLn net.Listener
	fronts                     []*front // the listeners' HTTP/1.1 lanes

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error
	dirty  chan struct{}
	once   sync.Once
}

// Start loads the snapshot and the cached region list, starts serving at
// once from them, reads the region list from global (when it answers
// within a few seconds; later otherwise), and follows every region's feed.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "edge", "location", cfg.Location), metrics: newMetrics(),
		regions: map[string]*regionState{}, endpoints: map[string]*endpoint{},
		errc: make(chan error, 3), dirty: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	b := make([]byte, 4)
	rand.Read(b)
	s.reqPrefix = cfg.Location + "-" + hex.EncodeToString(b) + "-"
	s.table.Store(&table{hosts: map[string]*appRoutes{}})
	s.setupProxy()

	// The state on disk first: serve from it while global and the
	// regions are asked.
	snap, err := ReadSnapshot(cfg.StateDir)
	if err != nil {
		s.log.Warn("ignoring the routing snapshot", "err", err)
	}
	cached, err := readRegions(cfg.StateDir)
	if err != nil {
		s.log.Warn("ignoring the cached region list", "err", err)
	}
	s.global = cached
	if len(cached) == 0 {
		for _, r := range snap.Regions {
			s.global = append(s.global, r.Region)
		}
	}
	s.applyRegions(snap)
	if len(snap.Regions) > 0 {
		t := s.table.Load()
		s.log.Info("serving from the routing snapshot", "saved_at", snap.SavedAt, "regions", len(snap.Regions), "routes", t.routes, "endpoints", t.endpoints)
	}

	if err := s.listen(); err != nil {
		s.Close()
		return nil, err
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.writeSnapshots() }()
	if cfg.GlobalURL != "" {
		// One quick try before returning, so a fresh edge knows the
		// regions at once; the loop keeps trying.
		fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := s.refreshRegions(fctx)
		cancel()
		if err != nil {
			s.log.Warn("global did not list the regions; using the cached list", "err", err, "regions", len(s.global))
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.refreshLoop() }()
	}
	if cfg.Identity != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.reloadLoop() }()
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.janitor() }()
	return s, nil
}

// listen opens the listeners and serves them.
func (s *Server) listen() error {
	cfg := s.cfg
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{Handler: h, ReadHeaderTimeout: cfg.ReadHeaderTimeout, ReadTimeout: cfg.ReadTimeout,
			IdleTimeout: cfg.IdleTimeout, MaxHeaderBytes: cfg.MaxHeaderBytes,
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	}
	failed := func(name string, err error) {
		select {
		case s.errc <- fmt.Errorf("edge: %s listener: %w", name, err):
		default:
		}
	}
	serve := func(name string, srv *http.Server, ln net.Listener) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				failed(name, err)
			}
		}()
	}
	var err error
	if cfg.Listen != "" {
		if s.plainLn, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("edge: Config.Listen: %w", err)
		}
		s.plain = newServer(s)
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		s.plain.Protocols = &p
		s.plainH1 = newServer(s)
		var h1 http.Protocols
		h1.SetHTTP1(true)
		s.plainH1.Protocols = &h1
	}
	if cfg.TLSListen != "" {
		if s.secureLn, err = net.Listen("tcp", cfg.TLSListen); err != nil {
			return fmt.Errorf("edge: Config.TLSListen: %w", err)
		}
		s.secure = newServer(s)
		s.secure.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cfg.TLSCertificates.GetCertificate,
			NextProtos: []string{"h2", "http/1.1"}}
	}
	if cfg.AdminListen != "" {
		if s.adminLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return fmt.Errorf("edge: Config.AdminListen: %w", err)
		}
		s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	}
	lane := func(name string, srv *http.Server, f *front) {
		srv.ConnContext = connContext
		s.fronts = append(s.fronts, f)
		serve(name, srv, f.handoff)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := f.serve(); err != nil {
				failed(name, err)
			}
		}()
	}
	if s.plain != nil {
		f := newFront(s, s.plainLn, nil)
		f.malformed = newHandoffListener(s.plainLn.Addr())
		s.plainH1.ConnContext = connContext
		serve("HTTP", s.plainH1, f.malformed)
		lane("HTTP", s.plain, f)
	}
	if s.secure != nil {
		// The lane's own copy: net/http adjusts the server's for HTTP/2.
		lane("HTTPS", s.secure, newFront(s, s.secureLn, s.secure.TLSConfig.Clone()))
	}
	if s.admin != nil {
		serve("admin", s.admin, s.adminLn)
	}
	return nil
}

// URL is the plain HTTP listener's URL ("" without one).
func (s *Server) URL() string {
	if s.plainLn == nil {
		return ""
	}
	return "http://" + s.plainLn.Addr().String()
}

// TLSURL is the HTTPS listener's URL ("" without one).
func (s *Server) TLSURL() string {
	if s.secureLn == nil {
		return ""
	}
	return "https://" + s.secureLn.Addr().String()
}

// AdminURL is the admin listener's URL ("" without one).
func (s *Server) AdminURL() string {
	if s.adminLn == nil {
		return ""
	}
	return "http://" + s.adminLn.Addr().String()
}

// Err reports a listener that failed.
func (s *Server) Err() <-chan error { return s.errc }

// Close shuts the edge down gracefully: listeners stop accepting, requests
// in flight finish (within ShutdownTimeout), the feeds stop, and the
// snapshot is written a last time.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		defer cancel()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, f := range s.fronts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if e := f.shutdown(ctx); e != nil {
					mu.Lock()
					err = errors.Join(err, fmt.Errorf("edge: shutdown: %w", e))
					mu.Unlock()
				}
			}()
		}
		for _, srv := range []*http.Server{s.plain, s.plainH1, s.secure} {
			if srv == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if e := srv.Shutdown(ctx); e != nil {
					mu.Lock()
					err = errors.Join(err, fmt.Errorf("edge: shutdown: %w", e))
					mu.Unlock()
					srv.Close()
				}
			}()
		}
		wg.Wait()
		if s.admin != nil {
			s.admin.Close()
		}
		for _, ln := range []net.Listener{s.plainLn, s.secureLn, s.adminLn} {
			if ln != nil {
				ln.Close()
			}
		}
		s.cancel()
		s.wg.Wait()
		s.transport.CloseIdleConnections()
		s.h2cTransport.CloseIdleConnections()
		s.globalTransport.CloseIdleConnections()
		s.buildMu.Lock()
		for _, ep := range s.endpoints {
			ep.pool.close()
		}
		s.buildMu.Unlock()
		if e := s.saveSnapshot(); e != nil {
			err = errors.Join(err, e)
		}
	})
	return err
}

// regionList returns the regions, sorted by id.
func (s *Server) regionList() []*regionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]*regionState, 0, len(s.regions))
	for _, rs := range s.regions {
		list = append(list, rs)
	}
	slices.SortFunc(list, func(a, b *regionState) int {
		if a.info.ID < b.info.ID {
			return -1
		}
		return 1
	})
	return list
}

// rerank recomputes the regions' ranks.
func (s *Server) rerank() {
	rankRegions(s.regionList(), s.cfg.RTTTolerance)
}

// rebuild merges the regions' last good feeds into a new routing table.
func (s *Server) rebuild() {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	var feeds []regionFeed
	for _, rs := range s.regionList() {
		rs.mu.Lock()
		if rs.hasFeed {
			feeds = append(feeds, regionFeed{rs: rs, services: rs.services})
		}
		rs.mu.Unlock()
	}
	t, eps := buildTable(s.cfg.Domain, feeds, s.endpoints)
	for key, ep := range s.endpoints {
		if eps[key] != ep {
			ep.pool.close() // gone from the table
		}
	}
	s.endpoints = eps
	s.table.Store(t)
	s.metrics.routes.Set(float64(t.routes))
	s.metrics.endpoints.Set(float64(t.endpoints))
}

// markDirty asks for the snapshot to be written.
func (s *Server) markDirty() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// writeSnapshots writes the snapshot after changes, at most every 200ms.
func (s *Server) writeSnapshots() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.dirty:
		}
		if err := s.saveSnapshot(); err != nil {
			s.log.Warn("writing the routing snapshot", "err", err)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// saveSnapshot writes every region's last good feed.
func (s *Server) saveSnapshot() error {
	snap := Snapshot{Location: s.cfg.Location, SavedAt: s.cfg.Now().UTC()}
	for _, rs := range s.regionList() {
		rs.mu.Lock()
		if rs.hasFeed {
			snap.Regions = append(snap.Regions, SnapshotRegion{Region: rs.info, Revision: rs.revision, Received: rs.received, Services: rs.services})
		}
		rs.mu.Unlock()
	}
	if err := WriteSnapshot(s.cfg.StateDir, snap); err != nil {
		s.metrics.snapshots.WithLabelValues("error").Inc()
		return err
	}
	s.metrics.snapshots.WithLabelValues("ok").Inc()
	return nil
}

// janitor closes instance connections idle too long.
func (s *Server) janitor() {
	t := time.NewTicker(idleConnTimeout / 2)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		s.buildMu.Lock()
		for _, ep := range s.endpoints {
			ep.pool.closeIdle(now)
		}
		s.buildMu.Unlock()
	}
}

// interruptRegion fails the exchanges with a region's instances (the
// fast path's connections) in flight since before a time, and, when all
// is set, cuts the ReverseProxy path's retryable attempts.
func (s *Server) interruptRegion(rs *regionState, before time.Time, all bool) {
	if all {
		rs.cutAttempts()
	}
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	for _, ep := range s.endpoints {
		if ep.region == rs {
			ep.pool.interrupt(before)
		}
	}
}

// reloadLoop picks up a re-issued edge certificate.
func (s *Server) reloadLoop() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if changed, err := s.cfg.Identity.Reload(); err != nil {
			s.log.Warn("reloading the edge certificate", "err", err)
		} else if changed {
			s.log.Info("edge certificate reloaded", "not_after", s.cfg.Identity.Leaf().Cert.NotAfter)
		}
		if fc, ok := s.cfg.TLSCertificates.(*FileCert); ok {
			if _, err := fc.Reload(); err != nil {
				s.log.Warn("reloading the TLS certificate", "err", err)
			}
		}
	}
}
