// Package registry is what every part of Meridian that talks to an image
// registry shares: the rule for plain HTTP (only to loopback registries, as
// Docker allows for 127.0.0.0/8, and to those the operator names
// insecure), the classification of registry errors, the credentials an
// organization's registry secret gives (Docker config JSON or
// "user:password"), and the resolution of an image reference to the digest
// of its manifest (what the global control plane pins at deploy).
//
// It is a leaf over go-containerregistry: the global control plane, the
// region's cache and the machines' image store use it without linking one
// another. Errors never carry credentials: messages are built from the
// classification, and whatever a registry sends back is scrubbed of the
// secret's user name, password, tokens and their base64 forms.
package registry

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Errors that the package's errors match (with errors.Is), by cause.
var (
	// ErrNotFound: the registry does not have the repository, tag or
	// digest.
	ErrNotFound = errors.New("image not found")
	// ErrUnreachable: the registry could not be reached (refused, reset,
	// unknown host, timed out) or answered that it is unavailable.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrUnauthorized: the registry refused the credentials, or asked for
	// credentials and none were given.
	ErrUnauthorized = errors.New("registry refused the credentials")
	// ErrDigest: a blob or manifest does not match its digest.
	ErrDigest = errors.New("digest mismatch")
	// ErrInvalid: the reference, the credentials or the image is
	// malformed or of a kind Meridian does not run.
	ErrInvalid = errors.New("invalid image")
	// ErrPlainHTTP: a plain HTTP request to a registry that must be
	// reached over TLS.
	ErrPlainHTTP = errors.New("plain HTTP refused")
)

// Classify wraps a registry error with the sentinel of its cause when it
// is known (ErrNotFound, ErrUnauthorized, ErrUnreachable, ErrDigest,
// ErrPlainHTTP); other errors are returned as they are.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	for _, known := range []error{ErrNotFound, ErrUnreachable, ErrUnauthorized, ErrDigest, ErrInvalid, ErrPlainHTTP} {
		if errors.Is(err, known) {
			return err
		}
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusTooManyRequests:
			return fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %w", ErrNotFound, err)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%w: %w", ErrUnauthorized, err)
			case transport.UnavailableErrorCode, transport.TooManyRequestsErrorCode:
				return fmt.Errorf("%w: %w", ErrUnreachable, err)
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

// PlainHTTPAllowed reports whether the registry at hostport may be reached
// over plain HTTP: loopback registries (localhost, 127.0.0.0/8, ::1) may,
// as Docker allows, and so may those named in insecure; others need TLS.
// (go-containerregistry alone would also fall back to HTTP for private
// addresses.)
func PlainHTTPAllowed(hostport string, insecure []string) bool {
	if slices.Contains(insecure, hostport) {
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

// Guard returns a transport that refuses plain HTTP requests to registries
// PlainHTTPAllowed does not allow, and passes every other request to next.
func Guard(next http.RoundTripper, insecure []string) http.RoundTripper {
	return &guard{next: next, insecure: insecure}
}

type guard struct {
	next     http.RoundTripper
	insecure []string
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := CheckScheme(req, g.insecure); err != nil {
		return nil, err
	}
	return g.next.RoundTrip(req)
}

// CheckScheme refuses a plain HTTP request to a registry that must be
// reached over TLS, with an error matching ErrPlainHTTP.
func CheckScheme(req *http.Request, insecure []string) error {
	if req.URL.Scheme == "http" && !PlainHTTPAllowed(req.URL.Host, insecure) {
		return fmt.Errorf("registry %s: %w: only loopback registries and those named insecure may be reached without TLS", req.URL.Host, ErrPlainHTTP)
	}
	return nil
}
