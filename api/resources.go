package api

import "time"

// Organization owns apps, secrets and API tokens. One organization never
// sees another's resources.
type Organization struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// Token is an API bearer token scoped to one organization. Value is set only
// in the answer that creates it; the store keeps a hash.
type Token struct {
	ID        string    `json:"id"`
	OrgID     string    `json:"org_id"`
	Name      string    `json:"name"`
	Value     string    `json:"token,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// EdgeToken is an installation-wide, read-only bearer token for the edges:
// it may read the region registry (GET /v1/regions and GET
// /v1/regions/{id}) and nothing else, so an internet-facing edge never
// holds the admin token. The admin token creates and revokes edge tokens.
// Value is set only in the answer that creates it; the store keeps a hash.
type EdgeToken struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Value     string    `json:"token,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// App groups services under one public host name.
type App struct {
	ID        string    `json:"id"`
	OrgID     string    `json:"org_id"`
	Name      string    `json:"name"`
	Host      string    `json:"host"`
	CreatedAt time.Time `json:"created_at"`
}

// Service is a named workload of an app. Each change of its definition makes
// a new immutable, numbered Deployment.
type Service struct {
	ID               string      `json:"id"`
	OrgID            string      `json:"org_id"`
	AppID            string      `json:"app_id"`
	App              string      `json:"app"`
	Name             string      `json:"name"`
	LatestDeployment string      `json:"latest_deployment_id"`
	LatestVersion    int         `json:"latest_version"`
	Status           string      `json:"status"`
	Definition       *Definition `json:"definition,omitempty"`
	// Image and ImageDigest are the latest deployment's image as written
	// and the digest it was resolved to at deploy (see
	// RegionalDefinition.ImageDigest); only GET
	// /v1/apps/{app}/services/{service} fills them in.
	Image       string    `json:"image,omitempty"`
	ImageDigest string    `json:"image_digest,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Deployment is one immutable version of a service's definition, rolled out
// as one RegionalDeployment per region.
type Deployment struct {
	ID         string               `json:"id"`
	OrgID      string               `json:"org_id"`
	AppID      string               `json:"app_id"`
	App        string               `json:"app"`
	ServiceID  string               `json:"service_id"`
	Service    string               `json:"service"`
	Version    int                  `json:"version"`
	Status     string               `json:"status"`
	Message    string               `json:"message,omitempty"`
	Definition Definition           `json:"definition"`
	Regional   []RegionalDeployment `json:"regional_deployments"`
	// Image is the image as the definition wrote it (a tag or a digest)
	// and ImageDigest the digest the global control plane resolved it to
	// at deploy, which every region runs; both empty for a command-only
	// definition.
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	// Events is the rollout's timeline, oldest first; only GET
	// /v1/deployments/{id} fills it in.
	Events    []DeploymentEvent `json:"events,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// Deployment statuses. A deployment's status is computed from its regional
// deployments.
const (
	StatusPending     = "PENDING"
	StatusProgressing = "PROGRESSING"
	StatusHealthy     = "HEALTHY"
	StatusDegraded    = "DEGRADED"
	StatusError       = "ERROR"
	StatusCanceled    = "CANCELED"
	StatusSuperseded  = "SUPERSEDED"
)

// Regional deployment statuses (besides PENDING, PROGRESSING, HEALTHY and
// CANCELED above). PENDING: waiting for its turn under the strategy;
// APPLYING: its generation is allocated and being sent to the region;
// PROGRESSING: the region accepted it and is replacing instances; HEALTHY:
// the wanted count of the new version passes its health checks; FAILED: it
// did not (the region was reverted to its previous deployment); ROLLED_BACK:
// it was reverted because another region failed under rollback_all;
// CANCELED: canceled, superseded, or never rolled out.
const (
	StatusApplying   = "APPLYING"
	StatusFailed     = "FAILED"
	StatusRolledBack = "ROLLED_BACK"
)

// DeploymentEvent is one entry of a deployment's rollout timeline.
type DeploymentEvent struct {
	At      time.Time `json:"at"`
	Region  string    `json:"region,omitempty"`
	Type    string    `json:"type"`
	Message string    `json:"message"`
}

// Deployment event types.
const (
	EventCreated    = "created"      // the deployment was stored
	EventApplying   = "applying"     // a generation was allocated for a region
	EventApplied    = "applied"      // the region accepted the generation
	EventRegionErr  = "region_error" // a call to the region failed; it is retried
	EventProgress   = "progress"     // the region reported progress
	EventHealthy    = "healthy"      // the region is healthy on the new version
	EventFailed     = "failed"       // the region failed its checks or deadline
	EventReverting  = "reverting"    // the region is being reverted
	EventReverted   = "reverted"     // the region runs its previous deployment again
	EventCanceled   = "canceled"     // the deployment or a region was canceled
	EventSuperseded = "superseded"   // a newer deployment of the service took over
	EventRemoved    = "removed"      // a region dropped from the definition is being emptied
	EventFinished   = "finished"     // the rollout ended with the deployment's status
)

// RegionalDeployment is a deployment's part in one region.
type RegionalDeployment struct {
	ID           string             `json:"id"`
	DeploymentID string             `json:"deployment_id"`
	Region       string             `json:"region"`
	Generation   int64              `json:"generation"`
	Status       string             `json:"status"`
	Message      string             `json:"message,omitempty"`
	Definition   RegionalDefinition `json:"definition"`
	// StartedAt is when the region accepted this deployment; its health
	// deadline runs from then.
	StartedAt *time.Time `json:"started_at,omitempty"`
	UpdatedAt time.Time  `json:"updated_at"`
}

// Secret is a named, write-only value of an organization, encrypted at rest.
// Env entries refer to it by name. Its value is never returned.
type Secret struct {
	ID        string    `json:"id"`
	OrgID     string    `json:"org_id"`
	Name      string    `json:"name"`
	Value     string    `json:"value,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Region is an entry of the region registry.
type Region struct {
	ID        string  `json:"id"`
	Name      string  `json:"name"`
	Latitude  float64 `json:"latitude"`
	Longitude float64 `json:"longitude"`
	URL       string  `json:"url"`
	Status    string  `json:"status"`
	// Message says why the region is in its status, e.g. why its smoke
	// test failed.
	Message   string    `json:"message,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// RegionDrain answers POST /v1/regions/{id}/drain: the region, now
// draining, and what that will and will not do.
type RegionDrain struct {
	Region  Region `json:"region"`
	Message string `json:"message"`
	// Services lists what runs in the region (every organization's), as the
	// region reports it; empty when it did not answer (see Unreachable).
	Services []RegionService `json:"services"`
	// Unreachable holds the error when the region did not answer.
	Unreachable string `json:"unreachable,omitempty"`
}

// RegionService is one service running in a region.
type RegionService struct {
	Org       string `json:"org"`
	App       string `json:"app"`
	Service   string `json:"service"`
	Version   int    `json:"version"`
	Wanted    int    `json:"wanted"`
	Instances int    `json:"instances"`
}

// Instance is one instance of a service in a region, as the region reports
// it.
type Instance struct {
	ID           string `json:"id"`
	App          string `json:"app"`
	Service      string `json:"service"`
	Region       string `json:"region"`
	Datacenter   string `json:"datacenter"`
	Machine      string `json:"machine"`
	State        string `json:"state"`
	Health       string `json:"health"`
	Version      int    `json:"version"`
	DeploymentID string `json:"deployment_id"`
	Restarts     int    `json:"restarts"`
	Message      string `json:"message,omitempty"`
	// Address is where the instance's ports are reachable, with Ports
	// mapping each declared port to its host port.
	Address   string         `json:"address,omitempty"`
	Ports     map[string]int `json:"ports,omitempty"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// Instance health values.
const (
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
	HealthUnknown   = "unknown"
)

// InstanceList answers the instance lists, which ask every region
// concurrently: the regions that did not answer in time are listed in
// Unreachable instead of failing the call.
type InstanceList struct {
	Items       []Instance          `json:"items"`
	Unreachable []UnreachableRegion `json:"unreachable,omitempty"`
}

// UnreachableRegion is a region that did not answer, and why.
type UnreachableRegion struct {
	Region  string `json:"region"`
	Message string `json:"message"`
}

// Region statuses.
const (
	RegionProvisioning = "provisioning"
	RegionTesting      = "testing"
	RegionOpen         = "open"
	RegionDraining     = "draining"
)

// List is one page of a paginated list. NextPageToken is empty on the last
// page; pass it as page_token to get the next.
type List[T any] struct {
	Items         []T    `json:"items"`
	NextPageToken string `json:"next_page_token,omitempty"`
}

// Error is the body of every error answer of the API.
type Error struct {
	Status  int          `json:"-"`
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Fields  []FieldError `json:"fields,omitempty"`
}

// FieldError names one invalid field by its path, as in
// "scalings[1].scopes[0]".
type FieldError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// String renders the error as "path: message".
func (f FieldError) String() string {
	if f.Path == "" {
		return f.Message
	}
	return f.Path + ": " + f.Message
}

func (e *Error) Error() string {
	s := e.Message
	for _, f := range e.Fields {
		s += "\n" + f.String()
	}
	return s
}

// Error codes.
const (
	CodeInvalid         = "invalid_argument"
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "permission_denied"
	CodeNotFound        = "not_found"
	CodeConflict        = "conflict"
	CodeTooLarge        = "payload_too_large"
	CodeUnsupported     = "unsupported_media_type"
	CodeInternal        = "internal"
	CodeUnavailable     = "unavailable"
)
