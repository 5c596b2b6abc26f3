package clock

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func fired(c <-chan time.Time) (time.Time, bool) {
	select {
	case t := <-c:
		return t, true
	default:
		return time.Time{}, false
	}
}

func TestFakeTimer(t *testing.T) {
	f := NewFake(time.Time{})
	start := f.Now()
	tm := f.NewTimer(10 * time.Second)
	f.Advance(9 * time.Second)
	if _, ok := fired(tm.C()); ok {
		t.Fatal("fired early")
	}
	f.Advance(time.Second)
	at, ok := fired(tm.C())
	if !ok || !at.Equal(start.Add(10*time.Second)) {
		t.Fatalf("fired %v at %v, want at %v", ok, at, start.Add(10*time.Second))
	}
	if tm.Stop() {
		t.Fatal("Stop of a fired timer reported it armed")
	}
	if tm.Reset(time.Second) {
		t.Fatal("Reset of a fired timer reported it armed")
	}
	if !tm.Stop() {
		t.Fatal("Stop of an armed timer reported it not armed")
	}
	f.Advance(time.Hour)
	if _, ok := fired(tm.C()); ok {
		t.Fatal("a stopped timer fired")
	}
	now := f.NewTimer(0)
	if len(f.Armed()) != 0 {
		t.Fatalf("a zero timer is armed: %v", f.Armed())
	}
	if _, ok := fired(now.C()); !ok {
		t.Fatal("a zero timer has not fired")
	}
}

// Timers fire in time order, each with its own deadline, and the clock
// reads each deadline while they fire.
func TestFakeFiresInOrder(t *testing.T) {
	f := NewFake(time.Time{})
	start := f.Now()
	a, b := f.NewTimer(3*time.Second), f.NewTimer(time.Second)
	f.Advance(5 * time.Second)
	ta, _ := fired(a.C())
	tb, _ := fired(b.C())
	if !ta.Equal(start.Add(3*time.Second)) || !tb.Equal(start.Add(time.Second)) {
		t.Fatalf("fired at %v and %v", ta.Sub(start), tb.Sub(start))
	}
	if got := f.Now().Sub(start); got != 5*time.Second {
		t.Fatalf("now is start+%v", got)
	}
}

func TestFakeTicker(t *testing.T) {
	f := NewFake(time.Time{})
	tk := f.NewTicker(time.Second)
	for i := range 3 {
		f.Advance(time.Second)
		if _, ok := fired(tk.C()); !ok {
			t.Fatalf("tick %d missing", i)
		}
	}
	// A slow reader gets one tick, not a backlog.
	f.Advance(5 * time.Second)
	if _, ok := fired(tk.C()); !ok {
		t.Fatal("no tick after 5 periods")
	}
	if _, ok := fired(tk.C()); ok {
		t.Fatal("a backlog of ticks")
	}
	tk.Reset(time.Minute)
	if got := f.Armed(); !slices.Equal(got, []time.Duration{time.Minute}) {
		t.Fatalf("armed %v after Reset", got)
	}
	tk.Stop()
	f.Advance(time.Hour)
	if _, ok := fired(tk.C()); ok {
		t.Fatal("a stopped ticker ticked")
	}
}

// WaitArmed and WaitArms return as soon as the code under test arms a
// timer, without polling.
func TestFakeWaits(t *testing.T) {
	f := NewFake(time.Time{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := f.Arms()
	done := make(chan error, 1)
	go func() { done <- Sleep(ctx, f, 7*time.Second) }()
	if err := f.WaitArmed(ctx, func(d time.Duration) bool { return d == 7*time.Second }); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitArms(ctx, n); err != nil {
		t.Fatal(err)
	}
	f.Advance(7 * time.Second)
	if err := <-done; err != nil {
		t.Fatalf("Sleep: %v", err)
	}
	short, cancelShort := context.WithCancel(ctx)
	cancelShort()
	if err := f.WaitArmed(short, func(time.Duration) bool { return false }); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitArmed with an ended context: %v", err)
	}
}

func TestSleepEndsWithItsContext(t *testing.T) {
	f := NewFake(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Sleep(ctx, f, time.Hour) }()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := f.WaitArmed(wctx, nil); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep: %v", err)
	}
	if len(f.Armed()) != 0 {
		t.Fatalf("Sleep left a timer armed: %v", f.Armed())
	}
	if err := Sleep(context.Background(), Real(), time.Millisecond); err != nil {
		t.Fatalf("Sleep on the real clock: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	var got []time.Duration
	for range 6 {
		got = append(got, b.Next())
	}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(got, want) {
		t.Fatalf("delays %v, want %v", got, want)
	}
	b.Reset()
	if d := b.Next(); d != 100*time.Millisecond {
		t.Fatalf("after Reset: %v", d)
	}
	j := Backoff{Min: time.Second, Max: 8 * time.Second, Jitter: 0.2}
	for i := range 200 {
		if i%4 == 0 {
			j.Reset()
		}
		want := time.Second << (i % 4)
		d := j.Next()
		if d > want || d < want-want/5 {
			t.Fatalf("jittered delay %v outside [%v, %v]", d, want-want/5, want)
		}
	}
	var zero Backoff
	if d := zero.Next(); d != 0 {
		t.Fatalf("zero Backoff: %v", d)
	}
}

func TestBackoffWait(t *testing.T) {
	f := NewFake(time.Time{})
	b := Backoff{Min: time.Second, Max: time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Wait(ctx, f) }()
	if err := f.WaitArmed(ctx, func(d time.Duration) bool { return d == time.Second }); err != nil {
		t.Fatal(err)
	}
	f.Advance(time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
