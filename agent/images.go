package agent

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"time"

	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/image"
)

// ImagesConfig configures the agent's image runtime: where images are
// pulled from and the OCI driver that runs them.
type ImagesConfig struct {
	// Disabled turns the image runtime off: instances of images fail.
	Disabled bool
	// Mirror, when set, is the registry (host:port) every image is pulled
	// through instead of the region's image cache; see
	// image.Config.Mirror. Empty (the default): the region's cache,
	// reached like the region's API (its servers in turn, mutual TLS with
	// the machine certificate), so the machine calls no one but its
	// region.
	Mirror string
	// Direct pulls each image from its own registry, anonymously (the
	// region keeps registry credentials to itself): for machines that
	// reach public registries and a region without a cache.
	Direct bool
	// Transport carries registry requests. Default: to the region's
	// servers with the machine's certificate for the region's cache,
	// plain HTTPS otherwise.
	Transport http.RoundTripper
	// Insecure names registries that may be reached over plain HTTP
	// besides loopback ones.
	Insecure []string
	// Runc is the runc binary. Default runc in PATH, else /usr/sbin/runc.
	Runc string
	// PullTimeout bounds one image pull. Default 10 minutes.
	PullTimeout time.Duration
	// Limits bound the images the machine accepts (sizes, layers, files).
	Limits image.Limits
}

// imageRuntime opens the image store in DataDir/images and the OCI driver
// in DataDir/oci.
func (a *Agent) imageRuntime() (driver.Driver, error) {
	var ic ImagesConfig
	if a.cfg.Images != nil {
		ic = *a.cfg.Images
	}
	if ic.Disabled {
		return nil, errors.New("the image runtime is disabled")
	}
	if ic.Mirror != "" && ic.Direct {
		return nil, errors.New("agent: images: Mirror and Direct exclude each other")
	}
	if ic.Mirror == "" && !ic.Direct {
		// The region's image cache: the first server's host names it; the
		// transport sends each request to the server in use.
		u, err := url.Parse(a.cfg.RegionURLs[0])
		if err != nil {
			return nil, fmt.Errorf("agent: region URL: %w", err)
		}
		ic.Mirror = u.Host
		if ic.Transport == nil {
			a.mirror = &regionMirror{}
			ic.Transport = a.mirror
		}
	}
	store, err := image.Open(image.Config{Dir: filepath.Join(a.cfg.DataDir, "images"), Transport: ic.Transport,
		Mirror: ic.Mirror, Insecure: ic.Insecure, Limits: ic.Limits, PullTimeout: ic.PullTimeout, Logger: a.log})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	d, err := driver.NewOCI(driver.OCIConfig{DataDir: filepath.Join(a.cfg.DataDir, "oci"), Images: store,
		Runc: ic.Runc, ShimPath: a.cfg.ShimPath, Logger: a.cfg.Logger})
	if err != nil {
		return nil, err
	}
	a.images = store
	a.log.Info("images pulled through", "mirror", ic.Mirror, "region_cache", a.mirror != nil)
	return d, nil
}
