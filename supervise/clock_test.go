package supervise

import (
	"context"
	"testing"
	"time"

	"github.com/meridian-run/meridian/clock"
)

func newFakeClock() *clock.Fake { return clock.NewFake(time.Now()) }

// waitTimer waits until the supervisor arms a timer of duration d.
func waitTimer(t *testing.T, clk *clock.Fake, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clk.WaitArmed(ctx, func(a time.Duration) bool { return a == d }); err != nil {
		t.Fatalf("no %v timer armed within 10s; armed: %v", d, clk.Armed())
	}
}
