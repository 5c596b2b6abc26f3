package agent

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/meridian-run/meridian/meshwire"
	"github.com/meridian-run/meridian/pki"
)

// The node proxies' protocol is meshwire's: a calling proxy keeps one
// TLS 1.3 connection (meshwire.MeshALPN), with the calling service's
// workload certificate, per destination machine, multiplexed with yamux
// (a session): each instance's connection is a stream, so only the first
// connection to a machine pays for TCP and TLS handshakes. The
// destination's side is node.go.

// serveVIP accepts an instance's connections to a service address until
// the listener closes.
func (m *mesh) serveVIP(ln net.Listener, s *slot, v *vip, port int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || m.ctx.Err() != nil {
				return
			}
			m.log.Warn("mesh: accept on a service address", "address", ln.Addr().String(), "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.outbound(c, s, v, port) }()
	}
}

// outbound carries one connection of a local instance to the closest
// healthy endpoint that accepts it, trying the next on failure.
func (m *mesh) outbound(c net.Conn, s *slot, v *vip, port int) {
	if !m.conns.add(c) {
		c.Close()
		return
	}
	defer m.conns.remove(c)
	// The caller is verified while the first endpoint is dialed; none of
	// its bytes is read before the check passed.
	verified := make(chan error, 1)
	go func() { verified <- m.verifyCaller(c, s) }()
	var verr error
	checked := false
	callerOK := func() bool {
		if !checked {
			verr, checked = <-verified, true
			if verr != nil {
				m.warnLimited(s.key+"!caller", "mesh: refused a connection to a service address that is not from the service's instances",
					"caller", s.key, "service_address", c.LocalAddr().String(), "from", c.RemoteAddr().String(), "err", verr)
			}
		}
		return verr == nil
	}
	defer callerOK() // waited for in every case
	t := m.table.Load()
	var ms *meshService
	if t != nil {
		ms = t.services[v.service]
	}
	if ms == nil {
		m.warnLimited(s.key+">"+v.name, "mesh: service unknown", "caller", s.key, "service", v.service)
		reset(c)
		return
	}
	cands := m.candidates(ms, v.region)
	var errs []error
	tried := 0
	for _, ep := range cands {
		if tried == m.cfg.MaxAttempts {
			break
		}
		tried++
		up, err := m.dial(s, ep, port)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s on %s (%s): %w", ep.Instance, ep.Machine, ep.Region, err))
			var st *meshwire.StatusError
			if errors.As(err, &st) && st.Code == meshwire.StatusRefused {
				break // every endpoint applies the same policy
			}
			m.health.fail(ep, m.d.Clock.Now())
			m.log.Debug("mesh: endpoint failed; trying the next", "service", ms.Key, "instance", ep.Instance, "region", ep.Region, "err", err)
			continue
		}
		if !callerOK() {
			up.Close()
			reset(c)
			return
		}
		if !m.conns.add(up) {
			up.Close()
			return
		}
		back, err := splice(c, up)
		m.conns.remove(up)
		if back == 0 && err != nil {
			// Accepted, then gone without a byte: an instance dying (or
			// stuck); the caller's retry should go elsewhere.
			m.health.fail(ep, m.d.Clock.Now())
			m.log.Debug("mesh: endpoint closed the connection without answering", "service", ms.Key, "instance", ep.Instance, "err", err)
		} else {
			m.health.ok(ep)
		}
		return
	}
	if len(cands) == 0 {
		m.warnLimited(s.key+">"+v.name, "mesh: no healthy endpoint", "caller", s.key, "service", ms.Key, "region", v.region)
	} else {
		m.warnLimited(s.key+">"+v.name, "mesh: no endpoint accepted the connection", "caller", s.key, "service", ms.Key, "region", v.region,
			"tried", tried, "err", errors.Join(errs...))
	}
	reset(c)
}

// dial opens a stream to an endpoint's node proxy, on the slot's session
// with that machine (opened the first time, as the slot's workload, over
// mutual TLS), and asks for the instance's port. A pooled session that
// turns out dead is replaced once.
func (m *mesh) dial(s *slot, ep meshEndpoint, port int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.DialTimeout)
	defer cancel()
	for {
		sess, fresh, err := m.sessions.get(ctx, m, s, ep)
		if err != nil {
			return nil, err
		}
		c, err := openStream(ctx, sess, ep.Instance, port)
		if err == nil {
			return c, nil
		}
		var st *meshwire.StatusError
		if errors.As(err, &st) && st.Code != meshwire.StatusExpired {
			return nil, err // the destination answered: another session would not help
		}
		m.sessions.drop(s, ep, sess)
		if fresh {
			return nil, err
		}
	}
}

// openStream opens a stream on a session and asks for an instance's port.
func openStream(ctx context.Context, sess *yamux.Session, instance string, port int) (net.Conn, error) {
	ys, err := sess.OpenStream()
	if err != nil {
		return nil, err
	}
	st := muxStream{ys}
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	if _, err := st.Write(meshwire.AppendPreamble(make([]byte, 0, 8+len(instance)), instance, port)); err != nil {
		st.Close()
		return nil, err
	}
	if err := meshwire.ReadStatus(st); err != nil {
		st.Close()
		return nil, err
	}
	st.SetDeadline(time.Time{})
	return st, nil
}

// dialSession opens a session with an endpoint's machine as the slot's
// workload: TCP, then TLS 1.3 verifying the machine's identity.
func (m *mesh) dialSession(ctx context.Context, s *slot, ep meshEndpoint) (*yamux.Session, *pki.Leaf, error) {
	src, err := s.cert.source(ctx)
	if err != nil {
		return nil, nil, err
	}
	leaf := s.cert.leaf()
	raw, err := m.d.Dialer.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, nil, err
	}
	cfg := pki.ClientConfig(src, m.d.Roots, pki.AllowIDs(pki.MachineID(m.d.TrustDomain, ep.Region, ep.Machine)))
	cfg.Time = m.d.Clock.Now
	cfg.NextProtos = []string{meshwire.MeshALPN}
	// No TLS session resumption: sessions are few and long-lived, and a
	// resumed one would carry the certificate of its first handshake.
	tc := tls.Client(raw, cfg)
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		return nil, nil, err
	}
	raw.SetDeadline(time.Time{})
	sess, err := yamux.Client(&frameConn{Conn: tc}, muxConfig(m.log))
	if err != nil {
		tc.Close()
		return nil, nil, err
	}
	return sess, leaf, nil
}

// muxConfig is the sessions' yamux configuration, logging to log.
func muxConfig(log *slog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.KeepAliveInterval = 15 * time.Second
	c.MaxStreamWindowSize = 1 << 20
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = time.Minute
	c.LogOutput = nil
	c.Logger = muxLogger{log}
	return c
}

// muxLogger sends yamux's logs to the mesh's, at debug level.
type muxLogger struct{ l *slog.Logger }

func (l muxLogger) Print(v ...any)                 { l.l.Debug("yamux: " + fmt.Sprint(v...)) }
func (l muxLogger) Printf(format string, v ...any) { l.l.Debug("yamux: " + fmt.Sprintf(format, v...)) }
func (l muxLogger) Println(v ...any)               { l.l.Debug("yamux: " + fmt.Sprint(v...)) }

// frameConn writes each yamux data frame (a 12-byte header, then its
// body, in two writes of yamux's send loop) as one write, so one TLS
// record and one syscall carry it instead of two. It relies on yamux's
// framing (version, type, flags, stream id, length; type 0 is data with
// length bytes of body) and on its single sending goroutine.
type frameConn struct {
	net.Conn
	hdr []byte // a data frame's header, held until its body
	buf []byte
}

func (c *frameConn) Write(p []byte) (int, error) {
	if c.hdr != nil {
		c.buf = append(append(c.buf[:0], c.hdr...), p...)
		c.hdr = nil
		n, err := c.Conn.Write(c.buf)
		return max(n-12, 0), err
	}
	if len(p) == 12 && p[1] == 0 && binary.BigEndian.Uint32(p[8:12]) > 0 {
		c.hdr = append(make([]byte, 0, 12), p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// muxStream is a yamux stream whose Close half-closes (FIN): CloseWrite
// for splice.
type muxStream struct{ *yamux.Stream }

func (s muxStream) CloseWrite() error { return s.Stream.Close() }

// sessionIdle is how long an unused session to a machine is kept.
const sessionIdle = time.Minute

// sessionPool keeps each slot's sessions with the machines it calls.
type sessionPool struct {
	mu      sync.Mutex
	m       map[string]*sessionEntry
	retired []*yamux.Session // replaced; closed once their streams end
}

type sessionEntry struct {
	ready  chan struct{} // closed once dialed
	sess   *yamux.Session
	serial string // of the workload certificate it was opened with
	err    error
	used   atomic.Int64 // unix nanoseconds
}

func sessionKey(s *slot, ep meshEndpoint) string {
	return s.key + "|" + ep.Region + "|" + ep.Machine + "|" + ep.Addr
}

// get returns the slot's session with ep's machine, dialing it when there
// is none (or its certificate was renewed meanwhile); fresh says it was
// just dialed.
func (p *sessionPool) get(ctx context.Context, m *mesh, s *slot, ep meshEndpoint) (*yamux.Session, bool, error) {
	key := sessionKey(s, ep)
	cur := ""
	if l := s.cert.leaf(); l != nil {
		cur = l.Cert.SerialNumber.String()
	}
	p.mu.Lock()
	if p.m == nil {
		p.m = map[string]*sessionEntry{}
	}
	e := p.m[key]
	if e != nil {
		select {
		case <-e.ready:
			if e.err != nil || e.sess.IsClosed() || (cur != "" && e.serial != cur) {
				if e.sess != nil && !e.sess.IsClosed() {
					p.retired = append(p.retired, e.sess)
				}
				delete(p.m, key)
				e = nil
			}
		default:
		}
	}
	if e != nil {
		p.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		if e.err != nil {
			return nil, false, e.err
		}
		e.used.Store(m.d.Clock.Now().UnixNano())
		return e.sess, false, nil
	}
	e = &sessionEntry{ready: make(chan struct{})}
	p.m[key] = e
	p.mu.Unlock()
	sess, leaf, err := m.dialSession(ctx, s, ep)
	e.sess, e.err = sess, err
	if leaf != nil {
		e.serial = leaf.Cert.SerialNumber.String()
	}
	e.used.Store(m.d.Clock.Now().UnixNano())
	close(e.ready)
	if err != nil {
		p.mu.Lock()
		if p.m[key] == e {
			delete(p.m, key)
		}
		p.mu.Unlock()
		return nil, true, err
	}
	return sess, true, nil
}

// drop closes a session that failed.
func (p *sessionPool) drop(s *slot, ep meshEndpoint, sess *yamux.Session) {
	key := sessionKey(s, ep)
	p.mu.Lock()
	if e := p.m[key]; e != nil && e.sess == sess {
		delete(p.m, key)
	}
	p.mu.Unlock()
	sess.Close()
}

// closeSlot closes a slot's sessions.
func (p *sessionPool) closeSlot(s *slot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.m {
		if strings.HasPrefix(k, s.key+"|") {
			select {
			case <-e.ready:
				if e.sess != nil {
					e.sess.Close()
				}
			default:
			}
			delete(p.m, k)
		}
	}
}

// sweep closes the sessions idle for longer than idle and the retired ones
// without streams left.
func (p *sessionPool) sweep(now time.Time, idle time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.m {
		select {
		case <-e.ready:
		default:
			continue
		}
		if e.sess != nil && (e.sess.IsClosed() || (e.sess.NumStreams() == 0 && now.Sub(time.Unix(0, e.used.Load())) > idle)) {
			e.sess.Close()
			delete(p.m, k)
		}
	}
	kept := p.retired[:0]
	for _, sess := range p.retired {
		if sess.IsClosed() || sess.NumStreams() == 0 {
			sess.Close()
			continue
		}
		kept = append(kept, sess)
	}
	p.retired = kept
}

// closeAll closes every session.
func (p *sessionPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.m {
		select {
		case <-e.ready:
			if e.sess != nil {
				e.sess.Close()
			}
		default:
		}
		delete(p.m, k)
	}
	for _, sess := range p.retired {
		sess.Close()
	}
	p.retired = nil
}

// reset closes a connection with a reset, so the caller sees a failed
// connection rather than an empty answer.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

var spliceBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// closeWriter is a connection that can half-close.
type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both sides are done, half-closing each
// direction as its source ends; an error on either side closes both. It
// returns how many bytes came back from b, and how b's direction ended
// (nil: a clean end of stream).
func splice(a, b net.Conn) (int64, error) {
	done := make(chan error, 1)
	cp := func(dst, src net.Conn, n *int64) error {
		bp := spliceBufs.Get().(*[]byte)
		defer spliceBufs.Put(bp)
		var err error
		*n, err = io.CopyBuffer(dst, src, *bp)
		if cw, ok := dst.(closeWriter); ok && err == nil {
			if cw.CloseWrite() == nil {
				return nil
			}
		}
		// No half-close (or an error): end both directions, unblocking
		// the other copy.
		past := time.Unix(1, 0)
		a.SetDeadline(past)
		b.SetDeadline(past)
		a.Close()
		b.Close()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	var sent, back int64
	go func() { done <- cp(b, a, &sent) }()
	errBack := cp(a, b, &back)
	<-done
	a.Close()
	b.Close()
	return back, errBack
}

// connSet tracks proxied connections, to close them with the mesh.
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, c)
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// warnEvery is how often the same failing call is logged at warning
// level; repeats in between go to debug.
const warnEvery = 10 * time.Second

// warnLimited logs a warning about key at most once per warnEvery.
func (m *mesh) warnLimited(key, msg string, args ...any) {
	now := m.d.Clock.Now()
	m.warnMu.Lock()
	if m.warned == nil {
		m.warned = map[string]time.Time{}
	}
	last, seen := m.warned[key]
	loud := !seen || now.Sub(last) >= warnEvery
	if loud {
		m.warned[key] = now
		if len(m.warned) > 10000 { // bounded: forget everything now and then
			clear(m.warned)
		}
	}
	m.warnMu.Unlock()
	if loud {
		m.log.Warn(msg, args...)
	} else {
		m.log.Debug(msg, args...)
	}
}
