package rollout

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

func canaryStrategy() api.Strategy {
	return api.Strategy{CanaryRegions: []string{"fra"}, MaxParallelRegions: 1, HealthDeadline: "30s"}
}

// mustActions fails t unless got is want.
func mustActions(t *testing.T, got []Action, want ...Action) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		var b strings.Builder
		for _, a := range got {
			fmt.Fprintf(&b, "\n  %T%+v", a, a)
		}
		b.WriteString("\nwant:")
		for _, a := range want {
			fmt.Fprintf(&b, "\n  %T%+v", a, a)
		}
		t.Fatalf("actions:%s", b.String())
	}
}

func TestDecideStartsWithTheCanary(t *testing.T) {
	m := newModel(t, newDeployment(canaryStrategy(), "was", "fra", "sin"))
	m.st.Generations["fra"] = 4 // the service ran there before
	dep := m.st.Deployment
	got := m.decide(nil)
	mustActions(t, got,
		SetDeployment{Status: api.StatusProgressing, Message: "rolling out", Active: true},
		AddEvent{Type: api.EventProgress, Message: "rollout started: , , max 1 regions at a time, canaries [fra], health deadline 30s"},
		CreateOp{Region: "fra", Purpose: store.PurposeRollout, Generation: 5, Target: &Target{DeploymentID: dep.ID, Version: 2, Definition: dep.Regional[1].Definition}},
		SetRegion{Region: "fra", Status: api.StatusApplying, Message: "applying generation 5", Generation: 5},
		AddEvent{Region: "fra", Type: api.EventApplying, Message: "generation 5 allocated; sending it to the region"},
	)
	// Nothing more while the canary's generation is being sent.
	mustActions(t, m.advance(time.Second).decide(nil))
	m.settle("fra", store.PurposeRollout, store.OpDone, "generation 5 accepted")
	started := m.advance(time.Second).now
	mustActions(t, m.decide(nil),
		SetRegion{Region: "fra", Status: api.StatusProgressing, Message: "applied; waiting for instances", Generation: 5, StartedAt: &started})
	// The canary progresses: the others wait.
	mustActions(t, m.advance(time.Second).decide(map[string]Observation{"fra": progressingStatus(dep, 5, 2, "1/2 healthy")}),
		SetRegion{Region: "fra", Status: api.StatusProgressing, Message: "1/2 healthy", Generation: 5, StartedAt: &started},
		AddEvent{Region: "fra", Type: api.EventProgress, Message: "1/2 healthy"})
	// The same message again says nothing.
	mustActions(t, m.advance(time.Second).decide(map[string]Observation{"fra": progressingStatus(dep, 5, 2, "1/2 healthy")}))
	// Healthy: then the next region in the definition's order, one at a time.
	mustActions(t, m.advance(time.Second).decide(map[string]Observation{"fra": healthyStatus(dep, 5, 2)}),
		SetRegion{Region: "fra", Status: api.StatusHealthy, Message: "2/2 healthy", Generation: 5, StartedAt: &started},
		AddEvent{Region: "fra", Type: api.EventHealthy, Message: "version 2 healthy: 2/2 healthy"},
		CreateOp{Region: "was", Purpose: store.PurposeRollout, Generation: 1, Target: &Target{DeploymentID: dep.ID, Version: 2, Definition: dep.Regional[0].Definition}},
		SetRegion{Region: "was", Status: api.StatusApplying, Message: "applying generation 1", Generation: 1},
		AddEvent{Region: "was", Type: api.EventApplying, Message: "generation 1 allocated; sending it to the region"},
	)
	if m.statusOf("sin") != api.StatusPending {
		t.Fatalf("sin is %s while was rolls out, one region at a time", m.statusOf("sin"))
	}
}

func TestDecideRunsEveryRegionAtOnce(t *testing.T) {
	for _, s := range []api.Strategy{{}, {Type: api.StrategyAllAtOnce, MaxParallelRegions: 1}} {
		m := newModel(t, newDeployment(s, "fra", "was", "sin"))
		m.decide(nil)
		if n := m.inFlight(); n != 3 {
			t.Fatalf("strategy %+v: %d regions started, want 3", s, n)
		}
	}
}

// running is a model with every region PROGRESSING on version 2, healthy
// version 1 before in fra and was (none in sin), under s.
func running(t *testing.T, s api.Strategy) *model {
	m := newModel(t, newDeployment(s, "fra", "was", "sin")).previous("fra", 1).previous("was", 1)
	m.decide(nil)
	for _, r := range []string{"fra", "was", "sin"} {
		m.settle(r, store.PurposeRollout, store.OpDone, "accepted")
	}
	m.advance(time.Second).decide(nil)
	for _, r := range []string{"fra", "was", "sin"} {
		if m.statusOf(r) != api.StatusProgressing {
			t.Fatalf("%s: %s", r, m.statusOf(r))
		}
	}
	return m
}

func TestDecideFailLocalRevertsTheFailedRegion(t *testing.T) {
	m := running(t, api.Strategy{OnFailure: api.OnFailureLocal, HealthDeadline: "30s"})
	dep := m.st.Deployment
	obs := map[string]Observation{
		"fra": healthyStatus(dep, 1, 2),
		"was": healthyStatus(dep, 1, 2),
		"sin": progressingStatus(dep, 1, 2, "0/2 healthy", "i-1"),
	}
	got := m.advance(time.Second).decide(obs)
	if !slices.ContainsFunc(got, func(a Action) bool {
		return reflect.DeepEqual(a, RememberFailed{Region: "sin", Instances: []string{"i-1"}})
	}) {
		t.Fatalf("i-1 not remembered: %+v", got)
	}
	// The second failure is counted with the remembered one, even when the
	// region no longer lists the first.
	obs = map[string]Observation{"sin": progressingStatus(dep, 1, 2, "0/2 healthy", "i-2")}
	got = m.advance(time.Second).decide(obs)
	why := "2 instances failed past their restart limit (wanted 2): instance i-2 on m1 is failed after 3 restarts: health check http :8080/healthz: status 500"
	mustActions(t, got,
		RememberFailed{Region: "sin", Instances: []string{"i-2"}},
		AddEvent{Region: "sin", Type: api.EventFailed, Message: why},
		CreateOp{Region: "sin", Purpose: store.PurposeRevert, Generation: 2},
		SetRegion{Region: "sin", Status: api.StatusFailed, Message: why + "; stopping the service there (no earlier deployment was healthy in this region)", Generation: 1, StartedAt: m.region("sin").StartedAt},
		AddEvent{Region: "sin", Type: api.EventReverting, Message: "stopping the service there (no earlier deployment was healthy in this region) with generation 2"},
	)
	if m.statusOf("fra") != api.StatusHealthy || m.statusOf("was") != api.StatusHealthy {
		t.Fatalf("fail_local touched other regions:\n%s", m.history())
	}
	// The deployment waits for the revert, then says it is DEGRADED.
	mustActions(t, m.advance(time.Second).decide(nil))
	m.settle("sin", store.PurposeRevert, store.OpDone, "generation 2 accepted")
	got = m.advance(time.Second).decide(nil)
	msg := "healthy in fra, was; failed in sin (sin: " + why + "; stopping the service there (no earlier deployment was healthy in this region))"
	mustActions(t, got,
		SetDeployment{Status: api.StatusDegraded, Message: msg},
		AddEvent{Type: api.EventFinished, Message: "DEGRADED: " + msg})
	m.checkFinished()
}

func TestDecideRollbackAllRevertsEveryRegion(t *testing.T) {
	m := running(t, api.Strategy{OnFailure: api.OnFailureAll, HealthDeadline: "30s"})
	dep := m.st.Deployment
	m.advance(time.Second).decide(map[string]Observation{"fra": healthyStatus(dep, 1, 2), "sin": progressingStatus(dep, 1, 2, "0/2 healthy")})
	// was fails its deadline.
	late := m.advance(31 * time.Second).decide(map[string]Observation{
		"was": {Status: regionapi.ServiceStatus{Generation: 1, DeploymentID: dep.ID, Phase: regionapi.PhaseProgressing, Wanted: 2, Message: "0/2 healthy"}},
	})
	fail := "not healthy within the health deadline 30s: 0/2 healthy"
	mustActions(t, late,
		AddEvent{Region: "was", Type: api.EventFailed, Message: fail},
		CreateOp{Region: "was", Purpose: store.PurposeRevert, Generation: 2, Target: &Target{DeploymentID: "dep_v1", Version: 1, Definition: m.st.Previous["was"].Definition}},
		SetRegion{Region: "was", Status: api.StatusFailed, Message: fail + "; reverting to version 1 (dep_v1)", Generation: 1, StartedAt: m.region("was").StartedAt},
		AddEvent{Region: "was", Type: api.EventReverting, Message: "reverting to version 1 (dep_v1) with generation 2"},
		CreateOp{Region: "fra", Purpose: store.PurposeRevert, Generation: 2, Target: &Target{DeploymentID: "dep_v1", Version: 1, Definition: m.st.Previous["fra"].Definition}},
		SetRegion{Region: "fra", Status: api.StatusRolledBack, Message: "rolled back: region was failed; reverting to version 1 (dep_v1)", Generation: 1, StartedAt: m.region("fra").StartedAt},
		AddEvent{Region: "fra", Type: api.EventReverting, Message: "reverting to version 1 (dep_v1) with generation 2"},
		CreateOp{Region: "sin", Purpose: store.PurposeRevert, Generation: 2},
		SetRegion{Region: "sin", Status: api.StatusRolledBack, Message: "rolled back: region was failed; stopping the service there (no earlier deployment was healthy in this region)", Generation: 1, StartedAt: m.region("sin").StartedAt},
		AddEvent{Region: "sin", Type: api.EventReverting, Message: "stopping the service there (no earlier deployment was healthy in this region) with generation 2"},
	)
	for _, r := range []string{"fra", "was", "sin"} {
		m.settle(r, store.PurposeRevert, store.OpDone, "generation 2 accepted")
	}
	got := m.advance(time.Second).decide(nil)
	// The regions whose revert to a version went through say so.
	if m.region("fra").Message != "rolled back: region was failed; reverted to version 1 (dep_v1)" {
		t.Fatalf("fra: %q", m.region("fra").Message)
	}
	want := "rolled back everywhere (fra, sin) because was failed: was: " + fail + "; reverted to version 1 (dep_v1)"
	if last := got[len(got)-2]; !reflect.DeepEqual(last, SetDeployment{Status: api.StatusError, Message: want}) {
		t.Fatalf("outcome %+v, want %q", last, want)
	}
	m.checkFinished()
}

func TestDecideCanaryFailureStopsTheRollout(t *testing.T) {
	m := newModel(t, newDeployment(canaryStrategy(), "fra", "was", "sin"))
	m.decide(nil)
	m.settle("fra", store.PurposeRollout, store.OpFailed, "region fra refused generation 1: 400 bad definition")
	got := m.advance(time.Second).decide(nil)
	why := "region fra refused generation 1: 400 bad definition"
	mustActions(t, got[:6],
		AddEvent{Region: "fra", Type: api.EventFailed, Message: why},
		CreateOp{Region: "fra", Purpose: store.PurposeRevert, Generation: 2},
		SetRegion{Region: "fra", Status: api.StatusFailed, Message: why + "; stopping the service there (no earlier deployment was healthy in this region)", Generation: 1},
		AddEvent{Region: "fra", Type: api.EventReverting, Message: "stopping the service there (no earlier deployment was healthy in this region) with generation 2"},
		SetRegion{Region: "was", Status: api.StatusCanceled, Message: "not rolled out: canary region fra failed"},
		AddEvent{Region: "was", Type: api.EventCanceled, Message: "not rolled out: canary region fra failed"},
	)
	m.settle("fra", store.PurposeRevert, store.OpDone, "accepted")
	m.advance(time.Second).decide(nil)
	if m.st.Deployment.Status != api.StatusError || !strings.HasPrefix(m.st.Deployment.Message, "no region runs version 2: fra: "+why) {
		t.Fatalf("deployment %s %q", m.st.Deployment.Status, m.st.Deployment.Message)
	}
	m.checkFinished()
}

func TestDecideRegionThatNeverAccepts(t *testing.T) {
	m := newModel(t, newDeployment(api.Strategy{HealthDeadline: "30s"}, "fra"))
	m.decide(nil)
	o, _ := m.op("fra", store.PurposeRollout)
	o.Message = "rollout apply generation 1: connection refused; retrying with backoff"
	mustActions(t, m.advance(30*time.Second).decide(nil)) // not past the deadline yet
	got := m.advance(time.Second).decide(nil)
	want := "region did not accept generation 1 within the health deadline 30s: rollout apply generation 1: connection refused; retrying with backoff"
	if e, ok := got[0].(AddEvent); !ok || e.Message != want || e.Type != api.EventFailed {
		t.Fatalf("got %+v", got[0])
	}
	if o, _ := m.op("fra", store.PurposeRollout); o.State != store.OpSuperseded {
		t.Fatalf("the revert left the rollout operation %s", o.State)
	}
	// The revert is pending past the deadline too: the outcome is known.
	mustActions(t, m.advance(10*time.Second).decide(nil))
	got = m.advance(25 * time.Second).decide(nil)
	if s, ok := got[0].(SetDeployment); !ok || s.Status != api.StatusError || !strings.HasSuffix(s.Message, "; reverts still pending in fra (retried until the regions answer)") {
		t.Fatalf("got %+v", got)
	}
	m.checkFinished()
}

func TestDecideStatusErrors(t *testing.T) {
	m := newModel(t, newDeployment(api.Strategy{HealthDeadline: "30s"}, "fra"))
	m.decide(nil)
	m.settle("fra", store.PurposeRollout, store.OpDone, "accepted")
	m.advance(time.Second).decide(nil)
	notFound := &api.Error{Status: 404, Code: "not_found", Message: "no service acme.shop.web"}
	mustActions(t, m.advance(time.Second).decide(map[string]Observation{"fra": {Err: notFound}}),
		SetRegion{Region: "fra", Status: api.StatusProgressing, Message: "the region does not know the service yet", Generation: 1, StartedAt: m.region("fra").StartedAt},
		AddEvent{Region: "fra", Type: api.EventRegionErr, Message: "the region does not know the service yet"})
	mustActions(t, m.advance(time.Second).decide(map[string]Observation{"fra": {Err: notFound}}))
	// A region that is not observed this step is not judged, even late.
	mustActions(t, m.advance(time.Minute).decide(nil))
	got := m.decide(map[string]Observation{"fra": {Err: errors.New("dial tcp: connection refused")}})
	if e := got[0].(AddEvent); e.Message != "not healthy within the health deadline 30s: status unavailable: dial tcp: connection refused" {
		t.Fatalf("got %+v", got)
	}
}

func TestDecideRegionMovedOn(t *testing.T) {
	m := newModel(t, newDeployment(api.Strategy{}, "fra", "was"))
	m.decide(nil)
	m.settle("fra", store.PurposeRollout, store.OpDone, "accepted")
	m.settle("was", store.PurposeRollout, store.OpSuperseded, "superseded by generation 2")
	m.advance(time.Second).decide(nil)
	if m.statusOf("was") != api.StatusCanceled || m.region("was").Message != "superseded by generation 2" {
		t.Fatalf("was: %s %q", m.statusOf("was"), m.region("was").Message)
	}
	dep := m.st.Deployment
	moved := Observation{Status: regionapi.ServiceStatus{Generation: 2, DeploymentID: "dep_v3", Phase: regionapi.PhaseProgressing}}
	got := m.advance(time.Second).decide(map[string]Observation{"fra": moved})
	mustActions(t, got[:2],
		SetRegion{Region: "fra", Status: api.StatusCanceled, Message: "the region moved on to generation 2 (deployment dep_v3)", Generation: 1, StartedAt: m.region("fra").StartedAt},
		AddEvent{Region: "fra", Type: api.EventCanceled, Message: "the region moved on to generation 2 (deployment dep_v3)"})
	if dep.Version != 2 || m.st.Deployment.Status != api.StatusError || m.st.Deployment.Message != "no region runs version 2" {
		t.Fatalf("deployment %s %q", m.st.Deployment.Status, m.st.Deployment.Message)
	}
}

func TestCancel(t *testing.T) {
	m := newModel(t, newDeployment(api.Strategy{MaxParallelRegions: 1}, "fra", "was")).previous("fra", 1)
	m.decide(nil)
	got := m.advance(time.Second).cancel()
	mustActions(t, got,
		CreateOp{Region: "fra", Purpose: store.PurposeRevert, Generation: 2, Target: &Target{DeploymentID: "dep_v1", Version: 1, Definition: m.st.Previous["fra"].Definition}},
		SetRegion{Region: "fra", Status: api.StatusCanceled, Message: "canceled; reverting to version 1 (dep_v1)", Generation: 1},
		AddEvent{Region: "fra", Type: api.EventReverting, Message: "reverting to version 1 (dep_v1) with generation 2"},
		SetRegion{Region: "was", Status: api.StatusCanceled, Message: "canceled before it reached the region"},
		SetDeployment{Status: api.StatusCanceled, Message: "canceled by the user; reverting fra", Active: true},
		AddEvent{Type: api.EventCanceled, Message: "canceled by the user; reverting fra"},
	)
	// The driver follows the revert, then finishes as CANCELED.
	mustActions(t, m.advance(time.Second).decide(nil))
	m.settle("fra", store.PurposeRevert, store.OpDone, "accepted")
	mustActions(t, m.advance(time.Second).decide(nil),
		SetRegion{Region: "fra", Status: api.StatusCanceled, Message: "canceled; reverted to version 1 (dep_v1)", Generation: 1},
		SetDeployment{Status: api.StatusCanceled, Message: "canceled by the user; reverting fra"},
		AddEvent{Type: api.EventFinished, Message: "CANCELED: canceled by the user; reverting fra"})
	m.checkFinished()

	// Nothing reached a region: the cancellation ends the rollout.
	m = newModel(t, newDeployment(api.Strategy{}, "fra"))
	got = m.cancel()
	mustActions(t, got,
		SetRegion{Region: "fra", Status: api.StatusCanceled, Message: "canceled before it reached the region"},
		SetDeployment{Status: api.StatusCanceled, Message: "canceled by the user"},
		AddEvent{Type: api.EventCanceled, Message: "canceled by the user"})
	if !Finished(got) {
		t.Fatal("a cancellation with nothing to revert does not finish the rollout")
	}
}

func TestDecideInactive(t *testing.T) {
	st := State{Deployment: newDeployment(api.Strategy{}, "fra"), Active: false}
	if got := Decide(st, nil, t0); got != nil {
		t.Fatalf("an inactive deployment got %+v", got)
	}
}

// A canary the region moved away from will never be healthy: the regions
// waiting for it are not rolled out, and the deployment finishes.
func TestDecideCanceledCanaryEndsTheRollout(t *testing.T) {
	m := newModel(t, newDeployment(canaryStrategy(), "fra", "was"))
	m.decide(nil)
	m.settle("fra", store.PurposeRollout, store.OpSuperseded, "region fra holds a newer generation: 409")
	got := m.advance(time.Second).decide(nil)
	mustActions(t, got,
		SetRegion{Region: "fra", Status: api.StatusCanceled, Message: "region fra holds a newer generation: 409", Generation: 1},
		AddEvent{Region: "fra", Type: api.EventCanceled, Message: "region fra holds a newer generation: 409"},
		SetRegion{Region: "was", Status: api.StatusCanceled, Message: "not rolled out: canary region fra was canceled"},
		AddEvent{Region: "was", Type: api.EventCanceled, Message: "not rolled out: canary region fra was canceled"},
		SetDeployment{Status: api.StatusError, Message: "no region runs version 2"},
		AddEvent{Type: api.EventFinished, Message: "ERROR: no region runs version 2"},
	)
	m.checkFinished()
}
