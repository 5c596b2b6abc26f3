package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls the global API. Its zero value is not usable: use NewClient.
type Client struct {
	// BaseURL is the API's root, e.g. "http://127.0.0.1:7700".
	BaseURL string
	// Token is the bearer token: an organization's API token, the
	// installation's admin token for operator calls, or an edge token
	// (which may only read the region registry).
	Token string
	// HTTP is the underlying client.
	HTTP *http.Client
}

// NewClient returns a client for the API at baseURL.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &http.Client{Timeout: 60 * time.Second}}
}

// ListOptions selects one page of a list.
type ListOptions struct {
	Limit     int
	PageToken string
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.PageToken != "" {
		q.Set("page_token", o.PageToken)
	}
	return q
}

// request is one API call.
type request struct {
	method, path string
	query        url.Values
	body         []byte
	contentType  string
	idemKey      string
}

// do sends req and decodes a JSON answer into out (when non-nil). An error
// answer is returned as *Error.
func (c *Client) do(ctx context.Context, req request, out any) error {
	u := c.BaseURL + req.path
	if len(req.query) > 0 {
		u += "?" + req.query.Encode()
	}
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, u, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.method, req.path, err)
	}
	if req.body != nil {
		ct := req.contentType
		if ct == "" {
			ct = "application/json"
		}
		hr.Header.Set("Content-Type", ct)
	}
	if c.Token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if req.idemKey != "" {
		hr.Header.Set("Idempotency-Key", req.idemKey)
	}
	hr.Header.Set("Accept", "application/json")
	resp, err := c.HTTP.Do(hr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.method, req.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading answer: %w", req.method, req.path, err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Code = CodeInternal
			e.Message = fmt.Sprintf("%s %s: %s: %s", req.method, req.path, resp.Status, strings.TrimSpace(string(data)))
		}
		return e
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding answer: %w", req.method, req.path, err)
		}
	}
	return nil
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // request types always marshal
	}
	return b
}

func call[T any](ctx context.Context, c *Client, req request) (T, error) {
	var out T
	err := c.do(ctx, req, &out)
	return out, err
}

func esc(s string) string { return url.PathEscape(s) }

// CreateOrg creates an organization (admin token).
func (c *Client) CreateOrg(ctx context.Context, name, idemKey string) (Organization, error) {
	return call[Organization](ctx, c, request{method: "POST", path: "/v1/organizations", body: jsonBody(CreateOrgRequest{Name: name}), idemKey: idemKey})
}

// ListOrgs lists organizations (admin token).
func (c *Client) ListOrgs(ctx context.Context, o ListOptions) (List[Organization], error) {
	return call[List[Organization]](ctx, c, request{method: "GET", path: "/v1/organizations", query: o.query()})
}

// GetOrg gets an organization by name or id (admin token).
func (c *Client) GetOrg(ctx context.Context, ref string) (Organization, error) {
	return call[Organization](ctx, c, request{method: "GET", path: "/v1/organizations/" + esc(ref)})
}

// CreateOrgToken creates an API token for an organization (admin token).
func (c *Client) CreateOrgToken(ctx context.Context, org, name, idemKey string) (Token, error) {
	return call[Token](ctx, c, request{method: "POST", path: "/v1/organizations/" + esc(org) + "/tokens", body: jsonBody(CreateTokenRequest{Name: name}), idemKey: idemKey})
}

// CreateToken creates another token of the caller's organization.
func (c *Client) CreateToken(ctx context.Context, name, idemKey string) (Token, error) {
	return call[Token](ctx, c, request{method: "POST", path: "/v1/tokens", body: jsonBody(CreateTokenRequest{Name: name}), idemKey: idemKey})
}

// ListTokens lists the organization's tokens, without their values.
func (c *Client) ListTokens(ctx context.Context, o ListOptions) (List[Token], error) {
	return call[List[Token]](ctx, c, request{method: "GET", path: "/v1/tokens", query: o.query()})
}

// DeleteToken revokes a token.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	return c.do(ctx, request{method: "DELETE", path: "/v1/tokens/" + esc(id)}, nil)
}

// CreateEdgeToken creates a read-only edge token (admin token). The
// token's value is in the answer only: it cannot be read again.
func (c *Client) CreateEdgeToken(ctx context.Context, name, idemKey string) (EdgeToken, error) {
	return call[EdgeToken](ctx, c, request{method: "POST", path: "/v1/edge-tokens", body: jsonBody(CreateEdgeTokenRequest{Name: name}), idemKey: idemKey})
}

// ListEdgeTokens lists the edge tokens by name, without their values
// (admin token).
func (c *Client) ListEdgeTokens(ctx context.Context, o ListOptions) (List[EdgeToken], error) {
	return call[List[EdgeToken]](ctx, c, request{method: "GET", path: "/v1/edge-tokens", query: o.query()})
}

// DeleteEdgeToken revokes an edge token (admin token).
func (c *Client) DeleteEdgeToken(ctx context.Context, id string) error {
	return c.do(ctx, request{method: "DELETE", path: "/v1/edge-tokens/" + esc(id)}, nil)
}

// CreateApp creates an app.
func (c *Client) CreateApp(ctx context.Context, name, idemKey string) (App, error) {
	return call[App](ctx, c, request{method: "POST", path: "/v1/apps", body: jsonBody(CreateAppRequest{Name: name}), idemKey: idemKey})
}

// ListApps lists apps.
func (c *Client) ListApps(ctx context.Context, o ListOptions) (List[App], error) {
	return call[List[App]](ctx, c, request{method: "GET", path: "/v1/apps", query: o.query()})
}

// GetApp gets an app.
func (c *Client) GetApp(ctx context.Context, name string) (App, error) {
	return call[App](ctx, c, request{method: "GET", path: "/v1/apps/" + esc(name)})
}

// DeleteApp deletes an app that has no services.
func (c *Client) DeleteApp(ctx context.Context, name string) error {
	return c.do(ctx, request{method: "DELETE", path: "/v1/apps/" + esc(name)}, nil)
}

// Deploy creates or updates a service of app from a definition document
// (YAML or JSON, as contentType says) and returns the new deployment.
func (c *Client) Deploy(ctx context.Context, app string, doc []byte, contentType, idemKey string) (Deployment, error) {
	return call[Deployment](ctx, c, request{method: "POST", path: "/v1/apps/" + esc(app) + "/services", body: doc, contentType: contentType, idemKey: idemKey})
}

// ListServices lists an app's services.
func (c *Client) ListServices(ctx context.Context, app string, o ListOptions) (List[Service], error) {
	return call[List[Service]](ctx, c, request{method: "GET", path: "/v1/apps/" + esc(app) + "/services", query: o.query()})
}

// GetService gets a service with its latest definition.
func (c *Client) GetService(ctx context.Context, app, name string) (Service, error) {
	return call[Service](ctx, c, request{method: "GET", path: "/v1/apps/" + esc(app) + "/services/" + esc(name)})
}

// DeleteService deletes a service.
func (c *Client) DeleteService(ctx context.Context, app, name string) error {
	return c.do(ctx, request{method: "DELETE", path: "/v1/apps/" + esc(app) + "/services/" + esc(name)}, nil)
}

// ListDeployments lists a service's deployments, newest first.
func (c *Client) ListDeployments(ctx context.Context, app, service string, o ListOptions) (List[Deployment], error) {
	return call[List[Deployment]](ctx, c, request{method: "GET", path: "/v1/apps/" + esc(app) + "/services/" + esc(service) + "/deployments", query: o.query()})
}

// GetDeployment gets a deployment with its regional deployments.
func (c *Client) GetDeployment(ctx context.Context, id string) (Deployment, error) {
	return call[Deployment](ctx, c, request{method: "GET", path: "/v1/deployments/" + esc(id)})
}

// CancelDeployment cancels a running deployment: the regions it reached
// are reverted to their previous deployment. A finished deployment answers
// 409.
func (c *Client) CancelDeployment(ctx context.Context, id string) (Deployment, error) {
	return call[Deployment](ctx, c, request{method: "POST", path: "/v1/deployments/" + esc(id) + "/cancel"})
}

// ListInstances lists every instance of the caller's organization in every
// open region; regions that do not answer are listed in Unreachable.
func (c *Client) ListInstances(ctx context.Context) (InstanceList, error) {
	return call[InstanceList](ctx, c, request{method: "GET", path: "/v1/instances"})
}

// ServiceInstances lists a service's instances in the regions it runs in.
func (c *Client) ServiceInstances(ctx context.Context, app, service string) (InstanceList, error) {
	return call[InstanceList](ctx, c, request{method: "GET", path: "/v1/apps/" + esc(app) + "/services/" + esc(service) + "/instances"})
}

// PutSecret creates or replaces a secret.
func (c *Client) PutSecret(ctx context.Context, name, value string) (Secret, error) {
	return call[Secret](ctx, c, request{method: "PUT", path: "/v1/secrets/" + esc(name), body: jsonBody(PutSecretRequest{Value: value})})
}

// ListSecrets lists secrets (names only).
func (c *Client) ListSecrets(ctx context.Context, o ListOptions) (List[Secret], error) {
	return call[List[Secret]](ctx, c, request{method: "GET", path: "/v1/secrets", query: o.query()})
}

// DeleteSecret deletes a secret.
func (c *Client) DeleteSecret(ctx context.Context, name string) error {
	return c.do(ctx, request{method: "DELETE", path: "/v1/secrets/" + esc(name)}, nil)
}

// CreateRegion registers a region (admin token).
func (c *Client) CreateRegion(ctx context.Context, r CreateRegionRequest, idemKey string) (Region, error) {
	return call[Region](ctx, c, request{method: "POST", path: "/v1/regions", body: jsonBody(r), idemKey: idemKey})
}

// ListRegions lists the region registry.
func (c *Client) ListRegions(ctx context.Context, o ListOptions) (List[Region], error) {
	return call[List[Region]](ctx, c, request{method: "GET", path: "/v1/regions", query: o.query()})
}

// GetRegion gets a region.
func (c *Client) GetRegion(ctx context.Context, id string) (Region, error) {
	return call[Region](ctx, c, request{method: "GET", path: "/v1/regions/" + esc(id)})
}

// UpdateRegion changes a region (admin token).
func (c *Client) UpdateRegion(ctx context.Context, id string, r UpdateRegionRequest) (Region, error) {
	return call[Region](ctx, c, request{method: "PATCH", path: "/v1/regions/" + esc(id), body: jsonBody(r)})
}

// TestRegion runs the smoke test of a region (admin token): a small
// deployment there, deleted afterwards. It answers when the test is over:
// the region is open when it passed, or back to provisioning with the
// reason in Message when it failed.
func (c *Client) TestRegion(ctx context.Context, id string) (Region, error) {
	return call[Region](ctx, c, request{method: "POST", path: "/v1/regions/" + esc(id) + "/test"})
}

// DrainRegion marks a region draining (admin token) and answers what that
// does: new deploys refuse the region; what runs there stays until its
// services are redeployed without it or deleted.
func (c *Client) DrainRegion(ctx context.Context, id string) (RegionDrain, error) {
	return call[RegionDrain](ctx, c, request{method: "POST", path: "/v1/regions/" + esc(id) + "/drain"})
}

// All collects every page of a list call.
func All[T any](list func(ListOptions) (List[T], error)) ([]T, error) {
	var all []T
	o := ListOptions{Limit: 500}
	for {
		page, err := list(o)
		if err != nil {
			return all, err
		}
		all = append(all, page.Items...)
		if page.NextPageToken == "" {
			return all, nil
		}
		o.PageToken = page.NextPageToken
	}
}
