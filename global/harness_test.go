package global

import (
	"context"
	"encoding/base64"
	"os"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/store"
	"github.com/meridian-run/meridian/store/storetest"
	"github.com/meridian-run/meridian/testutil"
)

const testAdminToken = "test-admin-token-0123456789"

// harness is a real global control plane on a loopback port, with an
// organization "acme" and clients for the admin and for acme.
type harness struct {
	t     testing.TB
	srv   *Server
	st    store.Store
	key   []byte
	admin *api.Client
	acme  *api.Client
}

// newHarness starts a server on st; opts change its configuration.
func newHarness(t testing.TB, st store.Store, opts ...func(*Config)) *harness {
	t.Helper()
	key, _ := base64.StdEncoding.DecodeString(NewSecretKey())
	cfg := Config{
		Listen: "127.0.0.1:0", Store: st, AdminToken: testAdminToken, SecretKey: key,
		Logger: testutil.Logger(t),
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start global: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	select {
	case <-srv.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("global not ready in 10s")
	}
	h := &harness{t: t, srv: srv, st: st, key: key, admin: api.NewClient(srv.URL(), testAdminToken)}
	h.acme = h.newOrg("acme")
	return h
}

// newOrg creates an organization and returns a client with its token.
func (h *harness) newOrg(name string) *api.Client {
	h.t.Helper()
	ctx := context.Background()
	if _, err := h.admin.CreateOrg(ctx, name, ""); err != nil {
		h.t.Fatalf("create org %s: %v", name, err)
	}
	tok, err := h.admin.CreateOrgToken(ctx, name, "test", "")
	if err != nil {
		h.t.Fatalf("create token for %s: %v", name, err)
	}
	return api.NewClient(h.srv.URL(), tok.Value)
}

// openRegions registers regions and opens them through the API, without a
// region server behind them: for tests where no rollout reaches a region.
func (h *harness) openRegions(ids ...string) {
	h.t.Helper()
	ctx := context.Background()
	open := api.RegionOpen
	for _, id := range ids {
		if _, err := h.admin.CreateRegion(ctx, api.CreateRegionRequest{ID: id, Latitude: 1, Longitude: 2, URL: "https://127.0.0.1:1"}, ""); err != nil {
			h.t.Fatalf("register region %s: %v", id, err)
		}
		if _, err := h.admin.UpdateRegion(ctx, id, api.UpdateRegionRequest{Status: &open}); err != nil {
			h.t.Fatalf("open region %s: %v", id, err)
		}
	}
}

// mustStatus asserts err is an API error with the given status and code.
func mustStatus(t testing.TB, err error, status int) *api.Error {
	t.Helper()
	ae, ok := err.(*api.Error)
	if !ok {
		t.Fatalf("want an API error with status %d, got %T: %v", status, err, err)
	}
	if ae.Status != status {
		t.Fatalf("want status %d, got %d: %v", status, ae.Status, ae)
	}
	if ae.Code == "" || ae.Message == "" {
		t.Fatalf("error body lacks code or message: %+v", ae)
	}
	return ae
}

func readExample(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("../examples/hello/meridian.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// forEachStore runs fn once per store kind, on a fresh harness configured
// with opts.
func forEachStore(t *testing.T, fn func(t *testing.T, h *harness), opts ...func(*Config)) {
	storetest.Each(t, func(t *testing.T, st store.Store) { fn(t, newHarness(t, st, opts...)) })
}
