package agent

import (
	"context"
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
)

// events records the instance changes agents announce through OnInstance.
type events struct {
	mu  sync.Mutex
	log []event
}

type event struct {
	machine string
	Instance
}

func (e *events) hook(machine string) func(Instance) {
	return func(in Instance) {
		e.mu.Lock()
		e.log = append(e.log, event{machine, in})
		e.mu.Unlock()
	}
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Sprint(e.log)
}

func (e *events) of(id string) []event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []event
	for _, ev := range e.log {
		if ev.ID == id {
			out = append(out, ev)
		}
	}
	return out
}

// firstFailed returns the first instance that was reported failed.
func (e *events) firstFailed() (event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.log {
		if ev.State == regionapi.StateFailed {
			return ev, true
		}
	}
	return event{}, false
}

// TestCrashLoop: an instance that exits at once is restarted up to its
// restart limit, then reported failed, then replaced by the region on the
// other machine.
func TestCrashLoop(t *testing.T) {
	testutil.Slow(t)
	r := newRegion(t, "fra")
	var ev events
	agents := map[string]*testAgent{}
	for _, m := range []string{"m1", "m2"} {
		agents[m] = r.startAgent(t, m, "dc1", func(c *Config) { c.OnInstance = ev.hook(m) })
	}
	limit := 2
	def := helloDef("fra", 1)
	def.Command = []string{"/bin/sh", "-c", "exit 1"}
	def.HealthChecks = []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, Interval: "300ms", RestartLimit: &limit}}
	key := r.apply(t, "crash", 1, "dep-crash", def, nil)

	var failed event
	testutil.Eventually(t, 30*time.Second, "an instance reported failed", func() (bool, string) {
		var ok bool
		failed, ok = ev.firstFailed()
		return ok, ev.String()
	})
	var restarts []int
	for _, e := range ev.of(failed.ID) {
		if e.State == regionapi.StateRestarting {
			restarts = append(restarts, e.Restarts)
			if e.Message != "exited with status 1" {
				t.Errorf("restarting because %q", e.Message)
			}
		}
	}
	if !slices.Equal(restarts, []int{1, 2}) {
		t.Errorf("restarts before failing: %v, want [1 2]", restarts)
	}
	if failed.Restarts != 2 || failed.Message != "exited with status 1" {
		t.Errorf("failed as %+v", failed.Instance)
	}

	// The region replaces it, on the other machine.
	r.waitService(t, key, 30*time.Second, "failed instance replaced on the other machine", func(ss regionapi.ServiceStatus) bool {
		gone, elsewhere := true, false
		for _, is := range ss.Instances {
			if is.ID == failed.ID {
				gone = false
			} else if is.Machine != failed.machine {
				elsewhere = true
			}
		}
		return gone && elsewhere
	})
	// Its machine cleans it up.
	a := agents[failed.machine]
	testutil.Eventually(t, 10*time.Second, "failed instance removed from its machine", func() (bool, string) {
		listed, _ := a.Driver().List(context.Background())
		has := slices.ContainsFunc(a.Instances(), func(in Instance) bool { return in.ID == failed.ID })
		return !has && !slices.Contains(listed, failed.ID), fmt.Sprintf("instances %v, driver %v", a.Instances(), listed)
	})
}

// TestUnhealthyReason: an instance failing its HTTP check is restarted with
// the check named by its declared port.
func TestUnhealthyReason(t *testing.T) {
	testutil.Slow(t)
	r := newRegion(t, "fra")
	var ev events
	r.startAgent(t, "m1", "dc1", func(c *Config) { c.OnInstance = ev.hook("m1") })
	limit := 5
	def := helloDef("fra", 1, api.ResolvedEnv{Key: "HEALTHY", Value: "false"})
	def.HealthChecks[0].RestartLimit = &limit
	r.apply(t, "sick", 1, "dep-sick", def, nil)
	want := "health check http :8080/healthz: status 500"
	testutil.Eventually(t, 30*time.Second, "restart reason "+want, func() (bool, string) {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		for _, e := range ev.log {
			if e.State == regionapi.StateRestarting && e.Message == want {
				return true, ""
			}
		}
		return false, fmt.Sprint(len(ev.log), " events")
	})
}

// TestAgentRestart: an agent closed without stopping its instances and
// started again on the same DataDir re-adopts them: same ids, same pids,
// same ports, no duplicates.
func TestAgentRestart(t *testing.T) {
	testutil.Slow(t)
	r := newRegion(t, "fra")
	a := r.startAgent(t, "m1", "dc1", nil)
	key := r.apply(t, "web", 1, "dep-1", helloDef("fra", 2), nil)
	ss := r.waitService(t, key, 30*time.Second, "2 healthy instances", func(ss regionapi.ServiceStatus) bool {
		return len(healthyInstances(ss)) == 2
	})
	before := a.Instances()
	wantIDs := ids(healthyInstances(ss))

	// A second agent on the same DataDir is refused while the first runs.
	dup := a.cfg
	dup.JoinToken = ""
	if b, err := Start(testutil.Context(t, 10*time.Second), dup); err == nil {
		b.Close()
		t.Fatal("a second agent started on the same DataDir")
	} else if !strings.Contains(err.Error(), "in use by another agent") {
		t.Errorf("second agent: %v", err)
	}

	a.Close()
	for _, in := range before {
		if n := shims(t)[in.ID]; n != 1 {
			t.Fatalf("instance %s has %d shim processes after the agent closed, want 1", in.ID, n)
		}
	}

	cfg := a.cfg
	cfg.JoinToken = ""
	b := startWith(t, cfg)
	testutil.Eventually(t, 20*time.Second, "instances re-adopted and healthy", func() (bool, string) {
		after := b.Instances()
		if len(after) != len(before) {
			return false, fmt.Sprint(after)
		}
		for i, in := range after {
			if !in.Adopted || !in.Healthy || in.State != regionapi.StateRunning {
				return false, fmt.Sprint(after)
			}
			if in.ID != before[i].ID || in.Pid != before[i].Pid || in.Ports["8080"] != before[i].Ports["8080"] {
				t.Fatalf("re-adopted %+v, was %+v", in, before[i])
			}
		}
		return true, ""
	})
	listed, err := b.Driver().List(testutil.Context(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(listed, wantIDs) {
		t.Errorf("driver lists %v, want %v", listed, wantIDs)
	}
	sh := shims(t)
	for _, id := range wantIDs {
		if sh[id] != 1 {
			t.Errorf("instance %s has %d shim processes, want 1", id, sh[id])
		}
	}
	ss = r.waitService(t, key, 10*time.Second, "same 2 instances healthy", func(ss regionapi.ServiceStatus) bool {
		return slices.Equal(ids(healthyInstances(ss)), wantIDs) && len(ss.Instances) == 2
	})
	for _, is := range healthyInstances(ss) {
		if h := get(t, is); h.Instance != is.ID {
			t.Errorf("instance %s answers as %s", is.ID, h.Instance)
		}
	}

	// While the agent was away an instance was deleted by the region: the
	// next agent stops it instead of adopting it for good.
	b.Close()
	if err := r.global.DeleteService(testutil.Context(t, 5*time.Second), key, 2); err != nil {
		t.Fatal(err)
	}
	r.waitService(t, key, 10*time.Second, "service deleted", func(ss regionapi.ServiceStatus) bool {
		return ss.Phase == regionapi.PhaseDeleted
	})
	c := startWith(t, cfg)
	testutil.Eventually(t, 20*time.Second, "stale instances stopped", func() (bool, string) {
		listed, _ := c.Driver().List(context.Background())
		sh := shims(t)
		n := 0
		for _, id := range wantIDs {
			n += sh[id]
		}
		return len(c.Instances()) == 0 && len(listed) == 0 && n == 0, fmt.Sprintf("instances %v, driver %v, shims %d", c.Instances(), listed, n)
	})
}

// TestComeBack: a machine cut off from its region keeps its instance
// running; the region replaces it on another machine; when the link comes
// back the machine stops its stale instance. The link fails by resets, or
// by going silent (a blackhole: the agent's watchdog and request timeouts
// must notice).
func TestComeBack(t *testing.T) {
	testutil.Slow(t)
	t.Run("reset", func(t *testing.T) { testComeBack(t, (*linkProxy).cut) })
	t.Run("blackhole", func(t *testing.T) { testComeBack(t, (*linkProxy).blackhole) })
}

func testComeBack(t *testing.T, partition func(*linkProxy)) {
	r := newRegion(t, "fra")
	link := newLinkProxy(t, r.srv.Addr())
	a := r.startAgent(t, "m1", "dc1", func(c *Config) {
		c.RegionURLs = []string{link.URL()}
		c.RequestTimeout = time.Second
		c.WatchIdleTimeout = 3 * time.Second
	})
	key := r.apply(t, "web", 1, "dep-1", helloDef("fra", 1), nil)
	ss := r.waitService(t, key, 30*time.Second, "healthy on m1", func(ss regionapi.ServiceStatus) bool {
		h := healthyInstances(ss)
		return len(h) == 1 && h[0].Machine == "m1"
	})
	stale := healthyInstances(ss)[0]
	b := r.startAgent(t, "m2", "dc1", nil)

	partition(link)
	r.waitService(t, key, 30*time.Second, "replaced on m2", func(ss regionapi.ServiceStatus) bool {
		h := healthyInstances(ss)
		return len(h) == 1 && h[0].Machine == "m2"
	})
	// Cut off, m1 keeps serving.
	if h := get(t, stale); h.Instance != stale.ID {
		t.Errorf("stale instance answers as %s", h.Instance)
	}
	if in := a.Instances(); len(in) != 1 || in[0].ID != stale.ID || in[0].State != regionapi.StateRunning {
		t.Errorf("m1 while cut off: %+v", in)
	}

	link.restore()
	testutil.Eventually(t, 30*time.Second, "m1 stops its stale instance", func() (bool, string) {
		listed, _ := a.Driver().List(context.Background())
		return len(a.Instances()) == 0 && len(listed) == 0 && shims(t)[stale.ID] == 0,
			fmt.Sprintf("instances %v, driver %v", a.Instances(), listed)
	})
	ss = r.waitService(t, key, 10*time.Second, "one instance left", func(ss regionapi.ServiceStatus) bool {
		return len(ss.Instances) == 1 && len(healthyInstances(ss)) == 1
	})
	if in := b.Instances(); len(in) != 1 || in[0].ID != ss.Instances[0].ID {
		t.Errorf("m2 runs %+v, region has %s", in, describe(ss))
	}
	if !strings.HasPrefix(ss.Instances[0].ID, "fra-") {
		t.Errorf("instance id %q", ss.Instances[0].ID)
	}
}
