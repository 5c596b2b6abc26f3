package definition

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/meridian-run/meridian/api"
)

func TestDefaultCatalogue(t *testing.T) {
	c := DefaultCatalogue()
	if err := c.Validate(); err != nil {
		t.Fatalf("default catalogue invalid: %v", err)
	}
	small, ok := c.Lookup(c.Default)
	if c.Default != "small" || !ok || small != (api.InstanceType{Name: "small", MilliCPU: 1000, MemoryMB: 1024}) {
		t.Errorf("default %q = %+v", c.Default, small)
	}
	c.Types[0].Name = "changed"
	if DefaultCatalogue().Types[0].Name != "nano" {
		t.Error("DefaultCatalogue shares its slice with callers")
	}
}

func TestParseCatalogue(t *testing.T) {
	c, err := ParseCatalogue([]byte(`
default: std
types:
  - {name: std, millicpu: 1500, memory_mb: 3072}
  - {name: gpu-a, millicpu: 8000, memory_mb: 32768}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Catalogue{Default: "std", Types: []api.InstanceType{{Name: "std", MilliCPU: 1500, MemoryMB: 3072}, {Name: "gpu-a", MilliCPU: 8000, MemoryMB: 32768}}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}

	tests := []struct {
		name, doc string
		want      []string
	}{
		{"unknown field", "default: a\ntypes: [{name: a, millicpu: 1, memory_mb: 1, gpus: 1}]",
			[]string{"types[0].gpus: unknown field"}},
		{"wrong type", "default: a\ntypes: [{name: a, millicpu: lots, memory_mb: 1}]",
			[]string{`types[0].millicpu: want an integer, got string "lots"`}},
		{"empty", "", []string{"the catalogue is empty"}},
		{"no types", "default: a", []string{"types: at least one instance type is required", `default: instance type "a" is not in types`}},
		{"invalid entries", `
types:
  - {name: a, millicpu: 0, memory_mb: -1}
  - {name: A, millicpu: 1, memory_mb: 1}
  - {name: a, millicpu: 1, memory_mb: 1}
`, []string{
			"types[0].millicpu: must be positive, got 0",
			"types[0].memory_mb: must be positive, got -1",
			`types[1].name: "A" is not a valid instance type name: ` + labelRule,
			`types[2].name: duplicate instance type "a" (also types[0])`,
			"default: required",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCatalogue([]byte(tt.doc))
			wantLines(t, err, tt.want...)
		})
	}
}

func TestLoadCatalogue(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(path, []byte("default: x\ntypes: [{name: x, millicpu: 100, memory_mb: 128}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCatalogue(t.Context(), path)
	if err != nil || c.Default != "x" || len(c.Types) != 1 {
		t.Fatalf("LoadCatalogue = %+v, %v", c, err)
	}

	if _, err := LoadCatalogue(t.Context(), filepath.Join(dir, "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("default: x\ntypes: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadCatalogue(t.Context(), bad)
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 2 || errs[0].Path != "types" {
		t.Errorf("invalid catalogue: %v", err)
	}
}
