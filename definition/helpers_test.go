package definition

import (
	"errors"
	"slices"
	"testing"

	"github.com/meridian-run/meridian/api"
)

// designYAML is the example of DESIGN.md, "The deployment definition".
const designYAML = `
name: web
type: web                      # web | worker
regions: [fra, was, sin]
image: registry.example/web:1.4   # OCI image, or a command for the process runtime
command: ["./server"]
args: ["--port", "8080"]
ports:   [{port: 8080, protocol: http}]
routes:  [{port: 8080, path: /}]           # public routes through the edge
env:
  - {key: LOG_LEVEL, value: info}
  - {key: LOG_LEVEL, value: debug, scopes: ["region:fra"]}
scalings:
  - {min: 2, max: 2}
  - {min: 4, max: 4, scopes: ["region:was"]}
instance_types: [{type: small}, {type: large, scopes: ["region:was"]}]
datacenters:   [{allow: [fra2], scopes: ["region:fra"]}]   # placement affinity
health_checks: [{port: 8080, http: {path: /healthz}, grace_period: 5s, interval: 5s, timeout: 2s, restart_limit: 3}]
strategy: {type: rolling, max_parallel_regions: 2, canary_regions: [fra], on_failure: rollback_all}
`

// designJSON is designYAML written in JSON.
const designJSON = `{
  "name": "web",
  "type": "web",
  "regions": ["fra", "was", "sin"],
  "image": "registry.example/web:1.4",
  "command": ["./server"],
  "args": ["--port", "8080"],
  "ports": [{"port": 8080, "protocol": "http"}],
  "routes": [{"port": 8080, "path": "/"}],
  "env": [
    {"key": "LOG_LEVEL", "value": "info"},
    {"key": "LOG_LEVEL", "value": "debug", "scopes": ["region:fra"]}
  ],
  "scalings": [
    {"min": 2, "max": 2},
    {"min": 4, "max": 4, "scopes": ["region:was"]}
  ],
  "instance_types": [{"type": "small"}, {"type": "large", "scopes": ["region:was"]}],
  "datacenters": [{"allow": ["fra2"], "scopes": ["region:fra"]}],
  "health_checks": [{"port": 8080, "http": {"path": "/healthz"}, "grace_period": "5s",
                     "interval": "5s", "timeout": "2s", "restart_limit": 3}],
  "strategy": {"type": "rolling", "max_parallel_regions": 2, "canary_regions": ["fra"],
               "on_failure": "rollback_all"}
}`

// errorLines returns the "path: message" lines of err, which must be Errors
// (or nil).
func errorLines(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v (%T) is not Errors", err, err)
	}
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = e.String()
	}
	return lines
}

// wantLines fails unless err's lines are exactly want.
func wantLines(t *testing.T, err error, want ...string) {
	t.Helper()
	got := errorLines(t, err)
	if !slices.Equal(got, want) {
		t.Errorf("errors:\n got %q\nwant %q", got, want)
	}
}

// mustParse parses a definition that must be valid YAML.
func mustParse(t testing.TB, doc string) api.Definition {
	t.Helper()
	def, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return def
}

func intp(i int) *int { return &i }
