// Package supervise keeps one instance running and healthy through a
// driver.Driver: it starts it (or adopts a recovered handle), runs its TCP
// and HTTP health checks, restarts it with exponential backoff when it exits
// or fails its checks, and gives up past the restart limit (state failed:
// the region then replaces the instance elsewhere). Every state transition
// is reported through Config.OnState.
//
// Health: checks run from the instance's start, each bounded by its
// timeout. During a check's grace period (counted from the start) its
// failures do not count and it is retried every StartupPoll (at most its
// interval), so an instance is healthy as soon as it answers, not only once
// the grace period is over (as Nomad's check_restart grace and Kubernetes'
// startup probes behave). The instance becomes healthy when every check has
// passed once; then checks run every interval, and a check that fails
// FailureThreshold (default 3) times in a row after its grace period marks
// the instance unhealthy, and it is stopped and restarted. An instance
// without checks is healthy once started.
//
// Restarts: the first waits BackoffMin (default 1s), each next one twice as
// long up to BackoffMax (default 30s). An instance that stayed healthy for
// BackoffReset (default 1m) before failing starts over: its restart count
// and backoff are reset. Past RestartLimit restarts the instance is failed.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/driver"
)

// Defaults of Config and of health checks that leave a field empty.
const (
	DefaultInterval         = 10 * time.Second
	DefaultTimeout          = 2 * time.Second
	DefaultFailureThreshold = 3
	DefaultRestartLimit     = 3
	DefaultBackoffMin       = time.Second
	DefaultBackoffMax       = 30 * time.Second
	DefaultBackoffReset     = time.Minute
	DefaultStopTimeout      = 10 * time.Second
)

// State is where an instance is in its life.
type State string

// States reported through OnState.
const (
	// StateStarting: the driver is starting the instance.
	StateStarting State = "starting"
	// StateRunning: the instance runs; see Status.Health.
	StateRunning State = "running"
	// StateRestarting: the instance ended or failed its checks and waits
	// for its backoff before starting again.
	StateRestarting State = "restarting"
	// StateFailed: past the restart limit; the supervisor gave up.
	StateFailed State = "failed"
	// StateStopped: stopped by Stop.
	StateStopped State = "stopped"
)

// Health is the result of an instance's health checks.
type Health string

// Health values. HealthUnknown means no verdict yet (checks pending).
const (
	HealthUnknown   Health = ""
	HealthHealthy   Health = "healthy"
	HealthUnhealthy Health = "unhealthy"
)

// Status is one state transition of a supervised instance.
type Status struct {
	// ID is the instance id.
	ID string
	// State is the new state.
	State State
	// Health is the health verdict while running.
	Health Health
	// Restarts counts restarts since the supervisor started (or since the
	// last reset after a long healthy run).
	Restarts int
	// Reason says why the instance is restarting, failed or unhealthy, e.g.
	// "exited with status 1" or "health check http :8080/healthz: status
	// 500".
	Reason string
	// Exit is the last exit status, when the instance exited.
	Exit *driver.ExitStatus
	// Pid is the instance's host pid while it runs.
	Pid int
	// At is when the transition happened, by Config.Clock.
	At time.Time
}

// Config configures a Supervisor.
type Config struct {
	// Driver runs the instance. Required.
	Driver driver.Driver
	// Spec is what to run. Optional when Handle is set (its spec is used).
	Spec driver.Spec
	// Handle, when set, is a running instance (e.g. recovered after an
	// agent restart) to supervise before starting anything.
	Handle driver.Handle
	// HealthChecks probe the instance; each Port must be the host port the
	// agent assigned. Their empty durations take the defaults below.
	HealthChecks []api.HealthCheck
	// Host is the address health checks connect to. Default "127.0.0.1".
	Host string
	// GracePeriod, Interval and Timeout are the defaults of checks that set
	// none (0, DefaultInterval, DefaultTimeout when zero here).
	GracePeriod time.Duration
	Interval    time.Duration
	Timeout     time.Duration
	// RestartLimit is how many restarts are allowed before the instance is
	// failed. Nil means the smallest restart_limit of the health checks, or
	// DefaultRestartLimit.
	RestartLimit *int
	// FailureThreshold is how many consecutive failures of a check make the
	// instance unhealthy. Default DefaultFailureThreshold.
	FailureThreshold int
	// BackoffMin, BackoffMax and BackoffReset shape restart delays; see the
	// package doc. Defaults DefaultBackoffMin, DefaultBackoffMax and
	// DefaultBackoffReset.
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	BackoffReset time.Duration
	// StopTimeout is how long a stopping instance gets between SIGTERM and
	// SIGKILL. Default DefaultStopTimeout.
	StopTimeout time.Duration
	// Clock drives backoff and check schedules. Default RealClock().
	Clock Clock
	// Dialer opens TCP check connections. Default a *net.Dialer.
	Dialer Dialer
	// HTTPClient runs HTTP checks. Default a client over Dialer that does
	// not follow redirects (a 3xx passes).
	HTTPClient *http.Client
	// Logger receives transitions; nil discards them.
	Logger *slog.Logger
	// OnState, when set, is called with every transition, in order, from
	// the goroutine of Run; it must not block for long.
	OnState func(Status)
}

// ErrFailed is matched by Run's error when the instance went past its
// restart limit.
var ErrFailed = errors.New("instance failed past its restart limit")

// Supervisor runs one instance; see the package doc.
type Supervisor struct {
	cfg    Config
	err    error // configuration error, returned by Run
	checks []check
	limit  int
	log    *slog.Logger

	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}

	mu      sync.Mutex
	running bool
	status  Status
}

// check is a health check with its durations resolved.
type check struct {
	hc                       api.HealthCheck
	name                     string // "http :8080/healthz", "tcp :5432"
	grace, interval, timeout time.Duration
}

// New returns a Supervisor for cfg. Configuration errors are returned by
// Run.
func New(cfg Config) *Supervisor {
	s := &Supervisor{stopCh: make(chan struct{}), done: make(chan struct{})}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.FailureThreshold <= 0 {
		cfg.FailureThreshold = DefaultFailureThreshold
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffMin)
	}
	if cfg.BackoffReset <= 0 {
		cfg.BackoffReset = DefaultBackoffReset
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = RealClock()
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{
			Transport: &http.Transport{DialContext: cfg.Dialer.DialContext, DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	if cfg.Handle != nil && cfg.Spec.ID == "" {
		cfg.Spec = cfg.Handle.Spec()
	}
	s.log = cfg.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("instance", cfg.Spec.ID)
	s.cfg = cfg
	s.err = s.resolve()
	return s
}

// resolve validates the config and resolves the checks and restart limit.
func (s *Supervisor) resolve() error {
	cfg := &s.cfg
	if cfg.Driver == nil {
		return errors.New("supervise: Config.Driver is required")
	}
	if cfg.Spec.ID == "" {
		return errors.New("supervise: Config.Spec.ID is required (or a Config.Handle)")
	}
	if cfg.Handle != nil && cfg.Handle.ID() != cfg.Spec.ID {
		return fmt.Errorf("supervise: Config.Handle is instance %q but Config.Spec.ID is %q", cfg.Handle.ID(), cfg.Spec.ID)
	}
	limit := -1
	for i, hc := range cfg.HealthChecks {
		field := fmt.Sprintf("health_checks[%d]", i)
		if (hc.TCP == nil) == (hc.HTTP == nil) {
			return fmt.Errorf("supervise: %s: exactly one of tcp and http must be set", field)
		}
		if hc.Port < 1 || hc.Port > 65535 {
			return fmt.Errorf("supervise: %s.port: %d is not a port", field, hc.Port)
		}
		c := check{hc: hc, grace: cfg.GracePeriod, interval: cfg.Interval, timeout: cfg.Timeout}
		for _, d := range []struct {
			name string
			v    api.Duration
			into *time.Duration
		}{{"grace_period", hc.GracePeriod, &c.grace}, {"interval", hc.Interval, &c.interval}, {"timeout", hc.Timeout, &c.timeout}} {
			v, err := d.v.Std()
			if err != nil || v < 0 {
				return fmt.Errorf("supervise: %s.%s: %q is not a duration", field, d.name, d.v)
			}
			if v > 0 {
				*d.into = v
			}
		}
		if hc.HTTP != nil {
			c.name = fmt.Sprintf("http :%d%s", hc.Port, hc.HTTP.Path)
		} else {
			c.name = fmt.Sprintf("tcp :%d", hc.Port)
		}
		if hc.RestartLimit != nil {
			if *hc.RestartLimit < 0 {
				return fmt.Errorf("supervise: %s.restart_limit: %d is negative", field, *hc.RestartLimit)
			}
			if limit < 0 || *hc.RestartLimit < limit {
				limit = *hc.RestartLimit
			}
		}
		s.checks = append(s.checks, c)
	}
	switch {
	case cfg.RestartLimit != nil && *cfg.RestartLimit < 0:
		return fmt.Errorf("supervise: Config.RestartLimit: %d is negative", *cfg.RestartLimit)
	case cfg.RestartLimit != nil:
		s.limit = *cfg.RestartLimit
	case limit >= 0:
		s.limit = limit
	default:
		s.limit = DefaultRestartLimit
	}
	return nil
}

// Status returns the last reported status.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Supervisor) report(st Status) {
	st.ID = s.cfg.Spec.ID
	st.At = s.cfg.Clock.Now()
	s.mu.Lock()
	s.status = st
	s.mu.Unlock()
	attrs := []any{"state", st.State, "restarts", st.Restarts}
	if st.Health != "" {
		attrs = append(attrs, "health", st.Health)
	}
	if st.Reason != "" {
		attrs = append(attrs, "reason", st.Reason)
	}
	s.log.Info("instance "+string(st.State), attrs...)
	if s.cfg.OnState != nil {
		s.cfg.OnState(st)
	}
}

// outcome is how one run of the instance ended.
type outcome int

const (
	outEnded    outcome = iota // exited or unhealthy: restart
	outStopped                 // Stop was called
	outDetached                // ctx ended: left running
)

// Run supervises the instance until Stop is called (it returns nil), the
// instance fails past its restart limit (an error matching ErrFailed), or
// ctx ends (ctx's error). When ctx ends, a running instance is left running,
// so that an agent shutting down or restarting does not take its
// instances down; the next agent recovers them. Run may be called once.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("supervise: Run called twice")
	}
	s.running = true
	s.mu.Unlock()
	defer close(s.done)

	clk := s.cfg.Clock
	restarts := 0
	backoff := clock.Backoff{Min: s.cfg.BackoffMin, Max: s.cfg.BackoffMax}
	h := s.cfg.Handle
	for {
		var reason string
		var exit *driver.ExitStatus
		var healthySince time.Time
		if h == nil {
			select {
			case <-s.stopCh:
				s.report(Status{State: StateStopped, Restarts: restarts})
				return nil
			default:
			}
			s.report(Status{State: StateStarting, Restarts: restarts})
			var err error
			h, err = s.cfg.Driver.Start(ctx, s.cfg.Spec)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				reason = "start: " + err.Error()
			}
		}
		if h != nil {
			var out outcome
			out, reason, exit, healthySince = s.runInstance(ctx, h, restarts, h == s.cfg.Handle)
			h = nil
			switch out {
			case outStopped:
				s.report(Status{State: StateStopped, Restarts: restarts, Exit: exit})
				return nil
			case outDetached:
				return ctx.Err()
			}
		}
		if !healthySince.IsZero() && clk.Now().Sub(healthySince) >= s.cfg.BackoffReset {
			restarts = 0
			backoff.Reset()
		}
		if restarts >= s.limit {
			s.report(Status{State: StateFailed, Restarts: restarts, Reason: reason, Exit: exit})
			return fmt.Errorf("instance %s: %w: %s", s.cfg.Spec.ID, ErrFailed, reason)
		}
		restarts++
		s.report(Status{State: StateRestarting, Restarts: restarts, Reason: reason, Exit: exit})
		t := clk.NewTimer(backoff.Next())
		select {
		case <-t.C():
		case <-s.stopCh:
			t.Stop()
			s.report(Status{State: StateStopped, Restarts: restarts, Exit: exit})
			return nil
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// StartupPoll is how often a check that has not passed yet is retried
// during its grace period (at most its interval).
const StartupPoll = 250 * time.Millisecond

// runInstance watches one run of the instance: its exit, its health
// checks, Stop and ctx. It returns how the run ended, the reason of an
// ended run, the exit status, and since when the instance was healthy.
func (s *Supervisor) runInstance(ctx context.Context, h driver.Handle, restarts int, adopted bool) (outcome, string, *driver.ExitStatus, time.Time) {
	clk := s.cfg.Clock
	now := clk.Now()
	base := Status{State: StateRunning, Restarts: restarts, Pid: h.Pid()}
	// Grace periods count from the instance's start: an adopted instance
	// that has been up for long is checked at once.
	var age time.Duration
	if adopted {
		age = max(now.Sub(h.StartedAt()), 0)
	}
	hl := newHealth(s.checks, s.cfg.FailureThreshold, now, age)
	if hl.healthy() {
		base.Health = HealthHealthy
	}
	s.report(base)

	results := make(chan []checkResult, 1)
	inFlight := false
	var timer clock.Timer
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
			timer = nil
		}
	}
	defer stopTimer()
	for {
		var timerC <-chan time.Time
		if next, ok := hl.next(); ok && !inFlight {
			timer = clk.NewTimer(next.Sub(clk.Now()))
			timerC = timer.C()
		}
		select {
		case <-h.Done():
			es, _ := h.Wait(context.Background())
			return outEnded, es.String(), &es, hl.since
		case <-s.stopCh:
			stopTimer()
			return outStopped, "", s.stopHandle(ctx, h), hl.since
		case <-ctx.Done():
			return outDetached, "", nil, hl.since
		case <-timerC:
			due := hl.due(clk.Now())
			inFlight = true
			go func() { results <- s.runChecks(ctx, due) }()
		case res := <-results:
			inFlight = false
			failed, nowHealthy := hl.record(clk.Now(), res, s.log)
			if failed != "" {
				st := base
				st.Health, st.Reason = HealthUnhealthy, failed
				s.report(st)
				return outEnded, failed, s.stopHandle(ctx, h), hl.since
			}
			if nowHealthy {
				st := base
				st.Health = HealthHealthy
				s.report(st)
			}
		}
		stopTimer()
	}
}

// stopHandle stops the instance gracefully and returns its exit status.
func (s *Supervisor) stopHandle(ctx context.Context, h driver.Handle) *driver.ExitStatus {
	// Stop even when ctx has ended: a stop was asked for.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StopTimeout+10*time.Second)
	defer cancel()
	if err := h.Stop(sctx, s.cfg.StopTimeout); err != nil {
		s.log.Warn("stop instance", "err", err)
		return nil
	}
	es, err := h.Wait(sctx)
	if err != nil {
		return nil
	}
	return &es
}

// runChecks runs the checks of indexes due, one after the other.
func (s *Supervisor) runChecks(ctx context.Context, due []int) []checkResult {
	res := make([]checkResult, 0, len(due))
	for _, i := range due {
		res = append(res, checkResult{i, s.probe(ctx, s.checks[i])})
	}
	return res
}

// probe runs one check once.
func (s *Supervisor) probe(ctx context.Context, c check) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(c.hc.Port))
	if c.hc.TCP != nil {
		conn, err := s.cfg.Dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+c.hc.HTTP.Path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "meridian-health-check")
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// Stop stops the instance gracefully (SIGTERM, then SIGKILL after
// StopTimeout), reports StateStopped, and waits for Run to return or ctx to
// end. Stopping a supervisor whose Run was never called returns at once.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stopCh) })
	s.mu.Lock()
	running := s.running
	s.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop instance %s: %w", s.cfg.Spec.ID, ctx.Err())
	}
}
