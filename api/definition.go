// Package api is Meridian's public API: the deployment definition users
// write, the regional definition derived from it, the resources of the global
// REST API, and a Go client for that API. It imports nothing internal to
// Meridian, so programs outside the project can depend on it alone.
package api

import "time"

// Definition is a service's deployment definition, written by users in YAML
// or JSON. List entries that carry Scopes apply only where a scope matches;
// a scoped entry beats an unscoped one for the same key in that region.
type Definition struct {
	Name          string            `json:"name" yaml:"name"`
	Type          string            `json:"type,omitempty" yaml:"type,omitempty"`
	Regions       []string          `json:"regions" yaml:"regions"`
	Image         string            `json:"image,omitempty" yaml:"image,omitempty"`
	Command       []string          `json:"command,omitempty" yaml:"command,omitempty"`
	Args          []string          `json:"args,omitempty" yaml:"args,omitempty"`
	Ports         []Port            `json:"ports,omitempty" yaml:"ports,omitempty"`
	Routes        []Route           `json:"routes,omitempty" yaml:"routes,omitempty"`
	Env           []EnvVar          `json:"env,omitempty" yaml:"env,omitempty"`
	Scalings      []Scaling         `json:"scalings,omitempty" yaml:"scalings,omitempty"`
	InstanceTypes []InstanceTypeRef `json:"instance_types,omitempty" yaml:"instance_types,omitempty"`
	Datacenters   []DatacenterRule  `json:"datacenters,omitempty" yaml:"datacenters,omitempty"`
	HealthChecks  []HealthCheck     `json:"health_checks,omitempty" yaml:"health_checks,omitempty"`
	Strategy      *Strategy         `json:"strategy,omitempty" yaml:"strategy,omitempty"`

	// RegistrySecret names the organization secret holding the
	// credentials of Image's registry: Docker config JSON
	// ({"auths": {"host": {"auth": "base64(user:pass)"}}}, or username
	// and password fields) or "user:password". Only with Image, which is
	// an OCI image reference by tag (registry.example/web:1.4) or by
	// digest (registry.example/web@sha256:...).
	RegistrySecret string `json:"registry_secret,omitempty" yaml:"registry_secret,omitempty"`
}

// Service types.
const (
	TypeWeb    = "web"
	TypeWorker = "worker"
)

// Port is a port the service listens on.
type Port struct {
	Port     int    `json:"port" yaml:"port"`
	Protocol string `json:"protocol,omitempty" yaml:"protocol,omitempty"` // http (default) | http2 | tcp
}

// Route exposes a port publicly through the edge under a path prefix.
type Route struct {
	Port int    `json:"port" yaml:"port"`
	Path string `json:"path" yaml:"path"`
}

// EnvVar is one environment variable: a literal Value or a reference to an
// organization Secret by name, never both.
type EnvVar struct {
	Key    string   `json:"key" yaml:"key"`
	Value  string   `json:"value,omitempty" yaml:"value,omitempty"`
	Secret string   `json:"secret,omitempty" yaml:"secret,omitempty"`
	Scopes []string `json:"scopes,omitempty" yaml:"scopes,omitempty"`
}

// Scaling bounds the number of instances per region.
type Scaling struct {
	Min    int      `json:"min" yaml:"min"`
	Max    int      `json:"max" yaml:"max"`
	Scopes []string `json:"scopes,omitempty" yaml:"scopes,omitempty"`
}

// InstanceTypeRef names an instance type from the operator's catalogue.
type InstanceTypeRef struct {
	Type   string   `json:"type" yaml:"type"`
	Scopes []string `json:"scopes,omitempty" yaml:"scopes,omitempty"`
}

// DatacenterRule restricts placement to the listed data centers.
type DatacenterRule struct {
	Allow  []string `json:"allow" yaml:"allow"`
	Scopes []string `json:"scopes,omitempty" yaml:"scopes,omitempty"`
}

// HealthCheck probes an instance over TCP or HTTP. Exactly one of TCP and
// HTTP is set. Durations are Go duration strings ("5s").
type HealthCheck struct {
	Port         int        `json:"port" yaml:"port"`
	TCP          *TCPCheck  `json:"tcp,omitempty" yaml:"tcp,omitempty"`
	HTTP         *HTTPCheck `json:"http,omitempty" yaml:"http,omitempty"`
	GracePeriod  Duration   `json:"grace_period,omitempty" yaml:"grace_period,omitempty"`
	Interval     Duration   `json:"interval,omitempty" yaml:"interval,omitempty"`
	Timeout      Duration   `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	RestartLimit *int       `json:"restart_limit,omitempty" yaml:"restart_limit,omitempty"`
}

// TCPCheck passes when a TCP connection to the port opens.
type TCPCheck struct{}

// HTTPCheck passes when GET Path answers 2xx or 3xx.
type HTTPCheck struct {
	Path string `json:"path" yaml:"path"`
}

// Strategy says how a deployment rolls out across regions.
type Strategy struct {
	Type               string   `json:"type,omitempty" yaml:"type,omitempty"` // rolling (default) | all_at_once
	MaxParallelRegions int      `json:"max_parallel_regions,omitempty" yaml:"max_parallel_regions,omitempty"`
	CanaryRegions      []string `json:"canary_regions,omitempty" yaml:"canary_regions,omitempty"`
	OnFailure          string   `json:"on_failure,omitempty" yaml:"on_failure,omitempty"` // fail_local (default) | rollback_all
	HealthDeadline     Duration `json:"health_deadline,omitempty" yaml:"health_deadline,omitempty"`
}

// Strategy types and failure policies.
const (
	StrategyRolling   = "rolling"
	StrategyAllAtOnce = "all_at_once"
	OnFailureLocal    = "fail_local"
	OnFailureAll      = "rollback_all"
)

// Duration is a Go duration string such as "5s" or "1m30s".
type Duration string

// Std parses d; an empty Duration is zero.
func (d Duration) Std() (time.Duration, error) {
	if d == "" {
		return 0, nil
	}
	return time.ParseDuration(string(d))
}

// RegionalDefinition is the view of a Definition for one region: single
// values for scaling, instance type and data centers, a resolved env list,
// defaults filled in, and everything else copied.
type RegionalDefinition struct {
	Region       string        `json:"region"`
	Name         string        `json:"name"`
	Type         string        `json:"type"`
	Image        string        `json:"image,omitempty"`
	Command      []string      `json:"command,omitempty"`
	Args         []string      `json:"args,omitempty"`
	Ports        []Port        `json:"ports"`
	Routes       []Route       `json:"routes"`
	Env          []ResolvedEnv `json:"env"`
	Scaling      ScalingRange  `json:"scaling"`
	InstanceType InstanceType  `json:"instance_type"`
	Datacenters  []string      `json:"datacenters"`
	HealthChecks []HealthCheck `json:"health_checks"`
	Strategy     Strategy      `json:"strategy"`

	// ImageDigest is the digest ("sha256:...") global resolved Image to at
	// deploy: machines run Image's repository at this digest (Image as
	// written when empty). For a multi-platform image it is the index's
	// digest: each machine picks its platform's manifest in it.
	ImageDigest string `json:"image_digest,omitempty"`
	// RegistrySecret names the organization secret holding the credentials
	// of Image's registry; its value travels in the apply's secrets, and
	// the region uses it for its own pulls only.
	RegistrySecret string `json:"registry_secret,omitempty"`
}

// ResolvedEnv is one env entry of a regional definition: a literal Value or
// a Secret name, resolved to its value only on the machine that runs it.
type ResolvedEnv struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Secret string `json:"secret,omitempty"`
}

// ScalingRange is the instance count range of one region.
type ScalingRange struct {
	Min int `json:"min"`
	Max int `json:"max"`
}

// InstanceType is an entry of the operator's instance type catalogue.
type InstanceType struct {
	Name     string `json:"name" yaml:"name"`
	MilliCPU int    `json:"millicpu" yaml:"millicpu"`
	MemoryMB int    `json:"memory_mb" yaml:"memory_mb"`
}
