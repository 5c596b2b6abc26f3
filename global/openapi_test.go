package global

import (
	"encoding/json"
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/store/storetest"
)

// TestOpenAPIDocumentHoldsAgainstRoutes fetches /v1/openapi.json and calls
// every operation it documents on the real server: the route must exist,
// answer a status the document lists, and a success body must match the
// documented schema (no undocumented fields, required ones present).
func TestOpenAPIDocumentHoldsAgainstRoutes(t *testing.T) {
	h := newHarness(t, storetest.Open(t, "sqlite"))
	ctx := testutil.Context(t, time.Minute)
	h.openRegions("fra", "was", "sin")
	if _, err := h.acme.CreateApp(ctx, "hello", ""); err != nil {
		t.Fatal(err)
	}
	d, err := h.acme.Deploy(ctx, "hello", readExample(t), "application/yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.acme.PutSecret(ctx, "db", "x"); err != nil {
		t.Fatal(err)
	}
	tok, err := h.acme.CreateToken(ctx, "spare", "")
	if err != nil {
		t.Fatal(err)
	}
	etok, err := h.admin.CreateEdgeToken(ctx, "spare-edge", "")
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]string{"org": "acme", "app": "hello", "service": "hello", "name": "db", "id": d.ID}

	status, body := raw(t, h, "GET", "/v1/openapi.json", "", "", nil)
	if status != 200 {
		t.Fatalf("openapi.json: %d", status)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc["openapi"] != "3.0.3" {
		t.Fatalf("openapi version %v", doc["openapi"])
	}
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	type op struct {
		method, path string
		spec         map[string]any
	}
	var ops []op
	for path, item := range doc["paths"].(map[string]any) {
		for method, o := range item.(map[string]any) {
			ops = append(ops, op{strings.ToUpper(method), path, o.(map[string]any)})
		}
	}
	if len(ops) != len(h.srv.routes()) {
		t.Fatalf("document has %d operations, server routes %d", len(ops), len(h.srv.routes()))
	}
	rank := map[string]int{"GET": 0, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 2}
	slices.SortFunc(ops, func(a, b op) int {
		if rank[a.method] != rank[b.method] {
			return rank[a.method] - rank[b.method]
		}
		return strings.Compare(a.path, b.path)
	})
	for _, o := range ops {
		path := o.path
		for k, v := range params {
			if strings.Contains(o.path, "/tokens/{id}") && k == "id" {
				v = tok.ID
			}
			if strings.Contains(o.path, "/regions/{id}") && k == "id" {
				v = "fra"
			}
			if strings.Contains(o.path, "/edge-tokens/{id}") && k == "id" {
				v = etok.ID
			}
			path = strings.ReplaceAll(path, "{"+k+"}", v)
		}
		token := h.acme.Token
		if strings.Contains(o.path, "organizations") || strings.HasPrefix(o.path, "/v1/edge-tokens") ||
			(o.path == "/v1/regions" && o.method == "POST") || (strings.HasPrefix(o.path, "/v1/regions/") && o.method != "GET") {
			token = testAdminToken
		}
		var reqBody []byte
		ct := ""
		if _, ok := o.spec["requestBody"]; ok {
			ct = "application/json"
			reqBody = []byte(`{}`)
		}
		status, body := raw(t, h, o.method, path, token, ct, reqBody)
		name := o.method + " " + o.path
		if status == 405 || strings.Contains(string(body), "no route for") {
			t.Errorf("%s: documented but not routed (%d %s)", name, status, body)
			continue
		}
		responses := o.spec["responses"].(map[string]any)
		resp, ok := responses[strconv.Itoa(status)].(map[string]any)
		if !ok {
			t.Errorf("%s: answered %d, not among documented %v: %s", name, status, keys(responses), body)
			continue
		}
		content, ok := resp["content"].(map[string]any)
		if !ok || len(body) == 0 {
			continue
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Errorf("%s: body is not JSON: %v", name, err)
			continue
		}
		schema := content["application/json"].(map[string]any)["schema"].(map[string]any)
		if err := checkSchema(v, schema, schemas, "$"); err != nil {
			t.Errorf("%s (%d): body does not match its schema: %v", name, status, err)
		}
	}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// checkSchema validates v against the subset of JSON Schema the document
// uses.
func checkSchema(v any, s map[string]any, defs map[string]any, at string) error {
	if ref, ok := s["$ref"].(string); ok {
		return checkSchema(v, defs[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any), defs, at)
	}
	if v == nil {
		return nil // null stands for an empty list or absent value
	}
	switch s["type"] {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want object, got %T", at, v)
		}
		props, _ := s["properties"].(map[string]any)
		if ap, ok := s["additionalProperties"].(map[string]any); ok {
			for k, e := range m {
				if err := checkSchema(e, ap, defs, at+"."+k); err != nil {
					return err
				}
			}
			return nil
		}
		for k, e := range m {
			ps, ok := props[k].(map[string]any)
			if !ok {
				if props != nil {
					return fmt.Errorf("%s: undocumented field %q", at, k)
				}
				continue
			}
			if err := checkSchema(e, ps, defs, at+"."+k); err != nil {
				return err
			}
		}
		req, _ := s["required"].([]any)
		for _, r := range req {
			if _, ok := m[r.(string)]; !ok {
				return fmt.Errorf("%s: required field %q missing", at, r)
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want array, got %T", at, v)
		}
		for i, e := range a {
			if err := checkSchema(e, s["items"].(map[string]any), defs, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			return fmt.Errorf("%s: want string, got %T", at, v)
		}
	case "integer", "number":
		if _, ok := v.(float64); !ok {
			return fmt.Errorf("%s: want number, got %T", at, v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want boolean, got %T", at, v)
		}
	}
	return nil
}
