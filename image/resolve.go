package image

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Resolution defaults.
const (
	// DefaultResolveTimeout is ResolveOptions.Timeout's default.
	DefaultResolveTimeout = 30 * time.Second
	// MaxResolveBytes bounds a manifest, an index and any other answer
	// body Resolve reads.
	MaxResolveBytes = 4 << 20
)

// Fields of a deployment definition that a ResolveError blames.
const (
	FieldImage          = "image"
	FieldRegistrySecret = "registry_secret"
)

// ResolveOptions configure Resolve.
type ResolveOptions struct {
	// Transport carries the requests (default a clone of
	// http.DefaultTransport per call: pass one to pool connections).
	// Plain HTTP is refused as NewRegistryTransport says, whatever the
	// transport.
	Transport http.RoundTripper
	// Insecure names registries (host[:port]) that may be reached over
	// plain HTTP besides loopback ones.
	Insecure []string
	// Secret is the value of the registry secret (see Credentials); empty
	// means anonymous.
	Secret string
	// SecretName names the secret in messages.
	SecretName string
	// Timeout bounds the whole resolution (default
	// DefaultResolveTimeout).
	Timeout time.Duration
	// UserAgent is sent with each request (default "meridian").
	UserAgent string
}

// Resolved is an image reference resolved to its manifest's digest.
type Resolved struct {
	// Repository is the image's registry and repository
	// ("registry.example/team/web").
	Repository string
	// Digest is the digest of the manifest the reference names
	// ("sha256:..."): for a multi-platform image, its index.
	Digest string
	// MediaType is the manifest's media type.
	MediaType string
	// Platforms lists the linux platforms ("linux/amd64") of an index's
	// images; empty for a single image.
	Platforms []string
}

// Pinned is the reference by digest: "<repository>@<digest>".
func (r Resolved) Pinned() string { return r.Repository + "@" + r.Digest }

// ResolveError is a failed resolution. Its message names the image and
// says what failed; Field says which field of a definition is at fault
// (FieldImage or FieldRegistrySecret). It never holds credentials.
type ResolveError struct {
	// Ref is the image reference as given.
	Ref string
	// Field is FieldImage or FieldRegistrySecret.
	Field string
	// Err is the cause; it matches ErrNotFound, ErrUnauthorized,
	// ErrUnreachable, ErrDigest, ErrPlainHTTP, ErrCredentials or
	// ErrInvalid.
	Err error
}

// Error implements error.
func (e *ResolveError) Error() string { return fmt.Sprintf("image %s: %v", e.Ref, e.Err) }

// Unwrap returns the cause.
func (e *ResolveError) Unwrap() error { return e.Err }

// Resolve finds the manifest ref names at its registry and returns its
// digest, for the global control plane to pin at deploy: a tag is
// resolved to the digest of what it names now; a reference by digest is
// checked to exist (and its content to match). For a multi-platform index
// it keeps the index's digest, as Docker does (each machine picks its
// platform's manifest in it, as Pull does), and checks that the index has
// a linux image. Only the manifest is fetched, no blob. Whatever the
// registry answers is scrubbed of the credentials before it reaches an
// error. Errors are *ResolveError values.
func Resolve(ctx context.Context, ref string, opts ResolveOptions) (Resolved, error) {
	fail := func(field string, err error) (Resolved, error) {
		return Resolved{}, &ResolveError{Ref: ref, Field: field, Err: err}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultResolveTimeout
	}
	if opts.Transport == nil {
		opts.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "meridian"
	}
	r, err := ParseRef(ref, opts.Insecure)
	if err != nil {
		return fail(FieldImage, err)
	}
	host := r.Context().RegistryStr()
	auth := authn.Anonymous
	var secrets []string
	if opts.Secret != "" {
		if auth, err = Credentials(opts.Secret, host); err != nil {
			return fail(FieldRegistrySecret, fmt.Errorf("secret %s: %w", quoteName(opts.SecretName), err))
		}
		secrets = credentialStrings(ctx, auth)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	t := &limitBody{next: NewRegistryTransport(opts.Transport, opts.Insecure), max: MaxResolveBytes}
	desc, err := remote.Get(r, remote.WithContext(ctx), remote.WithTransport(t),
		remote.WithAuth(auth), remote.WithUserAgent(opts.UserAgent))
	if err != nil {
		field, err := explain(ctx, host, opts, secrets, err)
		return fail(field, err)
	}
	out := Resolved{Repository: r.Context().Name(), Digest: desc.Digest.String(), MediaType: string(desc.MediaType)}
	switch desc.MediaType {
	case types.DockerManifestSchema2, types.OCIManifestSchema1:
	case types.DockerManifestList, types.OCIImageIndex:
		idx, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return fail(FieldImage, fmt.Errorf("%w: its index does not parse: %w", ErrInvalid, err))
		}
		for _, m := range idx.Manifests {
			if m.Platform == nil || m.Platform.OS != "linux" {
				continue
			}
			p := m.Platform.OS + "/" + m.Platform.Architecture
			if m.Platform.Variant != "" {
				p += "/" + m.Platform.Variant
			}
			if !slices.Contains(out.Platforms, p) {
				out.Platforms = append(out.Platforms, p)
			}
		}
		if len(out.Platforms) == 0 {
			return fail(FieldImage, fmt.Errorf("%w: its index lists no linux image", ErrInvalid))
		}
	default:
		return fail(FieldImage, fmt.Errorf("%w: the registry serves it as %q, not a container image manifest (Docker v2 schema 2, OCI image, or an index of them)", ErrInvalid, desc.MediaType))
	}
	return out, nil
}

// credentialStrings returns what an error message must never show: the
// password, the tokens, and the base64 forms a registry could echo.
func credentialStrings(ctx context.Context, a authn.Authenticator) []string {
	ac, err := authn.Authorization(ctx, a)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range []string{ac.Password, ac.IdentityToken, ac.RegistryToken, ac.Auth} {
		if s != "" {
			out = append(out, s)
		}
	}
	if ac.Username != "" || ac.Password != "" {
		pair := []byte(ac.Username + ":" + ac.Password)
		out = append(out, base64.StdEncoding.EncodeToString(pair), base64.RawStdEncoding.EncodeToString(pair))
	}
	return out
}

// explain turns a failed fetch into the field at fault and a message that
// names the registry and the cause, scrubbed of the credentials.
func explain(ctx context.Context, host string, opts ResolveOptions, secrets []string, err error) (string, error) {
	detail := scrub(describe(err), secrets)
	err = Classify(err)
	var te *transport.Error
	unauthorized := errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden ||
		slices.ContainsFunc(te.Errors, func(d transport.Diagnostic) bool {
			return d.Code == transport.UnauthorizedErrorCode || d.Code == transport.DeniedErrorCode
		}))
	switch {
	case errors.Is(err, ErrNotFound):
		return FieldImage, fmt.Errorf("%w at registry %s (%s)", ErrNotFound, host, detail)
	case unauthorized && opts.Secret != "":
		return FieldRegistrySecret, fmt.Errorf("%w: registry %s refused the credentials of secret %s (%s)", ErrUnauthorized, host, quoteName(opts.SecretName), detail)
	case unauthorized:
		return FieldImage, fmt.Errorf("%w: registry %s requires credentials (%s): name an organization secret holding them in registry_secret", ErrUnauthorized, host, detail)
	case errors.Is(err, ErrPlainHTTP), errors.Is(err, http.ErrSchemeMismatch):
		return FieldImage, fmt.Errorf("%w: registry %s answers plain HTTP, not TLS: only loopback registries and those the operator names insecure may", ErrPlainHTTP, host)
	case ctx.Err() != nil:
		return FieldImage, fmt.Errorf("%w: registry %s did not answer within %v", ErrUnreachable, host, opts.Timeout)
	case errors.Is(err, ErrUnreachable), errors.As(err, &te) && te.Temporary():
		return FieldImage, fmt.Errorf("%w: registry %s (%s)", ErrUnreachable, host, detail)
	case errors.Is(err, errTooLarge):
		return FieldImage, fmt.Errorf("%w: registry %s sent an answer of more than %d bytes (a manifest is at most that)", ErrInvalid, host, MaxResolveBytes)
	case errors.Is(err, ErrDigest):
		return FieldImage, fmt.Errorf("%w: registry %s served a manifest that does not match its digest", ErrDigest, host)
	}
	return FieldImage, fmt.Errorf("registry %s: %s", host, detail)
}

// describe is the short cause of a registry error: the status and the
// registry's error codes and messages, or the error's own text.
func describe(err error) string {
	var te *transport.Error
	if errors.As(err, &te) {
		var parts []string
		for _, d := range te.Errors {
			parts = append(parts, string(d.Code)+": "+d.Message)
		}
		s := fmt.Sprintf("%d %s", te.StatusCode, http.StatusText(te.StatusCode))
		if len(parts) > 0 {
			s += ": " + strings.Join(parts, "; ")
		}
		return cut(s, 300)
	}
	return cut(err.Error(), 300)
}

// scrub replaces every occurrence of the secrets in s.
func scrub(s string, secrets []string) string {
	for _, v := range secrets {
		s = strings.ReplaceAll(s, v, "[redacted]")
	}
	return s
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func quoteName(n string) string {
	if n == "" {
		return "(unnamed)"
	}
	return fmt.Sprintf("%q", n)
}

// errTooLarge: an answer over MaxResolveBytes.
var errTooLarge = fmt.Errorf("%w: answer too large", ErrInvalid)

// limitBody caps the body of every answer at max bytes: a registry cannot
// make the caller read without end.
type limitBody struct {
	next http.RoundTripper
	max  int64
}

func (l *limitBody) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > l.max {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s answered %d bytes, more than %d", errTooLarge, req.URL.Host, resp.ContentLength, l.max)
	}
	resp.Body = &cappedBody{ReadCloser: resp.Body, max: l.max, left: l.max, host: req.URL.Host}
	return resp, nil
}

// cappedBody fails a read past its cap instead of cutting the body short
// (which would only show as a digest mismatch).
type cappedBody struct {
	io.ReadCloser
	max, left int64
	host      string
}

func (c *cappedBody) Read(p []byte) (int, error) {
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.ReadCloser.Read(p)
	if c.left -= int64(n); c.left < 0 {
		return 0, fmt.Errorf("%w: %s answered more than %d bytes", errTooLarge, c.host, c.max)
	}
	return n, err
}
