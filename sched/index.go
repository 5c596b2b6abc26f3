package sched

import "math/bits"

// loadScale is the fixed-point unit of a machine's load: a machine whose
// busiest resource is fully used has load loadScale.
const loadScale = 1 << 20

// mstate is a machine during one Schedule call. Machines are numbered in
// order of id, so comparing numbers compares ids.
type mstate struct {
	id         string
	dc         int32
	bucket     int32 // index in scheduler.buckets, -1 when not eligible
	pos        int32 // position in its bucket's heap
	cpu, mem   int64 // capacity
	ucpu, umem int64 // requests of live instances
	load       int64
	ready      bool
	draining   bool
}

func (m *mstate) eligible() bool { return m.ready && !m.draining }

func (m *mstate) fits(r req) bool {
	return m.ucpu+r.cpu <= m.cpu && m.umem+r.mem <= m.mem
}

// maxLoad caps loads so that a load and a machine number pack in a uint64.
const maxLoad = 1<<31 - 1

func share(used, capacity int64) int64 {
	if used <= 0 {
		return 0
	}
	if capacity <= 0 || used/capacity >= maxLoad/loadScale {
		return maxLoad
	}
	return min(used*loadScale/capacity, maxLoad)
}

func (m *mstate) setLoad() {
	m.load = max(share(m.ucpu, m.cpu), share(m.umem, m.mem))
}

// req is a resource request.
type req struct{ cpu, mem int64 }

// dcState is one data center.
type dcState struct {
	name     string
	buckets  []int32 // indices in scheduler.buckets
	eligible int     // ready, non-draining machines
	// epoch counts the times capacity was freed in this data center after
	// the indexes were built; caches of "nothing fits" are valid only for
	// the epoch they were made in, because free capacity only shrinks
	// between two frees.
	epoch uint32
}

// bucket is the eligible machines of one data center in one capacity class
// (powers of two of cpu and memory), in a min-heap by (load, number). Each
// node carries what a walk needs without touching the machine records: its
// key, its machine's free capacity, and the largest free cpu and the largest
// free memory in its subtree, so a walk skips subtrees where nothing fits.
type bucket struct {
	dc             int32
	class          [2]int
	nodes          []node
	maxCPU, maxMem int64
	// full lists requests that fit no machine of the bucket, valid while
	// fullEpoch equals the data center's epoch.
	full      []req
	fullEpoch uint32
}

// node is one machine in a bucket's heap.
type node struct {
	key  uint64 // load<<32 | machine number: smaller is better
	free req    // the machine's free capacity
	aug  req    // max free cpu, max free memory in the subtree
}

func (n *node) m() int32 { return int32(uint32(n.key)) }

func (b *bucket) fitsBelow(p int, r req) bool {
	return b.nodes[p].aug.cpu >= r.cpu && b.nodes[p].aug.mem >= r.mem
}

// capClass is a capacity's class: quarter octaves (the power of two and the
// next two bits).
func capClass(v int64) int {
	if v < 4 {
		return max(int(v), 0)
	}
	n := bits.Len64(uint64(v))
	return n<<2 | int(uint64(v)>>(n-3)&3)
}

func (b *bucket) knownFull(r req, epoch uint32) bool {
	if b.fullEpoch != epoch {
		return false
	}
	for _, f := range b.full {
		if r.cpu >= f.cpu && r.mem >= f.mem {
			return true
		}
	}
	return false
}

func (b *bucket) markFull(r req, epoch uint32) {
	if b.fullEpoch != epoch {
		b.full = b.full[:0]
		b.fullEpoch = epoch
	}
	if len(b.full) < 16 {
		b.full = append(b.full, r)
	}
}

// key is machine m's order in the heaps: by load, then number (id).
func (sc *scheduler) key(m int32) uint64 {
	return uint64(sc.ms[m].load)<<32 | uint64(uint32(m))
}

// less orders machines by load, then number (id).
func (sc *scheduler) less(a, b int32) bool { return sc.key(a) < sc.key(b) }

// swap exchanges two heap nodes and records their machines' positions.
func (sc *scheduler) swap(b *bucket, i, j int) {
	b.nodes[i], b.nodes[j] = b.nodes[j], b.nodes[i]
	sc.ms[b.nodes[i].m()].pos = int32(i)
	sc.ms[b.nodes[j].m()].pos = int32(j)
}

// up restores the heap above position p, and the subtree maxima.
func (sc *scheduler) up(b *bucket, p int) {
	start := p
	for p > 0 {
		q := (p - 1) / 2
		if b.nodes[p].key >= b.nodes[q].key {
			break
		}
		sc.swap(b, p, q)
		p = q
	}
	sc.refresh(b, start)
}

// down restores the heap below position p and returns where its node
// ended; the caller refreshes the subtree maxima from there.
func (sc *scheduler) down(b *bucket, p int) int {
	n := len(b.nodes)
	for {
		l := 2*p + 1
		if l >= n {
			return p
		}
		c := l
		if r := l + 1; r < n && b.nodes[r].key < b.nodes[l].key {
			c = r
		}
		if b.nodes[c].key >= b.nodes[p].key {
			return p
		}
		sc.swap(b, p, c)
		p = c
	}
}

// setAug recomputes the subtree maxima of position p from its node and its
// children.
func (b *bucket) setAug(p int) {
	n := &b.nodes[p]
	a := n.free
	for c := 2*p + 1; c <= 2*p+2 && c < len(b.nodes); c++ {
		a.cpu = max(a.cpu, b.nodes[c].aug.cpu)
		a.mem = max(a.mem, b.nodes[c].aug.mem)
	}
	n.aug = a
}

// refresh recomputes the subtree maxima from position p up to the root.
func (sc *scheduler) refresh(b *bucket, p int) {
	for {
		b.setAug(p)
		if p == 0 {
			return
		}
		p = (p - 1) / 2
	}
}

// buildIndex puts every eligible machine in its data center's bucket.
func (sc *scheduler) buildIndex() {
	byClass := map[[3]int]int32{}
	for i := range sc.ms {
		m := &sc.ms[i]
		m.bucket = -1
		m.setLoad()
		if !m.eligible() {
			continue
		}
		sc.dcs[m.dc].eligible++
		k := [3]int{int(m.dc), capClass(m.cpu), capClass(m.mem)}
		bi, ok := byClass[k]
		if !ok {
			bi = int32(len(sc.buckets))
			byClass[k] = bi
			sc.buckets = append(sc.buckets, bucket{dc: m.dc, class: [2]int{k[1], k[2]}})
			sc.dcs[m.dc].buckets = append(sc.dcs[m.dc].buckets, bi)
		}
		b := &sc.buckets[bi]
		m.bucket = bi
		m.pos = int32(len(b.nodes))
		b.nodes = append(b.nodes, node{key: sc.key(int32(i)), free: req{m.cpu - m.ucpu, m.mem - m.umem}})
		b.maxCPU = max(b.maxCPU, m.cpu)
		b.maxMem = max(b.maxMem, m.mem)
	}
	for bi := range sc.buckets {
		b := &sc.buckets[bi]
		for p := len(b.nodes)/2 - 1; p >= 0; p-- {
			sc.down(b, p)
		}
		for p := len(b.nodes) - 1; p >= 0; p-- {
			b.setAug(p)
		}
	}
	sc.indexed = true
}

// update refreshes machine m's node after its usage changed.
func (sc *scheduler) update(m int32) {
	ms := &sc.ms[m]
	if !sc.indexed || ms.bucket < 0 {
		return
	}
	b := &sc.buckets[ms.bucket]
	p := int(ms.pos)
	n := &b.nodes[p]
	old := n.key
	n.key = sc.key(m)
	n.free = req{ms.cpu - ms.ucpu, ms.mem - ms.umem}
	if n.key < old {
		sc.up(b, p)
	} else {
		sc.refresh(b, sc.down(b, p))
	}
}

// use adds a request to a machine and keeps its heap in order.
func (sc *scheduler) use(m int32, r req) {
	ms := &sc.ms[m]
	ms.ucpu += r.cpu
	ms.umem += r.mem
	ms.setLoad()
	sc.update(m)
}

// release frees a request on a machine. Once the indexes are built, it
// starts a new epoch in the machine's data center.
func (sc *scheduler) release(m int32, r req) {
	ms := &sc.ms[m]
	ms.ucpu -= r.cpu
	ms.umem -= r.mem
	ms.setLoad()
	sc.update(m)
	if sc.indexed && ms.bucket >= 0 {
		sc.dcs[ms.dc].epoch++
	}
}

// scanBucket walks a bucket's heap in order (without changing it) and
// returns the first machine that fits r, holds no current instance of group
// gi and is not avoid. It stops early, with complete false, at machines not
// better than bound (when bound >= 0). fit tells whether any machine seen fits
// r; avoided whether avoid was skipped although it qualified.
func (sc *scheduler) scanBucket(b *bucket, gi int32, r req, avoid, bound int32) (found int32, fit, avoided, complete bool) {
	found, complete = -1, true
	nodes := b.nodes
	if len(nodes) == 0 || !b.fitsBelow(0, r) {
		return found, false, false, complete
	}
	var boundKey uint64 = 1<<64 - 1
	if bound >= 0 {
		boundKey = sc.key(bound)
	}
	// aux is a min-heap of the positions at the frontier of the walk.
	aux := append(sc.aux[:0], 0)
	for len(aux) > 0 {
		p := aux[0]
		last := len(aux) - 1
		aux[0] = aux[last]
		aux = aux[:last]
		for i := 0; ; {
			l := 2*i + 1
			if l >= len(aux) {
				break
			}
			c := l
			if l+1 < len(aux) && nodes[aux[l+1]].key < nodes[aux[l]].key {
				c = l + 1
			}
			if nodes[aux[c]].key >= nodes[aux[i]].key {
				break
			}
			aux[i], aux[c] = aux[c], aux[i]
			i = c
		}
		n := &nodes[p]
		if n.key >= boundKey {
			complete = false
			break
		}
		if n.free.cpu >= r.cpu && n.free.mem >= r.mem {
			fit = true
			m := n.m()
			if m == avoid {
				avoided = true
			} else if sc.counts[gkey(gi, m)] == 0 {
				found, complete = m, false
				break
			}
		}
		for c := 2*p + 1; c <= 2*p+2 && int(c) < len(nodes); c++ {
			if !b.fitsBelow(int(c), r) {
				continue // nothing in this subtree fits
			}
			aux = append(aux, c)
			for i := len(aux) - 1; i > 0; {
				q := (i - 1) / 2
				if nodes[aux[i]].key >= nodes[aux[q]].key {
					break
				}
				aux[i], aux[q] = aux[q], aux[i]
				i = q
			}
		}
	}
	sc.aux = aux[:0]
	return found, fit, avoided, complete
}

// gkey packs a group number and a machine or data center number.
func gkey(gi, x int32) uint64 { return uint64(uint32(gi))<<32 | uint64(uint32(x)) }

// tierEntry is a machine holding some current instances of a group, with
// the count and load it had when pushed.
type tierEntry struct {
	m     int32
	count int32
	load  int64
}

// tierHeap orders the machines of one data center that hold a group by
// (count, load, number). Entries go stale as counts and loads grow; they are
// checked and refreshed when they reach the top. It is valid for one epoch.
type tierHeap struct {
	epoch uint32
	h     []tierEntry
}

func (t *tierHeap) less(i, j int) bool {
	a, b := &t.h[i], &t.h[j]
	if a.count != b.count {
		return a.count < b.count
	}
	if a.load != b.load {
		return a.load < b.load
	}
	return a.m < b.m
}

func (t *tierHeap) push(e tierEntry) {
	t.h = append(t.h, e)
	for i := len(t.h) - 1; i > 0; {
		q := (i - 1) / 2
		if !t.less(i, q) {
			break
		}
		t.h[i], t.h[q] = t.h[q], t.h[i]
		i = q
	}
}

func (t *tierHeap) pop() tierEntry {
	e := t.h[0]
	last := len(t.h) - 1
	t.h[0] = t.h[last]
	t.h = t.h[:last]
	t.fix(0)
	return e
}

func (t *tierHeap) fix(i int) {
	for {
		l := 2*i + 1
		if l >= len(t.h) {
			return
		}
		c := l
		if l+1 < len(t.h) && t.less(l+1, l) {
			c = l + 1
		}
		if !t.less(c, i) {
			return
		}
		t.h[i], t.h[c] = t.h[c], t.h[i]
		i = c
	}
}

// bestTier returns the machine of data center d that holds the fewest
// current instances of g (at least one), is least loaded, fits g and is not
// avoid; -1 if none.
func (sc *scheduler) bestTier(g *ginfo, d int32, avoid int32) int32 {
	dc := &sc.dcs[d]
	k := gkey(g.idx, d)
	t := sc.tiers[k]
	if t == nil || t.epoch != dc.epoch {
		t = &tierHeap{epoch: dc.epoch}
		for _, m := range g.hosts {
			if sc.ms[m].dc == d {
				t.h = append(t.h, tierEntry{m: m, count: sc.counts[gkey(g.idx, m)], load: sc.ms[m].load})
			}
		}
		for i := len(t.h)/2 - 1; i >= 0; i-- {
			t.fix(i)
		}
		sc.tiers[k] = t
	}
	r := g.r
	var stash []tierEntry
	found := int32(-1)
	for len(t.h) > 0 {
		e := t.h[0]
		ms := &sc.ms[e.m]
		switch {
		case e.count != sc.counts[gkey(g.idx, e.m)]:
			t.pop() // a newer entry was pushed when the count grew
		case e.load != ms.load:
			t.pop()
			e.load = ms.load
			t.push(e)
		case !ms.fits(r):
			t.pop() // free capacity only shrinks within an epoch
		case e.m == avoid:
			stash = append(stash, t.pop())
		default:
			found = e.m
		}
		if found >= 0 {
			break
		}
	}
	for _, e := range stash {
		t.push(e)
	}
	return found
}
