package agent

import (
	"github.com/meridian-run/meridian/testutil"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/regionapi"
)

// TestServiceUIDs: each service gets its own id from the base, kept
// across a reload; ids are never handed to another service; a damaged
// file is an error, not a silent reshuffle.
func TestServiceUIDs(t *testing.T) {
	dir := t.TempDir()
	u, err := loadServiceUIDs(dir, 50000)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := u.user("acme.shop.web")
	b, _ := u.user("acme.shop.api")
	again, _ := u.user("acme.shop.web")
	if a.UID != 50001 || a.GID != 50001 || b.UID != 50002 || again.UID != 50001 {
		t.Fatalf("users %+v %+v %+v", a, b, again)
	}
	if id, ok := u.lookup("acme.shop.api"); !ok || id != 50002 {
		t.Fatalf("lookup of api: %d %v", id, ok)
	}
	if _, ok := u.lookup("acme.shop.none"); ok {
		t.Fatal("lookup allocated an id for a service that never asked")
	}
	u2, err := loadServiceUIDs(dir, 50000)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := u2.user("acme.shop.api"); c.UID != 50002 {
		t.Fatalf("after a reload api is %d, want 50002", c.UID)
	}
	if d, _ := u2.user("acme.shop.new"); d.UID != 50003 {
		t.Fatalf("a new service got %d, want 50003", d.UID)
	}
	if fi, err := os.Stat(filepath.Join(dir, "uids.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("uids.json: %v %v", fi, err)
	}
	os.WriteFile(filepath.Join(dir, "uids.json"), []byte("{garbage"), 0o600)
	if _, err := loadServiceUIDs(dir, 50000); err == nil || !strings.Contains(err.Error(), "uids.json") {
		t.Fatalf("a damaged file: %v", err)
	}
}

// uidOf reads a process's real user id.
func uidOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			uid, _ := strconv.Atoi(f[1])
			return uid
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return -1
}

// TestInstancesRunAsTheirServiceUser: with InstanceUIDBase, each service's
// instances run as the service's own unprivileged user (the shim stays
// root) and serve as usual.
func TestInstancesRunAsTheirServiceUser(t *testing.T) {
	testutil.Slow(t)
	r := newRegion(t, "fra")
	const base = 4100000
	ta := r.startAgent(t, "fra1-a", "fra1", func(c *Config) { c.InstanceUIDBase = base })
	web := r.apply(t, "web", 1, "dep-web", helloDef("fra", 1), nil)
	api := r.apply(t, "api", 1, "dep-api", helloDef("fra", 1), nil)
	uids := map[int]string{}
	for _, key := range []string{web, api} {
		ss := r.waitService(t, key, 30*time.Second, key+" healthy", func(ss regionapi.ServiceStatus) bool {
			return len(healthyInstances(ss)) == 1
		})
		is := healthyInstances(ss)[0]
		if h := get(t, is); h.Instance != is.ID {
			t.Fatalf("%s answered as %q", is.ID, h.Instance)
		}
		shim := ta.instancePID(is.ID)
		if shim == 0 || uidOf(t, shim) != 0 {
			t.Fatalf("%s: shim pid %d is not root's", is.ID, shim)
		}
		kids := children("/proc/" + strconv.Itoa(shim))
		if len(kids) != 1 {
			t.Fatalf("%s: the shim has children %v, want the workload", is.ID, kids)
		}
		uid := uidOf(t, kids[0])
		if uid <= base || uid > base+2 {
			t.Fatalf("%s runs as uid %d, want one of %d..%d", is.ID, uid, base+1, base+2)
		}
		if other, dup := uids[uid]; dup {
			t.Fatalf("%s and %s share uid %d", key, other, uid)
		}
		uids[uid] = key
	}
}
