package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobStore keeps blobs (manifests, configs, compressed layers) by digest
// in dir/sha256/<hex>, the layout of an OCI image layout's blobs. A blob is
// written to a temporary file, checked against its digest and size, and
// only then renamed into place: a blob in the store is always whole and
// verified.
type blobStore struct {
	dir string
}

func (b blobStore) path(d v1.Hash) string { return filepath.Join(b.dir, d.Algorithm, d.Hex) }

// has reports whether the blob is in the store.
func (b blobStore) has(d v1.Hash) bool {
	fi, err := os.Stat(b.path(d))
	return err == nil && fi.Mode().IsRegular()
}

// open opens a stored blob.
func (b blobStore) open(d v1.Hash) (*os.File, error) { return os.Open(b.path(d)) }

// read returns a stored blob of at most max bytes.
func (b blobStore) read(d v1.Hash, max int64) ([]byte, error) {
	f, err := b.open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: blob %s is over %d bytes", ErrTooLarge, d, max)
	}
	return data, nil
}

// remove deletes a blob (one found corrupt).
func (b blobStore) remove(d v1.Hash) { _ = os.Remove(b.path(d)) }

// put stores the blob read from r, which must be exactly size bytes (-1:
// unknown, at most max) with digest d.
func (b blobStore) put(d v1.Hash, size, max int64, r io.Reader) error {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 {
		return fmt.Errorf("%w: digest %s: only sha256 digests are supported", ErrInvalid, d)
	}
	if b.has(d) {
		return nil
	}
	dir := filepath.Join(b.dir, d.Algorithm)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-"+d.Hex[:12]+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	limit := max
	if size >= 0 {
		limit = size
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, limit+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	switch {
	case size >= 0 && n != size:
		return fmt.Errorf("%w: blob %s: got %d bytes, the manifest says %d", ErrDigest, d, n, size)
	case n > limit:
		return fmt.Errorf("%w: blob %s is over %d bytes", ErrTooLarge, d, limit)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return fmt.Errorf("%w: blob %s has digest sha256:%s", ErrDigest, d, got)
	}
	return os.Rename(f.Name(), b.path(d))
}

// putBytes stores data, whose digest must be d.
func (b blobStore) putBytes(d v1.Hash, data []byte) error {
	return b.put(d, int64(len(data)), int64(len(data)), bytes.NewReader(data))
}

// clean removes temporary files a crash left behind.
func (b blobStore) clean() error {
	ents, err := os.ReadDir(filepath.Join(b.dir, "sha256"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			_ = os.Remove(filepath.Join(b.dir, "sha256", e.Name()))
		}
	}
	return nil
}
