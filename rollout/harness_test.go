package rollout

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// t0 is the simulations' start.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// newDeployment is version 2 of service shop/web of organization acme,
// PENDING in regions, under strategy s.
func newDeployment(s api.Strategy, regions ...string) api.Deployment {
	d := api.Deployment{ID: "dep_v2", OrgID: "org_acme", AppID: "app_shop", ServiceID: "svc_web", App: "shop", Service: "web",
		Version: 2, Status: api.StatusPending, Definition: api.Definition{Name: "web", Regions: regions, Strategy: &s},
		CreatedAt: t0, UpdatedAt: t0}
	for _, r := range regions {
		d.Regional = append(d.Regional, api.RegionalDeployment{ID: "rd_" + r, DeploymentID: d.ID, Region: r, Status: api.StatusPending,
			Definition: api.RegionalDefinition{Region: r, Name: "web", Strategy: s}, UpdatedAt: t0})
	}
	return d
}

// model is a rollout driven by Decide against a model of the store: it
// applies actions as the engine's apply writes them (and as the store's
// CreateRegionOp supersedes older pending operations), and checks on the
// way the rules every decision keeps.
type model struct {
	t    testing.TB
	st   State
	now  time.Time
	step int
	// log is every step's actions, for failure messages.
	log []logged
	// finishedAt is the step whose decision ended the rollout (-1: not yet).
	finishedAt int
	// targets is each operation's target, by id (nil: a deletion).
	targets map[string]*Target
	// progressingAt is the step each region became PROGRESSING.
	progressingAt map[string]int
	// canceledByUser is set once Cancel was applied; finishedByCancel when
	// it ended the rollout (nothing to revert).
	canceledByUser, finishedByCancel bool
	// failed lists regions that failed (the region's own failure).
	failed []string
}

// logged is one step's actions.
type logged struct {
	step    int
	at      time.Time
	actions []Action
}

func newModel(t testing.TB, dep api.Deployment) *model {
	return &model{t: t, st: State{Deployment: dep, Active: true, Generations: map[string]int64{}, Previous: map[string]Target{},
		Failed: map[string]map[string]bool{}}, now: t0, finishedAt: -1, targets: map[string]*Target{}, progressingAt: map[string]int{}}
}

// previous sets the deployment a revert puts back in region.
func (m *model) previous(region string, version int) *model {
	m.st.Previous[region] = Target{DeploymentID: fmt.Sprintf("dep_v%d", version), Version: version,
		Definition: api.RegionalDefinition{Region: region, Name: "web"}}
	return m
}

// advance moves the clock.
func (m *model) advance(d time.Duration) *model {
	m.now = m.now.Add(d)
	return m
}

// decide runs one step of Decide and applies its actions.
func (m *model) decide(obs map[string]Observation) []Action {
	m.t.Helper()
	m.step++
	before := cloneState(m.st)
	actions := Decide(m.st, obs, m.now)
	if !statesEqual(before, m.st) {
		m.t.Fatalf("step %d: Decide modified its state", m.step)
	}
	m.apply(actions)
	return actions
}

// cancel applies the user's cancellation.
func (m *model) cancel() []Action {
	m.t.Helper()
	m.step++
	actions := Cancel(m.st, m.now)
	m.canceledByUser = true
	m.apply(actions)
	m.finishedByCancel = m.finishedAt == m.step
	return actions
}

// region is the regional deployment of a region.
func (m *model) region(name string) *api.RegionalDeployment {
	for i := range m.st.Deployment.Regional {
		if m.st.Deployment.Regional[i].Region == name {
			return &m.st.Deployment.Regional[i]
		}
	}
	m.t.Fatalf("no region %q", name)
	return nil
}

// op is the latest operation of a region and purpose.
func (m *model) op(region, purpose string) (*store.RegionOp, bool) {
	for i := len(m.st.Ops) - 1; i >= 0; i-- {
		if o := &m.st.Ops[i]; o.Region == region && o.Purpose == purpose {
			return o, true
		}
	}
	return nil, false
}

// settle sets the state of a region's latest operation of a purpose, as
// the region's worker does once the region answered.
func (m *model) settle(region, purpose, state, msg string) {
	m.t.Helper()
	o, ok := m.op(region, purpose)
	if !ok || o.State != store.OpPending {
		m.t.Fatalf("no pending %s operation in %s to settle", purpose, region)
	}
	o.State, o.Message, o.UpdatedAt = state, msg, m.now
	if state == store.OpDone {
		o.Applied = true
	}
}

// statusOf is the region's status in the model.
func (m *model) statusOf(region string) string { return m.region(region).Status }

// strategy is the deployment's strategy, as its regions hold it.
func (m *model) strategy() api.Strategy { return m.st.Deployment.Regional[0].Definition.Strategy }

func (m *model) isCanary(region string) bool {
	return slices.Contains(m.strategy().CanaryRegions, region)
}

// legal lists each regional status's possible next statuses.
var legal = map[string][]string{
	api.StatusPending:     {api.StatusApplying, api.StatusCanceled},
	api.StatusApplying:    {api.StatusProgressing, api.StatusFailed, api.StatusCanceled, api.StatusRolledBack},
	api.StatusProgressing: {api.StatusProgressing, api.StatusHealthy, api.StatusFailed, api.StatusCanceled, api.StatusRolledBack},
	api.StatusHealthy:     {api.StatusHealthy, api.StatusRolledBack, api.StatusCanceled},
	api.StatusFailed:      {api.StatusFailed},
	api.StatusRolledBack:  {api.StatusRolledBack},
	api.StatusCanceled:    {api.StatusCanceled},
}

// apply applies a decision's actions to the model, checking each against
// the rules.
func (m *model) apply(actions []Action) {
	m.t.Helper()
	if len(actions) > 0 {
		m.log = append(m.log, logged{m.step, m.now, actions})
	}
	fail := func(format string, args ...any) {
		m.t.Helper()
		m.t.Fatalf("step %d: %s\n%s", m.step, fmt.Sprintf(format, args...), m.history())
	}
	if len(actions) > 0 && m.finishedAt >= 0 {
		fail("actions after the rollout finished at step %d", m.finishedAt)
	}
	reverted := map[string]bool{}
	for _, a := range actions {
		if m.finishedAt >= 0 {
			if _, ok := a.(AddEvent); !ok {
				fail("%T after the deployment finished", a)
			}
		}
		switch a := a.(type) {
		case SetDeployment:
			if !a.Active {
				m.finishedAt = m.step
				for _, rd := range m.st.Deployment.Regional {
					if !Terminal(rd.Status) && !m.canceledByUser {
						fail("the deployment finished with %s %s", rd.Region, rd.Status)
					}
				}
			}
			m.st.Deployment.Status, m.st.Deployment.Message, m.st.Active = a.Status, a.Message, a.Active
		case SetRegion:
			rd := m.region(a.Region)
			if !slices.Contains(legal[rd.Status], a.Status) {
				fail("%s went from %s to %s", a.Region, rd.Status, a.Status)
			}
			if (a.Status == api.StatusFailed || a.Status == api.StatusRolledBack ||
				(a.Status == api.StatusCanceled && rd.Status != api.StatusPending && m.canceledByUser)) &&
				a.Status != rd.Status && !reverted[a.Region] {
				fail("%s is %s without a revert", a.Region, a.Status)
			}
			if a.Status == api.StatusFailed && rd.Status != api.StatusFailed {
				m.failed = append(m.failed, a.Region)
			}
			if a.Status == api.StatusProgressing && rd.Status != api.StatusProgressing {
				m.progressingAt[a.Region] = m.step
				if a.StartedAt == nil || !a.StartedAt.Equal(m.now) {
					fail("%s started at %v, not now", a.Region, a.StartedAt)
				}
			}
			if a.Generation != rd.Generation && (rd.Status != api.StatusPending || a.Status != api.StatusApplying) {
				fail("%s changed generation %d to %d going from %s to %s", a.Region, rd.Generation, a.Generation, rd.Status, a.Status)
			}
			rd.Status, rd.Message, rd.Generation, rd.StartedAt, rd.UpdatedAt = a.Status, a.Message, a.Generation, a.StartedAt, m.now
			if a.Status == api.StatusApplying {
				if o, ok := m.op(a.Region, store.PurposeRollout); !ok || o.Generation != a.Generation {
					fail("%s is APPLYING generation %d without its operation", a.Region, a.Generation)
				}
			}
		case AddEvent:
			m.st.Deployment.Events = append(m.st.Deployment.Events, api.DeploymentEvent{At: m.now, Region: a.Region, Type: a.Type, Message: a.Message})
		case CreateOp:
			if want := m.st.Generations[a.Region] + 1; a.Generation != want {
				fail("operation in %s numbered %d; the store allocates %d", a.Region, a.Generation, want)
			}
			m.st.Generations[a.Region] = a.Generation
			switch a.Purpose {
			case store.PurposeRollout:
				if _, again := m.op(a.Region, store.PurposeRollout); again {
					fail("a second rollout operation in %s", a.Region)
				}
				if m.statusOf(a.Region) != api.StatusPending {
					fail("rollout operation in %s, which is %s", a.Region, m.statusOf(a.Region))
				}
				if m.canceledByUser || m.st.Deployment.Status == api.StatusCanceled {
					fail("rollout operation in %s after the deployment was canceled", a.Region)
				}
				if !m.isCanary(a.Region) {
					for _, c := range m.strategy().CanaryRegions {
						if m.statusOf(c) != api.StatusHealthy {
							fail("%s started while canary %s is %s", a.Region, c, m.statusOf(c))
						}
					}
				}
				if a.Target == nil || a.Target.DeploymentID != m.st.Deployment.ID || a.Target.Version != m.st.Deployment.Version ||
					a.Target.Definition.Region != a.Region {
					fail("rollout operation in %s targets %+v", a.Region, a.Target)
				}
			case store.PurposeRevert:
				if _, again := m.op(a.Region, store.PurposeRevert); again {
					fail("a second revert in %s", a.Region)
				}
				prev, ok := m.st.Previous[a.Region]
				if ok != (a.Target != nil) || (ok && a.Target.DeploymentID != prev.DeploymentID) {
					fail("revert in %s targets %+v; the previous healthy deployment is %+v (%v)", a.Region, a.Target, prev, ok)
				}
				reverted[a.Region] = true
			default:
				fail("operation with purpose %q", a.Purpose)
			}
			for i := range m.st.Ops {
				if o := &m.st.Ops[i]; o.Region == a.Region && o.State == store.OpPending {
					o.State = store.OpSuperseded
				}
			}
			kind := store.OpDelete
			if a.Target != nil {
				kind = store.OpApply
			}
			id := fmt.Sprintf("op_%s_%d", a.Region, a.Generation)
			m.targets[id] = a.Target
			m.st.Ops = append(m.st.Ops, store.RegionOp{ID: id, Region: a.Region, Generation: a.Generation, Kind: kind, Purpose: a.Purpose,
				DeploymentID: m.st.Deployment.ID, State: store.OpPending, CreatedAt: m.now, UpdatedAt: m.now})
		case RememberFailed:
			if m.st.Failed[a.Region] == nil {
				m.st.Failed[a.Region] = map[string]bool{}
			}
			for _, id := range a.Instances {
				if m.st.Failed[a.Region][id] {
					fail("instance %s of %s remembered twice", id, a.Region)
				}
				m.st.Failed[a.Region][id] = true
			}
		default:
			fail("unknown action %T", a)
		}
	}
	limit := InFlightLimit(m.strategy(), len(m.st.Deployment.Regional))
	if n := m.inFlight(); n > limit {
		fail("%d regions in flight, limit %d", n, limit)
	}
}

func (m *model) inFlight() int {
	n := 0
	for _, rd := range m.st.Deployment.Regional {
		if rd.Status == api.StatusApplying || rd.Status == api.StatusProgressing {
			n++
		}
	}
	return n
}

func (m *model) history() string {
	var b strings.Builder
	fmt.Fprintf(&b, "strategy %+v\n", m.strategy())
	for _, l := range m.log[max(0, len(m.log)-40):] {
		fmt.Fprintf(&b, "step %d at +%s:\n", l.step, l.at.Sub(t0))
		for _, a := range l.actions {
			fmt.Fprintf(&b, "  %T %+v\n", a, a)
		}
	}
	for _, rd := range m.st.Deployment.Regional {
		fmt.Fprintf(&b, "region %s gen %d %s: %s\n", rd.Region, rd.Generation, rd.Status, rd.Message)
	}
	for _, o := range m.st.Ops {
		fmt.Fprintf(&b, "op %s %s gen %d %s %s\n", o.Region, o.Purpose, o.Generation, o.State, o.Message)
	}
	fmt.Fprintf(&b, "deployment %s: %s", m.st.Deployment.Status, m.st.Deployment.Message)
	return b.String()
}

// checkFinished checks a finished rollout: its status follows from its
// regions, and every region that failed or was rolled back got a revert.
func (m *model) checkFinished() {
	m.t.Helper()
	fail := func(format string, args ...any) {
		m.t.Helper()
		m.t.Fatalf("%s\n%s", fmt.Sprintf(format, args...), m.history())
	}
	dep := m.st.Deployment
	if m.st.Active || m.finishedAt < 0 {
		fail("the rollout did not finish")
	}
	if again := Decide(m.st, nil, m.now.Add(time.Hour)); len(again) > 0 {
		fail("a finished rollout got actions: %+v", again)
	}
	healthy, n := 0, len(dep.Regional)
	for _, rd := range dep.Regional {
		if !Terminal(rd.Status) {
			fail("%s ended %s", rd.Region, rd.Status)
		}
		if rd.Status == api.StatusHealthy {
			healthy++
		}
		if rd.Status == api.StatusFailed || rd.Status == api.StatusRolledBack {
			if _, ok := m.op(rd.Region, store.PurposeRevert); !ok {
				fail("%s is %s and was never reverted", rd.Region, rd.Status)
			}
		}
	}
	var want string
	switch {
	case m.canceledByUser:
		want = api.StatusCanceled
	case healthy == n:
		want = api.StatusHealthy
	case healthy > 0:
		want = api.StatusDegraded
	default:
		want = api.StatusError
	}
	if dep.Status != want {
		fail("deployment %s with %d of %d regions healthy, want %s", dep.Status, healthy, n, want)
	}
	finished := 0
	for _, e := range dep.Events {
		if e.Type == api.EventFinished {
			finished++
			if !strings.HasPrefix(e.Message, dep.Status+": ") {
				fail("finished event %q for a %s deployment", e.Message, dep.Status)
			}
		}
	}
	if want := map[bool]int{true: 0, false: 1}[m.finishedByCancel]; finished != want {
		fail("%d finished events, want %d", finished, want)
	}
	// A revert still pending is said, unless the user's cancellation ended
	// the rollout (it leaves the reverts to the regions' workers).
	for _, o := range m.st.Ops {
		if o.Purpose == store.PurposeRevert && o.State == store.OpPending && !m.finishedByCancel && !strings.Contains(dep.Message, "reverts still pending in") {
			fail("finished with a pending revert in %s, unsaid: %q", o.Region, dep.Message)
		}
	}
	if len(m.failed) > 0 && m.strategy().OnFailure == api.OnFailureAll && healthy > 0 {
		fail("rollback_all left %d regions healthy after %v failed", healthy, m.failed)
	}
	for _, f := range m.failed {
		if !m.isCanary(f) {
			continue
		}
		for _, o := range m.st.Ops {
			if o.Purpose == store.PurposeRollout && !m.isCanary(o.Region) {
				fail("canary %s failed, yet %s got the new version", f, o.Region)
			}
		}
	}
}

// healthyStatus is a region running the deployment's generation healthy.
func healthyStatus(dep api.Deployment, gen int64, n int) Observation {
	return Observation{Status: regionapi.ServiceStatus{Service: "acme.shop.web", Generation: gen, DeploymentID: dep.ID,
		Version: dep.Version, Phase: regionapi.PhaseHealthy, Wanted: n, Healthy: n}}
}

// progressingStatus is a region whose instances are not all healthy yet,
// with failed instances of the deployment.
func progressingStatus(dep api.Deployment, gen int64, wanted int, msg string, failed ...string) Observation {
	ss := regionapi.ServiceStatus{Service: "acme.shop.web", Generation: gen, DeploymentID: dep.ID, Version: dep.Version,
		Phase: regionapi.PhaseProgressing, Wanted: wanted, Message: msg}
	for _, id := range failed {
		ss.Failures = append(ss.Failures, regionapi.InstanceStatus{ID: id, Service: ss.Service, DeploymentID: dep.ID, Version: dep.Version,
			Machine: "m1", State: regionapi.StateFailed, Restarts: 3, Message: "health check http :8080/healthz: status 500"})
	}
	return Observation{Status: ss}
}

// cloneState copies what Decide reads, so that a test can check Decide
// left it alone.
func cloneState(st State) State {
	c := st
	c.Deployment.Events = nil
	c.Deployment.Regional = slices.Clone(st.Deployment.Regional)
	c.Ops = slices.Clone(st.Ops)
	c.Generations = maps.Clone(st.Generations)
	c.Previous = maps.Clone(st.Previous)
	c.Failed = map[string]map[string]bool{}
	for r, ids := range st.Failed {
		c.Failed[r] = maps.Clone(ids)
	}
	return c
}

func statesEqual(a, b State) bool {
	a.Deployment.Events, b.Deployment.Events = nil, nil
	return reflect.DeepEqual(a, b)
}
