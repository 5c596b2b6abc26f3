package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The front lane: the plain listener's connections are read by the edge
// itself while their requests are plain HTTP/1.1 without a body or an
// upgrade — most of an edge's traffic — parsed with net/http's own
// request parser (http.ReadRequest) and answered through a small
// HTTP/1.1 response writer. That skips what net/http's server does per
// request on top of the parsing (a background read to notice a client
// leaving, a context, deadlines, its response machinery), about a fifth
// of the edge's CPU per request.
//
// At the first request the lane does not serve (a body, an upgrade,
// HTTP/1.0, HTTP/2 with prior knowledge, Expect, an absolute URI, a route
// to an h2c instance, anything it cannot parse), the connection is handed
// to net/http's server with the bytes read since that request began
// replayed in front of the rest: net/http serves it from then on, with
// its own checks and error answers. A request the lane cannot parse goes
// to a server of HTTP/1 alone: the plain listener's server, which also
// takes HTTP/2 with prior knowledge, first waits for the 24 bytes of
// HTTP/2's preface, so a short malformed request ("HELLO\r\n\r\n") would
// get its 400 only at ReadHeaderTimeout; net/http's HTTP/1 server answers
// it at once. A client that leaves while its
// bodyless request waits on an instance is noticed when the answer is
// written (bounded by ResponseHeaderTimeout), not before.

// front serves a listener's connections.
type front struct {
	s       *Server
	ln      net.Listener
	tls     *tls.Config // set on the HTTPS listener
	handoff *handoffListener
	// malformed takes the connections whose request could not be parsed
	// (the plain listener: a server of HTTP/1 alone); nil: handoff.
	malformed *handoffListener
	served    atomic.Int64 // requests the lane answered
	handed    atomic.Int64 // connections handed to net/http

	mu      sync.Mutex
	conns   map[*frontConn]bool // true while idle (between requests)
	closing bool
	wg      sync.WaitGroup
}

// frontConn is one client connection in the front lane.
type frontConn struct {
	c      net.Conn
	tls    *tls.ConnectionState // HTTPS
	remote string
	rec    recorder
	br     *bufio.Reader
	bw     *bufio.Writer
}

var (
	frontReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	frontWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func newFront(s *Server, ln net.Listener, tc *tls.Config) *front {
	return &front{s: s, ln: ln, tls: tc, conns: map[*frontConn]bool{}, handoff: newHandoffListener(ln.Addr())}
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// serve accepts connections until the listener is closed.
func (f *front) serve() error {
	var delay time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			f.mu.Lock()
			closing := f.closing
			f.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		delay = 0
		fc := &frontConn{c: c, remote: c.RemoteAddr().String()}
		fc.rec.c = c
		fc.rec.limit = f.s.cfg.MaxHeaderBytes + 8<<10
		f.mu.Lock()
		if f.closing {
			f.mu.Unlock()
			c.Close()
			continue
		}
		f.conns[fc] = true
		f.wg.Add(1)
		f.mu.Unlock()
		go f.serveConn(fc)
	}
}

// setIdle records a connection's state; false when the front is closing
// and the connection should end.
func (f *front) setIdle(fc *frontConn, idle bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns[fc] = idle
	return !f.closing
}

// shutdown stops accepting, ends idle connections and waits for the
// requests in flight to finish (their connections close after them), or
// closes everything when ctx ends first.
func (f *front) shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.closing = true
	for fc, idle := range f.conns {
		if idle {
			fc.c.SetReadDeadline(time.Unix(1, 0))
		}
	}
	f.mu.Unlock()
	f.ln.Close()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		f.mu.Lock()
		for fc := range f.conns {
			fc.c.Close()
		}
		f.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// serveConn serves one connection's requests until it closes, fails or
// is handed to net/http.
func (f *front) serveConn(fc *frontConn) {
	cfg := &f.s.cfg
	fc.br = frontReaders.Get().(*bufio.Reader)
	fc.br.Reset(&fc.rec)
	fc.bw = frontWriters.Get().(*bufio.Writer)
	fc.bw.Reset(fc.c)
	handedOff := false
	defer func() {
		f.mu.Lock()
		delete(f.conns, fc)
		f.mu.Unlock()
		if !handedOff {
			fc.c.Close()
		}
		fc.br.Reset(nil)
		frontReaders.Put(fc.br)
		fc.bw.Reset(nil)
		frontWriters.Put(fc.bw)
		f.wg.Done()
	}()
	if f.tls != nil {
		// HTTPS: the handshake within ReadHeaderTimeout; HTTP/2 goes to
		// net/http at once (the *tls.Conn itself, so that it serves h2).
		tc := tls.Server(fc.c, f.tls)
		fc.c.SetReadDeadline(time.Now().Add(cfg.ReadHeaderTimeout))
		if err := tc.HandshakeContext(f.s.ctx); err != nil {
			var re tls.RecordHeaderError
			if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
				io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
			}
			f.s.log.Debug("TLS handshake failed", "remote", fc.remote, "err", err)
			return
		}
		state := tc.ConnectionState()
		f.mu.Lock()
		fc.c, fc.tls, fc.rec.c = tc, &state, tc
		f.mu.Unlock()
		fc.bw.Reset(tc)
		if state.NegotiatedProtocol == "h2" {
			f.handed.Add(1)
			tc.SetReadDeadline(time.Time{})
			handedOff = f.handoff.give(tc)
			return
		}
	}
	for {
		if fc.br.Buffered() == 0 {
			if !f.setIdle(fc, true) {
				return
			}
			fc.c.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
			if _, err := fc.br.Peek(1); err != nil {
				return
			}
			if !f.setIdle(fc, false) {
				return
			}
		}
		fc.c.SetReadDeadline(time.Now().Add(cfg.ReadHeaderTimeout))
		fc.rec.start(fc.br)
		r, err := http.ReadRequest(fc.br)
		fc.rec.on = false
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isTimeout(err) {
				return // the client left or was too slow: nothing to answer
			}
			to := f.handoff
			if f.malformed != nil {
				to = f.malformed
			}
			handedOff = f.handOff(fc, to)
			return
		}
		if !f.takes(r) {
			handedOff = f.handOff(fc, f.handoff)
			return
		}
		r.RemoteAddr = fc.remote
		r.TLS = fc.tls
		w := &h1Writer{bw: fc.bw, h: make(http.Header, 8), head: r.Method == http.MethodHead, closeAfter: r.Close}
		f.served.Add(1)
		if !f.serveRequest(w, r) {
			return
		}
		f.mu.Lock()
		closing := f.closing
		f.mu.Unlock()
		if w.closeAfter || closing {
			return
		}
	}
}

// serveRequest runs the edge's handler for one request; false when the
// connection must close (an aborted or broken answer).
func (f *front) serveRequest(w *h1Writer, r *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				f.s.log.Error("panic serving a request", "panic", v, "host", r.Host, "path", r.URL.Path)
			}
			ok = false
		}
	}()
	f.mu.Lock()
	w.closeAfter = w.closeAfter || f.closing
	f.mu.Unlock()
	f.s.ServeHTTP(w, r)
	return w.finish() == nil
}

// takes reports whether the front lane serves a request: plain HTTP/1.1
// in origin form, a valid Host, no body, upgrade or Expect, valid
// header fields, and not a route to an h2c instance.
func (f *front) takes(r *http.Request) bool {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Method == "CONNECT" || r.Method == "PRI" ||
		r.Body != http.NoBody || r.URL.Host != "" || r.RequestURI == "" || r.RequestURI[0] != '/' {
		return false
	}
	h := r.Header
	if h["Upgrade"] != nil || h["Expect"] != nil || h["Content-Length"] != nil || h["Transfer-Encoding"] != nil {
		return false
	}
	if r.Host == "" || !httpguts.ValidHostHeader(r.Host) {
		return false // no Host (http.ReadRequest drops the header) or a bad one
	}
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	if app := f.s.table.Load().hosts[hostOf(r.Host)]; app != nil {
		if rt := app.match(r.URL.Path); rt != nil && rt.h2c {
			return false
		}
	}
	return true
}

// handOff gives the connection to a net/http server's listener, the
// bytes read since the current request began replayed first; false when
// the server is closed (the connection is then closed by the caller).
func (f *front) handOff(fc *frontConn, to *handoffListener) bool {
	f.handed.Add(1)
	replay := make([]byte, len(fc.rec.buf))
	copy(replay, fc.rec.buf)
	fc.c.SetReadDeadline(time.Time{})
	return to.give(&replayConn{Conn: fc.c, replay: replay, tls: fc.tls})
}

// looksLikeHTTP reports whether a TLS record header is the start of a
// plain HTTP request (as net/http checks).
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

type tlsStateKey struct{}

// connContext gives net/http's requests on a handed-off HTTPS connection
// the connection's TLS state (net/http sets Request.TLS only for a
// *tls.Conn, and a replayed one is wrapped).
func connContext(ctx context.Context, c net.Conn) context.Context {
	if rc, ok := c.(*replayConn); ok && rc.tls != nil {
		return context.WithValue(ctx, tlsStateKey{}, rc.tls)
	}
	return ctx
}

// tlsStateOf is the TLS state connContext recorded, or nil.
func tlsStateOf(ctx context.Context) *tls.ConnectionState {
	cs, _ := ctx.Value(tlsStateKey{}).(*tls.ConnectionState)
	return cs
}

// recorder reads a connection and, while on, keeps a copy of what it
// read, so that a request can be replayed to net/http. It refuses to read
// past limit bytes recorded (the request's headers are too large: the
// replay then makes net/http answer 431).
type recorder struct {
	c     net.Conn
	buf   []byte
	on    bool
	limit int
}

var errRecordFull = errors.New("request headers too large")

// start begins a request's recording with what the reader holds already.
func (r *recorder) start(br *bufio.Reader) {
	r.buf = r.buf[:0]
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		r.buf = append(r.buf, b...)
	}
	r.on = true
}

func (r *recorder) Read(p []byte) (int, error) {
	if r.on && len(r.buf) >= r.limit {
		return 0, errRecordFull
	}
	n, err := r.c.Read(p)
	if r.on && n > 0 {
		r.buf = append(r.buf, p[:n]...)
	}
	return n, err
}

// replayConn reads its replay bytes before the connection's; tls is the
// state of an HTTPS connection.
type replayConn struct {
	net.Conn
	replay []byte
	tls    *tls.ConnectionState
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes a TCP connection (net/http uses it to end a
// connection gracefully).
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// handoffListener is the listener net/http's server serves: it yields
// the connections the front lane hands over.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

// h1Writer is the front lane's http.ResponseWriter: it writes an
// HTTP/1.1 response to the connection's buffer — with the handler's
// Content-Length when it set one, chunked otherwise (trailers included),
// no body for HEAD, 1xx, 204 and 304 — and flushes on Flush and at the
// end.
type h1Writer struct {
	bw          *bufio.Writer
	h           http.Header
	head        bool // answering HEAD
	closeAfter  bool // Connection: close
	status      int
	wroteHeader bool
	noBody      bool
	chunked     bool
	length      int64 // the declared Content-Length, -1 if none
	written     int64
	trailers    []string
	err         error
}

var errBodyTooLong = errors.New("response body longer than its Content-Length")

func (w *h1Writer) Header() http.Header { return w.h }

func (w *h1Writer) WriteHeader(code int) {
	if w.wroteHeader || code < 200 {
		return // informational answers are not relayed on this lane
	}
	w.wroteHeader, w.status = true, code
	h := w.h
	w.length = -1
	if v := h["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			w.length = n
		} else {
			delete(h, "Content-Length")
		}
	} else if len(v) > 1 {
		delete(h, "Content-Length")
	}
	for _, v := range h["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(k))
			}
		}
	}
	for _, v := range h["Connection"] {
		if strings.Contains(strings.ToLower(v), "close") {
			w.closeAfter = true
		}
	}
	delete(h, "Transfer-Encoding")
	delete(h, "Connection")
	switch {
	case code == http.StatusNoContent || code == http.StatusNotModified:
		w.noBody = true
		if code == http.StatusNoContent {
			delete(h, "Content-Length")
		}
	case w.head:
		w.noBody = true
	case w.length < 0 || len(w.trailers) > 0:
		w.chunked = true
		delete(h, "Content-Length")
	}
	bw := w.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.WriteString(strconv.Itoa(code))
	}
	bw.WriteString("\r\n")
	var kb [32]string
	for _, k := range sortedKeys(h, kb[:0]) {
		if !strings.HasPrefix(k, http.TrailerPrefix) {
			writeField(bw, k, h[k])
		}
	}
	if h["Date"] == nil {
		bw.WriteString("Date: ")
		bw.WriteString(httpDate())
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if w.closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

func (w *h1Writer) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		if w.head {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.length >= 0 && !w.chunked && w.written+int64(len(p)) > w.length {
		w.err = errBodyTooLong
		w.closeAfter = true
		return 0, w.err
	}
	w.written += int64(len(p))
	if w.chunked {
		var hex [16]byte
		w.bw.Write(strconv.AppendInt(hex[:0], int64(len(p)), 16))
		w.bw.WriteString("\r\n")
		w.bw.Write(p)
		_, w.err = w.bw.WriteString("\r\n")
	} else {
		_, w.err = w.bw.Write(p)
	}
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// Flush sends what is buffered to the client.
func (w *h1Writer) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err == nil {
		w.err = w.bw.Flush()
	}
}

// finish ends the response (the last chunk and the trailers) and flushes
// it; an answer shorter than its Content-Length closes the connection.
func (w *h1Writer) finish() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	if w.chunked {
		w.bw.WriteString("0\r\n")
		var kb [32]string
		for _, k := range sortedKeys(w.h, kb[:0]) {
			name, prefixed := strings.CutPrefix(k, http.TrailerPrefix)
			if !prefixed && !containsFold(w.trailers, k) {
				continue
			}
			if httpguts.ValidHeaderFieldName(name) {
				writeField(w.bw, name, w.h[k])
			}
		}
		w.bw.WriteString("\r\n")
	} else if !w.noBody && w.length >= 0 && w.written != w.length {
		w.closeAfter = true
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	if w.closeAfter {
		return errors.New("connection closes")
	}
	return nil
}

// httpDate is the current time in the Date header's format, computed once
// a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateText{unix: now, text: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	unix int64
	text string
}

var cachedDate atomic.Pointer[dateText]
