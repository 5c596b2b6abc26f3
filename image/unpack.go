package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/umoci/oci/layer"
)

// Whiteout names of the OCI image layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// Other ".wh..wh." names are AUFS metadata: ignored, as Docker does.
	whiteoutMeta = ".wh..wh."
)

// zstdMaxWindow bounds the memory a zstd layer can make the decoder take.
const zstdMaxWindow = 64 << 20

// unpacker applies an image's layers, in order, onto one directory.
type unpacker struct {
	root    string
	limits  Limits
	entries int
	bytes   int64
	// okDirs caches parent directories already checked to be real
	// directories (no symlink on the way) in the layer being applied.
	okDirs map[string]bool
}

// applyLayer applies one layer (compressed blob f, its uncompressed digest
// diffID) onto u.root: umoci's tar extractor writes each entry (whiteouts
// and opaque directories applied against the layers below, metadata
// restored) after u.check has refused what the store does not unpack.
func (u *unpacker) applyLayer(ctx context.Context, f io.Reader, diffID v1.Hash) error {
	br := bufio.NewReaderSize(f, 64<<10)
	magic, _ := br.Peek(4)
	var raw io.Reader
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gunzip: %w", err)
		}
		defer zr.Close()
		raw = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		raw = zr
	default:
		raw = br
	}
	var h hash.Hash = sha256.New()
	raw = io.TeeReader(raw, h)

	te := layer.NewTarExtractor(&layer.UnpackOptions{})
	u.okDirs = map[string]bool{}
	tr := tar.NewReader(raw)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		skip, err := u.check(hdr)
		if err != nil {
			return err
		}
		if skip {
			continue
		}
		if err := te.UnpackEntry(u.root, hdr, tr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	// Read what follows the tar's end so the whole layer is hashed.
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID.String() {
		return fmt.Errorf("%w: the uncompressed layer has digest %s, the image config says %s", ErrDigest, got, diffID)
	}
	return nil
}

// check refuses the entries the store does not unpack and counts the
// image's size; skip says to ignore the entry.
func (u *unpacker) check(hdr *tar.Header) (skip bool, err error) {
	unsafe := func(format string, args ...any) (bool, error) {
		return false, fmt.Errorf("%w: entry %q: %s", ErrUnsafeLayer, hdr.Name, fmt.Sprintf(format, args...))
	}
	u.entries++
	if u.entries > u.limits.MaxEntries {
		return false, fmt.Errorf("%w: more than %d files", ErrTooLarge, u.limits.MaxEntries)
	}
	if slices.Contains(strings.Split(hdr.Name, "/"), "..") {
		return unsafe(`its path has a ".." component`)
	}
	rel := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
	base := path.Base(rel)
	switch hdr.Typeflag {
	case tar.TypeReg: // (the reader turns old archives' TypeRegA into TypeReg)
		if hdr.Size < 0 {
			return unsafe("negative size")
		}
		u.bytes += hdr.Size
		if u.bytes > u.limits.MaxUnpackedBytes {
			return false, fmt.Errorf("%w: more than %d bytes unpacked", ErrTooLarge, u.limits.MaxUnpackedBytes)
		}
	case tar.TypeDir, tar.TypeSymlink, tar.TypeFifo:
	case tar.TypeLink:
		if slices.Contains(strings.Split(hdr.Linkname, "/"), "..") {
			return unsafe(`hard link target %q has a ".." component`, hdr.Linkname)
		}
		target := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
		if target == "" {
			return unsafe("hard link to the root directory")
		}
		if err := u.checkParents(target); err != nil {
			return unsafe("hard link target %q: %v", hdr.Linkname, err)
		}
	case tar.TypeChar, tar.TypeBlock:
		return unsafe("device nodes are refused (%d:%d)", hdr.Devmajor, hdr.Devminor)
	case tar.TypeXGlobalHeader:
		return true, nil
	default:
		return unsafe("entry type %q is not supported", string(hdr.Typeflag))
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return unsafe("the root directory can only be a directory")
		}
		return false, nil
	}
	if strings.HasPrefix(base, whiteoutMeta) && base != whiteoutOpaque {
		return true, nil
	}
	if err := u.checkParents(rel); err != nil {
		return unsafe("%v", err)
	}
	// An entry that replaces or removes a directory, or empties one,
	// invalidates the directories checked so far.
	if hdr.Typeflag != tar.TypeDir || strings.HasPrefix(base, whiteoutPrefix) {
		clear(u.okDirs)
	}
	return false, nil
}

// checkParents makes sure no parent directory of rel (a clean relative
// path) is a symlink: an entry written through one could land anywhere
// the link points, outside the image's root included.
func (u *unpacker) checkParents(rel string) error {
	dir := path.Dir(rel)
	if dir == "." || u.okDirs[dir] {
		return nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if u.okDirs[p] {
			continue
		}
		full := filepath.Join(u.root, p)
		fi, err := os.Lstat(full)
		if errors.Is(err, os.ErrNotExist) {
			return nil // created as a directory
		}
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(full)
			return fmt.Errorf("its path goes through the symlink %q (-> %q)", p, target)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%q is not a directory", p)
		}
		u.okDirs[p] = true
	}
	return nil
}
