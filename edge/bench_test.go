package edge

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
)

// syntheticFeeds is apps apps of one service and one route each, with
// perApp healthy instances spread over three regions.
func syntheticFeeds(apps, perApp int) []regionFeed {
	regions := []*regionState{newRegionState(fra, parLat, parLon), newRegionState(was, parLat, parLon), newRegionState(sin, parLat, parLon)}
	feeds := make([]regionFeed, len(regions))
	for ri, rs := range regions {
		feeds[ri].rs = rs
		for a := 0; a < apps; a++ {
			name := fmt.Sprintf("app%04d", a)
			fs := regionapi.FeedService{Key: "bench." + name + ".web", Org: "bench", App: name, Service: "web",
				Ports: []api.Port{{Port: 8080}}, Routes: []api.Route{{Port: 8080, Path: "/"}}}
			for i := ri; i < perApp; i += len(regions) {
				n := a*perApp + i
				fs.Endpoints = append(fs.Endpoints, regionapi.Endpoint{Instance: fmt.Sprintf("%s-%s-%d", rs.info.ID, name, i),
					Machine: fmt.Sprintf("m%d", n), Address: fmt.Sprintf("10.%d.%d.%d", ri, n/250%250, n%250+1),
					Ports: map[string]int{"8080": 20000 + n%10000}, MeshPort: 7443, Healthy: true})
			}
			feeds[ri].services = append(feeds[ri].services, fs)
		}
	}
	return feeds
}

// BenchmarkBuildTable: building the routing table of 1,000 routes and
// 10,000 endpoints from the regions' feeds, and the heap it holds (the
// feeds themselves excluded).
func BenchmarkBuildTable(b *testing.B) {
	feeds := syntheticFeeds(1000, 10)
	var prev map[string]*endpoint
	b.ReportAllocs()
	for b.Loop() {
		_, prev = buildTable("meridian.localhost", feeds, prev)
	}
	b.StopTimer()
	prev = nil
	// The heap the table holds: live heap with it, minus without it.
	t, eps := buildTable("meridian.localhost", feeds, nil)
	if t.routes != 1000 || t.endpoints != 10000 {
		b.Fatalf("routes %d endpoints %d", t.routes, t.endpoints)
	}
	var with, without runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&with)
	runtime.KeepAlive(t)
	runtime.KeepAlive(eps)
	t, eps = nil, nil
	runtime.GC()
	runtime.ReadMemStats(&without)
	b.ReportMetric(float64(int64(with.HeapAlloc)-int64(without.HeapAlloc))/(1<<20), "table-MiB")
}

// BenchmarkPick: choosing an instance among 3 regions of 4.
func BenchmarkPick(b *testing.B) {
	rs := []*regionState{newRegionState(fra, parLat, parLon), newRegionState(was, parLat, parLon), newRegionState(sin, parLat, parLon)}
	rankRegions(rs, 10*time.Millisecond)
	rt := &route{prefix: "/"}
	for _, r := range rs {
		t := &target{region: r}
		for i := 0; i < 4; i++ {
			t.eps = append(t.eps, &endpoint{region: r})
		}
		rt.targets = append(rt.targets, t)
	}
	now := time.Now().UnixNano()
	b.ReportAllocs()
	for b.Loop() {
		if pick(rt, nil, now) == nil {
			b.Fatal("nothing picked")
		}
	}
}

// BenchmarkProxy: GETs through an edge to a local instance, from
// parallel keep-alive clients (client, edge and instance share the
// process and its CPUs: for comparisons between versions; bench/edge
// measures the edge alone against nginx).
func BenchmarkProxy(b *testing.B) {
	s := startEdge(b, func(c *Config) { c.Logger = nil })
	backend := newBackend(b, "bench", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"ok":true}`) })
	seed(b, s, fra, service("web", nil, endpointOf("b", backend)))
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req, _ := http.NewRequest("GET", s.URL()+"/", nil)
		req.Host = testHost
		for pb.Next() {
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}
