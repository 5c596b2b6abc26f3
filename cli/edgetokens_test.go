package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
)

// TestEdgeTokensCommands: `meridian edge-tokens create|ls|rm` with the
// admin token against a real global; the token reads the region registry
// and nothing else; refusals exit 1, usage errors 2.
func TestEdgeTokensCommands(t *testing.T) {
	t.Setenv("MERIDIAN_API", startGlobal(t))
	t.Setenv("MERIDIAN_TOKEN", "")
	t.Setenv("MERIDIAN_ADMIN_TOKEN", adminToken)

	code, out, errOut := run(t, "edge-tokens", "create", "edge-par", "-o", "json")
	var par api.EdgeToken
	if code != 0 || json.Unmarshal([]byte(out), &par) != nil || !strings.HasPrefix(par.Value, "mre_") || par.Name != "edge-par" || par.ID == "" {
		t.Fatalf("edge-tokens create -o json: %d %s %s", code, out, errOut)
	}
	code, out, errOut = run(t, "edge-tokens", "create", "edge-nyc")
	if code != 0 || !strings.Contains(out, "shown only once") || !strings.Contains(out, "mre_") {
		t.Fatalf("edge-tokens create: %d %s %s", code, out, errOut)
	}

	code, out, _ = run(t, "edge-tokens", "ls")
	if code != 0 || !strings.Contains(out, "ID") || !strings.Contains(out, "edge-par") || !strings.Contains(out, "edge-nyc") || strings.Contains(out, "mre_") {
		t.Fatalf("edge-tokens ls: %d\n%s", code, out)
	}
	code, out, _ = run(t, "edge-tokens", "ls", "-o", "json")
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[0]["name"] != "edge-nyc" {
		t.Fatalf("edge-tokens ls -o json: %d\n%s", code, out)
	}
	for _, e := range list {
		if _, ok := e["token"]; ok {
			t.Fatalf("edge-tokens ls shows a value: %v", e)
		}
	}

	// The edge token reads the region registry, and nothing else.
	if code, _, errOut := run(t, "regions", "add", "fra", "--url", "https://127.0.0.1:7801", "--lat", "50.1", "--lon", "8.7", "--token", adminToken); code != 0 {
		t.Fatalf("regions add: %d %s", code, errOut)
	}
	if code, out, errOut := run(t, "regions", "ls", "--token", par.Value); code != 0 || !strings.Contains(out, "fra") {
		t.Fatalf("regions ls with the edge token: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := run(t, "regions", "add", "was", "--url", "https://127.0.0.1:7802", "--token", par.Value); code != 1 || !strings.Contains(errOut, "an edge token may only read the region registry") {
		t.Fatalf("regions add with the edge token: exit %d %s, want 1 and the reason", code, errOut)
	}
	if code, _, errOut := run(t, "edge-tokens", "create", "sneaky", "--token", par.Value); code != 1 || !strings.Contains(errOut, "edge token") {
		t.Fatalf("edge-tokens create with the edge token: exit %d %s", code, errOut)
	}

	// An organization's token is refused.
	if code, _, errOut := run(t, "orgs", "create", "acme"); code != 0 {
		t.Fatalf("orgs create: %d %s", code, errOut)
	}
	code, out, errOut = run(t, "tokens", "create", "--org", "acme", "-o", "json")
	var tok api.Token
	if code != 0 || json.Unmarshal([]byte(out), &tok) != nil {
		t.Fatalf("tokens create: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := run(t, "edge-tokens", "create", "mine", "--token", tok.Value); code != 1 || !strings.Contains(errOut, "admin token") {
		t.Fatalf("edge-tokens create with an organization token: exit %d %s", code, errOut)
	}

	// Refusals exit 1 with the API's reason; usage errors exit 2.
	if code, _, errOut := run(t, "edge-tokens", "create", "edge-par"); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("duplicate name: exit %d %s", code, errOut)
	}
	if code, _, errOut := run(t, "edge-tokens", "create", "Edge_Par"); code != 1 || !strings.Contains(errOut, "name:") {
		t.Fatalf("invalid name: exit %d %s", code, errOut)
	}
	for _, a := range [][]string{{"edge-tokens"}, {"edge-tokens", "create"}, {"edge-tokens", "create", "a", "b"}, {"edge-tokens", "rm"}, {"edge-tokens", "ls", "x"}} {
		if code, _, _ := run(t, a...); code != 2 {
			t.Errorf("%v: exit %d, want 2", a, code)
		}
	}

	// Revoke: the token is refused from then on.
	if code, out, errOut := run(t, "edge-tokens", "rm", par.ID); code != 0 || out != "" {
		t.Fatalf("edge-tokens rm: %d %q %s", code, out, errOut)
	}
	if code, _, errOut := run(t, "edge-tokens", "rm", par.ID); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("edge-tokens rm twice: exit %d %s", code, errOut)
	}
	if code, _, errOut := run(t, "regions", "ls", "--token", par.Value); code != 1 || !strings.Contains(errOut, "invalid bearer token") {
		t.Fatalf("regions ls with a revoked edge token: exit %d %s", code, errOut)
	}
	if code, out, _ := run(t, "edge-tokens", "ls"); code != 0 || strings.Contains(out, "edge-par") || !strings.Contains(out, "edge-nyc") {
		t.Fatalf("edge-tokens ls after rm: %d\n%s", code, out)
	}
}
