// Package global is Meridian's global control plane: the public REST API
// under /v1, backed by the store, with organizations, API tokens, apps,
// services, deployments, secrets and the region registry. It is the only
// component users talk to; regions never need it to keep running.
//
// The package follows etcd's embed style: Start(ctx, cfg) returns a running
// Server; Ready, Err and Close manage it. The binary and the tests use the
// same entry point.
package global

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-run/meridian/spec"
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
	// Domain is the suffix of apps' public host names: <app>.<org>.<Domain>.
	Domain string
	// Spec holds the instance type catalogue and limits used to validate
	// and derive definitions.
	Spec spec.Options
	// MaxBodyBytes bounds request bodies (default 1 MiB); larger ones get 413.
	MaxBodyBytes int64
	// Logger receives the component's structured logs.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is a running global control plane.
type Server struct {
	cfg     Config
	log     *slog.Logger
	sealer  *Sealer
	ln      net.Listener
	http    *http.Server
	handler http.Handler
	metrics *metrics
	ready   chan struct{}
	errc    chan error
	once    sync.Once
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
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.Spec.Catalogue.Types) == 0 {
		cfg.Spec.Catalogue = spec.DefaultCatalogue()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:7700"
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "global"),
		sealer: sealer,
		ready:  make(chan struct{}),
		errc:   make(chan error, 1),
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = newMetrics(reg)
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.Handle(rt.Method+" "+rt.Path, s.instrument(rt, rt.handler))
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errNotFound("no route for %s %s", r.Method, r.URL.Path))
	})
	s.handler = mux

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("global: listen %s: %w", cfg.Listen, err)
	}
	s.ln = ln
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	go func() {
		err := s.http.Serve(ln)
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("global: serve: %w", err)
		}
		close(s.errc)
	}()
	close(s.ready)
	s.log.Info("global control plane serving", "addr", ln.Addr().String())
	return s, nil
}

// Handler returns the API's HTTP handler (for tests and fuzzing).
func (s *Server) Handler() http.Handler { return s.handler }

// Addr is the API's bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the API's base URL.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Ready is closed once the server accepts requests.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Err reports a fatal serving error; it is closed when the server stops.
func (s *Server) Err() <-chan error { return s.errc }

// Close stops the server gracefully, waiting up to 5 s for requests in
// flight.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = s.http.Shutdown(ctx)
	})
	return err
}
