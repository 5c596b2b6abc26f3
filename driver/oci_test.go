package driver

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/image/imagetest/probeinfo"
)

// ociAgentEnv makes the test binary play an agent that starts one OCI
// instance and waits to be killed (see runOCITestAgent).
const ociAgentEnv = "DRIVER_TEST_OCI_AGENT_DIR"

var (
	probeOnce  sync.Once
	probeBytes []byte
	probeErr   error
)

// probeProgram returns the static probe program (image/imagetest/probe).
func probeProgram(t testing.TB) []byte {
	t.Helper()
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meridian-probe-")
		if err != nil {
			probeErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "probe")
		if probeErr = imagetest.BuildStatic("image/imagetest/probe", out); probeErr == nil {
			probeBytes, probeErr = os.ReadFile(out)
		}
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	return probeBytes
}

// probeLayer holds the probe at /bin/probe, and an /etc with users.
func probeLayer(t testing.TB) v1.Layer {
	return imagetest.Layer(t,
		imagetest.File{Name: "bin/"}, imagetest.File{Name: "bin/probe", Body: string(probeProgram(t)), Mode: 0o755},
		imagetest.File{Name: "etc/"},
		imagetest.File{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"},
		imagetest.File{Name: "etc/group", Body: "root:x:0:\napp:x:1000:\nstaff:x:50:app\n"},
		imagetest.File{Name: "home/"}, imagetest.File{Name: "home/app/", UID: 1000, GID: 1000},
		imagetest.File{Name: "tmp/", Mode: 0o1777},
	)
}

// ociEnv is a registry, an image store and an OCI driver for one test.
type ociEnv struct {
	reg    *imagetest.Registry
	images *image.Store
	d      *OCI
	dir    string
}

// runcPath fails the test when runc is missing: CI installs it.
func runcPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("runc")
	if err != nil {
		p = "/usr/sbin/runc"
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("runc is missing (%v): install Debian's runc package (apt-get install -y runc)", err)
	}
	return p
}

func newOCIEnv(t testing.TB) *ociEnv {
	t.Helper()
	runcPath(t)
	e := &ociEnv{reg: imagetest.StartRegistry(t), dir: t.TempDir()}
	var err error
	if e.images, err = image.Open(image.Config{Dir: filepath.Join(e.dir, "images")}); err != nil {
		t.Fatal(err)
	}
	e.d = e.driver(t)
	return e
}

// driver returns a new OCI driver on the environment's directories (a
// restarted agent gets another one).
func (e *ociEnv) driver(t testing.TB) *OCI {
	t.Helper()
	d, err := NewOCI(OCIConfig{DataDir: filepath.Join(e.dir, "oci"), Images: e.images, ShimEnv: []string{raceEnv}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ids, _ := d.List(bgCtx())
		for _, id := range ids {
			if err := d.Destroy(bgCtx(), id); err != nil {
				t.Errorf("destroy %s: %v", id, err)
			}
		}
	})
	return d
}

// push pushes an image of the probe (plus layers) with cfg.
func (e *ociEnv) push(t testing.TB, repo string, cfg v1.Config, layers ...v1.Layer) string {
	t.Helper()
	return e.reg.Push(t, repo+":1", imagetest.Image(t, cfg, append([]v1.Layer{probeLayer(t)}, layers...)...))
}

// assertGone checks that nothing of instance id is left: directory, runc
// state, cgroups, mounts.
func (e *ociEnv) assertGone(t testing.TB, id string) {
	t.Helper()
	if _, err := os.Stat(e.d.dir(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance directory left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.d.runcRoot, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runc state left: %v", err)
	}
	cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", e.d.cfg.CgroupParent, id))
	for _, cg := range cgs {
		t.Errorf("cgroup %s left", cg)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), e.d.dir(id)) {
		t.Errorf("a mount of the instance is left: %s", mi)
	}
}

// runInfo runs spec (the probe in "info" mode) to its end and returns what
// it printed.
func (e *ociEnv) runInfo(t testing.TB, spec Spec) probeinfo.Info {
	t.Helper()
	h, err := e.d.Start(testCtx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	es := wait(t, h)
	if !es.Success() {
		t.Fatalf("exit %v; log %+v; shim log %s", es, readLog(t, h.LogPath()), readShimLog(e.d.dir(spec.ID)))
	}
	entry := waitLog(t, h.LogPath(), func(e LogEntry) bool { return strings.HasPrefix(e.Text, "{") })
	if entry.Stream != "stdout" {
		t.Errorf("stream %q", entry.Stream)
	}
	var pi probeinfo.Info
	if err := json.Unmarshal([]byte(entry.Text), &pi); err != nil {
		t.Fatal(err)
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, spec.ID)
	return pi
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// Capability bits (linux/capability.h).
const (
	capNetRaw = 13
	capSysAdm = 21
)

func TestOCIImageConfigHonoured(t *testing.T) {
	slow(t)
	e := newOCIEnv(t)
	ref := e.push(t, "probe/config", v1.Config{
		Entrypoint: []string{"/bin/probe"}, Cmd: []string{"info"},
		Env:        []string{"FROM_IMAGE=1", "SHARED=image", "PATH=/bin:/usr/bin"},
		WorkingDir: "/work", User: "app",
	})

	t.Run("image", func(t *testing.T) {
		spec := Spec{ID: uniqueID(t, "cfg"), Image: ref, Env: []string{"SHARED=spec", "PORT=8080", "PROBE_FILES=/etc/resolv.conf,/etc/hostname,/etc/hosts"},
			ResolvConf: "nameserver 127.0.9.1\n", Hostname: "meridian-box", MemoryMB: 128, MilliCPU: 500}
		pi := e.runInfo(t, spec)
		if !slices.Equal(pi.Args, []string{"/bin/probe", "info"}) {
			t.Errorf("args %q, want the image's entrypoint and cmd", pi.Args)
		}
		env := envMap(pi.Env)
		for k, want := range map[string]string{"FROM_IMAGE": "1", "SHARED": "spec", "PORT": "8080", "PATH": "/bin:/usr/bin",
			"HOME": "/home/app", "HOSTNAME": "meridian-box"} {
			if env[k] != want {
				t.Errorf("env %s=%q, want %q (env %q)", k, env[k], want, pi.Env)
			}
		}
		if pi.Cwd != "/work" {
			t.Errorf("cwd %q, want the image's /work", pi.Cwd)
		}
		if pi.UID != 1000 || pi.GID != 1000 || !slices.Contains(pi.Groups, 50) {
			t.Errorf("uid %d gid %d groups %v, want app (1000:1000) in staff (50)", pi.UID, pi.GID, pi.Groups)
		}
		if pi.Pid != 1 || pi.Hostname != "meridian-box" {
			t.Errorf("pid %d hostname %q: want PID 1 of its own namespace, its own host name", pi.Pid, pi.Hostname)
		}
		if pi.Status["NoNewPrivs"] != "1" || pi.Status["CapEff"] != "0000000000000000" {
			t.Errorf("status %v: want no new privileges and no effective capabilities for a non-root user", pi.Status)
		}
		if pi.Files["/etc/resolv.conf"] != spec.ResolvConf || pi.Files["/etc/hostname"] != "meridian-box\n" ||
			!strings.Contains(pi.Files["/etc/hosts"], "localhost") {
			t.Errorf("files %q", pi.Files)
		}
	})
	t.Run("args-override-cmd", func(t *testing.T) {
		pi := e.runInfo(t, Spec{ID: uniqueID(t, "args"), Image: ref, Args: []string{"info", "extra"}})
		if !slices.Equal(pi.Args, []string{"/bin/probe", "info", "extra"}) {
			t.Errorf("args %q, want the entrypoint and the spec's args", pi.Args)
		}
	})
	t.Run("command-overrides-entrypoint", func(t *testing.T) {
		pi := e.runInfo(t, Spec{ID: uniqueID(t, "cmd"), Image: ref, Command: []string{"probe"}, Args: []string{"info", "cmd"},
			WorkDir: "/tmp", User: &User{UID: 2000, GID: 2001}})
		if !slices.Equal(pi.Args, []string{"probe", "info", "cmd"}) {
			t.Errorf("args %q, want the spec's command and args (image cmd dropped)", pi.Args)
		}
		if pi.Cwd != "/tmp" || pi.UID != 2000 || pi.GID != 2001 {
			t.Errorf("cwd %q uid %d gid %d: the spec's working directory and user win", pi.Cwd, pi.UID, pi.GID)
		}
	})
	t.Run("root", func(t *testing.T) {
		rootRef := e.push(t, "probe/root", v1.Config{Entrypoint: []string{"/bin/probe", "info"}})
		pi := e.runInfo(t, Spec{ID: uniqueID(t, "root"), Image: rootRef})
		var capEff uint64
		fmt.Sscanf(pi.Status["CapEff"], "%x", &capEff)
		if pi.UID != 0 || pi.Cwd != "/" || envMap(pi.Env)["PATH"] != defaultPath || envMap(pi.Env)["HOME"] != "/root" {
			t.Errorf("uid %d cwd %q env %q: want root in / with the default PATH and its passwd home", pi.UID, pi.Cwd, pi.Env)
		}
		if capEff == 0 || capEff&(1<<capNetRaw) != 0 || capEff&(1<<capSysAdm) != 0 {
			t.Errorf("CapEff %s: want Docker's defaults without NET_RAW and SYS_ADMIN", pi.Status["CapEff"])
		}
	})
	t.Run("no-command", func(t *testing.T) {
		bare := e.reg.Push(t, "probe/bare:1", imagetest.Image(t, v1.Config{}, probeLayer(t)))
		_, err := e.d.Start(testCtx(t), Spec{ID: uniqueID(t, "bare"), Image: bare})
		if err == nil || !strings.Contains(err.Error(), "image "+bare) || !strings.Contains(err.Error(), "no entrypoint or cmd") {
			t.Fatalf("start of an image without a command: %v", err)
		}
		e.assertGone(t, uniqueID(t, "bare"))
	})
	t.Run("missing-program", func(t *testing.T) {
		id := uniqueID(t, "missing")
		_, err := e.d.Start(testCtx(t), Spec{ID: id, Image: ref, Command: []string{"/bin/nope"}})
		if err == nil || !strings.Contains(err.Error(), "image "+ref) || !strings.Contains(err.Error(), "/bin/nope") {
			t.Fatalf("start of a missing program: %v", err)
		}
		e.assertGone(t, id)
	})
}

func TestOCIWhiteoutsAndWritableLayers(t *testing.T) {
	slow(t)
	e := newOCIEnv(t)
	lower := imagetest.Layer(t, imagetest.File{Name: "data/"}, imagetest.File{Name: "data/old", Body: "old"},
		imagetest.File{Name: "data/gone", Body: "gone"}, imagetest.File{Name: "opq/"}, imagetest.File{Name: "opq/hidden", Body: "h"})
	upper := imagetest.Layer(t, imagetest.File{Name: "data/.wh.gone"}, imagetest.File{Name: "opq/"},
		imagetest.File{Name: "opq/.wh..wh..opq"}, imagetest.File{Name: "opq/new", Body: "new"})
	ref := e.push(t, "probe/whiteouts", v1.Config{Entrypoint: []string{"/bin/probe", "info"}}, lower, upper)
	files := "PROBE_FILES=/data/old,/data/gone,/opq/hidden,/opq/new,/data/written"

	pi := e.runInfo(t, Spec{ID: uniqueID(t, "wo1"), Image: ref, Env: []string{files, "PROBE_WRITE=/data/written"}})
	for f, want := range map[string]string{"/data/old": "old", "/opq/new": "new", "/data/written": "written"} {
		if pi.Files[f] != want {
			t.Errorf("%s = %q, want %q", f, pi.Files[f], want)
		}
	}
	for _, f := range []string{"/data/gone", "/opq/hidden"} {
		if !strings.Contains(pi.Files[f], "no such file") {
			t.Errorf("%s = %q, want it whited out", f, pi.Files[f])
		}
	}
	// The write went to that instance's layer: the image's shared root and
	// another instance never see it.
	img, err := e.images.Pull(testCtx(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(img.Rootfs, "data/written")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an instance wrote into the image's shared root: %v", err)
	}
	pi = e.runInfo(t, Spec{ID: uniqueID(t, "wo2"), Image: ref, Env: []string{files}})
	if !strings.Contains(pi.Files["/data/written"], "no such file") {
		t.Errorf("a second instance sees the first one's file: %q", pi.Files["/data/written"])
	}
}

func TestOCIOOMKilled(t *testing.T) {
	slow(t)
	e := newOCIEnv(t)
	ref := e.push(t, "probe/oom", v1.Config{Entrypoint: []string{"/bin/probe", "alloc"}})
	id := uniqueID(t, "oom")
	h, err := e.d.Start(testCtx(t), Spec{ID: id, Image: ref, MemoryMB: 48})
	if err != nil {
		t.Fatal(err)
	}
	es := wait(t, h)
	if !es.OOMKilled || es.Signal != syscall.SIGKILL || es.Code != -1 {
		t.Fatalf("exit %+v, want OOM-killed by SIGKILL; log %+v", es, readLog(t, h.LogPath()))
	}
	if got := es.String(); got != "killed: out of memory (killed by signal 9 (killed))" {
		t.Errorf("reason %q", got)
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, id)
}

func TestOCIStopStatsAndLogs(t *testing.T) {
	slow(t)
	e := newOCIEnv(t)
	ref := e.push(t, "probe/tick", v1.Config{Entrypoint: []string{"/bin/probe"}, Cmd: []string{"tick"}})
	id := uniqueID(t, "tick")
	h, err := e.d.Start(testCtx(t), Spec{ID: id, Image: ref, MemoryMB: 64, MilliCPU: 250, LogMaxBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, h.LogPath(), textIs("tick 3"))
	// The limits are in the container's cgroup v1 controllers.
	for file, want := range map[string]string{
		"memory/" + DefaultOCICgroupParent + "/" + id + "/memory.limit_in_bytes": strconv.Itoa(64 << 20),
		"cpu/" + DefaultOCICgroupParent + "/" + id + "/cpu.cfs_quota_us":         "25000",
		"cpu/" + DefaultOCICgroupParent + "/" + id + "/cpu.cfs_period_us":        "100000",
		"pids/" + DefaultOCICgroupParent + "/" + id + "/pids.max":                "4096",
	} {
		b, err := os.ReadFile("/sys/fs/cgroup/" + file)
		if got := strings.TrimSpace(string(b)); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %s", file, got, err, want)
		}
	}
	st, err := h.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes != 1 || st.MemoryRSS == 0 || st.MemoryUsage == 0 || st.MemoryLimit != 64<<20 || st.CPUTime <= 0 {
		t.Errorf("stats %+v: want the one container process, its memory, the 64 MB limit and some CPU", st)
	}
	// The log is bounded and rotated as the Process driver's.
	waitLog(t, h.LogPath(), func(LogEntry) bool {
		fi, err := os.Stat(h.LogPath() + ".1")
		return err == nil && fi.Size() <= 4096
	})
	if err := h.Signal(syscall.SIGSTOP); err == nil {
		t.Error("SIGSTOP delivered; want it refused")
	}
	if err := h.Stop(testCtx(t), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	es := wait(t, h)
	if !es.Success() {
		t.Errorf("exit %v: the probe exits 0 on SIGTERM, which must reach it as PID 1", es)
	}
	waitLog(t, h.LogPath(), textIs("got SIGTERM"))
	if err := h.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("signal after exit: %v", err)
	}
	// A restart of the same instance reuses its directory and log.
	h2, err := e.d.Start(testCtx(t), Spec{ID: id, Image: ref})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Start(testCtx(t), Spec{ID: id, Image: ref}); !errors.Is(err, ErrExists) {
		t.Errorf("second start of a running instance: %v, want ErrExists", err)
	}
	if err := e.d.Destroy(testCtx(t), id); err != nil {
		t.Fatal(err)
	}
	<-h2.Done()
	e.assertGone(t, id)
}

func TestOCIBadImagesFailClearly(t *testing.T) {
	slow(t)
	e := newOCIEnv(t)
	evil := e.reg.Push(t, "probe/evil:1", imagetest.Image(t, v1.Config{Entrypoint: []string{"/bin/probe"}}, probeLayer(t),
		imagetest.Layer(t, imagetest.File{Name: "dev/"}, imagetest.File{Name: "dev/kmem", Type: '3', Devmajor: 1, Devminor: 2})))
	for _, tc := range []struct {
		ref  string
		want error
	}{
		{e.reg.Host + "/probe/nothere:1", image.ErrNotFound},
		{"127.0.0.1:1/probe/app:1", image.ErrUnreachable},
		{evil, image.ErrUnsafeLayer},
	} {
		id := uniqueID(t, "bad")
		_, err := e.d.Start(testCtx(t), Spec{ID: id, Image: tc.ref})
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "image "+tc.ref) {
			t.Errorf("start %s: %v, want %v naming the image", tc.ref, err, tc.want)
		}
		e.assertGone(t, id)
	}
}

func TestOCIRecoverAfterAgentKilled(t *testing.T) {
	slow(t)
	e := newOCIEnv(t)
	ref := e.push(t, "probe/survivor", v1.Config{Entrypoint: []string{"/bin/probe", "tick"}})
	if _, err := e.images.Pull(testCtx(t), ref); err != nil {
		t.Fatal(err)
	}
	pid := runAgentUntilStarted(t, ociAgentEnv+"="+e.dir, "OCI_TEST_REF="+ref)

	d := e.driver(t) // the restarted agent's driver
	ids, err := d.List(bgCtx())
	if err != nil || !slices.Equal(ids, []string{"survivor"}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	h, err := d.Recover(testCtx(t), "survivor")
	if err != nil {
		t.Fatalf("recover after the agent died: %v", err)
	}
	if h.Pid() != pid {
		t.Fatalf("recovered shim %d, the agent started %d", h.Pid(), pid)
	}
	n := len(readLog(t, h.LogPath()))
	waitLog(t, h.LogPath(), func(LogEntry) bool { return len(readLog(t, h.LogPath())) > n+3 })
	if _, err := h.Stats(); err != nil {
		t.Errorf("stats of a recovered instance: %v", err)
	}
	if err := h.Stop(testCtx(t), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if es := wait(t, h); !es.Success() {
		t.Errorf("recovered exit %v, want 0 (SIGTERM reached the workload)", es)
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	e.d = d
	e.assertGone(t, "survivor")

	// An instance that ended while no agent watched is gone, with its exit.
	h2, err := d.Start(testCtx(t), Spec{ID: "short", Image: ref, Command: []string{"/bin/probe", "info"}})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, h2)
	_, err = e.driver(t).Recover(testCtx(t), "short")
	var ge *GoneError
	if !errors.As(err, &ge) || ge.Exit == nil || !ge.Exit.Success() {
		t.Fatalf("recover an ended instance: %v", err)
	}
	e.assertGone(t, "short")
}

// runAgentUntilStarted runs the test binary as an agent (env selects
// which), reads the pid of the shim it started, and kills it.
func runAgentUntilStarted(t *testing.T, env ...string) int {
	t.Helper()
	agent := exec.Command(testExe(t))
	agent.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	agent.Stderr = &stderr
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("agent: %v; stderr %s", err, stderr.String())
	}
	var pid int
	if _, err := fmt.Sscanf(line, "started %d", &pid); err != nil {
		t.Fatalf("agent said %q", line)
	}
	_ = agent.Process.Kill()
	_ = agent.Wait()
	return pid
}

// runOCITestAgent plays an agent that starts one OCI instance of
// $OCI_TEST_REF (already in the store) and waits to be killed.
func runOCITestAgent(dir string) int {
	images, err := image.Open(image.Config{Dir: filepath.Join(dir, "images")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	d, err := NewOCI(OCIConfig{DataDir: filepath.Join(dir, "oci"), Images: images, ShimEnv: []string{raceEnv}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	h, err := d.Start(bgCtx(), Spec{ID: "survivor", Image: os.Getenv("OCI_TEST_REF")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("started %d\n", h.Pid())
	sleepForever()
	return 0
}

func TestRuntimesRouteBySpec(t *testing.T) {
	p := newTestDriver(t, ProcessConfig{})
	rt := &Runtimes{Commands: p, ImagesErr: errors.New("runc not found")}
	if !RunsImages(rt) || RunsImages(p) {
		t.Fatal("RunsImages: Runtimes take images, Process does not")
	}
	_, err := rt.Start(testCtx(t), Spec{ID: uniqueID(t, "img"), Image: "registry.example/web:1"})
	if err == nil || !strings.Contains(err.Error(), `spec.image "registry.example/web:1": this machine runs no images: runc not found`) {
		t.Fatalf("image without an image runtime: %v", err)
	}
	id := uniqueID(t, "cmd")
	h, err := rt.Start(testCtx(t), workloadSpec(t, id, "sleep"))
	if err != nil {
		t.Fatal(err)
	}
	if ids, _ := rt.List(bgCtx()); !slices.Equal(ids, []string{id}) {
		t.Errorf("List %v", ids)
	}
	if _, err := rt.Recover(testCtx(t), id); err != nil {
		t.Errorf("Recover: %v", err)
	}
	if _, err := rt.Recover(testCtx(t), "nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Recover of an unknown id: %v", err)
	}
	if err := rt.Destroy(testCtx(t), id); err != nil {
		t.Fatal(err)
	}
	<-h.Done()
	if ids, _ := p.List(bgCtx()); len(ids) != 0 {
		t.Errorf("left %v", ids)
	}
}

// slow marks a test that runs real containers: `make unit` (go test
// -short) skips it. (testutil.Slow, which imports this package, cannot be
// used here.)
func slow(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow (real containers): skipped by -short; make test runs it")
	}
}
