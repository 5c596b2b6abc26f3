package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/dev"
)

// DevRegistryVar stands in a definition for the local registry of
// `meridian dev` (examples/hello-image names its image with it).
const DevRegistryVar = "${MERIDIAN_DEV_REGISTRY}"

// readDefinitionFile reads a definition file ("-" is standard input),
// bounded and stopped by ctx (definition.ReadDocument), and replaces
// ${MERIDIAN_DEV_REGISTRY} in it with the local registry of `meridian
// dev` (see devRegistry). It is the only substitution: definitions are
// not templates.
func readDefinitionFile(ctx context.Context, g *globals, path string) ([]byte, error) {
	if path == "" {
		return nil, usagef("-f/--file is required")
	}
	b, err := definition.ReadDocument(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("-f %s: %w", path, err)
	}
	if !bytes.Contains(b, []byte(DevRegistryVar)) {
		return b, nil
	}
	reg := g.devRegistry
	if reg == "" {
		reg = devRegistry()
	}
	if reg == "" {
		return nil, fmt.Errorf("-f %s: %s names the registry of a running `meridian dev`, and none is known: set MERIDIAN_DEV_REGISTRY, or start `meridian dev` (its dev.json in %s says it)", path, DevRegistryVar, devStateDir())
	}
	return bytes.ReplaceAll(b, []byte(DevRegistryVar), []byte(reg)), nil
}

// devRegistry is the local registry of `meridian dev` (host:port):
// $MERIDIAN_DEV_REGISTRY, else the registry in the running dev's
// dev.json, else empty.
func devRegistry() string {
	if r := os.Getenv("MERIDIAN_DEV_REGISTRY"); r != "" {
		return r
	}
	if info, err := dev.ReadInfo(devStateDir()); err == nil {
		return info.Registry
	}
	return ""
}

// specOptions loads the instance type catalogue named by --instance-types.
func specOptions(ctx context.Context, catalogue string) (definition.Options, error) {
	opts := definition.Options{Catalogue: definition.DefaultCatalogue()}
	if catalogue != "" {
		c, err := definition.LoadCatalogue(ctx, catalogue)
		if err != nil {
			return opts, fmt.Errorf("--instance-types: %w", err)
		}
		opts.Catalogue = c
	}
	return opts, nil
}

// definitionErrors prints a definition's field errors one per line.
type definitionErrors struct{ err error }

func (e definitionErrors) Error() string {
	var fe definition.Errors
	if errors.As(e.err, &fe) {
		return fmt.Sprintf("invalid deployment definition (%d errors):\n%s", len(fe), fe.Error())
	}
	return "invalid deployment definition: " + e.err.Error()
}

// loadDefinition reads, parses and validates a definition file.
func loadDefinition(ctx context.Context, g *globals, file, catalogue string) (api.Definition, definition.Options, error) {
	doc, err := readDefinitionFile(ctx, g, file)
	if err != nil {
		return api.Definition{}, definition.Options{}, err
	}
	opts, err := specOptions(ctx, catalogue)
	if err != nil {
		return api.Definition{}, opts, err
	}
	def, err := definition.Parse(doc)
	if err == nil {
		err = definition.Validate(def, opts)
	}
	if err != nil {
		return def, opts, definitionErrors{err}
	}
	return def, opts, nil
}

func newValidateCmd(g *globals) *cobra.Command {
	var file, catalogue string
	cmd := &cobra.Command{
		Use:   "validate -f FILE",
		Short: "Check a deployment definition (YAML or JSON) without sending it",
		Args:  args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			def, _, err := loadDefinition(cmd.Context(), g, file, catalogue)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: valid (%d regions)\n", file, len(def.Regions))
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "definition file, or - for standard input")
	cmd.Flags().StringVar(&catalogue, "instance-types", "", "YAML instance type catalogue (default: the built-in one)")
	return cmd
}

func newRenderCmd(g *globals) *cobra.Command {
	var file, catalogue, region string
	cmd := &cobra.Command{
		Use:   "render -f FILE --region R",
		Short: "Print the regional definition derived from a definition for one region",
		Args:  args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if region == "" {
				return usagef("--region is required")
			}
			def, opts, err := loadDefinition(cmd.Context(), g, file, catalogue)
			if err != nil {
				return err
			}
			rd, err := definition.DeriveRegion(def, region, opts)
			if err != nil {
				return fmt.Errorf("--region: %w", err)
			}
			if g.output == "table" {
				g2 := *g
				g2.output = "json"
				return printValue(&g2, rd)
			}
			return printValue(g, rd)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "definition file, or - for standard input")
	cmd.Flags().StringVar(&region, "region", "", "region to render")
	cmd.Flags().StringVar(&catalogue, "instance-types", "", "YAML instance type catalogue (default: the built-in one)")
	return cmd
}
