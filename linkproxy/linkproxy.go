// Package linkproxy is a user-space TCP proxy that stands on a link between
// two components and injects faults into it, in the style of etcd's test
// bridge: latency per direction (to emulate WAN round trips where tc netem
// is not available), a blackhole (bytes are swallowed, connections stay
// open: callers time out), a partition (connections are reset and new ones
// refused at once), and resets of the connections in flight.
//
// A Proxy listens on its own address and dials its target for every
// accepted connection; point a client at Proxy.Addr instead of the target.
// TLS passes through untouched, so mutual TLS works end to end.
package linkproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Dialer opens connections to the target. *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures a Proxy.
type Config struct {
	// Listen is the proxy's address, e.g. "127.0.0.1:0".
	Listen string
	// Target is the address connections are forwarded to.
	Target string
	// Dialer dials the target (default a *net.Dialer with a 5s timeout).
	Dialer Dialer
	// Logger receives the proxy's logs (default: discarded).
	Logger *slog.Logger
}

// Proxy is a running link proxy.
type Proxy struct {
	cfg Config
	ln  net.Listener
	log *slog.Logger

	mu          sync.Mutex
	up, down    time.Duration // latency toward the target, toward the client
	blackholed  bool
	partitioned bool
	conns       map[*link]struct{}
	closed      bool
	wg          sync.WaitGroup
}

// link is one proxied connection: client side and target side.
type link struct {
	client, target net.Conn
	once           sync.Once
}

// close ends both sides; with reset, the client side is reset (RST)
// instead of closed gracefully.
func (l *link) close(reset bool) {
	l.once.Do(func() {
		if reset {
			if tc, ok := l.client.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			if tc, ok := l.target.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
		}
		l.client.Close()
		l.target.Close()
	})
}

// New listens on cfg.Listen and starts forwarding to cfg.Target.
func New(cfg Config) (*Proxy, error) {
	if cfg.Target == "" {
		return nil, errors.New("linkproxy: Target is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{Timeout: 5 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("linkproxy: listen %s: %w", cfg.Listen, err)
	}
	p := &Proxy{cfg: cfg, ln: ln, log: cfg.Logger.With("component", "linkproxy", "target", cfg.Target), conns: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every byte toward the target by up and every byte back
// toward the client by down (so a round trip gains up+down). It applies to
// bytes read from then on, in existing and new connections. Order is kept
// and throughput is not limited.
func (p *Proxy) SetLatency(up, down time.Duration) {
	p.mu.Lock()
	p.up, p.down = max(up, 0), max(down, 0)
	p.mu.Unlock()
}

// Latency returns the latencies toward the target and back.
func (p *Proxy) Latency() (up, down time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up, p.down
}

// Blackhole swallows every byte in both directions, of existing and new
// connections, until Unblackhole: connections open and stay open, but
// nothing arrives, so callers wait for their timeouts.
func (p *Proxy) Blackhole() { p.setBlackhole(true) }

// Unblackhole lets bytes through again. What was swallowed is lost.
func (p *Proxy) Unblackhole() { p.setBlackhole(false) }

func (p *Proxy) setBlackhole(on bool) {
	p.mu.Lock()
	p.blackholed = on
	p.mu.Unlock()
}

// Partition resets every connection and refuses new ones (accepted and
// reset at once) until Heal: callers fail fast, as when a host is down.
func (p *Proxy) Partition() {
	p.mu.Lock()
	p.partitioned = true
	p.mu.Unlock()
	p.ResetConnections()
}

// Heal ends a partition.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.partitioned = false
	p.mu.Unlock()
}

// ResetConnections resets (RST) every connection in flight; new ones are
// accepted as usual.
func (p *Proxy) ResetConnections() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close(true)
	}
}

// Connections is the number of connections in flight.
func (p *Proxy) Connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.ResetConnections()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refused := p.partitioned
		p.mu.Unlock()
		if refused {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *Proxy) serve(client net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	target, err := p.cfg.Dialer.DialContext(ctx, "tcp", p.cfg.Target)
	cancel()
	if err != nil {
		p.log.Debug("dial target", "err", err)
		client.Close()
		return
	}
	l := &link{client: client, target: target}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.close(true)
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pump(l, client, target, true) }()
	go func() { defer wg.Done(); p.pump(l, target, client, false) }()
	wg.Wait()
	l.close(false)
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

// chunk is bytes read at one moment, due for delivery at a later one.
type chunk struct {
	data []byte
	due  time.Time
}

// pump copies src to dst through a delay queue. When src ends, dst's write
// side is closed after the queue drains; on any error the link closes.
func (p *Proxy) pump(l *link, src, dst net.Conn, up bool) {
	queue := make(chan chunk, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range queue {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(c.data); err != nil {
				l.close(false)
				for range queue { // drain so the reader never blocks
				}
				return
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			hole, delay := p.blackholed, p.down
			if up {
				delay = p.up
			}
			p.mu.Unlock()
			if !hole {
				queue <- chunk{data: append([]byte(nil), buf[:n]...), due: time.Now().Add(delay)}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				l.close(false)
			}
			break
		}
	}
	close(queue)
	<-done
}
