package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-run/meridian/meshwire"
)

// The X-Meridian-Error reasons of the edge's own answers.
const (
	ReasonUnknownHost    = "unknown-host"            // 404: no app at this host name
	ReasonNoRoute        = "no-route"                // 404: no route of the app matches the path
	ReasonNoInstance     = "no-healthy-instance"     // 503: no healthy instance anywhere
	ReasonConnectFailed  = "upstream-connect-failed" // 502: no instance could be connected
	ReasonUpstreamFailed = "upstream-failed"         // 502: the connection failed after the request was sent
	ReasonTimeout        = "upstream-timeout"        // 504: no response headers in time
	ReasonTooLarge       = "request-too-large"       // 413: body over the limit
	ReasonClientTimeout  = "client-timeout"          // 408: the body did not arrive within ReadTimeout
	ReasonBadBody        = "bad-request-body"        // 400: the body could not be read
	ReasonClientGone     = "client-gone"             // 499 (logs and metrics only): the client went away
	ReasonMethod         = "method-not-allowed"      // 405: CONNECT
)

// ErrorHeader names the reason of an answer the edge made itself.
const ErrorHeader = "X-Meridian-Error"

// ClientRequestIDHeader carries, to the instance, the X-Request-Id a
// client sent (when it is 1 to 128 printable characters without spaces):
// the edge sets X-Request-Id to its own id on every request, so that a
// client cannot choose the id the logs of the edge and the instance are
// searched by.
const ClientRequestIDHeader = "X-Client-Request-Id"

// RegionHeader names the region whose instance answered.
const RegionHeader = "X-Meridian-Region"

// proxyError is a failed request's answer.
type proxyError struct {
	status int
	reason string
	err    error
}

func (e *proxyError) Error() string {
	if e.err == nil {
		return e.reason
	}
	return e.reason + ": " + e.err.Error()
}
func (e *proxyError) Unwrap() error { return e.err }

// errTryTimeout cuts an attempt without response headers after TryTimeout.
var errTryTimeout = errors.New("no response headers within the try timeout")

// dialError marks a failure to connect: nothing of the request was sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// reqState is what the edge knows of one request while serving it.
type reqState struct {
	start    time.Time
	id       string // the edge's request id
	clientID string // the client's X-Request-Id, if valid
	app      *appRoutes
	route    *route
	target   *target // the one that answered (or was tried last)
	attempts int
	cuts     int // attempts cut because their region stopped answering
	status   int
	reason   string
	bodyMu   sync.Mutex
	bodyErr  error // reading the client's body failed (not EOF)
}

// setBodyErr records the first error reading the client's body (read by
// the transport's goroutine).
func (st *reqState) setBodyErr(err error) {
	st.bodyMu.Lock()
	if st.bodyErr == nil {
		st.bodyErr = err
	}
	st.bodyMu.Unlock()
}

func (st *reqState) bodyError() error {
	st.bodyMu.Lock()
	defer st.bodyMu.Unlock()
	return st.bodyErr
}

type stateKey struct{}

func stateOf(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// bufferPool recycles 32 KiB copy buffers (a channel: no allocation per
// Get or Put, unlike a sync.Pool of slices).
type bufferPool struct{ ch chan []byte }

func newBufferPool() *bufferPool { return &bufferPool{ch: make(chan []byte, 1024)} }

func (b *bufferPool) Get() []byte {
	select {
	case buf := <-b.ch:
		return buf
	default:
		return make([]byte, 32<<10)
	}
}

func (b *bufferPool) Put(buf []byte) {
	select {
	case b.ch <- buf:
	default:
	}
}

// setupProxy builds the reverse proxy and its transports.
func (s *Server) setupProxy() {
	s.bufs = newBufferPool()
	// The transports' pools are keyed by each endpoint's poolHost; the
	// attempt's context says which endpoint to dial.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ep, _ := ctx.Value(endpointKey{}).(*endpoint)
		if ep == nil || ep.poolHost != addr {
			return nil, &dialError{fmt.Errorf("no endpoint to dial for %s", addr)}
		}
		return s.dialInstance(ctx, ep)
	}
	newTransport := func(h2c bool) *http.Transport {
		t := &http.Transport{
			DialContext:           dial,
			MaxIdleConns:          4096,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: s.cfg.ResponseHeaderTimeout,
			ExpectContinueTimeout: time.Second,
			DisableCompression:    true,
			ReadBufferSize:        16 << 10,
			WriteBufferSize:       16 << 10,
		}
		if h2c {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			t.Protocols = &p
		}
		return t
	}
	s.transport, s.h2cTransport = newTransport(false), newTransport(true)
	s.globalTransport = &http.Transport{TLSClientConfig: globalTLS(s.cfg.Identity.Roots()), ForceAttemptHTTP2: true,
		TLSHandshakeTimeout: 10 * time.Second, IdleConnTimeout: time.Minute}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "instance.invalid" // set per attempt
			pr.Out.Host = pr.In.Host
			if prior := pr.In.Header["X-Forwarded-For"]; len(prior) > 0 {
				pr.Out.Header["X-Forwarded-For"] = prior
			}
			pr.SetXForwarded()
			pr.Out.Header.Del(ClientRequestIDHeader)
			if st := stateOf(pr.In.Context()); st != nil {
				pr.Out.Header.Set("X-Request-Id", st.id)
				if st.clientID != "" {
					pr.Out.Header.Set(ClientRequestIDHeader, st.clientID)
				}
			}
		},
		Transport:    upstream{s},
		BufferPool:   s.bufs,
		ErrorHandler: s.proxyError,
		ModifyResponse: func(resp *http.Response) error {
			if st := stateOf(resp.Request.Context()); st != nil {
				st.status = resp.StatusCode
				resp.Header.Set("X-Request-Id", st.id)
				if st.target != nil {
					resp.Header.Set(RegionHeader, st.target.region.info.ID)
				}
			}
			return nil
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// endpointKey is the context key of the endpoint an attempt dials.
type endpointKey struct{}

// dialInstance connects to an endpoint's instance through its machine's
// node proxy: TCP within ConnectTimeout, then TLS 1.3 with the edge's
// certificate (the machine's, issued by its region's CA, verified), the
// preamble naming the instance's declared port and the proxy's answer
// within HandshakeTimeout. A dial waiting on a region found unreachable
// is cut. A failure is a *dialError: nothing of the request was sent.
func (s *Server) dialInstance(ctx context.Context, ep *endpoint) (net.Conn, error) {
	ctx, cut := context.WithCancelCause(ctx)
	defer cut(nil)
	stopCut := context.AfterFunc(ep.region.attemptScope(), func() { cut(errRegionUnreachable) })
	defer stopCut()
	cctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	raw, err := s.cfg.Dial(cctx, "tcp", ep.meshAddr)
	cancel()
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return nil, &dialError{err}
	}
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(hctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	ep.tlsOnce.Do(func() { ep.tls = s.cfg.Identity.instanceTLS(ep.region.info.ID, ep.machine) })
	tc := tls.Client(raw, ep.tls)
	err = tc.HandshakeContext(hctx)
	if err == nil && tc.ConnectionState().NegotiatedProtocol != meshwire.EdgeALPN {
		err = errors.New("the node proxy does not speak " + meshwire.EdgeALPN)
	}
	if err == nil {
		_, err = tc.Write(meshwire.AppendPreamble(make([]byte, 0, 8+len(ep.instance)), ep.instance, ep.port))
	}
	if err == nil {
		err = meshwire.ReadStatus(tc)
	}
	if !stop() && err == nil {
		err = hctx.Err() // the deadline fired after all: the connection is spoilt
	}
	if err != nil {
		raw.Close()
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return nil, &dialError{fmt.Errorf("instance %s via %s's node proxy %s: %w", ep.instance, ep.machine, ep.meshAddr, err)}
	}
	return tc, nil
}

// ServeHTTP routes one public request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		r.TLS = tlsStateOf(r.Context()) // an HTTPS connection the front lane handed over
	}
	st := &reqState{start: time.Now(), id: s.reqPrefix + strconv.FormatUint(s.reqSeq.Add(1), 36)}
	if v := r.Header["X-Request-Id"]; len(v) > 0 && validRequestID(v[0]) {
		st.clientID = v[0]
	}
	s.metrics.inflight.Inc()
	defer s.finish(r, st)
	host := hostOf(r.Host)
	t := s.table.Load()
	st.app = t.hosts[host]
	if st.app == nil {
		s.answer(w, st, http.StatusNotFound, ReasonUnknownHost, "no app is served at this host name")
		return
	}
	st.route = st.app.match(r.URL.Path)
	if st.route == nil {
		s.answer(w, st, http.StatusNotFound, ReasonNoRoute, "no route of this app matches the path")
		return
	}
	if r.Method == "CONNECT" {
		s.answer(w, st, http.StatusMethodNotAllowed, ReasonMethod, "CONNECT is not served")
		return
	}
	if fastPath(r, st.route) {
		s.serveFast(w, r, st)
		return
	}
	if r.ContentLength > s.cfg.MaxBodyBytes {
		w.Header().Set("Connection", "close")
		s.answer(w, st, http.StatusRequestEntityTooLarge, ReasonTooLarge, "the request body is over "+strconv.FormatInt(s.cfg.MaxBodyBytes, 10)+" bytes")
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	}
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
}

// validRequestID accepts a client's X-Request-Id (passed on as
// X-Client-Request-Id): 1 to 128 printable
// characters without spaces.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// answer writes the edge's own answer: a short text naming nothing
// internal, with the reason in X-Meridian-Error.
func (s *Server) answer(w http.ResponseWriter, st *reqState, status int, reason, msg string) {
	st.status, st.reason = status, reason
	h := w.Header()
	h.Set(ErrorHeader, reason)
	h.Set("X-Request-Id", st.id)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	body := strconv.Itoa(status) + " " + http.StatusText(status) + ": " + msg + "\n"
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// proxyError answers a request whose attempts failed.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateOf(r.Context())
	if st == nil {
		st = &reqState{}
	}
	var pe *proxyError
	var mbe *http.MaxBytesError
	bodyErr := st.bodyError()
	switch {
	case errors.As(err, &mbe) || errors.As(bodyErr, &mbe):
		w.Header().Set("Connection", "close")
		s.answer(w, st, http.StatusRequestEntityTooLarge, ReasonTooLarge, "the request body is over "+strconv.FormatInt(s.cfg.MaxBodyBytes, 10)+" bytes")
	case bodyErr != nil && isTimeout(bodyErr):
		w.Header().Set("Connection", "close")
		s.answer(w, st, http.StatusRequestTimeout, ReasonClientTimeout, "the request body did not arrive in time")
	case bodyErr != nil:
		w.Header().Set("Connection", "close")
		s.answer(w, st, http.StatusBadRequest, ReasonBadBody, "the request body could not be read")
	case r.Context().Err() != nil:
		// The client went away: nobody reads this, but it must not be
		// taken for a success.
		s.answer(w, st, 499, ReasonClientGone, "client closed the request")
	case errors.As(err, &pe):
		s.answerError(w, st, pe)
	default:
		s.answer(w, st, http.StatusBadGateway, ReasonUpstreamFailed, "the instance failed before answering")
	}
	s.log.Debug("request failed", "id", st.id, "reason", st.reason, "attempts", st.attempts, "err", err)
}

// failureMessages are the bodies of the answers to failed requests.
var failureMessages = map[string]string{
	ReasonNoInstance:     "no healthy instance of this app can take the request",
	ReasonConnectFailed:  "no instance of this app could be reached",
	ReasonUpstreamFailed: "the instance failed before answering",
	ReasonTimeout:        "the instance did not answer in time",
}

// answerError answers a request whose attempts failed.
func (s *Server) answerError(w http.ResponseWriter, st *reqState, pe *proxyError) {
	s.answer(w, st, pe.status, pe.reason, failureMessages[pe.reason])
	s.log.Debug("request failed", "id", st.id, "reason", pe.reason, "attempts", st.attempts, "err", pe.err)
}

// failed handles an attempt that got no response: passive failure
// detection, metrics, the answer should nothing else be tried, and
// whether to try again — after a failure to connect (nothing was sent),
// or for an idempotent request, when its body is still whole, within
// MaxAttempts and RetryWindow.
func (s *Server) failed(ep *endpoint, err error, now int64, idem, whole bool, attempts int, st *reqState) (*proxyError, bool) {
	var de *dialError
	connectFailed := errors.As(err, &de)
	cut := errors.Is(err, errRegionUnreachable) || (!connectFailed && ep.region.unreachable.Load())
	var pe *proxyError
	result := "error"
	switch {
	case connectFailed && !cut:
		result = "connect_error"
		s.eject(ep, "connect", now)
		pe = &proxyError{status: http.StatusBadGateway, reason: ReasonConnectFailed, err: err}
	case cut:
		result = "region_cut"
		pe = &proxyError{status: http.StatusGatewayTimeout, reason: ReasonTimeout, err: err}
	case isTimeout(err) || errors.Is(err, errTryTimeout):
		result = "timeout"
		s.eject(ep, "timeout", now)
		pe = &proxyError{status: http.StatusGatewayTimeout, reason: ReasonTimeout, err: err}
	default:
		if ep.fails.Add(1) >= 3 {
			s.eject(ep, "errors", now)
		}
		pe = &proxyError{status: http.StatusBadGateway, reason: ReasonUpstreamFailed, err: err}
	}
	s.metrics.attempts.WithLabelValues(ep.region.info.ID, result).Inc()
	if cut {
		st.cuts++ // not the request's fault: not counted against MaxAttempts
	}
	retry := whole && (connectFailed || idem) && attempts-st.cuts < s.cfg.MaxAttempts && attempts < 4*s.cfg.MaxAttempts &&
		time.Since(st.start) <= s.cfg.RetryWindow
	if retry {
		s.metrics.retries.WithLabelValues(ep.region.info.ID).Inc()
	}
	return pe, retry
}

// finish records a request's metrics and access log line.
func (s *Server) finish(r *http.Request, st *reqState) {
	s.metrics.inflight.Dec()
	d := time.Since(st.start)
	org, app, svc, region := "", "", "", ""
	if st.app != nil {
		org, app = st.app.org, st.app.app
	}
	if st.target != nil {
		svc = st.target.service
		if st.reason == "" {
			region = st.target.region.info.ID
		}
	}
	status := st.status
	if status == 0 {
		status = http.StatusSwitchingProtocols // hijacked by an upgrade
	}
	if t := st.target; t != nil && region != "" {
		t.metricsOnce.Do(func() { t.duration = s.metrics.duration.WithLabelValues(org, app, svc, region) })
		t.duration.Observe(d.Seconds())
		c, ok := t.codes.Load(status)
		if !ok {
			c, _ = t.codes.LoadOrStore(status, s.metrics.requests.WithLabelValues(org, app, svc, region, strconv.Itoa(status)))
		}
		c.(prometheus.Counter).Inc()
	} else {
		s.metrics.requests.WithLabelValues(org, app, svc, region, strconv.Itoa(status)).Inc()
		s.metrics.duration.WithLabelValues(org, app, svc, region).Observe(d.Seconds())
	}
	if s.cfg.AccessLog != nil {
		s.cfg.AccessLog.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("id", st.id), slog.String("client_id", st.clientID), slog.String("remote", r.RemoteAddr), slog.String("method", r.Method),
			slog.String("host", r.Host), slog.String("path", r.URL.Path), slog.String("proto", r.Proto),
			slog.Int("status", status), slog.Duration("duration", d), slog.String("region", region),
			slog.String("app", app), slog.String("service", svc), slog.Int("attempts", st.attempts),
			slog.String("error", st.reason))
	}
}

// idempotent reports whether a request may be sent twice: the methods RFC
// 9110 calls idempotent, or one carrying an Idempotency-Key.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return r.Header.Get("Idempotency-Key") != ""
}

// upstream is the proxy's transport: it picks an instance per attempt
// and retries what may be retried.
type upstream struct{ s *Server }

// countingBody passes a request body through, counting what was read, so
// a retry knows whether the body is still whole. Close does nothing: the
// next attempt may need it.
type countingBody struct {
	rc io.ReadCloser
	n  atomic.Int64
	st *reqState
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	if err != nil && err != io.EOF {
		b.st.setBodyErr(err)
	}
	return n, err
}
func (b *countingBody) Close() error { return nil }

// RoundTrip sends the request to the best available instance; an attempt
// that could not connect, or an idempotent one that failed before a
// response started, is retried on another instance (at most two per
// region), then another region, within MaxAttempts and RetryWindow.
func (u upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	s := u.s
	st := stateOf(req.Context())
	if st == nil || st.route == nil {
		return nil, &proxyError{status: http.StatusBadGateway, reason: ReasonNoRoute}
	}
	var body *countingBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &countingBody{rc: req.Body, st: st}
	}
	idem := idempotent(req)
	var triedBuf [4]*endpoint
	tried := triedBuf[:0]
	var last *proxyError
	for {
		now := s.cfg.Now().UnixNano()
		ep := pick(st.route, tried, now)
		if ep == nil {
			if last == nil {
				last = &proxyError{status: http.StatusServiceUnavailable, reason: ReasonNoInstance}
			}
			return nil, last
		}
		tried = append(tried, ep)
		st.attempts++
		st.target = targetOf(st.route, ep)
		resp, err := u.attempt(req, ep, body, idem)
		if err == nil {
			return resp, nil
		}
		if req.Context().Err() != nil || st.bodyError() != nil {
			return nil, err // the client's side failed: nothing to retry
		}
		var retry bool
		last, retry = s.failed(ep, err, now, idem, body == nil || body.n.Load() == 0, len(tried), st)
		if !retry {
			return nil, last
		}
	}
}

// targetOf finds the target an endpoint belongs to.
func targetOf(rt *route, ep *endpoint) *target {
	for _, t := range rt.targets {
		if t.region == ep.region {
			return t
		}
	}
	return nil
}

// attempt sends the request to one endpoint. The endpoint counts it as
// outstanding until the response body is closed.
func (u upstream) attempt(req *http.Request, ep *endpoint, body *countingBody, idem bool) (*http.Response, error) {
	s := u.s
	ctx := req.Context()
	cancel := context.CancelFunc(func() {})
	stopCut := func() bool { return false }
	if idem && body == nil {
		// A retryable attempt is cut when its region stops answering
		// probes (a blackholed link), or after TryTimeout without
		// response headers.
		var cc context.CancelCauseFunc
		ctx, cc = context.WithCancelCause(ctx)
		cancel = func() { cc(context.Canceled) }
		stopRegion := context.AfterFunc(ep.region.attemptScope(), func() { cc(errRegionUnreachable) })
		stopCut = stopRegion
		if s.cfg.TryTimeout > 0 {
			timer := time.AfterFunc(s.cfg.TryTimeout, func() { cc(errTryTimeout) })
			stopCut = func() bool { timer.Stop(); return stopRegion() }
		}
	}
	out := req.WithContext(context.WithValue(ctx, endpointKey{}, ep))
	u2 := *req.URL
	u2.Host = ep.poolHost
	out.URL = &u2
	if body != nil {
		out.Body = body
	}
	tr := s.transport
	if ep.h2c {
		tr = s.h2cTransport
	}
	ep.inflight.Add(1)
	resp, err := tr.RoundTrip(out)
	stopCut()
	if err != nil {
		ep.inflight.Add(-1)
		cause := context.Cause(ctx)
		cancel()
		if errors.Is(cause, errRegionUnreachable) || errors.Is(cause, errTryTimeout) {
			return nil, cause
		}
		return nil, err
	}
	s.recordAnswer(ep, resp.StatusCode)
	s.metrics.attempts.WithLabelValues(ep.region.info.ID, "ok").Inc()
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &trackedConn{ReadWriteCloser: rwc, ep: ep, cancel: cancel}
	} else {
		resp.Body = &trackedBody{ReadCloser: resp.Body, ep: ep, cancel: cancel}
	}
	return resp, nil
}

// recordAnswer updates passive failure detection with a response.
func (s *Server) recordAnswer(ep *endpoint, status int) {
	if status >= 500 {
		if ep.fails5xx.Add(1) >= int32(s.cfg.Eject5xx) {
			ep.fails5xx.Store(0)
			s.eject(ep, "5xx", s.cfg.Now().UnixNano())
		}
		return
	}
	if ep.fails5xx.Load() != 0 {
		ep.fails5xx.Store(0)
	}
	if ep.fails.Load() != 0 {
		ep.fails.Store(0)
	}
	if ep.ejections.Load() != 0 {
		ep.ejections.Store(0)
	}
}

// eject takes an endpoint out of rotation for EjectBase, doubled for each
// consecutive ejection up to EjectMax.
func (s *Server) eject(ep *endpoint, reason string, now int64) {
	if ep.ejected(now) {
		return
	}
	n := ep.ejections.Add(1)
	d := s.cfg.EjectBase << min(n-1, 16)
	if d > s.cfg.EjectMax || d <= 0 {
		d = s.cfg.EjectMax
	}
	ep.ejectUntil.Store(now + int64(d))
	ep.fails.Store(0)
	s.metrics.ejections.WithLabelValues(ep.region.info.ID, reason).Inc()
	s.log.Info("instance ejected", "region", ep.region.info.ID, "instance", ep.instance, "reason", reason, "for", d)
}

// trackedBody ends an attempt when the response body is closed.
type trackedBody struct {
	io.ReadCloser
	ep     *endpoint
	cancel context.CancelFunc
	once   sync.Once
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.ep.inflight.Add(-1)
		b.cancel()
	})
	return err
}

// trackedConn is trackedBody for an upgraded connection (WebSocket).
type trackedConn struct {
	io.ReadWriteCloser
	ep     *endpoint
	cancel context.CancelFunc
	once   sync.Once
}

func (c *trackedConn) Close() error {
	err := c.ReadWriteCloser.Close()
	c.once.Do(func() {
		c.ep.inflight.Add(-1)
		c.cancel()
	})
	return err
}
