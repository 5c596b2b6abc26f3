package region

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/singleflight"

	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/sched"
)

// imageCache is a region server's pull-through image cache: an OCI
// distribution endpoint (GET and HEAD of /v2/<repository>/manifests/<ref>
// and /v2/<repository>/blobs/<digest>, the upstream registry named by the
// "ns" query parameter, containerd's mirror convention) on the region's
// API listener, for this region's machines only. A machine reads only the
// images of the instances assigned to it; the cache fetches what it lacks
// from upstream with the credentials of the service using the image, once
// per blob however many machines ask at once, verifying every byte
// against its digest; see blobCache for what it keeps.
type imageCache struct {
	s        *Server
	cfg      ImageCacheConfig
	log      *slog.Logger
	store    *blobCache
	upstream http.RoundTripper
	flight   singleflight.Group // manifest fetches, by scope and reference
}

func (s *Server) openImageCache() (*imageCache, error) {
	cfg := s.cfg.Images
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(s.cfg.DataDir, "images")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultImageCacheMaxBytes
	}
	if cfg.MaxBytes < 0 {
		return nil, fmt.Errorf("region: config: image cache MaxBytes %d is negative", cfg.MaxBytes)
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 10 * time.Minute
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	ic := &imageCache{s: s, cfg: cfg, log: s.log.With("part", "image-cache"),
		upstream: image.NewRegistryTransport(cfg.Transport, cfg.Insecure)}
	store, err := openBlobCache(cfg.Dir, cfg.MaxBytes, ic.log, ic.inUse)
	if err != nil {
		return nil, err
	}
	ic.store = store
	return ic, nil
}

// imageUse is an image a service uses, as the cache sees it: where it
// comes from, with whose credentials.
type imageUse struct {
	image   string // as written, for messages
	org     string
	repo    name.Repository
	tag     string  // the tag written, if any
	digest  v1.Hash // ImageDigest, or the digest written; zero if neither
	scope   string  // org/registry/repository: who proved access to what
	secret  string  // the registry secret's name, for messages
	auth    authn.Authenticator
	authErr error
}

// use returns the image of deployment dep's spec (false without one).
func (ic *imageCache) use(sp specRecord) (imageUse, bool) {
	d := sp.Definition
	if d.Image == "" {
		return imageUse{}, false
	}
	ref, err := image.ParseRef(d.Image, ic.cfg.Insecure)
	if err != nil {
		return imageUse{}, false
	}
	u := imageUse{image: d.Image, org: sp.Org, repo: ref.Context(), secret: d.RegistrySecret, auth: authn.Anonymous}
	u.scope = sp.Org + "/" + u.repo.RegistryStr() + "/" + u.repo.RepositoryStr()
	switch r := ref.(type) {
	case name.Tag:
		u.tag = r.TagStr()
	case name.Digest:
		u.digest, _ = v1.NewHash(r.DigestStr())
	}
	if d.ImageDigest != "" {
		if h, err := v1.NewHash(d.ImageDigest); err == nil {
			u.digest = h
		}
	}
	if d.RegistrySecret != "" {
		sealed, ok := sp.Secrets[d.RegistrySecret]
		if !ok {
			u.authErr = fmt.Errorf("the value of registry secret %q is missing", d.RegistrySecret)
			return u, true
		}
		vals, err := ic.s.sealer.open(sp.DeploymentID, map[string][]byte{d.RegistrySecret: sealed})
		if err != nil {
			u.authErr = fmt.Errorf("registry secret %q: %w", d.RegistrySecret, err)
			return u, true
		}
		if u.auth, err = image.Credentials(vals[d.RegistrySecret], u.repo.RegistryStr()); err != nil {
			u.authErr = fmt.Errorf("registry secret %q: %w", d.RegistrySecret, err)
		}
	}
	return u, true
}

// machineUses returns the images of the instances assigned to machine
// that come from repository repo of registry ns.
func (ic *imageCache) machineUses(ctx context.Context, machine, ns, repo string) ([]imageUse, error) {
	s := ic.s
	resp, err := s.cli.Get(ctx, s.keys.assignMachine(machine), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read assignments: %w", err)
	}
	seen := map[string]bool{}
	var out []imageUse
	for _, kv := range resp.Kvs {
		var a assignRecord
		if json.Unmarshal(kv.Value, &a) != nil || a.State == string(sched.StateLost) || seen[a.DeploymentID] {
			continue
		}
		seen[a.DeploymentID] = true
		sp, err := s.spec(ctx, a.DeploymentID)
		if err != nil {
			continue
		}
		if u, ok := ic.use(sp); ok && u.repo.RegistryStr() == ns && u.repo.RepositoryStr() == repo {
			out = append(out, u)
		}
	}
	return out, nil
}

// root is the digest of u's image as the cache knows it: its digest, or
// what its tag last resolved to.
func (ic *imageCache) root(u imageUse) (v1.Hash, bool) {
	if u.digest.Hex != "" {
		return u.digest, true
	}
	if u.tag != "" {
		return ic.store.tag(u.scope, u.tag)
	}
	return v1.Hash{}, false
}

// contents lists what u's image is made of, as far as the cache holds its
// manifests: its manifests (the root, and an index's children), and each
// config and layer with its size.
func (ic *imageCache) contents(u imageUse) (manifests map[string]bool, blobs map[string]int64) {
	manifests, blobs = map[string]bool{}, map[string]int64{}
	root, ok := ic.root(u)
	if !ok {
		return manifests, blobs
	}
	manifests[root.String()] = true
	queue := []v1.Hash{root}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		data := ic.store.readManifest(d)
		if data == nil {
			continue
		}
		if idx, err := v1.ParseIndexManifest(strings.NewReader(string(data))); err == nil && len(idx.Manifests) > 0 {
			for _, m := range idx.Manifests {
				if !manifests[m.Digest.String()] && m.MediaType.IsImage() {
					manifests[m.Digest.String()] = true
					queue = append(queue, m.Digest)
				}
			}
			continue
		}
		m, err := v1.ParseManifest(strings.NewReader(string(data)))
		if err != nil {
			continue
		}
		blobs[m.Config.Digest.String()] = m.Config.Size
		for _, l := range m.Layers {
			blobs[l.Digest.String()] = l.Size
		}
	}
	return manifests, blobs
}

// inUse returns the digests of the images of the region's current
// services and running instances (manifests, configs, layers): the cache
// evicts other blobs first.
func (ic *imageCache) inUse(ctx context.Context) (map[string]bool, error) {
	st, err := ic.s.load(ctx)
	if err != nil {
		return nil, err
	}
	deps := map[string]bool{}
	for _, r := range st.services {
		if !r.Deleted {
			deps[r.DeploymentID] = true
		}
	}
	for _, a := range st.assigns {
		deps[a.DeploymentID] = true
	}
	out := map[string]bool{}
	for dep := range deps {
		sp, err := ic.s.spec(ctx, dep)
		if err != nil {
			continue
		}
		u, ok := ic.use(sp)
		if !ok {
			continue
		}
		ms, bs := ic.contents(u)
		for d := range ms {
			out[d] = true
		}
		for d := range bs {
			out[d] = true
		}
	}
	return out, nil
}

// registryError is an answer in the distribution API's error format.
type registryError struct {
	status  int
	code    string
	message string
}

func (e *registryError) Error() string { return e.code + ": " + e.message }

func regErr(status int, code, format string, args ...any) *registryError {
	return &registryError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func writeRegistryError(w http.ResponseWriter, e *registryError) {
	type diag struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, e.status, map[string][]diag{"errors": {{Code: e.code, Message: e.message}}})
}

// serve answers the distribution API for an authenticated machine.
func (ic *imageCache) serve(w http.ResponseWriter, r *http.Request) error {
	machine := callerOf(r.Context()).Machine
	if err := ic.route(w, r, machine); err != nil {
		if r.Context().Err() != nil {
			return nil // the machine went away
		}
		var re *registryError
		if !errors.As(err, &re) {
			ic.log.Error("image cache request failed", "machine", machine, "path", r.URL.Path, "err", err)
			re = regErr(http.StatusInternalServerError, "UNKNOWN", "region image cache: %v", err)
		} else {
			ic.log.Info("image cache refused", "machine", machine, "path", r.URL.Path, "ns", r.URL.Query().Get("ns"), "status", re.status, "reason", re.message)
		}
		writeRegistryError(w, re)
	}
	return nil
}

func (ic *imageCache) route(w http.ResponseWriter, r *http.Request, machine string) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return regErr(http.StatusMethodNotAllowed, "UNSUPPORTED", "the region's image cache is read-only: %s is not supported", r.Method)
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	if rest == "" {
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	var repo, kind, ref string
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		repo, kind, ref = rest[:i], "manifests", rest[i+len("/manifests/"):]
	} else if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		repo, kind, ref = rest[:i], "blobs", rest[i+len("/blobs/"):]
	} else {
		return regErr(http.StatusNotFound, "UNSUPPORTED", "no route for %s: the cache serves manifests and blobs", r.URL.Path)
	}
	ns := r.URL.Query().Get("ns")
	if ns == "" {
		return regErr(http.StatusBadRequest, "NAME_INVALID", "the ns query parameter must name the upstream registry of %s", repo)
	}
	uses, err := ic.machineUses(r.Context(), machine, ns, repo)
	if err != nil {
		return err
	}
	if len(uses) == 0 {
		return regErr(http.StatusForbidden, "DENIED", "no instance assigned to machine %s runs an image of %s/%s", machine, ns, repo)
	}
	if kind == "manifests" {
		return ic.manifest(w, r, uses, ref)
	}
	d, err := v1.NewHash(ref)
	if err != nil {
		return regErr(http.StatusBadRequest, "DIGEST_INVALID", "blob %q: %v", ref, err)
	}
	return ic.blob(w, r, uses, d)
}

// manifest serves a manifest or index of one of uses by tag or digest.
func (ic *imageCache) manifest(w http.ResponseWriter, r *http.Request, uses []imageUse, ref string) error {
	ctx := r.Context()
	d, err := v1.NewHash(ref)
	if err != nil { // a tag
		i := slices.IndexFunc(uses, func(u imageUse) bool { return u.tag == ref })
		if i < 0 {
			return regErr(http.StatusForbidden, "DENIED", "tag %q is not the one of the images assigned to this machine (%s)", ref, imageNames(uses))
		}
		u := uses[i]
		d, mt, err := ic.resolveTag(ctx, u)
		if err != nil {
			return err
		}
		return ic.sendManifest(w, r, u, d, mt)
	}
	var u imageUse
	found := false
	for _, c := range uses {
		if ms, _ := ic.contents(c); ms[d.String()] {
			u, found = c, true
			break
		}
	}
	if !found {
		return regErr(http.StatusForbidden, "DENIED", "manifest %s is not part of the images assigned to this machine (%s)", d, imageNames(uses))
	}
	_, mt, ok, allowed := ic.store.lookup(d, u.scope)
	if !ok || !allowed {
		if mt, err = ic.fetchManifest(ctx, u, u.repo.Digest(d.String())); err != nil {
			return err
		}
	}
	return ic.sendManifest(w, r, u, d, mt)
}

func imageNames(uses []imageUse) string {
	names := make([]string, len(uses))
	for i, u := range uses {
		names[i] = u.image
	}
	return strings.Join(names, ", ")
}

// resolveTag resolves u's tag upstream and keeps the manifest; with the
// upstream unavailable it answers the tag's last resolution.
func (ic *imageCache) resolveTag(ctx context.Context, u imageUse) (v1.Hash, string, error) {
	v, err, _ := ic.flight.Do(u.scope+":"+u.tag, func() (any, error) {
		return ic.fetch(ctx, u, u.repo.Tag(u.tag))
	})
	if err == nil {
		f := v.(fetched)
		ic.store.setTag(u.scope, u.tag, f.d)
		return f.d, f.mt, nil
	}
	if unavailable(err) {
		if d, ok := ic.store.tag(u.scope, u.tag); ok {
			if _, mt, ok, allowed := ic.store.lookup(d, u.scope); ok && allowed {
				ic.log.Warn("upstream registry unavailable: serving the tag's last resolution", "image", u.image, "digest", d, "err", err)
				return d, mt, nil
			}
		}
	}
	return v1.Hash{}, "", ic.upstreamError(u, "manifest "+u.tag, err)
}

// fetchManifest fetches a manifest by digest from upstream for u's scope.
func (ic *imageCache) fetchManifest(ctx context.Context, u imageUse, ref name.Digest) (string, error) {
	v, err, _ := ic.flight.Do(u.scope+"@"+ref.DigestStr(), func() (any, error) { return ic.fetch(ctx, u, ref) })
	if err != nil {
		return "", ic.upstreamError(u, "manifest "+ref.DigestStr(), err)
	}
	return v.(fetched).mt, nil
}

type fetched struct {
	d  v1.Hash
	mt string
}

// fetch gets a manifest or index from upstream, checks it and stores it
// for u's scope.
func (ic *imageCache) fetch(ctx context.Context, u imageUse, ref name.Reference) (fetched, error) {
	if u.authErr != nil {
		return fetched{}, u.authErr
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ic.cfg.FetchTimeout)
	defer cancel()
	desc, err := remote.Get(ref, ic.remoteOptions(ctx, u)...)
	if err != nil {
		return fetched{}, err
	}
	if len(desc.Manifest) > maxCachedManifest {
		return fetched{}, fmt.Errorf("%w: manifest of %d bytes", image.ErrTooLarge, len(desc.Manifest))
	}
	switch desc.MediaType {
	case types.OCIManifestSchema1, types.DockerManifestSchema2, types.OCIImageIndex, types.DockerManifestList:
	default:
		return fetched{}, fmt.Errorf("%w: manifest of media type %q (want an OCI or Docker v2 manifest or index)", image.ErrInvalid, desc.MediaType)
	}
	if !digestMatches(desc.Digest, desc.Manifest) {
		return fetched{}, fmt.Errorf("%w: manifest %s does not match its digest", image.ErrDigest, desc.Digest)
	}
	if err := ic.store.putManifest(ctx, desc.Digest, string(desc.MediaType), desc.Manifest, u.scope); err != nil {
		return fetched{}, err
	}
	return fetched{d: desc.Digest, mt: string(desc.MediaType)}, nil
}

func (ic *imageCache) remoteOptions(ctx context.Context, u imageUse) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithAuth(u.auth), remote.WithTransport(ic.upstream),
		remote.WithUserAgent("meridian-region-image-cache")}
}

// sendManifest answers a stored manifest, after checking that the image
// fits in the cache.
func (ic *imageCache) sendManifest(w http.ResponseWriter, r *http.Request, u imageUse, d v1.Hash, mt string) error {
	data := ic.store.readManifest(d)
	if data == nil {
		return regErr(http.StatusServiceUnavailable, "UNAVAILABLE", "manifest %s of %s left the cache; try again", d, u.image)
	}
	if m, err := v1.ParseManifest(strings.NewReader(string(data))); err == nil && !types.MediaType(mt).IsIndex() {
		total := m.Config.Size
		for _, l := range m.Layers {
			total += l.Size
		}
		if total > ic.cfg.MaxBytes {
			return regErr(http.StatusForbidden, "DENIED", "image %s (%s) is %d bytes, %v of %d bytes", u.image, d, total, errOverCap, ic.cfg.MaxBytes)
		}
	}
	ic.store.touch(d)
	h := w.Header()
	h.Set("Content-Type", mt)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(data)
	}
	return nil
}

// blob serves a config or layer of one of uses, from the cache or
// following its fetch from upstream.
func (ic *imageCache) blob(w http.ResponseWriter, r *http.Request, uses []imageUse, d v1.Hash) error {
	ctx := r.Context()
	var u imageUse
	var size int64 = -1
	for _, c := range uses {
		if _, bs := ic.contents(c); hasKey(bs, d.String()) {
			u, size = c, bs[d.String()]
			break
		}
	}
	if size < 0 {
		return regErr(http.StatusForbidden, "DENIED", "blob %s is not part of the images assigned to this machine (%s)", d, imageNames(uses))
	}
	if why := ic.store.badReason(d, size); why != "" {
		return regErr(http.StatusBadGateway, "DIGEST_INVALID", "image %s: %s", u.image, why)
	}
	storedSize, _, stored, allowed := ic.store.lookup(d, u.scope)
	if stored && storedSize != size {
		// The stored copy matched its digest: the manifest is wrong.
		return regErr(http.StatusBadGateway, "MANIFEST_INVALID", "image %s: its manifest gives blob %s %d bytes; it has %d", u.image, d, size, storedSize)
	}
	if stored && !allowed {
		if err := ic.checkUpstream(ctx, u, d); err != nil {
			return err
		}
		ic.store.allow(d, u.scope)
	}
	if stored {
		return ic.sendStored(w, r, u, d, size)
	}
	if r.Method == http.MethodHead {
		if err := ic.checkUpstream(ctx, u, d); err != nil {
			return err
		}
		writeBlobHeaders(w, d, size)
		return nil
	}
	if u.authErr != nil {
		return ic.upstreamError(u, "blob "+d.String(), u.authErr)
	}
	repoRef := u.repo.Digest(d.String())
	f, err := ic.store.startFill(ctx, d, size, u.scope, ic.cfg.FetchTimeout, func(ctx context.Context) (io.ReadCloser, error) {
		l, err := remote.Layer(repoRef, ic.remoteOptions(ctx, u)...)
		if err != nil {
			return nil, err
		}
		return l.Compressed()
	})
	if err != nil {
		return ic.upstreamError(u, "blob "+d.String(), err)
	}
	if f.scope != u.scope {
		// Another organization's fill: follow it only once upstream shows
		// the blob to this one's credentials.
		if err := ic.checkUpstream(ctx, u, d); err != nil {
			return err
		}
	}
	select {
	case <-f.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := f.progress().err; err != nil {
		return ic.upstreamError(u, "blob "+d.String(), err)
	}
	file, err := f.open(ic.store)
	if err != nil {
		return ic.upstreamError(u, "blob "+d.String(), err)
	}
	defer file.Close()
	writeBlobHeaders(w, d, size)
	if err := sendVerified(w, file, d, size, f.waitFor(ctx)); err != nil {
		if ctx.Err() == nil {
			ic.log.Warn("image cache: blob cut short", "image", u.image, "blob", d, "err", err)
		}
		panic(http.ErrAbortHandler) // the machine sees a truncated blob, never a wrong one
	}
	if f.scope != u.scope {
		ic.store.allow(d, u.scope)
	}
	return nil
}

func hasKey(m map[string]int64, k string) bool {
	_, ok := m[k]
	return ok
}

func writeBlobHeaders(w http.ResponseWriter, d v1.Hash, size int64) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
}

// sendStored serves a stored blob, verifying it as it goes; a damaged one
// is dropped (fetched again next time).
func (ic *imageCache) sendStored(w http.ResponseWriter, r *http.Request, u imageUse, d v1.Hash, size int64) error {
	file, err := os.Open(ic.store.path(d))
	if err != nil {
		ic.store.drop(d)
		return regErr(http.StatusServiceUnavailable, "UNAVAILABLE", "blob %s of %s left the cache; try again", d, u.image)
	}
	defer file.Close()
	ic.store.touch(d)
	writeBlobHeaders(w, d, size)
	if r.Method == http.MethodHead {
		return nil
	}
	if err := sendVerified(w, file, d, size, nil); err != nil {
		var de *digestError
		if errors.As(err, &de) {
			ic.log.Error("image cache: stored blob damaged; dropped", "image", u.image, "blob", d, "err", err)
			ic.store.drop(d)
		}
		panic(http.ErrAbortHandler)
	}
	return nil
}

// checkUpstream asks the upstream registry whether u's credentials see
// blob d in u's repository (a HEAD request: no bytes move).
func (ic *imageCache) checkUpstream(ctx context.Context, u imageUse, d v1.Hash) error {
	if u.authErr != nil {
		return ic.upstreamError(u, "blob "+d.String(), u.authErr)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	l, err := remote.Layer(u.repo.Digest(d.String()), ic.remoteOptions(ctx, u)...)
	if err != nil {
		return ic.upstreamError(u, "blob "+d.String(), err)
	}
	ok, err := partial.Exists(l)
	if err != nil {
		return ic.upstreamError(u, "blob "+d.String(), err)
	}
	if !ok {
		return regErr(http.StatusNotFound, "BLOB_UNKNOWN", "image %s: the upstream registry has no blob %s in %s", u.image, d, u.repo)
	}
	return nil
}

// unavailable reports whether an upstream error means the registry could
// not answer (unreachable, timed out, a server error), not that it refused.
func unavailable(err error) bool {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests
	}
	return errors.Is(image.Classify(err), image.ErrUnreachable) || errors.Is(err, context.DeadlineExceeded)
}

// upstreamError turns an upstream failure into the machine's answer,
// naming the image; credentials never appear in it.
func (ic *imageCache) upstreamError(u imageUse, what string, err error) error {
	var re *registryError
	if errors.As(err, &re) {
		return re
	}
	secret := "no registry_secret"
	if u.secret != "" {
		secret = fmt.Sprintf("registry secret %q", u.secret)
	}
	var te *transport.Error
	var de *digestError
	switch {
	case errors.Is(err, errFillSize):
		return regErr(http.StatusServiceUnavailable, "UNAVAILABLE", "image %s: %s: %v; try again", u.image, what, err)
	case errors.Is(err, errOverCap):
		return regErr(http.StatusForbidden, "DENIED", "image %s: %s: %v", u.image, what, err)
	case u.authErr != nil && errors.Is(err, u.authErr):
		return regErr(http.StatusForbidden, "DENIED", "image %s: %v", u.image, err)
	case errors.As(err, &de):
		return regErr(http.StatusBadGateway, "DIGEST_INVALID", "image %s: %v", u.image, err)
	case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden):
		return regErr(http.StatusForbidden, "DENIED", "image %s: the upstream registry %s refused the credentials (%s) for %s: %v",
			u.image, u.repo.RegistryStr(), secret, what, err)
	case errors.As(err, &te) && te.StatusCode == http.StatusNotFound, errors.Is(image.Classify(err), image.ErrNotFound):
		code := "MANIFEST_UNKNOWN"
		if strings.HasPrefix(what, "blob") {
			code = "BLOB_UNKNOWN"
		}
		return regErr(http.StatusNotFound, code, "image %s: the upstream registry has no %s: %v", u.image, what, err)
	case unavailable(err):
		return regErr(http.StatusBadGateway, "UNAVAILABLE", "image %s: the upstream registry %s is unavailable and the region's cache does not hold %s: %v",
			u.image, u.repo.RegistryStr(), what, err)
	case errors.Is(err, image.ErrDigest), errors.Is(err, image.ErrInvalid), errors.Is(err, image.ErrTooLarge):
		return regErr(http.StatusBadGateway, "MANIFEST_INVALID", "image %s: %s: %v", u.image, what, err)
	}
	return regErr(http.StatusBadGateway, "UNAVAILABLE", "image %s: %s from the upstream registry %s: %v", u.image, what, u.repo.RegistryStr(), err)
}
