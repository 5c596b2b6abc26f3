package agent

import (
	"github.com/meridian-run/meridian/testutil"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/regionapi"
)

// TestFailover runs a service of 2 instances on 2 machines in dc1 and 1 in
// dc2, then kills a dc1 machine (its instance is replaced in dc1), then the
// other dc1 machine (its instance is replaced in dc2).
func TestFailover(t *testing.T) {
	testutil.Slow(t)
	r := newRegion(t, "fra")
	agents := map[string]*testAgent{
		"m1": r.startAgent(t, "m1", "dc1", nil),
		"m2": r.startAgent(t, "m2", "dc1", nil),
		"m3": r.startAgent(t, "m3", "dc2", nil),
	}
	key := r.apply(t, "web", 1, "dep-1", helloDef("fra", 2,
		api.ResolvedEnv{Key: "GREETING", Value: "hi"}, api.ResolvedEnv{Key: "TOKEN", Secret: "api-token"}),
		map[string]string{"api-token": "s3cret"})

	// 2. The instances run, healthy, spread across the data centers, and
	// answer on their reported host ports.
	ss := r.waitService(t, key, 30*time.Second, "2 healthy instances", func(ss regionapi.ServiceStatus) bool {
		return len(healthyInstances(ss)) == 2
	})
	dcs := map[string]string{}
	for _, is := range healthyInstances(ss) {
		dcs[is.Datacenter] = is.Machine
		h := get(t, is)
		if h.Instance != is.ID || h.Machine != is.Machine || h.Datacenter != is.Datacenter || h.Region != "fra" ||
			h.App != "shop" || h.Service != "web" || h.Hostname != is.ID {
			t.Errorf("instance %s on %s answers %+v", is.ID, is.Machine, h)
		}
		if is.Address != "127.0.0.1" {
			t.Errorf("instance %s address %q", is.ID, is.Address)
		}
	}
	if len(dcs) != 2 {
		t.Fatalf("instances not spread across data centers: %s", describe(ss))
	}
	for _, a := range agents {
		for _, in := range a.Instances() {
			// The instance type's memory limit is enforced where cgroups allow.
			if p, ok := a.Driver().(*driver.Process); ok {
				on, why := p.MemoryLimits()
				if !on {
					t.Logf("memory limits not enforced here: %v", why)
				}
				if on {
					h, err := p.Recover(testutil.Context(t, 5*time.Second), in.ID)
					if err != nil {
						t.Fatal(err)
					}
					if st, err := h.Stats(); err != nil || st.MemoryLimit != 256<<20 {
						t.Errorf("instance %s memory limit %d, want 256 MiB (%v)", in.ID, st.MemoryLimit, err)
					}
				}
			}
			if in.State != regionapi.StateRunning || !in.Healthy || in.Ports["8080"] < a.cfg.PortMin || in.Ports["8080"] > a.cfg.PortMax {
				t.Errorf("agent %s: instance %+v", a.Machine(), in)
			}
		}
	}

	// 3. Kill the dc1 machine that runs an instance: the region replaces it
	// on the other dc1 machine once the lease expires.
	victim := dcs["dc1"]
	other := map[string]string{"m1": "m2", "m2": "m1"}[victim]
	died := time.Now()
	agents[victim].kill()
	ss = r.waitService(t, key, 30*time.Second, "replacement healthy in dc1", func(ss regionapi.ServiceStatus) bool {
		h := healthyInstances(ss)
		return len(h) == 2 && (h[0].Machine == other || h[1].Machine == other)
	})
	t.Logf("machine death to replacement healthy (lease TTL 2s): %.2fs", time.Since(died).Seconds())
	for _, is := range healthyInstances(ss) {
		if is.Machine == victim {
			t.Errorf("instance %s still counted healthy on dead machine %s", is.ID, victim)
		}
		if h := get(t, is); h.Instance != is.ID {
			t.Errorf("instance %s answers as %s", is.ID, h.Instance)
		}
	}

	// 4. Kill the other dc1 machine: its instance moves to dc2.
	died = time.Now()
	agents[other].kill()
	ss = r.waitService(t, key, 30*time.Second, "both instances healthy in dc2", func(ss regionapi.ServiceStatus) bool {
		h := healthyInstances(ss)
		return len(h) == 2 && h[0].Datacenter == "dc2" && h[1].Datacenter == "dc2"
	})
	t.Logf("data center death to replacement healthy in the other data center (lease TTL 2s): %.2fs", time.Since(died).Seconds())
	h := healthyInstances(ss)
	if h[0].Ports["8080"] == h[1].Ports["8080"] {
		t.Errorf("two instances on one machine share host port %d", h[0].Ports["8080"])
	}
	for _, is := range h {
		if a := get(t, is); a.Instance != is.ID || a.Machine != "m3" {
			t.Errorf("instance %s answers %+v", is.ID, a)
		}
	}
	if n := len(agents["m3"].Instances()); n != 2 {
		t.Errorf("m3 runs %d instances, want 2: %+v", n, agents["m3"].Instances())
	}
}
