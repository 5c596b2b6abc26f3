package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/dev"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/testutil"
)

// imageInstallation starts a dev installation whose local registry holds
// the demo image, built from the demo app linked statically (as `make
// build` builds it), and returns it with that image.
func imageInstallation(t *testing.T, topo dev.Topology) (*installation, v1.Image) {
	t.Helper()
	prog := filepath.Join(t.TempDir(), "hello")
	if err := imagetest.BuildStatic("examples/hello", prog); err != nil {
		t.Fatal(err)
	}
	img, err := dev.DemoImage(prog)
	if err != nil {
		t.Fatal(err)
	}
	in := start(t, topo, func(c *dev.Config) { c.DemoProgram = prog })
	if in.info.Registry == "" || in.info.DemoImage != in.info.Registry+"/"+dev.DemoRepository+":"+dev.DemoTag {
		t.Fatalf("dev.json: registry %q, demo image %q", in.info.Registry, in.info.DemoImage)
	}
	return in, img
}

// moveTag pushes, at the demo image's tag, the demo image that reports
// version (VERSION in its env): the tag now names other bytes.
func (in *installation) moveTag(img v1.Image, version string) v1.Image {
	in.t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		in.t.Fatal(err)
	}
	cfg := cf.Config.DeepCopy()
	cfg.Env = append(cfg.Env, "VERSION="+version)
	moved, err := mutate.Config(img, *cfg)
	if err != nil {
		in.t.Fatal(err)
	}
	ref, err := name.NewTag(in.info.DemoImage)
	if err != nil {
		in.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := remote.Write(ref, moved, remote.WithContext(ctx)); err != nil {
		in.t.Fatalf("push %s: %v", ref, err)
	}
	return moved
}

// ociProcs finds the processes of a container instance: its shim (which
// writes its log into this installation's state dir) and the shim's child,
// the container's init.
func (in *installation) ociProcs(id string) (shim, init int) {
	in.t.Helper()
	eachProc(func(pid int, args []string) {
		if len(args) != 2 || args[0] != "meridian-oci-shim" || args[1] != id {
			return
		}
		dir := "/proc/" + strconv.Itoa(pid)
		if out, err := os.Readlink(dir + "/fd/1"); err != nil || !strings.HasPrefix(out, in.info.StateDir+"/") {
			return
		}
		children, err := os.ReadFile(dir + "/task/" + strconv.Itoa(pid) + "/children")
		if f := strings.Fields(string(children)); err == nil && len(f) == 1 {
			shim = pid
			init, _ = strconv.Atoi(f[0])
		}
	})
	if init == 0 {
		in.t.Fatalf("no container of instance %s in this installation", id)
	}
	return shim, init
}

// crashAndRestart kills the process of a container instance and waits
// until its agent has restarted it on its machine, healthy, answering
// version (the deployment it runs: the image deployed, not a moved tag's).
func (in *installation) crashAndRestart(inst api.Instance, version string) {
	in.t.Helper()
	if _, init := in.ociProcs(inst.ID); syscall.Kill(init, syscall.SIGKILL) != nil {
		in.t.Fatalf("kill the init of %s", inst.ID)
	}
	testutil.Eventually(in.t, 60*time.Second, "instance "+inst.ID+" restarted", func() (bool, string) {
		for _, i := range in.instances() {
			if i.ID != inst.ID {
				continue
			}
			if i.Restarts < inst.Restarts+1 || i.State != "running" || i.Health != api.HealthHealthy {
				return false, i.State + " " + i.Health + " restarts " + strconv.Itoa(i.Restarts)
			}
			where, err := tryHello(i)
			if err != nil {
				return false, err.Error()
			}
			if where["version"] != version {
				in.t.Fatalf("restarted instance %s answers version %q, want %s: it runs the moved tag, not the deployed digest", i.ID, where["version"], version)
			}
			return true, ""
		}
		return false, "gone"
	})
}

// imageService reads a service's image and digest and its latest
// deployment through the CLI's JSON.
func (in *installation) imageService(app string) (api.Service, api.Deployment) {
	in.t.Helper()
	code, out, errOut := in.cli("services", "get", app, "--app", app, "-o", "json")
	var svc api.Service
	if code != 0 || json.Unmarshal([]byte(out), &svc) != nil {
		in.t.Fatalf("services get: %d %s %s", code, out, errOut)
	}
	code, out, errOut = in.cli("deployments", "get", svc.LatestDeployment, "-o", "json")
	var d api.Deployment
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil {
		in.t.Fatalf("deployments get: %d %s %s", code, out, errOut)
	}
	return svc, d
}

// TestImageDigestEverywhere deploys the bundled image example with the
// real CLI (its ${MERIDIAN_DEV_REGISTRY} filled in from dev.json) to three
// regions: the deployment shows the tag and the digest of the demo image
// dev built, every region's definition carries that digest, and every
// instance runs it in a container and answers from its region. The tag
// then moves to other bytes: running instances and an instance restarted
// on its machine keep the deployed digest; only a new deploy takes the new
// one.
func TestImageDigestEverywhere(t *testing.T) {
	in, img := imageInstallation(t, smallTopology(t, 1))
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := in.cli("deploy", "-f", "../examples/hello-image/meridian.yaml", "--wait")
	if code != 0 || !strings.Contains(out, "HEALTHY in every region") || !strings.Contains(out, "image digest: "+digest.String()) {
		t.Fatalf("deploy --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	svc, d := in.imageService("hello-image")
	if svc.Image != in.info.DemoImage || svc.ImageDigest != digest.String() || d.Image != in.info.DemoImage || d.ImageDigest != digest.String() {
		t.Fatalf("service shows %q %q, deployment %q %q; want %s at %s", svc.Image, svc.ImageDigest, d.Image, d.ImageDigest, in.info.DemoImage, digest)
	}
	for _, rd := range d.Regional {
		if rd.Definition.ImageDigest != digest.String() {
			t.Errorf("region %s runs digest %q, want %s", rd.Region, rd.Definition.ImageDigest, digest)
		}
	}
	running := func() map[string]api.Instance {
		out := map[string]api.Instance{}
		for _, i := range in.instances() {
			if i.Service == "hello-image/hello-image" || i.Service == "hello-image" {
				out[i.ID] = i
			}
		}
		return out
	}
	insts := running()
	perRegion := map[string]int{}
	for _, i := range insts {
		perRegion[i.Region]++
		where := hello(t, i)
		if i.State != "running" || where["region"] != i.Region || where["instance"] != i.ID || where["version"] != d.ID {
			t.Errorf("instance %s (%s, %s) answers %v; want its region, id and version %s", i.ID, i.Region, i.State, where, d.ID)
		}
	}
	if perRegion["fra"] != 1 || perRegion["was"] != 1 || perRegion["sin"] != 1 {
		t.Fatalf("instances per region %v, want one in each of fra, was, sin", perRegion)
	}

	moved := in.moveTag(img, "tag-moved")
	movedDigest, _ := moved.Digest()
	var victim api.Instance
	for _, i := range insts {
		if where := hello(t, i); where["version"] != d.ID {
			t.Errorf("after the tag moved, running instance %s answers version %q, want %s", i.ID, where["version"], d.ID)
		}
		victim = i
	}
	// The instance's process dies; its agent restarts it on its machine,
	// from the image it was deployed with.
	in.crashAndRestart(victim, d.ID)

	// A new deploy resolves the tag again: the new digest, everywhere.
	code, out, errOut = in.cli("deploy", "-f", "../examples/hello-image/meridian.yaml", "--wait")
	if code != 0 || !strings.Contains(out, "image digest: "+movedDigest.String()) {
		t.Fatalf("second deploy --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	_, d2 := in.imageService("hello-image")
	if d2.ImageDigest != movedDigest.String() {
		t.Fatalf("second deployment digest %q, want %s", d2.ImageDigest, movedDigest)
	}
	testutil.Eventually(t, 60*time.Second, "every instance runs the moved tag's digest", func() (bool, string) {
		n := 0
		for _, i := range running() {
			where, err := tryHello(i)
			if err != nil || where["version"] != "tag-moved" {
				return false, i.ID + " " + where["version"] + " " + i.State
			}
			n++
		}
		return n == 3, strconv.Itoa(n) + " instances"
	})
}

// blobGets counts, in the local registry's access log, the GETs of each
// blob of repository that it answered 200: what was pulled from upstream.
func (in *installation) blobGets(repository string) map[string]int {
	in.t.Helper()
	b, err := os.ReadFile(in.component("registry", "", "").Log)
	if err != nil {
		in.t.Fatal(err)
	}
	re := regexp.MustCompile(`"GET /v2/` + regexp.QuoteMeta(repository) + `/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" 200 `)
	out := map[string]int{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		out[m[1]]++
	}
	return out
}

// TestImageFromRegionalCache deploys an image to three regions, two
// machines each pulling it in every region: each region fetched each blob
// from the upstream registry once (the registry's own access log counts
// them). The tag then moves and the upstream registry is stopped: a killed
// machine's instance starts on a machine of its region that never had the
// image, from the region's cache, and it and a restarted instance run the
// bytes deployed, not the moved tag's.
func TestImageFromRegionalCache(t *testing.T) {
	topo := smallTopology(t, 1)
	for i := range topo.Regions {
		topo.Regions[i].Datacenters[0].Machines = 2 // a machine that runs nothing at first
	}
	in, img := imageInstallation(t, topo)
	def := in.writeDefinition("cached", `name: cached
regions: [fra, was, sin]
image: ${MERIDIAN_DEV_REGISTRY}/demo/hello:1
ports: [{port: 8080}]
scalings: [{min: 2, max: 2}]
instance_types: [{type: nano}]
health_checks: [{port: 8080, http: {path: /healthz}, grace_period: 1s, interval: 500ms, timeout: 400ms, restart_limit: 1}]
strategy: {type: all_at_once}
`)
	code, out, errOut := in.cli("deploy", "-f", def, "--wait")
	if code != 0 {
		t.Fatalf("deploy --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	_, d := in.imageService("cached")
	before := in.instances()
	machines := map[string]bool{}
	perRegion := map[string]int{}
	for _, i := range before {
		if where := hello(t, i); where["version"] != d.ID {
			t.Fatalf("instance %s answers %v, want version %s", i.ID, where, d.ID)
		}
		machines[i.Machine] = true
		perRegion[i.Region]++
	}
	if len(machines) != 6 || perRegion["fra"] != 2 || perRegion["was"] != 2 || perRegion["sin"] != 2 {
		t.Fatalf("instances on %d machines, %v per region; want 2 per region on 6 machines", len(machines), perRegion)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layer, _ := layers[0].Digest()
	config, _ := img.ConfigName()
	gets := in.blobGets(dev.DemoRepository)
	for _, blob := range []string{layer.String(), config.String()} {
		if gets[blob] != 3 {
			t.Errorf("blob %s fetched %d times from upstream, want 3 (once per region, for 6 machines)", blob, gets[blob])
		}
	}

	in.moveTag(img, "tag-moved")
	in.kill(in.component("registry", "", ""))
	// A fra machine dies: its agent and its container.
	var victim api.Instance
	for _, i := range before {
		if i.Region == "fra" {
			victim = i
			break
		}
	}
	shim, init := in.ociProcs(victim.ID)
	in.kill(in.component("agent", "fra", victim.Machine))
	syscallKill(t, init)
	syscallKill(t, shim)
	testutil.Eventually(t, 90*time.Second, "fra's lost instance started from the region's cache on a machine that never had the image", func() (bool, string) {
		var fresh []api.Instance
		for _, i := range in.instances() {
			if i.Region == "fra" && !machines[i.Machine] && i.State == "running" && i.Health == api.HealthHealthy {
				fresh = append(fresh, i)
			}
		}
		if len(fresh) == 0 {
			return false, "no healthy instance on a new machine yet"
		}
		where, err := tryHello(fresh[0])
		if err != nil {
			return false, err.Error()
		}
		if where["version"] != d.ID {
			t.Fatalf("the replacement %s answers version %q: it runs the moved tag, not the deployed digest", fresh[0].ID, where["version"])
		}
		return true, ""
	})

	// With upstream still down, an instance whose process dies is
	// restarted, from the same bytes.
	var other api.Instance
	for _, i := range before {
		if i.Region == "was" {
			other = i
		}
	}
	in.crashAndRestart(other, d.ID)
	if now := in.blobGets(dev.DemoRepository); now[layer.String()] != 3 {
		t.Errorf("the layer was fetched %d times from upstream in all, want still 3", now[layer.String()])
	}
}
