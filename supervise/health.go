package supervise

import (
	"fmt"
	"log/slog"
	"time"
)

// checkState is the running state of one check.
type checkState struct {
	next   time.Time
	fails  int
	passed bool
}

// checkResult is the outcome of one check: index in s.checks, and nil or
// why it failed.
type checkResult struct {
	i   int
	err error
}

// health tracks the checks of one run of an instance: when each is due,
// its consecutive failures, its grace period, and since when every check
// has passed. It decides; the supervisor runs the checks and reports.
type health struct {
	checks    []check
	threshold int
	states    []checkState
	graceEnd  []time.Time
	since     time.Time // when every check passed (zero until then)
}

// newHealth starts tracking checks at now for an instance that has been
// up for age already (an adopted one); with no checks it is healthy at
// once.
func newHealth(checks []check, threshold int, now time.Time, age time.Duration) *health {
	h := &health{checks: checks, threshold: threshold, states: make([]checkState, len(checks)),
		graceEnd: make([]time.Time, len(checks))}
	for i, c := range checks {
		h.graceEnd[i] = now.Add(max(c.grace-age, 0))
		h.states[i].next = now
	}
	if len(checks) == 0 {
		h.since = now
	}
	return h
}

func (h *health) healthy() bool { return !h.since.IsZero() }

// next returns when the next check is due; false with no checks.
func (h *health) next() (time.Time, bool) {
	if len(h.states) == 0 {
		return time.Time{}, false
	}
	next := h.states[0].next
	for _, st := range h.states[1:] {
		if st.next.Before(next) {
			next = st.next
		}
	}
	return next, true
}

// due lists the checks due at now.
func (h *health) due(now time.Time) []int {
	var due []int
	for i, st := range h.states {
		if !st.next.After(now) {
			due = append(due, i)
		}
	}
	return due
}

// record takes a round of results at now. It returns why the instance is
// unhealthy (a check failed threshold times in a row after its grace
// period), or whether it just became healthy (every check passed).
func (h *health) record(now time.Time, res []checkResult, log *slog.Logger) (failed string, nowHealthy bool) {
	for _, r := range res {
		i, err := r.i, r.err
		st := &h.states[i]
		st.next = now.Add(h.checks[i].interval)
		if err == nil {
			st.fails, st.passed = 0, true
			continue
		}
		if now.Before(h.graceEnd[i]) {
			// Not counted: the instance may still be starting.
			st.next = now.Add(min(h.checks[i].interval, StartupPoll))
			continue
		}
		st.fails++
		log.Debug("health check failed", "check", h.checks[i].name, "err", err, "consecutive", st.fails)
		if st.fails >= h.threshold && failed == "" {
			failed = fmt.Sprintf("health check %s: %v", h.checks[i].name, err)
		}
	}
	if failed != "" || h.healthy() {
		return failed, false
	}
	for _, st := range h.states {
		if !st.passed || st.fails != 0 {
			return "", false
		}
	}
	h.since = now
	return "", true
}
