package agent

import (
	"context"
	"time"

	"github.com/meridian-run/meridian/regionapi"
)

// Watch reconnection backoff.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 2 * time.Second
)

// watchLoop follows the machine's assignments: a snapshot, then changes,
// resumed from the last revision seen after a disconnect (on the next
// server when one fails).
func (a *Agent) watchLoop(ctx context.Context) {
	var after int64
	idx := int(a.rc.preferred.Load())
	backoff := watchBackoffMin
	failing := false
	for ctx.Err() == nil {
		got, err := a.watchOnce(ctx, idx, &after)
		if ctx.Err() != nil {
			return
		}
		if got {
			backoff = watchBackoffMin
			failing = false
		}
		if !failing {
			a.log.Info("assignment watch interrupted; resuming", "server", a.rc.urls[idx], "after", after, "err", err)
			failing = true
		} else {
			a.log.Debug("assignment watch failed", "server", a.rc.urls[idx], "err", err)
		}
		idx = (idx + 1) % len(a.rc.clients)
		if !a.sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, watchBackoffMax)
	}
}

// watchOnce runs one watch stream on server idx. It reports whether any
// event arrived.
func (a *Agent) watchOnce(ctx context.Context, idx int, after *int64) (bool, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	alive := make(chan struct{}, 1)
	go a.watchdog(wctx, cancel, alive)
	got := false
	err := a.rc.clients[idx].Watch(wctx, *after, func(ev regionapi.WatchEvent) error {
		got = true
		select {
		case alive <- struct{}{}:
		default:
		}
		switch ev.Type {
		case regionapi.EventSnapshot:
			a.applySnapshot(ev.Assignments)
		case regionapi.EventPut:
			if ev.Assignment != nil {
				a.applyPut(*ev.Assignment)
			}
		case regionapi.EventDelete:
			a.applyDelete(ev.ID)
		default: // keepalive, or a type this agent does not know
		}
		if ev.Revision > *after || ev.Type == regionapi.EventSnapshot {
			*after = ev.Revision
		}
		return nil
	})
	return got, err
}

// watchdog cancels a watch that stays silent for WatchIdleTimeout (a dead
// connection that nobody closed).
func (a *Agent) watchdog(ctx context.Context, cancel context.CancelFunc, alive <-chan struct{}) {
	for {
		t := a.clock.NewTimer(a.cfg.WatchIdleTimeout)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-alive:
			t.Stop()
		case <-t.C():
			a.log.Warn("assignment watch silent; reopening it", "idle", a.cfg.WatchIdleTimeout)
			cancel()
			return
		}
	}
}

func (a *Agent) applySnapshot(as []regionapi.Assignment) {
	a.mu.Lock()
	first := !a.synced
	a.desired = make(map[string]regionapi.Assignment, len(as))
	for _, as := range as {
		a.desired[as.ID] = as
	}
	a.synced = true
	a.mu.Unlock()
	if first {
		a.log.Info("assignments received", "instances", len(as))
	}
	a.kickReconcile()
}

func (a *Agent) applyPut(as regionapi.Assignment) {
	a.mu.Lock()
	a.desired[as.ID] = as
	a.mu.Unlock()
	a.log.Debug("instance assigned", "instance", as.ID, "service", as.Service)
	a.kickReconcile()
}

func (a *Agent) applyDelete(id string) {
	a.mu.Lock()
	_, ok := a.desired[id]
	delete(a.desired, id)
	a.mu.Unlock()
	if ok {
		a.log.Debug("instance unassigned", "instance", id)
	}
	a.kickReconcile()
}

func (a *Agent) kickReconcile() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}
