package clock

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Fake is a Clock whose time moves only when a test says so (Advance,
// Set); its timers and tickers fire then, in time order. Tests wait for
// the code under test to arm a timer with WaitArmed rather than sleeping.
// It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	armed   []*fakeWaiter
	arms    int
	last    time.Time     // deadline of the latest arm
	changed chan struct{} // closed, then replaced, when armed changes
}

// fakeWaiter is a Fake's timer (period 0) or ticker.
type fakeWaiter struct {
	f      *Fake
	ch     chan time.Time
	at     time.Time
	d      time.Duration // what it was armed for
	period time.Duration
}

// NewFake returns a fake clock at start (a fixed date when start is zero).
func NewFake(start time.Time) *Fake {
	if start.IsZero() {
		start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return &Fake{now: start, changed: make(chan struct{})}
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer that fires once the clock has moved d on; a d
// of zero or less has fired already.
func (f *Fake) NewTimer(d time.Duration) Timer {
	w := &fakeWaiter{f: f, ch: make(chan time.Time, 1)}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.arm(w, d)
	return fakeTimer{w}
}

// NewTicker returns a ticker of period d.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	w := &fakeWaiter{f: f, ch: make(chan time.Time, 1), period: d}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.arm(w, d)
	return fakeTicker{w}
}

// arm (under f.mu) sets w to fire d from now, or fires it now.
func (f *Fake) arm(w *fakeWaiter, d time.Duration) {
	f.disarm(w)
	w.d, w.at = d, f.now.Add(d)
	f.arms++
	f.last = w.at
	if d <= 0 {
		w.fire(f.now)
	} else {
		f.armed = append(f.armed, w)
	}
	f.notify()
}

// disarm (under f.mu) removes w from the armed set; it reports whether w
// was in it.
func (f *Fake) disarm(w *fakeWaiter) bool {
	i := slices.Index(f.armed, w)
	if i < 0 {
		return false
	}
	f.armed = slices.Delete(f.armed, i, i+1)
	f.notify()
	return true
}

func (f *Fake) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// fire delivers at, dropping it if the last one was not read yet (as
// time.Ticker drops ticks for a slow reader).
func (w *fakeWaiter) fire(at time.Time) {
	select {
	case w.ch <- at:
	default:
	}
}

// Advance moves the clock d on, firing what falls due on the way.
func (f *Fake) Advance(d time.Duration) { f.Set(f.Now().Add(d)) }

// Set moves the clock to t (never back), firing what falls due on the
// way, in time order; a ticker fires once per period passed, as far as
// its reader keeps up.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		var next *fakeWaiter
		for _, w := range f.armed {
			if !w.at.After(t) && (next == nil || w.at.Before(next.at)) {
				next = w
			}
		}
		if next == nil {
			break
		}
		if next.at.After(f.now) {
			f.now = next.at
		}
		next.fire(next.at)
		if next.period > 0 {
			next.at = next.at.Add(next.period)
		} else {
			f.disarm(next)
		}
	}
	if t.After(f.now) {
		f.now = t
	}
	f.notify()
}

// Armed returns the durations the armed timers and tickers were set for,
// sorted.
func (f *Fake) Armed() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	ds := make([]time.Duration, 0, len(f.armed))
	for _, w := range f.armed {
		ds = append(ds, w.d)
	}
	slices.Sort(ds)
	return ds
}

// Arms counts the timers and tickers armed (made or reset) so far: a test
// remembers it, then waits for a new one with WaitArms.
func (f *Fake) Arms() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.arms
}

// LastArmed returns the deadline of the timer or ticker armed last
// (made or reset), whether or not it has fired since.
func (f *Fake) LastArmed() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// WaitArmed waits until a timer or ticker set for a duration that match
// accepts is armed (any, when match is nil), or ctx ends.
func (f *Fake) WaitArmed(ctx context.Context, match func(time.Duration) bool) error {
	return f.wait(ctx, func() bool {
		for _, w := range f.armed {
			if match == nil || match(w.d) {
				return true
			}
		}
		return false
	})
}

// WaitArms waits until more than n timers or tickers have been armed in
// all (see Arms), or ctx ends.
func (f *Fake) WaitArms(ctx context.Context, n int) error {
	return f.wait(ctx, func() bool { return f.arms > n })
}

func (f *Fake) wait(ctx context.Context, cond func() bool) error {
	for {
		f.mu.Lock()
		ok, changed := cond(), f.changed
		f.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type fakeTimer struct{ w *fakeWaiter }

func (t fakeTimer) C() <-chan time.Time { return t.w.ch }

func (t fakeTimer) Stop() bool {
	f := t.w.f
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.disarm(t.w)
}

func (t fakeTimer) Reset(d time.Duration) bool {
	f := t.w.f
	f.mu.Lock()
	defer f.mu.Unlock()
	was := slices.Contains(f.armed, t.w)
	f.arm(t.w, d)
	return was
}

type fakeTicker struct{ w *fakeWaiter }

func (t fakeTicker) C() <-chan time.Time { return t.w.ch }

func (t fakeTicker) Stop() {
	f := t.w.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disarm(t.w)
}

func (t fakeTicker) Reset(d time.Duration) {
	if d <= 0 {
		panic("clock: non-positive interval for Ticker.Reset")
	}
	f := t.w.f
	f.mu.Lock()
	defer f.mu.Unlock()
	t.w.period = d
	f.arm(t.w, d)
}
