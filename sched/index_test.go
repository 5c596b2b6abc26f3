package sched

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// naiveChoose is the placement rule of the package doc, by brute force over
// every machine.
func (sc *scheduler) naiveChoose(g *ginfo, pref, avoid int32) int32 {
	type cand struct {
		m     int32
		count int32
	}
	better := func(a, b cand) bool { // within a data center
		if a.count != b.count {
			return a.count < b.count
		}
		return sc.less(a.m, b.m)
	}
	pick := func(avoid int32) int32 {
		best := int32(-1)
		var bestZero, bestPref bool
		var bestCount int32
		for _, d := range g.allowed {
			in := cand{m: -1}
			for m := range sc.ms {
				ms := &sc.ms[m]
				if ms.dc != d || !ms.eligible() || !ms.fits(g.r) || int32(m) == avoid {
					continue
				}
				c := cand{int32(m), sc.counts[gkey(g.idx, int32(m))]}
				if in.m < 0 || better(c, in) {
					in = c
				}
			}
			if in.m < 0 {
				continue
			}
			zero, isPref, cnt := in.count == 0, d == pref, sc.dcCounts[int(g.idx)*len(sc.dcs)+int(d)]
			b := best < 0
			if !b {
				switch {
				case zero != bestZero:
					b = zero
				case isPref != bestPref:
					b = isPref
				default:
					b = cnt < bestCount
				}
			}
			if b {
				best, bestZero, bestPref, bestCount = in.m, zero, isPref, cnt
			}
		}
		return best
	}
	if m := pick(avoid); m >= 0 || avoid < 0 {
		return m
	}
	return pick(-1)
}

// TestIndexMatchesBruteForce checks every placement decision of the
// indexes against naiveChoose, with capacity freed now and then (new
// epochs) and machines of mixed sizes.
func TestIndexMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for n := range 300 {
		s := randomSnapshot(r, genOptions{})
		_, ids, err := validate(&s)
		if err != nil {
			t.Fatal(err)
		}
		sc := newScheduler(&s, ids)
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
		if len(sc.groups) == 0 || len(sc.ms) == 0 {
			continue
		}
		type held struct {
			m int32
			r req
		}
		var holds []held
		for step := range 200 {
			g := &sc.groups[r.IntN(len(sc.groups))]
			pref, avoid := int32(-1), int32(-1)
			if r.IntN(3) == 0 && len(sc.dcs) > 0 {
				pref = int32(r.IntN(len(sc.dcs)))
			}
			if r.IntN(3) == 0 {
				avoid = int32(r.IntN(len(sc.ms)))
			}
			want := sc.naiveChoose(g, pref, avoid)
			got := sc.choose(g, pref, avoid)
			if got < 0 && avoid >= 0 {
				got = sc.choose(g, pref, -1)
			}
			if got != want {
				t.Fatalf("snapshot %d step %d group %s pref %d avoid %d: index chose %d, brute force %d", n, step, g.g.Key, pref, avoid, got, want)
			}
			switch x := r.IntN(10); {
			case x < 6 && got >= 0:
				g.need = 1
				if !sc.placeOne(g, hint{prefDC: pref, avoid: avoid}) {
					t.Fatalf("snapshot %d step %d: placeOne failed after choose found %d", n, step, got)
				}
			case x < 8:
				// Take capacity on an eligible machine (load grows).
				m := int32(r.IntN(len(sc.ms)))
				if sc.ms[m].eligible() {
					h := held{m, req{int64(r.IntN(500)), int64(r.IntN(500))}}
					sc.use(h.m, h.r)
					holds = append(holds, h)
				}
			default:
				// Give capacity back (load shrinks: a new epoch).
				if len(holds) > 0 {
					j := r.IntN(len(holds))
					sc.release(holds[j].m, holds[j].r)
					holds = append(holds[:j], holds[j+1:]...)
				}
			}
		}
	}
}

// naivePick is pickCrowded's rule, one full scan per pick.
func (sc *scheduler) naivePick(insts []int32, k int) []int32 {
	dcCnt := map[int32]int{}
	mCnt := map[int32]int{}
	for _, i := range insts {
		dcCnt[sc.instDC[i]]++
		mCnt[sc.instM[i]]++
	}
	taken := map[int32]bool{}
	var picked []int32
	for _, wantHealthy := range []bool{false, true} {
		for k > 0 {
			best := int32(-1)
			for _, i := range insts {
				if taken[i] || healthy(sc.inst(i)) != wantHealthy {
					continue
				}
				if best < 0 {
					best = i
					continue
				}
				a, b := i, best
				switch {
				case dcCnt[sc.instDC[a]] != dcCnt[sc.instDC[b]]:
					if dcCnt[sc.instDC[a]] > dcCnt[sc.instDC[b]] {
						best = i
					}
				case mCnt[sc.instM[a]] != mCnt[sc.instM[b]]:
					if mCnt[sc.instM[a]] > mCnt[sc.instM[b]] {
						best = i
					}
				case sc.inst(a).ID < sc.inst(b).ID:
					best = i
				}
			}
			if best < 0 {
				break
			}
			taken[best] = true
			picked = append(picked, best)
			dcCnt[sc.instDC[best]]--
			mCnt[sc.instM[best]]--
			k--
		}
	}
	return picked
}

func TestPickCrowdedMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for n := range 500 {
		s := randomSnapshot(r, genOptions{})
		// Put many live instances of one group on few machines.
		for i := range s.Instances {
			s.Instances[i].Group = s.Groups[0].Key
			s.Instances[i].Machine = s.Machines[r.IntN(min(len(s.Machines), 6))].ID
		}
		_, ids, err := validate(&s)
		if err != nil {
			t.Fatal(err)
		}
		sc := newScheduler(&s, ids)
		var insts []int32
		for _, i := range sc.groups[0].insts {
			if sc.instM[i] >= 0 && sc.inst(i).State.Live() {
				insts = append(insts, i)
			}
		}
		k := r.IntN(len(insts) + 2)
		got, want := sc.pickCrowded(insts, k), sc.naivePick(insts, k)
		if !slices.Equal(got, want) {
			t.Fatalf("snapshot %d, k %d: picked %v, brute force %v", n, k, got, want)
		}
	}
}
