package agent

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
)

func TestConfigErrors(t *testing.T) {
	_, err := Start(context.Background(), Config{Region: "Bad Region", RegionURLs: []string{"http://x"}, Address: "nope", PortMin: 10, PortMax: 5,
		InstanceUIDBase: 5})
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"Region", "Name", "Datacenter", `RegionURLs[0] "http://x"`, "Roots", "DataDir", `Address "nope"`, "PortMin..PortMax 10..5",
		"InstanceUIDBase 5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// freeRange finds n consecutive free ports below the ephemeral range and
// keeps the second one busy.
func freeRange(t *testing.T, n int) (int, net.Listener) {
	t.Helper()
	for lo := 15000; lo+n < 20000; lo += n {
		var lns []net.Listener
		for p := lo; p < lo+n; p++ {
			ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == n {
			for i, ln := range lns {
				if i != 1 {
					ln.Close()
				}
			}
			return lo, lns[1]
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no free port range")
	return 0, nil
}

func TestPortAllocator(t *testing.T) {
	// A range of 6 ports of which the second is taken by someone else.
	lo, busy := freeRange(t, 6)
	defer busy.Close()
	p := newPortAllocator("127.0.0.1", lo, lo+5)

	got, err := p.alloc(2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []int{lo, lo + 2}) {
		t.Errorf("allocated %v, want [%d %d] (%d is busy)", got, lo, lo+2, lo+1)
	}
	// Preferred ports are honoured when free, replaced when taken.
	pref, err := p.alloc(2, []int{lo + 5, got[0]})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pref, []int{lo + 5, lo + 3}) {
		t.Errorf("preferred [%d %d] gave %v", lo+5, got[0], pref)
	}
	// The range is exhausted: 6 ports, 1 busy, 4 handed out, 1 left.
	if _, err := p.alloc(2, nil); err == nil || !strings.Contains(err.Error(), "no free host port") {
		t.Errorf("over-allocation: %v", err)
	}
	if n := len(p.used); n != 4 {
		t.Errorf("a failed allocation kept ports: %d used", n)
	}
	p.release(got...)
	again, err := p.alloc(3, nil)
	if err != nil || len(again) != 3 {
		t.Errorf("after release: %v, %v", again, err)
	}
}

func TestBuildSpec(t *testing.T) {
	resolv := "nameserver 10.0.0.53\n"
	cfg := &Config{Region: "fra", Datacenter: "fra1", Name: "m1", Address: "127.0.0.1", ResolvConf: &resolv}
	as := regionapi.Assignment{ID: "fra-r12-0", Service: "acme.shop.web", Org: "acme", App: "shop", ServiceName: "web",
		DeploymentID: "dep-9", Version: 3, Secrets: map[string]string{"db": "hunter2"},
		Definition: api.RegionalDefinition{
			Command: []string{"./server"}, Args: []string{"-v"},
			Ports: []api.Port{{Port: 8080}, {Port: 9090}},
			Env: []api.ResolvedEnv{{Key: "LOG", Value: "debug"}, {Key: "DB_PASSWORD", Secret: "db"},
				{Key: "PORT", Value: "1"}, {Key: "LOG", Value: "info"}},
			InstanceType: api.InstanceType{Name: "small", MilliCPU: 250, MemoryMB: 128},
		}}
	spec, err := buildSpec(cfg, as, map[int]int{8080: 20001, 9090: 20002}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"LOG=info", "DB_PASSWORD=hunter2", "PORT=20001", "PATH=" + defaultPath,
		"MERIDIAN_REGION=fra", "MERIDIAN_DATACENTER=fra1", "MERIDIAN_MACHINE=m1", "MERIDIAN_ADDRESS=127.0.0.1",
		"MERIDIAN_INSTANCE=fra-r12-0", "MERIDIAN_ORG=acme", "MERIDIAN_APP=shop", "MERIDIAN_SERVICE=web",
		"MERIDIAN_DEPLOYMENT=dep-9", "MERIDIAN_VERSION=3", "MERIDIAN_PORT_8080=20001", "MERIDIAN_PORT_9090=20002"}
	if !slices.Equal(spec.Env, want) {
		t.Errorf("env\n got %q\nwant %q", spec.Env, want)
	}
	if spec.ID != as.ID || spec.Hostname != as.ID || spec.MemoryMB != 128 || spec.ResolvConf != resolv ||
		!slices.Equal(spec.Command, []string{"./server"}) || !slices.Equal(spec.Args, []string{"-v"}) || spec.Image != "" {
		t.Errorf("spec %+v", spec)
	}

	delete(as.Secrets, "db")
	if _, err := buildSpec(cfg, as, map[int]int{8080: 1, 9090: 2}, false); err == nil || !strings.Contains(err.Error(), `definition.env[1] DB_PASSWORD: the value of secret "db" is missing`) {
		t.Errorf("missing secret: %v", err)
	}
	as.Definition.Command, as.Definition.Image = nil, "registry.example/web:1"
	if _, err := buildSpec(cfg, as, nil, false); err == nil || !strings.Contains(err.Error(), "definition.command") {
		t.Errorf("image on the process runtime: %v", err)
	}
	as.Secrets = map[string]string{"db": "x"}
	if spec, err := buildSpec(cfg, as, map[int]int{8080: 1, 9090: 2}, true); err != nil || spec.Image != "registry.example/web:1" {
		t.Errorf("image on an image runtime: %+v, %v", spec, err)
	}
}

func TestPortDialer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	d := portDialer{d: &net.Dialer{Timeout: time.Second}, host: "127.0.0.1", ports: map[int]int{8080: ln.Addr().(*net.TCPAddr).Port}}
	c, err := d.DialContext(context.Background(), "tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatalf("declared port 8080 not mapped to its host port: %v", err)
	}
	c.Close()
}

func TestRefusedAndBadServer(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&api.Error{Status: 401}, true},
		{&api.Error{Status: 404}, true},
		{&api.Error{Status: 429}, false},
		{&api.Error{Status: 500}, false},
		{context.DeadlineExceeded, false},
	} {
		if got := refused(c.err); got != c.want {
			t.Errorf("refused(%v) = %v", c.err, got)
		}
	}
	if !badServer(errWrongServer) || badServer(context.Canceled) {
		t.Error("badServer")
	}
}
