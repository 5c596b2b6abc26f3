// Package global is Meridian's global control plane: the public REST API
// under /v1, backed by the store, with organizations, API tokens, apps,
// services, deployments, secrets and the region registry. It is the only
// component users talk to; regions never need it to keep running.
//
// The package follows etcd's embed style: Start(ctx, cfg) returns a running
// Server; Ready, Err and Close manage it. The binary and the tests use the
// same entry point.
//
// Start also launches the rollout workers. Each new deployment is rolled
// out region by region under its strategy: generations are allocated per
// (service, region) and written with the operation that carries them
// before any region is called, region operations are sent over mutual TLS
// and retried with backoff until the region answers, and the deployment's
// status is computed from its regions. Leases in the store keep two
// replicas from driving one deployment; a restarted replica resumes from
// the store.
//
// The API is HTTPS with Config.TLS, and plain HTTP only on loopback unless
// Config.AllowPlaintext. Every connection is unauthenticated at the TCP
// level, so the listener caps connections per client address and in
// total, and headers, bodies and idle connections are bounded in time
// (answers are not: long and streaming ones are never cut).
//
// The answers to creates with an Idempotency-Key are kept for
// Config.IdempotencyTTL (those carrying a new token sealed under the
// secret key); a janitor deletes expired ones.
package global

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/connlimit"
	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/rollout"
	"github.com/meridian-run/meridian/store"
)

// Config configures a global control plane.
type Config struct {
	// Listen is the API's TCP address, e.g. "127.0.0.1:7700" (":0" picks a port).
	Listen string
	// Store is the opened store. The server does not close it.
	Store store.Store
	// AdminToken authorizes operator calls: creating organizations and
	// their first tokens, and writing the region registry.
	AdminToken string
	// SecretKey is the 32-byte key that seals secrets at rest.
	SecretKey []byte
	// Domain is the suffix of apps' public host names: <app>-<org>.<Domain>.
	Domain string
	// Spec holds the instance type catalogue and limits used to validate
	// and derive definitions.
	Spec definition.Options
	// Images says how images are resolved to digests at deploy.
	Images ImageConfig
	// MaxBodyBytes bounds request bodies (default 1 MiB); larger ones get 413.
	MaxBodyBytes int64
	// Logger receives the component's structured logs.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time

	// IdempotencyTTL is how long the answer to a request with an
	// Idempotency-Key is replayed (default DefaultIdempotencyTTL, 24h;
	// between MinIdempotencyTTL and MaxIdempotencyTTL). A request whose
	// key's record is older is treated as new, its record replaced.
	IdempotencyTTL time.Duration
	// IdempotencySweep is how often the janitor deletes expired
	// idempotency records (default DefaultIdempotencySweep, 5m).
	IdempotencySweep time.Duration
	// IdempotencySweepBatch bounds the records one delete statement of the
	// janitor removes (default DefaultIdempotencySweepBatch, 1000).
	IdempotencySweepBatch int

	// RegionHTTP calls the regions: an *http.Client whose transport
	// presents the global control plane's certificate (mutual TLS). Without
	// it no rollout worker runs: deployments stay PENDING and the calls
	// that need a region answer 503.
	RegionHTTP *http.Client
	// RolloutPoll is how often rollout workers look at the store and at
	// the regions (default 1s).
	RolloutPoll time.Duration
	// RegionTimeout bounds each call to a region (default 10s).
	RegionTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between attempts at a region
	// call that failed (defaults 250ms and 15s).
	RetryMin, RetryMax time.Duration
	// Owner names this replica in the leases that keep two replicas from
	// driving the same rollout (default host name, pid and a random
	// suffix).
	Owner string
	// LeaseTTL is how long a lease outlives its holder's last renewal
	// (default 30s); leases are released at Close.
	LeaseTTL time.Duration
	// SmokeDefinition is the workload of a region's smoke test (POST
	// /v1/regions/{id}/test). Its name and regions are set by the test.
	// Default: DefaultSmokeDefinition().
	SmokeDefinition *api.Definition
	// SmokeTimeout bounds a smoke test (default 45s).
	SmokeTimeout time.Duration
	// OnRegionCall, when set, is called after every apply or delete call
	// to a region (for tests and audits); it must not block.
	OnRegionCall func(RegionCall)

	// TLS, when set, serves the API over HTTPS with it: its Certificates,
	// or its GetCertificate, the hook for certificates that change while
	// the server runs (files reloaded on change, the installation's PKI,
	// or ACME's autocert.Manager.GetCertificate). HTTP/2 is offered unless
	// NextProtos says otherwise.
	TLS *tls.Config
	// AllowPlaintext lets Start serve plain HTTP on an address that is not
	// loopback (behind a proxy that terminates TLS). Without TLS and
	// without it, Start refuses such an address with ErrPlaintext: bearer
	// tokens would cross the network in clear.
	AllowPlaintext bool

	// ReadHeaderTimeout bounds a TLS handshake and the reading of a
	// request's headers (default 10s).
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds the reading of a request's body, from the end of
	// its headers (default 30s): a body not received in time is answered
	// 408 and its connection closed. Answers are not bounded, so
	// long-running and streaming answers are never cut.
	BodyTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long (default
	// 90s).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers (default 64 KiB).
	MaxHeaderBytes int
	// MaxConnsPerClient caps the connections one client address (an IPv4
	// address or an IPv6 /64) may hold open; more are closed as they
	// arrive (default DefaultMaxConnsPerClient; negative: no cap).
	MaxConnsPerClient int
	// MaxConns caps the open connections in all (default: three quarters
	// of the process's file-descriptor limit, at most DefaultMaxConns;
	// negative: no cap).
	MaxConns int
}

// Connection caps' defaults.
const (
	// DefaultMaxConnsPerClient is Config.MaxConnsPerClient's default.
	DefaultMaxConnsPerClient = 128
	// DefaultMaxConns bounds Config.MaxConns's default.
	DefaultMaxConns = 16384
)

// ErrPlaintext is Start's error for plain HTTP on an address that is not
// loopback without Config.AllowPlaintext.
var ErrPlaintext = errors.New("plain HTTP on an address that is not loopback would send bearer tokens in clear")

// DefaultSmokeDefinition is the smoke test's default workload: the
// meridian binary's hidden `smoke` command (an HTTP server on $PORT), one
// instance, checked over TCP on port 8080.
func DefaultSmokeDefinition() api.Definition {
	limit := 1
	return api.Definition{
		Name:         "smoke",
		Type:         api.TypeWeb,
		Command:      []string{"meridian", "smoke"},
		Ports:        []api.Port{{Port: 8080, Protocol: "http"}},
		Scalings:     []api.Scaling{{Min: 1, Max: 1}},
		HealthChecks: []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, GracePeriod: "2s", Interval: "1s", Timeout: "500ms", RestartLimit: &limit}},
	}
}

// Server is a running global control plane.
type Server struct {
	cfg     Config
	log     *slog.Logger
	sealer  *Sealer
	ln      *connlimit.Listener
	http    *http.Server
	handler http.Handler
	metrics *metrics
	engine  *rollout.Engine
	ready   chan struct{}
	errc    chan error
	once    sync.Once

	stopJanitor context.CancelFunc
	janitorDone chan struct{}

	refused refusals

	smokeMu sync.Mutex
	smoking map[string]bool // regions whose smoke test runs here
}

// DefaultDomain is the apps' host suffix when none is configured.
const DefaultDomain = "meridian.localhost"

// Start validates cfg, binds the listener and serves the API in the
// background.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("global: config: Store is required")
	}
	if len(cfg.AdminToken) < 16 {
		return nil, errors.New("global: config: admin token must be at least 16 characters")
	}
	sealer, err := NewSealer(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("global: config: %w", err)
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if err := CheckDomain(cfg.Domain); err != nil {
		return nil, fmt.Errorf("global: config: Domain: %w", err)
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdempotencyTTL == 0 {
		cfg.IdempotencyTTL = DefaultIdempotencyTTL
	}
	if err := CheckIdempotencyTTL(cfg.IdempotencyTTL); err != nil {
		return nil, fmt.Errorf("global: config: IdempotencyTTL: %w", err)
	}
	if cfg.IdempotencySweep <= 0 {
		cfg.IdempotencySweep = DefaultIdempotencySweep
	}
	if cfg.IdempotencySweepBatch <= 0 {
		cfg.IdempotencySweepBatch = DefaultIdempotencySweepBatch
	}
	if len(cfg.Spec.Catalogue.Types) == 0 {
		cfg.Spec.Catalogue = definition.DefaultCatalogue()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:7700"
	}
	if cfg.RolloutPoll <= 0 {
		cfg.RolloutPoll = time.Second
	}
	if cfg.RegionTimeout <= 0 {
		cfg.RegionTimeout = 10 * time.Second
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 250 * time.Millisecond
	}
	if cfg.Images.Transport == nil {
		// One pool of connections to the registries for every
		// resolution, closed with the server.
		cfg.Images.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(15*time.Second, cfg.RetryMin)
	}
	if cfg.Owner == "" {
		host, _ := os.Hostname()
		cfg.Owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), newID("g")[2:10])
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 30 * time.Second
	}
	if cfg.SmokeDefinition == nil {
		d := DefaultSmokeDefinition()
		cfg.SmokeDefinition = &d
	}
	if cfg.SmokeTimeout <= 0 {
		cfg.SmokeTimeout = 45 * time.Second
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.MaxConnsPerClient == 0 {
		cfg.MaxConnsPerClient = DefaultMaxConnsPerClient
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = defaultMaxConns()
	}
	if cfg.TLS != nil && len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil {
		return nil, errors.New("global: config: TLS has no certificate (Certificates, GetCertificate or GetConfigForClient)")
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "global"),
		sealer:  sealer,
		ready:   make(chan struct{}),
		errc:    make(chan error, 1),
		smoking: map[string]bool{},
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = newMetrics(reg)
	if s.engine, err = newEngine(s, reg); err != nil {
		return nil, fmt.Errorf("global: config: %w", err)
	}
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.Handle(rt.Method+" "+rt.Path, s.instrument(rt, rt.handler))
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errNotFound("no route for %s %s", definition.Truncate(r.Method), definition.Quote(r.URL.Path)))
	})
	s.handler = s.boundBodies(mux)

	var lc net.ListenConfig
	tcp, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("global: listen %s: %w", cfg.Listen, err)
	}
	if cfg.TLS == nil && !cfg.AllowPlaintext && !isLoopback(tcp.Addr()) {
		tcp.Close()
		return nil, fmt.Errorf("global: listen %s (%s): %w; serve HTTPS (Config.TLS) or set Config.AllowPlaintext",
			cfg.Listen, tcp.Addr(), ErrPlaintext)
	}
	s.ln = connlimit.NewListener(tcp, connlimit.Config{
		PerAddr: cfg.MaxConnsPerClient, Total: cfg.MaxConns, OnReject: s.connRefused})
	s.metrics.watchConns(reg, s.ln)
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		if tc.MinVersion == 0 {
			tc.MinVersion = tls.VersionTLS12
		}
		s.http.TLSConfig = tc
	}
	go func() {
		var err error
		if cfg.TLS != nil {
			err = s.http.ServeTLS(s.ln, "", "")
		} else {
			err = s.http.Serve(s.ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("global: serve: %w", err)
		}
		close(s.errc)
	}()
	s.engine.Start()
	jctx, stop := context.WithCancel(context.Background())
	s.stopJanitor, s.janitorDone = stop, make(chan struct{})
	go func() {
		defer close(s.janitorDone)
		s.janitor(jctx)
	}()
	close(s.ready)
	s.log.Info("global control plane serving", "url", s.URL(), "owner", cfg.Owner,
		"max_conns_per_client", cfg.MaxConnsPerClient, "max_conns", cfg.MaxConns)
	return s, nil
}

// Handler returns the API's HTTP handler (for tests and fuzzing).
func (s *Server) Handler() http.Handler { return s.handler }

// Addr is the API's bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the API's base URL: https:// when it serves TLS.
func (s *Server) URL() string {
	if s.cfg.TLS != nil {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// Ready is closed once the server accepts requests.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Err reports a fatal serving error; it is closed when the server stops.
func (s *Server) Err() <-chan error { return s.errc }

// Close stops the idempotency janitor, the rollout workers (releasing
// their leases, so another replica resumes at once) and the API, waiting
// up to 5 s for requests in flight. Rollout state is in the store: a new
// server on the same store resumes where this one stopped.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		s.stopJanitor()
		<-s.janitorDone
		s.engine.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = s.http.Shutdown(ctx)
		if t, ok := s.cfg.Images.Transport.(interface{ CloseIdleConnections() }); ok {
			t.CloseIdleConnections()
		}
	})
	return err
}
