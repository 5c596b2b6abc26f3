package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/edge"
)

func newEdgeCmd(g *globals) *cobra.Command {
	var (
		cfg                                                     edge.Config
		pkiDir, tokenFile, tlsCert, tlsKey, logLevel, logFormat string
		tlsFromPKI, accessLog                                   bool
		regions                                                 []string
		gcPercent                                               int
	)
	cmd := &cobra.Command{
		Use:   "edge --location ID --lat LAT --lon LON --pki-dir DIR --global URL --global-token-file FILE",
		Short: "Run an edge location: public HTTP(S) for every app, routed to the closest healthy instance",
		Long: `Serve every app's public host name <app>-<org>.<domain> over HTTP (and HTTP/2
cleartext) and HTTPS, and send each request to the closest healthy instance.

The edge lists the open regions from global at start (GET /v1/regions with
the edge token in --global-token-file, from ` + "`meridian edge-tokens create`" + `:
it may read the region registry and nothing else; cached in --state-dir),
then follows every region's
endpoint feed directly with its edge certificate (--pki-dir, from
` + "`meridian pki edge`" + `), with which it also reaches every instance, over
mutual TLS to the node proxy of its machine: it keeps routing while global is down, and serves
from its snapshot in --state-dir after a restart. HTTPS uses --tls-cert and
--tls-key, or with --tls-from-pki the edge certificate (which names
*.<domain>). Metrics, health and the routing state are on --admin-listen
(/metrics, /healthz, /readyz, /v1/state).`,
		Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat, os.Stderr)
			if err != nil {
				return err
			}
			if cfg.Location == "" {
				return usagef("--location is required")
			}
			if cfg.StateDir == "" {
				cfg.StateDir = filepath.Join(".meridian", "edge-"+cfg.Location)
			}
			for i, r := range regions {
				reg, err := parseRegionFlag(r)
				if err != nil {
					return usagef("--region %q (#%d): %v", r, i+1, err)
				}
				cfg.Regions = append(cfg.Regions, reg)
			}
			if cfg.GlobalURL != "" {
				if tokenFile == "" {
					cfg.GlobalToken = os.Getenv("MERIDIAN_EDGE_TOKEN")
					if cfg.GlobalToken == "" {
						return usagef("--global-token-file (or $MERIDIAN_EDGE_TOKEN) is required with --global")
					}
				} else {
					b, err := os.ReadFile(tokenFile)
					if err != nil {
						return fmt.Errorf("--global-token-file: %w", err)
					}
					cfg.GlobalToken = strings.TrimSpace(string(b))
				}
			}
			if pkiDir != "" {
				if cfg.Identity, err = edge.LoadIdentity(pkiDir); err != nil {
					return fmt.Errorf("--pki-dir: %w", err)
				}
				if cfg.Identity.ID().Edge != cfg.Location {
					log.Warn("the edge certificate is for another location", "certificate", cfg.Identity.ID().String(), "location", cfg.Location)
				}
			} else if cfg.GlobalURL != "" || len(cfg.Regions) > 0 {
				return usagef("--pki-dir (the edge certificate from `meridian pki edge`) is required to follow the regions")
			}
			switch {
			case tlsCert != "" || tlsKey != "":
				if tlsCert == "" || tlsKey == "" {
					return usagef("--tls-cert and --tls-key go together")
				}
				if cfg.TLSCertificates, err = edge.LoadFileCert(tlsCert, tlsKey); err != nil {
					return fmt.Errorf("--tls-cert: %w", err)
				}
			case tlsFromPKI:
				if cfg.Identity == nil {
					return usagef("--tls-from-pki needs --pki-dir")
				}
				cfg.TLSCertificates = cfg.Identity
			}
			if cfg.TLSListen != "" && cfg.TLSCertificates == nil {
				return usagef("--tls-listen needs --tls-cert/--tls-key or --tls-from-pki")
			}
			if cfg.Identity == nil {
				return usagef("--pki-dir (the edge certificate from `meridian pki edge`) is required: the edge reaches instances over mutual TLS with it")
			}
			if gcPercent < 1 {
				return usagef("--gc-percent must be at least 1 (got %d)", gcPercent)
			}
			if os.Getenv("GOGC") == "" {
				// The edge's live heap is small (its routing table) and
				// every request allocates: at Go's default of 100 the
				// collector runs very often under load. A few MB more
				// heap buy about a tenth of the CPU per request.
				debug.SetGCPercent(gcPercent)
			}
			cfg.Logger = log
			if accessLog {
				cfg.AccessLog = log.With("log", "access")
			}
			s, err := edge.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "meridian edge %s: ", cfg.Location)
			for _, u := range []string{s.URL(), s.TLSURL()} {
				if u != "" {
					fmt.Fprintf(g.stdout, "%s ", u)
				}
			}
			fmt.Fprintf(g.stdout, "(apps at <app>-<org>.%s), admin %s\n", cfg.Domain, s.AdminURL())
			select {
			case <-cmd.Context().Done():
				log.Info("shutting down: finishing requests in flight")
				return s.Close()
			case err := <-s.Err():
				s.Close()
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Location, "location", "", "edge location id, e.g. par")
	f.Float64Var(&cfg.Latitude, "lat", 0, "the location's latitude")
	f.Float64Var(&cfg.Longitude, "lon", 0, "the location's longitude")
	f.StringVar(&cfg.Domain, "domain", "meridian.localhost", "apps' host names are <app>-<org>.<domain>")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8000", `plain HTTP address (HTTP/1.1 and h2c; "" for none)`)
	f.StringVar(&cfg.TLSListen, "tls-listen", "", "HTTPS address")
	f.StringVar(&tlsCert, "tls-cert", "", "HTTPS certificate chain (PEM)")
	f.StringVar(&tlsKey, "tls-key", "", "HTTPS private key (PEM)")
	f.BoolVar(&tlsFromPKI, "tls-from-pki", false, "serve HTTPS with the edge certificate from --pki-dir (it names *.<domain>)")
	f.StringVar(&cfg.AdminListen, "admin-listen", "127.0.0.1:0", `admin address: /metrics, /healthz, /readyz, /v1/state ("" for none)`)
	f.StringVar(&pkiDir, "pki-dir", "", "the edge's certificate directory (edge.pem, edge-key.pem, root.pem)")
	f.StringVar(&cfg.GlobalURL, "global", "", "global API URL, to list the regions")
	f.StringVar(&tokenFile, "global-token-file", "", "file holding the edge token for listing regions, from `meridian edge-tokens create` (default $MERIDIAN_EDGE_TOKEN)")
	f.StringArrayVar(&regions, "region", nil, "a region to route to besides global's: ID=URL@LAT,LON (repeatable)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "snapshot and region cache directory (default .meridian/edge-LOCATION)")
	f.DurationVar(&cfg.RegionRefresh, "region-refresh", 0, "how often the region list is read again (default 30s)")
	f.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 0, "connect timeout to instances (default 500ms)")
	f.DurationVar(&cfg.ResponseHeaderTimeout, "response-header-timeout", 0, "wait for an instance's response headers before 504 (default 30s)")
	f.DurationVar(&cfg.TryTimeout, "try-timeout", 0, "per-attempt wait for response headers of retryable requests, then retry elsewhere (default: none)")
	f.IntVar(&cfg.MaxAttempts, "max-attempts", 0, "attempts per request (default 4)")
	f.DurationVar(&cfg.RetryWindow, "retry-window", 0, "no new attempt after this long (default 5s)")
	f.DurationVar(&cfg.ReadHeaderTimeout, "read-header-timeout", 0, "time to read a request's headers (default 10s)")
	f.DurationVar(&cfg.ReadTimeout, "read-timeout", 0, "time to read a whole request with its body (default 60s)")
	f.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "idle keep-alive connections are closed after (default 120s)")
	f.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", 0, "request header limit (default 64 KiB)")
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", 0, "request body limit (default 16 MiB)")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 0, "how long shutdown waits for requests in flight (default 20s)")
	f.DurationVar(&cfg.ProbeInterval, "probe-interval", 0, "region RTT probe interval (default 1s)")
	f.DurationVar(&cfg.ProbeTimeout, "probe-timeout", 0, "a probe slower than this marks the region unreachable (default 1s)")
	f.DurationVar(&cfg.RTTTolerance, "rtt-tolerance", 0, "RTTs closer than this count as equal; coordinates decide (default 10ms)")
	f.BoolVar(&accessLog, "access-log", true, "log every request")
	f.IntVar(&gcPercent, "gc-percent", 400, "Go garbage collector target (as GOGC; $GOGC wins when set): heap growth between collections, in percent of the live heap")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// parseRegionFlag parses ID=URL@LAT,LON.
func parseRegionFlag(s string) (edge.Region, error) {
	id, rest, ok := strings.Cut(s, "=")
	if !ok || id == "" {
		return edge.Region{}, fmt.Errorf("want ID=URL@LAT,LON")
	}
	u, coords, ok := strings.Cut(rest, "@")
	if !ok {
		return edge.Region{}, fmt.Errorf("want ID=URL@LAT,LON (no @LAT,LON)")
	}
	latS, lonS, ok := strings.Cut(coords, ",")
	lat, err1 := strconv.ParseFloat(latS, 64)
	lon, err2 := strconv.ParseFloat(lonS, 64)
	if !ok || err1 != nil || err2 != nil {
		return edge.Region{}, fmt.Errorf("coordinates %q: want LAT,LON", coords)
	}
	return edge.Region{ID: id, URL: u, Latitude: lat, Longitude: lon}, nil
}
