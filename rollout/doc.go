// Package rollout rolls deployments out to regions for the global control
// plane: a pure decision ([Decide]) from a deployment's stored state and
// what its regions said to the writes that move it on, and an [Engine]
// that observes the regions and applies the decisions in the store, sends
// region operations, and tells regions their peers.
//
// # The decision
//
// [Decide] reads a [State] (the deployment with its regional deployments,
// its region operations, the service's generations per region, the
// previous healthy deployment per region, and the failed instances seen so
// far), one [Observation] per region that is PROGRESSING (its status, or
// the error reading it) and the time, and returns [Action]s: set the
// deployment's or a region's status, add an event, create an operation
// with a generation, remember failed instances. It does no I/O, reads no
// clock and keeps no state; the same input gives the same actions. [Cancel]
// is the user's cancellation, decided the same way.
//
// One step, in this order:
//
//   - A PENDING deployment becomes PROGRESSING.
//   - Each APPLYING region follows its rollout operation: accepted, it
//     becomes PROGRESSING and its health deadline starts; refused, it
//     fails; superseded by a newer generation, it is CANCELED; still
//     unsent past the health deadline, it fails.
//   - Each PROGRESSING region follows its status: HEALTHY once the region
//     runs this deployment's generation healthy; CANCELED when the region
//     moved on to a newer generation; failed when as many instances of
//     this deployment failed past their restart limit as the region wants,
//     or when it is not healthy by the health deadline. Otherwise its
//     message follows the region's.
//   - A failed region is FAILED and reverted. With on_failure rollback_all
//     every other region that got the new version is reverted too
//     (ROLLED_BACK); a failed canary, or any failure under rollback_all,
//     cancels the regions not reached yet. A revert is an operation that
//     applies the region's previous healthy deployment, or deletes the
//     service there when none was.
//   - Unless the deployment was canceled, PENDING regions start, canary
//     regions first and then in the definition's order: no other region
//     starts before every canary is HEALTHY, and no more than
//     max_parallel_regions are APPLYING or PROGRESSING at once (no limit
//     for 0 or all_at_once). Starting a region creates its rollout
//     operation.
//   - Once every region is settled (HEALTHY, FAILED, ROLLED_BACK or
//     CANCELED) and its revert accepted, or pending past the health
//     deadline, the deployment finishes: HEALTHY when every region is,
//     DEGRADED when some are, ERROR otherwise (CANCELED when the user
//     canceled it). It is then no longer active and gets no further
//     decision.
//
// # Durability
//
// An operation's generation is allocated in the transaction that decides
// it, and the operation is written there too, before any region is
// called: [Decide] numbers operations from [State.Generations] and the
// engine fails the transaction if the store allocates another number (a
// concurrent writer took it; the step is decided again). Each deployment is
// driven under a lease in the store, and its decisions are written in
// transactions that check the lease, so two replicas never both decide
// for one deployment. One worker per region sends the pending operations,
// retrying with backoff; a region answers a generation it already applied
// with applied: false and an older one with 409, so a crash at any point
// never applies anything twice.
package rollout
