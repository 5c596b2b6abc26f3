package region

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/meridian-run/meridian/pki"
)

// EtcdConfig says where the region's state lives: an embedded etcd member
// (the default) or an external cluster.
type EtcdConfig struct {
	// Endpoints of an external etcd cluster. When set, nothing is embedded.
	Endpoints []string
	// Name is this server's member name (default: the region id).
	Name string
	// ClientURL and PeerURL are the embedded member's URLs, e.g.
	// "https://127.0.0.1:2379" and "https://127.0.0.1:2380".
	ClientURL, PeerURL string
	// InitialCluster lists every member as name=peerURL, comma separated,
	// as etcd's --initial-cluster (default: this member alone).
	InitialCluster string
	// ClusterState is "new" (default) or "existing", as etcd's
	// --initial-cluster-state.
	ClusterState string
}

// etcdTLS writes the server's leaf and the region's intermediate to files
// etcd reads (it reloads them on each new connection) and returns etcd's
// TLS settings for the client and peer ports: only this region's servers
// get in. The region's intermediate is the only trusted CA, so nothing
// another region's CA or the root issued verifies (another region's
// servers and machines, global, edges), and of what this intermediate
// issues (servers, machines, workloads) only the servers' common name is
// allowed.
func (s *Server) etcdTLS() (transport.TLSInfo, error) {
	dir := filepath.Join(s.cfg.DataDir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return transport.TLSInfo{}, err
	}
	leaf := s.certs.Leaf()
	keyPEM, err := pki.EncodeKeyPEM(leaf.Key)
	if err != nil {
		return transport.TLSInfo{}, err
	}
	files := map[string][]byte{
		"server.pem":     leaf.ChainPEM(),
		"server-key.pem": keyPEM,
		"ca.pem":         pki.EncodeCertsPEM(s.cfg.CA.Cert.Raw),
	}
	for name, data := range files {
		if err := pki.WriteFileAtomic(filepath.Join(dir, name), data, 0o600); err != nil {
			return transport.TLSInfo{}, err
		}
	}
	// Written by earlier versions, which trusted the whole installation.
	os.Remove(filepath.Join(dir, "root.pem"))
	return transport.TLSInfo{
		CertFile:       filepath.Join(dir, "server.pem"),
		KeyFile:        filepath.Join(dir, "server-key.pem"),
		TrustedCAFile:  filepath.Join(dir, "ca.pem"),
		ClientCertAuth: true,
		AllowedCNs:     []string{pki.CommonName(pki.ServerID(s.cfg.CA.TrustDomain, s.cfg.Region))},
		MinVersion:     tls.VersionTLS13,
	}, nil
}

func parseURL(flag, raw string) (url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return url.URL{}, fmt.Errorf("%s %q: not a URL", flag, raw)
	}
	if u.Scheme != "https" {
		return url.URL{}, fmt.Errorf("%s %q: must be https (etcd traffic is mutual TLS)", flag, raw)
	}
	return *u, nil
}

// startEtcd starts the embedded member and waits until it serves.
func (s *Server) startEtcd(ctx context.Context) error {
	ec := s.cfg.Etcd
	tlsInfo, err := s.etcdTLS()
	if err != nil {
		return fmt.Errorf("etcd tls: %w", err)
	}
	cu, err := parseURL("etcd client URL", ec.ClientURL)
	if err != nil {
		return err
	}
	pu, err := parseURL("etcd peer URL", ec.PeerURL)
	if err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = ec.Name
	cfg.Dir = filepath.Join(s.cfg.DataDir, "etcd")
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = ec.InitialCluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = ec.Name + "=" + pu.String()
	}
	cfg.ClusterState = ec.ClusterState
	if cfg.ClusterState == "" {
		cfg.ClusterState = embed.ClusterStateFlagNew
	}
	cfg.InitialClusterToken = "meridian-" + s.cfg.Region
	cfg.ClientTLSInfo = tlsInfo
	cfg.PeerTLSInfo = tlsInfo
	cfg.MaxTxnOps = 20000
	cfg.MaxRequestBytes = 16 << 20
	cfg.AutoCompactionMode = embed.CompactorModeRevision
	cfg.AutoCompactionRetention = "100000"
	cfg.LogLevel = "warn"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger(s.log))
	if s.cfg.EtcdTuning != nil {
		s.cfg.EtcdTuning(cfg)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start embedded etcd: %w", err)
	}
	s.etcd = e
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("embedded etcd: %w", err)
	case <-ctx.Done():
		e.Close()
		return ctx.Err()
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return errors.New("embedded etcd did not become ready in 60s (is a quorum of members up?)")
	}
	s.log.Info("embedded etcd ready", "client", cu.String(), "peer", pu.String())
	return nil
}

// connect opens the etcd client over mutual TLS. An embedded member must
// present this region's server identity; an external cluster's serving
// certificate is verified against the installation root and its host
// name.
func (s *Server) connect() error {
	endpoints := s.cfg.Etcd.Endpoints
	var tc *tls.Config
	if len(endpoints) == 0 {
		endpoints = []string{s.cfg.Etcd.ClientURL}
		tc = pki.ClientConfig(s.certs, s.roots, s.callers.servers)
	} else {
		tc = &tls.Config{
			MinVersion:           tls.VersionTLS12,
			RootCAs:              s.roots,
			GetClientCertificate: s.certs.GetClientCertificate,
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tc,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               etcdLogger(s.log),
	})
	if err != nil {
		return fmt.Errorf("etcd client %s: %w", strings.Join(endpoints, ","), err)
	}
	s.cli = cli
	return nil
}
