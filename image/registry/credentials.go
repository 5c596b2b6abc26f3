package registry

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/docker/cli/cli/config/credentials"
	"github.com/google/go-containerregistry/pkg/authn"
)

// Credentials are what a registry secret gives for one registry.
type Credentials struct {
	cfg authn.AuthConfig
}

// Authenticator returns the credentials as go-containerregistry takes them
// (remote.WithAuth).
func (c *Credentials) Authenticator() authn.Authenticator {
	if c == nil {
		return authn.Anonymous
	}
	return authn.FromConfig(c.cfg)
}

// secrets returns the strings an error message must never show: the
// password, the tokens, and the base64 forms a registry could echo.
func (c *Credentials) secrets() []string {
	if c == nil {
		return nil
	}
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	add(c.cfg.Password)
	add(c.cfg.IdentityToken)
	add(c.cfg.RegistryToken)
	add(c.cfg.Auth)
	if c.cfg.Username != "" || c.cfg.Password != "" {
		pair := []byte(c.cfg.Username + ":" + c.cfg.Password)
		add(base64.StdEncoding.EncodeToString(pair))
		add(base64.RawStdEncoding.EncodeToString(pair))
	}
	return out
}

// dockerHub are the names Docker Hub's credentials are kept under.
var dockerHub = []string{"index.docker.io", "docker.io", "registry-1.docker.io"}

// ParseCredentials returns the credentials that value, the value of a
// registry secret, gives for registry (host[:port] as in an image
// reference; Docker Hub is "index.docker.io"). value is one of:
//
//   - Docker config JSON, as `docker login` writes it:
//     {"auths": {"registry.example": {"auth": "base64(user:password)"}}},
//     an entry holding "username" and "password" (or "identitytoken",
//     "registrytoken") instead of "auth"; keys may be URLs
//     ("https://index.docker.io/v1/");
//   - one such entry alone: {"username": "u", "password": "p"};
//   - "user:password" (a final newline is ignored).
//
// Errors match ErrInvalid and never show the value.
func ParseCredentials(value, registry string) (*Credentials, error) {
	trimmed := strings.TrimSpace(value)
	if strings.HasPrefix(trimmed, "{") {
		return parseJSON([]byte(trimmed), registry)
	}
	line := strings.TrimRight(value, "\r\n")
	user, pass, ok := strings.Cut(line, ":")
	switch {
	case !ok || user == "":
		return nil, fmt.Errorf("%w: the secret is neither Docker config JSON nor user:password", ErrInvalid)
	case strings.ContainsAny(line, "\r\n"):
		return nil, fmt.Errorf("%w: user:password must be one line", ErrInvalid)
	}
	return &Credentials{cfg: authn.AuthConfig{Username: user, Password: pass}}, nil
}

func parseJSON(b []byte, registry string) (*Credentials, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, jsonError(err)
	}
	raw, ok := top["auths"]
	if !ok {
		return entry(b, "the secret")
	}
	var auths map[string]json.RawMessage
	if err := json.Unmarshal(raw, &auths); err != nil {
		return nil, jsonError(err)
	}
	want := []string{registry}
	if slices.Contains(dockerHub, registry) {
		want = dockerHub
	}
	var hosts []string
	for key := range auths {
		hosts = append(hosts, credentials.ConvertToHostname(key))
	}
	slices.Sort(hosts)
	for key, e := range auths {
		if slices.Contains(want, credentials.ConvertToHostname(key)) {
			return entry(e, fmt.Sprintf("auths[%q]", key))
		}
	}
	return nil, fmt.Errorf("%w: the secret's Docker config has no credentials for registry %s (it has %s)", ErrInvalid, registry, hostList(hosts))
}

// entry parses one Docker config auth entry.
func entry(b []byte, what string) (*Credentials, error) {
	var cfg authn.AuthConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		if _, ok := err.(*json.SyntaxError); ok {
			return nil, jsonError(err)
		}
		return nil, fmt.Errorf("%w: %s: want auth (base64 of user:password), or username and password, or a token", ErrInvalid, what)
	}
	if cfg.Username == "" && cfg.IdentityToken == "" && cfg.RegistryToken == "" {
		return nil, fmt.Errorf("%w: %s holds no credentials: want auth (base64 of user:password), or username and password, or a token", ErrInvalid, what)
	}
	return &Credentials{cfg: cfg}, nil
}

func hostList(hosts []string) string {
	if len(hosts) == 0 {
		return "none"
	}
	return strings.Join(hosts, ", ")
}

// jsonError describes a JSON error by position only: the decoder's own
// message may quote a character of the secret.
func jsonError(err error) error {
	if se, ok := err.(*json.SyntaxError); ok {
		return fmt.Errorf("%w: the secret is not valid JSON (at byte %d)", ErrInvalid, se.Offset)
	}
	return fmt.Errorf("%w: the secret is not a JSON object of the Docker config's shape", ErrInvalid)
}
