package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
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

// ociInit finds the process a container instance runs (its init): the
// child of the instance's shim, which writes its log into this
// installation's state dir.
func (in *installation) ociInit(id string) int {
	in.t.Helper()
	init := 0
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
			init, _ = strconv.Atoi(f[0])
		}
	})
	if init == 0 {
		in.t.Fatalf("no container init of instance %s in this installation", id)
	}
	return init
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
	if err := syscall.Kill(in.ociInit(victim.ID), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, "instance "+victim.ID+" restarted", func() (bool, string) {
		i, ok := running()[victim.ID]
		if !ok || i.Restarts < victim.Restarts+1 || i.State != "running" || i.Health != api.HealthHealthy {
			return false, i.State + " " + i.Health + " restarts " + strconv.Itoa(i.Restarts)
		}
		where, err := tryHello(i)
		if err != nil {
			return false, err.Error()
		}
		if where["version"] != d.ID {
			t.Fatalf("restarted instance %s answers version %q: it runs the moved tag, not the deployed digest", i.ID, where["version"])
		}
		return true, ""
	})

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
