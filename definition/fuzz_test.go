package definition

import (
	"errors"
	"testing"
)

// FuzzParseValidateDerive checks that parsing, validating and deriving any
// document never panics, that every error is of type Errors, and that a
// definition that validates derives one regional definition per region.
// Plain `go test` runs only the seeds; fuzz with
// `go test -run=^$ -fuzz=FuzzParseValidateDerive ./definition`.
func FuzzParseValidateDerive(f *testing.F) {
	for _, seed := range []string{
		designYAML,
		designJSON,
		"name: a\nregions: [fra]\ncommand: [./x]\n",
		"name: a\nregions: [fra]\nimage: x\nscalings: [{min: 1, max: 1}, {min: 2, max: 2}]\n",
		"name: a\nregions: [fra]\nimage: x\nenv: [{key: A, value: 1, scopes: [\"region:par\"]}]\n",
		"scalings:\n  - {min: 1, max: 1, foo: 2}\n",
		"ports: [{port: abc}]",
		`{"name": "a", "regions": ["fra"], "image": "x", "health_checks": [{"port": 1, "tcp": {}}]}`,
		`{"name": "a", "regions": ["fra"}`,
		"a: &a [x]\nb: *a\n",
		"- 1\n- 2\n",
		"",
		"{",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		def, err := Parse(data)
		if err != nil {
			mustBeErrors(t, err)
			return
		}
		verr := Validate(def, Options{})
		rds, derr := Derive(def, Options{})
		if verr != nil {
			mustBeErrors(t, verr)
			if derr == nil {
				t.Fatalf("Derive accepted a definition Validate refused: %v", verr)
			}
			return
		}
		if derr != nil || len(rds) != len(def.Regions) {
			t.Fatalf("valid definition: Derive = %d results, %v", len(rds), derr)
		}
		for _, region := range def.Regions {
			if _, err := DeriveRegion(def, region, Options{}); err != nil {
				t.Fatalf("DeriveRegion(%q): %v", region, err)
			}
		}
	})
}

func mustBeErrors(t *testing.T, err error) {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 || errs.Error() == "" {
		t.Fatalf("error %v (%T) is not a non-empty Errors", err, err)
	}
}
