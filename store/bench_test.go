package store

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
)

// BenchmarkCreateDeployment measures one Update running CreateDeployment
// (three regions) end to end, committed: "serial" deploys one service
// over and over; "parallel" deploys from GOMAXPROCS goroutines, each to its
// own service. PostgreSQL runs only when MERIDIAN_TEST_POSTGRES is set.
func BenchmarkCreateDeployment(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) { benchCreateDeployment(b, sqliteBackend()) })
	b.Run("postgres", func(b *testing.B) {
		if os.Getenv(envPostgres) == "" {
			b.Skipf("%s is not set", envPostgres)
		}
		benchCreateDeployment(b, postgresBackend(b))
	})
}

func benchCreateDeployment(b *testing.B, be backend) {
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		f := newFixture(b, be)
		web := f.app(f.org("acme"), "web")
		b.ReportAllocs()
		for b.Loop() {
			nd := f.newDeployment(web, "frontend", "x:1", "fra", "iad", "sin")
			if err := f.s.Update(ctx, func(tx Tx) error { _, err := tx.CreateDeployment(ctx, nd); return err }); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deploys/s")
	})
	b.Run("parallel", func(b *testing.B) {
		f := newFixture(b, be)
		web := f.app(f.org("acme"), "web")
		var services atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			name := fmt.Sprintf("svc-%d", services.Add(1))
			for pb.Next() {
				nd := f.newDeployment(web, name, "x:1", "fra", "iad", "sin")
				if err := f.s.Update(ctx, func(tx Tx) error { _, err := tx.CreateDeployment(ctx, nd); return err }); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deploys/s")
	})
}
