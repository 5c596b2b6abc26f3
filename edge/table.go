package edge

import (
	"crypto/tls"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-run/meridian/regionapi"
)

// endpoint is one instance's port as the edge reaches it: through the
// node proxy of its machine (meshAddr), over mutual TLS, asking for the
// instance's declared port. Endpoints keep their balancing and ejection
// state across table rebuilds (same key).
type endpoint struct {
	key      string
	instance string
	region   *regionState
	machine  string
	meshAddr string // the machine's node proxy (host:port)
	port     int    // the instance's declared port, asked of the node proxy
	poolHost string // the endpoint's name in http.Transport's pools (never resolved)
	h2c      bool   // the port speaks HTTP/2 (within the TLS of the hop, no TLS of its own)

	tlsOnce sync.Once
	tls     *tls.Config // verifies the machine's certificate

	pool connPool // the fast path's kept-alive connections

	inflight   atomic.Int64
	fails      atomic.Int32 // consecutive transport failures
	fails5xx   atomic.Int32 // consecutive 5xx answers
	ejections  atomic.Int32 // consecutive ejections (their length doubles)
	ejectUntil atomic.Int64 // unix nanoseconds
}

func (e *endpoint) ejected(now int64) bool { return e.ejectUntil.Load() > now }

// table is an immutable routing table: host -> app -> routes -> targets
// (one per region) -> endpoints. A new one replaces it on every change.
type table struct {
	hosts     map[string]*appRoutes
	routes    int
	endpoints int // healthy ones
}

// appRoutes is one app's routes, longest path prefix first.
type appRoutes struct {
	org, app string
	routes   []*route
}

// route is a path prefix and where it leads, per region.
type route struct {
	prefix  string
	targets []*target
	h2c     bool // some region's port speaks HTTP/2 (the fast path is HTTP/1.1)
}

// target is a route's service and port in one region, with its healthy
// endpoints.
type target struct {
	region  *regionState
	service string
	port    int
	eps     []*endpoint // healthy in the feed
	// standby holds the endpoints the feed reports unhealthy (starting,
	// failing checks, their machine's lease lapsed): tried only when no
	// healthy one is left, rather than answering 503 for sure.
	standby []*endpoint

	metricsOnce sync.Once
	duration    prometheus.Observer
	codes       sync.Map // status code -> prometheus.Counter
}

// match returns the route of the longest prefix that matches path on a
// segment boundary ("/api" matches "/api" and "/api/x", not "/apix").
func (a *appRoutes) match(path string) *route {
	if path == "" {
		path = "/"
	}
	for _, r := range a.routes {
		if prefixMatch(r.prefix, path) {
			return r
		}
	}
	return nil
}

func prefixMatch(prefix, path string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || prefix[len(prefix)-1] == '/' || path[len(prefix)] == '/'
}

// hostOf returns the lower-case host name of a Host header, without port
// or trailing dot.
func hostOf(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// AppHost is an app's public host name: <app>-<org>.<domain>.
func AppHost(app, org, domain string) string { return app + "-" + org + "." + domain }

// regionFeed is one region's services as last received.
type regionFeed struct {
	rs       *regionState
	services []regionapi.FeedService
}

// buildTable merges the regions' feeds into a routing table. Endpoints of
// prev with the same key are kept (with their state); the returned map
// holds the endpoints of the new table. Invalid entries are skipped: a
// service with a bad name, a route that is not a path or names an
// undeclared or non-HTTP port, an endpoint without address, host port,
// machine or mesh port (a machine without a node proxy cannot be reached
// over mutual TLS, and the edge sends nothing in clear).
// Two services of one app claiming one prefix in one region: the first by
// key wins.
func buildTable(domain string, feeds []regionFeed, prev map[string]*endpoint) (*table, map[string]*endpoint) {
	t := &table{hosts: map[string]*appRoutes{}}
	eps := make(map[string]*endpoint, len(prev))
	type routeKey struct{ host, prefix string }
	routes := map[routeKey]*route{}
	for _, f := range feeds {
		claimed := map[routeKey]bool{}
		for _, svc := range f.services {
			if !validLabel(svc.App) || !validLabel(svc.Org) || svc.Service == "" {
				continue
			}
			host := AppHost(svc.App, svc.Org, domain)
			protocols := map[int]string{}
			for _, p := range svc.Ports {
				protocols[p.Port] = p.Protocol
			}
			for _, rt := range svc.Routes {
				proto, declared := protocols[rt.Port]
				if !declared || (proto != "" && proto != "http" && proto != "http2") {
					continue
				}
				if rt.Path == "" || rt.Path[0] != '/' || strings.ContainsAny(rt.Path, " \t\r\n?#") {
					continue
				}
				rk := routeKey{host, rt.Path}
				if claimed[rk] {
					continue
				}
				claimed[rk] = true
				app := t.hosts[host]
				if app == nil {
					app = &appRoutes{org: svc.Org, app: svc.App}
					t.hosts[host] = app
				} else if app.org != svc.Org || app.app != svc.App {
					continue // another (org, app) pair with the same host name
				}
				r := routes[rk]
				if r == nil {
					r = &route{prefix: rt.Path}
					routes[rk] = r
					app.routes = append(app.routes, r)
				}
				tg := &target{region: f.rs, service: svc.Service, port: rt.Port}
				if proto == "http2" {
					r.h2c = true
				}
				declaredPort := strconv.Itoa(rt.Port)
				for _, e := range svc.Endpoints {
					hp := e.Ports[declaredPort]
					if e.Address == "" || hp <= 0 || hp > math.MaxUint16 || e.MeshPort <= 0 || e.MeshPort > math.MaxUint16 ||
						e.Machine == "" || len(e.Instance) == 0 || len(e.Instance) > 255 {
						continue
					}
					// The key names the instance's host port too: an instance
					// started again on another port gets fresh connections.
					var mp [8]byte
					key := f.rs.info.ID + "/" + e.Instance + "/" + joinHostPort(e.Address, hp) + "/" + e.Machine + "@" +
						string(strconv.AppendInt(mp[:0], int64(e.MeshPort), 10))
					ep := eps[key]
					if ep == nil {
						ep = prev[key]
						if ep == nil || ep.region != f.rs || ep.h2c != (proto == "http2") {
							ep = &endpoint{key: key, instance: e.Instance, region: f.rs, machine: e.Machine,
								meshAddr: joinHostPort(e.Address, e.MeshPort), port: rt.Port,
								poolHost: "e" + strconv.FormatUint(endpointSeq.Add(1), 10) + ".instance.invalid:80", h2c: proto == "http2"}
						}
						eps[key] = ep
					}
					if e.Healthy {
						tg.eps = append(tg.eps, ep)
						t.endpoints++
					} else {
						tg.standby = append(tg.standby, ep)
					}
				}
				r.targets = append(r.targets, tg)
			}
		}
	}
	for _, app := range t.hosts {
		slices.SortStableFunc(app.routes, func(a, b *route) int { return len(b.prefix) - len(a.prefix) })
		t.routes += len(app.routes)
	}
	return t, eps
}

// endpointSeq numbers endpoints for their pool names.
var endpointSeq atomic.Uint64

func joinHostPort(host string, port int) string {
	if strings.IndexByte(host, ':') >= 0 && !strings.HasPrefix(host, "[") {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}
