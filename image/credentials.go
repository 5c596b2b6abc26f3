package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// ErrCredentials: registry credentials that cannot be parsed, or that name
// no entry for the registry.
var ErrCredentials = errors.New("invalid registry credentials")

// Credentials parses the value of a registry secret for registry
// (host[:port], as name.Registry.RegistryStr gives it) into an
// authenticator. The value is either a Docker config JSON,
// {"auths":{"<host>":{"auth":"<base64 user:password>"}}} or with
// "username" and "password" (or "identitytoken", "registrytoken") in the
// entry, whose entry for registry is used (keys may carry a scheme and a
// path, as "https://index.docker.io/v1/"), or "user:password". Errors match
// ErrCredentials and never hold the secret's value.
func Credentials(secret, registry string) (authn.Authenticator, error) {
	v := strings.TrimSpace(secret)
	if v == "" {
		return nil, fmt.Errorf("%w: empty", ErrCredentials)
	}
	if !strings.HasPrefix(v, "{") {
		user, pass, ok := strings.Cut(v, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("%w: want a Docker config JSON or user:password", ErrCredentials)
		}
		return &authn.Basic{Username: user, Password: pass}, nil
	}
	var cfg struct {
		Auths map[string]json.RawMessage `json:"auths"`
	}
	if err := json.Unmarshal([]byte(v), &cfg); err != nil {
		// The decoder's message may quote the value: say only where.
		return nil, fmt.Errorf("%w: not valid Docker config JSON", ErrCredentials)
	}
	want := registryKey(registry)
	for k, raw := range cfg.Auths {
		if registryKey(k) != want {
			continue
		}
		var ac authn.AuthConfig
		if err := json.Unmarshal(raw, &ac); err != nil {
			return nil, fmt.Errorf("%w: the entry for %s is not valid (want auth, or username and password)", ErrCredentials, k)
		}
		if ac.Username == "" && ac.IdentityToken == "" && ac.RegistryToken == "" {
			return nil, fmt.Errorf("%w: the entry for %s has no user name or token", ErrCredentials, k)
		}
		return authn.FromConfig(ac), nil
	}
	return nil, fmt.Errorf("%w: no entry for registry %s in auths", ErrCredentials, registry)
}

// registryKey normalizes a Docker config auths key or a registry name:
// no scheme, no path, Docker Hub's aliases as name.DefaultRegistry's.
func registryKey(k string) string {
	k = strings.ToLower(k)
	for _, p := range []string{"https://", "http://"} {
		k = strings.TrimPrefix(k, p)
	}
	k, _, _ = strings.Cut(k, "/")
	switch k {
	case "docker.io", "registry-1.docker.io", name.DefaultRegistry:
		return name.DefaultRegistry
	}
	return k
}
