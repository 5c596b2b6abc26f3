package region

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/sched"
)

// maxOpsPerTxn bounds one commit transaction; larger plans are committed in
// several, each guarded by leadership.
const maxOpsPerTxn = 5000

func (s *Server) setLeading(v bool) {
	s.mu.Lock()
	s.leading = v
	s.mu.Unlock()
}

// campaign runs for leadership until ctx ends; while leading, it runs the
// scheduler. Leadership is an etcd session lease: a leader that dies loses
// it within the session TTL, and the plan transactions compare the
// leader key, so two leaders can never both place.
func (s *Server) campaign(ctx context.Context) {
	ttl := int(s.cfg.LeaseTTL / time.Second)
	if ttl < 2 {
		ttl = 2
	}
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
		if err != nil {
			s.log.Warn("election session", "err", err)
			clock.Sleep(ctx, clock.Real(), time.Second)
			continue
		}
		e := concurrency.NewElection(sess, s.keys.leader())
		if err := e.Campaign(ctx, s.cfg.Etcd.Name); err != nil {
			sess.Close()
			if ctx.Err() == nil {
				s.log.Warn("campaign", "err", err)
				clock.Sleep(ctx, clock.Real(), time.Second)
			}
			continue
		}
		s.setLeading(true)
		s.log.Info("leading the region: scheduler and liveness run here")
		s.lead(ctx, sess, e)
		s.setLeading(false)
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		e.Resign(rctx)
		cancel()
		sess.Close()
		s.log.Info("stopped leading")
	}
}

// lead runs the scheduler while the session lasts: on every change of the
// region's state (debounced) and every ScheduleInterval.
func (s *Server) lead(ctx context.Context, sess *concurrency.Session, e *concurrency.Election) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := s.cli.Watch(clientv3.WithRequireLeader(lctx), s.keys.root, clientv3.WithPrefix())
	tick := time.NewTicker(s.cfg.ScheduleInterval)
	defer tick.Stop()
	gc := time.NewTicker(s.cfg.GCInterval)
	defer gc.Stop()
	var last string
	for {
		if err := s.scheduleOnce(lctx, e, &last); err != nil && lctx.Err() == nil {
			s.log.Warn("scheduling round", "err", err)
		}
		select {
		case <-lctx.Done():
			return
		case <-sess.Done():
			return
		case <-gc.C:
			if err := s.collectSpecs(lctx, e); err != nil && lctx.Err() == nil {
				s.log.Warn("collecting unused deployment specs", "err", err)
			}
		case <-tick.C:
		case resp, ok := <-wch:
			if !ok || resp.Canceled {
				return
			}
			// Debounce: gather what else arrives in the next few milliseconds.
			deadline := time.After(10 * time.Millisecond)
		drain:
			for {
				select {
				case _, ok := <-wch:
					if !ok {
						return
					}
				case <-deadline:
					break drain
				}
			}
		}
	}
}

// state is one consistent read of the region.
type state struct {
	rev      int64
	services map[string]serviceRecord
	assigns  []assignRecord
	status   map[string]statusRecord
	machines []machineRecord
	alive    map[string]bool
}

// load reads the region's state at one revision.
func (s *Server) load(ctx context.Context) (*state, error) {
	st := &state{services: map[string]serviceRecord{}, status: map[string]statusRecord{}, alive: map[string]bool{}}
	resp, err := s.cli.Get(ctx, s.keys.svcPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	st.rev = resp.Header.Revision
	for _, kv := range resp.Kvs {
		var r serviceRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("service record %s: %w", kv.Key, err)
		}
		st.services[r.Key] = r
	}
	at := clientv3.WithRev(st.rev)
	get := func(prefix string, fn func(key string, v []byte) error) error {
		resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), at)
		if err != nil {
			return fmt.Errorf("read %s: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			if err := fn(string(kv.Key), kv.Value); err != nil {
				return fmt.Errorf("record %s: %w", kv.Key, err)
			}
		}
		return nil
	}
	if err := get(s.keys.assignPrefix(), func(_ string, v []byte) error {
		var r assignRecord
		err := json.Unmarshal(v, &r)
		st.assigns = append(st.assigns, r)
		return err
	}); err != nil {
		return nil, err
	}
	if err := get(s.keys.statusPrefix(), func(k string, v []byte) error {
		var r statusRecord
		err := json.Unmarshal(v, &r)
		st.status[s.keys.last(k, s.keys.statusPrefix())] = r
		return err
	}); err != nil {
		return nil, err
	}
	if err := get(s.keys.machinePrefix(), func(_ string, v []byte) error {
		var r machineRecord
		err := json.Unmarshal(v, &r)
		st.machines = append(st.machines, r)
		return err
	}); err != nil {
		return nil, err
	}
	if err := get(s.keys.alivePrefix(), func(k string, _ []byte) error {
		st.alive[s.keys.last(k, s.keys.alivePrefix())] = true
		return nil
	}); err != nil {
		return nil, err
	}
	return st, nil
}

// instanceState maps an assignment and its agent's report to the
// scheduler's view.
func instanceState(a assignRecord, st statusRecord, reported bool) (sched.State, bool, bool) {
	if a.State == string(sched.StateLost) {
		return sched.StateLost, false, false
	}
	if !reported {
		return sched.StatePending, false, false
	}
	switch st.State {
	case regionapi.StatePending:
		return sched.StatePending, false, false
	case regionapi.StatePulling, regionapi.StateStarting:
		return sched.StateStarting, false, false
	case regionapi.StateRunning:
		return sched.StateRunning, st.Healthy, false
	case regionapi.StateFailed:
		return sched.StateFailed, false, true
	}
	return sched.StateFailed, false, false
}

// snapshot turns a state into the scheduler's input.
func (s *Server) snapshot(st *state) sched.Snapshot {
	snap := sched.Snapshot{Revision: st.rev, IDPrefix: s.cfg.Region + "-"}
	for _, m := range st.machines {
		snap.Machines = append(snap.Machines, sched.Machine{ID: m.ID, Datacenter: m.Datacenter,
			MilliCPU: m.MilliCPU, MemoryMB: m.MemoryMB, Ready: st.alive[m.ID], Draining: m.Draining})
	}
	keys := make([]string, 0, len(st.services))
	for k := range st.services {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		r := st.services[k]
		if r.Deleted {
			continue
		}
		snap.Groups = append(snap.Groups, sched.Group{Key: r.Key, Deployment: r.DeploymentID, Version: r.Version,
			Count: r.Count, MilliCPU: r.MilliCPU, MemoryMB: r.MemoryMB, Datacenters: r.Datacenters})
	}
	for _, a := range st.assigns {
		rep, ok := st.status[a.ID]
		state, healthy, failed := instanceState(a, rep, ok)
		snap.Instances = append(snap.Instances, sched.Instance{ID: a.ID, Group: a.Service, Deployment: a.DeploymentID,
			Machine: a.Machine, Datacenter: a.Datacenter, MilliCPU: a.MilliCPU, MemoryMB: a.MemoryMB,
			State: state, Healthy: healthy, Failed: failed})
	}
	return snap
}

// errLostLeadership means a plan was not committed because this server no
// longer leads.
var errLostLeadership = errors.New("lost leadership")

// scheduleOnce reads the state, plans, and commits the plan with
// compare-and-swap: the first transaction requires that this server still
// leads and that no service, assignment or machine changed since the read.
func (s *Server) scheduleOnce(ctx context.Context, e *concurrency.Election, lastPending *string) error {
	st, err := s.load(ctx)
	if err != nil {
		return err
	}
	plan, err := sched.Schedule(s.snapshot(st))
	if err != nil {
		return fmt.Errorf("schedule: %w", err)
	}
	leader := clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())
	if pending := mustJSON(plan.Pending); pending != *lastPending {
		for _, p := range plan.Pending {
			s.log.Warn("instances pending", "service", p.Group, "deployment", p.Deployment, "count", p.Count, "reason", p.Reason)
		}
		if _, err := s.cli.Txn(ctx).If(leader).Then(clientv3.OpPut(s.keys.pending(), pending)).Commit(); err != nil {
			return fmt.Errorf("record pending: %w", err)
		}
		*lastPending = pending
	}
	if plan.Empty() {
		return nil
	}
	assigns := make(map[string]assignRecord, len(st.assigns))
	for _, a := range st.assigns {
		assigns[a.ID] = a
	}
	now := s.cfg.Now().UTC()
	var ops []clientv3.Op
	for _, p := range plan.Place {
		a := assignRecord{ID: p.InstanceID, Service: p.Group, DeploymentID: p.Deployment, Version: p.Version,
			Machine: p.Machine, Datacenter: p.Datacenter, MilliCPU: p.MilliCPU, MemoryMB: p.MemoryMB,
			State: string(sched.StatePending), CreatedAt: now}
		ops = append(ops, clientv3.OpPut(s.keys.assign(p.Machine, p.InstanceID), mustJSON(a)))
	}
	for _, stop := range plan.Stop {
		a, ok := assigns[stop.InstanceID]
		if !ok {
			continue
		}
		if stop.State == sched.StateLost {
			a.State = string(sched.StateLost)
			ops = append(ops, clientv3.OpPut(s.keys.assign(a.Machine, a.ID), mustJSON(a)))
			continue
		}
		ops = append(ops, clientv3.OpDelete(s.keys.assign(a.Machine, a.ID)), clientv3.OpDelete(s.keys.status(a.ID)))
		if stop.Reason == sched.ReasonFailed {
			v := &view{state: st}
			ops = append(ops, clientv3.OpPut(s.keys.failed(a.Service, a.ID), mustJSON(v.instance(a))))
		}
	}
	unchanged := []clientv3.Cmp{
		leader,
		clientv3.Compare(clientv3.ModRevision(s.keys.svcPrefix()), "<", st.rev+1).WithPrefix(),
		clientv3.Compare(clientv3.ModRevision(s.keys.assignPrefix()), "<", st.rev+1).WithPrefix(),
		clientv3.Compare(clientv3.ModRevision(s.keys.machinePrefix()), "<", st.rev+1).WithPrefix(),
	}
	for first := true; len(ops) > 0; first = false {
		n := min(len(ops), maxOpsPerTxn)
		guard := []clientv3.Cmp{leader}
		if first {
			guard = unchanged
		}
		resp, err := s.cli.Txn(ctx).If(guard...).Then(ops[:n]...).Commit()
		if err != nil {
			return fmt.Errorf("commit plan: %w", err)
		}
		if !resp.Succeeded {
			if first {
				return nil // the state moved on: the watch triggers a new round
			}
			return errLostLeadership
		}
		ops = ops[n:]
	}
	s.log.Info("plan committed", "revision", st.rev, "placed", len(plan.Place), "stopped", len(plan.Stop))
	for _, stop := range plan.Stop {
		s.log.Info("instance stopped", "instance", stop.InstanceID, "service", stop.Group, "machine", stop.Machine, "reason", stop.Reason)
	}
	return nil
}

// collectSpecs deletes the specs of deployments no service wants and no
// instance runs any more, in a transaction that checks nothing changed.
func (s *Server) collectSpecs(ctx context.Context, e *concurrency.Election) error {
	st, err := s.load(ctx)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, r := range st.services {
		used[r.DeploymentID] = true
	}
	for _, a := range st.assigns {
		used[a.DeploymentID] = true
	}
	resp, err := s.cli.Get(ctx, s.keys.spec(""), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(st.rev))
	if err != nil {
		return fmt.Errorf("read specs: %w", err)
	}
	var ops []clientv3.Op
	var gone []string
	for _, kv := range resp.Kvs {
		dep := strings.TrimPrefix(string(kv.Key), s.keys.spec(""))
		if !used[dep] {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			gone = append(gone, dep)
		}
	}
	if len(ops) == 0 {
		return nil
	}
	ops = ops[:min(len(ops), maxOpsPerTxn)]
	txn, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()),
		clientv3.Compare(clientv3.ModRevision(s.keys.svcPrefix()), "<", st.rev+1).WithPrefix(),
		clientv3.Compare(clientv3.ModRevision(s.keys.assignPrefix()), "<", st.rev+1).WithPrefix(),
	).Then(ops...).Commit()
	if err != nil || !txn.Succeeded {
		return err
	}
	s.mu.Lock()
	for _, dep := range gone[:len(ops)] {
		delete(s.specs, dep)
	}
	s.mu.Unlock()
	s.log.Info("deleted unused deployment specs", "count", len(ops))
	return nil
}
