package imagetest

import (
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Proxy is a reverse proxy in front of a registry, standing for the
// upstream registry in tests: it counts the requests it carries and the
// blob bytes it sends, and can corrupt a blob on its way (the registry's
// content stays whole). Name images by Proxy.Host to pull through it.
type Proxy struct {
	// Host is its "127.0.0.1:port".
	Host string
	srv  *http.Server
	ln   net.Listener

	mu        sync.Mutex
	requests  map[string]int // "METHOD path" -> count
	blobBytes int64
	corrupt   map[string]bool // digests whose bytes are altered
}

// StartProxy starts a Proxy to the registry at target ("host:port") on a
// free loopback port; it stops when the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Host: ln.Addr().String(), ln: ln, requests: map[string]int{}, corrupt: map[string]bool{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.ModifyResponse = p.modify
	rp.ErrorLog = nil
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests[r.Method+" "+r.URL.Path]++
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// modify counts blob bytes and corrupts the blobs named by Corrupt.
func (p *Proxy) modify(resp *http.Response) error {
	if resp.Request.Method != http.MethodGet || !strings.Contains(resp.Request.URL.Path, "/blobs/") {
		return nil
	}
	digest := resp.Request.URL.Path[strings.LastIndex(resp.Request.URL.Path, "/")+1:]
	p.mu.Lock()
	bad := p.corrupt[digest]
	p.mu.Unlock()
	resp.Body = &countingBody{ReadCloser: resp.Body, p: p, flip: bad}
	return nil
}

type countingBody struct {
	io.ReadCloser
	p    *Proxy
	flip bool
	n    int64
}

func (c *countingBody) Read(b []byte) (int, error) {
	k, err := c.ReadCloser.Read(b)
	if c.flip && c.n == 0 && k > 0 {
		b[0] ^= 0xff // same length, another digest
	}
	c.n += int64(k)
	c.p.mu.Lock()
	c.p.blobBytes += int64(k)
	c.p.mu.Unlock()
	return k, err
}

// Corrupt makes the proxy alter the first byte of blob digest
// ("sha256:...") in every answer from now on.
func (p *Proxy) Corrupt(digest string) {
	p.mu.Lock()
	p.corrupt[digest] = true
	p.mu.Unlock()
}

// Requests returns how many requests of method for path ("/v2/...") the
// proxy carried.
func (p *Proxy) Requests(method, path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[method+" "+path]
}

// BlobGets returns how many times blob digest of repository repo was
// fetched (GET).
func (p *Proxy) BlobGets(repo, digest string) int {
	return p.Requests(http.MethodGet, "/v2/"+repo+"/blobs/"+digest)
}

// AllBlobGets returns the GETs of every blob, by path.
func (p *Proxy) AllBlobGets() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, n := range p.requests {
		if path, ok := strings.CutPrefix(k, http.MethodGet+" "); ok && strings.Contains(path, "/blobs/") {
			out[path] = n
		}
	}
	return out
}

// BlobBytes returns the blob bytes the proxy sent.
func (p *Proxy) BlobBytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobBytes
}
