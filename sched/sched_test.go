package sched

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func web(count int, dcs ...string) Group {
	return Group{Key: "acme/shop/web", Deployment: "d2", Version: 2, Count: count, MilliCPU: 1000, MemoryMB: 1024, Datacenters: dcs}
}

func stopsBy(p Plan, reason string) []Stop {
	var out []Stop
	for _, st := range p.Stop {
		if st.Reason == reason {
			out = append(out, st)
		}
	}
	return out
}

func TestEmptySnapshot(t *testing.T) {
	p, err := Schedule(Snapshot{})
	if err != nil || !p.Empty() || len(p.Pending) != 0 {
		t.Fatalf("Schedule(empty) = %+v, %v", p, err)
	}
}

func TestSpreadAcrossDatacentersThenMachines(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 3, 4000, 8192)
	h.machines("fra2", 3, 4000, 8192)
	h.group(web(4))
	p := h.step()
	if len(p.Place) != 4 || len(p.Pending) != 0 {
		t.Fatalf("plan %+v", p)
	}
	if dc := h.perDC("acme/shop/web"); dc["fra1"] != 2 || dc["fra2"] != 2 {
		t.Errorf("per data center %v, want 2 and 2", dc)
	}
	for m, n := range h.perMachine("acme/shop/web") {
		if n != 1 {
			t.Errorf("machine %s holds %d instances", m, n)
		}
	}
	// Scale to 6: one per machine.
	h.group(web(6))
	h.step()
	if pm := h.perMachine("acme/shop/web"); len(pm) != 6 {
		t.Errorf("per machine %v, want 6 machines with one each", pm)
	}
	// Scale to 8: two machines get a second one, one per data center.
	h.group(web(8))
	h.step()
	if dc := h.perDC("acme/shop/web"); dc["fra1"] != 4 || dc["fra2"] != 4 {
		t.Errorf("per data center %v, want 4 and 4", dc)
	}
}

func TestSpreadPrefersLeastLoadedMachine(t *testing.T) {
	h := newHarness(t)
	h.machine("a", "fra1", 4000, 4096).machine("b", "fra1", 4000, 4096).machine("c", "fra1", 4000, 4096)
	h.group(Group{Key: "other", Deployment: "o1", Count: 3, MilliCPU: 1000, MemoryMB: 512})
	h.instance(Instance{ID: "o-1", Group: "other", Deployment: "o1", Machine: "a"})
	h.instance(Instance{ID: "o-2", Group: "other", Deployment: "o1", Machine: "a", MemoryMB: 2048, MilliCPU: 1000}) // a: 50%
	h.instance(Instance{ID: "o-3", Group: "other", Deployment: "o1", Machine: "c"})                                 // c: 25%
	h.group(web(2))
	p := h.step()
	var got []string
	for _, pl := range p.Place {
		got = append(got, pl.Machine)
	}
	if !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Errorf("placed on %v, want [b c] (least loaded first)", got)
	}
}

func TestNoDuplicateWhileAnotherMachineHasNone(t *testing.T) {
	// fra1 has one machine, fra2 three: balancing data centers would put
	// two on fra1's machine; anti-affinity wins.
	h := newHarness(t)
	h.machine("fra1-a", "fra1", 8000, 8192)
	h.machines("fra2", 3, 8000, 8192)
	h.group(web(4))
	h.step()
	if dc := h.perDC("acme/shop/web"); dc["fra1"] != 1 || dc["fra2"] != 3 {
		t.Errorf("per data center %v, want fra1:1 fra2:3", dc)
	}
	// A fifth instance must share a machine; it goes to fra1 (fewest).
	h.group(web(5))
	h.step()
	if dc := h.perDC("acme/shop/web"); dc["fra1"] != 2 {
		t.Errorf("per data center %v, want fra1:2", dc)
	}
}

func TestDuplicateOnlyWhenOtherMachinesAreFull(t *testing.T) {
	h := newHarness(t)
	h.machine("big", "fra1", 8000, 8192).machine("small", "fra1", 1000, 1024)
	h.group(web(3))
	h.step()
	if pm := h.perMachine("acme/shop/web"); pm["big"] != 2 || pm["small"] != 1 {
		t.Errorf("per machine %v, want big:2 small:1", pm)
	}
}

func TestAllowListHonoured(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 5, 8000, 8192)
	h.machines("fra2", 2, 2000, 2048)
	h.group(web(6, "fra2"))
	p := h.step()
	if dc := h.perDC("acme/shop/web"); dc["fra1"] != 0 || dc["fra2"] != 4 {
		t.Errorf("per data center %v, want only fra2 (4)", dc)
	}
	want := []Pending{{Group: "acme/shop/web", Deployment: "d2", Count: 2, Reason: "no machine in allowed datacenters [fra2] has 1000m cpu and 1024MB free"}}
	if !reflect.DeepEqual(p.Pending, want) {
		t.Errorf("pending %+v, want %+v", p.Pending, want)
	}
}

func TestShortCapacityReportsPending(t *testing.T) {
	h := newHarness(t)
	h.machine("fra2-a", "fra2", 1500, 4096)
	h.machine("fra1-a", "fra1", 1500, 4096)
	h.group(web(3, "fra2"))
	p := h.step()
	if len(p.Place) != 1 {
		t.Fatalf("placed %d, want 1", len(p.Place))
	}
	want := []Pending{{Group: "acme/shop/web", Deployment: "d2", Count: 2, Reason: "no machine in allowed datacenters [fra2] has 1000m cpu and 1024MB free"}}
	if !reflect.DeepEqual(p.Pending, want) {
		t.Errorf("pending %+v, want %+v", p.Pending, want)
	}
	// Rescheduling reports the same and places nothing more.
	p = h.step()
	if !p.Empty() || !reflect.DeepEqual(p.Pending, want) {
		t.Errorf("second plan %+v", p)
	}
	// No ready machine at all.
	h.setMachine("fra2-a", func(m *Machine) { m.Draining = true })
	p = h.schedule()
	if len(p.Pending) != 1 || p.Pending[0].Reason != "no ready, non-draining machine in allowed datacenters [fra2]" {
		t.Errorf("pending %+v", p.Pending)
	}
	// Without an allow list the reason names the region.
	h2 := newHarness(t)
	h2.machine("m", "fra1", 500, 512)
	h2.group(web(1))
	p = h2.schedule()
	if len(p.Pending) != 1 || p.Pending[0].Reason != "no machine in the region has 1000m cpu and 1024MB free" {
		t.Errorf("pending %+v", p.Pending)
	}
}

func TestMachineLostReplacedInSameDatacenter(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 4, 4000, 8192)
	h.machines("fra2", 4, 4000, 8192)
	h.group(web(4))
	// Unbalanced on purpose: balancing alone would pick fra2.
	h.instance(Instance{ID: "w1", Group: "acme/shop/web", Deployment: "d2", Machine: "fra1-m0"})
	h.instance(Instance{ID: "w2", Group: "acme/shop/web", Deployment: "d2", Machine: "fra1-m1"})
	h.instance(Instance{ID: "w3", Group: "acme/shop/web", Deployment: "d2", Machine: "fra1-m2"})
	h.instance(Instance{ID: "w4", Group: "acme/shop/web", Deployment: "d2", Machine: "fra2-m0"})
	if p := h.schedule(); !p.Empty() {
		t.Fatalf("steady state plan %+v", p)
	}
	h.setMachine("fra1-m1", func(m *Machine) { m.Ready = false })
	p := h.step()
	want := []Stop{{InstanceID: "w2", Group: "acme/shop/web", Machine: "fra1-m1", State: StateLost, Reason: ReasonMachineLost}}
	if !reflect.DeepEqual(p.Stop, want) {
		t.Errorf("stops %+v, want %+v", p.Stop, want)
	}
	if len(p.Place) != 1 || p.Place[0].Datacenter != "fra1" || p.Place[0].Machine != "fra1-m3" || p.Place[0].Replaces != "w2" {
		t.Errorf("placements %+v, want one in fra1 on fra1-m3 replacing w2", p.Place)
	}
	if got := h.getInstance("w2").State; got != StateLost {
		t.Errorf("w2 state %q after apply, want lost", got)
	}
	if p := h.schedule(); !p.Empty() {
		t.Errorf("plan after replacement %+v", p)
	}
}

func TestDatacenterLostReplacedInOtherAllowedDatacenter(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 3, 4000, 8192)
	h.machines("fra2", 3, 4000, 8192)
	h.machines("fra3", 3, 4000, 8192)
	h.group(web(4, "fra1", "fra2"))
	h.converge()
	if dc := h.perDC("acme/shop/web"); dc["fra1"] != 2 || dc["fra2"] != 2 {
		t.Fatalf("per data center %v", dc)
	}
	for _, id := range []string{"fra1-m0", "fra1-m1", "fra1-m2"} {
		h.setMachine(id, func(m *Machine) { m.Ready = false })
	}
	p := h.step()
	if lost := stopsBy(p, ReasonMachineLost); len(lost) != 2 || lost[0].State != StateLost {
		t.Errorf("lost stops %+v", lost)
	}
	for _, pl := range p.Place {
		if pl.Datacenter != "fra2" {
			t.Errorf("replacement %+v outside fra2", pl)
		}
	}
	h.converge()
	if dc := h.perDC("acme/shop/web"); dc["fra2"] != 4 || dc["fra3"] != 0 {
		t.Errorf("per data center %v, want fra2:4", dc)
	}
	if pm := h.perMachine("acme/shop/web"); len(pm) != 3 {
		t.Errorf("per machine %v: want spread over fra2's 3 machines", pm)
	}
}

func TestFailedInstanceReplacedOnDifferentMachine(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 4, 4000, 8192)
	h.group(web(3))
	h.converge() // on m0, m1, m2
	var victim Instance
	for _, in := range h.live("acme/shop/web") {
		if in.Machine == "fra1-m0" {
			victim = in
		}
	}
	h.setInstance(victim.ID, func(in *Instance) { in.State, in.Healthy, in.Failed = StateFailed, false, true })
	p := h.step()
	want := []Stop{{InstanceID: victim.ID, Group: "acme/shop/web", Machine: "fra1-m0", State: StateStopped, Reason: ReasonFailed}}
	if !reflect.DeepEqual(p.Stop, want) {
		t.Errorf("stops %+v, want %+v", p.Stop, want)
	}
	// fra1-m0 is now empty and first by id; the replacement avoids it.
	if len(p.Place) != 1 || p.Place[0].Machine != "fra1-m3" || p.Place[0].Replaces != victim.ID {
		t.Errorf("placements %+v, want one on fra1-m3", p.Place)
	}

	// With one machine, the replacement goes back to it.
	h1 := newHarness(t)
	h1.machine("only", "fra1", 4000, 8192)
	h1.group(web(1))
	h1.instance(Instance{ID: "w1", Group: "acme/shop/web", Deployment: "d2", Machine: "only", State: StateFailed, Failed: true})
	p = h1.step()
	if len(p.Place) != 1 || p.Place[0].Machine != "only" {
		t.Errorf("placements %+v, want one on the only machine", p.Place)
	}
}

func TestRollingUpdateSurgeKeepsHealthyCount(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 3, 4000, 8192)
	g := web(3)
	g.Deployment, g.Version = "d1", 1
	h.group(g)
	h.converge()
	g.Deployment, g.Version = "d2", 2
	h.group(g)
	p := h.step()
	if len(p.Place) != 3 || len(p.Stop) != 0 {
		t.Fatalf("first rollout plan %+v, want 3 placements (surge) and no stop", p)
	}
	// Nothing healthy yet: nothing more happens.
	if p := h.step(); !p.Empty() {
		t.Fatalf("plan while new instances start %+v", p)
	}
	// One new instance healthy: exactly one old instance stops.
	first := p.Place[0].InstanceID
	h.settle(func(in Instance) bool { return in.ID == first })
	p = h.step()
	if len(p.Stop) != 1 || p.Stop[0].Reason != ReasonRollingUpdate || len(p.Place) != 0 {
		t.Fatalf("plan after one healthy %+v", p)
	}
	if hc := healthyCount(h.s, g.Key); hc != 3 {
		t.Errorf("healthy %d, want 3", hc)
	}
	h.converge()
	for _, in := range h.live(g.Key) {
		if in.Deployment != "d2" {
			t.Errorf("instance %+v of old deployment left", in)
		}
	}
	if n := len(h.live(g.Key)); n != 3 {
		t.Errorf("%d live instances, want 3", n)
	}
}

func TestRollingUpdateWithoutRoomStopsOneAtATime(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 3, 1000, 1024) // exactly one instance each
	g := web(3)
	g.Deployment = "d1"
	h.group(g)
	h.converge()
	g.Deployment = "d2"
	h.group(g)
	for round := 0; ; round++ {
		if round > 20 {
			t.Fatal("rollout does not finish")
		}
		p := h.step()
		if p.Empty() {
			break
		}
		if n := len(stopsBy(p, ReasonMakeRoom)); n > 1 {
			t.Fatalf("round %d: %d instances stopped to make room", round, n)
		}
		if hc := healthyCount(h.s, g.Key); hc < 2 {
			t.Fatalf("round %d: %d healthy, want at least count-1", round, hc)
		}
		if len(p.Pending) > 0 && !strings.Contains(p.Pending[0].Reason, "has 1000m cpu and 1024MB free") {
			t.Errorf("pending reason %q", p.Pending[0].Reason)
		}
		// Nothing changes until the new instance is healthy.
		if p2 := h.schedule(); !p2.Empty() {
			t.Fatalf("round %d: plan before the new instance is healthy %+v", round, p2)
		}
		h.settle()
	}
	for _, in := range h.live(g.Key) {
		if in.Deployment != "d2" || !in.Healthy {
			t.Errorf("after rollout: %+v", in)
		}
	}
	if n := len(h.live(g.Key)); n != 3 {
		t.Errorf("%d live instances, want 3", n)
	}
}

func TestRollingUpdateStallsOnUnhealthyNewInstance(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 2, 1000, 1024)
	g := web(2)
	g.Deployment = "d1"
	h.group(g)
	h.converge()
	g.Deployment = "d2"
	h.group(g)
	p := h.step()
	if len(stopsBy(p, ReasonMakeRoom)) != 1 || len(p.Place) != 1 {
		t.Fatalf("plan %+v", p)
	}
	p = h.step()
	if !p.Empty() || len(p.Pending) != 1 || !strings.Contains(p.Pending[0].Reason, "waiting for new instances to become healthy") {
		t.Errorf("plan while the new instance starts %+v", p)
	}
}

func TestDrainReplacesBeforeStopping(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 3, 4000, 8192)
	h.group(web(2))
	h.converge() // on m0 and m1
	old := h.live("acme/shop/web")[0]
	h.setMachine(old.Machine, func(m *Machine) { m.Draining = true })
	p := h.step()
	if len(p.Stop) != 0 || len(p.Place) != 1 || p.Place[0].Machine != "fra1-m2" || p.Place[0].Replaces != old.ID {
		t.Fatalf("drain plan %+v", p)
	}
	if p := h.step(); !p.Empty() {
		t.Fatalf("plan while the replacement starts %+v", p)
	}
	h.settle()
	p = h.step()
	want := []Stop{{InstanceID: old.ID, Group: "acme/shop/web", Machine: old.Machine, State: StateStopped, Reason: ReasonDrain}}
	if !reflect.DeepEqual(p.Stop, want) || len(p.Place) != 0 {
		t.Errorf("plan after healthy replacement %+v, want stop %+v", p, want)
	}
	if pm := h.perMachine("acme/shop/web"); pm[old.Machine] != 0 || len(pm) != 2 {
		t.Errorf("per machine %v", pm)
	}
}

func TestStaleInstancesOnReturningMachineStopped(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 3, 4000, 8192)
	h.group(web(2))
	h.converge() // m0, m1
	h.setMachine("fra1-m0", func(m *Machine) { m.Ready = false })
	p := h.step()
	lostID := p.Stop[0].InstanceID
	h.settle()
	h.converge()
	// The machine comes back; its instance is still recorded lost.
	h.setMachine("fra1-m0", func(m *Machine) { m.Ready = true })
	p = h.step()
	want := []Stop{{InstanceID: lostID, Group: "acme/shop/web", Machine: "fra1-m0", State: StateStopped, Reason: ReasonStale}}
	if !reflect.DeepEqual(p.Stop, want) || len(p.Place) != 0 {
		t.Errorf("plan %+v, want only %+v", p, want)
	}
	if p := h.schedule(); !p.Empty() {
		t.Errorf("plan after stale stop %+v", p)
	}
	if n := len(h.live("acme/shop/web")); n != 2 {
		t.Errorf("%d live, want 2", n)
	}

	// A store that let the agent overwrite "lost" with "running" still
	// never keeps more than Count: the surplus is scaled down.
	h.setInstance(lostID, func(in *Instance) { in.State, in.Healthy = StateRunning, true })
	p = h.step()
	if len(stopsBy(p, ReasonScaleDown)) != 1 {
		t.Errorf("plan %+v, want one scale-down stop", p)
	}
	if n := len(h.live("acme/shop/web")); n != 2 {
		t.Errorf("%d live, want 2", n)
	}
}

func TestScaleDownPrefersUnhealthyThenCrowded(t *testing.T) {
	h := newHarness(t)
	h.machine("a", "fra1", 8000, 8192).machine("b", "fra1", 8000, 8192).machine("c", "fra2", 8000, 8192).machine("d", "fra2", 8000, 8192)
	h.group(web(6))
	h.instance(Instance{ID: "w1", Group: "acme/shop/web", Deployment: "d2", Machine: "a"})
	h.instance(Instance{ID: "w2", Group: "acme/shop/web", Deployment: "d2", Machine: "a"})
	h.instance(Instance{ID: "w3", Group: "acme/shop/web", Deployment: "d2", Machine: "b"})
	h.instance(Instance{ID: "w4", Group: "acme/shop/web", Deployment: "d2", Machine: "b"})
	h.instance(Instance{ID: "w5", Group: "acme/shop/web", Deployment: "d2", Machine: "b"})
	h.instance(Instance{ID: "w6", Group: "acme/shop/web", Deployment: "d2", Machine: "c", State: StateStarting})
	h.group(web(3))
	p := h.step()
	var got []string
	for _, st := range p.Stop {
		if st.Reason != ReasonScaleDown {
			t.Errorf("stop %+v", st)
		}
		got = append(got, st.InstanceID)
	}
	// w6 is unhealthy; then fra1 (5) from b (3): w3; then fra1 (4), a and
	// b hold 2 each: smaller id w1.
	if !reflect.DeepEqual(got, []string{"w6", "w3", "w1"}) {
		t.Errorf("stopped %v, want [w6 w3 w1]", got)
	}
	h.group(web(0))
	p = h.step()
	if len(p.Stop) != 3 || len(h.live("acme/shop/web")) != 0 {
		t.Errorf("scale to zero plan %+v", p)
	}
}

func TestRemovedServiceStopsAll(t *testing.T) {
	h := newHarness(t)
	h.machine("a", "fra1", 4000, 4096).machine("b", "fra1", 4000, 4096)
	h.instance(Instance{ID: "x1", Group: "gone", Deployment: "d1", Machine: "a", MilliCPU: 100})
	h.instance(Instance{ID: "x2", Group: "gone", Deployment: "d1", Machine: "b", MilliCPU: 100})
	h.instance(Instance{ID: "x3", Group: "gone", Deployment: "d1", Machine: "b", MilliCPU: 100, State: StateStopped})
	h.setMachine("b", func(m *Machine) { m.Ready = false })
	p := h.step()
	want := []Stop{
		{InstanceID: "x1", Group: "gone", Machine: "a", State: StateStopped, Reason: ReasonServiceRemoved},
		{InstanceID: "x2", Group: "gone", Machine: "b", State: StateLost, Reason: ReasonServiceRemoved},
	}
	if !reflect.DeepEqual(p.Stop, want) {
		t.Errorf("stops %+v, want %+v", p.Stop, want)
	}
	// When b comes back, its lost instance is stopped for good.
	h.setMachine("b", func(m *Machine) { m.Ready = true })
	p = h.step()
	if len(p.Stop) != 1 || p.Stop[0].InstanceID != "x2" || p.Stop[0].Reason != ReasonStale {
		t.Errorf("stops %+v", p.Stop)
	}
}

func TestUnknownMachineIsLost(t *testing.T) {
	h := newHarness(t)
	h.machine("a", "fra1", 4000, 4096)
	h.group(web(1))
	h.instance(Instance{ID: "w1", Group: "acme/shop/web", Deployment: "d2", Machine: "decommissioned", Datacenter: "fra1", MilliCPU: 1000, MemoryMB: 1024})
	p := h.step()
	if len(p.Stop) != 1 || p.Stop[0].State != StateLost || p.Stop[0].Reason != ReasonMachineLost {
		t.Errorf("stops %+v", p.Stop)
	}
	if len(p.Place) != 1 || p.Place[0].Machine != "a" {
		t.Errorf("placements %+v", p.Place)
	}
}

func TestAllowListChangeMovesInstances(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 2, 4000, 8192)
	h.machines("fra2", 2, 4000, 8192)
	h.group(web(2, "fra1"))
	h.converge()
	h.group(web(2, "fra2"))
	p := h.step()
	if len(p.Place) != 2 || len(p.Stop) != 0 {
		t.Fatalf("plan %+v", p)
	}
	h.settle()
	p = h.step()
	if len(stopsBy(p, ReasonNotAllowed)) != 2 {
		t.Errorf("plan %+v", p)
	}
	if dc := h.perDC("acme/shop/web"); dc["fra1"] != 0 || dc["fra2"] != 2 {
		t.Errorf("per data center %v", dc)
	}
}

func TestHealingBeforeScaling(t *testing.T) {
	// One slot left: the lost instance of "a" is replaced before "b"
	// (which sorts first) scales up.
	h := newHarness(t)
	h.machine("m1", "fra1", 1000, 1024).machine("m2", "fra1", 1000, 1024)
	h.group(Group{Key: "a", Deployment: "a1", Count: 1, MilliCPU: 1000, MemoryMB: 1024})
	h.group(Group{Key: "0b", Deployment: "b1", Count: 1, MilliCPU: 1000, MemoryMB: 1024})
	h.instance(Instance{ID: "a-1", Group: "a", Deployment: "a1", Machine: "m1"})
	h.setMachine("m1", func(m *Machine) { m.Ready = false })
	p := h.step()
	if len(p.Place) != 1 || p.Place[0].Group != "a" || len(p.Pending) != 1 || p.Pending[0].Group != "0b" {
		t.Errorf("plan %+v", p)
	}
}

func TestIdempotent(t *testing.T) {
	h := newHarness(t)
	h.machines("fra1", 3, 2000, 2048)
	h.machines("fra2", 3, 2000, 2048)
	h.group(web(5))
	h.group(Group{Key: "acme/shop/api", Deployment: "a1", Count: 4, MilliCPU: 500, MemoryMB: 512, Datacenters: []string{"fra2"}})
	h.group(Group{Key: "acme/shop/big", Deployment: "b1", Count: 3, MilliCPU: 2000, MemoryMB: 512})
	p := h.step()
	if len(p.Place) == 0 {
		t.Fatal("nothing placed")
	}
	if p2 := h.schedule(); !p2.Empty() || !reflect.DeepEqual(p2.Pending, p.Pending) {
		t.Errorf("second plan %+v, first pending %+v", p2, p.Pending)
	}
}

func TestInstanceIDs(t *testing.T) {
	h := newHarness(t)
	h.s.Revision, h.s.IDPrefix = 7, "fra-"
	h.machine("a", "fra1", 4000, 4096)
	h.group(web(3))
	h.instance(Instance{ID: "fra-r7-1", Group: "acme/shop/web", Deployment: "d2", Machine: "a"})
	p := h.schedule()
	var got []string
	for _, pl := range p.Place {
		got = append(got, pl.InstanceID)
	}
	if !reflect.DeepEqual(got, []string{"fra-r7-0", "fra-r7-2"}) {
		t.Errorf("ids %v", got)
	}
	if id := InstanceID("", 12, 3); id != "r12-3" {
		t.Errorf("InstanceID = %q", id)
	}
}

func TestValidate(t *testing.T) {
	base := func() Snapshot {
		return Snapshot{
			Machines:  []Machine{{ID: "a", Datacenter: "fra1", MilliCPU: 1000, MemoryMB: 1024, Ready: true}},
			Groups:    []Group{{Key: "g", Deployment: "d", Count: 1}},
			Instances: []Instance{{ID: "i", Group: "g", Deployment: "d", Machine: "a", State: StateRunning}},
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*Snapshot)
		want string
	}{
		{"machine id", func(s *Snapshot) { s.Machines[0].ID = "" }, "machines[0].id: empty"},
		{"machine dup", func(s *Snapshot) { s.Machines = append(s.Machines, s.Machines[0]) }, `machines[1].id: duplicate machine id "a"`},
		{"machine dc", func(s *Snapshot) { s.Machines[0].Datacenter = "" }, "machines[0].datacenter: empty"},
		{"machine cpu", func(s *Snapshot) { s.Machines[0].MilliCPU = -1 }, "machines[0].milli_cpu: negative"},
		{"machine mem", func(s *Snapshot) { s.Machines[0].MemoryMB = -1 }, "machines[0].memory_mb: negative"},
		{"group key", func(s *Snapshot) { s.Groups[0].Key = "" }, "groups[0].key: empty"},
		{"group dup", func(s *Snapshot) { s.Groups = append(s.Groups, s.Groups[0]) }, `groups[1].key: duplicate group key "g"`},
		{"group deployment", func(s *Snapshot) { s.Groups[0].Deployment = "" }, "groups[0].deployment: empty"},
		{"group count", func(s *Snapshot) { s.Groups[0].Count = -2 }, "groups[0].count: negative (-2)"},
		{"group count limit", func(s *Snapshot) { s.Groups[0].Count = MaxCount + 1 }, "groups[0].count: 1000001 is over the limit of 1000000"},
		{"group cpu", func(s *Snapshot) { s.Groups[0].MilliCPU = -2 }, "groups[0].milli_cpu: negative"},
		{"group mem", func(s *Snapshot) { s.Groups[0].MemoryMB = -2 }, "groups[0].memory_mb: negative"},
		{"group dc", func(s *Snapshot) { s.Groups[0].Datacenters = []string{"fra1", ""} }, "groups[0].datacenters[1]: empty"},
		{"instance id", func(s *Snapshot) { s.Instances[0].ID = "" }, "instances[0].id: empty"},
		{"instance dup", func(s *Snapshot) { s.Instances = append(s.Instances, s.Instances[0]) }, `instances[1].id: duplicate instance id "i"`},
		{"instance group", func(s *Snapshot) { s.Instances[0].Group = "" }, "instances[0].group: empty"},
		{"instance deployment", func(s *Snapshot) { s.Instances[0].Deployment = "" }, "instances[0].deployment: empty"},
		{"instance machine", func(s *Snapshot) { s.Instances[0].Machine = "" }, "instances[0].machine: empty"},
		{"instance state", func(s *Snapshot) { s.Instances[0].State = "done" }, `instances[0].state: unknown state "done"`},
		{"instance cpu", func(s *Snapshot) { s.Instances[0].MilliCPU = -1 }, "instances[0].milli_cpu: negative"},
		{"instance mem", func(s *Snapshot) { s.Instances[0].MemoryMB = -1 }, "instances[0].memory_mb: negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			tc.edit(&s)
			err := Validate(s)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
			if _, err2 := Schedule(s); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("Schedule error %v, want %v", err2, err)
			}
		})
	}
	if err := Validate(base()); err != nil {
		t.Errorf("Validate(valid) = %v", err)
	}
}

func TestApplyErrors(t *testing.T) {
	s := Snapshot{Instances: []Instance{{ID: "i", Group: "g", Deployment: "d", Machine: "a", State: StateRunning}}}
	if _, err := Apply(s, Plan{Stop: []Stop{{InstanceID: "nope", State: StateStopped}}}); err == nil || !strings.Contains(err.Error(), `plan.stop[0].instance_id: unknown instance "nope"`) {
		t.Errorf("Apply unknown stop: %v", err)
	}
	if _, err := Apply(s, Plan{Stop: []Stop{{InstanceID: "i", State: StateRunning}}}); err == nil || !strings.Contains(err.Error(), "plan.stop[0].state") {
		t.Errorf("Apply bad state: %v", err)
	}
	if _, err := Apply(s, Plan{Place: []Placement{{InstanceID: "i"}}}); err == nil || !errors.Is(err, ErrInvalid) {
		t.Errorf("Apply duplicate id: %v", err)
	}
}
