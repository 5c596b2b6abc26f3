package driver

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/image/imagetest"
)

// BenchmarkStartToListening starts the demo app (examples/hello, static)
// with each runtime and measures the time from Start to its port
// accepting connections, side by side: "process" runs the binary, "oci"
// runs it from an image already on the machine (the pull is not timed).
// Both use the small meridian-shim binary. It also reports each
// instance's runtime overhead in memory: the shim's resident and unique
// set sizes, and the processes besides the shim and the workload (none:
// runc does not stay).
func BenchmarkStartToListening(b *testing.B) {
	dir := b.TempDir()
	shim := filepath.Join(dir, "meridian-shim")
	if out, err := exec.Command("go", "build", "-o", shim, "./meridian-shim").CombinedOutput(); err != nil {
		b.Fatalf("build meridian-shim: %v\n%s", err, out)
	}
	hello := filepath.Join(dir, "hello")
	if err := imagetest.BuildStatic("examples/hello", hello); err != nil {
		b.Fatal(err)
	}
	b.Run("runtime=process", func(b *testing.B) {
		p := newTestDriver(b, ProcessConfig{ShimPath: shim})
		benchStart(b, p, Spec{ID: "bench-process", Command: []string{hello}})
	})
	b.Run("runtime=oci", func(b *testing.B) {
		e := newOCIEnv(b)
		d, err := NewOCI(OCIConfig{DataDir: filepath.Join(e.dir, "oci-bench"), Images: e.images, ShimPath: shim})
		if err != nil {
			b.Fatal(err)
		}
		ref := e.reg.Push(b, "bench/hello:1", imagetest.Image(b, v1.Config{Entrypoint: []string{"/app/hello"}},
			imagetest.ProgramLayer(b, hello, "app/hello")))
		if _, err := e.images.Pull(testCtx(b), ref); err != nil {
			b.Fatal(err)
		}
		benchStart(b, d, Spec{ID: "bench-oci", Image: ref})
	})
}

func benchStart(b *testing.B, d Driver, spec Spec) {
	ctx := testCtx(b)
	var total time.Duration
	var rss, uss uint64
	extra := 0
	for b.Loop() {
		port := freePort(b)
		s := spec
		s.Env = []string{"PORT=" + strconv.Itoa(port), "PATH=" + defaultPath}
		begin := time.Now()
		h, err := d.Start(ctx, s)
		if err != nil {
			b.Fatal(err)
		}
		for {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Since(begin) > 20*time.Second {
				b.Fatalf("not listening after 20s; log %+v", readLog(b, h.LogPath()))
			}
			time.Sleep(500 * time.Microsecond)
		}
		total += time.Since(begin)
		r, err := readRSS(h.Pid())
		if err != nil {
			b.Fatal(err)
		}
		u, err := readUSS(h.Pid())
		if err != nil {
			b.Fatal(err)
		}
		rss, uss = rss+r, uss+u
		extra += len(descendants(h.Pid())) - 1 // the workload is the one expected
		if err := h.Stop(ctx, 5*time.Second); err != nil {
			b.Fatal(err)
		}
		if err := h.Cleanup(); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(total.Microseconds())/1000/n, "ms-to-listen")
	b.ReportMetric(float64(rss)/n/1024, "shim-RSS-KB")
	b.ReportMetric(float64(uss)/n/1024, "shim-USS-KB")
	b.ReportMetric(float64(extra)/n, "other-procs")
}

// descendants lists the processes under pid (not pid itself).
func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(p) + "/task")
		for _, t := range tasks {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/task/" + t.Name() + "/children")
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
					queue = append(queue, c)
				}
			}
		}
	}
	return out
}

func freePort(b testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
