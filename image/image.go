// Package image keeps the container images of one machine. It pulls an
// image with go-containerregistry (from its registry, or through a mirror
// such as the region's pull-through cache), checks every manifest and blob
// against its digest, keeps the blobs in a content-addressed store, and
// unpacks each image's layers into a root filesystem of its own, keyed by
// the layers' chain ID and shared by every instance that runs the image
// (read-only: instances write to an overlay of their own).
//
// Layers are applied in order with umoci's tar extractor (whiteouts and
// opaque directories against the layers below, ownership, modes, times
// and extended attributes restored); before each entry the store refuses
// paths with "..", device nodes, and entries whose path goes through a
// symlink (which could land outside the root), and counts files and bytes
// against its Limits. An image is unpacked into a temporary directory and
// renamed into place once whole, so a failed or interrupted unpack leaves
// nothing that could be used.
//
// Store directory: blobs/sha256/<hex> (verified blobs), rootfs/<chain-id
// hex>/ (unpacked images), rootfs/.tmp-* (unpacks under way).
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/meridian-run/meridian/image/runnable"
)

// Limits bound what an image may make the store read, keep and write.
// Zero fields take the defaults.
type Limits struct {
	// MaxLayers bounds the layers of an image. Default 128.
	MaxLayers int
	// MaxManifestBytes bounds a manifest, an index and an image config.
	// Default 4 MiB.
	MaxManifestBytes int64
	// MaxImageBytes bounds the sum of an image's compressed layers.
	// Default 8 GiB.
	MaxImageBytes int64
	// MaxUnpackedBytes bounds the sum of the sizes of the files an image
	// unpacks (all layers). Default 16 GiB.
	MaxUnpackedBytes int64
	// MaxEntries bounds the tar entries of an image (all layers). Default
	// 1,000,000.
	MaxEntries int
}

func (l *Limits) setDefaults() {
	if l.MaxLayers <= 0 {
		l.MaxLayers = 128
	}
	if l.MaxManifestBytes <= 0 {
		l.MaxManifestBytes = 4 << 20
	}
	if l.MaxImageBytes <= 0 {
		l.MaxImageBytes = 8 << 30
	}
	if l.MaxUnpackedBytes <= 0 {
		l.MaxUnpackedBytes = 16 << 30
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = 1_000_000
	}
}

// Config configures a Store.
type Config struct {
	// Dir holds the blobs and unpacked images. Required; created if
	// missing.
	Dir string
	// Transport carries the registry requests (for the region's cache:
	// one with the machine's client certificate). Default a clone of
	// http.DefaultTransport.
	Transport http.RoundTripper
	// Mirror, when set, is the registry (host[:port]) every image is pulled
	// from instead of its own: the same repository path and tag or digest,
	// the upstream registry named by the "ns" query parameter of each
	// request (containerd's mirror convention). It is reached over HTTPS
	// unless named in Insecure.
	Mirror string
	// Insecure names registries (host[:port]) that may be reached over
	// plain HTTP. Loopback registries always may; others need TLS.
	Insecure []string
	// Limits bound the images the store accepts.
	Limits Limits
	// PullTimeout bounds one pull (fetch and unpack). Default 10 minutes.
	PullTimeout time.Duration
	// Parallel is how many layers are fetched at once. Default 3.
	Parallel int
	// Logger receives the store's logs; nil discards them.
	Logger *slog.Logger
}

// Image is an image ready to run (a runnable.Image, which runtimes take
// without linking this package).
type Image = runnable.Image

// Store keeps the images of one machine; see the package doc. Its methods
// are safe for concurrent use; concurrent pulls of one image share the
// work.
type Store struct {
	cfg    Config
	log    *slog.Logger
	blobs  blobStore
	rootfs string
	flight singleflight.Group
	mu     sync.Mutex // serializes unpacks of one chain id against each other
	unpack map[string]*sync.Mutex
	pulls  map[string]*pullState // guarded by mu: pulls under way, by reference
}

// Progress is how far a pull under way has come.
type Progress struct {
	// Fetched and Total count the compressed bytes of the image's layers;
	// layers the machine already had count as fetched.
	Fetched, Total int64
	// Unpacking is true once every layer is fetched.
	Unpacking bool
}

// pullState is the progress of one pull.
type pullState struct {
	total     int64
	fetched   atomic.Int64
	unpacking atomic.Bool
}

// Progress returns the progress of the pull of ref under way (false when
// none is, or it has not read the image's manifest yet).
func (s *Store) Progress(ref string) (Progress, bool) {
	s.mu.Lock()
	ps := s.pulls[ref]
	s.mu.Unlock()
	if ps == nil {
		return Progress{}, false
	}
	return Progress{Fetched: ps.fetched.Load(), Total: ps.total, Unpacking: ps.unpacking.Load()}, true
}

func (s *Store) trackPull(ref string, ps *pullState) func() {
	s.mu.Lock()
	s.pulls[ref] = ps
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.pulls, ref)
		s.mu.Unlock()
	}
}

// countingReader adds what it reads to n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}

// Open opens (creating if needed) the store in cfg.Dir, removing what an
// interrupted pull left.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("image store: Dir is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("image store: Dir: %w", err)
	}
	cfg.Dir = dir
	cfg.Limits.setDefaults()
	if cfg.PullTimeout <= 0 {
		cfg.PullTimeout = 10 * time.Minute
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 3
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{cfg: cfg, log: cfg.Logger.With("component", "images"),
		blobs: blobStore{dir: filepath.Join(dir, "blobs")}, rootfs: filepath.Join(dir, "rootfs"),
		unpack: map[string]*sync.Mutex{}, pulls: map[string]*pullState{}}
	// Only the agent's user may read the store: instances see their
	// image's root through their overlay mount, never through this path.
	for _, d := range []string{dir, s.blobs.dir, s.rootfs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	if err := s.blobs.clean(); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	ents, err := os.ReadDir(s.rootfs)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if err := os.RemoveAll(filepath.Join(s.rootfs, e.Name())); err != nil {
				return nil, fmt.Errorf("image store: remove an interrupted unpack: %w", err)
			}
		}
	}
	return s, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.cfg.Dir }

// Pull makes the image ref ready to run and returns it. An image named by
// digest that is already on the machine needs no registry; a tag is
// resolved at the registry on every call. Errors are *Error values naming
// the image; their causes match ErrNotFound, ErrUnreachable, ErrDigest,
// ErrUnsafeLayer, ErrTooLarge or ErrInvalid when known.
//
// Concurrent pulls of ref share one pull, bounded by the store's
// PullTimeout; a caller whose ctx ends stops waiting for it (the pull goes
// on for the others).
func (s *Store) Pull(ctx context.Context, ref string) (*Image, error) {
	ch := s.flight.DoChan(ref, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.PullTimeout)
		defer cancel()
		return s.pull(ctx, ref)
	})
	select {
	case <-ctx.Done():
		return nil, &Error{Ref: ref, Op: "pull", Err: ctx.Err()}
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		img := *r.Val.(*Image)
		return &img, nil
	}
}

func (s *Store) pull(ctx context.Context, ref string) (*Image, error) {
	fail := func(op string, err error) (*Image, error) {
		return nil, &Error{Ref: ref, Op: op, Err: err}
	}
	r, err := s.parseRef(ref)
	if err != nil {
		return fail("resolve", err)
	}
	if d, ok := r.(name.Digest); ok {
		h, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return fail("resolve", fmt.Errorf("%w: %w", ErrInvalid, err))
		}
		if img, err := s.local(ref, h); err == nil {
			img.Pinned = r.Context().Digest(img.Digest).String()
			return img, nil
		}
	}
	begin := time.Now()
	src, err := s.atMirror(r)
	if err != nil {
		return fail("resolve", err)
	}
	gt := &guardTransport{next: s.cfg.Transport, insecure: s.cfg.Insecure, mirror: s.cfg.Mirror, ns: r.Context().RegistryStr()}
	platform := remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(gt), platform}
	desc, err := remote.Get(src, opts...)
	if err != nil {
		return fail("resolve", classify(err))
	}
	if desc.Size > s.cfg.Limits.MaxManifestBytes || int64(len(desc.Manifest)) > s.cfg.Limits.MaxManifestBytes {
		return fail("resolve", fmt.Errorf("%w: manifest of %d bytes", ErrTooLarge, len(desc.Manifest)))
	}
	if err := s.checkDigest(desc.Digest, desc.Manifest); err != nil {
		return fail("verify", err)
	}
	if err := s.blobs.putBytes(desc.Digest, desc.Manifest); err != nil {
		return fail("fetch", err)
	}
	rimg, err := desc.Image()
	if err != nil {
		return fail("resolve", classify(err))
	}
	mdigest, err := rimg.Digest()
	if err != nil {
		return fail("resolve", classify(err))
	}
	rawManifest, err := rimg.RawManifest()
	if err != nil {
		return fail("fetch", classify(err))
	}
	if err := s.checkDigest(mdigest, rawManifest); err != nil {
		return fail("verify", err)
	}
	m, err := v1.ParseManifest(strings.NewReader(string(rawManifest)))
	if err != nil {
		return fail("resolve", fmt.Errorf("%w: manifest: %w", ErrInvalid, err))
	}
	if err := s.checkManifest(m); err != nil {
		return fail("resolve", err)
	}
	if err := s.blobs.putBytes(mdigest, rawManifest); err != nil {
		return fail("fetch", err)
	}
	rawConfig, err := rimg.RawConfigFile()
	if err != nil {
		return fail("fetch", classify(err))
	}
	if err := s.checkDigest(m.Config.Digest, rawConfig); err != nil {
		return fail("verify", err)
	}
	if err := s.blobs.putBytes(m.Config.Digest, rawConfig); err != nil {
		return fail("fetch", err)
	}
	cf, chain, err := s.parseConfig(m, rawConfig)
	if err != nil {
		return fail("resolve", err)
	}
	img := &Image{Ref: ref, Digest: mdigest.String(), Pinned: r.Context().Digest(mdigest.String()).String(), Config: runConfig(cf.Config),
		ChainID: chain.String(), Rootfs: filepath.Join(s.rootfs, chain.Hex), Size: layersSize(m), Pulled: true}
	if s.hasRootfs(chain) {
		return img, nil
	}
	ps := &pullState{total: layersSize(m)}
	defer s.trackPull(ref, ps)()
	for _, l := range m.Layers {
		if s.blobs.has(l.Digest) {
			ps.fetched.Add(l.Size)
		}
	}
	// Fetch the missing layers, verified, a few at a time.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.Parallel)
	var fetched int64
	var fmu sync.Mutex
	for _, l := range m.Layers {
		if s.blobs.has(l.Digest) {
			continue
		}
		g.Go(func() error {
			rl, err := remote.Layer(src.Context().Digest(l.Digest.String()), remote.WithContext(gctx), remote.WithTransport(gt), platform)
			if err != nil {
				return classify(err)
			}
			rc, err := rl.Compressed()
			if err != nil {
				return classify(err)
			}
			defer rc.Close()
			if err := s.blobs.put(l.Digest, l.Size, s.cfg.Limits.MaxImageBytes, countingReader{rc, &ps.fetched}); err != nil {
				return fmt.Errorf("layer %s: %w", l.Digest, classify(err))
			}
			fmu.Lock()
			fetched += l.Size
			fmu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (pull timeout %v)", err, s.cfg.PullTimeout)
		}
		return fail("fetch", err)
	}
	fetchedAt := time.Now()
	ps.unpacking.Store(true)
	if err := s.unpackImage(ctx, m, cf, chain); err != nil {
		return fail("unpack", err)
	}
	s.log.Info("image pulled", "image", ref, "digest", mdigest, "layers", len(m.Layers),
		"fetched_bytes", fetched, "fetch", fetchedAt.Sub(begin).Round(time.Millisecond), "unpack", time.Since(fetchedAt).Round(time.Millisecond))
	return img, nil
}

// local returns an image named by digest that is whole on the machine.
func (s *Store) local(ref string, d v1.Hash) (*Image, error) {
	raw, err := s.blobs.read(d, s.cfg.Limits.MaxManifestBytes)
	if err != nil {
		return nil, err
	}
	idx, ierr := v1.ParseIndexManifest(strings.NewReader(string(raw)))
	if ierr == nil && len(idx.Manifests) > 0 {
		child, ok := pickPlatform(idx)
		if !ok {
			return nil, errors.New("no manifest for this platform")
		}
		d = child
		if raw, err = s.blobs.read(d, s.cfg.Limits.MaxManifestBytes); err != nil {
			return nil, err
		}
	}
	m, err := v1.ParseManifest(strings.NewReader(string(raw)))
	if err != nil {
		return nil, err
	}
	rawConfig, err := s.blobs.read(m.Config.Digest, s.cfg.Limits.MaxManifestBytes)
	if err != nil {
		return nil, err
	}
	cf, chain, err := s.parseConfig(m, rawConfig)
	if err != nil {
		return nil, err
	}
	if !s.hasRootfs(chain) {
		return nil, os.ErrNotExist
	}
	return &Image{Ref: ref, Digest: d.String(), Config: runConfig(cf.Config), ChainID: chain.String(),
		Rootfs: filepath.Join(s.rootfs, chain.Hex), Size: layersSize(m)}, nil
}

// runConfig is the part of an image config runtimes use.
func runConfig(c v1.Config) runnable.Config {
	return runnable.Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}
}

// pickPlatform picks this machine's manifest of an index.
func pickPlatform(idx *v1.IndexManifest) (v1.Hash, bool) {
	for _, m := range idx.Manifests {
		if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH {
			return m.Digest, true
		}
	}
	return v1.Hash{}, false
}

func layersSize(m *v1.Manifest) int64 {
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

func (s *Store) checkDigest(d v1.Hash, data []byte) error {
	sum := sha256.Sum256(data)
	if d.Algorithm != "sha256" || d.Hex != hex.EncodeToString(sum[:]) {
		return fmt.Errorf("%w: content of %s has digest sha256:%x", ErrDigest, d, sum)
	}
	return nil
}

// checkManifest checks a manifest against the limits and the layer types
// the store unpacks.
func (s *Store) checkManifest(m *v1.Manifest) error {
	lim := s.cfg.Limits
	if len(m.Layers) > lim.MaxLayers {
		return fmt.Errorf("%w: %d layers (at most %d)", ErrTooLarge, len(m.Layers), lim.MaxLayers)
	}
	if m.Config.Size > lim.MaxManifestBytes {
		return fmt.Errorf("%w: config of %d bytes (at most %d)", ErrTooLarge, m.Config.Size, lim.MaxManifestBytes)
	}
	var total int64
	for i, l := range m.Layers {
		switch l.MediaType {
		case types.DockerLayer, types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		default:
			return fmt.Errorf("%w: layer %d (%s) has media type %q, not a tar layer this store unpacks", ErrInvalid, i, l.Digest, l.MediaType)
		}
		if len(l.URLs) > 0 {
			return fmt.Errorf("%w: layer %d (%s) is a foreign layer", ErrInvalid, i, l.Digest)
		}
		if l.Size < 0 {
			return fmt.Errorf("%w: layer %d has a negative size", ErrInvalid, i)
		}
		total += l.Size
		if total > lim.MaxImageBytes {
			return fmt.Errorf("%w: layers over %d bytes", ErrTooLarge, lim.MaxImageBytes)
		}
	}
	return nil
}

// parseConfig parses an image config and returns it with the chain id of
// its layers.
func (s *Store) parseConfig(m *v1.Manifest, raw []byte) (*v1.ConfigFile, v1.Hash, error) {
	cf, err := v1.ParseConfigFile(strings.NewReader(string(raw)))
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("%w: config: %w", ErrInvalid, err)
	}
	if cf.OS != "" && cf.OS != "linux" {
		return nil, v1.Hash{}, fmt.Errorf("%w: the image is for %s, not linux", ErrInvalid, cf.OS)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, v1.Hash{}, fmt.Errorf("%w: the config lists %d layers, the manifest %d", ErrInvalid, len(cf.RootFS.DiffIDs), len(m.Layers))
	}
	return cf, chainID(cf.RootFS.DiffIDs), nil
}

// chainID is the OCI chain id of a layer stack: ChainID(L0) = DiffID(L0),
// ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln)). An image
// without layers gets the digest of the empty string.
func chainID(diffIDs []v1.Hash) v1.Hash {
	if len(diffIDs) == 0 {
		sum := sha256.Sum256(nil)
		return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	}
	c := diffIDs[0]
	for _, d := range diffIDs[1:] {
		sum := sha256.Sum256([]byte(c.String() + " " + d.String()))
		c = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	}
	return c
}

func (s *Store) hasRootfs(chain v1.Hash) bool {
	fi, err := os.Stat(filepath.Join(s.rootfs, chain.Hex))
	return err == nil && fi.IsDir()
}

// unpackImage unpacks the layers of m into rootfs/<chain>, through a
// temporary directory renamed into place once whole.
func (s *Store) unpackImage(ctx context.Context, m *v1.Manifest, cf *v1.ConfigFile, chain v1.Hash) (err error) {
	s.mu.Lock()
	lk := s.unpack[chain.Hex]
	if lk == nil {
		lk = &sync.Mutex{}
		s.unpack[chain.Hex] = lk
	}
	s.mu.Unlock()
	lk.Lock()
	defer lk.Unlock()
	if s.hasRootfs(chain) {
		return nil
	}
	tmp, err := os.MkdirTemp(s.rootfs, ".tmp-"+chain.Hex[:12]+"-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if rerr := os.RemoveAll(tmp); rerr != nil {
				s.log.Warn("remove a failed unpack", "dir", tmp, "err", rerr)
			}
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	u := &unpacker{root: tmp, limits: s.cfg.Limits}
	for i, l := range m.Layers {
		if err := s.applyBlob(ctx, u, l.Digest, cf.RootFS.DiffIDs[i]); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
		}
	}
	return os.Rename(tmp, filepath.Join(s.rootfs, chain.Hex))
}

func (s *Store) applyBlob(ctx context.Context, u *unpacker, d, diffID v1.Hash) error {
	f, err := s.blobs.open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	err = u.applyLayer(ctx, io.Reader(f), diffID)
	if errors.Is(err, ErrDigest) {
		// The stored blob matched its digest when it was written: it was
		// damaged since. Fetch it again next time.
		s.blobs.remove(d)
	}
	return err
}
