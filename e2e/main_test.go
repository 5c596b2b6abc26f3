package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/meridian-run/meridian/testutil"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/dev"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
)

// The binaries built for the tests: the meridian binary, its instance
// shim and the demo app, side by side (agents find the demo app on PATH).
var meridianBin, shimBin, helloBin string

func TestMain(m *testing.M) {
	if testutil.SlowPackage("starts a whole installation of processes") {
		return
	}
	os.Exit(testutil.Main(m, map[string]*string{
		"cmd/meridian": &meridianBin, "driver/meridian-shim": &shimBin, "examples/hello": &helloBin}))
}

// installation is a running dev installation for one test.
type installation struct {
	t    *testing.T
	env  *dev.Env
	info dev.Info
}

// smallTopology is three regions of two data centers with one machine
// each: enough for every failure the tests inject, and light on 2 cores.
func smallTopology(t *testing.T, machines int) dev.Topology {
	topo := dev.DefaultTopology()
	topo.LeaseTTL = "2s"
	for i := range topo.Regions {
		for j := range topo.Regions[i].Datacenters {
			topo.Regions[i].Datacenters[j].Machines = machines
		}
	}
	return topo
}

// start starts a dev installation of topo for a test; opts change its
// configuration.
func start(t *testing.T, topo dev.Topology, opts ...func(*dev.Config)) *installation {
	t.Helper()
	stateDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := dev.Config{StateDir: stateDir, Topology: topo, Binary: meridianBin,
		APIListen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for _, o := range opts {
		o(&cfg)
	}
	env, err := dev.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("meridian dev: %v", err)
	}
	in := &installation{t: t, env: env, info: env.Info()}
	t.Cleanup(func() {
		if t.Failed() {
			in.dumpLogs()
		}
		env.Close()
	})
	return in
}

// with returns the installation for a subtest, so helpers fail the
// subtest rather than its parent.
func (in *installation) with(t *testing.T) *installation {
	c := *in
	c.t = t
	return &c
}

// dumpLogs prints the tail of every component's log after a failure.
func (in *installation) dumpLogs() {
	for _, c := range in.info.Components {
		b, err := os.ReadFile(c.Log)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		lines = lines[max(0, len(lines)-15):]
		in.t.Logf("--- %s:\n%s", filepath.Base(c.Log), strings.Join(lines, "\n"))
	}
}

// cli runs the real meridian binary against the installation and returns
// its exit code and output.
func (in *installation) cli(args ...string) (int, string, string) {
	in.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, meridianBin, args...)
	cmd.Env = append(os.Environ(), "MERIDIAN_STATE_DIR="+in.info.StateDir, "MERIDIAN_API=", "MERIDIAN_TOKEN=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		in.t.Fatalf("meridian %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errb.String()
}

// writeDefinition writes a definition file for a test.
func (in *installation) writeDefinition(name, body string) string {
	p := filepath.Join(in.t.TempDir(), name+".yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		in.t.Fatal(err)
	}
	return p
}

func (in *installation) client() *api.Client { return api.NewClient(in.info.API, in.info.Token) }

// instances lists the organization's instances through the CLI's JSON.
func (in *installation) instances() []api.Instance {
	in.t.Helper()
	code, out, errOut := in.cli("instances", "ls", "-o", "json")
	if code != 0 {
		in.t.Fatalf("instances ls: %d %s", code, errOut)
	}
	var list []api.Instance
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		in.t.Fatalf("instances ls -o json: %v\n%s", err, out)
	}
	return list
}

// hello asks an instance of the demo app where it runs.
func hello(t *testing.T, i api.Instance) map[string]string {
	t.Helper()
	m, err := tryHello(i)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tryHello is hello for an instance that may be going away meanwhile.
func tryHello(i api.Instance) (map[string]string, error) {
	port := i.Ports["8080"]
	if port == 0 {
		return nil, fmt.Errorf("instance %s has no host port for 8080: %+v", i.ID, i.Ports)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + i.Address + ":" + strconv.Itoa(port) + "/")
	if err != nil {
		return nil, fmt.Errorf("GET / of %s: %w", i.ID, err)
	}
	defer resp.Body.Close()
	var m map[string]string
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("GET / of %s: %w: %s", i.ID, err, b)
	}
	return m, nil
}

// component finds a component of dev.json.
func (in *installation) component(role, region, machine string) dev.Component {
	for _, c := range in.info.Components {
		if c.Role == role && (region == "" || c.Region == region) && (machine == "" || c.Machine == machine) {
			return c
		}
	}
	in.t.Fatalf("no %s %s %s in dev.json", role, region, machine)
	return dev.Component{}
}

// kill sends SIGKILL to a component and waits until it is gone.
func (in *installation) kill(c dev.Component) {
	in.t.Helper()
	if err := syscall.Kill(c.PID, syscall.SIGKILL); err != nil {
		in.t.Fatalf("kill %s %d: %v", c.Role, c.PID, err)
	}
	testutil.Eventually(in.t, 10*time.Second, "process gone", func() (bool, string) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(c.PID) + "/stat")
		return err != nil || strings.Contains(string(b), ") Z "), "still running"
	})
}

// restart starts a killed component again with the same arguments.
func (in *installation) restart(c dev.Component) *exec.Cmd {
	in.t.Helper()
	logf, err := os.OpenFile(c.Log, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		in.t.Fatal(err)
	}
	cmd := exec.Command(meridianBin, c.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(meridianBin)+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		in.t.Fatal(err)
	}
	in.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
	})
	return cmd
}

// region returns a client for a region's API with the global certificate,
// to look at a region while global is down.
func (in *installation) region(id string) *regionapi.Client {
	in.t.Helper()
	leaf, err := pki.LoadLeaf(filepath.Join(in.info.PKIDir, "global"), "global")
	if err != nil {
		in.t.Fatal(err)
	}
	roots, err := pki.LoadRoots(filepath.Join(in.info.PKIDir, "global", pki.RootFile))
	if err != nil {
		in.t.Fatal(err)
	}
	rl, _ := pki.NewReloader(leaf)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.ClientConfig(rl, roots, pki.AllowKinds(pki.KindServer))}}
	return regionapi.NewClient(in.component("region", id, "").Address, hc)
}

// shims finds the shim processes of this installation's instances by
// their ids. Instance ids repeat across installations (fra-r12-0...) and
// another test's installation may run on the host at the same time, so a
// shim counts only when its environment points into this state dir.
func (in *installation) shims(ids ...string) map[string]int {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	out := map[string]int{}
	eachProc(func(pid int, args []string) {
		if len(args) != 2 || !strings.HasSuffix(args[0], "meridian-shim") || !want[args[1]] {
			return
		}
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err == nil && strings.Contains(string(env), "="+in.info.StateDir+"/") {
			out[args[1]] = pid
		}
	})
	return out
}

// eachProc calls fn with the pid and command line of every process.
func eachProc(fn func(pid int, args []string)) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		fn(pid, strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"))
	}
}

func syscallKill(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatal("no pid to kill")
	}
	// Already gone (it exited or was restarted meanwhile) is what we want.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		t.Fatalf("kill %d: %v", pid, err)
	}
}
