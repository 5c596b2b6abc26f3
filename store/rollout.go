package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
)

// Kinds of region operations.
const (
	OpApply  = "apply"  // regionapi Apply of a deployment's regional definition
	OpDelete = "delete" // regionapi DeleteService
)

// Purposes of region operations.
const (
	PurposeRollout = "rollout" // a deployment's forward apply to a region
	PurposeRevert  = "revert"  // putting a region back on its previous deployment
	PurposeRemove  = "remove"  // a region dropped from a service's definition
	PurposeDelete  = "delete"  // the service was deleted
	PurposeSmoke   = "smoke"   // a region's smoke test
)

// States of region operations.
const (
	OpPending    = "pending"    // to be sent (again) until the region answers
	OpDone       = "done"       // the region accepted it
	OpSuperseded = "superseded" // a newer operation on the same service and region replaced it
	OpFailed     = "failed"     // the region refused it for good (e.g. 400)
)

// RegionOp is one call to a region, written with its generation before it
// is sent, so that a restarted or another global replica sends the same
// generation again (which the region answers applied: false) instead of a
// new one.
type RegionOp struct {
	ID         string
	ServiceKey string // "<org>.<app>.<service>"
	Region     string
	Generation int64
	Kind       string // OpApply | OpDelete
	Purpose    string // Purpose*
	// DeploymentID is the deployment whose rollout issued the operation
	// ("" for a service deletion or a smoke test).
	DeploymentID string
	// TargetDeploymentID is the deployment applied ("" for deletions).
	TargetDeploymentID string
	// Payload is the caller's encoding of the call (opaque to the store).
	Payload   []byte
	State     string
	Applied   bool // the region's first answer said applied: true
	Message   string
	Attempts  int
	CreatedAt time.Time
	UpdatedAt time.Time
}

// OpFilter selects region operations; empty fields match everything.
type OpFilter struct {
	State        string
	Region       string
	DeploymentID string
	ServiceKey   string
}

// ServiceRegion is the generation counter of a service in one region, and
// whether its last operation there was a deletion.
type ServiceRegion struct {
	ServiceKey string
	Region     string
	Generation int64
	Deleted    bool
	UpdatedAt  time.Time
}

// ActiveDeployment is a deployment whose rollout is still being driven.
type ActiveDeployment struct {
	ID        string
	OrgID     string
	ServiceID string
	Version   int
}

// SetDeploymentState implements Tx: status, message, whether a rollout
// worker still drives it, and the update time.
func (t *sqlTx) SetDeploymentState(ctx context.Context, id, status, message string, active bool, at time.Time) error {
	op := fmt.Sprintf("set deployment %q state", id)
	if err := need(op, "status", status); err != nil {
		return err
	}
	return t.affected(ctx, op, `UPDATE deployments SET status = ?, message = ?, active = ?, updated_at = ? WHERE id = ?`,
		status, message, active, t.d.ts(at), id)
}

// ListActiveDeployments implements Tx, oldest first.
func (t *sqlTx) ListActiveDeployments(ctx context.Context, serviceID string) ([]ActiveDeployment, error) {
	q, args := `SELECT id, org_id, service_id, version FROM deployments WHERE active = ?`, []any{true}
	if serviceID != "" {
		q += ` AND service_id = ?`
		args = append(args, serviceID)
	}
	q += ` ORDER BY created_at, id`
	out, err := collect(ctx, t, q, args, func(sc interface{ Scan(...any) error }) (ActiveDeployment, error) {
		var a ActiveDeployment
		err := sc.Scan(&a.ID, &a.OrgID, &a.ServiceID, &a.Version)
		return a, err
	})
	return out, mapErr("list active deployments", err)
}

// LatestHealthyDeployment implements Tx: the newest deployment of the
// service older than beforeVersion whose regional deployment in region is
// HEALTHY, with all its regional deployments.
func (t *sqlTx) LatestHealthyDeployment(ctx context.Context, orgID, serviceID, region string, beforeVersion int) (api.Deployment, error) {
	op := fmt.Sprintf("latest healthy deployment in %q", region)
	var id string
	err := t.queryRow(ctx, `SELECT d.id FROM deployments d JOIN regional_deployments r ON r.deployment_id = d.id
		WHERE d.org_id = ? AND d.service_id = ? AND r.region = ? AND r.status = ? AND d.version < ?
		ORDER BY d.version DESC LIMIT 1`, orgID, serviceID, region, api.StatusHealthy, beforeVersion).Scan(&id)
	if err != nil {
		return api.Deployment{}, mapErr(op, err)
	}
	return t.GetDeployment(ctx, orgID, id)
}

// AddDeploymentEvent implements Tx.
func (t *sqlTx) AddDeploymentEvent(ctx context.Context, deploymentID string, ev api.DeploymentEvent) error {
	op := fmt.Sprintf("add event to deployment %q", deploymentID)
	if err := need(op, "type", ev.Type); err != nil {
		return err
	}
	ok, err := t.insert(ctx, `INSERT INTO deployment_events (deployment_id, at, region, type, message)
		SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM deployments WHERE id = ?)`,
		deploymentID, t.d.ts(ev.At), ev.Region, ev.Type, ev.Message, deploymentID)
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return fmt.Errorf("store: %s: %w", op, ErrNotFound)
	}
	return nil
}

// ListDeploymentEvents implements Tx, oldest first.
func (t *sqlTx) ListDeploymentEvents(ctx context.Context, deploymentID string) ([]api.DeploymentEvent, error) {
	out, err := collect(ctx, t, `SELECT at, region, type, message FROM deployment_events WHERE deployment_id = ? ORDER BY seq`,
		[]any{deploymentID}, func(sc interface{ Scan(...any) error }) (api.DeploymentEvent, error) {
			var e api.DeploymentEvent
			err := sc.Scan(scanTime{&e.At}, &e.Region, &e.Type, &e.Message)
			return e, err
		})
	return out, mapErr(fmt.Sprintf("list events of deployment %q", deploymentID), err)
}

// AllocateGeneration implements Tx: the next generation of the service in
// the region (1 for the first), recording whether it is a deletion.
func (t *sqlTx) AllocateGeneration(ctx context.Context, serviceKey, region string, deleted bool, at time.Time) (int64, error) {
	op := fmt.Sprintf("allocate generation of %q in %q", serviceKey, region)
	if err := need(op, "service key", serviceKey, "region", region); err != nil {
		return 0, err
	}
	var gen int64
	err := t.queryRow(ctx, `INSERT INTO service_regions (service_key, region, generation, deleted, updated_at) VALUES (?, ?, 1, ?, ?)
		ON CONFLICT (service_key, region) DO UPDATE SET generation = service_regions.generation + 1,
			deleted = excluded.deleted, updated_at = excluded.updated_at
		RETURNING generation`, serviceKey, region, deleted, t.d.ts(at)).Scan(&gen)
	return gen, mapErr(op, err)
}

// ServiceRegions implements Tx, by region.
func (t *sqlTx) ServiceRegions(ctx context.Context, serviceKey string) ([]ServiceRegion, error) {
	out, err := collect(ctx, t, `SELECT service_key, region, generation, deleted, updated_at FROM service_regions WHERE service_key = ? ORDER BY region`,
		[]any{serviceKey}, func(sc interface{ Scan(...any) error }) (ServiceRegion, error) {
			var r ServiceRegion
			err := sc.Scan(&r.ServiceKey, &r.Region, &r.Generation, &r.Deleted, scanTime{&r.UpdatedAt})
			return r, err
		})
	return out, mapErr(fmt.Sprintf("service regions of %q", serviceKey), err)
}

const opCols = `id, service_key, region, generation, kind, purpose, deployment_id, target_deployment_id, payload, state, applied, message, attempts, created_at, updated_at`

func scanOp(sc interface{ Scan(...any) error }) (RegionOp, error) {
	var o RegionOp
	var payload string
	err := sc.Scan(&o.ID, &o.ServiceKey, &o.Region, &o.Generation, &o.Kind, &o.Purpose, &o.DeploymentID, &o.TargetDeploymentID,
		&payload, &o.State, &o.Applied, &o.Message, &o.Attempts, scanTime{&o.CreatedAt}, scanTime{&o.UpdatedAt})
	o.Payload = []byte(payload)
	return o, err
}

// CreateRegionOp implements Tx. The pending operations of the same service
// and region with a lower generation become superseded: the region keeps
// only the highest generation, so they would be refused as stale anyway.
func (t *sqlTx) CreateRegionOp(ctx context.Context, o RegionOp) error {
	op := fmt.Sprintf("create %s op of %q in %q", o.Kind, o.ServiceKey, o.Region)
	if err := need(op, "id", o.ID, "service key", o.ServiceKey, "region", o.Region, "kind", o.Kind, "purpose", o.Purpose, "state", o.State); err != nil {
		return err
	}
	if o.Generation < 1 {
		return fmt.Errorf("store: %s: generation %d is below 1", op, o.Generation)
	}
	ok, err := t.insert(ctx, `INSERT INTO region_ops (`+opCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		o.ID, o.ServiceKey, o.Region, o.Generation, o.Kind, o.Purpose, o.DeploymentID, o.TargetDeploymentID, string(o.Payload),
		o.State, o.Applied, o.Message, o.Attempts, t.d.ts(o.CreatedAt), t.d.ts(updatedOr(o.UpdatedAt, o.CreatedAt)))
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return fmt.Errorf("store: %s: generation %d or id %q: %w", op, o.Generation, o.ID, ErrConflict)
	}
	if _, err := t.exec(ctx, `UPDATE region_ops SET state = ?, message = ?, updated_at = ?
		WHERE service_key = ? AND region = ? AND state = ? AND generation < ?`,
		OpSuperseded, fmt.Sprintf("superseded by generation %d", o.Generation), t.d.ts(updatedOr(o.UpdatedAt, o.CreatedAt)),
		o.ServiceKey, o.Region, OpPending, o.Generation); err != nil {
		return mapErr(op, err)
	}
	return nil
}

// GetRegionOp implements Tx. In a PostgreSQL write transaction the row is
// locked until commit.
func (t *sqlTx) GetRegionOp(ctx context.Context, id string) (RegionOp, error) {
	o, err := scanOp(t.queryRow(ctx, `SELECT `+opCols+` FROM region_ops WHERE id = ?`+t.forUpdate(""), id))
	return o, mapErr(fmt.Sprintf("get region op %q", id), err)
}

// UpdateRegionOp implements Tx: state, applied, message, attempts and the
// update time.
func (t *sqlTx) UpdateRegionOp(ctx context.Context, o RegionOp) error {
	return t.affected(ctx, fmt.Sprintf("update region op %q", o.ID),
		`UPDATE region_ops SET state = ?, applied = ?, message = ?, attempts = ?, updated_at = ? WHERE id = ?`,
		o.State, o.Applied, o.Message, o.Attempts, t.d.ts(o.UpdatedAt), o.ID)
}

// ListRegionOps implements Tx, oldest first.
func (t *sqlTx) ListRegionOps(ctx context.Context, f OpFilter) ([]RegionOp, error) {
	var where []string
	var args []any
	for _, c := range []struct{ col, v string }{{"state", f.State}, {"region", f.Region}, {"deployment_id", f.DeploymentID}, {"service_key", f.ServiceKey}} {
		if c.v != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.v)
		}
	}
	q := `SELECT ` + opCols + ` FROM region_ops`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created_at, generation, id`
	out, err := collect(ctx, t, q, args, scanOp)
	return out, mapErr("list region ops", err)
}

// AcquireLease implements Tx.
func (t *sqlTx) AcquireLease(ctx context.Context, name, owner string, now time.Time, ttl time.Duration) (bool, error) {
	op := fmt.Sprintf("acquire lease %q", name)
	if err := need(op, "name", name, "owner", owner); err != nil {
		return false, err
	}
	if ttl <= 0 {
		return false, fmt.Errorf("store: %s: ttl %s is not positive", op, ttl)
	}
	res, err := t.exec(ctx, `INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
		WHERE leases.owner = excluded.owner OR leases.expires_at <= ?`,
		name, owner, t.d.ts(now.Add(ttl)), t.d.ts(now))
	if err != nil {
		return false, mapErr(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, mapErr(op, err)
	}
	return n > 0, nil
}

// ReleaseLease implements Tx. Releasing a lease held by another owner, or
// none, does nothing.
func (t *sqlTx) ReleaseLease(ctx context.Context, name, owner string) error {
	_, err := t.exec(ctx, `DELETE FROM leases WHERE name = ? AND owner = ?`, name, owner)
	return mapErr(fmt.Sprintf("release lease %q", name), err)
}

// LeaseOwner implements Tx: the owner of an unexpired lease, or "".
func (t *sqlTx) LeaseOwner(ctx context.Context, name string, now time.Time) (string, error) {
	var owner string
	var exp time.Time
	err := t.queryRow(ctx, `SELECT owner, expires_at FROM leases WHERE name = ?`, name).Scan(&owner, scanTime{&exp})
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", mapErr(fmt.Sprintf("lease %q", name), err)
	}
	if !exp.After(now) {
		return "", nil
	}
	return owner, nil
}
