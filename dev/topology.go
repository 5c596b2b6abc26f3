package dev

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meridian-run/meridian/examples"
	"github.com/meridian-run/meridian/pki"
)

// Topology describes the installation `meridian dev` runs.
type Topology struct {
	TrustDomain  string       `yaml:"trust_domain"`
	Domain       string       `yaml:"domain"`
	Organization string       `yaml:"organization"`
	LeaseTTL     string       `yaml:"lease_ttl"`
	Machine      MachineSize  `yaml:"machine"`
	Regions      []RegionTopo `yaml:"regions"`
	// Edges are the edge locations where public traffic enters.
	Edges []EdgeTopo `yaml:"edges"`
}

// EdgeTopo is one edge location of the topology.
type EdgeTopo struct {
	Location  string  `yaml:"location"`
	Latitude  float64 `yaml:"latitude"`
	Longitude float64 `yaml:"longitude"`
}

// MachineSize is the capacity every dev machine offers.
type MachineSize struct {
	MilliCPU int `yaml:"millicpu"`
	MemoryMB int `yaml:"memory_mb"`
}

// RegionTopo is one region of the topology.
type RegionTopo struct {
	ID          string           `yaml:"id"`
	Name        string           `yaml:"name"`
	Latitude    float64          `yaml:"latitude"`
	Longitude   float64          `yaml:"longitude"`
	Datacenters []DatacenterTopo `yaml:"datacenters"`
}

// DatacenterTopo is one data center and how many machines it has.
type DatacenterTopo struct {
	ID       string `yaml:"id"`
	Machines int    `yaml:"machines"`
}

// DefaultTopology returns the built-in topology (the same as
// examples/dev-topology.yaml).
func DefaultTopology() Topology {
	t, err := ParseTopology(examples.DevTopology)
	if err != nil {
		panic(err) // the embedded file is tested
	}
	return t
}

// LoadTopology reads and checks a topology file.
func LoadTopology(path string) (Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Topology{}, err
	}
	t, err := ParseTopology(b)
	if err != nil {
		return t, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTopology decodes a topology strictly and checks it, naming the
// field of the first problem.
func ParseTopology(b []byte) (Topology, error) {
	var t Topology
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		return t, fmt.Errorf("topology: %w", err)
	}
	if t.TrustDomain == "" {
		t.TrustDomain = "meridian.local"
	}
	if t.Domain == "" {
		t.Domain = "meridian.localhost"
	}
	if t.Organization == "" {
		t.Organization = "demo"
	}
	if t.LeaseTTL == "" {
		t.LeaseTTL = "3s"
	}
	if t.Machine.MilliCPU == 0 {
		t.Machine.MilliCPU = 4000
	}
	if t.Machine.MemoryMB == 0 {
		t.Machine.MemoryMB = 4096
	}
	if err := pki.ValidateTrustDomain(t.TrustDomain); err != nil {
		return t, fmt.Errorf("topology: trust_domain: %w", err)
	}
	if d, err := time.ParseDuration(t.LeaseTTL); err != nil || d < time.Second {
		return t, fmt.Errorf("topology: lease_ttl: want a duration of at least 1s, got %q", t.LeaseTTL)
	}
	if t.Machine.MilliCPU < 0 || t.Machine.MemoryMB < 0 {
		return t, fmt.Errorf("topology: machine: capacity must be positive")
	}
	if len(t.Regions) == 0 {
		return t, fmt.Errorf("topology: regions: at least one region is needed")
	}
	seen := map[string]bool{}
	for i, r := range t.Regions {
		if err := pki.ValidateName(r.ID); err != nil {
			return t, fmt.Errorf("topology: regions[%d].id: %w", i, err)
		}
		if seen[r.ID] {
			return t, fmt.Errorf("topology: regions[%d].id: %q repeats", i, r.ID)
		}
		seen[r.ID] = true
		if len(r.Datacenters) == 0 {
			return t, fmt.Errorf("topology: regions[%d].datacenters: at least one data center is needed", i)
		}
		for j, d := range r.Datacenters {
			if err := pki.ValidateName(d.ID); err != nil {
				return t, fmt.Errorf("topology: regions[%d].datacenters[%d].id: %w", i, j, err)
			}
			if seen["dc/"+d.ID] {
				return t, fmt.Errorf("topology: regions[%d].datacenters[%d].id: %q repeats", i, j, d.ID)
			}
			seen["dc/"+d.ID] = true
			if d.Machines < 1 || d.Machines > 26 {
				return t, fmt.Errorf("topology: regions[%d].datacenters[%d].machines: want 1 to 26, got %d", i, j, d.Machines)
			}
		}
	}
	for i, e := range t.Edges {
		if err := pki.ValidateName(e.Location); err != nil {
			return t, fmt.Errorf("topology: edges[%d].location: %w", i, err)
		}
		if seen["edge/"+e.Location] {
			return t, fmt.Errorf("topology: edges[%d].location: %q repeats", i, e.Location)
		}
		seen["edge/"+e.Location] = true
		if e.Latitude < -90 || e.Latitude > 90 {
			return t, fmt.Errorf("topology: edges[%d].latitude: %v is not within [-90, 90]", i, e.Latitude)
		}
		if e.Longitude < -180 || e.Longitude > 180 {
			return t, fmt.Errorf("topology: edges[%d].longitude: %v is not within [-180, 180]", i, e.Longitude)
		}
	}
	return t, nil
}
