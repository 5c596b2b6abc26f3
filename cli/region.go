package cli

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/region"
	"github.com/meridian-run/meridian/regionapi"
)

func newRegionCmd(g *globals) *cobra.Command {
	var (
		id, name, dataDir, listen, caDir, clientURL, peerURL, initialCluster, clusterState, logLevel, logFormat string
		endpoints                                                                                               []string
		leaseTTL                                                                                                time.Duration
		images                                                                                                  region.ImageCacheConfig
		imageCacheMB                                                                                            int64
	)
	cmd := &cobra.Command{
		Use:   "region --id ID --ca-dir DIR",
		Short: "Run a regional control plane server (embedded etcd by default)",
		Long: `Run one server of a region. Alone it embeds a single etcd member; three
servers form one embedded etcd cluster with --name, --etcd-peer-url and
--initial-cluster (as etcd's flags); --etcd-endpoints points at an external
cluster instead.`,
		Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat, os.Stderr)
			if err != nil {
				return err
			}
			if id == "" {
				return usagef("--id is required")
			}
			if caDir == "" {
				return usagef("--ca-dir (the region's intermediate CA, from `meridian pki region`) is required")
			}
			ca, err := pki.LoadCA(caDir)
			if err != nil {
				return fmt.Errorf("--ca-dir: %w", err)
			}
			if dataDir == "" {
				dataDir = filepath.Join(".meridian", "region-"+id)
			}
			if imageCacheMB <= 0 {
				return usagef("--image-cache-max-mb %d: want a positive size in MiB", imageCacheMB)
			}
			images.MaxBytes = imageCacheMB << 20
			s, err := region.Start(cmd.Context(), region.Config{
				Region: id, DataDir: dataDir, Listen: listen, CA: ca, LeaseTTL: leaseTTL, Logger: log, Images: images,
				Etcd: region.EtcdConfig{Endpoints: endpoints, Name: name, ClientURL: clientURL, PeerURL: peerURL,
					InitialCluster: initialCluster, ClusterState: clusterState},
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "meridian region %s: API at %s\n", id, s.URL())
			select {
			case <-cmd.Context().Done():
				log.Info("shutting down")
				return s.Close()
			case err := <-s.Err():
				s.Close()
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "region id, e.g. fra")
	f.StringVar(&name, "name", "", "this server's etcd member name (default: the region id)")
	f.StringVar(&dataDir, "data-dir", "", "data directory (default .meridian/region-ID)")
	f.StringVar(&listen, "listen", "127.0.0.1:7800", "API listen address (mutual TLS)")
	f.StringVar(&caDir, "ca-dir", "", "directory of the region's intermediate CA")
	f.StringVar(&clientURL, "etcd-client-url", "https://127.0.0.1:2379", "embedded etcd client URL")
	f.StringVar(&peerURL, "etcd-peer-url", "https://127.0.0.1:2380", "embedded etcd peer URL")
	f.StringVar(&initialCluster, "initial-cluster", "", "embedded etcd members as name=peerURL,... (default: this member alone)")
	f.StringVar(&clusterState, "initial-cluster-state", "new", "new or existing")
	f.StringSliceVar(&endpoints, "etcd-endpoints", nil, "external etcd endpoints (nothing is embedded); the region authenticates with its server certificate; the cluster must trust only the region's intermediate (--trusted-ca-file) and admit only its servers (--client-cert-allowed-cn 'server <region>'), or use etcd RBAC")
	f.DurationVar(&leaseTTL, "lease-ttl", 5*time.Second, "machines' heartbeat lease")
	f.BoolVar(&images.Disabled, "no-image-cache", false, "serve no image cache: the region's agents must then pull from registries themselves (agent --image-direct)")
	f.StringVar(&images.Dir, "image-cache-dir", "", "where the image cache keeps blobs (default DATA-DIR/images)")
	f.Int64Var(&imageCacheMB, "image-cache-max-mb", region.DefaultImageCacheMaxBytes>>20, "cap of the image cache in MiB: least recently used blobs go first, those of no current service before the others; a larger image is refused")
	f.StringArrayVar(&images.Insecure, "insecure-registry", nil, "registry host[:port] the image cache may reach over plain HTTP (repeatable; loopback registries always may)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	cmd.AddCommand(newJoinTokenCmd(g))
	return cmd
}

// globalRegionClient returns an HTTP client with the global control
// plane's certificate from a PKI directory, trusting only region servers.
func globalRegionClient(pkiDir string) (*http.Client, error) {
	l, err := loadPKILeaf(pkiGlobalDir(pkiDir), "global")
	if err != nil {
		return nil, err
	}
	return l.regionClient(), nil
}

func newJoinTokenCmd(g *globals) *cobra.Command {
	var url, pkiDir string
	var ttl time.Duration
	var uses int
	cmd := &cobra.Command{Use: "join-token --url REGION_URL --pki DIR", Short: "Create a join token for machines of a region", Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if url == "" {
				return usagef("--url is required")
			}
			hc, err := globalRegionClient(pkiDir)
			if err != nil {
				return fmt.Errorf("--pki: %w", err)
			}
			t, err := regionapi.NewClient(url, hc).CreateJoinToken(cmd.Context(), regionapi.JoinTokenRequest{TTL: ttl.String(), Uses: uses})
			if err != nil {
				return err
			}
			if g.output == "table" {
				fmt.Fprintln(g.stdout, t.Value)
				return nil
			}
			return printValue(g, t)
		}}
	cmd.Flags().StringVar(&url, "url", "", "the region's API URL")
	cmd.Flags().StringVar(&pkiDir, "pki", "pki", "PKI directory holding the global certificate")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	cmd.Flags().IntVar(&uses, "uses", 1, "how many machines may join with it (0: unlimited)")
	return cmd
}
