package global

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// terminal reports whether a regional deployment's status is final.
func terminal(status string) bool {
	switch status {
	case api.StatusHealthy, api.StatusFailed, api.StatusRolledBack, api.StatusCanceled:
		return true
	}
	return false
}

// observation is what a region said about a service.
type observation struct {
	status regionapi.ServiceStatus
	err    error
}

// depDriver drives one deployment's rollout while its replica holds the
// deployment's lease. Everything it decides is written in one transaction
// per step, fenced by the lease; region calls go through operations.
type depDriver struct {
	e      *engine
	id     string
	orgID  string
	lease  string
	orgNm  string
	failed map[string]map[string]bool // region -> instance ids seen failed
	// announced is set once the timeline says which replica drives.
	announced bool
}

func (e *engine) drive(a store.ActiveDeployment, kicked chan struct{}) {
	d := &depDriver{e: e, id: a.ID, orgID: a.OrgID, lease: "deployment:" + a.ID, failed: map[string]map[string]bool{}}
	e.log.Info("driving deployment", "deployment", a.ID, "owner", e.s.cfg.Owner)
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
		if !e.wait(e.s.cfg.RolloutPoll, kicked) {
			return
		}
		if !e.acquire(e.ctx, d.lease) {
			return
		}
	}
}

// step observes the regions the deployment is progressing in, then decides
// and writes its next state. It reports whether the rollout is over.
func (d *depDriver) step(ctx context.Context) (bool, error) {
	e := d.e
	var dep api.Deployment
	err := e.s.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if dep, err = tx.GetDeployment(ctx, d.orgID, d.id); err != nil {
			return err
		}
		if d.orgNm == "" {
			o, err := tx.GetOrg(ctx, d.orgID)
			if err != nil {
				return err
			}
			d.orgNm = o.Name
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return true, nil // the service was deleted
	}
	if err != nil {
		return false, err
	}
	obs := d.observe(ctx, dep)
	var touched []string
	var over bool
	err = e.s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		touched, over = nil, false
		if err := e.fence(ctx, tx, d.lease); err != nil {
			return err
		}
		st, err := d.load(ctx, tx)
		if errors.Is(err, store.ErrNotFound) {
			over = true
			return nil
		}
		if err != nil {
			return err
		}
		if !st.active {
			over = true
			return nil
		}
		if !d.announced {
			if err := st.event("", api.EventProgress, "rollout driven by replica %s", e.s.cfg.Owner); err != nil {
				return err
			}
		}
		if err := st.advance(obs); err != nil {
			return err
		}
		touched, over = st.touched, st.over
		return nil
	})
	if err != nil {
		return false, err
	}
	d.announced = true
	e.nudge(touched...)
	return over, nil
}

// observe reads the service's status in every region where the deployment
// is progressing, concurrently, each bounded by the region timeout.
func (d *depDriver) observe(ctx context.Context, dep api.Deployment) map[string]observation {
	e := d.e
	out := map[string]observation{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	key := serviceKey(d.orgNm, dep.App, dep.Service)
	for _, rd := range dep.Regional {
		if rd.Status != api.StatusProgressing {
			continue
		}
		var reg api.Region
		err := e.s.cfg.Store.View(ctx, func(tx store.Tx) error {
			var err error
			reg, err = tx.GetRegion(ctx, rd.Region)
			return err
		})
		if err != nil {
			out[rd.Region] = observation{err: err}
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, e.s.cfg.RegionTimeout)
			defer cancel()
			ss, err := e.client(reg).Status(cctx, key)
			result := "ok"
			if err != nil {
				result = errorKind(err)
			}
			e.calls.WithLabelValues(rd.Region, "status", result).Inc()
			mu.Lock()
			out[rd.Region] = observation{status: ss, err: err}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// rollout is one step's view of a deployment inside a write transaction.
type rollout struct {
	d       *depDriver
	ctx     context.Context
	tx      store.Tx
	now     time.Time
	dep     api.Deployment
	key     string
	ops     []store.RegionOp
	active  bool
	touched []string
	over    bool
}

func (d *depDriver) load(ctx context.Context, tx store.Tx) (*rollout, error) {
	dep, err := tx.GetDeployment(ctx, d.orgID, d.id)
	if err != nil {
		return nil, err
	}
	act, err := tx.ListActiveDeployments(ctx, dep.ServiceID)
	if err != nil {
		return nil, err
	}
	ops, err := tx.ListRegionOps(ctx, store.OpFilter{DeploymentID: d.id})
	if err != nil {
		return nil, err
	}
	r := &rollout{d: d, ctx: ctx, tx: tx, now: d.e.s.cfg.Now().UTC(), dep: dep, ops: ops,
		key: serviceKey(d.orgNm, dep.App, dep.Service)}
	for _, a := range act {
		r.active = r.active || a.ID == d.id
	}
	return r, nil
}

func (r *rollout) event(region, typ, format string, args ...any) error {
	return r.tx.AddDeploymentEvent(r.ctx, r.dep.ID, api.DeploymentEvent{At: r.now, Region: region, Type: typ, Message: fmt.Sprintf(format, args...)})
}

func (r *rollout) strategy() api.Strategy {
	if len(r.dep.Regional) > 0 {
		return r.dep.Regional[0].Definition.Strategy
	}
	return api.Strategy{}
}

func (r *rollout) deadline() time.Duration {
	d, err := r.strategy().HealthDeadline.Std()
	if err != nil || d <= 0 {
		return 5 * time.Minute
	}
	return d
}

// order lists the regional deployments in rollout order: canary regions
// first, then the definition's order.
func (r *rollout) order() []int {
	pos := map[string]int{}
	for i, name := range r.dep.Definition.Regions {
		pos[name] = i
	}
	canary := map[string]bool{}
	for _, c := range r.strategy().CanaryRegions {
		canary[c] = true
	}
	idx := make([]int, len(r.dep.Regional))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ra, rb := r.dep.Regional[a].Region, r.dep.Regional[b].Region
		if canary[ra] != canary[rb] {
			if canary[ra] {
				return -1
			}
			return 1
		}
		return pos[ra] - pos[rb]
	})
	return idx
}

func (r *rollout) isCanary(region string) bool {
	return slices.Contains(r.strategy().CanaryRegions, region)
}

func (r *rollout) op(region, purpose string, gen int64) (store.RegionOp, bool) {
	for i := len(r.ops) - 1; i >= 0; i-- {
		o := r.ops[i]
		if o.Region == region && o.Purpose == purpose && (gen == 0 || o.Generation == gen) {
			return o, true
		}
	}
	return store.RegionOp{}, false
}

func (r *rollout) save(i int, status, msg string) error {
	rd := &r.dep.Regional[i]
	rd.Status, rd.Message, rd.UpdatedAt = status, msg, r.now
	return r.tx.UpdateRegionalDeployment(r.ctx, *rd)
}

// advance moves the rollout one step: it records what the regions said,
// handles failures under the strategy, starts regions whose turn came, and
// finishes the deployment when every region is settled.
func (r *rollout) advance(obs map[string]observation) error {
	if r.dep.Status == api.StatusPending {
		r.dep.Status = api.StatusProgressing
		if err := r.tx.SetDeploymentState(r.ctx, r.dep.ID, api.StatusProgressing, "rolling out", true, r.now); err != nil {
			return err
		}
		s := r.strategy()
		if err := r.event("", api.EventProgress, "rollout started: %s, %s, max %d regions at a time, canaries %v, health deadline %s",
			s.Type, s.OnFailure, s.MaxParallelRegions, s.CanaryRegions, s.HealthDeadline); err != nil {
			return err
		}
	}
	canceled := r.dep.Status == api.StatusCanceled
	for i := range r.dep.Regional {
		rd := r.dep.Regional[i]
		var err error
		switch rd.Status {
		case api.StatusApplying:
			err = r.applying(i)
		case api.StatusProgressing:
			err = r.progressing(i, obs[rd.Region])
		}
		if err != nil {
			return err
		}
	}
	if !canceled {
		if err := r.schedule(); err != nil {
			return err
		}
	}
	return r.finish()
}

// applying follows a region whose generation is being sent.
func (r *rollout) applying(i int) error {
	rd := r.dep.Regional[i]
	op, ok := r.op(rd.Region, store.PurposeRollout, rd.Generation)
	if !ok {
		return r.fail(i, fmt.Sprintf("internal: no operation for generation %d", rd.Generation))
	}
	switch op.State {
	case store.OpDone:
		r.dep.Regional[i].StartedAt = &r.now
		if err := r.save(i, api.StatusProgressing, "applied; waiting for instances"); err != nil {
			return err
		}
		return nil
	case store.OpFailed:
		return r.fail(i, op.Message)
	case store.OpSuperseded:
		if err := r.save(i, api.StatusCanceled, op.Message); err != nil {
			return err
		}
		return r.event(rd.Region, api.EventCanceled, "%s", op.Message)
	}
	if r.now.Sub(op.CreatedAt) > r.deadline() {
		msg := fmt.Sprintf("region did not accept generation %d within the health deadline %s", op.Generation, r.deadline())
		if op.Message != "" {
			msg += ": " + op.Message
		}
		return r.fail(i, msg)
	}
	return nil
}

// progressing follows a region that accepted the deployment.
func (r *rollout) progressing(i int, ob observation) error {
	rd := r.dep.Regional[i]
	started := r.now
	if rd.StartedAt != nil {
		started = *rd.StartedAt
	}
	late := r.now.Sub(started) > r.deadline()
	if ob.err != nil {
		var ae *api.Error
		msg := fmt.Sprintf("status unavailable: %v", ob.err)
		if errors.As(ob.err, &ae) && ae.Status == 404 {
			msg = "the region does not know the service yet"
		}
		if late {
			return r.fail(i, fmt.Sprintf("not healthy within the health deadline %s: %s", r.deadline(), msg))
		}
		if msg != rd.Message {
			if err := r.save(i, rd.Status, msg); err != nil {
				return err
			}
			return r.event(rd.Region, api.EventRegionErr, "%s", msg)
		}
		return nil
	}
	ss := ob.status
	if ss.Generation > rd.Generation {
		msg := fmt.Sprintf("the region moved on to generation %d (deployment %s)", ss.Generation, ss.DeploymentID)
		if err := r.save(i, api.StatusCanceled, msg); err != nil {
			return err
		}
		return r.event(rd.Region, api.EventCanceled, "%s", msg)
	}
	if ss.Generation == rd.Generation && ss.DeploymentID == r.dep.ID && ss.Phase == regionapi.PhaseHealthy {
		msg := fmt.Sprintf("%d/%d healthy", ss.Healthy, ss.Wanted)
		if err := r.save(i, api.StatusHealthy, msg); err != nil {
			return err
		}
		return r.event(rd.Region, api.EventHealthy, "version %d healthy: %s", r.dep.Version, msg)
	}
	seen := r.d.failed[rd.Region]
	if seen == nil {
		seen = map[string]bool{}
		r.d.failed[rd.Region] = seen
	}
	for _, in := range append(ss.Instances, ss.Failures...) {
		if in.DeploymentID == r.dep.ID && in.State == regionapi.StateFailed {
			seen[in.ID] = true
		}
	}
	if ss.Wanted > 0 && len(seen) >= ss.Wanted {
		return r.fail(i, fmt.Sprintf("%d instances failed past their restart limit (wanted %d): %s",
			len(seen), ss.Wanted, instanceReasons(ss, r.dep.ID)))
	}
	if late {
		msg := fmt.Sprintf("not healthy within the health deadline %s: %s", r.deadline(), ss.Message)
		if why := instanceReasons(ss, r.dep.ID); why != "" {
			msg += "; " + why
		}
		return r.fail(i, msg)
	}
	msg := ss.Message
	if msg == "" {
		msg = ss.Phase
	}
	if msg != rd.Message {
		if err := r.save(i, rd.Status, msg); err != nil {
			return err
		}
		return r.event(rd.Region, api.EventProgress, "%s", msg)
	}
	return nil
}

// instanceReasons names the instances of a deployment that are not healthy
// and why, from the region's status.
func instanceReasons(ss regionapi.ServiceStatus, depID string) string {
	var parts []string
	seen := map[string]bool{}
	for _, in := range append(ss.Instances, ss.Failures...) {
		if seen[in.ID] {
			continue
		}
		seen[in.ID] = true
		if in.DeploymentID != depID || (in.Healthy && in.State == regionapi.StateRunning) {
			continue
		}
		s := fmt.Sprintf("instance %s on %s is %s", in.ID, in.Machine, in.State)
		if in.Restarts > 0 {
			s += fmt.Sprintf(" after %d restarts", in.Restarts)
		}
		if in.Message != "" {
			s += ": " + in.Message
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// fail records a region's failure and reverts under the strategy's
// on_failure: fail_local reverts this region; rollback_all every region
// that got the new version. A failed canary stops the rollout.
func (r *rollout) fail(i int, reason string) error {
	rd := r.dep.Regional[i]
	if err := r.event(rd.Region, api.EventFailed, "%s", reason); err != nil {
		return err
	}
	if err := r.revert(i, api.StatusFailed, reason); err != nil {
		return err
	}
	all := r.strategy().OnFailure == api.OnFailureAll
	canary := r.isCanary(rd.Region)
	if !all && !canary {
		return nil
	}
	why := fmt.Sprintf("region %s failed", rd.Region)
	if canary {
		why = fmt.Sprintf("canary region %s failed", rd.Region)
	}
	for j, other := range r.dep.Regional {
		if j == i {
			continue
		}
		switch {
		case other.Status == api.StatusPending:
			if err := r.save(j, api.StatusCanceled, "not rolled out: "+why); err != nil {
				return err
			}
			if err := r.event(other.Region, api.EventCanceled, "not rolled out: %s", why); err != nil {
				return err
			}
		case all && (other.Status == api.StatusApplying || other.Status == api.StatusProgressing || other.Status == api.StatusHealthy):
			if err := r.revert(j, api.StatusRolledBack, "rolled back: "+why); err != nil {
				return err
			}
		}
	}
	return nil
}

// revert puts a region back on the service's latest deployment that was
// HEALTHY there (or stops the service there when none was), through a new
// generation, and sets the regional deployment's status.
func (r *rollout) revert(i int, status, reason string) error {
	rd := r.dep.Regional[i]
	prev, err := r.tx.LatestHealthyDeployment(r.ctx, r.dep.OrgID, r.dep.ServiceID, rd.Region, r.dep.Version)
	var op store.RegionOp
	var what string
	switch {
	case errors.Is(err, store.ErrNotFound):
		op, err = r.d.e.newOp(r.ctx, r.tx, r.key, rd.Region, store.PurposeRevert, r.dep.ID, r.dep.OrgID, nil, nil)
		what = "stopping the service there (no earlier deployment was healthy in this region)"
	case err != nil:
		return err
	default:
		var def *api.RegionalDefinition
		for _, p := range prev.Regional {
			if p.Region == rd.Region {
				def = &p.Definition
			}
		}
		op, err = r.d.e.newOp(r.ctx, r.tx, r.key, rd.Region, store.PurposeRevert, r.dep.ID, r.dep.OrgID, &prev, def)
		what = fmt.Sprintf("reverting to version %d (%s)", prev.Version, prev.ID)
	}
	if err != nil {
		return err
	}
	r.ops = append(r.ops, op)
	r.touched = append(r.touched, rd.Region)
	if err := r.save(i, status, reason+"; "+what); err != nil {
		return err
	}
	return r.event(rd.Region, api.EventReverting, "%s with generation %d", what, op.Generation)
}

// schedule starts the regions whose turn came: canaries first (all of them
// must be healthy before the others start), at most max_parallel_regions
// in flight at once (0, or all_at_once: no limit).
func (r *rollout) schedule() error {
	s := r.strategy()
	limit := s.MaxParallelRegions
	if limit <= 0 || s.Type == api.StrategyAllAtOnce {
		limit = len(r.dep.Regional)
	}
	inflight := 0
	canariesDone := true
	for _, rd := range r.dep.Regional {
		if rd.Status == api.StatusApplying || rd.Status == api.StatusProgressing {
			inflight++
		}
		if r.isCanary(rd.Region) && rd.Status != api.StatusHealthy {
			canariesDone = false
		}
	}
	for _, i := range r.order() {
		rd := r.dep.Regional[i]
		if rd.Status != api.StatusPending {
			continue
		}
		if inflight >= limit || (!r.isCanary(rd.Region) && !canariesDone) {
			break
		}
		op, err := r.d.e.newOp(r.ctx, r.tx, r.key, rd.Region, store.PurposeRollout, r.dep.ID, r.dep.OrgID, &r.dep, &rd.Definition)
		if err != nil {
			return err
		}
		r.ops = append(r.ops, op)
		r.dep.Regional[i].Generation = op.Generation
		if err := r.save(i, api.StatusApplying, fmt.Sprintf("applying generation %d", op.Generation)); err != nil {
			return err
		}
		if err := r.event(rd.Region, api.EventApplying, "generation %d allocated; sending it to the region", op.Generation); err != nil {
			return err
		}
		r.touched = append(r.touched, rd.Region)
		inflight++
	}
	return nil
}

// finish ends the rollout once every region is settled and their reverts
// were accepted (or have been pending longer than the health deadline:
// they go on being retried, but the deployment's outcome is known).
func (r *rollout) finish() error {
	for _, rd := range r.dep.Regional {
		if !terminal(rd.Status) {
			return nil
		}
	}
	var stuck []string
	for _, op := range r.ops {
		if op.Purpose == store.PurposeRevert && op.State == store.OpPending {
			if r.now.Sub(op.CreatedAt) <= r.deadline() {
				return nil
			}
			stuck = append(stuck, op.Region)
		}
	}
	// Regions whose revert went through say so.
	for i, rd := range r.dep.Regional {
		if op, ok := r.op(rd.Region, store.PurposeRevert, 0); ok && op.State == store.OpDone && strings.Contains(rd.Message, "; reverting to") {
			if err := r.save(i, rd.Status, strings.Replace(rd.Message, "; reverting to", "; reverted to", 1)); err != nil {
				return err
			}
		}
	}
	status, msg := r.outcome()
	if len(stuck) > 0 {
		msg += fmt.Sprintf("; reverts still pending in %s (retried until the regions answer)", strings.Join(stuck, ", "))
	}
	if err := r.tx.SetDeploymentState(r.ctx, r.dep.ID, status, msg, false, r.now); err != nil {
		return err
	}
	if err := r.event("", api.EventFinished, "%s: %s", status, msg); err != nil {
		return err
	}
	r.over = true
	return nil
}

// outcome computes a settled deployment's status from its regions.
func (r *rollout) outcome() (string, string) {
	if r.dep.Status == api.StatusCanceled {
		return api.StatusCanceled, r.dep.Message
	}
	var healthy, failed, rolled []string
	var reasons []string
	for _, rd := range r.dep.Regional {
		switch rd.Status {
		case api.StatusHealthy:
			healthy = append(healthy, rd.Region)
		case api.StatusFailed:
			failed = append(failed, rd.Region)
			reasons = append(reasons, rd.Region+": "+rd.Message)
		case api.StatusRolledBack:
			rolled = append(rolled, rd.Region)
		}
	}
	n := len(r.dep.Regional)
	switch {
	case len(healthy) == n:
		return api.StatusHealthy, fmt.Sprintf("healthy in %d of %d regions", n, n)
	case len(healthy) > 0:
		return api.StatusDegraded, fmt.Sprintf("healthy in %s; failed in %s (%s)",
			strings.Join(healthy, ", "), strings.Join(failed, ", "), strings.Join(reasons, "; "))
	case len(rolled) > 0:
		return api.StatusError, fmt.Sprintf("rolled back everywhere (%s) because %s failed: %s",
			strings.Join(rolled, ", "), strings.Join(failed, ", "), strings.Join(reasons, "; "))
	case len(failed) > 0:
		return api.StatusError, fmt.Sprintf("no region runs version %d: %s", r.dep.Version, strings.Join(reasons, "; "))
	}
	return api.StatusError, fmt.Sprintf("no region runs version %d", r.dep.Version)
}
