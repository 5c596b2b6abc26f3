package global

import (
	"context"
	"net/http"
	"reflect"

	"github.com/meridian-run/meridian/api"
)

// authKind says who may call a route.
type authKind int

const (
	authNone     authKind = iota // anyone
	authAdmin                    // the installation's admin token
	authOrg                      // an organization's API token
	authRegistry                 // reading the region registry: the admin token, any organization token, or an edge token
)

// route is one API operation. The route table is the single source of the
// mux and of the OpenAPI document.
type route struct {
	Method, Path string
	ID, Summary  string
	Auth         authKind
	Request      reflect.Type // JSON body, or nil
	RequestYAML  bool         // the body may also be YAML
	Response     reflect.Type // success body
	Status       int          // success status
	Errors       []int        // documented error statuses
	Idempotent   bool         // accepts Idempotency-Key
	handler      func(http.ResponseWriter, *http.Request) error
}

func typeOf[T any]() reflect.Type { return reflect.TypeFor[T]() }

func (s *Server) routes() []route {
	const (
		bad      = http.StatusBadRequest
		unauth   = http.StatusUnauthorized
		forbid   = http.StatusForbidden
		notFound = http.StatusNotFound
		conflict = http.StatusConflict
		tooLarge = http.StatusRequestEntityTooLarge
		media    = http.StatusUnsupportedMediaType
		unproc   = http.StatusUnprocessableEntity
		unavail  = http.StatusServiceUnavailable
	)
	timeout := http.StatusRequestTimeout
	write := []int{bad, unauth, forbid, timeout, conflict, tooLarge, media, unproc}
	read := []int{bad, unauth, forbid, notFound}
	return []route{
		{Method: "GET", Path: "/v1/openapi.json", ID: "getOpenAPI", Summary: "This OpenAPI 3 document.",
			Auth: authNone, Response: nil, Status: 200, handler: s.getOpenAPI},

		{Method: "POST", Path: "/v1/organizations", ID: "createOrganization", Summary: "Create an organization (admin).",
			Auth: authAdmin, Request: typeOf[api.CreateOrgRequest](), Response: typeOf[api.Organization](), Status: 201,
			Errors: write, Idempotent: true, handler: s.createOrg},
		{Method: "GET", Path: "/v1/organizations", ID: "listOrganizations", Summary: "List organizations (admin).",
			Auth: authAdmin, Response: typeOf[api.List[api.Organization]](), Status: 200, Errors: read, handler: s.listOrgs},
		{Method: "GET", Path: "/v1/organizations/{org}", ID: "getOrganization", Summary: "Get an organization by name or id (admin).",
			Auth: authAdmin, Response: typeOf[api.Organization](), Status: 200, Errors: read, handler: s.getOrg},
		{Method: "POST", Path: "/v1/organizations/{org}/tokens", ID: "createOrganizationToken", Summary: "Create an API token for an organization (admin). The token value is returned once.",
			Auth: authAdmin, Request: typeOf[api.CreateTokenRequest](), Response: typeOf[api.Token](), Status: 201,
			Errors: append(write, notFound), Idempotent: true, handler: s.createOrgToken},

		{Method: "POST", Path: "/v1/tokens", ID: "createToken", Summary: "Create another API token of the caller's organization. The token value is returned once.",
			Auth: authOrg, Request: typeOf[api.CreateTokenRequest](), Response: typeOf[api.Token](), Status: 201,
			Errors: write, Idempotent: true, handler: s.createToken},
		{Method: "GET", Path: "/v1/tokens", ID: "listTokens", Summary: "List the organization's API tokens (without values).",
			Auth: authOrg, Response: typeOf[api.List[api.Token]](), Status: 200, Errors: read, handler: s.listTokens},
		{Method: "DELETE", Path: "/v1/tokens/{id}", ID: "deleteToken", Summary: "Revoke an API token.",
			Auth: authOrg, Status: 204, Errors: read, handler: s.deleteToken},

		{Method: "POST", Path: "/v1/edge-tokens", ID: "createEdgeToken", Summary: "Create an edge token (admin): an installation-wide, read-only token that may only read the region registry, for the edges (meridian edge --global-token-file). The token value is returned once.",
			Auth: authAdmin, Request: typeOf[api.CreateEdgeTokenRequest](), Response: typeOf[api.EdgeToken](), Status: 201,
			Errors: write, Idempotent: true, handler: s.createEdgeToken},
		{Method: "GET", Path: "/v1/edge-tokens", ID: "listEdgeTokens", Summary: "List the edge tokens by name, without values (admin).",
			Auth: authAdmin, Response: typeOf[api.List[api.EdgeToken]](), Status: 200, Errors: read, handler: s.listEdgeTokens},
		{Method: "DELETE", Path: "/v1/edge-tokens/{id}", ID: "deleteEdgeToken", Summary: "Revoke an edge token (admin): it is refused from the next request on.",
			Auth: authAdmin, Status: 204, Errors: read, handler: s.deleteEdgeToken},

		{Method: "POST", Path: "/v1/apps", ID: "createApp", Summary: "Create an app.",
			Auth: authOrg, Request: typeOf[api.CreateAppRequest](), Response: typeOf[api.App](), Status: 201,
			Errors: write, Idempotent: true, handler: s.createApp},
		{Method: "GET", Path: "/v1/apps", ID: "listApps", Summary: "List apps.",
			Auth: authOrg, Response: typeOf[api.List[api.App]](), Status: 200, Errors: read, handler: s.listApps},
		{Method: "GET", Path: "/v1/apps/{app}", ID: "getApp", Summary: "Get an app.",
			Auth: authOrg, Response: typeOf[api.App](), Status: 200, Errors: read, handler: s.getApp},
		{Method: "DELETE", Path: "/v1/apps/{app}", ID: "deleteApp", Summary: "Delete an app that has no services.",
			Auth: authOrg, Status: 204, Errors: append(read, conflict), handler: s.deleteApp},

		{Method: "POST", Path: "/v1/apps/{app}/services", ID: "deployService", Summary: "Create or update a service from a deployment definition (JSON or YAML): makes a new numbered deployment with one regional deployment per region.",
			Auth: authOrg, Request: typeOf[api.Definition](), RequestYAML: true, Response: typeOf[api.Deployment](), Status: 201,
			Errors: append(write, notFound), Idempotent: true, handler: s.deployService},
		{Method: "GET", Path: "/v1/apps/{app}/services", ID: "listServices", Summary: "List an app's services.",
			Auth: authOrg, Response: typeOf[api.List[api.Service]](), Status: 200, Errors: read, handler: s.listServices},
		{Method: "GET", Path: "/v1/apps/{app}/services/{service}", ID: "getService", Summary: "Get a service with its latest definition.",
			Auth: authOrg, Response: typeOf[api.Service](), Status: 200, Errors: read, handler: s.getService},
		{Method: "DELETE", Path: "/v1/apps/{app}/services/{service}", ID: "deleteService", Summary: "Delete a service.",
			Auth: authOrg, Status: 204, Errors: read, handler: s.deleteService},
		{Method: "GET", Path: "/v1/apps/{app}/services/{service}/deployments", ID: "listDeployments", Summary: "List a service's deployments, newest first.",
			Auth: authOrg, Response: typeOf[api.List[api.Deployment]](), Status: 200, Errors: read, handler: s.listDeployments},
		{Method: "GET", Path: "/v1/deployments/{id}", ID: "getDeployment", Summary: "Get a deployment with its regional deployments and its rollout's events.",
			Auth: authOrg, Response: typeOf[api.Deployment](), Status: 200, Errors: read, handler: s.getDeployment},
		{Method: "POST", Path: "/v1/deployments/{id}/cancel", ID: "cancelDeployment", Summary: "Cancel a running deployment: regions it reached are reverted to their previous deployment. A finished deployment answers 409.",
			Auth: authOrg, Response: typeOf[api.Deployment](), Status: 200, Errors: append(read, conflict), handler: s.cancelDeployment},
		{Method: "GET", Path: "/v1/apps/{app}/services/{service}/instances", ID: "getServiceInstances", Summary: "List a service's instances in the regions it runs in; regions that do not answer are listed in unreachable.",
			Auth: authOrg, Response: typeOf[api.InstanceList](), Status: 200, Errors: read, handler: s.serviceInstances},
		{Method: "GET", Path: "/v1/instances", ID: "getInstances", Summary: "List the organization's instances in every open or draining region, asked concurrently; regions that do not answer in time are listed in unreachable.",
			Auth: authOrg, Response: typeOf[api.InstanceList](), Status: 200, Errors: read, handler: s.listInstances},

		{Method: "PUT", Path: "/v1/secrets/{name}", ID: "putSecret", Summary: "Create or replace a secret. Its value is write-only and encrypted at rest.",
			Auth: authOrg, Request: typeOf[api.PutSecretRequest](), Response: typeOf[api.Secret](), Status: 200,
			Errors: write, handler: s.putSecret},
		{Method: "GET", Path: "/v1/secrets", ID: "listSecrets", Summary: "List secrets (names only).",
			Auth: authOrg, Response: typeOf[api.List[api.Secret]](), Status: 200, Errors: read, handler: s.listSecrets},
		{Method: "DELETE", Path: "/v1/secrets/{name}", ID: "deleteSecret", Summary: "Delete a secret.",
			Auth: authOrg, Status: 204, Errors: read, handler: s.deleteSecret},

		{Method: "POST", Path: "/v1/regions", ID: "createRegion", Summary: "Register a region (admin). It starts as provisioning.",
			Auth: authAdmin, Request: typeOf[api.CreateRegionRequest](), Response: typeOf[api.Region](), Status: 201,
			Errors: write, Idempotent: true, handler: s.createRegion},
		{Method: "GET", Path: "/v1/regions", ID: "listRegions", Summary: "List the region registry (admin token, any organization token, or an edge token).",
			Auth: authRegistry, Response: typeOf[api.List[api.Region]](), Status: 200, Errors: read, handler: s.listRegions},
		{Method: "GET", Path: "/v1/regions/{id}", ID: "getRegion", Summary: "Get a region (admin token, any organization token, or an edge token).",
			Auth: authRegistry, Response: typeOf[api.Region](), Status: 200, Errors: read, handler: s.getRegion},
		{Method: "PATCH", Path: "/v1/regions/{id}", ID: "updateRegion", Summary: "Update a region's name, location, URL or status (admin).",
			Auth: authAdmin, Request: typeOf[api.UpdateRegionRequest](), Response: typeOf[api.Region](), Status: 200,
			Errors: append(write, notFound), handler: s.updateRegion},
		{Method: "POST", Path: "/v1/regions/{id}/test", ID: "testRegion", Summary: "Run a region's smoke test (admin): a small deployment there, deleted afterwards. Answers when it is over: the region is open when it passed, back to provisioning with the reason in message when it failed.",
			Auth: authAdmin, Response: typeOf[api.Region](), Status: 200, Errors: append(read, conflict, unavail), handler: s.testRegion},
		{Method: "POST", Path: "/v1/regions/{id}/drain", ID: "drainRegion", Summary: "Mark a region draining (admin) and say what that does: new deployments refuse it; running instances stay until their services are redeployed without it or deleted.",
			Auth: authAdmin, Response: typeOf[api.RegionDrain](), Status: 200, Errors: read, handler: s.drainRegion},
	}
}

// principal is the authenticated caller of a request: the admin, an edge
// (an edge token), or an organization (one of its API tokens).
type principal struct {
	admin bool
	edge  bool
	orgID string
}

type principalKey struct{}

func withPrincipal(ctx context.Context, p principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

func callerOf(ctx context.Context) principal {
	p, _ := ctx.Value(principalKey{}).(principal)
	return p
}
