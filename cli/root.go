// Package cli is the meridian command line: the component subcommands
// (global, region, agent, edge, dev), the operator tools (pki, join
// tokens, edge tokens) and the client commands that talk to the global
// API. Exit codes: 0 success, 1 a user error (invalid
// input, not found, refused), 2 a usage error.
package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/dev"
	"github.com/meridian-run/meridian/pki"
)

// UsageError is a mistake in how the command was called: exit code 2.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

func usagef(format string, args ...any) error { return UsageError{fmt.Errorf(format, args...)} }

// globals are the flags every client command shares.
type globals struct {
	api, token, output, caFile string
	stdout, stderr             io.Writer
	// devRegistry is the registry of the `meridian dev` this process
	// runs, for ${MERIDIAN_DEV_REGISTRY} in definitions.
	devRegistry string
}

// devStateDir is where the CLI looks for a running `meridian dev`.
func devStateDir() string {
	if d := os.Getenv("MERIDIAN_STATE_DIR"); d != "" {
		return d
	}
	return filepath.Join(".meridian", "dev")
}

// client returns an API client for organization calls: the API from --api,
// else MERIDIAN_API, else a running `meridian dev`'s dev.json (in
// $MERIDIAN_STATE_DIR or .meridian/dev), else http://127.0.0.1:7700; the
// token from --token, else MERIDIAN_TOKEN, else dev.json. An https:// API
// is verified against the CAs of --ca-file (else MERIDIAN_CA_FILE), else
// the system's.
func (g *globals) client() (*api.Client, error) {
	return g.clientWith(os.Getenv("MERIDIAN_TOKEN"), func(i dev.Info) string { return i.Token })
}

// adminClient is client for operator calls: the token from --token, else
// MERIDIAN_ADMIN_TOKEN, else MERIDIAN_TOKEN, else dev.json's admin token.
func (g *globals) adminClient() (*api.Client, error) {
	env := os.Getenv("MERIDIAN_ADMIN_TOKEN")
	if env == "" {
		env = os.Getenv("MERIDIAN_TOKEN")
	}
	return g.clientWith(env, func(i dev.Info) string { return i.AdminToken })
}

func (g *globals) clientWith(envToken string, devToken func(dev.Info) string) (*api.Client, error) {
	base, tok := g.api, g.token
	if base == "" {
		base = os.Getenv("MERIDIAN_API")
	}
	if tok == "" {
		tok = envToken
	}
	if base == "" || tok == "" {
		if info, err := dev.ReadInfo(devStateDir()); err == nil {
			if base == "" {
				base = info.API
			}
			if tok == "" {
				tok = devToken(info)
			}
		}
	}
	if base == "" {
		base = "http://127.0.0.1:7700"
	}
	if tok == "" {
		return nil, usagef("no API token: pass --token, set MERIDIAN_TOKEN, or run `meridian dev` here")
	}
	c := api.NewClient(base, tok)
	caFile, flag := g.caFile, "--ca-file"
	if caFile == "" {
		caFile, flag = os.Getenv("MERIDIAN_CA_FILE"), "MERIDIAN_CA_FILE"
	}
	if caFile != "" {
		roots, err := pki.LoadRoots(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		c.HTTP.Transport = tr
	}
	return c, nil
}

// NewRoot builds the meridian command tree writing to stdout and stderr.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "meridian",
		Short:         "Meridian: one deployment definition, rolled out to many regions",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch g.output {
			case "table", "json", "yaml":
				return nil
			}
			return usagef("--output %q: want json, yaml or table", g.output)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return UsageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.api, "api", "", "global API URL (default $MERIDIAN_API, else http://127.0.0.1:7700)")
	pf.StringVar(&g.token, "token", "", "API token (default $MERIDIAN_TOKEN)")
	pf.StringVar(&g.caFile, "ca-file", "", "PEM file of the CA certificates to trust for an https:// API instead of the system's, e.g. the installation's pki/root/root.pem (default $MERIDIAN_CA_FILE)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format of read commands: json, yaml or table")
	root.AddCommand(
		newGlobalCmd(g),
		newValidateCmd(g),
		newRenderCmd(g),
		newOrgsCmd(g),
		newTokensCmd(g),
		newEdgeTokensCmd(g),
		newAppsCmd(g),
		newDeployCmd(g),
		newServicesCmd(g),
		newDeploymentsCmd(g),
		newSecretsCmd(g),
		newRegionsCmd(g),
		newPKICmd(g),
		newRegionCmd(g),
		newAgentCmd(g),
		newEdgeCmd(g),
		newDevCmd(g),
		newInstancesCmd(g),
		newSmokeCmd(g),
		newDevRegistryCmd(),
	)
	return root
}

// Main runs the command line with args and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "error:", err)
	return ExitCode(err)
}

// ExitCode maps an error to the exit code contract: 2 for usage errors, 1
// for everything else.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ue UsageError
	if errors.As(err, &ue) {
		return 2
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "unknown command") || strings.HasPrefix(msg, "unknown flag") ||
		strings.Contains(msg, "arg(s), received") || strings.HasPrefix(msg, "required flag") {
		return 2
	}
	return 1
}

// args checks the number of positional arguments, as a usage error.
func args(n int, names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if len(a) != n {
			return usagef("%s takes %d argument(s) (%s), got %d", cmd.CommandPath(), n, strings.Join(names, ", "), len(a))
		}
		return nil
	}
}

// column is one table column: a header and how to get its cell.
type column[T any] struct {
	header string
	cell   func(T) string
}

// printList prints items as the chosen output.
func printList[T any](g *globals, items []T, cols []column[T]) error {
	if items == nil {
		items = []T{}
	}
	if g.output != "table" {
		return printValue(g, items)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	hs := make([]string, len(cols))
	for i, c := range cols {
		hs[i] = c.header
	}
	fmt.Fprintln(tw, strings.Join(hs, "\t"))
	for _, it := range items {
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = c.cell(it)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// printOne prints one item: as a one-row table, or as JSON or YAML.
func printOne[T any](g *globals, item T, cols []column[T]) error {
	if g.output != "table" {
		return printValue(g, item)
	}
	return printList(g, []T{item}, cols)
}

// printValue prints v as JSON or YAML (YAML with the JSON field names).
func printValue(g *globals, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if g.output == "yaml" {
		var generic any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if err := dec.Decode(&generic); err != nil {
			return err
		}
		y, err := yaml.Marshal(jsonNumbers(generic))
		if err != nil {
			return err
		}
		_, err = g.stdout.Write(y)
		return err
	}
	_, err = fmt.Fprintln(g.stdout, string(b))
	return err
}

// jsonNumbers turns json.Number values into int64 or float64 for YAML.
func jsonNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = jsonNumbers(e)
		}
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	}
	return v
}
