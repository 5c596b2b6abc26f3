package driver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/meridian-run/meridian/image/runnable"
)

// dockerCapabilities is Docker's default capability set, less CAP_NET_RAW:
// instances share the host's network namespace, where raw sockets would let
// one read and forge the machine's traffic.
var dockerCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// Paths Docker masks and makes read-only in every container.
var (
	maskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
		"/sys/devices/virtual/powercap"}
	readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// imageArgs applies Docker's rules (as Kubernetes states them for command
// and args): the spec's Command replaces the image's entrypoint and drops
// its cmd; the spec's Args replace the image's cmd.
func imageArgs(spec Spec, cfg runnable.Config) []string {
	if len(spec.Command) > 0 {
		return slices.Concat(spec.Command, spec.Args)
	}
	if len(spec.Args) > 0 {
		return slices.Concat(cfg.Entrypoint, spec.Args)
	}
	return slices.Concat(cfg.Entrypoint, cfg.Cmd)
}

// imageEnv is the image's environment with the spec's on top (same key:
// the spec's wins), PATH defaulted as Docker does, HOME from the user's
// passwd entry and HOSTNAME the instance's host name when unset.
func imageEnv(spec Spec, cfg runnable.Config, home string) []string {
	var keys []string
	vals := map[string]string{}
	set := func(e string) {
		k, v, _ := strings.Cut(e, "=")
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = v
	}
	for _, e := range cfg.Env {
		if k, _, ok := strings.Cut(e, "="); ok && k != "" {
			set(e)
		}
	}
	for _, e := range spec.Env {
		set(e)
	}
	for _, d := range []struct{ k, v string }{{"PATH", defaultPath}, {"HOSTNAME", spec.Hostname}, {"HOME", home}} {
		if _, ok := vals[d.k]; !ok {
			set(d.k + "=" + d.v)
		}
	}
	env := make([]string, 0, len(keys))
	for _, k := range keys {
		env = append(env, k+"="+vals[k])
	}
	return env
}

// imageUser resolves the user the workload runs as: the spec's (the
// agent's per-service user) when set, else the image's USER, by name or
// number, looked up in the image's /etc/passwd and /etc/group (opened
// inside the root filesystem, symlinks resolved within it).
func imageUser(spec Spec, cfg runnable.Config, rootfs string) (specs.User, string, error) {
	if spec.User != nil {
		return specs.User{UID: spec.User.UID, GID: spec.User.GID}, "/", nil
	}
	passwd, perr := openInRoot(rootfs, "/etc/passwd")
	if perr == nil {
		defer passwd.Close()
	}
	group, gerr := openInRoot(rootfs, "/etc/group")
	if gerr == nil {
		defer group.Close()
	}
	var pr, gr io.Reader
	if passwd != nil {
		pr = io.LimitReader(passwd, 1<<20)
	}
	if group != nil {
		gr = io.LimitReader(group, 1<<20)
	}
	u, err := user.GetExecUser(cfg.User, &user.ExecUser{Uid: 0, Gid: 0, Home: "/"}, pr, gr)
	if err != nil {
		return specs.User{}, "", fmt.Errorf("image user %q: %w", cfg.User, err)
	}
	su := specs.User{UID: uint32(u.Uid), GID: uint32(u.Gid)}
	for _, g := range u.Sgids {
		if uint32(g) != su.GID {
			su.AdditionalGids = append(su.AdditionalGids, uint32(g))
		}
	}
	return su, u.Home, nil
}

// openInRoot opens a file of a root filesystem for reading, resolving
// symlinks as if root were "/" (a link cannot lead out of it).
func openInRoot(root, path string) (*os.File, error) {
	h, err := pathrs.OpenInRoot(root, path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC)
}

// ociFiles are the files an instance directory gives the container.
type ociFiles struct {
	rootfs, resolv, hosts, hostname string
}

// ociRuntimeSpec builds the OCI runtime config of an instance of img.
func (d *OCI) ociRuntimeSpec(spec Spec, cfg runnable.Config, lowerRootfs string, f ociFiles) (*specs.Spec, error) {
	args := imageArgs(spec, cfg)
	if len(args) == 0 {
		return nil, errors.New("spec.command: empty, and the image sets no entrypoint or cmd")
	}
	usr, home, err := imageUser(spec, cfg, lowerRootfs)
	if err != nil {
		return nil, err
	}
	cwd := spec.WorkDir
	if cwd == "" {
		cwd = cfg.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	if !strings.HasPrefix(cwd, "/") {
		return nil, fmt.Errorf("image working directory %q is not absolute", cwd)
	}
	caps := &specs.LinuxCapabilities{Bounding: dockerCapabilities}
	if usr.UID == 0 {
		caps.Effective, caps.Permitted = dockerCapabilities, dockerCapabilities
	}
	var nofile unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		return nil, fmt.Errorf("getrlimit: %w", err)
	}
	s := &specs.Spec{
		Version:  specs.Version,
		Hostname: spec.Hostname,
		Root:     &specs.Root{Path: f.rootfs},
		Process: &specs.Process{
			Args: args, Env: imageEnv(spec, cfg, home), Cwd: cwd, User: usr,
			Capabilities:    caps,
			NoNewPrivileges: true,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: nofile.Max, Soft: nofile.Cur}},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: f.resolv, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
			{Destination: "/etc/hosts", Type: "bind", Source: f.hosts, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
			{Destination: "/etc/hostname", Type: "bind", Source: f.hostname, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.IPCNamespace}},
			CgroupsPath:   "/" + d.cfg.CgroupParent + "/" + spec.ID,
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Pids:    &specs.LinuxPids{Limit: &d.cfg.PidsLimit},
			},
		},
	}
	res := s.Linux.Resources
	if spec.MemoryMB > 0 {
		limit := int64(spec.MemoryMB) << 20
		res.Memory = &specs.LinuxMemory{Limit: &limit}
		if d.swapAccounting {
			res.Memory.Swap = &limit // no swap beyond the limit
		}
	}
	if spec.MilliCPU > 0 {
		period := uint64(100_000)
		quota := int64(spec.MilliCPU) * 100 // µs per period of 100 ms
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	return s, nil
}
