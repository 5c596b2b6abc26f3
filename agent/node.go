package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/meshwire"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/supervise"
)

// The node proxy's inbound side: the machine's mesh port, where two kinds
// of callers reach the machine's instances over TLS 1.3 with client
// certificates (meshwire), each admitted only on its own protocol (ALPN):
//
//   - other machines' node proxies (meshwire.MeshALPN), presenting a
//     workload certificate of the installation: yamux sessions, a call
//     per stream, each passed by the mesh's policy (same organization);
//   - edges (meshwire.EdgeALPN), presenting an edge certificate issued by
//     the root itself (not by a region's CA): one call per connection,
//     only to a port of the instance with a public route — what the edge
//     routes to, and what the internet reaches through any edge anyway;
//     an instance's other ports stay private to its organization's mesh.
//
// A caller of the wrong kind for its protocol, or naming none, fails the
// handshake. An edge's connection is closed when its certificate expires.

// NodeInstance is an instance of this machine as the node proxy delivers
// to it.
type NodeInstance struct {
	Org, App, Service string
	// Ports maps declared ports to host ports.
	Ports map[int]int
	// Public lists the declared ports with a public route: the only ones
	// edges may reach.
	Public []int
}

// nodeDeps is what a node proxy needs.
type nodeDeps struct {
	Address     string // listen and instances' address
	Port        int    // 0 picks a free one
	TrustDomain string
	Roots       *x509.CertPool
	Certs       pki.CertSource // the machine certificate it serves
	Local       func(instance string) (NodeInstance, bool)
	// Policy decides whether a workload may call another (both workload
	// identities).
	Policy      func(caller, callee pki.ID) error
	Dialer      Dialer
	DialTimeout time.Duration
	Clock       supervise.Clock
	Log         *slog.Logger
}

// nodeProxy serves a machine's mesh port.
type nodeProxy struct {
	d      nodeDeps
	log    *slog.Logger
	server *tls.Config
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	conns  connSet
	wg     sync.WaitGroup
}

// startNode binds the mesh port and serves it.
func startNode(d nodeDeps) (*nodeProxy, error) {
	n := &nodeProxy{d: d, log: d.Log}
	td := d.TrustDomain
	workload := pki.AuthorizeID(func(id pki.ID) error {
		if id.Kind != pki.KindWorkload {
			return fmt.Errorf("a %s identity is not a workload", id.Kind)
		}
		if id.TrustDomain != td {
			return fmt.Errorf("trust domain %q is not %q", id.TrustDomain, td)
		}
		return nil
	})
	// pki admits an edge identity only from the root.
	edge := pki.AuthorizeID(func(id pki.ID) error {
		if id.Kind != pki.KindEdge {
			return fmt.Errorf("a %s identity is not an edge", id.Kind)
		}
		if id.TrustDomain != td {
			return fmt.Errorf("trust domain %q is not %q", id.TrustDomain, td)
		}
		return nil
	})
	// pki.ServerConfig verifies the chain; the check of the identity
	// depends on the protocol the caller named, so it comes after.
	n.server = pki.ServerConfig(d.Certs, d.Roots, func(pki.Peer) error { return nil })
	n.server.Time = d.Clock.Now
	n.server.NextProtos = []string{meshwire.MeshALPN, meshwire.EdgeALPN}
	// Callers do not resume sessions (a resumed one would carry the
	// certificate of its first handshake): no tickets to make and send.
	n.server.SessionTicketsDisabled = true
	verified := n.server.VerifyConnection
	n.server.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := verified(cs); err != nil {
			return err
		}
		peer, err := pki.PeerFromConnectionState(&cs)
		if err != nil {
			return err
		}
		switch cs.NegotiatedProtocol {
		case meshwire.MeshALPN:
			err = workload(peer)
		case meshwire.EdgeALPN:
			err = edge(peer)
		default:
			err = fmt.Errorf("no protocol named (ALPN %s or %s)", meshwire.MeshALPN, meshwire.EdgeALPN)
		}
		if err != nil {
			return fmt.Errorf("%s refused on %q: %w", peer.ID, cs.NegotiatedProtocol, err)
		}
		return nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(d.Address, strconv.Itoa(d.Port)))
	if err != nil {
		return nil, err
	}
	n.ln = ln
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.serve() }()
	return n, nil
}

// port is the mesh port.
func (n *nodeProxy) port() int { return n.ln.Addr().(*net.TCPAddr).Port }

// close stops the listener and every call.
func (n *nodeProxy) close() {
	n.cancel()
	n.ln.Close()
	n.conns.closeAll()
	n.wg.Wait()
}

// serve accepts callers until the listener closes.
func (n *nodeProxy) serve() {
	backoff := 5 * time.Millisecond
	for {
		c, err := n.ln.Accept()
		if err != nil {
			if n.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("mesh node proxy: accept", "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.inbound(c) }()
	}
}

// inbound serves one caller: mutual TLS, then a session of calls (another
// node proxy) or one call (an edge).
func (n *nodeProxy) inbound(raw net.Conn) {
	if !n.conns.add(raw) {
		raw.Close()
		return
	}
	defer n.conns.remove(raw)
	remote := raw.RemoteAddr().String()
	raw.SetDeadline(n.d.Clock.Now().Add(meshwire.PreambleTimeout))
	tc := tls.Server(raw, n.server)
	defer tc.Close()
	if err := tc.HandshakeContext(n.ctx); err != nil {
		var rhe tls.RecordHeaderError
		switch {
		case errors.Is(err, io.EOF):
			// A round-trip probe, or a caller that gave up.
			n.log.Debug("mesh node proxy: connection closed before the handshake", "remote", remote)
		case errors.As(err, &rhe):
			n.log.Warn("mesh node proxy: refused a connection that is not TLS", "remote", remote, "err", err)
		default:
			n.log.Warn("mesh node proxy: refused a caller at the handshake", "remote", remote, "err", err)
		}
		return
	}
	cs := tc.ConnectionState()
	peer, err := pki.PeerFromConnectionState(&cs)
	if err != nil {
		n.log.Warn("mesh node proxy: caller", "err", err)
		return
	}
	if cs.NegotiatedProtocol == meshwire.EdgeALPN {
		n.serveCall(tc, peer, remote, n.admitEdge)
		return
	}
	raw.SetDeadline(time.Time{})
	sess, err := yamux.Server(&frameConn{Conn: tc}, muxConfig(n.log))
	if err != nil {
		n.log.Error("mesh node proxy: session", "err", err)
		return
	}
	defer sess.Close()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.serveCall(muxStream{st}, peer, remote, n.admitWorkload) }()
	}
}

// admission decides whether a caller may reach an instance's declared
// port; a refusal carries its status.
type admission func(peer pki.Peer, instance string, li NodeInstance, port int, remote string) (meshwire.Status, error)

// admitWorkload applies the mesh's policy to a workload's call, logging a
// refusal with both identities.
func (n *nodeProxy) admitWorkload(peer pki.Peer, instance string, li NodeInstance, _ int, remote string) (meshwire.Status, error) {
	callee := pki.WorkloadID(n.d.TrustDomain, li.Org, li.App, li.Service)
	if err := n.d.Policy(peer.ID, callee); err != nil {
		n.log.Warn("mesh: call refused", "caller", peer.ID.String(), "callee", callee.String(), "instance", instance,
			"remote", remote, "reason", err)
		return meshwire.StatusRefused, err
	}
	return meshwire.StatusOK, nil
}

// admitEdge lets an edge reach the instance's ports with a public route
// only.
func (n *nodeProxy) admitEdge(peer pki.Peer, instance string, li NodeInstance, port int, remote string) (meshwire.Status, error) {
	if !slices.Contains(li.Public, port) {
		err := fmt.Errorf("port %d of instance %s has no public route", port, instance)
		n.log.Warn("mesh: edge call refused", "caller", peer.ID.String(), "instance", instance, "port", port, "remote", remote, "reason", err)
		return meshwire.StatusRefused, err
	}
	return meshwire.StatusOK, nil
}

// serveCall serves one call: the preamble, the admission, then the local
// instance's port. An edge's call is cut when its certificate expires.
func (n *nodeProxy) serveCall(c net.Conn, peer pki.Peer, remote string, admit admission) {
	defer c.Close()
	c.SetDeadline(n.d.Clock.Now().Add(meshwire.PreambleTimeout))
	instance, port, err := meshwire.ReadPreamble(c)
	if err != nil {
		n.log.Warn("mesh node proxy: bad preamble", "caller", peer.ID.String(), "remote", remote, "err", err)
		meshwire.WriteStatus(c, meshwire.StatusBadRequest, err.Error())
		return
	}
	now := n.d.Clock.Now()
	if now.After(peer.Cert.NotAfter) {
		n.log.Info("mesh node proxy: the caller's session outlived its certificate", "caller", peer.ID.String(), "remote", remote)
		meshwire.WriteStatus(c, meshwire.StatusExpired, "certificate expired at "+peer.Cert.NotAfter.UTC().Format(time.RFC3339))
		return
	}
	li, ok := n.d.Local(instance)
	if !ok {
		n.log.Debug("mesh node proxy: no such instance", "caller", peer.ID.String(), "instance", instance)
		meshwire.WriteStatus(c, meshwire.StatusNoInstance, "instance "+instance+" does not run on this machine")
		return
	}
	if code, err := admit(peer, instance, li, port, remote); err != nil {
		meshwire.WriteStatus(c, code, err.Error())
		return
	}
	hp := li.Ports[port]
	if hp == 0 {
		meshwire.WriteStatus(c, meshwire.StatusUnreachable, fmt.Sprintf("instance %s declares no port %d", instance, port))
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.d.DialTimeout)
	up, err := n.d.Dialer.DialContext(ctx, "tcp", net.JoinHostPort(n.d.Address, strconv.Itoa(hp)))
	cancel()
	if err != nil {
		n.log.Debug("mesh node proxy: instance unreachable", "instance", instance, "port", port, "err", err)
		meshwire.WriteStatus(c, meshwire.StatusUnreachable, fmt.Sprintf("instance %s port %d: %v", instance, port, err))
		return
	}
	if !n.conns.add(up) {
		up.Close()
		return
	}
	defer n.conns.remove(up)
	if err := meshwire.WriteStatus(c, meshwire.StatusOK, ""); err != nil {
		up.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if peer.ID.Kind == pki.KindEdge {
		expire := time.AfterFunc(peer.Cert.NotAfter.Sub(now), func() {
			n.log.Info("mesh node proxy: closing an edge's connection: its certificate expired", "caller", peer.ID.String(), "remote", remote)
			c.Close()
			up.Close()
		})
		defer expire.Stop()
	}
	splice(c, up)
}

// NodeProxyConfig configures a node proxy on its own.
type NodeProxyConfig struct {
	// Address is where it listens and where the instances' host ports
	// are; Port its port (0 picks a free one).
	Address string
	Port    int
	// TrustDomain, Roots and Certs: the installation's trust, and the
	// machine certificate the proxy serves.
	TrustDomain string
	Roots       *x509.CertPool
	Certs       pki.CertSource
	// Instances finds the machine's instances.
	Instances func(id string) (NodeInstance, bool)
	// Logger receives the proxy's logs (default: discarded).
	Logger *slog.Logger
}

// NodeProxy is a machine's node proxy on its own, without the rest of the
// mesh (DNS, service addresses, calls out): what edges and other
// machines' node proxies call, admitting workloads of one organization
// and edges as the agent's does. An agent runs one within its mesh; tests
// and benchmarks of its callers (the edge) start one alone.
type NodeProxy struct{ n *nodeProxy }

// StartNodeProxy starts a node proxy.
func StartNodeProxy(cfg NodeProxyConfig) (*NodeProxy, error) {
	if cfg.TrustDomain == "" || cfg.Roots == nil || cfg.Certs == nil || cfg.Instances == nil {
		return nil, errors.New("agent: NodeProxyConfig: TrustDomain, Roots, Certs and Instances are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n, err := startNode(nodeDeps{Address: cfg.Address, Port: cfg.Port, TrustDomain: cfg.TrustDomain, Roots: cfg.Roots,
		Certs: cfg.Certs, Local: cfg.Instances, Policy: SameOrganization, Dialer: &net.Dialer{},
		DialTimeout: DefaultMeshDialTimeout, Clock: clock.Real(), Log: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("agent: node proxy on %s port %d: %w", cfg.Address, cfg.Port, err)
	}
	return &NodeProxy{n}, nil
}

// Port is the proxy's port.
func (p *NodeProxy) Port() int { return p.n.port() }

// Close stops the proxy and every call through it.
func (p *NodeProxy) Close() { p.n.close() }
