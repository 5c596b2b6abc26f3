package global

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/connlimit"
)

// isLoopback reports whether a bound address is a loopback one (an
// unspecified address, 0.0.0.0 or ::, is every interface: not loopback).
func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// defaultMaxConns is three quarters of the process's file-descriptor limit
// (Go raises the soft limit to the hard one at start), leaving the rest to
// the store, the regions and the logs, and at most DefaultMaxConns.
func defaultMaxConns() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 768
	}
	return int(min(rl.Cur/4*3, DefaultMaxConns))
}

// refusals logs connections closed for a connection cap: at most one line
// every 10 s, with the count since the last one, however many arrive.
type refusals struct {
	mu      sync.Mutex
	last    time.Time
	pending map[connlimit.Reason]int
}

// connRefused is the listener's OnReject: counted, and logged sparingly.
func (s *Server) connRefused(remote net.Addr, why connlimit.Reason) {
	s.metrics.connsRefused.WithLabelValues(string(why)).Inc()
	r := &s.refused
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil {
		r.pending = map[connlimit.Reason]int{}
	}
	r.pending[why]++
	if now := time.Now(); now.Sub(r.last) >= 10*time.Second {
		s.log.Warn("connections refused: over the connection caps", "last_from", remote.String(),
			"per_client", r.pending[connlimit.PerAddr], "total", r.pending[connlimit.Total],
			"max_conns_per_client", s.cfg.MaxConnsPerClient, "max_conns", s.cfg.MaxConns)
		r.last, r.pending = now, nil
	}
}

// boundBodies bounds the time a request's body takes to arrive: a read
// deadline of Config.BodyTimeout on its connection from the end of its
// headers, cleared as soon as the body has been read, so that the answer
// (a long or streaming one) is never cut by it. Bodyless requests set no
// deadline.
func (s *Server) boundBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout)); err != nil {
			h.ServeHTTP(w, r)
			return
		}
		// A shallow copy: the server keeps the original body, and with it
		// its own handling of an unread body after the answer.
		r = r.WithContext(r.Context())
		r.Body = &boundedBody{ReadCloser: r.Body, rc: rc}
		h.ServeHTTP(w, r)
	})
}

// boundedBody clears its connection's read deadline once the body has
// been read to its end.
type boundedBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done atomic.Bool
}

func (b *boundedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done.Swap(true) {
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// unread reports whether r has a body that was not read to its end.
func unread(r *http.Request) bool {
	b, ok := r.Body.(*boundedBody)
	return ok && !b.done.Load()
}

// bodyTimeout is the answer to a body that did not arrive in time.
func (s *Server) bodyTimeout() *api.Error {
	return apiErr(http.StatusRequestTimeout, api.CodeInvalid,
		"the request body did not arrive within %s", s.cfg.BodyTimeout)
}

// isTimeout reports whether err is a read deadline passing.
func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// watchConns exports the listener's open connections.
func (m *metrics) watchConns(reg prometheus.Registerer, l *connlimit.Listener) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "meridian", Subsystem: "global", Name: "connections_open",
		Help: "Open API connections.",
	}, func() float64 { return float64(l.Open()) }))
}

// IsLoopbackListen reports whether a listen address (host:port) names a
// loopback address: "localhost", or an IP such as 127.0.0.1 or ::1. An
// empty host (every interface) is not loopback.
func IsLoopbackListen(listen string) bool {
	ta, err := net.ResolveTCPAddr("tcp", listen)
	return err == nil && ta.IP != nil && ta.IP.IsLoopback()
}
