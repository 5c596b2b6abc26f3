package cli

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/pki"
)

// PKI layout under a directory:
//
//	root/                 the installation's root CA (ca.pem, ca-key.pem, root.pem)
//	regions/<id>/         a region's intermediate CA
//	global/               the global control plane's client certificate (global.pem, global-key.pem, root.pem)
//	edges/<location>/     an edge's certificate (edge.pem, edge-key.pem, root.pem)
func pkiEdgeDir(dir, location string) string { return filepath.Join(dir, "edges", location) }
func pkiRootDir(dir string) string           { return filepath.Join(dir, "root") }
func pkiRegionDir(dir, region string) string { return filepath.Join(dir, "regions", region) }
func pkiGlobalDir(dir string) string         { return filepath.Join(dir, "global") }

const (
	rootTTL         = 10 * 365 * 24 * time.Hour
	intermediateTTL = 5 * 365 * 24 * time.Hour
	globalLeafTTL   = 365 * 24 * time.Hour
	edgeLeafTTL     = 365 * 24 * time.Hour
)

// pkiInit creates the root CA in dir.
func pkiInit(dir, trustDomain string) (*pki.CA, error) {
	root, err := pki.NewRoot(trustDomain, time.Now(), rootTTL)
	if err != nil {
		return nil, err
	}
	if err := pki.SaveCA(pkiRootDir(dir), root); err != nil {
		return nil, err
	}
	return root, nil
}

// pkiRegion creates a region's intermediate CA in dir.
func pkiRegion(dir string, root *pki.CA, region string) (*pki.CA, error) {
	ca, err := root.NewIntermediate(region, time.Now(), intermediateTTL)
	if err != nil {
		return nil, err
	}
	if err := pki.SaveCA(pkiRegionDir(dir, region), ca); err != nil {
		return nil, err
	}
	return ca, nil
}

// pkiGlobal issues the global control plane's certificate in dir: its
// client certificate for calling regions and, when hosts (DNS names or IP
// addresses) are given, the API's HTTPS certificate for them too.
func pkiGlobal(dir string, root *pki.CA, hosts []string) (*pki.Leaf, error) {
	req := pki.LeafRequest{ID: pki.GlobalID(root.TrustDomain), Usage: pki.UsageClient, TTL: globalLeafTTL, Now: time.Now()}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			req.IPs = append(req.IPs, ip)
		} else {
			req.DNSNames = append(req.DNSNames, h)
		}
	}
	if len(hosts) > 0 {
		req.Usage = pki.UsageBoth
	}
	leaf, err := root.Issue(req)
	if err != nil {
		return nil, err
	}
	gdir := pkiGlobalDir(dir)
	if err := pki.SaveLeaf(gdir, "global", leaf); err != nil {
		return nil, err
	}
	if err := pki.SaveRoots(filepath.Join(gdir, pki.RootFile), root.Root); err != nil {
		return nil, err
	}
	return leaf, nil
}

func newPKICmd(g *globals) *cobra.Command {
	var dir, td, region string
	initCmd := &cobra.Command{Use: "init --dir DIR [--trust-domain TD]", Short: "Create the installation's root CA", Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := pkiInit(dir, td); err != nil {
				return fmt.Errorf("pki init: %w", err)
			}
			fmt.Fprintf(g.stdout, "root CA for %s in %s\n", td, pkiRootDir(dir))
			return nil
		}}
	initCmd.Flags().StringVar(&td, "trust-domain", "meridian.local", "the installation's trust domain")
	regionCmd := &cobra.Command{Use: "region --dir DIR --region ID", Short: "Create a region's intermediate CA", Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if region == "" {
				return usagef("--region is required")
			}
			root, err := pki.LoadCA(pkiRootDir(dir))
			if err != nil {
				return fmt.Errorf("--dir: %w", err)
			}
			if _, err := pkiRegion(dir, root, region); err != nil {
				return fmt.Errorf("--region: %w", err)
			}
			fmt.Fprintf(g.stdout, "intermediate CA for region %s in %s\n", region, pkiRegionDir(dir, region))
			return nil
		}}
	regionCmd.Flags().StringVar(&region, "region", "", "region id")
	var hosts []string
	globalCmd := &cobra.Command{Use: "global --dir DIR [--hosts NAME,...]",
		Short: "Issue the global control plane's certificate: its client certificate for calling regions, and with --hosts its HTTPS certificate",
		Long: `Issue the global control plane's certificate into DIR/global. It is the
client certificate global calls the regions with; with --hosts (the DNS
names and IP addresses clients reach the API by) it is also the API's HTTPS
certificate, served by ` + "`meridian global --pki DIR --tls-from-pki`" + `. Running it
again replaces the certificate; a running global picks it up (on SIGHUP, or
within --tls-reload).`,
		Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			for i, h := range hosts {
				if h == "" {
					return usagef("--hosts: entry %d is empty", i+1)
				}
			}
			root, err := pki.LoadCA(pkiRootDir(dir))
			if err != nil {
				return fmt.Errorf("--dir: %w", err)
			}
			if _, err := pkiGlobal(dir, root, hosts); err != nil {
				return fmt.Errorf("--hosts: %w", err)
			}
			if len(hosts) > 0 {
				fmt.Fprintf(g.stdout, "global certificate (client of the regions, HTTPS for %s) in %s\n", strings.Join(hosts, ", "), pkiGlobalDir(dir))
			} else {
				fmt.Fprintf(g.stdout, "global client certificate in %s\n", pkiGlobalDir(dir))
			}
			return nil
		}}
	globalCmd.Flags().StringSliceVar(&hosts, "hosts", nil, "DNS names and IP addresses of the API (comma-separated or repeated): the certificate then serves HTTPS for them")
	var location, domain string
	edgeCmd := &cobra.Command{Use: "edge --dir DIR --location LOC [--domain D]",
		Short: "Issue an edge location's certificate (for the regions' feeds and HTTPS of *.<domain>)", Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if location == "" {
				return usagef("--location is required")
			}
			root, err := pki.LoadCA(pkiRootDir(dir))
			if err != nil {
				return fmt.Errorf("--dir: %w", err)
			}
			if _, err := edge.IssueIdentity(root, pkiEdgeDir(dir, location), location, domain, time.Now(), edgeLeafTTL); err != nil {
				return fmt.Errorf("--location %s: %w", location, err)
			}
			fmt.Fprintf(g.stdout, "edge certificate for %s (*.%s) in %s\n", location, domain, pkiEdgeDir(dir, location))
			return nil
		}}
	edgeCmd.Flags().StringVar(&location, "location", "", "edge location id, e.g. par")
	edgeCmd.Flags().StringVar(&domain, "domain", "meridian.localhost", "the apps' domain the certificate names (*.<domain>)")
	for _, c := range []*cobra.Command{initCmd, regionCmd, globalCmd, edgeCmd} {
		c.Flags().StringVar(&dir, "dir", "pki", "PKI directory")
	}
	return group("pki", "Create the installation's certificate authorities and certificates", initCmd, regionCmd, globalCmd, edgeCmd)
}
