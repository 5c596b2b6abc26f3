package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// driver drives one deployment's rollout while its replica holds the
// deployment's lease: each step observes the regions, then loads the
// state, decides and applies the decision in one transaction fenced by
// the lease. Region calls go through operations.
type driver struct {
	e     *Engine
	id    string
	orgID string
	lease string
	org   string // the organization's name, once read
	// failed is the memory of failed instances (State.Failed).
	failed map[string]map[string]bool
	// previous is State.Previous, read once: the deployments it names are
	// older than this one, and their regional deployments no longer change
	// once this one exists (creating it ended their rollouts).
	previous map[string]Target
	// announced is set once the timeline says which replica drives.
	announced bool
}

func (e *Engine) drive(a store.ActiveDeployment, kicked chan struct{}) {
	d := &driver{e: e, id: a.ID, orgID: a.OrgID, lease: "deployment:" + a.ID, failed: map[string]map[string]bool{}}
	e.log.Info("driving deployment", "deployment", a.ID, "owner", e.cfg.Owner)
	for {
		done, err := d.step(e.ctx)
		switch {
		case errors.Is(err, errLeaseLost):
			e.log.Warn("lease lost; another replica drives the deployment", "deployment", a.ID)
			e.mu.Lock()
			delete(e.held, d.lease)
			e.mu.Unlock()
			return
		case err != nil && e.ctx.Err() == nil:
			e.log.Warn("rollout step", "deployment", a.ID, "err", err)
		}
		if done {
			e.release(d.lease)
			e.log.Info("deployment rollout finished", "deployment", a.ID)
			return
		}
		if !e.wait(e.cfg.Poll, kicked) {
			return
		}
		if !e.acquire(e.ctx, d.lease) {
			return
		}
	}
}

// step observes the regions the deployment is progressing in, then decides
// and writes its next state. It reports whether the rollout is over.
func (d *driver) step(ctx context.Context) (bool, error) {
	e := d.e
	var dep api.Deployment
	err := e.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if dep, err = tx.GetDeployment(ctx, d.orgID, d.id); err != nil {
			return err
		}
		if d.org == "" {
			o, err := tx.GetOrg(ctx, d.orgID)
			if err != nil {
				return err
			}
			d.org = o.Name
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return true, nil // the service was deleted
	}
	if err != nil {
		return false, err
	}
	return d.decide(ctx, d.observe(ctx, dep))
}

// decide loads the state, decides and applies the decision in one
// transaction fenced by the lease, and reports whether the rollout is
// over.
func (d *driver) decide(ctx context.Context, obs map[string]Observation) (bool, error) {
	e := d.e
	var touched []string
	var remember []RememberFailed
	var over bool
	err := e.cfg.Store.Update(ctx, func(tx store.Tx) error {
		touched, remember, over = nil, nil, false
		if err := e.fence(ctx, tx, d.lease); err != nil {
			return err
		}
		dep, err := tx.GetDeployment(ctx, d.orgID, d.id)
		if errors.Is(err, store.ErrNotFound) {
			over = true
			return nil
		}
		if err != nil {
			return err
		}
		act, err := tx.ListActiveDeployments(ctx, dep.ServiceID)
		if err != nil {
			return err
		}
		st := State{Deployment: dep, Failed: d.failed}
		for _, a := range act {
			st.Active = st.Active || a.ID == d.id
		}
		if !st.Active {
			over = true
			return nil
		}
		if st.Previous = d.previous; st.Previous == nil {
			if st.Previous, err = loadPrevious(ctx, tx, dep); err != nil {
				return err
			}
		}
		if err := load(ctx, tx, d.org, &st); err != nil {
			return err
		}
		now := e.cfg.Now().UTC()
		actions := Decide(st, obs, now)
		if !d.announced {
			actions = append([]Action{AddEvent{Type: api.EventProgress, Message: "rollout driven by replica " + e.cfg.Owner}}, actions...)
		}
		if touched, err = apply(ctx, tx, d.org, dep, now, actions); err != nil {
			return err
		}
		d.previous = st.Previous
		for _, a := range actions {
			if r, ok := a.(RememberFailed); ok {
				remember = append(remember, r)
			}
		}
		over = Finished(actions)
		return nil
	})
	if err != nil {
		return false, err
	}
	d.announced = true
	for _, r := range remember {
		if d.failed[r.Region] == nil {
			d.failed[r.Region] = map[string]bool{}
		}
		for _, id := range r.Instances {
			d.failed[r.Region][id] = true
		}
	}
	e.Nudge(touched...)
	return over, nil
}

// observe reads the service's status in every region where the deployment
// is progressing, concurrently, each bounded by the region timeout.
func (d *driver) observe(ctx context.Context, dep api.Deployment) map[string]Observation {
	e := d.e
	out := map[string]Observation{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	key := regionapi.ServiceKey(d.org, dep.App, dep.Service)
	for _, rd := range dep.Regional {
		if rd.Status != api.StatusProgressing {
			continue
		}
		var reg api.Region
		err := e.cfg.Store.View(ctx, func(tx store.Tx) error {
			var err error
			reg, err = tx.GetRegion(ctx, rd.Region)
			return err
		})
		if err != nil {
			out[rd.Region] = Observation{Err: err}
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, e.cfg.RegionTimeout)
			defer cancel()
			ss, err := e.Client(reg).Status(cctx, key)
			result := "ok"
			if err != nil {
				result = errorKind(err)
			}
			e.calls.WithLabelValues(rd.Region, "status", result).Inc()
			mu.Lock()
			out[rd.Region] = Observation{Status: ss, Err: err}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// load reads a deployment's operations and its service's generations into
// st, in tx.
func load(ctx context.Context, tx store.Tx, org string, st *State) error {
	dep := st.Deployment
	ops, err := tx.ListRegionOps(ctx, store.OpFilter{DeploymentID: dep.ID})
	if err != nil {
		return err
	}
	srs, err := tx.ServiceRegions(ctx, regionapi.ServiceKey(org, dep.App, dep.Service))
	if err != nil {
		return err
	}
	st.Ops, st.Generations = ops, map[string]int64{}
	for _, sr := range srs {
		st.Generations[sr.Region] = sr.Generation
	}
	return nil
}

// loadPrevious reads, for each region of a deployment, the service's
// latest earlier deployment that was HEALTHY there.
func loadPrevious(ctx context.Context, tx store.Tx, dep api.Deployment) (map[string]Target, error) {
	out := map[string]Target{}
	for _, rd := range dep.Regional {
		prev, err := tx.LatestHealthyDeployment(ctx, dep.OrgID, dep.ServiceID, rd.Region, dep.Version)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		found := false
		for _, p := range prev.Regional {
			if p.Region == rd.Region {
				out[rd.Region] = Target{DeploymentID: prev.ID, Version: prev.Version, Definition: p.Definition}
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("deployment %s, healthy in %s, has no regional deployment there", prev.ID, rd.Region)
		}
	}
	return out, nil
}

// errGenerationMoved fails a transaction whose decision numbered an
// operation with a generation another writer took meanwhile; the step is
// decided again.
var errGenerationMoved = errors.New("the service's generation moved while deciding")

// apply writes a decision's actions in tx, in order, and returns the
// regions given new operations.
func apply(ctx context.Context, tx store.Tx, org string, dep api.Deployment, now time.Time, actions []Action) ([]string, error) {
	dep.Regional = slices.Clone(dep.Regional)
	regional := map[string]*api.RegionalDeployment{}
	for i := range dep.Regional {
		regional[dep.Regional[i].Region] = &dep.Regional[i]
	}
	var touched []string
	for _, a := range actions {
		var err error
		switch a := a.(type) {
		case SetDeployment:
			err = tx.SetDeploymentState(ctx, dep.ID, a.Status, a.Message, a.Active, now)
		case SetRegion:
			rd, ok := regional[a.Region]
			if !ok {
				return nil, fmt.Errorf("deployment %s has no region %q", dep.ID, a.Region)
			}
			rd.Status, rd.Message, rd.Generation, rd.StartedAt, rd.UpdatedAt = a.Status, a.Message, a.Generation, a.StartedAt, now
			err = tx.UpdateRegionalDeployment(ctx, *rd)
		case AddEvent:
			err = tx.AddDeploymentEvent(ctx, dep.ID, api.DeploymentEvent{At: now, Region: a.Region, Type: a.Type, Message: a.Message})
		case CreateOp:
			var op store.RegionOp
			op, err = writeOp(ctx, tx, now, Op{Org: org, App: dep.App, Service: dep.Service, Region: a.Region, Purpose: a.Purpose,
				DeploymentID: dep.ID, OrgID: dep.OrgID, Target: a.Target})
			if err == nil && op.Generation != a.Generation {
				err = fmt.Errorf("%w: %s in %s got generation %d, decided %d", errGenerationMoved, op.ServiceKey, a.Region, op.Generation, a.Generation)
			}
			touched = append(touched, a.Region)
		case RememberFailed:
			// The driver's memory, kept once the transaction commits.
		default:
			err = fmt.Errorf("unknown action %T", a)
		}
		if err != nil {
			return nil, err
		}
	}
	return touched, nil
}

// Cancel writes a user's cancellation of a running deployment in tx (see
// the pure Cancel) and returns the regions being reverted; the caller
// checks that the deployment runs, and nudges those regions (Nudge) and
// the deployment's driver (NudgeDeployment) once tx commits.
func (e *Engine) Cancel(ctx context.Context, tx store.Tx, org string, dep api.Deployment) ([]string, error) {
	previous, err := loadPrevious(ctx, tx, dep)
	if err != nil {
		return nil, err
	}
	st := State{Deployment: dep, Active: true, Previous: previous}
	if err := load(ctx, tx, org, &st); err != nil {
		return nil, err
	}
	now := e.cfg.Now().UTC()
	return apply(ctx, tx, org, dep, now, Cancel(st, now))
}
