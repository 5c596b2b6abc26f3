package definition

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
)

func TestDeriveDesignExample(t *testing.T) {
	def := mustParse(t, designYAML)
	got, err := Derive(def, Options{})
	if err != nil {
		t.Fatal(err)
	}
	common := func(region string) api.RegionalDefinition {
		return api.RegionalDefinition{
			Region:       region,
			Name:         "web",
			Type:         "web",
			Image:        "registry.example/web:1.4",
			Command:      []string{"./server"},
			Args:         []string{"--port", "8080"},
			Ports:        []api.Port{{Port: 8080, Protocol: "http"}},
			Routes:       []api.Route{{Port: 8080, Path: "/"}},
			Env:          []api.ResolvedEnv{{Key: "LOG_LEVEL", Value: "info"}},
			Scaling:      api.ScalingRange{Min: 2, Max: 2},
			InstanceType: api.InstanceType{Name: "small", MilliCPU: 1000, MemoryMB: 1024},
			Datacenters:  []string{},
			HealthChecks: []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"},
				GracePeriod: "5s", Interval: "5s", Timeout: "2s", RestartLimit: intp(3)}},
			Strategy: api.Strategy{Type: "rolling", MaxParallelRegions: 2, CanaryRegions: []string{"fra"},
				OnFailure: "rollback_all", HealthDeadline: "5m0s"},
		}
	}
	fra := common("fra")
	fra.Env = []api.ResolvedEnv{{Key: "LOG_LEVEL", Value: "debug"}}
	fra.Datacenters = []string{"fra2"}
	was := common("was")
	was.Scaling = api.ScalingRange{Min: 4, Max: 4}
	was.InstanceType = api.InstanceType{Name: "large", MilliCPU: 4000, MemoryMB: 4096}
	sin := common("sin")
	want := []api.RegionalDefinition{fra, was, sin}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("region %s:\n got %+v\nwant %+v", want[i].Region, got[i], want[i])
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d regional definitions, want %d", len(got), len(want))
	}
}

func TestDeriveDefaults(t *testing.T) {
	def := mustParse(t, `
name: api
regions: [fra]
command: [./api]
ports: [{port: 8080}, {port: 9090, protocol: tcp}]
`)
	got, err := DeriveRegion(def, "fra", Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := api.RegionalDefinition{
		Region:       "fra",
		Name:         "api",
		Type:         "web",
		Command:      []string{"./api"},
		Ports:        []api.Port{{Port: 8080, Protocol: "http"}, {Port: 9090, Protocol: "tcp"}},
		Routes:       []api.Route{},
		Env:          []api.ResolvedEnv{},
		Scaling:      api.ScalingRange{Min: 1, Max: 1},
		InstanceType: api.InstanceType{Name: "small", MilliCPU: 1000, MemoryMB: 1024},
		Datacenters:  []string{},
		HealthChecks: []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{},
			GracePeriod: "10s", Interval: "5s", Timeout: "2s", RestartLimit: intp(3)}},
		Strategy: api.Strategy{Type: "rolling", CanaryRegions: []string{}, OnFailure: "fail_local", HealthDeadline: "5m0s"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	js, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"routes":[]`, `"env":[]`, `"datacenters":[]`} {
		if !strings.Contains(string(js), s) {
			t.Errorf("JSON %s lacks %s", js, s)
		}
	}
	if strings.Contains(string(js), `"args"`) {
		t.Errorf("JSON %s has empty args", js)
	}
}

func TestDeriveNoPortsNoChecks(t *testing.T) {
	def := mustParse(t, "name: job\ntype: worker\nregions: [fra]\ncommand: [./job]\n")
	got, err := DeriveRegion(def, "fra", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != "worker" || got.HealthChecks == nil || len(got.HealthChecks) != 0 || got.Ports == nil || len(got.Ports) != 0 {
		t.Errorf("got %+v, want a worker with empty ports and checks", got)
	}
}

// TestDeriveImage: the image and its registry secret are copied into every
// region; the digest is left for the global control plane to resolve.
func TestDeriveImage(t *testing.T) {
	def := mustParse(t, "name: web\nregions: [fra, was]\nimage: registry.example/web:1.4\nregistry_secret: pull-creds\n")
	got, err := Derive(def, Options{SecretExists: func(n string) bool { return n == "pull-creds" }})
	if err != nil {
		t.Fatal(err)
	}
	for _, rd := range got {
		if rd.Image != "registry.example/web:1.4" || rd.RegistrySecret != "pull-creds" || rd.ImageDigest != "" {
			t.Errorf("%s: image %q, registry_secret %q, image_digest %q; want the image and secret copied, no digest",
				rd.Region, rd.Image, rd.RegistrySecret, rd.ImageDigest)
		}
	}
}

func TestDeriveEnv(t *testing.T) {
	def := validDef()
	def.Env = []api.EnvVar{
		{Key: "A", Value: "fra-a", Scopes: []string{"region:fra"}},
		{Key: "B", Value: "b"},
		{Key: "A", Value: "a"},
		{Key: "C", Secret: "was-secret", Scopes: []string{"region:was"}},
		{Key: "B", Value: "fra-sin-b", Scopes: []string{"region:fra", "region:sin"}},
		{Key: "D", Value: ""},
	}
	want := map[string][]api.ResolvedEnv{
		"fra": {{Key: "A", Value: "fra-a"}, {Key: "B", Value: "fra-sin-b"}, {Key: "D"}},
		"was": {{Key: "A", Value: "a"}, {Key: "B", Value: "b"}, {Key: "C", Secret: "was-secret"}, {Key: "D"}},
		"sin": {{Key: "A", Value: "a"}, {Key: "B", Value: "fra-sin-b"}, {Key: "D"}},
	}
	got, err := Derive(def, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rd := range got {
		if !reflect.DeepEqual(rd.Env, want[rd.Region]) {
			t.Errorf("%s env = %+v, want %+v", rd.Region, rd.Env, want[rd.Region])
		}
	}
}

func TestDeriveScopedOnly(t *testing.T) {
	def := validDef()
	def.Scalings = []api.Scaling{{Min: 0, Max: 5, Scopes: []string{"region:was"}}}
	def.InstanceTypes = []api.InstanceTypeRef{{Type: "nano", Scopes: []string{"region:sin"}}}
	def.Datacenters = []api.DatacenterRule{{Allow: []string{"fra1", "fra3"}, Scopes: []string{"region:fra"}}, {Allow: []string{"x1"}}}
	got, err := Derive(def, Options{})
	if err != nil {
		t.Fatal(err)
	}
	type view struct {
		scaling api.ScalingRange
		it      string
		dcs     []string
	}
	want := []view{
		{api.ScalingRange{Min: 1, Max: 1}, "small", []string{"fra1", "fra3"}},
		{api.ScalingRange{Min: 0, Max: 5}, "small", []string{"x1"}},
		{api.ScalingRange{Min: 1, Max: 1}, "nano", []string{"x1"}},
	}
	for i, rd := range got {
		v := view{rd.Scaling, rd.InstanceType.Name, rd.Datacenters}
		if !reflect.DeepEqual(v, want[i]) {
			t.Errorf("%s: got %+v, want %+v", rd.Region, v, want[i])
		}
	}
}

func TestDeriveNormalizesDurations(t *testing.T) {
	def := validDef()
	def.HealthChecks = []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/h"}, GracePeriod: "0s", Interval: "90s", Timeout: "1500ms"}}
	def.Strategy = &api.Strategy{HealthDeadline: "1h"}
	rd, err := DeriveRegion(def, "was", Options{})
	if err != nil {
		t.Fatal(err)
	}
	hc := rd.HealthChecks[0]
	if hc.GracePeriod != "0s" || hc.Interval != "1m30s" || hc.Timeout != "1.5s" || rd.Strategy.HealthDeadline != "1h0m0s" {
		t.Errorf("durations: %+v, deadline %q", hc, rd.Strategy.HealthDeadline)
	}
}

func TestDeriveCustomCatalogue(t *testing.T) {
	cat := Catalogue{Default: "std", Types: []api.InstanceType{{Name: "std", MilliCPU: 1500, MemoryMB: 3000}, {Name: "big", MilliCPU: 6000, MemoryMB: 12000}}}
	def := validDef()
	def.InstanceTypes = []api.InstanceTypeRef{{Type: "big", Scopes: []string{"region:sin"}}}
	got, err := Derive(def, Options{Catalogue: cat})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].InstanceType != cat.Types[0] || got[2].InstanceType != cat.Types[1] {
		t.Errorf("instance types: %+v, %+v", got[0].InstanceType, got[2].InstanceType)
	}

	bad := Catalogue{Default: "gone", Types: cat.Types}
	if _, err := Derive(validDef(), Options{Catalogue: bad}); err == nil || !strings.Contains(err.Error(), `instance type "gone" is not in the catalogue`) {
		t.Errorf("catalogue without its default: %v", err)
	}
}

func TestDeriveErrors(t *testing.T) {
	_, err := DeriveRegion(validDef(), "par", Options{})
	if err == nil || err.Error() != `derive web: region "par" is not in regions [fra, was, sin]` {
		t.Errorf("unknown region: %v", err)
	}
	def := validDef()
	def.Scalings = []api.Scaling{{Min: 1, Max: 1}, {Min: 2, Max: 2}}
	rds, err := Derive(def, Options{})
	var errs Errors
	if rds != nil || !errors.As(err, &errs) || errs[0].Path != "scalings[1]" {
		t.Errorf("Derive(invalid) = %v, %v", rds, err)
	}
	if _, err := DeriveRegion(def, "fra", Options{}); !errors.As(err, &errs) {
		t.Errorf("DeriveRegion(invalid) = %v", err)
	}
}

// TestDeriveDoesNotAlias scribbles over every slice and pointer of the
// results and checks the definition is untouched.
func TestDeriveDoesNotAlias(t *testing.T) {
	def := mustParse(t, designYAML)
	twin := mustParse(t, designYAML)
	rds, err := Derive(def, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range rds {
		scribble(&rds[i])
	}
	if !reflect.DeepEqual(def, twin) {
		t.Errorf("definition changed through its derivations:\n got %+v\nwant %+v", def, twin)
	}
}

// scribble overwrites everything reachable through rd's slices and pointers.
func scribble(rd *api.RegionalDefinition) {
	for i := range rd.Command {
		rd.Command[i] = "x"
	}
	for i := range rd.Args {
		rd.Args[i] = "x"
	}
	for i := range rd.Ports {
		rd.Ports[i] = api.Port{Port: -1, Protocol: "x"}
	}
	for i := range rd.Routes {
		rd.Routes[i] = api.Route{Port: -1, Path: "x"}
	}
	for i := range rd.Env {
		rd.Env[i] = api.ResolvedEnv{Key: "x", Value: "x"}
	}
	for i := range rd.Datacenters {
		rd.Datacenters[i] = "x"
	}
	for i := range rd.HealthChecks {
		hc := &rd.HealthChecks[i]
		if hc.HTTP != nil {
			hc.HTTP.Path = "x"
		}
		if hc.RestartLimit != nil {
			*hc.RestartLimit = -9
		}
		hc.Port = -1
	}
	for i := range rd.Strategy.CanaryRegions {
		rd.Strategy.CanaryRegions[i] = "x"
	}
}
