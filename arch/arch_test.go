package arch

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/meridian-run/meridian"

// pkg is what `go list -json` says of one of the module's packages.
type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string // direct, without tests
	Deps       []string // transitive, without tests
}

// list returns the module's packages by short name ("agent",
// "region/regiontest").
func list(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list: %v\n%s", err, stderr)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[short(p.ImportPath)] = p
	}
	return pkgs
}

func short(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

// internal keeps the module's own packages of paths, by short name.
func internal(paths []string) []string {
	var out []string
	for _, p := range paths {
		if p == module || strings.HasPrefix(p, module+"/") {
			out = append(out, short(p))
		}
	}
	slices.Sort(out)
	return out
}

// documented reads the package list of ARCHITECTURE.md: the first fenced
// block after "Packages and their one-way dependencies", one package a
// line ("name  what it is  -> a, b"; continuation lines start with a
// space). It returns each package's declared direct dependencies; nil
// means "imports nothing internal", and "everything" (the CLI) is not
// checked.
func documented(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "ARCHITECTURE.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	state := 0 // 0: before the heading, 1: before the block, 2: in it
	out := map[string][]string{}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case state == 0 && strings.HasPrefix(line, "Packages and their one-way dependencies"):
			state = 1
		case state == 1 && strings.HasPrefix(line, "```"):
			state = 2
		case state == 2 && strings.HasPrefix(line, "```"):
			return out
		case state == 2 && line != "" && !strings.HasPrefix(line, " "):
			name := strings.Fields(line)[0]
			var deps []string
			if _, after, ok := strings.Cut(line, "-> "); ok {
				for d := range strings.SplitSeq(after, ",") {
					deps = append(deps, strings.TrimSpace(d))
				}
				slices.Sort(deps)
			}
			out[name] = deps
		}
	}
	t.Fatal("ARCHITECTURE.md: no package list (a fenced block after \"Packages and their one-way dependencies\")")
	return nil
}

// exempt are packages the list need not name: programs and benchmarks.
func exempt(name string) bool {
	for _, p := range []string{"bench", "examples", "cmd", "driver/meridian-shim"} {
		if name == p || strings.HasPrefix(name, p+"/") {
			return true
		}
	}
	return false
}

// TestDocumentedDependencies: ARCHITECTURE.md's package list names every
// package and exactly the module's packages each imports.
func TestDocumentedDependencies(t *testing.T) {
	pkgs := list(t)
	doc := documented(t)
	for name, p := range pkgs {
		if exempt(name) {
			continue
		}
		want, ok := doc[name]
		if !ok {
			t.Errorf("ARCHITECTURE.md's package list does not name %s (it imports %v)", name, internal(p.Imports))
			continue
		}
		if len(want) == 1 && want[0] == "everything" {
			continue
		}
		if got := internal(p.Imports); !slices.Equal(got, want) {
			t.Errorf("%s imports %v; ARCHITECTURE.md says %v", name, got, want)
		}
	}
	for name := range doc {
		if _, ok := pkgs[name]; !ok {
			t.Errorf("ARCHITECTURE.md's package list names %s, which does not exist", name)
		}
	}
}

// rules are the dependency rules the design rests on, checked on the
// transitive imports (tests excluded).
var rules = []struct {
	pkgs   []string // these packages...
	never  []string // ...never import these (directly or not),
	only   []string // ...or, when set, import only these of the module's.
	reason string
}{
	{pkgs: []string{"agent", "edge", "region", "driver", "supervise", "sched", "regionapi", "pki", "connlimit"},
		never:  []string{"global", "store", "definition", "rollout"},
		reason: "machines, edges and regions keep running without the global control plane"},
	{pkgs: []string{"region"}, never: []string{"agent", "edge"}, reason: "a region does not depend on what it serves"},
	{pkgs: []string{"agent", "edge"}, never: []string{"region"}, reason: "agents and edges speak to regions only through regionapi"},
	{pkgs: []string{"sched", "api"}, only: []string{}, reason: "pure: they import nothing of the module"},
	{pkgs: []string{"definition"}, only: []string{"api"}, reason: "pure: it reads api's types only"},
	{pkgs: []string{"rollout"}, never: []string{"global", "definition"}, reason: "the rollout engine sits below the API"},
}

// TestDependencyRules checks each rule on every package it names.
func TestDependencyRules(t *testing.T) {
	pkgs := list(t)
	for _, r := range rules {
		for _, name := range r.pkgs {
			p, ok := pkgs[name]
			if !ok {
				t.Errorf("rule (%s) names %s, which does not exist", r.reason, name)
				continue
			}
			deps := internal(p.Deps)
			for _, n := range r.never {
				if slices.Contains(deps, n) {
					t.Errorf("%s imports %s (directly or not): %s", name, n, r.reason)
				}
			}
			if r.only != nil {
				for _, d := range deps {
					if !slices.Contains(r.only, d) {
						t.Errorf("%s imports %s: %s (allowed: %v)", name, d, r.reason, r.only)
					}
				}
			}
		}
	}
}

// TestEveryPackageDocumented: every package of the module has a doc
// comment.
func TestEveryPackageDocumented(t *testing.T) {
	for name, p := range list(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", orRoot(name))
		}
	}
}

func orRoot(name string) string {
	if name == "" {
		return fmt.Sprintf("%s (the module root)", module)
	}
	return name
}
