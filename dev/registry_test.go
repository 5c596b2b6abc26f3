package dev

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/testutil"
)

// build builds a program of this module with `go build`'s defaults (the
// demo app is then linked dynamically where cgo is on) into the test's
// temporary directory.
func build(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, "./"+pkg)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// staticHello builds the demo app as `make build` does (CGO_ENABLED=0).
func staticHello(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "hello")
	if err := imagetest.BuildStatic("examples/hello", out); err != nil {
		t.Fatal(err)
	}
	return out
}

// skopeo runs Debian's skopeo, which checks images independently of
// go-containerregistry.
func skopeo(t *testing.T, args ...string) []byte {
	t.Helper()
	path, err := exec.LookPath("skopeo")
	if err != nil {
		t.Fatalf("skopeo is missing (%v): install Debian's skopeo package (apt-get install -y skopeo)", err)
	}
	out, err := exec.Command(path, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("skopeo %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TestDemoImage: the demo image is one layer holding the static program
// as /hello, with its entrypoint, user and port; one program gives one
// digest; a dynamically linked program is refused with what to do.
func TestDemoImage(t *testing.T) {
	testutil.Slow(t)
	prog := staticHello(t)
	img, err := DemoImage(prog)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DemoImage(prog)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds of one program: %s and %s", d1, d2)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	checkHelloLayer(t, tar.NewReader(rc), prog)

	helloBin := build(t, "examples/hello")
	_, err = DemoImage(helloBin)
	if isStatic(t, helloBin) {
		t.Logf("go build made a static demo app here; the refusal of a dynamic one is not exercised by this binary")
	} else if !errors.Is(err, errDynamic) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("a dynamically linked program: %v", err)
	}
}

func isStatic(t *testing.T, path string) bool {
	t.Helper()
	out, err := exec.Command("file", "-L", path).Output()
	if err != nil {
		return false
	}
	return strings.Contains(string(out), "statically linked")
}

// checkHelloLayer checks that a layer holds exactly /hello, executable,
// with the program's bytes.
func checkHelloLayer(t *testing.T, tr *tar.Reader, prog string) {
	t.Helper()
	want, err := os.ReadFile(prog)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name != "hello" {
			continue
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Mode&0o777 != 0o755 || string(body) != string(want) {
			t.Errorf("/hello: mode %o, %d bytes; want 0755 and the program's %d bytes", h.Mode, len(body), len(want))
		}
	}
	if len(names) != 1 || names[0] != "hello" {
		t.Errorf("the layer holds %v, want [hello]", names)
	}
}

// TestLocalRegistry: dev runs each kind of local registry as a child
// process in the state dir and pushes the demo image to it; skopeo reads
// the image back (digest, platform, entrypoint, user, port, the one
// layer), every request is in the registry's log, and Close stops it.
func TestLocalRegistry(t *testing.T) {
	testutil.Slow(t)
	prog := staticHello(t)
	img, err := DemoImage(prog)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	meridianBin := build(t, "cmd/meridian")
	for _, kind := range []string{RegistryDocker, RegistryBuiltin} {
		t.Run(kind, func(t *testing.T) {
			ctx := testutil.Context(t, 2*time.Minute)
			dir := t.TempDir()
			e := &Env{cfg: Config{StateDir: dir, Binary: meridianBin, Registry: kind, DemoProgram: prog},
				log: slog.New(slog.DiscardHandler), done: make(chan struct{})}
			for _, d := range []string{"logs"} {
				if err := os.MkdirAll(e.path(d), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			defer e.Close()
			if err := e.startRegistry(ctx); err != nil {
				t.Fatal(err)
			}
			if err := e.pushDemoImage(ctx); err != nil {
				t.Fatal(err)
			}
			info := e.Info()
			if info.Registry == "" || info.DemoImage != info.Registry+"/demo/hello:1" {
				t.Fatalf("registry %q, demo image %q", info.Registry, info.DemoImage)
			}
			var reg *proc
			for _, p := range e.procs {
				if p.comp.Role == "registry" {
					reg = p
				}
			}
			if reg == nil || reg.comp.Address != "http://"+info.Registry || syscall.Kill(reg.comp.PID, 0) != nil {
				t.Fatalf("no live registry component: %+v", reg)
			}
			if (kind == RegistryDocker) != (reg.comp.Command == DockerRegistryBinary) {
				t.Errorf("%s runs %q %v", kind, reg.comp.Command, reg.comp.Args)
			}

			var inspect struct {
				Digest, Os, Architecture string
				Layers                   []string
			}
			if err := json.Unmarshal(skopeo(t, "inspect", "--tls-verify=false", "docker://"+info.DemoImage), &inspect); err != nil {
				t.Fatal(err)
			}
			if inspect.Digest != digest.String() || inspect.Os != "linux" || inspect.Architecture != runtime.GOARCH || len(inspect.Layers) != 1 {
				t.Errorf("skopeo inspect: %+v, want digest %s, linux/%s, one layer", inspect, digest, runtime.GOARCH)
			}
			var cfg struct {
				Config struct {
					Entrypoint   []string
					User         string
					ExposedPorts map[string]struct{}
				} `json:"config"`
			}
			if err := json.Unmarshal(skopeo(t, "inspect", "--config", "--tls-verify=false", "docker://"+info.DemoImage), &cfg); err != nil {
				t.Fatal(err)
			}
			if strings.Join(cfg.Config.Entrypoint, " ") != "/hello" || cfg.Config.User != "65534:65534" || len(cfg.Config.ExposedPorts) != 1 {
				t.Errorf("skopeo inspect --config: %+v", cfg.Config)
			}
			out := filepath.Join(t.TempDir(), "copy")
			skopeo(t, "copy", "--src-tls-verify=false", "docker://"+info.DemoImage, "dir:"+out)
			layer, err := os.Open(filepath.Join(out, strings.TrimPrefix(inspect.Layers[0], "sha256:")))
			if err != nil {
				t.Fatal(err)
			}
			defer layer.Close()
			zr, err := gzip.NewReader(layer)
			if err != nil {
				t.Fatal(err)
			}
			checkHelloLayer(t, tar.NewReader(zr), prog)

			log, err := os.ReadFile(reg.comp.Log)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(log), "/v2/demo/hello/manifests/1") || !strings.Contains(string(log), "/v2/demo/hello/blobs/"+inspect.Layers[0]) {
				t.Errorf("the registry's log does not show the requests:\n%s", log)
			}
			e.Close()
			select {
			case <-reg.done:
			case <-time.After(15 * time.Second):
				t.Fatal("the registry still runs after Close")
			}
		})
	}
}
