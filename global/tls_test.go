package global

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"github.com/meridian-run/meridian/testutil"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/store/storetest"
)

// testServerCert issues the global plane's certificate from a new root,
// naming localhost and 127.0.0.1, as `meridian pki global --hosts` does.
func testServerCert(t *testing.T) (*pki.CA, *pki.Leaf) {
	t.Helper()
	root, err := pki.NewRoot("example.org", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := root.Issue(pki.LeafRequest{ID: pki.GlobalID(root.TrustDomain), Usage: pki.UsageBoth,
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return root, leaf
}

// TestServesTLS: with Config.TLS the API is HTTPS (HTTP/2 offered) with
// the certificate its GetCertificate hook gives; a client that trusts the
// installation's root calls it; a slow body over HTTP/2 gets 408 after the
// body timeout; a client that does not trust the root, or speaks plain
// HTTP, gets nothing.
func TestServesTLS(t *testing.T) {
	testutil.Slow(t)
	root, leaf := testServerCert(t)
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessTLS(t, &tls.Config{GetCertificate: rl.GetCertificate}, root.Pool())
	if !strings.HasPrefix(h.srv.URL(), "https://") {
		t.Fatalf("URL %s: want https", h.srv.URL())
	}
	if _, err := h.acme.CreateApp(context.Background(), "web", ""); err != nil {
		t.Fatalf("an API call over TLS: %v", err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: root.Pool()}, ForceAttemptHTTP2: true}
	resp, err := (&http.Client{Transport: tr}).Get(h.srv.URL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.TLS.PeerCertificates[0].SerialNumber.Cmp(leaf.Cert.SerialNumber) != 0 {
		t.Fatalf("/healthz: %s, TLS %v; want HTTP/2 with the issued certificate", resp.Proto, resp.TLS != nil)
	}

	// A body that never ends, over HTTP/2, is answered 408 after the
	// body timeout (a stream's own read deadline).
	h2 := &http.Client{Transport: tr}
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte(`{"name":`))
	req, _ := http.NewRequest("POST", h.srv.URL()+"/v1/apps", pr)
	req.Header.Set("Authorization", "Bearer "+h.acme.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err = h2.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("a slow body over %s: %d, want 408", resp.Proto, resp.StatusCode)
	}
	// The connection serves on.
	if _, err := h.acme.GetApp(context.Background(), "web"); err != nil {
		t.Fatalf("after a slow body: %v", err)
	}

	// A client that does not trust the root refuses the server.
	_, err = http.Get(h.srv.URL() + "/healthz")
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Fatalf("a client without the root: %v, want an unknown authority", err)
	}
	// Plain HTTP on the TLS port gets no API answer.
	resp, err = http.Get("http://" + h.srv.Addr() + "/healthz")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(b), "ok") {
			t.Fatalf("plain HTTP to the TLS port: %d %s", resp.StatusCode, b)
		}
	}
}

// newHarnessTLS is newHarness serving TLS with tc, its clients trusting
// roots.
func newHarnessTLS(t *testing.T, tc *tls.Config, roots *x509.CertPool) *harness {
	t.Helper()
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	key, _ := base64.StdEncoding.DecodeString(NewSecretKey())
	srv, err := Start(context.Background(), Config{Listen: "127.0.0.1:0", Store: storetest.Open(t, "sqlite"),
		AdminToken: testAdminToken, SecretKey: key, TLS: tc, BodyTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	h := &harness{t: t, srv: srv, admin: api.NewClient(srv.URL(), testAdminToken)}
	h.admin.HTTP = hc
	h.acme = h.newOrg("acme")
	h.acme.HTTP = hc
	return h
}

// TestPlaintextOnlyOnLoopback: without TLS, an address that is not
// loopback is refused unless AllowPlaintext says otherwise; a TLS config
// without a certificate is refused.
func TestPlaintextOnlyOnLoopback(t *testing.T) {
	key, _ := base64.StdEncoding.DecodeString(NewSecretKey())
	cfg := Config{Listen: "0.0.0.0:0", Store: storetest.Open(t, "sqlite"), AdminToken: testAdminToken, SecretKey: key}
	if srv, err := Start(context.Background(), cfg); !errors.Is(err, ErrPlaintext) || !strings.Contains(err.Error(), "AllowPlaintext") {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("plain HTTP on 0.0.0.0: %v; want ErrPlaintext naming AllowPlaintext", err)
	}
	for _, listen := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		c := cfg
		c.Listen = listen
		srv, err := Start(context.Background(), c)
		if err != nil {
			if strings.Contains(err.Error(), "cannot assign requested address") {
				continue // no IPv6 loopback here
			}
			t.Fatalf("plain HTTP on %s: %v", listen, err)
		}
		srv.Close()
	}
	c := cfg
	c.AllowPlaintext = true
	srv, err := Start(context.Background(), c)
	if err != nil {
		t.Fatalf("plain HTTP on 0.0.0.0 with AllowPlaintext: %v", err)
	}
	srv.Close()

	c = cfg
	c.TLS = &tls.Config{}
	if srv, err := Start(context.Background(), c); err == nil || !strings.Contains(err.Error(), "no certificate") {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("TLS without a certificate: %v", err)
	}
}
