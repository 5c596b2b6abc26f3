package region

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/sched"
)

// checkApply validates an Apply before anything is written.
func (s *Server) checkApply(key string, a regionapi.Apply) error {
	var fields []api.FieldError
	add := func(path, format string, args ...any) {
		fields = append(fields, api.FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	if a.Generation < 1 {
		add("generation", "must be at least 1, got %d", a.Generation)
	}
	for path, v := range map[string]string{"org": a.Org, "app": a.App, "service": a.Service} {
		if err := pki.ValidateName(v); err != nil {
			add(path, "%q: %v", v, err)
		}
	}
	if k := regionapi.ServiceKey(a.Org, a.App, a.Service); len(fields) == 0 && k != key {
		add("service", "body names %q but the path names %q", k, key)
	}
	if a.DeploymentID == "" {
		add("deployment_id", "required")
	}
	d := a.Definition
	if d.Region != s.cfg.Region {
		add("definition.region", "%q is not this region (%q)", d.Region, s.cfg.Region)
	}
	if d.Scaling.Min < 0 || d.Scaling.Max < d.Scaling.Min {
		add("definition.scaling", "want 0 <= min <= max, got %d..%d", d.Scaling.Min, d.Scaling.Max)
	}
	if d.InstanceType.MilliCPU <= 0 || d.InstanceType.MemoryMB <= 0 {
		add("definition.instance_type", "%q needs positive millicpu and memory_mb", d.InstanceType.Name)
	}
	if len(d.Command) == 0 && d.Image == "" {
		add("definition.command", "a command or an image is required")
	}
	for _, e := range d.Env {
		if e.Secret != "" {
			if _, ok := a.Secrets[e.Secret]; !ok {
				add("secrets", "the value of secret %q (env %s) is missing", e.Secret, e.Key)
			}
		}
	}
	if d.RegistrySecret != "" {
		if d.Image == "" {
			add("definition.registry_secret", "set without an image")
		}
		if _, ok := a.Secrets[d.RegistrySecret]; !ok {
			add("secrets", "the value of registry secret %q is missing", d.RegistrySecret)
		}
	}
	if d.ImageDigest != "" {
		if _, err := v1.NewHash(d.ImageDigest); err != nil || !strings.HasPrefix(d.ImageDigest, "sha256:") {
			add("definition.image_digest", "%q is not a sha256 digest", d.ImageDigest)
		}
	}
	if len(fields) == 0 {
		return nil
	}
	msgs := make([]string, len(fields))
	for i, f := range fields {
		msgs[i] = f.String()
	}
	slices.Sort(msgs)
	return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalid, Message: strings.Join(msgs, "; "), Fields: fields}
}

// applyService writes a service's desired state. The same generation again
// is a no-op; an older one answers 409 and changes nothing.
func (s *Server) applyService(w http.ResponseWriter, r *http.Request) error {
	key := r.PathValue("key")
	var a regionapi.Apply
	if err := s.decode(w, r, &a); err != nil {
		return err
	}
	if err := s.checkApply(key, a); err != nil {
		return err
	}
	// Not cut by the caller leaving: a write etcd committed is then
	// always logged (a caller that left retries the same generation,
	// which answers applied: false).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
	defer cancel()
	for {
		resp, err := s.cli.Get(ctx, s.keys.svc(key))
		if err != nil {
			return fmt.Errorf("read service: %w", err)
		}
		var modRev int64
		if len(resp.Kvs) == 1 {
			modRev = resp.Kvs[0].ModRevision
			var cur serviceRecord
			if err := json.Unmarshal(resp.Kvs[0].Value, &cur); err != nil {
				return fmt.Errorf("service record: %w", err)
			}
			if a.Generation < cur.Generation {
				return apiErr(http.StatusConflict, api.CodeConflict,
					"stale generation %d: service %s is at generation %d", a.Generation, key, cur.Generation)
			}
			if a.Generation == cur.Generation {
				if cur.DeploymentID != a.DeploymentID || cur.Deleted {
					return apiErr(http.StatusConflict, api.CodeConflict,
						"generation %d of service %s was already applied with another deployment (%s)", a.Generation, key, cur.DeploymentID)
				}
				writeJSON(w, http.StatusOK, regionapi.ApplyResult{Service: key, Generation: a.Generation, Applied: false})
				return nil
			}
		}
		d := a.Definition
		rec := serviceRecord{Key: key, Org: a.Org, App: a.App, Service: a.Service, Generation: a.Generation,
			DeploymentID: a.DeploymentID, Version: a.Version, Count: d.Scaling.Min,
			MilliCPU: d.InstanceType.MilliCPU, MemoryMB: d.InstanceType.MemoryMB,
			Datacenters: d.Datacenters, UpdatedAt: s.cfg.Now().UTC()}
		spec := specRecord{Org: a.Org, App: a.App, Service: a.Service, DeploymentID: a.DeploymentID,
			Version: a.Version, Definition: d, Secrets: s.sealer.seal(a.DeploymentID, a.Secrets)}
		txn, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.keys.svc(key)), "=", modRev)).
			Then(clientv3.OpPut(s.keys.svc(key), mustJSON(rec)), clientv3.OpPut(s.keys.spec(a.DeploymentID), mustJSON(spec)),
				clientv3.OpDelete(s.keys.failedSvc(key), clientv3.WithPrefix())).
			Commit()
		if err != nil {
			return fmt.Errorf("write service: %w", err)
		}
		if txn.Succeeded {
			s.log.Info("service applied", "service", key, "generation", a.Generation, "deployment", a.DeploymentID, "count", rec.Count)
			writeJSON(w, http.StatusOK, regionapi.ApplyResult{Service: key, Generation: a.Generation, Applied: true})
			return nil
		}
		// Another apply raced us: read again and decide again.
	}
}

// deleteService marks a service deleted: the scheduler stops its instances.
func (s *Server) deleteService(w http.ResponseWriter, r *http.Request) error {
	key := r.PathValue("key")
	gen, err := strconv.ParseInt(r.URL.Query().Get("generation"), 10, 64)
	if err != nil || gen < 1 {
		return fieldError("generation", "want a positive integer, got %q", r.URL.Query().Get("generation"))
	}
	ctx := r.Context()
	for {
		resp, err := s.cli.Get(ctx, s.keys.svc(key))
		if err != nil {
			return fmt.Errorf("read service: %w", err)
		}
		rec := serviceRecord{Key: key}
		var modRev int64
		if len(resp.Kvs) == 1 {
			modRev = resp.Kvs[0].ModRevision
			if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
				return fmt.Errorf("service record: %w", err)
			}
			if gen < rec.Generation || (gen == rec.Generation && !rec.Deleted) {
				return apiErr(http.StatusConflict, api.CodeConflict, "stale generation %d: service %s is at generation %d", gen, key, rec.Generation)
			}
			if rec.Deleted && gen == rec.Generation {
				w.WriteHeader(http.StatusNoContent)
				return nil
			}
		}
		rec.Generation, rec.Deleted, rec.UpdatedAt = gen, true, s.cfg.Now().UTC()
		txn, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.keys.svc(key)), "=", modRev)).
			Then(clientv3.OpPut(s.keys.svc(key), mustJSON(rec)), clientv3.OpDelete(s.keys.failedSvc(key), clientv3.WithPrefix())).Commit()
		if err != nil {
			return fmt.Errorf("write service: %w", err)
		}
		if txn.Succeeded {
			s.log.Info("service deleted", "service", key, "generation", gen)
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
	}
}

// view is a read of services, instances and machines for the API.
type view struct {
	*state
	pending  map[string][]regionapi.Pending
	failures map[string][]regionapi.InstanceStatus
}

func (s *Server) readView(ctx context.Context) (*view, error) {
	st, err := s.load(ctx)
	if err != nil {
		return nil, err
	}
	v := &view{state: st, pending: map[string][]regionapi.Pending{}, failures: map[string][]regionapi.InstanceStatus{}}
	fresp, err := s.cli.Get(ctx, s.keys.failedPrefix(), clientv3.WithPrefix(), clientv3.WithRev(st.rev))
	if err != nil {
		return nil, fmt.Errorf("read failures: %w", err)
	}
	for _, kv := range fresp.Kvs {
		var is regionapi.InstanceStatus
		if err := json.Unmarshal(kv.Value, &is); err != nil {
			return nil, fmt.Errorf("failure record %s: %w", kv.Key, err)
		}
		v.failures[is.Service] = append(v.failures[is.Service], is)
	}
	resp, err := s.cli.Get(ctx, s.keys.pending(), clientv3.WithRev(st.rev))
	if err != nil {
		return nil, fmt.Errorf("read pending: %w", err)
	}
	if len(resp.Kvs) == 1 {
		var ps []sched.Pending
		if err := json.Unmarshal(resp.Kvs[0].Value, &ps); err != nil {
			return nil, fmt.Errorf("pending record: %w", err)
		}
		for _, p := range ps {
			v.pending[p.Group] = append(v.pending[p.Group], regionapi.Pending{DeploymentID: p.Deployment, Count: p.Count, Reason: p.Reason})
		}
	}
	return v, nil
}

func (v *view) machine(id string) machineRecord {
	for _, m := range v.machines {
		if m.ID == id {
			return m
		}
	}
	return machineRecord{}
}

func (v *view) instance(a assignRecord) regionapi.InstanceStatus {
	st, ok := v.status[a.ID]
	is := regionapi.InstanceStatus{ID: a.ID, Service: a.Service, DeploymentID: a.DeploymentID, Version: a.Version,
		Machine: a.Machine, Datacenter: a.Datacenter, State: regionapi.StatePending, UpdatedAt: a.CreatedAt,
		Address: v.machine(a.Machine).Address}
	if ok {
		is.State, is.Healthy, is.Restarts, is.Message, is.Ports, is.UpdatedAt = st.State, st.Healthy, st.Restarts, st.Message, st.Ports, st.UpdatedAt
	}
	if a.State == string(sched.StateLost) {
		is.State, is.Healthy, is.Message = "lost", false, "machine lost; replaced"
	} else if !v.alive[a.Machine] {
		is.Healthy, is.Message = false, "machine not heartbeating"
	}
	return is
}

// serviceStatus computes a service's state from its record, instances and
// the scheduler's pending demand.
func (v *view) serviceStatus(key string) (regionapi.ServiceStatus, bool) {
	rec, ok := v.services[key]
	if !ok {
		return regionapi.ServiceStatus{}, false
	}
	ss := regionapi.ServiceStatus{Service: key, Generation: rec.Generation, DeploymentID: rec.DeploymentID,
		Version: rec.Version, Wanted: rec.Count, Instances: []regionapi.InstanceStatus{}, Pending: v.pending[key]}
	for _, f := range v.failures[key] {
		if f.DeploymentID == rec.DeploymentID {
			ss.Failures = append(ss.Failures, f)
		}
	}
	old := 0
	for _, a := range v.assigns {
		if a.Service != key {
			continue
		}
		is := v.instance(a)
		ss.Instances = append(ss.Instances, is)
		if is.State == "lost" {
			continue
		}
		if a.DeploymentID == rec.DeploymentID {
			if is.Healthy && is.State == regionapi.StateRunning {
				ss.Healthy++
			}
		} else {
			old++
		}
	}
	slices.SortFunc(ss.Instances, func(a, b regionapi.InstanceStatus) int { return strings.Compare(a.ID, b.ID) })
	switch {
	case rec.Deleted && len(ss.Instances) == 0:
		ss.Phase, ss.Wanted = regionapi.PhaseDeleted, 0
	case rec.Deleted:
		ss.Phase, ss.Wanted = regionapi.PhaseProgressing, 0
		ss.Message = fmt.Sprintf("stopping %d instances", len(ss.Instances))
	case ss.Healthy >= rec.Count && old == 0:
		ss.Phase = regionapi.PhaseHealthy
	default:
		ss.Phase = regionapi.PhaseProgressing
		ss.Message = fmt.Sprintf("%d/%d healthy", ss.Healthy, rec.Count)
		if old > 0 {
			ss.Message += fmt.Sprintf(", %d of older deployments still running", old)
		}
		for _, p := range ss.Pending {
			ss.Message += fmt.Sprintf("; %d pending: %s", p.Count, p.Reason)
		}
	}
	return ss, true
}

func (s *Server) serviceStatus(w http.ResponseWriter, r *http.Request) error {
	v, err := s.readView(r.Context())
	if err != nil {
		return err
	}
	key := r.PathValue("key")
	ss, ok := v.serviceStatus(key)
	if !ok {
		return apiErr(http.StatusNotFound, api.CodeNotFound, "service %s is not in region %s", key, s.cfg.Region)
	}
	writeJSON(w, http.StatusOK, ss)
	return nil
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	v, err := s.readView(r.Context())
	if err != nil {
		return err
	}
	out := []regionapi.ServiceStatus{}
	for key := range v.services {
		ss, _ := v.serviceStatus(key)
		out = append(out, ss)
	}
	slices.SortFunc(out, func(a, b regionapi.ServiceStatus) int { return strings.Compare(a.Service, b.Service) })
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) error {
	v, err := s.readView(r.Context())
	if err != nil {
		return err
	}
	out := make([]regionapi.InstanceStatus, 0, len(v.assigns))
	for _, a := range v.assigns {
		out = append(out, v.instance(a))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (v *view) machineList() []regionapi.Machine {
	used := map[string]*regionapi.Machine{}
	out := make([]regionapi.Machine, 0, len(v.machines))
	for _, m := range v.machines {
		out = append(out, regionapi.Machine{ID: m.ID, Datacenter: m.Datacenter, Address: m.Address,
			MilliCPU: m.MilliCPU, MemoryMB: m.MemoryMB, Ready: v.alive[m.ID], Draining: m.Draining, JoinedAt: m.JoinedAt})
	}
	for i := range out {
		used[out[i].ID] = &out[i]
	}
	for _, a := range v.assigns {
		if m, ok := used[a.Machine]; ok && a.State != string(sched.StateLost) {
			m.UsedMilliCPU += a.MilliCPU
			m.UsedMemoryMB += a.MemoryMB
			m.Instances++
		}
	}
	slices.SortFunc(out, func(a, b regionapi.Machine) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) error {
	v, err := s.readView(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v.machineList())
	return nil
}

func (s *Server) listDatacenters(w http.ResponseWriter, r *http.Request) error {
	v, err := s.readView(r.Context())
	if err != nil {
		return err
	}
	idx := map[string]int{}
	var out []regionapi.Datacenter
	for _, m := range v.machineList() {
		i, ok := idx[m.Datacenter]
		if !ok {
			i = len(out)
			idx[m.Datacenter] = i
			out = append(out, regionapi.Datacenter{ID: m.Datacenter})
		}
		d := &out[i]
		d.Machines++
		if m.Ready {
			d.Ready++
		}
		d.MilliCPU += m.MilliCPU
		d.MemoryMB += m.MemoryMB
		d.UsedMilliCPU += m.UsedMilliCPU
		d.UsedMemoryMB += m.UsedMemoryMB
	}
	if out == nil {
		out = []regionapi.Datacenter{}
	}
	slices.SortFunc(out, func(a, b regionapi.Datacenter) int { return strings.Compare(a.ID, b.ID) })
	writeJSON(w, http.StatusOK, out)
	return nil
}

// drainMachine marks a machine draining: it takes no new instances, and
// its instances are replaced elsewhere, each stopped once its replacement
// is healthy.
func (s *Server) drainMachine(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	ctx := r.Context()
	m, err := s.updateMachine(ctx, id, func(m *machineRecord) { m.Draining = true })
	if err != nil {
		return err
	}
	s.log.Info("machine draining", "machine", id)
	v, err := s.readView(ctx)
	if err != nil {
		return err
	}
	for _, out := range v.machineList() {
		if out.ID == m.ID {
			writeJSON(w, http.StatusOK, out)
			return nil
		}
	}
	return fmt.Errorf("machine %s vanished", id)
}

// updateMachine changes a machine record with compare-and-swap.
func (s *Server) updateMachine(ctx context.Context, id string, change func(*machineRecord)) (machineRecord, error) {
	for {
		resp, err := s.cli.Get(ctx, s.keys.machine(id))
		if err != nil {
			return machineRecord{}, fmt.Errorf("read machine: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return machineRecord{}, apiErr(http.StatusNotFound, api.CodeNotFound, "machine %q is not in region %s", id, s.cfg.Region)
		}
		var m machineRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
			return m, fmt.Errorf("machine record: %w", err)
		}
		change(&m)
		txn, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.keys.machine(id)), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(s.keys.machine(id), mustJSON(m))).Commit()
		if err != nil {
			return m, fmt.Errorf("write machine: %w", err)
		}
		if txn.Succeeded {
			return m, nil
		}
	}
}

var errNoSpec = errors.New("no spec")

// spec returns a deployment's regional definition (cached: immutable).
func (s *Server) spec(ctx context.Context, dep string) (specRecord, error) {
	s.mu.Lock()
	sp, ok := s.specs[dep]
	s.mu.Unlock()
	if ok {
		return sp, nil
	}
	resp, err := s.cli.Get(ctx, s.keys.spec(dep))
	if err != nil {
		return sp, fmt.Errorf("read spec %s: %w", dep, err)
	}
	if len(resp.Kvs) == 0 {
		return sp, fmt.Errorf("deployment %s: %w", dep, errNoSpec)
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &sp); err != nil {
		return sp, fmt.Errorf("spec %s: %w", dep, err)
	}
	s.mu.Lock()
	s.specs[dep] = sp
	s.mu.Unlock()
	return sp, nil
}
