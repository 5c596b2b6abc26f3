package global

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/store"
	"github.com/meridian-run/meridian/testutil"
)

// TestEdgeTokens: the admin creates, lists and revokes edge tokens; an edge
// token reads the region registry and nothing else; a revoked one is
// refused; organizations cannot manage them.
func TestEdgeTokens(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		h.openRegions("fra", "was")

		// Create: 201 with {id, name, token, created_at}, the token shown once.
		status, body := raw(t, h, "POST", "/v1/edge-tokens", testAdminToken, "application/json", []byte(`{"name":"edge-par"}`))
		if status != http.StatusCreated {
			t.Fatalf("create: %d %s", status, body)
		}
		var fields map[string]any
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatal(err)
		}
		if got := slices.Sorted(func(yield func(string) bool) {
			for k := range fields {
				if !yield(k) {
					return
				}
			}
		}); !slices.Equal(got, []string{"created_at", "id", "name", "token"}) {
			t.Fatalf("create answered fields %v", got)
		}
		var par api.EdgeToken
		if err := json.Unmarshal(body, &par); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(par.ID, "etk_") || !strings.HasPrefix(par.Value, "mre_") || par.Name != "edge-par" || par.CreatedAt.IsZero() {
			t.Fatalf("created edge token %+v", par)
		}
		nyc, err := h.admin.CreateEdgeToken(ctx, "edge-nyc", "")
		if err != nil {
			t.Fatal(err)
		}
		if nyc.Value == par.Value || nyc.ID == par.ID {
			t.Fatal("two edge tokens share a value or an id")
		}

		// The store keeps the hash, which finds the token; never the value.
		err = h.st.View(ctx, func(tx store.Tx) error {
			b, err := tx.BearerByHash(ctx, hashToken(par.Value))
			if err != nil {
				return err
			}
			if !b.Edge || b.TokenID != par.ID || b.OrgID != "" {
				t.Errorf("the edge token's hash finds %+v", b)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		// List: by name, without values.
		list, err := h.admin.ListEdgeTokens(ctx, api.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 2 || list.Items[0].Name != "edge-nyc" || list.Items[1].Name != "edge-par" {
			t.Fatalf("list = %+v", list.Items)
		}
		for _, e := range list.Items {
			if e.Value != "" {
				t.Fatalf("list shows the value of %s", e.Name)
			}
		}
		status, body = raw(t, h, "GET", "/v1/edge-tokens", testAdminToken, "", nil)
		if status != 200 || bytes.Contains(body, []byte(par.Value)) || bytes.Contains(body, []byte(`"token"`)) {
			t.Fatalf("raw list: %d %s", status, body)
		}
		first, err := h.admin.ListEdgeTokens(ctx, api.ListOptions{Limit: 1})
		if err != nil || len(first.Items) != 1 || first.NextPageToken == "" {
			t.Fatalf("first page: %+v, %v", first, err)
		}
		second, err := h.admin.ListEdgeTokens(ctx, api.ListOptions{Limit: 1, PageToken: first.NextPageToken})
		if err != nil || len(second.Items) != 1 || second.Items[0].Name != "edge-par" || second.NextPageToken != "" {
			t.Fatalf("second page: %+v, %v", second, err)
		}

		// The edge token reads the region registry.
		edge := api.NewClient(h.srv.URL(), par.Value)
		regions, err := edge.ListRegions(ctx, api.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(regions.Items) != 2 || regions.Items[0].ID != "fra" {
			t.Fatalf("the edge lists regions %+v", regions.Items)
		}
		if r, err := edge.GetRegion(ctx, "was"); err != nil || r.ID != "was" {
			t.Fatalf("the edge gets region was: %+v, %v", r, err)
		}
		_, err = edge.GetRegion(ctx, "nope")
		mustStatus(t, err, 404)

		// And nothing else.
		for _, c := range []struct{ method, path, body string }{
			{"POST", "/v1/regions", `{"id":"sin","latitude":1,"longitude":2,"url":"https://127.0.0.1:1"}`},
			{"PATCH", "/v1/regions/fra", `{"status":"draining"}`},
			{"POST", "/v1/regions/fra/drain", ""},
			{"GET", "/v1/apps", ""},
			{"POST", "/v1/apps", `{"name":"sneaky"}`},
			{"GET", "/v1/instances", ""},
			{"GET", "/v1/tokens", ""},
			{"GET", "/v1/organizations", ""},
			{"POST", "/v1/organizations", `{"name":"sneaky"}`},
			{"POST", "/v1/edge-tokens", `{"name":"sneaky"}`},
			{"GET", "/v1/edge-tokens", ""},
			{"DELETE", "/v1/edge-tokens/" + nyc.ID, ""},
		} {
			ct := ""
			if c.body != "" {
				ct = "application/json"
			}
			status, body := raw(t, h, c.method, c.path, par.Value, ct, []byte(c.body))
			var e api.Error
			if status != http.StatusForbidden || json.Unmarshal(body, &e) != nil || e.Code != api.CodeForbidden ||
				!strings.Contains(e.Message, "an edge token may only read the region registry") {
				t.Errorf("edge token on %s %s: %d %s, want 403 saying it may only read the region registry", c.method, c.path, status, body)
			}
		}
		if r, err := h.admin.GetRegion(ctx, "fra"); err != nil || r.Status != api.RegionOpen {
			t.Fatalf("after the edge's refused calls, fra is %+v (%v)", r, err)
		}
		if l, err := h.admin.ListEdgeTokens(ctx, api.ListOptions{}); err != nil || len(l.Items) != 2 {
			t.Fatalf("after the edge's refused calls: %+v (%v)", l.Items, err)
		}

		// Organizations cannot manage edge tokens, and still read regions.
		_, err = h.acme.CreateEdgeToken(ctx, "mine", "")
		mustStatus(t, err, http.StatusForbidden)
		_, err = h.acme.ListEdgeTokens(ctx, api.ListOptions{})
		mustStatus(t, err, http.StatusForbidden)
		mustStatus(t, h.acme.DeleteEdgeToken(ctx, par.ID), http.StatusForbidden)
		if _, err := h.acme.ListRegions(ctx, api.ListOptions{}); err != nil {
			t.Fatalf("an organization reading regions: %v", err)
		}
		_, err = api.NewClient(h.srv.URL(), "").ListEdgeTokens(ctx, api.ListOptions{})
		mustStatus(t, err, http.StatusUnauthorized)

		// A taken name is a conflict.
		_, err = h.admin.CreateEdgeToken(ctx, "edge-par", "")
		if ae := mustStatus(t, err, http.StatusConflict); !strings.Contains(ae.Message, `edge token "edge-par" already exists`) {
			t.Fatalf("conflict message: %q", ae.Message)
		}

		// Revoke: 204, then the token is refused; unknown ids are 404.
		if err := h.admin.DeleteEdgeToken(ctx, par.ID); err != nil {
			t.Fatal(err)
		}
		_, err = edge.ListRegions(ctx, api.ListOptions{})
		mustStatus(t, err, http.StatusUnauthorized)
		_, err = edge.GetRegion(ctx, "fra")
		mustStatus(t, err, http.StatusUnauthorized)
		mustStatus(t, h.admin.DeleteEdgeToken(ctx, par.ID), http.StatusNotFound)
		mustStatus(t, h.admin.DeleteEdgeToken(ctx, "etk_nope"), http.StatusNotFound)
		if status, body := raw(t, h, "DELETE", "/v1/edge-tokens/"+nyc.ID, testAdminToken, "", nil); status != http.StatusNoContent || len(body) != 0 {
			t.Fatalf("raw delete: %d %q", status, body)
		}
		if l, err := h.admin.ListEdgeTokens(ctx, api.ListOptions{}); err != nil || len(l.Items) != 0 {
			t.Fatalf("after revoking both: %+v (%v)", l.Items, err)
		}
		// The name of a revoked token is free again.
		again, err := h.admin.CreateEdgeToken(ctx, "edge-par", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := api.NewClient(h.srv.URL(), again.Value).ListRegions(ctx, api.ListOptions{}); err != nil {
			t.Fatalf("the new edge-par token: %v", err)
		}
	})
}

// TestEdgeTokenBadInput: bad names and bodies are 400s naming the field,
// and store nothing.
func TestEdgeTokenBadInput(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		for _, tc := range []struct {
			name, body, field, msg string
		}{
			{"no name", `{}`, "name", "required"},
			{"empty name", `{"name":""}`, "name", "required"},
			{"too long", `{"name":"` + strings.Repeat("a", 64) + `"}`, "name", "longer than 63 characters"},
			{"upper case", `{"name":"Edge_Par"}`, "name", "not a valid name"},
			{"leading digit", `{"name":"1edge"}`, "name", "not a valid name"},
			{"trailing dash", `{"name":"edge-"}`, "name", "not a valid name"},
			{"wrong type", `{"name":5}`, "name", "want string"},
			{"unknown field", `{"name":"edge","ttl":"1h"}`, "ttl", "unknown field"},
			{"malformed json", `{"name":`, "", "malformed JSON"},
			{"trailing data", `{"name":"a"} {"name":"b"}`, "", "unexpected data"},
			{"empty body", ``, "", "empty"},
		} {
			status, body := raw(t, h, "POST", "/v1/edge-tokens", testAdminToken, "application/json", []byte(tc.body))
			var e api.Error
			if err := json.Unmarshal(body, &e); err != nil || status != http.StatusBadRequest || e.Code != api.CodeInvalid {
				t.Errorf("%s: %d %s, want 400 %s", tc.name, status, body, api.CodeInvalid)
				continue
			}
			if tc.field == "" && !strings.Contains(e.Message, tc.msg) {
				t.Errorf("%s: message %q lacks %q", tc.name, e.Message, tc.msg)
			}
			if tc.field != "" && (len(e.Fields) != 1 || e.Fields[0].Path != tc.field || !strings.Contains(e.Fields[0].Message, tc.msg) ||
				(e.Message != "invalid "+tc.field && e.Message != "request body: unknown field")) {
				t.Errorf("%s: fields %+v, message %q: want the field %q named, with %q", tc.name, e.Fields, e.Message, tc.field, tc.msg)
			}
		}
		status, body := raw(t, h, "POST", "/v1/edge-tokens", testAdminToken, "text/plain", []byte(`{"name":"edge"}`))
		if status != http.StatusUnsupportedMediaType {
			t.Errorf("text/plain: %d %s", status, body)
		}
		status, body = raw(t, h, "GET", "/v1/edge-tokens?limit=0", testAdminToken, "", nil)
		if status != http.StatusBadRequest || !strings.Contains(string(body), `"path":"limit"`) {
			t.Errorf("limit=0: %d %s", status, body)
		}
		status, body = raw(t, h, "GET", "/v1/edge-tokens?page_token=zz!!", testAdminToken, "", nil)
		if status != http.StatusBadRequest || !strings.Contains(string(body), `"path":"page_token"`) {
			t.Errorf("bad page token: %d %s", status, body)
		}
		if l, err := h.admin.ListEdgeTokens(ctx, api.ListOptions{}); err != nil || len(l.Items) != 0 {
			t.Fatalf("after bad input: %+v (%v)", l.Items, err)
		}
	})
}

// TestEdgeTokenIdempotency: a retried create with an Idempotency-Key gets
// the same token back and creates one; the answer kept for the replay
// does not hold the token in clear.
func TestEdgeTokenIdempotency(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		first, err := h.admin.CreateEdgeToken(ctx, "edge-par", "par-1")
		if err != nil {
			t.Fatal(err)
		}
		status, body := raw(t, h, "POST", "/v1/edge-tokens", testAdminToken, "application/json", []byte(`{"name":"edge-par"}`), "Idempotency-Key", "par-1")
		var again api.EdgeToken
		if status != http.StatusCreated || json.Unmarshal(body, &again) != nil || again != first {
			t.Fatalf("replay: %d %s, want %+v", status, body, first)
		}
		l, err := h.admin.ListEdgeTokens(ctx, api.ListOptions{})
		if err != nil || len(l.Items) != 1 {
			t.Fatalf("after a replay: %+v (%v)", l.Items, err)
		}
		if _, err := api.NewClient(h.srv.URL(), again.Value).ListRegions(ctx, api.ListOptions{}); err != nil {
			t.Fatalf("the replayed token: %v", err)
		}
		err = h.st.View(ctx, func(tx store.Tx) error {
			rec, err := tx.GetIdempotency(ctx, "", "par-1")
			if err != nil {
				return err
			}
			if bytes.Contains(rec.Body, []byte(first.Value)) || bytes.Contains(rec.Body, []byte(edgeTokenPrefix)) {
				t.Errorf("the kept answer holds the token in clear: %q", rec.Body)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// The same key with another request is refused.
		_, err = h.admin.CreateEdgeToken(ctx, "edge-nyc", "par-1")
		mustStatus(t, err, http.StatusUnprocessableEntity)
	})
}
