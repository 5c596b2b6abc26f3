package rollout

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// Op is a region operation to write: what one region is to be told about
// one service.
type Op struct {
	// Org, App and Service name the service; its key in the region is
	// regionapi.ServiceKey(Org, App, Service).
	Org, App, Service string
	Region            string
	Purpose           string // store.Purpose*
	// DeploymentID is the deployment whose rollout issues the operation
	// ("" for a service deletion or a smoke test); its timeline gets the
	// operation's events.
	DeploymentID string
	// OrgID is the organization whose secrets an apply unseals.
	OrgID string
	// Target is the deployment to apply; nil deletes the service in the
	// region.
	Target *Target
}

// opPayload is what an apply operation sends, without secret values (they
// are unsealed only when the call is made).
type opPayload struct {
	OrgID string          `json:"org_id"`
	Apply regionapi.Apply `json:"apply"`
}

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func newOpID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "op_" + b32.EncodeToString(b)
}

// NewOp writes an operation with a freshly allocated generation of the
// service in the region, in tx. The region's worker sends it once tx
// commits (see Nudge).
func (e *Engine) NewOp(ctx context.Context, tx store.Tx, o Op) (store.RegionOp, error) {
	return writeOp(ctx, tx, e.cfg.Now().UTC(), o)
}

func writeOp(ctx context.Context, tx store.Tx, now time.Time, o Op) (store.RegionOp, error) {
	key := regionapi.ServiceKey(o.Org, o.App, o.Service)
	gen, err := tx.AllocateGeneration(ctx, key, o.Region, o.Target == nil, now)
	if err != nil {
		return store.RegionOp{}, err
	}
	op := store.RegionOp{ID: newOpID(), ServiceKey: key, Region: o.Region, Generation: gen, Kind: store.OpDelete,
		Purpose: o.Purpose, DeploymentID: o.DeploymentID, State: store.OpPending, CreatedAt: now, UpdatedAt: now, Payload: []byte("{}")}
	if t := o.Target; t != nil {
		p := opPayload{OrgID: o.OrgID, Apply: regionapi.Apply{Generation: gen, Org: o.Org, App: o.App, Service: o.Service,
			DeploymentID: t.DeploymentID, Version: t.Version, Definition: t.Definition}}
		b, err := json.Marshal(p)
		if err != nil {
			return store.RegionOp{}, err
		}
		op.Kind, op.TargetDeploymentID, op.Payload = store.OpApply, t.DeploymentID, b
	}
	if err := tx.CreateRegionOp(ctx, op); err != nil {
		return store.RegionOp{}, err
	}
	return op, nil
}

// opWorker sends the pending operations of one region while this replica
// holds the region's operations lease, each retried with backoff until
// the region answers.
func (e *Engine) opWorker(region string, kicked chan struct{}) {
	lease := "region-ops:" + region
	next := map[string]time.Time{} // op id -> earliest next attempt
	tries := map[string]int{}
	lastErr := map[string]string{}
	for {
		// Read first: the lease (a write) is only taken while there is
		// something to send.
		var ops []store.RegionOp
		err := e.cfg.Store.View(e.ctx, func(tx store.Tx) error {
			var err error
			ops, err = tx.ListRegionOps(e.ctx, store.OpFilter{State: store.OpPending, Region: region})
			return err
		})
		if err != nil && e.ctx.Err() == nil {
			e.log.Warn("listing region operations", "region", region, "err", err)
		}
		if len(ops) == 0 {
			clear(next)
			clear(tries)
			clear(lastErr)
		}
		if len(ops) > 0 && e.acquire(e.ctx, lease) {
			pending := map[string]bool{}
			for _, op := range ops {
				pending[op.ID] = true
				if t, ok := next[op.ID]; ok && time.Now().Before(t) {
					continue
				}
				if e.ctx.Err() != nil {
					return
				}
				done, err := e.sendOp(e.ctx, op, lastErr[op.ID])
				if done {
					delete(next, op.ID)
					delete(tries, op.ID)
					delete(lastErr, op.ID)
					continue
				}
				tries[op.ID]++
				if err != nil {
					lastErr[op.ID] = err.Error()
				}
				next[op.ID] = time.Now().Add(e.backoff(tries[op.ID]))
			}
			for id := range next {
				if !pending[id] {
					delete(next, id)
					delete(tries, id)
					delete(lastErr, id)
				}
			}
		}
		wait := e.cfg.Poll
		for _, t := range next {
			if d := time.Until(t); d > 0 && d < wait {
				wait = d
			}
		}
		if !e.wait(wait, kicked) {
			return
		}
	}
}

// Send sends an operation until it is settled (done, superseded or
// refused), retrying with backoff, and returns it as settled. When ctx
// ends first it returns the last attempt's error.
func (e *Engine) Send(ctx context.Context, op store.RegionOp) (store.RegionOp, error) {
	prev := ""
	for attempt := 1; ; attempt++ {
		done, err := e.sendOp(ctx, op, prev)
		if done {
			break
		}
		if err != nil {
			prev = err.Error()
		}
		t := time.NewTimer(e.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			if prev == "" {
				prev = ctx.Err().Error()
			}
			return op, errors.New(prev)
		case <-t.C:
		}
	}
	var cur store.RegionOp
	err := e.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		cur, err = tx.GetRegionOp(ctx, op.ID)
		return err
	})
	return cur, err
}

// sendOp makes one attempt at an operation and records its outcome. It
// reports whether the operation is settled (done, superseded or refused);
// a transient error is returned for the caller to retry with backoff.
// prevErr is the previous attempt's error, so a repeated failure is
// recorded once as an event.
func (e *Engine) sendOp(ctx context.Context, op store.RegionOp, prevErr string) (bool, error) {
	var reg api.Region
	err := e.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		reg, err = tx.GetRegion(ctx, op.Region)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return true, e.settle(op, store.OpFailed, false, fmt.Sprintf("region %q is not registered", op.Region))
	}
	if err != nil {
		return false, err
	}
	cctx, cancel := context.WithTimeout(ctx, e.cfg.RegionTimeout)
	defer cancel()
	c := e.Client(reg)
	applied := false
	switch op.Kind {
	case store.OpApply:
		var p opPayload
		if err := json.Unmarshal(op.Payload, &p); err != nil {
			return true, e.settle(op, store.OpFailed, false, fmt.Sprintf("unreadable operation: %v", err))
		}
		secrets, serr := e.cfg.Secrets(ctx, p.OrgID, p.Apply.Definition)
		if serr != nil {
			if ctx.Err() != nil {
				return false, serr
			}
			return true, e.settle(op, store.OpFailed, false, serr.Error())
		}
		p.Apply.Secrets = secrets
		var res regionapi.ApplyResult
		res, err = c.Apply(cctx, p.Apply)
		applied = res.Applied
	case store.OpDelete:
		err = c.DeleteService(cctx, op.ServiceKey, op.Generation)
	default:
		return true, e.settle(op, store.OpFailed, false, fmt.Sprintf("unknown operation kind %q", op.Kind))
	}
	if ctx.Err() != nil {
		return false, ctx.Err() // stopping: the outcome is unknown; the next holder sends it again
	}
	result := "ok"
	if op.Kind == store.OpApply {
		result = map[bool]string{true: "applied", false: "unchanged"}[applied]
	}
	if err != nil {
		result = errorKind(err)
	}
	e.calls.WithLabelValues(op.Region, op.Kind, result).Inc()
	if hook := e.cfg.OnRegionCall; hook != nil {
		hook(RegionCall{Region: op.Region, ServiceKey: op.ServiceKey, Kind: op.Kind, Purpose: op.Purpose,
			Generation: op.Generation, Applied: applied, Err: err, At: time.Now()})
	}
	switch result {
	case "stale":
		return true, e.settle(op, store.OpSuperseded, false, fmt.Sprintf("region %s holds a newer generation: %v", op.Region, err))
	case "refused":
		return true, e.settle(op, store.OpFailed, false, fmt.Sprintf("region %s refused generation %d: %v", op.Region, op.Generation, err))
	case "error":
		msg := fmt.Sprintf("region %s: %v (retrying)", op.Region, err)
		if msg != prevErr {
			e.log.Warn("region call failed", "region", op.Region, "service", op.ServiceKey, "generation", op.Generation, "err", err)
			e.note(op, fmt.Sprintf("%s %s generation %d: %v; retrying with backoff", op.Purpose, op.Kind, op.Generation, err))
		}
		return false, errors.New(msg)
	}
	msg := fmt.Sprintf("generation %d accepted", op.Generation)
	if op.Kind == store.OpApply && !applied {
		msg = fmt.Sprintf("generation %d was already applied", op.Generation)
	}
	return true, e.settle(op, store.OpDone, applied, msg)
}

// note records a transient failure on the operation and as an event of its
// deployment.
func (e *Engine) note(op store.RegionOp, msg string) {
	err := e.record(op, store.OpPending, false, msg, func(ev *api.DeploymentEvent) bool {
		ev.Type = api.EventRegionErr
		return true
	})
	if err != nil {
		e.log.Warn("recording a region error", "op", op.ID, "err", err)
	}
}

// settle records an operation's final state, unless it was settled or
// superseded meanwhile, with an event on its deployment.
func (e *Engine) settle(op store.RegionOp, state string, applied bool, msg string) error {
	err := e.record(op, state, applied, msg, func(ev *api.DeploymentEvent) bool {
		switch {
		case state == store.OpDone && op.Purpose == store.PurposeRollout:
			ev.Type = api.EventApplied
		case state == store.OpDone && op.Purpose == store.PurposeRevert:
			ev.Type, ev.Message = api.EventReverted, revertedMessage(op, msg)
		case state == store.OpDone && op.Purpose == store.PurposeRemove:
			ev.Type, ev.Message = api.EventRemoved, "service stopped in the region: "+msg
		case state == store.OpDone:
			return false
		default:
			ev.Type = api.EventRegionErr
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("recording operation %s: %w", op.ID, err)
	}
	e.NudgeDeployment(op.DeploymentID)
	return nil
}

// record counts an attempt at a pending operation and sets its state and
// message, with the event event makes (when it returns true) on its
// deployment. An operation settled or superseded meanwhile is left alone.
func (e *Engine) record(op store.RegionOp, state string, applied bool, msg string, event func(*api.DeploymentEvent) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return e.cfg.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetRegionOp(ctx, op.ID)
		if err != nil || cur.State != store.OpPending {
			return err
		}
		cur.Attempts++
		cur.State, cur.Applied, cur.Message, cur.UpdatedAt = state, applied, msg, e.cfg.Now().UTC()
		if err := tx.UpdateRegionOp(ctx, cur); err != nil {
			return err
		}
		ev := api.DeploymentEvent{At: cur.UpdatedAt, Region: op.Region, Message: msg}
		if !event(&ev) {
			return nil
		}
		return addEvent(ctx, tx, op.DeploymentID, ev)
	})
}

func revertedMessage(op store.RegionOp, msg string) string {
	if op.Kind == store.OpDelete {
		return "reverted: no earlier deployment was healthy here, so the service was stopped (" + msg + ")"
	}
	var p opPayload
	if json.Unmarshal(op.Payload, &p) == nil {
		return fmt.Sprintf("reverted to version %d (%s): %s", p.Apply.Version, p.Apply.DeploymentID, msg)
	}
	return "reverted: " + msg
}
