package region

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/testutil"
)

// credential is a client certificate a test presents (nil: none).
type credential struct {
	name string
	leaf *pki.Leaf
}

// issueLeaf issues id from ca (usable as client and server, an hour).
func issueLeaf(t testing.TB, ca *pki.CA, id pki.ID) *pki.Leaf {
	t.Helper()
	l, err := ca.Issue(pki.LeafRequest{ID: id, Usage: pki.UsageBoth, TTL: time.Hour, Now: time.Now(),
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// everyKind returns a certificate of every kind installation in (regions
// fra and was) issues, each forged identity an attacker holding a CA key
// could mint, and no certificate at all; the first is fra's server.
func everyKind(t testing.TB, in *pkitest.Installation) []credential {
	t.Helper()
	fra, was, root := in.Regions["fra"], in.Regions["was"], in.Root
	id := func(kind string) pki.ID {
		switch kind {
		case "global":
			return pki.GlobalID(pkitest.TrustDomain)
		case "edge":
			return pki.EdgeID(pkitest.TrustDomain, "par")
		case "fra server":
			return pki.ServerID(pkitest.TrustDomain, "fra")
		case "was server":
			return pki.ServerID(pkitest.TrustDomain, "was")
		case "fra machine":
			return pki.MachineID(pkitest.TrustDomain, "fra", "fra1-a")
		case "was machine":
			return pki.MachineID(pkitest.TrustDomain, "was", "was1-a")
		}
		return pki.WorkloadID(pkitest.TrustDomain, "acme", "web", "api")
	}
	return []credential{
		{"fra server", issueLeaf(t, fra, id("fra server"))},
		{"global", issueLeaf(t, root, id("global"))},
		{"edge", issueLeaf(t, root, id("edge"))},
		{"was server", issueLeaf(t, was, id("was server"))},
		{"fra machine", issueLeaf(t, fra, id("fra machine"))},
		{"was machine", issueLeaf(t, was, id("was machine"))},
		{"fra workload", issueLeaf(t, fra, id("workload"))},
		{"was workload", issueLeaf(t, was, id("workload"))},
		{"fra server forged with was's CA key", pkitest.Forge(t, was, id("fra server"), pki.UsageBoth)},
		{"fra server forged with the root key", pkitest.Forge(t, root, id("fra server"), pki.UsageBoth)},
		{"fra machine forged with was's CA key", pkitest.Forge(t, was, id("fra machine"), pki.UsageBoth)},
		{"global forged with fra's CA key", pkitest.Forge(t, fra, id("global"), pki.UsageBoth)},
		{"edge forged with fra's CA key", pkitest.Forge(t, fra, id("edge"), pki.UsageBoth)},
		{"no certificate", nil},
	}
}

// tlsFor is a client configuration presenting c's certificate that
// accepts any region server.
func (c credential) tlsFor(t testing.TB, roots *pkitest.Installation) *tls.Config {
	t.Helper()
	var src pki.CertSource
	if c.leaf != nil {
		rl, err := pki.NewReloader(c.leaf)
		if err != nil {
			t.Fatal(err)
		}
		src = rl
	}
	return pki.ClientConfig(src, roots.Root.Pool(), pki.AllowKinds(pki.KindServer))
}

// TestEtcdAdmitsOnlyItsRegionsServers reads the join tokens and writes a
// key on the region's embedded etcd (client port) with the Go etcd client
// and every kind of certificate: only fra's servers get in.
func TestEtcdAdmitsOnlyItsRegionsServers(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	s := single(t, in, "fra", nil)
	ctx := testutil.Context(t, time.Minute)
	if _, err := s.CreateJoinToken(ctx, time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	etcdAdmitsOnlyFraServers(t, in, s, s.cfg.Etcd.ClientURL)
}

// etcdAdmitsOnlyFraServers reads fra's join tokens and writes a key at
// endpoint (fra server s's etcd) with every kind of certificate, and checks
// that only fra's server could.
func etcdAdmitsOnlyFraServers(t *testing.T, in *pkitest.Installation, s *Server, endpoint string) {
	t.Helper()
	var wg sync.WaitGroup
	for _, c := range everyKind(t, in) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := s.keys.root + "intruder/" + strings.ReplaceAll(c.name, " ", "-")
			readErr, writeErr := etcdReadWrite(endpoint, c.tlsFor(t, in), s.keys.root+"tokens/", key)
			if c.name == "fra server" {
				if readErr != nil || writeErr != nil {
					t.Errorf("%s: refused by its own region's etcd: read %v, write %v", c.name, readErr, writeErr)
				}
				return
			}
			if readErr == nil || writeErr == nil {
				t.Errorf("%s: admitted by fra's etcd: read error %v, write error %v", c.name, readErr, writeErr)
			}
		}()
	}
	wg.Wait()
	resp, err := s.cli.Get(testutil.Context(t, 10*time.Second), s.keys.root+"intruder/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var written []string
	for _, kv := range resp.Kvs {
		written = append(written, string(kv.Key))
	}
	if len(written) != 1 || !strings.HasSuffix(written[0], "/fra-server") {
		t.Fatalf("keys written under intruder/: %v, want only fra-server's", written)
	}
}

// etcdReadWrite reads prefix (expecting at least one key) and writes key
// at endpoint with the Go etcd client over tc, each within a few seconds.
func etcdReadWrite(endpoint string, tc *tls.Config, prefix, key string) (readErr, writeErr error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tc, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp, readErr := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if readErr == nil && len(resp.Kvs) == 0 {
		readErr = errors.New("read nothing")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, writeErr = cli.Put(ctx, key, "x")
	return readErr, writeErr
}

// TestEtcdPeerPortAdmitsOnlyItsRegionsServers calls the peer port of a
// three-member region (GET /members, as a member would) with every kind
// of certificate: only fra's servers are answered.
func TestEtcdPeerPortAdmitsOnlyItsRegionsServers(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	servers := startCluster(t, in, "fra", 3)
	peer := servers[1].cfg.Etcd.PeerURL
	for _, c := range everyKind(t, in) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c.tlsFor(t, in)}, Timeout: 10 * time.Second}
		resp, err := hc.Get(peer + "/members")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), servers[0].cfg.Etcd.PeerURL) {
				err = nil
			} else {
				err = fmt.Errorf("answered %d %s", resp.StatusCode, body)
			}
		}
		if c.name == "fra server" {
			if err != nil {
				t.Errorf("%s: refused by its own region's peer port: %v", c.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: the peer port listed the members", c.name)
		}
		hc.CloseIdleConnections()
	}
}

// outcome is how a region answered a call.
type outcome string

const (
	admitted  outcome = "admitted"  // any answer but 401 and 403
	forbidden outcome = "403"       // authenticated, not allowed on the route
	anonymous outcome = "401"       // no certificate
	handshake outcome = "handshake" // refused at the TLS handshake
)

// callRegion calls method path on the region with tc and says how it was
// answered; a stream's first line is enough.
func callRegion(t *testing.T, s *Server, tc *tls.Config, method, path, body string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, method, s.URL()+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return handshake
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusForbidden:
		return forbidden
	case http.StatusUnauthorized:
		return anonymous
	}
	return admitted
}

// TestRegionAdmitsOnlyWhatItsCAsIssued calls the operator routes (join
// tokens, services, machines), the feed and the machines' routes of fra
// with every kind of certificate, forged ones included: each identity is
// admitted only where it belongs and only when the CA allowed to issue it
// did; a forged one never creates a join token.
func TestRegionAdmitsOnlyWhatItsCAsIssued(t *testing.T) {
	in := pkitest.New(t, "fra", "was")
	s := single(t, in, "fra", nil)
	ctx := testutil.Context(t, time.Minute)
	type want struct{ operator, feed, machine outcome }
	wants := map[string]want{
		"fra server":     {admitted, admitted, forbidden},
		"global":         {admitted, admitted, forbidden},
		"edge":           {forbidden, admitted, forbidden},
		"was server":     {forbidden, admitted, forbidden},
		"fra machine":    {forbidden, admitted, admitted},
		"no certificate": {anonymous, anonymous, anonymous},
	}
	tokens := func() int {
		resp, err := s.cli.Get(ctx, s.keys.root+"tokens/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return int(resp.Count)
	}
	for _, c := range everyKind(t, in) {
		t.Run(c.name, func(t *testing.T) {
			w, ok := wants[c.name]
			if !ok {
				w = want{handshake, handshake, handshake} // everything else
			}
			tc := c.tlsFor(t, in)
			before := tokens()
			got := callRegion(t, s, tc, "POST", "/v1/join-tokens", `{"ttl":"1h","uses":1}`)
			if got != w.operator {
				t.Errorf("create a join token: %s, want %s", got, w.operator)
			}
			if created := tokens() - before; (created == 1) != (w.operator == admitted) {
				t.Errorf("join tokens created: %d", created)
			}
			for _, path := range []string{"/v1/services", "/v1/machines"} {
				if got := callRegion(t, s, tc, "GET", path, ""); got != w.operator {
					t.Errorf("GET %s: %s, want %s", path, got, w.operator)
				}
			}
			if got := callRegion(t, s, tc, "GET", "/v1/feed?local=true", ""); got != w.feed {
				t.Errorf("feed: %s, want %s", got, w.feed)
			}
			if got := callRegion(t, s, tc, "POST", "/v1/agent/heartbeat", "{}"); got != w.machine {
				t.Errorf("heartbeat: %s, want %s", got, w.machine)
			}
		})
	}
}
