package supervise

import (
	"errors"
	"log/slog"
	"testing"
	"time"
)

// TestHealthDecisions drives the tracker through a run: failures inside
// the grace period are retried at StartupPoll and not counted; healthy
// once every check passed; unhealthy after threshold failures in a row.
func TestHealthDecisions(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	checks := []check{
		{name: "a", grace: 5 * time.Second, interval: 2 * time.Second},
		{name: "b", interval: time.Second},
	}
	h := newHealth(checks, 3, t0, 0)
	if h.healthy() {
		t.Fatal("healthy before any check")
	}
	if due := h.due(t0); len(due) != 2 {
		t.Fatalf("due at start: %v", due)
	}
	boom := errors.New("boom")
	// a fails in its grace period: retried soon, not counted; b passes.
	failed, now := h.record(t0, []checkResult{{0, boom}, {1, nil}}, log)
	if failed != "" || now {
		t.Fatalf("after a grace failure: failed %q, healthy %v", failed, now)
	}
	if next, _ := h.next(); !next.Equal(t0.Add(StartupPoll)) {
		t.Fatalf("next check at +%v, want +%v", next.Sub(t0), StartupPoll)
	}
	// a passes: every check passed, healthy from then on.
	t1 := t0.Add(time.Second)
	if failed, now := h.record(t1, []checkResult{{0, nil}}, log); failed != "" || !now || !h.since.Equal(t1) {
		t.Fatalf("after every check passed: failed %q, became healthy %v, since %v", failed, now, h.since)
	}
	// b fails past a's grace, three times in a row: unhealthy at the third.
	for i := range 3 {
		at := t0.Add(time.Duration(10+i) * time.Second)
		failed, now := h.record(at, []checkResult{{1, boom}}, log)
		if now {
			t.Fatal("became healthy again")
		}
		if (failed != "") != (i == 2) {
			t.Fatalf("failure %d: failed %q", i+1, failed)
		}
	}
	// No checks: healthy at once, nothing due.
	if h := newHealth(nil, 3, t0, 0); !h.healthy() {
		t.Fatal("no checks: not healthy")
	} else if _, ok := h.next(); ok {
		t.Fatal("no checks: a check is due")
	}
	// An adopted instance older than its grace period is checked at once
	// and its failures count.
	old := newHealth(checks[:1], 1, t0, time.Minute)
	if failed, _ := old.record(t0, []checkResult{{0, boom}}, log); failed == "" {
		t.Fatal("an adopted instance's failure inside the original grace was not counted")
	}
}
