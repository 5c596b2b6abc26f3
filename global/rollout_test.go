package global

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/testutil"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
	"github.com/meridian-run/meridian/store/storetest"
)

// TestRollouts runs the rollout behaviours against one shared topology:
// three real regions (embedded etcd), one real agent each running the demo
// app as real processes, and real global control planes on SQLite and
// PostgreSQL reaching the regions over mutual TLS through link proxies.
// Each subtest has its own global, store and organization (so its own
// service keys in the regions), sets up the deployments it starts from,
// and deletes its services when it ends: one failing does not fail the
// next.
func TestRollouts(t *testing.T) {
	testutil.Slow(t)
	tp := newTopology(t, "fra", "was", "sin")
	all := []string{"fra", "was", "sin"}
	ctx := context.Background()

	t.Run("RegionLifecycle", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "lifecycle", false)
		// Not open yet: deploys naming the regions are refused.
		_, err := env.org.Deploy(ctx, "shop", helloDoc{name: "hello", regions: all, version: "v0"}.yaml(), "application/yaml", "")
		ae := mustStatus(t, err, 400)
		if !strings.Contains(ae.Error(), `regions[0]: region "fra" is not open (status provisioning)`) {
			t.Fatalf("deploy to a provisioning region: %v", ae)
		}
		// A failing smoke test leaves the region provisioning, with why.
		badCfg := rolloutConfig(t, env.st, tp, "g-bad-smoke", env.rec)
		zero := 0
		badCfg.SmokeDefinition = &api.Definition{Command: []string{"/bin/sh", "-c", "exit 3"}, Ports: []api.Port{{Port: 8080}},
			HealthChecks: []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, Interval: "300ms", Timeout: "200ms", RestartLimit: &zero}}}
		bad := startGlobal(t, badCfg)
		r, err := api.NewClient(bad.URL(), testAdminToken).TestRegion(ctx, "fra")
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != api.RegionProvisioning || !strings.Contains(r.Message, "smoke test failed") || !strings.Contains(r.Message, "exited with status 3") {
			t.Fatalf("failed smoke test: region %s %q", r.Status, r.Message)
		}
		bad.Close()
		// Passing smoke tests open the regions, and delete the smoke service.
		for _, name := range all {
			r, err := env.admin.TestRegion(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != api.RegionOpen || r.Message != "" {
				t.Fatalf("smoke test of %s: %s %q", name, r.Status, r.Message)
			}
		}
		for _, name := range all {
			testutil.Eventually(t, 20*time.Second, "smoke service deleted in "+name, func() (bool, string) {
				ss, err := tp.status(t, name, "meridian-system.smoke."+name)
				return err == nil && ss.Phase == regionapi.PhaseDeleted, fmt.Sprint(ss, err)
			})
		}
		_, err = env.org.TestRegion(ctx, "fra")
		mustStatus(t, err, 403)
	})

	t.Run("DeployToThreeRegions", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "deploy", true)
		doc := helloDoc{name: "hello", regions: all, version: "v1", base: 2, counts: map[string]int{"was": 3},
			strategy: "{canary_regions: [fra], max_parallel_regions: 1, health_deadline: 30s}"}
		v1 := env.deploy(doc, api.StatusHealthy)
		for _, rd := range v1.Regional {
			if rd.Status != api.StatusHealthy || rd.StartedAt == nil || rd.Generation < 1 {
				t.Fatalf("v1 in %s: %+v", rd.Region, rd)
			}
		}
		// The canary went first, then one region at a time.
		var order []string
		for _, e := range v1.Events {
			if e.Type == api.EventApplying {
				order = append(order, e.Region)
			}
			if e.Type == api.EventApplying && e.Region != "fra" && !hasEvent(v1, "fra", api.EventHealthy) {
				t.Fatalf("%s started before the canary was healthy:\n%s", e.Region, describe(v1))
			}
		}
		if strings.Join(order, ",") != "fra,was,sin" {
			t.Fatalf("rollout order %v", order)
		}
		want := map[string]int{"fra": 2, "was": 3, "sin": 2}
		for name, n := range want {
			ss := tp.onDeployment(t, name, env.key("hello"), v1.ID, 10*time.Second)
			if ss.Healthy != n {
				t.Fatalf("%s: %d healthy, want %d", name, ss.Healthy, n)
			}
			serves(t, ss, v1.ID, "v1")
		}
		// The instance lists ask every region.
		list, err := env.org.ListInstances(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, in := range list.Items {
			if in.Service == "hello" && in.DeploymentID == v1.ID && in.Health == api.HealthHealthy && in.Version == 1 &&
				in.State == regionapi.StateRunning && in.Machine == in.Region+"1-a" && in.Datacenter == in.Region+"1" && in.App == "shop" {
				got[in.Region]++
			}
		}
		if !maps.Equal(got, want) || len(list.Unreachable) != 0 {
			t.Fatalf("instances per region %v (unreachable %v), want %v: %+v", got, list.Unreachable, want, list.Items)
		}
		svcList, err := env.org.ServiceInstances(ctx, "shop", "hello")
		if err != nil || len(svcList.Items) != 7 {
			t.Fatalf("service instances: %d, %v", len(svcList.Items), err)
		}
		other := env.h.newOrg("initech")
		mine, err := other.ListInstances(ctx)
		if err != nil || len(mine.Items) != 0 {
			t.Fatalf("another organization sees %d instances (%v)", len(mine.Items), err)
		}
		if n := env.rec.checkOnce(t); n == 0 {
			t.Fatal("no apply was answered")
		}
	})

	t.Run("FailLocal", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "faillocal", true)
		v1 := env.deploy(helloDoc{name: "hello", regions: all, version: "v1", strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		doc := helloDoc{name: "hello", regions: all, version: "v2", base: 2, sick: []string{"sin"},
			strategy: "{on_failure: fail_local, health_deadline: 30s}"}
		v2 := env.deploy(doc, api.StatusDegraded)
		st := perRegion(v2)
		if st["fra"] != api.StatusHealthy || st["was"] != api.StatusHealthy || st["sin"] != api.StatusFailed {
			t.Fatalf("v2: %s", describe(v2))
		}
		if !hasEvent(v2, "sin", api.EventFailed, "instance", "health check http :8080/healthz: status 500") {
			t.Fatalf("no event names the failing instance and its check:\n%s", describe(v2))
		}
		if !hasEvent(v2, "sin", api.EventReverted, "version 1") || !strings.Contains(v2.Message, "sin") {
			t.Fatalf("sin not reported reverted to version 1:\n%s", describe(v2))
		}
		key := env.key("hello")
		serves(t, tp.onDeployment(t, "sin", key, v1.ID, 20*time.Second), v1.ID, "v1")
		for _, name := range []string{"fra", "was"} {
			serves(t, tp.onDeployment(t, name, key, v2.ID, 10*time.Second), v2.ID, "v2")
		}
	})

	t.Run("RollbackAll", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "rollback", true)
		v1 := env.deploy(helloDoc{name: "hello", regions: all, version: "v1", strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		doc := helloDoc{name: "hello", regions: all, version: "v2", base: 2, sick: []string{"was"},
			strategy: "{on_failure: rollback_all, health_deadline: 30s}"}
		v2 := env.deploy(doc, api.StatusError)
		st := perRegion(v2)
		if st["was"] != api.StatusFailed || st["fra"] != api.StatusRolledBack || st["sin"] != api.StatusRolledBack {
			t.Fatalf("v2: %s", describe(v2))
		}
		if !strings.Contains(v2.Message, "rolled back") || !strings.Contains(v2.Message, "was") {
			t.Fatalf("v2 message %q does not give the reason", v2.Message)
		}
		// Every region is back on its previous healthy deployment.
		for _, name := range all {
			serves(t, tp.onDeployment(t, name, env.key("hello"), v1.ID, 20*time.Second), v1.ID, "v1")
		}
	})

	t.Run("CanaryFailureStopsTheRollout", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "canary", true)
		v1 := env.deploy(helloDoc{name: "hello", regions: all, version: "v1", strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		doc := helloDoc{name: "hello", regions: all, version: "v2", base: 2, sick: []string{"fra"},
			strategy: "{canary_regions: [fra], max_parallel_regions: 1, health_deadline: 30s}"}
		v2 := env.deploy(doc, api.StatusError)
		st := perRegion(v2)
		if st["fra"] != api.StatusFailed || st["was"] != api.StatusCanceled || st["sin"] != api.StatusCanceled {
			t.Fatalf("v2: %s", describe(v2))
		}
		if !hasEvent(v2, "was", api.EventCanceled, "canary region fra failed") {
			t.Fatalf("was not canceled for the canary:\n%s", describe(v2))
		}
		for _, op := range env.ops(store.OpFilter{DeploymentID: v2.ID}) {
			if op.Region != "fra" {
				t.Fatalf("an operation reached %s after the canary failed: %+v", op.Region, op)
			}
		}
		serves(t, tp.onDeployment(t, "fra", env.key("hello"), v1.ID, 20*time.Second), v1.ID, "v1")
		serves(t, tp.onDeployment(t, "was", env.key("hello"), v1.ID, 5*time.Second), v1.ID, "v1")
	})

	t.Run("Cancel", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "cancel", true)
		v1 := env.deploy(helloDoc{name: "hello", regions: all, version: "v1", strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		doc := helloDoc{name: "hello", regions: all, version: "v2", base: 2, sick: all, limit: 100,
			strategy: "{max_parallel_regions: 1, health_deadline: 60s}"}
		v2, err := env.org.Deploy(ctx, "shop", doc.yaml(), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, "v2 progressing in fra", func() (bool, string) {
			d, err := env.org.GetDeployment(ctx, v2.ID)
			return err == nil && perRegion(d)["fra"] == api.StatusProgressing, describe(d)
		})
		c, err := env.org.CancelDeployment(ctx, v2.ID)
		if err != nil {
			t.Fatal(err)
		}
		st := perRegion(c)
		if c.Status != api.StatusCanceled || st["fra"] != api.StatusCanceled || st["was"] != api.StatusCanceled || st["sin"] != api.StatusCanceled {
			t.Fatalf("canceled: %s", describe(c))
		}
		waitDeployment(t, env.org, v2.ID, 20*time.Second)
		testutil.Eventually(t, 20*time.Second, "v2 done reverting", func() (bool, string) {
			d, err := env.org.GetDeployment(ctx, v2.ID)
			return err == nil && hasEvent(d, "fra", api.EventReverted, "version 1") && hasEvent(d, "", api.EventFinished), describe(d)
		})
		serves(t, tp.onDeployment(t, "fra", env.key("hello"), v1.ID, 20*time.Second), v1.ID, "v1")
		_, err = env.org.CancelDeployment(ctx, v2.ID)
		if ae := mustStatus(t, err, 409); !strings.Contains(ae.Message, "already canceled") {
			t.Fatalf("cancel twice: %v", ae)
		}
		_, err = env.org.CancelDeployment(ctx, v1.ID)
		if ae := mustStatus(t, err, 409); !strings.Contains(ae.Message, "already finished as HEALTHY") {
			t.Fatalf("cancel of a finished deployment: %v", ae)
		}
	})

	t.Run("NewDeploymentSupersedes", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "supersede", true)
		slow := helloDoc{name: "hello", regions: all, version: "v1", base: 2, sick: all, limit: 100,
			strategy: "{health_deadline: 60s}"}
		v1, err := env.org.Deploy(ctx, "shop", slow.yaml(), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, "v1 progressing", func() (bool, string) {
			d, err := env.org.GetDeployment(ctx, v1.ID)
			return err == nil && perRegion(d)["fra"] == api.StatusProgressing, describe(d)
		})
		good := helloDoc{name: "hello", regions: all, version: "v2", base: 2, strategy: "{health_deadline: 30s}"}
		v2, err := env.org.Deploy(ctx, "shop", good.yaml(), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		old, err := env.org.GetDeployment(ctx, v1.ID)
		if err != nil {
			t.Fatal(err)
		}
		if old.Status != api.StatusSuperseded || !strings.Contains(old.Message, "superseded by version 2") || !hasEvent(old, "", api.EventSuperseded) {
			t.Fatalf("v1 after v2: %s", describe(old))
		}
		if v2 = waitDeployment(t, env.org, v2.ID, 60*time.Second); v2.Status != api.StatusHealthy {
			t.Fatalf("v2: %s", describe(v2))
		}
		for _, name := range all {
			serves(t, tp.onDeployment(t, name, env.key("hello"), v2.ID, 10*time.Second), v2.ID, "v2")
		}
		// The superseded deployment stopped driving: its status stays.
		old, _ = env.org.GetDeployment(ctx, v1.ID)
		if old.Status != api.StatusSuperseded {
			t.Fatalf("v1 changed after being superseded: %s", describe(old))
		}
	})

	t.Run("DeleteCatchesUpWithARegionThatWasDown", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "catchup", true)
		env.deploy(helloDoc{name: "tmp", regions: []string{"fra", "sin"}, version: "t1", strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		tp.links["sin"].Partition()
		defer tp.links["sin"].Heal()
		// Instance lists answer without the region that is down.
		list, err := env.org.ListInstances(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Unreachable) != 1 || list.Unreachable[0].Region != "sin" || len(list.Items) == 0 {
			t.Fatalf("instances with sin down: %d items, unreachable %+v", len(list.Items), list.Unreachable)
		}
		for _, in := range list.Items {
			if in.Region == "sin" {
				t.Fatalf("an instance of the unreachable region was listed: %+v", in)
			}
		}
		if err := env.org.DeleteService(ctx, "shop", "tmp"); err != nil {
			t.Fatal(err)
		}
		tkey := env.key("tmp")
		testutil.Eventually(t, 20*time.Second, "tmp deleted in fra", func() (bool, string) {
			ss, err := tp.status(t, "fra", tkey)
			return err == nil && ss.Phase == regionapi.PhaseDeleted, fmt.Sprint(ss, err)
		})
		var pending store.RegionOp
		testutil.Eventually(t, 20*time.Second, "the deletion in sin retried", func() (bool, string) {
			ops := env.ops(store.OpFilter{ServiceKey: tkey, Region: "sin", State: store.OpPending})
			if len(ops) == 1 && ops[0].Kind == store.OpDelete && ops[0].Attempts >= 2 {
				pending = ops[0]
				return true, ""
			}
			return false, fmt.Sprint(ops)
		})
		if ss, err := tp.status(t, "sin", tkey); err != nil || ss.Phase != regionapi.PhaseHealthy {
			t.Fatalf("sin changed while unreachable: %+v %v", ss, err)
		}
		tp.links["sin"].Heal()
		testutil.Eventually(t, 30*time.Second, "sin caught up with the deletion", func() (bool, string) {
			ss, err := tp.status(t, "sin", tkey)
			return err == nil && ss.Phase == regionapi.PhaseDeleted && ss.Generation == pending.Generation, fmt.Sprint(ss, err)
		})
		testutil.Eventually(t, 10*time.Second, "the deletion settled", func() (bool, string) {
			var op store.RegionOp
			env.st.View(ctx, func(tx store.Tx) (err error) {
				op, err = tx.GetRegionOp(ctx, pending.ID)
				return err
			})
			return op.State == store.OpDone, op.State
		})
		_, err = env.org.GetService(ctx, "shop", "tmp")
		mustStatus(t, err, 404)
	})

	t.Run("RedeployWithoutARegionStopsItThere", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "redeploy", true)
		env.deploy(helloDoc{name: "hello", regions: all, version: "v1", strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		v2 := env.deploy(helloDoc{name: "hello", regions: []string{"fra", "was"}, version: "v2", base: 2, strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		testutil.Eventually(t, 20*time.Second, "hello stopped in sin", func() (bool, string) {
			ss, err := tp.status(t, "sin", env.key("hello"))
			return err == nil && ss.Phase == regionapi.PhaseDeleted, fmt.Sprint(ss, err)
		})
		d, _ := env.org.GetDeployment(ctx, v2.ID)
		if !hasEvent(d, "sin", api.EventRemoved) {
			t.Fatalf("no removal event:\n%s", describe(d))
		}
	})

	t.Run("Drain", func(t *testing.T) {
		env := newRolloutEnv(t, tp, "drain", true)
		env.deploy(helloDoc{name: "hello", regions: all, version: "v1", base: 2, strategy: "{health_deadline: 30s}"}, api.StatusHealthy)
		out, err := env.admin.DrainRegion(ctx, "was")
		if err != nil {
			t.Fatal(err)
		}
		var mine []api.RegionService
		for _, rs := range out.Services {
			if rs.Org == "drain" {
				mine = append(mine, rs)
			}
		}
		if out.Region.Status != api.RegionDraining || len(mine) != 1 || mine[0].Service != "hello" || mine[0].App != "shop" ||
			mine[0].Instances < 2 || !strings.Contains(out.Message, "redeployed without was or deleted") {
			t.Fatalf("drain: %+v", out)
		}
		_, err = env.org.Deploy(ctx, "shop", helloDoc{name: "hello", regions: all, version: "v2"}.yaml(), "application/yaml", "")
		ae := mustStatus(t, err, 400)
		if !strings.Contains(ae.Error(), `regions[1]: region "was" is not open (status draining)`) {
			t.Fatalf("deploy to a draining region: %v", ae)
		}
		if ss, err := tp.status(t, "was", env.key("hello")); err != nil || ss.Phase != regionapi.PhaseHealthy {
			t.Fatalf("draining moved instances: %+v %v", ss, err)
		}
	})

	// Replicas and restarts, on PostgreSQL when configured (on a SQLite
	// file otherwise), with organizations of their own.
	kinds := storetest.Kinds(t)
	kind := kinds[len(kinds)-1]
	t.Run("ResumesAfterRestart/"+kind, func(t *testing.T) { testResume(t, tp, kind) })
	t.Run("TwoReplicas/"+kind, func(t *testing.T) { testReplicas(t, tp, kind) })
}

// rolloutEnv is one TestRollouts subtest's own installation over the
// shared regions: a global on a fresh SQLite store with the regions
// registered, an organization named after the subtest (so that its service
// keys meet no other subtest's in the regions) with an app "shop".
type rolloutEnv struct {
	t       *testing.T
	tp      *topology
	h       *harness
	st      store.Store
	rec     *calls
	admin   *api.Client
	org     *api.Client
	orgName string
}

// newRolloutEnv starts a subtest's installation; open opens the regions
// (without smoke tests). When the subtest ends, its services are deleted
// in every region (and the deletions awaited, so that the regions' single
// machines keep their room for the next subtest), and no generation may
// have been applied twice.
func newRolloutEnv(t *testing.T, tp *topology, orgName string, open bool) *rolloutEnv {
	t.Helper()
	ctx := context.Background()
	env := &rolloutEnv{t: t, tp: tp, st: storetest.Open(t, "sqlite"), rec: &calls{}, orgName: orgName}
	g := startGlobal(t, rolloutConfig(t, env.st, tp, "g-"+orgName, env.rec))
	env.admin = api.NewClient(g.URL(), testAdminToken)
	env.h = &harness{t: t, srv: g, st: env.st, admin: env.admin}
	tp.register(t, env.admin)
	if open {
		status := api.RegionOpen
		for name := range tp.links {
			if _, err := env.admin.UpdateRegion(ctx, name, api.UpdateRegionRequest{Status: &status}); err != nil {
				t.Fatal(err)
			}
		}
	}
	env.org = env.h.newOrg(orgName)
	if _, err := env.org.CreateApp(ctx, "shop", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.cleanup)
	return env
}

// key is a service's key in the regions.
func (env *rolloutEnv) key(service string) string {
	return regionapi.ServiceKey(env.orgName, "shop", service)
}

// deploy deploys doc and waits until the deployment finishes with status
// want.
func (env *rolloutEnv) deploy(doc helloDoc, want string) api.Deployment {
	env.t.Helper()
	d, err := env.org.Deploy(context.Background(), "shop", doc.yaml(), "application/yaml", "")
	if err != nil {
		env.t.Fatal(err)
	}
	if d = waitDeployment(env.t, env.org, d.ID, 60*time.Second); d.Status != want {
		env.t.Fatalf("%s %s, want %s: %s", doc.name, doc.version, want, describe(d))
	}
	return d
}

// ops lists the region operations matching f.
func (env *rolloutEnv) ops(f store.OpFilter) []store.RegionOp {
	env.t.Helper()
	ctx := context.Background()
	var ops []store.RegionOp
	if err := env.st.View(ctx, func(tx store.Tx) (err error) {
		ops, err = tx.ListRegionOps(ctx, f)
		return err
	}); err != nil {
		env.t.Fatal(err)
	}
	return ops
}

func (env *rolloutEnv) cleanup() {
	t, ctx := env.t, context.Background()
	list, err := env.org.ListServices(ctx, "shop", api.ListOptions{})
	if err != nil {
		t.Errorf("listing the services to delete: %v", err)
		return
	}
	for _, svc := range list.Items {
		if err := env.org.DeleteService(ctx, "shop", svc.Name); err != nil {
			t.Errorf("deleting %s: %v", svc.Name, err)
			continue
		}
		for name := range env.tp.links {
			testutil.Eventually(t, 20*time.Second, svc.Name+" deleted in "+name, func() (bool, string) {
				ss, err := env.tp.status(t, name, env.key(svc.Name))
				var ae *api.Error
				return (err == nil && ss.Phase == regionapi.PhaseDeleted) || (errors.As(err, &ae) && ae.Status == http.StatusNotFound), fmt.Sprint(ss, err)
			})
		}
	}
	env.rec.checkOnce(t)
}

// testResume stops a global in the middle of a rollout and starts another
// on the same store: the rollout resumes where it was, and no generation is
// applied twice.
func testResume(t *testing.T, tp *topology, kind string) {
	ctx := context.Background()
	rec := &calls{}
	st := storetest.Open(t, kind)
	g1 := startGlobal(t, rolloutConfig(t, st, tp, "r1", rec))
	h := &harness{t: t, srv: g1, st: st, admin: api.NewClient(g1.URL(), testAdminToken)}
	tp.register(t, h.admin)
	open := api.RegionOpen
	for name := range tp.links {
		if _, err := h.admin.UpdateRegion(ctx, name, api.UpdateRegionRequest{Status: &open}); err != nil {
			t.Fatal(err)
		}
	}
	org := h.newOrg("globex")
	if _, err := org.CreateApp(ctx, "shop", ""); err != nil {
		t.Fatal(err)
	}
	all := []string{"fra", "was", "sin"}
	doc := helloDoc{name: "resume", regions: all, version: "r1", strategy: "{max_parallel_regions: 1, health_deadline: 30s}"}
	d, err := org.Deploy(ctx, "shop", doc.yaml(), "application/yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "the rollout past its first region", func() (bool, string) {
		d, err = org.GetDeployment(ctx, d.ID)
		s := perRegion(d)
		return err == nil && s["fra"] == api.StatusHealthy && s["was"] != api.StatusPending, describe(d)
	})
	g1.Close()
	frozen, err := h.stDeployment(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if frozen.Status != api.StatusProgressing {
		t.Fatalf("deployment finished before the restart: %s", describe(frozen))
	}
	g2 := startGlobal(t, rolloutConfig(t, st, tp, "r2", rec))
	c2 := api.NewClient(g2.URL(), org.Token)
	d = waitDeployment(t, c2, d.ID, 60*time.Second)
	if d.Status != api.StatusHealthy {
		t.Fatalf("resumed deployment: %s", describe(d))
	}
	if !hasEvent(d, "", api.EventProgress, "driven by replica r1") || !hasEvent(d, "", api.EventProgress, "driven by replica r2") {
		t.Fatalf("not driven by both replicas in turn:\n%s", describe(d))
	}
	rec.checkOnce(t)
	key := "globex.shop.resume"
	for _, rd := range d.Regional {
		applied, unchanged := rec.answers(rd.Region, key, rd.Generation)
		if applied > 1 || applied+unchanged == 0 {
			t.Errorf("%s generation %d: applied %d times, answered unchanged %d times", rd.Region, rd.Generation, applied, unchanged)
		}
		ss := tp.onDeployment(t, rd.Region, key, d.ID, 10*time.Second)
		if ss.Generation != rd.Generation {
			t.Errorf("%s is at generation %d, the deployment's is %d", rd.Region, ss.Generation, rd.Generation)
		}
	}
}

// stDeployment reads a deployment straight from the store.
func (h *harness) stDeployment(ctx context.Context, d api.Deployment) (api.Deployment, error) {
	var out api.Deployment
	err := h.st.View(ctx, func(tx store.Tx) (err error) {
		out, err = tx.GetDeployment(ctx, d.OrgID, d.ID)
		return err
	})
	return out, err
}

// testReplicas runs two globals on one database: every deployment is
// driven by one of them only, and no generation is applied twice.
func testReplicas(t *testing.T, tp *topology, kind string) {
	ctx := context.Background()
	rec := &calls{}
	sts := storetest.OpenShared(t, kind, 2)
	a := startGlobal(t, rolloutConfig(t, sts[0], tp, "ga", rec))
	b := startGlobal(t, rolloutConfig(t, sts[1], tp, "gb", rec))
	h := &harness{t: t, srv: a, st: sts[0], admin: api.NewClient(a.URL(), testAdminToken)}
	tp.register(t, h.admin)
	open := api.RegionOpen
	for name := range tp.links {
		if _, err := h.admin.UpdateRegion(ctx, name, api.UpdateRegionRequest{Status: &open}); err != nil {
			t.Fatal(err)
		}
	}
	org := h.newOrg("umbrella")
	if _, err := org.CreateApp(ctx, "shop", ""); err != nil {
		t.Fatal(err)
	}
	clients := []*api.Client{org, api.NewClient(b.URL(), org.Token)}
	var ids []string
	for i := range 3 {
		doc := helloDoc{name: fmt.Sprintf("r%d", i), regions: []string{"fra", "sin"}, version: "r", strategy: "{health_deadline: 30s}"}
		d, err := clients[i%2].Deploy(ctx, "shop", doc.yaml(), "application/yaml", "")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	for _, id := range ids {
		d := waitDeployment(t, clients[1], id, 60*time.Second)
		if d.Status != api.StatusHealthy {
			t.Fatalf("deployment: %s", describe(d))
		}
		drivers := 0
		for _, e := range d.Events {
			if strings.Contains(e.Message, "driven by replica") {
				drivers++
			}
		}
		if drivers != 1 {
			t.Fatalf("deployment %s driven %d times:\n%s", id, drivers, describe(d))
		}
	}
	rec.checkOnce(t)
}
