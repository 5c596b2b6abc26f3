package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"
)

// What the Process and OCI drivers' handles and shims share.

// signalError is the error of delivering a signal to instance id that
// failed with err: os.ErrProcessDone once the instance has exited.
func signalError(id string, err error, exited bool) error {
	if exited || errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal instance %s: %w", id, os.ErrProcessDone)
	}
	return fmt.Errorf("signal instance %s: %w", id, err)
}

// stopGracefully is Handle.Stop: SIGTERM through signal, SIGKILL once
// timeout or ctx ends, then wait for done.
func stopGracefully(ctx context.Context, id string, timeout time.Duration, signal func(os.Signal) error, done <-chan struct{}) error {
	if isClosed(done) {
		return nil
	}
	if err := signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	if err := signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop instance %s: %w", id, ctx.Err())
	}
}

// listInstanceDirs is Driver.List over a data dir of instance directories.
func listInstanceDirs(ctx context.Context, dir string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() && idPattern.MatchString(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// shimExit turns a workload's wait status into its ExitStatus and the
// shim's own exit code (128+signal when a signal killed it).
func shimExit(status syscall.WaitStatus, exitedAt time.Time) (ExitStatus, int) {
	es := ExitStatus{Code: status.ExitStatus(), ExitedAt: exitedAt}
	code := es.Code
	if status.Signaled() {
		es.Code, es.Signal = -1, status.Signal()
		code = 128 + int(es.Signal)
	}
	return es, code
}

// drainLogs waits (5 s at most) for the log copiers to finish and closes
// the log.
func drainLogs(copying *sync.WaitGroup, logf *rotatingLog, who string) {
	drained := make(chan struct{})
	go func() { copying.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		fmt.Fprintf(os.Stderr, "%s: log pipes did not drain\n", who)
	}
	logf.close()
}

// reapChildren reaps every child that has exited, without waiting, and
// returns the wait status of target if it was one of them.
func reapChildren(target int) (status syscall.WaitStatus, reaped bool) {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return status, reaped
		}
		if pid == target {
			status, reaped = ws, true
		}
	}
}
