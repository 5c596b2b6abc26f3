package region

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
)

// BenchmarkScheduleCommitted measures placements per second end to end:
// a service of N instances is applied through the API to a region whose
// machines are registered and alive in its embedded etcd, and the clock
// stops when the leader has committed every placement to etcd.
func BenchmarkScheduleCommitted(b *testing.B) {
	for _, size := range []struct{ instances, machines int }{{10_000, 1_000}, {20_000, 2_000}} {
		b.Run(fmt.Sprintf("%dInstances%dMachines", size.instances, size.machines), func(b *testing.B) {
			in := pkitest.New(b, "fra")
			s := single(b, in, "fra", func(c *Config) { c.LeaseTTL = 60 * time.Second })
			ctx := context.Background()
			registerMachines(b, s, size.machines)
			gc := regionapi.NewClient(s.URL(), in.GlobalClient(b))
			b.ResetTimer()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				apply := testApply("fra", int64(i+1), fmt.Sprintf("dep-%d", i), size.instances)
				apply.Service = fmt.Sprintf("svc%d", i)
				apply.Definition.InstanceType.MilliCPU = 100
				apply.Definition.InstanceType.MemoryMB = 64
				start := time.Now()
				if _, err := gc.Apply(ctx, apply); err != nil {
					b.Fatal(err)
				}
				key := regionapi.ServiceKey(apply.Org, apply.App, apply.Service)
				for {
					n := countAssigned(b, s, key)
					if n == size.instances {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(size.instances*b.N)/total.Seconds(), "placements/s")
		})
	}
}

// registerMachines writes machine records and liveness keys straight into
// the region's etcd, as joins and heartbeats would.
func registerMachines(b *testing.B, s *Server, n int) {
	ctx := context.Background()
	lease, err := s.cli.Grant(ctx, 600)
	if err != nil {
		b.Fatal(err)
	}
	var ops []clientv3.Op
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("m%05d", i)
		m := machineRecord{ID: id, Datacenter: fmt.Sprintf("fra%d", i%3+1), Address: "127.0.0.1", MilliCPU: 4000, MemoryMB: 8192}
		ops = append(ops, clientv3.OpPut(s.keys.machine(id), mustJSON(m)), clientv3.OpPut(s.keys.alive(id), "1", clientv3.WithLease(lease.ID)))
		if len(ops) >= 1000 || i == n-1 {
			if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				b.Fatal(err)
			}
			ops = ops[:0]
		}
	}
}

// countAssigned counts a service's committed assignments.
func countAssigned(b *testing.B, s *Server, key string) int {
	st, err := s.load(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, a := range st.assigns {
		if a.Service == key {
			n++
		}
	}
	return n
}
