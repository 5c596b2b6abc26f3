package regionapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestIdleTransport: a body that keeps sending stays open past Idle; one
// that goes silent is cut after Idle with an error, not left hanging.
func TestIdleTransport(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fl := w.(http.Flusher)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if r.URL.Path == "/silent" && i == 1 {
				select { // one line, then nothing until the client goes
				case <-r.Context().Done():
				case <-stop:
				}
				return
			}
			io.WriteString(w, "line\n")
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}))
	defer srv.Close()
	defer close(stop)
	c := &http.Client{Transport: IdleTransport{Base: http.DefaultTransport, Idle: 500 * time.Millisecond}}

	resp, err := c.Get(srv.URL + "/steady")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	deadline := time.Now().Add(1500 * time.Millisecond) // three idle periods
	for time.Now().Before(deadline) {
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatalf("a steady stream was cut: %v", err)
		}
	}
	resp.Body.Close()

	resp, err = c.Get(srv.URL + "/silent")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(resp.Body); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("a silent stream ended with %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a silent stream was not cut")
	}
}

// TestGeoRTT: about 1 ms of round trip per 100 km of great circle.
func TestGeoRTT(t *testing.T) {
	for _, c := range []struct {
		name                   string
		lat1, lon1, lat2, lon2 float64
		minMS, maxMS           float64
	}{
		{"same place", 50.11, 8.68, 50.11, 8.68, 0, 0},
		{"Paris-Frankfurt (~480 km)", 48.86, 2.35, 50.11, 8.68, 4.5, 5.2},
		{"Frankfurt-Washington (~6,500 km)", 50.11, 8.68, 38.9, -77.04, 63, 67},
		{"antipodes (~20,000 km)", 0, 0, 0, 180, 198, 202},
	} {
		got := float64(GeoRTT(c.lat1, c.lon1, c.lat2, c.lon2)) / float64(time.Millisecond)
		if got < c.minMS || got > c.maxMS {
			t.Errorf("%s: %.2f ms, want %.1f..%.1f", c.name, got, c.minMS, c.maxMS)
		}
	}
}
