package agent

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// TestImageInstances: a definition with an image runs as a container
// (the image's entrypoint and env, the platform's PORT and MERIDIAN_*
// variables, health checks on its port), next to a command-only service
// run by the process runtime; an image that cannot be pulled fails its
// instance with a reason naming the image, and the other services are
// untouched.
func TestImageInstances(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	hello := filepath.Join(t.TempDir(), "hello")
	if err := imagetest.BuildStatic("examples/hello", hello); err != nil {
		t.Fatal(err)
	}
	ref := reg.Push(t, "shop/hello:1", imagetest.Image(t,
		v1.Config{Entrypoint: []string{"/app/hello"}, Env: []string{"VERSION=from-image"}},
		imagetest.ProgramLayer(t, hello, "app/hello")))

	r := newRegion(t, "fra")
	var ev events
	a := r.startAgent(t, "m1", "dc1", func(c *Config) { c.OnInstance = ev.hook("m1") })
	rt, ok := a.Driver().(*driver.Runtimes)
	if !ok || rt.Images == nil {
		t.Fatalf("the agent's driver %T runs no images: %v (runc and overlayfs are needed: apt-get install -y runc)", a.Driver(), rt.ImagesErr)
	}

	cmdKey := r.apply(t, "cmd", 1, "dep-cmd", helloDef("fra", 1), nil)
	def := helloDef("fra", 1)
	def.Command, def.Image = nil, ref
	imgKey := r.apply(t, "img", 1, "dep-img", def, nil)
	var img regionapi.InstanceStatus
	for _, key := range []string{cmdKey, imgKey} {
		ss := r.waitService(t, key, 60*time.Second, key+" healthy", func(ss regionapi.ServiceStatus) bool { return len(healthyInstances(ss)) == 1 })
		if key == imgKey {
			img = healthyInstances(ss)[0]
		}
	}
	ids, _ := rt.Images.List(testutil.Context(t, 5*time.Second))
	if !slices.Equal(ids, []string{img.ID}) {
		t.Fatalf("the image runtime has %v, want the image's instance %s only", ids, img.ID)
	}
	ans := getJSON(t, img)
	if ans["instance"] != img.ID || ans["version"] != "from-image" || ans["region"] != "fra" || ans["service"] != "img" {
		t.Errorf("the container answered %v", ans)
	}

	bad := reg.Host + "/shop/missing:1"
	badDef := helloDef("fra", 1)
	badDef.Command, badDef.Image = nil, bad
	limit := 1
	badDef.HealthChecks[0].RestartLimit = &limit
	r.apply(t, "bad", 1, "dep-bad", badDef, nil)
	testutil.Eventually(t, 60*time.Second, "the bad image's instance fails", func() (bool, string) {
		_, ok := ev.firstFailed()
		return ok, ev.String()
	})
	e, _ := ev.firstFailed()
	t.Logf("failure reason: %s", e.Message)
	if !strings.Contains(e.Message, "image "+bad) || !strings.Contains(e.Message, "not found") || strings.Contains(e.Message, "restart limit") {
		t.Errorf("failure reason %q: want the image and why", e.Message)
	}
	ss := r.waitService(t, imgKey, 10*time.Second, "img still healthy", func(ss regionapi.ServiceStatus) bool { return len(healthyInstances(ss)) == 1 })
	if got := healthyInstances(ss)[0]; got.ID != img.ID || got.Restarts != 0 {
		t.Errorf("the image service was disturbed: %+v", got)
	}
}

// getJSON asks an instance of examples/hello who it is.
func getJSON(t *testing.T, is regionapi.InstanceStatus) map[string]any {
	t.Helper()
	ctx := testutil.Context(t, 5*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+net.JoinHostPort(is.Address, strconv.Itoa(is.Ports["8080"]))+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET instance %s: %v", is.ID, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("GET instance %s: %v: %s", is.ID, err, b)
	}
	return m
}

// TestBuildSpecImage: for an image the spec carries the image, the
// definition's command and args as overrides, the instance type's CPU and
// memory, and no PATH of the agent's (the image has its own).
func TestBuildSpecImage(t *testing.T) {
	resolv := "nameserver 127.0.9.1\n"
	cfg := &Config{Region: "fra", Datacenter: "fra1", Name: "m1", Address: "127.0.0.1", ResolvConf: &resolv, InstancePath: "/agent/bin"}
	as := regionapi.Assignment{ID: "fra-r1-0", Service: "acme.shop.web", Org: "acme", App: "shop", ServiceName: "web",
		DeploymentID: "dep-1", Version: 1, Definition: api.RegionalDefinition{
			Image: "registry.example/web@sha256:" + strings.Repeat("a", 64), Args: []string{"--fast"},
			Ports:        []api.Port{{Port: 8080}},
			InstanceType: api.InstanceType{Name: "small", MilliCPU: 250, MemoryMB: 128},
		}}
	spec, err := buildSpec(cfg, as, map[int]int{8080: 20001}, true)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Image != as.Definition.Image || spec.Command != nil || !slices.Equal(spec.Args, []string{"--fast"}) ||
		spec.MilliCPU != 250 || spec.MemoryMB != 128 || spec.ResolvConf != resolv {
		t.Errorf("spec %+v", spec)
	}
	for _, e := range spec.Env {
		if strings.HasPrefix(e, "PATH=") {
			t.Errorf("the agent's %s was given to an image", e)
		}
	}
	if !slices.Contains(spec.Env, "PORT=20001") || !slices.Contains(spec.Env, "MERIDIAN_INSTANCE=fra-r1-0") {
		t.Errorf("env %q lacks the platform's variables", spec.Env)
	}
	// A command-only definition keeps the agent's PATH on the same agent.
	as.Definition.Image, as.Definition.Command = "", []string{"server"}
	spec, err = buildSpec(cfg, as, map[int]int{8080: 20001}, true)
	if err != nil || !slices.Contains(spec.Env, "PATH=/agent/bin") {
		t.Errorf("command spec %+v, %v", spec, err)
	}
}
