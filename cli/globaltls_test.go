package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/testutil"
)

// servedSerial is the serial number of the certificate an HTTPS URL
// serves, verified against roots.
func servedSerial(t *testing.T, apiURL string, roots *x509.CertPool) *big.Int {
	t.Helper()
	u, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", u.Host, &tls.Config{RootCAs: roots, ServerName: u.Hostname()})
	if err != nil {
		t.Fatalf("TLS to %s: %v", u.Host, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// newPKI makes a root and the global certificate for hosts (none: a
// client certificate only) in dir/pki with the real commands.
func newPKI(t *testing.T, dir string, hosts ...string) (pkiDir string, roots *x509.CertPool) {
	t.Helper()
	pkiDir = filepath.Join(dir, "pki")
	if code, _, errOut := run(t, "pki", "init", "--dir", pkiDir, "--trust-domain", "example.org"); code != 0 {
		t.Fatalf("pki init: %d %s", code, errOut)
	}
	args := []string{"pki", "global", "--dir", pkiDir}
	if len(hosts) > 0 {
		args = append(args, "--hosts", strings.Join(hosts, ","))
	}
	if code, out, errOut := run(t, args...); code != 0 {
		t.Fatalf("pki global: %d %s %s", code, out, errOut)
	}
	roots, err := pki.LoadRoots(filepath.Join(pkiDir, "root", pki.RootFile))
	if err != nil {
		t.Fatal(err)
	}
	return pkiDir, roots
}

// TestGlobalServesHTTPSFromPKI: `meridian pki global --hosts` issues a
// certificate that `meridian global --tls-from-pki` serves; the CLI calls
// it trusting the root with --ca-file or MERIDIAN_CA_FILE, and refuses it
// without; running `pki global` again rotates the served certificate
// without a restart.
func TestGlobalServesHTTPSFromPKI(t *testing.T) {
	testutil.Slow(t)
	dir := t.TempDir()
	pkiDir, roots := newPKI(t, dir, "localhost", "127.0.0.1")
	apiURL, _ := runGlobal(t, "--state-dir", filepath.Join(dir, "global"), "--listen", "127.0.0.1:0", "--log-level", "error",
		"--admin-token", adminToken, "--pki", pkiDir, "--tls-from-pki", "--tls-reload", "100ms")
	if !strings.HasPrefix(apiURL, "https://127.0.0.1:") {
		t.Fatalf("API at %s, want https", apiURL)
	}
	caFile := filepath.Join(pkiDir, "root", "root.pem")
	if code, _, errOut := run(t, "orgs", "create", "acme", "--api", apiURL, "--token", adminToken, "--ca-file", caFile); code != 0 {
		t.Fatalf("orgs create over HTTPS with --ca-file: %d %s", code, errOut)
	}
	code, _, errOut := run(t, "orgs", "ls", "--api", apiURL, "--token", adminToken)
	if code != 1 || !strings.Contains(errOut, "certificate") {
		t.Fatalf("without --ca-file: exit %d %q; want 1 and a certificate error", code, errOut)
	}
	t.Setenv("MERIDIAN_CA_FILE", caFile)
	if code, out, errOut := run(t, "orgs", "ls", "--api", apiURL, "--token", adminToken); code != 0 || !strings.Contains(out, "acme") {
		t.Fatalf("with MERIDIAN_CA_FILE: %d %s %s", code, out, errOut)
	}
	t.Setenv("MERIDIAN_CA_FILE", filepath.Join(dir, "missing.pem"))
	if code, _, errOut := run(t, "orgs", "ls", "--api", apiURL, "--token", adminToken); code != 1 || !strings.Contains(errOut, "MERIDIAN_CA_FILE") {
		t.Fatalf("a missing MERIDIAN_CA_FILE: %d %q; want 1 naming it", code, errOut)
	}

	before := servedSerial(t, apiURL, roots)
	if code, _, errOut := run(t, "pki", "global", "--dir", pkiDir, "--hosts", "localhost,127.0.0.1"); code != 0 {
		t.Fatalf("pki global again: %d %s", code, errOut)
	}
	testutil.Eventually(t, 20*time.Second, "the new certificate is served", func() (bool, string) {
		now := servedSerial(t, apiURL, roots)
		return now.Cmp(before) != 0, "serial " + now.String()
	})
}

// TestGlobalReloadsCertFilesOnSIGHUP: --tls-cert/--tls-key are read again
// on SIGHUP (the interval is an hour, so only the signal explains it).
func TestGlobalReloadsCertFilesOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	root, err := pki.NewRoot("example.org", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "api.pem"), filepath.Join(dir, "api-key.pem")
	issue := func() *big.Int {
		leaf, err := root.Issue(pki.LeafRequest{ID: pki.GlobalID(root.TrustDomain), Usage: pki.UsageServer,
			DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour, Now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		key, _ := pki.EncodeKeyPEM(leaf.Key)
		if err := pki.WriteFileAtomic(keyFile, key, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFileAtomic(certFile, leaf.ChainPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		return leaf.Cert.SerialNumber
	}
	first := issue()
	apiURL, stop := runGlobal(t, "--state-dir", filepath.Join(dir, "global"), "--listen", "127.0.0.1:0", "--log-level", "error",
		"--tls-cert", certFile, "--tls-key", keyFile, "--tls-reload", "1h")
	if got := servedSerial(t, apiURL, root.Pool()); got.Cmp(first) != 0 {
		t.Fatalf("served serial %s, want %s", got, first)
	}
	second := issue()
	if got := servedSerial(t, apiURL, root.Pool()); got.Cmp(first) != 0 {
		t.Fatalf("the new files were served before SIGHUP (serial %s)", got)
	}
	// The command has asked for SIGHUP since before it printed its URL, so
	// the signal reaches it instead of ending the test binary.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "SIGHUP reloads the certificate files", func() (bool, string) {
		got := servedSerial(t, apiURL, root.Pool())
		return got.Cmp(second) == 0, "serial " + got.String()
	})
	stop()
}

// TestGlobalTLSFlags: plain HTTP on an address that is not loopback is
// refused (exit 2, naming --insecure-plaintext) before anything is
// written, and allowed with --insecure-plaintext; TLS flags that do not go
// together are usage errors; --tls-from-pki with a client-only global
// certificate says how to issue one that serves.
func TestGlobalTLSFlags(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	code, _, errOut := run(t, "global", "--state-dir", state, "--listen", "0.0.0.0:0")
	if code != 2 || !strings.Contains(errOut, "--insecure-plaintext") || !strings.Contains(errOut, "--tls-from-pki") {
		t.Fatalf("plain HTTP on 0.0.0.0: exit %d %q; want 2 naming --insecure-plaintext and the TLS flags", code, errOut)
	}
	if _, err := os.Stat(state); err == nil {
		t.Fatal("the state dir was created before the listen address was checked")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", "x.pem"}, "--tls-key"},
		{[]string{"--tls-from-pki"}, "--pki"},
		{[]string{"--tls-from-pki", "--pki", "p", "--tls-cert", "a", "--tls-key", "b"}, "exclude each other"},
		{[]string{"--body-timeout", "0s"}, "--body-timeout"},
		{[]string{"--max-conns-per-client", "-1"}, "--max-conns-per-client"},
		{[]string{"--domain", "Bad_Domain"}, "--domain"},
	} {
		code, _, errOut := run(t, append([]string{"global", "--state-dir", state, "--listen", "127.0.0.1:0"}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d %q; want 2 naming %s", tc.args, code, errOut, tc.want)
		}
	}

	pkiDir, _ := newPKI(t, dir) // a client certificate only
	code, _, errOut = run(t, "global", "--state-dir", state, "--listen", "127.0.0.1:0", "--pki", pkiDir, "--tls-from-pki")
	if code != 1 || !strings.Contains(errOut, "--hosts") {
		t.Fatalf("--tls-from-pki with a client-only certificate: exit %d %q; want 1 naming --hosts", code, errOut)
	}

	// Allowed on purpose: served on every interface (called on loopback).
	apiURL, _ := runGlobal(t, "--state-dir", state, "--listen", "0.0.0.0:0", "--log-level", "error", "--insecure-plaintext")
	if !strings.HasPrefix(apiURL, "http://") {
		t.Fatalf("API at %s", apiURL)
	}
}

// TestEdgeTrustsGlobalFromItsPKI: an edge given only its PKI directory
// (as the README's real installation runs it) lists the regions from a
// global serving a certificate of the installation's root, without
// SSL_CERT_FILE; a global whose certificate comes from another root is
// refused.
func TestEdgeTrustsGlobalFromItsPKI(t *testing.T) {
	testutil.Slow(t)
	dir := t.TempDir()
	pkiDir, _ := newPKI(t, dir, "localhost", "127.0.0.1")
	apiURL, _ := runGlobal(t, "--state-dir", filepath.Join(dir, "global"), "--listen", "127.0.0.1:0", "--log-level", "error",
		"--admin-token", adminToken, "--pki", pkiDir, "--tls-from-pki")
	caFile := filepath.Join(pkiDir, "root", "root.pem")
	for _, args := range [][]string{
		{"regions", "add", "fra", "--url", "https://127.0.0.1:1", "--lat", "50.1", "--lon", "8.7"},
		{"regions", "open", "fra"},
		{"pki", "edge", "--dir", pkiDir, "--location", "par"},
	} {
		if code, _, errOut := run(t, append(args, "--api", apiURL, "--token", adminToken, "--ca-file", caFile)...); code != 0 {
			t.Fatalf("%v: %d %s", args, code, errOut)
		}
	}
	code, out, errOut := run(t, "edge-tokens", "create", "edge-par", "--api", apiURL, "--token", adminToken, "--ca-file", caFile, "-o", "json")
	if code != 0 {
		t.Fatalf("edge-tokens create: %d %s", code, errOut)
	}
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Token == "" {
		t.Fatalf("edge token answer %q: %v", out, err)
	}
	id, err := edge.LoadIdentity(filepath.Join(pkiDir, "edges", "par"))
	if err != nil {
		t.Fatal(err)
	}
	start := func(id *edge.Identity, log *slog.Logger) *edge.Server {
		s, err := edge.Start(context.Background(), edge.Config{Location: "par", Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
			StateDir: t.TempDir(), GlobalURL: apiURL, GlobalToken: tok.Token, Identity: id, RegionRefresh: 100 * time.Millisecond,
			Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := start(id, testutil.Logger(t))
	testutil.Eventually(t, 20*time.Second, "the edge lists fra from global", func() (bool, string) {
		st := s.Status()
		return len(st.Regions) == 1 && st.Regions[0].ID == "fra", fmt.Sprint(st.Regions)
	})

	// Another installation's edge does not trust this global.
	other, err := pki.NewRoot("other.org", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := other.Issue(pki.LeafRequest{ID: pki.EdgeID("other.org", "par"), Usage: pki.UsageClient, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := edge.NewIdentity(leaf, other.Pool())
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.Buffer
	s2 := start(foreign, slog.New(slog.NewTextHandler(&logs, nil)))
	testutil.Eventually(t, 20*time.Second, "the foreign edge refuses global's certificate", func() (bool, string) {
		return strings.Contains(logs.String(), "trusted neither by the system"), logs.String()
	})
	if st := s2.Status(); len(st.Regions) != 0 {
		t.Fatalf("an edge of another installation listed %v from this global", st.Regions)
	}
}
