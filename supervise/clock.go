package supervise

import (
	"context"
	"github.com/meridian-run/meridian/clock"
	"net"
)

// Clock is the source of time for backoff and health check schedules, so
// tests can drive them.
type Clock = clock.Clock

// Timer is a one-shot timer of a Clock.
type Timer = clock.Timer

// RealClock returns the Clock of the time package.
func RealClock() Clock { return clock.Real() }

// Dialer opens the connections of TCP health checks (and, unless an
// HTTPClient is given, of HTTP ones). *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}
