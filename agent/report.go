package agent

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/meridian-run/meridian/regionapi"
)

// reportRetry is how soon a failed report is sent again.
const reportRetry = time.Second

// reportLoop sends instance states to the region: the changed ones,
// batched over ReportDebounce, and all of them every FullReportInterval.
// A failed report is retried, in full, after reportRetry.
func (a *Agent) reportLoop(ctx context.Context) {
	full := a.clock.NewTimer(a.cfg.FullReportInterval)
	defer func() { full.Stop() }()
	var batch <-chan time.Time
	var batchStop func() bool
	defer func() {
		if batchStop != nil {
			batchStop()
		}
	}()
	retryFull := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.dirtyCh:
			if batch == nil {
				t := a.clock.NewTimer(a.cfg.ReportDebounce)
				batch, batchStop = t.C(), t.Stop
			}
			continue
		case <-batch:
		case <-full.C():
			full = a.clock.NewTimer(a.cfg.FullReportInterval)
			retryFull = true
		}
		batch, batchStop = nil, nil
		if !a.report(ctx, retryFull) && ctx.Err() == nil {
			retryFull = true
			t := a.clock.NewTimer(reportRetry)
			batch, batchStop = t.C(), t.Stop
			continue
		}
		retryFull = false
	}
}

// report sends the changed instances (or all of them) and says whether the
// region took the report.
func (a *Agent) report(ctx context.Context, all bool) bool {
	a.mu.Lock()
	var reps []regionapi.InstanceReport
	for id, in := range a.insts {
		if all || a.dirty[id] {
			reps = append(reps, regionapi.InstanceReport{ID: id, State: in.state, Healthy: in.healthy,
				Restarts: in.restarts, Message: in.message, Ports: in.portsByName()})
		}
	}
	clear(a.dirty)
	a.mu.Unlock()
	if len(reps) == 0 {
		return true
	}
	slices.SortFunc(reps, func(x, y regionapi.InstanceReport) int { return strings.Compare(x.ID, y.ID) })
	err := a.rc.call(ctx, a.cfg.RequestTimeout, "report", func(ctx context.Context, c *regionapi.Client) error {
		return c.Report(ctx, regionapi.StatusReport{Instances: reps})
	})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Debug("report failed; retrying", "instances", len(reps), "err", err)
		}
		return false
	}
	a.log.Debug("reported", "instances", len(reps), "full", all)
	return true
}
