package image

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

// TestCredentials: a registry secret's value as user:password or Docker
// config JSON (auth, or username and password; keys with a scheme and a
// path; Docker Hub's aliases) gives the registry's credentials; a value
// that cannot be parsed, or has no entry for the registry, is refused
// without the value in the error.
func TestCredentials(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString([]byte("alice:pa:ss"))
	for _, c := range []struct {
		secret, registry, user, pass string
	}{
		{"alice:pa:ss", "reg.example:5000", "alice", "pa:ss"},
		{`{"auths":{"reg.example:5000":{"auth":"` + b64 + `"}}}`, "reg.example:5000", "alice", "pa:ss"},
		{`{"auths":{"https://reg.example:5000/v2/":{"username":"bob","password":"pw"}}}`, "reg.example:5000", "bob", "pw"},
		{`{"auths":{"https://index.docker.io/v1/":{"auth":"` + b64 + `"},"other.example":{"auth":"eDp5"}}}`, "index.docker.io", "alice", "pa:ss"},
	} {
		a, err := Credentials(c.secret, c.registry)
		if err != nil {
			t.Errorf("%s for %s: %v", c.secret, c.registry, err)
			continue
		}
		ac, err := authn.Authorization(t.Context(), a)
		if err != nil || ac.Username != c.user || ac.Password != c.pass {
			t.Errorf("%s for %s: %+v, %v; want %s / %s", c.secret, c.registry, ac, err, c.user, c.pass)
		}
	}
	for _, secret := range []string{"", "no-colon-s3cret", `{"auths":{"other.example":{"auth":"` + b64 + `"}}}`, `{"auths": s3cret`,
		`{"auths":{"reg.example:5000":{"auth":"not base64 s3cret"}}}`, `{"auths":{"reg.example:5000":{}}}`} {
		_, err := Credentials(secret, "reg.example:5000")
		if !errors.Is(err, ErrCredentials) {
			t.Errorf("%q: %v, want ErrCredentials", secret, err)
		}
		if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), b64)) {
			t.Errorf("%q: the error shows the value: %v", secret, err)
		}
	}
}
