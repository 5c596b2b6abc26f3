package image_test

import (
	"context"
	"crypto/rand"
	"errors"
	"github.com/meridian-run/meridian/testutil"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/image/imagetest"
)

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func open(t testing.TB, cfg image.Config) *image.Store {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	s, err := image.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type F = imagetest.File

// whiteoutImage has a lower layer and an upper layer that deletes a file
// and a directory, and makes a directory opaque (its marker listed after
// an entry of its own layer, which must survive).
func whiteoutImage(t testing.TB) v1.Image {
	lower := imagetest.Layer(t,
		F{Name: "etc/"}, F{Name: "etc/keep", Body: "kept"}, F{Name: "etc/gone", Body: "deleted"},
		F{Name: "data/"}, F{Name: "data/old1", Body: "1"}, F{Name: "data/sub/"}, F{Name: "data/sub/old2", Body: "2"},
		F{Name: "tree/"}, F{Name: "tree/leaf", Body: "x"},
		F{Name: "bin/"}, F{Name: "bin/tool", Body: "#!/bin/sh\n", Mode: 0o755},
		F{Name: "bin/link", Type: '2', Linkname: "/bin/tool"},
		F{Name: "bin/hard", Type: '1', Linkname: "bin/tool"},
		F{Name: "owned", Body: "o", UID: 1234, GID: 5678, Mode: 0o640},
	)
	upper := imagetest.Layer(t,
		F{Name: "etc/.wh.gone"},
		F{Name: ".wh.tree"},
		F{Name: "data/"}, F{Name: "data/new", Body: "n"}, F{Name: "data/.wh..wh..opq"},
		F{Name: "etc/keep", Body: "replaced"},
	)
	return imagetest.Image(t, v1.Config{Cmd: []string{"/bin/tool"}}, lower, upper)
}

func TestPullUnpacksLayersWithWhiteouts(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "demo/whiteouts:1", whiteoutImage(t))
	s := open(t, image.Config{})
	img, err := s.Pull(ctx(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	if !img.Pulled || img.Ref != ref || !strings.HasSuffix(ref, "@"+img.Digest) {
		t.Fatalf("image %+v for %s", img, ref)
	}
	if img.Config.Cmd[0] != "/bin/tool" {
		t.Errorf("config cmd %q", img.Config.Cmd)
	}
	if img.Rootfs != filepath.Join(s.Dir(), "rootfs", strings.TrimPrefix(img.ChainID, "sha256:")) {
		t.Errorf("rootfs %s, chain %s", img.Rootfs, img.ChainID)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(img.Rootfs, p))
		if err != nil {
			return "missing"
		}
		return string(b)
	}
	for p, want := range map[string]string{
		"etc/keep": "replaced", "etc/gone": "missing", "tree/leaf": "missing",
		"data/new": "n", "data/old1": "missing", "data/sub/old2": "missing", "bin/hard": "#!/bin/sh\n",
	} {
		if got := read(p); got != want {
			t.Errorf("%s: %q, want %q", p, got, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(img.Rootfs, "tree")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("whited-out directory tree: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(img.Rootfs, "bin/link")); err != nil || l != "/bin/tool" {
		t.Errorf("symlink bin/link -> %q, %v", l, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(img.Rootfs, "owned"), &st); err != nil || st.Uid != 1234 || st.Gid != 5678 || st.Mode&0o777 != 0o640 {
		t.Errorf("owned: uid %d gid %d mode %o, %v", st.Uid, st.Gid, st.Mode&0o777, err)
	}
	var a, b syscall.Stat_t
	_ = syscall.Stat(filepath.Join(img.Rootfs, "bin/tool"), &a)
	_ = syscall.Stat(filepath.Join(img.Rootfs, "bin/hard"), &b)
	if a.Ino != b.Ino {
		t.Errorf("bin/hard is not a hard link of bin/tool")
	}
	if fi, err := os.Stat(img.Rootfs); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("rootfs mode %v, %v", fi.Mode(), err)
	}

	// By digest, a pulled image needs no registry.
	reg.Stop()
	again, err := s.Pull(ctx(t), ref)
	if err != nil {
		t.Fatalf("pull of a cached image with the registry down: %v", err)
	}
	if again.Pulled || again.Rootfs != img.Rootfs || again.Digest != img.Digest {
		t.Errorf("cached pull %+v", again)
	}
	// A tag must be resolved: with the registry down it fails, naming the
	// image and the cause.
	tagRef := reg.Host + "/demo/whiteouts:1"
	_, err = s.Pull(ctx(t), tagRef)
	if !errors.Is(err, image.ErrUnreachable) || !strings.Contains(err.Error(), tagRef) {
		t.Errorf("pull by tag with the registry down: %v", err)
	}
}

func TestPullErrorsNameTheImage(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "demo/app:1", imagetest.Image(t, v1.Config{}, imagetest.Layer(t, F{Name: "a", Body: "a"})))
	s := open(t, image.Config{})
	for _, tc := range []struct {
		ref  string
		want error
	}{
		{reg.Host + "/demo/nope:1", image.ErrNotFound},
		{reg.Host + "/demo/app:2", image.ErrNotFound},
		{strings.Split(ref, "@")[0] + "@sha256:" + strings.Repeat("0", 64), image.ErrNotFound},
		{"127.0.0.1:1/demo/app:1", image.ErrUnreachable},
		{"UPPER/case:1", image.ErrInvalid},
	} {
		_, err := s.Pull(ctx(t), tc.ref)
		var ie *image.Error
		if !errors.Is(err, tc.want) || !errors.As(err, &ie) || ie.Ref != tc.ref || !strings.Contains(err.Error(), "image "+tc.ref) {
			t.Errorf("pull %s: %v, want %v naming the image", tc.ref, err, tc.want)
		}
	}
	assertNoRootfs(t, s)
}

func assertNoRootfs(t *testing.T, s *image.Store) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Dir(), "rootfs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("rootfs/%s left behind", e.Name())
	}
	blobs, _ := os.ReadDir(filepath.Join(s.Dir(), "blobs", "sha256"))
	for _, e := range blobs {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Errorf("blobs/sha256/%s left behind", e.Name())
		}
	}
}

func TestMaliciousLayersAreRefused(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	host := t.TempDir() // a host directory layers try to reach
	for _, tc := range []struct {
		name  string
		files []F
		want  string
	}{
		{"dotdot", []F{{Name: "../../" + strings.TrimPrefix(host, "/") + "/pwned", Body: "x"}}, `".." component`},
		{"dotdot-inside", []F{{Name: "a/../../pwned", Body: "x"}}, `".." component`},
		{"char-device", []F{{Name: "dev/", Type: '5'}, {Name: "dev/mem", Type: '3', Devmajor: 1, Devminor: 1}}, "device nodes are refused"},
		{"block-device", []F{{Name: "sda", Type: '4', Devmajor: 8}}, "device nodes are refused"},
		{"absolute-symlink-escape", []F{{Name: "escape", Type: '2', Linkname: host}, {Name: "escape/pwned", Body: "x"}}, `goes through the symlink "escape"`},
		{"relative-symlink-escape", []F{{Name: "up", Type: '2', Linkname: "../../../../../../../../.." + host}, {Name: "up/pwned", Body: "x"}}, `goes through the symlink "up"`},
		{"whiteout-through-symlink", []F{{Name: "escape", Type: '2', Linkname: host}, {Name: "escape/.wh.victim"}}, `goes through the symlink`},
		{"hardlink-dotdot", []F{{Name: "h", Type: '1', Linkname: "../../etc/passwd"}}, `".." component`},
		{"hardlink-through-symlink", []F{{Name: "escape", Type: '2', Linkname: "/etc"}, {Name: "h", Type: '1', Linkname: "escape/passwd"}}, `goes through the symlink`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(host, "victim"), []byte("v"), 0o600); err != nil {
				t.Fatal(err)
			}
			ok := imagetest.Layer(t, F{Name: "fine", Body: "fine"})
			ref := reg.Push(t, "evil/"+tc.name+":1", imagetest.Image(t, v1.Config{}, ok, imagetest.LayerFromTar(t, imagetest.Tar(tc.files...))))
			s := open(t, image.Config{})
			_, err := s.Pull(ctx(t), ref)
			if !errors.Is(err, image.ErrUnsafeLayer) || !strings.Contains(err.Error(), "image "+ref) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "layer 1") {
				t.Fatalf("pull: %v; want an unsafe layer error naming the image, layer 1 and %q", err, tc.want)
			}
			assertNoRootfs(t, s)
			if _, err := os.Stat(filepath.Join(host, "pwned")); err == nil {
				t.Fatal("a layer wrote outside the image's root")
			}
			if _, err := os.Stat(filepath.Join(host, "victim")); err != nil {
				t.Fatalf("a layer removed a file outside the image's root: %v", err)
			}
		})
	}
}

func TestBlobDigestMismatchIsRefused(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	l := imagetest.Layer(t, F{Name: "data", Body: strings.Repeat("meridian", 1000)})
	ref := reg.Push(t, "demo/corrupt:1", imagetest.Image(t, v1.Config{}, l))
	d, _ := l.Digest()
	// Corrupt the layer in the registry's storage, keeping its size.
	blob := filepath.Join(reg.Dir, "storage/docker/registry/v2/blobs/sha256", d.Hex[:2], d.Hex, "data")
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := open(t, image.Config{})
	_, err = s.Pull(ctx(t), ref)
	if !errors.Is(err, image.ErrDigest) || !strings.Contains(err.Error(), "image "+ref) || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("pull of a corrupt blob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "blobs/sha256", d.Hex)); err == nil {
		t.Error("the corrupt blob was kept")
	}
	assertNoRootfs(t, s)
}

func TestDiskFullDuringUnpack(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a small tmpfs (tests run as root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	reg := imagetest.StartRegistry(t)
	big := make([]byte, 4<<20) // incompressible: the blob takes 4 MiB, the file 4 more
	_, _ = rand.Read(big)
	ref := reg.Push(t, "demo/big:1", imagetest.Image(t, v1.Config{}, imagetest.Layer(t, F{Name: "big", Body: string(big)})))
	s := open(t, image.Config{Dir: dir})
	_, err := s.Pull(ctx(t), ref)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "image "+ref) || !strings.Contains(err.Error(), "unpack") {
		t.Fatalf("pull onto a full disk: %v", err)
	}
	assertNoRootfs(t, s)
}

func TestLimits(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "demo/limits:1", imagetest.Image(t, v1.Config{},
		imagetest.Layer(t, F{Name: "a", Body: strings.Repeat("a", 5000)}, F{Name: "b", Body: "b"}, F{Name: "c", Body: "c"})))
	for _, lim := range []image.Limits{{MaxUnpackedBytes: 4096}, {MaxEntries: 2}, {MaxImageBytes: 10}, {MaxLayers: 0, MaxManifestBytes: 100}} {
		s := open(t, image.Config{Limits: lim})
		_, err := s.Pull(ctx(t), ref)
		if !errors.Is(err, image.ErrTooLarge) || !strings.Contains(err.Error(), "image "+ref) {
			t.Errorf("limits %+v: %v", lim, err)
		}
		assertNoRootfs(t, s)
	}
}

func TestConcurrentPullsShareOneUnpack(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "demo/shared:1", whiteoutImage(t))
	s := open(t, image.Config{})
	var wg sync.WaitGroup
	imgs := make([]*image.Image, 4)
	errs := make([]error, 4)
	for i := range imgs {
		wg.Go(func() { imgs[i], errs[i] = s.Pull(ctx(t), ref) })
	}
	wg.Wait()
	for i := range imgs {
		if errs[i] != nil || imgs[i].Rootfs != imgs[0].Rootfs {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
	}
	ents, _ := os.ReadDir(filepath.Join(s.Dir(), "rootfs"))
	if len(ents) != 1 {
		t.Fatalf("rootfs holds %d entries, want one image", len(ents))
	}
}

// TestMirror pulls through a mirror (a TLS proxy in front of the
// registry, as the region's cache): requests go to the mirror over HTTPS
// (though it is on loopback), naming the upstream registry in "ns".
func TestMirror(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "demo/mirrored:1", whiteoutImage(t))
	target, _ := url.Parse("http://" + reg.Host)
	var mu sync.Mutex
	var seen []string
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	defer srv.Close()
	mirror := strings.TrimPrefix(srv.URL, "https://")
	upstream := "registry.example"
	s := open(t, image.Config{Mirror: mirror, Transport: srv.Client().Transport})
	// The image's own registry is one nobody can reach: only the mirror
	// serves it (the repository path is the same).
	theirRef := upstream + "/demo/mirrored@" + strings.Split(ref, "@")[1]
	img, err := s.Pull(ctx(t), theirRef)
	if err != nil {
		t.Fatal(err)
	}
	if img.Ref != theirRef {
		t.Errorf("ref %s", img.Ref)
	}
	mu.Lock()
	defer mu.Unlock()
	manifests := 0
	for _, p := range seen {
		if strings.Contains(p, "/manifests/") || strings.Contains(p, "/blobs/") {
			manifests++
			if !strings.Contains(p, "ns="+upstream) {
				t.Errorf("mirror request %s does not name the upstream", p)
			}
		}
	}
	if manifests == 0 {
		t.Errorf("the mirror served nothing: %v", seen)
	}
}
