package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/supervise"
)

// Instance is an instance the agent runs, as Instances returns it.
type Instance struct {
	// ID is the instance id the region gave it.
	ID string `json:"id"`
	// Service is the service key ("<org>.<app>.<service>").
	Service      string `json:"service"`
	App          string `json:"app"`
	ServiceName  string `json:"service_name"`
	DeploymentID string `json:"deployment_id"`
	Version      int    `json:"version"`
	// State is one of the regionapi.State* values.
	State    string `json:"state"`
	Healthy  bool   `json:"healthy"`
	Restarts int    `json:"restarts"`
	// Message says why the instance is restarting, failed or unhealthy.
	Message string `json:"message,omitempty"`
	// Ports maps each declared port (as a string) to its host port.
	Ports map[string]int `json:"ports,omitempty"`
	// Pid is the host pid of the instance's top process while it runs.
	Pid int `json:"pid,omitempty"`
	// Adopted says the instance was started by a previous agent and
	// re-adopted by this one.
	Adopted bool `json:"adopted,omitempty"`
}

// record is what the agent keeps on disk about an instance it runs, so that
// a restarted agent can supervise it again before the region answers, with
// the same host ports.
type record struct {
	// Assignment is the region's assignment, without secret values.
	Assignment regionapi.Assignment `json:"assignment"`
	// Ports maps each declared port (as a string) to its host port.
	Ports     map[string]int `json:"ports"`
	CreatedAt time.Time      `json:"created_at"`
}

// instance is the agent's view of one instance.
type instance struct {
	id      string
	asg     regionapi.Assignment // secrets cleared
	ports   map[int]int          // declared -> host
	image   string               // the image the instance runs, if any
	adopted bool
	sup     *supervise.Supervisor // nil when the instance could not be set up
	done    chan struct{}         // closed when supervision ended

	// Guarded by Agent.mu: cancels the pull of the instance's image (set
	// while it is pulled before the instance starts).
	cancelPull context.CancelFunc

	// Guarded by Agent.mu.
	state    string
	healthy  bool
	restarts int
	message  string
	pid      int
	stopping bool
}

func (in *instance) hostPorts() []int { return slices.Collect(maps.Values(in.ports)) }

func (in *instance) portsByName() map[string]int {
	if len(in.ports) == 0 {
		return nil
	}
	m := make(map[string]int, len(in.ports))
	for d, h := range in.ports {
		m[strconv.Itoa(d)] = h
	}
	return m
}

func (in *instance) info() Instance {
	return Instance{ID: in.id, Service: in.asg.Service, App: in.asg.App, ServiceName: in.asg.ServiceName,
		DeploymentID: in.asg.DeploymentID, Version: in.asg.Version, State: in.state, Healthy: in.healthy,
		Restarts: in.restarts, Message: in.message, Ports: in.portsByName(), Pid: in.pid, Adopted: in.adopted}
}

// Instances returns the instances the agent runs (or is stopping), sorted
// by id.
func (a *Agent) Instances() []Instance {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Instance, 0, len(a.insts))
	for _, in := range a.insts {
		out = append(out, in.info())
	}
	slices.SortFunc(out, func(x, y Instance) int { return strings.Compare(x.ID, y.ID) })
	return out
}

func (a *Agent) recordDir() string { return filepath.Join(a.cfg.DataDir, "assignments") }

func (a *Agent) recordPath(id string) string { return filepath.Join(a.recordDir(), id+".json") }

func (a *Agent) removeRecord(id string) {
	if err := os.Remove(a.recordPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("removing instance record", "instance", id, "err", err)
	}
}

// readRecords reads every instance record in DataDir.
func (a *Agent) readRecords() map[string]record {
	out := map[string]record{}
	ents, err := os.ReadDir(a.recordDir())
	if err != nil {
		a.log.Warn("reading instance records", "err", err)
		return out
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(id, ".") {
			continue
		}
		b, err := os.ReadFile(a.recordPath(id))
		var rec record
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil || rec.Assignment.ID != id {
			a.log.Warn("unreadable instance record; ignoring it", "instance", id, "err", err)
			a.removeRecord(id)
			continue
		}
		out[id] = rec
	}
	return out
}

// adopt re-adopts the instances a previous agent left running: each one
// the driver recovers and the agent has a record of is supervised again at
// once, with its host ports; the first snapshot of the region then stops
// those no longer wanted. Instances without a record are stopped; records
// of instances that ended meanwhile keep their ports for a restart.
func (a *Agent) adopt(ctx context.Context) error {
	ids, err := a.drv.List(ctx)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	recs := a.readRecords()
	for _, id := range ids {
		rec, haveRec := recs[id]
		delete(recs, id)
		h, err := a.drv.Recover(ctx, id)
		if err != nil {
			if errors.Is(err, driver.ErrNotFound) {
				a.log.Info("instance ended while the agent was away", "instance", id, "reason", err)
			} else {
				a.log.Warn("recovering instance", "instance", id, "err", err)
			}
			if haveRec {
				a.orphans[id] = rec
			}
			continue
		}
		if !haveRec {
			a.log.Warn("instance without a record; stopping it", "instance", id)
			if err := h.Cleanup(); err != nil {
				a.log.Warn("cleaning up instance", "instance", id, "err", err)
			}
			continue
		}
		a.adoptInstance(rec, h)
	}
	for id, rec := range recs {
		a.orphans[id] = rec
	}
	return nil
}

func (a *Agent) adoptInstance(rec record, h driver.Handle) {
	in := &instance{id: rec.Assignment.ID, asg: rec.Assignment, ports: map[int]int{}, adopted: true,
		done: make(chan struct{}), state: regionapi.StateRunning, pid: h.Pid()}
	for d, hp := range rec.Ports {
		if n, err := strconv.Atoi(d); err == nil {
			in.ports[n] = hp
		}
	}
	a.ports.claim(in.hostPorts()...)
	if _, err := a.meshResolvConf(in.id, in.asg.Org, in.asg.App, in.asg.ServiceName); err != nil {
		a.log.Error("re-adopted instance without the mesh", "instance", in.id, "err", err)
	}
	in.sup = supervise.New(a.supConfig(in, h.Spec(), h))
	a.mu.Lock()
	a.insts[in.id] = in
	a.mu.Unlock()
	a.log.Info("instance re-adopted", "instance", in.id, "service", in.asg.Service, "pid", h.Pid(), "ports", rec.Ports)
	a.wg.Add(1)
	go a.run(in)
}

// reconcileLoop makes the running instances match the assignments.
func (a *Agent) reconcileLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		}
		a.reconcile(ctx)
	}
}

// reconcile stops the instances the region no longer wants, then starts the
// wanted ones that do not run.
func (a *Agent) reconcile(ctx context.Context) {
	a.mu.Lock()
	if !a.synced || ctx.Err() != nil {
		a.mu.Unlock()
		return
	}
	var stop []*instance
	for id, in := range a.insts {
		if _, want := a.desired[id]; !want && !in.stopping {
			in.stopping = true
			stop = append(stop, in)
		}
	}
	for id := range a.orphans {
		if _, want := a.desired[id]; !want {
			delete(a.orphans, id)
			a.removeRecord(id)
		}
	}
	var start []regionapi.Assignment
	for id, as := range a.desired {
		if _, have := a.insts[id]; !have {
			start = append(start, as)
		}
	}
	first := !a.readyDone
	a.readyDone = true
	a.mu.Unlock()

	for _, in := range stop {
		a.log.Info("stopping instance: no longer assigned", "instance", in.id, "service", in.asg.Service)
		a.setStopping(in)
		a.wg.Add(1)
		go a.stop(ctx, in)
	}
	slices.SortFunc(start, func(x, y regionapi.Assignment) int { return strings.Compare(x.ID, y.ID) })
	for _, as := range start {
		a.startInstance(as)
	}
	if first {
		close(a.ready)
	}
}

// startInstance sets up an assigned instance (host ports, spec, record) and
// supervises it.
func (a *Agent) startInstance(as regionapi.Assignment) {
	stripped := as
	stripped.Secrets = nil
	in := &instance{id: as.ID, asg: stripped, ports: map[int]int{}, done: make(chan struct{}), state: regionapi.StatePending}
	a.mu.Lock()
	rec, hadRec := a.orphans[as.ID]
	delete(a.orphans, as.ID)
	a.mu.Unlock()

	err := func() error {
		def := as.Definition
		var preferred []int
		if hadRec {
			for _, p := range def.Ports {
				preferred = append(preferred, rec.Ports[strconv.Itoa(p.Port)])
			}
		}
		hp, err := a.ports.alloc(len(def.Ports), preferred)
		if err != nil {
			return err
		}
		for i, p := range def.Ports {
			in.ports[p.Port] = hp[i]
		}
		spec, err := a.buildSpec(as, in.ports)
		if err != nil {
			return err
		}
		in.image = spec.Image
		if err := writeJSONAtomic(a.recordPath(in.id), record{Assignment: stripped, Ports: in.portsByName(), CreatedAt: a.clock.Now().UTC()}); err != nil {
			return fmt.Errorf("saving the instance record: %w", err)
		}
		in.sup = supervise.New(a.supConfig(in, spec, nil))
		return nil
	}()
	if err != nil {
		a.log.Error("instance cannot start", "instance", in.id, "service", as.Service, "err", err)
		in.state, in.message = regionapi.StateFailed, err.Error()
		close(in.done)
	}
	a.mu.Lock()
	a.insts[in.id] = in
	a.mu.Unlock()
	if err != nil {
		a.changed(in)
		return
	}
	a.log.Info("starting instance", "instance", in.id, "service", as.Service, "deployment", as.DeploymentID, "ports", in.portsByName())
	a.wg.Add(1)
	if in.image != "" && a.images != nil {
		go a.pullThenRun(in, in.image)
		return
	}
	go a.run(in)
}

// run supervises an instance until it is stopped, fails past its restart
// limit, or the agent closes (which leaves it running).
func (a *Agent) run(in *instance) {
	defer a.wg.Done()
	defer close(in.done)
	err := in.sup.Run(a.ctx)
	switch {
	case err == nil, errors.Is(err, supervise.ErrFailed):
		// Reported through OnState.
	case a.ctx.Err() != nil:
		// The agent is closing: the instance keeps running.
	default:
		a.log.Error("instance cannot be supervised", "instance", in.id, "err", err)
		a.mu.Lock()
		in.state, in.healthy, in.message = regionapi.StateFailed, false, err.Error()
		a.mu.Unlock()
		a.changed(in)
	}
}

// stop stops an instance gracefully, removes what it left and frees its
// ports. If the agent closes meanwhile, the next agent finishes the job.
func (a *Agent) stop(ctx context.Context, in *instance) {
	defer a.wg.Done()
	a.mu.Lock()
	if in.cancelPull != nil {
		in.cancelPull()
	}
	a.mu.Unlock()
	if in.sup != nil {
		if err := in.sup.Stop(ctx); err != nil {
			return
		}
	}
	select {
	case <-in.done:
	case <-ctx.Done():
		return
	}
	if err := a.drv.Destroy(ctx, in.id); err != nil {
		a.log.Warn("removing instance", "instance", in.id, "err", err)
		if ctx.Err() != nil {
			return
		}
	}
	a.removeRecord(in.id)
	a.mu.Lock()
	delete(a.insts, in.id)
	a.mu.Unlock()
	a.meshRelease(in.id)
	a.ports.release(in.hostPorts()...)
	a.log.Info("instance stopped and removed", "instance", in.id, "service", in.asg.Service)
	a.kickReconcile()
}

func (a *Agent) setStopping(in *instance) {
	a.mu.Lock()
	if in.state != regionapi.StateFailed && in.state != regionapi.StateStopped {
		in.state, in.healthy = regionapi.StateStopping, false
	}
	a.mu.Unlock()
	a.changed(in)
}

// onState records a supervisor's transition.
func (a *Agent) onState(in *instance, st supervise.Status) {
	a.mu.Lock()
	in.restarts, in.message, in.pid, in.healthy = st.Restarts, st.Reason, st.Pid, false
	switch st.State {
	case supervise.StateStarting:
		in.state = regionapi.StateStarting
	case supervise.StateRunning:
		switch st.Health {
		case supervise.HealthHealthy:
			in.state, in.healthy = regionapi.StateRunning, true
		case supervise.HealthUnhealthy:
			in.state = regionapi.StateRunning
		default:
			in.state = regionapi.StateStarting // health checks pending
		}
	case supervise.StateRestarting:
		in.state, in.pid = regionapi.StateRestarting, 0
	case supervise.StateFailed:
		in.state, in.pid = regionapi.StateFailed, 0
	case supervise.StateStopped:
		in.state, in.pid = regionapi.StateStopped, 0
	}
	if in.stopping && in.state != regionapi.StateStopped && in.state != regionapi.StateFailed {
		in.state, in.healthy = regionapi.StateStopping, false
	}
	a.mu.Unlock()
	a.changed(in)
}

// changed marks an instance for the next report and tells OnInstance.
func (a *Agent) changed(in *instance) {
	a.mu.Lock()
	a.dirty[in.id] = true
	info := in.info()
	a.mu.Unlock()
	select {
	case a.dirtyCh <- struct{}{}:
	default:
	}
	if a.cfg.OnInstance != nil {
		a.cfg.OnInstance(info)
	}
}

// supConfig is the supervision of an instance: its health checks on the
// declared ports (mapped to host ports by the dialer, so that reasons name
// the declared port), restart backoff and stop timeout.
func (a *Agent) supConfig(in *instance, spec driver.Spec, h driver.Handle) supervise.Config {
	return supervise.Config{
		Driver:       a.drv,
		Spec:         spec,
		Handle:       h,
		HealthChecks: in.asg.Definition.HealthChecks,
		Host:         a.cfg.Address,
		Dialer:       portDialer{d: a.cfg.Dialer, host: a.cfg.Address, ports: in.ports},
		BackoffMin:   a.cfg.RestartBackoffMin,
		BackoffMax:   a.cfg.RestartBackoffMax,
		StopTimeout:  a.cfg.StopTimeout,
		Clock:        a.clock,
		Logger:       a.log.With("service", in.asg.Service),
		OnState:      func(st supervise.Status) { a.onState(in, st) },
	}
}

// portDialer dials the host port of a declared port.
type portDialer struct {
	d     Dialer
	host  string
	ports map[int]int
}

func (p portDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if _, ps, err := net.SplitHostPort(addr); err == nil {
		if n, err := strconv.Atoi(ps); err == nil {
			if hp, ok := p.ports[n]; ok {
				addr = net.JoinHostPort(p.host, strconv.Itoa(hp))
			}
		}
	}
	return p.d.DialContext(ctx, network, addr)
}

// defaultPath is the PATH of workloads that set none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// buildSpec turns an assignment into what the driver runs: the image (for
// a driver that runs images; its config is laid under the spec's), the
// command, the environment (the definition's, secrets resolved, then the platform's
// MERIDIAN_* variables and ports), the memory limit, the host name and
// resolv.conf.
func (a *Agent) buildSpec(as regionapi.Assignment, ports map[int]int) (driver.Spec, error) {
	spec, err := buildSpec(&a.cfg, as, ports, driver.RunsImages(a.drv))
	if err != nil {
		return spec, err
	}
	// The instance's resolv.conf names its service's mesh DNS server.
	if spec.ResolvConf, err = a.meshResolvConf(as.ID, as.Org, as.App, as.ServiceName); err != nil {
		return spec, err
	}
	if a.uids != nil {
		if spec.User, err = a.uids.user(regionapi.ServiceKey(as.Org, as.App, as.ServiceName)); err != nil {
			return spec, err
		}
	}
	return spec, nil
}

// buildSpec builds the spec of an assignment for a runtime that runs
// images, or commands only.
func buildSpec(cfg *Config, as regionapi.Assignment, ports map[int]int, images bool) (driver.Spec, error) {
	def := as.Definition
	spec := driver.Spec{ID: as.ID, Command: def.Command, Args: def.Args, MemoryMB: def.InstanceType.MemoryMB,
		MilliCPU: def.InstanceType.MilliCPU, Hostname: as.ID[:min(len(as.ID), 64)], ResolvConf: *cfg.ResolvConf}
	if !images {
		if len(def.Command) == 0 {
			return spec, fmt.Errorf("definition.command: empty; the process runtime runs commands, not images (image %q)", def.Image)
		}
	} else {
		spec.Image = regionapi.ImageRef(def)
	}
	var keys []string
	vals := map[string]string{}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = v
	}
	for i, e := range def.Env {
		v := e.Value
		if e.Secret != "" {
			var ok bool
			if v, ok = as.Secrets[e.Secret]; !ok {
				return spec, fmt.Errorf("definition.env[%d] %s: the value of secret %q is missing", i, e.Key, e.Secret)
			}
		}
		set(e.Key, v)
	}
	// An image has its own PATH (in its config, else Docker's default);
	// a command is looked up in the agent's.
	if _, ok := vals["PATH"]; !ok && spec.Image == "" {
		path := cfg.InstancePath
		if path == "" {
			path = defaultPath
		}
		set("PATH", path)
	}
	set("MERIDIAN_REGION", cfg.Region)
	set("MERIDIAN_DATACENTER", cfg.Datacenter)
	set("MERIDIAN_MACHINE", cfg.Name)
	set("MERIDIAN_ADDRESS", cfg.Address)
	set("MERIDIAN_INSTANCE", as.ID)
	set("MERIDIAN_ORG", as.Org)
	set("MERIDIAN_APP", as.App)
	set("MERIDIAN_SERVICE", as.ServiceName)
	set("MERIDIAN_DEPLOYMENT", as.DeploymentID)
	set("MERIDIAN_VERSION", strconv.Itoa(as.Version))
	for i, p := range def.Ports {
		hp := ports[p.Port]
		if i == 0 {
			set("PORT", strconv.Itoa(hp))
		}
		set("MERIDIAN_PORT_"+strconv.Itoa(p.Port), strconv.Itoa(hp))
	}
	for _, k := range keys {
		spec.Env = append(spec.Env, k+"="+vals[k])
	}
	if err := spec.Validate(); err != nil {
		return spec, err
	}
	return spec, nil
}

// writeJSONAtomic writes v to path through a temporary file and a rename.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
