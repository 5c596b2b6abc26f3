package region

import (
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// dropAll empties the cache (benchmarks start cold).
func (c *blobCache) dropAll() {
	c.mu.Lock()
	var ds []v1.Hash
	for d := range c.blobs {
		h, _ := v1.NewHash(d)
		ds = append(ds, h)
	}
	c.mu.Unlock()
	for _, d := range ds {
		c.drop(d)
	}
}

// BenchmarkImageCachePull pulls an image of six 4 MiB incompressible
// layers (24 MiB) into empty machine stores (pull, verify, unpack) from a
// local docker-registry: directly, through a region's cache that is cold
// (it fetches from upstream as it serves) or warm, and with N machines at
// once through a cold cache. It reports MB/s of image bytes per machine
// and, for the cache, the copies of the image fetched from upstream per
// pull of the region (upstream-copies: 1 is one copy per region, however
// many machines).
func BenchmarkImageCachePull(b *testing.B) {
	reg := imagetest.StartRegistry(b)
	up := imagetest.StartProxy(b, reg.Host)
	img := randomImage(b, 6, 4<<20)
	reg.Push(b, "bench/app:1", img)
	digest := digestOf(b, img)
	var size int64
	for _, s := range blobsOf(b, img) {
		size += s
	}
	direct := up.Host + "/bench/app@" + digest

	b.Run("direct", func(b *testing.B) {
		before := up.BlobBytes()
		for b.Loop() {
			st, err := image.Open(image.Config{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := st.Pull(testutil.Context(b, time.Minute), direct); err != nil {
				b.Fatal(err)
			}
		}
		report(b, size, 1, float64(up.BlobBytes()-before)/float64(size)/float64(b.N))
	})

	in := pkitest.New(b, "fra")
	s := single(b, in, "fra", nil)
	e := &cacheEnv{in: in, srv: s, global: regionapi.NewClient(s.URL(), in.GlobalClient(b)), reg: reg, up: up}
	const maxMachines = 4
	var ms []*fakeMachine
	stop := make(chan struct{})
	b.Cleanup(func() { close(stop) })
	for i := range maxMachines {
		m := joinMachine(b, in, s, fmt.Sprintf("m%d", i), "dc1", 4000, 4096)
		m.keepAlive(b, stop)
		ms = append(ms, m)
	}
	testutil.Eventually(b, 20*time.Second, "region leads", func() (bool, string) { return s.IsLeader(), "not leading" })
	e.waitReady(b, maxMachines) // one instance per machine
	a := testApply("fra", 1, "dep-1", maxMachines)
	a.Definition.Command, a.Definition.Image, a.Definition.ImageDigest = nil, up.Host+"/bench/app:1", digest
	a.Definition.InstanceType.MilliCPU, a.Definition.InstanceType.MemoryMB = 100, 64
	if _, err := e.global.Apply(testutil.Context(b, time.Minute), a); err != nil {
		b.Fatal(err)
	}
	for _, m := range ms {
		testutil.Eventually(b, 30*time.Second, m.id+" assigned", func() (bool, string) { return len(m.assignments(b)) == 1, "not yet" })
	}
	pull := func(b *testing.B, machines int, cold bool) {
		before := up.BlobBytes()
		for b.Loop() {
			b.StopTimer()
			if cold {
				s.images.store.dropAll()
			}
			stores := make([]*image.Store, machines)
			for i := range stores {
				st, err := image.Open(image.Config{Dir: b.TempDir(), Mirror: s.Addr(), Transport: in.Client(b, ms[i].leaf).Transport})
				if err != nil {
					b.Fatal(err)
				}
				stores[i] = st
			}
			b.StartTimer()
			var wg sync.WaitGroup
			errs := make([]error, machines)
			for i, st := range stores {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = st.Pull(testutil.Context(b, time.Minute), direct)
				}()
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b, size, machines, float64(up.BlobBytes()-before)/float64(size)/float64(b.N))
	}
	b.Run("cache=cold", func(b *testing.B) { pull(b, 1, true) })
	b.Run("cache=warm", func(b *testing.B) { pull(b, 1, false) })
	b.Run(fmt.Sprintf("cache=cold/machines=%d", maxMachines), func(b *testing.B) { pull(b, maxMachines, true) })
}

func report(b *testing.B, size int64, machines int, copies float64) {
	perOp := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(size)/1e6/perOp, "MB/s/machine")
	b.ReportMetric(float64(size*int64(machines))/1e6/perOp, "MB/s")
	b.ReportMetric(copies, "upstream-copies")
}
