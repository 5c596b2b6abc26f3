package regionapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/meridian-run/meridian/api"
)

// Client calls a region's API. HTTP must carry the caller's mutual TLS
// configuration (the join call alone goes without a client certificate).
type Client struct {
	BaseURL string
	HTTP    *http.Client
}

// NewClient returns a client for the region API at baseURL.
func NewClient(baseURL string, hc *http.Client) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), HTTP: hc}
}

func (c *Client) newRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, r)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// readError decodes an error answer into *api.Error.
func readError(resp *http.Response, method, path string) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e := &api.Error{Status: resp.StatusCode}
	if json.Unmarshal(data, e) != nil || e.Message == "" {
		e.Code = api.CodeInternal
		e.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	return e
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp, method, path)
	}
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
	}
	return nil
}

func get[T any](ctx context.Context, c *Client, method, path string, body any) (T, error) {
	var out T
	err := c.do(ctx, method, path, body, &out)
	return out, err
}

// Apply applies a regional deployment to the service key.
func (c *Client) Apply(ctx context.Context, a Apply) (ApplyResult, error) {
	key := ServiceKey(a.Org, a.App, a.Service)
	return get[ApplyResult](ctx, c, "PUT", "/v1/services/"+url.PathEscape(key), a)
}

// Status reads a service's state in the region.
func (c *Client) Status(ctx context.Context, key string) (ServiceStatus, error) {
	return get[ServiceStatus](ctx, c, "GET", "/v1/services/"+url.PathEscape(key), nil)
}

// Services lists every service of the region with its state.
func (c *Client) Services(ctx context.Context) ([]ServiceStatus, error) {
	return get[[]ServiceStatus](ctx, c, "GET", "/v1/services", nil)
}

// DeleteService stops every instance of a service.
func (c *Client) DeleteService(ctx context.Context, key string, generation int64) error {
	return c.do(ctx, "DELETE", "/v1/services/"+url.PathEscape(key)+"?generation="+strconv.FormatInt(generation, 10), nil, nil)
}

// Instances lists every instance of the region.
func (c *Client) Instances(ctx context.Context) ([]InstanceStatus, error) {
	return get[[]InstanceStatus](ctx, c, "GET", "/v1/instances", nil)
}

// Machines lists the region's machines with capacity and usage.
func (c *Client) Machines(ctx context.Context) ([]Machine, error) {
	return get[[]Machine](ctx, c, "GET", "/v1/machines", nil)
}

// Datacenters lists the region's data centers with capacity and usage.
func (c *Client) Datacenters(ctx context.Context) ([]Datacenter, error) {
	return get[[]Datacenter](ctx, c, "GET", "/v1/datacenters", nil)
}

// Drain moves a machine's instances away and stops placing new ones there.
func (c *Client) Drain(ctx context.Context, machine string) (Machine, error) {
	return get[Machine](ctx, c, "POST", "/v1/machines/"+url.PathEscape(machine)+"/drain", nil)
}

// CreateJoinToken creates a join token for machines of the region.
func (c *Client) CreateJoinToken(ctx context.Context, r JoinTokenRequest) (JoinToken, error) {
	return get[JoinToken](ctx, c, "POST", "/v1/join-tokens", r)
}

// RevokeJoinToken revokes a join token.
func (c *Client) RevokeJoinToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/join-tokens/"+url.PathEscape(id), nil, nil)
}

// Join registers a machine with a join token and returns its certificate.
func (c *Client) Join(ctx context.Context, r JoinRequest) (JoinResponse, error) {
	return get[JoinResponse](ctx, c, "POST", "/v1/join", r)
}

// Renew returns a fresh machine certificate for a CSR.
func (c *Client) Renew(ctx context.Context, r RenewRequest) (JoinResponse, error) {
	return get[JoinResponse](ctx, c, "POST", "/v1/agent/renew", r)
}

// Heartbeat keeps the calling machine's lease alive.
func (c *Client) Heartbeat(ctx context.Context, h Heartbeat) (HeartbeatResponse, error) {
	return get[HeartbeatResponse](ctx, c, "POST", "/v1/agent/heartbeat", h)
}

// Report sends the calling machine's instance states.
func (c *Client) Report(ctx context.Context, r StatusReport) error {
	return c.do(ctx, "POST", "/v1/agent/report", r, nil)
}

// SetPeers tells a region about the other open regions (global plane).
func (c *Client) SetPeers(ctx context.Context, p Peers) error {
	return c.do(ctx, "PUT", "/v1/peers", p, nil)
}

// Feed streams a region's endpoint feed: a full Feed at once and again on
// every change (debounced), until ctx ends, the stream breaks, or fn
// returns an error. local asks for the region's own endpoints only (what
// edges and peer regions read); otherwise the feed merges the peers' (what
// agents read for the mesh).
func (c *Client) Feed(ctx context.Context, local bool, fn func(Feed) error) error {
	path := "/v1/feed?local=" + strconv.FormatBool(local)
	return c.stream(ctx, path, func(line []byte) error {
		var f Feed
		if err := json.Unmarshal(line, &f); err != nil {
			return fmt.Errorf("feed: decoding: %w", err)
		}
		if f.Region == "" {
			return nil // keepalive
		}
		return fn(f)
	})
}

// stream reads an NDJSON stream line by line.
func (c *Client) stream(ctx context.Context, path string, fn func([]byte) error) error {
	req, err := c.newRequest(ctx, "GET", path, nil)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp, "GET", path)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := fn(line); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return fmt.Errorf("GET %s: stream ended", path)
}

// Watch streams the calling machine's assignments from after (0: start
// with a snapshot), calling fn for each event until ctx ends, the stream
// breaks, or fn returns an error. The caller resumes with the last
// revision it saw.
func (c *Client) Watch(ctx context.Context, after int64, fn func(WatchEvent) error) error {
	return c.stream(ctx, "/v1/agent/watch?after="+strconv.FormatInt(after, 10), func(line []byte) error {
		var ev WatchEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("watch: decoding event: %w", err)
		}
		return fn(ev)
	})
}
