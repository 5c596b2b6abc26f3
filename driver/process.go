package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// ProcessConfig configures a Process driver.
type ProcessConfig struct {
	// DataDir holds one directory per instance (state, log, working
	// directory). Required; created if missing.
	DataDir string
	// Logger receives the driver's logs; nil discards them.
	Logger *slog.Logger
	// ShimPath is the binary started as each instance's shim; it must call
	// MaybeRunShim first thing. Default "/proc/self/exe".
	ShimPath string
	// CgroupRoot is where the cgroup v1 memory controller is mounted.
	// Default DefaultCgroupRoot.
	CgroupRoot string
	// CgroupParent is the cgroup under CgroupRoot that holds the instances'
	// cgroups. Default DefaultCgroupParent.
	CgroupParent string
	// StartTimeout bounds the shim's setup. Default 10s.
	StartTimeout time.Duration
	// ShimEnv is added to the shim's environment (not the workload's), for
	// Go runtime settings such as GODEBUG or GORACE. The shim always runs
	// with GOMAXPROCS=1.
	ShimEnv []string
}

// Process is the process runtime: each instance is a command run in its own
// PID, mount, UTS and IPC namespaces under a shim (see MaybeRunShim), with
// its memory limited through cgroup v1 when the controller is writable.
//
// Instance directory DataDir/<id>: spec.json, state.json (shim pid and start
// time, for Recover), exit.json (written by the shim), resolv.conf,
// output.log and output.log.1, shim.log, and work/ (the default working
// directory).
type Process struct {
	cfg  ProcessConfig
	log  *slog.Logger
	cg   memCgroups
	cgOK bool
	// cgErr says why cgroups are not usable.
	cgErr    error
	warnOnce sync.Once

	mu   sync.Mutex
	busy map[string]bool // ids being started or destroyed
}

var _ Driver = (*Process)(nil)

// NewProcess returns a Process driver. It checks at once whether the cgroup
// v1 memory controller is writable; if it is not, instances run without
// memory limits and the first one asking for a limit logs a warning.
func NewProcess(cfg ProcessConfig) (*Process, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("process driver: DataDir is required")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("process driver: DataDir: %w", err)
	}
	cfg.DataDir = dir
	// Instances' specs hold their secrets' values, their logs whatever
	// they print: only the agent's user may read them.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("process driver: DataDir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil { // made by an older version, or by hand
		return nil, fmt.Errorf("process driver: DataDir: %w", err)
	}
	if cfg.ShimPath == "" {
		cfg.ShimPath = "/proc/self/exe"
	}
	if _, err := os.Stat(cfg.ShimPath); err != nil {
		return nil, fmt.Errorf("process driver: ShimPath: %w", err)
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = DefaultCgroupRoot
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Process{
		cfg:  cfg,
		log:  log.With("driver", "process"),
		cg:   memCgroups{dir: filepath.Join(cfg.CgroupRoot, cfg.CgroupParent)},
		busy: map[string]bool{},
	}
	p.cgErr = p.cg.probe()
	p.cgOK = p.cgErr == nil
	return p, nil
}

// Name returns "process".
func (p *Process) Name() string { return "process" }

// MemoryLimits reports whether memory limits are enforced (the cgroup v1
// memory controller is writable), and if not, why.
func (p *Process) MemoryLimits() (bool, error) { return p.cgOK, p.cgErr }

// state is what Recover needs, in state.json.
type state struct {
	ID        string    `json:"id"`
	Pid       int       `json:"pid"`
	StartTime uint64    `json:"start_time"` // field 22 of /proc/<pid>/stat
	StartedAt time.Time `json:"started_at"`
	Cgroup    string    `json:"cgroup,omitempty"`
	Spec      Spec      `json:"spec"`
}

func (p *Process) dir(id string) string { return filepath.Join(p.cfg.DataDir, id) }

func (p *Process) lock(id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.busy[id] {
		return fmt.Errorf("instance %s is being started or destroyed: %w", id, ErrExists)
	}
	p.busy[id] = true
	return nil
}

func (p *Process) unlock(id string) {
	p.mu.Lock()
	delete(p.busy, id)
	p.mu.Unlock()
}

// Start starts an instance; see Driver.
func (p *Process) Start(ctx context.Context, spec Spec) (Handle, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Image != "" {
		return nil, fmt.Errorf("spec.image: the process driver runs commands, not images (got %q)", spec.Image)
	}
	if len(spec.Command) == 0 {
		return nil, errors.New("spec.command: empty")
	}
	if err := p.lock(spec.ID); err != nil {
		return nil, err
	}
	defer p.unlock(spec.ID)
	h, err := p.start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	return h, nil
}

func (p *Process) start(ctx context.Context, spec Spec) (_ *processHandle, err error) {
	dir := p.dir(spec.ID)
	fresh, err := p.reset(dir)
	if err != nil {
		return nil, err
	}
	var cgPath string
	defer func() {
		if err == nil {
			return
		}
		_ = removeCgroup(cgPath)
		if fresh {
			_ = os.RemoveAll(dir)
		} else {
			_ = os.Remove(filepath.Join(dir, fileState))
		}
	}()
	if err := prepareDir(dir, &spec); err != nil {
		return nil, err
	}
	if cgPath, err = p.limitMemory(spec); err != nil {
		return nil, err
	}

	var s state
	cmd, _, err := launchShim(ctx, shimLaunch{
		dir:  dir,
		path: p.cfg.ShimPath,
		args: []string{"meridian-shim", spec.ID},
		env:  append([]string{shimEnv + "=" + dir, "GOMAXPROCS=1"}, p.cfg.ShimEnv...),
		attr: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
			Setsid:     true,
		},
		timeout: p.cfg.StartTimeout,
		late:    "shim did not answer",
		prepare: func(pid int, startTime uint64, startedAt time.Time) error {
			if cgPath != "" {
				if err := addProc(cgPath, pid); err != nil {
					return fmt.Errorf("spec.memory_mb: %w", err)
				}
			}
			s = state{ID: spec.ID, Pid: pid, StartTime: startTime, StartedAt: startedAt, Cgroup: cgPath, Spec: spec}
			return writeJSONFile(filepath.Join(dir, fileState), s)
		},
	})
	if err != nil {
		return nil, err
	}
	pid := s.Pid
	h := newHandle(p, s)
	h.cmd = cmd
	go h.watchChild()
	p.log.Debug("instance started", "instance", spec.ID, "pid", pid, "cgroup", cgPath)
	return h, nil
}

// reset readies an instance directory for a start: a new one (fresh), or
// the one a stopped instance left, whose state, exit, spec and cgroup go
// (its log and working directory stay). A still running instance is
// ErrExists.
func (p *Process) reset(dir string) (fresh bool, err error) {
	_, statErr := os.Stat(dir)
	if errors.Is(statErr, os.ErrNotExist) {
		return true, nil
	}
	var old state
	if readJSONFile(filepath.Join(dir, fileState), &old) == nil {
		if ok, _ := sameProcess(old.Pid, old.StartTime); ok {
			return false, fmt.Errorf("pid %d: %w", old.Pid, ErrExists)
		}
		if err := removeCgroup(old.Cgroup); err != nil {
			return false, err
		}
	}
	for _, f := range []string{fileState, fileExit, fileSpec, fileResolv} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("reset instance directory: %w", err)
		}
	}
	return false, nil
}

// prepareDir resolves spec's defaults and writes what the shim reads into
// the instance directory: the working directory (the workload's own, when
// it runs as its own user), the resolv.conf to mount and the spec.
func prepareDir(dir string, spec *Spec) error {
	if spec.Hostname == "" {
		spec.Hostname = spec.ID[:min(len(spec.ID), 64)]
	}
	if spec.LogMaxBytes == 0 {
		spec.LogMaxBytes = DefaultLogMaxBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create instance directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("create instance directory: %w", err)
	}
	defaultWork := spec.WorkDir == ""
	if defaultWork {
		spec.WorkDir = filepath.Join(dir, dirWork)
	}
	if err := os.MkdirAll(spec.WorkDir, 0o755); err != nil {
		return fmt.Errorf("spec.work_dir: %w", err)
	}
	spec.MountedWorkDir = ""
	if spec.User != nil && defaultWork {
		// The workload's own directory, shown to it at UserWorkDir (the
		// instance directory around it is closed to it).
		if err := os.MkdirAll(UserWorkDir, 0o755); err != nil {
			return fmt.Errorf("spec.user: mount point %s: %w", UserWorkDir, err)
		}
		if err := os.Chown(spec.WorkDir, int(spec.User.UID), int(spec.User.GID)); err != nil {
			return fmt.Errorf("spec.user: %w", err)
		}
		if err := os.Chmod(spec.WorkDir, 0o700); err != nil {
			return fmt.Errorf("spec.user: %w", err)
		}
		spec.MountedWorkDir = UserWorkDir
	}
	if spec.ResolvConf != "" {
		if _, err := os.Stat("/etc/resolv.conf"); err != nil {
			return fmt.Errorf("spec.resolv_conf: the host has no /etc/resolv.conf to mount over: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, fileResolv), []byte(spec.ResolvConf), 0o644); err != nil {
			return fmt.Errorf("spec.resolv_conf: %w", err)
		}
	}
	return writeJSONFile(filepath.Join(dir, fileSpec), spec)
}

// limitMemory creates the instance's memory cgroup when its spec asks for
// a limit and the machine can set one ("" otherwise: warned once).
func (p *Process) limitMemory(spec Spec) (string, error) {
	if spec.MemoryMB <= 0 {
		return "", nil
	}
	if !p.cgOK {
		p.warnOnce.Do(func() {
			p.log.Warn("memory limits disabled: cgroup v1 memory controller not writable; instances run without limits",
				"cgroup", p.cg.dir, "err", p.cgErr, "instance", spec.ID)
		})
		return "", nil
	}
	path, err := p.cg.create(spec.ID, uint64(spec.MemoryMB)<<20)
	if err != nil {
		return "", fmt.Errorf("spec.memory_mb: %w", err)
	}
	return path, nil
}

// Recover re-adopts a running instance; see Driver.
func (p *Process) Recover(ctx context.Context, id string) (Handle, error) {
	if !idPattern.MatchString(id) {
		return nil, fmt.Errorf("recover: id %q is not a valid instance id", id)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := p.lock(id); err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	defer p.unlock(id)
	dir := p.dir(id)
	if _, err := os.Stat(dir); err != nil {
		_ = removeCgroup(p.cg.path(id))
		return nil, fmt.Errorf("recover instance %s: %w", id, ErrNotFound)
	}
	var s state
	gone := func(reason string) (Handle, error) {
		ge := &GoneError{ID: id, Reason: reason}
		var es ExitStatus
		if readJSONFile(filepath.Join(dir, fileExit), &es) == nil {
			if s.Cgroup != "" && oomKills(s.Cgroup) > 0 {
				es.OOMKilled = true
			}
			ge.Exit = &es
		}
		if err := p.remove(id, s.Cgroup); err != nil {
			p.log.Warn("clean up gone instance", "instance", id, "err", err)
		}
		return nil, fmt.Errorf("recover: %w", ge)
	}
	if err := readJSONFile(filepath.Join(dir, fileState), &s); err != nil {
		return gone("no readable state: " + err.Error())
	}
	if ok, why := sameProcess(s.Pid, s.StartTime); !ok {
		return gone(why)
	}
	h := newHandle(p, s)
	w, err := openPidWaiter(s.Pid)
	if err != nil {
		return nil, fmt.Errorf("recover instance %s: %w", id, err)
	}
	// The pidfd was opened after the check above: check again that it
	// names the same process.
	if ok, why := sameProcess(s.Pid, s.StartTime); !ok {
		w.close()
		return gone(why)
	}
	h.waiter = w
	go h.watchAdopted()
	p.log.Info("instance recovered", "instance", id, "pid", s.Pid)
	return h, nil
}

// List returns the ids of the instances with a directory under DataDir.
func (p *Process) List(ctx context.Context) ([]string, error) {
	return listInstanceDirs(ctx, p.cfg.DataDir)
}

// Destroy kills an instance if it runs and removes all it left; see Driver.
func (p *Process) Destroy(ctx context.Context, id string) error {
	h, err := p.Recover(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return h.Cleanup()
}

// remove deletes an instance's cgroup and directory.
func (p *Process) remove(id, cgroup string) error {
	if cgroup == "" {
		cgroup = p.cg.path(id)
	}
	err := removeCgroup(cgroup)
	if rerr := os.RemoveAll(p.dir(id)); rerr != nil && err == nil {
		err = fmt.Errorf("remove instance directory: %w", rerr)
	}
	return err
}

// processHandle is a Handle of the Process driver: either the driver's own
// child (cmd set) or an adopted process (waiter set).
type processHandle struct {
	p         *Process
	s         state
	dir       string
	cmd       *exec.Cmd
	waiter    *pidWaiter
	done      chan struct{}
	exit      ExitStatus
	mu        sync.Mutex
	killed    bool // we sent SIGKILL to the shim
	cleanedUp bool
}

func newHandle(p *Process, s state) *processHandle {
	return &processHandle{p: p, s: s, dir: p.dir(s.ID), done: make(chan struct{})}
}

func (h *processHandle) ID() string            { return h.s.ID }
func (h *processHandle) Pid() int              { return h.s.Pid }
func (h *processHandle) Spec() Spec            { return h.s.Spec }
func (h *processHandle) StartedAt() time.Time  { return h.s.StartedAt }
func (h *processHandle) Done() <-chan struct{} { return h.done }
func (h *processHandle) LogPath() string       { return filepath.Join(h.dir, fileLog) }
func (h *processHandle) String() string        { return "instance " + h.s.ID }
func (h *processHandle) exited() bool          { return isClosed(h.done) }
func (h *processHandle) markKilled()           { h.mu.Lock(); h.killed = true; h.mu.Unlock() }
func (h *processHandle) wasKilled() (killed bool) {
	h.mu.Lock()
	killed = h.killed
	h.mu.Unlock()
	return
}
func (h *processHandle) setExit(es ExitStatus) { h.exit = es; close(h.done) }
func (h *processHandle) cgroup() string        { return h.s.Cgroup }
func (h *processHandle) statePath() string     { return filepath.Join(h.dir, fileState) }
func (h *processHandle) exitPath() string      { return filepath.Join(h.dir, fileExit) }
func (h *processHandle) logger() *slog.Logger  { return h.p.log.With("instance", h.s.ID) }
func (h *processHandle) waitDone(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-h.done:
		return true
	case <-t.C:
		return false
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// watchChild reaps the driver's own shim and records the exit.
func (h *processHandle) watchChild() {
	err := h.cmd.Wait()
	var fallback ExitStatus
	if ps := h.cmd.ProcessState; ps != nil {
		ws, _ := ps.Sys().(syscall.WaitStatus)
		fallback.Code = ws.ExitStatus()
		if ws.Signaled() {
			fallback.Code, fallback.Signal = -1, ws.Signal()
		}
	} else {
		fallback = ExitStatus{Code: -1, Unknown: true}
		h.logger().Warn("wait for shim", "err", err)
	}
	h.finish(fallback)
}

// watchAdopted waits for an adopted shim to exit and records the exit.
func (h *processHandle) watchAdopted() {
	h.waiter.wait()
	h.waiter.close()
	fallback := ExitStatus{Code: -1, Unknown: true}
	if h.wasKilled() {
		fallback = ExitStatus{Code: -1, Signal: syscall.SIGKILL}
	}
	h.finish(fallback)
}

// finish records the exit status: the one the shim wrote, else fallback.
func (h *processHandle) finish(fallback ExitStatus) {
	var es ExitStatus
	if err := readJSONFile(h.exitPath(), &es); err != nil {
		es = fallback
		es.ExitedAt = time.Now()
	}
	if cg := h.cgroup(); cg != "" {
		if oomKills(cg) > 0 {
			es.OOMKilled = true
		}
		if err := removeCgroup(cg); err != nil {
			h.logger().Warn("remove cgroup", "err", err)
		}
	}
	h.logger().Debug("instance exited", "status", es.String())
	h.setExit(es)
}

// Wait blocks until the instance exits or ctx ends.
func (h *processHandle) Wait(ctx context.Context) (ExitStatus, error) {
	select {
	case <-h.done:
		return h.exit, nil
	case <-ctx.Done():
		return ExitStatus{}, ctx.Err()
	}
}

// Signal delivers sig to the workload through the shim, which forwards
// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2; SIGKILL kills the
// whole instance. Other signals are refused: the kernel would drop them at
// the shim, the PID 1 of the instance's namespace.
func (h *processHandle) Signal(sig os.Signal) error {
	if !forwardable(sig) {
		return fmt.Errorf("signal instance %s: %v is not one the shim forwards (TERM, INT, HUP, QUIT, USR1, USR2) nor SIGKILL", h.s.ID, sig)
	}
	if h.exited() {
		return fmt.Errorf("signal instance %s: %w", h.s.ID, os.ErrProcessDone)
	}
	if sig == syscall.SIGKILL {
		h.markKilled()
	}
	var err error
	if h.cmd != nil {
		err = h.cmd.Process.Signal(sig)
	} else {
		err = h.waiter.signal(sig)
	}
	if err != nil {
		return signalError(h.s.ID, err, h.exited())
	}
	return nil
}

// Stop sends SIGTERM, then SIGKILL after timeout; see Handle.
func (h *processHandle) Stop(ctx context.Context, timeout time.Duration) error {
	return stopGracefully(ctx, h.s.ID, timeout, h.Signal, h.done)
}

// Stats samples CPU time and memory of the instance's processes, found in
// its cgroup or else in its PID namespace.
func (h *processHandle) Stats() (Stats, error) {
	if h.exited() {
		return Stats{}, fmt.Errorf("stats of instance %s: %w", h.s.ID, os.ErrProcessDone)
	}
	st := Stats{At: time.Now()}
	var pids []int
	var err error
	if cg := h.cgroup(); cg != "" {
		pids, err = cgroupPids(cg)
		if err == nil {
			st.MemoryUsage, _ = readCgroupUint(cg, "memory.usage_in_bytes")
			st.MemoryLimit, _ = readCgroupUint(cg, "memory.limit_in_bytes")
		}
	} else {
		pids, err = pidsInNamespaceOf(h.s.Pid)
	}
	if err != nil {
		return Stats{}, fmt.Errorf("stats of instance %s: %w", h.s.ID, err)
	}
	page := uint64(os.Getpagesize())
	for _, pid := range pids {
		ps, err := readProcStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		st.Processes++
		st.CPUTime += ticksToDuration(ps.CPUTicks)
		st.MemoryRSS += ps.RSSPages * page
	}
	return st, nil
}

// Cleanup kills the instance if it runs and removes all it left.
func (h *processHandle) Cleanup() error {
	h.mu.Lock()
	if h.cleanedUp {
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	if !h.exited() {
		_ = h.Signal(syscall.SIGKILL)
		if !h.waitDone(10 * time.Second) {
			return fmt.Errorf("clean up instance %s: pid %d did not exit after SIGKILL", h.s.ID, h.s.Pid)
		}
	}
	if err := h.p.lock(h.s.ID); err != nil {
		return fmt.Errorf("clean up: %w", err)
	}
	defer h.p.unlock(h.s.ID)
	// A new instance may have been started with the same id since this one
	// exited: leave its files alone.
	var cur state
	if readJSONFile(h.statePath(), &cur) == nil && (cur.Pid != h.s.Pid || cur.StartTime != h.s.StartTime) {
		h.mu.Lock()
		h.cleanedUp = true
		h.mu.Unlock()
		return nil
	}
	if err := h.p.remove(h.s.ID, h.cgroup()); err != nil {
		return fmt.Errorf("clean up instance %s: %w", h.s.ID, err)
	}
	h.mu.Lock()
	h.cleanedUp = true
	h.mu.Unlock()
	return nil
}
