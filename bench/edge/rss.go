package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/regionapi"
)

// syntheticSnapshot is a routing state of apps apps, each one service with
// one route and perApp instances spread over three regions.
func syntheticSnapshot(apps, perApp int) edge.Snapshot {
	regions := []edge.Region{
		{ID: "fra", URL: "https://127.0.0.1:1", Latitude: 50.11, Longitude: 8.68},
		{ID: "was", URL: "https://127.0.0.1:2", Latitude: 38.91, Longitude: -77.04},
		{ID: "sin", URL: "https://127.0.0.1:3", Latitude: 1.35, Longitude: 103.82},
	}
	snap := edge.Snapshot{Location: "bench", SavedAt: time.Now()}
	for ri, r := range regions {
		sr := edge.SnapshotRegion{Region: r, Revision: 1, Received: time.Now()}
		for a := 0; a < apps; a++ {
			name := fmt.Sprintf("app%04d", a)
			fs := regionapi.FeedService{Key: "bench." + name + ".web", Org: "bench", App: name, Service: "web", Type: "web",
				DeploymentID: fmt.Sprintf("dep_%08d", a), Version: 1,
				Ports: []api.Port{{Port: 8080, Protocol: "http"}}, Routes: []api.Route{{Port: 8080, Path: "/"}}}
			for i := ri; i < perApp; i += len(regions) {
				fs.Endpoints = append(fs.Endpoints, regionapi.Endpoint{Instance: fmt.Sprintf("%s-%s-%d", r.ID, name, i),
					DeploymentID: fs.DeploymentID, Datacenter: r.ID + "1", Machine: fmt.Sprintf("%s1-m%03d", r.ID, (a*perApp+i)%500),
					Address: fmt.Sprintf("10.%d.%d.%d", ri, (a*perApp+i)/250%250, (a*perApp+i)%250+1),
					Ports:   map[string]int{"8080": 20000 + (a*perApp+i)%10000}, MeshPort: 7443, Healthy: true})
			}
			sr.Services = append(sr.Services, fs)
		}
		snap.Regions = append(snap.Regions, sr)
	}
	return snap
}

// rss measures a meridian edge process's resident memory with an empty
// routing table and with 1,000 routes and 10,000 endpoints.
func (b *bench) rss(ctx context.Context) error {
	edgePKI, _, err := b.makePKI()
	if err != nil {
		return err
	}
	type result struct {
		routes, endpoints int
		rss, heap         float64
	}
	var results []result
	for _, size := range [][2]int{{0, 0}, {1000, 10}} {
		dir := filepath.Join(b.root, fmt.Sprintf("edge-rss-%d", size[0]))
		if err := edge.WriteSnapshot(dir, syntheticSnapshot(size[0], size[1])); err != nil {
			return err
		}
		admin := freeAddr()
		p, err := b.start(fmt.Sprintf("edge-rss-%d", size[0]), -1, filepath.Join(b.binDir, "meridian"), "edge", "--location", "bench",
			"--listen", freeAddr(), "--admin-listen", admin, "--state-dir", dir, "--pki-dir", edgePKI, "--log-level", "warn")
		if err != nil {
			return err
		}
		if err := waitHTTP(ctx, "http://"+admin+"/healthz", 10*time.Second); err != nil {
			b.stop(p)
			return err
		}
		// Let the start-up garbage be collected, as in a long-running edge.
		time.Sleep(3 * time.Second)
		var r result
		m, err := scrape("http://" + admin + "/metrics")
		if err != nil {
			b.stop(p)
			return err
		}
		r.routes, r.endpoints, r.heap = int(m["meridian_edge_routes"]), int(m["meridian_edge_endpoints"]), m["go_memstats_heap_inuse_bytes"]
		r.rss = vmRSS(p.cmd.Process.Pid)
		b.stop(p)
		results = append(results, r)
	}
	fmt.Printf("\nrss: a meridian edge process after start-up and 3s idle (routing table from a snapshot, as from feeds)\n")
	for _, r := range results {
		fmt.Printf("  %5d routes, %6d endpoints: RSS %6.1f MiB, Go heap in use %6.1f MiB\n", r.routes, r.endpoints, r.rss/(1<<20), r.heap/(1<<20))
	}
	if len(results) == 2 {
		fmt.Printf("  the table costs %.1f MiB of RSS (%.0f bytes per endpoint)\n", (results[1].rss-results[0].rss)/(1<<20),
			(results[1].rss-results[0].rss)/float64(max(results[1].endpoints, 1)))
	}
	return nil
}

// scrape reads a Prometheus text page into name -> value (unlabelled
// samples only).
func scrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.Contains(line, "{") {
			continue
		}
		name, v, ok := strings.Cut(line, " ")
		if f, err := strconv.ParseFloat(v, 64); ok && err == nil {
			out[name] = f
		}
	}
	return out, sc.Err()
}

// vmRSS reads a process's resident set size in bytes.
func vmRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb * 1024
		}
	}
	return 0
}
