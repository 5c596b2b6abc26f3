package global

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

// engine runs the rollout workers: a manager that starts a driver for each
// active deployment whose lease it wins, and one operation worker per
// region that sends the region operations written in the store.
type engine struct {
	s   *Server
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

func newEngine(s *Server, reg prometheus.Registerer) *engine {
	ctx, cancel := context.WithCancel(context.Background())
	e := &engine{
		s:           s,
		log:         s.log.With("part", "rollout"),
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
	reg.MustRegister(e.calls, e.runs)
	return e
}

// enabled reports whether region calls can be made at all.
func (e *engine) enabled() bool { return e.s.cfg.RegionHTTP != nil }

func (e *engine) start() {
	if !e.enabled() {
		e.log.Warn("no region client configured (Config.RegionHTTP): rollouts stay PENDING and region calls are refused")
		return
	}
	e.wg.Add(2)
	go func() {
		defer e.wg.Done()
		e.manage()
	}()
	go func() {
		defer e.wg.Done()
		e.announcePeers()
	}()
}

// stop ends every worker and releases the leases they held, so another
// replica takes over at once instead of after the leases expire.
func (e *engine) stop() {
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
	err := e.s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		for _, n := range names {
			if err := tx.ReleaseLease(ctx, n, e.s.cfg.Owner); err != nil {
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

// nudge wakes the manager (a new deployment) and the workers of regions
// with new operations.
func (e *engine) nudge(regions ...string) {
	kick(e.kickManager)
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range regions {
		if ch, ok := e.workers[r]; ok {
			kick(ch)
		}
	}
}

func (e *engine) nudgeDeployment(id string) {
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
func (e *engine) wait(d time.Duration, kicked <-chan struct{}) bool {
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
func (e *engine) acquire(ctx context.Context, name string) bool {
	var ok bool
	err := e.s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		ok, err = tx.AcquireLease(ctx, name, e.s.cfg.Owner, e.s.cfg.Now(), e.s.cfg.LeaseTTL)
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

func (e *engine) release(name string) {
	e.mu.Lock()
	delete(e.held, name)
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.s.cfg.Store.Update(ctx, func(tx store.Tx) error { return tx.ReleaseLease(ctx, name, e.s.cfg.Owner) }); err != nil {
		e.log.Warn("releasing lease", "lease", name, "err", err)
	}
}

// fence fails unless this replica holds the lease: writes of a driver or
// worker go in the same transaction, so a replica that lost its lease
// never writes over the new holder's state.
func (e *engine) fence(ctx context.Context, tx store.Tx, name string) error {
	owner, err := tx.LeaseOwner(ctx, name, e.s.cfg.Now())
	if err != nil {
		return err
	}
	if owner != e.s.cfg.Owner {
		return fmt.Errorf("%w: %s is held by %q", errLeaseLost, name, owner)
	}
	return nil
}

var errLeaseLost = errors.New("lease lost")

// manage starts drivers for active deployments and workers for regions.
func (e *engine) manage() {
	for {
		e.scan()
		if !e.wait(e.s.cfg.RolloutPoll, e.kickManager) {
			return
		}
	}
}

func (e *engine) scan() {
	ctx := e.ctx
	var active []store.ActiveDeployment
	var regions []api.Region
	err := e.s.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if active, err = tx.ListActiveDeployments(ctx, ""); err != nil {
			return err
		}
		// Skip the deployments another live replica drives: trying their
		// leases would only cost write transactions.
		now := e.s.cfg.Now()
		free := active[:0]
		for _, a := range active {
			owner, err := tx.LeaseOwner(ctx, "deployment:"+a.ID, now)
			if err != nil {
				return err
			}
			if owner == "" || owner == e.s.cfg.Owner {
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
		_, running := e.workers[r.ID]
		if !running {
			ch := make(chan struct{}, 1)
			e.workers[r.ID] = ch
			e.wg.Add(1)
			e.runs.WithLabelValues("region").Inc()
			go func() {
				defer e.wg.Done()
				defer e.runs.WithLabelValues("region").Dec()
				e.opWorker(r.ID, ch)
			}()
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
		e.wg.Add(1)
		e.runs.WithLabelValues("deployment").Inc()
		go func() {
			defer e.wg.Done()
			defer e.runs.WithLabelValues("deployment").Dec()
			defer func() {
				e.mu.Lock()
				delete(e.drivers, a.ID)
				e.mu.Unlock()
			}()
			e.drive(a, ch)
		}()
	}
}

// allRegions reads the whole region registry.
func allRegions(ctx context.Context, tx store.Tx) ([]api.Region, error) {
	return api.All(func(o api.ListOptions) (api.List[api.Region], error) {
		items, next, err := tx.ListRegions(ctx, store.Page{Limit: o.Limit, Token: o.PageToken})
		return api.List[api.Region]{Items: items, NextPageToken: next}, err
	})
}

// client is a region API client for a registered region.
func (e *engine) client(r api.Region) *regionapi.Client {
	return regionapi.NewClient(r.URL, e.s.cfg.RegionHTTP)
}

// backoff is the delay before retry number attempt (from 1) of a region
// call, with jitter.
func (e *engine) backoff(attempt int) time.Duration {
	d := e.s.cfg.RetryMin << min(attempt-1, 20)
	if d > e.s.cfg.RetryMax || d <= 0 {
		d = e.s.cfg.RetryMax
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
