package agent

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

var (
	callerOnce sync.Once
	callerPath string
	callerErr  error
	callerDir  string
)

// buildCaller builds examples/caller once for the package's tests.
func buildCaller(t *testing.T) string {
	t.Helper()
	callerOnce.Do(func() {
		callerDir = filepath.Dir(helloPath)
		callerPath = filepath.Join(callerDir, "caller")
		out, err := exec.Command("go", "build", "-o", callerPath, "github.com/meridian-run/meridian/examples/caller").CombinedOutput()
		if err != nil {
			callerErr = err
			callerPath = string(out)
		}
	})
	if callerErr != nil {
		t.Fatalf("building examples/caller: %v\n%s", callerErr, callerPath)
	}
	return callerPath
}

// callerAnswer is what examples/caller answers on /call.
type callerAnswer struct {
	OK       bool            `json:"ok"`
	Attempts int             `json:"attempts"`
	Answer   json.RawMessage `json:"answer"`
	Errors   []string        `json:"errors"`
}

// askCaller has a caller instance call target through the mesh.
func askCaller(t *testing.T, is regionapi.InstanceStatus, path string) []byte {
	t.Helper()
	ctx := testutil.Context(t, 15*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+net.JoinHostPort(is.Address, strconv.Itoa(is.Ports["8080"]))+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s of %s: %v", path, is.ID, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

// TestMeshThroughARealRegion runs the mesh end to end inside one region:
// agents report their node proxies in heartbeats, get workload
// certificates from the region, and a caller instance on one machine
// reaches a hello instance on the other by name with its system resolver
// (resolv.conf pointing at its agent's DNS server on port 53), over mutual
// TLS between the two node proxies.
func TestMeshThroughARealRegion(t *testing.T) {
	testutil.Slow(t)
	caller := buildCaller(t)
	r := newRegion(t, "fra")
	withMesh := func(c *Config) { c.Mesh = &MeshConfig{Net: nextMeshNet(), ProbeInterval: time.Second} }
	r.startAgent(t, "fra1-a", "fra1", withMesh)
	b := r.startAgent(t, "fra2-a", "fra2", withMesh)
	if b.MeshPort() == 0 {
		t.Fatal("no mesh port")
	}

	defB := helloDef("fra", 1)
	defB.Name, defB.Datacenters = "b", []string{"fra2"}
	keyB := r.apply(t, "b", 1, "dep-b", defB, nil)
	defA := helloDef("fra", 1)
	defA.Name, defA.Command, defA.Datacenters = "a", []string{caller}, []string{"fra1"}
	keyA := r.apply(t, "a", 1, "dep-a", defA, nil)
	healthy := func(ss regionapi.ServiceStatus) bool { return len(healthyInstances(ss)) == 1 }
	insB := healthyInstances(r.waitService(t, keyB, 30*time.Second, "b healthy", healthy))[0]
	insA := healthyInstances(r.waitService(t, keyA, 30*time.Second, "a healthy", healthy))[0]

	var got helloAnswer
	testutil.Eventually(t, 20*time.Second, "a reaches b by name", func() (bool, string) {
		body := askCaller(t, insA, "/call?url="+url.QueryEscape("http://b.shop.internal:8080/"))
		var ans callerAnswer
		if json.Unmarshal(body, &ans) != nil || !ans.OK {
			return false, string(body)
		}
		json.Unmarshal(ans.Answer, &got)
		return true, ""
	})
	if got.Instance != insB.ID || got.Machine != "fra2-a" {
		t.Fatalf("b.shop.internal answered by %+v, want instance %s on fra2-a", got, insB.ID)
	}
	// Names that do not exist fail fast, with the system resolver.
	body := askCaller(t, insA, "/resolve?name=nope.shop.internal")
	if !strings.Contains(string(body), "no such host") {
		t.Fatalf("resolving nope.shop.internal: %s", body)
	}
	// The region's feed carries the node proxy of b's machine.
	var feed regionapi.Feed
	ctx := testutil.Context(t, 10*time.Second)
	errDone := io.EOF
	r.global.Feed(ctx, true, func(f regionapi.Feed) error { feed = f; return errDone })
	found := false
	for _, s := range feed.Services {
		for _, ep := range s.Endpoints {
			found = found || (ep.Instance == insB.ID && ep.MeshPort == b.MeshPort())
		}
	}
	if !found {
		t.Fatalf("the feed lacks b's mesh port %d: %+v", b.MeshPort(), feed.Services)
	}
}
