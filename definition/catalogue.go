package definition

import (
	"context"
	"fmt"

	"github.com/meridian-run/meridian/api"
)

// Catalogue is the operator-configurable list of instance types that
// definitions may name, with the type used when a region's definition names
// none. In YAML: {default: small, types: [{name, millicpu, memory_mb}]}.
type Catalogue struct {
	Default string             `json:"default" yaml:"default"`
	Types   []api.InstanceType `json:"types" yaml:"types"`
}

// defaultTypes backs DefaultCatalogue; it is never handed out, only copied.
var defaultTypes = []api.InstanceType{
	{Name: "nano", MilliCPU: 250, MemoryMB: 256},
	{Name: "micro", MilliCPU: 500, MemoryMB: 512},
	{Name: "small", MilliCPU: 1000, MemoryMB: 1024},
	{Name: "medium", MilliCPU: 2000, MemoryMB: 2048},
	{Name: "large", MilliCPU: 4000, MemoryMB: 4096},
	{Name: "xlarge", MilliCPU: 8000, MemoryMB: 8192},
}

// DefaultCatalogue returns the built-in catalogue: nano (250 millicpu,
// 256 MB), micro (500, 512), small (1000, 1024), medium (2000, 2048),
// large (4000, 4096) and xlarge (8000, 8192), with default small.
func DefaultCatalogue() Catalogue {
	return Catalogue{Default: "small", Types: append([]api.InstanceType(nil), defaultTypes...)}
}

// Lookup returns the instance type called name.
func (c Catalogue) Lookup(name string) (api.InstanceType, bool) {
	for _, t := range c.Types {
		if t.Name == name {
			return t, true
		}
	}
	return api.InstanceType{}, false
}

// Validate checks the catalogue: at least one type, names that are DNS
// labels and unique, positive millicpu and memory_mb, and a default that is
// one of the types. The error, if any, is of type Errors.
func (c Catalogue) Validate() error {
	var errs collector
	if len(c.Types) == 0 {
		errs.add("types", "at least one instance type is required")
	}
	if len(c.Types) > MaxListLen {
		errs.add("types", "at most %d entries are allowed, got %d", MaxListLen, len(c.Types))
	}
	first := make(map[string]int, len(c.Types))
	for i, t := range c.Types {
		checkLabel(&errs, field(at("types", i), "name"), t.Name, "instance type name")
		if j, dup := first[t.Name]; dup && t.Name != "" {
			errs.add(field(at("types", i), "name"), "duplicate instance type %q (also %s)", t.Name, at("types", j))
		} else if !dup {
			first[t.Name] = i
		}
		if t.MilliCPU <= 0 {
			errs.add(field(at("types", i), "millicpu"), "must be positive, got %d", t.MilliCPU)
		}
		if t.MemoryMB <= 0 {
			errs.add(field(at("types", i), "memory_mb"), "must be positive, got %d", t.MemoryMB)
		}
	}
	if c.Default == "" {
		errs.add("default", "required")
	} else if _, ok := c.Lookup(c.Default); !ok {
		errs.add("default", "instance type %q is not in types", c.Default)
	}
	return errs.err()
}

// ParseCatalogue decodes a catalogue from YAML or JSON, strictly (unknown
// fields and wrong types are errors naming their path), and validates it.
// Errors are of type Errors.
func ParseCatalogue(data []byte) (Catalogue, error) {
	var c Catalogue
	if err := decodeStrict(data, "catalogue", &c); err != nil {
		return Catalogue{}, err
	}
	if err := c.Validate(); err != nil {
		return Catalogue{}, err
	}
	return c, nil
}

// LoadCatalogue reads (as ReadDocument: bounded, until ctx ends) and
// parses the catalogue file at path.
func LoadCatalogue(ctx context.Context, path string) (Catalogue, error) {
	data, err := ReadDocument(ctx, path)
	if err != nil {
		return Catalogue{}, fmt.Errorf("load catalogue: %w", err)
	}
	c, err := ParseCatalogue(data)
	if err != nil {
		return Catalogue{}, fmt.Errorf("catalogue %s: %w", path, err)
	}
	return c, nil
}
