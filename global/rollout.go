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

// secretsFor unseals the secrets env names, for an apply.
func (s *Server) secretsFor(ctx context.Context, orgID string, env []api.ResolvedEnv) (map[string]string, error) {
	var out map[string]string
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		for _, e := range env {
			if e.Secret == "" {
				continue
			}
			if _, ok := out[e.Secret]; ok {
				continue
			}
			rec, err := tx.GetSecret(ctx, orgID, e.Secret)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("env %s: secret %q no longer exists", e.Key, e.Secret)
			}
			if err != nil {
				return err
			}
			v, err := s.sealer.Open(orgID, e.Secret, rec.Sealed)
			if err != nil {
				return fmt.Errorf("env %s: secret %q: %w", e.Key, e.Secret, err)
			}
			if out == nil {
				out = map[string]string{}
			}
			out[e.Secret] = string(v)
		}
		return nil
	})
	return out, err
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
