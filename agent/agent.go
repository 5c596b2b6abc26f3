// Package agent is Meridian's machine agent: the process on every machine
// of a region that joins the region once with a join token, keeps the
// machine's lease alive with heartbeats, watches the instances the region
// assigns to the machine, runs each through a driver under a supervisor
// (health checks, restarts with backoff, restart limit), and reports their
// states back.
//
// The agent talks only to its region, over mutual TLS with its machine
// certificate (issued at join for a key that never leaves the machine, saved
// in DataDir and renewed before expiry). It fails over between the region's
// servers. When the region is unreachable the instances keep running; when
// it comes back the agent resumes its assignment watch where it left off
// and stops the instances the region replaced meanwhile.
//
// An agent that restarts re-adopts the instances that kept running without
// it (same ids, same host ports, no duplicates) and stops those the region
// no longer wants.
//
// Start(ctx, cfg) returns a running Agent; Ready, Err and Close manage it,
// in the style of etcd's embed package. Programs using the default Process
// driver must call driver.MaybeRunShim first thing in main.
package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/supervise"
)

// Defaults of Config fields left zero.
const (
	DefaultPortMin          = 20000
	DefaultPortMax          = 29999
	DefaultRequestTimeout   = 10 * time.Second
	DefaultWatchIdleTimeout = 30 * time.Second
	DefaultStopTimeout      = 10 * time.Second
	DefaultReportDebounce   = 100 * time.Millisecond
	DefaultFullReport       = 15 * time.Second
	DefaultLeaseTTL         = 5 * time.Second
)

// Dialer opens TCP connections: to the region's servers and for instances'
// health checks. *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures an Agent.
type Config struct {
	// Region is the id of the region the machine belongs to, e.g. "fra".
	Region string
	// RegionURLs are the region servers' API base URLs
	// ("https://host:port"); the agent fails over between them.
	RegionURLs []string
	// JoinToken admits the machine to the region the first time. It is not
	// needed once DataDir holds the machine's identity.
	JoinToken string
	// Roots holds the installation's root certificate: region servers must
	// chain to it.
	Roots *x509.CertPool
	// TrustDomain is the installation's trust domain, used only for the
	// identity claimed in the join request (the region decides the real
	// one). Default "meridian.local".
	TrustDomain string
	// Datacenter is the machine's data center, e.g. "fra1".
	Datacenter string
	// Name is the machine's id in the region.
	Name string
	// MilliCPU and MemoryMB are the capacity the machine offers. Default:
	// 1000 per CPU core and the machine's total memory.
	MilliCPU int
	MemoryMB int
	// Address is the IP instances listen on and the mesh and edges reach
	// them at. Default 127.0.0.1.
	Address string
	// DataDir holds the machine's identity, the driver's instance state and
	// the agent's records of its instances. Required.
	DataDir string
	// PortMin and PortMax bound the host ports the agent assigns to
	// instances. Default DefaultPortMin..DefaultPortMax.
	PortMin, PortMax int
	// Driver runs instances. Default a driver.Runtimes: definitions with
	// a command only run with a driver.Process under DataDir/instances,
	// those with an image as containers with a driver.OCI under
	// DataDir/oci, their images kept in DataDir/images (see Images). The
	// shims are /proc/self/exe by default: call driver.MaybeRunShim first
	// thing in main.
	Driver driver.Driver
	// Images configures the default driver's image runtime. Nil means its
	// defaults. Without runc or overlayfs on the machine the runtime is
	// off, and instances of images fail with the reason.
	Images *ImagesConfig
	// InstanceUIDBase, when not 0, runs every service's instances as an
	// unprivileged user and group of their own, InstanceUIDBase + n (n
	// from 1, per service, kept in DataDir): they cannot read the agent's
	// files, other instances' or each other's. Their programs must be
	// readable and executable by those users. 0 runs instances as the
	// agent's user.
	InstanceUIDBase uint32
	// ShimPath is the shim binary of the default driver (default
	// /proc/self/exe). A small dedicated shim (driver/meridian-shim) keeps
	// each instance's overhead lower than re-executing a large binary.
	ShimPath string
	// Logger receives the agent's logs. Nil discards them.
	Logger *slog.Logger
	// Clock drives heartbeats, reports, backoffs, renewals and health
	// checks. Default supervise.RealClock().
	Clock supervise.Clock
	// Dialer opens connections to the region servers and for health
	// checks. Default a *net.Dialer with a 5s timeout.
	Dialer Dialer
	// RequestTimeout bounds each call to a region server (default
	// DefaultRequestTimeout); heartbeats are further bounded by their
	// interval.
	RequestTimeout time.Duration
	// WatchIdleTimeout is how long the assignment watch may stay silent
	// (the region sends keepalives every 10s) before it is reopened.
	// Default DefaultWatchIdleTimeout.
	WatchIdleTimeout time.Duration
	// StopTimeout is how long a stopping instance gets between SIGTERM and
	// SIGKILL. Default DefaultStopTimeout.
	StopTimeout time.Duration
	// RestartBackoffMin and RestartBackoffMax shape restart delays of
	// crashed or unhealthy instances (defaults of package supervise).
	RestartBackoffMin, RestartBackoffMax time.Duration
	// ReportDebounce batches state changes into one report (default
	// DefaultReportDebounce); FullReportInterval is how often every
	// instance is reported (default DefaultFullReport).
	ReportDebounce     time.Duration
	FullReportInterval time.Duration
	// RenewBefore is how long before its expiry the machine certificate is
	// renewed. Default a third of its lifetime.
	RenewBefore time.Duration
	// ResolvConf is the content of /etc/resolv.conf inside instances.
	// Default the host's /etc/resolv.conf.
	ResolvConf *string
	// InstancePath is the PATH of instances whose definition sets none,
	// where their commands are looked up. Default: the agent's own PATH
	// (so a command installed beside the agent is found), else a standard
	// system PATH.
	InstancePath string
	// OnInstance, when set, is called after every state change of an
	// instance (for metrics, events and tests); it must not block.
	OnInstance func(Instance)
	// Mesh, when set, runs the machine's part of the private mesh: a DNS
	// server its instances' resolv.conf names and a node proxy (see
	// MeshConfig). Nil: no mesh, instances get ResolvConf.
	Mesh *MeshConfig
}

// Agent is a running machine agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	clock supervise.Clock
	drv   driver.Driver
	uids  *serviceUIDs // nil: instances run as the agent's user
	id    *identity
	rc    *regionClients
	ports *portAllocator
	mesh  *mesh    // nil without Config.Mesh
	lock  *os.File // flock on DataDir/agent.lock
	// images is the image store of the default driver's image runtime
	// (nil without one): instances' images are pulled before they start.
	images *image.Store
	mirror *regionMirror // the region's image cache; nil when images come from elsewhere

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ready  chan struct{}
	errc   chan error
	once   sync.Once

	kick    chan struct{} // reconcile
	dirtyCh chan struct{} // report

	leaseTTL atomic.Int64 // nanoseconds

	mu        sync.Mutex
	desired   map[string]regionapi.Assignment
	synced    bool // the first snapshot arrived
	readyDone bool
	insts     map[string]*instance
	orphans   map[string]record // records of instances gone while the agent was down
	dirty     map[string]bool
	draining  bool
}

// Start validates cfg, joins the region (or loads the machine identity
// saved in DataDir), re-adopts the instances left running by a previous
// agent, and starts heartbeating, watching and reporting in the background.
// Refused joins and configuration errors are returned at once; an
// unreachable region is retried until ctx ends.
func Start(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "agent", "region", cfg.Region, "machine", cfg.Name),
		clock:   cfg.Clock,
		ready:   make(chan struct{}),
		errc:    make(chan error, 4),
		kick:    make(chan struct{}, 1),
		dirtyCh: make(chan struct{}, 1),
		desired: map[string]regionapi.Assignment{},
		insts:   map[string]*instance{},
		orphans: map[string]record{},
		dirty:   map[string]bool{},
		ports:   newPortAllocator(cfg.Address, cfg.PortMin, cfg.PortMax),
	}
	for _, dir := range []string{cfg.DataDir, a.recordDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("agent: DataDir: %w", err)
		}
	}
	lock, err := lockDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a.lock = lock
	started := false
	defer func() {
		if !started {
			lock.Close()
		}
	}()
	if cfg.InstanceUIDBase != 0 {
		if a.uids, err = loadServiceUIDs(cfg.DataDir, cfg.InstanceUIDBase); err != nil {
			return nil, err
		}
	}
	a.drv = cfg.Driver
	if a.drv == nil {
		p, err := driver.NewProcess(driver.ProcessConfig{DataDir: filepath.Join(cfg.DataDir, "instances"),
			ShimPath: cfg.ShimPath, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		rt := &driver.Runtimes{Commands: p}
		if rt.Images, rt.ImagesErr = a.imageRuntime(); rt.ImagesErr != nil {
			a.log.Warn("this machine runs no images", "err", rt.ImagesErr)
		}
		a.drv = rt
	}
	id, err := a.loadOrJoin(ctx)
	if err != nil {
		return nil, err
	}
	a.id = id
	a.leaseTTL.Store(int64(id.meta.leaseTTL()))
	a.rc = newRegionClients(cfg, id.certs, cfg.Clock)
	if a.mirror != nil {
		if err := a.mirror.setup(cfg, id.certs, a.rc); err != nil {
			return nil, err
		}
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	if err := a.startMesh(); err != nil {
		a.cancel()
		return nil, err
	}
	if err := a.adopt(ctx); err != nil {
		a.cancel()
		a.wg.Wait()
		if a.mesh != nil {
			a.mesh.close()
		}
		return nil, err
	}
	a.wg.Add(5)
	go func() { defer a.wg.Done(); a.heartbeatLoop(a.ctx) }()
	go func() { defer a.wg.Done(); a.watchLoop(a.ctx) }()
	go func() { defer a.wg.Done(); a.reconcileLoop(a.ctx) }()
	go func() { defer a.wg.Done(); a.reportLoop(a.ctx) }()
	go func() { defer a.wg.Done(); a.renewLoop(a.ctx) }()
	started = true
	a.log.Info("agent started", "datacenter", cfg.Datacenter, "address", cfg.Address,
		"millicpu", cfg.MilliCPU, "memory_mb", cfg.MemoryMB, "driver", a.drv.Name(), "region_urls", strings.Join(cfg.RegionURLs, ","))
	return a, nil
}

func (c *Config) setDefaults() error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if err := pki.ValidateName(c.Region); err != nil {
		bad("Region %q: %v", c.Region, err)
	}
	if err := pki.ValidateName(c.Name); err != nil {
		bad("Name %q: %v", c.Name, err)
	}
	if err := pki.ValidateName(c.Datacenter); err != nil {
		bad("Datacenter %q: %v", c.Datacenter, err)
	}
	if len(c.RegionURLs) == 0 {
		bad("RegionURLs: at least one region server URL is required")
	}
	for i, u := range c.RegionURLs {
		if !strings.HasPrefix(u, "https://") || len(u) <= len("https://") {
			bad("RegionURLs[%d] %q: want https://host:port", i, u)
		}
	}
	if c.Roots == nil {
		bad("Roots: the installation's root certificate is required")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "meridian.local"
	} else if err := pki.ValidateTrustDomain(c.TrustDomain); err != nil {
		bad("TrustDomain %q: %v", c.TrustDomain, err)
	}
	if c.DataDir == "" {
		bad("DataDir is required")
	}
	if c.Address == "" {
		c.Address = "127.0.0.1"
	}
	if net.ParseIP(c.Address) == nil {
		bad("Address %q is not an IP address", c.Address)
	}
	if c.MilliCPU < 0 || c.MemoryMB < 0 {
		bad("MilliCPU and MemoryMB must not be negative")
	}
	if c.MilliCPU == 0 {
		c.MilliCPU = runtime.NumCPU() * 1000
	}
	if c.MemoryMB == 0 {
		c.MemoryMB = totalMemoryMB()
	}
	if c.PortMin == 0 && c.PortMax == 0 {
		c.PortMin, c.PortMax = DefaultPortMin, DefaultPortMax
	}
	if c.PortMin < 1 || c.PortMax > 65535 || c.PortMin > c.PortMax {
		bad("PortMin..PortMax %d..%d is not a port range", c.PortMin, c.PortMax)
	}
	if c.InstanceUIDBase != 0 && (c.InstanceUIDBase < 1000 || c.InstanceUIDBase > 1<<31) {
		bad("InstanceUIDBase %d: want 0 (off) or an unused range from 1000 to 2^31", c.InstanceUIDBase)
	}
	if c.Mesh != nil {
		mc := *c.Mesh
		mc.setDefaults(bad)
		c.Mesh = &mc
	}
	if c.RequestTimeout < 0 || c.WatchIdleTimeout < 0 || c.StopTimeout < 0 || c.ReportDebounce < 0 || c.FullReportInterval < 0 || c.RenewBefore < 0 {
		bad("timeouts and intervals must not be negative")
	}
	if len(errs) > 0 {
		return fmt.Errorf("agent: config: %s", strings.Join(errs, "; "))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = supervise.RealClock()
	}
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.WatchIdleTimeout == 0 {
		c.WatchIdleTimeout = DefaultWatchIdleTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.ReportDebounce == 0 {
		c.ReportDebounce = DefaultReportDebounce
	}
	if c.FullReportInterval == 0 {
		c.FullReportInterval = DefaultFullReport
	}
	if c.InstancePath == "" {
		c.InstancePath = os.Getenv("PATH")
	}
	if c.InstancePath == "" {
		c.InstancePath = defaultPath
	}
	if c.ResolvConf == nil {
		b, _ := os.ReadFile("/etc/resolv.conf")
		s := string(b)
		c.ResolvConf = &s
	}
	return nil
}

// lockDir takes an exclusive lock on DataDir: two agents managing the same
// instances would run duplicates.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "agent.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent: DataDir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("agent: DataDir %s is in use by another agent: %w", dir, err)
	}
	return f, nil
}

// totalMemoryMB returns the machine's total memory in MiB (1024 if unknown).
func totalMemoryMB() int {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 1024
	}
	return int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
}

// Ready is closed once the agent has applied the region's first snapshot of
// its assignments.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Err reports fatal errors of the running agent.
func (a *Agent) Err() <-chan error { return a.errc }

// Machine is the machine's id.
func (a *Agent) Machine() string { return a.cfg.Name }

// Driver is the driver the agent runs instances with.
func (a *Agent) Driver() driver.Driver { return a.drv }

// Certificate returns the machine's current certificate.
func (a *Agent) Certificate() *pki.Leaf { return a.id.certs.Leaf() }

// Draining reports whether the region marked the machine draining.
func (a *Agent) Draining() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.draining
}

// Close stops the agent without stopping its instances: they keep running
// and the next agent started on the same DataDir re-adopts them. The
// region sees the machine as gone once its lease expires.
func (a *Agent) Close() error {
	a.once.Do(func() {
		a.cancel()
		a.wg.Wait()
		if a.mesh != nil {
			a.mesh.close()
		}
		a.rc.close()
		if a.mirror != nil {
			a.mirror.close()
		}
		a.lock.Close()
		a.log.Info("agent closed; instances left running")
	})
	return nil
}

func (a *Agent) fatal(err error) {
	select {
	case a.errc <- err:
	default:
	}
}

// sleep waits d on the agent's clock, or until ctx ends (false).
func (a *Agent) sleep(ctx context.Context, d time.Duration) bool {
	t := a.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}
