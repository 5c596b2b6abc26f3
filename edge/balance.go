package edge

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-run/meridian/regionapi"
)

// errRegionUnreachable cuts the attempts waiting on a region whose probes
// stopped answering.
var errRegionUnreachable = errors.New("the region stopped answering probes")

// regionState is one region the edge routes to: its last good feed, its
// measured round-trip time and its rank.
type regionState struct {
	info   Region
	geoRTT time.Duration // estimated from the coordinates

	rtt         atomic.Int64 // the smallest recent probe round trip in ns; 0 unmeasured
	samples     [rttWindow]time.Duration
	nsamples    int          // only the probe goroutine touches samples
	unreachable atomic.Bool  // the last probe timed out
	rank        atomic.Int32 // 0 is the best

	mu        sync.Mutex
	services  []regionapi.FeedService // last good feed
	revision  int64
	received  time.Time
	hasFeed   bool
	connected bool
	source    string // "snapshot" or "feed"
	lastErr   string

	cutMu  sync.Mutex
	cutCtx context.Context // canceled (errRegionUnreachable) when the region becomes unreachable
	cut    context.CancelCauseFunc

	stop context.CancelFunc // ends the region's feed and probe loops
}

// rttWindow is how many probe round trips the RTT is the minimum of: the
// least delayed by queues along the way, the best estimate of the path
// (as TCP's min_rtt).
const rttWindow = 8

// rttSample adds a probe's round trip (0 forgets them all) and returns
// the minimum of the window.
func (rs *regionState) rttSample(d time.Duration) time.Duration {
	if d <= 0 {
		rs.nsamples = 0
		return 0
	}
	rs.samples[rs.nsamples%rttWindow] = d
	rs.nsamples++
	m := d
	for _, v := range rs.samples[:min(rs.nsamples, rttWindow)] {
		m = min(m, v)
	}
	return m
}

func newRegionState(r Region, lat, lon float64) *regionState {
	rs := &regionState{info: r, geoRTT: regionapi.GeoRTT(lat, lon, r.Latitude, r.Longitude)}
	rs.cutCtx, rs.cut = context.WithCancelCause(context.Background())
	return rs
}

// attemptScope returns the context that is canceled when the region
// becomes unreachable.
func (rs *regionState) attemptScope() context.Context {
	rs.cutMu.Lock()
	defer rs.cutMu.Unlock()
	return rs.cutCtx
}

// cutAttempts cancels the attempts waiting on the region.
func (rs *regionState) cutAttempts() {
	rs.cutMu.Lock()
	defer rs.cutMu.Unlock()
	rs.cut(errRegionUnreachable)
	rs.cutCtx, rs.cut = context.WithCancelCause(context.Background())
}

// rankRegions orders regions: reachable first; then by measured RTT (or
// the coordinates' estimate when unmeasured) in buckets of tolerance;
// then by the coordinates' estimate; then by id. It stores each region's
// rank.
func rankRegions(list []*regionState, tolerance time.Duration) {
	type key struct {
		rs          *regionState
		unreachable bool
		bucket      int64
	}
	keys := make([]key, len(list))
	for i, rs := range list {
		score := time.Duration(rs.rtt.Load())
		if score <= 0 {
			score = rs.geoRTT
		}
		keys[i] = key{rs: rs, unreachable: rs.unreachable.Load(), bucket: int64(score / tolerance)}
	}
	slices.SortFunc(keys, func(a, b key) int {
		switch {
		case a.unreachable != b.unreachable:
			if a.unreachable {
				return 1
			}
			return -1
		case a.bucket != b.bucket:
			return cmpInt(a.bucket, b.bucket)
		case a.rs.geoRTT != b.rs.geoRTT:
			return cmpInt(int64(a.rs.geoRTT), int64(b.rs.geoRTT))
		}
		if a.rs.info.ID < b.rs.info.ID {
			return -1
		}
		return 1
	})
	for i, k := range keys {
		k.rs.rank.Store(int32(i))
	}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// maxPerRegion is how many attempts of one request go to one region
// before the next region is tried.
const maxPerRegion = 2

// pick chooses the endpoint for a request's next attempt: in the best
// ranked region with an available endpoint (healthy in the feed, not
// ejected, not tried by this request, fewer than maxPerRegion attempts
// there), the less loaded of two random ones. When no healthy endpoint is
// left anywhere, those the feed calls unhealthy are tried, then ejected
// ones, rather than none (closest first: Envoy's panic routing).
func pick(rt *route, tried []*endpoint, now int64) *endpoint {
	var buf [8]*target
	order := append(buf[:0], rt.targets...)
	// Insertion sort by rank: a handful of regions.
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && order[j].region.rank.Load() < order[j-1].region.rank.Load(); j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	// Healthy ones first, then those the feed calls unhealthy, then the
	// ejected healthy ones, then the ejected others: anything that might
	// answer rather than a certain 503.
	for _, pass := range [...]struct{ standby, ignoreEjection bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		for _, t := range order {
			list := t.eps
			if pass.standby {
				list = t.standby
			}
			if len(list) == 0 || attemptsIn(tried, t.region) >= maxPerRegion {
				continue
			}
			if ep := p2c(list, tried, now, pass.ignoreEjection); ep != nil {
				return ep
			}
		}
	}
	return nil
}

func attemptsIn(tried []*endpoint, rs *regionState) int {
	n := 0
	for _, e := range tried {
		if e.region == rs {
			n++
		}
	}
	return n
}

func available(e *endpoint, tried []*endpoint, now int64, ignoreEjection bool) bool {
	if !ignoreEjection && e.ejected(now) {
		return false
	}
	return !slices.Contains(tried, e)
}

// p2c returns the less loaded of two random available endpoints (power of
// two choices), or nil when none is available.
func p2c(eps []*endpoint, tried []*endpoint, now int64, ignoreEjection bool) *endpoint {
	n := len(eps)
	if n == 1 {
		if available(eps[0], tried, now, ignoreEjection) {
			return eps[0]
		}
		return nil
	}
	var a, b *endpoint
	if n > 8 {
		// Sample first: cheap when most are available.
		for i := 0; i < 8 && b == nil; i++ {
			e := eps[rand.IntN(n)]
			if e == a || !available(e, tried, now, ignoreEjection) {
				continue
			}
			if a == nil {
				a = e
			} else {
				b = e
			}
		}
	}
	if b == nil {
		// Small sets, or most unavailable: choose among all available.
		var buf [8]*endpoint
		avail := buf[:0]
		for _, e := range eps {
			if available(e, tried, now, ignoreEjection) {
				avail = append(avail, e)
			}
		}
		switch len(avail) {
		case 0:
			return nil
		case 1:
			return avail[0]
		}
		i := rand.IntN(len(avail))
		j := rand.IntN(len(avail) - 1)
		if j >= i {
			j++
		}
		a, b = avail[i], avail[j]
	}
	if b.inflight.Load() < a.inflight.Load() {
		return b
	}
	return a
}
