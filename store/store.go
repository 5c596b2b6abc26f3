// Package store is the global control plane's durable state: organizations,
// API tokens, edge tokens, apps, services, deployments, secrets, the region registry and
// idempotency records. One interface has two implementations over
// database/sql: SQLite (modernc.org/sqlite, the embedded default) and
// PostgreSQL (pgx), sharing versioned migrations and one contract test suite.
// Rollout state lives here too: per-region generation counters, the region
// operations written before they are sent, deployment events and leases.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/meridian-run/meridian/api"
)

// Errors returned by the store. Callers test them with errors.Is; the
// store wraps them with what was looked for. Another organization's
// resources are ErrNotFound, never ErrConflict or a distinct error.
var (
	// ErrNotFound: the row (or the parent it needs, such as the org of a
	// new app) does not exist in the caller's organization.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique key is taken, or a deletion is refused.
	ErrConflict = errors.New("already exists")
)

// Store is the global store. Update runs fn in one read-write transaction
// and commits it when fn returns nil (retrying serialization failures);
// View runs fn in a read-only transaction.
//
// Open, OpenSQLite and OpenPostgres make one. A transaction that loses a
// race (PostgreSQL serialization failure or deadlock, busy SQLite file) is
// rolled back and fn runs again, a bounded number of times, so fn must have
// no effect outside its Tx, and must not call Update itself. In SQLite
// write transactions run one at a time; in PostgreSQL Update runs at READ
// COMMITTED and the Get methods of modifiable rows (services, deployments,
// secrets, regions) lock the row they return until commit, so a
// read-modify-write of one row is safe in both. View reads one consistent
// snapshot.
type Store interface {
	Update(ctx context.Context, fn func(Tx) error) error
	View(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Page asks for one page of a list: at most Limit items after the cursor
// Token (as returned in a previous page's next token; "" for the first).
type Page struct {
	Limit int
	Token string
}

// TokenRecord is a stored API token: its hash, never its value.
type TokenRecord struct {
	api.Token
	Hash []byte
}

// EdgeTokenRecord is a stored edge token: its hash, never its value.
type EdgeTokenRecord struct {
	api.EdgeToken
	Hash []byte
}

// Bearer is whom a bearer token's hash belongs to: an organization's API
// token, or an edge token (installation-wide, read-only).
type Bearer struct {
	// Edge is true for an edge token; OrgID is then empty.
	Edge bool
	// TokenID is the id of the API token or edge token.
	TokenID string
	// OrgID is the organization of an API token.
	OrgID string
}

// SecretRecord is a stored secret: its sealed value, never its plaintext.
type SecretRecord struct {
	api.Secret
	Sealed []byte
}

// Idempotency is a stored answer to a creating request with an
// Idempotency-Key, replayed when the same key comes again. Records expire:
// the global plane treats a record older than its TTL as absent and
// deletes expired ones (DeleteIdempotencyBefore); CreatedAt is indexed.
type Idempotency struct {
	OrgID       string
	Key         string
	RequestHash []byte
	Status      int
	Body        []byte
	CreatedAt   time.Time
}

// NewDeployment is what CreateDeployment writes in one transaction: the
// service (created when it does not exist), a deployment numbered one past
// the service's latest, and one regional deployment per region.
type NewDeployment struct {
	Service    api.Service    // OrgID, AppID, Name; ID and CreatedAt used only when new
	Deployment api.Deployment // ID, Definition, Status, CreatedAt; Version is assigned
}

// Tx is one transaction. Lists return items in a stable order and the
// cursor of the next page ("" on the last page): orgs, apps, services and
// secrets by name; tokens by creation time, then id; edge tokens by name;
// regions by id;
// deployments newest version first. Text sorts bytewise. A token that is
// not the list's own fails with ErrBadPageToken. A Tx is used by the
// goroutine running fn only, and not after fn returns.
type Tx interface {
	CreateOrg(ctx context.Context, o api.Organization) error
	GetOrg(ctx context.Context, id string) (api.Organization, error)
	GetOrgByName(ctx context.Context, name string) (api.Organization, error)
	ListOrgs(ctx context.Context, p Page) ([]api.Organization, string, error)

	CreateToken(ctx context.Context, t TokenRecord) error
	TokenByHash(ctx context.Context, hash []byte) (api.Token, error)
	ListTokens(ctx context.Context, orgID string, p Page) ([]api.Token, string, error)
	DeleteToken(ctx context.Context, orgID, id string) error
	// BearerByHash finds the API token or edge token whose hash is hash,
	// in one read: it is how a request's caller is found. ErrNotFound when
	// neither has it.
	BearerByHash(ctx context.Context, hash []byte) (Bearer, error)

	// Edge tokens are not scoped by organization. The id, the name and
	// the hash are unique (ErrConflict).
	CreateEdgeToken(ctx context.Context, t EdgeTokenRecord) error
	ListEdgeTokens(ctx context.Context, p Page) ([]api.EdgeToken, string, error)
	DeleteEdgeToken(ctx context.Context, id string) error

	CreateApp(ctx context.Context, a api.App) error
	GetApp(ctx context.Context, orgID, name string) (api.App, error)
	ListApps(ctx context.Context, orgID string, p Page) ([]api.App, string, error)
	// DeleteApp fails with ErrConflict while the app has services.
	DeleteApp(ctx context.Context, orgID, name string) error

	// PutSecret creates or replaces a secret; created reports which.
	PutSecret(ctx context.Context, s SecretRecord) (created bool, err error)
	GetSecret(ctx context.Context, orgID, name string) (SecretRecord, error)
	ListSecrets(ctx context.Context, orgID string, p Page) ([]api.Secret, string, error)
	DeleteSecret(ctx context.Context, orgID, name string) error

	// CreateDeployment writes d and returns the deployment as stored, with
	// its version and its service's id filled in.
	CreateDeployment(ctx context.Context, d NewDeployment) (api.Deployment, error)
	GetService(ctx context.Context, orgID, appID, name string) (api.Service, error)
	ListServices(ctx context.Context, orgID, appID string, p Page) ([]api.Service, string, error)
	DeleteService(ctx context.Context, orgID, appID, name string) error
	GetDeployment(ctx context.Context, orgID, id string) (api.Deployment, error)
	// ListDeployments lists a service's deployments, newest first.
	ListDeployments(ctx context.Context, orgID, serviceID string, p Page) ([]api.Deployment, string, error)
	UpdateDeploymentStatus(ctx context.Context, id, status, message string, at time.Time) error
	UpdateRegionalDeployment(ctx context.Context, rd api.RegionalDeployment) error

	// Rollouts. A deployment is created active when its status is PENDING
	// or PROGRESSING: rollout workers drive it until SetDeploymentState
	// clears active. These methods are not scoped by organization except
	// where they take an orgID.
	SetDeploymentState(ctx context.Context, id, status, message string, active bool, at time.Time) error
	// ListActiveDeployments lists the active deployments (of one service,
	// or of all when serviceID is ""), oldest first.
	ListActiveDeployments(ctx context.Context, serviceID string) ([]ActiveDeployment, error)
	// LatestHealthyDeployment is the newest deployment of the service with
	// a version below beforeVersion whose regional deployment in region is
	// HEALTHY; ErrNotFound when there is none.
	LatestHealthyDeployment(ctx context.Context, orgID, serviceID, region string, beforeVersion int) (api.Deployment, error)
	// AddDeploymentEvent appends to a deployment's timeline; events go with
	// their deployment.
	AddDeploymentEvent(ctx context.Context, deploymentID string, ev api.DeploymentEvent) error
	ListDeploymentEvents(ctx context.Context, deploymentID string) ([]api.DeploymentEvent, error)

	// AllocateGeneration increments and returns the generation of a
	// service key in a region (1 for the first). Counters outlive the
	// service, so a service deleted and created again never reuses one.
	AllocateGeneration(ctx context.Context, serviceKey, region string, deleted bool, at time.Time) (int64, error)
	// ServiceRegions lists the regions a service key ever had a generation
	// in, by region.
	ServiceRegions(ctx context.Context, serviceKey string) ([]ServiceRegion, error)
	// CreateRegionOp records an operation; pending operations of the same
	// service key and region with a lower generation become superseded.
	// A taken (service key, region, generation) or id is ErrConflict.
	CreateRegionOp(ctx context.Context, op RegionOp) error
	GetRegionOp(ctx context.Context, id string) (RegionOp, error)
	UpdateRegionOp(ctx context.Context, op RegionOp) error
	// ListRegionOps lists operations matching f, oldest first.
	ListRegionOps(ctx context.Context, f OpFilter) ([]RegionOp, error)

	// AcquireLease takes or renews the named lease for owner until now+ttl
	// and reports whether owner holds it: it fails (false, nil) while
	// another owner's lease has not expired.
	AcquireLease(ctx context.Context, name, owner string, now time.Time, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, name, owner string) error
	// LeaseOwner is the holder of an unexpired lease at now, or "".
	LeaseOwner(ctx context.Context, name string, now time.Time) (string, error)

	CreateRegion(ctx context.Context, r api.Region) error
	GetRegion(ctx context.Context, id string) (api.Region, error)
	ListRegions(ctx context.Context, p Page) ([]api.Region, string, error)
	UpdateRegion(ctx context.Context, r api.Region) error

	GetIdempotency(ctx context.Context, orgID, key string) (Idempotency, error)
	// PutIdempotency fails with ErrConflict when the key is taken.
	PutIdempotency(ctx context.Context, rec Idempotency) error
	// DeleteIdempotency deletes the record of one key (ErrNotFound when
	// there is none), so that an expired key can be put again in the same
	// transaction.
	DeleteIdempotency(ctx context.Context, orgID, key string) error
	// DeleteIdempotencyBefore deletes at most limit (> 0) records created
	// before before, of every organization, oldest first, and returns how
	// many it deleted. In PostgreSQL it skips the rows another transaction
	// holds (FOR UPDATE SKIP LOCKED), so concurrent callers, such as the
	// janitors of two replicas, never wait for each other or for a request
	// replacing an expired record; the rows skipped are left for the next
	// call. Deleting what is already gone is not an error.
	DeleteIdempotencyBefore(ctx context.Context, before time.Time, limit int) (int, error)
}
