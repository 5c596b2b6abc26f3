package driver

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestCgroupLimitRaisedOverLeftover re-creates an instance's cgroup with a
// higher limit while an earlier run's cgroup (memory and memory+swap both
// bounded lower) is still there, as after an agent or dev restart.
func TestCgroupLimitRaisedOverLeftover(t *testing.T) {
	c := memCgroups{dir: filepath.Join(DefaultCgroupRoot, DefaultCgroupParent)}
	if err := c.probe(); err != nil {
		t.Logf("cgroup v1 memory is not writable here (%v): the driver runs without limits", err)
		if _, err := readCgroupUint(DefaultCgroupRoot, "memory.limit_in_bytes"); err == nil {
			t.Fatalf("the memory controller exists at %s but probe refused it", DefaultCgroupRoot)
		}
		return
	}
	id := "test-leftover-" + strconv.Itoa(os.Getpid())
	p, err := c.create(id, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(p) })
	if _, err := c.create(id, 256<<20); err != nil {
		t.Fatalf("raising the limit over a leftover cgroup: %v", err)
	}
	got, err := readCgroupUint(p, "memory.limit_in_bytes")
	if err != nil || got != 256<<20 {
		t.Fatalf("limit = %d, %v; want %d", got, err, 256<<20)
	}
}
