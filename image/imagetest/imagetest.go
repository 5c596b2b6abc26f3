// Package imagetest helps tests work with container images: it starts a
// real registry (Debian's docker-registry, the CNCF distribution registry)
// on a free loopback port, builds images in code with go-containerregistry
// (layers from lists of files, crafted malicious ones included) and pushes
// them, and builds static programs to put in them.
package imagetest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/crypto/bcrypt"
)

// RegistryBinary is Debian's docker-registry (package docker-registry).
const RegistryBinary = "/usr/bin/docker-registry"

// Registry is a running docker-registry process.
type Registry struct {
	// Host is its "127.0.0.1:port".
	Host string
	// Dir holds its storage and config.
	Dir string
	cmd *exec.Cmd
	// auth is what Push authenticates with (a registry with users).
	auth authn.Authenticator
}

// RegistryConfig configures a registry of StartRegistryWith.
type RegistryConfig struct {
	// Users, when set, turns on the registry's htpasswd authentication
	// with these users and passwords (Push uses one of them).
	Users map[string]string
}

// StartRegistry starts docker-registry on a free loopback port with its
// storage in a temporary directory, waits until it answers, and stops it
// when the test ends. A missing binary fails the test with what to
// install.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	return StartRegistryWith(t, RegistryConfig{})
}

// StartRegistryWith is StartRegistry with cfg.
func StartRegistryWith(t testing.TB, cfg RegistryConfig) *Registry {
	t.Helper()
	if _, err := os.Stat(RegistryBinary); err != nil {
		t.Fatalf("%s is missing (%v): install Debian's docker-registry package (apt-get install -y docker-registry)", RegistryBinary, err)
	}
	for attempt := 0; ; attempt++ {
		r, err := startRegistry(t, cfg)
		if err == nil {
			return r
		}
		if attempt == 4 {
			t.Fatal(err)
		}
	}
}

func startRegistry(t testing.TB, rc RegistryConfig) (*Registry, error) {
	dir := t.TempDir()
	var authCfg string
	var pushAuth authn.Authenticator
	if len(rc.Users) > 0 {
		var lines []string
		for _, u := range slices.Sorted(maps.Keys(rc.Users)) {
			h, err := bcrypt.GenerateFromPassword([]byte(rc.Users[u]), bcrypt.MinCost)
			if err != nil {
				return nil, err
			}
			lines = append(lines, u+":"+string(h))
			pushAuth = &authn.Basic{Username: u, Password: rc.Users[u]}
		}
		hp := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(hp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			return nil, err
		}
		authCfg = fmt.Sprintf("auth:\n  htpasswd:\n    realm: meridian-test\n    path: %s\n", hp)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	host := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, filepath.Join(dir, "storage"), host, authCfg)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(RegistryBinary, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", RegistryBinary, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	r := &Registry{Host: host, Dir: dir, cmd: cmd, auth: pushAuth}
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (pushAuth != nil && resp.StatusCode == http.StatusUnauthorized) {
				break
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			return nil, fmt.Errorf("docker-registry exited at start (port %s taken?): %s", host, b)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("docker-registry did not answer on %s within 15s", host)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(stop)
	return r, nil
}

// Stop kills the registry (to test a registry that is down).
func (r *Registry) Stop() {
	_ = r.cmd.Process.Kill()
}

// File is one entry of a layer built by Layer.
type File struct {
	Name string
	// Type is a tar type flag; 0 means a regular file (a directory when
	// Name ends with "/").
	Type     byte
	Body     string
	Mode     int64
	Linkname string
	UID, GID int
	// Devmajor and Devminor are for device nodes.
	Devmajor, Devminor int64
}

// Tar returns the tar archive of files.
func Tar(files ...File) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Typeflag: f.Type, Mode: f.Mode, Linkname: f.Linkname,
			Uid: f.UID, Gid: f.GID, Devmajor: f.Devmajor, Devminor: f.Devminor, ModTime: time.Unix(1700000000, 0),
			Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
			if strings.HasSuffix(f.Name, "/") {
				h.Typeflag = tar.TypeDir
			}
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(f.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			panic(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, f.Body); err != nil {
				panic(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// Layer returns a gzip-compressed layer holding files.
func Layer(t testing.TB, files ...File) v1.Layer {
	t.Helper()
	return LayerFromTar(t, Tar(files...))
}

// LayerFromTar returns a gzip-compressed layer of a tar archive.
func LayerFromTar(t testing.TB, b []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image returns a linux image of this machine's architecture with the
// given config and layers (first is lowest).
func Image(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", runtime.GOARCH, cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// Push pushes img to repo:tag at the registry and returns its reference by
// digest ("host/repo@sha256:...").
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	return r.push(t, repoTag, img, func(ref name.Reference, opts ...remote.Option) error { return remote.Write(ref, img, opts...) })
}

// PushIndex pushes a multi-platform index (and its images) to repo:tag at
// the registry and returns its reference by digest.
func (r *Registry) PushIndex(t testing.TB, repoTag string, idx v1.ImageIndex) string {
	t.Helper()
	return r.push(t, repoTag, idx, func(ref name.Reference, opts ...remote.Option) error { return remote.WriteIndex(ref, idx, opts...) })
}

func (r *Registry) push(t testing.TB, repoTag string, d interface{ Digest() (v1.Hash, error) }, write func(name.Reference, ...remote.Option) error) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := []remote.Option{remote.WithContext(ctx)}
	if r.auth != nil {
		opts = append(opts, remote.WithAuth(r.auth))
	}
	if err := write(ref, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref.Context().Digest(h.String()).String()
}

// BuildStatic builds the Go package pkg (a path relative to the module
// root, e.g. "image/imagetest/probe") as a static binary (CGO_ENABLED=0)
// at out.
func BuildStatic(pkg, out string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./"+pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// ProgramLayer returns a layer holding the file at path as an executable
// at name (e.g. "bin/probe").
func ProgramLayer(t testing.TB, path, name string) v1.Layer {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(name)
	var files []File
	if dir != "." {
		files = append(files, File{Name: dir + "/"})
	}
	files = append(files, File{Name: name, Body: string(b), Mode: 0o755})
	return Layer(t, files...)
}
