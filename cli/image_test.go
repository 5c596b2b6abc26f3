package cli

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/testutil"
)

// setupOrg creates organization acme with a token, registers and opens
// regions, and points the CLI at them through the environment.
func setupOrg(t *testing.T, apiURL string, regions ...string) {
	t.Helper()
	t.Setenv("MERIDIAN_API", apiURL)
	t.Setenv("MERIDIAN_TOKEN", adminToken)
	if code, _, errOut := run(t, "orgs", "create", "acme"); code != 0 {
		t.Fatalf("orgs create: %d %s", code, errOut)
	}
	code, out, errOut := run(t, "tokens", "create", "--org", "acme", "-o", "json")
	var tok api.Token
	if code != 0 || json.Unmarshal([]byte(out), &tok) != nil {
		t.Fatalf("tokens create: %d %s %s", code, out, errOut)
	}
	for _, r := range regions {
		if code, _, errOut := run(t, "regions", "add", r, "--url", "https://127.0.0.1:7801", "--lat", "1", "--lon", "2"); code != 0 {
			t.Fatalf("regions add %s: %d %s", r, code, errOut)
		}
		if code, _, errOut := run(t, "regions", "open", r); code != 0 {
			t.Fatalf("regions open %s: %d %s", r, code, errOut)
		}
	}
	t.Setenv("MERIDIAN_TOKEN", tok.Value)
}

// TestDeployShowsImageAndDigest: deploying an image prints the tag and the
// digest the regions run; `deployments get` and `services get` show both,
// in tables and in JSON; an unknown tag exits 1 naming the image field.
func TestDeployShowsImageAndDigest(t *testing.T) {
	testutil.Slow(t)
	setupOrg(t, startGlobal(t), "fra", "was")
	reg := imagetest.StartRegistry(t)
	img := imagetest.Image(t, v1.Config{Entrypoint: []string{"/web"}}, imagetest.Layer(t, imagetest.File{Name: "web", Body: "x", Mode: 0o755}))
	reg.Push(t, "demo/web:1.4", img)
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	digest, ref := h.String(), reg.Host+"/demo/web:1.4"
	file := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(file, []byte("name: web\nregions: [fra, was]\nimage: "+ref+"\nports: [{port: 8080}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "deploy", "-f", file)
	if code != 0 || !strings.Contains(out, "image: "+ref+"\n") || !strings.Contains(out, "image digest: "+digest+"\n") {
		t.Fatalf("deploy: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run(t, "services", "get", "web", "--app", "web", "-o", "json")
	var svc api.Service
	if code != 0 || json.Unmarshal([]byte(out), &svc) != nil || svc.Image != ref || svc.ImageDigest != digest {
		t.Fatalf("services get -o json: exit %d\n%s", code, out)
	}
	if code, out, _ := run(t, "services", "get", "web", "--app", "web"); code != 0 || !strings.Contains(out, "image digest: "+digest) {
		t.Fatalf("services get: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "deployments", "get", svc.LatestDeployment, "-o", "json")
	var d api.Deployment
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d.Image != ref || d.ImageDigest != digest || d.Regional[1].Definition.ImageDigest != digest {
		t.Fatalf("deployments get -o json: exit %d\n%s", code, out)
	}
	if code, out, _ := run(t, "deployments", "get", svc.LatestDeployment); code != 0 || !strings.Contains(out, "image: "+ref) || !strings.Contains(out, "image digest: "+digest) {
		t.Fatalf("deployments get: exit %d\n%s", code, out)
	}

	if err := os.WriteFile(file, []byte("name: web\nregions: [fra]\nimage: "+reg.Host+"/demo/web:9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = run(t, "deploy", "-f", file)
	if code != 1 || !strings.Contains(errOut, "image:") || !strings.Contains(errOut, "image not found at registry "+reg.Host) {
		t.Fatalf("deploy of an unknown tag: exit %d, %q", code, errOut)
	}
}

// TestGlobalRegistryFlags: --insecure-registry and --registry-timeout are
// checked before anything is written, and the timeout reaches the server.
func TestGlobalRegistryFlags(t *testing.T) {
	for _, bad := range [][]string{
		{"--insecure-registry", "registry.lan/team"},
		{"--insecure-registry", "http://registry.lan"},
		{"--registry-timeout", "0s"},
	} {
		dir := filepath.Join(t.TempDir(), "state")
		code, _, errOut := run(t, append([]string{"global", "--state-dir", dir, "--listen", "127.0.0.1:0"}, bad...)...)
		if code != 2 || !strings.Contains(errOut, bad[0]) {
			t.Errorf("%v: exit %d, %q; want 2 naming the flag", bad, code, errOut)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%v: the state dir was created before the flag was checked", bad)
		}
	}

	// A registry that accepts connections and never answers: the deploy
	// fails within --registry-timeout.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	apiURL, stop := runGlobal(t, "--state-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--log-level", "error",
		"--admin-token", adminToken, "--registry-timeout", "400ms", "--insecure-registry", "registry.lan:5000")
	defer stop()
	setupOrg(t, apiURL, "fra")
	file := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(file, []byte("name: web\nregions: [fra]\nimage: "+ln.Addr().String()+"/web:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, "deploy", "-f", file)
	if code != 1 || !strings.Contains(errOut, "did not answer within 400ms") {
		t.Fatalf("deploy with a silent registry: exit %d, %q", code, errOut)
	}
}

// TestDevRegistryPlaceholder: ${MERIDIAN_DEV_REGISTRY} in a definition
// becomes the registry of the running `meridian dev` (its dev.json) or of
// $MERIDIAN_DEV_REGISTRY; with neither, the CLI says what to do.
func TestDevRegistryPlaceholder(t *testing.T) {
	const file = "../examples/hello-image/meridian.yaml"
	stateDir := t.TempDir()
	t.Setenv("MERIDIAN_STATE_DIR", stateDir)
	t.Setenv("MERIDIAN_DEV_REGISTRY", "")
	code, _, errOut := run(t, "validate", "-f", file)
	if code != 1 || !strings.Contains(errOut, "${MERIDIAN_DEV_REGISTRY} names the registry of a running `meridian dev`") {
		t.Fatalf("no registry known: exit %d, %q", code, errOut)
	}
	if err := os.WriteFile(filepath.Join(stateDir, "dev.json"), []byte(`{"api": "http://127.0.0.1:1", "registry": "127.0.0.1:5999", "components": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "render", "-f", file, "--region", "fra")
	if code != 0 || !strings.Contains(out, `"image": "127.0.0.1:5999/demo/hello:1"`) {
		t.Fatalf("render with dev.json's registry: exit %d\n%s%s", code, out, errOut)
	}
	t.Setenv("MERIDIAN_DEV_REGISTRY", "127.0.0.1:6001")
	code, out, errOut = run(t, "render", "-f", file, "--region", "fra")
	if code != 0 || !strings.Contains(out, `"image": "127.0.0.1:6001/demo/hello:1"`) {
		t.Fatalf("render with $MERIDIAN_DEV_REGISTRY: exit %d\n%s%s", code, out, errOut)
	}
}
