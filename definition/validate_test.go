package definition

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
)

// validDef is a small valid definition the validation cases modify.
func validDef() api.Definition {
	return api.Definition{
		Name:    "web",
		Regions: []string{"fra", "was", "sin"},
		Image:   "registry.example/web:1.4",
		Ports:   []api.Port{{Port: 8080}, {Port: 9000, Protocol: "tcp"}},
		Routes:  []api.Route{{Port: 8080, Path: "/"}},
	}
}

const labelRule = "want 1 to 63 lowercase letters, digits or '-', starting with a letter and not ending with '-'"

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(d *api.Definition)
		opts Options
		want []string
	}{
		{name: "valid", edit: func(d *api.Definition) {}},
		{name: "design example", edit: func(d *api.Definition) { *d = mustParse(t, designYAML) }},

		// name and type
		{name: "name required", edit: func(d *api.Definition) { d.Name = "" },
			want: []string{"name: required"}},
		{name: "name uppercase", edit: func(d *api.Definition) { d.Name = "Web" },
			want: []string{`name: "Web" is not a valid name: ` + labelRule}},
		{name: "name trailing dash", edit: func(d *api.Definition) { d.Name = "web-" },
			want: []string{`name: "web-" is not a valid name: ` + labelRule}},
		{name: "name leading digit", edit: func(d *api.Definition) { d.Name = "1web" },
			want: []string{`name: "1web" is not a valid name: ` + labelRule}},
		{name: "name 63 chars", edit: func(d *api.Definition) { d.Name = strings.Repeat("a", 63) }},
		{name: "name 64 chars", edit: func(d *api.Definition) { d.Name = strings.Repeat("a", 64) },
			want: []string{`name: "` + strings.Repeat("a", 40) + `…" is not a valid name: ` + labelRule}},
		{name: "type worker", edit: func(d *api.Definition) { d.Type = "worker"; d.Routes = nil }},
		{name: "type unknown", edit: func(d *api.Definition) { d.Type = "cron" },
			want: []string{`type: must be web or worker, got "cron"`}},

		// regions
		{name: "regions empty", edit: func(d *api.Definition) { d.Regions = nil },
			want: []string{"regions: at least one region is required"}},
		{name: "region invalid", edit: func(d *api.Definition) { d.Regions[1] = "WAS" },
			want: []string{`regions[1]: "WAS" is not a valid region id: ` + labelRule}},
		{name: "region empty", edit: func(d *api.Definition) { d.Regions[1] = "" },
			want: []string{"regions[1]: required"}},
		{name: "region duplicate", edit: func(d *api.Definition) { d.Regions = []string{"fra", "was", "fra"} },
			want: []string{`regions[2]: duplicate region "fra" (also regions[0])`}},
		{name: "too many regions", edit: func(d *api.Definition) {}, opts: Options{Limits: Limits{MaxRegions: 2}},
			want: []string{"regions: at most 2 regions are allowed, got 3"}},

		// program
		{name: "no image nor command", edit: func(d *api.Definition) { d.Image = "" },
			want: []string{"image: one of image or command is required"}},
		{name: "command only", edit: func(d *api.Definition) { d.Image = ""; d.Command = []string{"./server"}; d.Args = []string{""} }},
		{name: "empty program", edit: func(d *api.Definition) { d.Command = []string{"", "x"} },
			want: []string{"command[0]: the program must not be empty"}},
		{name: "image with space", edit: func(d *api.Definition) { d.Image = "web 1" },
			want: []string{`image: must not contain spaces or control characters, got "web 1"`}},
		{name: "image too long", edit: func(d *api.Definition) { d.Image = strings.Repeat("x", MaxStringLen+1) },
			want: []string{"image: at most 4096 bytes are allowed, got 4097"}},
		{name: "image by digest", edit: func(d *api.Definition) {
			d.Image = "registry.example:5000/team/web@sha256:" + strings.Repeat("ab", 32)
		}},
		{name: "image short name", edit: func(d *api.Definition) { d.Image = "nginx" }},
		{name: "image uppercase repository", edit: func(d *api.Definition) { d.Image = "registry.example/Web:1" },
			want: []string{`image: "registry.example/Web:1" is not an image reference: want [registry/]repository[:tag] or [registry/]repository@sha256:<64 hex digits>, the repository in lowercase`}},
		{name: "image bad digest", edit: func(d *api.Definition) { d.Image = "registry.example/web@sha256:abc" },
			want: []string{`image: "registry.example/web@sha256:abc" is not an image reference: want [registry/]repository[:tag] or [registry/]repository@sha256:<64 hex digits>, the repository in lowercase`}},
		{name: "image with scheme", edit: func(d *api.Definition) { d.Image = "http://registry.example/web:1" },
			want: []string{`image: "http://registry.example/web:1" must not name a scheme: write [registry/]repository[:tag] (plain HTTP is for loopback registries and those the operator names insecure)`}},
		{name: "registry secret", edit: func(d *api.Definition) { d.RegistrySecret = "pull-creds" },
			opts: Options{SecretExists: func(n string) bool { return n == "pull-creds" }}},
		{name: "registry secret missing", edit: func(d *api.Definition) { d.RegistrySecret = "absent" },
			opts: Options{SecretExists: func(n string) bool { return n == "pull-creds" }},
			want: []string{`registry_secret: secret "absent" does not exist`}},
		{name: "registry secret invalid name", edit: func(d *api.Definition) { d.RegistrySecret = "-x" },
			want: []string{`registry_secret: "-x" is not a valid secret name: want 1 to 128 letters, digits, '_', '.' or '-', starting with a letter, digit or '_'`}},
		{name: "registry secret without image", edit: func(d *api.Definition) {
			d.Image, d.Command, d.RegistrySecret = "", []string{"./server"}, "pull-creds"
		}, want: []string{"registry_secret: only allowed with image: it names the credentials of the image's registry"}},
		{name: "too many args", edit: func(d *api.Definition) { d.Args = make([]string, MaxListLen+1) },
			want: []string{"args: at most 1000 entries are allowed, got 1001"}},

		// ports
		{name: "port zero", edit: func(d *api.Definition) { d.Ports = append(d.Ports, api.Port{}) },
			want: []string{"ports[2].port: must be between 1 and 65535, got 0"}},
		{name: "port too big", edit: func(d *api.Definition) { d.Ports = append(d.Ports, api.Port{Port: 65536}) },
			want: []string{"ports[2].port: must be between 1 and 65535, got 65536"}},
		{name: "port duplicate", edit: func(d *api.Definition) { d.Ports = append(d.Ports, api.Port{Port: 8080, Protocol: "http2"}) },
			want: []string{"ports[2].port: duplicate port 8080 (also ports[0])"}},
		{name: "port protocol", edit: func(d *api.Definition) { d.Ports[1].Protocol = "udp" },
			want: []string{`ports[1].protocol: must be http, http2 or tcp, got "udp"`}},

		// routes
		{name: "routes on worker", edit: func(d *api.Definition) { d.Type = "worker" },
			want: []string{"routes: routes are only allowed for services of type web"}},
		{name: "route port undeclared", edit: func(d *api.Definition) { d.Routes[0].Port = 7000 },
			want: []string{"routes[0].port: port 7000 is not declared in ports"}},
		{name: "route to tcp port", edit: func(d *api.Definition) { d.Routes[0].Port = 9000 },
			want: []string{"routes[0].port: port 9000 has protocol tcp: routes need an http or http2 port"}},
		{name: "route path relative", edit: func(d *api.Definition) { d.Routes[0].Path = "api" },
			want: []string{`routes[0].path: must start with "/", got "api"`}},
		{name: "route path empty", edit: func(d *api.Definition) { d.Routes[0].Path = "" },
			want: []string{`routes[0].path: must start with "/", got ""`}},
		{name: "route path with space", edit: func(d *api.Definition) { d.Routes[0].Path = "/a b" },
			want: []string{`routes[0].path: must not contain spaces or control characters, got "/a b"`}},
		{name: "route path duplicate", edit: func(d *api.Definition) {
			d.Routes = []api.Route{{Port: 8080, Path: "/api"}, {Port: 8080, Path: "/"}, {Port: 8080, Path: "/api"}}
		}, want: []string{`routes[2].path: duplicate path "/api" (also routes[0])`}},

		// env
		{name: "env valid", edit: func(d *api.Definition) {
			d.Env = []api.EnvVar{{Key: "A", Value: "1"}, {Key: "_b2"}, {Key: "C", Secret: "db.password-1"}, {Key: "A", Value: "2", Scopes: []string{"region:fra"}}}
		}, opts: Options{SecretExists: func(string) bool { return true }}},
		{name: "env key required", edit: func(d *api.Definition) { d.Env = []api.EnvVar{{Value: "x"}} },
			want: []string{"env[0].key: required"}},
		{name: "env key invalid", edit: func(d *api.Definition) { d.Env = []api.EnvVar{{Key: "A"}, {Key: "1X"}, {Key: "A-B"}} },
			want: []string{
				`env[1].key: "1X" is not a valid variable name: want letters, digits and '_', not starting with a digit`,
				`env[2].key: "A-B" is not a valid variable name: want letters, digits and '_', not starting with a digit`,
			}},
		{name: "env key PORT", edit: func(d *api.Definition) { d.Env = []api.EnvVar{{Key: "PORT", Value: "1"}} },
			want: []string{"env[0].key: PORT is reserved: the platform sets it"}},
		{name: "env key MERIDIAN_", edit: func(d *api.Definition) { d.Env = []api.EnvVar{{Key: "MERIDIAN_REGION", Value: "x"}} },
			want: []string{"env[0].key: MERIDIAN_REGION is reserved: the MERIDIAN_ prefix belongs to the platform"}},
		{name: "env value and secret", edit: func(d *api.Definition) { d.Env = []api.EnvVar{{Key: "A", Value: "1", Secret: "s"}} },
			want: []string{"env[0]: set value or secret, not both"}},
		{name: "env secret name", edit: func(d *api.Definition) { d.Env = []api.EnvVar{{Key: "A", Secret: "my secret"}} },
			want: []string{`env[0].secret: "my secret" is not a valid secret name: want 1 to 128 letters, digits, '_', '.' or '-', starting with a letter, digit or '_'`}},
		{name: "env secret missing", edit: func(d *api.Definition) {
			d.Env = []api.EnvVar{{Key: "A", Secret: "present"}, {Key: "B", Secret: "absent"}}
		}, opts: Options{SecretExists: func(name string) bool { return name == "present" }},
			want: []string{`env[1].secret: secret "absent" does not exist`}},
		{name: "env secret unchecked", edit: func(d *api.Definition) { d.Env = []api.EnvVar{{Key: "B", Secret: "absent"}} }},
		{name: "env value too long", edit: func(d *api.Definition) {
			d.Env = []api.EnvVar{{Key: "A", Value: strings.Repeat("v", MaxEnvValueLen+1)}}
		},
			want: []string{"env[0].value: at most 65536 bytes are allowed, got 65537"}},
		{name: "env two unscoped", edit: func(d *api.Definition) {
			d.Env = []api.EnvVar{{Key: "LOG_LEVEL", Value: "info"}, {Key: "OTHER"}, {Key: "LOG_LEVEL", Value: "debug"}}
		}, want: []string{"env[2]: ambiguous with env[0]: both set LOG_LEVEL with no scope"}},
		{name: "env two in one region", edit: func(d *api.Definition) {
			d.Env = []api.EnvVar{
				{Key: "LOG_LEVEL", Value: "info"},
				{Key: "LOG_LEVEL", Value: "debug", Scopes: []string{"region:was", "region:fra"}},
				{Key: "LOG_LEVEL", Value: "trace", Scopes: []string{"region:fra"}},
			}
		}, want: []string{`env[2].scopes[0]: ambiguous with env[1].scopes[1]: both set LOG_LEVEL in region "fra"`}},
		{name: "env same region other keys", edit: func(d *api.Definition) {
			d.Env = []api.EnvVar{{Key: "A", Scopes: []string{"region:fra"}}, {Key: "B", Scopes: []string{"region:fra"}}}
		}},

		// scalings
		{name: "scaling negative", edit: func(d *api.Definition) { d.Scalings = []api.Scaling{{Min: -1, Max: -2}} },
			want: []string{"scalings[0].min: must be at least 0, got -1", "scalings[0].max: must be at least 0, got -2"}},
		{name: "scaling zero", edit: func(d *api.Definition) { d.Scalings = []api.Scaling{{Min: 0, Max: 0}} }},
		{name: "scaling over limit", edit: func(d *api.Definition) { d.Scalings = []api.Scaling{{Min: 1, Max: 101}} },
			want: []string{"scalings[0].max: must be at most 100 (the per-region limit), got 101"}},
		{name: "scaling custom limit", edit: func(d *api.Definition) { d.Scalings = []api.Scaling{{Min: 1, Max: 11}} },
			opts: Options{Limits: Limits{MaxScale: 10}},
			want: []string{"scalings[0].max: must be at most 10 (the per-region limit), got 11"}},
		{name: "scaling min over max", edit: func(d *api.Definition) { d.Scalings = []api.Scaling{{Min: 3, Max: 2}} },
			want: []string{"scalings[0]: min 3 is greater than max 2"}},
		{name: "scaling two unscoped", edit: func(d *api.Definition) { d.Scalings = []api.Scaling{{Min: 1, Max: 1}, {Min: 2, Max: 2}} },
			want: []string{"scalings[1]: ambiguous with scalings[0]: both apply with no scope"}},
		{name: "scope region not in regions", edit: func(d *api.Definition) {
			d.Scalings = []api.Scaling{{Min: 1, Max: 1}, {Min: 2, Max: 2, Scopes: []string{"region:par"}}}
		}, want: []string{`scalings[1].scopes[0]: region "par" is not in regions`}},
		{name: "scope unknown kind", edit: func(d *api.Definition) {
			d.Scalings = []api.Scaling{{Min: 1, Max: 1, Scopes: []string{"zone:fra1", "fra"}}}
		}, want: []string{
			`scalings[0].scopes[0]: unknown scope "zone:fra1": want "region:<id>"`,
			`scalings[0].scopes[1]: unknown scope "fra": want "region:<id>"`,
		}},
		{name: "scope duplicate in entry", edit: func(d *api.Definition) {
			d.Scalings = []api.Scaling{{Min: 1, Max: 1, Scopes: []string{"region:fra", "region:was", "region:fra"}}}
		}, want: []string{`scalings[0].scopes[2]: duplicate scope "region:fra" (also scopes[0])`}},
		{name: "scaling two in one region", edit: func(d *api.Definition) {
			d.Scalings = []api.Scaling{{Min: 2, Max: 2, Scopes: []string{"region:fra"}}, {Min: 4, Max: 4, Scopes: []string{"region:was", "region:fra"}}}
		}, want: []string{`scalings[1].scopes[1]: ambiguous with scalings[0].scopes[0]: both apply in region "fra"`}},

		// instance types
		{name: "instance type unknown", edit: func(d *api.Definition) { d.InstanceTypes = []api.InstanceTypeRef{{Type: "huge"}} },
			want: []string{`instance_types[0].type: unknown instance type "huge" (known: nano, micro, small, medium, large, xlarge)`}},
		{name: "instance type custom catalogue", edit: func(d *api.Definition) {
			d.InstanceTypes = []api.InstanceTypeRef{{Type: "gpu"}, {Type: "small", Scopes: []string{"region:fra"}}}
		},
			opts: Options{Catalogue: Catalogue{Default: "gpu", Types: []api.InstanceType{{Name: "gpu", MilliCPU: 1, MemoryMB: 1}}}},
			want: []string{`instance_types[1].type: unknown instance type "small" (known: gpu)`}},
		{name: "instance type required", edit: func(d *api.Definition) { d.InstanceTypes = []api.InstanceTypeRef{{}} },
			want: []string{"instance_types[0].type: required"}},
		{name: "instance type ambiguous", edit: func(d *api.Definition) {
			d.InstanceTypes = []api.InstanceTypeRef{{Type: "small"}, {Type: "large", Scopes: []string{"region:was"}}, {Type: "nano"}}
		}, want: []string{"instance_types[2]: ambiguous with instance_types[0]: both apply with no scope"}},

		// datacenters
		{name: "datacenters empty allow", edit: func(d *api.Definition) { d.Datacenters = []api.DatacenterRule{{Scopes: []string{"region:fra"}}} },
			want: []string{"datacenters[0].allow: at least one data center is required"}},
		{name: "datacenters invalid and duplicate", edit: func(d *api.Definition) {
			d.Datacenters = []api.DatacenterRule{{Allow: []string{"fra1", "Fra2", "fra1"}}}
		}, want: []string{
			`datacenters[0].allow[1]: "Fra2" is not a valid data center id: ` + labelRule,
			`datacenters[0].allow[2]: duplicate data center "fra1" (also datacenters[0].allow[0])`,
		}},
		{name: "datacenters ambiguous", edit: func(d *api.Definition) {
			d.Datacenters = []api.DatacenterRule{{Allow: []string{"fra1"}, Scopes: []string{"region:fra"}}, {Allow: []string{"fra2"}, Scopes: []string{"region:fra"}}}
		}, want: []string{`datacenters[1].scopes[0]: ambiguous with datacenters[0].scopes[0]: both apply in region "fra"`}},

		// health checks
		{name: "health check full", edit: func(d *api.Definition) {
			d.HealthChecks = []api.HealthCheck{
				{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"}, GracePeriod: "0s", Interval: "1m", Timeout: "30s", RestartLimit: intp(0)},
				{Port: 9000, TCP: &api.TCPCheck{}},
			}
		}},
		{name: "health check port undeclared", edit: func(d *api.Definition) { d.HealthChecks = []api.HealthCheck{{Port: 1, TCP: &api.TCPCheck{}}} },
			want: []string{"health_checks[0].port: port 1 is not declared in ports"}},
		{name: "health check neither", edit: func(d *api.Definition) { d.HealthChecks = []api.HealthCheck{{Port: 8080}} },
			want: []string{"health_checks[0]: set exactly one of tcp (tcp: {}) or http (http: {path: /...})"}},
		{name: "health check both", edit: func(d *api.Definition) {
			d.HealthChecks = []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, HTTP: &api.HTTPCheck{Path: "/"}}}
		}, want: []string{"health_checks[0]: set exactly one of tcp (tcp: {}) or http (http: {path: /...})"}},
		{name: "health check http path", edit: func(d *api.Definition) {
			d.HealthChecks = []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "healthz"}}}
		},
			want: []string{`health_checks[0].http.path: must start with "/", got "healthz"`}},
		{name: "health check durations", edit: func(d *api.Definition) {
			d.HealthChecks = []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, GracePeriod: "-1s", Interval: "5", Timeout: "0s"}}
		}, want: []string{
			`health_checks[0].grace_period: must not be negative, got "-1s"`,
			`health_checks[0].interval: invalid duration "5": want a duration such as "5s" or "1m30s"`,
			`health_checks[0].timeout: must be positive, got "0s"`,
		}},
		{name: "health check timeout not below interval", edit: func(d *api.Definition) {
			d.HealthChecks = []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, Interval: "3s", Timeout: "3s"}}
		}, want: []string{"health_checks[0].timeout: timeout 3s must be less than interval 3s"}},
		{name: "health check default timeout not below interval", edit: func(d *api.Definition) {
			d.HealthChecks = []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, Interval: "1s"}}
		}, want: []string{"health_checks[0].timeout: timeout 2s must be less than interval 1s"}},
		{name: "health check restart limit", edit: func(d *api.Definition) {
			d.HealthChecks = []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}, RestartLimit: intp(-1)}}
		}, want: []string{"health_checks[0].restart_limit: must be at least 0, got -1"}},

		// strategy
		{name: "strategy full", edit: func(d *api.Definition) {
			d.Strategy = &api.Strategy{Type: "all_at_once", MaxParallelRegions: 5, CanaryRegions: []string{"sin", "fra"}, OnFailure: "fail_local", HealthDeadline: "90s"}
		}},
		{name: "strategy invalid", edit: func(d *api.Definition) {
			d.Strategy = &api.Strategy{Type: "blue_green", MaxParallelRegions: -1, CanaryRegions: []string{"fra", "par", "fra"}, OnFailure: "retry", HealthDeadline: "soon"}
		}, want: []string{
			`strategy.type: must be rolling or all_at_once, got "blue_green"`,
			"strategy.max_parallel_regions: must be at least 0 (0 means all), got -1",
			`strategy.canary_regions[1]: region "par" is not in regions`,
			`strategy.canary_regions[2]: duplicate region "fra" (also strategy.canary_regions[0])`,
			`strategy.on_failure: must be fail_local or rollback_all, got "retry"`,
			`strategy.health_deadline: invalid duration "soon": want a duration such as "5s" or "1m30s"`,
		}},
		{name: "strategy zero deadline", edit: func(d *api.Definition) { d.Strategy = &api.Strategy{HealthDeadline: "0s"} },
			want: []string{`strategy.health_deadline: must be positive, got "0s"`}},

		// several at once, in field order
		{name: "all errors at once", edit: func(d *api.Definition) {
			d.Name = "Web"
			d.Ports[0].Port = 0
			d.Scalings = []api.Scaling{{Min: 1, Max: 1}, {Min: 2, Max: 2, Scopes: []string{"region:par"}}}
			d.Strategy = &api.Strategy{CanaryRegions: []string{"par"}}
		}, want: []string{
			`name: "Web" is not a valid name: ` + labelRule,
			"ports[0].port: must be between 1 and 65535, got 0",
			"routes[0].port: port 8080 is not declared in ports",
			`scalings[1].scopes[0]: region "par" is not in regions`,
			`strategy.canary_regions[0]: region "par" is not in regions`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := validDef()
			tt.edit(&d)
			wantLines(t, Validate(d, tt.opts), tt.want...)
		})
	}
}

func TestValidateBounds(t *testing.T) {
	d := validDef()
	d.Env = make([]api.EnvVar, MaxListLen+1)
	wantLines(t, Validate(d, Options{}), "env: at most 1000 entries are allowed, got 1001")

	d = validDef()
	for i := range 150 {
		d.Env = append(d.Env, api.EnvVar{Key: fmt.Sprintf("%d", i)})
	}
	lines := errorLines(t, Validate(d, Options{}))
	if len(lines) != MaxErrors+1 || lines[MaxErrors] != "too many errors: only the first 100 are shown" {
		t.Errorf("got %d errors, last %q", len(lines), lines[len(lines)-1])
	}
}

// TestValidateExample checks the message the brief gives as an example.
func TestValidateExample(t *testing.T) {
	def := mustParse(t, `
name: web
regions: [fra, was]
image: registry.example/web:1.4
scalings:
  - {min: 1, max: 2}
  - {min: 3, max: 3, scopes: ["region:par"]}
`)
	err := Validate(def, Options{})
	if err == nil || err.Error() != `scalings[1].scopes[0]: region "par" is not in regions` {
		t.Errorf("Validate = %v", err)
	}
}

func TestValidLabelAndSecretName(t *testing.T) {
	for s, want := range map[string]bool{"a": true, "fra-1": true, "a1": true, "": false, "-a": false, "a-": false, "A": false, "a_b": false, "1a": false} {
		if ValidLabel(s) != want {
			t.Errorf("ValidLabel(%q) = %v", s, !want)
		}
	}
	for s, want := range map[string]bool{"DB_PASSWORD": true, "db-pass.v2": true, "_x": true, "9": true, "": false, ".x": false, "-x": false, "a b": false, strings.Repeat("s", 129): false} {
		if ValidSecretName(s) != want {
			t.Errorf("ValidSecretName(%q) = %v", s, !want)
		}
	}
}

// TestAppHostLabel: an app's public host label <app>-<org> fits DNS's 63
// characters, or the app name is refused with how long it may be.
func TestAppHostLabel(t *testing.T) {
	org := "acme"
	if l, err := AppHostLabel(strings.Repeat("a", 58), org); err != nil || l != strings.Repeat("a", 58)+"-acme" || len(l) != 63 {
		t.Fatalf("58-character app in acme: %q, %v; want a 63-character label", l, err)
	}
	_, err := AppHostLabel(strings.Repeat("a", 59), org)
	if err == nil || !strings.Contains(err.Error(), "at most 58") || !strings.Contains(err.Error(), "64 characters") {
		t.Fatalf("59-character app in acme: %v; want it refused, naming 58 as the most", err)
	}
	if _, err := AppHostLabel(strings.Repeat("a", 63), org); err == nil {
		t.Fatal("a 63-character app name was accepted: its host label would be 68 characters")
	}
	if _, err := AppHostLabel("Bad_Name", org); err == nil || !strings.Contains(err.Error(), "not a valid name") {
		t.Fatalf("invalid app name: %v", err)
	}
	if err := CheckOrgName(strings.Repeat("o", MaxOrgNameLen)); err != nil {
		t.Fatalf("a %d-character organization name: %v", MaxOrgNameLen, err)
	}
	if err := CheckOrgName(strings.Repeat("o", MaxOrgNameLen+1)); err == nil || !strings.Contains(err.Error(), "at most 32") {
		t.Fatalf("a %d-character organization name: %v; want it refused", MaxOrgNameLen+1, err)
	}
	// Every organization leaves its apps room for a name of 30 characters.
	if _, err := AppHostLabel(strings.Repeat("a", 62-MaxOrgNameLen), strings.Repeat("o", MaxOrgNameLen)); err != nil {
		t.Fatalf("longest organization, %d-character app: %v", 62-MaxOrgNameLen, err)
	}
}
