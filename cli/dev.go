package cli

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/dev"
)

func newDevCmd(g *globals) *cobra.Command {
	var stateDir, topology, apiListen, registry string
	var deploys []string
	cmd := &cobra.Command{
		Use:   "dev [--state-dir DIR] [--topology FILE]",
		Short: "Run a whole installation on this machine: global, regions and agents as separate processes",
		Long: `Start the global control plane, every region of the topology (default:
examples/dev-topology.yaml, built in) and their agents as separate processes,
with PKI and tokens generated in the state directory. DIR/dev.json lists
every component's address and PID once all are up; the CLI finds the
installation from it. Ctrl-C stops everything.`,
		Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			topo := dev.DefaultTopology()
			if topology != "" {
				var err error
				if topo, err = dev.LoadTopology(topology); err != nil {
					return fmt.Errorf("--topology: %w", err)
				}
			}
			start := time.Now()
			env, err := dev.Start(cmd.Context(), dev.Config{StateDir: stateDir, Topology: topo, APIListen: apiListen, Registry: registry,
				Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if err != nil {
				return err
			}
			defer env.Close()
			info := env.Info()
			regions, agents := 0, 0
			var edges []dev.Component
			for _, c := range info.Components {
				switch c.Role {
				case "region":
					regions++
				case "agent":
					agents++
				case "edge":
					edges = append(edges, c)
				}
			}
			edgeLines := ""
			for _, e := range edges {
				edgeLines += fmt.Sprintf("  edge %s: %s %s   (apps at http://<app>-%s.%s:%s/)\n", e.Location, e.Address, e.TLSAddress,
					info.Organization, info.Domain, e.Address[strings.LastIndexByte(e.Address, ':')+1:])
			}
			fmt.Fprintf(g.stdout, `meridian dev is up in %.1fs: global, %d regions, %d machines, %d edges (logs in %s/logs)

  API:    %s
  token:  %s   (organization %q; the CLI reads it from %s/dev.json)
%s
%s
Try:
  meridian deploy -f examples/hello/meridian.yaml --wait
  meridian deploy -f examples/hello-image/meridian.yaml --wait   (the demo app as an image)
  meridian instances ls
  meridian regions ls

Ctrl-C stops everything.
`, time.Since(start).Seconds(), regions, agents, len(edges), info.StateDir, info.API, info.Token, info.Organization, info.StateDir, edgeLines, registryLine(info))
			c := api.NewClient(info.API, info.Token)
			g.devRegistry = info.Registry
			for _, f := range deploys {
				fmt.Fprintf(g.stdout, "deploying %s\n", f)
				if err := deployFile(cmd.Context(), g, c, f, "", "", true, 5*time.Minute); err != nil {
					fmt.Fprintf(g.stderr, "error: %v\n", err)
				}
			}
			if len(deploys) > 0 {
				if list, err := c.ListApps(cmd.Context(), api.ListOptions{}); err == nil {
					for _, a := range list.Items {
						for _, e := range edges {
							fmt.Fprintf(g.stdout, "app %s through edge %s: curl http://%s:%s/   (or curl --cacert %s https://%s:%s/)\n",
								a.Name, e.Location, a.Host, e.Address[strings.LastIndexByte(e.Address, ':')+1:],
								filepath.Join(info.PKIDir, "root", "root.pem"), a.Host, e.TLSAddress[strings.LastIndexByte(e.TLSAddress, ':')+1:])
						}
					}
				}
				fmt.Fprintln(g.stdout, "\nmeridian instances ls   # where each instance runs, its state and host port")
			}
			<-cmd.Context().Done()
			fmt.Fprintln(g.stdout, "stopping...")
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", devStateDir(), "directory for PKI, tokens, data, logs and dev.json")
	cmd.Flags().StringVar(&topology, "topology", "", "topology file (default: examples/dev-topology.yaml, built in)")
	cmd.Flags().StringArrayVar(&deploys, "deploy", nil, "once up, deploy this definition file and follow its rollout (repeatable)")
	cmd.Flags().StringVar(&apiListen, "api-listen", "127.0.0.1:7700", "global API address (a free port is taken when this one is busy)")
	cmd.Flags().StringVar(&registry, "registry", "", "the local registry: docker-registry (Debian's) or builtin (go-containerregistry's); default docker-registry when installed")
	return cmd
}

// registryLine says where the local registry is and what it holds.
func registryLine(info dev.Info) string {
	switch {
	case info.Registry == "":
		return ""
	case info.DemoImage == "":
		return fmt.Sprintf("  registry: %s   (no demo image: see the warning above)\n", info.Registry)
	}
	return fmt.Sprintf("  registry: %s   (demo image %s; definitions say ${MERIDIAN_DEV_REGISTRY})\n", info.Registry, info.DemoImage)
}

// newDevRegistryCmd serves `meridian dev`'s built-in registry
// (go-containerregistry's), when Debian's docker-registry is not
// installed: a separate process like every other component.
func newDevRegistryCmd() *cobra.Command {
	var listen, dir string
	cmd := &cobra.Command{Use: "dev-registry --listen ADDR --dir DIR", Short: "Serve meridian dev's built-in image registry", Hidden: true, Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" || dir == "" {
				return usagef("--listen and --dir are required")
			}
			fmt.Fprintf(cmd.OutOrStderr(), "meridian dev-registry: serving on %s, blobs in %s\n", listen, dir)
			return dev.ServeRegistry(cmd.Context(), listen, dir, os.Stderr)
		}}
	cmd.Flags().StringVar(&listen, "listen", "", "address to serve on")
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the blobs")
	return cmd
}
