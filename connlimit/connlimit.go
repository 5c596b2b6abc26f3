// Package connlimit caps a listener's open connections per client address
// and in total, so that many slow or idle connections from one address (or
// from many) cannot take a server to its file-descriptor limit.
//
// At the TCP level every connection is unauthenticated: a connection over
// either cap is accepted and closed at once (its client sees the
// connection reset or closed without an answer), so the kernel's backlog
// keeps draining and clients within the caps are still served. A client
// address is an IPv4 address, or an IPv6 /64 (one host usually holds a
// whole /64). Wrap the TCP listener, under any TLS listener, so that a
// connection counts from its accept to its close, handshake included.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
)

// Reason says why a connection was refused.
type Reason string

// Reasons a connection is refused.
const (
	// PerAddr: its client address already holds Config.PerAddr connections.
	PerAddr Reason = "per_address"
	// Total: the listener already holds Config.Total connections.
	Total Reason = "total"
)

// Config sets the caps. A cap of 0 or less is no cap.
type Config struct {
	// PerAddr is the most connections one client address may hold open.
	PerAddr int
	// Total is the most connections open in all; keep it below the
	// process's file-descriptor limit, with room for everything else the
	// process opens.
	Total int
	// OnReject, when set, is called (without locks held) for each
	// connection closed for a cap; it must not block.
	OnReject func(remote net.Addr, why Reason)
}

// Listener is a net.Listener that closes connections over its caps at
// once. Its Accept returns only connections within them.
//
// A server whose connections authenticate (a verified client certificate)
// calls Release for each that did: it no longer counts against its
// address, only against the total, so the per-address cap bounds only
// clients that have not proved who they are.
type Listener struct {
	net.Listener
	cfg Config

	mu     sync.Mutex
	total  int
	byAddr map[netip.Prefix]int
}

// NewListener wraps ln with the caps of cfg.
func NewListener(ln net.Listener, cfg Config) *Listener {
	return &Listener{Listener: ln, cfg: cfg, byAddr: map[netip.Prefix]int{}}
}

// Accept waits for the next connection within the caps; connections over
// them are closed as they arrive.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := addrKey(c.RemoteAddr())
		why := l.admit(key)
		if why == "" {
			return &conn{Conn: c, l: l, key: key}, nil
		}
		if tc, ok := c.(*net.TCPConn); ok {
			// Reset rather than FIN: nothing lingers in TIME_WAIT here.
			tc.SetLinger(0)
		}
		c.Close()
		if l.cfg.OnReject != nil {
			l.cfg.OnReject(c.RemoteAddr(), why)
		}
	}
}

// admit counts a new connection from key, or says which cap refuses it.
func (l *Listener) admit(key netip.Prefix) Reason {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.Total > 0 && l.total >= l.cfg.Total {
		return Total
	}
	if l.cfg.PerAddr > 0 && key.IsValid() && l.byAddr[key] >= l.cfg.PerAddr {
		return PerAddr
	}
	l.total++
	if key.IsValid() {
		l.byAddr[key]++
	}
	return ""
}

// release gives back a connection's slot in the total, its address's
// slot, or both.
func (l *Listener) release(key netip.Prefix, total, addr bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if total {
		l.total--
	}
	if !addr || !key.IsValid() {
		return
	}
	if n := l.byAddr[key] - 1; n > 0 {
		l.byAddr[key] = n
	} else {
		delete(l.byAddr, key)
	}
}

// Open reports the connections open in all.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// OpenFrom reports the connections open from addr's client address.
func (l *Listener) OpenFrom(addr net.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byAddr[addrKey(addr)]
}

// addrKey is the client address a connection counts against: the IPv4
// address, or the IPv6 address's /64. Addresses that are not IP (a Unix
// socket) count only against the total.
func addrKey(a net.Addr) netip.Prefix {
	var ap netip.AddrPort
	switch t := a.(type) {
	case *net.TCPAddr:
		ap = t.AddrPort()
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return netip.Prefix{}
		}
	}
	ip := ap.Addr().Unmap()
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// conn gives its slots back once: its address's at its first Close or
// Release, the total's at its first Close.
type conn struct {
	net.Conn
	l        *Listener
	key      netip.Prefix
	addrOnce sync.Once
	once     sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		addr := false
		c.addrOnce.Do(func() { addr = true })
		c.l.release(c.key, true, addr)
	})
	return err
}

// Release stops counting c against its client address's cap (it
// authenticated); it still counts against the total until it is closed.
// c is a connection from a Listener, or one wrapping it (a *tls.Conn, or
// anything with a NetConn method); other connections are ignored.
// Releasing twice, or after Close, is harmless.
func Release(c net.Conn) {
	for c != nil {
		switch v := c.(type) {
		case *conn:
			v.addrOnce.Do(func() { v.l.release(v.key, false, true) })
			return
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return
		}
	}
}

// CloseWrite half-closes the connection when the underlying one can (as
// *net.TCPConn does); net/http uses it to end a response cleanly.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
