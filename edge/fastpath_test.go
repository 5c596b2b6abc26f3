package edge

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/testutil"
)

// connCounter counts an instance's connections: opened and closed.
type connCounter struct{ opened, closed atomic.Int64 }

func (c *connCounter) hook(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		c.opened.Add(1)
	case http.StateClosed:
		c.closed.Add(1)
	}
}

// TestFastPathKeepsConnections: sequential GETs reuse one connection to
// the instance; a HEAD too; a response with Connection: close is not
// reused.
func TestFastPathKeepsConnections(t *testing.T) {
	s := startEdge(t, nil)
	var cc connCounter
	b := newBackendWith(t, "kept", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, "kept")
	}, func(srv *http.Server) { srv.ConnState = cc.hook })
	seed(t, s, fra, service("web", nil, endpointOf("k", b)))
	c := client()
	for i := 0; i < 20; i++ {
		if code, body, _ := get(t, c, s.URL(), testHost, "/"); code != 200 || body != "kept" {
			t.Fatalf("GET: %d %q", code, body)
		}
	}
	resp, err := do(c, "HEAD", s.URL(), testHost, "/", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	resp.Body.Close()
	if n := cc.opened.Load(); n != 1 {
		t.Fatalf("the instance saw %d connections for 21 sequential requests, want 1", n)
	}
	get(t, c, s.URL(), testHost, "/close")
	testutil.Eventually(t, 5*time.Second, "the closing connection dropped", func() (bool, string) {
		return cc.closed.Load() == 1, fmt.Sprint(cc.closed.Load())
	})
	get(t, c, s.URL(), testHost, "/")
	if n := cc.opened.Load(); n != 2 {
		t.Fatalf("after Connection: close, %d connections, want a new one (2)", n)
	}
}

// TestFastPathStaleConnection: the instance closes idle keep-alive
// connections; the next GET on such a connection is sent again on a
// fresh one, and a bodyless POST finds the close before sending: neither
// fails.
func TestFastPathStaleConnection(t *testing.T) {
	s := startEdge(t, nil)
	var cc connCounter
	b := newBackendWith(t, "fresh", nil, func(srv *http.Server) {
		srv.ConnState = cc.hook
		srv.IdleTimeout = 50 * time.Millisecond
	})
	seed(t, s, fra, service("web", nil, endpointOf("f", b)))
	c := client()
	for i, method := range []string{"GET", "POST", "GET", "DELETE"} {
		resp, err := do(c, method, s.URL(), testHost, "/", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "fresh" {
			t.Fatalf("%s #%d: %d %q %v", method, i, resp.StatusCode, body, resp.Header)
		}
		want := int64(i + 1)
		testutil.Eventually(t, 5*time.Second, "the instance closed the idle connection", func() (bool, string) {
			return cc.closed.Load() >= want, fmt.Sprint(cc.closed.Load())
		})
	}
	if n := metric(t, s, `meridian_edge_ejections_total`); n != 0 {
		t.Fatalf("stale connections ejected the instance (%v)", n)
	}
}

// TestFastPathHTTPDetails: informational answers are skipped, trailers
// pass, hop-by-hop headers (and those the Connection header names) stay
// behind, an instance failing mid-body breaks the client's response
// instead of ending it cleanly.
func TestFastPathHTTPDetails(t *testing.T) {
	s := startEdge(t, nil)
	b := newBackend(t, "details", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "after hints")
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum")
			io.WriteString(w, "body with trailer")
			w.Header().Set("X-Checksum", "abc123")
		case "/headers":
			fmt.Fprintf(w, "secret=%q keepalive=%q te=%q", r.Header.Get("X-Secret"), r.Header.Get("Keep-Alive"), r.Header.Get("Te"))
		case "/broken":
			conn, brw, _ := http.NewResponseController(w).Hijack()
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
			brw.Flush()
			conn.Close()
		}
	})
	seed(t, s, fra, service("web", nil, endpointOf("d", b)))
	c := client()
	if code, body, _ := get(t, c, s.URL(), testHost, "/hints"); code != 200 || body != "after hints" {
		t.Fatalf("1xx: %d %q", code, body)
	}
	resp, err := do(c, "GET", s.URL(), testHost, "/trailers", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "body with trailer" || resp.Trailer.Get("X-Checksum") != "abc123" {
		t.Fatalf("trailers: %q %v", body, resp.Trailer)
	}
	req, _ := http.NewRequest("GET", s.URL()+"/headers", nil)
	req.Host = testHost
	req.Header.Set("Connection", "X-Secret")
	req.Header.Set("X-Secret", "hop")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Te", "trailers, deflate")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != `secret="" keepalive="" te="trailers"` {
		t.Fatalf("hop-by-hop headers: %s", body)
	}
	resp, err = do(c, "GET", s.URL(), testHost, "/broken", nil)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatalf("a response cut mid-body reached the client as complete")
	}
	if code, _, _ := get(t, c, s.URL(), testHost, "/hints"); code != 200 {
		t.Fatalf("after a broken response: %d", code)
	}
}

// TestFastPathConcurrent: many clients at once through a pool of
// connections, every answer right.
func TestFastPathConcurrent(t *testing.T) {
	s := startEdge(t, nil)
	b := newBackend(t, "c", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Query().Get("n"))
	})
	b2 := newBackend(t, "c2", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Query().Get("n"))
	})
	seed(t, s, fra, service("web", nil, endpointOf("c", b), endpointOf("c2", b2)))
	c := client()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				n := fmt.Sprintf("%d-%d", g, i)
				resp, err := do(c, "GET", s.URL(), testHost, "/?n="+n, nil)
				if err != nil {
					errs <- err
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != n {
					errs <- fmt.Errorf("asked %s, got %q", n, body)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if b.hits.Load() == 0 || b2.hits.Load() == 0 {
		t.Fatalf("unbalanced: %d / %d", b.hits.Load(), b2.hits.Load())
	}
}

// TestFastPathRequestLine: the request line and Host reach the instance
// as sent (path escapes and query intact).
func TestFastPathRequestLine(t *testing.T) {
	s := startEdge(t, nil)
	b := newBackend(t, "line", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s", r.Method, r.RequestURI, r.Host)
	})
	seed(t, s, fra, service("web", nil, endpointOf("l", b)))
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "OPTIONS /a%%2Fb/c?x=1&y=%%20z HTTP/1.1\r\nHost: %s\r\n\r\n", testHost)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if want := "OPTIONS /a%2Fb/c?x=1&y=%20z " + testHost; string(body) != want {
		t.Fatalf("instance saw %q, want %q", body, want)
	}
}
