package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// Config is what the engine needs from the global control plane.
type Config struct {
	// Store holds the rollouts, their operations and the leases.
	Store store.Store
	// Now is the clock.
	Now func() time.Time
	// RegionHTTP calls the regions over mutual TLS. Without it the engine
	// runs no worker (see Engine.Enabled).
	RegionHTTP *http.Client
	// Poll is how often workers look at the store and at the regions.
	Poll time.Duration
	// RegionTimeout bounds each call to a region.
	RegionTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between attempts at a region
	// call that failed.
	RetryMin, RetryMax time.Duration
	// Owner names this replica in the leases.
	Owner string
	// LeaseTTL is how long a lease outlives its holder's last renewal.
	LeaseTTL time.Duration
	// Secrets unseals the secrets an apply's definition names (its env's
	// and its registry secret), by secret name.
	Secrets func(ctx context.Context, orgID string, def api.RegionalDefinition) (map[string]string, error)
	// Logger receives the engine's logs (default: discarded).
	Logger *slog.Logger
	// Metrics registers the engine's metrics (default: not registered).
	Metrics prometheus.Registerer
	// OnRegionCall, when set, is called after every apply or delete call
	// to a region; it must not block.
	OnRegionCall func(RegionCall)
}

// RegionCall describes one answered or failed call to a region, for
// Config.OnRegionCall.
type RegionCall struct {
	Region     string
	ServiceKey string
	Kind       string // store.OpApply | store.OpDelete
	Purpose    string // store.Purpose*
	Generation int64
	// Applied is the region's answer to an apply: true the first time a
	// generation is applied, false when it already was.
	Applied bool
	Err     error
	At      time.Time
}

// Engine runs the rollout workers: a manager that starts a driver for each
// active deployment whose lease it wins, one operation worker per region
// that sends the region operations written in the store, and the peers
// announcer.
type Engine struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	kickManager chan struct{}

	mu      sync.Mutex
	drivers map[string]chan struct{} // deployment id -> kick
	workers map[string]chan struct{} // region -> kick
	held    map[string]bool          // leases this replica holds

	calls *prometheus.CounterVec
	runs  *prometheus.GaugeVec
}

// New checks cfg and returns an engine; Start starts its workers.
func New(cfg Config) (*Engine, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("rollout: config: Store is required")
	case cfg.Now == nil:
		return nil, errors.New("rollout: config: Now is required")
	case cfg.Owner == "":
		return nil, errors.New("rollout: config: Owner is required")
	case cfg.Secrets == nil:
		return nil, errors.New("rollout: config: Secrets is required")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Poll", cfg.Poll}, {"RegionTimeout", cfg.RegionTimeout}, {"RetryMin", cfg.RetryMin}, {"RetryMax", cfg.RetryMax}, {"LeaseTTL", cfg.LeaseTTL}} {
		if d.v <= 0 {
			return nil, fmt.Errorf("rollout: config: %s must be positive, not %s", d.name, d.v)
		}
	}
	if cfg.RetryMax < cfg.RetryMin {
		return nil, fmt.Errorf("rollout: config: RetryMax %s is below RetryMin %s", cfg.RetryMax, cfg.RetryMin)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg:         cfg,
		log:         cfg.Logger,
		ctx:         ctx,
		cancel:      cancel,
		kickManager: make(chan struct{}, 1),
		drivers:     map[string]chan struct{}{},
		workers:     map[string]chan struct{}{},
		held:        map[string]bool{},
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meridian", Subsystem: "global", Name: "region_calls_total",
			Help: "Calls to regions by region, kind (apply, delete, status) and result (ok, applied, stale, refused, error).",
		}, []string{"region", "kind", "result"}),
		runs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "meridian", Subsystem: "global", Name: "rollout_workers",
			Help: "Rollout workers this replica runs, by kind (deployment, region).",
		}, []string{"kind"}),
	}
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(e.calls); err != nil {
			cancel()
			return nil, fmt.Errorf("rollout: registering metrics: %w", err)
		}
		if err := cfg.Metrics.Register(e.runs); err != nil {
			cancel()
			return nil, fmt.Errorf("rollout: registering metrics: %w", err)
		}
	}
	return e, nil
}

// Enabled reports whether region calls can be made at all.
func (e *Engine) Enabled() bool { return e.cfg.RegionHTTP != nil }

// Context is the engine's lifetime: canceled by Close.
func (e *Engine) Context() context.Context { return e.ctx }

// Start starts the workers, unless no region client is configured.
func (e *Engine) Start() {
	if !e.Enabled() {
		e.log.Warn("no region client configured (Config.RegionHTTP): rollouts stay PENDING and region calls are refused")
		return
	}
	e.wg.Go(e.manage)
	e.wg.Go(e.announcePeers)
}

// Close ends every worker and releases the leases they held, so another
// replica takes over at once instead of after the leases expire.
func (e *Engine) Close() {
	e.cancel()
	e.wg.Wait()
	e.mu.Lock()
	names := make([]string, 0, len(e.held))
	for n := range e.held {
		names = append(names, n)
	}
	e.held = map[string]bool{}
	e.mu.Unlock()
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.cfg.Store.Update(ctx, func(tx store.Tx) error {
		for _, n := range names {
			if err := tx.ReleaseLease(ctx, n, e.cfg.Owner); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.log.Warn("releasing leases", "err", err)
	}
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Nudge wakes the manager (a new deployment) and the workers of regions
// with new operations.
func (e *Engine) Nudge(regions ...string) {
	kick(e.kickManager)
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range regions {
		if ch, ok := e.workers[r]; ok {
			kick(ch)
		}
	}
}

// NudgeDeployment wakes the driver of a deployment, if this replica runs
// one.
func (e *Engine) NudgeDeployment(id string) {
	if id == "" {
		return
	}
	e.mu.Lock()
	ch, ok := e.drivers[id]
	e.mu.Unlock()
	if ok {
		kick(ch)
	}
}

// wait sleeps for d, or until kicked or stopped (false).
func (e *Engine) wait(d time.Duration, kicked <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-e.ctx.Done():
		return false
	case <-kicked:
		return true
	case <-t.C:
		return true
	}
}

// acquire takes or renews a lease for this replica.
func (e *Engine) acquire(ctx context.Context, name string) bool {
	var ok bool
	err := e.cfg.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		ok, err = tx.AcquireLease(ctx, name, e.cfg.Owner, e.cfg.Now(), e.cfg.LeaseTTL)
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("lease", "lease", name, "err", err)
		}
		ok = false
	}
	e.mu.Lock()
	if ok {
		e.held[name] = true
	} else {
		delete(e.held, name)
	}
	e.mu.Unlock()
	return ok
}

func (e *Engine) release(name string) {
	e.mu.Lock()
	delete(e.held, name)
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.cfg.Store.Update(ctx, func(tx store.Tx) error { return tx.ReleaseLease(ctx, name, e.cfg.Owner) }); err != nil {
		e.log.Warn("releasing lease", "lease", name, "err", err)
	}
}

// fence fails unless this replica holds the lease: writes of a driver or
// worker go in the same transaction, so a replica that lost its lease
// never writes over the new holder's state.
func (e *Engine) fence(ctx context.Context, tx store.Tx, name string) error {
	owner, err := tx.LeaseOwner(ctx, name, e.cfg.Now())
	if err != nil {
		return err
	}
	if owner != e.cfg.Owner {
		return fmt.Errorf("%w: %s is held by %q", errLeaseLost, name, owner)
	}
	return nil
}

var errLeaseLost = errors.New("lease lost")

// manage starts drivers for active deployments and workers for regions.
func (e *Engine) manage() {
	for {
		e.scan()
		if !e.wait(e.cfg.Poll, e.kickManager) {
			return
		}
	}
}

func (e *Engine) scan() {
	ctx := e.ctx
	var active []store.ActiveDeployment
	var regions []api.Region
	err := e.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if active, err = tx.ListActiveDeployments(ctx, ""); err != nil {
			return err
		}
		// Skip the deployments another live replica drives: trying their
		// leases would only cost write transactions.
		now := e.cfg.Now()
		free := active[:0]
		for _, a := range active {
			owner, err := tx.LeaseOwner(ctx, "deployment:"+a.ID, now)
			if err != nil {
				return err
			}
			if owner == "" || owner == e.cfg.Owner {
				free = append(free, a)
			}
		}
		active = free
		regions, err = allRegions(ctx, tx)
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("rollout scan", "err", err)
		}
		return
	}
	for _, r := range regions {
		e.mu.Lock()
		if _, running := e.workers[r.ID]; !running {
			ch := make(chan struct{}, 1)
			e.workers[r.ID] = ch
			e.runs.WithLabelValues("region").Inc()
			e.wg.Go(func() {
				defer e.runs.WithLabelValues("region").Dec()
				e.opWorker(r.ID, ch)
			})
		}
		e.mu.Unlock()
	}
	for _, a := range active {
		e.mu.Lock()
		_, running := e.drivers[a.ID]
		e.mu.Unlock()
		if running || !e.acquire(ctx, "deployment:"+a.ID) {
			continue
		}
		ch := make(chan struct{}, 1)
		e.mu.Lock()
		e.drivers[a.ID] = ch
		e.mu.Unlock()
		e.runs.WithLabelValues("deployment").Inc()
		e.wg.Go(func() {
			defer e.runs.WithLabelValues("deployment").Dec()
			defer func() {
				e.mu.Lock()
				delete(e.drivers, a.ID)
				e.mu.Unlock()
			}()
			e.drive(a, ch)
		})
	}
}

// allRegions reads the whole region registry.
func allRegions(ctx context.Context, tx store.Tx) ([]api.Region, error) {
	return api.All(func(o api.ListOptions) (api.List[api.Region], error) {
		items, next, err := tx.ListRegions(ctx, store.Page{Limit: o.Limit, Token: o.PageToken})
		return api.List[api.Region]{Items: items, NextPageToken: next}, err
	})
}

// Client is a region API client for a registered region.
func (e *Engine) Client(r api.Region) *regionapi.Client {
	return regionapi.NewClient(r.URL, e.cfg.RegionHTTP)
}

// backoff is the delay before retry number attempt (from 1) of a region
// call, with jitter.
func (e *Engine) backoff(attempt int) time.Duration {
	d := e.cfg.RetryMin << min(attempt-1, 20)
	if d > e.cfg.RetryMax || d <= 0 {
		d = e.cfg.RetryMax
	}
	return d/2 + rand.N(d/2+1)
}

// errorKind classifies a region call's error: stale (409: a newer
// generation is there), refused (another 4xx: sending it again cannot
// help), or transient (anything else: retried with backoff).
func errorKind(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusConflict:
			return "stale"
		case ae.Status == http.StatusUnauthorized, ae.Status == http.StatusForbidden,
			ae.Status == http.StatusRequestTimeout, ae.Status == http.StatusTooManyRequests:
			return "error"
		case ae.Status >= 400 && ae.Status < 500:
			return "refused"
		}
	}
	return "error"
}

// addEvent appends an event, ignoring a deployment deleted meanwhile.
func addEvent(ctx context.Context, tx store.Tx, depID string, ev api.DeploymentEvent) error {
	if depID == "" {
		return nil
	}
	err := tx.AddDeploymentEvent(ctx, depID, ev)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
