package sched

import (
	"errors"
	"fmt"
	"strconv"
)

// State is the lifecycle state of an instance as recorded in the region's
// store.
type State string

// Instance states.
const (
	// StatePending: placed by a plan; its agent has not started it yet.
	StatePending State = "pending"
	// StateStarting: started by its agent; not yet passing health checks.
	StateStarting State = "starting"
	// StateRunning: running; Instance.Healthy tells whether its health
	// checks pass.
	StateRunning State = "running"
	// StateFailed: exited or failing health checks; its agent restarts it
	// with backoff. Instance.Failed is set once it is past its restart
	// limit, and the region then replaces it.
	StateFailed State = "failed"
	// StateStopped: stopped by a plan. Terminal; takes no capacity.
	StateStopped State = "stopped"
	// StateLost: stopped by a plan because its machine was not ready, and
	// replaced. Takes no capacity. Sticky until its machine is ready again
	// and a plan stops it for good (reason ReasonStale).
	StateLost State = "lost"
)

// Live reports whether an instance in this state is live: it takes capacity
// on its machine and counts towards its group.
func (s State) Live() bool {
	switch s {
	case StatePending, StateStarting, StateRunning, StateFailed:
		return true
	}
	return false
}

func (s State) valid() bool {
	return s.Live() || s == StateStopped || s == StateLost
}

// Stop reasons.
const (
	ReasonMachineLost    = "machine lost"
	ReasonFailed         = "failed past its restart limit"
	ReasonServiceRemoved = "service removed"
	ReasonStale          = "stale: replaced while its machine was lost"
	ReasonScaleDown      = "scale down"
	ReasonRollingUpdate  = "rolling update: replaced by a healthy instance"
	ReasonMakeRoom       = "rolling update: stopped to make room for the new deployment"
	ReasonDrain          = "machine draining: replaced by a healthy instance"
	ReasonNotAllowed     = "data center no longer allowed: replaced by a healthy instance"
)

// Machine is one machine of the region, as its agent registered it.
type Machine struct {
	// ID is unique in the region.
	ID string
	// Datacenter is the data center the machine is in, e.g. "fra1".
	Datacenter string
	// MilliCPU and MemoryMB are the capacity offered to instances.
	MilliCPU int
	MemoryMB int
	// Ready is true while the machine's lease is alive. Instances on a
	// machine that is not ready are lost and replaced.
	Ready bool
	// Draining machines get no new instances; theirs are replaced
	// elsewhere, each stopped once a replacement is healthy.
	Draining bool
}

// Group is the desired state of one service in the region.
type Group struct {
	// Key names the service, unique in the region, e.g. "org/app/svc".
	Key string
	// Deployment is the id of the deployment that should run.
	Deployment string
	// Version is the deployment's number; copied into placements.
	Version int
	// Count is the wanted number of instances.
	Count int
	// MilliCPU and MemoryMB are requested per instance.
	MilliCPU int
	MemoryMB int
	// Datacenters is the allow list of data centers; empty allows all.
	// It is a hard constraint.
	Datacenters []string
}

// Instance is an existing assignment of one instance of a group to a
// machine.
type Instance struct {
	// ID is unique in the region.
	ID string
	// Group is the key of the instance's group.
	Group string
	// Deployment is the deployment the instance runs.
	Deployment string
	// Machine is the id of the machine the instance is on.
	Machine string
	// Datacenter is the machine's data center when the instance was
	// placed; the scheduler uses the machine's own when it knows it.
	Datacenter string
	// MilliCPU and MemoryMB are the instance's requests, counted against
	// its machine while it is live.
	MilliCPU int
	MemoryMB int
	// State is the instance's lifecycle state.
	State State
	// Healthy is true while the instance runs and passes its health
	// checks. Only a running instance counts as healthy.
	Healthy bool
	// Failed is true once the instance is past its restart limit.
	Failed bool
}

// Snapshot is one consistent read of a region's scheduling state.
type Snapshot struct {
	// Revision identifies the read (the etcd revision); the plan is
	// committed with a compare-and-swap on it. New instance ids are made
	// from it, so a revision must never be reused for two committed plans.
	Revision int64
	// IDPrefix is prepended to new instance ids, e.g. "fra-".
	IDPrefix  string
	Machines  []Machine
	Groups    []Group
	Instances []Instance
}

// Placement places a new instance of a group on a machine.
type Placement struct {
	// InstanceID is the new instance's id, InstanceID(prefix, revision, n).
	InstanceID string
	Group      string
	Deployment string
	Version    int
	Machine    string
	Datacenter string
	MilliCPU   int
	MemoryMB   int
	// Replaces is the id of the instance this one replaces (lost, failed,
	// drained or of an older deployment), or empty. For a drain or a
	// rolling update it is informational: old instances are retired one per
	// healthy new instance, not pairwise.
	Replaces string
}

// Stop stops an instance.
type Stop struct {
	InstanceID string
	Group      string
	Machine    string
	// State is the state to record: StateLost when the machine is not
	// ready, StateStopped otherwise.
	State State
	// Reason is one of the Reason* constants.
	Reason string
}

// Pending is demand of a group that could not be placed in this plan.
type Pending struct {
	Group      string
	Deployment string
	Count      int
	// Reason says why, e.g. "no machine in allowed datacenters [fra2] has
	// 1000m cpu and 1024MB free".
	Reason string
}

// Plan is the scheduler's answer for one snapshot.
type Plan struct {
	// Revision is the snapshot's revision, for the compare-and-swap.
	Revision int64
	// Place lists new instances, in the order they were decided.
	Place []Placement
	// Stop lists instances to stop.
	Stop []Stop
	// Pending lists unplaced demand, by group key.
	Pending []Pending
}

// Empty reports whether the plan changes nothing (it may still report
// pending demand).
func (p Plan) Empty() bool { return len(p.Place) == 0 && len(p.Stop) == 0 }

// InstanceID returns the id of the n-th new instance (from 0) of the plan
// made from a snapshot with the given prefix and revision. Schedule skips an
// n whose id already exists in the snapshot.
func InstanceID(prefix string, revision int64, n int) string {
	b := make([]byte, 0, len(prefix)+24)
	b = append(b, prefix...)
	b = append(b, 'r')
	b = strconv.AppendInt(b, revision, 10)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(n), 10)
	return string(b)
}

// MaxCount is the largest Count a group may ask for.
const MaxCount = 1_000_000

// ErrInvalid is wrapped by every error about a malformed snapshot or plan.
var ErrInvalid = errors.New("invalid")

func invalid(format string, args ...any) error {
	return fmt.Errorf("sched: %w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Validate checks a snapshot and returns an error naming the first bad
// field, e.g. `instances[3].state: unknown state "done"`. Instances that
// name an unknown machine or group are valid: they are treated as lost and
// removed respectively.
func Validate(s Snapshot) error {
	_, _, err := validate(&s)
	return err
}

// validate checks s and returns its machine and instance id indexes.
func validate(s *Snapshot) (map[string]int32, map[string]struct{}, error) {
	machines := make(map[string]int32, len(s.Machines))
	for i := range s.Machines {
		m := &s.Machines[i]
		switch {
		case m.ID == "":
			return nil, nil, invalid("machines[%d].id: empty", i)
		case m.Datacenter == "":
			return nil, nil, invalid("machines[%d].datacenter: empty (machine %q)", i, m.ID)
		case m.MilliCPU < 0:
			return nil, nil, invalid("machines[%d].milli_cpu: negative (%d)", i, m.MilliCPU)
		case m.MemoryMB < 0:
			return nil, nil, invalid("machines[%d].memory_mb: negative (%d)", i, m.MemoryMB)
		}
		if _, dup := machines[m.ID]; dup {
			return nil, nil, invalid("machines[%d].id: duplicate machine id %q", i, m.ID)
		}
		machines[m.ID] = int32(i)
	}
	groups := make(map[string]struct{}, len(s.Groups))
	for i := range s.Groups {
		g := &s.Groups[i]
		switch {
		case g.Key == "":
			return nil, nil, invalid("groups[%d].key: empty", i)
		case g.Deployment == "":
			return nil, nil, invalid("groups[%d].deployment: empty (group %q)", i, g.Key)
		case g.Count < 0:
			return nil, nil, invalid("groups[%d].count: negative (%d)", i, g.Count)
		case g.Count > MaxCount:
			return nil, nil, invalid("groups[%d].count: %d is over the limit of %d", i, g.Count, MaxCount)
		case g.MilliCPU < 0:
			return nil, nil, invalid("groups[%d].milli_cpu: negative (%d)", i, g.MilliCPU)
		case g.MemoryMB < 0:
			return nil, nil, invalid("groups[%d].memory_mb: negative (%d)", i, g.MemoryMB)
		}
		if _, dup := groups[g.Key]; dup {
			return nil, nil, invalid("groups[%d].key: duplicate group key %q", i, g.Key)
		}
		groups[g.Key] = struct{}{}
		for j, dc := range g.Datacenters {
			if dc == "" {
				return nil, nil, invalid("groups[%d].datacenters[%d]: empty", i, j)
			}
		}
	}
	ids := make(map[string]struct{}, len(s.Instances))
	for i := range s.Instances {
		in := &s.Instances[i]
		switch {
		case in.ID == "":
			return nil, nil, invalid("instances[%d].id: empty", i)
		case in.Group == "":
			return nil, nil, invalid("instances[%d].group: empty (instance %q)", i, in.ID)
		case in.Deployment == "":
			return nil, nil, invalid("instances[%d].deployment: empty (instance %q)", i, in.ID)
		case in.Machine == "":
			return nil, nil, invalid("instances[%d].machine: empty (instance %q)", i, in.ID)
		case !in.State.valid():
			return nil, nil, invalid("instances[%d].state: unknown state %q (want pending, starting, running, failed, stopped or lost)", i, in.State)
		case in.MilliCPU < 0:
			return nil, nil, invalid("instances[%d].milli_cpu: negative (%d)", i, in.MilliCPU)
		case in.MemoryMB < 0:
			return nil, nil, invalid("instances[%d].memory_mb: negative (%d)", i, in.MemoryMB)
		}
		if _, dup := ids[in.ID]; dup {
			return nil, nil, invalid("instances[%d].id: duplicate instance id %q", i, in.ID)
		}
		ids[in.ID] = struct{}{}
	}
	return machines, ids, nil
}
