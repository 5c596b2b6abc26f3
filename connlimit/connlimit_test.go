package connlimit

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-run/meridian/testutil"
)

// server accepts on a capped loopback listener and keeps every admitted
// connection open until the test closes it.
type server struct {
	l        *Listener
	mu       sync.Mutex
	admitted []net.Conn
	rejected map[Reason]int
}

func newServer(t *testing.T, cfg Config) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{rejected: map[Reason]int{}}
	cfg.OnReject = func(_ net.Addr, why Reason) {
		s.mu.Lock()
		s.rejected[why]++
		s.mu.Unlock()
	}
	s.l = NewListener(ln, cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.admitted = append(s.admitted, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		s.l.Close()
		<-done
		s.mu.Lock()
		for _, c := range s.admitted {
			c.Close()
		}
		s.mu.Unlock()
	})
	return s
}

func (s *server) counts() (admitted int, rejected map[Reason]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := map[Reason]int{}
	for k, v := range s.rejected {
		r[k] = v
	}
	return len(s.admitted), r
}

// dialFrom connects to addr from the local address from (any of 127/8 is
// local on Linux).
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", from, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refused dials addr from the local address from and reports whether the
// server closed the connection without a word: the connect itself is
// reset (the server's reset can beat the end of the dial on loopback), or
// a read ends at once with EOF or a reset, not with a timeout.
func refused(t *testing.T, from, addr string) (bool, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return true, err
	}
	if err != nil {
		t.Fatalf("dial from %s: %v", from, err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, err
	}
	return err != nil, err
}

// stillOpen reports whether c is held open by the server: a short read
// times out instead of ending.
func stillOpen(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// TestPerAddressCap: one address gets PerAddr connections and the next is
// closed at once; another address is still admitted; closing a connection
// gives its slot back.
func TestPerAddressCap(t *testing.T) {
	s := newServer(t, Config{PerAddr: 3})
	addr := s.l.Addr().String()
	var mine []net.Conn
	for range 3 {
		mine = append(mine, dialFrom(t, "127.0.0.1", addr))
	}
	testutil.Eventually(t, 10*time.Second, "3 connections admitted", func() (bool, string) {
		n, _ := s.counts()
		return n == 3, ""
	})
	if ok, err := refused(t, "127.0.0.1", addr); !ok {
		t.Fatalf("a 4th connection from 127.0.0.1 was not closed at once: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "one per_address rejection", func() (bool, string) {
		_, rej := s.counts()
		return rej[PerAddr] == 1 && rej[Total] == 0, fmt.Sprint(rej)
	})
	for i, c := range mine {
		if !stillOpen(c) {
			t.Fatalf("admitted connection %d was closed", i)
		}
	}
	other := dialFrom(t, "127.0.0.2", addr)
	testutil.Eventually(t, 10*time.Second, "127.0.0.2 admitted", func() (bool, string) {
		n, _ := s.counts()
		return n == 4 && stillOpen(other), ""
	})
	if got := s.l.OpenFrom(other.LocalAddr()); got != 1 {
		t.Errorf("OpenFrom(127.0.0.2) = %d, want 1", got)
	}

	// The server closes one of 127.0.0.1's connections: its slot is free.
	s.mu.Lock()
	s.admitted[0].Close()
	s.admitted[0].Close() // a second Close gives back nothing more
	s.mu.Unlock()
	if got := s.l.OpenFrom(mine[0].LocalAddr()); got != 2 {
		t.Fatalf("after a close, OpenFrom(127.0.0.1) = %d, want 2", got)
	}
	again := dialFrom(t, "127.0.0.1", addr)
	testutil.Eventually(t, 10*time.Second, "a freed slot is used again", func() (bool, string) {
		n, _ := s.counts()
		return n == 5 && stillOpen(again), ""
	})
	if got := s.l.Open(); got != 4 {
		t.Errorf("Open() = %d, want 4", got)
	}
}

// TestTotalCap: past Total, connections from any address are closed.
func TestTotalCap(t *testing.T) {
	s := newServer(t, Config{PerAddr: 10, Total: 2})
	addr := s.l.Addr().String()
	dialFrom(t, "127.0.0.1", addr)
	dialFrom(t, "127.0.0.2", addr)
	testutil.Eventually(t, 10*time.Second, "2 connections admitted", func() (bool, string) {
		n, _ := s.counts()
		return n == 2, ""
	})
	if ok, err := refused(t, "127.0.0.3", addr); !ok {
		t.Fatalf("a 3rd connection was not closed at once: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "one total rejection", func() (bool, string) {
		_, rej := s.counts()
		return rej[Total] == 1 && rej[PerAddr] == 0, fmt.Sprint(rej)
	})
}

// TestAddrKey: IPv4 (also IPv4-mapped) counts per address, IPv6 per /64.
func TestAddrKey(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.7:1234", "192.0.2.7/32"},
		{"[::ffff:192.0.2.7]:1234", "192.0.2.7/32"},
		{"[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9]:443", "2001:db8:1:2::/64"},
	} {
		a, _ := net.ResolveTCPAddr("tcp", tc.addr)
		if got := addrKey(a); got != netip.MustParsePrefix(tc.want) {
			t.Errorf("addrKey(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
	if got := addrKey(&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}); got.IsValid() {
		t.Errorf("a Unix address has key %s, want none", got)
	}
}

// TestRelease: a released connection (seen through a TLS connection
// wrapping it) stops counting against its address but not against the
// total; releasing twice, or closing it afterwards, changes nothing more.
func TestRelease(t *testing.T) {
	s := newServer(t, Config{PerAddr: 2, Total: 10})
	addr := s.l.Addr().String()
	dialFrom(t, "127.0.0.2", addr)
	dialFrom(t, "127.0.0.2", addr)
	testutil.Eventually(t, 5*time.Second, "two admitted", func() (bool, string) {
		n, _ := s.counts()
		return n == 2, fmt.Sprintf("admitted %d", n)
	})
	s.mu.Lock()
	first := s.admitted[0]
	s.mu.Unlock()
	from := first.RemoteAddr()
	Release(tls.Server(first, &tls.Config{}))
	Release(first)
	if n := s.l.OpenFrom(from); n != 1 {
		t.Fatalf("open from the address after a release: %d, want 1", n)
	}
	if n := s.l.Open(); n != 2 {
		t.Fatalf("open in all after a release: %d, want 2", n)
	}
	// Room for one more from that address.
	dialFrom(t, "127.0.0.2", addr)
	testutil.Eventually(t, 5*time.Second, "a third admitted", func() (bool, string) {
		n, _ := s.counts()
		return n == 3, fmt.Sprintf("admitted %d", n)
	})
	first.Close()
	if n := s.l.OpenFrom(from); n != 2 {
		t.Fatalf("open from the address after closing the released one: %d, want 2", n)
	}
	if n := s.l.Open(); n != 2 {
		t.Fatalf("open in all after closing the released one: %d, want 2", n)
	}
}
