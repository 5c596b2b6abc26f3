package global

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/store/storetest"
	"github.com/meridian-run/meridian/testutil"
)

// clientFrom is an HTTP client whose connections leave from the local
// address from (any of 127/8 is local on Linux).
func clientFrom(from string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// slowConn sends a POST's headers announcing a 100 KB body, then one
// byte of it, and nothing more. The connect itself may be reset when the
// server refuses it at once (its reset can beat the end of the dial on
// loopback): then conn is nil and refused true.
func slowConn(t *testing.T, from, addr, token string) (conn net.Conn, refused bool) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil, true
	}
	if err != nil {
		t.Fatalf("dial from %s: %v", from, err)
	}
	t.Cleanup(func() { c.Close() })
	auth := ""
	if token != "" {
		auth = "Authorization: Bearer " + token + "\r\n"
	}
	_, err = fmt.Fprintf(c, "POST /v1/apps HTTP/1.1\r\nHost: global\r\n%sContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", auth)
	if err != nil {
		// Refused before the request could be written.
		return nil, true
	}
	return c, false
}

// answer reads what the server sends on c within d: the response's status
// (0 when none came), and whether the connection was then closed (or
// reset) rather than left open.
func answer(c net.Conn, d time.Duration) (status int, closed bool, err error) {
	c.SetReadDeadline(time.Now().Add(d))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return 0, false, err
		}
		return 0, true, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_, err = br.ReadByte()
	var ne net.Error
	return resp.StatusCode, !(errors.As(err, &ne) && ne.Timeout()), err
}

// TestSlowClientsCannotStarveGlobal: an address opening more slow
// connections (each sending one byte of a 100 KB body) than the
// per-client cap gets the cap and no more, the rest closed at once without
// an answer; /healthz and an authenticated API call from another address
// still answer while they are held; the held slow bodies are answered 408
// after the body timeout and closed. An unauthenticated slow body is
// answered 401 without waiting for its body, and closed.
func TestSlowClientsCannotStarveGlobal(t *testing.T) {
	testutil.Slow(t)
	const perClient, attackers = 8, 20
	bodyTimeout := 3 * time.Second
	h := newHarness(t, storetest.Open(t, "sqlite"), func(c *Config) {
		c.MaxConnsPerClient = perClient
		c.BodyTimeout = bodyTimeout
	})
	addr := h.srv.Addr()
	attacker := &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}

	start := time.Now()
	var conns []net.Conn
	refusedAtDial := 0
	for range attackers {
		c, refused := slowConn(t, "127.0.0.3", addr, h.acme.Token)
		if refused {
			refusedAtDial++
			continue
		}
		conns = append(conns, c)
	}
	testutil.Eventually(t, 10*time.Second, "the attack holds the cap", func() (bool, string) {
		n := h.srv.ln.OpenFrom(attacker)
		return n == perClient, fmt.Sprintf("%d open from 127.0.0.3", n)
	})

	// Another address is served while the slow bodies are held.
	other := clientFrom("127.0.0.2")
	resp, err := other.Get(h.srv.URL() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz from 127.0.0.2 under the attack: %v %v", resp, err)
	}
	resp.Body.Close()
	c := api.NewClient(h.srv.URL(), h.acme.Token)
	c.HTTP = other
	if _, err := c.CreateApp(context.Background(), "web", ""); err != nil {
		t.Fatalf("an authenticated API call from 127.0.0.2 under the attack: %v", err)
	}
	if n := h.srv.ln.OpenFrom(attacker); n != perClient {
		t.Fatalf("127.0.0.3 holds %d connections, want the cap of %d", n, perClient)
	}

	// The held ones are answered 408 once the body timeout passes; the
	// refused ones were closed without an answer.
	timedOut, refused := 0, refusedAtDial
	for _, c := range conns {
		status, closed, err := answer(c, bodyTimeout+20*time.Second)
		switch {
		case status == http.StatusRequestTimeout && closed:
			timedOut++
		case status == 0 && closed:
			refused++
		default:
			t.Fatalf("slow body: status %d, closed %v, %v; want 408 and the connection closed, or refused", status, closed, err)
		}
	}
	if timedOut != perClient || refused != attackers-perClient {
		t.Fatalf("%d slow bodies answered 408 and %d connections refused; want %d and %d", timedOut, refused, perClient, attackers-perClient)
	}
	if waited := time.Since(start); waited < bodyTimeout {
		t.Fatalf("slow bodies were cut after %s, before the body timeout of %s", waited, bodyTimeout)
	}
	testutil.Eventually(t, 10*time.Second, "127.0.0.3's connections are released", func() (bool, string) {
		n := h.srv.ln.OpenFrom(attacker)
		return n == 0, fmt.Sprintf("%d open", n)
	})
	resp, err = other.Get(h.srv.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf(`meridian_global_connections_refused_total{reason="per_address"} %d`, attackers-perClient)
	if !strings.Contains(string(m), want) {
		t.Errorf("metrics lack %q", want)
	}

	// Unauthenticated: refused before its body is read, and closed.
	anon, refusedNow := slowConn(t, "127.0.0.4", addr, "")
	if refusedNow {
		t.Fatal("an unauthenticated connection under the caps was refused")
	}
	anon.SetReadDeadline(time.Now().Add(bodyTimeout + 20*time.Second))
	br := bufio.NewReader(anon)
	r401, err := http.ReadResponse(br, nil)
	if err != nil || r401.StatusCode != http.StatusUnauthorized || !r401.Close {
		t.Fatalf("unauthenticated slow body: %v %v; want 401 with Connection: close", r401, err)
	}
	io.Copy(io.Discard, r401.Body)
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the unauthenticated connection was left open")
	}
}

// TestIdleAndHeaderTimeouts: a connection that sends nothing is closed
// after the header timeout, and a keep-alive connection after the idle
// timeout.
func TestIdleAndHeaderTimeouts(t *testing.T) {
	testutil.Slow(t)
	h := newHarness(t, storetest.Open(t, "sqlite"), func(c *Config) {
		c.ReadHeaderTimeout = 500 * time.Millisecond
		c.IdleTimeout = 500 * time.Millisecond
	})
	silent, err := net.Dial("tcp", h.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if _, closed, err := answer(silent, 20*time.Second); !closed {
		t.Fatalf("a silent connection was not closed: %v", err)
	}

	idle, err := net.Dial("tcp", h.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: global\r\n\r\n")
	br := bufio.NewReader(idle)
	idle.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("an idle keep-alive connection: %v, want it closed by the server", err)
	}
}

// TestBodyDeadlineSparesLongAnswers: once a request's body is read, the
// body timeout no longer applies: an answer that takes several times as
// long is delivered and its request context is not canceled.
func TestBodyDeadlineSparesLongAnswers(t *testing.T) {
	testutil.Slow(t)
	s := &Server{cfg: Config{BodyTimeout: 200 * time.Millisecond}}
	ctxErr := make(chan error, 1)
	srv := &http.Server{Handler: s.boundBodies(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		select {
		case <-time.After(5 * s.cfg.BodyTimeout):
		case <-r.Context().Done():
		}
		ctxErr <- r.Context().Err()
		fmt.Fprintf(w, "%d bytes", len(b))
	}))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	for _, body := range []string{"hello", ""} {
		resp, err := http.Post("http://"+ln.Addr().String(), "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("%d bytes", len(body)) {
			t.Fatalf("body %q: %d %q", body, resp.StatusCode, b)
		}
		if err := <-ctxErr; err != nil {
			t.Fatalf("body %q: the request's context ended while answering: %v", body, err)
		}
	}
}
