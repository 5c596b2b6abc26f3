package image

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

type failRT struct{ t *testing.T }

func (f failRT) RoundTrip(r *http.Request) (*http.Response, error) {
	return nil, errors.New("sent: " + r.URL.String())
}

// TestPlainHTTPOnlyToLoopback: plain HTTP goes only to loopback registries
// and those named insecure; it is refused before anything is sent to any
// other (ggcr itself would fall back to HTTP for private addresses).
func TestPlainHTTPOnlyToLoopback(t *testing.T) {
	g := &guardTransport{next: failRT{t}, insecure: []string{"registry.lan:5000"}}
	for _, tc := range []struct {
		url     string
		allowed bool
	}{
		{"http://127.0.0.1:5000/v2/", true},
		{"http://127.8.9.10:5000/v2/", true},
		{"http://[::1]:5000/v2/", true},
		{"http://localhost:5000/v2/", true},
		{"http://registry.lan:5000/v2/", true},
		{"http://10.1.2.3:5000/v2/", false},
		{"http://192.168.1.1/v2/", false},
		{"http://registry.lan/v2/", false},
		{"http://example.com/v2/", false},
		{"https://10.1.2.3:5000/v2/", true},
	} {
		req, _ := http.NewRequest("GET", tc.url, nil)
		_, err := g.RoundTrip(req)
		refused := err != nil && strings.Contains(err.Error(), "plain HTTP refused")
		if refused == tc.allowed {
			t.Errorf("%s: %v (allowed %v)", tc.url, err, tc.allowed)
		}
	}
}
