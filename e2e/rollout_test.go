package e2e

import (
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
)

// helloDef is the demo app with a version and an optional scoped
// override; health checks are quick so rollouts are short.
func helloDef(name, version, extraEnv, strategy string) string {
	return fmt.Sprintf(`name: %s
regions: [fra, was, sin]
command: [hello]
ports: [{port: 8080}]
env:
  - {key: VERSION, value: %q}
%s
scalings:
  - {min: 2, max: 2}
  - {min: 3, max: 3, scopes: ["region:was"]}
instance_types: [{type: nano}]
health_checks: [{port: 8080, http: {path: /healthz}, grace_period: 1s, interval: 500ms, timeout: 400ms, restart_limit: 1}]
strategy: %s
`, name, version, extraEnv, strategy)
}

// TestDeployToThreeRegionsWithOverrides deploys the bundled example with
// the real CLI: HEALTHY, 2 instances in fra and sin and 3 in was, each
// answering with where it runs.
func TestDeployToThreeRegionsWithOverrides(t *testing.T) {
	in := start(t, smallTopology(t, 2))
	code, out, errOut := in.cli("deploy", "-f", "../examples/hello/meridian.yaml", "--wait")
	if code != 0 {
		t.Fatalf("deploy --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "HEALTHY in every region") {
		t.Fatalf("deploy --wait output:\n%s", out)
	}
	perRegion := map[string]int{}
	for _, i := range in.instances() {
		if i.State != "running" || i.Health != api.HealthHealthy {
			t.Errorf("instance %s: %s/%s", i.ID, i.State, i.Health)
		}
		perRegion[i.Region]++
		where := hello(t, i)
		if where["region"] != i.Region || where["datacenter"] != i.Datacenter || where["machine"] != i.Machine || where["instance"] != i.ID {
			t.Errorf("instance %s (%s/%s/%s) answers %v", i.ID, i.Region, i.Datacenter, i.Machine, where)
		}
	}
	if perRegion["fra"] != 2 || perRegion["was"] != 3 || perRegion["sin"] != 2 {
		t.Fatalf("instances per region = %v, want fra 2, was 3, sin 2", perRegion)
	}
	// The app has its public host.
	code, out, _ = in.cli("apps", "ls", "-o", "json")
	if code != 0 || !strings.Contains(out, `"host": "hello-demo.meridian.localhost"`) {
		t.Fatalf("apps ls -o json: %d\n%s", code, out)
	}
}

// TestFailedRegion rolls out a version whose health check fails in one
// region (sin), under fail_local and then rollback_all.
func TestFailedRegion(t *testing.T) {
	in := start(t, smallTopology(t, 1))
	good := in.writeDefinition("v1", helloDef("web", "v1", "", "{type: all_at_once}"))
	if code, out, errOut := in.cli("deploy", "-f", good, "--wait"); code != 0 {
		t.Fatalf("v1: exit %d\n%s\n%s", code, out, errOut)
	}
	// versions counts the healthy instances per region and version they
	// answer with; an instance stopping meanwhile is skipped (the caller
	// polls).
	versions := func(in *installation) map[string]map[string]int {
		got := map[string]map[string]int{}
		for _, i := range in.instances() {
			if i.Health != api.HealthHealthy {
				continue
			}
			where, err := tryHello(i)
			if err != nil {
				continue
			}
			v := where["version"]
			if got[i.Region] == nil {
				got[i.Region] = map[string]int{}
			}
			got[i.Region][v]++
		}
		return got
	}
	bad := `  - {key: HEALTHY, value: "false", scopes: ["region:sin"]}`

	t.Run("fail_local", func(t *testing.T) {
		in := in.with(t)
		def := in.writeDefinition("v2", helloDef("web", "v2", bad, "{type: all_at_once, on_failure: fail_local, health_deadline: 60s}"))
		code, out, _ := in.cli("deploy", "-f", def, "--wait")
		if code == 0 {
			t.Fatalf("a failing version exited 0:\n%s", out)
		}
		svc, err := in.client().GetService(t.Context(), "web", "web")
		if err != nil {
			t.Fatal(err)
		}
		d, err := in.client().GetDeployment(t.Context(), svc.LatestDeployment)
		if err != nil {
			t.Fatal(err)
		}
		if d.Status != api.StatusDegraded {
			t.Fatalf("status %s, want DEGRADED: %s", d.Status, d.Message)
		}
		why := reasonOf(d)
		if !strings.Contains(why, "sin") || !regexp.MustCompile(`health check http :8080/healthz: status 500`).MatchString(why) {
			t.Fatalf("the reason does not say which check failed where:\n%s", why)
		}
		testutil.Eventually(t, 30*time.Second, "fra and was on v2, sin back on v1", func() (bool, string) {
			v := versions(in)
			return v["fra"]["v2"] == 2 && v["was"]["v2"] == 3 && v["sin"]["v1"] == 2 && v["sin"]["v2"] == 0, fmt.Sprint(v)
		})
	})

	t.Run("rollback_all", func(t *testing.T) {
		in := in.with(t)
		def := in.writeDefinition("v3", helloDef("web", "v3", bad, "{type: all_at_once, on_failure: rollback_all, health_deadline: 60s}"))
		code, out, _ := in.cli("deploy", "-f", def, "--wait")
		if code == 0 {
			t.Fatalf("a failing version exited 0:\n%s", out)
		}
		svc, _ := in.client().GetService(t.Context(), "web", "web")
		d, err := in.client().GetDeployment(t.Context(), svc.LatestDeployment)
		if err != nil {
			t.Fatal(err)
		}
		if d.Status != api.StatusError || !strings.Contains(reasonOf(d), "sin") {
			t.Fatalf("status %s (%s), want ERROR naming sin", d.Status, reasonOf(d))
		}
		// Every region is back on what it ran before: v2 in fra and was, v1 in sin.
		testutil.Eventually(t, 30*time.Second, "every region reverted", func() (bool, string) {
			v := versions(in)
			return v["fra"]["v2"] == 2 && v["was"]["v2"] == 3 && v["sin"]["v1"] == 2 && v["fra"]["v3"]+v["was"]["v3"]+v["sin"]["v3"] == 0, fmt.Sprint(v)
		})
	})
}

func reasonOf(d api.Deployment) string {
	s := d.Message
	for _, r := range d.Regional {
		s += "\n" + r.Region + " " + r.Status + ": " + r.Message
	}
	for _, e := range d.Events {
		s += "\n" + e.Region + " " + e.Type + ": " + e.Message
	}
	return s
}

// TestGlobalKilledMidRollout kills the global control plane while a
// rollout waits on its canary, starts it again, and checks that the
// rollout finishes and that no region saw a generation applied twice.
func TestGlobalKilledMidRollout(t *testing.T) {
	in := start(t, smallTopology(t, 1))
	def := in.writeDefinition("slow", helloDef("slow", "v1", "", "{canary_regions: [fra], max_parallel_regions: 1}"))
	code, out, errOut := in.cli("deploy", "-f", def)
	if code != 0 {
		t.Fatalf("deploy: %d %s %s", code, out, errOut)
	}
	id := regexp.MustCompile(`dep_[a-z0-9]+`).FindString(out)
	// Wait until the canary is applied, then kill global.
	testutil.Eventually(t, 30*time.Second, "canary applied", func() (bool, string) {
		d, err := in.client().GetDeployment(t.Context(), id)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range d.Regional {
			if r.Region == "fra" && r.Status != api.StatusPending {
				return true, ""
			}
		}
		return false, d.Status
	})
	g := in.component("global", "", "")
	in.kill(g)
	in.restart(g)
	testutil.Eventually(t, 90*time.Second, "rollout resumed to HEALTHY", func() (bool, string) {
		d, err := in.client().GetDeployment(t.Context(), id)
		if err != nil {
			return false, err.Error()
		}
		return d.Status == api.StatusHealthy, d.Status
	})
	// Each region applied each generation of the service exactly once.
	for _, r := range []string{"fra", "was", "sin"} {
		log, err := os.ReadFile(in.component("region", r, "").Log)
		if err != nil {
			t.Fatal(err)
		}
		applied := map[string]int{}
		for _, m := range regexp.MustCompile(`msg="service applied" .*service=demo\.slow\.slow generation=(\d+)`).FindAllStringSubmatch(string(log), -1) {
			applied[m[1]]++
		}
		if len(applied) == 0 {
			t.Fatalf("region %s never applied the service", r)
		}
		for gen, n := range applied {
			if n != 1 {
				t.Errorf("region %s applied generation %s %d times", r, gen, n)
			}
		}
	}
}

// TestRegionsHealWhileGlobalIsDown kills the global control plane, then an
// agent and its instances: the instances elsewhere keep running untouched,
// and the region still replaces the killed machine's instances.
func TestRegionsHealWhileGlobalIsDown(t *testing.T) {
	in := start(t, smallTopology(t, 2))
	def := in.writeDefinition("v1", helloDef("web", "v1", "", "{type: all_at_once}"))
	if code, out, errOut := in.cli("deploy", "-f", def, "--wait"); code != 0 {
		t.Fatalf("deploy: %d\n%s\n%s", code, out, errOut)
	}
	before := in.instances()
	var ids []string
	for _, i := range before {
		ids = append(ids, i.ID)
	}
	pids := in.shims(ids...)
	if len(pids) != len(before) {
		t.Fatalf("found %d shims for %d instances", len(pids), len(before))
	}
	in.kill(in.component("global", "", ""))
	if code, _, errOut := in.cli("instances", "ls"); code != 1 || !strings.Contains(errOut, "connection refused") {
		t.Fatalf("with global down, the CLI should fail clearly: %d %s", code, errOut)
	}

	// Kill one fra machine: its agent and its instances.
	var victim api.Instance
	for _, i := range before {
		if i.Region == "fra" {
			victim = i
			break
		}
	}
	in.kill(in.component("agent", "fra", victim.Machine))
	for _, i := range before {
		if i.Machine == victim.Machine {
			syscallKill(t, pids[i.ID])
		}
	}
	died := time.Now()
	fra := in.region("fra")
	testutil.Eventually(t, 30*time.Second, "fra replaced the lost instance in its data center", func() (bool, string) {
		st, err := fra.Status(t.Context(), "demo.web.web")
		if err != nil {
			return false, err.Error()
		}
		healthy := 0
		for _, i := range st.Instances {
			if i.Machine != victim.Machine && i.Healthy && i.Datacenter == victim.Datacenter {
				healthy++
			}
		}
		return st.Healthy == 2 && healthy >= 1, fmt.Sprintf("%d healthy", st.Healthy)
	})
	t.Logf("fra healthy again %.1fs after the machine died (lease TTL 2s)", time.Since(died).Seconds())
	// Everything else kept running, untouched: same shims.
	for _, i := range before {
		if i.Machine == victim.Machine {
			continue
		}
		if now := in.shims(i.ID)[i.ID]; now != pids[i.ID] {
			t.Errorf("instance %s on %s was touched: shim %d -> %d", i.ID, i.Machine, pids[i.ID], now)
		}
	}
}
