package clock

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential delay between retries: Min first, doubling
// up to Max, each delay shortened by a random fraction of up to Jitter
// (0.2 spreads retries over the last fifth of each delay, so many
// clients that failed together do not retry together). The zero Jitter
// gives exact delays. Reset starts over after a success. A Backoff is not
// safe for concurrent use; each retry loop keeps its own.
type Backoff struct {
	Min, Max time.Duration
	Jitter   float64

	next time.Duration
}

// Next returns the delay before the next retry and doubles the one after.
func (b *Backoff) Next() time.Duration {
	if b.next < b.Min {
		b.next = b.Min
	}
	d := b.next
	b.next = min(2*b.next, max(b.Max, b.Min))
	if b.Jitter > 0 && d > 0 {
		d -= time.Duration(rand.Float64() * min(b.Jitter, 1) * float64(d))
	}
	return d
}

// Reset makes the next delay Min again.
func (b *Backoff) Reset() { b.next = 0 }

// Wait sleeps the next delay on c; it returns ctx's error if ctx ends
// first.
func (b *Backoff) Wait(ctx context.Context, c Clock) error { return Sleep(ctx, c, b.Next()) }
