package image

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Errors that Pull's errors match (with errors.Is), by cause.
var (
	// ErrNotFound: the registry does not have the repository, tag or
	// digest.
	ErrNotFound = errors.New("image not found")
	// ErrUnreachable: the registry could not be reached.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrDigest: a blob or manifest does not match its digest.
	ErrDigest = errors.New("digest mismatch")
	// ErrUnsafeLayer: a layer holds an entry the store refuses (a path
	// with "..", a device node, a path through a symlink).
	ErrUnsafeLayer = errors.New("unsafe layer")
	// ErrTooLarge: the image is over one of the store's Limits.
	ErrTooLarge = errors.New("image too large")
	// ErrInvalid: the reference or the image is malformed or of a kind the
	// store does not run.
	ErrInvalid = errors.New("invalid image")
	// ErrPlainHTTP: a plain HTTP request to a registry that must be
	// reached over TLS (see NewRegistryTransport).
	ErrPlainHTTP = errors.New("plain HTTP refused")
	// ErrUnauthorized: the registry refused the credentials, or asked for
	// credentials and none were given (Resolve's errors).
	ErrUnauthorized = errors.New("registry refused the credentials")
)

// Error is the error of a failed pull: it names the image and what failed.
type Error struct {
	// Ref is the image reference as asked.
	Ref string
	// Op is the step that failed: "resolve", "fetch", "verify", "unpack".
	Op string
	// Err is the cause; it matches one of the Err* values when the cause is
	// known.
	Err error
}

// Error implements error.
func (e *Error) Error() string { return fmt.Sprintf("image %s: %s: %v", e.Ref, e.Op, e.Err) }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Classify wraps an error of go-containerregistry's remote package with the
// sentinel of its cause (ErrNotFound, ErrUnreachable, ErrDigest) when it is
// known, and returns other errors as they are.
func Classify(err error) error { return classify(err) }

// classify wraps a registry error with the sentinel of its cause.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var te *transport.Error
	if errors.As(err, &te) {
		if te.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %w", ErrNotFound, err)
			}
		}
		return err
	}
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &oe) || errors.As(err, &de) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	if msg := err.Error(); strings.Contains(msg, "error verifying") || (strings.Contains(msg, "manifest digest") && strings.Contains(msg, "does not match")) {
		return fmt.Errorf("%w: %w", ErrDigest, err)
	}
	return err
}

// guardTransport refuses plain HTTP to registries other than loopback ones
// and those the operator named insecure (as Docker allows HTTP for
// 127.0.0.0/8 only), and, with a mirror, names the upstream registry of
// each request to the mirror in the "ns" query parameter (containerd's
// convention for registry mirrors).
type guardTransport struct {
	next     http.RoundTripper
	insecure []string
	mirror   string
	ns       string // upstream registry of the pull (set per pull)
}

func (g *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if g.mirror != "" && req.URL.Host == g.mirror && req.URL.Scheme == "http" && !slices.Contains(g.insecure, g.mirror) {
		// The mirror speaks TLS unless named insecure (go-containerregistry
		// would pick HTTP for a loopback or private address).
		r := req.Clone(req.Context())
		r.URL.Scheme = "https"
		req = r
	}
	if req.URL.Scheme == "http" && !g.httpAllowed(req.URL.Host) {
		return nil, fmt.Errorf("registry %s: %w: only loopback registries and those named insecure may be reached without TLS", req.URL.Host, ErrPlainHTTP)
	}
	if g.mirror != "" && g.ns != "" && req.URL.Host == g.mirror {
		r := req.Clone(req.Context())
		q := r.URL.Query()
		q.Set("ns", g.ns)
		r.URL.RawQuery = q.Encode()
		req = r
	}
	return g.next.RoundTrip(req)
}

func (g *guardTransport) httpAllowed(hostport string) bool {
	if slices.Contains(g.insecure, hostport) {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// NewRegistryTransport returns a RoundTripper over next that refuses
// plain HTTP to any registry but loopback ones and those named in insecure
// (host[:port]), as the store does for its own pulls: go-containerregistry
// alone would also fall back to HTTP for private addresses.
func NewRegistryTransport(next http.RoundTripper, insecure []string) http.RoundTripper {
	return &guardTransport{next: next, insecure: insecure}
}

// ParseRef parses an image reference; registries named in insecure
// (host[:port]) are reached over plain HTTP, others (but loopback ones)
// over TLS. Errors match ErrInvalid.
func ParseRef(ref string, insecure []string) (name.Reference, error) {
	if strings.TrimSpace(ref) == "" {
		return nil, fmt.Errorf("%w: empty reference", ErrInvalid)
	}
	var opts []name.Option
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if slices.Contains(insecure, r.Context().RegistryStr()) {
		opts = append(opts, name.Insecure)
		if r, err = name.ParseReference(ref, opts...); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	return r, nil
}

// parseRef parses an image reference (see ParseRef).
func (s *Store) parseRef(ref string) (name.Reference, error) { return ParseRef(ref, s.cfg.Insecure) }

// atMirror returns where ref is pulled from: the mirror when one is set
// (the same repository path, the upstream registry named by "ns"), else ref
// itself.
func (s *Store) atMirror(ref name.Reference) (name.Reference, error) {
	if s.cfg.Mirror == "" {
		return ref, nil
	}
	var opts []name.Option
	if slices.Contains(s.cfg.Insecure, s.cfg.Mirror) {
		opts = append(opts, name.Insecure)
	}
	repo := s.cfg.Mirror + "/" + ref.Context().RepositoryStr()
	var sep string
	switch ref.(type) {
	case name.Digest:
		sep = "@"
	default:
		sep = ":"
	}
	m, err := name.ParseReference(repo+sep+ref.Identifier(), opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: mirror %s: %w", ErrInvalid, s.cfg.Mirror, err)
	}
	return m, nil
}
