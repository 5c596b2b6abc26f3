// Package driver runs instances on a machine, in the manner of Nomad's task
// drivers: a Driver starts an instance from a Spec and returns a Handle to
// watch, signal, stop and measure it. A Driver keeps per-instance state on
// disk so that an agent that restarted can re-adopt the instances that kept
// running without it (Recover).
//
// The Process driver runs a command in its own PID, mount, UTS and IPC
// namespaces under a small re-exec shim (see MaybeRunShim) that stays the
// instance's PID 1, owns its log file and records its exit status, so the
// workload survives the agent's death. The OCI driver runs container
// images with runc on an overlay of the image's shared, read-only root,
// under a shim of its own with the same guarantees; Runtimes picks one of
// them per spec. A microVM runtime would implement the same interfaces.
package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Driver starts, re-adopts and lists instances of one runtime.
type Driver interface {
	// Name is the runtime's name ("process", "oci", ...).
	Name() string
	// Start starts an instance. An instance whose id is still running is an
	// error (ErrExists); the files of a stopped instance with the same id are
	// reused (its log and working directory survive a restart).
	Start(ctx context.Context, spec Spec) (Handle, error)
	// Recover re-adopts a running instance from its state on disk, typically
	// after the agent restarted. If the instance is gone (exited, or its pid
	// was reused) it removes what is left of it and returns an error that
	// matches ErrNotFound (a *GoneError when there was state to read).
	Recover(ctx context.Context, id string) (Handle, error)
	// List returns the ids of the instances that have state on disk, running
	// or not, sorted.
	List(ctx context.Context) ([]string, error)
	// Destroy kills an instance if it runs and removes everything it left
	// (state, logs, working directory, cgroup). Destroying an unknown id is
	// not an error.
	Destroy(ctx context.Context, id string) error
}

// Handle is a started or recovered instance. Its methods are safe for
// concurrent use.
type Handle interface {
	// ID is the instance id.
	ID() string
	// Pid is the host pid of the instance's top process (for the Process
	// driver, the shim: the instance's PID 1).
	Pid() int
	// Spec is the spec the instance was started with.
	Spec() Spec
	// StartedAt is when the instance started.
	StartedAt() time.Time
	// Done is closed once the instance has exited and its status is known.
	Done() <-chan struct{}
	// Wait blocks until the instance exits or ctx ends.
	Wait(ctx context.Context) (ExitStatus, error)
	// Signal delivers sig to the workload. A runtime may refuse signals it
	// cannot deliver (the Process driver forwards SIGTERM, SIGINT, SIGHUP,
	// SIGQUIT, SIGUSR1 and SIGUSR2; SIGKILL kills the whole instance).
	Signal(sig os.Signal) error
	// Stop sends SIGTERM, then SIGKILL if the instance is still running after
	// timeout, and waits for it to exit. It returns nil once the instance has
	// exited (whatever its status), and ctx's error if ctx ends first.
	Stop(ctx context.Context, timeout time.Duration) error
	// Stats samples the instance's CPU time and memory.
	Stats() (Stats, error)
	// LogPath is the instance's current log file; the previous one, when the
	// log was rotated, is LogPath()+".1". Lines are in the format read by
	// ParseLogLine.
	LogPath() string
	// Cleanup kills the instance if it still runs and removes everything it
	// left (as Driver.Destroy does). It is idempotent.
	Cleanup() error
}

// Spec says what to run.
type Spec struct {
	// ID names the instance: 1 to 128 characters of [A-Za-z0-9_.-],
	// starting with a letter or digit.
	ID string `json:"id"`
	// Image is an OCI image reference, for runtimes that run images. The
	// Process driver refuses it. For an image, Command replaces the
	// image's entrypoint (dropping its cmd), Args its cmd, Env is laid over
	// its environment, and WorkDir is a directory inside the container.
	Image string `json:"image,omitempty"`
	// Command is the program and its first arguments. A program without a
	// slash is looked up in the PATH of Env (or a default PATH); a relative
	// path with a slash is relative to the working directory.
	Command []string `json:"command"`
	// Args follow Command.
	Args []string `json:"args,omitempty"`
	// Env is the workload's whole environment, as KEY=VALUE entries.
	Env []string `json:"env,omitempty"`
	// WorkDir is the working directory, created if missing. Empty means a
	// directory the driver creates for the instance under its data dir
	// (kept across restarts of the same id, removed by Cleanup).
	WorkDir string `json:"work_dir,omitempty"`
	// Hostname is the instance's host name (its own UTS namespace). Empty
	// means the instance id, cut to 64 characters.
	Hostname string `json:"hostname,omitempty"`
	// MemoryMB limits the instance's memory (its shim included, a few MB,
	// for the Process driver); 0 means no limit.
	MemoryMB int `json:"memory_mb,omitempty"`
	// MilliCPU limits the instance's CPU time to this many thousandths of
	// a core (cgroup v1 CFS quota), for runtimes that enforce it (OCI); 0
	// means no limit.
	MilliCPU int `json:"millicpu,omitempty"`
	// ResolvConf, when set, is the content of /etc/resolv.conf inside the
	// instance.
	ResolvConf string `json:"resolv_conf,omitempty"`
	// LogMaxBytes bounds each log file; the log is rotated to one previous
	// file, so it takes at most twice this on disk. 0 means
	// DefaultLogMaxBytes.
	LogMaxBytes int64 `json:"log_max_bytes,omitempty"`
	// User, when set, runs the workload as this unprivileged user and
	// group (its shim stays root): it cannot read the agent's files or
	// other instances'. Its default working directory is then its own and
	// appears inside it at UserWorkDir.
	User *User `json:"user,omitempty"`
	// MountedWorkDir is where WorkDir appears inside the instance, when
	// the runtime mounts it elsewhere (set by the runtime, not by callers).
	MountedWorkDir string `json:"mounted_work_dir,omitempty"`
}

// User is an unprivileged user and group id to run a workload as.
type User struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

// UserWorkDir is where a workload run as a User finds its default working
// directory (a bind mount in its mount namespace: the agent's data
// directory, which holds it, is closed to the workload).
const UserWorkDir = "/run/meridian-work"

// DefaultLogMaxBytes is the log bound of a Spec that sets none.
const DefaultLogMaxBytes = 4 << 20

// MinLogMaxBytes is the smallest log bound a Spec may set.
const MinLogMaxBytes = 1024

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Validate checks the fields every runtime needs; the error names the field.
func (s Spec) Validate() error {
	if !idPattern.MatchString(s.ID) {
		return fmt.Errorf("spec.id: %q is not 1 to 128 characters of [A-Za-z0-9_.-] starting with a letter or digit", s.ID)
	}
	if len(s.Command) == 0 && s.Image == "" {
		return errors.New("spec.command: empty (and no spec.image)")
	}
	if len(s.Command) > 0 && s.Command[0] == "" {
		return errors.New("spec.command[0]: empty program name")
	}
	for i, e := range s.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsRune(e, 0) {
			return fmt.Errorf("spec.env[%d]: %q is not KEY=VALUE", i, e)
		}
	}
	if s.MemoryMB < 0 {
		return fmt.Errorf("spec.memory_mb: %d is negative", s.MemoryMB)
	}
	if s.MilliCPU < 0 {
		return fmt.Errorf("spec.millicpu: %d is negative", s.MilliCPU)
	}
	if s.LogMaxBytes != 0 && s.LogMaxBytes < MinLogMaxBytes {
		return fmt.Errorf("spec.log_max_bytes: %d is below the minimum of %d", s.LogMaxBytes, MinLogMaxBytes)
	}
	if len(s.Hostname) > 64 {
		return fmt.Errorf("spec.hostname: %q is longer than 64 characters", s.Hostname)
	}
	if s.WorkDir != "" && !strings.HasPrefix(s.WorkDir, "/") {
		return fmt.Errorf("spec.work_dir: %q is not an absolute path", s.WorkDir)
	}
	if s.User != nil && (s.User.UID == 0 || s.User.GID == 0) {
		return fmt.Errorf("spec.user: uid %d, gid %d: root is not an unprivileged user", s.User.UID, s.User.GID)
	}
	return nil
}

// ExitStatus says how an instance ended.
type ExitStatus struct {
	// Code is the exit code, or -1 when the workload was killed by a signal
	// or its status is unknown.
	Code int `json:"code"`
	// Signal is the signal that killed the workload, or 0.
	Signal syscall.Signal `json:"signal,omitempty"`
	// OOMKilled says the memory limit was hit and the kernel killed a
	// process of the instance.
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Unknown says the status could not be learned (the instance ended while
	// nobody watched and left no record).
	Unknown bool `json:"unknown,omitempty"`
	// ExitedAt is when the exit was seen.
	ExitedAt time.Time `json:"exited_at"`
}

// Success reports a zero exit code.
func (e ExitStatus) Success() bool { return !e.Unknown && e.Signal == 0 && e.Code == 0 }

// String is a short human reason: "exited with status 1", "killed by
// signal 9 (killed)", "killed: out of memory (killed by signal 9
// (killed))".
func (e ExitStatus) String() string {
	if e.OOMKilled {
		o := e
		o.OOMKilled = false
		return "killed: out of memory (" + o.String() + ")"
	}
	switch {
	case e.Unknown:
		return "exited with unknown status"
	case e.Signal != 0:
		return fmt.Sprintf("killed by signal %d (%v)", int(e.Signal), e.Signal)
	default:
		return fmt.Sprintf("exited with status %d", e.Code)
	}
}

// Stats is a sample of an instance's resource use.
type Stats struct {
	// CPUTime is the user plus system CPU time of the instance's processes,
	// including children they reaped.
	CPUTime time.Duration
	// MemoryRSS is the resident set size summed over the instance's
	// processes.
	MemoryRSS uint64
	// MemoryUsage is the cgroup's memory usage (RSS plus page cache), when
	// the instance has a cgroup; else 0.
	MemoryUsage uint64
	// MemoryLimit is the enforced memory limit in bytes, or 0.
	MemoryLimit uint64
	// Processes is the number of processes in the instance.
	Processes int
	// At is when the sample was taken.
	At time.Time
}

// ErrNotFound is matched by errors about instances that do not exist or
// are gone.
var ErrNotFound = errors.New("instance not found")

// ErrExists is matched by the error of starting an instance whose id still
// runs.
var ErrExists = errors.New("instance already running")

// GoneError is returned by Recover for an instance that had state on disk
// but no longer runs. It matches ErrNotFound.
type GoneError struct {
	// ID is the instance id.
	ID string
	// Reason says why it is considered gone.
	Reason string
	// Exit is the last exit status the instance recorded, if any.
	Exit *ExitStatus
}

// Error implements error.
func (e *GoneError) Error() string {
	s := fmt.Sprintf("instance %s is gone: %s", e.ID, e.Reason)
	if e.Exit != nil {
		s += " (" + e.Exit.String() + ")"
	}
	return s
}

// Unwrap makes a GoneError match ErrNotFound.
func (e *GoneError) Unwrap() error { return ErrNotFound }
