package region

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ImageCacheConfig configures a region server's image cache: the OCI
// distribution endpoint (/v2/) its machines pull images through.
type ImageCacheConfig struct {
	// Disabled turns the cache off: /v2/ answers 404, and machines must
	// be set to pull from registries themselves.
	Disabled bool
	// Dir holds the cached blobs. Default DataDir/images.
	Dir string
	// MaxBytes caps the bytes of the blobs kept (default
	// DefaultImageCacheMaxBytes). An image larger than that is refused.
	MaxBytes int64
	// Insecure names upstream registries (host[:port]) that may be
	// reached over plain HTTP; loopback registries always may, all others
	// need TLS.
	Insecure []string
	// Transport carries the requests to upstream registries. Default a
	// clone of http.DefaultTransport.
	Transport http.RoundTripper
	// FetchTimeout bounds one upstream fetch of a blob or manifest
	// (default 10 minutes).
	FetchTimeout time.Duration
}

// DefaultImageCacheMaxBytes is the default cap of a server's image cache.
const DefaultImageCacheMaxBytes = 20 << 30

// maxCachedManifest bounds a manifest or index the cache keeps.
const maxCachedManifest = 4 << 20

// badBlobMemory is how long the cache answers a blob whose upstream bytes
// did not match its digest with that reason, instead of fetching it again.
const badBlobMemory = time.Minute

// errOverCap: a blob or image does not fit in the cache at all.
var errOverCap = errors.New("over the region's image cache cap")

// blobCache keeps blobs (manifests, configs, compressed layers) by digest
// on the region server's disk, in dir/blobs/sha256/<hex>, with an index
// (dir/index.json) of each blob's size, media type (manifests) and scopes:
// the organization, registry and repository it was fetched or checked
// for, so a blob reaches another organization only after its own
// credentials proved access upstream. A blob's last use is its file's
// modification time. Blobs enter only whole and verified (written to a
// temporary file, then renamed); the total is kept under max by evicting
// blobs least recently used, those of no current image first.
type blobCache struct {
	dir   string
	max   int64
	log   *slog.Logger
	inUse func(context.Context) (map[string]bool, error) // digests of the images of current services
	ctx   context.Context                                // ends when the server closes: fills under way stop
	stop  context.CancelFunc
	wg    sync.WaitGroup // fills under way

	mu    sync.Mutex
	blobs map[string]*cachedBlob // by digest "sha256:<hex>"
	tags  map[string]string      // scope + ":" + tag -> digest, the last resolution
	used  int64                  // stored bytes plus the reservations of fills under way
	fills map[string]*fill
	bad   map[string]badBlob // by digest and size: a hostile manifest's wrong size blocks no one else
}

// cachedBlob is one stored blob.
type cachedBlob struct {
	Size      int64    `json:"size"`
	MediaType string   `json:"media_type,omitempty"` // set for manifests and indexes
	Scopes    []string `json:"scopes"`
	lastUsed  time.Time
}

// badBlob remembers why a blob's upstream bytes were refused.
type badBlob struct {
	reason string
	until  time.Time
}

// cacheIndex is index.json.
type cacheIndex struct {
	Blobs map[string]*cachedBlob `json:"blobs"`
	Tags  map[string]string      `json:"tags"`
}

// openBlobCache opens (creating) the cache in dir: blobs the index does
// not list, or whose size differs, and temporary files are removed.
func openBlobCache(dir string, max int64, log *slog.Logger, inUse func(context.Context) (map[string]bool, error)) (*blobCache, error) {
	c := &blobCache{dir: dir, max: max, log: log, inUse: inUse, blobs: map[string]*cachedBlob{}, tags: map[string]string{},
		fills: map[string]*fill{}, bad: map[string]badBlob{}}
	c.ctx, c.stop = context.WithCancel(context.Background())
	if err := os.MkdirAll(c.blobDir(), 0o700); err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	var idx cacheIndex
	b, err := os.ReadFile(c.indexPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("image cache: %w", err)
	default:
		if err := json.Unmarshal(b, &idx); err != nil {
			log.Warn("image cache index unreadable; starting empty", "err", err)
			idx = cacheIndex{}
		}
	}
	ents, err := os.ReadDir(c.blobDir())
	if err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	for _, e := range ents {
		d := "sha256:" + e.Name()
		b := idx.Blobs[d]
		fi, err := e.Info()
		if err != nil || b == nil || !e.Type().IsRegular() || fi.Size() != b.Size {
			if rerr := os.Remove(filepath.Join(c.blobDir(), e.Name())); rerr != nil {
				log.Warn("image cache: remove a stray file", "file", e.Name(), "err", rerr)
			}
			continue
		}
		b.lastUsed = fi.ModTime()
		c.blobs[d] = b
		c.used += b.Size
	}
	for k, d := range idx.Tags {
		if c.blobs[d] != nil {
			c.tags[k] = d
		}
	}
	return c, nil
}

// close stops the fills under way and waits for them.
func (c *blobCache) close() {
	c.stop()
	c.wg.Wait()
}

func (c *blobCache) blobDir() string   { return filepath.Join(c.dir, "blobs", "sha256") }
func (c *blobCache) indexPath() string { return filepath.Join(c.dir, "index.json") }

func (c *blobCache) path(d v1.Hash) string { return filepath.Join(c.blobDir(), d.Hex) }

// saveLocked writes the index (c.mu held).
func (c *blobCache) saveLocked() {
	b, err := json.Marshal(cacheIndex{Blobs: c.blobs, Tags: c.tags})
	if err == nil {
		err = writeFileAtomic(c.indexPath(), b)
	}
	if err != nil {
		c.log.Error("image cache: write the index", "err", err)
	}
}

// writeFileAtomic writes b to path through a temporary file and a rename.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// lookup returns a stored blob's size and media type, and whether scope
// may read it.
func (c *blobCache) lookup(d v1.Hash, scope string) (size int64, mediaType string, ok, allowed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.blobs[d.String()]
	if b == nil {
		return 0, "", false, false
	}
	return b.Size, b.MediaType, true, slices.Contains(b.Scopes, scope)
}

// allow records that scope may read a stored blob (its upstream showed
// the blob to scope's credentials).
func (c *blobCache) allow(d v1.Hash, scope string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.blobs[d.String()]; b != nil && !slices.Contains(b.Scopes, scope) {
		b.Scopes = append(b.Scopes, scope)
		c.saveLocked()
	}
}

// readManifest returns a stored manifest or index (nil when absent).
func (c *blobCache) readManifest(d v1.Hash) []byte {
	c.mu.Lock()
	b := c.blobs[d.String()]
	c.mu.Unlock()
	if b == nil || b.MediaType == "" || b.Size > maxCachedManifest {
		return nil
	}
	data, err := os.ReadFile(c.path(d))
	if err != nil || !digestMatches(d, data) {
		return nil
	}
	return data
}

// tag returns the digest scope's tag last resolved to.
func (c *blobCache) tag(scope, tag string) (v1.Hash, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.tags[scope+":"+tag]
	if !ok {
		return v1.Hash{}, false
	}
	h, err := v1.NewHash(d)
	return h, err == nil
}

// setTag records what scope's tag resolved to.
func (c *blobCache) setTag(scope, tag string, d v1.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tags[scope+":"+tag] != d.String() {
		c.tags[scope+":"+tag] = d.String()
		c.saveLocked()
	}
}

// touch marks a blob used now.
func (c *blobCache) touch(d v1.Hash) {
	now := time.Now()
	c.mu.Lock()
	if b := c.blobs[d.String()]; b != nil {
		b.lastUsed = now
	}
	c.mu.Unlock()
	_ = os.Chtimes(c.path(d), now, now)
}

// drop removes a stored blob (found damaged).
func (c *blobCache) drop(d v1.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.blobs[d.String()]; b != nil {
		delete(c.blobs, d.String())
		c.used -= b.Size
		_ = os.Remove(c.path(d))
		c.saveLocked()
	}
}

// putManifest stores a verified manifest or index for scope.
func (c *blobCache) putManifest(ctx context.Context, d v1.Hash, mediaType string, data []byte, scope string) error {
	if !digestMatches(d, data) {
		return fmt.Errorf("manifest %s: content has another digest", d)
	}
	if _, _, ok, allowed := c.lookup(d, scope); ok {
		if !allowed {
			c.allow(d, scope)
		}
		return nil
	}
	if err := c.reserve(ctx, int64(len(data))); err != nil {
		return err
	}
	f, err := os.CreateTemp(c.blobDir(), ".tmp-")
	if err == nil {
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(f.Name(), c.path(d))
		}
		if err != nil {
			os.Remove(f.Name())
		}
	}
	if err != nil {
		c.unreserve(int64(len(data)))
		return fmt.Errorf("store manifest %s: %w", d, err)
	}
	c.added(d, &cachedBlob{Size: int64(len(data)), MediaType: mediaType, Scopes: []string{scope}})
	return nil
}

// added records a blob renamed into place; its bytes were reserved.
func (c *blobCache) added(d v1.Hash, b *cachedBlob) {
	b.lastUsed = time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.blobs[d.String()]; old != nil {
		c.used -= old.Size // replaced by the same bytes
	}
	c.blobs[d.String()] = b
	c.saveLocked()
}

func (c *blobCache) unreserve(n int64) {
	c.mu.Lock()
	c.used -= n
	c.mu.Unlock()
}

// reserve makes room for n bytes, evicting blobs least recently used
// (those of no current image first), and counts them as used.
func (c *blobCache) reserve(ctx context.Context, n int64) error {
	if n > c.max {
		return fmt.Errorf("%d bytes: %w of %d bytes", n, errOverCap, c.max)
	}
	c.mu.Lock()
	if c.used+n <= c.max {
		c.used += n
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	inUse, err := c.inUse(ctx)
	if err != nil {
		return fmt.Errorf("image cache full, and the images in use cannot be read: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	type victim struct {
		d    string
		used bool
		last time.Time
	}
	var vs []victim
	for d, b := range c.blobs {
		if _, filling := c.fills[d]; !filling {
			vs = append(vs, victim{d, inUse[d], b.lastUsed})
		}
	}
	slices.SortFunc(vs, func(a, b victim) int {
		if a.used != b.used {
			if a.used {
				return 1
			}
			return -1
		}
		return a.last.Compare(b.last)
	})
	var evicted, evictedInUse int
	for _, v := range vs {
		if c.used+n <= c.max {
			break
		}
		b := c.blobs[v.d]
		h, _ := v1.NewHash(v.d)
		if err := os.Remove(c.path(h)); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("image cache: evict", "blob", v.d, "err", err)
			continue
		}
		delete(c.blobs, v.d)
		c.used -= b.Size
		evicted++
		if v.used {
			evictedInUse++
		}
	}
	if evicted > 0 {
		maps.DeleteFunc(c.tags, func(_ string, d string) bool { return c.blobs[d] == nil })
		c.saveLocked()
		c.log.Info("image cache: evicted blobs", "blobs", evicted, "of_current_images", evictedInUse, "used", c.used, "max", c.max)
		if evictedInUse > 0 {
			c.log.Warn("image cache: blobs of current images evicted to make room; raise the cap", "blobs", evictedInUse)
		}
	}
	if c.used+n > c.max {
		return fmt.Errorf("%d more bytes: %w of %d bytes (%d bytes being fetched)", n, errOverCap, c.max, c.used)
	}
	c.used += n
	return nil
}

func badKey(d v1.Hash, size int64) string { return fmt.Sprintf("%s/%d", d, size) }

// badReason returns why a blob's upstream bytes (of size bytes) were
// refused lately.
func (c *blobCache) badReason(d v1.Hash, size int64) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := badKey(d, size)
	b, ok := c.bad[k]
	if !ok || time.Now().After(b.until) {
		delete(c.bad, k)
		return ""
	}
	return b.reason
}

// fill is a blob being fetched from upstream into a temporary file, which
// readers follow as it grows.
type fill struct {
	d     v1.Hash
	size  int64
	scope string
	tmp   string

	started chan struct{} // closed once upstream answered (or failed)
	mu      sync.Mutex
	written int64
	done    bool
	err     error
	changed chan struct{} // closed and replaced on every change
}

// fillState is a fill at one moment.
type fillState struct {
	written int64
	done    bool
	err     error
	changed <-chan struct{} // closed at the next change
}

// progress returns what was written so far, whether the fill is over and
// its error.
func (f *fill) progress() fillState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fillState{f.written, f.done, f.err, f.changed}
}

func (f *fill) update(fn func()) {
	f.mu.Lock()
	fn()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// open opens the fill's bytes: the temporary file, or the blob once whole.
func (f *fill) open(c *blobCache) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	if f.done {
		return os.Open(c.path(f.d))
	}
	return os.Open(f.tmp)
}

// errFillSize: a fill of the blob with another size is under way.
var errFillSize = errors.New("a fetch of this blob with another size is under way")

// startFill returns the fill of blob d for scope under way, or starts one
// that reads the blob from fetch (size bytes). Only one fill of a blob
// runs at a time; a fill under way for another scope is joined once the
// caller checked scope's access upstream.
func (c *blobCache) startFill(ctx context.Context, d v1.Hash, size int64, scope string, timeout time.Duration,
	fetch func(context.Context) (io.ReadCloser, error)) (*fill, error) {
	c.mu.Lock()
	if f := c.fills[d.String()]; f != nil {
		c.mu.Unlock()
		if f.size != size {
			return nil, errFillSize
		}
		return f, nil
	}
	c.mu.Unlock()
	if err := c.reserve(ctx, size); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(c.blobDir(), ".tmp-"+d.Hex[:12]+"-")
	if err != nil {
		c.unreserve(size)
		return nil, fmt.Errorf("image cache: %w", err)
	}
	f := &fill{d: d, size: size, scope: scope, tmp: tmp.Name(), started: make(chan struct{}), changed: make(chan struct{})}
	c.mu.Lock()
	if other := c.fills[d.String()]; other != nil { // raced: join it
		c.mu.Unlock()
		tmp.Close()
		os.Remove(tmp.Name())
		c.unreserve(size)
		if other.size != size {
			return nil, errFillSize
		}
		return other, nil
	}
	c.fills[d.String()] = f
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		c.runFill(f, tmp, timeout, fetch)
	}()
	return f, nil
}

// runFill fetches a fill's blob, verifying its size and digest, and
// renames it into place; a blob that does not match is never stored.
// started is closed once the upstream answered with the blob, or after
// the fill failed.
func (c *blobCache) runFill(f *fill, tmp *os.File, timeout time.Duration, fetch func(context.Context) (io.ReadCloser, error)) {
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	begin := time.Now()
	var startOnce sync.Once
	started := func() { startOnce.Do(func() { close(f.started) }) }
	err := func() error {
		rc, err := fetch(ctx)
		if err != nil {
			return err
		}
		defer rc.Close()
		started()
		h := sha256.New()
		buf := make([]byte, 256<<10)
		var n int64
		for n < f.size {
			k, rerr := rc.Read(buf[:min(int64(len(buf)), f.size-n)])
			if k > 0 {
				if _, err := tmp.Write(buf[:k]); err != nil {
					return fmt.Errorf("image cache: %w", err)
				}
				h.Write(buf[:k])
				n += int64(k)
				f.update(func() { f.written = n })
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil && !strings.Contains(rerr.Error(), "error verifying") { // ggcr's own check: ours below says what came
				return fmt.Errorf("blob %s: reading from upstream: %w", f.d, rerr)
			}
		}
		if n != f.size {
			return fmt.Errorf("blob %s: upstream sent %d bytes, its manifest gives %d", f.d, n, f.size)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != f.d.Hex {
			return &digestError{d: f.d, got: "sha256:" + got, upstream: true}
		}
		return tmp.Close()
	}()
	tmp.Close()
	if err == nil {
		f.update(func() {
			if err = os.Rename(f.tmp, c.path(f.d)); err == nil {
				f.done = true
			}
		})
	}
	if err == nil {
		c.added(f.d, &cachedBlob{Size: f.size, Scopes: []string{f.scope}})
		c.log.Info("image cache: blob fetched", "blob", f.d, "bytes", f.size, "scope", f.scope, "took", time.Since(begin).Round(time.Millisecond))
	} else {
		os.Remove(f.tmp)
		c.unreserve(f.size)
		var de *digestError
		if errors.As(err, &de) {
			c.mu.Lock()
			c.bad[badKey(f.d, f.size)] = badBlob{reason: de.Error(), until: time.Now().Add(badBlobMemory)}
			c.mu.Unlock()
		}
		c.log.Warn("image cache: blob fetch failed", "blob", f.d, "scope", f.scope, "err", err)
		f.update(func() { f.done, f.err = true, err })
	}
	started()
	c.mu.Lock()
	delete(c.fills, f.d.String())
	c.mu.Unlock()
}

// digestError: a blob's bytes do not match its digest.
type digestError struct {
	d        v1.Hash
	got      string
	upstream bool // the upstream registry sent them (else: the stored copy)
}

func (e *digestError) Error() string {
	if e.upstream {
		return fmt.Sprintf("blob %s: the upstream registry sent bytes with digest %s: refused", e.d, e.got)
	}
	return fmt.Sprintf("blob %s: the cached copy has digest %s: dropped", e.d, e.got)
}

func digestMatches(d v1.Hash, data []byte) bool {
	sum := sha256.Sum256(data)
	return d.Algorithm == "sha256" && d.Hex == hex.EncodeToString(sum[:])
}

// sendVerified copies a blob's size bytes from r to w, hashing what it
// sends; the last chunk goes only once the whole matched digest d, so a
// reader never receives a complete blob that does not match. avail, when
// set, is called before each read (the blob is still being fetched): it
// waits until r holds more than pos bytes and returns how many it holds,
// or an error.
func sendVerified(w io.Writer, r io.ReaderAt, d v1.Hash, size int64, avail func(pos int64) (int64, error)) error {
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var pos int64
	have := size
	for pos < size {
		if avail != nil {
			var err error
			if have, err = avail(pos); err != nil {
				return err
			}
		}
		k := min(int64(len(buf)), have-pos)
		n, err := r.ReadAt(buf[:k], pos)
		if int64(n) < k {
			return fmt.Errorf("read blob %s: %d of %d bytes: %w", d, pos+int64(n), size, err)
		}
		h.Write(buf[:n])
		pos += int64(n)
		if pos == size {
			if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
				return &digestError{d: d, got: "sha256:" + got}
			}
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
	}
	if size == 0 && !digestMatches(d, nil) {
		return &digestError{d: d, got: "sha256:" + hex.EncodeToString(h.Sum(nil))}
	}
	return nil
}

// waitFor returns the avail function of sendVerified for a fill: it waits
// (until ctx ends) for bytes past pos, and fails with the fill's error.
func (f *fill) waitFor(ctx context.Context) func(pos int64) (int64, error) {
	return func(pos int64) (int64, error) {
		for {
			st := f.progress()
			switch {
			case st.err != nil:
				return 0, st.err
			case st.written > pos || st.done:
				return st.written, nil
			}
			select {
			case <-st.changed:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
	}
}
