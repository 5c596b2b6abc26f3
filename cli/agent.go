package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/agent"
	"github.com/meridian-run/meridian/pki"
)

func newAgentCmd(g *globals) *cobra.Command {
	var (
		cfg                                           agent.Config
		caFile, logLevel, logFormat, joinTokenFileArg string
		meshNetArg                                    string
		meshPort, meshDNSPort                         int
		meshUpstreams                                 []string
		meshUnverified                                bool
		images                                        agent.ImagesConfig
	)
	cmd := &cobra.Command{
		Use:   "agent --region ID --region-url URL --join-token TOKEN --ca-file ROOT.pem --datacenter DC --name NAME",
		Short: "Run the machine agent: join a region, run the instances it assigns, report them",
		Args:  args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat, os.Stderr)
			if err != nil {
				return err
			}
			for flag, v := range map[string]string{"--region": cfg.Region, "--datacenter": cfg.Datacenter, "--name": cfg.Name, "--ca-file": caFile} {
				if v == "" {
					return usagef("%s is required", flag)
				}
			}
			if len(cfg.RegionURLs) == 0 {
				return usagef("--region-url is required (repeat it for each region server)")
			}
			if cfg.JoinToken == "" {
				cfg.JoinToken = os.Getenv("MERIDIAN_JOIN_TOKEN")
			}
			if cfg.JoinToken == "" && joinTokenFileArg != "" {
				b, err := os.ReadFile(joinTokenFileArg)
				if err != nil {
					return fmt.Errorf("--join-token-file: %w", err)
				}
				cfg.JoinToken = string(trimNL(b))
			}
			if cfg.Roots, err = pki.LoadRoots(caFile); err != nil {
				return fmt.Errorf("--ca-file: %w", err)
			}
			cfg.Logger = log
			if meshNetArg != "off" {
				cfg.Mesh = &agent.MeshConfig{Net: meshNetArg, Port: meshPort, DNSPort: meshDNSPort, Upstreams: meshUpstreams,
					UnverifiedCallers: meshUnverified}
			}
			if cfg.ShimPath == "" {
				cfg.ShimPath = defaultShim()
			}
			if images.Mirror != "" && images.Direct {
				return usagef("--image-mirror and --image-direct exclude each other")
			}
			cfg.Images = &images
			a, err := agent.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "meridian agent %s (%s/%s) running\n", cfg.Name, cfg.Region, cfg.Datacenter)
			select {
			case <-cmd.Context().Done():
				log.Info("shutting down; instances keep running and are re-adopted on restart")
				return a.Close()
			case err := <-a.Err():
				a.Close()
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Region, "region", "", "the machine's region id")
	f.StringArrayVar(&cfg.RegionURLs, "region-url", nil, "a region server's API URL (repeatable)")
	f.StringVar(&cfg.JoinToken, "join-token", "", "join token (first start only; default $MERIDIAN_JOIN_TOKEN)")
	f.StringVar(&joinTokenFileArg, "join-token-file", "", "read the join token from a file")
	f.StringVar(&caFile, "ca-file", "", "the installation's root certificate (PEM)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "meridian.local", "the installation's trust domain")
	f.StringVar(&cfg.Datacenter, "datacenter", "", "the machine's data center, e.g. fra1")
	f.StringVar(&cfg.Name, "name", "", "the machine's id in the region")
	f.IntVar(&cfg.MilliCPU, "millicpu", 0, "CPU offered to instances in millicores (default: 1000 per core)")
	f.IntVar(&cfg.MemoryMB, "memory-mb", 0, "memory offered to instances in MB (default: the machine's total)")
	f.StringVar(&cfg.Address, "address", "127.0.0.1", "IP address instances listen on and are reached at")
	f.StringVar(&cfg.DataDir, "data-dir", ".meridian/agent", "data directory (identity, instance state, logs)")
	f.IntVar(&cfg.PortMin, "port-min", agent.DefaultPortMin, "lowest host port assigned to instances")
	f.IntVar(&cfg.PortMax, "port-max", agent.DefaultPortMax, "highest host port assigned to instances")
	f.StringVar(&cfg.ShimPath, "shim", "", "instance shim binary (default: meridian-shim next to this binary, else this binary)")
	f.StringVar(&meshNetArg, "mesh-net", agent.DefaultMeshNet, "loopback /16 for the mesh's DNS servers and service addresses (distinct per agent on one host), or off")
	f.IntVar(&meshPort, "mesh-port", agent.DefaultMeshPort, "node proxy port (mutual TLS) on --address; 0 picks a free one")
	f.IntVar(&meshDNSPort, "mesh-dns-port", agent.DefaultMeshDNSPort, "port of the mesh's DNS servers (instances' resolv.conf needs 53)")
	f.Uint32Var(&cfg.InstanceUIDBase, "instance-uid-base", 0, "run each service's instances as its own unprivileged user, uid and gid BASE+1, BASE+2, ... (0: as the agent's user); their programs must be readable and executable by those users")
	f.BoolVar(&meshUnverified, "mesh-unverified-callers", false, "carry connections to a service address from any local process, not only from that service's instances (machines that run nothing else)")
	f.StringVar(&images.Mirror, "image-mirror", "", "registry host:port to pull every image through (default: the region's image cache, over the region's mutual TLS)")
	f.BoolVar(&images.Direct, "image-direct", false, "pull each image from its own registry, anonymously (for a region without an image cache)")
	f.StringArrayVar(&images.Insecure, "insecure-registry", nil, "registry host[:port] that may be reached over plain HTTP (repeatable; loopback registries always may)")
	f.StringArrayVar(&meshUpstreams, "mesh-upstream", nil, "resolver (ip:port) for names outside .internal (repeatable; default: the host's /etc/resolv.conf)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// defaultShim is the small meridian-shim binary next to this executable
// when it exists: every instance runs one shim, and the small binary keeps
// that to a few MB (re-executing meridian itself costs its whole package
// initialisation per instance). Empty means re-executing meridian.
func defaultShim() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), "meridian-shim")
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return p
	}
	return ""
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
