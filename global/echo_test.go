package global

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/store/storetest"
)

// TestErrorsEchoValuesOnceAndShort: a bad value of any size is echoed at
// most once in the error answer, cut short; the field is still named.
func TestErrorsEchoValuesOnceAndShort(t *testing.T) {
	h := newHarness(t, storetest.Open(t, "sqlite"))
	big := strings.Repeat("x", 1<<20-64)
	for _, tc := range []struct {
		name, method, path, token, ct, body, field string
	}{
		{"org name", "POST", "/v1/organizations", testAdminToken, "application/json", `{"name":"` + big + `"}`, "name"},
		{"unknown field", "POST", "/v1/organizations", testAdminToken, "application/json", `{"` + big + `":1}`, definition.Truncate(big)},
		{"wrong type", "POST", "/v1/organizations", testAdminToken, "application/json", `{"name":1` + strings.Repeat("0", 1<<20-64) + `}`, "name"},
		{"app name", "POST", "/v1/apps", h.acme.Token, "application/json", `{"name":"` + big + `"}`, "name"},
		{"secret name", "PUT", "/v1/secrets/" + strings.Repeat("%21", 20000), h.acme.Token, "application/json", `{"value":"v"}`, "name"},
		{"region url", "POST", "/v1/regions", testAdminToken, "application/json", `{"id":"fra","latitude":1,"longitude":1,"url":"` + big + `"}`, "url"},
		{"app path", "GET", "/v1/apps/" + strings.Repeat("x", 60000), h.acme.Token, "", "", ""},
		{"content type", "POST", "/v1/apps", h.acme.Token, "text/" + strings.Repeat("x", 60000), `{"name":"a"}`, ""},
	} {
		status, body := raw(t, h, tc.method, tc.path, tc.token, tc.ct, []byte(tc.body))
		if status < 400 || status >= 500 {
			t.Errorf("%s: status %d, want 4xx", tc.name, status)
		}
		if len(body) > 1024 {
			t.Errorf("%s: a %d-byte error answer: %.200s…", tc.name, len(body), body)
		}
		if n := strings.Count(string(body), strings.Repeat("x", 30)); n > 1 {
			t.Errorf("%s: the value is echoed %d times: %s", tc.name, n, body)
		}
		var e api.Error
		if err := json.Unmarshal(body, &e); err != nil {
			t.Errorf("%s: %v: %s", tc.name, err, body)
			continue
		}
		if tc.field != "" && (len(e.Fields) != 1 || e.Fields[0].Path != tc.field) {
			t.Errorf("%s: fields %+v, want %q named", tc.name, e.Fields, tc.field)
		}
	}
}

// TestNamesFitTheirPublicHost: an app whose public host label
// <app>-<org> would pass DNS's 63 characters is refused naming the field
// and the most it may have; so is an organization name over
// definition.MaxOrgNameLen.
func TestNamesFitTheirPublicHost(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		// acme: 4 characters, so apps have at most 58.
		status, body := raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/json", []byte(`{"name":"`+strings.Repeat("a", 59)+`"}`))
		var e api.Error
		json.Unmarshal(body, &e)
		if status != http.StatusBadRequest || len(e.Fields) != 1 || e.Fields[0].Path != "name" || !strings.Contains(e.Fields[0].Message, "at most 58") {
			t.Fatalf("59-character app in acme: %d %s; want 400 naming name and 58", status, body)
		}
		status, body = raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/json", []byte(`{"name":"`+strings.Repeat("a", 63)+`"}`))
		if status != http.StatusBadRequest {
			t.Fatalf("63-character app: %d %s", status, body)
		}
		app, err := h.acme.CreateApp(t.Context(), strings.Repeat("a", 58), "")
		if err != nil {
			t.Fatal(err)
		}
		if label, _, _ := strings.Cut(app.Host, "."); len(label) != 63 {
			t.Fatalf("58-character app's host %q: first label of %d characters, want 63", app.Host, len(label))
		}
		status, body = raw(t, h, "POST", "/v1/organizations", testAdminToken, "application/json", []byte(`{"name":"`+strings.Repeat("o", definition.MaxOrgNameLen+1)+`"}`))
		json.Unmarshal(body, &e)
		if status != http.StatusBadRequest || len(e.Fields) != 1 || e.Fields[0].Path != "name" {
			t.Fatalf("%d-character organization: %d %s", definition.MaxOrgNameLen+1, status, body)
		}
	})
}

// TestFormContentTypeIsExplained: curl -d without -H sends a form's
// Content-Type; the 415 says which header to send.
func TestFormContentTypeIsExplained(t *testing.T) {
	h := newHarness(t, storetest.Open(t, "sqlite"))
	status, body := raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/x-www-form-urlencoded", []byte(`{"name":"web"}`))
	if status != http.StatusUnsupportedMediaType || !strings.Contains(string(body), "Content-Type: application/json") {
		t.Fatalf("form content type: %d %s; want 415 naming the header to send", status, body)
	}
	if _, err := h.acme.GetApp(t.Context(), "web"); err == nil {
		t.Fatal("the app was created from a refused request")
	}
}
