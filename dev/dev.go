// Package dev runs a whole Meridian installation on one machine for a
// newcomer's first five minutes and for end-to-end tests: the global
// control plane, every region of a topology and their agents, each as a
// separate process of the meridian binary so that any of them can be
// killed like a real one. It generates the PKI, the admin, organization
// and edge tokens and the join tokens in a state directory, registers and
// opens the regions, and writes DIR/dev.json once everything is up. The
// edges get a read-only edge token, never the admin token.
package dev

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"

	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/image/runnable"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
)

// Config configures a dev installation.
type Config struct {
	// StateDir holds PKI, tokens, component data and logs (default .meridian/dev).
	StateDir string
	// Topology is the installation to run.
	Topology Topology
	// Binary is the meridian executable to run components with (default:
	// this process's executable).
	Binary string
	// PathDirs are prepended to the agents' PATH, so instances find
	// commands such as the demo app (default: the binary's directory).
	PathDirs []string
	// APIListen is the global API's address (default 127.0.0.1:7700, or a
	// free port when that is taken).
	APIListen string
	// Logger receives dev's own progress logs.
	Logger *slog.Logger
	// Registry is the local registry to run: RegistryAuto (the default:
	// Debian's docker-registry when installed, else the built-in one),
	// RegistryDocker or RegistryBuiltin.
	Registry string
	// DemoProgram is the program the demo image is built from (default:
	// hello in PathDirs). It must be static (CGO_ENABLED=0); when it is
	// missing or is not, dev runs without the demo image and says why.
	DemoProgram string
	// FreeAddr picks a loopback address that is free now for a purpose
	// ("global", "region <id>", "edge <location>", ...); default: the
	// kernel's choice. Another program may take it before the component
	// binds it: dev then starts that component again on another (tests
	// provoke this through FreeAddr).
	FreeAddr func(purpose string) (string, error)
}

// Component is one process of the installation, as dev.json lists it.
type Component struct {
	Role       string   `json:"role"`
	Region     string   `json:"region,omitempty"`
	Datacenter string   `json:"datacenter,omitempty"`
	Machine    string   `json:"machine,omitempty"`
	Location   string   `json:"location,omitempty"`
	Address    string   `json:"address"`
	Admin      string   `json:"admin,omitempty"`       // an edge's admin URL: /metrics, /readyz, /v1/state
	TLSAddress string   `json:"tls_address,omitempty"` // an edge's HTTPS URL
	PID        int      `json:"pid"`
	Command    string   `json:"command,omitempty"` // the executable, when not the meridian binary (Debian's docker-registry)
	Args       []string `json:"args"`
	Log        string   `json:"log"`
	DataDir    string   `json:"data_dir,omitempty"`
}

// Info is the content of dev.json.
type Info struct {
	API          string `json:"api"`
	Token        string `json:"token"`
	AdminToken   string `json:"admin_token"`
	Domain       string `json:"domain"`
	Organization string `json:"organization"`
	StateDir     string `json:"state_dir"`
	PKIDir       string `json:"pki_dir"`
	// Registry is the local registry's host:port, as in image references
	// (what ${MERIDIAN_DEV_REGISTRY} stands for in definitions).
	Registry string `json:"registry,omitempty"`
	// DemoImage is the demo app's image in it, by tag
	// (<registry>/demo/hello:1); empty when dev could not build it.
	DemoImage  string      `json:"demo_image,omitempty"`
	Components []Component `json:"components"`
}

// InfoFile is the name of the file dev writes in its state directory.
const InfoFile = "dev.json"

// ReadInfo reads DIR/dev.json.
func ReadInfo(stateDir string) (Info, error) {
	var info Info
	b, err := os.ReadFile(filepath.Join(stateDir, InfoFile))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("%s: %w", filepath.Join(stateDir, InfoFile), err)
	}
	return info, nil
}

// Env is a running dev installation.
type Env struct {
	cfg   Config
	log   *slog.Logger
	info  Info
	mu    sync.Mutex
	procs []*proc
	done  chan struct{}
	once  sync.Once
}

// proc is a child process.
type proc struct {
	comp    Component
	cmd     *exec.Cmd
	done    chan struct{}
	logFrom int64 // the log's size when the process started
}

// Start brings the installation up and returns once dev.json is written.
func Start(ctx context.Context, cfg Config) (*Env, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(".meridian", "dev")
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = abs
	if cfg.Binary == "" {
		if cfg.Binary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("dev: finding the meridian binary: %w", err)
		}
	}
	if cfg.PathDirs == nil {
		cfg.PathDirs = []string{filepath.Dir(cfg.Binary)}
	}
	if cfg.APIListen == "" {
		cfg.APIListen = "127.0.0.1:7700"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Topology.Regions) == 0 {
		cfg.Topology = DefaultTopology()
	}
	if err := checkNotRunning(cfg.StateDir); err != nil {
		return nil, err
	}
	e := &Env{cfg: cfg, log: cfg.Logger.With("component", "dev"), done: make(chan struct{})}
	if err := e.start(ctx); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// checkNotRunning refuses a state dir whose dev.json lists live processes.
func checkNotRunning(dir string) error {
	info, err := ReadInfo(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return nil // a damaged file from a crash: start over
	}
	for _, c := range info.Components {
		if c.PID > 0 && syscall.Kill(c.PID, 0) == nil && isMeridian(c.PID) {
			return fmt.Errorf("dev: %s is in use by a running installation (%s pid %d); stop it first or pass another --state-dir", dir, c.Role, c.PID)
		}
	}
	return os.Remove(filepath.Join(dir, InfoFile))
}

func isMeridian(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains(string(b), "meridian")
}

// Info returns what dev.json holds.
func (e *Env) Info() Info { return e.info }

func (e *Env) path(parts ...string) string {
	return filepath.Join(append([]string{e.cfg.StateDir}, parts...)...)
}

func randomToken(prefix string) string {
	b := make([]byte, 24)
	rand.Read(b)
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// readOrCreate returns the content of a state file, creating it first.
func readOrCreate(path string, make func() string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	v := make()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	return v, os.WriteFile(path, []byte(v+"\n"), 0o600)
}

// freeAddr returns a loopback address for a purpose from Config.FreeAddr,
// or one whose port was free a moment ago.
func (e *Env) freeAddr(purpose string) (string, error) {
	if e.cfg.FreeAddr != nil {
		return e.cfg.FreeAddr(purpose)
	}
	return kernelFreeAddr()
}

// kernelFreeAddr returns a loopback address whose port was free a moment
// ago.
func kernelFreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (e *Env) start(ctx context.Context) error {
	t := e.cfg.Topology
	start := time.Now()
	for _, d := range []string{"logs", "pki"} {
		if err := os.MkdirAll(e.path(d), 0o700); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
	}
	pkiDir := e.path("pki")
	root, err := ensurePKI(pkiDir, t)
	if err != nil {
		return fmt.Errorf("dev: pki: %w", err)
	}
	// The admin token lives in global's state dir, where `meridian global`
	// reads it (never on a command line, where ps would show it).
	admin, err := readOrCreate(e.path("global", "admin.token"), func() string { return randomToken("mra_") })
	if err != nil {
		return fmt.Errorf("dev: admin token: %w", err)
	}
	apiAddr := e.cfg.APIListen
	if ln, err := net.Listen("tcp", apiAddr); err == nil && !strings.HasSuffix(apiAddr, ":0") {
		ln.Close()
	} else {
		if ln != nil {
			ln.Close()
		}
		if apiAddr, err = e.freeAddr("global"); err != nil {
			return err
		}
	}
	e.info = Info{API: "http://" + apiAddr, AdminToken: admin, Domain: t.Domain, Organization: t.Organization,
		StateDir: e.cfg.StateDir, PKIDir: pkiDir}

	// The local registry, with the demo image.
	if err := e.startRegistry(ctx); err != nil {
		return err
	}
	if err := e.pushDemoImage(ctx); err != nil {
		return err
	}

	// The global control plane.
	spawnGlobal := func() (*proc, error) {
		return e.spawnProc(Component{Role: "global", Address: e.info.API, DataDir: e.path("global"), Args: []string{"global",
			"--state-dir", e.path("global"), "--listen", apiAddr, "--domain", t.Domain,
			"--pki", pkiDir, "--rollout-poll", "250ms"}})
	}
	globalProc, err := spawnGlobal()
	if err != nil {
		return err
	}
	// The regions.
	regionURLs := map[string]string{}
	regionProcs := map[string]*proc{}
	spawnRegion := func(r RegionTopo) (*proc, error) {
		addrs := make([]string, 3)
		for i := range addrs {
			if addrs[i], err = e.freeAddr("region " + r.ID); err != nil {
				return nil, err
			}
		}
		regionURLs[r.ID] = "https://" + addrs[0]
		p, err := e.spawnProc(Component{Role: "region", Region: r.ID, Address: regionURLs[r.ID], DataDir: e.path("regions", r.ID),
			Args: []string{"region", "--id", r.ID, "--ca-dir", filepath.Join(pkiDir, "regions", r.ID),
				"--data-dir", e.path("regions", r.ID), "--listen", addrs[0],
				"--etcd-client-url", "https://" + addrs[1], "--etcd-peer-url", "https://" + addrs[2],
				"--lease-ttl", t.LeaseTTL}})
		regionProcs[r.ID] = p
		return p, err
	}
	for _, r := range t.Regions {
		if _, err := spawnRegion(r); err != nil {
			return err
		}
	}
	regionHTTP, err := globalClient(pkiDir)
	if err != nil {
		return err
	}
	anon := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(nil, root.Pool(), pki.AllowKinds(pki.KindServer))}}
	// Nothing started so far calls global, so it may start again on
	// another port.
	if err := e.waitUp(ctx, probeClient, "global", globalProc, "did not come up",
		func(*proc) string { return e.info.API + "/healthz" },
		func() (*proc, error) {
			if apiAddr, err = e.freeAddr("global"); err != nil {
				return nil, err
			}
			e.info.API = "http://" + apiAddr
			return spawnGlobal()
		}); err != nil {
		return err
	}
	for _, r := range t.Regions {
		if err := e.waitUp(ctx, anon, "region "+r.ID, regionProcs[r.ID], "did not come up",
			func(*proc) string { return regionURLs[r.ID] + "/healthz" },
			func() (*proc, error) { return spawnRegion(r) }); err != nil {
			return err
		}
	}
	// The agents, with join tokens from their regions. Each gets its own
	// loopback /16 for its mesh DNS servers and service addresses, and a
	// free port for its node proxy.
	portBase := 20000
	meshOctet := meshNetBase(t)
	for _, r := range t.Regions {
		rc := regionapi.NewClient(regionURLs[r.ID], regionHTTP)
		for _, d := range r.Datacenters {
			for i := 0; i < d.Machines; i++ {
				name := fmt.Sprintf("%s-%c", d.ID, 'a'+i)
				dataDir := e.path("agents", name)
				args := []string{"agent", "--region", r.ID, "--region-url", regionURLs[r.ID],
					"--ca-file", filepath.Join(pkiDir, "root", pki.RootFile), "--trust-domain", t.TrustDomain,
					"--datacenter", d.ID, "--name", name, "--data-dir", dataDir,
					"--millicpu", strconv.Itoa(t.Machine.MilliCPU), "--memory-mb", strconv.Itoa(t.Machine.MemoryMB),
					"--port-min", strconv.Itoa(portBase), "--port-max", strconv.Itoa(portBase + 199)}
				portBase += 200
				meshAddr, err := e.freeAddr("agent " + name)
				if err != nil {
					return err
				}
				_, meshPort, _ := net.SplitHostPort(meshAddr)
				args = append(args, "--mesh-net", fmt.Sprintf("127.%d.0.0/16", meshOctet), "--mesh-port", meshPort)
				meshOctet++
				if _, err := os.Stat(filepath.Join(dataDir, "identity")); err != nil {
					tok, err := rc.CreateJoinToken(ctx, regionapi.JoinTokenRequest{TTL: "10m", Uses: 1})
					if err != nil {
						return fmt.Errorf("dev: join token for %s: %w", name, err)
					}
					tokFile := filepath.Join(dataDir, "join-token")
					os.MkdirAll(dataDir, 0o700)
					if err := os.WriteFile(tokFile, []byte(tok.Value+"\n"), 0o600); err != nil {
						return err
					}
					args = append(args, "--join-token-file", tokFile)
				}
				if err := e.spawn(Component{Role: "agent", Region: r.ID, Datacenter: d.ID, Machine: name,
					Address: "127.0.0.1", DataDir: dataDir, Args: args}); err != nil {
					return err
				}
			}
		}
	}
	// Register and open the regions; create the organization and its token.
	adminAPI := api.NewClient(e.info.API, admin)
	for _, r := range t.Regions {
		_, err := adminAPI.CreateRegion(ctx, api.CreateRegionRequest{ID: r.ID, Name: r.Name, Latitude: r.Latitude,
			Longitude: r.Longitude, URL: regionURLs[r.ID]}, "")
		if isStatus(err, http.StatusConflict) {
			u := regionURLs[r.ID]
			_, err = adminAPI.UpdateRegion(ctx, r.ID, api.UpdateRegionRequest{URL: &u})
		}
		if err != nil {
			return fmt.Errorf("dev: registering region %s: %w", r.ID, err)
		}
		open := api.RegionOpen
		if _, err := adminAPI.UpdateRegion(ctx, r.ID, api.UpdateRegionRequest{Status: &open}); err != nil {
			return fmt.Errorf("dev: opening region %s: %w", r.ID, err)
		}
	}
	if e.info.Token, err = e.orgToken(ctx, adminAPI); err != nil {
		return err
	}
	// Wait until every machine heartbeats in its region.
	for _, r := range t.Regions {
		want := 0
		for _, d := range r.Datacenters {
			want += d.Machines
		}
		rc := regionapi.NewClient(regionURLs[r.ID], regionHTTP)
		if err := waitFor(ctx, 30*time.Second, func() error {
			ms, err := rc.Machines(ctx)
			if err != nil {
				return err
			}
			ready := 0
			seen := map[string]bool{}
			for _, m := range ms {
				if m.Ready {
					ready++
					seen[m.ID] = true
				}
			}
			if ready < want {
				return fmt.Errorf("%d of %d machines ready%s", ready, want, e.notReady(r.ID, seen))
			}
			return nil
		}); err != nil {
			return fmt.Errorf("dev: region %s: %w (see %s)", r.ID, err, e.path("logs"))
		}
	}
	edgeToken, err := e.edgeTokenFile(ctx, adminAPI)
	if err != nil {
		return err
	}
	if err := e.startEdges(ctx, root, edgeToken); err != nil {
		return err
	}
	e.mu.Lock()
	for _, p := range e.procs {
		e.info.Components = append(e.info.Components, p.comp)
	}
	e.mu.Unlock()
	b, _ := json.MarshalIndent(e.info, "", "  ")
	if err := os.WriteFile(e.path(InfoFile), append(b, '\n'), 0o600); err != nil {
		return err
	}
	e.log.Info("dev installation ready", "seconds", time.Since(start).Seconds())
	return nil
}

// meshNetBase picks the second octet of the first agent's mesh network
// (127.<n>.0.0/16, the next agents taking the next ones): a run of free
// ones, so that two installations on one host do not collide.
func meshNetBase(t Topology) int {
	agents := 0
	for _, r := range t.Regions {
		for _, d := range r.Datacenters {
			agents += d.Machines
		}
	}
	free := func(o int) bool {
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.%d.1.1:53", o))
		if err != nil {
			return false
		}
		pc.Close()
		return true
	}
	lo, hi := 64, 254-agents
	if hi < lo {
		return lo
	}
	start := lo + int(time.Now().UnixNano()%int64(hi-lo+1))
	for i := 0; i <= hi-lo; i++ {
		base := lo + (start-lo+i)%(hi-lo+1)
		ok := true
		for o := base; o < base+agents && ok; o++ {
			ok = free(o)
		}
		if ok {
			return base
		}
	}
	return start
}

// startEdges starts an edge per topology edge location, once the regions
// are open (edges list them from global with the read-only edge token in
// tokenFile, then follow their feeds), with a certificate from the root
// under pki/edges/<location> (which also serves their HTTPS), and waits
// until each has the regions' routing state.
// Public ports are 8000, 8001, ... for HTTP and 8443, 8444, ... for HTTPS
// when free (free ones otherwise, and always when the API took a free
// port).
func (e *Env) startEdges(ctx context.Context, root *pki.CA, tokenFile string) error {
	t := e.cfg.Topology
	type edgeStart struct {
		location string
		p        *proc
		spawn    func(fresh bool) (*proc, error)
	}
	var edges []edgeStart
	for i, ed := range t.Edges {
		dir := filepath.Join(e.info.PKIDir, "edges", ed.Location)
		if _, err := edge.LoadIdentity(dir); err != nil {
			if _, err := edge.IssueIdentity(root, dir, ed.Location, t.Domain, time.Now(), 365*24*time.Hour); err != nil {
				return fmt.Errorf("dev: edge %s certificate: %w", ed.Location, err)
			}
		}
		spawnEdge := func(fresh bool) (*proc, error) {
			pick := func(port int) (string, error) {
				if fresh {
					return e.freeAddr("edge " + ed.Location)
				}
				return e.edgePort(port, "edge "+ed.Location)
			}
			listen, err := pick(8000 + i)
			if err != nil {
				return nil, err
			}
			tlsListen, err := pick(8443 + i)
			if err != nil {
				return nil, err
			}
			admin, err := e.freeAddr("edge " + ed.Location + " admin")
			if err != nil {
				return nil, err
			}
			return e.spawnProc(Component{Role: "edge", Location: ed.Location, Address: "http://" + listen, TLSAddress: "https://" + tlsListen,
				Admin: "http://" + admin, DataDir: e.path("edges", ed.Location), Args: []string{"edge", "--location", ed.Location,
					"--lat", strconv.FormatFloat(ed.Latitude, 'f', -1, 64), "--lon", strconv.FormatFloat(ed.Longitude, 'f', -1, 64),
					"--listen", listen, "--tls-listen", tlsListen, "--tls-from-pki", "--admin-listen", admin, "--pki-dir", dir, "--domain", t.Domain,
					"--global", e.info.API, "--global-token-file", tokenFile,
					"--state-dir", e.path("edges", ed.Location)}})
		}
		p, err := spawnEdge(false)
		if err != nil {
			return err
		}
		edges = append(edges, edgeStart{ed.Location, p, spawnEdge})
	}
	// Each edge is ready once it has the regions' routes.
	for _, es := range edges {
		if err := e.waitUp(ctx, probeClient, "edge "+es.location, es.p, "did not get the regions' routes",
			func(p *proc) string { return p.comp.Admin + "/readyz" },
			func() (*proc, error) { return es.spawn(true) }); err != nil {
			return err
		}
	}
	return nil
}

// waitUp waits until a component's process answers 200 at url(p). A
// process that exited because a port picked for it as free was taken
// before it bound it is started again by respawn, on other ports, up to 3
// times.
func (e *Env) waitUp(ctx context.Context, c *http.Client, name string, p *proc, failure string,
	url func(p *proc) string, respawn func() (*proc, error)) error {
	for attempt := 0; ; attempt++ {
		err := waitHTTP(ctx, c, url(p), 30*time.Second, p.done)
		if err == nil {
			return nil
		}
		if attempt < 3 && e.portClash(p) {
			e.log.Warn("a port picked for a component was taken meanwhile; starting it again on another", "component", name)
			if p, err = respawn(); err != nil {
				return err
			}
			continue
		}
		return fmt.Errorf("dev: %s %s (see %s): %w", name, failure, p.comp.Log, err)
	}
}

// edgePort returns 127.0.0.1:port when that port is free (and the API
// did not take a free port, as tests do), else a free one.
func (e *Env) edgePort(port int, purpose string) (string, error) {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if strings.HasSuffix(e.cfg.APIListen, ":0") {
		return e.freeAddr(purpose)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return e.freeAddr(purpose)
	}
	ln.Close()
	return addr, nil
}

// notReady names a region's agents that are not heartbeating, with the
// end of their logs, for a clear error.
func (e *Env) notReady(region string, ready map[string]bool) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for _, p := range e.procs {
		if p.comp.Role != "agent" || p.comp.Region != region || ready[p.comp.Machine] {
			continue
		}
		log, _ := os.ReadFile(p.comp.Log)
		lines := strings.Split(strings.TrimSpace(string(log)), "\n")
		fmt.Fprintf(&b, "\n  %s (pid %d) is not ready; the end of %s:\n    %s", p.comp.Machine, p.comp.PID, p.comp.Log,
			strings.Join(lines[max(0, len(lines)-5):], "\n    "))
	}
	return b.String()
}

// orgToken creates the organization once and keeps its token in the state
// dir.
func (e *Env) orgToken(ctx context.Context, admin *api.Client) (string, error) {
	path := e.path("org.token")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	org := e.cfg.Topology.Organization
	if _, err := admin.CreateOrg(ctx, org, "dev-org-"+org); err != nil && !isStatus(err, http.StatusConflict) {
		return "", fmt.Errorf("dev: organization %s: %w", org, err)
	}
	tok, err := admin.CreateOrgToken(ctx, org, "dev", "")
	if err != nil {
		return "", fmt.Errorf("dev: token for %s: %w", org, err)
	}
	return tok.Value, os.WriteFile(path, []byte(tok.Value+"\n"), 0o600)
}

// devEdgeTokenName names the edge token dev makes for its edges.
const devEdgeTokenName = "dev-edges"

// edgeTokenFile makes the edges' read-only edge token once and keeps it in
// DIR/edge.token (mode 0600), whose path it returns: the edges never hold
// the admin token. A restart with the same state dir reuses the token
// while global accepts it, and makes another when global does not (it was
// revoked, or global's store started afresh) or when the file is missing
// although global has a token of that name (a run that stopped before
// writing the file): its value is lost, so that one is revoked first.
func (e *Env) edgeTokenFile(ctx context.Context, admin *api.Client) (string, error) {
	path := e.path("edge.token")
	if b, err := os.ReadFile(path); err == nil {
		_, err := api.NewClient(e.info.API, strings.TrimSpace(string(b))).ListRegions(ctx, api.ListOptions{Limit: 1})
		if err == nil {
			return path, nil
		}
		if !isStatus(err, http.StatusUnauthorized) {
			return "", fmt.Errorf("dev: checking the edge token in %s: %w", path, err)
		}
		e.log.Warn("global no longer accepts the edge token of the state dir; making another", "file", path)
	}
	tok, err := admin.CreateEdgeToken(ctx, devEdgeTokenName, "")
	if isStatus(err, http.StatusConflict) {
		if err = revokeEdgeToken(ctx, admin, devEdgeTokenName); err == nil {
			tok, err = admin.CreateEdgeToken(ctx, devEdgeTokenName, "")
		}
	}
	if err != nil {
		return "", fmt.Errorf("dev: edge token: %w", err)
	}
	if err := pki.WriteFileAtomic(path, []byte(tok.Value+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("dev: edge token: %w", err)
	}
	return path, nil
}

// revokeEdgeToken revokes the edge token named name, if there is one.
func revokeEdgeToken(ctx context.Context, admin *api.Client, name string) error {
	all, err := api.All(func(o api.ListOptions) (api.List[api.EdgeToken], error) { return admin.ListEdgeTokens(ctx, o) })
	if err != nil {
		return err
	}
	for _, t := range all {
		if t.Name != name {
			continue
		}
		if err := admin.DeleteEdgeToken(ctx, t.ID); err != nil && !isStatus(err, http.StatusNotFound) {
			return err
		}
	}
	return nil
}

func isStatus(err error, status int) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == status
}

// ensurePKI creates the root, the regions' intermediates and the global
// certificate once.
func ensurePKI(dir string, t Topology) (*pki.CA, error) {
	root, err := pki.LoadCA(filepath.Join(dir, "root"))
	if err != nil {
		if root, err = pki.NewRoot(t.TrustDomain, time.Now(), 10*365*24*time.Hour); err != nil {
			return nil, err
		}
		if err := pki.SaveCA(filepath.Join(dir, "root"), root); err != nil {
			return nil, err
		}
	}
	for _, r := range t.Regions {
		rdir := filepath.Join(dir, "regions", r.ID)
		if _, err := pki.LoadCA(rdir); err == nil {
			continue
		}
		ca, err := root.NewIntermediate(r.ID, time.Now(), 5*365*24*time.Hour)
		if err != nil {
			return nil, err
		}
		if err := pki.SaveCA(rdir, ca); err != nil {
			return nil, err
		}
	}
	gdir := filepath.Join(dir, "global")
	if _, err := pki.LoadLeaf(gdir, "global"); err != nil {
		leaf, err := root.Issue(pki.LeafRequest{ID: pki.GlobalID(t.TrustDomain), Usage: pki.UsageClient, TTL: 365 * 24 * time.Hour, Now: time.Now()})
		if err != nil {
			return nil, err
		}
		if err := pki.SaveLeaf(gdir, "global", leaf); err != nil {
			return nil, err
		}
		if err := pki.SaveRoots(filepath.Join(gdir, pki.RootFile), root.Root); err != nil {
			return nil, err
		}
	}
	return root, nil
}

// globalClient is an HTTP client with the global certificate.
func globalClient(pkiDir string) (*http.Client, error) {
	leaf, err := pki.LoadLeaf(filepath.Join(pkiDir, "global"), "global")
	if err != nil {
		return nil, err
	}
	roots, err := pki.LoadRoots(filepath.Join(pkiDir, "global", pki.RootFile))
	if err != nil {
		return nil, err
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(rl, roots, pki.AllowKinds(pki.KindServer))}}, nil
}

func waitFor(ctx context.Context, within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil || errors.Is(err, errExited) {
			return err // up, or gone: no use waiting
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return err
}

// probeClient asks components whether they are up; a request never hangs
// (the address may belong to another program that does not answer).
var probeClient = &http.Client{Timeout: 2 * time.Second}

// waitHTTP waits until url answers 200, or a process it depends on exits
// (exited, when given).
func waitHTTP(ctx context.Context, c *http.Client, url string, within time.Duration, exited ...<-chan struct{}) error {
	return waitFor(ctx, within, func() error {
		for _, ch := range exited {
			select {
			case <-ch:
				return errExited
			default:
			}
		}
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

// errExited means a component's process exited while dev waited for it.
var errExited = errors.New("the process exited")

// portClash reports whether a component exited because an address it was
// given was taken.
func (e *Env) portClash(p *proc) bool {
	select {
	case <-p.done:
	case <-time.After(time.Second):
		return false
	}
	log, _ := os.ReadFile(p.comp.Log)
	if int64(len(log)) < p.logFrom || !strings.Contains(string(log[p.logFrom:]), "address already in use") {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, q := range e.procs {
		if q == p {
			e.procs = append(e.procs[:i], e.procs[i+1:]...)
			break
		}
	}
	return true
}

// spawn starts a component as a child process logging to the state dir.
func (e *Env) spawn(c Component) error {
	_, err := e.spawnProc(c)
	return err
}

// spawnProc is spawn returning the process.
func (e *Env) spawnProc(c Component) (*proc, error) {
	name := c.Role
	switch {
	case c.Location != "":
		name += "-" + c.Location
	case c.Machine != "":
		name += "-" + c.Machine
	case c.Region != "":
		name += "-" + c.Region
	}
	c.Log = e.path("logs", name+".log")
	logf, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	var logFrom int64
	if fi, err := logf.Stat(); err == nil {
		logFrom = fi.Size()
	}
	bin := e.cfg.Binary
	if c.Command != "" {
		bin = c.Command
	}
	cmd := exec.Command(bin, c.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+strings.Join(append(e.cfg.PathDirs, os.Getenv("PATH")), ":"))
	// Children die with dev, and are not in the terminal's process group
	// (dev stops them itself, in order, on Ctrl-C).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("dev: starting %s: %w", name, err)
	}
	c.PID = cmd.Process.Pid
	p := &proc{comp: c, cmd: cmd, done: make(chan struct{}), logFrom: logFrom}
	go func() {
		err := cmd.Wait()
		logf.Close()
		close(p.done)
		select {
		case <-e.done:
		default:
			e.log.Warn("component exited", "component", name, "pid", c.PID, "err", err)
		}
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	e.log.Debug("started", "component", name, "pid", c.PID)
	return p, nil
}

// Close stops the edges, then the agents, then the regions, then global,
// then the registry (SIGTERM, then SIGKILL after 10s), and stops the
// instances the agents leave running.
func (e *Env) Close() error {
	e.once.Do(func() {
		close(e.done)
		e.mu.Lock()
		procs := append([]*proc(nil), e.procs...)
		e.mu.Unlock()
		for _, role := range []string{"edge", "agent", "region", "global", "registry"} {
			var wg sync.WaitGroup
			for _, p := range procs {
				if p.comp.Role != role {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					p.cmd.Process.Signal(syscall.SIGTERM)
					select {
					case <-p.done:
					case <-time.After(10 * time.Second):
						p.cmd.Process.Kill()
						<-p.done
					}
				}()
			}
			wg.Wait()
		}
		for _, p := range procs {
			if p.comp.Role == "agent" {
				stopInstances(p.comp.DataDir)
			}
		}
		os.Remove(e.path(InfoFile))
	})
	return nil
}

// stopInstances destroys what a stopped agent left running: the
// processes in its data dir's instances/ and the containers in its oci/.
func stopInstances(agentDir string) {
	var drivers []driver.Driver
	if dir := filepath.Join(agentDir, "instances"); isDir(dir) {
		if d, err := driver.NewProcess(driver.ProcessConfig{DataDir: dir}); err == nil {
			drivers = append(drivers, d)
		}
	}
	if dir := filepath.Join(agentDir, "oci"); isDir(dir) {
		if d, err := driver.NewOCI(driver.OCIConfig{DataDir: dir, Images: noImages{}}); err == nil {
			drivers = append(drivers, d)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, d := range drivers {
		ids, _ := d.List(ctx)
		for _, id := range ids {
			d.Destroy(ctx, id)
		}
	}
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// noImages is the image source of a driver that only stops containers.
type noImages struct{}

func (noImages) Pull(context.Context, string) (*runnable.Image, error) {
	return nil, errors.New("dev: stopping containers pulls no image")
}

// Wait blocks until ctx ends.
func (e *Env) Wait(ctx context.Context) { <-ctx.Done() }
