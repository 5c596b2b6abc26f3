// Package sched is Meridian's regional scheduler: a pure function from a
// snapshot of one region's state (machines, wanted groups, existing
// instances) to a plan (instances to place, instances to stop, and demand
// that cannot be placed yet). It does no I/O, reads no clock, uses no
// randomness and starts no goroutines; the same snapshot always gives the
// same plan. The regional control plane reads the snapshot from etcd, calls
// [Schedule], and commits the plan with a compare-and-swap on the snapshot's
// revision, then schedules again whenever something changes (a lease
// expires, an agent reports health, a deployment is wanted).
//
// # Model
//
// A [Group] is the desired state of one service in the region: which
// deployment should run, how many instances, how much cpu and memory each
// needs, and in which data centers. An [Instance] is an existing assignment of
// one instance of a group to a [Machine]. A service whose group is absent from
// the snapshot has been removed: all its instances are stopped.
//
// An instance is "live" when its state is pending, starting, running or
// failed (a failed instance is being restarted by its agent with backoff,
// unless Failed is set: then it is past its restart limit and the region
// replaces it). Stopped and lost instances are not live.
//
// Every live instance counts against its machine's capacity; stopped and
// lost instances do not. Instances stopped by a plan free their capacity for
// placements of the same plan: an agent must stop the instances a plan stops
// (and any lost instance it still runs) before it starts the ones the plan
// places on it.
//
// # What a plan means
//
// [Apply] is the reference for committing a plan; the store does the same:
//
//   - each [Stop] sets the instance's State to Stop.State: [StateLost] when
//     its machine is not ready (the instance is replaced now, without
//     waiting for the unreachable agent), [StateStopped] otherwise;
//   - each [Placement] adds an instance in state [StatePending] on its
//     machine, with the id the plan gives it (see [InstanceID]).
//
// "Replaced" is therefore precise: an instance is replaced once a plan has
// stopped it. A lost instance stays in the snapshot in state lost until its
// machine is ready again; then the scheduler stops it for good (a Stop with
// reason [ReasonStale]) and its agent kills it if it still runs. The store
// must keep a lost instance lost when the agent reports it again: the state
// is sticky until the instance is stopped. So a machine that comes back never
// adds to a group's count, and the group never runs more than Count
// instances for longer than it takes the agent to apply the stop.
//
// # Per group, each round
//
// The live instances of a group fall into four sets:
//
//   - lost: on a machine that is not ready (or unknown). They are stopped
//     (state lost) and replaced, preferring the same data center.
//   - failed: Failed is set. They are stopped and replaced, preferring a
//     different machine.
//   - current: of the wanted deployment, on a ready, non-draining machine in
//     an allowed data center. These are the instances the group keeps.
//   - outgoing: the rest — of another deployment (a rolling update), on a
//     draining machine, or in a data center no longer allowed. They keep
//     serving until replaced.
//
// Then: if there are more current instances than Count, the surplus is
// stopped (unhealthy first, then from the data center and the machine
// holding most of the group, then by id). Outgoing instances are stopped only
// as current ones become healthy: at most max(0, Count - healthy current)
// outgoing instances are kept, unhealthy ones stopped first, then those on
// draining machines. So during a rolling update or a drain the group never
// has fewer healthy instances than before (capped at Count): each new healthy
// instance retires one old one. Finally Count - current new instances are
// placed (surge: old and new run side by side while capacity allows).
//
// When a new instance does not fit anywhere and the group still has
// outgoing instances, one outgoing instance may be stopped to make room —
// only when no new instance of the group is still starting, the freed
// machine then fits the new instance, and either the stopped instance was
// unhealthy or the group keeps at least Count-1 healthy instances. At most
// one instance of a group is unavailable this way at a time. Whatever still
// does not fit is reported as [Pending] with a reason.
//
// Placements that heal (replacing lost and failed instances) are made for
// every group before the other placements (scale up, rollouts, drains, new
// services), groups in order of key.
//
// # Where an instance goes
//
// A new instance only goes to a ready, non-draining machine in one of the
// group's allowed data centers (an empty allow list allows all) where the
// requests of the machine's live instances plus the new one fit its cpu and
// memory. Among those, the data center is chosen by, in order:
//
//  1. it has a fitting machine that holds no instance of the group, if any
//     data center has one (never two instances of a group on one machine
//     while another feasible machine has none);
//  2. it is the data center of the instance being replaced (a lost machine's
//     instances stay in their data center);
//  3. it holds the fewest instances of the group (spread across data
//     centers);
//  4. its name.
//
// Within the data center, the machine holding the fewest instances of the
// group, then the least loaded (the larger of its cpu and memory shares in
// use), then the smallest id. A replacement for a failed instance avoids the
// failed instance's machine unless no other machine fits. "Instances of the
// group" here means its current instances (and those placed by the plan so
// far): outgoing instances are about to go and do not count.
//
// # Scale
//
// Eligible machines are indexed per data center in min-heaps ordered by
// (load, id), split by capacity class (quarter octaves of cpu and memory) so
// that a large request does not walk past small machines. Each heap node
// carries its machine's free capacity and the largest free cpu and memory in
// its subtree. A placement walks each heap in order without changing it,
// skipping subtrees where nothing fits and stopping at the first machine
// that fits and holds no instance of the group; "nothing fits" answers are
// cached per data center and group until capacity is freed there. Machines
// already holding a group are kept in a lazily refreshed heap per group and
// data center. A placement thus costs O(log machines) in the common case,
// with no scan of all machines. See the benchmarks in sched_bench_test.go.
package sched
