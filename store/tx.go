package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
)

// sqlTx is the Tx of sqlStore. Its methods are for the goroutine running
// fn.
//
// Inserts use ON CONFLICT DO NOTHING and check parents in the same
// statement, so ErrConflict and ErrNotFound leave the transaction usable in
// PostgreSQL as in SQLite (a caller may, say, record an idempotent answer
// after a conflict).
//
// Isolation. SQLite runs one write transaction at a time. PostgreSQL runs
// Update at READ COMMITTED, and there the Get methods of the rows that can
// be modified in place — GetService, GetDeployment (the deployment row,
// which guards its regional deployments), GetSecret and GetRegion — lock the
// row they return (SELECT ... FOR UPDATE) until the transaction ends, and
// CreateDeployment locks its service. So a read-modify-write of one row is
// safe in both databases: a second writer waits for the first and then
// reads its result. Lists and absent rows are not locked; unique keys
// settle races to create (ErrConflict).
type sqlTx struct {
	tx *sql.Tx
	d  *dialect
	// lock is true in a PostgreSQL read-write transaction.
	lock bool
}

// forUpdate is the locking clause of a read of rows to modify (of table
// alias of, or of the only table when of is empty).
func (t *sqlTx) forUpdate(of string) string {
	switch {
	case !t.lock:
		return ""
	case of == "":
		return " FOR UPDATE"
	default:
		return " FOR UPDATE OF " + of
	}
}

func (t *sqlTx) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(ctx, t.d.rebind(q), args...)
}

func (t *sqlTx) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(ctx, t.d.rebind(q), args...)
}

func (t *sqlTx) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(ctx, t.d.rebind(q), args...)
}

// insert runs an INSERT ... ON CONFLICT DO NOTHING and reports whether it
// wrote a row.
func (t *sqlTx) insert(ctx context.Context, q string, args ...any) (bool, error) {
	res, err := t.exec(ctx, q, args...)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, err
	}
	return n > 0, nil
}

// affected runs an UPDATE or DELETE and fails with ErrNotFound when it
// touched no row.
func (t *sqlTx) affected(ctx context.Context, op, q string, args ...any) error {
	res, err := t.exec(ctx, q, args...)
	if err != nil {
		return mapErr(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return mapErr(op, err)
	}
	if n == 0 {
		return fmt.Errorf("store: %s: %w", op, ErrNotFound)
	}
	return nil
}

func (t *sqlTx) exists(ctx context.Context, q string, args ...any) (bool, error) {
	var one int
	err := t.queryRow(ctx, q, args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// missingOrConflict explains an insert that wrote nothing: the parent row
// (found by parentQ) is missing, or a unique key is taken.
func (t *sqlTx) missingOrConflict(ctx context.Context, op, parent, parentQ string, args ...any) error {
	ok, err := t.exists(ctx, parentQ, args...)
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return fmt.Errorf("store: %s: %s: %w", op, parent, ErrNotFound)
	}
	return fmt.Errorf("store: %s: %w", op, ErrConflict)
}

func need(op string, fields ...string) error {
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i+1] == "" {
			return fmt.Errorf("store: %s: %s is empty", op, fields[i])
		}
	}
	return nil
}

// Organizations.

// CreateOrg implements Tx. The id and the name are unique.
func (t *sqlTx) CreateOrg(ctx context.Context, o api.Organization) error {
	op := fmt.Sprintf("create org %q", o.Name)
	if err := need(op, "id", o.ID, "name", o.Name); err != nil {
		return err
	}
	ok, err := t.insert(ctx, `INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
		o.ID, o.Name, t.d.ts(o.CreatedAt))
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return fmt.Errorf("store: %s: %w", op, ErrConflict)
	}
	return nil
}

const orgCols = `id, name, created_at`

func scanOrg(sc interface{ Scan(...any) error }) (api.Organization, error) {
	var o api.Organization
	err := sc.Scan(&o.ID, &o.Name, scanTime{&o.CreatedAt})
	return o, err
}

// GetOrg implements Tx.
func (t *sqlTx) GetOrg(ctx context.Context, id string) (api.Organization, error) {
	o, err := scanOrg(t.queryRow(ctx, `SELECT `+orgCols+` FROM orgs WHERE id = ?`, id))
	return o, mapErr(fmt.Sprintf("get org %q", id), err)
}

// GetOrgByName implements Tx.
func (t *sqlTx) GetOrgByName(ctx context.Context, name string) (api.Organization, error) {
	o, err := scanOrg(t.queryRow(ctx, `SELECT `+orgCols+` FROM orgs WHERE name = ?`, name))
	return o, mapErr(fmt.Sprintf("get org %q", name), err)
}

// ListOrgs implements Tx, ordered by name.
func (t *sqlTx) ListOrgs(ctx context.Context, p Page) ([]api.Organization, string, error) {
	return listByText(ctx, t, "orgs", `SELECT `+orgCols+` FROM orgs`, "", nil, "name", p, scanOrg,
		func(o api.Organization) string { return o.Name })
}

// collect runs q and scans every row with scan.
func collect[T any](ctx context.Context, t *sqlTx, q string, args []any, scan func(interface{ Scan(...any) error }) (T, error)) ([]T, error) {
	rows, err := t.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	items := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		items = append(items, v)
	}
	return items, rows.Err()
}

// listByText answers one page of a list sorted by a unique text column
// (col): query selects the rows, where (holding args) filters them or is
// empty, and key is an item's sort key, the cursor of the next page.
func listByText[T any](ctx context.Context, t *sqlTx, list, query, where string, args []any, col string, p Page,
	scan func(interface{ Scan(...any) error }) (T, error), key func(T) string) ([]T, string, error) {
	c, after, err := parseCursor(list, p.Token)
	if err != nil {
		return nil, "", err
	}
	var conds []string
	if where != "" {
		conds = append(conds, where)
	}
	if after {
		conds = append(conds, col+" > ?")
		args = append(args, c.S)
	}
	if len(conds) > 0 {
		query += ` WHERE ` + strings.Join(conds, " AND ")
	}
	query += ` ORDER BY ` + col + ` LIMIT ?`
	items, err := collect(ctx, t, query, append(args, p.limit()+1), scan)
	if err != nil {
		return nil, "", mapErr("list "+strings.ReplaceAll(list, "_", " "), err)
	}
	items, last, more := trim(items, p.limit())
	if !more {
		return items, "", nil
	}
	return items, cursor{List: list, S: key(last)}.token(), nil
}

// trim cuts a limit+1 query result to limit items and reports the last item
// kept when there is a next page.
func trim[T any](items []T, limit int) ([]T, T, bool) {
	var zero T
	if len(items) <= limit {
		return items, zero, false
	}
	items = items[:limit]
	return items, items[limit-1], true
}

// Tokens.

// CreateToken implements Tx. The id and the hash are unique; the org must
// exist.
func (t *sqlTx) CreateToken(ctx context.Context, r TokenRecord) error {
	op := fmt.Sprintf("create token %q", r.Name)
	if err := need(op, "id", r.ID, "org id", r.OrgID); err != nil {
		return err
	}
	if len(r.Hash) == 0 {
		return fmt.Errorf("store: %s: hash is empty", op)
	}
	ok, err := t.insert(ctx, `INSERT INTO tokens (id, org_id, name, hash, created_at)
		SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM orgs WHERE id = ?) ON CONFLICT DO NOTHING`,
		r.ID, r.OrgID, r.Name, r.Hash, t.d.ts(r.CreatedAt), r.OrgID)
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return t.missingOrConflict(ctx, op, fmt.Sprintf("org %q", r.OrgID), `SELECT 1 FROM orgs WHERE id = ?`, r.OrgID)
	}
	return nil
}

const tokenCols = `id, org_id, name, created_at`

func scanToken(sc interface{ Scan(...any) error }) (api.Token, error) {
	var k api.Token
	err := sc.Scan(&k.ID, &k.OrgID, &k.Name, scanTime{&k.CreatedAt})
	return k, err
}

// TokenByHash implements Tx. It is not scoped by org: it is how a request's
// org is found.
func (t *sqlTx) TokenByHash(ctx context.Context, hash []byte) (api.Token, error) {
	k, err := scanToken(t.queryRow(ctx, `SELECT `+tokenCols+` FROM tokens WHERE hash = ?`, bytesOrEmpty(hash)))
	return k, mapErr("token by hash", err)
}

// ListTokens implements Tx, ordered by creation time, then id.
func (t *sqlTx) ListTokens(ctx context.Context, orgID string, p Page) ([]api.Token, string, error) {
	const list = "tokens"
	c, after, err := parseCursor(list, p.Token)
	if err != nil {
		return nil, "", err
	}
	q, args := `SELECT `+tokenCols+` FROM tokens WHERE org_id = ?`, []any{orgID}
	if after {
		at := t.d.ts(time.UnixMicro(c.N))
		q += ` AND (created_at > ? OR (created_at = ? AND id > ?))`
		args = append(args, at, at, c.S)
	}
	q += ` ORDER BY created_at, id LIMIT ?`
	items, err := collect(ctx, t, q, append(args, p.limit()+1), scanToken)
	if err != nil {
		return nil, "", mapErr("list tokens", err)
	}
	items, last, more := trim(items, p.limit())
	if !more {
		return items, "", nil
	}
	return items, cursor{List: list, N: last.CreatedAt.UnixMicro(), S: last.ID}.token(), nil
}

// DeleteToken implements Tx.
func (t *sqlTx) DeleteToken(ctx context.Context, orgID, id string) error {
	return t.affected(ctx, fmt.Sprintf("delete token %q", id), `DELETE FROM tokens WHERE org_id = ? AND id = ?`, orgID, id)
}

// BearerByHash implements Tx with one query over both token tables.
func (t *sqlTx) BearerByHash(ctx context.Context, hash []byte) (Bearer, error) {
	var b Bearer
	var kind string
	h := bytesOrEmpty(hash)
	err := t.queryRow(ctx, `SELECT 'org', id, org_id FROM tokens WHERE hash = ?
		UNION ALL SELECT 'edge', id, '' FROM edge_tokens WHERE hash = ?`, h, h).Scan(&kind, &b.TokenID, &b.OrgID)
	b.Edge = kind == "edge"
	return b, mapErr("bearer by hash", err)
}

// Edge tokens.

// CreateEdgeToken implements Tx.
func (t *sqlTx) CreateEdgeToken(ctx context.Context, r EdgeTokenRecord) error {
	op := fmt.Sprintf("create edge token %q", r.Name)
	if err := need(op, "id", r.ID, "name", r.Name); err != nil {
		return err
	}
	if len(r.Hash) == 0 {
		return fmt.Errorf("store: %s: hash is empty", op)
	}
	ok, err := t.insert(ctx, `INSERT INTO edge_tokens (id, name, hash, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		r.ID, r.Name, r.Hash, t.d.ts(r.CreatedAt))
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return fmt.Errorf("store: %s: %w", op, ErrConflict)
	}
	return nil
}

func scanEdgeToken(sc interface{ Scan(...any) error }) (api.EdgeToken, error) {
	var k api.EdgeToken
	err := sc.Scan(&k.ID, &k.Name, scanTime{&k.CreatedAt})
	return k, err
}

// ListEdgeTokens implements Tx, ordered by name, without values.
func (t *sqlTx) ListEdgeTokens(ctx context.Context, p Page) ([]api.EdgeToken, string, error) {
	return listByText(ctx, t, "edge_tokens", `SELECT id, name, created_at FROM edge_tokens`, "", nil, "name", p, scanEdgeToken,
		func(e api.EdgeToken) string { return e.Name })
}

// DeleteEdgeToken implements Tx.
func (t *sqlTx) DeleteEdgeToken(ctx context.Context, id string) error {
	return t.affected(ctx, fmt.Sprintf("delete edge token %q", id), `DELETE FROM edge_tokens WHERE id = ?`, id)
}

// Apps.

// CreateApp implements Tx. The id, the (org, name) pair and a non-empty
// host are unique; the org must exist.
func (t *sqlTx) CreateApp(ctx context.Context, a api.App) error {
	op := fmt.Sprintf("create app %q", a.Name)
	if err := need(op, "id", a.ID, "org id", a.OrgID, "name", a.Name); err != nil {
		return err
	}
	ok, err := t.insert(ctx, `INSERT INTO apps (id, org_id, name, host, created_at)
		SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM orgs WHERE id = ?) ON CONFLICT DO NOTHING`,
		a.ID, a.OrgID, a.Name, a.Host, t.d.ts(a.CreatedAt), a.OrgID)
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return t.missingOrConflict(ctx, op, fmt.Sprintf("org %q", a.OrgID), `SELECT 1 FROM orgs WHERE id = ?`, a.OrgID)
	}
	return nil
}

const appCols = `id, org_id, name, host, created_at`

func scanApp(sc interface{ Scan(...any) error }) (api.App, error) {
	var a api.App
	err := sc.Scan(&a.ID, &a.OrgID, &a.Name, &a.Host, scanTime{&a.CreatedAt})
	return a, err
}

// GetApp implements Tx.
func (t *sqlTx) GetApp(ctx context.Context, orgID, name string) (api.App, error) {
	a, err := scanApp(t.queryRow(ctx, `SELECT `+appCols+` FROM apps WHERE org_id = ? AND name = ?`, orgID, name))
	return a, mapErr(fmt.Sprintf("get app %q", name), err)
}

// ListApps implements Tx, ordered by name.
func (t *sqlTx) ListApps(ctx context.Context, orgID string, p Page) ([]api.App, string, error) {
	return listByText(ctx, t, "apps", `SELECT `+appCols+` FROM apps`, "org_id = ?", []any{orgID}, "name", p, scanApp,
		func(a api.App) string { return a.Name })
}

// DeleteApp implements Tx.
func (t *sqlTx) DeleteApp(ctx context.Context, orgID, name string) error {
	op := fmt.Sprintf("delete app %q", name)
	var id string
	if err := t.queryRow(ctx, `SELECT id FROM apps WHERE org_id = ? AND name = ?`, orgID, name).Scan(&id); err != nil {
		return mapErr(op, err)
	}
	busy, err := t.exists(ctx, `SELECT 1 FROM services WHERE org_id = ? AND app_id = ? LIMIT 1`, orgID, id)
	if err != nil {
		return mapErr(op, err)
	}
	if busy {
		return fmt.Errorf("store: %s: app has services: %w", op, ErrConflict)
	}
	return t.affected(ctx, op, `DELETE FROM apps WHERE id = ?`, id)
}

// Secrets.

// PutSecret implements Tx. A replaced secret keeps its id and creation
// time; its sealed value and update time change.
func (t *sqlTx) PutSecret(ctx context.Context, s SecretRecord) (bool, error) {
	op := fmt.Sprintf("put secret %q", s.Name)
	if err := need(op, "id", s.ID, "org id", s.OrgID, "name", s.Name); err != nil {
		return false, err
	}
	res, err := t.exec(ctx, `UPDATE secrets SET sealed = ?, updated_at = ? WHERE org_id = ? AND name = ?`,
		bytesOrEmpty(s.Sealed), t.d.ts(s.UpdatedAt), s.OrgID, s.Name)
	if err != nil {
		return false, mapErr(op, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return false, mapErr(op, err)
	} else if n > 0 {
		return false, nil
	}
	ok, err := t.insert(ctx, `INSERT INTO secrets (id, org_id, name, sealed, created_at, updated_at)
		SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM orgs WHERE id = ?) ON CONFLICT DO NOTHING`,
		s.ID, s.OrgID, s.Name, bytesOrEmpty(s.Sealed), t.d.ts(s.CreatedAt), t.d.ts(s.UpdatedAt), s.OrgID)
	if err != nil {
		return false, mapErr(op, err)
	}
	if !ok {
		return false, t.missingOrConflict(ctx, op, fmt.Sprintf("org %q", s.OrgID), `SELECT 1 FROM orgs WHERE id = ?`, s.OrgID)
	}
	return true, nil
}

// GetSecret implements Tx.
func (t *sqlTx) GetSecret(ctx context.Context, orgID, name string) (SecretRecord, error) {
	var s SecretRecord
	err := t.queryRow(ctx, `SELECT id, org_id, name, sealed, created_at, updated_at FROM secrets WHERE org_id = ? AND name = ?`+t.forUpdate(""), orgID, name).
		Scan(&s.ID, &s.OrgID, &s.Name, &s.Sealed, scanTime{&s.CreatedAt}, scanTime{&s.UpdatedAt})
	return s, mapErr(fmt.Sprintf("get secret %q", name), err)
}

func scanSecret(sc interface{ Scan(...any) error }) (api.Secret, error) {
	var s api.Secret
	err := sc.Scan(&s.ID, &s.OrgID, &s.Name, scanTime{&s.CreatedAt}, scanTime{&s.UpdatedAt})
	return s, err
}

// ListSecrets implements Tx, ordered by name, without values.
func (t *sqlTx) ListSecrets(ctx context.Context, orgID string, p Page) ([]api.Secret, string, error) {
	return listByText(ctx, t, "secrets", `SELECT id, org_id, name, created_at, updated_at FROM secrets`, "org_id = ?", []any{orgID}, "name", p, scanSecret,
		func(s api.Secret) string { return s.Name })
}

// DeleteSecret implements Tx.
func (t *sqlTx) DeleteSecret(ctx context.Context, orgID, name string) error {
	return t.affected(ctx, fmt.Sprintf("delete secret %q", name), `DELETE FROM secrets WHERE org_id = ? AND name = ?`, orgID, name)
}

// Services and deployments.

// CreateDeployment implements Tx. It runs under a savepoint, so a failure
// leaves nothing of it behind even if the caller goes on and commits. In
// PostgreSQL the service row is locked (SELECT ... FOR UPDATE) while the
// version is assigned; in SQLite the write transaction already excludes
// other writers.
func (t *sqlTx) CreateDeployment(ctx context.Context, d NewDeployment) (api.Deployment, error) {
	svc, dep := d.Service, d.Deployment
	op := fmt.Sprintf("create deployment of service %q", svc.Name)
	if err := need(op, "service org id", svc.OrgID, "service app id", svc.AppID, "service name", svc.Name,
		"deployment id", dep.ID, "deployment status", dep.Status); err != nil {
		return api.Deployment{}, err
	}
	seen := make(map[string]bool, len(dep.Regional))
	for i, rd := range dep.Regional {
		if err := need(op, fmt.Sprintf("regional[%d].id", i), rd.ID, fmt.Sprintf("regional[%d].region", i), rd.Region); err != nil {
			return api.Deployment{}, err
		}
		if seen[rd.Region] {
			return api.Deployment{}, fmt.Errorf("store: %s: regional[%d].region %q is repeated", op, i, rd.Region)
		}
		seen[rd.Region] = true
	}
	def, err := json.Marshal(dep.Definition)
	if err != nil {
		return api.Deployment{}, fmt.Errorf("store: %s: definition: %w", op, err)
	}
	regDefs := make([]string, len(dep.Regional))
	for i, rd := range dep.Regional {
		b, err := json.Marshal(rd.Definition)
		if err != nil {
			return api.Deployment{}, fmt.Errorf("store: %s: regional[%d].definition: %w", op, i, err)
		}
		regDefs[i] = string(b)
	}

	var out api.Deployment
	err = t.savepoint(ctx, func() error {
		var appName string
		if err := t.queryRow(ctx, `SELECT name FROM apps WHERE org_id = ? AND id = ?`, svc.OrgID, svc.AppID).Scan(&appName); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("store: %s: app %q: %w", op, svc.AppID, ErrNotFound)
			}
			return mapErr(op, err)
		}
		lockQ := `SELECT id, latest_version, created_at FROM services WHERE org_id = ? AND app_id = ? AND name = ?` + t.forUpdate("")
		var (
			serviceID string
			latest    int
			created   time.Time
		)
		err := t.queryRow(ctx, lockQ, svc.OrgID, svc.AppID, svc.Name).Scan(&serviceID, &latest, scanTime{&created})
		if errors.Is(err, sql.ErrNoRows) {
			if svc.ID == "" {
				return fmt.Errorf("store: %s: service id is empty", op)
			}
			var ok bool
			ok, err = t.insert(ctx, `INSERT INTO services (id, org_id, app_id, name, created_at, updated_at)
				VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
				svc.ID, svc.OrgID, svc.AppID, svc.Name, t.d.ts(svc.CreatedAt), t.d.ts(svc.CreatedAt))
			if err != nil {
				return mapErr(op, err)
			}
			if !ok {
				// Another transaction created it (PostgreSQL), or the id is
				// taken by another service.
				err = t.queryRow(ctx, lockQ, svc.OrgID, svc.AppID, svc.Name).Scan(&serviceID, &latest, scanTime{&created})
				if errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("store: %s: service id %q: %w", op, svc.ID, ErrConflict)
				}
			} else {
				serviceID, latest, created = svc.ID, 0, normTime(svc.CreatedAt)
			}
		}
		if err != nil {
			return mapErr(op, err)
		}

		version := latest + 1
		active := dep.Status == api.StatusPending || dep.Status == api.StatusProgressing
		ok, err := t.insert(ctx, `INSERT INTO deployments (id, org_id, service_id, version, status, message, definition, created_at, updated_at, active)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			dep.ID, svc.OrgID, serviceID, version, dep.Status, dep.Message, string(def), t.d.ts(dep.CreatedAt), t.d.ts(updatedOr(dep.UpdatedAt, dep.CreatedAt)), active)
		if err != nil {
			return mapErr(op, err)
		}
		if !ok {
			return fmt.Errorf("store: %s: deployment id %q: %w", op, dep.ID, ErrConflict)
		}
		regional := make([]api.RegionalDeployment, len(dep.Regional))
		for i, rd := range dep.Regional {
			rd.DeploymentID = dep.ID
			rd.UpdatedAt = normTime(updatedOr(rd.UpdatedAt, dep.CreatedAt))
			if rd.StartedAt != nil {
				at := normTime(*rd.StartedAt)
				rd.StartedAt = &at
			}
			ok, err := t.insert(ctx, `INSERT INTO regional_deployments (id, deployment_id, region, generation, status, message, definition, updated_at, started_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
				rd.ID, rd.DeploymentID, rd.Region, rd.Generation, rd.Status, rd.Message, regDefs[i], t.d.ts(rd.UpdatedAt), t.d.tsOrNull(rd.StartedAt))
			if err != nil {
				return mapErr(op, err)
			}
			if !ok {
				return fmt.Errorf("store: %s: regional deployment id %q: %w", op, rd.ID, ErrConflict)
			}
			// Read back what was stored, as GetDeployment would.
			if err := json.Unmarshal([]byte(regDefs[i]), &rd.Definition); err != nil {
				return fmt.Errorf("store: %s: %w", op, err)
			}
			regional[i] = rd
		}
		if _, err := t.exec(ctx, `UPDATE services SET latest_deployment_id = ?, latest_version = ?, updated_at = ? WHERE id = ?`,
			dep.ID, version, t.d.ts(dep.CreatedAt), serviceID); err != nil {
			return mapErr(op, err)
		}
		slices.SortFunc(regional, func(a, b api.RegionalDeployment) int { return strings.Compare(a.Region, b.Region) })

		out = api.Deployment{
			ID:        dep.ID,
			OrgID:     svc.OrgID,
			AppID:     svc.AppID,
			App:       appName,
			ServiceID: serviceID,
			Service:   svc.Name,
			Version:   version,
			Status:    dep.Status,
			Message:   dep.Message,
			Regional:  regional,
			CreatedAt: normTime(dep.CreatedAt),
			UpdatedAt: normTime(updatedOr(dep.UpdatedAt, dep.CreatedAt)),
		}
		if err := json.Unmarshal(def, &out.Definition); err != nil {
			return fmt.Errorf("store: %s: %w", op, err)
		}
		return nil
	})
	if err != nil {
		return api.Deployment{}, err
	}
	return out, nil
}

func updatedOr(updated, created time.Time) time.Time {
	if updated.IsZero() {
		return created
	}
	return updated
}

// savepoint runs fn under a savepoint, rolled back when fn fails.
func (t *sqlTx) savepoint(ctx context.Context, fn func() error) error {
	if _, err := t.exec(ctx, `SAVEPOINT meridian_sp`); err != nil {
		return mapErr("savepoint", err)
	}
	if err := fn(); err != nil {
		// Rolling back to the savepoint also clears an aborted PostgreSQL
		// transaction; the error still goes to the caller (and to Update's
		// retry test).
		if _, rerr := t.exec(context.WithoutCancel(ctx), `ROLLBACK TO SAVEPOINT meridian_sp`); rerr != nil {
			return errors.Join(err, mapErr("rollback to savepoint", rerr))
		}
		if _, rerr := t.exec(context.WithoutCancel(ctx), `RELEASE SAVEPOINT meridian_sp`); rerr != nil {
			return errors.Join(err, mapErr("release savepoint", rerr))
		}
		return err
	}
	if _, err := t.exec(ctx, `RELEASE SAVEPOINT meridian_sp`); err != nil {
		return mapErr("release savepoint", err)
	}
	return nil
}

const serviceCols = `s.id, s.org_id, s.app_id, a.name, s.name, s.latest_deployment_id, s.latest_version, COALESCE(d.status, ''), s.created_at, s.updated_at`

const serviceFrom = ` FROM services s JOIN apps a ON a.id = s.app_id LEFT JOIN deployments d ON d.id = s.latest_deployment_id`

func scanService(sc interface{ Scan(...any) error }, extra ...any) (api.Service, error) {
	var s api.Service
	dst := []any{&s.ID, &s.OrgID, &s.AppID, &s.App, &s.Name, &s.LatestDeployment, &s.LatestVersion, &s.Status,
		scanTime{&s.CreatedAt}, scanTime{&s.UpdatedAt}}
	err := sc.Scan(append(dst, extra...)...)
	return s, err
}

// GetService implements Tx. The service carries its latest deployment's
// status and definition.
func (t *sqlTx) GetService(ctx context.Context, orgID, appID, name string) (api.Service, error) {
	op := fmt.Sprintf("get service %q", name)
	var def []byte
	s, err := scanService(t.queryRow(ctx, `SELECT `+serviceCols+`, d.definition`+serviceFrom+
		` WHERE s.org_id = ? AND s.app_id = ? AND s.name = ?`+t.forUpdate("s"), orgID, appID, name), &def)
	if err != nil {
		return api.Service{}, mapErr(op, err)
	}
	if def != nil {
		s.Definition = new(api.Definition)
		if err := json.Unmarshal(def, s.Definition); err != nil {
			return api.Service{}, fmt.Errorf("store: %s: definition: %w", op, err)
		}
	}
	return s, nil
}

// ListServices implements Tx, ordered by name. Services carry their latest
// deployment's status but not its definition.
func (t *sqlTx) ListServices(ctx context.Context, orgID, appID string, p Page) ([]api.Service, string, error) {
	return listByText(ctx, t, "services", `SELECT `+serviceCols+serviceFrom, "s.org_id = ? AND s.app_id = ?", []any{orgID, appID}, "s.name", p,
		func(sc interface{ Scan(...any) error }) (api.Service, error) { return scanService(sc) },
		func(s api.Service) string { return s.Name })
}

// DeleteService implements Tx. Its deployments and their regional
// deployments go with it.
func (t *sqlTx) DeleteService(ctx context.Context, orgID, appID, name string) error {
	return t.affected(ctx, fmt.Sprintf("delete service %q", name),
		`DELETE FROM services WHERE org_id = ? AND app_id = ? AND name = ?`, orgID, appID, name)
}

const deploymentCols = `d.id, d.org_id, s.app_id, a.name, d.service_id, s.name, d.version, d.status, d.message, d.definition, d.created_at, d.updated_at`

const deploymentFrom = ` FROM deployments d JOIN services s ON s.id = d.service_id JOIN apps a ON a.id = s.app_id`

func scanDeployment(sc interface{ Scan(...any) error }) (api.Deployment, error) {
	var d api.Deployment
	var def []byte
	if err := sc.Scan(&d.ID, &d.OrgID, &d.AppID, &d.App, &d.ServiceID, &d.Service, &d.Version, &d.Status, &d.Message, &def,
		scanTime{&d.CreatedAt}, scanTime{&d.UpdatedAt}); err != nil {
		return d, err
	}
	if err := json.Unmarshal(def, &d.Definition); err != nil {
		return d, fmt.Errorf("deployment %q: definition: %w", d.ID, err)
	}
	d.Regional = []api.RegionalDeployment{}
	return d, nil
}

func scanRegional(sc interface{ Scan(...any) error }) (api.RegionalDeployment, error) {
	var r api.RegionalDeployment
	var def []byte
	var started time.Time
	if err := sc.Scan(&r.ID, &r.DeploymentID, &r.Region, &r.Generation, &r.Status, &r.Message, &def, scanTime{&r.UpdatedAt}, scanTime{&started}); err != nil {
		return r, err
	}
	if !started.IsZero() {
		r.StartedAt = &started
	}
	if err := json.Unmarshal(def, &r.Definition); err != nil {
		return r, fmt.Errorf("regional deployment %q: definition: %w", r.ID, err)
	}
	return r, nil
}

// regionals fills in the regional deployments of deps, sorted by region.
func (t *sqlTx) regionals(ctx context.Context, deps []api.Deployment) error {
	if len(deps) == 0 {
		return nil
	}
	idx := make(map[string]int, len(deps))
	args := make([]any, len(deps))
	for i, d := range deps {
		idx[d.ID] = i
		args[i] = d.ID
	}
	q := `SELECT id, deployment_id, region, generation, status, message, definition, updated_at, started_at FROM regional_deployments
		WHERE deployment_id IN (?` + strings.Repeat(", ?", len(deps)-1) + `) ORDER BY deployment_id, region`
	rs, err := collect(ctx, t, q, args, scanRegional)
	if err != nil {
		return err
	}
	for _, r := range rs {
		i := idx[r.DeploymentID]
		deps[i].Regional = append(deps[i].Regional, r)
	}
	return nil
}

// GetDeployment implements Tx. Regional deployments are sorted by region.
func (t *sqlTx) GetDeployment(ctx context.Context, orgID, id string) (api.Deployment, error) {
	op := fmt.Sprintf("get deployment %q", id)
	d, err := scanDeployment(t.queryRow(ctx, `SELECT `+deploymentCols+deploymentFrom+` WHERE d.org_id = ? AND d.id = ?`+t.forUpdate("d"), orgID, id))
	if err != nil {
		return api.Deployment{}, mapErr(op, err)
	}
	deps := []api.Deployment{d}
	if err := t.regionals(ctx, deps); err != nil {
		return api.Deployment{}, mapErr(op, err)
	}
	return deps[0], nil
}

// ListDeployments implements Tx, newest version first, each with its
// definition and regional deployments.
func (t *sqlTx) ListDeployments(ctx context.Context, orgID, serviceID string, p Page) ([]api.Deployment, string, error) {
	const list = "deployments"
	c, after, err := parseCursor(list, p.Token)
	if err != nil {
		return nil, "", err
	}
	q, args := `SELECT `+deploymentCols+deploymentFrom+` WHERE d.org_id = ? AND d.service_id = ?`, []any{orgID, serviceID}
	if after {
		q += ` AND d.version < ?`
		args = append(args, c.N)
	}
	q += ` ORDER BY d.version DESC LIMIT ?`
	items, err := collect(ctx, t, q, append(args, p.limit()+1), scanDeployment)
	if err != nil {
		return nil, "", mapErr("list deployments", err)
	}
	items, last, more := trim(items, p.limit())
	if err := t.regionals(ctx, items); err != nil {
		return nil, "", mapErr("list deployments", err)
	}
	if !more {
		return items, "", nil
	}
	return items, cursor{List: list, N: int64(last.Version)}.token(), nil
}

// UpdateDeploymentStatus implements Tx. It is not scoped by org: rollout
// workers call it.
func (t *sqlTx) UpdateDeploymentStatus(ctx context.Context, id, status, message string, at time.Time) error {
	op := fmt.Sprintf("update deployment %q status", id)
	if err := need(op, "status", status); err != nil {
		return err
	}
	return t.affected(ctx, op, `UPDATE deployments SET status = ?, message = ?, updated_at = ? WHERE id = ?`,
		status, message, t.d.ts(at), id)
}

// UpdateRegionalDeployment implements Tx: it sets the generation, status,
// message, definition, start and update times of the regional deployment
// with rd.ID (or, when rd.ID is empty, of rd.DeploymentID in rd.Region).
func (t *sqlTx) UpdateRegionalDeployment(ctx context.Context, rd api.RegionalDeployment) error {
	op := fmt.Sprintf("update regional deployment %q", rd.ID)
	def, err := json.Marshal(rd.Definition)
	if err != nil {
		return fmt.Errorf("store: %s: definition: %w", op, err)
	}
	q := `UPDATE regional_deployments SET generation = ?, status = ?, message = ?, definition = ?, updated_at = ?, started_at = ? WHERE `
	args := []any{rd.Generation, rd.Status, rd.Message, string(def), t.d.ts(rd.UpdatedAt), t.d.tsOrNull(rd.StartedAt)}
	if rd.ID != "" {
		q += `id = ?`
		args = append(args, rd.ID)
	} else {
		op = fmt.Sprintf("update regional deployment of %q in %q", rd.DeploymentID, rd.Region)
		if err := need(op, "id (or deployment id)", rd.DeploymentID, "id (or region)", rd.Region); err != nil {
			return err
		}
		q += `deployment_id = ? AND region = ?`
		args = append(args, rd.DeploymentID, rd.Region)
	}
	return t.affected(ctx, op, q, args...)
}

// Regions.

// CreateRegion implements Tx. The id is unique.
func (t *sqlTx) CreateRegion(ctx context.Context, r api.Region) error {
	op := fmt.Sprintf("create region %q", r.ID)
	if err := need(op, "id", r.ID); err != nil {
		return err
	}
	ok, err := t.insert(ctx, `INSERT INTO regions (id, name, latitude, longitude, url, status, message, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		r.ID, r.Name, r.Latitude, r.Longitude, r.URL, r.Status, r.Message, t.d.ts(r.CreatedAt), t.d.ts(updatedOr(r.UpdatedAt, r.CreatedAt)))
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return fmt.Errorf("store: %s: %w", op, ErrConflict)
	}
	return nil
}

const regionCols = `id, name, latitude, longitude, url, status, message, created_at, updated_at`

func scanRegion(sc interface{ Scan(...any) error }) (api.Region, error) {
	var r api.Region
	err := sc.Scan(&r.ID, &r.Name, &r.Latitude, &r.Longitude, &r.URL, &r.Status, &r.Message, scanTime{&r.CreatedAt}, scanTime{&r.UpdatedAt})
	return r, err
}

// GetRegion implements Tx.
func (t *sqlTx) GetRegion(ctx context.Context, id string) (api.Region, error) {
	r, err := scanRegion(t.queryRow(ctx, `SELECT `+regionCols+` FROM regions WHERE id = ?`+t.forUpdate(""), id))
	return r, mapErr(fmt.Sprintf("get region %q", id), err)
}

// ListRegions implements Tx, ordered by id.
func (t *sqlTx) ListRegions(ctx context.Context, p Page) ([]api.Region, string, error) {
	return listByText(ctx, t, "regions", `SELECT `+regionCols+` FROM regions`, "", nil, "id", p, scanRegion,
		func(r api.Region) string { return r.ID })
}

// UpdateRegion implements Tx: it sets everything but the id and the
// creation time.
func (t *sqlTx) UpdateRegion(ctx context.Context, r api.Region) error {
	return t.affected(ctx, fmt.Sprintf("update region %q", r.ID),
		`UPDATE regions SET name = ?, latitude = ?, longitude = ?, url = ?, status = ?, message = ?, updated_at = ? WHERE id = ?`,
		r.Name, r.Latitude, r.Longitude, r.URL, r.Status, r.Message, t.d.ts(r.UpdatedAt), r.ID)
}

// Idempotency records.

// idempotencyLockClass is the first key of the PostgreSQL advisory locks on
// idempotency keys ("IDEM").
const idempotencyLockClass = 0x4944454d

// GetIdempotency implements Tx. In a PostgreSQL write transaction it first
// takes a transaction advisory lock on (orgID, key), so two requests with
// one key run one after the other and the second finds the first's record,
// as in SQLite, instead of both missing it.
func (t *sqlTx) GetIdempotency(ctx context.Context, orgID, key string) (Idempotency, error) {
	op := fmt.Sprintf("get idempotency key %q", key)
	if t.lock {
		if _, err := t.exec(ctx, `SELECT pg_advisory_xact_lock(?, hashtext(? || '/' || ?))`, idempotencyLockClass, orgID, key); err != nil {
			return Idempotency{}, mapErr(op, err)
		}
	}
	var rec Idempotency
	err := t.queryRow(ctx, `SELECT org_id, idem_key, request_hash, status, body, created_at FROM idempotency WHERE org_id = ? AND idem_key = ?`, orgID, key).
		Scan(&rec.OrgID, &rec.Key, &rec.RequestHash, &rec.Status, &rec.Body, scanTime{&rec.CreatedAt})
	return rec, mapErr(op, err)
}

// PutIdempotency implements Tx.
func (t *sqlTx) PutIdempotency(ctx context.Context, rec Idempotency) error {
	op := fmt.Sprintf("put idempotency key %q", rec.Key)
	if err := need(op, "key", rec.Key); err != nil {
		return err
	}
	ok, err := t.insert(ctx, `INSERT INTO idempotency (org_id, idem_key, request_hash, status, body, created_at)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		rec.OrgID, rec.Key, bytesOrEmpty(rec.RequestHash), rec.Status, bytesOrEmpty(rec.Body), t.d.ts(rec.CreatedAt))
	if err != nil {
		return mapErr(op, err)
	}
	if !ok {
		return fmt.Errorf("store: %s: %w", op, ErrConflict)
	}
	return nil
}

// DeleteIdempotency implements Tx.
func (t *sqlTx) DeleteIdempotency(ctx context.Context, orgID, key string) error {
	return t.affected(ctx, fmt.Sprintf("delete idempotency key %q", key),
		`DELETE FROM idempotency WHERE org_id = ? AND idem_key = ?`, orgID, key)
}

// DeleteIdempotencyBefore implements Tx. One statement deletes the batch:
// the rows are found through the index on created_at and deleted by their
// physical row id (ctid in PostgreSQL, rowid in SQLite), so a large table
// is never scanned.
func (t *sqlTx) DeleteIdempotencyBefore(ctx context.Context, before time.Time, limit int) (int, error) {
	op := "delete idempotency records before " + before.UTC().Format(time.RFC3339Nano)
	if limit <= 0 {
		return 0, fmt.Errorf("store: %s: limit %d: want at least 1", op, limit)
	}
	q := `DELETE FROM idempotency WHERE rowid IN (
		SELECT rowid FROM idempotency WHERE created_at < ? ORDER BY created_at LIMIT ?)`
	if t.d.postgres {
		q = `DELETE FROM idempotency WHERE ctid = ANY (ARRAY (
			SELECT ctid FROM idempotency WHERE created_at < ? ORDER BY created_at LIMIT ? FOR UPDATE SKIP LOCKED))`
	}
	res, err := t.exec(ctx, q, t.d.ts(before), limit)
	if err != nil {
		return 0, mapErr(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, mapErr(op, err)
	}
	return int(n), nil
}
