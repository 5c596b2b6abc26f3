// Package regiontest starts real one-server regions (an embedded etcd
// member with shortened timeouts) for other packages' tests.
package regiontest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/region"
	"github.com/meridian-run/meridian/testutil"
)

// Start starts region name of installation in (lease TTL 2s, a scheduling
// round every second), closed when the test ends. The etcd ports are free
// when picked but another test package may take one first, so it starts
// again on new ports then. It returns errors rather than failing t, so it
// may run on any goroutine.
func Start(t testing.TB, in *pkitest.Installation, name string) (*region.Server, error) {
	var srv *region.Server
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		srv, err = region.Start(context.Background(), region.Config{
			Region:  name,
			DataDir: t.TempDir(),
			Listen:  "127.0.0.1:0",
			CA:      in.Regions[name],
			Etcd: region.EtcdConfig{ClientURL: "https://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t)),
				PeerURL: "https://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))},
			EtcdTuning:       func(c *embed.Config) { c.TickMs, c.ElectionMs = 50, 500 },
			LeaseTTL:         2 * time.Second,
			ScheduleInterval: time.Second,
			Logger:           testutil.Logger(t).With("test_region", name),
		})
		if !testutil.PortTaken(err) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { srv.Close() })
	return srv, nil
}
