package pki_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
)

const ioDeadline = 10 * time.Second

// tlsServer is a real TCP listener on 127.0.0.1 that performs TLS
// handshakes with cfg, greets each admitted peer with "hello <id>
// <serial>" and then echoes lines. Handshake failures are reported on errs.
type tlsServer struct {
	addr  string
	errs  chan error
	peers chan pki.Peer
}

func startServer(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsServer{addr: ln.Addr().String(), errs: make(chan error, 16), peers: make(chan pki.Peer, 16)}
	var wg sync.WaitGroup
	done := make(chan struct{})
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[raw] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, raw)
					mu.Unlock()
					raw.Close()
				}()
				c := tls.Server(raw, cfg)
				_ = c.SetDeadline(time.Now().Add(ioDeadline))
				if err := c.Handshake(); err != nil {
					select {
					case s.errs <- err:
					case <-done:
					}
					return
				}
				_ = c.SetDeadline(time.Time{})
				st := c.ConnectionState()
				peer, err := pki.PeerFromConnectionState(&st)
				if err != nil {
					select {
					case s.errs <- err:
					case <-done:
					}
					return
				}
				select {
				case s.peers <- peer:
				case <-done:
					return
				}
				fmt.Fprintf(c, "hello %s %s\n", peer.ID, peer.Cert.SerialNumber)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "echo %s\n", sc.Text())
				}
			}()
		}
	}()
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return s
}

// nextErr returns the next server-side handshake error.
func (s *tlsServer) nextErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.errs:
		return err
	case p := <-s.peers:
		t.Fatalf("server admitted %s, want a handshake failure", p.ID)
	case <-time.After(ioDeadline):
		t.Fatal("no server-side handshake result before the deadline")
	}
	return nil
}

func (s *tlsServer) nextPeer(t *testing.T) pki.Peer {
	t.Helper()
	select {
	case p := <-s.peers:
		return p
	case err := <-s.errs:
		t.Fatalf("server handshake failed: %v", err)
	case <-time.After(ioDeadline):
		t.Fatal("no server-side handshake result before the deadline")
	}
	return pki.Peer{}
}

// clientConn is a client connection after the greeting.
type clientConn struct {
	*tls.Conn
	r *bufio.Reader
}

func (c *clientConn) line() (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(ioDeadline))
	s, err := c.r.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

// dial connects with cfg and reads the greeting. With TLS 1.3 a client
// learns that its certificate was refused only when it reads, so a refusal
// shows as an error from dial either way.
func dial(t *testing.T, addr string, cfg *tls.Config) (*clientConn, string, error) {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: ioDeadline}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), ioDeadline)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	c := &clientConn{Conn: nc.(*tls.Conn), r: bufio.NewReader(nc)}
	greeting, err := c.line()
	if err != nil {
		c.Close()
		return nil, "", err
	}
	t.Cleanup(func() { c.Close() })
	return c, greeting, nil
}

// regionSetup is fra's server admitting fra's machines, and the clients'
// view of it.
type regionSetup struct {
	f          *fixture
	serverCert *pki.Reloader
	server     *tlsServer
	serverCfg  *tls.Config
	// expectFraServer authorizes fra's server on the client side.
	expectFraServer pki.Authorizer
}

func newRegionSetup(t *testing.T) *regionSetup {
	t.Helper()
	f := newFixture(t)
	machines, err := pki.RegionMembers(f.fra.Cert, pki.KindMachine)
	if err != nil {
		t.Fatal(err)
	}
	fraServers, err := pki.RegionMembers(f.fra.Cert, pki.KindServer)
	if err != nil {
		t.Fatal(err)
	}
	rs := &regionSetup{f: f, serverCert: reloader(t, f.issue(t, f.fra, pki.ServerID(td, "fra"), pki.UsageBoth)), expectFraServer: fraServers}
	rs.serverCfg = pki.ServerConfig(rs.serverCert, f.root.Pool(), machines)
	rs.server = startServer(t, rs.serverCfg)
	return rs
}

func (rs *regionSetup) clientCfg(t *testing.T, leaf *pki.Leaf) *tls.Config {
	return pki.ClientConfig(reloader(t, leaf), rs.f.root.Pool(), rs.expectFraServer)
}

func TestServerAcceptsOwnAgent(t *testing.T) {
	rs := newRegionSetup(t)
	id := pki.MachineID(td, "fra", "m1")
	leaf := rs.f.issue(t, rs.f.fra, id, pki.UsageClient)
	c, greeting, err := dial(t, rs.server.addr, rs.clientCfg(t, leaf))
	if err != nil {
		t.Fatalf("agent refused: %v", err)
	}
	if want := fmt.Sprintf("hello %s %s", id, leaf.Cert.SerialNumber); greeting != want {
		t.Fatalf("greeting %q, want %q", greeting, want)
	}
	peer := rs.server.nextPeer(t)
	if peer.ID != id || len(peer.Chains) == 0 || !peer.Chains[0][1].Equal(rs.f.fra.Cert) {
		t.Fatalf("server saw peer %v", peer.ID)
	}
	st := c.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		t.Fatalf("negotiated version %x, want TLS 1.3", st.Version)
	}
	if got, _ := pki.IDFromCert(st.PeerCertificates[0]); got != pki.ServerID(td, "fra") {
		t.Fatalf("client saw server %v", got)
	}
	fmt.Fprintf(c, "ping\n")
	if l, err := c.line(); err != nil || l != "echo ping" {
		t.Fatalf("echo = %q, %v", l, err)
	}
}

func TestServerRefusesPlaintext(t *testing.T) {
	rs := newRegionSetup(t)
	// A plain HTTP client gets an error, not a response.
	hc := &http.Client{Timeout: ioDeadline, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + rs.server.addr + "/v1/status")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("plain HTTP got status %s, want an error", resp.Status)
	}
	if err := rs.server.nextErr(t); !strings.Contains(err.Error(), "TLS handshake") {
		t.Fatalf("server error %q, want a not-TLS error", err)
	}
	// A raw plaintext connection is closed by the server.
	raw, err := net.DialTimeout("tcp", rs.server.addr, ioDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Write([]byte("hello in the clear\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(ioDeadline))
	buf := make([]byte, 64)
	n, err := raw.Read(buf)
	for err == nil {
		n, err = raw.Read(buf)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("plaintext connection: read %d bytes then %v, want the connection closed", n, err)
	}
	rs.server.nextErr(t)
}

func TestServerRefusesOtherRegionsIntermediate(t *testing.T) {
	rs := newRegionSetup(t)
	f := rs.f
	t.Run("was machine", func(t *testing.T) {
		leaf := f.issue(t, f.was, pki.MachineID(td, "was", "m1"), pki.UsageClient)
		if _, _, err := dial(t, rs.server.addr, rs.clientCfg(t, leaf)); err == nil {
			t.Fatal("fra admitted a was machine")
		}
		if err := rs.server.nextErr(t); !strings.Contains(err.Error(), `region "was" does not match "fra"`) {
			t.Fatalf("server error %q", err)
		}
	})
	t.Run("fra ID signed by was", func(t *testing.T) {
		// was's intermediate (compromised or misused) signs an ID that
		// claims region fra. It chains to the same root, and the ID
		// looks right, but the issuer is not fra's intermediate.
		leaf := pkitest.Forge(t, f.was, pki.MachineID(td, "fra", "m1"), pki.UsageClient)
		if _, _, err := dial(t, rs.server.addr, rs.clientCfg(t, leaf)); err == nil {
			t.Fatal("fra admitted a fra ID issued by was's intermediate")
		}
		if err := rs.server.nextErr(t); !strings.Contains(err.Error(), `not issued by a CA allowed to issue it (issued by "Meridian region was CA")`) {
			t.Fatalf("server error %q", err)
		}
	})
}

func TestServerRefusesExpiredCert(t *testing.T) {
	rs := newRegionSetup(t)
	f := rs.f
	leaf, err := f.fra.Issue(pki.LeafRequest{ID: pki.MachineID(td, "fra", "m1"), Usage: pki.UsageClient, TTL: time.Hour, Now: f.now.Add(-2 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := dial(t, rs.server.addr, rs.clientCfg(t, leaf)); err == nil {
		t.Fatal("server admitted an expired certificate")
	}
	if err := rs.server.nextErr(t); !strings.Contains(err.Error(), "expired") {
		t.Fatalf("server error %q, want it to mention expiry", err)
	}
}

func TestServerRefusesWorkloadWhereMachineRequired(t *testing.T) {
	rs := newRegionSetup(t)
	f := rs.f
	for _, id := range []pki.ID{pki.WorkloadID(td, "acme", "shop", "web"), pki.ServerID(td, "fra")} {
		leaf := f.issue(t, f.fra, id, pki.UsageClient)
		if _, _, err := dial(t, rs.server.addr, rs.clientCfg(t, leaf)); err == nil {
			t.Fatalf("server admitted %s where a machine is required", id)
		}
		if err := rs.server.nextErr(t); !strings.Contains(err.Error(), "kind") || !strings.Contains(err.Error(), id.String()) {
			t.Fatalf("server error %q, want it to name the refused ID and kind", err)
		}
	}
	// A server-only certificate cannot act as a client at all.
	leaf := f.issue(t, f.fra, pki.MachineID(td, "fra", "m1"), pki.UsageServer)
	if _, _, err := dial(t, rs.server.addr, rs.clientCfg(t, leaf)); err == nil {
		t.Fatal("server admitted a certificate without client-auth usage")
	}
	if err := rs.server.nextErr(t); !strings.Contains(err.Error(), "usage") {
		t.Fatalf("server error %q, want a key-usage error", err)
	}
	// No client certificate at all.
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.root.Pool(), ServerName: "localhost"}
	if _, _, err := dial(t, rs.server.addr, noCert); err == nil {
		t.Fatal("server admitted a client without a certificate")
	}
	rs.server.nextErr(t)
	// TLS 1.2 is refused.
	old := rs.clientCfg(t, f.issue(t, f.fra, pki.MachineID(td, "fra", "m2"), pki.UsageClient))
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, _, err := dial(t, rs.server.addr, old); err == nil {
		t.Fatal("server accepted TLS 1.2")
	}
	if err := rs.server.nextErr(t); !strings.Contains(err.Error(), "version") {
		t.Fatalf("server error %q, want a protocol-version error", err)
	}
}

func TestClientVerifiesServer(t *testing.T) {
	f := newFixture(t)
	// was's server, reached by a fra agent that expects fra's server.
	wasServer := startServer(t, pki.ServerConfig(reloader(t, f.issue(t, f.was, pki.ServerID(td, "was"), pki.UsageBoth)), f.root.Pool(), pki.AllowKinds(pki.KindMachine)))
	fraServers, err := pki.RegionMembers(f.fra.Cert, pki.KindServer)
	if err != nil {
		t.Fatal(err)
	}
	agent := reloader(t, f.issue(t, f.fra, pki.MachineID(td, "fra", "m1"), pki.UsageClient))
	_, _, err = dial(t, wasServer.addr, pki.ClientConfig(agent, f.root.Pool(), fraServers))
	if err == nil || !strings.Contains(err.Error(), `region "was" does not match "fra"`) {
		t.Fatalf("agent dialing the wrong region's server: err = %v", err)
	}
	// Expected ID, checked exactly.
	_, _, err = dial(t, wasServer.addr, pki.ClientConfig(agent, f.root.Pool(), pki.AllowIDs(pki.ServerID(td, "fra"))))
	if err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("AllowIDs mismatch: err = %v", err)
	}
	// Nil authorizer refuses.
	_, _, err = dial(t, wasServer.addr, pki.ClientConfig(agent, f.root.Pool(), nil))
	if err == nil || !strings.Contains(err.Error(), "no authorizer") {
		t.Fatalf("nil authorizer: err = %v", err)
	}
	// A server from another installation (same trust domain name) is refused.
	otherRoot, err := pki.NewRoot(td, f.now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherInter, err := otherRoot.NewIntermediate("fra", f.now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	impostor := startServer(t, pki.ServerConfig(reloader(t, f.issue(t, otherInter, pki.ServerID(td, "fra"), pki.UsageBoth)), f.root.Pool(), pki.AllowKinds(pki.KindMachine)))
	_, _, err = dial(t, impostor.addr, pki.ClientConfig(agent, f.root.Pool(), pki.AllowIDs(pki.ServerID(td, "fra"))))
	if err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("impostor server: err = %v", err)
	}
	// The client honours an injected clock: a year later the server's
	// certificate has expired.
	wasMachine := reloader(t, f.issue(t, f.was, pki.MachineID(td, "was", "m1"), pki.UsageClient))
	wasServers, _ := pki.RegionMembers(f.was.Cert, pki.KindServer)
	cfg := pki.ClientConfig(wasMachine, f.root.Pool(), wasServers)
	if _, _, err := dial(t, wasServer.addr, cfg); err != nil {
		t.Fatalf("was machine to was server: %v", err)
	}
	cfg.Time = func() time.Time { return f.now.Add(365 * 24 * time.Hour) }
	if _, _, err := dial(t, wasServer.addr, cfg); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("with the clock a year ahead: err = %v", err)
	}
}

func TestRotationWithoutRestart(t *testing.T) {
	rs := newRegionSetup(t)
	f := rs.f
	agentID := pki.MachineID(td, "fra", "m1")
	agentLeaf := f.issue(t, f.fra, agentID, pki.UsageClient)
	agent := reloader(t, agentLeaf)
	clientCfg := pki.ClientConfig(agent, f.root.Pool(), rs.expectFraServer)

	before := rs.serverCert.Leaf()
	c1, _, err := dial(t, rs.server.addr, clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	if p := rs.server.nextPeer(t); p.Cert.SerialNumber.Cmp(agentLeaf.Cert.SerialNumber) != 0 {
		t.Fatal("server saw an unexpected client certificate")
	}
	if got := c1.ConnectionState().PeerCertificates[0]; !got.Equal(before.Cert) {
		t.Fatal("first connection did not see the first server certificate")
	}

	// Rotate both sides while the listener and c1 stay up.
	newServer := f.issue(t, f.fra, pki.ServerID(td, "fra"), pki.UsageBoth)
	if err := rs.serverCert.Rotate(newServer); err != nil {
		t.Fatal(err)
	}
	newAgent := f.issue(t, f.fra, agentID, pki.UsageClient)
	if err := agent.Rotate(newAgent); err != nil {
		t.Fatal(err)
	}

	c2, greeting, err := dial(t, rs.server.addr, clientCfg)
	if err != nil {
		t.Fatalf("handshake after rotation: %v", err)
	}
	if got := c2.ConnectionState().PeerCertificates[0]; !got.Equal(newServer.Cert) {
		t.Fatal("new handshake did not present the rotated server certificate")
	}
	if p := rs.server.nextPeer(t); p.Cert.SerialNumber.Cmp(newAgent.Cert.SerialNumber) != 0 {
		t.Fatal("server did not see the rotated client certificate")
	}
	if !strings.HasSuffix(greeting, newAgent.Cert.SerialNumber.String()) {
		t.Fatalf("greeting %q does not name the rotated client certificate", greeting)
	}
	// The connection made before rotation still works.
	fmt.Fprintf(c1, "still here\n")
	if l, err := c1.line(); err != nil || l != "echo still here" {
		t.Fatalf("pre-rotation connection: %q, %v", l, err)
	}
	// Rotating to a leaf without a key is refused and keeps the old one.
	if err := rs.serverCert.Rotate(&pki.Leaf{Cert: newServer.Cert, Chain: newServer.Chain}); err == nil {
		t.Fatal("Rotate accepted a leaf without a key")
	}
	if rs.serverCert.Leaf() != newServer {
		t.Fatal("failed Rotate replaced the certificate")
	}
}

func TestHTTPSServer(t *testing.T) {
	f := newFixture(t)
	machines, err := pki.RegionMembers(f.fra.Cert, pki.KindMachine)
	if err != nil {
		t.Fatal(err)
	}
	global := pki.AllOf(pki.AllowKinds(pki.KindGlobal), pki.RequireIssuer(f.root.Cert))
	cfg := pki.ServerConfig(reloader(t, f.issue(t, f.fra, pki.ServerID(td, "fra"), pki.UsageBoth)), f.root.Pool(), pki.AnyOf(machines, global))
	cfg.NextProtos = []string{"h2", "http/1.1"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	handled := 0
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			handled++
			mu.Unlock()
			p, err := pki.PeerFromConnectionState(r.TLS)
			if err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
			fmt.Fprintf(w, "%s %s", r.Proto, p.ID)
		}),
		TLSConfig:         cfg,
		ReadHeaderTimeout: ioDeadline,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(tls.NewListener(ln, cfg)) }()
	t.Cleanup(func() {
		srv.Close()
		<-serveDone
	})
	fraServers, _ := pki.RegionMembers(f.fra.Cert, pki.KindServer)
	get := func(leaf *pki.Leaf) (string, error) {
		tr := &http.Transport{TLSClientConfig: pki.ClientConfig(reloader(t, leaf), f.root.Pool(), fraServers), ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: ioDeadline}
		resp, err := hc.Get("https://" + ln.Addr().String() + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	body, err := get(f.issue(t, f.fra, pki.MachineID(td, "fra", "m1"), pki.UsageClient))
	if err != nil || body != "HTTP/2.0 spiffe://meridian.local/region/fra/machine/m1" {
		t.Fatalf("agent GET = %q, %v", body, err)
	}
	body, err = get(f.issue(t, f.root, pki.GlobalID(td), pki.UsageClient))
	if err != nil || body != "HTTP/2.0 spiffe://meridian.local/global" {
		t.Fatalf("global GET = %q, %v", body, err)
	}
	if _, err := get(f.issue(t, f.root, pki.EdgeID(td, "par"), pki.UsageClient)); err == nil {
		t.Fatal("edge admitted to a server that allows only machines and global")
	}
	// net/http answers plaintext with a canned 400 before any handler runs.
	resp, err := (&http.Client{Timeout: ioDeadline}).Get("http://" + ln.Addr().String() + "/")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plaintext request got %s", resp.Status)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if handled != 2 {
		t.Fatalf("handler ran %d times, want 2 (the admitted peers only)", handled)
	}
}

// TestForgedIssuerRefused mints every kind of identity with a CA that may
// not issue it (as an attacker holding that CA's key would): each chains to
// the root, and each is refused, as a client certificate by ServerConfig,
// as a server certificate by ClientConfig, and by VerifyPeer, even by an
// authorizer that admits its kind; the same identity issued by the right
// CA is admitted.
func TestForgedIssuerRefused(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name  string
		by    *pki.CA // the CA that forges
		right *pki.CA // the CA allowed to issue the ID
		id    pki.ID
	}{
		{"global by fra's intermediate", f.fra, f.root, pki.GlobalID(td)},
		{"edge by fra's intermediate", f.fra, f.root, pki.EdgeID(td, "par")},
		{"fra server by was's intermediate", f.was, f.fra, pki.ServerID(td, "fra")},
		{"fra server by the root", f.root, f.fra, pki.ServerID(td, "fra")},
		{"fra machine by was's intermediate", f.was, f.fra, pki.MachineID(td, "fra", "m1")},
		{"fra machine by the root", f.root, f.fra, pki.MachineID(td, "fra", "m1")},
		{"workload by the root", f.root, f.fra, pki.WorkloadID(td, "acme", "shop", "web")},
	}
	anyKind := pki.AllowKinds(pki.KindGlobal, pki.KindServer, pki.KindMachine, pki.KindEdge, pki.KindWorkload)
	server := startServer(t, pki.ServerConfig(reloader(t, f.issue(t, f.fra, pki.ServerID(td, "fra"), pki.UsageBoth)), f.root.Pool(), anyKind))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forged := pkitest.Forge(t, c.by, c.id, pki.UsageBoth)
			const want = "not issued by a CA allowed to issue it"
			if _, err := pki.VerifyPeer(certsOf(t, forged), f.root.Pool(), x509.ExtKeyUsageClientAuth, f.now); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("VerifyPeer: %v, want %q", err, want)
			}
			// As a client certificate.
			client := pki.ClientConfig(reloader(t, forged), f.root.Pool(), anyKind)
			if _, _, err := dial(t, server.addr, client); err == nil {
				t.Fatal("server admitted the forged client certificate")
			}
			if err := server.nextErr(t); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), c.id.String()) {
				t.Errorf("server error %q, want %q naming %s", err, want, c.id)
			}
			// As a server certificate.
			impostor := startServer(t, pki.ServerConfig(reloader(t, forged), f.root.Pool(), anyKind))
			agent := reloader(t, f.issue(t, f.fra, pki.MachineID(td, "fra", "m2"), pki.UsageClient))
			if _, _, err := dial(t, impostor.addr, pki.ClientConfig(agent, f.root.Pool(), anyKind)); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("client dialing the forged server: %v, want %q", err, want)
			}
			// The same identity from the CA allowed to issue it is admitted.
			good := f.issue(t, c.right, c.id, pki.UsageBoth)
			if _, _, err := dial(t, server.addr, pki.ClientConfig(reloader(t, good), f.root.Pool(), anyKind)); err != nil {
				t.Fatalf("rightly issued %s refused: %v", c.id, err)
			}
			if p := server.nextPeer(t); p.ID != c.id {
				t.Fatalf("admitted %s, want %s", p.ID, c.id)
			}
		})
	}
}

func certsOf(t *testing.T, l *pki.Leaf) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, der := range l.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}
