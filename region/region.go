// Package region is a regional control plane: an independent satellite that
// keeps its region's workloads placed, running and healed without the
// global control plane. Its state lives in etcd (an embedded member by
// default, three servers forming one cluster, or an external cluster). The
// elected leader runs the scheduler and liveness; every server answers the
// API: the global plane's calls (apply with generation numbers, status,
// machines, drain, join tokens) and the agents' calls (join, heartbeat,
// assignment watch, reports), all over mutual TLS.
//
// Start(ctx, cfg) returns a running Server; Ready, Err and Close manage it,
// in the style of etcd's embed package.
package region

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/meridian-run/meridian/connlimit"
	"github.com/meridian-run/meridian/pki"
)

// Config configures one server of a region.
type Config struct {
	// Region is the region's id, e.g. "fra".
	Region string
	// DataDir holds the embedded etcd data and TLS files.
	DataDir string
	// Listen is the API's address (default 127.0.0.1:7800; ":0" picks a port).
	Listen string
	// CA is the region's intermediate CA: it issues this server's
	// certificate and the machines' certificates.
	CA *pki.CA
	// Etcd says where state lives.
	Etcd EtcdConfig
	// EtcdTuning, when set, adjusts the embedded etcd configuration (tests
	// shorten timeouts with it).
	EtcdTuning func(*embed.Config)
	// LeaseTTL is the machines' heartbeat lease (default 5s).
	LeaseTTL time.Duration
	// ScheduleInterval is how often the leader re-plans without a change
	// (default 5s); it re-plans at once on every change.
	ScheduleInterval time.Duration
	// GCInterval is how often the leader deletes the specs of deployments
	// nothing uses any more (default 1m).
	GCInterval time.Duration
	// PeerFeedIdle reopens a peer region's feed that sent nothing, not
	// even its keepalive line (every 10s), for this long: a blackholed
	// link. The peer's endpoints stay in use, marked disconnected
	// (default 25s).
	PeerFeedIdle time.Duration
	// BodyTimeout bounds how long a request without a client certificate
	// (a join) may take to send its body (default 10s); requests with one
	// get a minute. Streams (watch, feed) have no body and no such bound.
	BodyTimeout time.Duration
	// MaxAnonConnsPerAddr caps the connections one client IP address may
	// hold open without having presented a client certificate, including
	// those still in their TLS handshake (default 64). Connections over it
	// are closed at once; authenticated ones do not count.
	MaxAnonConnsPerAddr int
	// FeedKeepalive is how long a feed stream with no update waits before
	// it sends a keepalive line (default 10s): edges and peer regions
	// take a feed silent for much longer as a dead link.
	FeedKeepalive time.Duration
	// Images configures the image cache this server serves its region's
	// machines (on by default).
	Images ImageCacheConfig
	// Logger receives the component's logs.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is a running regional control plane server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	keys    keys
	certs   *pki.Reloader
	roots   *x509.CertPool
	rootPEM []byte
	etcd    *embed.Etcd
	cli     *clientv3.Client
	ln      net.Listener
	http    *http.Server
	ready   chan struct{}
	errc    chan error
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once

	mu      sync.Mutex
	leading bool
	specs   map[string]specRecord // immutable, cached by deployment id
	feeds   *feedHub
	sealer  *sealer
	callers callers
	anon    *connlimit.Listener // the API listener: caps connections without a client certificate per address
	images  *imageCache         // nil when disabled
}

// Start validates cfg, starts the embedded etcd member (unless external),
// serves the API, and campaigns for leadership in the background.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := pki.ValidateName(cfg.Region); err != nil {
		return nil, fmt.Errorf("region: config: region %q: %w", cfg.Region, err)
	}
	if cfg.CA == nil || cfg.CA.Region != cfg.Region {
		return nil, fmt.Errorf("region: config: CA must be region %q's intermediate", cfg.Region)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("region: config: DataDir is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:7800"
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 5 * time.Second
	}
	if cfg.LeaseTTL < time.Second {
		return nil, fmt.Errorf("region: config: lease TTL %s is below 1s", cfg.LeaseTTL)
	}
	if cfg.ScheduleInterval == 0 {
		cfg.ScheduleInterval = 5 * time.Second
	}
	if cfg.GCInterval == 0 {
		cfg.GCInterval = time.Minute
	}
	if cfg.PeerFeedIdle == 0 {
		cfg.PeerFeedIdle = 25 * time.Second
	}
	if cfg.PeerFeedIdle < 0 {
		return nil, fmt.Errorf("region: config: PeerFeedIdle %s is negative", cfg.PeerFeedIdle)
	}
	if cfg.BodyTimeout == 0 {
		cfg.BodyTimeout = 10 * time.Second
	}
	if cfg.MaxAnonConnsPerAddr == 0 {
		cfg.MaxAnonConnsPerAddr = 64
	}
	if cfg.BodyTimeout < 0 || cfg.MaxAnonConnsPerAddr < 0 {
		return nil, fmt.Errorf("region: config: BodyTimeout %s and MaxAnonConnsPerAddr %d must not be negative", cfg.BodyTimeout, cfg.MaxAnonConnsPerAddr)
	}
	if cfg.FeedKeepalive == 0 {
		cfg.FeedKeepalive = 10 * time.Second
	}
	if cfg.FeedKeepalive < 0 {
		return nil, fmt.Errorf("region: config: FeedKeepalive %s is negative", cfg.FeedKeepalive)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Etcd.Name == "" {
		cfg.Etcd.Name = cfg.Region
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "region", "region", cfg.Region, "member", cfg.Etcd.Name),
		keys:    newKeys(cfg.Region),
		roots:   x509.NewCertPool(),
		rootPEM: pki.EncodeCertsPEM(cfg.CA.Root.Raw),
		ready:   make(chan struct{}),
		errc:    make(chan error, 4),
		specs:   map[string]specRecord{},
		feeds:   newFeedHub(),
	}
	s.roots.AddCert(cfg.CA.Root)
	var err error
	if s.callers, err = newCallers(cfg.CA); err != nil {
		return nil, fmt.Errorf("region: config: CA: %w", err)
	}
	if s.sealer, err = newSealer(cfg.CA.Key); err != nil {
		return nil, err
	}

	if !cfg.Images.Disabled {
		if s.images, err = s.openImageCache(); err != nil {
			return nil, err
		}
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("region: listen %s: %w", cfg.Listen, err)
	}
	s.ln = ln
	leaf, err := s.issueServerLeaf()
	if err != nil {
		ln.Close()
		return nil, err
	}
	if s.certs, err = pki.NewReloader(leaf); err != nil {
		ln.Close()
		return nil, err
	}
	if len(cfg.Etcd.Endpoints) == 0 {
		if err := s.startEtcd(ctx); err != nil {
			ln.Close()
			return nil, fmt.Errorf("region: %w", err)
		}
	}
	if err := s.connect(); err != nil {
		s.closeEtcd()
		ln.Close()
		return nil, fmt.Errorf("region: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	// Slow clients: the TLS handshake and the request headers get
	// ReadHeaderTimeout, a body its own read deadline (decode), an idle
	// connection IdleTimeout; and one address holds at most
	// MaxAnonConnsPerAddr connections until they present a client
	// certificate. No ReadTimeout or WriteTimeout: agents' watches and
	// feeds are long streams.
	s.anon = connlimit.NewListener(ln, connlimit.Config{PerAddr: cfg.MaxAnonConnsPerAddr})
	s.http = &http.Server{
		Handler:           s.routes(),
		TLSConfig:         s.tlsConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ConnState:         releaseAuthenticated,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return runCtx },
	}
	s.wg.Add(5)
	go func() { defer s.wg.Done(); s.runFeeds(runCtx) }()
	go func() { defer s.wg.Done(); s.followPeers(runCtx) }()
	go func() {
		defer s.wg.Done()
		if err := s.http.ServeTLS(s.anon, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("region: serve: %w", err)
		}
	}()
	go func() { defer s.wg.Done(); s.campaign(runCtx) }()
	go func() { defer s.wg.Done(); s.renewCert(runCtx) }()
	if s.etcd != nil {
		go func() {
			select {
			case err := <-s.etcd.Err():
				if err != nil {
					s.errc <- fmt.Errorf("region: etcd: %w", err)
				}
			case <-runCtx.Done():
			}
		}()
	}
	close(s.ready)
	s.log.Info("region server serving", "api", s.URL(), "lease_ttl", cfg.LeaseTTL)
	return s, nil
}

// issueServerLeaf issues this server's certificate: its region server ID,
// valid for the API's and etcd's addresses, usable as client and server.
func (s *Server) issueServerLeaf() (*pki.Leaf, error) {
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback}
	if host, _, err := net.SplitHostPort(s.ln.Addr().String()); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	leaf, err := s.cfg.CA.Issue(pki.LeafRequest{
		ID:       pki.ServerID(s.cfg.CA.TrustDomain, s.cfg.Region),
		DNSNames: []string{"localhost"},
		IPs:      ips,
		Usage:    pki.UsageBoth,
		TTL:      24 * time.Hour,
		Now:      s.cfg.Now(),
	})
	if err != nil {
		return nil, fmt.Errorf("region: issue server certificate: %w", err)
	}
	return leaf, nil
}

// renewCert re-issues the server's certificate before it expires; new
// connections use the new one without a restart.
func (s *Server) renewCert(ctx context.Context) {
	err := s.certs.Renew(ctx, pki.RenewConfig{
		Clock:  pki.RealClock(),
		Issue:  func(context.Context) (*pki.Leaf, error) { return s.issueServerLeaf() },
		Logger: s.log,
		OnRenew: func(*pki.Leaf) {
			if _, err := s.etcdTLS(); err != nil {
				s.log.Error("writing renewed certificate for etcd", "err", err)
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		s.log.Error("certificate renewal stopped", "err", err)
	}
}

// releaseAuthenticated stops counting a connection against its address's
// cap once it has presented a verified client certificate.
func releaseAuthenticated(c net.Conn, state http.ConnState) {
	if state != http.StateActive && state != http.StateIdle {
		return
	}
	if tc, ok := c.(*tls.Conn); ok && len(tc.ConnectionState().PeerCertificates) > 0 {
		connlimit.Release(c)
	}
}

// URL is the API's base URL.
func (s *Server) URL() string { return "https://" + s.ln.Addr().String() }

// Addr is the API's bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Ready is closed once the server serves.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Err reports fatal errors.
func (s *Server) Err() <-chan error { return s.errc }

// Client returns the server's etcd client (for tests and tools).
func (s *Server) Client() *clientv3.Client { return s.cli }

// IsLeader reports whether this server currently leads the region.
func (s *Server) IsLeader() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leading
}

func (s *Server) closeEtcd() {
	if s.etcd != nil {
		s.etcd.Close()
	}
}

// Close stops serving, resigns leadership and stops the embedded member.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.http.Shutdown(ctx)
		cancel()
		s.http.Close() // what Shutdown left: HTTP/2 connections clients keep open
		if s.images != nil {
			s.images.store.close()
		}
		s.wg.Wait()
		s.cli.Close()
		s.closeEtcd()
	})
	return nil
}
