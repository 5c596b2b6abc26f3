package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkStartStop starts an instance (/bin/sleep under the shim, in its
// namespaces), stops it with SIGTERM and cleans it up, and reports
// instances started and stopped per second and the shim's resident memory
// while the instance runs. "shim=self" uses the default shim, the running
// binary (here the test binary); "shim=meridian-shim" the small dedicated
// binary of ./meridian-shim.
func BenchmarkStartStop(b *testing.B) {
	b.Run("shim=self", func(b *testing.B) { benchStartStop(b, "") })
	b.Run("shim=meridian-shim", func(b *testing.B) {
		shim := filepath.Join(b.TempDir(), "meridian-shim")
		if out, err := exec.Command("go", "build", "-o", shim, "./meridian-shim").CombinedOutput(); err != nil {
			b.Fatalf("build meridian-shim: %v\n%s", err, out)
		}
		benchStartStop(b, shim)
	})
}

func benchStartStop(b *testing.B, shim string) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		b.Fatal(err)
	}
	p := newTestDriver(b, ProcessConfig{ShimPath: shim})
	ctx := testCtx(b)
	var rss, uss uint64
	b.ReportAllocs()
	b.ResetTimer()
	begin := time.Now()
	for i := 0; b.Loop(); i++ {
		h, err := p.Start(ctx, Spec{ID: "bench", Command: []string{sleep, "1000"}})
		if err != nil {
			b.Fatal(err)
		}
		r, err := readRSS(h.Pid())
		if err != nil {
			b.Fatal(err)
		}
		rss += r
		u, err := readUSS(h.Pid())
		if err != nil {
			b.Fatal(err)
		}
		uss += u
		if err := h.Stop(ctx, 5*time.Second); err != nil {
			b.Fatal(err)
		}
		if err := h.Cleanup(); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(begin)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "instances/s")
	b.ReportMetric(float64(rss)/float64(b.N)/1024, "shim-RSS-KB")
	b.ReportMetric(float64(uss)/float64(b.N)/1024, "shim-USS-KB")
}

// readUSS returns the unique set size of pid (its private pages: what one
// more shim costs, since the binary's text is shared between shims).
func readUSS(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, err
	}
	var kb uint64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "Private_Clean:" || f[0] == "Private_Dirty:") {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, err
			}
			kb += n
		}
	}
	return kb * 1024, nil
}
