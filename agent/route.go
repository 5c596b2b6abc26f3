package agent

import (
	"cmp"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
)

// meshEndpoint is one instance the mesh can reach: the destination
// machine's node proxy and the instance's id there.
type meshEndpoint struct {
	Region     string
	Datacenter string
	Machine    string
	Instance   string
	// Addr is the machine's node proxy, "address:mesh port".
	Addr string
	// Stale marks an endpoint from a peer region whose feed is gone: it is
	// used while it answers and dropped at its first failure.
	Stale bool
	// Epoch is when the feed listing it was received; a stale endpoint that
	// failed stays dropped until a newer feed lists it.
	Epoch time.Time
}

func (e meshEndpoint) key() string { return e.Region + "/" + e.Instance }

// meshService is a service as the mesh routes to it, merged over the
// regions whose feeds list it.
type meshService struct {
	Key  string // org.app.service
	Org  string
	App  string
	Name string
	// Ports are the declared ports, over every region.
	Ports []int
	// Regions lists the regions whose feeds have the service.
	Regions map[string]bool
	// Endpoints are the healthy instances with a node proxy.
	Endpoints []meshEndpoint
}

// meshTable is the mesh's view of the merged feed; it is replaced, never
// changed.
type meshTable struct {
	region   string
	services map[string]*meshService
	// probe lists, per other region, node proxies to measure the round
	// trip to.
	probe map[string][]string
	// geo estimates, from the coordinates global gave the regions, the
	// round trip to each other region (when both are known).
	geo map[string]time.Duration
}

// buildTable turns a merged feed into a routing table. Entries that do not
// make sense (bad names, addresses or ports) are skipped, so a peer's
// garbage cannot break routing to the rest.
func buildTable(f regionapi.Feed, now time.Time) *meshTable {
	t := &meshTable{region: f.Region, services: map[string]*meshService{}, probe: map[string][]string{}, geo: map[string]time.Duration{}}
	add := func(region string, connected bool, received time.Time, svcs []regionapi.FeedService) {
		if pki.ValidateName(region) != nil {
			return
		}
		for _, fs := range svcs {
			if pki.ValidateName(fs.Org) != nil || pki.ValidateName(fs.App) != nil || pki.ValidateName(fs.Service) != nil {
				continue
			}
			key := regionapi.ServiceKey(fs.Org, fs.App, fs.Service)
			ms := t.services[key]
			if ms == nil {
				ms = &meshService{Key: key, Org: fs.Org, App: fs.App, Name: fs.Service, Regions: map[string]bool{}}
				t.services[key] = ms
			}
			ms.Regions[region] = true
			for _, p := range fs.Ports {
				if p.Port > 0 && p.Port < 65536 && !slices.Contains(ms.Ports, p.Port) {
					ms.Ports = append(ms.Ports, p.Port)
				}
			}
			for _, ep := range fs.Endpoints {
				if !ep.Healthy || ep.MeshPort <= 0 || ep.MeshPort > 65535 || net.ParseIP(ep.Address) == nil || ep.Instance == "" || len(ep.Instance) > 255 {
					continue
				}
				addr := net.JoinHostPort(ep.Address, strconv.Itoa(ep.MeshPort))
				ms.Endpoints = append(ms.Endpoints, meshEndpoint{Region: region, Datacenter: ep.Datacenter, Machine: ep.Machine,
					Instance: ep.Instance, Addr: addr, Stale: !connected, Epoch: received})
				if region != f.Region && len(t.probe[region]) < 3 && !slices.Contains(t.probe[region], addr) {
					t.probe[region] = append(t.probe[region], addr)
				}
			}
		}
	}
	add(f.Region, true, now, f.Services)
	for _, p := range f.Peers {
		if p.Region == f.Region {
			continue
		}
		add(p.Region, p.Connected, p.Received, p.Services)
		if f.Self != nil && f.Self.ID == f.Region {
			t.geo[p.Region] = regionapi.GeoRTT(f.Self.Latitude, f.Self.Longitude, p.Latitude, p.Longitude)
		}
	}
	for _, ms := range t.services {
		slices.Sort(ms.Ports)
	}
	return t
}

// Ejection of endpoints that failed: the first failure ejects for
// ejectBase, each next one twice as long up to ejectMax.
const (
	ejectBase = 2 * time.Second
	ejectMax  = 30 * time.Second
)

// endpointHealth remembers which endpoints failed to connect.
type endpointHealth struct {
	mu sync.Mutex
	m  map[string]*epState
}

type epState struct {
	fails   int
	until   time.Time // ejected until
	dropped time.Time // a stale endpoint that failed: the epoch it failed in
}

func newEndpointHealth() *endpointHealth { return &endpointHealth{m: map[string]*epState{}} }

// fail records a failed connection to ep at now.
func (h *endpointHealth) fail(ep meshEndpoint, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.m[ep.key()]
	if st == nil {
		st = &epState{}
		h.m[ep.key()] = st
	}
	st.fails++
	d := ejectBase << min(st.fails-1, 8)
	st.until = now.Add(min(d, ejectMax))
	if ep.Stale {
		st.dropped = ep.Epoch
	}
}

// ok records a successful connection to ep.
func (h *endpointHealth) ok(ep meshEndpoint) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.m, ep.key())
}

// state reports whether ep is ejected (tried last) or dropped (not tried).
func (h *endpointHealth) state(ep meshEndpoint, now time.Time) (ejected, dropped bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.m[ep.key()]
	if st == nil {
		return false, false
	}
	if ep.Stale && !st.dropped.IsZero() && !ep.Epoch.After(st.dropped) {
		return true, true
	}
	return now.Before(st.until), false
}

// forget removes what is known of endpoints no longer in any feed.
func (h *endpointHealth) forget(keep func(key string) bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.m {
		if !keep(k) {
			delete(h.m, k)
		}
	}
}

// rttBucket is the resolution at which regions' round trips are compared:
// regions closer than that to each other are ordered by id, so noise does
// not reorder them.
const rttBucket = time.Millisecond

// orderEndpoints returns the endpoints to try, best first: same data
// center, then same region, then other regions by round trip (measured,
// else estimated from the regions' coordinates; unknown last), ties by
// region id; endpoints of equal rank are shuffled (load spreading).
// Ejected endpoints come after all others; dropped ones are left out.
// region, when set, keeps only that region's.
func orderEndpoints(eps []meshEndpoint, self locality, region string, rtt func(string) (time.Duration, bool),
	state func(meshEndpoint) (ejected, dropped bool), rnd *rand.Rand) []meshEndpoint {
	type ranked struct {
		ep      meshEndpoint
		ejected bool
		tier    int
		bucket  int64
		shuffle uint32
	}
	rs := make([]ranked, 0, len(eps))
	for _, ep := range eps {
		if region != "" && ep.Region != region {
			continue
		}
		ej, dropped := state(ep)
		if dropped {
			continue
		}
		r := ranked{ep: ep, ejected: ej, shuffle: rnd.Uint32()}
		switch {
		case ep.Region == self.region && ep.Datacenter == self.datacenter:
			r.tier = 0
		case ep.Region == self.region:
			r.tier = 1
		default:
			r.tier = 2
			if d, ok := rtt(ep.Region); ok {
				r.bucket = int64(d / rttBucket)
			} else {
				r.bucket = 1 << 40
			}
		}
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if a.ejected != b.ejected {
			if a.ejected {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(a.tier, b.tier), cmp.Compare(a.bucket, b.bucket),
			cmp.Compare(a.ep.Region, b.ep.Region), cmp.Compare(a.shuffle, b.shuffle))
	})
	out := make([]meshEndpoint, len(rs))
	for i, r := range rs {
		out[i] = r.ep
	}
	return out
}

// locality is where this machine is.
type locality struct{ region, datacenter string }

// rttTable keeps the measured round trip to each other region (an
// exponentially weighted moving average of probes).
type rttTable struct {
	mu sync.Mutex
	m  map[string]time.Duration
}

func newRTTTable() *rttTable { return &rttTable{m: map[string]time.Duration{}} }

// observe folds a probe's result into region's average.
func (r *rttTable) observe(region string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.m[region]; ok {
		d = (old*7 + d*3) / 10
	}
	r.m[region] = d
}

// get returns region's round trip, if measured.
func (r *rttTable) get(region string) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.m[region]
	return d, ok
}

// snapshot copies the table.
func (r *rttTable) snapshot() map[string]time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]time.Duration, len(r.m))
	for k, v := range r.m {
		out[k] = v
	}
	return out
}
