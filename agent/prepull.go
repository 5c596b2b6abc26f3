package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/regionapi"
)

// Pre-pull. An instance of an image is pulled onto the machine as soon as
// its assignment arrives (instances pull in parallel, one pull per image),
// reported as state pulling with its progress, and started only once the
// image is whole: the region's rolling replacement stops an old instance
// only when a new one is healthy, so the old version serves all through a
// slow pull, and a pull that fails fails the instance at once with the
// reason naming the image (never a restart limit).

// pullAttempts is how many times a pull that failed for a passing cause
// (the region or the upstream registry unreachable, a cut connection) is
// tried before the instance fails.
const pullAttempts = 3

// pullProgressEvery is how often a pull's progress is reported.
const pullProgressEvery = time.Second

// pullThenRun pulls the instance's image, then supervises it (see run).
func (a *Agent) pullThenRun(in *instance, ref string) {
	ctx, cancel := context.WithCancel(a.ctx)
	a.mu.Lock()
	stopping := in.stopping
	if !stopping {
		in.cancelPull = cancel
		in.state, in.message = regionapi.StatePulling, "pulling image "+ref
	}
	a.mu.Unlock()
	if !stopping {
		a.changed(in)
	}
	begin := a.clock.Now()
	err := context.Canceled
	if !stopping {
		err = a.pull(ctx, in, ref)
	}
	cancel()
	a.mu.Lock()
	in.cancelPull = nil
	stopping = in.stopping
	a.mu.Unlock()
	switch {
	case err == nil:
		a.log.Info("image pulled; starting instance", "instance", in.id, "image", ref, "took", a.clock.Now().Sub(begin).Round(time.Millisecond))
		a.run(in)
		return
	case a.ctx.Err() != nil:
		// The agent is closing: the next one pulls again.
	case stopping:
		a.mu.Lock()
		in.state, in.message = regionapi.StateStopped, ""
		a.mu.Unlock()
		a.changed(in)
	default:
		a.log.Error("instance failed: its image cannot be pulled", "instance", in.id, "service", in.asg.Service, "image", ref, "err", err)
		a.mu.Lock()
		in.state, in.healthy, in.message = regionapi.StateFailed, false, err.Error()
		a.mu.Unlock()
		a.changed(in)
	}
	close(in.done)
	a.wg.Done()
}

// pull pulls ref, reporting its progress on in, and tries again after a
// passing failure.
func (a *Agent) pull(ctx context.Context, in *instance, ref string) error {
	done := make(chan struct{})
	defer close(done)
	go a.reportPull(ctx, done, in, ref)
	backoff := clock.Backoff{Min: time.Second, Max: 4 * time.Second, Jitter: 0.2}
	for attempt := 1; ; attempt++ {
		_, err := a.images.Pull(ctx, ref)
		if err == nil || ctx.Err() != nil || attempt == pullAttempts || !passing(err) {
			return err
		}
		a.log.Warn("image pull failed; trying again", "instance", in.id, "image", ref, "attempt", attempt, "err", err)
		if err := backoff.Wait(ctx, a.clock); err != nil {
			return err
		}
	}
}

// reportPull reports a pull's progress in the instance's message until
// done is closed.
func (a *Agent) reportPull(ctx context.Context, done <-chan struct{}, in *instance, ref string) {
	last := ""
	for {
		t := a.clock.NewTimer(pullProgressEvery)
		select {
		case <-done:
			t.Stop()
			return
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		p, ok := a.images.Progress(ref)
		if !ok {
			continue
		}
		msg := fmt.Sprintf("pulling image %s: %.1f of %.1f MB", ref, float64(p.Fetched)/1e6, float64(p.Total)/1e6)
		if p.Unpacking {
			msg = fmt.Sprintf("unpacking image %s (%.1f MB)", ref, float64(p.Total)/1e6)
		}
		if msg == last {
			continue
		}
		last = msg
		a.mu.Lock()
		if in.state != regionapi.StatePulling {
			a.mu.Unlock()
			return
		}
		in.message = msg
		a.mu.Unlock()
		a.changed(in)
	}
}

// passing reports whether a pull failed for a cause that may pass (the
// region or the registry unreachable, a connection cut short), not
// because the image is missing, refused, damaged, too large or invalid.
func passing(err error) bool {
	for _, lasting := range []error{image.ErrNotFound, image.ErrInvalid, image.ErrTooLarge, image.ErrUnsafeLayer, image.ErrDigest} {
		if errors.Is(err, lasting) {
			return false
		}
	}
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			switch d.Code {
			case transport.DeniedErrorCode, transport.UnauthorizedErrorCode, transport.DigestInvalidErrorCode,
				transport.ManifestUnknownErrorCode, transport.BlobUnknownErrorCode, transport.NameUnknownErrorCode,
				transport.ManifestInvalidErrorCode, transport.NameInvalidErrorCode:
				return false
			}
		}
		return te.StatusCode >= 500 || te.StatusCode == 408 || te.StatusCode == 429
	}
	return true
}
