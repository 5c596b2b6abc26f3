package global

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/rollout"
	"github.com/meridian-run/meridian/store"
)

// RegionCall describes one answered or failed call to a region, for
// Config.OnRegionCall.
type RegionCall = rollout.RegionCall

// newEngine makes the rollout engine of a server (see package rollout).
func newEngine(s *Server, reg prometheus.Registerer) (*rollout.Engine, error) {
	return rollout.New(rollout.Config{
		Store:         s.cfg.Store,
		Now:           s.cfg.Now,
		RegionHTTP:    s.cfg.RegionHTTP,
		Poll:          s.cfg.RolloutPoll,
		RegionTimeout: s.cfg.RegionTimeout,
		RetryMin:      s.cfg.RetryMin,
		RetryMax:      s.cfg.RetryMax,
		Owner:         s.cfg.Owner,
		LeaseTTL:      s.cfg.LeaseTTL,
		Secrets:       s.secretsFor,
		Logger:        s.log.With("part", "rollout"),
		Metrics:       reg,
		OnRegionCall:  s.cfg.OnRegionCall,
	})
}

// secretsFor unseals the secrets an apply's definition names: its env's,
// and its registry secret (for the region's own pulls from the registry).
func (s *Server) secretsFor(ctx context.Context, orgID string, def api.RegionalDefinition) (map[string]string, error) {
	type ref struct{ what, name string }
	var refs []ref
	for _, e := range def.Env {
		if e.Secret != "" {
			refs = append(refs, ref{"env " + e.Key, e.Secret})
		}
	}
	if def.RegistrySecret != "" {
		refs = append(refs, ref{"registry_secret", def.RegistrySecret})
	}
	var out map[string]string
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		for _, r := range refs {
			if _, ok := out[r.name]; ok {
				continue
			}
			v, err := s.openSecret(ctx, tx, orgID, r.name)
			if err != nil {
				return fmt.Errorf("%s: %w", r.what, err)
			}
			if out == nil {
				out = map[string]string{}
			}
			out[r.name] = string(v)
		}
		return nil
	})
	return out, err
}

// errSecretGone: a secret a definition names no longer exists.
var errSecretGone = errors.New("no longer exists")

// openSecret reads and unseals an organization's secret; a missing one
// is errSecretGone.
func (s *Server) openSecret(ctx context.Context, tx store.Tx, orgID, name string) ([]byte, error) {
	rec, err := tx.GetSecret(ctx, orgID, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("secret %q %w", name, errSecretGone)
	}
	if err != nil {
		return nil, err
	}
	v, err := s.sealer.Open(orgID, name, rec.Sealed)
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return v, nil
}

// allRegions reads the whole region registry.
func allRegions(ctx context.Context, tx store.Tx) ([]api.Region, error) {
	return api.All(func(o api.ListOptions) (api.List[api.Region], error) {
		items, next, err := tx.ListRegions(ctx, store.Page{Limit: o.Limit, Token: o.PageToken})
		return api.List[api.Region]{Items: items, NextPageToken: next}, err
	})
}

// serviceKey is the region's name of a service: "<org>.<app>.<service>",
// with the organization's name.
func serviceKey(org, app, service string) string { return regionapi.ServiceKey(org, app, service) }

// splitKey splits a service key into organization, app and service.
func splitKey(key string) (org, app, service string) {
	org, rest, _ := strings.Cut(key, ".")
	app, service, _ = strings.Cut(rest, ".")
	return org, app, service
}
