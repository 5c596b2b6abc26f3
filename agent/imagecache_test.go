package agent

import (
	"crypto/rand"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/linkproxy"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// helloStatic is examples/hello built static, for images.
var helloStatic = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "meridian-hello-static-")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "hello")
	return p, imagetest.BuildStatic("examples/hello", p)
})

// helloImage is examples/hello as an image answering version, with a
// layer of pad random bytes under it (0: none).
func helloImage(t *testing.T, version string, pad int) v1.Image {
	t.Helper()
	hello, err := helloStatic()
	if err != nil {
		t.Fatal(err)
	}
	var layers []v1.Layer
	if pad > 0 {
		b := make([]byte, pad)
		rand.Read(b)
		layers = append(layers, imagetest.Layer(t, imagetest.File{Name: "pad/" + version + ".bin", Body: string(b)}))
	}
	layers = append(layers, imagetest.ProgramLayer(t, hello, "app/hello"))
	return imagetest.Image(t, v1.Config{Entrypoint: []string{"/app/hello"}, Env: []string{"VERSION=" + version}}, layers...)
}

// imageDef is the demo app from an image pinned at digest.
func imageDef(regionName string, count int, ref, digest string) api.RegionalDefinition {
	def := helloDef(regionName, count)
	def.Command, def.Image, def.ImageDigest = nil, ref, digest
	return def
}

func imageDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// requireImages fails the test when the agent cannot run images.
func requireImages(t *testing.T, a *testAgent) {
	t.Helper()
	if rt, ok := a.Driver().(*driver.Runtimes); !ok || rt.Images == nil {
		t.Fatalf("the agent's driver %T runs no images (runc and overlayfs are needed: apt-get install -y runc)", a.Driver())
	}
}

// TestImagesPulledOncePerRegion: three real agents (runc containers) run
// the same image through their region's cache: every blob is fetched from
// the upstream registry once. With the upstream registry stopped, a
// killed machine's instance is replaced on another machine from the
// region's cache; a tag moved after the deploy changes neither restarted
// nor replacement instances (they run the deployment's digest).
func TestImagesPulledOncePerRegion(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	up := imagetest.StartProxy(t, reg.Host)
	v1img := helloImage(t, "v1", 256<<10)
	reg.Push(t, "shop/web:live", v1img)
	digest := imageDigest(t, v1img)

	r := newRegion(t, "fra")
	agents := map[string]*testAgent{}
	for _, m := range []string{"m1", "m2", "m3"} {
		agents[m] = r.startAgent(t, m, "dc1", nil)
		requireImages(t, agents[m])
	}
	waitMachinesReady(t, r, 3)
	key := r.apply(t, "web", 1, "dep-1", imageDef("fra", 3, up.Host+"/shop/web:live", digest), nil)
	ss := r.waitService(t, key, 90*time.Second, "3 instances healthy", func(ss regionapi.ServiceStatus) bool { return len(healthyInstances(ss)) == 3 })
	machines := map[string]bool{}
	for _, is := range healthyInstances(ss) {
		machines[is.Machine] = true
		if v := getJSON(t, is)["version"]; v != "v1" {
			t.Errorf("instance %s answers version %v", is.ID, v)
		}
	}
	if len(machines) != 3 {
		t.Fatalf("instances on %v, want one on each machine", machines)
	}
	m, err := v1img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if n := up.BlobGets("shop/web", d.Digest.String()); n != 1 {
			t.Errorf("blob %s fetched from upstream %d times by 3 machines, want once", d.Digest, n)
		}
	}
	t.Logf("3 machines: upstream blob GETs %v, %d bytes", up.AllBlobGets(), up.BlobBytes())

	// The tag moves, then the upstream registry goes away.
	reg.Push(t, "shop/web:live", helloImage(t, "v2", 0))
	reg.Stop()
	agents["m4"] = r.startAgent(t, "m4", "dc1", nil)
	waitMachinesReady(t, r, 4)
	victim := healthyInstances(ss)[0]
	agents[victim.Machine].kill()
	ss = r.waitService(t, key, 90*time.Second, "the killed machine's instance replaced", func(ss regionapi.ServiceStatus) bool {
		h := healthyInstances(ss)
		return len(h) == 3 && !slices.ContainsFunc(h, func(is regionapi.InstanceStatus) bool { return is.Machine == victim.Machine })
	})
	for _, is := range healthyInstances(ss) {
		if v := getJSON(t, is)["version"]; v != "v1" {
			t.Errorf("instance %s on %s answers version %v after the tag moved, want v1", is.ID, is.Machine, v)
		}
	}

	// A restarted instance runs the same bytes.
	is := healthyInstances(ss)[0]
	for _, in := range agents[is.Machine].Instances() {
		if in.ID == is.ID && in.Pid > 0 {
			if err := syscall.Kill(in.Pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	ss = r.waitService(t, key, 60*time.Second, "the killed container restarted", func(ss regionapi.ServiceStatus) bool {
		for _, h := range healthyInstances(ss) {
			if h.ID == is.ID && h.Restarts > 0 {
				return true
			}
		}
		return false
	})
	for _, h := range healthyInstances(ss) {
		if h.ID == is.ID {
			if v := getJSON(t, h)["version"]; v != "v1" {
				t.Errorf("restarted instance answers version %v, want v1", v)
			}
		}
	}
}

// waitMachinesReady waits until n machines heartbeat.
func waitMachinesReady(t *testing.T, r *testRegion, n int) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, strconv.Itoa(n)+" machines ready", func() (bool, string) {
		ms, err := r.global.Machines(testutil.Context(t, 5*time.Second))
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, m := range ms {
			if m.Ready {
				ready++
			}
		}
		return ready == n, strconv.Itoa(ready) + " ready"
	})
}

// TestPrePullKeepsOldVersionServing: a rollout whose new image comes over
// a slow link from its registry: the new instance reports state pulling
// (with progress) while the old version keeps running, healthy, and
// answers every request; the old instance is stopped only once the new
// one is healthy.
func TestPrePullKeepsOldVersionServing(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	slow, err := linkproxy.New(linkproxy.Config{Listen: "127.0.0.1:0", Target: reg.Host, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.Close() })
	v1img, v2img := helloImage(t, "v1", 0), helloImage(t, "v2", 2<<20)
	reg.Push(t, "shop/web:v1", v1img)
	reg.Push(t, "shop/web:v2", v2img)

	r := newRegion(t, "fra")
	var ev events
	// When the agent of the old instance begins to stop it: requests after
	// that may fail, as the region meant.
	var mu sync.Mutex
	var oldID string
	var stoppingAt time.Time
	for _, m := range []string{"m1", "m2"} {
		hook := ev.hook(m)
		a := r.startAgent(t, m, "dc1", func(c *Config) {
			c.OnInstance = func(in Instance) {
				hook(in)
				mu.Lock()
				if in.ID == oldID && in.State == regionapi.StateStopping && stoppingAt.IsZero() {
					stoppingAt = time.Now()
				}
				mu.Unlock()
			}
		})
		requireImages(t, a)
	}
	waitMachinesReady(t, r, 2)
	key := r.apply(t, "web", 1, "dep-1", imageDef("fra", 1, slow.Addr()+"/shop/web:v1", imageDigest(t, v1img)), nil)
	ss := r.waitService(t, key, 60*time.Second, "v1 healthy", func(ss regionapi.ServiceStatus) bool { return len(healthyInstances(ss)) == 1 })
	old := healthyInstances(ss)[0]
	mu.Lock()
	oldID = old.ID
	mu.Unlock()

	// The registry is now far away: every byte takes 1.5s each way.
	slow.SetLatency(1500*time.Millisecond, 1500*time.Millisecond)
	var served atomic.Int64
	var failures []time.Time
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		client := &http.Client{Timeout: 2 * time.Second}
		url := "http://" + net.JoinHostPort(old.Address, strconv.Itoa(old.Ports["8080"])) + "/"
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			resp, err := client.Get(url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = &net.AddrError{Err: resp.Status, Addr: url}
				}
			}
			if err != nil {
				mu.Lock()
				failures = append(failures, time.Now())
				mu.Unlock()
				firstErr.CompareAndSwap(nil, err)
				continue
			}
			served.Add(1)
		}
	}()
	r.apply(t, "web", 2, "dep-2", imageDef("fra", 1, slow.Addr()+"/shop/web:v2", imageDigest(t, v2img)), nil)

	// While the new instance pulls and starts, the old one runs, healthy.
	var oldStillUp int
	r.waitService(t, key, 3*time.Minute, "v2 healthy", func(ss regionapi.ServiceStatus) bool {
		newHealthy := false
		for _, is := range ss.Instances {
			if is.DeploymentID == "dep-2" && is.State == regionapi.StateRunning && is.Healthy {
				newHealthy = true
			}
		}
		if !newHealthy {
			for _, is := range ss.Instances {
				if is.ID == old.ID && is.State == regionapi.StateRunning && is.Healthy {
					oldStillUp++
				}
			}
			if len(ss.Instances) > 0 && !slices.ContainsFunc(ss.Instances, func(is regionapi.InstanceStatus) bool { return is.ID == old.ID && is.Healthy }) {
				t.Errorf("the old instance is not running and healthy while the new one is not: %s", describe(ss))
			}
		}
		return newHealthy
	})
	// Only then does the old one go.
	r.waitService(t, key, 30*time.Second, "v1 stopped", func(ss regionapi.ServiceStatus) bool {
		return !slices.ContainsFunc(ss.Instances, func(is regionapi.InstanceStatus) bool { return is.ID == old.ID })
	})
	close(stop)
	wg.Wait()

	var pulling []event
	ev.mu.Lock()
	for _, e := range ev.log {
		if e.DeploymentID == "dep-2" && e.State == regionapi.StatePulling {
			pulling = append(pulling, e)
		}
	}
	ev.mu.Unlock()
	mu.Lock()
	failed := 0
	for _, at := range failures {
		if stoppingAt.IsZero() || at.Before(stoppingAt) {
			failed++
		}
	}
	mu.Unlock()
	if len(pulling) == 0 {
		t.Fatalf("the new instance never reported state pulling: %s", ev.String())
	}
	progress := slices.ContainsFunc(pulling, func(e event) bool { return strings.Contains(e.Message, " MB") })
	t.Logf("while v2 pulled: %d pulling reports (progress shown: %v, e.g. %q); old instance healthy in %d status reads; %d requests served, %d failed before its stop (%v)",
		len(pulling), progress, pulling[len(pulling)-1].Message, oldStillUp, served.Load(), failed, firstErr.Load())
	if !progress {
		t.Errorf("no progress in the pulling reports: %v", pulling)
	}
	if failed != 0 {
		t.Errorf("%d requests to the old version failed before it was stopped (first: %v)", failed, firstErr.Load())
	}
	if served.Load() == 0 || oldStillUp == 0 {
		t.Errorf("the old version was not seen serving during the pull (%d served, %d status reads)", served.Load(), oldStillUp)
	}
}
