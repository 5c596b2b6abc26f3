package region

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/testutil"
)

// TestEtcdWarningsReachTheRegionLog: the embedded etcd's warnings (here,
// a refused client: an edge's certificate on fra's etcd) are written by
// the region's own logger, marked part=etcd; its info chatter is not.
func TestEtcdWarningsReachTheRegionLog(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	var buf testutil.Buffer
	s := single(t, in, "fra", func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	var edge credential
	for _, c := range everyKind(t, in) {
		if c.name == "edge" {
			edge = c
		}
	}
	readErr, _ := etcdReadWrite(s.cfg.Etcd.ClientURL, edge.tlsFor(t, in), s.keys.root+"tokens/", s.keys.root+"x")
	if readErr == nil {
		t.Fatal("the edge read fra's etcd")
	}
	testutil.Eventually(t, 10*time.Second, "etcd's warning in the region's log", func() (bool, string) {
		for line := range strings.SplitSeq(buf.String(), "\n") {
			if strings.Contains(line, `"part":"etcd"`) && strings.Contains(line, `"level":"WARN"`) {
				return true, ""
			}
		}
		return false, "no etcd warning yet"
	})
	for line := range strings.SplitSeq(buf.String(), "\n") {
		if strings.Contains(line, `"part":"etcd"`) && strings.Contains(line, `"level":"INFO"`) {
			t.Fatalf("etcd's info logged: %s", line)
		}
	}
}
