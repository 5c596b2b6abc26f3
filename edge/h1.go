package edge

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The fast path: a request without a body and without an upgrade — most
// of an edge's traffic — is proxied by the handler's own goroutine over a
// kept-alive HTTP/1.1 connection of the endpoint's pool: the request is
// written straight from the inbound headers and the response read on the
// same goroutine, which costs about half the CPU of
// httputil.ReverseProxy over http.Transport (no request clone, no
// read and write loops per connection). Requests with bodies, upgrades
// (WebSockets) and HTTP/2 instances take the ReverseProxy path.

// Connection pool limits per endpoint.
const (
	maxIdlePerEndpoint = 256
	// idleConnTimeout closes idle connections; one idle longer than
	// idleProbeAfter is checked for a close by the instance before reuse.
	idleConnTimeout = 60 * time.Second
	idleProbeAfter  = time.Second
)

// upConn is a kept-alive HTTP/1.1 connection to an instance (TLS to its
// machine's node proxy).
type upConn struct {
	c     net.Conn
	raw   net.Conn // the connection under TLS, checked by alive
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time   // idle since
	cut   atomic.Bool // interrupted because its region stopped answering
}

// connPool holds an endpoint's connections: idle ones for reuse, busy
// ones so that a region cut can interrupt them.
type connPool struct {
	mu     sync.Mutex
	idle   []*upConn
	busy   map[*upConn]time.Time // since when
	closed bool
}

// get returns an idle connection (reused) or nil. A connection idle for
// more than idleProbeAfter, or any when check is set (a request that may
// not be sent twice), is first checked for a close by the instance.
func (p *connPool) get(now time.Time, check bool) *upConn {
	p.mu.Lock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		uc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		idle := now.Sub(uc.since)
		if idle > idleConnTimeout {
			p.mu.Unlock()
			uc.c.Close()
			p.mu.Lock()
			continue
		}
		if (check || idle > idleProbeAfter) && !alive(uc) {
			p.mu.Unlock()
			uc.c.Close()
			p.mu.Lock()
			continue
		}
		p.markBusy(uc, now)
		p.mu.Unlock()
		return uc
	}
	p.mu.Unlock()
	return nil
}

func (p *connPool) markBusy(uc *upConn, now time.Time) {
	if p.busy == nil {
		p.busy = map[*upConn]time.Time{}
	}
	p.busy[uc] = now
}

// add registers a new connection as busy.
func (p *connPool) add(uc *upConn, now time.Time) {
	p.mu.Lock()
	p.markBusy(uc, now)
	p.mu.Unlock()
}

// put returns a connection after a complete exchange (reuse true) or
// drops it.
func (p *connPool) put(uc *upConn, reuse bool, now time.Time) {
	p.mu.Lock()
	delete(p.busy, uc)
	if reuse && !uc.cut.Load() && !p.closed && len(p.idle) < maxIdlePerEndpoint {
		uc.since = now
		p.idle = append(p.idle, uc)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	uc.c.Close()
}

// interrupt fails the exchanges in flight since before a time (their
// reads and writes time out at once) and closes the idle connections: the
// region stopped answering.
func (p *connPool) interrupt(before time.Time) {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	for uc, since := range p.busy {
		if since.Before(before) {
			uc.cut.Store(true)
			uc.c.SetDeadline(time.Unix(1, 0))
		}
	}
	p.mu.Unlock()
	for _, uc := range idle {
		uc.c.Close()
	}
}

// close drops the pool: idle connections now, busy ones when done.
func (p *connPool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		uc.c.Close()
	}
}

// closeIdle closes the connections idle longer than idleConnTimeout.
func (p *connPool) closeIdle(now time.Time) {
	p.mu.Lock()
	var old []*upConn
	keep := p.idle[:0]
	for _, uc := range p.idle {
		if now.Sub(uc.since) > idleConnTimeout {
			old = append(old, uc)
		} else {
			keep = append(keep, uc)
		}
	}
	p.idle = keep
	p.mu.Unlock()
	for _, uc := range old {
		uc.c.Close()
	}
}

// alive checks that the instance has not closed an idle connection: a
// non-blocking peek at the socket under TLS finds nothing to read on a
// live one (EAGAIN), and end of file or bytes (the node proxy's
// close_notify, say) on one to drop. Connections that are not sockets
// count as alive.
func alive(uc *upConn) bool {
	if uc.br.Buffered() > 0 {
		return false // unsolicited bytes: not a clean connection
	}
	sc, ok := uc.raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	live := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		live = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true
	})
	return err == nil && live
}

// hopHeaders are not forwarded (RFC 9110 7.6.1), nor are the forwarding
// headers the edge sets itself.
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

var setHeaders = map[string]bool{
	"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true, "X-Request-Id": true,
	ClientRequestIDHeader: true,
}

// connectionTokens returns the header names a Connection header lists
// (hop-by-hop too), or nil.
func connectionTokens(h http.Header) []string {
	var out []string
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				out = append(out, textproto.CanonicalMIMEHeaderKey(f))
			}
		}
	}
	return out
}

// fastPath reports whether a request takes the fast path.
func fastPath(r *http.Request, rt *route) bool {
	return (r.Body == nil || r.Body == http.NoBody) && !rt.h2c && r.Header["Upgrade"] == nil && r.Method != "CONNECT"
}

// writeRequest writes the request to an instance: the inbound request's
// method, URI and headers without hop-by-hop ones, and the forwarding
// headers with the request's ids.
func writeRequest(bw *bufio.Writer, r *http.Request, st *reqState) error {
	uri := r.RequestURI
	if uri == "" || uri[0] != '/' {
		uri = r.URL.RequestURI()
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	tokens := connectionTokens(r.Header)
	var kb [32]string
	for _, k := range sortedKeys(r.Header, kb[:0]) {
		if !hopHeaders[k] && !setHeaders[k] && (tokens == nil || !containsFold(tokens, k)) {
			writeField(bw, k, r.Header[k])
		}
	}
	for _, v := range r.Header["Te"] {
		if strings.Contains(strings.ToLower(v), "trailers") {
			bw.WriteString("Te: trailers\r\n")
			break
		}
	}
	bw.WriteString("X-Forwarded-For: ")
	for _, prior := range r.Header["X-Forwarded-For"] {
		bw.WriteString(prior)
		bw.WriteString(", ")
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		bw.WriteString(ip)
	} else {
		bw.WriteString(r.RemoteAddr)
	}
	bw.WriteString("\r\nX-Forwarded-Host: ")
	bw.WriteString(r.Host)
	if r.TLS != nil {
		bw.WriteString("\r\nX-Forwarded-Proto: https\r\nX-Request-Id: ")
	} else {
		bw.WriteString("\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ")
	}
	bw.WriteString(st.id)
	if st.clientID != "" {
		bw.WriteString("\r\n" + ClientRequestIDHeader + ": ")
		bw.WriteString(st.clientID)
	}
	bw.WriteString("\r\n\r\n")
	return bw.Flush()
}

// sortedKeys returns a header's names in order, appended to buf (a
// caller's array, so that a usual header allocates nothing): headers are
// written in a stable order, as net/http's server does, not in the random
// order of Go's maps.
func sortedKeys(h http.Header, buf []string) []string {
	for k := range h {
		buf = append(buf, k)
	}
	slices.Sort(buf)
	return buf
}

// writeField writes a header field's lines.
func writeField(bw *bufio.Writer, k string, vv []string) {
	for _, v := range vv {
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(v)
		bw.WriteString("\r\n")
	}
}

func containsFold(list []string, k string) bool {
	for _, t := range list {
		if t == k {
			return true
		}
	}
	return false
}

// exchange sends a request over one of the endpoint's connections (a
// fresh one when the idle one turns out closed) and reads the response
// headers. The connection stays busy until the caller puts it back.
func (s *Server) exchange(r *http.Request, ep *endpoint, st *reqState, retryable bool) (*http.Response, *upConn, error) {
	now := time.Now()
	timeout := s.cfg.ResponseHeaderTimeout
	if retryable && s.cfg.TryTimeout > 0 && s.cfg.TryTimeout < timeout {
		timeout = s.cfg.TryTimeout
	}
	for fresh := false; ; fresh = true {
		var uc *upConn
		if !fresh {
			uc = ep.pool.get(now, !retryable)
		}
		reused := uc != nil
		if uc == nil {
			c, err := s.dialInstance(r.Context(), ep)
			if err != nil {
				return nil, nil, err
			}
			uc = &upConn{c: c, raw: c, br: bufio.NewReaderSize(c, 8<<10), bw: bufio.NewWriterSize(c, 4<<10)}
			if tc, ok := c.(*tls.Conn); ok {
				uc.raw = tc.NetConn()
			}
			ep.pool.add(uc, now)
		}
		uc.c.SetReadDeadline(now.Add(timeout))
		err := writeRequest(uc.bw, r, st)
		var resp *http.Response
		if err == nil {
			resp, err = readResponse(uc.br, r)
		}
		if err == nil {
			uc.c.SetReadDeadline(time.Time{})
			return resp, uc, nil
		}
		ep.pool.put(uc, false, now)
		if uc.cut.Load() {
			return nil, nil, errRegionUnreachable
		}
		// A kept-alive connection the instance closed meanwhile: again on
		// a fresh one, when that is safe (nothing of the request was
		// taken: a write failed, or the read found the connection closed
		// at once and the request may be sent twice).
		if reused && !ep.region.unreachable.Load() && staleConn(err) && (retryable || isWriteErr(err)) {
			continue
		}
		return nil, nil, err
	}
}

// readResponse reads a response's headers, skipping informational (1xx)
// responses; a 101 to a request that asked no upgrade is an error.
func readResponse(br *bufio.Reader, r *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, r)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, errors.New("the instance switched protocols without being asked")
		}
		if resp.StatusCode >= 200 {
			return resp, nil
		}
	}
}

// staleConn reports an error of a connection the other side had closed.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

func isWriteErr(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "write"
}

// serveFast proxies a request on the fast path, with the same choice of
// instance and retry policy as the ReverseProxy path.
func (s *Server) serveFast(w http.ResponseWriter, r *http.Request, st *reqState) {
	idem := idempotent(r)
	var triedBuf [4]*endpoint
	tried := triedBuf[:0]
	var last *proxyError
	for {
		if r.Context().Err() != nil {
			s.answer(w, st, 499, ReasonClientGone, "client closed the request")
			return
		}
		now := s.cfg.Now().UnixNano()
		ep := pick(st.route, tried, now)
		if ep == nil {
			if last == nil {
				last = &proxyError{status: http.StatusServiceUnavailable, reason: ReasonNoInstance}
			}
			s.answerError(w, st, last)
			return
		}
		tried = append(tried, ep)
		st.attempts++
		st.target = targetOf(st.route, ep)
		ep.inflight.Add(1)
		resp, uc, err := s.exchange(r, ep, st, idem)
		if err == nil {
			s.recordAnswer(ep, resp.StatusCode)
			s.metrics.attempts.WithLabelValues(ep.region.info.ID, "ok").Inc()
			s.copyResponse(w, st, ep, uc, resp)
			return
		}
		ep.inflight.Add(-1)
		var retry bool
		last, retry = s.failed(ep, err, now, idem, true, len(tried), st)
		if !retry {
			s.answerError(w, st, last)
			return
		}
	}
}

// copyResponse sends an instance's response to the client and puts the
// connection back when the body was read whole.
func (s *Server) copyResponse(w http.ResponseWriter, st *reqState, ep *endpoint, uc *upConn, resp *http.Response) {
	st.status = resp.StatusCode
	reuse := false
	defer func() {
		ep.inflight.Add(-1)
		ep.pool.put(uc, reuse && !resp.Close, time.Now())
	}()
	h := w.Header()
	tokens := connectionTokens(resp.Header)
	for k, vv := range resp.Header {
		if hopHeaders[k] || (tokens != nil && containsFold(tokens, k)) {
			continue
		}
		h[k] = vv
	}
	h.Set("X-Request-Id", st.id)
	h.Set(RegionHeader, ep.region.info.ID)
	if n := len(resp.Trailer); n > 0 {
		h.Add("Trailer", strings.Join(sortedKeys(resp.Trailer, make([]string, 0, n)), ", "))
	}
	w.WriteHeader(resp.StatusCode)
	flush := resp.ContentLength == -1 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	fl, _ := w.(http.Flusher)
	buf := s.bufs.Get()
	defer s.bufs.Put(buf)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // the client went away: the connection is dropped
			}
			if flush && fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The instance failed mid-body: abort the client's response
			// rather than end it as if complete.
			s.log.Debug("instance failed mid-response", "id", st.id, "instance", ep.instance, "err", rerr)
			panic(http.ErrAbortHandler)
		}
	}
	for k, vv := range resp.Trailer {
		if _, announced := h["Trailer"]; !announced {
			k = http.TrailerPrefix + k
		}
		h[k] = vv
	}
	reuse = true
}
