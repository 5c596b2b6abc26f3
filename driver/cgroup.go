package driver

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultCgroupRoot is where the cgroup v1 memory controller is mounted.
const DefaultCgroupRoot = "/sys/fs/cgroup/memory"

// DefaultCgroupParent is the cgroup, under the root, that holds one cgroup
// per instance.
const DefaultCgroupParent = "meridian"

// memCgroups manages cgroup v1 memory cgroups <root>/<parent>/<id>.
type memCgroups struct {
	dir string // <root>/<parent>
}

// probe makes sure the parent cgroup exists and can hold instance cgroups.
func (c memCgroups) probe() error {
	if _, err := os.Stat(filepath.Join(filepath.Dir(c.dir), "memory.limit_in_bytes")); err != nil {
		return fmt.Errorf("no cgroup v1 memory controller at %s: %w", filepath.Dir(c.dir), err)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", c.dir, err)
	}
	if err := syscall.Access(c.dir, 2 /* W_OK */); err != nil {
		return fmt.Errorf("cgroup %s is not writable: %w", c.dir, err)
	}
	return nil
}

func (c memCgroups) path(id string) string { return filepath.Join(c.dir, id) }

// create makes the instance's cgroup with a limit of limitBytes.
func (c memCgroups) create(id string, limitBytes uint64) (string, error) {
	p := c.path(id)
	if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create cgroup %s: %w", p, err)
	}
	v := []byte(strconv.FormatUint(limitBytes, 10))
	err := os.WriteFile(filepath.Join(p, "memory.limit_in_bytes"), v, 0)
	if errors.Is(err, syscall.EINVAL) {
		// A cgroup left by an earlier run of this instance may bound
		// memory+swap below the new limit, and the kernel keeps the memory
		// limit at most the memory+swap one: raise that first.
		_ = os.WriteFile(filepath.Join(p, "memory.memsw.limit_in_bytes"), v, 0)
		err = os.WriteFile(filepath.Join(p, "memory.limit_in_bytes"), v, 0)
	}
	if err != nil {
		_ = removeCgroup(p)
		return "", fmt.Errorf("set memory.limit_in_bytes of %s: %w", p, err)
	}
	// With swap accounting, also bound memory+swap so the limit cannot be
	// escaped by swapping. Absent without swap accounting: best effort.
	_ = os.WriteFile(filepath.Join(p, "memory.memsw.limit_in_bytes"), v, 0)
	return p, nil
}

// addProc moves pid into the cgroup at path.
func addProc(path string, pid int) error {
	if err := os.WriteFile(filepath.Join(path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, path, err)
	}
	return nil
}

// cgroupPids lists the pids in the cgroup at path.
func cgroupPids(path string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// readCgroupUint reads a one-number cgroup file.
func readCgroupUint(path, file string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(path, file))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
}

// oomKills returns the oom_kill counter of the cgroup's memory.oom_control.
func oomKills(path string) uint64 {
	b, err := os.ReadFile(filepath.Join(path, "memory.oom_control"))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// removeCgroup removes the cgroup at path, killing what is left in it and
// retrying while the kernel finishes tearing processes down.
func removeCgroup(path string) error {
	if path == "" {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", path, err)
		}
		pids, _ := cgroupPids(path)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
