package linkproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// echoServer answers every line with the same line until the client
// closes.
func echoServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t testing.TB) *Proxy {
	t.Helper()
	p, err := New(Config{Target: echoServer(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t testing.TB, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip sends a line and reads the echo within timeout.
func roundTrip(c net.Conn, r *bufio.Reader, line string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return 0, err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if got != line+"\n" {
		return 0, errors.New("echo mismatch: " + got)
	}
	return time.Since(start), nil
}

func TestForwards(t *testing.T) {
	p := newProxy(t)
	c, r := dial(t, p)
	for _, line := range []string{"a", strings.Repeat("x", 100<<10), "b"} {
		if _, err := roundTrip(c, r, line, 5*time.Second); err != nil {
			t.Fatalf("round trip of %d bytes: %v", len(line), err)
		}
	}
	if n := p.Connections(); n != 1 {
		t.Fatalf("connections = %d, want 1", n)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.Connections() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the link stayed open after the client closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLatencyPerDirection: a round trip takes at least both directions'
// latency, and order is kept.
func TestLatencyPerDirection(t *testing.T) {
	p := newProxy(t)
	c, r := dial(t, p)
	p.SetLatency(60*time.Millisecond, 20*time.Millisecond)
	if up, down := p.Latency(); up != 60*time.Millisecond || down != 20*time.Millisecond {
		t.Fatalf("latency = %s/%s", up, down)
	}
	for i := range 3 {
		rtt, err := roundTrip(c, r, "ping", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if rtt < 80*time.Millisecond {
			t.Fatalf("round trip %d took %s, below the injected 80ms", i, rtt)
		}
	}
	// Many small writes arrive in order.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var want strings.Builder
	for i := range 50 {
		s := string(rune('a'+i%26)) + "\n"
		want.WriteString(s)
		io.WriteString(c, s)
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != want.String() {
		t.Fatalf("order not kept: %q", got)
	}
}

// TestBlackhole: bytes vanish while blackholed (the caller times out, the
// connection stays open); new bytes flow after Unblackhole.
func TestBlackhole(t *testing.T) {
	p := newProxy(t)
	p.Blackhole()
	c, r := dial(t, p)
	_, err := roundTrip(c, r, "lost", 300*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackholed round trip: %v, want a timeout", err)
	}
	p.Unblackhole()
	c2, r2 := dial(t, p)
	if _, err := roundTrip(c2, r2, "back", 5*time.Second); err != nil {
		t.Fatalf("after unblackhole: %v", err)
	}
}

// TestPartitionAndReset: a partition resets connections and refuses new
// ones at once; Heal restores the link; ResetConnections resets only what
// is in flight.
func TestPartitionAndReset(t *testing.T) {
	p := newProxy(t)
	c, r := dial(t, p)
	if _, err := roundTrip(c, r, "hi", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Partition()
	if _, err := roundTrip(c, r, "cut", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("round trip across a partition: %v, want a fast failure", err)
	}
	// A new connection fails fast: at connect (the proxy resets it at
	// once, which the dialer may already see) or at its first round trip.
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		defer c2.Close()
		if _, err := roundTrip(c2, bufio.NewReader(c2), "refused", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("new connection during a partition: %v, want a fast failure", err)
		}
	} else if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial during a partition: %v, want a reset or a refusal", err)
	}
	p.Heal()
	c3, r3 := dial(t, p)
	if _, err := roundTrip(c3, r3, "healed", 5*time.Second); err != nil {
		t.Fatalf("after heal: %v", err)
	}
	p.ResetConnections()
	_, err := roundTrip(c3, r3, "reset", 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("after reset: %v, want a reset connection", err)
	}
	c4, r4 := dial(t, p)
	if _, err := roundTrip(c4, r4, "new", 5*time.Second); err != nil {
		t.Fatalf("new connection after a reset: %v", err)
	}
}

func TestNeedsTarget(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Target") {
		t.Fatalf("New without a target: %v", err)
	}
}

// BenchmarkRoundTrip measures a small round trip through the proxy
// without injected latency.
func BenchmarkRoundTrip(b *testing.B) {
	p := newProxy(b)
	c, r := dial(b, p)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := roundTrip(c, r, "ping", 5*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}
