package agent

import (
	"errors"
	"fmt"
	"net/http"
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
	// through, such as the region's pull-through cache; see
	// image.Config.Mirror. Empty: each image's own registry.
	Mirror string
	// Transport carries registry requests (for the region's cache, one
	// with the machine's certificate). Default: plain HTTPS.
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
	return d, nil
}
