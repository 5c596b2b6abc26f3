package driver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// shimLaunch says how to start an instance's shim (the process runtime's
// or the OCI runtime's), which both speak the same start handshake: the
// shim waits for "go" on fd 3, then answers one line on fd 4, "ok
// <payload>" once the workload runs or "err <reason>".
type shimLaunch struct {
	dir     string // the instance directory (the shim's log is written there)
	path    string // the shim binary
	args    []string
	env     []string
	attr    *syscall.SysProcAttr
	timeout time.Duration
	// late names what did not happen in time, for the error ("shim did
	// not answer").
	late string
	// prepare runs once the shim runs and before it is told to go: it
	// records the shim's pid and start time and joins it to cgroups. An
	// error aborts the start (the shim is killed).
	prepare func(pid int, startTime uint64, startedAt time.Time) error
}

// shimRefusal is the reason a shim answered "err" with: the workload could
// not start (its command, its image, its limits).
type shimRefusal struct{ reason string }

func (e *shimRefusal) Error() string { return e.reason }

// launchShim starts a shim and runs the start handshake. It returns the
// running shim and the payload of its "ok" answer; on any error the shim
// has been waited for (and killed unless it ended by itself).
func launchShim(ctx context.Context, l shimLaunch) (*exec.Cmd, string, error) {
	shimLog, err := os.OpenFile(filepath.Join(l.dir, fileShim), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("open shim log: %w", err)
	}
	defer shimLog.Close()
	goR, goW, err := os.Pipe()
	if err != nil {
		return nil, "", fmt.Errorf("pipe: %w", err)
	}
	defer goW.Close()
	ansR, ansW, err := os.Pipe()
	if err != nil {
		goR.Close()
		return nil, "", fmt.Errorf("pipe: %w", err)
	}
	defer ansR.Close()
	cmd := &exec.Cmd{
		Path:        l.path,
		Args:        l.args,
		Env:         l.env,
		Stdout:      shimLog,
		Stderr:      shimLog,
		ExtraFiles:  []*os.File{goR, ansW}, // fds 3 and 4
		SysProcAttr: l.attr,
	}
	err = cmd.Start()
	goR.Close()
	ansW.Close()
	if err != nil {
		return nil, "", fmt.Errorf("start shim %s: %w", l.path, err)
	}
	startedAt := time.Now()
	pid := cmd.Process.Pid
	abort := func(cause error) (*exec.Cmd, string, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, "", cause
	}
	st, err := readProcStat(pid)
	if err != nil {
		return abort(fmt.Errorf("read shim start time: %w", err))
	}
	if err := l.prepare(pid, st.StartTime, startedAt); err != nil {
		return abort(err)
	}
	if _, err := goW.Write([]byte("go")); err != nil {
		return abort(fmt.Errorf("%w: %s", errShimGone, readShimLog(l.dir)))
	}
	goW.Close()

	type answer struct {
		line string
		err  error
	}
	ansc := make(chan answer, 1)
	go func() {
		line, err := bufio.NewReader(ansR).ReadString('\n')
		ansc <- answer{line, err}
	}()
	timer := time.NewTimer(l.timeout)
	defer timer.Stop()
	var a answer
	select {
	case a = <-ansc:
	case <-timer.C:
		return abort(fmt.Errorf("%s within %v: %s", l.late, l.timeout, readShimLog(l.dir)))
	case <-ctx.Done():
		return abort(ctx.Err())
	}
	switch {
	case strings.HasPrefix(a.line, "ok "):
		return cmd, strings.TrimSpace(strings.TrimPrefix(a.line, "ok ")), nil
	case strings.HasPrefix(a.line, "err "):
		_ = cmd.Wait()
		return nil, "", &shimRefusal{strings.TrimSpace(strings.TrimPrefix(a.line, "err "))}
	}
	_ = cmd.Wait()
	if a.err != nil && !errors.Is(a.err, io.EOF) {
		return nil, "", fmt.Errorf("read shim answer: %w", a.err)
	}
	return nil, "", fmt.Errorf("%w: %s", errShimGone, readShimLog(l.dir))
}
