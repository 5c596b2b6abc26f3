package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/agent"
	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/pki"
)

// The edge reaches every instance over mutual TLS through the node proxy
// of the instance's machine. The proxy and rss parts give the edge a
// certificate of a bench installation, and the proxy part runs the
// agent's node proxy (agent.NodeProxy, the code agents run) for the
// backend's machine in a process of its own.

const (
	benchTrustDomain = "bench.local"
	benchRegion      = "fra"
	benchMachine     = "fra1-bench"
	benchInstance    = "bench-0"
	machineLeaf      = "machine" // machine.pem and machine-key.pem in the node proxy's directory
)

// makePKI writes, once, the edge's certificate directory (for --pki-dir)
// and the node proxy's (its machine certificate from fra's CA, and the
// root), under the run's directory.
func (b *bench) makePKI() (edgeDir, nodeDir string, err error) {
	edgeDir, nodeDir = filepath.Join(b.root, "pki", "edge"), filepath.Join(b.root, "pki", "node")
	if _, err := os.Stat(nodeDir); err == nil {
		return edgeDir, nodeDir, nil
	}
	now := time.Now()
	root, err := pki.NewRoot(benchTrustDomain, now, 24*time.Hour)
	if err != nil {
		return "", "", err
	}
	fra, err := root.NewIntermediate(benchRegion, now, 24*time.Hour)
	if err != nil {
		return "", "", err
	}
	if _, err := edge.IssueIdentity(root, edgeDir, "bench", "meridian.localhost", now, 12*time.Hour); err != nil {
		return "", "", err
	}
	leaf, err := fra.Issue(pki.LeafRequest{ID: pki.MachineID(benchTrustDomain, benchRegion, benchMachine), Usage: pki.UsageBoth,
		TTL: 12 * time.Hour, Now: now})
	if err != nil {
		return "", "", err
	}
	if err := pki.SaveLeaf(nodeDir, machineLeaf, leaf); err != nil {
		return "", "", err
	}
	if err := pki.SaveRoots(filepath.Join(nodeDir, pki.RootFile), root.Root); err != nil {
		return "", "", err
	}
	return edgeDir, nodeDir, nil
}

// serveNodeProxy runs the backend machine's node proxy on addr: the
// machine certificate from dir, instance bench-0's declared port 8080 (a
// public route) delivered to the backend's port.
func serveNodeProxy(addr, dir, backend string) {
	leaf, err := pki.LoadLeaf(dir, machineLeaf)
	if err != nil {
		fail(err)
	}
	roots, err := pki.LoadRoots(filepath.Join(dir, pki.RootFile))
	if err != nil {
		fail(err)
	}
	rl, err := pki.NewReloader(leaf)
	if err != nil {
		fail(err)
	}
	host, portS, err := net.SplitHostPort(addr)
	if err != nil {
		fail(fmt.Errorf("-node-proxy: %w", err))
	}
	port, _ := strconv.Atoi(portS)
	_, bp, _ := net.SplitHostPort(backend)
	backendPort, _ := strconv.Atoi(bp)
	inst := agent.NodeInstance{Org: "bench", App: "bench", Service: "web", Ports: map[int]int{8080: backendPort}, Public: []int{8080}}
	np, err := agent.StartNodeProxy(agent.NodeProxyConfig{Address: host, Port: port, TrustDomain: benchTrustDomain, Roots: roots, Certs: rl,
		Instances: func(id string) (agent.NodeInstance, bool) { return inst, id == benchInstance }})
	if err != nil {
		fail(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	np.Close()
}
