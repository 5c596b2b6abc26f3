package definition

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
)

// bench10Regions is a 10-region definition with scoped env, scaling,
// instance type and data center overrides.
func bench10Regions(b *testing.B) api.Definition {
	var y strings.Builder
	y.WriteString(`
name: web
regions: [fra, was, sin, par, ams, syd, nyc, sfo, tok, gru]
image: registry.example/web:1.4
ports: [{port: 8080}, {port: 9090, protocol: tcp}]
routes: [{port: 8080, path: /}, {port: 8080, path: /api}]
health_checks: [{port: 8080, http: {path: /healthz}, interval: 5s, timeout: 2s}]
strategy: {max_parallel_regions: 3, canary_regions: [fra, was]}
scalings: [{min: 2, max: 4}, {min: 4, max: 8, scopes: ["region:was", "region:nyc"]}, {min: 1, max: 2, scopes: ["region:gru"]}]
instance_types: [{type: small}, {type: large, scopes: ["region:was", "region:fra"]}, {type: micro, scopes: ["region:syd"]}]
datacenters: [{allow: [dc1, dc2]}, {allow: [fra2], scopes: ["region:fra"]}, {allow: [tok1, tok3], scopes: ["region:tok"]}]
env:
`)
	for i := range 8 {
		fmt.Fprintf(&y, "  - {key: VAR_%d, value: v%d}\n", i, i)
	}
	y.WriteString(`  - {key: LOG_LEVEL, value: info}
  - {key: LOG_LEVEL, value: debug, scopes: ["region:fra", "region:par"]}
  - {key: DB_PASSWORD, secret: db-password}
  - {key: DB_PASSWORD, secret: db-password-asia, scopes: ["region:sin", "region:tok", "region:syd"]}
`)
	def, err := Parse([]byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	return def
}

func BenchmarkDerive10Regions(b *testing.B) {
	def := bench10Regions(b)
	opts := Options{SecretExists: func(string) bool { return true }}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Derive(def, opts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidate10Regions(b *testing.B) {
	def := bench10Regions(b)
	opts := Options{SecretExists: func(string) bool { return true }}
	b.ReportAllocs()
	for b.Loop() {
		if err := Validate(def, opts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	data := []byte(designYAML)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseJSON(b *testing.B) {
	data := []byte(designJSON)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
