package agent

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/meridian-run/meridian/meshwire"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// benchMesh is a caller machine and a destination machine, a real HTTP
// backend on the destination, and the caller's service address for it.
type benchMesh struct {
	direct, mesh string // host:port
}

func newBenchMesh(b *testing.B, backendPort int) benchMesh {
	in := pkitest.New(b, "fra")
	src := newTestNode(b, in, "fra", "fra1", "fra1-a", nil)
	dst := newTestNode(b, in, "fra", "fra2", "fra2-a", nil)
	dst.run("b-1", "acme", "shop", "b", backendPort)
	src.m.setFeed(regionapi.Feed{Region: "fra", Services: []regionapi.FeedService{service("acme", "shop", "b", dst.endpoint("b-1", true))}})
	srv := src.caller("a-1", "acme", "shop", "a")
	ip := resolveA(b, srv, "b.shop.internal.")
	return benchMesh{direct: "127.0.0.1:" + strconv.Itoa(backendPort), mesh: net.JoinHostPort(ip.String(), "8080")}
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// BenchmarkMeshLatency measures what a call through two node proxies (the
// caller's and the destination's, mutual TLS between them) adds to a
// direct connection: b.N GETs each way, both paced at 1,000 requests a
// second and interleaved in the same run; keepalive reuses one connection
// per path, newconn opens one per request (TCP and TLS handshakes, with
// session resumption, on the path).
//
//	go test -run '^$' -bench BenchmarkMeshLatency -benchtime 5000x ./agent/
func BenchmarkMeshLatency(b *testing.B) {
	for _, keepAlive := range []bool{true, false} {
		name := "keepalive"
		if !keepAlive {
			name = "newconn"
		}
		b.Run(name, func(b *testing.B) {
			port, _ := backend(b, "b")
			bm := newBenchMesh(b, port)
			client := func() *http.Client {
				return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}}
			}
			dc, mc := client(), client()
			get := func(c *http.Client, addr string) (time.Duration, error) {
				start := time.Now()
				resp, err := c.Get("http://" + addr + "/")
				if err != nil {
					return 0, err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return time.Since(start), nil
			}
			for range 200 { // warm up both paths
				if _, err := get(dc, bm.direct); err != nil {
					b.Fatal(err)
				}
				if _, err := get(mc, bm.mesh); err != nil {
					b.Fatal(err)
				}
			}
			direct := make([]time.Duration, 0, b.N)
			mesh := make([]time.Duration, 0, b.N)
			tick := time.NewTicker(500 * time.Microsecond)
			defer tick.Stop()
			b.ResetTimer()
			for i := 0; i < 2*b.N; i++ {
				<-tick.C
				c, addr, out := dc, bm.direct, &direct
				if i%2 == 1 {
					c, addr, out = mc, bm.mesh, &mesh
				}
				d, err := get(c, addr)
				if err != nil {
					b.Fatal(err)
				}
				*out = append(*out, d)
			}
			b.StopTimer()
			dp50, dp99 := percentile(direct, 0.50), percentile(direct, 0.99)
			mp50, mp99 := percentile(mesh, 0.50), percentile(mesh, 0.99)
			b.ReportMetric(us(dp50), "direct-p50-µs")
			b.ReportMetric(us(dp99), "direct-p99-µs")
			b.ReportMetric(us(mp50), "mesh-p50-µs")
			b.ReportMetric(us(mp99), "mesh-p99-µs")
			b.ReportMetric(us(mp50-dp50), "added-p50-µs")
			b.ReportMetric(us(mp99-dp99), "added-p99-µs")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// sink counts the bytes of each connection and answers their count when
// the caller half-closes.
func sink(b *testing.B) int {
	return testutil.ServeTCP(b, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d\n", n)
	})
}

// BenchmarkMeshThroughput compares throughput through two node proxies
// with direct connections: bulk sends 32 MiB per connection on 4
// connections at once; requests runs 8 keep-alive clients of small GETs
// for a second.
//
//	go test -run '^$' -bench BenchmarkMeshThroughput -benchtime 3x ./agent/
func BenchmarkMeshThroughput(b *testing.B) {
	b.Run("bulk", func(b *testing.B) {
		bm := newBenchMesh(b, sink(b))
		const per, conns = 32 << 20, 4
		buf := make([]byte, 256<<10)
		send := func(addr string) (time.Duration, error) {
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := net.Dial("tcp", addr)
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					for sent := 0; sent < per; sent += len(buf) {
						if _, err := c.Write(buf); err != nil {
							errs <- err
							return
						}
					}
					c.(*net.TCPConn).CloseWrite()
					ans, _ := io.ReadAll(c)
					if string(ans) != strconv.Itoa(per)+"\n" {
						errs <- fmt.Errorf("sink counted %q", ans)
					}
				}()
			}
			wg.Wait()
			close(errs)
			return time.Since(start), <-errs
		}
		var dt, mt time.Duration
		b.ResetTimer()
		for range b.N {
			d, err := send(bm.direct)
			if err != nil {
				b.Fatal(err)
			}
			m, err := send(bm.mesh)
			if err != nil {
				b.Fatal(err)
			}
			dt, mt = dt+d, mt+m
		}
		mb := float64(per*conns*b.N) / (1 << 20)
		b.ReportMetric(mb/dt.Seconds(), "direct-MiB/s")
		b.ReportMetric(mb/mt.Seconds(), "mesh-MiB/s")
		b.ReportMetric(dt.Seconds()/mt.Seconds(), "mesh/direct")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("requests", func(b *testing.B) {
		port, _ := backend(b, "b")
		bm := newBenchMesh(b, port)
		run := func(addr string) (float64, error) {
			var n atomic.Int64
			var firstErr atomic.Value
			deadline := time.Now().Add(time.Second)
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
					for time.Now().Before(deadline) {
						resp, err := c.Get("http://" + addr + "/")
						if err != nil {
							firstErr.CompareAndSwap(nil, err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						n.Add(1)
					}
				}()
			}
			wg.Wait()
			if err, ok := firstErr.Load().(error); ok {
				return 0, err
			}
			return float64(n.Load()), nil
		}
		var dn, mn float64
		b.ResetTimer()
		for range b.N {
			d, err := run(bm.direct)
			if err != nil {
				b.Fatal(err)
			}
			m, err := run(bm.mesh)
			if err != nil {
				b.Fatal(err)
			}
			dn, mn = dn+d, mn+m
		}
		b.ReportMetric(dn/float64(b.N), "direct-req/s")
		b.ReportMetric(mn/float64(b.N), "mesh-req/s")
		b.ReportMetric(mn/dn, "mesh/direct")
		b.ReportMetric(0, "ns/op")
	})
}

// BenchmarkEdgeHop compares the two ways an edge could carry its
// kept-alive connections to an instance's port through the destination
// machine's node proxy (mutual TLS either way): one TLS connection per
// pooled connection (meshwire.EdgeALPN, what the edge does), or streams
// of one yamux session over a single TLS connection (what node proxies
// do for workloads). 16 clients each send GETs, one at a time, over their
// own kept-alive connection (or stream) to a real HTTP backend; ns/op is
// per request, cpu-µs/op the CPU time of the whole process per request
// (the callers, the node proxy and the backend: the same backend work on
// both sides).
//
//	go test -run '^$' -bench BenchmarkEdgeHop -benchtime 20000x ./agent/
func BenchmarkEdgeHop(b *testing.B) {
	in := pkitest.New(b, "fra")
	dst := newTestNode(b, in, "fra", "fra1", "fra1-a", nil)
	port, _ := backend(b, "b")
	dst.run("b-1", "acme", "shop", "b", port)
	dst.mu.Lock()
	li := dst.locals["b-1"]
	li.Public = []int{8080}
	dst.locals["b-1"] = li
	dst.mu.Unlock()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(dst.m.port()))
	machine := pki.AllowIDs(pki.MachineID(pkitest.TrustDomain, "fra", "fra1-a"))
	leaf := func(ca *pki.CA, id pki.ID) pki.CertSource {
		l, err := ca.Issue(pki.LeafRequest{ID: id, Usage: pki.UsageClient, TTL: time.Hour, Now: time.Now()})
		if err != nil {
			b.Fatal(err)
		}
		rl, _ := pki.NewReloader(l)
		return rl
	}
	edgeCerts := leaf(in.Root, pki.EdgeID(pkitest.TrustDomain, "par"))
	workloadCerts := leaf(in.Regions["fra"], pki.WorkloadID(pkitest.TrustDomain, "acme", "shop", "a"))
	dialTLS := func(src pki.CertSource, proto string) *tls.Conn {
		cfg := pki.ClientConfig(src, in.Root.Pool(), machine)
		cfg.NextProtos = []string{proto}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	call := func(c net.Conn) net.Conn {
		if _, err := c.Write(meshwire.AppendPreamble(nil, "b-1", 8080)); err != nil {
			b.Fatal(err)
		}
		if err := meshwire.ReadStatus(c); err != nil {
			b.Fatal(err)
		}
		return c
	}
	const clients = 16
	run := func(b *testing.B, open func() net.Conn) {
		conns := make(chan net.Conn, clients)
		for range clients {
			conns <- open()
		}
		req := []byte("GET / HTTP/1.1\r\nHost: b\r\n\r\n")
		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		b.ResetTimer()
		b.SetParallelism(clients / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			c := <-conns
			defer c.Close()
			br := bufio.NewReader(c)
			for pb.Next() {
				if _, err := c.Write(req); err != nil {
					b.Error(err)
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
		b.StopTimer()
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) - syscall.TimevalToNsec(ru0.Utime) +
			syscall.TimevalToNsec(ru1.Stime) - syscall.TimevalToNsec(ru0.Stime))
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	}
	b.Run("tls-per-connection", func(b *testing.B) {
		run(b, func() net.Conn { return call(dialTLS(edgeCerts, meshwire.EdgeALPN)) })
	})
	b.Run("yamux-streams", func(b *testing.B) {
		sess, err := yamux.Client(&frameConn{Conn: dialTLS(workloadCerts, meshwire.MeshALPN)}, muxConfig(dst.m.log))
		if err != nil {
			b.Fatal(err)
		}
		defer sess.Close()
		run(b, func() net.Conn {
			st, err := sess.OpenStream()
			if err != nil {
				b.Fatal(err)
			}
			return call(muxStream{st})
		})
	})
}
