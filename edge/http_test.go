package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/testutil"
)

// echoBackend answers with what it received, as JSON.
func echoBackend(t testing.TB) *backend {
	return newBackend(t, "echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(map[string]string{
			"host": r.Host, "xff": r.Header.Get("X-Forwarded-For"), "proto": r.Header.Get("X-Forwarded-Proto"),
			"xhost": r.Header.Get("X-Forwarded-Host"), "id": r.Header.Get("X-Request-Id"), "body": string(body),
			"client_id": r.Header.Get(ClientRequestIDHeader),
			"path":      r.URL.RequestURI(), "connection": r.Header.Get("Connection"), "http": r.Proto,
		})
	})
}

func decodeEcho(t *testing.T, resp *http.Response) map[string]string {
	t.Helper()
	defer resp.Body.Close()
	var m map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestForwardedHeadersAndRequestIDs: the instance sees the public host,
// X-Forwarded-For (appended), -Proto and -Host, and the edge's own
// request id, which the client gets back and the access log records; a
// client's sane X-Request-Id reaches the instance as X-Client-Request-Id
// only (and is logged as client_id), on the fast path and through
// net/http alike; a client cannot set X-Client-Request-Id itself.
func TestForwardedHeadersAndRequestIDs(t *testing.T) {
	var access testutil.Buffer
	s := startEdge(t, func(c *Config) { c.AccessLog = slog.New(slog.NewJSONHandler(&access, nil)) })
	seed(t, s, fra, service("web", nil, endpointOf("e", echoBackend(t))))
	send := func(method, clientID, spoof string) (map[string]string, string) {
		t.Helper()
		var body io.Reader
		if method == "POST" {
			body = strings.NewReader("data") // through httputil.ReverseProxy
		}
		req, _ := http.NewRequest(method, s.URL()+"/a/b?q=1", body)
		req.Host = testHost
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		req.Header.Set("X-Forwarded-Proto", "https") // a client cannot claim TLS
		req.Header.Set("Connection", "keep-alive, X-Secret")
		req.Header.Set("X-Secret", "hop-by-hop")
		if clientID != "" {
			req.Header.Set("X-Request-Id", clientID)
		}
		if spoof != "" {
			req.Header.Set(ClientRequestIDHeader, spoof)
		}
		resp, err := client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		id := resp.Header.Get("X-Request-Id")
		m := decodeEcho(t, resp)
		if m["host"] != testHost || m["xff"] != "203.0.113.7, 127.0.0.1" || m["proto"] != "http" || m["xhost"] != testHost ||
			m["path"] != "/a/b?q=1" || m["id"] != id || !strings.HasPrefix(id, "par-") {
			t.Fatalf("%s: the instance saw %v; the client got id %q", method, m, id)
		}
		return m, id
	}
	ids := map[string]bool{}
	for _, method := range []string{"GET", "POST"} {
		m, id := send(method, "", "")
		if m["client_id"] != "" {
			t.Fatalf("%s without a client id: the instance got %s %q", method, ClientRequestIDHeader, m["client_id"])
		}
		ids[id] = true
		m, id = send(method, "client-chosen-42", "")
		if m["client_id"] != "client-chosen-42" {
			t.Fatalf("%s: the client's id reached the instance as %q, want it in %s", method, m["client_id"], ClientRequestIDHeader)
		}
		ids[id] = true
		m, id = send(method, "has space", "forged")
		if m["client_id"] != "" {
			t.Fatalf("%s: an id with a space, or a client's own %s, was passed on: %q", method, ClientRequestIDHeader, m["client_id"])
		}
		ids[id] = true
		m, _ = send(method, "ok-id", "forged")
		if m["client_id"] != "ok-id" {
			t.Fatalf("%s: a client's %s replaced the id it sent: %q", method, ClientRequestIDHeader, m["client_id"])
		}
	}
	if len(ids) != 6 {
		t.Fatalf("request ids repeat: %v", ids)
	}
	testutil.Eventually(t, 5*time.Second, "the access log records both ids", func() (bool, string) {
		got := access.String()
		for id := range ids {
			if !strings.Contains(got, `"id":"`+id+`"`) {
				return false, got
			}
		}
		return strings.Contains(got, `"client_id":"client-chosen-42"`), got
	})
}

// TestBadInput: oversized headers (431), oversized bodies by length and by
// chunks (413), malformed requests (400), clients too slow with their
// headers (cut at ReadHeaderTimeout) or body (cut at ReadTimeout); the
// edge keeps serving.
func TestBadInput(t *testing.T) {
	testutil.Slow(t)
	s := startEdge(t, func(c *Config) {
		c.MaxHeaderBytes = 4 << 10
		c.MaxBodyBytes = 1 << 10
		c.ReadHeaderTimeout = 300 * time.Millisecond
		c.ReadTimeout = 600 * time.Millisecond
	})
	seed(t, s, fra, service("web", nil, endpointOf("e", echoBackend(t))))
	c := client()
	addr := strings.TrimPrefix(s.URL(), "http://")

	req, _ := http.NewRequest("GET", s.URL()+"/", nil)
	req.Host = testHost
	req.Header.Set("X-Big", strings.Repeat("a", 16<<10))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 431 {
		t.Fatalf("oversized headers: %d", resp.StatusCode)
	}

	resp, err = do(c, "POST", s.URL(), testHost, "/", strings.NewReader(strings.Repeat("x", 2<<10)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 || resp.Header.Get(ErrorHeader) != ReasonTooLarge {
		t.Fatalf("oversized body by length: %d %v", resp.StatusCode, resp.Header)
	}
	// Chunked: the limit is found while streaming to the instance.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 8; i++ {
			pw.Write([]byte(strings.Repeat("y", 512)))
		}
		pw.Close()
	}()
	resp, err = do(c, "PUT", s.URL(), testHost, "/", pr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("oversized chunked body: %d %v", resp.StatusCode, resp.Header)
	}

	raw := func(data string, wait time.Duration) string {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte(data))
		conn.SetReadDeadline(time.Now().Add(wait))
		b, _ := io.ReadAll(conn)
		return string(b)
	}
	if got := raw("THIS IS NOT HTTP\r\n\r\n", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Fatalf("malformed request: %q", got)
	}
	if got := raw("GET / HTTP/1.1\r\nHost: "+testHost+"\r\nContent-Length: -5\r\n\r\n", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Fatalf("negative content length: %q", got)
	}
	// Slow headers: the connection is closed without an answer, well
	// before our 5s read deadline.
	start := time.Now()
	got := raw("GET / HTTP/1.1\r\nHost: "+testHost+"\r\n", 5*time.Second)
	if time.Since(start) > 4*time.Second || strings.Contains(got, "200 OK") {
		t.Fatalf("slow headers: %q after %s", got, time.Since(start))
	}
	// Slow body: cut at ReadTimeout; the instance sees a broken body and
	// the client no success.
	start = time.Now()
	got = raw("POST / HTTP/1.1\r\nHost: "+testHost+"\r\nContent-Length: 100\r\n\r\nonly-part", 5*time.Second)
	if time.Since(start) > 4*time.Second || strings.Contains(got, "200 OK") {
		t.Fatalf("slow body: %q after %s", got, time.Since(start))
	}
	// Still serving.
	if code, _, _ := get(t, c, s.URL(), testHost, "/"); code != 200 {
		t.Fatalf("after bad input: %d", code)
	}
}

// TestWebSocketPassesThrough: an Upgrade request reaches the instance,
// the 101 comes back, and bytes flow both ways.
func TestWebSocketPassesThrough(t *testing.T) {
	s := startEdge(t, nil)
	ws := newBackend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		brw.WriteString("echo: " + line)
		brw.Flush()
	})
	seed(t, s, fra, service("web", nil, endpointOf("ws", ws)))
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /chat HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", testHost)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	fmt.Fprintf(conn, "hello over the socket\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: hello over the socket\n" {
		t.Fatalf("echo: %q %v", line, err)
	}
}

// TestStreamingPassesThrough: a chunked response's first part reaches
// the client while the instance is still writing.
func TestStreamingPassesThrough(t *testing.T) {
	s := startEdge(t, nil)
	next := make(chan struct{})
	st := newBackend(t, "stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: second\n\n")
	})
	seed(t, s, fra, service("web", nil, endpointOf("st", st)))
	resp, err := do(client(), "GET", s.URL(), testHost, "/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event before the stream ended: %q %v", line, err)
	}
	close(next)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "data: second") {
		t.Fatalf("rest: %q", rest)
	}
}

// TestHTTP2: h2c with prior knowledge on the plain listener, and HTTP/2
// over TLS (ALPN) with the edge's certificate from the installation's
// CA, which names *.<domain>.
func TestHTTP2(t *testing.T) {
	testutil.Slow(t)
	in := world(t).in
	id := edgeIdentity(t, in)
	s := startEdge(t, func(c *Config) {
		c.TLSListen = "127.0.0.1:0"
		c.TLSCertificates = id
	})
	seed(t, s, fra, service("web", nil, endpointOf("e", echoBackend(t))))

	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
	resp, err := do(h2c, "GET", s.URL(), testHost, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeEcho(t, resp); resp.ProtoMajor != 2 || m["host"] != testHost || m["proto"] != "http" {
		t.Fatalf("h2c: proto %s, instance saw %v", resp.Proto, m)
	}

	_, port, _ := net.SplitHostPort(strings.TrimPrefix(s.TLSURL(), "https://"))
	tc := &tls.Config{RootCAs: in.Root.Pool(), ServerName: testHost}
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+port)
		}}}
	resp, err = h2.Get("https://" + testHost + ":" + port + "/secure")
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeEcho(t, resp); resp.ProtoMajor != 2 || m["proto"] != "https" || m["path"] != "/secure" {
		t.Fatalf("TLS: proto %s, instance saw %v", resp.Proto, m)
	}
}

// TestGracefulShutdown: Close stops taking connections, lets the request
// in flight finish, and returns.
func TestGracefulShutdown(t *testing.T) {
	s := startEdge(t, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "finished")
	})
	seed(t, s, fra, service("web", nil, endpointOf("s", slow)))
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := do(client(), "GET", s.URL(), testHost, "/", nil)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{code: resp.StatusCode, body: string(b)}
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// New connections are refused once the listener is closed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", strings.TrimPrefix(s.URL(), "http://"))
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	r := <-done
	if r.err != nil || r.code != 200 || r.body != "finished" {
		t.Fatalf("in-flight request: %+v", r)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// TestConfigErrorsNameTheField: bad configurations are refused naming the
// field; an edge without a certificate is one (it would have to reach
// instances in clear).
func TestConfigErrorsNameTheField(t *testing.T) {
	id := edgeIdentity(t, world(t).in)
	for _, tc := range []struct {
		tweak func(*Config)
		want  string
	}{
		{func(c *Config) { c.Location = "" }, "Config.Location"},
		{func(c *Config) { c.Latitude = 91 }, "Config.Latitude"},
		{func(c *Config) { c.Domain = "bad domain" }, "Config.Domain"},
		{func(c *Config) { c.Listen = "" }, "Config.Listen"},
		{func(c *Config) { c.TLSListen = "127.0.0.1:0" }, "Config.TLSCertificates"},
		{func(c *Config) { c.StateDir = "" }, "Config.StateDir"},
		{func(c *Config) { c.Identity = nil }, "Config.Identity"},
		{func(c *Config) { c.HandshakeTimeout = -time.Second }, "Config.HandshakeTimeout"},
		{func(c *Config) { c.Regions = []Region{{ID: "fra", URL: "http://x"}} }, "Config.Regions[0].URL"},
		{func(c *Config) { c.MaxAttempts = -1 }, "Config.MaxAttempts"},
		{func(c *Config) { c.Listen = "127.0.0.1:-1" }, "Config.Listen"},
	} {
		cfg := Config{Location: "par", Listen: "127.0.0.1:0", StateDir: t.TempDir(), Identity: id}
		tc.tweak(&cfg)
		s, err := Start(context.Background(), cfg)
		if err == nil {
			s.Close()
			t.Errorf("%s: accepted", tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %q does not name %s", err, tc.want)
		}
	}
}

// TestHTTP2Instances: a port declared http2 is reached over HTTP/2
// without TLS (h2c); the answer comes back to an HTTP/1.1 client.
func TestHTTP2Instances(t *testing.T) {
	s := startEdge(t, nil)
	b := newBackendWith(t, "h2", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}, func(srv *http.Server) {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		srv.Protocols = &p
	})
	svc := service("web", nil, endpointOf("h", b))
	svc.Ports[0].Protocol = "http2"
	seed(t, s, fra, svc)
	if code, body, _ := get(t, client(), s.URL(), testHost, "/"); code != 200 || body != "HTTP/2.0" {
		t.Fatalf("h2c instance: %d %q", code, body)
	}
}
