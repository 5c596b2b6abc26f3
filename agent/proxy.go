package agent

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/meridian-run/meridian/pki"
)

// The node proxies' protocol, inside TLS 1.3 with client certificates:
// after the handshake the calling proxy sends a preamble naming the
// destination instance and its declared port,
//
//	"MRD1" | len(instance) (1 byte) | instance | port (2 bytes, big endian)
//
// and the destination proxy answers with one status byte, followed for a
// refusal by a length byte and a reason. After statusOK the connection
// carries the caller's bytes both ways.
const meshMagic = "MRD1"

// Status of a destination node proxy's answer.
const (
	statusOK          byte = 0
	statusRefused     byte = 1 // the policy refuses the caller: no other endpoint will accept it
	statusNoInstance  byte = 2 // the instance does not run here (any more)
	statusUnreachable byte = 3 // the instance does not accept connections on that port
	statusBadRequest  byte = 4
)

// preambleTimeout bounds a destination proxy's wait for the TLS handshake
// and the preamble.
const preambleTimeout = 10 * time.Second

func appendPreamble(b []byte, instance string, port int) []byte {
	b = append(b, meshMagic...)
	b = append(b, byte(len(instance)))
	b = append(b, instance...)
	return binary.BigEndian.AppendUint16(b, uint16(port))
}

func readPreamble(r io.Reader) (string, int, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", 0, fmt.Errorf("reading the preamble: %w", err)
	}
	if string(hdr[:4]) != meshMagic {
		return "", 0, fmt.Errorf("not a mesh preamble (%q)", hdr[:4])
	}
	rest := make([]byte, int(hdr[4])+2)
	if _, err := io.ReadFull(r, rest); err != nil {
		return "", 0, fmt.Errorf("reading the preamble: %w", err)
	}
	n := len(rest) - 2
	return string(rest[:n]), int(binary.BigEndian.Uint16(rest[n:])), nil
}

func writeStatus(w io.Writer, code byte, reason string) error {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	b := []byte{code}
	if code != statusOK {
		b = append(b, byte(len(reason)))
		b = append(b, reason...)
	}
	_, err := w.Write(b)
	return err
}

// errStatus is a destination proxy's refusal.
type errStatus struct {
	code   byte
	reason string
}

func (e *errStatus) Error() string {
	return fmt.Sprintf("destination refused (status %d): %s", e.code, e.reason)
}

func readStatus(r io.Reader) error {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return fmt.Errorf("reading the destination's answer: %w", err)
	}
	if b[0] == statusOK {
		return nil
	}
	if _, err := io.ReadFull(r, b[1:2]); err != nil {
		return &errStatus{code: b[0]}
	}
	reason := make([]byte, b[1])
	io.ReadFull(r, reason)
	return &errStatus{code: b[0], reason: string(reason)}
}

// serveNode accepts calls from other node proxies until the listener
// closes.
func (m *mesh) serveNode(ln net.Listener) {
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if m.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("mesh node proxy: accept", "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.inbound(c) }()
	}
}

// inbound serves one call from another node proxy: mutual TLS (a workload
// of the installation), the preamble, the policy, then the local
// instance.
func (m *mesh) inbound(raw net.Conn) {
	if !m.conns.add(raw) {
		raw.Close()
		return
	}
	defer m.conns.remove(raw)
	raw.SetDeadline(m.d.Clock.Now().Add(preambleTimeout))
	tc := tls.Server(raw, m.server)
	defer tc.Close()
	if err := tc.HandshakeContext(m.ctx); err != nil {
		var rhe tls.RecordHeaderError
		switch {
		case errors.Is(err, io.EOF):
			// A round-trip probe, or a caller that gave up.
			m.log.Debug("mesh node proxy: connection closed before the handshake", "remote", raw.RemoteAddr().String())
		case errors.As(err, &rhe):
			m.log.Warn("mesh node proxy: refused a connection that is not TLS", "remote", raw.RemoteAddr().String(), "err", err)
		default:
			m.log.Warn("mesh node proxy: refused a caller at the handshake", "remote", raw.RemoteAddr().String(), "err", err)
		}
		return
	}
	cs := tc.ConnectionState()
	peer, err := pki.PeerFromConnectionState(&cs)
	if err != nil {
		m.log.Warn("mesh node proxy: caller", "err", err)
		return
	}
	instance, port, err := readPreamble(tc)
	if err != nil {
		m.log.Warn("mesh node proxy: bad preamble", "caller", peer.ID.String(), "remote", raw.RemoteAddr().String(), "err", err)
		writeStatus(tc, statusBadRequest, err.Error())
		return
	}
	li, ok := m.d.Local(instance)
	if !ok {
		m.log.Debug("mesh node proxy: no such instance", "caller", peer.ID.String(), "instance", instance)
		writeStatus(tc, statusNoInstance, "instance "+instance+" does not run on this machine")
		return
	}
	callee := pki.WorkloadID(m.d.TrustDomain, li.Org, li.App, li.Service)
	if err := m.cfg.Policy(peer.ID, callee); err != nil {
		m.log.Warn("mesh: call refused", "caller", peer.ID.String(), "callee", callee.String(), "instance", instance,
			"remote", raw.RemoteAddr().String(), "reason", err)
		writeStatus(tc, statusRefused, err.Error())
		return
	}
	hp := li.Ports[port]
	if hp == 0 {
		writeStatus(tc, statusUnreachable, fmt.Sprintf("instance %s declares no port %d", instance, port))
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.DialTimeout)
	up, err := m.d.Dialer.DialContext(ctx, "tcp", net.JoinHostPort(m.d.Address, strconv.Itoa(hp)))
	cancel()
	if err != nil {
		m.log.Debug("mesh node proxy: instance unreachable", "instance", instance, "port", port, "err", err)
		writeStatus(tc, statusUnreachable, fmt.Sprintf("instance %s port %d: %v", instance, port, err))
		return
	}
	if !m.conns.add(up) {
		up.Close()
		return
	}
	defer m.conns.remove(up)
	if err := writeStatus(tc, statusOK, ""); err != nil {
		up.Close()
		return
	}
	raw.SetDeadline(time.Time{})
	splice(tc, up)
}

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
	t := m.table.Load()
	var ms *meshService
	if t != nil {
		ms = t.services[v.service]
	}
	if ms == nil {
		m.log.Warn("mesh: service unknown", "caller", s.key, "service", v.service)
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
			var st *errStatus
			if errors.As(err, &st) && st.code == statusRefused {
				break // every endpoint applies the same policy
			}
			m.health.fail(ep, m.d.Clock.Now())
			m.log.Debug("mesh: endpoint failed; trying the next", "service", ms.Key, "instance", ep.Instance, "region", ep.Region, "err", err)
			continue
		}
		m.health.ok(ep)
		if !m.conns.add(up) {
			up.Close()
			return
		}
		splice(c, up)
		m.conns.remove(up)
		return
	}
	if len(cands) == 0 {
		m.log.Warn("mesh: no healthy endpoint", "caller", s.key, "service", ms.Key, "region", v.region)
	} else {
		m.log.Warn("mesh: no endpoint accepted the connection", "caller", s.key, "service", ms.Key, "region", v.region,
			"tried", tried, "err", errors.Join(errs...))
	}
	reset(c)
}

// dial opens a mutual TLS connection to an endpoint's node proxy as the
// slot's workload, and asks for the instance's port.
func (m *mesh) dial(s *slot, ep meshEndpoint, port int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.DialTimeout)
	defer cancel()
	src, err := s.cert.source(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := m.d.Dialer.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, err
	}
	cfg := pki.ClientConfig(src, m.d.Roots, pki.AllowIDs(pki.MachineID(m.d.TrustDomain, ep.Region, ep.Machine)))
	cfg.Time = m.d.Clock.Now
	cfg.ClientSessionCache = s.sessions
	tc := tls.Client(raw, cfg)
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	fail := func(err error) (net.Conn, error) {
		tc.Close()
		return nil, err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(err)
	}
	if _, err := tc.Write(appendPreamble(make([]byte, 0, 8+len(ep.Instance)), ep.Instance, port)); err != nil {
		return fail(err)
	}
	if err := readStatus(tc); err != nil {
		return fail(err)
	}
	raw.SetDeadline(time.Time{})
	return tc, nil
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
// direction as its source ends; an error on either side closes both.
func splice(a, b net.Conn) {
	done := make(chan error, 1)
	cp := func(dst, src net.Conn) error {
		bp := spliceBufs.Get().(*[]byte)
		defer spliceBufs.Put(bp)
		_, err := io.CopyBuffer(dst, src, *bp)
		if cw, ok := dst.(closeWriter); ok && err == nil {
			if cw.CloseWrite() == nil {
				return nil
			}
		}
		// No half-close (or an error): end both directions.
		a.Close()
		b.Close()
		return err
	}
	go func() { done <- cp(b, a) }()
	cp(a, b)
	<-done
	a.Close()
	b.Close()
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
