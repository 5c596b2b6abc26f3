package global

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meridian-run/meridian/store/storetest"
	"github.com/meridian-run/meridian/testutil"
)

// FuzzCreateService sends arbitrary bodies and content types to the real
// create-service handler: it must never answer 5xx, and whatever it accepts
// must be readable back. Images are resolved through a transport that
// dials nothing (a fuzzed reference must never reach the network): they
// fail to resolve, which must be a 4xx too.
func FuzzCreateService(f *testing.F) {
	for _, seed := range []string{
		"name: web\nregions: [fra]\ncommand: [web]\n",
		`{"name":"web","regions":["fra","was"],"image":"r/web:1","scalings":[{"min":1,"max":2,"scopes":["region:was"]}]}`,
		"name: web\nregions: [fra]\ncommand: [web]\nenv: [{key: A, value: b, scopes: [\"region:fra\"]}, {key: A, value: c, scopes: [\"region:fra\"]}]\n",
		"{", "", "- a\n- b\n", "name: &a [*a]\n",
	} {
		f.Add([]byte(seed), "application/yaml")
		f.Add([]byte(seed), "application/json")
	}
	h := newHarness(f, storetest.Open(f, "sqlite"), func(c *Config) {
		c.Images.Transport = &http.Transport{DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			return nil, fmt.Errorf("the fuzz test dials nothing (%s)", addr)
		}}
	})
	h.openRegions("fra", "was")
	if _, err := h.acme.CreateApp(testutil.Context(f, time.Minute), "app", ""); err != nil {
		f.Fatal(err)
	}
	handler := h.srv.Handler()
	f.Fuzz(func(t *testing.T, body []byte, ct string) {
		req := httptest.NewRequest("POST", "/v1/apps/app/services", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+h.acme.Token)
		req.Header.Set("Content-Type", ct)
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("status %d for %q (%s): %s", rec.Code, body, ct, rec.Body)
		}
		if rec.Code == http.StatusCreated && !bytes.Contains(rec.Body.Bytes(), []byte(`"version"`)) {
			t.Fatalf("created without a version: %s", rec.Body)
		}
	})
}
