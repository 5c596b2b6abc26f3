package global

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/rollout"
	"github.com/meridian-run/meridian/store"
)

// Names of the internal organization and app that own regions' smoke
// tests. The service is named after the region.
const (
	SystemOrg = "meridian-system"
	SmokeApp  = "smoke"
)

var errNoRegionClient = apiErr(http.StatusServiceUnavailable, api.CodeUnavailable,
	"this global control plane has no region client configured (its certificate for calling regions): it cannot reach regions")

// testRegion runs a region's smoke test: a one-instance deployment of the
// smoke workload there, watched until healthy or past the smoke timeout,
// then deleted. The region opens when it passed and goes back to
// provisioning, with the reason in its message, when it failed.
func (s *Server) testRegion(w http.ResponseWriter, r *http.Request) error {
	if !s.engine.Enabled() {
		return errNoRegionClient
	}
	id := r.PathValue("id")
	s.smokeMu.Lock()
	if s.smoking[id] {
		s.smokeMu.Unlock()
		return errConflict("a smoke test of region %s is already running", id)
	}
	s.smoking[id] = true
	s.smokeMu.Unlock()
	defer func() {
		s.smokeMu.Lock()
		delete(s.smoking, id)
		s.smokeMu.Unlock()
	}()

	def := *s.cfg.SmokeDefinition
	def.Name, def.Regions, def.Strategy = id, []string{id}, nil
	opts := s.cfg.Spec
	if err := definition.Validate(def, opts); err != nil {
		return fmt.Errorf("the smoke test's definition is invalid: %w", err)
	}
	regional, err := definition.DeriveRegion(def, id, opts)
	if err != nil {
		return fmt.Errorf("the smoke test's definition: %w", err)
	}
	if def.Image != "" {
		res, err := s.resolveImage(r.Context(), "", def)
		if err != nil {
			return fmt.Errorf("the smoke test's image: %w", err)
		}
		regional.ImageDigest = res.Digest
	}
	ctx, cancel := context.WithTimeout(s.engine.Context(), s.cfg.SmokeTimeout)
	defer cancel()
	key := serviceKey(SystemOrg, SmokeApp, id)
	target := rollout.Target{DeploymentID: newID("smoke"), Version: 1, Definition: regional}
	var op store.RegionOp
	var reg api.Region
	err = s.cfg.Store.Update(r.Context(), func(tx store.Tx) error {
		var err error
		if reg, err = tx.GetRegion(r.Context(), id); err != nil {
			return storeErr(err, "region "+definition.Quote(id))
		}
		org, err := tx.GetOrgByName(r.Context(), SystemOrg)
		if errors.Is(err, store.ErrNotFound) {
			org = api.Organization{ID: newID("org"), Name: SystemOrg, CreatedAt: s.cfg.Now().UTC()}
			err = tx.CreateOrg(r.Context(), org)
		}
		if err != nil {
			return err
		}
		reg.Status, reg.Message, reg.UpdatedAt = api.RegionTesting, "smoke test running", s.cfg.Now().UTC()
		if err := tx.UpdateRegion(r.Context(), reg); err != nil {
			return err
		}
		op, err = s.engine.NewOp(r.Context(), tx, rollout.Op{Org: SystemOrg, App: SmokeApp, Service: id, Region: id,
			Purpose: store.PurposeSmoke, OrgID: org.ID, Target: &target})
		return err
	})
	if err != nil {
		return err
	}
	s.log.Info("region smoke test started", "region", id, "generation", op.Generation)
	failure := s.smoke(ctx, reg, op, key, target.DeploymentID)

	// Delete the smoke service whatever happened; the region's operation
	// worker retries the deletion until the region answers.
	final := api.Region{}
	err = s.cfg.Store.Update(context.WithoutCancel(r.Context()), func(tx store.Tx) error {
		ctx := context.WithoutCancel(r.Context())
		var err error
		if final, err = tx.GetRegion(ctx, id); err != nil {
			return err
		}
		if op, err = s.engine.NewOp(ctx, tx, rollout.Op{Org: SystemOrg, App: SmokeApp, Service: id, Region: id, Purpose: store.PurposeSmoke}); err != nil {
			return err
		}
		final.Status, final.Message, final.UpdatedAt = api.RegionOpen, "", s.cfg.Now().UTC()
		if failure != "" {
			final.Status, final.Message = api.RegionProvisioning, "smoke test failed: "+failure
		}
		return tx.UpdateRegion(ctx, final)
	})
	if err != nil {
		return err
	}
	s.engine.Nudge(id)
	if failure != "" {
		s.log.Warn("region smoke test failed", "region", id, "reason", failure)
	} else {
		s.log.Info("region smoke test passed; region open", "region", id)
	}
	writeJSON(w, http.StatusOK, final)
	return nil
}

// smoke sends the smoke deployment and waits for it to be healthy. It
// returns why it failed, or "".
func (s *Server) smoke(ctx context.Context, reg api.Region, op store.RegionOp, key, depID string) string {
	cur, err := s.engine.Send(ctx, op)
	switch {
	case err != nil && ctx.Err() != nil:
		return fmt.Sprintf("the region did not accept the smoke deployment within %s: %s", s.cfg.SmokeTimeout, err)
	case err != nil:
		return err.Error()
	}
	if cur.State != store.OpDone {
		return "the region refused the smoke deployment: " + cur.Message
	}
	c := s.engine.Client(reg)
	failed := map[string]bool{}
	last := "no status yet"
	for {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RegionTimeout)
		ss, err := c.Status(cctx, key)
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case ss.DeploymentID == depID && ss.Phase == regionapi.PhaseHealthy:
			return ""
		default:
			last = ss.Message
			if why := rollout.InstanceReasons(ss, depID); why != "" {
				last += "; " + why
			}
			for _, in := range ss.Instances {
				if in.DeploymentID == depID && in.State == regionapi.StateFailed {
					failed[in.ID] = true
				}
			}
			if ss.Wanted > 0 && len(failed) >= ss.Wanted {
				return "the smoke instance failed past its restart limit: " + last
			}
		}
		if clock.Sleep(ctx, clock.Real(), s.cfg.RolloutPoll) != nil {
			return fmt.Sprintf("not healthy within %s: %s", s.cfg.SmokeTimeout, last)
		}
	}
}

// drainRegion marks a region draining and says what that does: new
// deployments refuse it; what runs there keeps running until its services
// are redeployed without the region or deleted. Nothing moves by itself.
func (s *Server) drainRegion(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	id := r.PathValue("id")
	var reg api.Region
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if reg, err = tx.GetRegion(ctx, id); err != nil {
			return storeErr(err, "region "+definition.Quote(id))
		}
		reg.Status, reg.Message, reg.UpdatedAt = api.RegionDraining, "draining: new deployments refuse this region", s.cfg.Now().UTC()
		return tx.UpdateRegion(ctx, reg)
	})
	if err != nil {
		return err
	}
	out := api.RegionDrain{Region: reg, Services: []api.RegionService{}}
	if !s.engine.Enabled() {
		out.Unreachable = errNoRegionClient.Message
	} else {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RegionTimeout)
		list, err := s.engine.Client(reg).Services(cctx)
		cancel()
		if err != nil {
			out.Unreachable = err.Error()
		}
		for _, ss := range list {
			if ss.Phase == regionapi.PhaseDeleted {
				continue
			}
			org, app, svc := splitKey(ss.Service)
			if org == SystemOrg {
				continue
			}
			out.Services = append(out.Services, api.RegionService{Org: org, App: app, Service: svc, Version: ss.Version,
				Wanted: ss.Wanted, Instances: len(ss.Instances)})
		}
	}
	n := 0
	for _, rs := range out.Services {
		n += rs.Instances
	}
	out.Message = fmt.Sprintf("region %s is draining: new deployments naming it are refused. ", id)
	if out.Unreachable != "" {
		out.Message += fmt.Sprintf("The region did not say what runs there (%s). ", out.Unreachable)
	} else {
		out.Message += fmt.Sprintf("%d services (%d instances) run there. ", len(out.Services), n)
	}
	out.Message += fmt.Sprintf("Nothing is moved or stopped: running instances stay until their services are redeployed without %s or deleted.", id)
	s.log.Info("region draining", "region", id, "services", len(out.Services), "instances", n)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// toInstance converts a region's instance status.
func toInstance(region string, in regionapi.InstanceStatus) api.Instance {
	_, app, svc := splitKey(in.Service)
	out := api.Instance{ID: in.ID, App: app, Service: svc, Region: region, Datacenter: in.Datacenter, Machine: in.Machine,
		State: in.State, Version: in.Version, DeploymentID: in.DeploymentID, Restarts: in.Restarts, Message: in.Message,
		Address: in.Address, Ports: in.Ports, UpdatedAt: in.UpdatedAt}
	switch {
	case in.Healthy:
		out.Health = api.HealthHealthy
	case in.Message == "machine not heartbeating":
		out.Health = api.HealthUnknown
	case in.State == regionapi.StateRunning, in.State == regionapi.StateRestarting, in.State == regionapi.StateFailed:
		out.Health = api.HealthUnhealthy
	default:
		out.Health = api.HealthUnknown
	}
	return out
}

// gather asks each region concurrently, each call bounded by the region
// timeout; regions that fail are listed as unreachable.
func (s *Server) gather(ctx context.Context, regions []api.Region, ask func(ctx context.Context, c *regionapi.Client, r api.Region) ([]api.Instance, error)) api.InstanceList {
	out := api.InstanceList{Items: []api.Instance{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, reg := range regions {
		if !s.engine.Enabled() {
			out.Unreachable = append(out.Unreachable, api.UnreachableRegion{Region: reg.ID, Message: errNoRegionClient.Message})
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, s.cfg.RegionTimeout)
			defer cancel()
			items, err := ask(cctx, s.engine.Client(reg), reg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out.Unreachable = append(out.Unreachable, api.UnreachableRegion{Region: reg.ID, Message: err.Error()})
				return
			}
			out.Items = append(out.Items, items...)
		})
	}
	wg.Wait()
	slices.SortFunc(out.Items, func(a, b api.Instance) int {
		return strings.Compare(a.Region+"/"+a.App+"/"+a.Service+"/"+a.ID, b.Region+"/"+b.App+"/"+b.Service+"/"+b.ID)
	})
	slices.SortFunc(out.Unreachable, func(a, b api.UnreachableRegion) int { return strings.Compare(a.Region, b.Region) })
	return out
}

// listInstances lists the caller's instances in every open or draining
// region.
func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var org api.Organization
	var regions []api.Region
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if org, err = tx.GetOrg(ctx, callerOf(ctx).orgID); err != nil {
			return err
		}
		all, err := allRegions(ctx, tx)
		for _, reg := range all {
			if reg.Status == api.RegionOpen || reg.Status == api.RegionDraining {
				regions = append(regions, reg)
			}
		}
		return err
	})
	if err != nil {
		return err
	}
	prefix := org.Name + "."
	out := s.gather(ctx, regions, func(ctx context.Context, c *regionapi.Client, reg api.Region) ([]api.Instance, error) {
		list, err := c.Instances(ctx)
		if err != nil {
			return nil, err
		}
		var items []api.Instance
		for _, in := range list {
			if strings.HasPrefix(in.Service, prefix) {
				items = append(items, toInstance(reg.ID, in))
			}
		}
		return items, nil
	})
	writeJSON(w, http.StatusOK, out)
	return nil
}

// serviceInstances lists a service's instances in the regions it runs in.
func (s *Server) serviceInstances(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var key string
	var regions []api.Region
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		svc, err := findService(ctx, tx, r.PathValue("app"), r.PathValue("service"))
		if err != nil {
			return err
		}
		org, err := tx.GetOrg(ctx, svc.OrgID)
		if err != nil {
			return err
		}
		key = serviceKey(org.Name, svc.App, svc.Name)
		srs, err := tx.ServiceRegions(ctx, key)
		if err != nil {
			return err
		}
		for _, sr := range srs {
			if sr.Deleted {
				continue
			}
			reg, err := tx.GetRegion(ctx, sr.Region)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			regions = append(regions, reg)
		}
		return nil
	})
	if err != nil {
		return err
	}
	out := s.gather(ctx, regions, func(ctx context.Context, c *regionapi.Client, reg api.Region) ([]api.Instance, error) {
		ss, err := c.Status(ctx, key)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		items := make([]api.Instance, 0, len(ss.Instances))
		for _, in := range ss.Instances {
			items = append(items, toInstance(reg.ID, in))
		}
		return items, nil
	})
	writeJSON(w, http.StatusOK, out)
	return nil
}
