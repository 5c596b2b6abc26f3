package region

import (
	"github.com/meridian-run/meridian/testutil"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
)

// TestExternalEtcd points a region at an etcd cluster it does not embed
// (started here as a separate etcd server with its own TLS certificate),
// set up as ARCHITECTURE.md says an external etcd must be: it trusts only
// the region's intermediate and admits only its servers' common name.
// Nothing is embedded, the region works on the external store, and
// another region's server is refused.
func TestExternalEtcd(t *testing.T) {
	testutil.NoLeaks(t) // before the external etcd: its Close is checked too
	in := pkitest.New(t, "fra", "was")
	dir := t.TempDir()
	leaf, err := in.Regions["fra"].Issue(pki.LeafRequest{ID: pki.ServerID(pkitest.TrustDomain, "fra"),
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Usage: pki.UsageBoth, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveLeaf(dir, "etcd", leaf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fra-ca.pem"), pki.EncodeCertsPEM(in.Regions["fra"].Cert.Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	// etcd --trusted-ca-file fra-ca.pem --client-cert-auth --client-cert-allowed-cn "server fra"
	tlsInfo := transport.TLSInfo{CertFile: filepath.Join(dir, "etcd.pem"), KeyFile: filepath.Join(dir, "etcd-key.pem"),
		TrustedCAFile: filepath.Join(dir, "fra-ca.pem"), ClientCertAuth: true,
		AllowedCNs: []string{pki.CommonName(pki.ServerID(pkitest.TrustDomain, "fra"))}}
	cfg := embed.NewConfig()
	cfg.Name = "external"
	cfg.Dir = filepath.Join(dir, "data")
	cu, _ := url.Parse("https://127.0.0.1:" + itoa(testutil.FreePort(t)))
	pu, _ := url.Parse("http://127.0.0.1:" + itoa(testutil.FreePort(t)))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = "external=" + pu.String()
	cfg.ClientTLSInfo = tlsInfo
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	fastEtcd(cfg)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("external etcd not ready")
	}

	s := single(t, in, "fra", func(c *Config) { c.Etcd = EtcdConfig{Endpoints: []string{cu.String()}} })
	if s.etcd != nil {
		t.Fatal("an etcd member was embedded although external endpoints were given")
	}
	ctx := testutil.Context(t, time.Minute)
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	if _, err := gc.Apply(ctx, testApply("fra", 1, "dep-1", 1)); err != nil {
		t.Fatal(err)
	}
	// The state is in the external cluster.
	resp, err := s.cli.Get(ctx, s.keys.svc("acme.web.api"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("service record in the external etcd: %v, %v", resp, err)
	}
	testutil.Eventually(t, 10*time.Second, "leading on the external store", func() (bool, string) { return s.IsLeader(), "" })
	m := joinMachine(t, in, s, "fra1-a", "fra1", 2000, 2048)
	m.heartbeat(t)
	testutil.Eventually(t, 10*time.Second, "placed", func() (bool, string) { return len(m.assignments(t)) == 1, "" })
	etcdAdmitsOnlyFraServers(t, in, s, cu.String())
}
