package sched

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"
	"strings"
)

// Schedule computes the plan for a snapshot. It is a pure function: it does
// not modify s, and the same snapshot (in any order of its slices) gives the
// same plan. It fails only when s is invalid (see Validate).
func Schedule(s Snapshot) (Plan, error) {
	_, ids, err := validate(&s)
	if err != nil {
		return Plan{}, err
	}
	sc := newScheduler(&s, ids)
	sc.run()
	return sc.plan, nil
}

// hint steers one placement.
type hint struct {
	replaces string
	prefDC   int32 // data center to prefer, -1 for none
	avoid    int32 // machine to avoid, -1 for none
}

var noHint = hint{prefDC: -1, avoid: -1}

// ginfo is a group during one Schedule call.
type ginfo struct {
	g        *Group
	idx      int32
	r        req
	allowAll bool
	allowed  []int32 // data centers allowed, ascending
	allowSet []bool  // by data center, when !allowAll

	insts    []int32 // live and lost instances, by id
	current  []int32 // kept: wanted deployment, eligible machine, allowed data center
	outgoing []int32 // kept until replaced

	healthyCurrent int
	healthyOut     int

	hints   []hint
	healing int // leading hints that replace lost or failed instances
	next    int // next hint
	need    int
	placed  int
	why     string  // why room could not be made
	hosts   []int32 // machines with current instances
}

func (g *ginfo) allows(d int32) bool {
	return g.allowAll || (d >= 0 && g.allowSet[d])
}

func (g *ginfo) nextHint() hint {
	if g.next < len(g.hints) {
		return g.hints[g.next]
	}
	return noHint
}

type scheduler struct {
	s   *Snapshot
	ids map[string]struct{}

	ms     []mstate
	mIndex map[string]int32

	dcs     []dcState
	dcIndex map[string]int32
	buckets []bucket
	indexed bool

	groups  []ginfo
	orphans []int32 // live or lost instances of unknown groups

	instM    []int32 // instance -> machine number, -1 when unknown
	instDC   []int32 // instance -> data center number, -1 when unknown
	stopped  []bool
	counts   map[uint64]int32 // (group, machine) -> current instances
	dcCounts []int32          // group*len(dcs)+dc -> current instances
	zeroFull map[uint64]uint32
	tiers    map[uint64]*tierHeap
	aux      []int32

	freed bool // capacity was freed to make room since the last sweep
	seq   int
	plan  Plan
}

func newScheduler(s *Snapshot, ids map[string]struct{}) *scheduler {
	sc := &scheduler{s: s, ids: ids, plan: Plan{Revision: s.Revision}}

	// Machines, numbered by id.
	order := make([]int32, len(s.Machines))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return strings.Compare(s.Machines[a].ID, s.Machines[b].ID) })
	sc.dcIndex = map[string]int32{}
	var dcNames []string
	for i := range s.Machines {
		if _, ok := sc.dcIndex[s.Machines[i].Datacenter]; !ok {
			sc.dcIndex[s.Machines[i].Datacenter] = 0
			dcNames = append(dcNames, s.Machines[i].Datacenter)
		}
	}
	slices.Sort(dcNames)
	sc.dcs = make([]dcState, len(dcNames))
	for i, n := range dcNames {
		sc.dcIndex[n] = int32(i)
		sc.dcs[i].name = n
	}
	sc.ms = make([]mstate, len(order))
	sc.mIndex = make(map[string]int32, len(order))
	for k, i := range order {
		m := &s.Machines[i]
		sc.ms[k] = mstate{
			id: m.ID, dc: sc.dcIndex[m.Datacenter], bucket: -1,
			cpu: int64(m.MilliCPU), mem: int64(m.MemoryMB),
			ready: m.Ready, draining: m.Draining,
		}
		sc.mIndex[m.ID] = int32(k)
	}

	// Groups, by key.
	gorder := make([]int32, len(s.Groups))
	for i := range gorder {
		gorder[i] = int32(i)
	}
	slices.SortFunc(gorder, func(a, b int32) int { return strings.Compare(s.Groups[a].Key, s.Groups[b].Key) })
	sc.groups = make([]ginfo, len(gorder))
	gIndex := make(map[string]int32, len(gorder))
	for k, i := range gorder {
		g := &s.Groups[i]
		gi := &sc.groups[k]
		*gi = ginfo{g: g, idx: int32(k), r: req{int64(g.MilliCPU), int64(g.MemoryMB)}, allowAll: len(g.Datacenters) == 0}
		if gi.allowAll {
			gi.allowed = make([]int32, len(sc.dcs))
			for d := range gi.allowed {
				gi.allowed[d] = int32(d)
			}
		} else {
			gi.allowSet = make([]bool, len(sc.dcs))
			for _, n := range g.Datacenters {
				if d, ok := sc.dcIndex[n]; ok && !gi.allowSet[d] {
					gi.allowSet[d] = true
					gi.allowed = append(gi.allowed, d)
				}
			}
			slices.Sort(gi.allowed)
		}
		gIndex[g.Key] = int32(k)
	}

	// Instances: machine, data center, usage, group.
	n := len(s.Instances)
	sc.instM = make([]int32, n)
	sc.instDC = make([]int32, n)
	sc.stopped = make([]bool, n)
	for i := range s.Instances {
		in := &s.Instances[i]
		m, ok := sc.mIndex[in.Machine]
		if !ok {
			m = -1
		}
		sc.instM[i] = m
		switch {
		case m >= 0:
			sc.instDC[i] = sc.ms[m].dc
		default:
			if d, ok := sc.dcIndex[in.Datacenter]; ok {
				sc.instDC[i] = d
			} else {
				sc.instDC[i] = -1
			}
		}
		if in.State == StateStopped {
			continue
		}
		if m >= 0 && in.State.Live() {
			sc.use(m, req{int64(in.MilliCPU), int64(in.MemoryMB)})
		}
		if gi, ok := gIndex[in.Group]; ok {
			sc.groups[gi].insts = append(sc.groups[gi].insts, int32(i))
		} else {
			sc.orphans = append(sc.orphans, int32(i))
		}
	}
	byID := func(a, b int32) int { return strings.Compare(s.Instances[a].ID, s.Instances[b].ID) }
	for i := range sc.groups {
		slices.SortFunc(sc.groups[i].insts, byID)
	}
	slices.SortFunc(sc.orphans, func(a, b int32) int {
		return cmp.Or(strings.Compare(s.Instances[a].Group, s.Instances[b].Group), byID(a, b))
	})

	sc.counts = make(map[uint64]int32, n)
	sc.dcCounts = make([]int32, len(sc.groups)*len(sc.dcs))
	sc.zeroFull = map[uint64]uint32{}
	sc.tiers = map[uint64]*tierHeap{}
	return sc
}

func (sc *scheduler) inst(i int32) *Instance { return &sc.s.Instances[i] }

func healthy(in *Instance) bool {
	return in.Healthy && in.State == StateRunning && !in.Failed
}

// stop stops instance i and frees its capacity.
func (sc *scheduler) stop(i int32, reason string) {
	in := sc.inst(i)
	m := sc.instM[i]
	st := StateStopped
	if m < 0 || !sc.ms[m].ready {
		st = StateLost
	}
	if m >= 0 && in.State.Live() {
		sc.release(m, req{int64(in.MilliCPU), int64(in.MemoryMB)})
	}
	sc.stopped[i] = true
	sc.plan.Stop = append(sc.plan.Stop, Stop{InstanceID: in.ID, Group: in.Group, Machine: in.Machine, State: st, Reason: reason})
}

func (sc *scheduler) run() {
	for _, i := range sc.orphans {
		in := sc.inst(i)
		m := sc.instM[i]
		switch {
		case in.State == StateLost:
			if m >= 0 && sc.ms[m].ready {
				sc.stop(i, ReasonStale)
			}
		default:
			sc.stop(i, ReasonServiceRemoved)
		}
	}
	for gi := range sc.groups {
		sc.classify(&sc.groups[gi])
	}
	sc.buildIndex()
	for gi := range sc.groups {
		g := &sc.groups[gi]
		for _, i := range g.current {
			sc.count(g, sc.instM[i])
		}
	}
	// Heal first: replace lost and failed instances of every group.
	for gi := range sc.groups {
		g := &sc.groups[gi]
		for g.need > 0 && g.next < g.healing {
			if !sc.placeOne(g, g.nextHint()) {
				break
			}
		}
	}
	for gi := range sc.groups {
		sc.placeRest(&sc.groups[gi])
	}
	// Capacity freed to make room may fit demand of groups already passed:
	// sweep again until nothing is freed, so that the plan is a fixed
	// point (scheduling its result places nothing more).
	for sc.freed {
		sc.freed = false
		for gi := range sc.groups {
			if g := &sc.groups[gi]; g.need > 0 {
				sc.placeRest(g)
			}
		}
	}
	for gi := range sc.groups {
		g := &sc.groups[gi]
		if g.need == 0 {
			continue
		}
		reason := sc.pendingReason(g)
		if g.why != "" {
			reason += "; " + g.why
		}
		sc.plan.Pending = append(sc.plan.Pending, Pending{Group: g.g.Key, Deployment: g.g.Deployment, Count: g.need, Reason: reason})
	}
}

// classify sorts a group's instances, stops what must stop and computes the
// placements it needs.
func (sc *scheduler) classify(g *ginfo) {
	var lost, failed []hint
	for _, i := range g.insts {
		in := sc.inst(i)
		m := sc.instM[i]
		switch {
		case in.State == StateLost:
			if m >= 0 && sc.ms[m].ready {
				sc.stop(i, ReasonStale)
			}
		case m < 0 || !sc.ms[m].ready:
			sc.stop(i, ReasonMachineLost)
			lost = append(lost, hint{replaces: in.ID, prefDC: sc.instDC[i], avoid: -1})
		case in.Failed:
			sc.stop(i, ReasonFailed)
			failed = append(failed, hint{replaces: in.ID, prefDC: -1, avoid: m})
		case in.Deployment == g.g.Deployment && !sc.ms[m].draining && g.allows(sc.ms[m].dc):
			g.current = append(g.current, i)
			if healthy(in) {
				g.healthyCurrent++
			}
		default:
			g.outgoing = append(g.outgoing, i)
		}
	}
	n := g.g.Count
	if len(g.current) > n {
		sc.trimCurrent(g, len(g.current)-n)
	}
	// Keep at most Count - healthy current outgoing instances: unhealthy
	// ones go first, then those on draining machines.
	slices.SortStableFunc(g.outgoing, func(a, b int32) int {
		ha, hb := healthy(sc.inst(a)), healthy(sc.inst(b))
		if ha != hb {
			if hb {
				return -1
			}
			return 1
		}
		da, db := sc.ms[sc.instM[a]].draining, sc.ms[sc.instM[b]].draining
		if da != db {
			if da {
				return -1
			}
			return 1
		}
		return 0 // already by id
	})
	keep := max(0, n-g.healthyCurrent)
	if drop := len(g.outgoing) - keep; drop > 0 {
		for _, i := range g.outgoing[:drop] {
			sc.stop(i, sc.outgoingReason(g, i))
		}
		g.outgoing = g.outgoing[drop:]
	}
	for _, i := range g.outgoing {
		if healthy(sc.inst(i)) {
			g.healthyOut++
		}
	}
	g.need = n - len(g.current)
	if g.need <= 0 {
		g.need = 0
		return
	}
	g.hints = append(append(g.hints, lost...), failed...)
	g.healing = len(g.hints)
	for _, i := range g.outgoing {
		g.hints = append(g.hints, hint{replaces: sc.inst(i).ID, prefDC: -1, avoid: -1})
	}
	if len(g.hints) > g.need {
		g.hints = g.hints[:g.need]
		g.healing = min(g.healing, g.need)
	}
}

func (sc *scheduler) outgoingReason(g *ginfo, i int32) string {
	in := sc.inst(i)
	m := &sc.ms[sc.instM[i]]
	switch {
	case g.g.Count == 0:
		return ReasonScaleDown
	case m.draining:
		return ReasonDrain
	case in.Deployment != g.g.Deployment:
		return ReasonRollingUpdate
	default:
		return ReasonNotAllowed
	}
}

// trimCurrent stops k current instances: unhealthy ones first, then, one at
// a time, from the data center holding most of the group, then the machine
// holding most, then the smallest id.
func (sc *scheduler) trimCurrent(g *ginfo, k int) {
	for _, i := range sc.pickCrowded(g.current, k) {
		sc.stop(i, ReasonScaleDown)
	}
	g.current = slices.DeleteFunc(g.current, func(i int32) bool { return sc.stopped[i] })
	g.healthyCurrent = 0
	for _, i := range g.current {
		if healthy(sc.inst(i)) {
			g.healthyCurrent++
		}
	}
}

// pickCrowded returns k of the instances (sorted by id), chosen as
// trimCurrent says. Counts per data center and machine are over all the
// instances and shrink as instances are picked. Each pick costs
// O(data centers + log machines).
func (sc *scheduler) pickCrowded(insts []int32, k int) []int32 {
	dcCnt := map[int32]int{}
	mCnt := map[int32]int{}
	for _, i := range insts {
		dcCnt[sc.instDC[i]]++
		mCnt[sc.instM[i]]++
	}
	var picked []int32
	for _, wantHealthy := range []bool{false, true} {
		if k == 0 {
			break
		}
		// The class's instances per machine, by id; machines per data
		// center in a heap, most crowded first.
		perM := map[int32][]int32{}
		for _, i := range insts {
			if healthy(sc.inst(i)) == wantHealthy {
				perM[sc.instM[i]] = append(perM[sc.instM[i]], i)
			}
		}
		heaps := map[int32]*crowdHeap{}
		var dcs []int32
		for _, i := range insts {
			m := sc.instM[i]
			c, ok := perM[m]
			if !ok || c[0] != i {
				continue // one entry per machine, at its first instance
			}
			d := sc.instDC[i]
			h := heaps[d]
			if h == nil {
				h = &crowdHeap{sc: sc, mCnt: mCnt}
				heaps[d] = h
				dcs = append(dcs, d)
			}
			h.items = append(h.items, crowdItem{m: m, insts: c})
		}
		slices.Sort(dcs)
		for _, h := range heaps {
			heap.Init(h)
		}
		for k > 0 {
			// The best top across data centers: most crowded data
			// center, then machine, then smallest id.
			var best *crowdHeap
			bestD := int32(-1)
			for _, d := range dcs {
				h := heaps[d]
				if h.Len() == 0 {
					continue
				}
				if best == nil {
					best, bestD = h, d
					continue
				}
				a, b := &h.items[0], &best.items[0]
				if c := cmp.Or(
					cmp.Compare(dcCnt[bestD], dcCnt[d]),
					cmp.Compare(mCnt[b.m], mCnt[a.m]),
					strings.Compare(sc.inst(a.insts[0]).ID, sc.inst(b.insts[0]).ID),
				); c < 0 {
					best, bestD = h, d
				}
			}
			if best == nil {
				break
			}
			top := &best.items[0]
			i := top.insts[0]
			picked = append(picked, i)
			k--
			dcCnt[bestD]--
			mCnt[top.m]--
			if top.insts = top.insts[1:]; len(top.insts) == 0 {
				heap.Pop(best)
			} else {
				heap.Fix(best, 0)
			}
		}
	}
	return picked
}

// crowdItem is a machine's instances that may be picked, by id.
type crowdItem struct {
	m     int32
	insts []int32
}

// crowdHeap orders a data center's machines by the group's instances on
// them (most first), then by the id of their next instance.
type crowdHeap struct {
	sc    *scheduler
	mCnt  map[int32]int
	items []crowdItem
}

func (h *crowdHeap) Len() int { return len(h.items) }

func (h *crowdHeap) Less(i, j int) bool {
	a, b := &h.items[i], &h.items[j]
	if ca, cb := h.mCnt[a.m], h.mCnt[b.m]; ca != cb {
		return ca > cb
	}
	return h.sc.inst(a.insts[0]).ID < h.sc.inst(b.insts[0]).ID
}

func (h *crowdHeap) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }

func (h *crowdHeap) Push(x any) { h.items = append(h.items, x.(crowdItem)) }

func (h *crowdHeap) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return x
}

// count records one more current instance of g on machine m.
func (sc *scheduler) count(g *ginfo, m int32) int32 {
	k := gkey(g.idx, m)
	c := sc.counts[k] + 1
	sc.counts[k] = c
	if c == 1 {
		g.hosts = append(g.hosts, m)
	}
	sc.dcCounts[int(g.idx)*len(sc.dcs)+int(sc.ms[m].dc)]++
	return c
}

// placeRest places what a group still needs, making room by stopping an
// outgoing instance when nothing fits; what is left stays in g.need, with
// the reason room could not be made in g.why.
func (sc *scheduler) placeRest(g *ginfo) {
	g.why = ""
	for g.need > 0 {
		h := g.nextHint()
		if sc.placeOne(g, h) {
			continue
		}
		if len(g.outgoing) == 0 {
			break
		}
		victim, reason := sc.makeRoom(g)
		if victim < 0 {
			g.why = reason
			break
		}
		h.replaces = sc.inst(victim).ID
		if !sc.placeOne(g, h) {
			break // cannot happen: the victim's machine fits
		}
	}
}

// makeRoom stops one outgoing instance of g whose machine then fits a new
// instance, if that is allowed; it returns the stopped instance, or -1 and
// why not (empty when no outgoing instance would make room anyway).
func (sc *scheduler) makeRoom(g *ginfo) (int32, string) {
	best := int32(-1)
	var bestRank [2]bool // healthy, machine holds the group
	tooFewHealthy := false
	for _, i := range g.outgoing {
		m := sc.instM[i]
		ms := &sc.ms[m]
		in := sc.inst(i)
		if !ms.eligible() || !g.allows(ms.dc) {
			continue
		}
		if ms.ucpu-int64(in.MilliCPU)+g.r.cpu > ms.cpu || ms.umem-int64(in.MemoryMB)+g.r.mem > ms.mem {
			continue
		}
		h := healthy(in)
		if h && g.healthyCurrent+g.healthyOut-1 < g.g.Count-1 {
			tooFewHealthy = true
			continue
		}
		rank := [2]bool{h, sc.counts[gkey(g.idx, m)] > 0}
		if best < 0 || rankLess(rank, bestRank) {
			best, bestRank = i, rank
		}
	}
	switch {
	case best < 0 && !tooFewHealthy:
		return -1, ""
	case g.placed > 0 || g.healthyCurrent < len(g.current):
		return -1, "waiting for new instances to become healthy before stopping an old one to make room"
	case best < 0:
		return -1, "stopping an old instance to make room would leave the service two instances short of healthy"
	}
	if healthy(sc.inst(best)) {
		g.healthyOut--
	}
	sc.stop(best, ReasonMakeRoom)
	sc.freed = true
	g.outgoing = slices.DeleteFunc(g.outgoing, func(i int32) bool { return i == best })
	return best, ""
}

func rankLess(a, b [2]bool) bool {
	for i := range a {
		if a[i] != b[i] {
			return !a[i]
		}
	}
	return false
}

// pendingReason says why g's next instance fits nowhere.
func (sc *scheduler) pendingReason(g *ginfo) string {
	where := "in the region"
	if !g.allowAll {
		where = fmt.Sprintf("in allowed datacenters [%s]", strings.Join(g.g.Datacenters, " "))
	}
	eligible := 0
	for _, d := range g.allowed {
		eligible += sc.dcs[d].eligible
	}
	if eligible == 0 {
		return "no ready, non-draining machine " + where
	}
	return fmt.Sprintf("no machine %s has %dm cpu and %dMB free", where, g.g.MilliCPU, g.g.MemoryMB)
}

// placeOne places one instance of g following h; false when nothing fits.
func (sc *scheduler) placeOne(g *ginfo, h hint) bool {
	m := sc.choose(g, h.prefDC, h.avoid)
	if m < 0 && h.avoid >= 0 {
		m = sc.choose(g, h.prefDC, -1)
	}
	if m < 0 {
		return false
	}
	ms := &sc.ms[m]
	sc.use(m, g.r)
	c := sc.count(g, m)
	if t := sc.tiers[gkey(g.idx, ms.dc)]; t != nil && t.epoch == sc.dcs[ms.dc].epoch {
		t.push(tierEntry{m: m, count: c, load: ms.load})
	}
	id := InstanceID(sc.s.IDPrefix, sc.s.Revision, sc.seq)
	for sc.seq++; sc.exists(id); sc.seq++ {
		id = InstanceID(sc.s.IDPrefix, sc.s.Revision, sc.seq)
	}
	sc.plan.Place = append(sc.plan.Place, Placement{
		InstanceID: id,
		Group:      g.g.Key,
		Deployment: g.g.Deployment,
		Version:    g.g.Version,
		Machine:    ms.id,
		Datacenter: sc.dcs[ms.dc].name,
		MilliCPU:   g.g.MilliCPU,
		MemoryMB:   g.g.MemoryMB,
		Replaces:   h.replaces,
	})
	g.placed++
	g.need--
	g.next++
	return true
}

func (sc *scheduler) exists(id string) bool {
	_, ok := sc.ids[id]
	return ok
}

// choose picks the machine for one instance of g (see the package doc), or
// -1 when none fits.
func (sc *scheduler) choose(g *ginfo, pref, avoid int32) int32 {
	best := int32(-1)
	var bestZero, bestPref bool
	var bestCount int32
	for _, d := range g.allowed {
		if sc.dcs[d].eligible == 0 {
			continue
		}
		m, zero := sc.bestInDC(g, d, avoid)
		if m < 0 {
			continue
		}
		isPref := d == pref
		cnt := sc.dcCounts[int(g.idx)*len(sc.dcs)+int(d)]
		better := best < 0
		if !better {
			switch {
			case zero != bestZero:
				better = zero
			case isPref != bestPref:
				better = isPref
			default:
				better = cnt < bestCount // ties keep the smaller name
			}
		}
		if better {
			best, bestZero, bestPref, bestCount = m, zero, isPref, cnt
		}
	}
	return best
}

// bestInDC returns the best machine for g in data center d, and whether it
// holds no current instance of g.
func (sc *scheduler) bestInDC(g *ginfo, d int32, avoid int32) (int32, bool) {
	dc := &sc.dcs[d]
	k := gkey(g.idx, d)
	if sc.zeroFull[k] != dc.epoch+1 {
		best := int32(-1)
		avoidedAny := false
		for _, bi := range dc.buckets {
			b := &sc.buckets[bi]
			if b.maxCPU < g.r.cpu || b.maxMem < g.r.mem || b.knownFull(g.r, dc.epoch) {
				continue
			}
			m, fit, avoided, complete := sc.scanBucket(b, g.idx, g.r, avoid, best)
			avoidedAny = avoidedAny || avoided
			if complete && !fit {
				b.markFull(g.r, dc.epoch)
			}
			if m >= 0 {
				best = m
			}
		}
		if best >= 0 {
			return best, true
		}
		if !avoidedAny {
			sc.zeroFull[k] = dc.epoch + 1
		}
	}
	if len(g.hosts) == 0 {
		return -1, false
	}
	return sc.bestTier(g, d, avoid), false
}
