package regionapi

import (
	"context"
	"io"
	"net/http"
	"time"
)

// IdleTransport cancels a response whose body sends nothing for Idle: a
// feed stream that went silent (its region sends a keepalive line every
// 10s) ends with an error instead of hanging on a dead link, and its
// reader reconnects. Use it with HTTP/2 pings on the base transport
// (http.HTTP2Config), so that the next request does not reuse the dead
// connection.
type IdleTransport struct {
	Base http.RoundTripper
	Idle time.Duration
}

// RoundTrip sends the request on Base and watches the response body.
func (t IdleTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(r.Context())
	resp, err := t.Base.RoundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &idleBody{rc: resp.Body, idle: t.Idle, cancel: cancel, timer: time.AfterFunc(t.Idle, cancel)}
	return resp, nil
}

type idleBody struct {
	rc     io.ReadCloser
	idle   time.Duration
	cancel context.CancelFunc
	timer  *time.Timer
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	b.cancel()
	return b.rc.Close()
}
