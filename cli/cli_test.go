package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/global"
	"github.com/meridian-run/meridian/store/storetest"
)

const adminToken = "cli-test-admin-token-0123456789"

// run runs the command line in-process and returns its exit code and
// output.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := Main(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func startGlobal(t *testing.T) string {
	t.Helper()
	key, _ := base64.StdEncoding.DecodeString(global.NewSecretKey())
	srv, err := global.Start(context.Background(), global.Config{
		Listen: "127.0.0.1:0", Store: storetest.Open(t, "sqlite"), AdminToken: adminToken, SecretKey: key,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.URL()
}

const example = "../examples/hello/meridian.yaml"

func TestValidate(t *testing.T) {
	code, out, _ := run(t, "validate", "-f", example)
	if code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("valid example: exit %d, %q", code, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("name: web\nregions: [fra]\ncommand: [web]\nscalings:\n  - {min: 1, max: 1}\n  - {min: 2, max: 2, scopes: [\"region:par\"]}\nports: [{port: 70000}]\n"), 0o644)
	code, _, errOut := run(t, "validate", "-f", bad)
	if code != 1 {
		t.Fatalf("invalid file: exit %d", code)
	}
	for _, want := range []string{`scalings[1].scopes[0]: region "par" is not in regions`, "ports[0].port:"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if code, _, _ := run(t, "validate"); code != 2 {
		t.Errorf("validate without -f: exit %d, want 2", code)
	}
	if code, _, _ := run(t, "validate", "-f", example, "--bogus"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	if code, _, _ := run(t, "validate", "-f", "/does/not/exist.yaml"); code != 1 {
		t.Errorf("missing file: exit %d, want 1", code)
	}
}

func TestRender(t *testing.T) {
	code, out, errOut := run(t, "render", "-f", example, "--region", "was")
	if code != 0 {
		t.Fatalf("render: exit %d: %s", code, errOut)
	}
	var rd map[string]any
	if err := json.Unmarshal([]byte(out), &rd); err != nil {
		t.Fatalf("render output is not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"region", "scaling", "instance_type", "env", "datacenters", "name", "ports", "health_checks"} {
		if _, ok := rd[k]; !ok {
			t.Errorf("rendered definition lacks %q", k)
		}
	}
	if rd["region"] != "was" || rd["scaling"].(map[string]any)["min"] != float64(3) {
		t.Errorf("was: region %v scaling %v", rd["region"], rd["scaling"])
	}
	code, out, _ = run(t, "render", "-f", example, "--region", "fra", "-o", "yaml")
	var y map[string]any
	if code != 0 || yaml.Unmarshal([]byte(out), &y) != nil || y["region"] != "fra" {
		t.Fatalf("render -o yaml: exit %d\n%s", code, out)
	}
	code, _, errOut = run(t, "render", "-f", example, "--region", "par")
	if code != 1 || !strings.Contains(errOut, `"par"`) {
		t.Fatalf("region not in definition: exit %d, %q", code, errOut)
	}
	if code, _, _ := run(t, "render", "-f", example); code != 2 {
		t.Errorf("render without --region: exit %d, want 2", code)
	}
	if code, _, _ := run(t, "render", "-f", example, "--region", "fra", "-o", "xml"); code != 2 {
		t.Errorf("-o xml: exit %d, want 2", code)
	}
}

func TestNewcomerFlow(t *testing.T) {
	apiURL := startGlobal(t)
	t.Setenv("MERIDIAN_API", apiURL)
	t.Setenv("MERIDIAN_TOKEN", "")
	admin := []string{"--token", adminToken}

	code, out, errOut := run(t, append([]string{"orgs", "create", "acme", "-o", "json"}, admin...)...)
	if code != 0 {
		t.Fatalf("orgs create: %d %s", code, errOut)
	}
	var org api.Organization
	if err := json.Unmarshal([]byte(out), &org); err != nil || org.Name != "acme" {
		t.Fatalf("orgs create output: %s", out)
	}
	code, out, errOut = run(t, append([]string{"tokens", "create", "--org", "acme", "-o", "json"}, admin...)...)
	var tok api.Token
	if code != 0 || json.Unmarshal([]byte(out), &tok) != nil || !strings.HasPrefix(tok.Value, "mrd_") {
		t.Fatalf("tokens create: %d %s %s", code, out, errOut)
	}
	t.Setenv("MERIDIAN_TOKEN", tok.Value)

	// Deploys name only open regions: register and open the example's.
	for _, r := range []string{"fra", "was", "sin"} {
		if code, _, errOut := run(t, append([]string{"regions", "add", r, "--url", "https://127.0.0.1:7801", "--lat", "1", "--lon", "2"}, admin...)...); code != 0 {
			t.Fatalf("regions add %s: %d %s", r, code, errOut)
		}
		if code, _, errOut := run(t, append([]string{"regions", "open", r}, admin...)...); code != 0 {
			t.Fatalf("regions open %s: %d %s", r, code, errOut)
		}
	}
	if code, _, errOut := run(t, "apps", "create", "hello"); code != 0 {
		t.Fatalf("apps create: %d %s", code, errOut)
	}
	code, out, errOut = run(t, "deploy", "-f", example, "--app", "hello")
	if code != 0 || !strings.Contains(out, "version 1") || !strings.Contains(out, "was") {
		t.Fatalf("deploy: %d\n%s\n%s", code, out, errOut)
	}
	// deploy creates a missing app, named after the service by default.
	other := filepath.Join(t.TempDir(), "api.json")
	os.WriteFile(other, []byte(`{"name":"api","regions":["fra"],"command":["api"]}`), 0o644)
	if code, _, errOut := run(t, "deploy", "-f", other); code != 0 {
		t.Fatalf("deploy json into a new app: %d %s", code, errOut)
	}

	code, out, _ = run(t, "apps", "ls", "-o", "json")
	var apps []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &apps) != nil || len(apps) != 2 {
		t.Fatalf("apps ls -o json: %d\n%s", code, out)
	}
	for _, a := range apps {
		if a["name"] == nil || a["host"] == nil {
			t.Fatalf("app lacks name or host: %v", a)
		}
	}
	code, out, _ = run(t, "services", "get", "hello", "--app", "hello", "-o", "json")
	var svc api.Service
	if code != 0 || json.Unmarshal([]byte(out), &svc) != nil || svc.LatestVersion != 1 {
		t.Fatalf("services get: %d\n%s", code, out)
	}
	code, out, _ = run(t, "deployments", "get", svc.LatestDeployment, "-o", "yaml")
	var dep map[string]any
	if code != 0 || yaml.Unmarshal([]byte(out), &dep) != nil || len(dep["regional_deployments"].([]any)) != 3 {
		t.Fatalf("deployments get -o yaml: %d\n%s", code, out)
	}
	if code, out, _ := run(t, "services", "get", "hello", "--app", "hello"); code != 0 || !strings.Contains(out, "REGION") {
		t.Fatalf("services get table: %d\n%s", code, out)
	}
	if code, out, _ := run(t, "deployments", "ls", "--app", "hello", "--service", "hello"); code != 0 || !strings.Contains(out, svc.LatestDeployment) {
		t.Fatalf("deployments ls: %d\n%s", code, out)
	}

	// Secrets and regions.
	if code, _, errOut := run(t, "secrets", "set", "db", "--value", "pw"); code != 0 {
		t.Fatalf("secrets set: %d %s", code, errOut)
	}
	if code, out, _ := run(t, "secrets", "ls"); code != 0 || !strings.Contains(out, "db") || strings.Contains(out, "pw") {
		t.Fatalf("secrets ls: %d\n%s", code, out)
	}
	if code, _, errOut := run(t, append([]string{"regions", "add", "par", "--url", "https://127.0.0.1:7801", "--lat", "48.9", "--lon", "2.4"}, admin...)...); code != 0 {
		t.Fatalf("regions add: %d %s", code, errOut)
	}
	if code, out, _ := run(t, append([]string{"regions", "update", "par", "--status", "open", "-o", "json"}, admin...)...); code != 0 || !strings.Contains(out, `"open"`) {
		t.Fatalf("regions update: %d %s", code, out)
	}
	if code, _, errOut := run(t, append([]string{"regions", "add", "par", "--url", "ftp://x"}, admin...)...); code != 1 || !strings.Contains(errOut, "url") {
		t.Fatalf("regions add with a bad url: %d %s", code, errOut)
	}
	if code, out, _ := run(t, "regions", "ls"); code != 0 || !strings.Contains(out, "fra") {
		t.Fatalf("regions ls: %d %s", code, out)
	}

	// User errors exit 1; usage errors 2.
	if code, _, errOut := run(t, "apps", "get", "nope"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("apps get nope: %d %s", code, errOut)
	}
	if code, _, _ := run(t, "orgs", "ls"); code != 1 {
		t.Fatalf("orgs ls with an org token: exit %d, want 1 (refused)", code)
	}
	if code, _, _ := run(t, "apps", "create"); code != 2 {
		t.Fatalf("apps create without a name: exit %d, want 2", code)
	}
	if code, _, _ := run(t, "nonsense"); code != 2 {
		t.Fatalf("unknown command: exit %d, want 2", code)
	}
	t.Setenv("MERIDIAN_TOKEN", "")
	if code, _, errOut := run(t, "apps", "ls"); code != 2 || !strings.Contains(errOut, "--token") {
		t.Fatalf("no token: exit %d %s", code, errOut)
	}
}
