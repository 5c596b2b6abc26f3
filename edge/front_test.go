package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/testutil"
)

// rawConn is a client connection to the edge's plain listener that
// writes raw bytes and reads responses.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialEdge(t *testing.T, s *Server) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(s.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatal(err)
	}
}

// read reads one response to a request of the given method.
func (rc *rawConn) read(method string) (*http.Response, string) {
	rc.t.Helper()
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		rc.t.Fatalf("reading the response to %s: %v", method, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("reading the body: %v", err)
	}
	resp.Body.Close()
	return resp, string(b)
}

// closed reports whether the edge closed the connection (within 5s).
func (rc *rawConn) closed() bool {
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := rc.br.ReadByte()
	return err == io.EOF
}

// TestFrontLaneHandsOff: on one keep-alive connection, bodyless GETs are
// answered by the front lane (pipelined ones in order); the first request
// with a body hands the connection to net/http, which answers it and the
// requests after it; HTTP/1.0 and a bad header value are handed off too
// and get net/http's answers.
func TestFrontLaneHandsOff(t *testing.T) {
	s := startEdge(t, nil)
	seed(t, s, fra, service("web", nil, endpointOf("e", echoBackend(t))))
	f := s.fronts[0]
	rc := dialEdge(t, s)
	get := "GET /a HTTP/1.1\r\nHost: " + testHost + "\r\n\r\n"
	rc.send(get)
	resp, _ := rc.read("GET")
	if resp.StatusCode != 200 || resp.Header.Get(RegionHeader) != "fra" || resp.Header.Get("Date") == "" {
		t.Fatalf("GET: %d %v", resp.StatusCode, resp.Header)
	}
	rc.send(get + strings.Replace(get, "/a", "/b", 1)) // pipelined
	for _, want := range []string{"/a", "/b"} {
		resp, body := rc.read("GET")
		if resp.StatusCode != 200 || !strings.Contains(body, `"path":"`+want+`"`) {
			t.Fatalf("pipelined GET %s: %d %s", want, resp.StatusCode, body)
		}
	}
	if n, h := f.served.Load(), f.handed.Load(); n != 3 || h != 0 {
		t.Fatalf("front lane served %d, handed off %d; want 3 and 0", n, h)
	}
	rc.send("POST /p HTTP/1.1\r\nHost: " + testHost + "\r\nContent-Length: 5\r\n\r\nhello" + get)
	resp, body := rc.read("POST")
	if resp.StatusCode != 200 || !strings.Contains(body, `"body":"hello"`) {
		t.Fatalf("POST after handoff: %d %s", resp.StatusCode, body)
	}
	if resp, _ := rc.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET pipelined after the POST: %d", resp.StatusCode)
	}
	if h := f.handed.Load(); h != 1 {
		t.Fatalf("handed off %d connections, want 1", h)
	}

	old := dialEdge(t, s)
	old.send("GET / HTTP/1.0\r\nHost: " + testHost + "\r\n\r\n")
	if resp, _ := old.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("HTTP/1.0: %d", resp.StatusCode)
	}
	bad := dialEdge(t, s)
	bad.send("GET / HTTP/1.1\r\nHost: " + testHost + "\r\nX-Bad: a\x01b\r\n\r\n")
	if resp, _ := bad.read("GET"); resp.StatusCode != 400 {
		t.Fatalf("bad header value: %d", resp.StatusCode)
	}
	noHost := dialEdge(t, s)
	noHost.send("GET / HTTP/1.1\r\n\r\n")
	if resp, _ := noHost.read("GET"); resp.StatusCode != 400 {
		t.Fatalf("no Host: %d", resp.StatusCode)
	}
	if h := f.handed.Load(); h != 4 {
		t.Fatalf("handed off %d connections, want 4", h)
	}
}

// TestFrontLaneAnswers: the lane's response writer keeps the instance's
// Content-Length (HEAD included, without a body), sends no body for 204
// and 304, chunks answers of unknown length, closes after a client's
// Connection: close (not after an instance's: hop-by-hop), and answers
// unknown hosts with a 404 of known length.
func TestFrontLaneAnswers(t *testing.T) {
	s := startEdge(t, nil)
	b := newBackend(t, "answers", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/len":
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "fixed")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/notmodified":
			w.Header().Set("Etag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		case "/stream":
			for i := range 3 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case "/bye":
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		}
	})
	seed(t, s, fra, service("web", nil, endpointOf("a", b)))
	rc := dialEdge(t, s)
	req := func(method, path string, extra ...string) {
		rc.send(method + " " + path + " HTTP/1.1\r\nHost: " + testHost + "\r\n" + strings.Join(extra, "") + "\r\n")
	}
	req("GET", "/len")
	if resp, body := rc.read("GET"); resp.ContentLength != 5 || body != "fixed" {
		t.Fatalf("GET /len: %d %q", resp.ContentLength, body)
	}
	req("HEAD", "/len")
	if resp, body := rc.read("HEAD"); resp.ContentLength != 5 || body != "" {
		t.Fatalf("HEAD /len: %d %q", resp.ContentLength, body)
	}
	req("GET", "/nocontent")
	if resp, _ := rc.read("GET"); resp.StatusCode != 204 {
		t.Fatalf("204: %d", resp.StatusCode)
	}
	req("GET", "/notmodified")
	if resp, _ := rc.read("GET"); resp.StatusCode != 304 || resp.Header.Get("Etag") != `"v1"` {
		t.Fatalf("304: %d %v", resp.StatusCode, resp.Header)
	}
	req("GET", "/stream")
	if resp, body := rc.read("GET"); len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || body != "part0;part1;part2;" {
		t.Fatalf("stream: %v %q", resp.TransferEncoding, body)
	}
	rc.send("GET /len HTTP/1.1\r\nHost: unknown-app.meridian.localhost\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 404 || resp.ContentLength != int64(len(body)) || resp.Header.Get(ErrorHeader) != ReasonUnknownHost {
		t.Fatalf("unknown host: %d %d %q", resp.StatusCode, resp.ContentLength, body)
	}
	// The instance's Connection: close is hop-by-hop: the client's
	// connection stays open.
	req("GET", "/bye")
	if resp, body := rc.read("GET"); body != "bye" || resp.Close {
		t.Fatalf("instance's Connection: close: close=%v %q", resp.Close, body)
	}
	req("GET", "/len")
	if _, body := rc.read("GET"); body != "fixed" {
		t.Fatalf("after the instance's Connection: close: %q", body)
	}
	rc = dialEdge(t, s)
	req("GET", "/len", "Connection: close\r\n")
	if resp, _ := rc.read("GET"); !resp.Close {
		t.Fatal("a client's Connection: close was not answered with one")
	}
	if !rc.closed() {
		t.Fatal("the connection stayed open after the client's Connection: close")
	}
	if s.fronts[0].handed.Load() != 0 {
		t.Fatalf("handed off %d connections, want 0", s.fronts[0].handed.Load())
	}
}

// TestFrontLaneTimeoutsAndShutdown: an idle keep-alive connection is
// closed after IdleTimeout, and at once by Close; a connection whose
// headers come too slowly is closed after ReadHeaderTimeout.
func TestFrontLaneTimeoutsAndShutdown(t *testing.T) {
	testutil.Slow(t)
	s := startEdge(t, func(c *Config) {
		c.IdleTimeout = 400 * time.Millisecond
		c.ReadHeaderTimeout = 300 * time.Millisecond
	})
	seed(t, s, fra, service("web", nil, endpointOf("e", echoBackend(t))))
	rc := dialEdge(t, s)
	rc.send("GET / HTTP/1.1\r\nHost: " + testHost + "\r\n\r\n")
	rc.read("GET")
	if !rc.closed() {
		t.Fatal("an idle connection outlived IdleTimeout")
	}
	slow := dialEdge(t, s)
	slow.send("GET / HTTP/1.1\r\nHost: " + testHost + "\r\n")
	if !slow.closed() {
		t.Fatal("a request with unfinished headers outlived ReadHeaderTimeout")
	}

	s2 := startEdge(t, nil)
	seed(t, s2, fra, service("web", nil, endpointOf("e", echoBackend(t))))
	idle := dialEdge(t, s2)
	idle.send("GET / HTTP/1.1\r\nHost: " + testHost + "\r\n\r\n")
	idle.read("GET")
	testutil.Eventually(t, 5*time.Second, "the connection idle", func() (bool, string) {
		s2.fronts[0].mu.Lock()
		defer s2.fronts[0].mu.Unlock()
		for _, isIdle := range s2.fronts[0].conns {
			return isIdle, "active"
		}
		return false, "no connection"
	})
	start := time.Now()
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if !idle.closed() || time.Since(start) > 4*time.Second {
		t.Fatalf("the idle connection was not closed promptly by Close (%s)", time.Since(start))
	}
}

// TestFrontLaneHTTPS: on the HTTPS listener, HTTP/1.1 requests are served
// by the front lane with the instance told the request came over https;
// a request with a body hands the connection to net/http, which still
// knows it is HTTPS; clients that negotiate h2 are served by net/http.
func TestFrontLaneHTTPS(t *testing.T) {
	testutil.Slow(t)
	s, in := startHTTPSEdge(t)
	seed(t, s, fra, service("web", nil, endpointOf("e", echoBackend(t))))
	lane := s.fronts[1]
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(s.TLSURL(), "https://"))
	newClient := func(h2 bool) *http.Client {
		tc := &tls.Config{RootCAs: in.Root.Pool(), ServerName: testHost}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: h2,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+port)
			}}}
	}
	url := "https://" + testHost + ":" + port
	h1 := newClient(false)
	for i := range 3 {
		resp, err := h1.Get(url + "/get")
		if err != nil {
			t.Fatal(err)
		}
		if m := decodeEcho(t, resp); resp.ProtoMajor != 1 || m["proto"] != "https" || m["path"] != "/get" {
			t.Fatalf("GET %d over HTTPS: %s, instance saw %v", i, resp.Proto, m)
		}
	}
	if n, h := lane.served.Load(), lane.handed.Load(); n != 3 || h != 0 {
		t.Fatalf("HTTPS lane served %d, handed off %d; want 3 and 0", n, h)
	}
	resp, err := h1.Post(url+"/post", "text/plain", strings.NewReader("sealed"))
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeEcho(t, resp); m["proto"] != "https" || m["body"] != "sealed" {
		t.Fatalf("POST handed off over HTTPS: instance saw %v", m)
	}
	resp, err = h1.Get(url + "/after")
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeEcho(t, resp); m["proto"] != "https" || m["path"] != "/after" {
		t.Fatalf("GET after the handoff: instance saw %v", m)
	}
	if h := lane.handed.Load(); h != 1 {
		t.Fatalf("handed off %d HTTPS connections, want 1", h)
	}
	resp, err = newClient(true).Get(url + "/h2")
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeEcho(t, resp); resp.ProtoMajor != 2 || m["proto"] != "https" {
		t.Fatalf("h2: %s, instance saw %v", resp.Proto, m)
	}
	if h := lane.handed.Load(); h != 2 {
		t.Fatalf("handed off %d HTTPS connections after an h2 client, want 2", h)
	}
	// Plain HTTP on the HTTPS port: a 400 saying so, the edge still serving.
	rc, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	rc.Write([]byte("GET / HTTP/1.1\r\nHost: " + testHost + "\r\n\r\n"))
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(rc)
	rc.Close()
	if !strings.HasPrefix(string(b), "HTTP/1.0 400 Bad Request") || !strings.Contains(string(b), "HTTPS server") {
		t.Fatalf("plaintext on the HTTPS port: %q", b)
	}
	if resp, err := h1.Get(url + "/still"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after plaintext on the HTTPS port: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// readToClose reads what the edge sends until it closes the connection,
// within a deadline; closed is false when the deadline came first.
func readToClose(c net.Conn, within time.Duration) (got string, closed bool) {
	c.SetReadDeadline(time.Now().Add(within))
	b, err := io.ReadAll(c)
	return string(b), err == nil
}

// TestMalformedRequestAnsweredAtOnce: a request line the edge cannot
// parse gets net/http's 400 and the connection closes at once — short
// ones too (fewer bytes than HTTP/2's preface, which the plain listener's
// server would otherwise wait for until ReadHeaderTimeout), on a fresh
// connection, after a served request, and over HTTPS. The deadline is 5s,
// half the default ReadHeaderTimeout this edge keeps.
func TestMalformedRequestAnsweredAtOnce(t *testing.T) {
	s, in := startHTTPSEdge(t)
	seed(t, s, fra, service("web", nil, endpointOf("e", echoBackend(t))))
	for _, bad := range []string{"HELLO\r\n\r\n", "X\r\n\r\n", "PRI * HTTP/2.0\r\nX\r\n\r\n", "GET /\r\n\r\n"} {
		rc := dialEdge(t, s)
		rc.send(bad)
		if got, closed := readToClose(rc.c, 5*time.Second); !closed || !strings.HasPrefix(got, "HTTP/1.1 400 Bad Request") {
			t.Fatalf("%q: closed %v, answer %q", bad, closed, got)
		}
		// The same after a request the front lane served.
		rc = dialEdge(t, s)
		rc.send("GET / HTTP/1.1\r\nHost: " + testHost + "\r\n\r\n")
		if resp, _ := rc.read("GET"); resp.StatusCode != 200 {
			t.Fatalf("GET before %q: %d", bad, resp.StatusCode)
		}
		rc.send(bad)
		rest, err := io.ReadAll(io.MultiReader(rc.br, deadlineReader{rc.c, 5 * time.Second}))
		if err != nil || !strings.HasPrefix(string(rest), "HTTP/1.1 400 Bad Request") {
			t.Fatalf("%q after a served request: %v, answer %q", bad, err, rest)
		}
	}
	tc, err := tls.Dial("tcp", strings.TrimPrefix(s.TLSURL(), "https://"), &tls.Config{RootCAs: in.Root.Pool(), ServerName: testHost})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	io.WriteString(tc, "HELLO\r\n\r\n")
	if got, closed := readToClose(tc, 5*time.Second); !closed || !strings.HasPrefix(got, "HTTP/1.1 400 Bad Request") {
		t.Fatalf("HTTPS: closed %v, answer %q", closed, got)
	}
	// HTTP/2 with prior knowledge still reaches net/http's h2c server.
	h2c := dialEdge(t, s)
	h2c.send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	h2c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var frame [9]byte
	if _, err := io.ReadFull(h2c.br, frame[:]); err != nil || frame[3] != 0x4 {
		t.Fatalf("h2c preface: want a SETTINGS frame, got % x (%v)", frame, err)
	}
}

// deadlineReader reads a connection with a deadline set at its first read.
type deadlineReader struct {
	c      net.Conn
	within time.Duration
}

func (d deadlineReader) Read(p []byte) (int, error) {
	d.c.SetReadDeadline(time.Now().Add(d.within))
	return d.c.Read(p)
}

// TestStableHeaderOrder: identical answers are byte-identical apart from
// their Date, on the front lane, through net/http (a request with a
// body) and over HTTPS: headers are written in a stable order, not in
// the order of Go's maps.
func TestStableHeaderOrder(t *testing.T) {
	s, in := startHTTPSEdge(t)
	b := newBackend(t, "headers", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		h := w.Header()
		for i := range 12 {
			h.Set(fmt.Sprintf("X-Field-%02d", i), fmt.Sprint(i))
		}
		h.Add("Set-Cookie", "a=1")
		h.Add("Set-Cookie", "b=2")
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", "5")
		io.WriteString(w, "hello")
	})
	seed(t, s, fra, service("web", nil, endpointOf("e", b)))
	// The edge's request id differs per request: it is cut out with Date.
	strip := func(head string) string {
		var keep []string
		for _, l := range strings.Split(head, "\r\n") {
			if !strings.HasPrefix(l, "Date: ") && !strings.HasPrefix(l, "X-Request-Id: ") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\r\n")
	}
	rawHead := func(br *bufio.Reader) string {
		var sb strings.Builder
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("reading an answer: %v (so far %q)", err, sb.String())
			}
			sb.WriteString(l)
			if l == "\r\n" {
				break
			}
		}
		body := make([]byte, 5)
		if _, err := io.ReadFull(br, body); err != nil || string(body) != "hello" {
			t.Fatalf("body %q: %v", body, err)
		}
		return strip(sb.String())
	}
	check := func(name string, c net.Conn, req string) {
		t.Helper()
		br := bufio.NewReader(c)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		var first string
		for i := range 20 {
			io.WriteString(c, req)
			got := rawHead(br)
			if i == 0 {
				first = got
				if !strings.Contains(got, "X-Field-11: 11") || !strings.Contains(got, "Set-Cookie: a=1\r\nSet-Cookie: b=2") {
					t.Fatalf("%s: answer %q", name, got)
				}
			} else if got != first {
				t.Fatalf("%s: answer %d differs:\n%q\nfirst:\n%q", name, i, got, first)
			}
		}
	}
	get := "GET / HTTP/1.1\r\nHost: " + testHost + "\r\n\r\n"
	post := "POST / HTTP/1.1\r\nHost: " + testHost + "\r\nContent-Length: 2\r\n\r\nhi"
	check("front lane", dialEdge(t, s).c, get)
	check("net/http", dialEdge(t, s).c, post)
	tc, err := tls.Dial("tcp", strings.TrimPrefix(s.TLSURL(), "https://"), &tls.Config{RootCAs: in.Root.Pool(), ServerName: testHost})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	check("HTTPS front lane", tc, get)
}
