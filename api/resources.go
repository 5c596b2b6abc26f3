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
	CreatedAt        time.Time   `json:"created_at"`
	UpdatedAt        time.Time   `json:"updated_at"`
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
	CreatedAt  time.Time            `json:"created_at"`
	UpdatedAt  time.Time            `json:"updated_at"`
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

// RegionalDeployment is a deployment's part in one region.
type RegionalDeployment struct {
	ID           string             `json:"id"`
	DeploymentID string             `json:"deployment_id"`
	Region       string             `json:"region"`
	Generation   int64              `json:"generation"`
	Status       string             `json:"status"`
	Message      string             `json:"message,omitempty"`
	Definition   RegionalDefinition `json:"definition"`
	UpdatedAt    time.Time          `json:"updated_at"`
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
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Latitude  float64   `json:"latitude"`
	Longitude float64   `json:"longitude"`
	URL       string    `json:"url"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
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
