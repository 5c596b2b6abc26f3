// Package benchproc holds the roles the bench programs' own binaries play
// besides measuring: a machine agent started from a JSON config (with the
// mesh when asked), and a tiny HTTP workload for it to run, which answers
// GET /healthz with ok and anything else with its instance id.
package benchproc

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/agent"
	"github.com/meridian-run/meridian/pki"
)

// Environment variables that select a role.
const (
	RoleEnv   = "MERIDIAN_BENCH_ROLE"   // "agent" or "workload"
	ConfigEnv = "MERIDIAN_BENCH_CONFIG" // the agent's AgentConfig, JSON
)

// AgentConfig is what the measuring program tells an agent process.
type AgentConfig struct {
	Region      string   `json:"region"`
	RegionURLs  []string `json:"region_urls"`
	JoinToken   string   `json:"join_token"`
	RootsFile   string   `json:"roots_file"`
	TrustDomain string   `json:"trust_domain,omitempty"`
	DataDir     string   `json:"data_dir"`
	Machine     string   `json:"machine"`
	Datacenter  string   `json:"datacenter"`
	PortMin     int      `json:"port_min"`
	PortMax     int      `json:"port_max"`
	ShimPath    string   `json:"shim_path,omitempty"`
	// MeshNet and MeshPort turn the agent's mesh on (empty: off).
	MeshNet  string `json:"mesh_net,omitempty"`
	MeshPort int    `json:"mesh_port,omitempty"`
	// MeshUnverifiedCallers lets the bench process call service
	// addresses on behalf of an instance (MeshConfig.UnverifiedCallers).
	MeshUnverifiedCallers bool `json:"mesh_unverified_callers,omitempty"`
}

// Maybe runs the role named by RoleEnv and exits; without one it returns.
func Maybe() {
	switch os.Getenv(RoleEnv) {
	case "agent":
		os.Exit(runAgent())
	case "workload":
		os.Exit(runWorkload())
	}
}

// runAgent runs an agent until SIGTERM or SIGINT, then closes it (its
// instances keep running).
func runAgent() int {
	var c AgentConfig
	if err := json.Unmarshal([]byte(os.Getenv(ConfigEnv)), &c); err != nil {
		fmt.Fprintf(os.Stderr, "agent: %s: %v\n", ConfigEnv, err)
		return 2
	}
	roots, err := pki.LoadRoots(c.RootsFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg := agent.Config{
		Region: c.Region, RegionURLs: c.RegionURLs, JoinToken: c.JoinToken, Roots: roots, TrustDomain: c.TrustDomain,
		Datacenter: c.Datacenter, Name: c.Machine, MilliCPU: 64000, MemoryMB: 65536, DataDir: c.DataDir,
		PortMin: c.PortMin, PortMax: c.PortMax, ShimPath: c.ShimPath,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if c.MeshNet != "" {
		cfg.Mesh = &agent.MeshConfig{Net: c.MeshNet, Port: c.MeshPort, UnverifiedCallers: c.MeshUnverifiedCallers}
	}
	a, err := agent.Start(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	select {
	case <-ctx.Done():
	case err := <-a.Err():
		fmt.Fprintln(os.Stderr, err)
	}
	a.Close()
	return 0
}

// runWorkload answers GET /healthz with ok and anything else with its
// instance id, on $PORT until SIGTERM.
func runWorkload() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	id := os.Getenv("MERIDIAN_INSTANCE")
	srv := &http.Server{Addr: ":" + os.Getenv("PORT"), ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" {
				w.Write([]byte("ok\n"))
				return
			}
			w.Write([]byte(id))
		})}
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
