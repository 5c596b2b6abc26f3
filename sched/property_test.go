package sched

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// genOptions shapes a random region.
type genOptions struct {
	ample bool // machines large enough for every group, allow lists valid
}

// randomSnapshot builds a random but consistent region: no ready machine
// over capacity, instances in every state, old deployments, draining and
// lost machines, removed services, unknown machines.
func randomSnapshot(r *rand.Rand, o genOptions) Snapshot {
	s := Snapshot{Revision: r.Int64N(1000) + 1}
	nDC := 1 + r.IntN(4)
	dcs := make([]string, nDC)
	for i := range dcs {
		dcs[i] = fmt.Sprintf("dc%d", i)
	}
	nM := 1 + r.IntN(40)
	cpus := []int{1000, 2000, 4000, 8000}
	mems := []int{1024, 2048, 4096, 16384}
	for i := range nM {
		m := Machine{
			ID:         fmt.Sprintf("m%02d", i),
			Datacenter: dcs[r.IntN(nDC)],
			MilliCPU:   cpus[r.IntN(len(cpus))],
			MemoryMB:   mems[r.IntN(len(mems))],
			Ready:      r.IntN(100) < 85,
			Draining:   r.IntN(100) < 10,
		}
		if o.ample {
			m.MilliCPU, m.MemoryMB = 1_000_000, 1_000_000
		}
		s.Machines = append(s.Machines, m)
	}
	if o.ample {
		// Every data center keeps one eligible machine.
		for i, dc := range dcs {
			s.Machines = append(s.Machines, Machine{ID: fmt.Sprintf("z%d", i), Datacenter: dc, MilliCPU: 1_000_000, MemoryMB: 1_000_000, Ready: true})
		}
	}
	used := map[string][2]int{}
	capOf := map[string]Machine{}
	for _, m := range s.Machines {
		capOf[m.ID] = m
	}
	reqCPU := []int{100, 250, 500, 1000, 3000}
	reqMem := []int{128, 256, 512, 2048}
	nG := 1 + r.IntN(12)
	id := 0
	for gi := range nG {
		g := Group{
			Key:        fmt.Sprintf("org/app/s%02d", gi),
			Deployment: fmt.Sprintf("s%02d-v2", gi),
			Version:    2,
			Count:      r.IntN(9),
			MilliCPU:   reqCPU[r.IntN(len(reqCPU))],
			MemoryMB:   reqMem[r.IntN(len(reqMem))],
		}
		if r.IntN(100) < 35 {
			for _, dc := range dcs {
				if r.IntN(2) == 0 {
					g.Datacenters = append(g.Datacenters, dc)
				}
			}
			if !o.ample && r.IntN(10) == 0 {
				g.Datacenters = append(g.Datacenters, "nowhere")
			}
			if len(g.Datacenters) == 0 {
				g.Datacenters = []string{dcs[0]}
			}
		}
		s.Groups = append(s.Groups, g)
		for range r.IntN(g.Count + 4) {
			in := randomInstance(r, g, s.Machines, &id)
			if in.State.Live() {
				m, ok := capOf[in.Machine]
				u := used[in.Machine]
				if ok && m.Ready && (u[0]+in.MilliCPU > m.MilliCPU || u[1]+in.MemoryMB > m.MemoryMB) {
					continue // keep ready machines within capacity
				}
				used[in.Machine] = [2]int{u[0] + in.MilliCPU, u[1] + in.MemoryMB}
			}
			s.Instances = append(s.Instances, in)
		}
	}
	// Instances of removed services.
	for range r.IntN(4) {
		g := Group{Key: "org/app/removed", Deployment: "r1", MilliCPU: 100, MemoryMB: 128}
		in := randomInstance(r, g, s.Machines, &id)
		u := used[in.Machine]
		if m := capOf[in.Machine]; in.State.Live() && (u[0]+in.MilliCPU > m.MilliCPU || u[1]+in.MemoryMB > m.MemoryMB) {
			continue
		}
		used[in.Machine] = [2]int{u[0] + in.MilliCPU, u[1] + in.MemoryMB}
		s.Instances = append(s.Instances, in)
	}
	return s
}

func randomInstance(r *rand.Rand, g Group, machines []Machine, id *int) Instance {
	*id++
	m := machines[r.IntN(len(machines))]
	in := Instance{
		ID:         fmt.Sprintf("i%04d", *id),
		Group:      g.Key,
		Deployment: g.Deployment,
		Machine:    m.ID,
		Datacenter: m.Datacenter,
		MilliCPU:   g.MilliCPU,
		MemoryMB:   g.MemoryMB,
		State:      StateRunning,
		Healthy:    r.IntN(100) < 75,
	}
	if r.IntN(100) < 40 {
		in.Deployment = g.Key + "-v1"
		if r.IntN(2) == 0 {
			in.MilliCPU *= 2 // the old deployment asked for more
		}
	}
	switch x := r.IntN(100); {
	case x < 8:
		in.State, in.Healthy = StatePending, false
	case x < 14:
		in.State, in.Healthy = StateStarting, false
	case x < 20:
		in.State, in.Healthy = StateFailed, false
		in.Failed = r.IntN(2) == 0
	case x < 25:
		in.State = StateStopped
	case x < 31:
		in.State, in.Healthy = StateLost, false
	}
	if r.IntN(100) < 3 {
		in.Machine = "gone"
	}
	return in
}

func cloneSnapshot(s Snapshot) Snapshot {
	c := s
	c.Machines = slices.Clone(s.Machines)
	c.Instances = slices.Clone(s.Instances)
	c.Groups = slices.Clone(s.Groups)
	for i := range c.Groups {
		c.Groups[i].Datacenters = slices.Clone(c.Groups[i].Datacenters)
	}
	return c
}

func shuffled(r *rand.Rand, s Snapshot) Snapshot {
	c := cloneSnapshot(s)
	r.Shuffle(len(c.Machines), func(i, j int) { c.Machines[i], c.Machines[j] = c.Machines[j], c.Machines[i] })
	r.Shuffle(len(c.Groups), func(i, j int) { c.Groups[i], c.Groups[j] = c.Groups[j], c.Groups[i] })
	r.Shuffle(len(c.Instances), func(i, j int) { c.Instances[i], c.Instances[j] = c.Instances[j], c.Instances[i] })
	return c
}

func TestPropertiesRandomSnapshots(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 1500 {
		s := randomSnapshot(r, genOptions{})
		name := fmt.Sprintf("snapshot %d", n)
		orig := cloneSnapshot(s)
		p, err := Schedule(s)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(s, orig) {
			t.Fatalf("%s: Schedule modified its input", name)
		}
		// Capacity, allow lists, lost/failed/removed handled, counts plus
		// pending equal Count, pending only when nothing fits, no avoidable
		// duplicates, healthy count kept.
		checkPlan(t, s, p)
		if t.Failed() {
			t.Fatalf("%s failed: %+v", name, s)
		}
		// Same input, same plan; order of the input does not matter.
		if p2, _ := Schedule(s); !reflect.DeepEqual(p, p2) {
			t.Fatalf("%s: two runs differ", name)
		}
		if p3, _ := Schedule(shuffled(r, s)); !reflect.DeepEqual(p, p3) {
			t.Fatalf("%s: shuffled input gives another plan:\n%+v\n%+v", name, p, p3)
		}
		// Idempotent: scheduling the applied plan changes nothing.
		after, err := Apply(s, p)
		if err != nil {
			t.Fatalf("%s: Apply: %v", name, err)
		}
		after.Revision++
		p4, err := Schedule(after)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !p4.Empty() {
			t.Fatalf("%s: plan after apply is not empty: %+v\nfirst plan %+v", name, p4, p)
		}
		if pendingTotal(p4) != pendingTotal(p) {
			t.Fatalf("%s: pending %d then %d", name, pendingTotal(p), pendingTotal(p4))
		}
	}
}

func pendingTotal(p Plan) int {
	n := 0
	for _, pe := range p.Pending {
		n += pe.Count
	}
	return n
}

// TestPropertiesConverge plays the agents: every round each new instance
// becomes healthy. The region settles, and with ample capacity every group
// ends with exactly Count healthy instances of its wanted deployment, on
// eligible machines in allowed data centers, and nothing else.
func TestPropertiesConverge(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for n := range 400 {
		ample := n%2 == 0
		h := newHarness(t)
		h.s = randomSnapshot(r, genOptions{ample: ample})
		h.settle(func(in Instance) bool { return in.State == StatePending })
		var last Plan
		for round := 0; ; round++ {
			if round > 30 {
				t.Fatalf("snapshot %d: no convergence", n)
			}
			last = h.step()
			if ample && len(last.Pending) > 0 {
				t.Fatalf("snapshot %d: pending with ample capacity: %+v", n, last.Pending)
			}
			if last.Empty() {
				break
			}
			h.settle()
		}
		if t.Failed() {
			t.Fatalf("snapshot %d failed", n)
		}
		if !ample {
			continue
		}
		machines := map[string]Machine{}
		for _, m := range h.s.Machines {
			machines[m.ID] = m
		}
		for _, g := range h.s.Groups {
			live := h.live(g.Key)
			if len(live) != g.Count {
				t.Errorf("snapshot %d: group %s has %d live, want %d", n, g.Key, len(live), g.Count)
			}
			for _, in := range live {
				m := machines[in.Machine]
				if in.Deployment != g.Deployment || !in.Healthy || !m.Ready || m.Draining ||
					(len(g.Datacenters) > 0 && !slices.Contains(g.Datacenters, m.Datacenter)) {
					t.Errorf("snapshot %d: group %s keeps %+v on %+v", n, g.Key, in, m)
				}
			}
		}
	}
}
