package dev

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry kinds (Config.Registry).
const (
	// RegistryAuto runs Debian's docker-registry when it is installed,
	// else the built-in one.
	RegistryAuto = ""
	// RegistryDocker runs Debian's docker-registry (the CNCF distribution
	// registry), DockerRegistryBinary.
	RegistryDocker = "docker-registry"
	// RegistryBuiltin runs go-containerregistry's registry, served by
	// `meridian dev-registry` (blobs on disk, manifests in memory).
	RegistryBuiltin = "builtin"
)

// DockerRegistryBinary is Debian's docker-registry.
const DockerRegistryBinary = "/usr/bin/docker-registry"

// DemoRepository and DemoTag name the demo app's image in the local
// registry: <registry>/demo/hello:1.
const (
	DemoRepository = "demo/hello"
	DemoTag        = "1"
)

// DemoPort is the port the demo image declares (its EXPOSE); the platform
// gives each instance its own in $PORT.
const DemoPort = 8080

// startRegistry starts the local registry as a child process on a free
// loopback port, with its storage in DIR/registry, and waits until it
// answers. Every request is in its log (DIR/logs/registry.log), so that
// pulls can be counted.
func (e *Env) startRegistry(ctx context.Context) error {
	kind := e.cfg.Registry
	if kind == RegistryAuto {
		kind = RegistryBuiltin
		if _, err := os.Stat(DockerRegistryBinary); err == nil {
			kind = RegistryDocker
		}
	}
	dir := e.path("registry")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dev: registry: %w", err)
	}
	spawn := func() (*proc, error) {
		addr, err := e.freeAddr("registry")
		if err != nil {
			return nil, err
		}
		c := Component{Role: "registry", Address: "http://" + addr, DataDir: dir}
		switch kind {
		case RegistryDocker:
			cfg := filepath.Join(dir, "config.yml")
			if err := os.WriteFile(cfg, []byte(dockerRegistryConfig(filepath.Join(dir, "storage"), addr)), 0o600); err != nil {
				return nil, err
			}
			c.Command, c.Args = DockerRegistryBinary, []string{"serve", cfg}
		case RegistryBuiltin:
			c.Args = []string{"dev-registry", "--listen", addr, "--dir", filepath.Join(dir, "blobs")}
		default:
			return nil, fmt.Errorf("dev: registry %q: want %q, %q or empty (either)", kind, RegistryDocker, RegistryBuiltin)
		}
		return e.spawnProc(c)
	}
	p, err := spawn()
	if err != nil {
		return err
	}
	err = e.waitUp(ctx, probeClient, "registry", p, "did not come up",
		func(p *proc) string { return p.comp.Address + "/v2/" }, spawn)
	if err != nil {
		return err
	}
	e.mu.Lock()
	for _, q := range e.procs {
		if q.comp.Role == "registry" {
			e.info.Registry = q.comp.Address[len("http://"):]
		}
	}
	e.mu.Unlock()
	return nil
}

// dockerRegistryConfig is docker-registry's configuration: filesystem
// storage, deletes allowed, every request in the access log.
func dockerRegistryConfig(storage, addr string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, storage, addr)
}

// pushDemoImage builds the demo image from the demo program and pushes it
// to the local registry as <registry>/demo/hello:1. A missing or
// dynamically linked program is no error: dev runs without the demo
// image, and says why.
func (e *Env) pushDemoImage(ctx context.Context) error {
	prog := e.cfg.DemoProgram
	if prog == "" {
		for _, d := range e.cfg.PathDirs {
			if p := filepath.Join(d, "hello"); isFile(p) {
				prog = p
				break
			}
		}
	}
	if prog == "" {
		e.log.Warn("no demo image: the demo app (hello) is not next to the meridian binary; `make build` builds it")
		return nil
	}
	img, err := DemoImage(prog)
	if errors.Is(err, errDynamic) {
		e.log.Warn("no demo image", "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("dev: demo image: %w", err)
	}
	ref, err := name.NewTag(e.info.Registry + "/" + DemoRepository + ":" + DemoTag)
	if err != nil {
		return fmt.Errorf("dev: demo image: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := remote.Write(ref, img, remote.WithContext(pctx), remote.WithUserAgent("meridian-dev")); err != nil {
		return fmt.Errorf("dev: pushing the demo image to %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	e.info.DemoImage = ref.String()
	e.log.Info("demo image pushed", "image", ref.String(), "digest", d, "program", prog)
	return nil
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// errDynamic: the demo program needs the system's C library.
var errDynamic = errors.New("dynamically linked")

// DemoImage builds the demo app's image, without Docker: one layer holding
// the program at path as /hello (mode 0755), entrypoint /hello, user
// nobody (65534), exposed port 8080/tcp, for linux on this machine's
// architecture. The program
// must be static (CGO_ENABLED=0): the image holds nothing else. The layer
// and config carry fixed times, so one program always gives one digest.
func DemoImage(path string) (v1.Image, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			f.Close()
			return nil, fmt.Errorf("%s is %w: the image holds no C library; build it with CGO_ENABLED=0 (`make build` does)", path, errDynamic)
		}
	}
	f.Close()
	body, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	epoch := time.Unix(0, 0).UTC()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "hello", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(body)),
		ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(body); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerTar := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", runtime.GOARCH, v1.Time{Time: epoch}
	cf.Config = v1.Config{
		Entrypoint:   []string{"/hello"},
		Env:          []string{"PATH=/"},
		WorkingDir:   "/",
		User:         "65534:65534", // nobody: the demo needs no privilege
		ExposedPorts: map[string]struct{}{fmt.Sprintf("%d/tcp", DemoPort): {}},
		Labels:       map[string]string{"org.opencontainers.image.title": "hello", "org.opencontainers.image.source": "examples/hello"},
	}
	cf.History = []v1.History{{Created: v1.Time{Time: epoch}, CreatedBy: "meridian dev: the demo app, one static layer", Comment: "examples/hello"}}
	return mutate.ConfigFile(img, cf)
}

// ServeRegistry serves go-containerregistry's registry on listen until ctx
// ends: blobs on disk in dir, manifests in memory (`meridian dev` pushes
// its images again at each start), every request logged to logw.
func ServeRegistry(ctx context.Context, listen, dir string, logw io.Writer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: ggcrregistry.New(
		ggcrregistry.WithBlobHandler(ggcrregistry.NewDiskBlobHandler(dir)),
		ggcrregistry.Logger(log.New(logw, "registry: ", log.LstdFlags)))}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
