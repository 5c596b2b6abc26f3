package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/testutil"
)

// TestGlobalIdempotencyTTLFlag: --idempotency-ttl is checked before
// anything is written, and reaches the server.
func TestGlobalIdempotencyTTLFlag(t *testing.T) {
	for _, v := range []string{"0", "-1h", "30s", "721h", "100000h"} {
		dir := filepath.Join(t.TempDir(), "state")
		code, _, errOut := run(t, "global", "--state-dir", dir, "--listen", "127.0.0.1:0", "--idempotency-ttl", v)
		if code != 2 || !strings.Contains(errOut, "--idempotency-ttl") || !strings.Contains(errOut, "between 1m and 720h") {
			t.Errorf("--idempotency-ttl %s: exit %d, %q; want 2 and the flag's range", v, code, errOut)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("--idempotency-ttl %s: the state dir was created before the flag was checked", v)
		}
	}

	apiURL, stop := runGlobal(t, "--state-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--log-level", "error", "--idempotency-ttl", "90m")
	resp, err := http.Get(apiURL + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct {
				Name, Description string
			}
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	desc := ""
	for _, p := range doc.Paths["/v1/apps"]["post"].Parameters {
		if p.Name == "Idempotency-Key" {
			desc = p.Description
		}
	}
	if !strings.Contains(desc, "for 1h30m;") {
		t.Errorf("the server's Idempotency-Key documentation does not say the TTL given: %q", desc)
	}
	stop()
}

// runGlobal runs `meridian global args...` in-process until the test ends
// (or stop is called, which checks it exits 0) and returns its API URL.
func runGlobal(t *testing.T, args ...string) (apiURL string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	var out, errb testutil.Buffer
	done := make(chan int, 1)
	go func() { done <- Main(ctx, append([]string{"global"}, args...), &out, &errb) }()
	urlRe := regexp.MustCompile(`API at (https?://\S+)`)
	testutil.Eventually(t, 30*time.Second, "meridian global serves", func() (bool, string) {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("meridian global exited %d: %s", code, errb.String())
		default:
		}
		m := urlRe.FindStringSubmatch(out.String())
		if m == nil {
			return false, out.String()
		}
		apiURL = m[1]
		return true, ""
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case code := <-done:
				if code != 0 {
					t.Errorf("meridian global exited %d on shutdown: %s", code, errb.String())
				}
			case <-time.After(30 * time.Second):
				t.Error("meridian global did not stop within 30s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return apiURL, stop
}
