package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/global"
	"github.com/meridian-run/meridian/store/storetest"
)

// readmeBlocks returns the README's sh code blocks by the heading above
// them, each as its command lines (backslash continuations joined).
func readmeBlocks(t *testing.T) map[string][][]string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string][][]string{}
	heading, in := "", false
	var cur []string
	pending := ""
	for line := range strings.SplitSeq(string(b), "\n") {
		switch {
		case !in && strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		case !in && line == "```sh":
			in, cur = true, nil
		case in && line == "```":
			in = false
			blocks[heading] = append(blocks[heading], cur)
		case in:
			if strings.HasSuffix(line, `\`) {
				pending += strings.TrimSuffix(line, `\`) + " "
				continue
			}
			cur = append(cur, pending+line)
			pending = ""
		}
	}
	return blocks
}

// shellWords splits a command line as sh would, enough for the README:
// quotes, $(...), comments; it returns each simple command's words
// (split at ;, &&, ||, | and &), with variable assignments before the
// command and redirections dropped.
func shellWords(line string) [][]string {
	var cmds [][]string
	var words []string
	var w strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			words = append(words, w.String())
		}
		w.Reset()
		inWord = false
	}
	end := func() {
		flush()
		if len(words) > 0 {
			cmds = append(cmds, words)
		}
		words = nil
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			w.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			j := strings.IndexByte(line[i+1:], '"')
			w.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '$' && i+1 < len(line) && line[i+1] == '(':
			depth, j := 0, i+1
			for ; j < len(line); j++ {
				if line[j] == '(' {
					depth++
				} else if line[j] == ')' {
					if depth--; depth == 0 {
						break
					}
				}
			}
			w.WriteString(line[i : j+1])
			i = j
			inWord = true
		case c == '#' && !inWord:
			end()
			return cmds
		case c == ' ' || c == '\t':
			flush()
		case c == ';' || c == '&' || c == '|':
			end()
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	end()
	// Drop leading assignments and redirections.
	var out [][]string
	for _, ws := range cmds {
		var keep []string
		for i := 0; i < len(ws); i++ {
			if strings.HasPrefix(ws[i], ">") || strings.HasPrefix(ws[i], "<") {
				if ws[i] == ">" || ws[i] == "<" {
					i++
				}
				continue
			}
			if len(keep) == 0 && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(ws[i]) {
				continue
			}
			keep = append(keep, ws[i])
		}
		if len(keep) > 0 {
			out = append(out, keep)
		}
	}
	return out
}

// TestREADMECommandsParse: every meridian command in the README's sh
// blocks names a real command, with flags it has and the positional
// arguments it takes.
func TestREADMECommandsParse(t *testing.T) {
	perHeading := map[string]int{}
	for heading, blocks := range readmeBlocks(t) {
		for _, lines := range blocks {
			for _, line := range lines {
				for _, words := range shellWords(line) {
					if words[0] != "meridian" && words[0] != "./bin/meridian" {
						continue
					}
					perHeading[heading]++
					root := NewRoot(io.Discard, io.Discard)
					cmd, rest, err := root.Find(words[1:])
					if err != nil || cmd == root {
						t.Errorf("%s: %q: no such command: %v", heading, line, err)
						continue
					}
					if err := cmd.ParseFlags(rest); err != nil {
						t.Errorf("%s: %q: %v", heading, line, err)
						continue
					}
					if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
						t.Errorf("%s: %q: %v", heading, line, err)
					}
				}
			}
		}
	}
	if n := perHeading["A real installation"]; n < 12 {
		t.Fatalf("only %d meridian commands found under \"A real installation\": %v", n, perHeading)
	}
}

// TestREADMECurlExamples runs the README's curl examples, as written,
// against a real global control plane (the regions of the example
// registered and open, as the section before them does), in order:
// the token the second one prints is the MERIDIAN_TOKEN of the next ones,
// the deployment the YAML upload creates is the dep_... read after it.
// Each must answer without an error body.
func TestREADMECurlExamples(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the README's curl examples (apt-get install -y curl)")
	}
	key, _ := base64.StdEncoding.DecodeString(global.NewSecretKey())
	srv, err := global.Start(context.Background(), global.Config{
		Listen: "127.0.0.1:0", Store: storetest.Open(t, "sqlite"), AdminToken: adminToken, SecretKey: key,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	admin := api.NewClient(srv.URL(), adminToken)
	open := api.RegionOpen
	for _, r := range []string{"fra", "was", "sin"} {
		if _, err := admin.CreateRegion(t.Context(), api.CreateRegionRequest{ID: r, URL: "https://" + r + ".example:7800"}, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.UpdateRegion(t.Context(), r, api.UpdateRegionRequest{Status: &open}); err != nil {
			t.Fatal(err)
		}
	}

	var lines []string
	for _, block := range readmeBlocks(t)["The global control plane on its own"] {
		if len(block) > 0 && strings.Contains(strings.Join(block, "\n"), "curl ") {
			lines = block
		}
	}
	if len(lines) < 5 {
		t.Fatalf("the README's curl block was not found: %q", lines)
	}
	env := append(os.Environ(), "MERIDIAN_API="+srv.URL(), "ADMIN="+adminToken)
	prelude := ""
	ran, depID := 0, ""
	for _, line := range lines {
		if !strings.HasPrefix(line, "curl ") {
			prelude += line + "\n" // assignments such as JSON=...
			continue
		}
		if strings.Contains(line, "dep_...") {
			if depID == "" {
				t.Fatalf("%q: no deployment was created before it", line)
			}
			line = strings.ReplaceAll(line, "dep_...", depID)
		}
		cmd := exec.CommandContext(t.Context(), "bash", "-c", prelude+line)
		cmd.Dir = ".."
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		var body map[string]any
		if err := json.Unmarshal(out, &body); err != nil {
			t.Fatalf("%q: not a JSON answer: %.300s", line, out)
		}
		if _, isErr := body["code"]; isErr {
			t.Fatalf("%q answered an error: %s", line, out)
		}
		if tok, ok := body["token"].(string); ok && strings.HasPrefix(tok, "mrd_") {
			env = append(env, "MERIDIAN_TOKEN="+tok)
		}
		if id, ok := body["id"].(string); ok && strings.HasPrefix(id, "dep_") {
			depID = id
		}
		ran++
	}
	if ran < 6 {
		t.Fatalf("ran %d curl examples, want every one (6)", ran)
	}
}
