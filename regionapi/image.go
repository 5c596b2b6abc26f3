package regionapi

import (
	"strings"

	"github.com/meridian-run/meridian/api"
)

// ImageRef is the image reference machines run for a regional definition:
// the image's repository at the digest global resolved it to
// ("registry/repo@sha256:..."), or the image as written when no digest
// was resolved (deployments made before digests were). Every instance and
// every restart of the deployment then runs the same bytes, wherever the
// tag moves.
func ImageRef(d api.RegionalDefinition) string {
	if d.Image == "" || d.ImageDigest == "" {
		return d.Image
	}
	repo, _, _ := strings.Cut(d.Image, "@")
	// A tag is the part after the last ':' that follows the last '/' (a
	// registry's port comes before the first '/').
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return repo + "@" + d.ImageDigest
}
