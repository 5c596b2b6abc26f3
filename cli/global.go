package cli

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/edge"
	"github.com/meridian-run/meridian/global"
	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/store"
)

// newLogger builds a component's structured logger from --log-level and
// --log-format.
func newLogger(level, format string, w *os.File) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

// readOrCreate returns the trimmed content of path, creating it with
// make() (mode 0600) when it does not exist.
func readOrCreate(path string, make func() string) (value string, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}
	v := make()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, err
	}
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		return "", false, err
	}
	return v, true, nil
}

func newAdminToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return "mra_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

func newGlobalCmd(g *globals) *cobra.Command {
	var (
		listen, stateDir, storeURL, adminToken, keyFile, domain, catalogue, logLevel, logFormat, pkiDir string
		tlsCert, tlsKey                                                                                 string
		tlsFromPKI, plaintext                                                                           bool
		insecureRegistries                                                                              []string
		registryTimeout                                                                                 time.Duration
		maxScale, maxConnsPerClient, maxConns                                                           int
		rolloutPoll, idempotencyTTL, tlsReload, headerTimeout, bodyTimeout, idleTimeout                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "global",
		Short: "Run the global control plane: the public API and its store",
		Long: `Run the global control plane. State (the SQLite store, the admin token and
the secret-sealing key, unless given) lives in --state-dir. Use --store
postgres://... for PostgreSQL in production.

The API is HTTPS with --tls-cert/--tls-key (files, read again on SIGHUP
and when they change) or --tls-from-pki (the global certificate in --pki,
issued with ` + "`meridian pki global --hosts NAME`" + `); clients trust a private
CA with --ca-file. Plain HTTP is served only on a loopback address, unless
--insecure-plaintext (behind a proxy that terminates TLS, say).

Slow or idle clients are bounded: headers must arrive within
--read-header-timeout, a body within --body-timeout, idle connections close
after --idle-timeout, and one client address holds at most
--max-conns-per-client connections (--max-conns in all); more are closed as
they arrive.

At deploy, a definition's image is resolved to the digest of its manifest
(every region then runs that digest), with the credentials of the
organization secret its registry_secret names, within --registry-timeout.
Registries are reached over TLS; plain HTTP only to loopback registries and
those named with --insecure-registry.`,
		Args: args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat, os.Stderr)
			if err != nil {
				return err
			}
			if maxScale < 1 {
				return usagef("--max-scale %d: want at least 1", maxScale)
			}
			if err := global.CheckIdempotencyTTL(idempotencyTTL); err != nil {
				return usagef("--idempotency-ttl: %w", err)
			}
			if err := global.CheckDomain(domain); err != nil {
				return usagef("--domain: %w", err)
			}
			for name, d := range map[string]time.Duration{"--read-header-timeout": headerTimeout, "--body-timeout": bodyTimeout,
				"--idle-timeout": idleTimeout, "--tls-reload": tlsReload, "--registry-timeout": registryTimeout} {
				if d <= 0 {
					return usagef("%s %s: want a positive duration", name, d)
				}
			}
			for _, h := range insecureRegistries {
				if err := checkRegistryHost(h); err != nil {
					return usagef("--insecure-registry %q: %w", h, err)
				}
			}
			if maxConnsPerClient < 0 || maxConns < 0 {
				return usagef("--max-conns-per-client %d, --max-conns %d: want 0 (the default) or more", maxConnsPerClient, maxConns)
			}
			useTLS := tlsCert != "" || tlsKey != "" || tlsFromPKI
			switch {
			case (tlsCert != "") != (tlsKey != ""):
				return usagef("--tls-cert and --tls-key go together")
			case tlsCert != "" && tlsFromPKI:
				return usagef("--tls-from-pki and --tls-cert/--tls-key exclude each other: one certificate serves the API")
			case tlsFromPKI && pkiDir == "":
				return usagef("--tls-from-pki needs --pki (the directory of `meridian pki global --hosts`)")
			case !useTLS && !plaintext && !global.IsLoopbackListen(listen):
				return usagef("--listen %s: %v; serve HTTPS with --tls-cert/--tls-key or --tls-from-pki, "+
					"or pass --insecure-plaintext (behind a proxy that terminates TLS)", listen, global.ErrPlaintext)
			}
			opts := definition.Options{Catalogue: definition.DefaultCatalogue()}
			opts.Limits.MaxScale = maxScale
			if catalogue != "" {
				if opts.Catalogue, err = definition.LoadCatalogue(cmd.Context(), catalogue); err != nil {
					return fmt.Errorf("--instance-types: %w", err)
				}
			}
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				return fmt.Errorf("--state-dir: %w", err)
			}
			if adminToken == "" {
				adminToken = os.Getenv("MERIDIAN_ADMIN_TOKEN")
			}
			if adminToken == "" {
				path := filepath.Join(stateDir, "admin.token")
				var created bool
				if adminToken, created, err = readOrCreate(path, newAdminToken); err != nil {
					return fmt.Errorf("admin token: %w", err)
				}
				if created {
					log.Info("generated the admin token", "file", path)
				}
			}
			if keyFile == "" {
				keyFile = filepath.Join(stateDir, "secret.key")
				if _, created, err := readOrCreate(keyFile, global.NewSecretKey); err != nil {
					return fmt.Errorf("secret key: %w", err)
				} else if created {
					log.Info("generated the secret-sealing key; back it up: secrets cannot be read without it", "file", keyFile)
				}
			}
			key, err := global.LoadSecretKey(keyFile)
			if err != nil {
				return fmt.Errorf("--secret-key-file: %w", err)
			}
			if storeURL == "" {
				storeURL = os.Getenv("MERIDIAN_STORE")
			}
			if storeURL == "" {
				storeURL = filepath.Join(stateDir, "global.db")
			}
			ctx := cmd.Context()
			st, err := store.Open(ctx, storeURL)
			if err != nil {
				return fmt.Errorf("--store: %w", err)
			}
			defer st.Close()
			var regionHTTP *http.Client
			certs := map[string]reloadable{}
			var tlsConfig *tls.Config
			if pkiDir != "" {
				id, err := loadPKILeaf(pkiGlobalDir(pkiDir), "global")
				if err != nil {
					return fmt.Errorf("--pki: %w", err)
				}
				regionHTTP, certs["global"] = id.regionClient(), id
				if tlsFromPKI {
					if err := id.servesHosts(); err != nil {
						return fmt.Errorf("--tls-from-pki: %w; issue it with `meridian pki global --dir %s --hosts NAME[,NAME...]`", err, pkiDir)
					}
					tlsConfig = serverTLS(id.rl.GetCertificate)
				}
			} else {
				log.Warn("no --pki: without the global certificate no region can be reached; deployments stay PENDING")
			}
			if tlsCert != "" {
				fc, err := edge.LoadFileCert(tlsCert, tlsKey)
				if err != nil {
					return fmt.Errorf("--tls-cert: %w", err)
				}
				certs["--tls-cert"], tlsConfig = fc, serverTLS(fc.GetCertificate)
			}
			// SIGHUP reloads the certificates from the moment the server
			// can use them.
			hup, stopHUP := watchHUP()
			defer stopHUP()
			srv, err := global.Start(ctx, global.Config{
				Listen: listen, Store: st, AdminToken: adminToken, SecretKey: key,
				Domain: domain, Spec: opts, Logger: log, RegionHTTP: regionHTTP, RolloutPoll: rolloutPoll,
				IdempotencyTTL: idempotencyTTL, TLS: tlsConfig, AllowPlaintext: plaintext,
				ReadHeaderTimeout: headerTimeout, BodyTimeout: bodyTimeout, IdleTimeout: idleTimeout,
				MaxConnsPerClient: maxConnsPerClient, MaxConns: maxConns,
				Images: global.ImageConfig{Insecure: insecureRegistries, Timeout: registryTimeout},
			})
			if errors.Is(err, global.ErrPlaintext) {
				return usagef("--listen %s: %w; serve HTTPS with --tls-cert/--tls-key or --tls-from-pki, or pass --insecure-plaintext", listen, err)
			}
			if err != nil {
				return err
			}
			rctx, stopReload := context.WithCancel(ctx)
			defer stopReload()
			go reloadCerts(rctx, log, hup, tlsReload, certs)
			fmt.Fprintf(g.stdout, "meridian global: API at %s\n", srv.URL())
			select {
			case <-ctx.Done():
				log.Info("shutting down")
				return srv.Close()
			case err := <-srv.Err():
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7700", "API listen address")
	f.StringVar(&stateDir, "state-dir", ".meridian/global", "directory for the SQLite store, admin token and secret key")
	f.StringVar(&storeURL, "store", "", "store: a SQLite path or sqlite://PATH, or postgres://... (default $MERIDIAN_STORE, else STATE_DIR/global.db)")
	f.StringVar(&adminToken, "admin-token", "", "the installation's admin token (default $MERIDIAN_ADMIN_TOKEN, else STATE_DIR/admin.token, generated if absent)")
	f.StringVar(&keyFile, "secret-key-file", "", "file with the base64 32-byte key that seals secrets (default STATE_DIR/secret.key, generated if absent)")
	f.StringVar(&domain, "domain", global.DefaultDomain, "suffix of apps' public host names: <app>-<org>.<domain>")
	f.StringVar(&catalogue, "instance-types", "", "YAML file with the instance type catalogue (default: the built-in catalogue)")
	f.StringVar(&pkiDir, "pki", "", "PKI directory holding the global certificate for calling regions (from `meridian pki global`)")
	f.StringVar(&tlsCert, "tls-cert", "", "serve HTTPS with this certificate chain (PEM; read again on SIGHUP and when it changes)")
	f.StringVar(&tlsKey, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.BoolVar(&tlsFromPKI, "tls-from-pki", false, "serve HTTPS with the global certificate in --pki (issued with `meridian pki global --hosts NAME`)")
	f.DurationVar(&tlsReload, "tls-reload", time.Minute, "how often certificate files are checked for a new certificate (SIGHUP checks at once)")
	f.BoolVar(&plaintext, "insecure-plaintext", false, "allow plain HTTP on an address that is not loopback: tokens cross the network in clear (use behind a proxy that terminates TLS)")
	f.DurationVar(&headerTimeout, "read-header-timeout", 10*time.Second, "time for a TLS handshake and a request's headers")
	f.DurationVar(&bodyTimeout, "body-timeout", 30*time.Second, "time for a request's body to arrive (408 after); answers are not bounded")
	f.DurationVar(&idleTimeout, "idle-timeout", 90*time.Second, "idle keep-alive connections are closed after")
	f.IntVar(&maxConnsPerClient, "max-conns-per-client", global.DefaultMaxConnsPerClient, "open connections one client address (IPv4, or IPv6 /64) may hold; more are closed at once")
	f.IntVar(&maxConns, "max-conns", 0, "open connections in all (default: three quarters of the file-descriptor limit, at most 16384)")
	f.DurationVar(&rolloutPoll, "rollout-poll", time.Second, "how often rollout workers look at the store and the regions")
	f.DurationVar(&idempotencyTTL, "idempotency-ttl", global.DefaultIdempotencyTTL,
		"how long a create's answer is replayed for a retry with the same Idempotency-Key; older keys are used anew and their records deleted (1m to 720h)")
	f.StringSliceVar(&insecureRegistries, "insecure-registry", nil, "a registry (host[:port]) that may be reached over plain HTTP to resolve images; loopback ones always may (repeatable)")
	f.DurationVar(&registryTimeout, "registry-timeout", image.DefaultResolveTimeout, "time to resolve a deployment's image to its digest at its registry")
	f.IntVar(&maxScale, "max-scale", definition.DefaultMaxScale, "most instances a service may ask for in one region")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// checkRegistryHost checks a registry named on the command line: host or
// host:port, as it appears in image references.
func checkRegistryHost(h string) error {
	if _, err := name.NewRegistry(h, name.StrictValidation); err != nil || strings.ContainsAny(h, "/@") || h == "" {
		return errors.New("want a registry as in image references: host or host:port")
	}
	return nil
}
