package e2e

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/meshwire"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

var (
	callerOnce sync.Once
	callerErr  error
)

// buildCaller builds the demo mesh client examples/caller next to the
// meridian binary, where dev's agents find it on their PATH.
func buildCaller(t *testing.T) {
	t.Helper()
	callerOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", filepath.Join(filepath.Dir(meridianBin), "caller"),
			"github.com/meridian-run/meridian/examples/caller").CombinedOutput()
		if err != nil {
			callerErr = fmt.Errorf("%w\n%s", err, out)
		}
	})
	if callerErr != nil {
		t.Fatalf("building examples/caller: %v", callerErr)
	}
}

// meshDef is a service of app shop for the mesh tests.
func meshDef(name, command, regions string, count int) string {
	return fmt.Sprintf(`name: %s
regions: [%s]
command: [%s]
ports: [{port: 8080}]
scalings: [{min: %d, max: %d}]
instance_types: [{type: nano}]
health_checks: [{port: 8080, http: {path: /healthz}, grace_period: 1s, interval: 500ms, timeout: 400ms, restart_limit: 5}]
strategy: {type: all_at_once}
`, name, regions, command, count, count)
}

// meshCall is what examples/caller answers on /call.
type meshCall struct {
	OK       bool              `json:"ok"`
	Attempts int               `json:"attempts"`
	Answer   map[string]string `json:"answer"`
	Errors   []string          `json:"errors"`
	MS       float64           `json:"ms"`
}

// ask has a caller instance GET path (a /call or /resolve).
func ask(t *testing.T, caller api.Instance, path string, out any) {
	t.Helper()
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(caller.Address, strconv.Itoa(caller.Ports["8080"])) + path)
	if err != nil {
		t.Fatalf("GET %s of caller %s: %v", path, caller.ID, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET %s of caller %s: %v: %s", path, caller.ID, err, b)
	}
}

// callName has the caller GET http://<name>:8080/ through the mesh.
func callName(t *testing.T, caller api.Instance, name string, retries int) meshCall {
	t.Helper()
	var c meshCall
	ask(t, caller, fmt.Sprintf("/call?retries=%d&url=%s", retries, url.QueryEscape("http://"+name+":8080/")), &c)
	return c
}

// nodeProxies reads a region's feed: the node proxy (address:mesh port) of
// each instance of a service.
func nodeProxies(t *testing.T, in *installation, region, key string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[string]string{}
	errDone := io.EOF
	err := in.region(region).Feed(ctx, true, func(f regionapi.Feed) error {
		for _, s := range f.Services {
			if s.Key != key {
				continue
			}
			for _, ep := range s.Endpoints {
				if ep.MeshPort > 0 {
					out[ep.Instance] = net.JoinHostPort(ep.Address, strconv.Itoa(ep.MeshPort))
				}
			}
		}
		return errDone
	})
	if err != errDone {
		t.Fatalf("feed of %s: %v", region, err)
	}
	return out
}

// TestMesh runs the private mesh on real processes: a caller (A) in fra
// calls a hello service (B, in fra, was and sin) by name with its system
// resolver, through the agents' DNS servers and node proxies.
func TestMesh(t *testing.T) {
	buildCaller(t)
	in := start(t, smallTopology(t, 1))
	for _, d := range []struct{ name, def string }{
		{"b", meshDef("b", "hello", "fra, was, sin", 2)},
		{"a", meshDef("a", "caller", "fra", 1)},
	} {
		path := in.writeDefinition(d.name, d.def)
		if code, out, errOut := in.cli("deploy", "-f", path, "--app", "shop", "--wait"); code != 0 {
			t.Fatalf("deploy %s: exit %d\n%s\n%s", d.name, code, out, errOut)
		}
	}
	var a api.Instance
	bs := map[string]api.Instance{}
	for _, i := range in.instances() {
		switch i.Service {
		case "a":
			a = i
		case "b":
			bs[i.ID] = i
		}
	}
	if a.ID == "" || len(bs) != 6 {
		t.Fatalf("want 1 caller and 6 instances of b, got %q and %d", a.ID, len(bs))
	}

	t.Run("by name, the closest instance", func(t *testing.T) {
		var first meshCall
		testutil.Eventually(t, 20*time.Second, "b.shop.internal answers", func() (bool, string) {
			first = callName(t, a, "b.shop.internal", 0)
			return first.OK, strings.Join(first.Errors, "; ")
		})
		for i := range 10 {
			c := callName(t, a, "b.shop.internal", 0)
			if !c.OK || c.Answer["region"] != "fra" || c.Answer["datacenter"] != a.Datacenter {
				t.Fatalf("call %d from %s/%s: %+v, want b in the same data center", i, a.Region, a.Datacenter, c)
			}
		}
		t.Logf("b.shop.internal from %s: %s/%s in %.2fms", a.Datacenter, first.Answer["datacenter"], first.Answer["instance"], first.MS)
	})

	t.Run("region-qualified names reach only their region", func(t *testing.T) {
		for _, r := range []string{"was", "sin", "fra"} {
			name := r + ".b.shop.internal"
			testutil.Eventually(t, 20*time.Second, name+" answers", func() (bool, string) {
				c := callName(t, a, name, 0)
				return c.OK, strings.Join(c.Errors, "; ")
			})
			// The balanced pick is random: call until both instances
			// answered (40 calls miss one with odds of 2^-39).
			seen := map[string]bool{}
			for i := 0; i < 40 && (len(seen) < 2 || i < 6); i++ {
				c := callName(t, a, name, 0)
				if !c.OK || c.Answer["region"] != r {
					t.Fatalf("%s: %+v", name, c)
				}
				seen[c.Answer["instance"]] = true
			}
			if r != "fra" && len(seen) != 2 {
				t.Errorf("%s: calls went to %d of the region's 2 instances", name, len(seen))
			}
		}
	})

	t.Run("unknown names fail fast", func(t *testing.T) {
		var res struct {
			Addrs []string `json:"addrs"`
			Error string   `json:"error"`
			MS    float64  `json:"ms"`
		}
		for _, name := range []string{"nope.shop.internal", "b.nope.internal", "par.b.shop.internal"} {
			ask(t, a, "/resolve?name="+name, &res)
			if !strings.Contains(res.Error, "no such host") {
				t.Fatalf("%s: %+v, want no such host", name, res)
			}
			t.Logf("%s: NXDOMAIN in %.2fms", name, res.MS)
		}
	})

	fraB := nodeProxies(t, in, "fra", "demo.shop.b")
	if len(fraB) != 2 {
		t.Fatalf("fra's feed lists %d node proxies of b, want 2: %v", len(fraB), fraB)
	}
	var someB, someProxy string
	for id, p := range fraB {
		someB, someProxy = id, p
	}
	agentLog := func(machine string) string {
		b, _ := os.ReadFile(in.component("agent", "", machine).Log)
		return string(b)
	}

	t.Run("plaintext to a node proxy is refused", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", someProxy, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: b.shop.internal\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if strings.Contains(string(got), "HTTP/") || strings.Contains(string(got), "region") {
			t.Fatalf("plaintext got an answer: %q", got)
		}
		testutil.Eventually(t, 5*time.Second, "the refusal logged", func() (bool, string) {
			return strings.Contains(agentLog(bs[someB].Machine), "refused a connection that is not TLS"), ""
		})
	})

	t.Run("another organization is refused", func(t *testing.T) {
		admin := api.NewClient(in.info.API, in.info.AdminToken)
		ctx := t.Context()
		if _, err := admin.CreateOrg(ctx, "other", ""); err != nil {
			t.Fatal(err)
		}
		tok, err := admin.CreateOrgToken(ctx, "other", "e2e", "")
		if err != nil {
			t.Fatal(err)
		}
		path := in.writeDefinition("x", meshDef("x", "caller", "fra", 1))
		if code, out, errOut := in.cli("deploy", "-f", path, "--app", "shop", "--wait", "--api", in.info.API, "--token", tok.Value); code != 0 {
			t.Fatalf("deploy x as other: exit %d\n%s\n%s", code, out, errOut)
		}
		var x api.Instance
		code, out, errOut := in.cli("instances", "ls", "-o", "json", "--api", in.info.API, "--token", tok.Value)
		var list []api.Instance
		if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 {
			t.Fatalf("instances of other: %d %s %s", code, out, errOut)
		}
		x = list[0]
		// Its names are its organization's: demo's b does not resolve.
		c := callName(t, x, "b.shop.internal", 0)
		if c.OK || !strings.Contains(strings.Join(c.Errors, " "), "no such host") {
			t.Fatalf("other's caller reached demo's b: %+v", c)
		}
		// Its machine's proxy presenting its workload certificate (as a
		// rogue proxy would) is refused by b's node proxy, which logs both.
		certs := filepath.Join(in.component("agent", "", x.Machine).DataDir, "mesh", "certs")
		var leaf *pki.Leaf
		testutil.Eventually(t, 10*time.Second, "x's workload certificate on its machine", func() (bool, string) {
			leaf, err = pki.LoadLeaf(certs, "other.shop.x")
			return err == nil, fmt.Sprint(err)
		})
		roots, err := pki.LoadRoots(filepath.Join(in.info.PKIDir, "global", pki.RootFile))
		if err != nil {
			t.Fatal(err)
		}
		rl, _ := pki.NewReloader(leaf)
		cfg := pki.ClientConfig(rl, roots, pki.AllowKinds(pki.KindMachine))
		cfg.NextProtos = []string{meshwire.MeshALPN} // as node proxies name their protocol
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", someProxy, cfg)
		if err != nil {
			t.Fatalf("TLS to b's node proxy: %v", err)
		}
		defer conn.Close()
		// The node proxies' protocol: yamux streams, each opened with a
		// preamble naming the instance and port.
		sess, err := yamux.Client(conn, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(5 * time.Second))
		pre := append([]byte("MRD1"), byte(len(someB)))
		pre = binary.BigEndian.AppendUint16(append(pre, someB...), 8080)
		st.Write(pre)
		status := make([]byte, 2)
		if _, err := io.ReadFull(st, status); err != nil || status[0] != 1 {
			t.Fatalf("answer to other's certificate: %v %v, want status 1 (refused)", status, err)
		}
		testutil.Eventually(t, 5*time.Second, "the refusal logged with both identities", func() (bool, string) {
			l := agentLog(bs[someB].Machine)
			return strings.Contains(l, "mesh: call refused") && strings.Contains(l, "caller=spiffe://meridian.local/org/other/app/shop/service/x") &&
				strings.Contains(l, "callee=spiffe://meridian.local/org/demo/app/shop/service/b"), ""
		})
	})

	t.Run("fra's instances killed: the next region answers", func(t *testing.T) {
		var ids []string
		for id, i := range bs {
			if i.Region == "fra" {
				ids = append(ids, id)
			}
		}
		// Both running (a loaded machine may have one restarting after a
		// slow health check).
		var pids map[string]int
		testutil.Eventually(t, 20*time.Second, "b's instances in fra running", func() (bool, string) {
			pids = in.shims(ids...)
			return len(pids) == 2, fmt.Sprint(pids)
		})
		for _, pid := range pids {
			syscallKill(t, pid)
		}
		killed := time.Now()
		regions := map[string]int{}
		retried := 0
		for time.Since(killed) < 2*time.Second || regions["was"]+regions["sin"] == 0 {
			if time.Since(killed) > 20*time.Second {
				t.Fatalf("no answer from another region: %v", regions)
			}
			c := callName(t, a, "b.shop.internal", 1)
			if !c.OK {
				t.Fatalf("a call failed after its retry: %+v", c)
			}
			if c.Attempts > 1 {
				retried++
			}
			regions[c.Answer["region"]]++
			time.Sleep(20 * time.Millisecond) // pacing: about 50 calls a second
		}
		t.Logf("calls after fra's b died, by answering region: %v (%d needed the caller's retry)", regions, retried)
		if retried > 1 {
			t.Errorf("%d calls needed a retry, want at most the first", retried)
		}
	})

	t.Run("global down: a new instance in was becomes reachable", func(t *testing.T) {
		in.kill(in.component("global", "", ""))
		was := in.region("was")
		st, err := was.Status(t.Context(), "demo.shop.b")
		if err != nil {
			t.Fatal(err)
		}
		var before []string
		var victim regionapi.InstanceStatus
		for _, i := range st.Instances {
			before = append(before, i.ID)
			if i.Healthy && victim.ID == "" {
				victim = i
			}
		}
		// The machine of one of was's instances dies: its agent and instance.
		pids := in.shims(victim.ID)
		in.kill(in.component("agent", "was", victim.Machine))
		syscallKill(t, pids[victim.ID])
		var fresh regionapi.InstanceStatus
		testutil.Eventually(t, 30*time.Second, "was places a new instance", func() (bool, string) {
			st, err := was.Status(t.Context(), "demo.shop.b")
			if err != nil {
				return false, err.Error()
			}
			for _, i := range st.Instances {
				if !slices.Contains(before, i.ID) && i.Healthy {
					fresh = i
					return true, ""
				}
			}
			return false, fmt.Sprintf("%d healthy", st.Healthy)
		})
		healthyAt := time.Now()
		testutil.Eventually(t, 30*time.Second, "fra's caller reaches the new instance", func() (bool, string) {
			c := callName(t, a, "was.b.shop.internal", 0)
			return c.OK && c.Answer["instance"] == fresh.ID, fmt.Sprintf("%+v", c)
		})
		t.Logf("new instance %s in was reachable from fra %.2fs after was reported it healthy (global down)",
			fresh.ID, time.Since(healthyAt).Seconds())
	})
}
