package definition

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
)

// Derive validates def and returns its regional definitions, one per region
// in the order of def.Regions. For each region a scoped entry beats an
// unscoped one, and defaults are filled in (see DeriveRegion). Validation
// errors are returned as Errors. Derive is a pure function of its arguments
// (and of opts.SecretExists): no I/O, no clock, no randomness. The results
// share no memory with def.
func Derive(def api.Definition, opts Options) ([]api.RegionalDefinition, error) {
	if err := Validate(def, opts); err != nil {
		return nil, err
	}
	cat := opts.catalogue()
	keys := envKeys(def.Env)
	out := make([]api.RegionalDefinition, 0, len(def.Regions))
	for _, region := range def.Regions {
		rd, err := derive(&def, region, cat, keys)
		if err != nil {
			return nil, err
		}
		out = append(out, rd)
	}
	return out, nil
}

// DeriveRegion validates def and returns its regional definition for region,
// which must be one of def.Regions. In it:
//
//   - scaling is the entry scoped to the region, else the unscoped one, else
//     {min: 1, max: 1};
//   - instance_type is likewise chosen, else the catalogue's default, and
//     carries the catalogue's millicpu and memory_mb;
//   - datacenters is the chosen allow list, else empty (any data center);
//   - env has, for each key in the order keys first appear in def.Env, the
//     entry scoped to the region, else the unscoped one; keys set only for
//     other regions are left out;
//   - type defaults to web, port protocols to http, health check
//     grace_period to 10s, interval to 5s, timeout to 2s, restart_limit to 3;
//     a service with ports and no health checks gets a tcp check on its
//     first port; strategy type defaults to rolling, on_failure to
//     fail_local, health_deadline to 5m; durations are normalized
//     (time.Duration.String, so "5m" becomes "5m0s");
//   - lists are never nil (JSON shows []) except command and args, which
//     are omitted when empty;
//   - image and registry_secret are copied; image_digest is left empty:
//     the global control plane resolves it at deploy (it needs the
//     registry, and derivation does no I/O).
func DeriveRegion(def api.Definition, region string, opts Options) (api.RegionalDefinition, error) {
	if err := Validate(def, opts); err != nil {
		return api.RegionalDefinition{}, err
	}
	if !slices.Contains(def.Regions, region) {
		return api.RegionalDefinition{}, fmt.Errorf("derive %s: region %q is not in regions [%s]", def.Name, region, strings.Join(def.Regions, ", "))
	}
	return derive(&def, region, opts.catalogue(), envKeys(def.Env))
}

// derive computes the regional definition of a valid def; keys numbers its
// env keys (see envKeys).
func derive(def *api.Definition, region string, cat Catalogue, keys keyOrder) (api.RegionalDefinition, error) {
	it, err := instanceType(def, region, cat)
	if err != nil {
		return api.RegionalDefinition{}, err
	}
	return api.RegionalDefinition{
		Region:       region,
		Name:         def.Name,
		Type:         orString(def.Type, api.TypeWeb),
		Image:        def.Image,
		Command:      cloneOrNil(def.Command),
		Args:         cloneOrNil(def.Args),
		Ports:        ports(def.Ports),
		Routes:       cloneOrEmpty(def.Routes),
		Env:          env(def.Env, keys, region),
		Scaling:      scaling(def.Scalings, region),
		InstanceType: it,
		Datacenters:  datacenters(def.Datacenters, region),
		HealthChecks: healthChecks(def),
		Strategy:     strategy(def.Strategy),

		RegistrySecret: def.RegistrySecret,
	}, nil
}

// applies reports whether an entry with scopes applies in region, and
// whether it does so through a scope (rather than being unscoped).
func applies(scopes []string, region string) (ok, scoped bool) {
	if len(scopes) == 0 {
		return true, false
	}
	for _, s := range scopes {
		if id, found := strings.CutPrefix(s, "region:"); found && id == region {
			return true, true
		}
	}
	return false, false
}

// pick returns the index of the one-key list entry that applies in region:
// the one scoped to it, else the unscoped one, else -1. scopes(i) gives the
// scopes of entry i of n.
func pick(n int, scopes func(i int) []string, region string) int {
	found := -1
	for i := range n {
		ok, scoped := applies(scopes(i), region)
		switch {
		case scoped:
			return i
		case ok && found < 0:
			found = i
		}
	}
	return found
}

func scaling(list []api.Scaling, region string) api.ScalingRange {
	i := pick(len(list), func(i int) []string { return list[i].Scopes }, region)
	if i < 0 {
		return api.ScalingRange{Min: 1, Max: 1}
	}
	return api.ScalingRange{Min: list[i].Min, Max: list[i].Max}
}

func instanceType(def *api.Definition, region string, cat Catalogue) (api.InstanceType, error) {
	list := def.InstanceTypes
	name := cat.Default
	if i := pick(len(list), func(i int) []string { return list[i].Scopes }, region); i >= 0 {
		name = list[i].Type
	}
	it, ok := cat.Lookup(name)
	if !ok {
		return api.InstanceType{}, fmt.Errorf("derive %s in %s: instance type %q is not in the catalogue", def.Name, region, name)
	}
	return it, nil
}

func datacenters(list []api.DatacenterRule, region string) []string {
	i := pick(len(list), func(i int) []string { return list[i].Scopes }, region)
	if i < 0 {
		return []string{}
	}
	return cloneOrEmpty(list[i].Allow)
}

// keyOrder numbers the distinct keys of an env list in first-appearance
// order: slot[i] is the number of entry i's key, of n.
type keyOrder struct {
	slot []int
	n    int
}

func envKeys(list []api.EnvVar) keyOrder {
	k := keyOrder{slot: make([]int, len(list))}
	index := make(map[string]int, len(list))
	for i, e := range list {
		s, seen := index[e.Key]
		if !seen {
			s = k.n
			index[e.Key] = s
			k.n++
		}
		k.slot[i] = s
	}
	return k
}

// env resolves the env list of region: per key, the entry scoped to region,
// else the unscoped one, in first-appearance order of keys.
func env(list []api.EnvVar, keys keyOrder, region string) []api.ResolvedEnv {
	type slot struct {
		env         api.ResolvedEnv
		set, scoped bool
	}
	slots := make([]slot, keys.n)
	for i, e := range list {
		ok, scoped := applies(e.Scopes, region)
		if s := &slots[keys.slot[i]]; ok && (!s.set || scoped && !s.scoped) {
			*s = slot{env: api.ResolvedEnv{Key: e.Key, Value: e.Value, Secret: e.Secret}, set: true, scoped: scoped}
		}
	}
	out := make([]api.ResolvedEnv, 0, len(slots))
	for _, s := range slots {
		if s.set {
			out = append(out, s.env)
		}
	}
	return out
}

func ports(list []api.Port) []api.Port {
	out := make([]api.Port, len(list))
	for i, p := range list {
		out[i] = api.Port{Port: p.Port, Protocol: orString(p.Protocol, "http")}
	}
	return out
}

func healthChecks(def *api.Definition) []api.HealthCheck {
	if len(def.HealthChecks) == 0 {
		if len(def.Ports) == 0 {
			return []api.HealthCheck{}
		}
		return []api.HealthCheck{healthCheck(api.HealthCheck{Port: def.Ports[0].Port, TCP: &api.TCPCheck{}})}
	}
	out := make([]api.HealthCheck, len(def.HealthChecks))
	for i, hc := range def.HealthChecks {
		out[i] = healthCheck(hc)
	}
	return out
}

// healthCheck returns a copy of hc with defaults filled in.
func healthCheck(hc api.HealthCheck) api.HealthCheck {
	limit := DefaultRestartLimit
	if hc.RestartLimit != nil {
		limit = *hc.RestartLimit
	}
	out := api.HealthCheck{
		Port:         hc.Port,
		GracePeriod:  normalize(hc.GracePeriod, DefaultGracePeriod),
		Interval:     normalize(hc.Interval, DefaultInterval),
		Timeout:      normalize(hc.Timeout, DefaultTimeout),
		RestartLimit: &limit,
	}
	if hc.TCP != nil {
		out.TCP = &api.TCPCheck{}
	}
	if hc.HTTP != nil {
		out.HTTP = &api.HTTPCheck{Path: hc.HTTP.Path}
	}
	return out
}

func strategy(s *api.Strategy) api.Strategy {
	var out api.Strategy
	if s != nil {
		out = *s
	}
	out.Type = orString(out.Type, api.StrategyRolling)
	out.OnFailure = orString(out.OnFailure, api.OnFailureLocal)
	out.HealthDeadline = normalize(out.HealthDeadline, DefaultHealthDeadline)
	out.CanaryRegions = cloneOrEmpty(out.CanaryRegions)
	return out
}

// normalize renders d in time.Duration.String form, or def when d is empty.
func normalize(d api.Duration, def time.Duration) api.Duration {
	t, err := d.Std()
	if err != nil {
		return d // unreachable after Validate
	}
	if d == "" {
		t = def
	}
	return api.Duration(t.String())
}

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// cloneOrEmpty copies s into a new, never nil, slice.
func cloneOrEmpty[T any](s []T) []T {
	return append(make([]T, 0, len(s)), s...)
}

// cloneOrNil copies s, or returns nil when s is empty.
func cloneOrNil[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}
