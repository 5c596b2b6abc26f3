package global

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// opPayload is what an apply operation sends, without secret values (they
// are unsealed only when the call is made).
type opPayload struct {
	OrgID string          `json:"org_id"`
	Apply regionapi.Apply `json:"apply"`
}

// newOp writes an operation on a service in a region with a freshly
// allocated generation, in tx. target is the deployment to apply (nil for
// a deletion).
func (e *engine) newOp(ctx context.Context, tx store.Tx, key, region, purpose, deploymentID string, orgID string, target *api.Deployment, def *api.RegionalDefinition) (store.RegionOp, error) {
	now := e.s.cfg.Now().UTC()
	gen, err := tx.AllocateGeneration(ctx, key, region, target == nil, now)
	if err != nil {
		return store.RegionOp{}, err
	}
	op := store.RegionOp{ID: newID("op"), ServiceKey: key, Region: region, Generation: gen, Kind: store.OpDelete,
		Purpose: purpose, DeploymentID: deploymentID, State: store.OpPending, CreatedAt: now, UpdatedAt: now, Payload: []byte("{}")}
	if target != nil {
		org, app, svc := splitKey(key)
		p := opPayload{OrgID: orgID, Apply: regionapi.Apply{Generation: gen, Org: org, App: app, Service: svc,
			DeploymentID: target.ID, Version: target.Version, Definition: *def}}
		b, err := json.Marshal(p)
		if err != nil {
			return store.RegionOp{}, err
		}
		op.Kind, op.TargetDeploymentID, op.Payload = store.OpApply, target.ID, b
	}
	if err := tx.CreateRegionOp(ctx, op); err != nil {
		return store.RegionOp{}, err
	}
	return op, nil
}

// opWorker sends the pending operations of one region while this replica
// holds the region's operations lease, each retried with backoff until
// the region answers.
func (e *engine) opWorker(region string, kicked chan struct{}) {
	lease := "region-ops:" + region
	next := map[string]time.Time{} // op id -> earliest next attempt
	tries := map[string]int{}
	lastErr := map[string]string{}
	for {
		// Read first: the lease (a write) is only taken while there is
		// something to send.
		var ops []store.RegionOp
		err := e.s.cfg.Store.View(e.ctx, func(tx store.Tx) error {
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
		wait := e.s.cfg.RolloutPoll
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

// sendOp makes one attempt at an operation and records its outcome. It
// reports whether the operation is settled (done, superseded or refused);
// a transient error is returned for the caller to retry with backoff.
// prevErr is the previous attempt's error, so a repeated failure is
// recorded once as an event.
func (e *engine) sendOp(ctx context.Context, op store.RegionOp, prevErr string) (bool, error) {
	var reg api.Region
	err := e.s.cfg.Store.View(ctx, func(tx store.Tx) error {
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
	cctx, cancel := context.WithTimeout(ctx, e.s.cfg.RegionTimeout)
	defer cancel()
	c := e.client(reg)
	applied := false
	switch op.Kind {
	case store.OpApply:
		var p opPayload
		if err := json.Unmarshal(op.Payload, &p); err != nil {
			return true, e.settle(op, store.OpFailed, false, fmt.Sprintf("unreadable operation: %v", err))
		}
		secrets, serr := e.s.secretsFor(ctx, p.OrgID, p.Apply.Definition.Env)
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
	if hook := e.s.cfg.OnRegionCall; hook != nil {
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
func (e *engine) note(op store.RegionOp, msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetRegionOp(ctx, op.ID)
		if err != nil || cur.State != store.OpPending {
			return err
		}
		cur.Attempts++
		cur.Message, cur.UpdatedAt = msg, e.s.cfg.Now().UTC()
		if err := tx.UpdateRegionOp(ctx, cur); err != nil {
			return err
		}
		return addEvent(ctx, tx, op.DeploymentID, api.DeploymentEvent{At: cur.UpdatedAt, Region: op.Region, Type: api.EventRegionErr, Message: msg})
	})
	if err != nil {
		e.log.Warn("recording a region error", "op", op.ID, "err", err)
	}
}

// settle records an operation's final state, unless it was settled or
// superseded meanwhile, with an event on its deployment.
func (e *engine) settle(op store.RegionOp, state string, applied bool, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetRegionOp(ctx, op.ID)
		if err != nil || cur.State != store.OpPending {
			return err
		}
		cur.Attempts++
		cur.State, cur.Applied, cur.Message, cur.UpdatedAt = state, applied, msg, e.s.cfg.Now().UTC()
		if err := tx.UpdateRegionOp(ctx, cur); err != nil {
			return err
		}
		ev := api.DeploymentEvent{At: cur.UpdatedAt, Region: op.Region, Message: msg}
		switch {
		case state == store.OpDone && op.Purpose == store.PurposeRollout:
			ev.Type = api.EventApplied
		case state == store.OpDone && op.Purpose == store.PurposeRevert:
			ev.Type, ev.Message = api.EventReverted, revertedMessage(op, msg)
		case state == store.OpDone && op.Purpose == store.PurposeRemove:
			ev.Type, ev.Message = api.EventRemoved, "service stopped in the region: "+msg
		case state == store.OpDone:
			return nil
		default:
			ev.Type = api.EventRegionErr
		}
		return addEvent(ctx, tx, op.DeploymentID, ev)
	})
	if err != nil {
		return fmt.Errorf("recording operation %s: %w", op.ID, err)
	}
	e.nudgeDeployment(op.DeploymentID)
	return nil
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

// secretsFor unseals the secrets env names, for an apply.
func (s *Server) secretsFor(ctx context.Context, orgID string, env []api.ResolvedEnv) (map[string]string, error) {
	var out map[string]string
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		for _, e := range env {
			if e.Secret == "" {
				continue
			}
			if _, ok := out[e.Secret]; ok {
				continue
			}
			rec, err := tx.GetSecret(ctx, orgID, e.Secret)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("env %s: secret %q no longer exists", e.Key, e.Secret)
			}
			if err != nil {
				return err
			}
			v, err := s.sealer.Open(orgID, e.Secret, rec.Sealed)
			if err != nil {
				return fmt.Errorf("env %s: secret %q: %w", e.Key, e.Secret, err)
			}
			if out == nil {
				out = map[string]string{}
			}
			out[e.Secret] = string(v)
		}
		return nil
	})
	return out, err
}

// serviceKey is the region's name of a service: "<org>.<app>.<service>",
// with the organization's name.
func serviceKey(org, app, service string) string { return regionapi.ServiceKey(org, app, service) }

// splitKey splits a service key into organization, app and service.
func splitKey(key string) (org, app, service string) {
	parts := [3]string{}
	i := 0
	start := 0
	for j := 0; j < len(key) && i < 2; j++ {
		if key[j] == '.' {
			parts[i] = key[start:j]
			i++
			start = j + 1
		}
	}
	parts[i] = key[start:]
	return parts[0], parts[1], parts[2]
}
