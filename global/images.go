package global

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/store"
)

// ImageConfig says how the global control plane reaches image registries:
// at deploy it resolves each definition's image to the digest of its
// manifest, which every region then runs (one version, one image
// everywhere).
type ImageConfig struct {
	// Insecure names registries (host[:port]) that may be reached over
	// plain HTTP besides loopback ones, which always may (`meridian global
	// --insecure-registry`). Others need TLS.
	Insecure []string
	// Timeout bounds the resolution of one image (default
	// image.DefaultResolveTimeout, 30s; `--registry-timeout`).
	Timeout time.Duration
	// Transport carries the registry requests (default a clone of
	// http.DefaultTransport): to trust a private CA, or to go through a
	// proxy.
	Transport http.RoundTripper
}

// errUnresolved: a deploy reached its transaction without its image
// resolved (its Idempotency-Key's record expired after it was looked up):
// the image is resolved and the transaction run again.
var errUnresolved = errors.New("image not resolved")

// resolveImage resolves def's image with the organization's registry
// secret. Errors are API errors naming the image and the field at fault.
func (s *Server) resolveImage(ctx context.Context, orgID string, def api.Definition) (image.Resolved, error) {
	opts := image.ResolveOptions{Transport: s.cfg.Images.Transport, Insecure: s.cfg.Images.Insecure,
		Timeout: s.cfg.Images.Timeout, SecretName: def.RegistrySecret, UserAgent: "meridian-global"}
	if def.RegistrySecret != "" {
		err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
			v, err := s.openSecret(ctx, tx, orgID, def.RegistrySecret)
			opts.Secret = string(v)
			return err
		})
		if errors.Is(err, errSecretGone) {
			return image.Resolved{}, fieldErr("registry_secret", "%v", err)
		}
		if err != nil {
			return image.Resolved{}, err
		}
	}
	begin := time.Now()
	res, err := image.Resolve(ctx, def.Image, opts)
	if err != nil {
		s.log.Info("image not resolved", "image", def.Image, "err", err)
		return image.Resolved{}, imageError(err)
	}
	s.log.Info("image resolved", "image", def.Image, "digest", res.Digest, "took", time.Since(begin).Round(time.Millisecond))
	return res, nil
}

// imageError is the API error of a failed resolution: a 400 on the field
// at fault for what the definition can fix (unknown image or tag, refused
// or malformed credentials, a registry that needs TLS), a 422 for a
// registry that did not answer (nothing was stored: deploy again when it
// does).
func imageError(err error) error {
	var re *image.ResolveError
	if !errors.As(err, &re) {
		return err
	}
	f := api.FieldError{Path: re.Field, Message: "image " + definition.Quote(re.Ref) + ": " + re.Err.Error()}
	if errors.Is(err, image.ErrUnreachable) {
		return &api.Error{Status: http.StatusUnprocessableEntity, Code: api.CodeUnavailable,
			Message: "the image could not be resolved to a digest: its registry did not answer; nothing was stored, deploy again when it does",
			Fields:  []api.FieldError{f}}
	}
	return fieldsErr(f)
}

// showImage fills in a deployment's image and the digest its regions run.
func showImage(d *api.Deployment) {
	d.Image = d.Definition.Image
	for _, rd := range d.Regional {
		if rd.Definition.ImageDigest != "" {
			d.ImageDigest = rd.Definition.ImageDigest
			return
		}
	}
}

// showImages is showImage for a list.
func showImages(ds []api.Deployment) []api.Deployment {
	for i := range ds {
		showImage(&ds[i])
	}
	return ds
}
