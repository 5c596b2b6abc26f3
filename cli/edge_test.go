package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/testutil"
)

// TestEdgeCommands: `meridian pki edge` issues an edge certificate;
// `meridian edge` refuses bad flags with exit 2, runs against a real
// global with an edge token (and lists the region registry with it),
// answers unknown hosts with a 404, and stops cleanly.
func TestEdgeCommands(t *testing.T) {
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	if code, _, errOut := run(t, "pki", "init", "--dir", pkiDir); code != 0 {
		t.Fatalf("pki init: %d %s", code, errOut)
	}
	if code, _, _ := run(t, "pki", "edge", "--dir", pkiDir); code != 2 {
		t.Fatalf("pki edge without --location: exit %d, want 2", code)
	}
	code, out, errOut := run(t, "pki", "edge", "--dir", pkiDir, "--location", "par")
	if code != 0 || !strings.Contains(out, "edge certificate for par") {
		t.Fatalf("pki edge: %d %s %s", code, out, errOut)
	}
	edgeDir := filepath.Join(pkiDir, "edges", "par")
	for _, f := range []string{"edge.pem", "edge-key.pem", "root.pem"} {
		if _, err := os.Stat(filepath.Join(edgeDir, f)); err != nil {
			t.Fatalf("pki edge did not write %s: %v", f, err)
		}
	}

	api := startGlobal(t)
	// The edge holds an edge token, which may only read the region
	// registry; one region is registered and open for it to find.
	code, out, errOut = run(t, "edge-tokens", "create", "edge-par", "-o", "json", "--api", api, "--token", adminToken)
	var etok struct {
		Value string `json:"token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &etok) != nil || etok.Value == "" {
		t.Fatalf("edge-tokens create: %d %s %s", code, out, errOut)
	}
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(etok.Value+"\n"), 0o600)
	for _, a := range [][]string{
		{"regions", "add", "fra", "--url", "https://127.0.0.1:1", "--lat", "50.1", "--lon", "8.7"},
		{"regions", "open", "fra"},
	} {
		if code, _, errOut := run(t, append(a, "--api", api, "--token", adminToken)...); code != 0 {
			t.Fatalf("%v: %d %s", a, code, errOut)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"edge"}, "--location"},
		{[]string{"edge", "--location", "par", "--global", api}, "--global-token-file"},
		{[]string{"edge", "--location", "par", "--global", api, "--global-token-file", tokenFile}, "--pki-dir"},
		{[]string{"edge", "--location", "par", "--region", "fra"}, "--region"},
		{[]string{"edge", "--location", "par", "--tls-listen", "127.0.0.1:0"}, "--tls-listen"},
		{[]string{"edge", "--location", "par", "--tls-cert", "x.pem"}, "--tls-key"},
	} {
		code, _, errOut := run(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d %q, want 2 naming %s", tc.args, code, errOut, tc.want)
		}
	}

	listen := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		var out, errb bytes.Buffer
		done <- Main(ctx, []string{"edge", "--location", "par", "--lat", "48.86", "--lon", "2.35", "--listen", listen,
			"--admin-listen", admin, "--pki-dir", edgeDir, "--global", api, "--global-token-file", tokenFile,
			"--state-dir", filepath.Join(dir, "edge"), "--log-level", "warn"}, &out, &errb)
	}()
	testutil.Eventually(t, 10*time.Second, "edge serving", func() (bool, string) {
		resp, err := http.Get("http://" + admin + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	testutil.Eventually(t, 10*time.Second, "the edge listing fra with its edge token", func() (bool, string) {
		resp, err := http.Get("http://" + admin + "/v1/state")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var st struct {
			Regions []struct {
				ID string `json:"id"`
			} `json:"regions"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return false, err.Error()
		}
		return len(st.Regions) == 1 && st.Regions[0].ID == "fra", fmt.Sprintf("regions %+v", st.Regions)
	})
	req, _ := http.NewRequest("GET", "http://"+listen+"/", nil)
	req.Host = "nope-demo.meridian.localhost"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || resp.Header.Get("X-Meridian-Error") != "unknown-host" {
		t.Fatalf("unknown host: %d %s", resp.StatusCode, body)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("edge exited %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("edge did not stop")
	}
}

// TestParseRegionFlag: ID=URL@LAT,LON.
func TestParseRegionFlag(t *testing.T) {
	r, err := parseRegionFlag("fra=https://127.0.0.1:7800@50.11,8.68")
	if err != nil || r.ID != "fra" || r.URL != "https://127.0.0.1:7800" || r.Latitude != 50.11 || r.Longitude != 8.68 {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{"fra", "=https://x@1,2", "fra=https://x", "fra=https://x@1", "fra=https://x@a,b"} {
		if _, err := parseRegionFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
