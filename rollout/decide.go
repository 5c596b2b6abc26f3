package rollout

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// State is one deployment's rollout as the store holds it, read in the
// transaction that writes the decision, plus the driver's memory of failed
// instances.
type State struct {
	// Deployment is the deployment with its regional deployments.
	Deployment api.Deployment
	// Active is whether the store still lists the deployment as driven. A
	// deployment that is not active (finished, superseded, canceled with
	// nothing left to revert) gets no decision.
	Active bool
	// Ops are the deployment's region operations, oldest first.
	Ops []store.RegionOp
	// Generations is the last generation allocated for the service in
	// each region (absent: none yet). Decide numbers the operations it
	// creates from it.
	Generations map[string]int64
	// Previous is, per region, the service's latest earlier deployment
	// that was HEALTHY there: what a revert puts back. A region absent
	// from it has none, and a revert stops the service there.
	Previous map[string]Target
	// Failed is, per region, the instances of this deployment seen failed
	// past their restart limit (the driver's memory; see RememberFailed).
	Failed map[string]map[string]bool
}

// Target is a deployment to apply to a region.
type Target struct {
	DeploymentID string
	Version      int
	Definition   api.RegionalDefinition
}

// Observation is what a region said about the service in one step: its
// status, or why it could not be read.
type Observation struct {
	Status regionapi.ServiceStatus
	Err    error
}

// Action is one write of a decision. The engine applies a decision's
// actions in order, in one transaction fenced by the deployment's lease.
type Action interface{ action() }

// SetDeployment sets the deployment's status and message, and whether it
// is still driven: Active false ends the rollout.
type SetDeployment struct {
	Status, Message string
	Active          bool
}

// SetRegion sets a regional deployment's status, message, generation and
// start time (the values after the action, not changes).
type SetRegion struct {
	Region, Status, Message string
	Generation              int64
	StartedAt               *time.Time
}

// AddEvent appends an event to the deployment's timeline (Region "" for
// the whole deployment).
type AddEvent struct {
	Region, Type, Message string
}

// CreateOp writes a region operation with the next generation of the
// service in the region, which Decide computes from State.Generations:
// the engine fails the transaction if the store allocates another one.
// Target nil deletes the service in the region.
type CreateOp struct {
	Region     string
	Purpose    string // store.PurposeRollout or store.PurposeRevert
	Generation int64
	Target     *Target
}

// RememberFailed adds instances seen failed past their restart limit to
// the driver's memory (State.Failed); it writes nothing to the store.
type RememberFailed struct {
	Region    string
	Instances []string
}

func (SetDeployment) action()  {}
func (SetRegion) action()      {}
func (AddEvent) action()       {}
func (CreateOp) action()       {}
func (RememberFailed) action() {}

// Finished reports whether actions end the rollout.
func Finished(actions []Action) bool {
	for _, a := range actions {
		if s, ok := a.(SetDeployment); ok && !s.Active {
			return true
		}
	}
	return false
}

// Terminal reports whether a regional deployment's status is final.
func Terminal(status string) bool {
	switch status {
	case api.StatusHealthy, api.StatusFailed, api.StatusRolledBack, api.StatusCanceled:
		return true
	}
	return false
}

// DefaultHealthDeadline is a region's health deadline when the strategy
// sets none.
const DefaultHealthDeadline = 5 * time.Minute

// Decide moves a rollout one step: it records what the regions said,
// handles failures under the strategy, starts the regions whose turn came,
// and finishes the deployment once every region is settled. It is a pure
// function: it reads no clock and does no I/O, and does not modify st. A
// region that is PROGRESSING but absent from obs is not judged this step.
func Decide(st State, obs map[string]Observation, now time.Time) []Action {
	if !st.Active {
		return nil
	}
	d := newDecider(st, now)
	d.advance(obs)
	return d.out
}

// Cancel is a user's cancellation of a running deployment: regions not
// reached yet are canceled, and regions that got the new version are
// reverted to their previous deployment. The deployment stays active
// while reverts are pending, so that its driver follows them. Like Decide
// it is pure; the caller checks that the deployment is running.
func Cancel(st State, now time.Time) []Action {
	d := newDecider(st, now)
	var reverting []string
	for i, rd := range d.dep.Regional {
		switch rd.Status {
		case api.StatusPending:
			d.save(i, api.StatusCanceled, "canceled before it reached the region")
		case api.StatusApplying, api.StatusProgressing, api.StatusHealthy:
			d.revert(i, api.StatusCanceled, "canceled")
			reverting = append(reverting, rd.Region)
		}
	}
	msg := "canceled by the user"
	if len(reverting) > 0 {
		msg += "; reverting " + strings.Join(reverting, ", ")
	}
	d.setDeployment(api.StatusCanceled, msg, len(reverting) > 0)
	d.event("", api.EventCanceled, "%s", msg)
	return d.out
}

// decider is one decision: a working copy of the state that each action
// also updates, so later rules see earlier ones' effects.
type decider struct {
	now      time.Time
	dep      api.Deployment
	ops      []store.RegionOp
	gens     map[string]int64
	prev     map[string]Target
	failed   map[string]map[string]bool
	strategy api.Strategy
	deadline time.Duration
	out      []Action
}

func newDecider(st State, now time.Time) *decider {
	d := &decider{now: now, dep: st.Deployment, ops: slices.Clone(st.Ops), gens: maps.Clone(st.Generations),
		prev: st.Previous, failed: st.Failed}
	d.dep.Regional = slices.Clone(st.Deployment.Regional)
	if d.gens == nil {
		d.gens = map[string]int64{}
	}
	if len(d.dep.Regional) > 0 {
		d.strategy = d.dep.Regional[0].Definition.Strategy
	}
	d.deadline = healthDeadline(d.strategy)
	return d
}

func healthDeadline(s api.Strategy) time.Duration {
	d, err := s.HealthDeadline.Std()
	if err != nil || d <= 0 {
		return DefaultHealthDeadline
	}
	return d
}

func (d *decider) event(region, typ, format string, args ...any) {
	d.out = append(d.out, AddEvent{Region: region, Type: typ, Message: fmt.Sprintf(format, args...)})
}

func (d *decider) setDeployment(status, msg string, active bool) {
	d.dep.Status, d.dep.Message = status, msg
	d.out = append(d.out, SetDeployment{Status: status, Message: msg, Active: active})
}

func (d *decider) save(i int, status, msg string) {
	rd := &d.dep.Regional[i]
	rd.Status, rd.Message, rd.UpdatedAt = status, msg, d.now
	d.out = append(d.out, SetRegion{Region: rd.Region, Status: status, Message: msg, Generation: rd.Generation, StartedAt: rd.StartedAt})
}

// createOp writes an operation with the region's next generation, which
// supersedes the region's pending operations with lower ones (as the
// store does).
func (d *decider) createOp(region, purpose string, target *Target) int64 {
	d.gens[region]++
	gen := d.gens[region]
	for i := range d.ops {
		if o := &d.ops[i]; o.Region == region && o.State == store.OpPending && o.Generation < gen {
			o.State, o.Message = store.OpSuperseded, fmt.Sprintf("superseded by generation %d", gen)
		}
	}
	kind := store.OpDelete
	if target != nil {
		kind = store.OpApply
	}
	d.ops = append(d.ops, store.RegionOp{Region: region, Generation: gen, Kind: kind, Purpose: purpose,
		DeploymentID: d.dep.ID, State: store.OpPending, CreatedAt: d.now, UpdatedAt: d.now})
	d.out = append(d.out, CreateOp{Region: region, Purpose: purpose, Generation: gen, Target: target})
	return gen
}

func (d *decider) isCanary(region string) bool {
	return slices.Contains(d.strategy.CanaryRegions, region)
}

// op is the region's latest operation of a purpose (and generation, unless
// 0).
func (d *decider) op(region, purpose string, gen int64) (store.RegionOp, bool) {
	for i := len(d.ops) - 1; i >= 0; i-- {
		o := d.ops[i]
		if o.Region == region && o.Purpose == purpose && (gen == 0 || o.Generation == gen) {
			return o, true
		}
	}
	return store.RegionOp{}, false
}

func (d *decider) advance(obs map[string]Observation) {
	if d.dep.Status == api.StatusPending {
		d.setDeployment(api.StatusProgressing, "rolling out", true)
		s := d.strategy
		d.event("", api.EventProgress, "rollout started: %s, %s, max %d regions at a time, canaries %v, health deadline %s",
			s.Type, s.OnFailure, s.MaxParallelRegions, s.CanaryRegions, s.HealthDeadline)
	}
	canceled := d.dep.Status == api.StatusCanceled
	for i := range d.dep.Regional {
		// The status as earlier regions' failures left it.
		switch rd := d.dep.Regional[i]; rd.Status {
		case api.StatusApplying:
			d.applying(i)
		case api.StatusProgressing:
			if ob, ok := obs[rd.Region]; ok {
				d.progressing(i, ob)
			}
		}
	}
	if !canceled {
		d.schedule()
	}
	d.finish()
}

// applying follows a region whose generation is being sent.
func (d *decider) applying(i int) {
	rd := d.dep.Regional[i]
	op, ok := d.op(rd.Region, store.PurposeRollout, rd.Generation)
	if !ok {
		d.fail(i, fmt.Sprintf("internal: no operation for generation %d", rd.Generation))
		return
	}
	switch op.State {
	case store.OpDone:
		started := d.now
		d.dep.Regional[i].StartedAt = &started
		d.save(i, api.StatusProgressing, "applied; waiting for instances")
	case store.OpFailed:
		d.fail(i, op.Message)
	case store.OpSuperseded:
		d.save(i, api.StatusCanceled, op.Message)
		d.event(rd.Region, api.EventCanceled, "%s", op.Message)
	default:
		if d.now.Sub(op.CreatedAt) > d.deadline {
			msg := fmt.Sprintf("region did not accept generation %d within the health deadline %s", op.Generation, d.deadline)
			if op.Message != "" {
				msg += ": " + op.Message
			}
			d.fail(i, msg)
		}
	}
}

// progressing follows a region that accepted the deployment, from what
// it said.
func (d *decider) progressing(i int, ob Observation) {
	rd := d.dep.Regional[i]
	started := d.now
	if rd.StartedAt != nil {
		started = *rd.StartedAt
	}
	late := d.now.Sub(started) > d.deadline
	if ob.Err != nil {
		var ae *api.Error
		msg := fmt.Sprintf("status unavailable: %v", ob.Err)
		if errors.As(ob.Err, &ae) && ae.Status == http.StatusNotFound {
			msg = "the region does not know the service yet"
		}
		switch {
		case late:
			d.fail(i, fmt.Sprintf("not healthy within the health deadline %s: %s", d.deadline, msg))
		case msg != rd.Message:
			d.save(i, rd.Status, msg)
			d.event(rd.Region, api.EventRegionErr, "%s", msg)
		}
		return
	}
	ss := ob.Status
	if ss.Generation > rd.Generation {
		msg := fmt.Sprintf("the region moved on to generation %d (deployment %s)", ss.Generation, ss.DeploymentID)
		d.save(i, api.StatusCanceled, msg)
		d.event(rd.Region, api.EventCanceled, "%s", msg)
		return
	}
	if ss.Generation == rd.Generation && ss.DeploymentID == d.dep.ID && ss.Phase == regionapi.PhaseHealthy {
		msg := fmt.Sprintf("%d/%d healthy", ss.Healthy, ss.Wanted)
		d.save(i, api.StatusHealthy, msg)
		d.event(rd.Region, api.EventHealthy, "version %d healthy: %s", d.dep.Version, msg)
		return
	}
	seen := len(d.failed[rd.Region])
	var fresh []string
	for _, in := range append(ss.Instances, ss.Failures...) {
		if in.DeploymentID == d.dep.ID && in.State == regionapi.StateFailed && !d.failed[rd.Region][in.ID] && !slices.Contains(fresh, in.ID) {
			fresh = append(fresh, in.ID)
		}
	}
	if len(fresh) > 0 {
		d.out = append(d.out, RememberFailed{Region: rd.Region, Instances: fresh})
		seen += len(fresh)
	}
	if ss.Wanted > 0 && seen >= ss.Wanted {
		d.fail(i, fmt.Sprintf("%d instances failed past their restart limit (wanted %d): %s",
			seen, ss.Wanted, InstanceReasons(ss, d.dep.ID)))
		return
	}
	if late {
		msg := fmt.Sprintf("not healthy within the health deadline %s: %s", d.deadline, ss.Message)
		if why := InstanceReasons(ss, d.dep.ID); why != "" {
			msg += "; " + why
		}
		d.fail(i, msg)
		return
	}
	msg := ss.Message
	if msg == "" {
		msg = ss.Phase
	}
	if msg != rd.Message {
		d.save(i, rd.Status, msg)
		d.event(rd.Region, api.EventProgress, "%s", msg)
	}
}

// InstanceReasons names the instances of a deployment that are not healthy
// and why, from a region's status.
func InstanceReasons(ss regionapi.ServiceStatus, depID string) string {
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
func (d *decider) fail(i int, reason string) {
	rd := d.dep.Regional[i]
	d.event(rd.Region, api.EventFailed, "%s", reason)
	d.revert(i, api.StatusFailed, reason)
	all := d.strategy.OnFailure == api.OnFailureAll
	canary := d.isCanary(rd.Region)
	if !all && !canary {
		return
	}
	why := fmt.Sprintf("region %s failed", rd.Region)
	if canary {
		why = fmt.Sprintf("canary region %s failed", rd.Region)
	}
	for j, other := range d.dep.Regional {
		if j == i {
			continue
		}
		switch {
		case other.Status == api.StatusPending:
			d.save(j, api.StatusCanceled, "not rolled out: "+why)
			d.event(other.Region, api.EventCanceled, "not rolled out: %s", why)
		case all && (other.Status == api.StatusApplying || other.Status == api.StatusProgressing || other.Status == api.StatusHealthy):
			d.revert(j, api.StatusRolledBack, "rolled back: "+why)
		}
	}
}

// revert puts a region back on the service's latest deployment that was
// HEALTHY there (or stops the service there when none was), through a new
// generation, and sets the regional deployment's status.
func (d *decider) revert(i int, status, reason string) {
	rd := d.dep.Regional[i]
	what := "stopping the service there (no earlier deployment was healthy in this region)"
	var target *Target
	if prev, ok := d.prev[rd.Region]; ok {
		target = &prev
		what = fmt.Sprintf("reverting to version %d (%s)", prev.Version, prev.DeploymentID)
	}
	gen := d.createOp(rd.Region, store.PurposeRevert, target)
	d.save(i, status, reason+"; "+what)
	d.event(rd.Region, api.EventReverting, "%s with generation %d", what, gen)
}

// order lists the regional deployments in rollout order: canary regions
// first, then the definition's order.
func (d *decider) order() []int {
	pos := map[string]int{}
	for i, name := range d.dep.Definition.Regions {
		pos[name] = i
	}
	idx := make([]int, len(d.dep.Regional))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ra, rb := d.dep.Regional[a].Region, d.dep.Regional[b].Region
		if ca, cb := d.isCanary(ra), d.isCanary(rb); ca != cb {
			if ca {
				return -1
			}
			return 1
		}
		return pos[ra] - pos[rb]
	})
	return idx
}

// InFlightLimit is how many regions a strategy lets roll out at once, among n:
// max_parallel_regions, or all of them for 0 or all_at_once.
func InFlightLimit(s api.Strategy, n int) int {
	if s.MaxParallelRegions <= 0 || s.Type == api.StrategyAllAtOnce {
		return n
	}
	return s.MaxParallelRegions
}

// schedule starts the regions whose turn came: canaries first (all of them
// must be healthy before the others start), at most max_parallel_regions
// in flight at once (0, or all_at_once: no limit).
func (d *decider) schedule() {
	limit := InFlightLimit(d.strategy, len(d.dep.Regional))
	inflight := 0
	canariesDone := true
	for _, rd := range d.dep.Regional {
		if rd.Status == api.StatusApplying || rd.Status == api.StatusProgressing {
			inflight++
		}
		if d.isCanary(rd.Region) && rd.Status != api.StatusHealthy {
			canariesDone = false
		}
	}
	for _, i := range d.order() {
		rd := d.dep.Regional[i]
		if rd.Status != api.StatusPending {
			continue
		}
		if !d.isCanary(rd.Region) && !canariesDone {
			d.blocked()
			break
		}
		if inflight >= limit {
			break
		}
		gen := d.createOp(rd.Region, store.PurposeRollout, &Target{DeploymentID: d.dep.ID, Version: d.dep.Version, Definition: rd.Definition})
		d.dep.Regional[i].Generation = gen
		d.save(i, api.StatusApplying, fmt.Sprintf("applying generation %d", gen))
		d.event(rd.Region, api.EventApplying, "generation %d allocated; sending it to the region", gen)
		inflight++
	}
}

// blocked cancels the regions waiting for the canaries when a canary was
// canceled (the region moved on to another generation): it will never be
// healthy. (A failed canary cancels them at once.)
func (d *decider) blocked() {
	canary := ""
	for _, rd := range d.dep.Regional {
		if d.isCanary(rd.Region) && rd.Status == api.StatusCanceled {
			canary = rd.Region
			break
		}
	}
	if canary == "" {
		return
	}
	why := fmt.Sprintf("not rolled out: canary region %s was canceled", canary)
	for i, rd := range d.dep.Regional {
		if rd.Status == api.StatusPending && !d.isCanary(rd.Region) {
			d.save(i, api.StatusCanceled, why)
			d.event(rd.Region, api.EventCanceled, "%s", why)
		}
	}
}

// finish ends the rollout once every region is settled and their reverts
// were accepted (or have been pending longer than the health deadline:
// they go on being retried, but the deployment's outcome is known).
func (d *decider) finish() {
	for _, rd := range d.dep.Regional {
		if !Terminal(rd.Status) {
			return
		}
	}
	var stuck []string
	for _, op := range d.ops {
		if op.Purpose == store.PurposeRevert && op.State == store.OpPending {
			if d.now.Sub(op.CreatedAt) <= d.deadline {
				return
			}
			stuck = append(stuck, op.Region)
		}
	}
	// Regions whose revert went through say so.
	for i, rd := range d.dep.Regional {
		if op, ok := d.op(rd.Region, store.PurposeRevert, 0); ok && op.State == store.OpDone && strings.Contains(rd.Message, "; reverting to") {
			d.save(i, rd.Status, strings.Replace(rd.Message, "; reverting to", "; reverted to", 1))
		}
	}
	status, msg := d.outcome()
	if len(stuck) > 0 {
		msg += fmt.Sprintf("; reverts still pending in %s (retried until the regions answer)", strings.Join(stuck, ", "))
	}
	d.setDeployment(status, msg, false)
	d.event("", api.EventFinished, "%s: %s", status, msg)
}

// outcome computes a settled deployment's status from its regions.
func (d *decider) outcome() (string, string) {
	if d.dep.Status == api.StatusCanceled {
		return api.StatusCanceled, d.dep.Message
	}
	var healthy, failed, rolled []string
	var reasons []string
	for _, rd := range d.dep.Regional {
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
	n := len(d.dep.Regional)
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
		return api.StatusError, fmt.Sprintf("no region runs version %d: %s", d.dep.Version, strings.Join(reasons, "; "))
	}
	return api.StatusError, fmt.Sprintf("no region runs version %d", d.dep.Version)
}
