package global

import (
	"context"
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/agent"
	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/store/storetest"
)

// appStarts records, per instance, when its agent started it and when it
// first passed its health checks.
type appStarts struct {
	mu      sync.Mutex
	started map[string]time.Time
	healthy map[string]time.Time
	dep     map[string]string
}

func (a *appStarts) hook(_ string, in agent.Instance) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.started[in.ID]; !ok && in.State == "starting" {
		a.started[in.ID] = now
		a.dep[in.ID] = in.DeploymentID
	}
	if _, ok := a.healthy[in.ID]; !ok && in.Healthy {
		a.healthy[in.ID] = now
	}
}

// slowest is the longest start-to-healthy time among a deployment's
// instances: the app's own share of the deploy's critical path.
func (a *appStarts) slowest(depID string) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	var d time.Duration
	for id, dep := range a.dep {
		h, ok := a.healthy[id]
		if dep == depID && ok {
			d = max(d, h.Sub(a.started[id]))
		}
	}
	return d
}

var benchRuns atomic.Int32

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// BenchmarkDeployLatency measures a deploy of the demo app to 3 real
// regions x 2 instances (real agents and processes): from the create call
// to every region HEALTHY. Each op is 10 deploys; it reports the median,
// the app's own start (agent start to first passing check, the slowest
// instance of each deploy) and the control plane's share (the rest), with
// no added latency and with 80 ms round trips between global and the
// regions (a delaying link proxy, 40 ms each way).
func BenchmarkDeployLatency(b *testing.B) {
	starts := &appStarts{started: map[string]time.Time{}, healthy: map[string]time.Time{}, dep: map[string]string{}}
	tp := newTopologyWith(b, starts.hook, "fra", "was", "sin")
	for _, tc := range []struct {
		name string
		rtt  time.Duration
		poll time.Duration
	}{
		{"rtt=0ms/poll=100ms", 0, 100 * time.Millisecond},
		{"rtt=80ms/poll=100ms", 80 * time.Millisecond, 100 * time.Millisecond},
		{"rtt=0ms/poll=1s", 0, time.Second},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for _, l := range tp.links {
				l.SetLatency(tc.rtt/2, tc.rtt/2)
			}
			defer func() {
				for _, l := range tp.links {
					l.SetLatency(0, 0)
				}
			}()
			st := storetest.Open(b, "sqlite")
			cfg := rolloutConfig(b, st, tp, "bench", &calls{})
			cfg.OnRegionCall, cfg.RolloutPoll, cfg.Logger = nil, tc.poll, testutil.Logger(b)
			g := startGlobal(b, cfg)
			h := &harness{t: b, srv: g, st: st, admin: api.NewClient(g.URL(), testAdminToken)}
			tp.register(b, h.admin)
			open := api.RegionOpen
			for name := range tp.links {
				if _, err := h.admin.UpdateRegion(context.Background(), name, api.UpdateRegionRequest{Status: &open}); err != nil {
					b.Fatal(err)
				}
			}
			// Every run has a fresh store: a fresh organization keeps its
			// service keys (and generations) apart in the shared regions.
			org := h.newOrg(fmt.Sprintf("bench%d", benchRuns.Add(1)))
			ctx := context.Background()
			if _, err := org.CreateApp(ctx, "app", ""); err != nil {
				b.Fatal(err)
			}
			var total, app []time.Duration
			n := 0
			for b.Loop() {
				for range 10 {
					n++
					doc := helloDoc{name: fmt.Sprintf("s%d", n), regions: []string{"fra", "was", "sin"}, version: "b", base: 2}.yaml()
					start := time.Now()
					d, err := org.Deploy(ctx, "app", doc, "application/yaml", "")
					if err != nil {
						b.Fatal(err)
					}
					for {
						d, err = org.GetDeployment(ctx, d.ID)
						if err != nil {
							b.Fatal(err)
						}
						if d.Status != api.StatusPending && d.Status != api.StatusProgressing {
							break
						}
						time.Sleep(5 * time.Millisecond)
					}
					elapsed := time.Since(start)
					if d.Status != api.StatusHealthy {
						b.Fatalf("deploy %d: %s", n, describe(d))
					}
					total = append(total, elapsed)
					app = append(app, starts.slowest(d.ID))
					if err := org.DeleteService(ctx, "app", d.Service); err != nil {
						b.Fatal(err)
					}
				}
			}
			mt, ma := median(total), median(app)
			b.ReportMetric(float64(mt.Milliseconds()), "ms/deploy(median)")
			b.ReportMetric(float64(ma.Milliseconds()), "ms-app-start(median)")
			b.ReportMetric(float64((mt - ma).Milliseconds()), "ms-control-plane")
			b.ReportMetric(0, "ns/op")
		})
	}
}
