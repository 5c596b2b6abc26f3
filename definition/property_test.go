package definition

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
)

const propertyRuns = 500

var regionPool = []string{"fra", "was", "sin", "par", "ams", "syd", "nyc", "sfo", "tok", "gru"}

// gen generates random valid definitions from a seeded source.
type gen struct {
	r      *rand.Rand
	scoped bool // whether entries may carry scopes
}

func newGen(seed uint64, scoped bool) *gen {
	return &gen{r: rand.New(rand.NewPCG(seed, 0x5eed)), scoped: scoped}
}

func (g *gen) definition() api.Definition {
	r := g.r
	def := api.Definition{Name: "svc-" + fmt.Sprint(r.IntN(100))}
	for _, i := range r.Perm(len(regionPool))[:1+r.IntN(len(regionPool))] {
		def.Regions = append(def.Regions, regionPool[i])
	}
	if r.IntN(2) == 0 {
		def.Type = []string{"web", "worker"}[r.IntN(2)]
	}
	if r.IntN(2) == 0 {
		def.Image = "registry.example/app:" + fmt.Sprint(r.IntN(10))
	} else {
		def.Command, def.Args = []string{"./app"}, []string{"--flag", fmt.Sprint(r.IntN(10))}
	}
	g.ports(&def)
	for _, scopes := range g.scopeSets(def.Regions) {
		min := r.IntN(5)
		def.Scalings = append(def.Scalings, api.Scaling{Min: min, Max: min + r.IntN(5), Scopes: scopes})
	}
	for _, scopes := range g.scopeSets(def.Regions) {
		def.InstanceTypes = append(def.InstanceTypes, api.InstanceTypeRef{Type: defaultTypes[r.IntN(len(defaultTypes))].Name, Scopes: scopes})
	}
	for _, scopes := range g.scopeSets(def.Regions) {
		rule := api.DatacenterRule{Scopes: scopes}
		for _, i := range r.Perm(3)[:1+r.IntN(3)] {
			rule.Allow = append(rule.Allow, fmt.Sprintf("dc%d", i+1))
		}
		def.Datacenters = append(def.Datacenters, rule)
	}
	g.env(&def)
	g.strategy(&def)
	return def
}

// scopeSets returns the scopes of the entries of a one-key list: maybe an
// unscoped entry, and entries scoped to disjoint sets of regions.
func (g *gen) scopeSets(regions []string) [][]string {
	var sets [][]string
	if g.r.IntN(2) == 0 {
		sets = append(sets, nil)
	}
	if !g.scoped {
		return sets
	}
	scopedFrom := len(sets)
	for _, region := range regions {
		switch {
		case g.r.IntN(2) == 0:
		case len(sets) > scopedFrom && g.r.IntN(2) == 0:
			i := scopedFrom + g.r.IntN(len(sets)-scopedFrom)
			sets[i] = append(sets[i], "region:"+region)
		default:
			sets = append(sets, []string{"region:" + region})
		}
	}
	g.r.Shuffle(len(sets), func(i, j int) { sets[i], sets[j] = sets[j], sets[i] })
	return sets
}

func (g *gen) ports(def *api.Definition) {
	r := g.r
	for _, i := range r.Perm(4)[:r.IntN(4)] {
		def.Ports = append(def.Ports, api.Port{Port: 8000 + i, Protocol: []string{"", "http", "http2", "tcp"}[r.IntN(4)]})
	}
	for _, p := range def.Ports {
		if def.Type != api.TypeWorker && p.Protocol != "tcp" && r.IntN(2) == 0 {
			def.Routes = append(def.Routes, api.Route{Port: p.Port, Path: fmt.Sprintf("/p%d", p.Port)})
		}
		if r.IntN(2) == 0 {
			interval := 2 + r.IntN(8)
			hc := api.HealthCheck{Port: p.Port, TCP: &api.TCPCheck{}, Interval: api.Duration(fmt.Sprintf("%ds", interval)),
				Timeout: api.Duration(fmt.Sprintf("%dms", 100+r.IntN(interval*1000-100)))}
			if r.IntN(2) == 0 {
				hc.TCP, hc.HTTP, hc.RestartLimit = nil, &api.HTTPCheck{Path: "/healthz"}, intp(r.IntN(5))
			}
			def.HealthChecks = append(def.HealthChecks, hc)
		}
	}
}

func (g *gen) env(def *api.Definition) {
	for k := range 1 + g.r.IntN(5) {
		key := fmt.Sprintf("KEY_%d", k)
		for _, scopes := range g.scopeSets(def.Regions) {
			e := api.EnvVar{Key: key, Value: fmt.Sprint(g.r.IntN(1000)), Scopes: scopes}
			if g.r.IntN(4) == 0 {
				e.Value, e.Secret = "", "secret-"+fmt.Sprint(g.r.IntN(3))
			}
			def.Env = append(def.Env, e)
		}
	}
	g.r.Shuffle(len(def.Env), func(i, j int) { def.Env[i], def.Env[j] = def.Env[j], def.Env[i] })
}

func (g *gen) strategy(def *api.Definition) {
	if g.r.IntN(2) == 0 {
		return
	}
	s := &api.Strategy{Type: []string{"", "rolling", "all_at_once"}[g.r.IntN(3)], MaxParallelRegions: g.r.IntN(4),
		OnFailure: []string{"", "fail_local", "rollback_all"}[g.r.IntN(3)]}
	for _, i := range g.r.Perm(len(def.Regions))[:g.r.IntN(len(def.Regions)+1)] {
		s.CanaryRegions = append(s.CanaryRegions, def.Regions[i])
	}
	def.Strategy = s
}

// covering returns the indexes of the entries scoped to region and of the
// unscoped entries, among the scopes of a list.
func covering(scopes [][]string, region string) (scoped, unscoped []int) {
	for i, s := range scopes {
		switch {
		case len(s) == 0:
			unscoped = append(unscoped, i)
		case slices.Contains(s, "region:"+region):
			scoped = append(scoped, i)
		}
	}
	return scoped, unscoped
}

// chosen returns the entry a region must get: its scoped entry, else the
// unscoped one, else -1; it fails if the region has more than one candidate
// of equal specificity.
func chosen(t *testing.T, scopes [][]string, region string) int {
	t.Helper()
	scoped, unscoped := covering(scopes, region)
	if len(scoped) > 1 || len(unscoped) > 1 {
		t.Fatalf("region %s has %d scoped and %d unscoped candidates", region, len(scoped), len(unscoped))
	}
	switch {
	case len(scoped) == 1:
		return scoped[0]
	case len(unscoped) == 1:
		return unscoped[0]
	}
	return -1
}

func scopesOf[T any](list []T, scopes func(T) []string) [][]string {
	out := make([][]string, len(list))
	for i, e := range list {
		out[i] = scopes(e)
	}
	return out
}

// TestPropertyDerive checks, on random valid definitions, that every region
// gets exactly the scaling, instance type, data centers and env its entries
// select, that derivation is deterministic, and that it neither mutates nor
// aliases its input.
func TestPropertyDerive(t *testing.T) {
	opts := Options{SecretExists: func(string) bool { return true }}
	var scopedEntries, overridden int
	defer func() {
		// The generator must exercise scopes and scoped-beats-unscoped.
		if scopedEntries < propertyRuns || overridden < propertyRuns/10 {
			t.Errorf("weak generator: %d scoped entries, %d overrides", scopedEntries, overridden)
		}
	}()
	for seed := range uint64(propertyRuns) {
		def := newGen(seed, true).definition()
		twin := newGen(seed, true).definition()
		for _, s := range def.Scalings {
			if len(s.Scopes) > 0 {
				scopedEntries++
				if len(def.Scalings) > 1 && slices.ContainsFunc(def.Scalings, func(s api.Scaling) bool { return len(s.Scopes) == 0 }) {
					overridden++
				}
			}
		}
		if err := Validate(def, opts); err != nil {
			t.Fatalf("seed %d: generated definition is invalid: %v\n%+v", seed, err, def)
		}
		rds, err := Derive(def, opts)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if len(rds) != len(def.Regions) {
			t.Fatalf("seed %d: %d regional definitions for %d regions", seed, len(rds), len(def.Regions))
		}
		for i, rd := range rds {
			if rd.Region != def.Regions[i] {
				t.Fatalf("seed %d: regional definition %d is for %s, want %s", seed, i, rd.Region, def.Regions[i])
			}
			checkRegion(t, def, rd)
		}

		again, _ := Derive(def, opts)
		if !reflect.DeepEqual(rds, again) || !sameJSON(t, rds, again) {
			t.Fatalf("seed %d: derivation is not deterministic", seed)
		}
		for i := range rds {
			scribble(&rds[i])
		}
		if !reflect.DeepEqual(def, twin) {
			t.Fatalf("seed %d: input mutated or aliased:\n got %+v\nwant %+v", seed, def, twin)
		}
	}
}

// checkRegion compares rd with a direct model of the selection rules.
func checkRegion(t *testing.T, def api.Definition, rd api.RegionalDefinition) {
	t.Helper()
	wantScaling := api.ScalingRange{Min: 1, Max: 1}
	if i := chosen(t, scopesOf(def.Scalings, func(s api.Scaling) []string { return s.Scopes }), rd.Region); i >= 0 {
		wantScaling = api.ScalingRange{Min: def.Scalings[i].Min, Max: def.Scalings[i].Max}
	}
	if rd.Scaling != wantScaling {
		t.Fatalf("%s: scaling %+v, want %+v", rd.Region, rd.Scaling, wantScaling)
	}
	wantType := "small"
	if i := chosen(t, scopesOf(def.InstanceTypes, func(s api.InstanceTypeRef) []string { return s.Scopes }), rd.Region); i >= 0 {
		wantType = def.InstanceTypes[i].Type
	}
	if it, _ := DefaultCatalogue().Lookup(wantType); rd.InstanceType != it {
		t.Fatalf("%s: instance type %+v, want %+v", rd.Region, rd.InstanceType, it)
	}
	wantDCs := []string{}
	if i := chosen(t, scopesOf(def.Datacenters, func(s api.DatacenterRule) []string { return s.Scopes }), rd.Region); i >= 0 {
		wantDCs = def.Datacenters[i].Allow
	}
	if !slices.Equal(rd.Datacenters, wantDCs) || rd.Datacenters == nil {
		t.Fatalf("%s: datacenters %q, want %q", rd.Region, rd.Datacenters, wantDCs)
	}
	if want := modelEnv(t, def.Env, rd.Region); !reflect.DeepEqual(rd.Env, want) {
		t.Fatalf("%s: env %+v, want %+v", rd.Region, rd.Env, want)
	}
}

// modelEnv resolves env for region key by key, in first-appearance order.
func modelEnv(t *testing.T, env []api.EnvVar, region string) []api.ResolvedEnv {
	t.Helper()
	out := []api.ResolvedEnv{}
	var keys []string
	for _, e := range env {
		if !slices.Contains(keys, e.Key) {
			keys = append(keys, e.Key)
		}
	}
	for _, key := range keys {
		var same []api.EnvVar
		for _, e := range env {
			if e.Key == key {
				same = append(same, e)
			}
		}
		if i := chosen(t, scopesOf(same, func(e api.EnvVar) []string { return e.Scopes }), region); i >= 0 {
			out = append(out, api.ResolvedEnv{Key: key, Value: same[i].Value, Secret: same[i].Secret})
		}
	}
	return out
}

func sameJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return string(ja) == string(jb)
}

// TestPropertyUnscopedRegionsEqual checks that without scopes every region
// gets the same regional definition but for its region.
func TestPropertyUnscopedRegionsEqual(t *testing.T) {
	for seed := range uint64(propertyRuns) {
		def := newGen(seed, false).definition()
		rds, err := Derive(def, Options{})
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		first := rds[0]
		for _, rd := range rds[1:] {
			rd.Region = first.Region
			if !reflect.DeepEqual(rd, first) {
				t.Fatalf("seed %d: regions differ:\n%+v\n%+v", seed, rd, first)
			}
		}
	}
}

// TestPropertyAmbiguityDetected duplicates a random entry of a random
// definition and checks Validate names both places.
func TestPropertyAmbiguityDetected(t *testing.T) {
	for seed := range uint64(propertyRuns) {
		def := newGen(seed, true).definition()
		var list string
		var i, n int
		switch r := rand.New(rand.NewPCG(seed, 1)); {
		case len(def.Scalings) > 0 && r.IntN(3) == 0:
			i = r.IntN(len(def.Scalings))
			def.Scalings, list, n = append(def.Scalings, def.Scalings[i]), "scalings", len(def.Scalings)
		case len(def.InstanceTypes) > 0 && r.IntN(2) == 0:
			i = r.IntN(len(def.InstanceTypes))
			def.InstanceTypes, list, n = append(def.InstanceTypes, def.InstanceTypes[i]), "instance_types", len(def.InstanceTypes)
		case len(def.Env) == 0:
			continue
		default:
			i = r.IntN(len(def.Env))
			def.Env, list, n = append(def.Env, def.Env[i]), "env", len(def.Env)
		}
		lines := errorLines(t, Validate(def, Options{}))
		if len(lines) == 0 {
			t.Fatalf("seed %d: duplicating %s[%d] as %s[%d] was accepted", seed, list, i, list, n)
		}
		for _, l := range lines { // one line per region the copy applies in
			if !strings.HasPrefix(l, fmt.Sprintf("%s[%d]", list, n)) || !strings.Contains(l, fmt.Sprintf("ambiguous with %s[%d]", list, i)) {
				t.Fatalf("seed %d: duplicating %s[%d] as %s[%d] gave %q", seed, list, i, list, n, lines)
			}
		}
	}
}
