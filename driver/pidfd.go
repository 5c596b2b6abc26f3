package driver

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pidWaiter watches and signals a process that is not our child, through a
// pidfd, so that neither waiting nor signalling can hit a reused pid.
type pidWaiter struct {
	f *os.File
}

func openPidWaiter(pid int) (*pidWaiter, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// A non-blocking fd is registered with the runtime's poller, so waiting
	// for it to become readable (the process exited) parks no thread.
	return &pidWaiter{f: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// wait blocks until the process has exited.
func (w *pidWaiter) wait() {
	ready := func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n > 0
	}
	rc, err := w.f.SyscallConn()
	if err != nil {
		return
	}
	if rc.Read(ready) == nil {
		return
	}
	// Not pollable: poll.
	for {
		done := true
		if rc.Control(func(fd uintptr) { done = ready(fd) }) != nil || done {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *pidWaiter) signal(sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("unsupported signal %v", sig)
	}
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), s, nil, 0)
	}); err != nil {
		return err
	}
	if serr == syscall.ESRCH {
		return os.ErrProcessDone
	}
	return serr
}

func (w *pidWaiter) close() { w.f.Close() }
