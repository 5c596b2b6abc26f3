package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/image/runnable"
	"golang.org/x/sys/unix"
)

// OCIConfig configures an OCI driver.
type OCIConfig struct {
	// DataDir holds one directory per instance. Required; created if
	// missing. runc's state is in DataDir/.runc.
	DataDir string
	// Images pulls and unpacks the instances' images (an *image.Store).
	// Required.
	Images ImageSource
	// Runc is the runc binary. Default "runc" in PATH, else
	// /usr/sbin/runc (Debian's runc package).
	Runc string
	// ShimPath is the binary started as each instance's shim; it must call
	// MaybeRunShim first thing. Default "/proc/self/exe".
	ShimPath string
	// ShimEnv is added to the shim's environment.
	ShimEnv []string
	// CgroupRoot is where the cgroup v1 hierarchies are mounted. Default
	// /sys/fs/cgroup.
	CgroupRoot string
	// CgroupParent is the cgroup (in every hierarchy) holding the
	// instances' cgroups. Default "meridian-oci".
	CgroupParent string
	// PidsLimit bounds the processes of each instance. Default 4096.
	PidsLimit int64
	// StartTimeout bounds the shim's setup and runc's start of the
	// container (not the image pull, which Images bounds). Default 30s.
	StartTimeout time.Duration
	// Logger receives the driver's logs; nil discards them.
	Logger *slog.Logger
}

// ImageSource makes images ready to run on the machine: *image.Store is
// one. Its errors name the image.
type ImageSource interface {
	Pull(ctx context.Context, ref string) (*runnable.Image, error)
}

// DefaultOCICgroupParent is the cgroup holding the OCI driver's instances.
const DefaultOCICgroupParent = "meridian-oci"

// OCI is the container runtime: each instance runs an image with runc, from
// an OCI runtime config built with the runtime-spec types, in its own PID,
// mount, UTS and IPC namespaces (the host's network namespace, as the
// Process driver's instances), with Docker's default capabilities less
// NET_RAW, no new privileges, a pids limit and its memory and CPU limits in
// cgroup v1. Its root filesystem is an overlay: the image's shared,
// read-only root below, the instance's own writable layer above.
//
// A shim per instance (see runOCIShim) runs "runc run --detach", becomes
// the container init's parent as a subreaper, writes its output to the
// instance log and records its exit status, so an instance survives its
// agent as Process instances do; Recover adopts it again.
//
// Instance directory DataDir/<id>: spec.json, state.json, image.json (the
// image pinned by digest, so restarts run the same bytes), shim.json,
// bundle/config.json, rootfs/ (the overlay's mount point), overlay/upper
// and overlay/work (kept across restarts of the same instance, as
// Docker keeps a restarted container's files), resolv.conf, hosts,
// hostname, output.log(.1), shim.log, runc.log, init.pid, exit.json.
type OCI struct {
	cfg            OCIConfig
	log            *slog.Logger
	runcRoot       string
	swapAccounting bool

	mu   sync.Mutex
	busy map[string]bool
}

var _ Driver = (*OCI)(nil)

// ociState is what Recover needs, in state.json.
type ociState struct {
	ID        string    `json:"id"`
	ShimPid   int       `json:"shim_pid"`
	ShimStart uint64    `json:"shim_start"`
	InitPid   int       `json:"init_pid,omitempty"`
	InitStart uint64    `json:"init_start,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Image     string    `json:"image"` // pinned by digest
	Spec      Spec      `json:"spec"`
}

// pinnedImage is image.json.
type pinnedImage struct {
	Ref     string `json:"ref"`
	Pinned  string `json:"pinned"`
	ChainID string `json:"chain_id"`
}

// NewOCI returns an OCI driver. It fails when runc or overlayfs is missing.
func NewOCI(cfg OCIConfig) (*OCI, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("oci driver: DataDir is required")
	}
	if cfg.Images == nil {
		return nil, errors.New("oci driver: Images is required")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("oci driver: DataDir: %w", err)
	}
	if strings.ContainsAny(dir, ",:") {
		return nil, fmt.Errorf("oci driver: DataDir %q must not hold ',' or ':' (overlayfs options)", dir)
	}
	cfg.DataDir = dir
	if cfg.Runc == "" {
		if cfg.Runc, err = exec.LookPath("runc"); err != nil {
			cfg.Runc = "/usr/sbin/runc"
		}
	}
	if _, err := os.Stat(cfg.Runc); err != nil {
		return nil, fmt.Errorf("oci driver: runc %s: %w (install Debian's runc package: apt-get install -y runc)", cfg.Runc, err)
	}
	if b, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(b), "\toverlay\n") {
		return nil, errors.New("oci driver: the kernel has no overlay filesystem (/proc/filesystems does not list overlay)")
	}
	if cfg.ShimPath == "" {
		cfg.ShimPath = "/proc/self/exe"
	}
	if _, err := os.Stat(cfg.ShimPath); err != nil {
		return nil, fmt.Errorf("oci driver: ShimPath: %w", err)
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultOCICgroupParent
	}
	if cfg.PidsLimit <= 0 {
		cfg.PidsLimit = 4096
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &OCI{cfg: cfg, log: cfg.Logger.With("driver", "oci"), runcRoot: filepath.Join(dir, ".runc"), busy: map[string]bool{}}
	for _, p := range []string{dir, d.runcRoot} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, fmt.Errorf("oci driver: %w", err)
		}
		if err := os.Chmod(p, 0o700); err != nil {
			return nil, fmt.Errorf("oci driver: %w", err)
		}
	}
	_, err = os.Stat(filepath.Join(cfg.CgroupRoot, "memory", "memory.memsw.limit_in_bytes"))
	d.swapAccounting = err == nil
	return d, nil
}

// Name returns "oci".
func (d *OCI) Name() string { return "oci" }

// RunsImages reports that the driver runs images.
func (d *OCI) RunsImages() bool { return true }

func (d *OCI) dir(id string) string { return filepath.Join(d.cfg.DataDir, id) }

func (d *OCI) memCgroup(id string) string {
	return filepath.Join(d.cfg.CgroupRoot, "memory", d.cfg.CgroupParent, id)
}

func (d *OCI) lock(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[id] {
		return fmt.Errorf("instance %s is being started or destroyed: %w", id, ErrExists)
	}
	d.busy[id] = true
	return nil
}

func (d *OCI) unlock(id string) {
	d.mu.Lock()
	delete(d.busy, id)
	d.mu.Unlock()
}

// Start pulls the spec's image if the machine does not have it and starts
// an instance of it; see Driver. The spec's Command replaces the image's
// entrypoint (and drops its cmd), its Args replace the cmd, its Env is
// laid over the image's, and its WorkDir (a path inside the container)
// replaces the image's working directory. Its User, when set, replaces the
// image's user.
func (d *OCI) Start(ctx context.Context, spec Spec) (Handle, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Image == "" {
		return nil, errors.New("spec.image: empty; the OCI runtime runs images")
	}
	if err := d.lock(spec.ID); err != nil {
		return nil, err
	}
	defer d.unlock(spec.ID)
	h, err := d.start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	return h, nil
}

func (d *OCI) start(ctx context.Context, spec Spec) (_ *ociHandle, err error) {
	dir := d.dir(spec.ID)
	_, statErr := os.Stat(dir)
	fresh := errors.Is(statErr, os.ErrNotExist)
	if !fresh {
		var old ociState
		if readJSONFile(filepath.Join(dir, fileState), &old) == nil {
			if ok, _ := sameProcess(old.ShimPid, old.ShimStart); ok {
				return nil, fmt.Errorf("shim pid %d: %w", old.ShimPid, ErrExists)
			}
		}
		if err := d.cleanupContainer(spec.ID); err != nil {
			return nil, err
		}
		for _, f := range []string{fileState, fileExit, fileSpec, fileInitPid, fileRuncLog, fileShimConfig} {
			if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("reset instance directory: %w", err)
			}
		}
	}
	defer func() {
		if err == nil {
			return
		}
		if cerr := d.cleanupContainer(spec.ID); cerr != nil {
			d.log.Warn("clean up a failed start", "instance", spec.ID, "err", cerr)
		}
		if fresh {
			_ = os.RemoveAll(dir)
		} else {
			_ = os.Remove(filepath.Join(dir, fileState))
		}
	}()
	if spec.Hostname == "" {
		spec.Hostname = spec.ID[:min(len(spec.ID), 64)]
	}
	if spec.LogMaxBytes == 0 {
		spec.LogMaxBytes = DefaultLogMaxBytes
	}
	spec.MountedWorkDir = ""
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create instance directory: %w", err)
	}

	// The image, pinned at the first start: restarts run the same bytes.
	ref := spec.Image
	var pin pinnedImage
	if readJSONFile(filepath.Join(dir, fileImage), &pin) == nil && pin.Ref == spec.Image && pin.Pinned != "" {
		ref = pin.Pinned
	}
	img, err := d.cfg.Images.Pull(ctx, ref)
	if err != nil {
		return nil, err
	}
	if pin.Ref != spec.Image || pin.ChainID != img.ChainID {
		// Another image: the writable layer of the previous one goes.
		if err := os.RemoveAll(filepath.Join(dir, dirOverlay)); err != nil {
			return nil, fmt.Errorf("reset the writable layer: %w", err)
		}
	}
	if err := writeJSONFile(filepath.Join(dir, fileImage), pinnedImage{Ref: spec.Image, Pinned: img.Pinned, ChainID: img.ChainID}); err != nil {
		return nil, err
	}

	files := ociFiles{rootfs: filepath.Join(dir, dirRootfs), resolv: filepath.Join(dir, fileResolv),
		hosts: filepath.Join(dir, fileHosts), hostname: filepath.Join(dir, fileHostname)}
	resolv := spec.ResolvConf
	if resolv == "" {
		b, _ := os.ReadFile("/etc/resolv.conf")
		resolv = string(b)
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + spec.Hostname + "\n"
	for _, f := range []struct{ path, content string }{{files.resolv, resolv}, {files.hosts, hosts}, {files.hostname, spec.Hostname + "\n"}} {
		if err := os.WriteFile(f.path, []byte(f.content), 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", filepath.Base(f.path), err)
		}
	}
	rs, err := d.ociRuntimeSpec(spec, img.Config, img.Rootfs, files)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec.Image, err)
	}
	bundle := filepath.Join(dir, dirBundle)
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return nil, err
	}
	if err := writeJSONFile(filepath.Join(bundle, "config.json"), rs); err != nil {
		return nil, err
	}
	if err := d.mountRootfs(dir, img.Rootfs); err != nil {
		return nil, err
	}
	if err := writeJSONFile(filepath.Join(dir, fileSpec), spec); err != nil {
		return nil, err
	}
	sc := ociShimConfig{ID: spec.ID, Runc: d.cfg.Runc, RuncRoot: d.runcRoot, Bundle: bundle, Rootfs: files.rootfs,
		LogMaxBytes: spec.LogMaxBytes, MemoryCgroup: d.memCgroup(spec.ID)}
	if err := writeJSONFile(filepath.Join(dir, fileShimConfig), sc); err != nil {
		return nil, err
	}
	return d.startShim(ctx, spec, dir, img.Pinned)
}

// mountRootfs mounts the instance's overlay: the image's root below, the
// instance's writable layer above (owned and moded as the image's root).
func (d *OCI) mountRootfs(dir, lower string) error {
	upper, work, merged := filepath.Join(dir, dirOverlay, "upper"), filepath.Join(dir, dirOverlay, "work"), filepath.Join(dir, dirRootfs)
	if err := unmountAll(merged); err != nil {
		return err
	}
	if strings.ContainsAny(lower, ",:") {
		return fmt.Errorf("image root %q holds ',' or ':' (overlayfs options)", lower)
	}
	var st unix.Stat_t
	if err := unix.Stat(lower, &st); err != nil {
		return fmt.Errorf("image root: %w", err)
	}
	for _, p := range []string{upper, work, merged} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
	}
	if err := os.Chown(upper, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := os.Chmod(upper, os.FileMode(st.Mode&0o7777)); err != nil {
		return err
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount the instance's overlay (%s): %w", opts, err)
	}
	return nil
}

// startShim starts the instance's shim, which starts the container.
func (d *OCI) startShim(ctx context.Context, spec Spec, dir, pinned string) (*ociHandle, error) {
	var s ociState
	cmd, payload, err := launchShim(ctx, shimLaunch{
		dir:     dir,
		path:    d.cfg.ShimPath,
		args:    []string{"meridian-oci-shim", spec.ID},
		env:     append([]string{ociShimEnv + "=" + dir, "GOMAXPROCS=1", "PATH=" + defaultPath}, d.cfg.ShimEnv...),
		attr:    &syscall.SysProcAttr{Setsid: true},
		timeout: d.cfg.StartTimeout,
		late:    "the container did not start",
		prepare: func(pid int, startTime uint64, startedAt time.Time) error {
			s = ociState{ID: spec.ID, ShimPid: pid, ShimStart: startTime, StartedAt: startedAt, Image: pinned, Spec: spec}
			return writeJSONFile(filepath.Join(dir, fileState), s)
		},
	})
	var refusal *shimRefusal
	if errors.As(err, &refusal) {
		return nil, fmt.Errorf("image %s: %w", spec.Image, err)
	}
	if err != nil {
		return nil, err
	}
	pid := s.ShimPid
	init, err := strconv.Atoi(payload)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("shim answer %q: %w", payload, err)
	}
	h := &ociHandle{d: d, dir: dir, cmd: cmd, done: make(chan struct{})}
	// The init's pidfd: signals reach the workload, never a reused pid.
	if ist, err := readProcStat(init); err == nil {
		s.InitPid, s.InitStart = init, ist.StartTime
		if w, err := openPidWaiter(init); err == nil {
			h.init = w
		}
	}
	h.s = s
	if err := writeJSONFile(filepath.Join(dir, fileState), s); err != nil {
		d.log.Warn("record the container's init pid", "instance", spec.ID, "err", err)
	}
	go h.watch()
	d.log.Debug("instance started", "instance", spec.ID, "shim", pid, "init", init, "image", pinned)
	return h, nil
}

// cleanupContainer has runc delete the container and unmounts its root
// filesystem; an absent container is not an error.
func (d *OCI) cleanupContainer(id string) error {
	out, err := exec.Command(d.cfg.Runc, "--root", d.runcRoot, "delete", "--force", id).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "does not exist") {
		return fmt.Errorf("runc delete %s: %w: %s", id, err, strings.TrimSpace(string(out)))
	}
	return unmountAll(filepath.Join(d.dir(id), dirRootfs))
}

// remove deletes everything an instance left: its container, cgroups and
// directory.
func (d *OCI) remove(id string) error {
	err := d.cleanupContainer(id)
	ents, _ := os.ReadDir(d.cfg.CgroupRoot)
	for _, e := range ents {
		if cerr := removeCgroup(filepath.Join(d.cfg.CgroupRoot, e.Name(), d.cfg.CgroupParent, id)); cerr != nil && err == nil {
			err = cerr
		}
	}
	if rerr := os.RemoveAll(d.dir(id)); rerr != nil && err == nil {
		err = fmt.Errorf("remove instance directory: %w", rerr)
	}
	return err
}

// Recover re-adopts a running instance; see Driver.
func (d *OCI) Recover(ctx context.Context, id string) (Handle, error) {
	if !idPattern.MatchString(id) {
		return nil, fmt.Errorf("recover: id %q is not a valid instance id", id)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := d.lock(id); err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	defer d.unlock(id)
	dir := d.dir(id)
	if _, err := os.Stat(dir); err != nil {
		_ = d.cleanupContainer(id)
		return nil, fmt.Errorf("recover instance %s: %w", id, ErrNotFound)
	}
	gone := func(reason string) (Handle, error) {
		ge := &GoneError{ID: id, Reason: reason}
		var es ExitStatus
		if readJSONFile(filepath.Join(dir, fileExit), &es) == nil {
			ge.Exit = &es
		}
		if err := d.remove(id); err != nil {
			d.log.Warn("clean up gone instance", "instance", id, "err", err)
		}
		return nil, fmt.Errorf("recover: %w", ge)
	}
	var s ociState
	if err := readJSONFile(filepath.Join(dir, fileState), &s); err != nil {
		return gone("no readable state: " + err.Error())
	}
	if ok, why := sameProcess(s.ShimPid, s.ShimStart); !ok {
		return gone(why)
	}
	w, err := openPidWaiter(s.ShimPid)
	if err != nil {
		return nil, fmt.Errorf("recover instance %s: %w", id, err)
	}
	if ok, why := sameProcess(s.ShimPid, s.ShimStart); !ok {
		w.close()
		return gone(why)
	}
	h := &ociHandle{d: d, s: s, dir: dir, shim: w, done: make(chan struct{})}
	if s.InitPid > 0 {
		if iw, err := openPidWaiter(s.InitPid); err == nil {
			if ok, _ := sameProcess(s.InitPid, s.InitStart); ok {
				h.init = iw
			} else {
				iw.close()
			}
		}
	}
	go h.watch()
	d.log.Info("instance recovered", "instance", id, "shim", s.ShimPid, "init", s.InitPid)
	return h, nil
}

// List returns the ids of the instances with a directory under DataDir.
func (d *OCI) List(ctx context.Context) ([]string, error) {
	return listInstanceDirs(ctx, d.cfg.DataDir)
}

// Destroy kills an instance if it runs and removes all it left; see Driver.
func (d *OCI) Destroy(ctx context.Context, id string) error {
	h, err := d.Recover(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return h.Cleanup()
}

// ociHandle is a Handle of the OCI driver: its own shim (cmd set) or an
// adopted one (shim set).
type ociHandle struct {
	d         *OCI
	s         ociState
	dir       string
	cmd       *exec.Cmd
	shim      *pidWaiter
	init      *pidWaiter // nil when the init was gone already
	done      chan struct{}
	exit      ExitStatus
	mu        sync.Mutex
	killed    bool
	cleanedUp bool
}

func (h *ociHandle) ID() string            { return h.s.ID }
func (h *ociHandle) Pid() int              { return h.s.ShimPid }
func (h *ociHandle) Spec() Spec            { return h.s.Spec }
func (h *ociHandle) StartedAt() time.Time  { return h.s.StartedAt }
func (h *ociHandle) Done() <-chan struct{} { return h.done }
func (h *ociHandle) LogPath() string       { return filepath.Join(h.dir, fileLog) }
func (h *ociHandle) exited() bool          { return isClosed(h.done) }

// Image is the image the instance runs, pinned by digest.
func (h *ociHandle) Image() string { return h.s.Image }

// watch waits for the shim to exit and records the instance's exit.
func (h *ociHandle) watch() {
	fallback := ExitStatus{Code: -1, Unknown: true}
	if h.cmd != nil {
		_ = h.cmd.Wait()
		if ps := h.cmd.ProcessState; ps != nil {
			ws, _ := ps.Sys().(syscall.WaitStatus)
			fallback = ExitStatus{Code: ws.ExitStatus()}
			if ws.Signaled() {
				fallback.Code, fallback.Signal = -1, ws.Signal()
			}
		}
	} else {
		h.shim.wait()
		h.shim.close()
	}
	h.mu.Lock()
	killed := h.killed
	h.mu.Unlock()
	var es ExitStatus
	if err := readJSONFile(filepath.Join(h.dir, fileExit), &es); err != nil {
		// The shim died without recording the exit: the container may run
		// on without it; it is removed below.
		es = fallback
		if killed && es.Unknown {
			es = ExitStatus{Code: -1, Signal: syscall.SIGKILL}
		}
		es.ExitedAt = time.Now()
		if oomKills(h.d.memCgroup(h.s.ID)) > 0 {
			es.OOMKilled = true
		}
	}
	if err := h.d.cleanupContainer(h.s.ID); err != nil {
		h.d.log.Warn("clean up exited container", "instance", h.s.ID, "err", err)
	}
	if h.init != nil {
		h.init.close()
	}
	h.exit = es
	close(h.done)
}

// Wait blocks until the instance exits or ctx ends.
func (h *ociHandle) Wait(ctx context.Context) (ExitStatus, error) {
	select {
	case <-h.done:
		return h.exit, nil
	case <-ctx.Done():
		return ExitStatus{}, ctx.Err()
	}
}

// Signal delivers sig to the container's init (its PID 1): SIGTERM,
// SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, or SIGKILL, which ends the
// whole container. As in Docker, a PID 1 ignores the signals it has no
// handler for (SIGKILL excepted).
func (h *ociHandle) Signal(sig os.Signal) error {
	if !forwardable(sig) {
		return fmt.Errorf("signal instance %s: %v is not one the driver delivers (TERM, INT, HUP, QUIT, USR1, USR2) nor SIGKILL", h.s.ID, sig)
	}
	if h.exited() || h.init == nil {
		return fmt.Errorf("signal instance %s: %w", h.s.ID, os.ErrProcessDone)
	}
	if sig == syscall.SIGKILL {
		h.mu.Lock()
		h.killed = true
		h.mu.Unlock()
	}
	if err := h.init.signal(sig); err != nil {
		return signalError(h.s.ID, err, h.exited())
	}
	return nil
}

// Stop sends SIGTERM, then SIGKILL after timeout; see Handle.
func (h *ociHandle) Stop(ctx context.Context, timeout time.Duration) error {
	return stopGracefully(ctx, h.s.ID, timeout, h.Signal, h.done)
}

// Stats samples the container's cgroups: its processes' CPU time (cgroup
// v1 cpuacct) and resident memory, and its memory cgroup's usage and
// limit.
func (h *ociHandle) Stats() (Stats, error) {
	if h.exited() {
		return Stats{}, fmt.Errorf("stats of instance %s: %w", h.s.ID, os.ErrProcessDone)
	}
	st := Stats{At: time.Now()}
	cg := h.d.memCgroup(h.s.ID)
	pids, err := cgroupPids(cg)
	if err != nil {
		return Stats{}, fmt.Errorf("stats of instance %s: %w", h.s.ID, err)
	}
	st.MemoryUsage, _ = readCgroupUint(cg, "memory.usage_in_bytes")
	if lim, err := readCgroupUint(cg, "memory.limit_in_bytes"); err == nil && h.s.Spec.MemoryMB > 0 {
		st.MemoryLimit = lim
	}
	page := uint64(os.Getpagesize())
	var ticks time.Duration
	for _, pid := range pids {
		ps, err := readProcStat(pid)
		if err != nil {
			continue
		}
		st.Processes++
		ticks += ticksToDuration(ps.CPUTicks)
		st.MemoryRSS += ps.RSSPages * page
	}
	st.CPUTime = ticks
	if ns, err := readCgroupUint(filepath.Join(h.d.cfg.CgroupRoot, "cpuacct", h.d.cfg.CgroupParent, h.s.ID), "cpuacct.usage"); err == nil {
		st.CPUTime = time.Duration(ns)
	}
	return st, nil
}

// Cleanup kills the instance if it runs and removes all it left.
func (h *ociHandle) Cleanup() error {
	h.mu.Lock()
	if h.cleanedUp {
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	if !h.exited() {
		_ = h.Signal(syscall.SIGKILL)
		t := time.NewTimer(10 * time.Second)
		select {
		case <-h.done:
			t.Stop()
		case <-t.C:
			// The init is gone but the shim lingers, or the other way
			// round: runc kills what is left.
			if err := h.d.cleanupContainer(h.s.ID); err != nil {
				return fmt.Errorf("clean up instance %s: %w", h.s.ID, err)
			}
			if h.cmd != nil {
				_ = h.cmd.Process.Kill()
			} else {
				_ = h.shim.signal(syscall.SIGKILL)
			}
			<-h.done
		}
	}
	if err := h.d.lock(h.s.ID); err != nil {
		return fmt.Errorf("clean up: %w", err)
	}
	defer h.d.unlock(h.s.ID)
	var cur ociState
	if readJSONFile(filepath.Join(h.dir, fileState), &cur) == nil && (cur.ShimPid != h.s.ShimPid || cur.ShimStart != h.s.ShimStart) {
		h.mu.Lock()
		h.cleanedUp = true
		h.mu.Unlock()
		return nil
	}
	if err := h.d.remove(h.s.ID); err != nil {
		return fmt.Errorf("clean up instance %s: %w", h.s.ID, err)
	}
	h.mu.Lock()
	h.cleanedUp = true
	h.mu.Unlock()
	return nil
}
