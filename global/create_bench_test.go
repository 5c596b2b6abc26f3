package global

import (
	"bytes"
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/store/storetest"
)

// BenchmarkCreateService measures create-service throughput through the
// real HTTP API (a real server on loopback, the real Go client), each
// operation a new service with its first deployment and three regional
// deployments committed in one transaction, on SQLite and on PostgreSQL
// (when MERIDIAN_TEST_POSTGRES is set), with 1 and 8 concurrent clients.
func BenchmarkCreateService(b *testing.B) {
	doc := readExample(b)
	for _, kind := range storetest.Kinds(b) {
		for _, clients := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/clients=%d", kind, clients), func(b *testing.B) {
				h := newHarness(b, storetest.Open(b, kind))
				h.openRegions("fra", "was", "sin")
				ctx := testutil.Context(b, time.Minute)
				if _, err := h.acme.CreateApp(ctx, "bench", ""); err != nil {
					b.Fatal(err)
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, clients)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							body := bytes.Replace(doc, []byte("name: hello"), fmt.Appendf(nil, "name: svc%d", i), 1)
							if _, err := h.acme.Deploy(ctx, "bench", body, "application/yaml", ""); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "services/s")
			})
		}
	}
}
