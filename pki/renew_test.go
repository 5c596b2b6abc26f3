package pki_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/pki"
)

// fakeClock is the shared fake clock, remembering how many timers the
// code under test armed so far, so nextTimer can wait for the next one.
type fakeClock struct {
	*clock.Fake
	seen int
}

func newFakeClock(now time.Time) *fakeClock { return &fakeClock{Fake: clock.NewFake(now)} }

// nextTimer waits for the code under test to arm a timer and returns its
// deadline.
func (c *fakeClock) nextTimer(t *testing.T) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioDeadline)
	defer cancel()
	if err := c.WaitArms(ctx, c.seen); err != nil {
		t.Fatal("no timer armed before the deadline")
	}
	c.seen = c.Arms()
	return c.LastArmed()
}

type renewHarness struct {
	clock   *fakeClock
	rel     *pki.Reloader
	renewed chan *pki.Leaf
	calls   atomic.Int32
	cancel  context.CancelFunc
	done    chan error
}

// startRenew runs Renew on a Reloader holding a 30-minute leaf issued at
// the fake clock's time; issue fails while fail returns true.
func startRenew(t *testing.T, f *fixture, before time.Duration, fail func(call int32) bool) *renewHarness {
	t.Helper()
	h := &renewHarness{clock: newFakeClock(f.now), renewed: make(chan *pki.Leaf, 8), done: make(chan error, 1)}
	id := pki.MachineID(td, "fra", "m1")
	issue := func(now time.Time) (*pki.Leaf, error) {
		return f.fra.Issue(pki.LeafRequest{ID: id, Usage: pki.UsageBoth, TTL: 30 * time.Minute, Now: now})
	}
	first, err := issue(f.now)
	if err != nil {
		t.Fatal(err)
	}
	h.rel = reloader(t, first)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.done <- h.rel.Renew(ctx, pki.RenewConfig{
			Clock:  h.clock,
			Before: before,
			Issue: func(ctx context.Context) (*pki.Leaf, error) {
				n := h.calls.Add(1)
				if fail != nil && fail(n) {
					return nil, errors.New("region unreachable")
				}
				return issue(h.clock.Now())
			},
			OnRenew: func(l *pki.Leaf) { h.renewed <- l },
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

func (h *renewHarness) waitRenewed(t *testing.T) *pki.Leaf {
	t.Helper()
	select {
	case l := <-h.renewed:
		return l
	case err := <-h.done:
		t.Fatalf("Renew returned early: %v", err)
	case <-time.After(ioDeadline):
		t.Fatal("no renewal before the deadline")
	}
	return nil
}

func TestRenewBeforeExpiry(t *testing.T) {
	f := newFixture(t)
	h := startRenew(t, f, 10*time.Minute, nil)
	first := h.rel.Leaf()

	// 30-minute leaf, renew when 10 minutes remain: at +20m.
	if at := h.clock.nextTimer(t); !at.Equal(first.Cert.NotAfter.Add(-10 * time.Minute)) {
		t.Fatalf("renewal scheduled at %v, want %v", at, first.Cert.NotAfter.Add(-10*time.Minute))
	}
	h.clock.Advance(19 * time.Minute) // timer not yet due: Renew stays blocked
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("issued %d times before the renewal point", n)
	}
	if h.rel.Leaf() != first {
		t.Fatal("certificate changed before the renewal point")
	}
	h.clock.Advance(time.Minute)
	second := h.waitRenewed(t)
	if h.rel.Leaf() != second || second.Cert.SerialNumber.Cmp(first.Cert.SerialNumber) == 0 {
		t.Fatal("reloader does not serve the renewed certificate")
	}
	if !h.clock.Now().Before(first.Cert.NotAfter) {
		t.Fatal("renewed after expiry")
	}
	// The next renewal is scheduled from the new certificate.
	if at := h.clock.nextTimer(t); !at.Equal(second.Cert.NotAfter.Add(-10 * time.Minute)) {
		t.Fatalf("next renewal at %v, want %v", at, second.Cert.NotAfter.Add(-10*time.Minute))
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("issue called %d times, want 1", n)
	}
	h.cancel()
	select {
	case err := <-h.done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Renew returned %v, want context.Canceled", err)
		}
		h.done <- err // for the cleanup
	case <-time.After(ioDeadline):
		t.Fatal("Renew did not return after cancel")
	}
}

func TestRenewDefaultThirdAndBackoff(t *testing.T) {
	f := newFixture(t)
	h := startRenew(t, f, 0, func(n int32) bool { return n <= 3 })
	first := h.rel.Leaf()
	life := first.Cert.NotAfter.Sub(first.Cert.NotBefore)
	at := h.clock.nextTimer(t)
	if want := first.Cert.NotAfter.Add(-life / 3); !at.Equal(want) {
		t.Fatalf("renewal at %v, want a third of the lifetime before expiry (%v)", at, want)
	}
	h.clock.Advance(at.Sub(h.clock.Now()))
	// Three failures: retries after 1s, 2s, 4s.
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		next := h.clock.nextTimer(t)
		if d := next.Sub(h.clock.Now()); d != want {
			t.Fatalf("retry %d after %v, want %v", i+1, d, want)
		}
		if n := h.calls.Load(); n != int32(i+1) {
			t.Fatalf("issue called %d times, want %d", n, i+1)
		}
		h.clock.Advance(want)
	}
	second := h.waitRenewed(t)
	if h.calls.Load() != 4 || h.rel.Leaf() != second {
		t.Fatalf("after recovery: %d calls", h.calls.Load())
	}
}

func TestRenewExpiredRenewsAtOnce(t *testing.T) {
	f := newFixture(t)
	h := &renewHarness{clock: newFakeClock(f.now.Add(2 * time.Hour))}
	old, err := f.fra.Issue(pki.LeafRequest{ID: pki.MachineID(td, "fra", "m1"), Usage: pki.UsageClient, TTL: time.Hour, Now: f.now})
	if err != nil {
		t.Fatal(err)
	}
	rel := reloader(t, old)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	renewed := make(chan *pki.Leaf, 1)
	done := make(chan error, 1)
	go func() {
		done <- rel.Renew(ctx, pki.RenewConfig{
			Clock: h.clock,
			Issue: func(context.Context) (*pki.Leaf, error) {
				return f.fra.Issue(pki.LeafRequest{ID: pki.MachineID(td, "fra", "m1"), Usage: pki.UsageClient, TTL: time.Hour, Now: h.clock.Now()})
			},
			OnRenew: func(l *pki.Leaf) { renewed <- l },
		})
	}()
	select {
	case l := <-renewed:
		if !l.Cert.NotAfter.After(h.clock.Now()) {
			t.Fatal("renewed certificate is not valid now")
		}
	case <-time.After(ioDeadline):
		t.Fatal("expired certificate not renewed at once")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Renew returned %v", err)
	}
}

func TestRenewConfigErrors(t *testing.T) {
	f := newFixture(t)
	rel := reloader(t, f.issue(t, f.fra, pki.MachineID(td, "fra", "m1"), pki.UsageClient))
	issue := func(context.Context) (*pki.Leaf, error) { return nil, errors.New("unused") }
	for name, tc := range map[string]struct {
		cfg     pki.RenewConfig
		wantErr string
	}{
		"no clock":        {pki.RenewConfig{Issue: issue}, "RenewConfig.Clock"},
		"no issue":        {pki.RenewConfig{Clock: pki.RealClock()}, "RenewConfig.Issue"},
		"negative before": {pki.RenewConfig{Clock: pki.RealClock(), Issue: issue, Before: -time.Second}, "RenewConfig.Before"},
	} {
		if err := rel.Renew(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.wantErr)
		}
	}
	var empty pki.Reloader
	if _, err := empty.GetCertificate(nil); err == nil {
		t.Error("zero Reloader served a certificate")
	}
}

// TestRenewFeedsLiveListener runs the renewer against a Reloader used by a
// live TLS listener: after renewal, new handshakes get the new certificate.
func TestRenewFeedsLiveListener(t *testing.T) {
	f := newFixture(t)
	h := startRenew(t, f, 10*time.Minute, nil)
	machines, err := pki.RegionMembers(f.fra.Cert, pki.KindMachine)
	if err != nil {
		t.Fatal(err)
	}
	// The renewed identity is a machine used as a server here, which is
	// enough to observe what the listener presents.
	srv := startServer(t, pki.ServerConfig(h.rel, f.root.Pool(), machines))
	client := reloader(t, f.issue(t, f.fra, pki.MachineID(td, "fra", "m2"), pki.UsageClient))
	cfg := pki.ClientConfig(client, f.root.Pool(), pki.AllowIDs(pki.MachineID(td, "fra", "m1")))
	cfg.Time = h.clock.Now // the renewed certificate is valid from fake time
	first := h.rel.Leaf()
	c, _, err := dial(t, srv.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.nextPeer(t)
	if !c.ConnectionState().PeerCertificates[0].Equal(first.Cert) {
		t.Fatal("listener did not present the first certificate")
	}
	at := h.clock.nextTimer(t)
	h.clock.Advance(at.Sub(h.clock.Now()))
	second := h.waitRenewed(t)
	c2, _, err := dial(t, srv.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.nextPeer(t)
	if !c2.ConnectionState().PeerCertificates[0].Equal(second.Cert) {
		t.Fatal("listener did not present the renewed certificate")
	}
}
