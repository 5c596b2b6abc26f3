package definition

import (
	"reflect"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"unknown field", "name: a\nscalings:\n  - {min: 1, max: 1, foo: 2}\n",
			[]string{"scalings[0].foo: unknown field"}},
		{"unknown top-level field", "name: a\nreplicas: 3\n",
			[]string{"replicas: unknown field"}},
		{"unknown nested field", "health_checks: [{port: 1, http: {path: /, method: GET}}]",
			[]string{"health_checks[0].http.method: unknown field"}},
		{"unknown field in empty struct", "health_checks: [{port: 1, tcp: {timeout: 1}}]",
			[]string{"health_checks[0].tcp.timeout: unknown field"}},
		{"quoted odd key", `{"foo bar": 1}`,
			[]string{`"foo bar": unknown field`}},
		{"string for int", "ports: [{port: abc}]",
			[]string{`ports[0].port: want an integer, got string "abc"`}},
		{"quoted int", `ports: [{port: "8080"}]`,
			[]string{`ports[0].port: want an integer, got string "8080"`}},
		{"float for int", "scalings: [{min: 1.5, max: 2}]",
			[]string{"scalings[0].min: want an integer, got float 1.5"}},
		{"bool for int", "scalings: [{min: true}]",
			[]string{"scalings[0].min: want an integer, got boolean true"}},
		{"int out of range", "scalings: [{max: 99999999999999999999999}]",
			[]string{"scalings[0].max: want an integer, got float 99999999999999999999999"}},
		{"mapping for int", "health_checks: [{restart_limit: {a: 1}}]",
			[]string{"health_checks[0].restart_limit: want an integer, got mapping"}},
		{"mapping for list", "regions: {fra: true}",
			[]string{"regions: want a list, got mapping"}},
		{"string for list", "strategy: {canary_regions: fra}",
			[]string{`strategy.canary_regions: want a list, got string "fra"`}},
		{"list for string", "name: [a, b]",
			[]string{"name: want a string, got list"}},
		{"list for mapping", "strategy: [rolling]",
			[]string{"strategy: want a mapping, got list"}},
		{"scalar list entry", "env: [LOG_LEVEL=debug]",
			[]string{`env[0]: want a mapping, got string "LOG_LEVEL=debug"`}},
		{"root is a list", "[1, 2]",
			[]string{"want a mapping, got list"}},
		{"root is a scalar", "hello",
			[]string{`want a mapping, got string "hello"`}},
		{"duplicate field", "name: a\nimage: x\nname: b\n",
			[]string{"name: duplicate field (first set on line 1)"}},
		{"non-string key", "? [a]\n: 1\n",
			[]string{"field names must be plain strings (line 1)"}},
		{"binary tag", "name: !!binary aGVsbG8=",
			[]string{"name: unsupported YAML tag !!binary"}},
		{"application tag", "name: !shout web",
			[]string{"name: unsupported YAML tag !shout"}},
		{"merge key", "strategy:\n  <<: {type: rolling}\n",
			[]string{`strategy."<<": unknown field`}},
		{"alias", "regions: &r [fra]\nstrategy: {canary_regions: *r}\n",
			[]string{"strategy.canary_regions: YAML aliases are not supported"}},
		{"long string is shortened", "ports: [{port: " + strings.Repeat("x", 100) + "}]",
			[]string{`ports[0].port: want an integer, got string "` + strings.Repeat("x", 40) + `…"`}},
		{"all errors at once in document order", `
strategy: {type: rolling, oops: 1}
name: [x]
ports:
  - {port: abc}
  - {port: 1, protocl: tcp}
scalings: {min: 1}
`, []string{
			"strategy.oops: unknown field",
			"name: want a string, got list",
			`ports[0].port: want an integer, got string "abc"`,
			"ports[1].protocl: unknown field",
			"scalings: want a list, got mapping",
		}},
		{"empty", "", []string{"the definition is empty"}},
		{"only comments", "# nothing\n", []string{"the definition is empty"}},
		{"document marker only", "---\n", []string{"the definition is empty"}},
		{"null", "null", []string{"the definition is empty"}},
		{"two documents", "name: a\n---\nname: b\n", []string{"the definition must be a single YAML document"}},
		{"too large", "name: a\nimage: " + strings.Repeat("x", MaxDocumentSize),
			[]string{"the definition is 1048591 bytes, more than the limit of 1048576"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			def, err := Parse([]byte(tt.doc))
			wantLines(t, err, tt.want...)
			if err != nil && !reflect.DeepEqual(def, api.Definition{}) {
				t.Errorf("Parse returned a partial definition with its error: %+v", def)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	tests := []struct{ doc, want string }{
		{"name: web\n  regions: [fra\n", "invalid YAML: yaml: line 2: mapping values are not allowed in this context"},
		{"name: \"unterminated\n", "invalid YAML: yaml: line 2: found unexpected end of stream"},
		{"\tname: web", "invalid YAML: yaml: line 1: found character that cannot start any token"},
		{"{name: web, regions: [fra}", "invalid YAML: yaml: line 1: did not find expected ',' or ']'"},
		{`{"name": "web", "regions": ["fra"}`, "invalid JSON: line 1, column 34: invalid character '}' after array element"},
		{"{\n  \"name\": \"web\",\n  \"regions\": [\"fra\"],\n}", "invalid JSON: line 4, column 1: invalid character '}' looking for beginning of object key string"},
		{`{"name": "web"`, "invalid JSON: line 1, column 15: unexpected end of JSON input"},
		{`{"a":` + strings.Repeat("[", 20000), "invalid JSON: line 1, column 10005: nesting deeper than 10000 levels"},
		{`{"name": "web"} {"name": "api"}`, "invalid JSON: line 1, column 17: want one JSON value, found more after it"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc))
		wantLines(t, err, tt.want)
	}
}

func TestParseJSON(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"escaped slash and unicode", `{"name": "w", "image": "r.example\/w", "env": [{"key": "E", "value": "\ud83d\ude00"}]}`, nil},
		{"duplicate key", "{\n\"name\": \"a\",\n\"name\": \"b\"}", []string{"name: duplicate field (first set on line 2)"}},
		{"unknown field", `{"name": "a", "scalings": [{"min": 1, "foo": 2}]}`, []string{"scalings[0].foo: unknown field"}},
		{"big integer", `{"ports": [{"port": 99999999999999999999999}]}`, []string{"ports[0].port: integer 99999999999999999999999 is out of range"}},
		{"exponent", `{"ports": [{"port": 8e3}]}`, []string{"ports[0].port: want an integer, got float 8e3"}},
		{"string for int", `{"ports": [{"port": "abc"}]}`, []string{`ports[0].port: want an integer, got string "abc"`}},
		{"null", `{"strategy": null, "ports": null}`, nil},
		{"empty object", `{}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			wantLines(t, err, tt.want...)
		})
	}
	def := mustParse(t, `{"name": "w", "image": "r.example\/w", "env": [{"key": "E", "value": "\ud83d\ude00"}]}`)
	if def.Image != "r.example/w" || def.Env[0].Value != "\U0001F600" {
		t.Errorf("escapes: image %q, value %q", def.Image, def.Env[0].Value)
	}
}

// TestParseAliasBomb checks that a billion-laughs document is refused
// quickly instead of being expanded.
func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 10; i++ {
		b.WriteString("a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [")
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	b.WriteString("regions: *a9\n")
	_, err := Parse([]byte(b.String()))
	lines := errorLines(t, err)
	if !slicesContain(lines, "regions: YAML aliases are not supported") {
		t.Errorf("alias bomb: got %q", lines)
	}
}

func slicesContain(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

func TestParseTooManyErrors(t *testing.T) {
	var b strings.Builder
	for i := range 150 {
		b.WriteString("unknown")
		b.WriteString(strings.Repeat("x", i))
		b.WriteString(": 1\n")
	}
	lines := errorLines(t, func() error { _, err := Parse([]byte(b.String())); return err }())
	if len(lines) != MaxErrors+1 {
		t.Fatalf("got %d errors, want %d", len(lines), MaxErrors+1)
	}
	if lines[0] != "unknown: unknown field" || lines[MaxErrors] != "too many errors: only the first 100 are shown" {
		t.Errorf("first %q, last %q", lines[0], lines[MaxErrors])
	}
}

func TestParseYAMLAndJSONAreEqual(t *testing.T) {
	fromYAML := mustParse(t, designYAML)
	fromJSON := mustParse(t, designJSON)
	if !reflect.DeepEqual(fromYAML, fromJSON) {
		t.Errorf("YAML and JSON differ:\nyaml %+v\njson %+v", fromYAML, fromJSON)
	}
}

func TestParseDesignExample(t *testing.T) {
	def := mustParse(t, designYAML)
	want := api.Definition{
		Name:    "web",
		Type:    "web",
		Regions: []string{"fra", "was", "sin"},
		Image:   "registry.example/web:1.4",
		Command: []string{"./server"},
		Args:    []string{"--port", "8080"},
		Ports:   []api.Port{{Port: 8080, Protocol: "http"}},
		Routes:  []api.Route{{Port: 8080, Path: "/"}},
		Env: []api.EnvVar{
			{Key: "LOG_LEVEL", Value: "info"},
			{Key: "LOG_LEVEL", Value: "debug", Scopes: []string{"region:fra"}},
		},
		Scalings: []api.Scaling{
			{Min: 2, Max: 2},
			{Min: 4, Max: 4, Scopes: []string{"region:was"}},
		},
		InstanceTypes: []api.InstanceTypeRef{{Type: "small"}, {Type: "large", Scopes: []string{"region:was"}}},
		Datacenters:   []api.DatacenterRule{{Allow: []string{"fra2"}, Scopes: []string{"region:fra"}}},
		HealthChecks: []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"},
			GracePeriod: "5s", Interval: "5s", Timeout: "2s", RestartLimit: intp(3)}},
		Strategy: &api.Strategy{Type: "rolling", MaxParallelRegions: 2, CanaryRegions: []string{"fra"}, OnFailure: "rollback_all"},
	}
	if !reflect.DeepEqual(def, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", def, want)
	}
	if err := Validate(def, Options{}); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestParseScalars(t *testing.T) {
	def := mustParse(t, `
name: w
regions: [fra]
command: [./run]
env:
  - {key: A, value: 8080}
  - {key: B, value: true}
  - {key: C, value: ""}
  - {key: D, value: ~}
  - {key: E}
health_checks:
  - {port: 1, tcp: {}, restart_limit: 0}
  - {port: 1, tcp: , http: {path: /}}
strategy: ~
`)
	wantEnv := []api.EnvVar{{Key: "A", Value: "8080"}, {Key: "B", Value: "true"}, {Key: "C"}, {Key: "D"}, {Key: "E"}}
	if !reflect.DeepEqual(def.Env, wantEnv) {
		t.Errorf("env = %+v, want %+v", def.Env, wantEnv)
	}
	hc := def.HealthChecks
	if hc[0].TCP == nil || hc[0].RestartLimit == nil || *hc[0].RestartLimit != 0 {
		t.Errorf("health_checks[0] = %+v, want tcp set and restart_limit 0", hc[0])
	}
	if hc[1].TCP != nil || hc[1].HTTP == nil || hc[1].RestartLimit != nil {
		t.Errorf("health_checks[1] = %+v, want tcp nil (null), http set", hc[1])
	}
	if def.Strategy != nil {
		t.Errorf("strategy = %+v, want nil", def.Strategy)
	}
}

// TestTagsAgree guards the decoder's assumption that json and yaml tags name
// fields identically (it walks json names, then decodes with yaml).
func TestTagsAgree(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var check func(reflect.Type)
	check = func(typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] {
			return
		}
		seen[typ] = true
		for i := range typ.NumField() {
			f := typ.Field(i)
			if f.Tag.Get("json") != f.Tag.Get("yaml") {
				t.Errorf("%s.%s: json tag %q, yaml tag %q", typ, f.Name, f.Tag.Get("json"), f.Tag.Get("yaml"))
			}
			check(f.Type)
		}
	}
	check(reflect.TypeOf(api.Definition{}))
	check(reflect.TypeOf(Catalogue{}))
}

func TestErrorsError(t *testing.T) {
	errs := Errors{{Path: "a", Message: "x"}, {Message: "whole"}, {Path: "b[0].c", Message: "y"}}
	if got, want := errs.Error(), "a: x\nwhole\nb[0].c: y"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
