package sched

// Apply returns the snapshot a plan describes once committed: each stopped
// instance takes the stop's state (and is no longer healthy), each placement
// becomes a new instance in state pending. It is the reference for what the
// store does when it commits a plan. s is not modified. Apply fails when the
// plan stops an unknown instance or places an id that already exists.
func Apply(s Snapshot, p Plan) (Snapshot, error) {
	out := Snapshot{
		Revision:  s.Revision,
		IDPrefix:  s.IDPrefix,
		Machines:  append([]Machine(nil), s.Machines...),
		Groups:    make([]Group, len(s.Groups)),
		Instances: make([]Instance, len(s.Instances), len(s.Instances)+len(p.Place)),
	}
	for i, g := range s.Groups {
		g.Datacenters = append([]string(nil), g.Datacenters...)
		out.Groups[i] = g
	}
	copy(out.Instances, s.Instances)
	byID := make(map[string]int, len(s.Instances)+len(p.Place))
	for i := range out.Instances {
		byID[out.Instances[i].ID] = i
	}
	for i, st := range p.Stop {
		j, ok := byID[st.InstanceID]
		if !ok {
			return Snapshot{}, invalid("plan.stop[%d].instance_id: unknown instance %q", i, st.InstanceID)
		}
		if st.State != StateStopped && st.State != StateLost {
			return Snapshot{}, invalid("plan.stop[%d].state: %q is not stopped or lost", i, st.State)
		}
		out.Instances[j].State = st.State
		out.Instances[j].Healthy = false
	}
	for i, pl := range p.Place {
		if _, dup := byID[pl.InstanceID]; dup {
			return Snapshot{}, invalid("plan.place[%d].instance_id: instance %q already exists", i, pl.InstanceID)
		}
		byID[pl.InstanceID] = len(out.Instances)
		out.Instances = append(out.Instances, Instance{
			ID:         pl.InstanceID,
			Group:      pl.Group,
			Deployment: pl.Deployment,
			Machine:    pl.Machine,
			Datacenter: pl.Datacenter,
			MilliCPU:   pl.MilliCPU,
			MemoryMB:   pl.MemoryMB,
			State:      StatePending,
		})
	}
	return out, nil
}
