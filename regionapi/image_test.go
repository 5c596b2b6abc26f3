package regionapi

import (
	"testing"

	"github.com/meridian-run/meridian/api"
)

// TestImageRef: machines run the image's repository at the resolved
// digest (a tag, a digest or both written; a registry port is no tag), or
// the image as written without one.
func TestImageRef(t *testing.T) {
	const d = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	for _, c := range []struct{ image, digest, want string }{
		{"reg.example:5000/shop/web:1.4", d, "reg.example:5000/shop/web@" + d},
		{"reg.example:5000/shop/web", d, "reg.example:5000/shop/web@" + d},
		{"web:latest@sha256:aaaa", d, "web@" + d},
		{"shop/web:1.4", "", "shop/web:1.4"},
		{"", d, ""},
	} {
		if got := ImageRef(api.RegionalDefinition{Image: c.image, ImageDigest: c.digest}); got != c.want {
			t.Errorf("ImageRef(%q, %q) = %q, want %q", c.image, c.digest, got, c.want)
		}
	}
}
