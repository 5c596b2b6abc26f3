package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/regionapi"
)

// benchHost is the app host the proxy part routes: app "bench" of org
// "bench".
const benchHost = "bench-bench.meridian.localhost"

// wrkResult is one wrk run; cpu is the proxy process's CPU time per
// request (user and system), which other load on the machine disturbs
// less than requests/s.
type wrkResult struct {
	rps      float64
	p50, p99 time.Duration
	cpu      time.Duration
	hopCPU   time.Duration // the node proxy's
	errors   string
}

// target is what wrk is pointed at.
type target struct {
	name, url string
	pid       int // the proxy's process (0: none)
	hop       int // the node proxy's process, on the edge's way (0: none)
}

// nginxConf proxies to the backend with the same work as the edge, in one
// process (master_process off: the worker is the process whose CPU time
// is measured).
const nginxConf = `worker_processes 1;
master_process off;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    upstream backend {
        server %[2]s;
        keepalive 256;
    }
    server {
        listen %[3]s;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id;
            proxy_connect_timeout 500ms;
        }
    }
}
`

// proxy compares the edge with nginx, each pinned to CPU 0.
func (b *bench) proxy(ctx context.Context) error {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		fmt.Println("proxy: skipped: wrk is not installed (apt-get install -y wrk)")
		return nil
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		fmt.Println("proxy: skipped: taskset is not installed (util-linux)")
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	backendAddr := freeAddr()
	backend, err := b.start("backend", 1, self, "-backend", backendAddr)
	if err != nil {
		return err
	}
	defer b.stop(backend)
	if err := waitHTTP(ctx, "http://"+backendAddr+"/", 10*time.Second); err != nil {
		return err
	}

	// The backend's machine's node proxy, beside it on CPU 1.
	edgePKI, nodePKI, err := b.makePKI()
	if err != nil {
		return err
	}
	nodeAddr := freeAddr()
	node, err := b.start("node-proxy", 1, self, "-node-proxy", nodeAddr, "-node-pki", nodePKI, "-backend", backendAddr)
	if err != nil {
		return err
	}
	defer b.stop(node)
	if err := waitTCP(ctx, nodeAddr, 10*time.Second); err != nil {
		return err
	}

	// The edge serves a snapshot routing the app to the backend.
	host, portS, _ := strings.Cut(backendAddr, ":")
	port, _ := strconv.Atoi(portS)
	_, meshS, _ := strings.Cut(nodeAddr, ":")
	meshPort, _ := strconv.Atoi(meshS)
	stateDir := filepath.Join(b.root, "edge-proxy")
	snap := edge.Snapshot{Location: "bench", SavedAt: time.Now(), Regions: []edge.SnapshotRegion{{
		Region: edge.Region{ID: benchRegion, URL: "https://127.0.0.1:1", Latitude: 50.11, Longitude: 8.68},
		Services: []regionapi.FeedService{{Key: "bench.bench.web", Org: "bench", App: "bench", Service: "web",
			Ports: []api.Port{{Port: 8080}}, Routes: []api.Route{{Port: 8080, Path: "/"}},
			Endpoints: []regionapi.Endpoint{{Instance: benchInstance, Machine: benchMachine, Address: host, Ports: map[string]int{"8080": port},
				MeshPort: meshPort, Healthy: true}}}},
	}}}
	if err := edge.WriteSnapshot(stateDir, snap); err != nil {
		return err
	}
	edgeAddr, edgeAdmin := freeAddr(), freeAddr()
	ep, err := b.start("edge-proxy", 0, filepath.Join(b.binDir, "meridian"), "edge", "--location", "bench", "--listen", edgeAddr,
		"--admin-listen", edgeAdmin, "--state-dir", stateDir, "--pki-dir", edgePKI, "--access-log=false", "--log-level", "warn")
	if err != nil {
		return err
	}
	defer b.stop(ep)
	if err := waitHTTP(ctx, "http://"+edgeAdmin+"/readyz", 10*time.Second); err != nil {
		return err
	}

	targets := []target{{name: "backend alone", url: "http://" + backendAddr + "/"},
		{name: "meridian edge", url: "http://" + edgeAddr + "/", pid: ep.cmd.Process.Pid, hop: node.cmd.Process.Pid}}
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		nginx = ""
		if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
			nginx = "/usr/sbin/nginx"
		}
	}
	nginxName := ""
	if nginx == "" {
		fmt.Println("proxy: nginx is not installed (apt-get install -y nginx): comparing with the backend alone only")
	} else {
		out, _ := exec.Command(nginx, "-v").CombinedOutput()
		nginxName = "nginx " + strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: nginx/"))
		dir := filepath.Join(b.root, "nginx")
		os.MkdirAll(dir, 0o755)
		nginxAddr := freeAddr()
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, backendAddr, nginxAddr)), 0o644); err != nil {
			return err
		}
		np, err := b.start("nginx", 0, nginx, "-c", conf, "-p", dir)
		if err != nil {
			return err
		}
		defer b.stop(np)
		if err := waitHTTP(ctx, "http://"+nginxAddr+"/", 10*time.Second); err != nil {
			return fmt.Errorf("nginx (see %s): %w", filepath.Join(dir, "error.log"), err)
		}
		targets = append(targets, target{name: nginxName, url: "http://" + nginxAddr + "/", pid: np.cmd.Process.Pid})
	}

	// Rounds alternate the targets, so that other load on the machine
	// falls on all of them alike; each figure is the median of the rounds.
	sat := map[string][]wrkResult{}
	one := map[string][]wrkResult{}
	for _, tg := range targets {
		if _, err := runWrk(ctx, wrk, tg, b.conns, 2*time.Second); err != nil { // warm up
			return err
		}
	}
	if b.cpuProfile != "" {
		if err := b.profileEdge(ctx, wrk, targets[1], edgeAdmin); err != nil {
			return err
		}
	}
	for round := 0; round < b.rounds; round++ {
		b.log.Info("wrk round", "round", round+1, "of", b.rounds)
		for _, tg := range targets {
			r, err := runWrk(ctx, wrk, tg, b.conns, b.duration)
			if err != nil {
				return err
			}
			sat[tg.name] = append(sat[tg.name], r)
			if r, err = runWrk(ctx, wrk, tg, 1, b.duration); err != nil {
				return err
			}
			one[tg.name] = append(one[tg.name], r)
		}
	}
	med := func(rs []wrkResult) wrkResult {
		pick := func(f func(wrkResult) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		out := wrkResult{rps: pick(func(r wrkResult) float64 { return r.rps }),
			p50:    time.Duration(pick(func(r wrkResult) float64 { return float64(r.p50) })),
			p99:    time.Duration(pick(func(r wrkResult) float64 { return float64(r.p99) })),
			cpu:    time.Duration(pick(func(r wrkResult) float64 { return float64(r.cpu) })),
			hopCPU: time.Duration(pick(func(r wrkResult) float64 { return float64(r.hopCPU) }))}
		for _, r := range rs {
			out.errors += r.errors
		}
		return out
	}
	fmt.Printf("\nproxy: wrk (CPU 1, with the backend) -> proxy (alone on CPU 0) -> backend; GET / with Host %s; median of %d rounds of %s\n",
		benchHost, b.rounds, b.duration)
	fmt.Printf("  %-20s %13s %10s %10s %10s %12s %10s\n", "target", fmt.Sprintf("req/s (c=%d)", b.conns), "p50", "p99", "CPU/req", "p50 (c=1)", "p99 (c=1)")
	res := map[string][2]wrkResult{}
	for _, tg := range targets {
		r := [2]wrkResult{med(sat[tg.name]), med(one[tg.name])}
		res[tg.name] = r
		cpu := "-"
		if tg.pid != 0 {
			cpu = fmt.Sprintf("%.1fµs", float64(r[0].cpu)/1e3)
		}
		fmt.Printf("  %-20s %13.0f %10s %10s %10s %12s %10s%s\n", tg.name, r[0].rps, dur(r[0].p50), dur(r[0].p99), cpu, dur(r[1].p50), dur(r[1].p99), r[0].errors+r[1].errors)
		if tg.hop != 0 {
			fmt.Printf("  %-20s %13s %10s %10s %10s\n", "  + its node proxy", "", "", "", fmt.Sprintf("%.1fµs", float64(r[0].hopCPU)/1e3))
		}
	}
	if nginxName != "" {
		e, n, base := res["meridian edge"], res[nginxName], res["backend alone"]
		fmt.Printf("  edge/nginx: %.2fx requests/s (target >= 0.8x), %.2fx CPU per request; p99 %+.3f ms at c=%d, %+.3f ms at c=1 (target <= +1 ms)\n",
			e[0].rps/n[0].rps, float64(e[0].cpu)/float64(n[0].cpu), ms(e[0].p99-n[0].p99), b.conns, ms(e[1].p99-n[1].p99))
		fmt.Printf("  added over the backend alone at c=1: edge p50 %+.3f ms, p99 %+.3f ms; nginx p50 %+.3f ms, p99 %+.3f ms\n",
			ms(e[1].p50-base[1].p50), ms(e[1].p99-base[1].p99), ms(n[1].p50-base[1].p50), ms(n[1].p99-base[1].p99))
	}
	return nil
}

// profileEdge takes a CPU profile of the edge during a saturated wrk run
// of its own (not counted in the figures).
func (b *bench) profileEdge(ctx context.Context, wrk string, tg target, admin string) error {
	secs := max(1, int(b.duration/time.Second))
	errc := make(chan error, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs))
		if err != nil {
			errc <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			errc <- fmt.Errorf("profile: %s", resp.Status)
			return
		}
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		errc <- err
	}()
	if _, err := runWrk(ctx, wrk, tg, b.conns, b.duration+time.Second); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("-cpuprofile: %w", err)
	}
	fmt.Printf("proxy: the edge's CPU profile is in %s (go tool pprof -top %s)\n", b.cpuProfile, b.cpuProfile)
	return nil
}

func dur(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.2fms", float64(d)/1e6)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

var (
	rpsRe   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	pctRe   = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)`)
	errorRe = regexp.MustCompile(`(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]+)`)
)

// runWrk runs wrk on CPU 1 and parses requests/s and the p50/p99
// latencies; with the target's process, its CPU time per request.
func runWrk(ctx context.Context, wrk string, tg target, conns int, d time.Duration) (wrkResult, error) {
	cmd := exec.CommandContext(ctx, "taskset", "-c", "1", wrk, "-t1", "-c"+strconv.Itoa(conns), "-d"+d.String(), "--latency",
		"-H", "Host: "+benchHost, tg.url)
	cpu0, hop0 := cpuTime(tg.pid), cpuTime(tg.hop)
	out, err := cmd.CombinedOutput()
	cpu1, hop1 := cpuTime(tg.pid), cpuTime(tg.hop)
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w\n%s", tg.url, err, out)
	}
	var r wrkResult
	m := rpsRe.FindSubmatch(out)
	n := totalRe.FindSubmatch(out)
	if m == nil || n == nil {
		return r, fmt.Errorf("wrk %s: no Requests/sec in\n%s", tg.url, out)
	}
	r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	if total, _ := strconv.ParseFloat(string(n[1]), 64); total > 0 && tg.pid != 0 {
		r.cpu = time.Duration(float64(cpu1-cpu0) / total)
		r.hopCPU = time.Duration(float64(hop1-hop0) / total)
	}
	for _, m := range pctRe.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[string(m[3])]
		d := time.Duration(v * float64(unit))
		if string(m[1]) == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	for _, m := range errorRe.FindAll(out, -1) {
		r.errors += " [" + string(m) + "]"
	}
	return r, nil
}

var totalRe = regexp.MustCompile(`(\d+) requests in`)

// cpuTime is a process's user and system CPU time (0 without a process).
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): utime is the
	// 14th field, stime the 15th, in clock ticks (100 per second).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}
