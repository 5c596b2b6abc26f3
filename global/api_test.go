package global

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/store"
)

// raw sends a request with full control over headers and body.
func raw(t testing.TB, h *harness, method, path, token, contentType string, body []byte, hdr ...string) (int, []byte) {
	t.Helper()
	status, _, b := rawHeader(t, h, method, path, token, contentType, body, hdr...)
	return status, b
}

// rawHeader is raw answering the response's header too.
func rawHeader(t testing.TB, h *harness, method, path, token, contentType string, body []byte, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func TestQuickstartDeploysExampleToEveryRegion(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		h.openRegions("fra", "was", "sin")
		app, err := h.acme.CreateApp(ctx, "hello", "")
		if err != nil {
			t.Fatal(err)
		}
		if app.Host != "hello-acme."+DefaultDomain {
			t.Fatalf("app host = %q", app.Host)
		}
		d, err := h.acme.Deploy(ctx, "hello", readExample(t), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		if d.Version != 1 || d.Status != api.StatusPending || d.Service != "hello" || d.App != "hello" {
			t.Fatalf("deployment = version %d status %s service %s app %s", d.Version, d.Status, d.Service, d.App)
		}
		got, err := h.acme.GetDeployment(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{"fra": 2, "was": 3, "sin": 2}
		if len(got.Regional) != len(want) {
			t.Fatalf("regional deployments = %d, want %d", len(got.Regional), len(want))
		}
		for _, rd := range got.Regional {
			if rd.Status != api.StatusPending {
				t.Errorf("%s: status %s, want PENDING (no rollout worker: no region client)", rd.Region, rd.Status)
			}
			if rd.Definition.Region != rd.Region || rd.Definition.Scaling.Min != want[rd.Region] {
				t.Errorf("%s: regional definition region %s scaling %+v", rd.Region, rd.Definition.Region, rd.Definition.Scaling)
			}
		}
		// A second deploy makes version 2; the service points at it.
		d2, err := h.acme.Deploy(ctx, "hello", readExample(t), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		if d2.Version != 2 {
			t.Fatalf("second deployment version = %d", d2.Version)
		}
		svc, err := h.acme.GetService(ctx, "hello", "hello")
		if err != nil {
			t.Fatal(err)
		}
		if svc.LatestVersion != 2 || svc.LatestDeployment != d2.ID || svc.Definition == nil || svc.Definition.Name != "hello" {
			t.Fatalf("service = %+v", svc)
		}
		list, err := h.acme.ListDeployments(ctx, "hello", "hello", api.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 2 || list.Items[0].Version != 2 {
			t.Fatalf("deployments list = %d items, first version %d", len(list.Items), list.Items[0].Version)
		}
	})
}

func TestAuthentication(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		for _, tc := range []struct {
			name, method, path, token string
			status                    int
		}{
			{"no token", "GET", "/v1/apps", "", 401},
			{"wrong token", "GET", "/v1/apps", "mrd_nope", 401},
			{"admin inside an org", "GET", "/v1/apps", testAdminToken, 403},
			{"org token on admin call", "GET", "/v1/organizations", h.acme.Token, 403},
			{"org token registering a region", "POST", "/v1/regions", h.acme.Token, 403},
			{"no token for regions", "GET", "/v1/regions", "", 401},
			{"unknown route", "GET", "/v1/nope", h.acme.Token, 404},
		} {
			status, body := raw(t, h, tc.method, tc.path, tc.token, "application/json", []byte(`{}`))
			if status != tc.status {
				t.Errorf("%s: status %d, want %d: %s", tc.name, status, tc.status, body)
			}
			var e api.Error
			if err := json.Unmarshal(body, &e); err != nil || e.Code == "" || e.Message == "" {
				t.Errorf("%s: error body not {code, message}: %s", tc.name, body)
			}
		}
		// A revoked token stops working.
		ctx := testutil.Context(t, time.Minute)
		tok, err := h.acme.CreateToken(ctx, "ci", "")
		if err != nil {
			t.Fatal(err)
		}
		c := api.NewClient(h.srv.URL(), tok.Value)
		if _, err := c.ListApps(ctx, api.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := h.acme.DeleteToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		_, err = c.ListApps(ctx, api.ListOptions{})
		mustStatus(t, err, 401)
	})
}

func TestOrganizationsSeeOnlyTheirOwn(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		h.openRegions("fra", "was", "sin")
		if _, err := h.acme.CreateApp(ctx, "hello", ""); err != nil {
			t.Fatal(err)
		}
		d, err := h.acme.Deploy(ctx, "hello", readExample(t), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.acme.PutSecret(ctx, "db", "s3cret"); err != nil {
			t.Fatal(err)
		}
		other := h.newOrg("globex")
		_, err = other.GetApp(ctx, "hello")
		mustStatus(t, err, 404)
		_, err = other.GetDeployment(ctx, d.ID)
		mustStatus(t, err, 404)
		_, err = other.GetService(ctx, "hello", "hello")
		mustStatus(t, err, 404)
		mustStatus(t, other.DeleteSecret(ctx, "db"), 404)
		mustStatus(t, other.DeleteApp(ctx, "hello"), 404)
		apps, err := other.ListApps(ctx, api.ListOptions{})
		if err != nil || len(apps.Items) != 0 {
			t.Fatalf("other org lists %d apps (err %v)", len(apps.Items), err)
		}
		secrets, err := other.ListSecrets(ctx, api.ListOptions{})
		if err != nil || len(secrets.Items) != 0 {
			t.Fatalf("other org lists %d secrets (err %v)", len(secrets.Items), err)
		}
		// The same app name is free in another organization.
		if _, err := other.CreateApp(ctx, "hello", ""); err != nil {
			t.Fatal(err)
		}
		// But not a public host another organization's app has: app "a-b"
		// of org "c" and app "a" of org "b-c" would share a-b-c.<domain>.
		orgC, orgBC := h.newOrg("c"), h.newOrg("b-c")
		if _, err := orgC.CreateApp(ctx, "a-b", ""); err != nil {
			t.Fatal(err)
		}
		_, err = orgBC.CreateApp(ctx, "a", "")
		if ae := mustStatus(t, err, 409); !strings.Contains(ae.Message, "a-b-c."+DefaultDomain) {
			t.Fatalf("host collision message: %q", ae.Message)
		}
	})
}

func TestBadInputIsRefusedAndNothingStored(t *testing.T) {
	testutil.Slow(t)
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		if _, err := h.acme.CreateApp(ctx, "hello", ""); err != nil {
			t.Fatal(err)
		}
		tok := h.acme.Token
		svc := "/v1/apps/hello/services"
		big := bytes.Repeat([]byte("#"), 2<<20)
		for _, tc := range []struct {
			name, path, ct string
			body           []byte
			status         int
			field          string
		}{
			{"malformed json", svc, "application/json", []byte(`{"name": "x",`), 400, ""},
			{"malformed yaml", svc, "application/yaml", []byte("name: [x\nregions: fra"), 400, ""},
			{"wrong type", svc, "application/json", []byte(`{"name":"x","regions":["fra"],"command":["a"],"ports":[{"port":"http"}]}`), 400, "ports[0].port"},
			{"unknown field", svc, "application/yaml", []byte("name: x\nregions: [fra]\ncommand: [a]\nreplicas: 3\n"), 400, "replicas"},
			{"invalid definition", svc, "application/yaml", []byte("name: x\nregions: [fra]\ncommand: [a]\nscalings: [{min: 1, max: 1}, {min: 2, max: 2, scopes: [\"region:par\"]}]\n"), 400, "scalings[1].scopes[0]"},
			{"no regions", svc, "application/yaml", []byte("name: x\ncommand: [a]\n"), 400, "regions"},
			{"too large", svc, "application/yaml", big, 413, ""},
			{"unsupported media", svc, "text/html", []byte("<p>"), 415, ""},
			{"unknown app", "/v1/apps/nope/services", "application/yaml", readExample(t), 404, ""},
			{"app name", "/v1/apps", "application/json", []byte(`{"name":"Not_A_Label"}`), 400, "name"},
			{"app unknown field", "/v1/apps", "application/json", []byte(`{"name":"ok","color":"red"}`), 400, "color"},
			{"app wrong type", "/v1/apps", "application/json", []byte(`{"name":7}`), 400, "name"},
			{"trailing data", "/v1/apps", "application/json", []byte(`{"name":"ok"} {"name":"ok2"}`), 400, ""},
			{"empty body", "/v1/apps", "application/json", nil, 400, ""},
			{"bad limit", "/v1/apps?limit=0", "", nil, 400, "limit"},
			{"bad page token", "/v1/apps?page_token=zz!!", "", nil, 400, "page_token"},
		} {
			method := "POST"
			if strings.HasPrefix(tc.name, "bad ") {
				method = "GET"
			}
			status, body := raw(t, h, method, tc.path, tok, tc.ct, tc.body)
			if status != tc.status {
				t.Errorf("%s: status %d, want %d: %s", tc.name, status, tc.status, body)
				continue
			}
			var e api.Error
			if err := json.Unmarshal(body, &e); err != nil || e.Code == "" || e.Message == "" {
				t.Errorf("%s: error body not {code, message}: %s", tc.name, body)
			}
			if tc.field != "" {
				found := false
				for _, f := range e.Fields {
					found = found || f.Path == tc.field
				}
				if !found {
					t.Errorf("%s: no field error for %q in %s", tc.name, tc.field, body)
				}
			}
		}
		services, err := h.acme.ListServices(ctx, "hello", api.ListOptions{})
		if err != nil || len(services.Items) != 0 {
			t.Fatalf("after bad input: %d services stored (err %v)", len(services.Items), err)
		}
		apps, err := h.acme.ListApps(ctx, api.ListOptions{})
		if err != nil || len(apps.Items) != 1 {
			t.Fatalf("after bad input: %d apps (err %v)", len(apps.Items), err)
		}
	})
}

func TestIdempotencyKeyNeverCreatesTwice(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		h.openRegions("fra", "was", "sin")
		if _, err := h.acme.CreateApp(ctx, "hello", ""); err != nil {
			t.Fatal(err)
		}
		doc := readExample(t)
		var wg sync.WaitGroup
		ids := make([]string, 8)
		errs := make([]error, 8)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := h.acme.Deploy(ctx, "hello", doc, "application/yaml", "deploy-1")
				ids[i], errs[i] = d.ID, err
			}()
		}
		wg.Wait()
		for i := range ids {
			if errs[i] != nil {
				t.Fatalf("retry %d: %v", i, errs[i])
			}
			if ids[i] != ids[0] {
				t.Fatalf("retry %d got deployment %s, first got %s", i, ids[i], ids[0])
			}
		}
		list, err := h.acme.ListDeployments(ctx, "hello", "hello", api.ListOptions{})
		if err != nil || len(list.Items) != 1 {
			t.Fatalf("%d deployments after 8 retries of one key (err %v)", len(list.Items), err)
		}
		// The same key with another body is refused.
		other := bytes.Replace(doc, []byte("min: 2, max: 2}"), []byte("min: 1, max: 1}"), 1)
		_, err = h.acme.Deploy(ctx, "hello", other, "application/yaml", "deploy-1")
		mustStatus(t, err, 422)
		// Keys are per organization.
		globex := h.newOrg("globex")
		if _, err := globex.CreateApp(ctx, "hello", "deploy-1"); err != nil {
			t.Fatalf("another org reusing a key: %v", err)
		}
		// Replays answer the original status.
		status, body := raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/json", []byte(`{"name":"web"}`), "Idempotency-Key", "app-web")
		status2, body2 := raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/json", []byte(`{"name":"web"}`), "Idempotency-Key", "app-web")
		if status != 201 || status2 != 201 || !bytes.Equal(body, body2) {
			t.Fatalf("replay: %d %s / %d %s", status, body, status2, body2)
		}
	})
}

func TestPagination(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		for i := range 7 {
			if _, err := h.acme.CreateApp(ctx, fmt.Sprintf("app%d", i), ""); err != nil {
				t.Fatal(err)
			}
		}
		var names []string
		pages := 0
		o := api.ListOptions{Limit: 3}
		for {
			p, err := h.acme.ListApps(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, a := range p.Items {
				names = append(names, a.Name)
			}
			if p.NextPageToken == "" {
				break
			}
			o.PageToken = p.NextPageToken
		}
		if pages != 3 || len(names) != 7 {
			t.Fatalf("%d pages, %d apps: %v", pages, len(names), names)
		}
		seen := map[string]bool{}
		for _, n := range names {
			if seen[n] {
				t.Fatalf("app %s listed twice: %v", n, names)
			}
			seen[n] = true
		}
	})
}

func TestSecretsAreWriteOnlyAndSealed(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		h.openRegions("fra")
		s, err := h.acme.PutSecret(ctx, "db-password", "hunter2")
		if err != nil {
			t.Fatal(err)
		}
		if s.Value != "" {
			t.Fatal("secret value returned")
		}
		var rec store.SecretRecord
		err = h.st.View(ctx, func(tx store.Tx) error {
			var err error
			rec, err = tx.GetSecret(ctx, s.OrgID, "db-password")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(rec.Sealed, []byte("hunter2")) {
			t.Fatal("secret stored in plaintext")
		}
		sealer, _ := NewSealer(h.key)
		pt, err := sealer.Open(s.OrgID, "db-password", rec.Sealed)
		if err != nil || string(pt) != "hunter2" {
			t.Fatalf("open sealed secret: %q, %v", pt, err)
		}
		if _, err := sealer.Open(s.OrgID, "other-name", rec.Sealed); err == nil {
			t.Fatal("a sealed value opened under another name")
		}
		// Replacing keeps one secret.
		if _, err := h.acme.PutSecret(ctx, "db-password", "hunter3"); err != nil {
			t.Fatal(err)
		}
		list, err := h.acme.ListSecrets(ctx, api.ListOptions{})
		if err != nil || len(list.Items) != 1 || list.Items[0].Value != "" {
			t.Fatalf("secrets list = %+v, %v", list.Items, err)
		}
		// A definition referring to a missing secret is invalid; an existing one is fine.
		if _, err := h.acme.CreateApp(ctx, "web", ""); err != nil {
			t.Fatal(err)
		}
		doc := []byte("name: web\nregions: [fra]\ncommand: [web]\nenv:\n  - {key: DB, secret: db-password}\n  - {key: API, secret: missing}\n")
		_, err = h.acme.Deploy(ctx, "web", doc, "application/yaml", "")
		ae := mustStatus(t, err, 400)
		if len(ae.Fields) != 1 || ae.Fields[0].Path != "env[1].secret" {
			t.Fatalf("fields = %+v", ae.Fields)
		}
		d, err := h.acme.Deploy(ctx, "web", doc[:bytes.LastIndex(doc, []byte("  - {key: API"))], "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		env := d.Regional[0].Definition.Env
		if len(env) != 1 || env[0].Secret != "db-password" || env[0].Value != "" {
			t.Fatalf("regional env = %+v", env)
		}
		// Bad secret input.
		status, _ := raw(t, h, "PUT", "/v1/secrets/bad%20name", h.acme.Token, "application/json", []byte(`{"value":"x"}`))
		if status != 400 {
			t.Fatalf("bad secret name: status %d", status)
		}
	})
}

func TestDeployNamesOnlyOpenRegions(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		h.openRegions("fra")
		if _, err := h.admin.CreateRegion(ctx, api.CreateRegionRequest{ID: "par", Latitude: 48.9, Longitude: 2.3, URL: "https://127.0.0.1:1"}, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := h.acme.CreateApp(ctx, "web", ""); err != nil {
			t.Fatal(err)
		}
		doc := []byte("name: web\nregions: [fra, nyc, par]\ncommand: [web]\nports: [{port: 8080}]\nstrategy: {on_failure: explode}\n")
		_, err := h.acme.Deploy(ctx, "web", doc, "application/yaml", "")
		ae := mustStatus(t, err, 400)
		want := map[string]string{
			"regions[1]":          `region "nyc" is not registered`,
			"regions[2]":          `region "par" is not open (status provisioning)`,
			"strategy.on_failure": "",
		}
		if len(ae.Fields) != len(want) {
			t.Fatalf("fields = %+v, want %v", ae.Fields, want)
		}
		for _, f := range ae.Fields {
			msg, ok := want[f.Path]
			if !ok || (msg != "" && f.Message != msg) {
				t.Errorf("field %s: %q, want %q", f.Path, f.Message, msg)
			}
		}
		if !strings.Contains(ae.Error(), `regions[2]: region "par" is not open (status provisioning)`) {
			t.Errorf("error text %q does not name the closed region", ae.Error())
		}
		services, err := h.acme.ListServices(ctx, "web", api.ListOptions{})
		if err != nil || len(services.Items) != 0 {
			t.Fatalf("refused deploy stored %d services (err %v)", len(services.Items), err)
		}
		// A draining region is refused too; the open one is fine.
		draining := api.RegionDraining
		if _, err := h.admin.UpdateRegion(ctx, "par", api.UpdateRegionRequest{Status: &draining}); err != nil {
			t.Fatal(err)
		}
		_, err = h.acme.Deploy(ctx, "web", []byte("name: web\nregions: [par]\ncommand: [web]\n"), "application/yaml", "")
		ae = mustStatus(t, err, 400)
		if len(ae.Fields) != 1 || ae.Fields[0].Message != `region "par" is not open (status draining)` {
			t.Fatalf("draining region: %+v", ae.Fields)
		}
		d, err := h.acme.Deploy(ctx, "web", []byte("name: web\nregions: [fra]\ncommand: [web]\n"), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		// Cancel: a running deployment is canceled (nothing reached a
		// region, so it finishes at once); a finished one answers 409.
		c, err := h.acme.CancelDeployment(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.Status != api.StatusCanceled || c.Regional[0].Status != api.StatusCanceled || len(c.Events) < 2 {
			t.Fatalf("canceled deployment: %s, regional %s, events %+v", c.Status, c.Regional[0].Status, c.Events)
		}
		_, err = h.acme.CancelDeployment(ctx, d.ID)
		ae = mustStatus(t, err, 409)
		if !strings.Contains(ae.Message, "already canceled") {
			t.Fatalf("second cancel: %v", ae)
		}
		_, err = h.acme.CancelDeployment(ctx, "dep_nope")
		mustStatus(t, err, 404)
	})
}

func TestRegionRegistry(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		r, err := h.admin.CreateRegion(ctx, api.CreateRegionRequest{ID: "fra", Name: "Frankfurt", Latitude: 50.1, Longitude: 8.7, URL: "https://127.0.0.1:7801"}, "")
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != api.RegionProvisioning {
			t.Fatalf("new region status %s", r.Status)
		}
		_, err = h.admin.CreateRegion(ctx, api.CreateRegionRequest{ID: "fra", Latitude: 1, Longitude: 1, URL: "https://x"}, "")
		mustStatus(t, err, 409)
		_, err = h.admin.CreateRegion(ctx, api.CreateRegionRequest{ID: "was", Latitude: 120, Longitude: 1, URL: "ftp://x"}, "")
		ae := mustStatus(t, err, 400)
		if len(ae.Fields) != 2 {
			t.Fatalf("want latitude and url errors, got %+v", ae.Fields)
		}
		open := api.RegionOpen
		r, err = h.admin.UpdateRegion(ctx, "fra", api.UpdateRegionRequest{Status: &open})
		if err != nil || r.Status != api.RegionOpen || r.Name != "Frankfurt" {
			t.Fatalf("update: %+v, %v", r, err)
		}
		bogus := "closed"
		_, err = h.admin.UpdateRegion(ctx, "fra", api.UpdateRegionRequest{Status: &bogus})
		mustStatus(t, err, 400)
		_, err = h.admin.UpdateRegion(ctx, "nope", api.UpdateRegionRequest{Status: &open})
		mustStatus(t, err, 404)
		list, err := h.acme.ListRegions(ctx, api.ListOptions{})
		if err != nil || len(list.Items) != 1 || list.Items[0].Status != api.RegionOpen {
			t.Fatalf("org sees regions %+v, %v", list.Items, err)
		}
	})
}

func TestAppDeletion(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		h.openRegions("fra", "was", "sin")
		if _, err := h.acme.CreateApp(ctx, "hello", ""); err != nil {
			t.Fatal(err)
		}
		_, err := h.acme.CreateApp(ctx, "hello", "")
		mustStatus(t, err, 409)
		d, err := h.acme.Deploy(ctx, "hello", readExample(t), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		mustStatus(t, h.acme.DeleteApp(ctx, "hello"), 409)
		if err := h.acme.DeleteService(ctx, "hello", "hello"); err != nil {
			t.Fatal(err)
		}
		_, err = h.acme.GetDeployment(ctx, d.ID)
		mustStatus(t, err, 404)
		if err := h.acme.DeleteApp(ctx, "hello"); err != nil {
			t.Fatal(err)
		}
		_, err = h.acme.GetApp(ctx, "hello")
		mustStatus(t, err, 404)
	})
}
