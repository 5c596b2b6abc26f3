package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Runtimes is the Driver of a machine that runs both kinds of instance:
// specs with an image go to the image runtime (OCI), specs with a command
// only to the command runtime (Process). Each runtime keeps its instances
// in a data dir of its own; Recover, Destroy and List find an instance in
// the runtime that has it.
type Runtimes struct {
	// Commands runs specs without an image. Required.
	Commands Driver
	// Images runs specs with an image; nil when the machine cannot (see
	// ImagesErr).
	Images Driver
	// ImagesErr says why Images is nil.
	ImagesErr error
}

var _ Driver = (*Runtimes)(nil)

// Name is the runtimes' names joined with "+" ("process+oci").
func (r *Runtimes) Name() string {
	if r.Images == nil {
		return r.Commands.Name()
	}
	return r.Commands.Name() + "+" + r.Images.Name()
}

// RunsImages reports that specs with an image are taken (and refused with
// ImagesErr when the machine cannot run them).
func (r *Runtimes) RunsImages() bool { return true }

// Start starts spec with the runtime made for it.
func (r *Runtimes) Start(ctx context.Context, spec Spec) (Handle, error) {
	if spec.Image == "" {
		return r.Commands.Start(ctx, spec)
	}
	if r.Images == nil {
		why := r.ImagesErr
		if why == nil {
			why = errors.New("no image runtime")
		}
		return nil, fmt.Errorf("spec.image %q: this machine runs no images: %w", spec.Image, why)
	}
	return r.Images.Start(ctx, spec)
}

// drivers are the runtimes in use.
func (r *Runtimes) drivers() []Driver {
	if r.Images == nil {
		return []Driver{r.Commands}
	}
	return []Driver{r.Commands, r.Images}
}

// owner is the runtime with instance id, or nil.
func (r *Runtimes) owner(ctx context.Context, id string) (Driver, error) {
	for _, d := range r.drivers() {
		ids, err := d.List(ctx)
		if err != nil {
			return nil, err
		}
		if slices.Contains(ids, id) {
			return d, nil
		}
	}
	return nil, nil
}

// Recover re-adopts instance id from the runtime that has it.
func (r *Runtimes) Recover(ctx context.Context, id string) (Handle, error) {
	d, err := r.owner(ctx, id)
	if err != nil {
		return nil, err
	}
	if d == nil {
		return nil, fmt.Errorf("recover instance %s: %w", id, ErrNotFound)
	}
	return d.Recover(ctx, id)
}

// List returns the instances of every runtime, sorted.
func (r *Runtimes) List(ctx context.Context) ([]string, error) {
	var all []string
	for _, d := range r.drivers() {
		ids, err := d.List(ctx)
		if err != nil {
			return nil, err
		}
		all = append(all, ids...)
	}
	slices.Sort(all)
	return slices.Compact(all), nil
}

// Destroy destroys instance id in the runtime that has it.
func (r *Runtimes) Destroy(ctx context.Context, id string) error {
	d, err := r.owner(ctx, id)
	if err != nil || d == nil {
		return err
	}
	return d.Destroy(ctx, id)
}

// RunsImages reports whether d takes specs with an image (it has a
// RunsImages method that says so).
func RunsImages(d Driver) bool {
	r, ok := d.(interface{ RunsImages() bool })
	return ok && r.RunsImages()
}
