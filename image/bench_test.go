package image_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/image/imagetest"
)

// BenchmarkPullUnpack pulls an image from a local docker-registry into an
// empty store and unpacks it, and reports the throughput in MB/s of
// compressed bytes pulled (ns/op is one whole pull) and of bytes
// unpacked, and of each phase alone: fetching (and verifying) the blobs,
// unpacking them. The store is on the machine's disk, then on a tmpfs
// (the unpack's own cost, without the disk's). The image: a layer of six 4 MiB incompressible files, a
// layer of 2,000 4 KiB text files, and a layer whiting some out.
func BenchmarkPullUnpack(b *testing.B) {
	reg := imagetest.StartRegistry(b)
	rng := rand.New(rand.NewPCG(1, 2))
	var big []imagetest.File
	var unpacked int64
	for i := range 6 {
		buf := make([]byte, 4<<20)
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		big = append(big, imagetest.File{Name: fmt.Sprintf("big%d", i), Body: string(buf)})
		unpacked += int64(len(buf))
	}
	small := []imagetest.File{{Name: "small/"}}
	for i := range 2000 {
		body := strings.Repeat(fmt.Sprintf("line %d of a small file\n", i), 4096/24)
		small = append(small, imagetest.File{Name: fmt.Sprintf("small/f%04d", i), Body: body})
		unpacked += int64(len(body))
	}
	wh := []imagetest.File{{Name: "small/"}}
	for i := range 100 {
		wh = append(wh, imagetest.File{Name: fmt.Sprintf("small/.wh.f%04d", i)})
	}
	img := imagetest.Image(b, v1.Config{}, imagetest.Layer(b, big...), imagetest.Layer(b, small...), imagetest.Layer(b, wh...))
	ref := reg.Push(b, "bench/pull:1", img)
	b.Run("store=disk", func(b *testing.B) { benchPull(b, ref, unpacked, os.TempDir()) })
	b.Run("store=tmpfs", func(b *testing.B) {
		dir := b.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", dir).CombinedOutput(); err != nil {
			b.Fatalf("mount tmpfs: %v: %s", err, out)
		}
		defer syscall.Unmount(dir, syscall.MNT_DETACH)
		benchPull(b, ref, unpacked, dir)
	})
}

func benchPull(b *testing.B, ref string, unpacked int64, parent string) {
	var size int64
	var elapsed time.Duration
	var phases phaseRecorder
	for b.Loop() {
		b.StopTimer()
		dir, err := os.MkdirTemp(parent, "bench-images-")
		if err != nil {
			b.Fatal(err)
		}
		s, err := image.Open(image.Config{Dir: dir, Logger: slog.New(&phases)})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		begin := time.Now()
		got, err := s.Pull(ctx(b), ref)
		if err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(begin)
		size = got.Size
		b.StopTimer()
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.SetBytes(size)
	b.ReportMetric(float64(unpacked)*float64(b.N)/1e6/elapsed.Seconds(), "unpacked-MB/s")
	b.ReportMetric(float64(size)*float64(b.N)/1e6/phases.fetch.Seconds(), "fetch-MB/s")
	b.ReportMetric(float64(unpacked)*float64(b.N)/1e6/phases.unpack.Seconds(), "unpack-only-MB/s")
}

// phaseRecorder adds up the fetch and unpack times of the store's "image
// pulled" log records.
type phaseRecorder struct {
	fetch, unpack time.Duration
}

func (p *phaseRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (p *phaseRecorder) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *phaseRecorder) WithGroup(string) slog.Handler            { return p }
func (p *phaseRecorder) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "fetch":
			p.fetch += a.Value.Duration()
		case "unpack":
			p.unpack += a.Value.Duration()
		}
		return true
	})
	return nil
}
