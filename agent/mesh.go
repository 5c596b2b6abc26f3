package agent

// The private mesh: every instance calls the services of its organization
// by name (<service>.<app>.internal, or <region>.<service>.<app>.internal
// for one region), with the system resolver, over mutual TLS between the
// machines' node proxies, to the closest healthy instance.
//
// Addresses. Instances of the process runtime share the host's network,
// and resolv.conf cannot name a port, so each agent takes a loopback /16
// (MeshConfig.Net, e.g. 127.77.0.0/16) and gives every service with an
// instance on the machine (a "caller slot" s, 1..254) its own addresses:
// 127.77.<s>.1 is the DNS server its instances' resolv.conf names, and
// 127.77.<s>.<d> (d = 2..254) is where the node proxy listens, on the
// declared ports, for the d-th name they resolved. The address a
// connection arrives on thus tells the proxy both who calls (the slot's
// service, whose workload certificate it presents) and whom (the name's
// service and, for a region-qualified name, its region). Names resolve
// only within the caller's organization; slots and names keep their
// numbers across agent restarts (DataDir/mesh/state.json), so callers that
// resolved once keep working.
//
// Without network namespaces anything on the host can connect to any
// loopback address, so the address alone is only a claim: the node proxy
// checks with the kernel that the calling socket belongs to a process of
// one of the slot's instances (caller.go) before it speaks for the slot.
// Between machines, a node proxy delivers only to callers whose workload
// certificate (issued by a region's CA to a machine that runs that
// service) passes the policy.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/supervise"
)

// Mesh defaults.
const (
	DefaultMeshNet           = "127.77.0.0/16"
	DefaultMeshPort          = 7443
	DefaultMeshDNSPort       = 53
	DefaultMeshMaxAttempts   = 4
	DefaultMeshDialTimeout   = 2 * time.Second
	DefaultMeshProbeInterval = 10 * time.Second
	DefaultMeshDNSTTL        = 30 * time.Second
)

// MeshConfig configures the agent's part of the private mesh: a DNS
// server and a node proxy.
type MeshConfig struct {
	// Net is the loopback /16 (inside 127.0.0.0/8) the agent takes the
	// addresses of its DNS servers and service addresses from. Agents
	// sharing one host need distinct ones. Default DefaultMeshNet.
	Net string
	// Port is the node proxy's port on Config.Address, where other
	// machines' proxies deliver calls over mutual TLS; 0 picks a free one.
	// It is reported in heartbeats, so the region's feed carries it.
	Port int
	// DNSPort is the DNS servers' port. Default 53: resolv.conf cannot name
	// another, so only tests change it.
	DNSPort int
	// Upstreams ("host:port") resolve the names outside .internal. Default:
	// the nameservers of the host's /etc/resolv.conf, port 53.
	Upstreams []string
	// Policy decides whether a caller may reach a callee (both workload
	// identities); a non-nil error refuses the call. Default
	// SameOrganization.
	Policy func(caller, callee pki.ID) error
	// MaxAttempts is how many endpoints a connection is tried on before it
	// is given up. Default DefaultMeshMaxAttempts.
	MaxAttempts int
	// DialTimeout bounds each attempt: connecting to the destination node
	// proxy, the TLS handshake and its answer. Default
	// DefaultMeshDialTimeout.
	DialTimeout time.Duration
	// ProbeInterval is how often the round trip to each other region's
	// node proxies is measured. Default DefaultMeshProbeInterval.
	ProbeInterval time.Duration
	// DNSTTL is the TTL of the mesh's DNS answers. Default
	// DefaultMeshDNSTTL.
	DNSTTL time.Duration
	// UnverifiedCallers turns off the check that a connection to a
	// service address comes from a process of that service's instances
	// (caller.go): any local process may then speak as any service with an
	// instance on the machine. Only for machines that run nothing else.
	UnverifiedCallers bool
}

// SameOrganization is the default mesh policy: services of one
// organization may call each other, nothing else may.
func SameOrganization(caller, callee pki.ID) error {
	if caller.Kind != pki.KindWorkload || callee.Kind != pki.KindWorkload {
		return fmt.Errorf("only workloads call workloads (caller is a %s)", caller.Kind)
	}
	if caller.TrustDomain != callee.TrustDomain || caller.Org != callee.Org {
		return fmt.Errorf("organization %q may not call organization %q", caller.Org, callee.Org)
	}
	return nil
}

// meshNet parses a mesh network: a /16 inside 127.0.0.0/8.
func meshNet(s string) ([2]byte, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return [2]byte{}, fmt.Errorf("%q is not a CIDR network: %w", s, err)
	}
	a := p.Addr().As4()
	if !p.Addr().Is4() || p.Bits() != 16 || a[0] != 127 || p.Masked() != p {
		return [2]byte{}, fmt.Errorf("%q: want a loopback /16 such as 127.77.0.0/16", s)
	}
	return [2]byte{a[0], a[1]}, nil
}

func (c *MeshConfig) setDefaults(bad func(string, ...any)) {
	if c.Net == "" {
		c.Net = DefaultMeshNet
	}
	if _, err := meshNet(c.Net); err != nil {
		bad("Mesh.Net: %v", err)
	}
	if c.Port < 0 || c.Port > 65535 {
		bad("Mesh.Port %d is not a port", c.Port)
	}
	if c.DNSPort == 0 {
		c.DNSPort = DefaultMeshDNSPort
	}
	if c.DNSPort < 0 || c.DNSPort > 65535 {
		bad("Mesh.DNSPort %d is not a port", c.DNSPort)
	}
	if c.Upstreams == nil {
		c.Upstreams = hostNameservers("/etc/resolv.conf")
	}
	for i, u := range c.Upstreams {
		if _, err := netip.ParseAddrPort(u); err != nil {
			bad("Mesh.Upstreams[%d] %q: want ip:port", i, u)
		}
	}
	if c.Policy == nil {
		c.Policy = SameOrganization
	}
	if c.MaxAttempts < 0 || c.DialTimeout < 0 || c.ProbeInterval < 0 || c.DNSTTL < 0 {
		bad("Mesh: attempts, timeouts and intervals must not be negative")
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMeshMaxAttempts
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultMeshDialTimeout
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultMeshProbeInterval
	}
	if c.DNSTTL == 0 {
		c.DNSTTL = DefaultMeshDNSTTL
	}
}

// hostNameservers reads the nameservers of a resolv.conf, as ip:53.
func hostNameservers(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return []string{}
	}
	out := []string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if ip, err := netip.ParseAddr(f[1]); err == nil {
				out = append(out, netip.AddrPortFrom(ip.WithZone(""), 53).String())
			}
		}
	}
	return out
}

// instanceResolvConf is the resolv.conf of a slot's instances: the slot's
// DNS server, and the host's search and options lines.
func instanceResolvConf(dnsIP net.IP, host string) string {
	var b strings.Builder
	b.WriteString("# Meridian mesh: <service>.<app>.internal and <region>.<service>.<app>.internal\n")
	b.WriteString("nameserver " + dnsIP.String() + "\n")
	for _, line := range strings.Split(host, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (f[0] == "search" || f[0] == "domain" || f[0] == "options") {
			b.WriteString(strings.TrimSpace(line) + "\n")
		}
	}
	return b.String()
}

// meshDeps is what the mesh needs from its agent; tests provide their own.
type meshDeps struct {
	Config     MeshConfig
	Address    string // the machine's address: node proxy and instances
	Region     string
	Datacenter string
	Machine    string
	// TrustDomain is the installation's (from the machine certificate).
	TrustDomain string
	Roots       *x509.CertPool
	// NodeCerts is the machine certificate the node proxy serves.
	NodeCerts pki.CertSource
	// StateDir keeps slots, names and workload keys.
	StateDir string
	// HostResolvConf is the host's resolv.conf (search and options lines
	// are kept for instances).
	HostResolvConf string
	Dialer         Dialer
	Clock          supervise.Clock
	Logger         *slog.Logger
	// Issue obtains a workload certificate chain (PEM) for a service key
	// and a CSR.
	Issue func(ctx context.Context, service string, csr []byte) ([]byte, error)
	// Local finds an instance of this machine.
	Local func(instance string) (NodeInstance, bool)
	// PID is the host pid of a running instance's top process (0: not
	// running); the processes under it are the instance's callers.
	PID func(instance string) int
	// ServiceUID is the user a service's instances run as, when they run
	// as their own (nil or false: as the agent's user).
	ServiceUID func(service string) (uint32, bool)
	// Feed streams the merged feed until ctx ends (reconnecting itself).
	// Nil: tests call setFeed.
	Feed func(ctx context.Context, fn func(regionapi.Feed)) error
}

// mesh is the agent's DNS server and node proxy.
type mesh struct {
	d    meshDeps
	cfg  MeshConfig
	log  *slog.Logger
	net  [2]byte
	self locality
	node *nodeProxy // the inbound side

	table  atomic.Pointer[meshTable]
	health *endpointHealth
	rtt    *rttTable
	rndMu  sync.Mutex
	rnd    *rand.Rand

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	conns    connSet
	sessions sessionPool
	warnMu   sync.Mutex
	warned   map[string]time.Time

	mu    sync.Mutex
	state meshState        // persisted
	slots map[string]*slot // active, by service key
	owner map[string]string
	// owner maps instance ids to their slot's service key.
	closed bool
	// feedSeen is closed when the first feed arrived.
	feedSeen chan struct{}
	feedOnce sync.Once
}

// meshState is what DataDir/mesh/state.json keeps: each service's slot and
// the numbers of the names its instances resolved.
type meshState struct {
	Slots map[string]*slotState `json:"slots"`
}

type slotState struct {
	Slot  int            `json:"slot"`
	Names map[string]int `json:"names"` // "svc.app" or "region.svc.app" -> last octet
}

// slot is an active caller slot: a local service's DNS server, service
// addresses and workload certificate.
type slot struct {
	key    string
	id     pki.ID
	st     *slotState
	dnsIP  net.IP
	resolv string
	dns    []*dns.Server
	cert   *workloadCert
	vips   map[int]*vip
}

// vip is a service address of a slot: the node proxy listens there on the
// service's declared ports.
type vip struct {
	d       int
	ip      net.IP
	name    string
	service string // service key
	region  string // "" = any region
	lns     map[int]net.Listener
}

func (m *mesh) statePath() string { return filepath.Join(m.d.StateDir, "state.json") }

func (m *mesh) ip(s, d int) net.IP { return net.IPv4(m.net[0], m.net[1], byte(s), byte(d)).To4() }

// newMesh validates deps, loads the saved state and binds the node proxy.
func newMesh(d meshDeps) (*mesh, error) {
	n, err := meshNet(d.Config.Net)
	if err != nil {
		return nil, fmt.Errorf("agent: config: Mesh.Net: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(d.StateDir, "certs"), 0o700); err != nil {
		return nil, fmt.Errorf("agent: mesh state: %w", err)
	}
	m := &mesh{d: d, cfg: d.Config, log: d.Logger.With("part", "mesh"), net: n, self: locality{d.Region, d.Datacenter},
		health: newEndpointHealth(), rtt: newRTTTable(), rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		slots: map[string]*slot{}, owner: map[string]string{}, feedSeen: make(chan struct{}),
		state: meshState{Slots: map[string]*slotState{}}}
	if b, err := os.ReadFile(m.statePath()); err == nil {
		var st meshState
		if err := json.Unmarshal(b, &st); err != nil {
			m.log.Warn("mesh state unreadable; starting afresh", "path", m.statePath(), "err", err)
		} else if st.Slots != nil {
			for k, ss := range st.Slots {
				if ss == nil || ss.Slot < 1 || ss.Slot > 254 {
					continue
				}
				if ss.Names == nil {
					ss.Names = map[string]int{}
				}
				m.state.Slots[k] = ss
			}
		}
	}
	node, err := startNode(nodeDeps{Address: d.Address, Port: d.Config.Port, TrustDomain: d.TrustDomain, Roots: d.Roots,
		Certs: d.NodeCerts, Local: d.Local, Policy: d.Config.Policy, Dialer: d.Dialer, DialTimeout: d.Config.DialTimeout,
		Clock: d.Clock, Log: m.log})
	if err != nil {
		return nil, fmt.Errorf("agent: mesh node proxy on %s port %d (Mesh.Port): %w", d.Address, d.Config.Port, err)
	}
	m.node = node
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if d.Feed != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			d.Feed(m.ctx, m.setFeed)
		}()
	}
	m.wg.Add(2)
	go func() { defer m.wg.Done(); m.probeLoop(m.ctx) }()
	go func() { defer m.wg.Done(); m.sweepLoop(m.ctx) }()
	m.log.Info("mesh node proxy listening", "address", node.ln.Addr().String(), "net", d.Config.Net, "dns_port", d.Config.DNSPort)
	return m, nil
}

// port is the node proxy's port.
func (m *mesh) port() int { return m.node.port() }

// close stops every listener and proxied connection.
func (m *mesh) close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	slots := make([]*slot, 0, len(m.slots))
	for _, s := range m.slots {
		slots = append(slots, s)
	}
	m.slots = map[string]*slot{}
	m.mu.Unlock()
	m.cancel()
	m.node.close()
	for _, s := range slots {
		m.deactivate(s, false)
	}
	m.sessions.closeAll()
	m.conns.closeAll()
	m.wg.Wait()
}

// saveState writes the slots and names; called with m.mu held.
func (m *mesh) saveState() {
	if err := writeJSONAtomic(m.statePath(), m.state); err != nil {
		m.log.Error("saving the mesh state", "err", err)
	}
}

// acquire registers a local instance of a service and returns the
// resolv.conf its instances use, starting the service's slot (DNS server,
// service addresses, workload certificate) with its first instance.
func (m *mesh) acquire(instance, org, app, service string) (string, error) {
	key := regionapi.ServiceKey(org, app, service)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return "", errors.New("mesh: closed")
	}
	if s, ok := m.slots[key]; ok {
		m.owner[instance] = key
		return s.resolv, nil
	}
	id := pki.WorkloadID(m.d.TrustDomain, org, app, service)
	if err := id.Validate(); err != nil {
		return "", fmt.Errorf("mesh: %w", err)
	}
	st := m.state.Slots[key]
	s := &slot{key: key, id: id, vips: map[int]*vip{}}
	// The saved slot, else a free one; a slot whose DNS address something
	// else holds (another agent given the same network) is skipped.
	for tries := 0; ; tries++ {
		if st == nil {
			n, err := m.freeSlot()
			if err != nil {
				return "", err
			}
			st = &slotState{Slot: n, Names: map[string]int{}}
			m.state.Slots[key] = st
			m.saveState()
		}
		s.st, s.dnsIP = st, m.ip(st.Slot, 1)
		err := m.startDNS(s)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || tries == 16 {
			return "", err
		}
		m.log.Warn("mesh: a caller slot's DNS address is taken; taking another", "service", key, "err", err)
		m.state.Slots[key+"#taken"+strconv.Itoa(st.Slot)] = &slotState{Slot: st.Slot, Names: map[string]int{}}
		delete(m.state.Slots, key)
		st = nil
	}
	s.resolv = instanceResolvConf(s.dnsIP, m.d.HostResolvConf)
	s.cert = m.startCert(s)
	m.slots[key] = s
	m.owner[instance] = key
	// Names resolved before a restart get their listeners back.
	if t := m.table.Load(); t != nil {
		for name, d := range st.Names {
			m.restoreVIP(s, t, name, d)
		}
	}
	m.log.Info("mesh slot started", "service", key, "dns", s.dnsIP.String())
	return s.resolv, nil
}

// freeSlot picks a slot number no service holds, forgetting the
// reservation of an inactive service when all are taken. Called with m.mu.
func (m *mesh) freeSlot() (int, error) {
	used := map[int]string{}
	for k, st := range m.state.Slots {
		used[st.Slot] = k
	}
	for n := 1; n <= 254; n++ {
		if _, ok := used[n]; !ok {
			return n, nil
		}
	}
	for n := 1; n <= 254; n++ {
		if k := used[n]; m.slots[k] == nil {
			delete(m.state.Slots, k)
			return n, nil
		}
	}
	return 0, errors.New("mesh: every caller slot (254 services per machine) is in use")
}

// release unregisters a local instance; its service's slot stops with its
// last instance.
func (m *mesh) release(instance string) {
	m.mu.Lock()
	key, ok := m.owner[instance]
	delete(m.owner, instance)
	var s *slot
	if ok {
		still := false
		for _, k := range m.owner {
			if k == key {
				still = true
				break
			}
		}
		if !still {
			s = m.slots[key]
			delete(m.slots, key)
		}
	}
	m.mu.Unlock()
	if s != nil {
		m.deactivate(s, true)
		m.log.Info("mesh slot stopped", "service", s.key)
	}
}

// deactivate stops a slot's DNS servers, listeners and certificate
// renewal; forget removes its workload key from disk.
func (m *mesh) deactivate(s *slot, forget bool) {
	for _, srv := range s.dns {
		srv.Shutdown()
	}
	m.mu.Lock()
	for _, v := range s.vips {
		for _, ln := range v.lns {
			ln.Close()
		}
	}
	m.mu.Unlock()
	m.sessions.closeSlot(s)
	s.cert.stop()
	if forget {
		s.cert.remove(m)
	}
}

// setFeed installs a new merged feed: the routing table, and listeners for
// ports that services declared meanwhile.
func (m *mesh) setFeed(f regionapi.Feed) {
	t := buildTable(f, m.d.Clock.Now())
	m.table.Store(t)
	m.feedOnce.Do(func() { close(m.feedSeen) })
	live := map[string]bool{}
	for _, ms := range t.services {
		for _, ep := range ms.Endpoints {
			live[ep.key()] = true
		}
	}
	m.health.forget(func(k string) bool { return live[k] })
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.slots {
		for name, d := range s.st.Names {
			m.restoreVIP(s, t, name, d)
		}
	}
}

// parseName splits a mesh name ("svc.app" or "region.svc.app", without
// .internal) into its parts.
func parseName(name string) (region, svc, app string, ok bool) {
	l := strings.Split(name, ".")
	switch len(l) {
	case 2:
		svc, app = l[0], l[1]
	case 3:
		region, svc, app = l[0], l[1], l[2]
	default:
		return "", "", "", false
	}
	for _, x := range l {
		if x == "" {
			return "", "", "", false
		}
	}
	return region, svc, app, true
}

// restoreVIP recreates the listeners of a saved name whose service the
// feed lists. Called with m.mu.
func (m *mesh) restoreVIP(s *slot, t *meshTable, name string, d int) {
	region, svc, app, ok := parseName(name)
	if !ok {
		return
	}
	ms := t.services[regionapi.ServiceKey(s.id.Org, app, svc)]
	if ms == nil {
		return
	}
	v := s.vips[d]
	if v == nil {
		v = &vip{d: d, ip: m.ip(s.st.Slot, d), name: name, service: ms.Key, region: region, lns: map[int]net.Listener{}}
		s.vips[d] = v
	}
	m.listen(s, v, ms.Ports)
}

// vipFor returns the service address of a name for a slot, allocating it
// (and its listeners on the service's ports) the first time. Called
// without m.mu.
func (m *mesh) vipFor(s *slot, name string, ms *meshService, region string) (net.IP, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slots[s.key] != s {
		return nil, errors.New("mesh: slot stopped")
	}
	d, ok := s.st.Names[name]
	if !ok {
		taken := map[int]bool{}
		for _, n := range s.st.Names {
			taken[n] = true
		}
		for n := 2; n <= 254; n++ {
			if !taken[n] {
				d = n
				break
			}
		}
		if d == 0 {
			return nil, fmt.Errorf("mesh: service %s resolved more than 253 names", s.key)
		}
		s.st.Names[name] = d
		m.saveState()
	}
	v := s.vips[d]
	if v == nil {
		v = &vip{d: d, ip: m.ip(s.st.Slot, d), name: name, service: ms.Key, region: region, lns: map[int]net.Listener{}}
		s.vips[d] = v
	}
	m.listen(s, v, ms.Ports)
	return v.ip, nil
}

// listen opens the listeners of a service address on ports it lacks.
// Called with m.mu.
func (m *mesh) listen(s *slot, v *vip, ports []int) {
	for _, p := range ports {
		if _, ok := v.lns[p]; ok {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(v.ip.String(), strconv.Itoa(p)))
		if err != nil {
			m.log.Error("mesh: cannot listen on a service address", "caller", s.key, "name", v.name, "address", v.ip.String(), "port", p, "err", err)
			continue
		}
		v.lns[p] = ln
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.serveVIP(ln, s, v, p) }()
	}
}

// candidates orders a service's endpoints for one connection.
func (m *mesh) candidates(ms *meshService, region string) []meshEndpoint {
	now := m.d.Clock.Now()
	m.rndMu.Lock()
	defer m.rndMu.Unlock()
	t := m.table.Load()
	rtt := func(r string) (time.Duration, bool) {
		if d, ok := m.rtt.get(r); ok {
			return d, true
		}
		if t == nil {
			return 0, false
		}
		d, ok := t.geo[r]
		return d, ok
	}
	return orderEndpoints(ms.Endpoints, m.self, region, rtt,
		func(ep meshEndpoint) (bool, bool) { return m.health.state(ep, now) }, m.rnd)
}

// probeLoop measures the round trip to other regions' node proxies: the
// time of a TCP connect (one round trip), the best of a few machines.
func (m *mesh) probeLoop(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-m.feedSeen:
	}
	for {
		if t := m.table.Load(); t != nil {
			for region, addrs := range t.probe {
				best := time.Duration(-1)
				for _, addr := range addrs {
					if d, err := m.probe(ctx, addr); err == nil && (best < 0 || d < best) {
						best = d
					}
				}
				if best >= 0 {
					m.rtt.observe(region, best)
				}
			}
			m.log.Debug("mesh round trips", "rtt", m.rtt.snapshot())
		}
		t := m.d.Clock.NewTimer(m.cfg.ProbeInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

func (m *mesh) probe(ctx context.Context, addr string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	c, err := m.d.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	d := time.Since(start)
	c.Close()
	return d, nil
}

// sweepLoop closes idle and retired sessions every few seconds.
func (m *mesh) sweepLoop(ctx context.Context) {
	for {
		t := m.d.Clock.NewTimer(5 * time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		m.sessions.sweep(m.d.Clock.Now(), sessionIdle)
	}
}
