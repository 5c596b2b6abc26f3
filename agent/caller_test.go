package agent

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

// loopbackPair is a connected TCP pair on loopback: the dialed end and
// the accepted end.
func loopbackPair(t testing.TB) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(acc)
			return
		}
		acc <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, ok := <-acc
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

// inodeOf is the socket inode of a connection of this process.
func inodeOf(t testing.TB, c net.Conn) uint32 {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	rc.Control(func(fd uintptr) { err = syscall.Fstat(int(fd), &st) })
	if err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// TestCallerSocket: from the accepted end, the kernel names the dialing
// socket (not the accepted one) and its owner, and this process is found
// holding it; another process tree is not.
func TestCallerSocket(t *testing.T) {
	d, a := loopbackPair(t)
	got, err := callerSocket(a)
	if err != nil {
		t.Fatal(err)
	}
	if want := inodeOf(t, d); got.inode != want {
		t.Fatalf("callerSocket = inode %d, want the dialing socket's %d (accepted: %d)", got.inode, want, inodeOf(t, a))
	}
	if got.uid != uint32(os.Getuid()) {
		t.Fatalf("callerSocket = uid %d, want this process's %d", got.uid, os.Getuid())
	}
	target := "socket:[" + strconv.FormatUint(uint64(got.inode), 10) + "]"
	if !processTreeHolds([]int{os.Getpid()}, target) {
		t.Fatal("this process does not hold the socket it dialed")
	}
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	if processTreeHolds([]int{other.Process.Pid}, target) {
		t.Fatal("another process's tree holds this process's socket")
	}
	if processTreeHolds(nil, target) {
		t.Fatal("no process holds everything")
	}
	if _, err := callerSocket(fakeAddrConn{a}); err == nil {
		t.Fatal("a non-TCP connection was looked up")
	}
}

type fakeAddrConn struct{ net.Conn }

func (fakeAddrConn) RemoteAddr() net.Addr { return &net.UnixAddr{Name: "x", Net: "unix"} }

// BenchmarkVerifyCaller measures what the caller check costs a new
// connection: the sock_diag lookup and the scan of the calling process's
// descriptors (this test process: a few dozen).
//
//	go test -run '^$' -bench BenchmarkVerifyCaller -benchtime 2000x ./agent
func BenchmarkVerifyCaller(b *testing.B) {
	_, a := loopbackPair(b)
	pid := []int{os.Getpid()}
	fds, _ := os.ReadDir("/proc/self/fd")
	b.ReportMetric(float64(len(fds)), "fds")
	for b.Loop() {
		sock, err := callerSocket(a)
		if err != nil {
			b.Fatal(err)
		}
		if !processTreeHolds(pid, fmt.Sprintf("socket:[%d]", sock.inode)) {
			b.Fatal("not found")
		}
	}
}
