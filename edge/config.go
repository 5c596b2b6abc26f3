package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/meridian-run/meridian/pki"
)

// DialFunc opens a network connection; *net.Dialer's DialContext is one.
// Tests put link proxies on the way with it.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// CertProvider supplies the certificates of the public TLS listener. The
// edge's Identity (a certificate from the installation's CA) and FileCert
// (a certificate and key from files) are two; an ACME client can be
// another.
type CertProvider interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// Region is a region the edge routes to: its id, API URL and location.
type Region struct {
	ID        string  `json:"id"`
	URL       string  `json:"url"`
	Latitude  float64 `json:"latitude"`
	Longitude float64 `json:"longitude"`
}

// Config configures an edge.
type Config struct {
	// Location is the edge location's id, e.g. "par". Required.
	Location string
	// Latitude and Longitude place the edge on the globe: regions not
	// measured yet are ranked by distance.
	Latitude, Longitude float64
	// Domain is the suffix of apps' host names: <app>-<org>.<Domain>.
	// Default "meridian.localhost".
	Domain string

	// Listen is the plain HTTP address (HTTP/1.1 and h2c), e.g.
	// "127.0.0.1:8000". TLSListen is the HTTPS address (HTTP/1.1 and
	// HTTP/2), served with TLSCertificates. At least one is required.
	Listen, TLSListen string
	// TLSCertificates serves the public TLS listener. Required with
	// TLSListen.
	TLSCertificates CertProvider
	// AdminListen serves /metrics, /healthz, /readyz and /v1/state
	// ("" for none).
	AdminListen string

	// StateDir holds the routing snapshot and the cached region list.
	// Required.
	StateDir string

	// GlobalURL and GlobalToken list the regions from the global control
	// plane (GET /v1/regions); open and draining regions are routed to.
	GlobalURL, GlobalToken string
	// Regions are routed to in addition to global's (static
	// configuration, or no global at all).
	Regions []Region
	// RegionRefresh is how often the region list is read again from
	// global (default 30s).
	RegionRefresh time.Duration
	// Identity is the edge's certificate (kind edge, issued by the
	// installation's root): the edge presents it to the regions, for their
	// feeds, and to the node proxies of the instances' machines, through
	// which it reaches every instance over mutual TLS. Required: the edge
	// sends nothing to an instance in clear.
	Identity *Identity

	// Dial connects to instances' machines; DialRegion to region APIs
	// (defaults: net.Dialer). ConnectTimeout bounds every TCP connection
	// to a machine's node proxy (default 500ms); HandshakeTimeout then
	// bounds the TLS handshake with it and its answer (default 2s).
	Dial, DialRegion DialFunc
	ConnectTimeout   time.Duration
	HandshakeTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an instance's response
	// headers, after which the client gets 504 (default 30s).
	ResponseHeaderTimeout time.Duration
	// TryTimeout, if set, bounds each attempt of a retryable request
	// until response headers; the attempt is then retried elsewhere.
	TryTimeout time.Duration
	// MaxAttempts bounds the attempts per request (default 4); no new
	// attempt starts RetryWindow after the request arrived (default 5s).
	MaxAttempts int
	RetryWindow time.Duration

	// ReadHeaderTimeout (default 10s) and ReadTimeout (whole request with
	// its body, default 60s) bound slow clients; IdleTimeout closes idle
	// keep-alive connections (default 120s).
	ReadHeaderTimeout, ReadTimeout, IdleTimeout time.Duration
	// MaxHeaderBytes bounds request headers (default 64 KiB; larger get
	// 431). MaxBodyBytes bounds request bodies (default 16 MiB; larger get
	// 413).
	MaxHeaderBytes int
	MaxBodyBytes   int64
	// ShutdownTimeout bounds how long Close waits for requests in flight
	// (default 20s).
	ShutdownTimeout time.Duration

	// ProbeInterval is how often each region's API is probed for its
	// round-trip time (default 1s); a probe that takes longer than
	// ProbeTimeout (default 1s) marks the region unreachable until one
	// answers. RTTTolerance is the bucket width under which measured RTTs
	// count as equal, so the coordinates decide (default 10ms).
	ProbeInterval, ProbeTimeout, RTTTolerance time.Duration
	// FeedIdleTimeout reopens a region's feed stream that sent nothing,
	// not even its keepalive line (every 10s), for this long (default
	// 25s); the region's last good state stays in use meanwhile.
	FeedIdleTimeout time.Duration
	// Eject5xx is how many consecutive 5xx answers eject an instance
	// (default 5). EjectBase is the first ejection's length, doubled on
	// each consecutive one up to EjectMax (defaults 5s and 60s).
	Eject5xx            int
	EjectBase, EjectMax time.Duration

	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives the edge's logs (default: discarded). AccessLog, if
	// set, receives one line per request.
	Logger, AccessLog *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Domain == "" {
		c.Domain = "meridian.localhost"
	}
	c.Domain = strings.ToLower(strings.TrimSuffix(c.Domain, "."))
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.RegionRefresh, 30*time.Second)
	def(&c.ConnectTimeout, 500*time.Millisecond)
	def(&c.HandshakeTimeout, 2*time.Second)
	def(&c.ResponseHeaderTimeout, 30*time.Second)
	def(&c.RetryWindow, 5*time.Second)
	def(&c.ReadHeaderTimeout, 10*time.Second)
	def(&c.ReadTimeout, 60*time.Second)
	def(&c.IdleTimeout, 120*time.Second)
	def(&c.ShutdownTimeout, 20*time.Second)
	def(&c.ProbeInterval, time.Second)
	def(&c.ProbeTimeout, time.Second)
	def(&c.RTTTolerance, 10*time.Millisecond)
	def(&c.FeedIdleTimeout, 25*time.Second)
	def(&c.EjectBase, 5*time.Second)
	def(&c.EjectMax, 60*time.Second)
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 4
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 16 << 20
	}
	if c.Eject5xx == 0 {
		c.Eject5xx = 5
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		c.Dial = d.DialContext
	}
	if c.DialRegion == nil {
		d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
		c.DialRegion = d.DialContext
	}
}

// validate checks the configuration; errors name the field.
func (c *Config) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("edge: Config.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if err := pki.ValidateName(c.Location); err != nil {
		bad("Location", "%v", err)
	}
	if c.Latitude < -90 || c.Latitude > 90 {
		bad("Latitude", "%v is not within [-90, 90]", c.Latitude)
	}
	if c.Longitude < -180 || c.Longitude > 180 {
		bad("Longitude", "%v is not within [-180, 180]", c.Longitude)
	}
	if !validDomain(c.Domain) {
		bad("Domain", "%q is not a DNS domain", c.Domain)
	}
	if c.Listen == "" && c.TLSListen == "" {
		bad("Listen", "set Listen, TLSListen or both")
	}
	if c.TLSListen != "" && c.TLSCertificates == nil {
		bad("TLSCertificates", "required with TLSListen")
	}
	if c.StateDir == "" {
		bad("StateDir", "required (the routing snapshot lives there)")
	}
	if c.Identity == nil {
		bad("Identity", "required: the regions' feeds and the instances (over mutual TLS) are reached with it (an edge certificate from the installation's root)")
	}
	if c.GlobalURL != "" && c.GlobalToken == "" {
		bad("GlobalToken", "required with GlobalURL")
	}
	seen := map[string]bool{}
	for i, r := range c.Regions {
		if err := pki.ValidateName(r.ID); err != nil {
			bad(fmt.Sprintf("Regions[%d].ID", i), "%v", err)
		} else if seen[r.ID] {
			bad(fmt.Sprintf("Regions[%d].ID", i), "%q repeats", r.ID)
		}
		seen[r.ID] = true
		if !strings.HasPrefix(r.URL, "https://") {
			bad(fmt.Sprintf("Regions[%d].URL", i), "%q is not an https URL", r.URL)
		}
	}
	if c.FeedIdleTimeout < 0 {
		bad("FeedIdleTimeout", "must be positive, got %s", c.FeedIdleTimeout)
	}
	if c.MaxAttempts < 1 {
		bad("MaxAttempts", "must be at least 1, got %d", c.MaxAttempts)
	}
	if c.MaxHeaderBytes < 1024 {
		bad("MaxHeaderBytes", "must be at least 1024, got %d", c.MaxHeaderBytes)
	}
	if c.MaxBodyBytes < 0 {
		bad("MaxBodyBytes", "must not be negative, got %d", c.MaxBodyBytes)
	}
	for name, d := range map[string]time.Duration{"RegionRefresh": c.RegionRefresh, "ConnectTimeout": c.ConnectTimeout, "HandshakeTimeout": c.HandshakeTimeout,
		"ResponseHeaderTimeout": c.ResponseHeaderTimeout, "RetryWindow": c.RetryWindow, "ReadHeaderTimeout": c.ReadHeaderTimeout,
		"ReadTimeout": c.ReadTimeout, "IdleTimeout": c.IdleTimeout, "ShutdownTimeout": c.ShutdownTimeout,
		"ProbeInterval": c.ProbeInterval, "ProbeTimeout": c.ProbeTimeout, "RTTTolerance": c.RTTTolerance,
		"EjectBase": c.EjectBase, "EjectMax": c.EjectMax, "TryTimeout": c.TryTimeout} {
		if d < 0 {
			bad(name, "must be positive, got %s", d)
		}
	}
	if c.EjectMax < c.EjectBase {
		bad("EjectMax", "%s is shorter than EjectBase %s", c.EjectMax, c.EjectBase)
	}
	return errors.Join(errs...)
}

// validDomain checks a DNS domain: dot-separated labels of letters,
// digits and '-'.
func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// validLabel checks an app or organization name as the global plane
// allows them: 1-63 lowercase letters, digits and '-', starting with a
// letter.
func validLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
