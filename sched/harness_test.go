package sched

import (
	"fmt"
	"slices"
	"testing"
)

// harness drives the scheduler against a mock region, in the style of
// Nomad's scheduler tests: build a snapshot with helpers, schedule, check
// the plan's invariants, apply it, play the agents, repeat.
type harness struct {
	t     testing.TB
	s     Snapshot
	plans []Plan
}

func newHarness(t testing.TB) *harness {
	return &harness{t: t, s: Snapshot{Revision: 1}}
}

// machine adds a ready machine.
func (h *harness) machine(id, dc string, cpu, mem int) *harness {
	h.s.Machines = append(h.s.Machines, Machine{ID: id, Datacenter: dc, MilliCPU: cpu, MemoryMB: mem, Ready: true})
	return h
}

// machines adds n ready machines named <dc>-m<i>.
func (h *harness) machines(dc string, n, cpu, mem int) []string {
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s-m%d", dc, i)
		h.machine(id, dc, cpu, mem)
		ids = append(ids, id)
	}
	return ids
}

// group adds or replaces a group.
func (h *harness) group(g Group) *harness {
	for i := range h.s.Groups {
		if h.s.Groups[i].Key == g.Key {
			h.s.Groups[i] = g
			return h
		}
	}
	h.s.Groups = append(h.s.Groups, g)
	return h
}

// instance adds an existing instance (running and healthy unless set); its
// data center and requests default from its machine and group.
func (h *harness) instance(in Instance) *harness {
	if in.State == "" {
		in.State, in.Healthy = StateRunning, true
	}
	for _, m := range h.s.Machines {
		if m.ID == in.Machine && in.Datacenter == "" {
			in.Datacenter = m.Datacenter
		}
	}
	for _, g := range h.s.Groups {
		if g.Key == in.Group && in.MilliCPU == 0 && in.MemoryMB == 0 {
			in.MilliCPU, in.MemoryMB = g.MilliCPU, g.MemoryMB
		}
	}
	h.s.Instances = append(h.s.Instances, in)
	return h
}

func (h *harness) setMachine(id string, f func(*Machine)) {
	for i := range h.s.Machines {
		if h.s.Machines[i].ID == id {
			f(&h.s.Machines[i])
			return
		}
	}
	h.t.Fatalf("no machine %q", id)
}

func (h *harness) setInstance(id string, f func(*Instance)) {
	for i := range h.s.Instances {
		if h.s.Instances[i].ID == id {
			f(&h.s.Instances[i])
			return
		}
	}
	h.t.Fatalf("no instance %q", id)
}

func (h *harness) getInstance(id string) Instance {
	for _, in := range h.s.Instances {
		if in.ID == id {
			return in
		}
	}
	h.t.Fatalf("no instance %q", id)
	return Instance{}
}

// schedule runs the scheduler on the current snapshot and checks the plan.
func (h *harness) schedule() Plan {
	h.t.Helper()
	p, err := Schedule(h.s)
	if err != nil {
		h.t.Fatalf("Schedule: %v", err)
	}
	checkPlan(h.t, h.s, p)
	h.plans = append(h.plans, p)
	return p
}

// apply commits a plan and moves to the next revision.
func (h *harness) apply(p Plan) {
	h.t.Helper()
	s, err := Apply(h.s, p)
	if err != nil {
		h.t.Fatalf("Apply: %v", err)
	}
	s.Revision++
	h.s = s
}

// step schedules and applies.
func (h *harness) step() Plan {
	h.t.Helper()
	p := h.schedule()
	h.apply(p)
	return p
}

// settle plays the agents: every live instance on a ready machine that is
// not past its restart limit becomes running and healthy.
func (h *harness) settle(filter ...func(Instance) bool) {
	ready := map[string]bool{}
	for _, m := range h.s.Machines {
		ready[m.ID] = m.Ready
	}
	for i := range h.s.Instances {
		in := &h.s.Instances[i]
		if !in.State.Live() || !ready[in.Machine] || in.Failed {
			continue
		}
		if len(filter) > 0 && !filter[0](*in) {
			continue
		}
		in.State, in.Healthy = StateRunning, true
	}
}

// converge settles and steps until a plan changes nothing.
func (h *harness) converge() Plan {
	h.t.Helper()
	for range 50 {
		h.settle()
		if p := h.step(); p.Empty() {
			return p
		}
	}
	h.t.Fatalf("no convergence in 50 rounds; last plan %+v", h.plans[len(h.plans)-1])
	return Plan{}
}

// live returns the live instances of a group, by id.
func (h *harness) live(group string) []Instance {
	var out []Instance
	for _, in := range h.s.Instances {
		if in.Group == group && in.State.Live() {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(a, b Instance) int { return cmpString(a.ID, b.ID) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// perMachine counts a group's live instances per machine.
func (h *harness) perMachine(group string) map[string]int {
	out := map[string]int{}
	for _, in := range h.live(group) {
		out[in.Machine]++
	}
	return out
}

// perDC counts a group's live instances per data center.
func (h *harness) perDC(group string) map[string]int {
	dc := map[string]string{}
	for _, m := range h.s.Machines {
		dc[m.ID] = m.Datacenter
	}
	out := map[string]int{}
	for _, in := range h.live(group) {
		out[dc[in.Machine]]++
	}
	return out
}

// healthyCount counts a group's healthy instances on ready machines.
func healthyCount(s Snapshot, group string) int {
	ready := map[string]bool{}
	for _, m := range s.Machines {
		ready[m.ID] = m.Ready
	}
	n := 0
	for _, in := range s.Instances {
		if in.Group == group && ready[in.Machine] && healthy(&in) {
			n++
		}
	}
	return n
}

// checkPlan asserts the invariants every plan keeps.
func checkPlan(t testing.TB, s Snapshot, p Plan) {
	t.Helper()
	machines := map[string]Machine{}
	for _, m := range s.Machines {
		machines[m.ID] = m
	}
	groups := map[string]Group{}
	for _, g := range s.Groups {
		groups[g.Key] = g
	}
	instances := map[string]Instance{}
	for _, in := range s.Instances {
		instances[in.ID] = in
	}
	allowed := func(g Group, dc string) bool {
		return len(g.Datacenters) == 0 || slices.Contains(g.Datacenters, dc)
	}
	eligible := func(id string) bool {
		m, ok := machines[id]
		return ok && m.Ready && !m.Draining
	}
	if p.Revision != s.Revision {
		t.Errorf("plan revision %d, snapshot %d", p.Revision, s.Revision)
	}

	// Stops.
	stopped := map[string]Stop{}
	makeRoom := map[string]int{}     // group -> healthy instances stopped to make room
	avoided := map[string][]string{} // group -> machines of failed instances
	for _, st := range p.Stop {
		in, ok := instances[st.InstanceID]
		if !ok {
			t.Errorf("stop of unknown instance %q", st.InstanceID)
			continue
		}
		if _, dup := stopped[st.InstanceID]; dup {
			t.Errorf("instance %q stopped twice", st.InstanceID)
		}
		stopped[st.InstanceID] = st
		if in.State == StateStopped || (in.State == StateLost && !eligibleOrReady(machines, in.Machine)) {
			t.Errorf("stop of %s instance %q (%s)", in.State, in.ID, st.Reason)
		}
		m, known := machines[in.Machine]
		wantState := StateStopped
		if !known || !m.Ready {
			wantState = StateLost
		}
		if st.State != wantState {
			t.Errorf("stop of %q records %q, want %q", in.ID, st.State, wantState)
		}
		if st.Reason == ReasonMakeRoom && healthy(&in) {
			makeRoom[in.Group]++
		}
		if st.Reason == ReasonFailed {
			avoided[in.Group] = append(avoided[in.Group], in.Machine)
		}
	}
	for g, n := range makeRoom {
		if n > 1 {
			t.Errorf("group %q: %d healthy instances stopped to make room in one plan", g, n)
		}
	}

	// Placements.
	seen := map[string]bool{}
	for _, pl := range p.Place {
		if _, ok := instances[pl.InstanceID]; ok || seen[pl.InstanceID] {
			t.Errorf("placement id %q is not new", pl.InstanceID)
		}
		seen[pl.InstanceID] = true
		g, ok := groups[pl.Group]
		if !ok {
			t.Errorf("placement of unknown group %q", pl.Group)
			continue
		}
		if pl.Deployment != g.Deployment || pl.MilliCPU != g.MilliCPU || pl.MemoryMB != g.MemoryMB || pl.Version != g.Version {
			t.Errorf("placement %+v does not match group %+v", pl, g)
		}
		if !eligible(pl.Machine) {
			t.Errorf("placement %q on ineligible machine %q", pl.InstanceID, pl.Machine)
		}
		if m := machines[pl.Machine]; m.Datacenter != pl.Datacenter || !allowed(g, pl.Datacenter) {
			t.Errorf("placement %q of %q in data center %q (machine in %q), allowed %v", pl.InstanceID, pl.Group, pl.Datacenter, m.Datacenter, g.Datacenters)
		}
	}

	after, err := Apply(s, p)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	used := map[string][2]int{}
	for _, in := range after.Instances {
		if in.State.Live() {
			u := used[in.Machine]
			used[in.Machine] = [2]int{u[0] + in.MilliCPU, u[1] + in.MemoryMB}
		}
	}
	fits := func(m Machine, g Group) bool {
		u := used[m.ID]
		return u[0]+g.MilliCPU <= m.MilliCPU && u[1]+g.MemoryMB <= m.MemoryMB
	}
	for _, pl := range p.Place {
		m := machines[pl.Machine]
		if u := used[m.ID]; u[0] > m.MilliCPU || u[1] > m.MemoryMB {
			t.Errorf("machine %q over capacity after plan: %dm/%dMB used of %dm/%dMB", m.ID, u[0], u[1], m.MilliCPU, m.MemoryMB)
		}
	}

	// Per group: current instances, duplicates, pending, health.
	current := map[string]map[string]int{} // group -> machine -> current instances
	for _, in := range after.Instances {
		g, ok := groups[in.Group]
		if !in.State.Live() {
			continue
		}
		if !ok {
			t.Errorf("instance %q of removed group %q still live", in.ID, in.Group)
			continue
		}
		m, known := machines[in.Machine]
		if !known || !m.Ready {
			t.Errorf("instance %q on lost machine %q still live", in.ID, in.Machine)
			continue
		}
		if in.Failed {
			t.Errorf("failed instance %q still live", in.ID)
		}
		if in.Deployment == g.Deployment && !m.Draining && allowed(g, m.Datacenter) {
			if current[g.Key] == nil {
				current[g.Key] = map[string]int{}
			}
			current[g.Key][in.Machine]++
		}
	}
	for _, in := range after.Instances {
		if in.State == StateLost && eligibleOrReady(machines, in.Machine) {
			t.Errorf("lost instance %q on ready machine %q not stopped", in.ID, in.Machine)
		}
	}
	pending := map[string]int{}
	for _, pe := range p.Pending {
		pending[pe.Group] += pe.Count
		if pe.Count <= 0 || pe.Reason == "" {
			t.Errorf("bad pending %+v", pe)
		}
	}
	freedMidPlan := false
	for _, st := range p.Stop {
		if st.Reason == ReasonMakeRoom {
			freedMidPlan = true
		}
	}
	for _, g := range s.Groups {
		n := 0
		for _, c := range current[g.Key] {
			n += c
		}
		if n+pending[g.Key] != g.Count {
			t.Errorf("group %q: %d current instances after plan + %d pending, want count %d", g.Key, n, pending[g.Key], g.Count)
		}
		// Never fewer healthy instances than before (capped at Count),
		// except one stopped to make room.
		before, afterN := healthyCount(s, g.Key), healthyCount(after, g.Key)
		if afterN < min(before, g.Count)-makeRoom[g.Key] {
			t.Errorf("group %q: healthy instances %d -> %d (count %d)", g.Key, before, afterN, g.Count)
		}
		// Pending only when nothing fits, even after the whole plan.
		if pending[g.Key] > 0 {
			for _, m := range s.Machines {
				if eligible(m.ID) && allowed(g, m.Datacenter) && fits(m, g) {
					t.Errorf("group %q has %d pending but machine %q fits it", g.Key, pending[g.Key], m.ID)
				}
			}
		}
		if freedMidPlan {
			continue // capacity freed during the plan: the check below reads final capacity
		}
		// No two current instances on a machine while a feasible machine
		// holds none (for machines that got a placement of the group).
		for _, pl := range p.Place {
			if pl.Group != g.Key || current[g.Key][pl.Machine] < 2 {
				continue
			}
			for _, m := range s.Machines {
				if eligible(m.ID) && allowed(g, m.Datacenter) && current[g.Key][m.ID] == 0 && fits(m, g) && !slices.Contains(avoided[g.Key], m.ID) {
					t.Errorf("group %q: second instance on %q while %q holds none and fits", g.Key, pl.Machine, m.ID)
				}
			}
		}
	}
}

func eligibleOrReady(machines map[string]Machine, id string) bool {
	m, ok := machines[id]
	return ok && m.Ready
}
