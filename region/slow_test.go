package region

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/pki/pkitest"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/testutil"
)

// slowPost opens a TLS connection without a client certificate from
// 127.0.0.2 and starts a POST to path whose 100 KB body never comes (one
// byte sent). It returns the connection, or the error of a refused one.
// attacker is the address the slow clients come from.
var attacker = &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}

func slowPost(in *pkitest.Installation, addr, path string) (*tls.Conn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := pki.ClientConfig(nil, in.Root.Pool(), pki.AllowKinds(pki.KindServer))
	tc.NextProtos = []string{"http/1.1"}
	c := tls.Client(raw, tc)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	// A connection over the cap is closed when accepted: its handshake
	// fails above.
	if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: region\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", path); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// TestSlowClientsCannotExhaustTheRegion holds slow joins open from one
// address (each sends one byte of a 100 KB body), twice as many as the
// region admits per address without a certificate: the ones over the cap
// are closed at once, /healthz and the API keep answering other
// addresses, every slow body is cut with a 408 after BodyTimeout, and the
// address may connect again.
func TestSlowClientsCannotExhaustTheRegion(t *testing.T) {
	in := pkitest.New(t, "fra")
	const perAddr = 8
	s := single(t, in, "fra", func(c *Config) {
		c.BodyTimeout = 2 * time.Second
		c.MaxAnonConnsPerAddr = perAddr
	})
	ctx := testutil.Context(t, time.Minute)
	// Authenticated connections do not count against their address:
	// more than the cap of them stay open from 127.0.0.2.
	rl, err := pki.NewReloader(in.Global)
	if err != nil {
		t.Fatal(err)
	}
	for range perAddr + 2 {
		tr := fromAttacker(pki.ClientConfig(rl, in.Root.Pool(), pki.AllowKinds(pki.KindServer)))
		defer tr.CloseIdleConnections()
		if _, err := regionapi.NewClient(s.URL(), &http.Client{Transport: tr}).Services(ctx); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, "authenticated connections uncounted", func() (bool, string) {
		n := s.anon.OpenFrom(attacker)
		return n == 0, fmt.Sprint(n, " counted")
	})
	var held []*tls.Conn
	refused := 0
	for range 2 * perAddr {
		c, err := slowPost(in, s.Addr(), "/v1/join")
		if err != nil {
			refused++
			continue
		}
		held = append(held, c)
		t.Cleanup(func() { c.Close() })
	}
	started := time.Now()
	if len(held) != perAddr || refused != perAddr {
		t.Fatalf("%d slow joins held, %d refused; want %d and %d", len(held), refused, perAddr, perAddr)
	}
	if n := s.anon.OpenFrom(attacker); n != perAddr {
		t.Fatalf("the region counts %d connections from 127.0.0.2, want %d", n, perAddr)
	}

	// Meanwhile /healthz and the API answer other addresses.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientConfig(nil, in.Root.Pool(), pki.AllowKinds(pki.KindServer))},
		Timeout: time.Second}
	resp, err := anon.Get(s.URL() + "/healthz")
	if err != nil {
		t.Fatalf("/healthz under slow clients: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz under slow clients: %d", resp.StatusCode)
	}
	gc := regionapi.NewClient(s.URL(), in.GlobalClient(t))
	if _, err := gc.Services(ctx); err != nil {
		t.Fatalf("the API under slow clients: %v", err)
	}

	// Each slow body is cut after BodyTimeout with a 408 and its
	// connection closed.
	var wg sync.WaitGroup
	for i, c := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Errorf("slow join %d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Errorf("slow join %d: answered %d, want 408", i, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if d := time.Since(started); d > 8*time.Second {
		t.Errorf("the slow bodies were cut after %s (BodyTimeout 2s)", d)
	}
	testutil.Eventually(t, 10*time.Second, "the slow connections closed", func() (bool, string) {
		n := s.anon.OpenFrom(attacker)
		return n == 0, fmt.Sprint(n, " open")
	})
	// A slow body on a route that answers without reading it (no
	// certificate: 401; no such route: 404) is cut as well.
	for _, path := range []string{"/v1/agent/heartbeat", "/v1/nope"} {
		c, err := slowPost(in, s.Addr(), path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("slow POST %s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusNotFound {
			t.Fatalf("slow POST %s: %d", path, resp.StatusCode)
		}
		if _, err := br.ReadByte(); err == nil || isTimeout(err) {
			t.Fatalf("slow POST %s: the connection was not closed after its answer: %v", path, err)
		}
	}
	// The address may connect again: a real join from it succeeds.
	tok, err := s.CreateJoinToken(ctx, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	csr, _ := pki.NewCSR(key, pki.MachineID(pkitest.TrustDomain, "fra", "fra1-a"))
	tr := fromAttacker(pki.ClientConfig(nil, in.Root.Pool(), pki.AllowKinds(pki.KindServer)))
	defer tr.CloseIdleConnections()
	if _, err := regionapi.NewClient(s.URL(), &http.Client{Transport: tr}).Join(ctx, regionapi.JoinRequest{Token: tok.Value,
		Machine: "fra1-a", Datacenter: "fra1", Address: "127.0.0.1", MilliCPU: 1000, MemoryMB: 1024, CSR: string(csr)}); err != nil {
		t.Fatalf("a join from 127.0.0.2 after the slow ones: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// fromAttacker is an HTTP transport connecting from 127.0.0.2, where the
// test's slow clients come from.
func fromAttacker(tc *tls.Config) *http.Transport {
	return &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true,
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}
}
