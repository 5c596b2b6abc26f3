package region

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// cacheEnv is a real region server (embedded etcd) with its image cache,
// a real registry (Debian's docker-registry) behind a counting proxy that
// stands for the upstream registry, and machines that joined the region
// over mutual TLS and pull through it with the machine's image store.
type cacheEnv struct {
	in     *pkitest.Installation
	srv    *Server
	global *regionapi.Client
	reg    *imagetest.Registry
	up     *imagetest.Proxy
}

func newCacheEnv(t *testing.T, rc imagetest.RegistryConfig, tweak func(*Config)) *cacheEnv {
	t.Helper()
	testutil.NoLeaks(t) // before the registry and its proxy: their Close is checked too
	e := &cacheEnv{in: pkitest.New(t, "fra"), reg: imagetest.StartRegistryWith(t, rc)}
	e.up = imagetest.StartProxy(t, e.reg.Host)
	e.srv = single(t, e.in, "fra", tweak)
	e.global = regionapi.NewClient(e.srv.URL(), e.in.GlobalClient(t))
	testutil.Eventually(t, 20*time.Second, "region leads", func() (bool, string) { return e.srv.IsLeader(), "not leading" })
	return e
}

// machine joins machine id (heartbeating until the test ends) and returns
// it with an image store that pulls through the region's cache.
func (e *cacheEnv) machine(t *testing.T, id string) (*fakeMachine, *image.Store) {
	t.Helper()
	m := joinMachine(t, e.in, e.srv, id, "dc1", 4000, 4096)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	m.keepAlive(t, stop)
	return m, e.store(t, m)
}

// waitReady waits until n machines are ready (their first heartbeat in).
func (e *cacheEnv) waitReady(t testing.TB, n int) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, fmt.Sprintf("%d machines ready", n), func() (bool, string) {
		ms, err := e.global.Machines(testutil.Context(t, 10*time.Second))
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, m := range ms {
			if m.Ready {
				ready++
			}
		}
		return ready == n, fmt.Sprintf("%d ready", ready)
	})
}

// store is an image store of machine m pulling through the region.
func (e *cacheEnv) store(t *testing.T, m *fakeMachine) *image.Store {
	t.Helper()
	st, err := image.Open(image.Config{Dir: t.TempDir(), Mirror: e.srv.Addr(), Transport: e.in.Client(t, m.leaf).Transport,
		PullTimeout: time.Minute, Logger: testutil.Logger(t).With("test_store", m.id)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// deploy applies service org.web.<svc> running img (at digest, when set)
// with count instances; tweak adjusts the apply.
func (e *cacheEnv) deploy(t *testing.T, org, svc string, gen int64, dep, img, digest string, count int, registrySecret string, secrets map[string]string, tweak ...func(*regionapi.Apply)) {
	t.Helper()
	a := testApply("fra", gen, dep, count)
	a.Org, a.Service = org, svc
	a.Definition.Name, a.Definition.Command = svc, nil
	a.Definition.Image, a.Definition.ImageDigest, a.Definition.RegistrySecret = img, digest, registrySecret
	a.Definition.InstanceType = api.InstanceType{Name: "small", MilliCPU: 100, MemoryMB: 64}
	a.Secrets = secrets
	for _, f := range tweak {
		f(&a)
	}
	if _, err := e.global.Apply(testutil.Context(t, time.Minute), a); err != nil {
		t.Fatalf("apply %s: %v", dep, err)
	}
}

// waitAssigned waits until machine m has an instance of deployment dep.
func waitAssigned(t *testing.T, m *fakeMachine, dep string) regionapi.Assignment {
	t.Helper()
	var got regionapi.Assignment
	testutil.Eventually(t, 30*time.Second, m.id+" assigned "+dep, func() (bool, string) {
		for _, a := range m.assignments(t) {
			if a.DeploymentID == dep {
				got = a
				return true, ""
			}
		}
		return false, "not yet"
	})
	return got
}

// randomImage is an image of n layers of size bytes of random content
// each (incompressible: the compressed layers are as large).
func randomImage(t testing.TB, n, size int) v1.Image {
	t.Helper()
	var layers []v1.Layer
	for i := range n {
		b := make([]byte, size)
		rand.Read(b)
		layers = append(layers, imagetest.Layer(t, imagetest.File{Name: fmt.Sprintf("data/%d.bin", i), Body: string(b)}))
	}
	return imagetest.Image(t, v1.Config{Entrypoint: []string{"/bin/app"}}, layers...)
}

// blobsOf lists an image's config and layer digests with their sizes.
func blobsOf(t testing.TB, img v1.Image) map[string]int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{m.Config.Digest.String(): m.Config.Size}
	for _, l := range m.Layers {
		out[l.Digest.String()] = l.Size
	}
	return out
}

func digestOf(t testing.TB, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// TestImageCacheOneUpstreamFetchPerRegion: three machines of one region
// pull the same image at once through the region: each blob is fetched
// from upstream once, one copy of the image's bytes crosses from upstream,
// and every machine gets the verified image. With the upstream registry
// stopped, a machine with an empty store still gets the image from the
// region. The registry secret reaches no machine.
func TestImageCacheOneUpstreamFetchPerRegion(t *testing.T) {
	e := newCacheEnv(t, imagetest.RegistryConfig{}, nil)
	img := randomImage(t, 3, 200<<10)
	e.reg.Push(t, "shop/web:1", img)
	ref := e.up.Host + "/shop/web:1"
	digest := digestOf(t, img)

	var ms []*fakeMachine
	var stores []*image.Store
	for _, id := range []string{"m1", "m2", "m3"} {
		m, st := e.machine(t, id)
		ms, stores = append(ms, m), append(stores, st)
	}
	e.waitReady(t, 3)
	e.deploy(t, "acme", "web", 1, "dep-1", ref, digest, 3, "regcred", map[string]string{"regcred": "user:not-needed-here", "db": "db-pass"},
		func(a *regionapi.Apply) { a.Definition.Env = []api.ResolvedEnv{{Key: "DB_PASSWORD", Secret: "db"}} })
	for _, m := range ms {
		as := waitAssigned(t, m, "dep-1")
		if len(as.Secrets) != 1 || as.Secrets["db"] != "db-pass" {
			t.Errorf("machine %s received secrets %v: want its env's only (the registry secret stays in the region)", m.id, as.Secrets)
		}
	}
	pinned := e.up.Host + "/shop/web@" + digest
	var wg sync.WaitGroup
	errs := make([]error, len(stores))
	for i, st := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got *image.Image
			got, errs[i] = st.Pull(testutil.Context(t, time.Minute), pinned)
			if errs[i] == nil && got.Digest != digest {
				errs[i] = fmt.Errorf("pulled %s, want %s", got.Digest, digest)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("machine %s: %v", ms[i].id, err)
		}
	}
	var total int64
	for d, size := range blobsOf(t, img) {
		if n := e.up.BlobGets("shop/web", d); n != 1 {
			t.Errorf("blob %s fetched from upstream %d times, want once", d, n)
		}
		total += size
	}
	if got := e.up.BlobBytes(); got != total {
		t.Errorf("upstream sent %d blob bytes for 3 machines, want one copy: %d", got, total)
	}
	t.Logf("3 machines, one image of %d bytes: %d blob bytes from upstream (%v)", total, e.up.BlobBytes(), e.up.AllBlobGets())

	// Upstream down: a machine with an empty store still gets the image.
	e.reg.Stop()
	again := e.store(t, ms[0])
	if _, err := again.Pull(testutil.Context(t, time.Minute), pinned); err != nil {
		t.Fatalf("pull with the upstream registry stopped: %v", err)
	}
}

// TestImageCacheServesTagWhileUpstreamIsDown: a deployment without a
// resolved digest runs its tag; the cache keeps the tag's last
// resolution, served while the upstream registry is down.
func TestImageCacheServesTagWhileUpstreamIsDown(t *testing.T) {
	e := newCacheEnv(t, imagetest.RegistryConfig{}, nil)
	img := randomImage(t, 1, 10<<10)
	e.reg.Push(t, "shop/web:1", img)
	ref := e.up.Host + "/shop/web:1"
	m, st := e.machine(t, "m1")
	e.deploy(t, "acme", "web", 1, "dep-1", ref, "", 1, "", nil)
	waitAssigned(t, m, "dep-1")
	if _, err := st.Pull(testutil.Context(t, time.Minute), ref); err != nil {
		t.Fatal(err)
	}
	e.reg.Stop()
	got, err := e.store(t, m).Pull(testutil.Context(t, time.Minute), ref)
	if err != nil {
		t.Fatalf("pull by tag with the upstream registry stopped: %v", err)
	}
	if got.Digest != digestOf(t, img) {
		t.Errorf("tag served as %s, want %s", got.Digest, digestOf(t, img))
	}
}

// TestImageCacheTenancy: a machine reads only the images of the instances
// assigned to it. Another organization's machine is refused the image's
// manifest and blobs by digest, and a hostile registry's manifest naming
// another organization's private layer gets nothing from the cache: the
// cache shows a blob to a new scope only after that scope's own upstream
// has it (the hostile registry does not).
func TestImageCacheTenancy(t *testing.T) {
	e := newCacheEnv(t, imagetest.RegistryConfig{Users: map[string]string{"acme": "s3cret-pass"}}, nil)
	private := randomImage(t, 1, 50<<10)
	e.reg.Push(t, "acme/secret:1", private)
	privDigest := digestOf(t, private)
	privLayer := ""
	for d, size := range blobsOf(t, private) {
		if size > 40<<10 {
			privLayer = d
		}
	}

	m1, st1 := e.machine(t, "m1")
	e.deploy(t, "acme", "secret", 1, "dep-acme", e.up.Host+"/acme/secret:1", privDigest, 1, "regcred",
		map[string]string{"regcred": "acme:s3cret-pass"})
	waitAssigned(t, m1, "dep-acme")
	if _, err := st1.Pull(testutil.Context(t, time.Minute), e.up.Host+"/acme/secret@"+privDigest); err != nil {
		t.Fatalf("the owner's pull: %v", err)
	}

	// A hostile registry serves a manifest naming acme's private layer.
	evilCfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]},"config":{}}`)
	evilCfgDigest := v1.Hash{Algorithm: "sha256", Hex: sha256Hex(evilCfg)}
	layerHash, _ := v1.NewHash(privLayer)
	evilManifest, _ := json.Marshal(v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: evilCfgDigest, Size: int64(len(evilCfg))},
		Layers: []v1.Descriptor{{MediaType: types.OCILayer, Digest: layerHash, Size: blobsOf(t, private)[privLayer]}}})
	evilDigest := "sha256:" + sha256Hex(evilManifest)
	var evilAsked sync.Map
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		evilAsked.Store(r.Method+" "+r.URL.Path, true)
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(200)
		case strings.HasSuffix(r.URL.Path, "/manifests/"+evilDigest):
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			w.Header().Set("Docker-Content-Digest", evilDigest)
			w.Write(evilManifest)
		default:
			w.WriteHeader(404)
			w.Write([]byte(`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`))
		}
	}))
	t.Cleanup(evil.Close)
	evilHost := strings.TrimPrefix(evil.URL, "http://")

	m2 := joinMachine(t, e.in, e.srv, "m2", "dc2", 4000, 4096)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	m2.keepAlive(t, stop)
	e.deploy(t, "evil", "app", 1, "dep-evil", evilHost+"/evil/app@"+evilDigest, "", 1, "", nil,
		func(a *regionapi.Apply) { a.Definition.Datacenters = []string{"dc2"} })
	waitAssigned(t, m2, "dep-evil")

	hc := e.in.Client(t, m2.leaf)
	get := func(path string) (int, string) {
		resp, err := hc.Get("https://" + e.srv.Addr() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, b.String()
	}
	ns := "?ns=" + e.up.Host
	for _, path := range []string{
		"/v2/acme/secret/manifests/" + privDigest + ns,
		"/v2/acme/secret/manifests/1" + ns,
		"/v2/acme/secret/blobs/" + privLayer + ns,
	} {
		if code, body := get(path); code != http.StatusForbidden || !strings.Contains(body, "DENIED") {
			t.Errorf("m2 GET %s: %d %s, want 403 DENIED", path, code, body)
		}
	}
	// Through its own image: the manifest is served (it is m2's), the
	// private layer is not (the hostile registry does not have it).
	code, body := get("/v2/evil/app/manifests/" + evilDigest + "?ns=" + evilHost)
	if code != http.StatusOK {
		t.Fatalf("m2's own manifest: %d %s", code, body)
	}
	code, body = get("/v2/evil/app/blobs/" + privLayer + "?ns=" + evilHost)
	if code == http.StatusOK || strings.Contains(body, "data/0.bin") {
		t.Fatalf("m2 read acme's private layer through a hostile manifest: %d", code)
	}
	if _, ok := evilAsked.Load("HEAD /v2/evil/app/blobs/" + privLayer); !ok {
		t.Errorf("the cache did not check the layer at the hostile registry before refusing")
	}
	t.Logf("hostile manifest's private layer: %d %s", code, body)
	if strings.Contains(body, "s3cret-pass") {
		t.Errorf("the answer holds acme's registry password")
	}
	// Only machines: the global plane's certificate is refused.
	resp, err := e.in.GlobalClient(t).Get("https://" + e.srv.Addr() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("global's GET /v2/: %d, want 403", resp.StatusCode)
	}
}

func sha256Hex(b []byte) string {
	h, _, _ := v1.SHA256(strings.NewReader(string(b)))
	return h.Hex
}

// TestImageCacheRefusesBadUpstream: a blob whose bytes do not match its
// digest is refused and never stored (the machine's pull fails naming the
// image and the digest); an image larger than the cache's cap is refused
// with the cap; wrong credentials fail clearly without the password in
// any answer; an unknown tag fails as unknown.
func TestImageCacheRefusesBadUpstream(t *testing.T) {
	e := newCacheEnv(t, imagetest.RegistryConfig{Users: map[string]string{"acme": "right-pass"}},
		func(c *Config) { c.Images.MaxBytes = 1 << 20 })
	small := randomImage(t, 1, 30<<10)
	e.reg.Push(t, "acme/small:1", small)
	e.reg.Push(t, "acme/other:1", small)
	big := randomImage(t, 2, 600<<10)
	e.reg.Push(t, "acme/big:1", big)
	corrupt := randomImage(t, 1, 30<<10)
	e.reg.Push(t, "acme/corrupt:1", corrupt)
	var corruptLayer string
	for d, size := range blobsOf(t, corrupt) {
		if size > 20<<10 {
			corruptLayer = d
		}
	}
	e.up.Corrupt(corruptLayer)
	m, st := e.machine(t, "m1")
	good := map[string]string{"regcred": `{"auths":{"` + e.up.Host + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("acme:right-pass")) + `"}}}`}
	e.deploy(t, "acme", "small", 1, "dep-small", e.up.Host+"/acme/small:1", digestOf(t, small), 1, "regcred", good)
	e.deploy(t, "acme", "big", 1, "dep-big", e.up.Host+"/acme/big:1", digestOf(t, big), 1, "regcred", good)
	e.deploy(t, "acme", "corrupt", 1, "dep-corrupt", e.up.Host+"/acme/corrupt:1", digestOf(t, corrupt), 1, "regcred", good)
	e.deploy(t, "acme", "wrong", 1, "dep-wrong", e.up.Host+"/acme/other:1", "", 1, "regcred", map[string]string{"regcred": "acme:wrong-pass"})
	e.deploy(t, "acme", "missing", 1, "dep-missing", e.up.Host+"/acme/nothing:9", "", 1, "regcred", good)
	for _, dep := range []string{"dep-small", "dep-big", "dep-corrupt", "dep-wrong", "dep-missing"} {
		waitAssigned(t, m, dep)
	}
	pull := func(ref string) error {
		_, err := st.Pull(testutil.Context(t, 2*time.Minute), ref)
		return err
	}
	if err := pull(e.up.Host + "/acme/small@" + digestOf(t, small)); err != nil {
		t.Fatalf("docker config JSON credentials: %v", err)
	}

	err := pull(e.up.Host + "/acme/corrupt@" + digestOf(t, corrupt))
	t.Logf("corrupt blob: %v", err)
	if err == nil {
		t.Fatal("an image with a corrupted blob was pulled")
	}
	// The first pull sees its blob cut short; the next one the reason.
	err = pull(e.up.Host + "/acme/corrupt@" + digestOf(t, corrupt))
	t.Logf("corrupt blob, again: %v", err)
	if err == nil || !strings.Contains(err.Error(), "acme/corrupt") || !strings.Contains(err.Error(), "digest") {
		t.Errorf("corrupt blob: %v, want the image and the digest mismatch", err)
	}
	hex := strings.TrimPrefix(corruptLayer, "sha256:")
	if _, err := os.Stat(filepath.Join(e.srv.images.store.blobDir(), hex)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the corrupt blob was stored in the cache: %v", err)
	}

	err = pull(e.up.Host + "/acme/big@" + digestOf(t, big))
	t.Logf("over the cap: %v", err)
	if err == nil || !strings.Contains(err.Error(), "acme/big") || !strings.Contains(err.Error(), "image cache cap") {
		t.Errorf("an image over the cap: %v, want the image and the cap", err)
	}

	err = pull(e.up.Host + "/acme/other:1")
	t.Logf("wrong credentials: %v", err)
	if err == nil || !strings.Contains(err.Error(), "refused the credentials") || !strings.Contains(err.Error(), `registry secret "regcred"`) {
		t.Errorf("wrong credentials: %v, want the refusal naming the secret", err)
	}
	if err != nil && strings.Contains(err.Error(), "wrong-pass") {
		t.Errorf("the error shows the password: %v", err)
	}

	err = pull(e.up.Host + "/acme/nothing:9")
	t.Logf("unknown image: %v", err)
	if err == nil || !errors.Is(err, image.ErrNotFound) || !strings.Contains(err.Error(), "acme/nothing:9") {
		t.Errorf("unknown image: %v, want not found naming the image", err)
	}
}

// TestImageCacheEvictsUnusedImagesFirst: at its cap the cache evicts the
// blobs of images no current service uses, least recently used first,
// and keeps those of current services.
func TestImageCacheEvictsUnusedImagesFirst(t *testing.T) {
	e := newCacheEnv(t, imagetest.RegistryConfig{}, func(c *Config) { c.Images.MaxBytes = 700 << 10 })
	imgs := map[string]v1.Image{"a": randomImage(t, 1, 200<<10), "b": randomImage(t, 1, 200<<10), "c": randomImage(t, 1, 200<<10), "d": randomImage(t, 1, 200<<10)}
	for n, img := range imgs {
		e.reg.Push(t, "acme/"+n+":1", img)
	}
	m, st := e.machine(t, "m1")
	pull := func(n string, gen int64) {
		t.Helper()
		dep := fmt.Sprintf("dep-%s-%d", n, gen)
		e.deploy(t, "acme", n, gen, dep, e.up.Host+"/acme/"+n+":1", digestOf(t, imgs[n]), 1, "", nil)
		waitAssigned(t, m, dep)
		if _, err := st.Pull(testutil.Context(t, time.Minute), e.up.Host+"/acme/"+n+"@"+digestOf(t, imgs[n])); err != nil {
			t.Fatalf("pull %s: %v", n, err)
		}
	}
	pull("a", 1)
	pull("b", 1)
	pull("c", 1)
	// b is deleted: its image is unused; a (older) stays in use.
	if err := e.global.DeleteService(testutil.Context(t, time.Minute), "acme.web.b", 2); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "b's instance stopped", func() (bool, string) {
		for _, a := range m.assignments(t) {
			if strings.HasPrefix(a.DeploymentID, "dep-b") {
				return false, "still assigned"
			}
		}
		return true, ""
	})
	pull("d", 1)
	stored := func(img v1.Image) bool {
		for d := range blobsOf(t, img) {
			if _, _, ok, _ := e.srv.images.store.lookup(mustHash(d), "acme/"+e.up.Host); !ok {
				return false
			}
		}
		return true
	}
	if stored(imgs["b"]) {
		t.Errorf("the unused image b was kept")
	}
	for _, n := range []string{"a", "c", "d"} {
		if !stored(imgs[n]) {
			t.Errorf("image %s of a current service was evicted", n)
		}
	}
}

func mustHash(s string) v1.Hash {
	h, err := v1.NewHash(s)
	if err != nil {
		panic(err)
	}
	return h
}

// TestApplyChecksImageFields: a registry secret without its value, or
// without an image, and an image digest that is not a sha256 digest are
// refused with the field; nothing is written.
func TestApplyChecksImageFields(t *testing.T) {
	in := pkitest.New(t, "fra")
	s := single(t, in, "fra", nil)
	c := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	a := testApply("fra", 1, "dep-1", 1)
	a.Definition.Image, a.Definition.RegistrySecret, a.Definition.ImageDigest = "registry.example/web:1", "regcred", "md5:abc"
	_, err := c.Apply(testutil.Context(t, time.Minute), a)
	ae := apiStatus(t, err, 400)
	paths := map[string]bool{}
	for _, f := range ae.Fields {
		paths[f.Path] = true
	}
	if !paths["secrets"] || !paths["definition.image_digest"] {
		t.Errorf("fields %v, want secrets (the registry secret's value) and definition.image_digest", ae.Fields)
	}
	a.Definition.Image, a.Definition.ImageDigest = "", ""
	a.Secrets = map[string]string{"regcred": "u:p"}
	_, err = c.Apply(testutil.Context(t, time.Minute), a)
	if ae := apiStatus(t, err, 400); len(ae.Fields) != 1 || ae.Fields[0].Path != "definition.registry_secret" {
		t.Errorf("a registry secret without an image: %v", ae.Fields)
	}
	if _, err := c.Status(testutil.Context(t, time.Minute), "acme.web.api"); err == nil {
		t.Errorf("a refused apply wrote the service")
	}
}
