package pki

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Kind is the kind of identity a SPIFFE ID names.
type Kind int

// The identity kinds of a Meridian installation.
const (
	// KindGlobal is the global control plane: spiffe://<td>/global.
	KindGlobal Kind = iota + 1
	// KindServer is a regional control-plane server:
	// spiffe://<td>/region/<region>/server.
	KindServer
	// KindMachine is an agent on a machine:
	// spiffe://<td>/region/<region>/machine/<machine>.
	KindMachine
	// KindEdge is an edge location: spiffe://<td>/edge/<location>.
	KindEdge
	// KindWorkload is a service's workload identity:
	// spiffe://<td>/org/<org>/app/<app>/service/<service>.
	KindWorkload
)

// String returns the lower-case name of the kind ("global", "server",
// "machine", "edge", "workload").
func (k Kind) String() string {
	switch k {
	case KindGlobal:
		return "global"
	case KindServer:
		return "server"
	case KindMachine:
		return "machine"
	case KindEdge:
		return "edge"
	case KindWorkload:
		return "workload"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Scheme is the URI scheme of every identity.
const Scheme = "spiffe"

const (
	maxIDLen          = 2048 // SPIFFE limit on the whole URI
	maxTrustDomainLen = 255
	maxSegmentLen     = 128
)

// ID is a SPIFFE-style identity. Only the fields its Kind uses are set:
// Region for servers and machines, Machine for machines, Edge for edge
// locations, Org/App/Service for workloads. IDs are comparable with ==.
type ID struct {
	TrustDomain string
	Kind        Kind
	Region      string
	Machine     string
	Edge        string
	Org         string
	App         string
	Service     string
}

// GlobalID returns the identity of the global control plane.
func GlobalID(trustDomain string) ID {
	return ID{TrustDomain: trustDomain, Kind: KindGlobal}
}

// ServerID returns the identity shared by the servers of a region.
func ServerID(trustDomain, region string) ID {
	return ID{TrustDomain: trustDomain, Kind: KindServer, Region: region}
}

// MachineID returns the identity of the agent on a machine of a region.
func MachineID(trustDomain, region, machine string) ID {
	return ID{TrustDomain: trustDomain, Kind: KindMachine, Region: region, Machine: machine}
}

// EdgeID returns the identity of an edge location.
func EdgeID(trustDomain, location string) ID {
	return ID{TrustDomain: trustDomain, Kind: KindEdge, Edge: location}
}

// WorkloadID returns the identity of a service's instances.
func WorkloadID(trustDomain, org, app, service string) ID {
	return ID{TrustDomain: trustDomain, Kind: KindWorkload, Org: org, App: app, Service: service}
}

// Path returns the URI path of the ID (starting with "/"), or "" if the
// kind is unknown.
func (id ID) Path() string {
	switch id.Kind {
	case KindGlobal:
		return "/global"
	case KindServer:
		return "/region/" + id.Region + "/server"
	case KindMachine:
		return "/region/" + id.Region + "/machine/" + id.Machine
	case KindEdge:
		return "/edge/" + id.Edge
	case KindWorkload:
		return "/org/" + id.Org + "/app/" + id.App + "/service/" + id.Service
	}
	return ""
}

// String returns the URI form, e.g. "spiffe://meridian.local/global".
func (id ID) String() string {
	return Scheme + "://" + id.TrustDomain + id.Path()
}

// URI returns the ID as a URL, as placed in a certificate's URI SAN.
func (id ID) URI() *url.URL {
	return &url.URL{Scheme: Scheme, Host: id.TrustDomain, Path: id.Path()}
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// Validate checks that the ID's kind is known, that exactly the fields
// of its kind are set, and that every field is a valid name. The error
// names the offending field.
func (id ID) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return fmt.Errorf("spiffe ID: %w", err)
	}
	type field struct {
		name, val string
		used      bool
	}
	k := id.Kind
	fields := []field{
		{"region", id.Region, k == KindServer || k == KindMachine},
		{"machine", id.Machine, k == KindMachine},
		{"edge", id.Edge, k == KindEdge},
		{"org", id.Org, k == KindWorkload},
		{"app", id.App, k == KindWorkload},
		{"service", id.Service, k == KindWorkload},
	}
	if k < KindGlobal || k > KindWorkload {
		return fmt.Errorf("spiffe ID: kind: unknown kind %d", int(k))
	}
	for _, f := range fields {
		if !f.used {
			if f.val != "" {
				return fmt.Errorf("spiffe ID: %s: must be empty for a %s identity (got %q)", f.name, k, f.val)
			}
			continue
		}
		if err := validateSegment(f.val); err != nil {
			return fmt.Errorf("spiffe ID: %s: %w", f.name, err)
		}
	}
	if n := len(id.String()); n > maxIDLen {
		return fmt.Errorf("spiffe ID: too long (%d bytes, limit %d)", n, maxIDLen)
	}
	return nil
}

// ValidateTrustDomain checks a trust domain name: 1 to 255 characters of
// lower-case letters, digits, '.', '-' and '_'.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain: must not be empty")
	}
	if len(td) > maxTrustDomainLen {
		return fmt.Errorf("trust domain: longer than %d characters", maxTrustDomainLen)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' {
			continue
		}
		return fmt.Errorf("trust domain %q: invalid character %q (allowed: a-z 0-9 . - _)", td, c)
	}
	return nil
}

// ValidateName checks a name used in an ID (region, machine, edge
// location, organization, app, service): 1 to 128 characters of letters,
// digits, '.', '-' and '_', and not "." or "..".
func ValidateName(s string) error { return validateSegment(s) }

func validateSegment(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > maxSegmentLen {
		return fmt.Errorf("longer than %d characters", maxSegmentLen)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%q is not allowed", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' {
			continue
		}
		return fmt.Errorf("%q: invalid character %q (allowed: A-Z a-z 0-9 . - _)", s, c)
	}
	return nil
}

// ParseID parses the URI form of an identity. It is strict: the scheme
// must be "spiffe", the authority a bare trust domain (no user, port or
// upper case), the path one of the known shapes, with no empty segments,
// trailing slash, query, fragment or percent-encoding.
func ParseID(s string) (ID, error) {
	id, err := parseID(s)
	if err != nil {
		return ID{}, fmt.Errorf("pki: parse spiffe ID %q: %w", s, err)
	}
	return id, nil
}

func parseID(s string) (ID, error) {
	if s == "" {
		return ID{}, errors.New("empty")
	}
	if len(s) > maxIDLen {
		return ID{}, fmt.Errorf("longer than %d bytes", maxIDLen)
	}
	rest, ok := strings.CutPrefix(s, Scheme+"://")
	if !ok {
		return ID{}, errors.New(`scheme: must start with "spiffe://"`)
	}
	td, path, _ := strings.Cut(rest, "/")
	if err := ValidateTrustDomain(td); err != nil {
		return ID{}, err
	}
	if path == "" {
		return ID{}, errors.New("path: missing (a trust domain alone is not a workload identity)")
	}
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		if err := validateSegment(seg); err != nil {
			return ID{}, fmt.Errorf("path segment %d: %w", i+1, err)
		}
	}
	id := ID{TrustDomain: td}
	switch {
	case len(segs) == 1 && segs[0] == "global":
		id.Kind = KindGlobal
	case len(segs) == 3 && segs[0] == "region" && segs[2] == "server":
		id.Kind, id.Region = KindServer, segs[1]
	case len(segs) == 4 && segs[0] == "region" && segs[2] == "machine":
		id.Kind, id.Region, id.Machine = KindMachine, segs[1], segs[3]
	case len(segs) == 2 && segs[0] == "edge":
		id.Kind, id.Edge = KindEdge, segs[1]
	case len(segs) == 6 && segs[0] == "org" && segs[2] == "app" && segs[4] == "service":
		id.Kind, id.Org, id.App, id.Service = KindWorkload, segs[1], segs[3], segs[5]
	default:
		return ID{}, fmt.Errorf("path %q: not a known identity (want /global, /region/<r>/server, /region/<r>/machine/<m>, /edge/<loc> or /org/<o>/app/<a>/service/<s>)", "/"+path)
	}
	return id, nil
}

// IDFromURI converts a certificate URI SAN to an ID.
func IDFromURI(u *url.URL) (ID, error) {
	if u == nil {
		return ID{}, errors.New("pki: nil URI")
	}
	return ParseID(u.String())
}
