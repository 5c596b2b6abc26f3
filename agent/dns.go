package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/meridian-run/meridian/regionapi"
)

// meshZone is the mesh's DNS zone.
const meshZone = "internal."

// forwardTimeout bounds one upstream exchange of a forwarded query.
const forwardTimeout = 2 * time.Second

// startDNS starts a slot's DNS servers (UDP and TCP) on its DNS address.
// Called with m.mu.
func (m *mesh) startDNS(s *slot) error {
	addr := net.JoinHostPort(s.dnsIP.String(), strconv.Itoa(m.cfg.DNSPort))
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("mesh: DNS server of %s on udp %s: %w", s.key, addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("mesh: DNS server of %s on tcp %s: %w", s.key, addr, err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { m.serveDNS(s, w, r) })
	servers := []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h, ReadTimeout: 2 * time.Second}}
	for i, srv := range servers {
		started, failed := make(chan struct{}), make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			err := srv.ActivateAndServe()
			if err != nil {
				m.log.Debug("mesh DNS server ended", "service", s.key, "err", err)
			}
			failed <- err
		}()
		select {
		case <-started:
			s.dns = append(s.dns, srv)
		case err := <-failed:
			for _, started := range s.dns {
				started.Shutdown()
			}
			s.dns = nil
			for _, later := range servers[i:] {
				if later.PacketConn != nil {
					later.PacketConn.Close()
				}
				if later.Listener != nil {
					later.Listener.Close()
				}
			}
			return fmt.Errorf("mesh: DNS server of %s on %s: %w", s.key, addr, err)
		}
	}
	return nil
}

// soa is the zone's SOA, for negative answers (its minimum is their TTL).
func (m *mesh) soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: meshZone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 5},
		Ns: "ns." + meshZone, Mbox: "hostmaster." + meshZone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 5}
}

// serveDNS answers one query of a slot's instances: mesh names from the
// feed, scoped to the slot's organization; other names from the host's
// resolvers.
func (m *mesh) serveDNS(s *slot, w dns.ResponseWriter, r *dns.Msg) {
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		resp := new(dns.Msg)
		resp.SetRcode(r, dns.RcodeNotImplemented)
		w.WriteMsg(resp)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(dns.Fqdn(q.Name))
	if name == meshZone || strings.HasSuffix(name, "."+meshZone) {
		w.WriteMsg(m.answer(s, r, q, strings.TrimSuffix(strings.TrimSuffix(name, meshZone), ".")))
		return
	}
	m.forward(w, r)
}

// answer resolves a mesh name (without the zone) for a slot.
func (m *mesh) answer(s *slot, r *dns.Msg, q dns.Question, name string) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(r)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	t := m.table.Load()
	if t == nil {
		// No feed yet: the name may exist; let the client retry.
		resp.Rcode = dns.RcodeServerFailure
		return resp
	}
	region, svc, app, ok := parseName(name)
	var ms *meshService
	if ok {
		ms = t.services[regionapi.ServiceKey(s.id.Org, app, svc)]
	}
	if ms == nil || (region != "" && !ms.Regions[region]) || q.Qclass != dns.ClassINET {
		if name == "" && q.Qclass == dns.ClassINET {
			resp.Ns = []dns.RR{m.soa()} // the zone itself exists
			return resp
		}
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{m.soa()}
		return resp
	}
	if q.Qtype != dns.TypeA && q.Qtype != dns.TypeANY {
		resp.Ns = []dns.RR{m.soa()} // the name exists, not with that type
		return resp
	}
	ip, err := m.vipFor(s, name, ms, region)
	if err != nil {
		m.log.Error("mesh DNS: no service address", "caller", s.key, "name", name, "err", err)
		resp.Rcode = dns.RcodeServerFailure
		return resp
	}
	resp.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET,
		Ttl: uint32(m.cfg.DNSTTL / time.Second)}, A: ip}}
	return resp
}

// forward sends a query for another name to the host's resolvers, over the
// transport it came on, and relays the first answer.
func (m *mesh) forward(w dns.ResponseWriter, r *dns.Msg) {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	var last error
	for _, up := range m.cfg.Upstreams {
		resp, err := m.exchange(network, up, r)
		if err == nil {
			resp.Id = r.Id
			w.WriteMsg(resp)
			return
		}
		last = err
	}
	m.log.Debug("mesh DNS: forwarding failed", "name", r.Question[0].Name, "upstreams", m.cfg.Upstreams, "err", last)
	resp := new(dns.Msg)
	resp.SetRcode(r, dns.RcodeServerFailure)
	w.WriteMsg(resp)
}

// exchange asks one upstream resolver.
func (m *mesh) exchange(network, addr string, r *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(m.ctx, forwardTimeout)
	defer cancel()
	c, err := m.d.Dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	co := &dns.Conn{Conn: c}
	defer co.Close()
	cl := &dns.Client{Net: network, Timeout: forwardTimeout}
	resp, _, err := cl.ExchangeWithConnContext(ctx, r, co)
	return resp, err
}
