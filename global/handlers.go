package global

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/definition"
	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/rollout"
	"github.com/meridian-run/meridian/store"
)

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// maxSecretBytes bounds a secret's value.
const maxSecretBytes = 64 << 10

// newID returns a random id with a type prefix, like "dep_k3j...".
func newID(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return prefix + "_" + b32.EncodeToString(b)
}

// Token value prefixes: an organization's API token, an edge token. The
// admin token (mra_) is generated outside the API.
const (
	orgTokenPrefix  = "mrd_"
	edgeTokenPrefix = "mre_"
)

// newTokenValue returns a fresh random token value (256 bits) with a prefix
// saying its kind.
func newTokenValue(prefix string) string {
	b := make([]byte, 32)
	rand.Read(b)
	return prefix + b32.EncodeToString(b)
}

func checkLabel(path, v string) error {
	if !definition.ValidLabel(v) {
		return fieldErr(path, "%s is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter", definition.Quote(v))
	}
	return nil
}

func listOf[T any](items []T, next string) api.List[T] {
	if items == nil {
		items = []T{}
	}
	return api.List[T]{Items: items, NextPageToken: next}
}

// list answers one page of a list read in a read-only transaction.
func list[T any](s *Server, w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, tx store.Tx, p store.Page) ([]T, string, error)) error {
	p, err := page(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var items []T
	var next string
	err = s.cfg.Store.View(ctx, func(tx store.Tx) error {
		items, next, err = fn(ctx, tx, p)
		return err
	})
	if err != nil {
		return storeErr(err, "page")
	}
	writeJSON(w, http.StatusOK, listOf(items, next))
	return nil
}

// get answers one resource read in a read-only transaction.
func get[T any](s *Server, w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, tx store.Tx) (T, error)) error {
	ctx := r.Context()
	var v T
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		v, err = fn(ctx, tx)
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// remove runs a deletion and answers 204.
func (s *Server) remove(w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, tx store.Tx) error) error {
	ctx := r.Context()
	if err := s.cfg.Store.Update(ctx, func(tx store.Tx) error { return fn(ctx, tx) }); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) getOpenAPI(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.openAPI())
	return nil
}

// Organizations and tokens.

func (s *Server) createOrg(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateOrgRequest
	body, err := s.decodeJSON(w, r, &req)
	if err != nil {
		return err
	}
	if err := definition.CheckOrgName(req.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	return s.create(w, r, body, http.StatusCreated, func(ctx context.Context, tx store.Tx) (any, error) {
		o := api.Organization{ID: newID("org"), Name: req.Name, CreatedAt: s.cfg.Now().UTC()}
		if err := tx.CreateOrg(ctx, o); err != nil {
			return nil, storeErr(err, "organization "+definition.Quote(req.Name))
		}
		s.log.Info("organization created", "org", o.Name, "id", o.ID)
		return o, nil
	})
}

func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.Organization, string, error) {
		return tx.ListOrgs(ctx, p)
	})
}

// findOrg finds an organization by name, or else by id.
func findOrg(ctx context.Context, tx store.Tx, ref string) (api.Organization, error) {
	o, err := tx.GetOrgByName(ctx, ref)
	if errors.Is(err, store.ErrNotFound) {
		o, err = tx.GetOrg(ctx, ref)
	}
	if err != nil {
		return o, storeErr(err, "organization "+definition.Quote(ref))
	}
	return o, nil
}

func (s *Server) getOrg(w http.ResponseWriter, r *http.Request) error {
	return get(s, w, r, func(ctx context.Context, tx store.Tx) (api.Organization, error) {
		return findOrg(ctx, tx, r.PathValue("org"))
	})
}

func (s *Server) newToken(ctx context.Context, tx store.Tx, orgID, name string) (api.Token, error) {
	t := api.Token{ID: newID("tok"), OrgID: orgID, Name: name, CreatedAt: s.cfg.Now().UTC()}
	value := newTokenValue(orgTokenPrefix)
	if err := tx.CreateToken(ctx, store.TokenRecord{Token: t, Hash: hashToken(value)}); err != nil {
		return t, storeErr(err, "token")
	}
	t.Value = value
	return t, nil
}

func (s *Server) decodeTokenRequest(w http.ResponseWriter, r *http.Request) (api.CreateTokenRequest, []byte, error) {
	var req api.CreateTokenRequest
	body, err := s.decodeJSON(w, r, &req)
	if err != nil {
		return req, nil, err
	}
	if req.Name == "" {
		req.Name = "default"
	}
	if len(req.Name) > 100 {
		return req, nil, fieldErr("name", "longer than 100 characters")
	}
	return req, body, nil
}

func (s *Server) createOrgToken(w http.ResponseWriter, r *http.Request) error {
	req, body, err := s.decodeTokenRequest(w, r)
	if err != nil {
		return err
	}
	return s.createSecret(w, r, body, http.StatusCreated, func(ctx context.Context, tx store.Tx) (any, error) {
		o, err := findOrg(ctx, tx, r.PathValue("org"))
		if err != nil {
			return nil, err
		}
		return s.newToken(ctx, tx, o.ID, req.Name)
	})
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	req, body, err := s.decodeTokenRequest(w, r)
	if err != nil {
		return err
	}
	return s.createSecret(w, r, body, http.StatusCreated, func(ctx context.Context, tx store.Tx) (any, error) {
		return s.newToken(ctx, tx, callerOf(ctx).orgID, req.Name)
	})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.Token, string, error) {
		return tx.ListTokens(ctx, callerOf(ctx).orgID, p)
	})
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request) error {
	return s.remove(w, r, func(ctx context.Context, tx store.Tx) error {
		id := r.PathValue("id")
		return storeErr(tx.DeleteToken(ctx, callerOf(ctx).orgID, id), "token "+definition.Quote(id))
	})
}

// Edge tokens.

// checkEdgeTokenName checks the name of a new edge token: a label, as
// "edge-par", so it reads well in lists and logs.
func checkEdgeTokenName(name string) error {
	switch {
	case name == "":
		return fieldErr("name", "required: a name to recognise the edge token by, such as edge-par")
	case len(name) > 63:
		return fieldErr("name", "longer than 63 characters (%d)", len(name))
	}
	return checkLabel("name", name)
}

func (s *Server) createEdgeToken(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateEdgeTokenRequest
	body, err := s.decodeJSON(w, r, &req)
	if err != nil {
		return err
	}
	if err := checkEdgeTokenName(req.Name); err != nil {
		return err
	}
	return s.createSecret(w, r, body, http.StatusCreated, func(ctx context.Context, tx store.Tx) (any, error) {
		t := api.EdgeToken{ID: newID("etk"), Name: req.Name, CreatedAt: s.cfg.Now().UTC()}
		value := newTokenValue(edgeTokenPrefix)
		if err := tx.CreateEdgeToken(ctx, store.EdgeTokenRecord{EdgeToken: t, Hash: hashToken(value)}); err != nil {
			return nil, storeErr(err, "edge token "+definition.Quote(req.Name))
		}
		s.log.Info("edge token created", "name", t.Name, "id", t.ID)
		t.Value = value
		return t, nil
	})
}

func (s *Server) listEdgeTokens(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.EdgeToken, string, error) {
		return tx.ListEdgeTokens(ctx, p)
	})
}

func (s *Server) deleteEdgeToken(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	err := s.remove(w, r, func(ctx context.Context, tx store.Tx) error {
		return storeErr(tx.DeleteEdgeToken(ctx, id), "edge token "+definition.Quote(id))
	})
	if err == nil {
		s.log.Info("edge token revoked", "id", id)
	}
	return err
}

// Apps.

// appHost is an app's public host name at the edges:
// <app>-<org>.<domain>, one label under the domain so that one wildcard
// certificate (*.<domain>) covers every app.
func (s *Server) appHost(orgID, app string, tx store.Tx, ctx context.Context) (string, error) {
	o, err := tx.GetOrg(ctx, orgID)
	if err != nil {
		return "", fmt.Errorf("organization of token: %w", err)
	}
	label, err := definition.AppHostLabel(app, o.Name)
	if err != nil {
		return "", fieldErr("name", "%v", err)
	}
	return label + "." + s.cfg.Domain, nil
}

func (s *Server) createApp(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateAppRequest
	body, err := s.decodeJSON(w, r, &req)
	if err != nil {
		return err
	}
	if err := checkLabel("name", req.Name); err != nil {
		return err
	}
	return s.create(w, r, body, http.StatusCreated, func(ctx context.Context, tx store.Tx) (any, error) {
		orgID := callerOf(ctx).orgID
		host, err := s.appHost(orgID, req.Name, tx, ctx)
		if err != nil {
			return nil, err
		}
		a := api.App{ID: newID("app"), OrgID: orgID, Name: req.Name, Host: host, CreatedAt: s.cfg.Now().UTC()}
		if err := tx.CreateApp(ctx, a); err != nil {
			if errors.Is(err, store.ErrConflict) {
				if _, gerr := tx.GetApp(ctx, orgID, req.Name); errors.Is(gerr, store.ErrNotFound) {
					// The name is free here, but its public host is taken:
					// "a-b" of org "c" and "a" of org "b-c" share a-b-c.
					return nil, apiErr(http.StatusConflict, api.CodeConflict,
						"the public host %s is already another app's; choose another app name", host)
				}
			}
			return nil, storeErr(err, "app "+definition.Quote(req.Name))
		}
		return a, nil
	})
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.App, string, error) {
		return tx.ListApps(ctx, callerOf(ctx).orgID, p)
	})
}

func findApp(ctx context.Context, tx store.Tx, name string) (api.App, error) {
	a, err := tx.GetApp(ctx, callerOf(ctx).orgID, name)
	if err != nil {
		return a, storeErr(err, "app "+definition.Quote(name))
	}
	return a, nil
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) error {
	return get(s, w, r, func(ctx context.Context, tx store.Tx) (api.App, error) {
		return findApp(ctx, tx, r.PathValue("app"))
	})
}

func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) error {
	return s.remove(w, r, func(ctx context.Context, tx store.Tx) error {
		name := r.PathValue("app")
		err := tx.DeleteApp(ctx, callerOf(ctx).orgID, name)
		if errors.Is(err, store.ErrConflict) {
			return errConflict("app %s still has services; delete them first", definition.Quote(name))
		}
		return storeErr(err, "app "+definition.Quote(name))
	})
}

// Services and deployments.

// definitionError turns the parser's or validator's field errors into an
// API error that lists every one.
func definitionError(err error) error {
	var fe definition.Errors
	if errors.As(err, &fe) {
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalid,
			Message: fmt.Sprintf("invalid deployment definition (%d errors)", len(fe)), Fields: []api.FieldError(fe)}
	}
	return errInvalid("invalid deployment definition: %v", err)
}

// deployService validates a definition, resolves its image to a digest
// (before anything is written: the registry is called outside any
// transaction), then creates the deployment in one transaction, in which
// the definition is validated again. A retry with a live Idempotency-Key
// replays the first answer, digest included, without calling the
// registry.
func (s *Server) deployService(w http.ResponseWriter, r *http.Request) error {
	if err := checkContentType(r, true); err != nil {
		return err
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	def, err := definition.Parse(body)
	if err != nil {
		return definitionError(err)
	}
	appName := r.PathValue("app")
	ctx := r.Context()
	var resolved *image.Resolved
	resolve := func() error {
		if err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
			_, _, err := s.checkDeploy(ctx, tx, appName, def)
			return err
		}); err != nil {
			return err
		}
		res, err := s.resolveImage(ctx, callerOf(ctx).orgID, def)
		if err != nil {
			return err
		}
		resolved = &res
		return nil
	}
	if def.Image != "" && !s.replays(ctx, r) {
		if err := resolve(); err != nil {
			return err
		}
	}
	var touched []string
	create := func(ctx context.Context, tx store.Tx) (any, error) {
		touched = nil
		orgID := callerOf(ctx).orgID
		app, opts, err := s.checkDeploy(ctx, tx, appName, def)
		if err != nil {
			return nil, err
		}
		if def.Image != "" && resolved == nil {
			return nil, errUnresolved
		}
		org, err := tx.GetOrg(ctx, orgID)
		if err != nil {
			return nil, err
		}
		regional, err := definition.Derive(def, opts)
		if err != nil {
			return nil, definitionError(err)
		}
		now := s.cfg.Now().UTC()
		d := api.Deployment{ID: newID("dep"), OrgID: orgID, AppID: app.ID, App: app.Name, Service: def.Name,
			Status: api.StatusPending, Definition: def, CreatedAt: now, UpdatedAt: now}
		for _, rd := range regional {
			if resolved != nil {
				rd.ImageDigest = resolved.Digest
			}
			d.Regional = append(d.Regional, api.RegionalDeployment{ID: newID("rd"), DeploymentID: d.ID,
				Region: rd.Region, Status: api.StatusPending, Definition: rd, UpdatedAt: now})
		}
		svc := api.Service{ID: newID("svc"), OrgID: orgID, AppID: app.ID, App: app.Name, Name: def.Name, CreatedAt: now, UpdatedAt: now}
		stored, err := tx.CreateDeployment(ctx, store.NewDeployment{Service: svc, Deployment: d})
		if err != nil {
			return nil, storeErr(err, "deployment")
		}
		if touched, err = s.afterDeploy(ctx, tx, org.Name, stored); err != nil {
			return nil, err
		}
		showImage(&stored)
		s.log.Info("deployment created", "app", app.Name, "service", def.Name, "version", stored.Version, "id", stored.ID,
			"image", def.Image, "image_digest", stored.ImageDigest)
		return stored, nil
	}
	err = s.create(w, r, body, http.StatusCreated, create)
	if errors.Is(err, errUnresolved) {
		// The key's record expired since it was looked up: resolve now.
		if err = resolve(); err == nil {
			err = s.create(w, r, body, http.StatusCreated, create)
		}
	}
	if err == nil {
		s.engine.Nudge(touched...)
	}
	return err
}

// checkDeploy finds the app and validates def for the caller's
// organization (its secrets must exist, its regions be open), returning
// the app and the options to derive with.
func (s *Server) checkDeploy(ctx context.Context, tx store.Tx, appName string, def api.Definition) (api.App, definition.Options, error) {
	orgID := callerOf(ctx).orgID
	app, err := findApp(ctx, tx, appName)
	if err != nil {
		return app, definition.Options{}, err
	}
	opts := s.cfg.Spec
	exists := map[string]bool{}
	names := []string{def.RegistrySecret}
	for _, e := range def.Env {
		names = append(names, e.Secret)
	}
	for _, name := range names {
		if _, seen := exists[name]; seen || name == "" {
			continue
		}
		_, err := tx.GetSecret(ctx, orgID, name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return app, opts, err
		}
		exists[name] = err == nil
	}
	opts.SecretExists = func(name string) bool { return exists[name] }
	var fields definition.Errors
	if err := definition.Validate(def, opts); err != nil {
		if !errors.As(err, &fields) {
			return app, opts, definitionError(err)
		}
	}
	regionErrs, err := checkRegionsOpen(ctx, tx, def.Regions)
	if err != nil {
		return app, opts, err
	}
	if fields = append(fields, regionErrs...); len(fields) > 0 {
		return app, opts, definitionError(fields)
	}
	return app, opts, nil
}

// checkRegionsOpen refuses regions that are not registered and open: new
// deployments name only open regions.
func checkRegionsOpen(ctx context.Context, tx store.Tx, names []string) ([]api.FieldError, error) {
	regions, err := allRegions(ctx, tx)
	if err != nil {
		return nil, err
	}
	byID := map[string]api.Region{}
	for _, r := range regions {
		byID[r.ID] = r
	}
	var out []api.FieldError
	for i, name := range names {
		r, ok := byID[name]
		switch {
		case !ok:
			out = append(out, api.FieldError{Path: fmt.Sprintf("regions[%d]", i), Message: fmt.Sprintf("region %s is not registered", definition.Quote(name))})
		case r.Status != api.RegionOpen:
			out = append(out, api.FieldError{Path: fmt.Sprintf("regions[%d]", i), Message: fmt.Sprintf("region %s is not open (status %s)", definition.Quote(name), r.Status)})
		}
	}
	return out, nil
}

// afterDeploy records a new deployment's first event, supersedes the
// service's running deployments, and stops the service in the regions the
// new definition dropped. It returns the regions given new operations.
func (s *Server) afterDeploy(ctx context.Context, tx store.Tx, orgName string, d api.Deployment) ([]string, error) {
	now := s.cfg.Now().UTC()
	if err := tx.AddDeploymentEvent(ctx, d.ID, api.DeploymentEvent{At: now, Type: api.EventCreated,
		Message: fmt.Sprintf("version %d created for %s", d.Version, strings.Join(d.Definition.Regions, ", "))}); err != nil {
		return nil, err
	}
	active, err := tx.ListActiveDeployments(ctx, d.ServiceID)
	if err != nil {
		return nil, err
	}
	why := fmt.Sprintf("superseded by version %d (%s)", d.Version, d.ID)
	for _, a := range active {
		if a.ID == d.ID {
			continue
		}
		old, err := tx.GetDeployment(ctx, d.OrgID, a.ID)
		if err != nil {
			return nil, err
		}
		for _, rd := range old.Regional {
			if rollout.Terminal(rd.Status) {
				continue
			}
			rd.Status, rd.Message, rd.UpdatedAt = api.StatusCanceled, why, now
			if err := tx.UpdateRegionalDeployment(ctx, rd); err != nil {
				return nil, err
			}
		}
		ops, err := tx.ListRegionOps(ctx, store.OpFilter{DeploymentID: old.ID, State: store.OpPending})
		if err != nil {
			return nil, err
		}
		for _, op := range ops {
			if op.Purpose != store.PurposeRollout {
				continue // reverts still put regions back on a healthy version
			}
			op.State, op.Message, op.UpdatedAt = store.OpSuperseded, why, now
			if err := tx.UpdateRegionOp(ctx, op); err != nil {
				return nil, err
			}
		}
		status := api.StatusSuperseded
		if old.Status == api.StatusCanceled {
			status, why = api.StatusCanceled, old.Message+"; "+why
		}
		if err := tx.SetDeploymentState(ctx, old.ID, status, why, false, now); err != nil {
			return nil, err
		}
		if err := tx.AddDeploymentEvent(ctx, old.ID, api.DeploymentEvent{At: now, Type: api.EventSuperseded, Message: why}); err != nil {
			return nil, err
		}
		if err := tx.AddDeploymentEvent(ctx, d.ID, api.DeploymentEvent{At: now, Type: api.EventSuperseded,
			Message: fmt.Sprintf("supersedes version %d (%s), which was %s", old.Version, old.ID, old.Status)}); err != nil {
			return nil, err
		}
	}
	key := serviceKey(orgName, d.App, d.Service)
	srs, err := tx.ServiceRegions(ctx, key)
	if err != nil {
		return nil, err
	}
	var touched []string
	for _, sr := range srs {
		if sr.Deleted || slices.Contains(d.Definition.Regions, sr.Region) {
			continue
		}
		op, err := s.engine.NewOp(ctx, tx, rollout.Op{Org: orgName, App: d.App, Service: d.Service, Region: sr.Region,
			Purpose: store.PurposeRemove, DeploymentID: d.ID})
		if err != nil {
			return nil, err
		}
		touched = append(touched, sr.Region)
		if err := tx.AddDeploymentEvent(ctx, d.ID, api.DeploymentEvent{At: now, Region: sr.Region, Type: api.EventRemoved,
			Message: fmt.Sprintf("region %s is no longer in the definition: stopping the service there (generation %d)", sr.Region, op.Generation)}); err != nil {
			return nil, err
		}
	}
	return touched, nil
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.Service, string, error) {
		app, err := findApp(ctx, tx, r.PathValue("app"))
		if err != nil {
			return nil, "", err
		}
		return tx.ListServices(ctx, app.OrgID, app.ID, p)
	})
}

func findService(ctx context.Context, tx store.Tx, appName, name string) (api.Service, error) {
	app, err := findApp(ctx, tx, appName)
	if err != nil {
		return api.Service{}, err
	}
	svc, err := tx.GetService(ctx, app.OrgID, app.ID, name)
	if err != nil {
		return svc, storeErr(err, "service "+definition.Quote(name)+" of app "+definition.Quote(appName))
	}
	return svc, nil
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request) error {
	return get(s, w, r, func(ctx context.Context, tx store.Tx) (api.Service, error) {
		svc, err := findService(ctx, tx, r.PathValue("app"), r.PathValue("service"))
		if err != nil || svc.LatestDeployment == "" {
			return svc, err
		}
		d, err := tx.GetDeployment(ctx, svc.OrgID, svc.LatestDeployment)
		if err != nil {
			return svc, err
		}
		showImage(&d)
		svc.Image, svc.ImageDigest = d.Image, d.ImageDigest
		return svc, nil
	})
}

// deleteService deletes a service's rows and writes a deletion, with a new
// generation, for every region it may run in; the regions' operation
// workers send them until each region has answered, however long a region
// stays down.
func (s *Server) deleteService(w http.ResponseWriter, r *http.Request) error {
	var touched []string
	err := s.remove(w, r, func(ctx context.Context, tx store.Tx) error {
		touched = nil
		svc, err := findService(ctx, tx, r.PathValue("app"), r.PathValue("service"))
		if err != nil {
			return err
		}
		org, err := tx.GetOrg(ctx, svc.OrgID)
		if err != nil {
			return err
		}
		key := serviceKey(org.Name, svc.App, svc.Name)
		srs, err := tx.ServiceRegions(ctx, key)
		if err != nil {
			return err
		}
		for _, sr := range srs {
			if sr.Deleted {
				continue
			}
			if _, err := s.engine.NewOp(ctx, tx, rollout.Op{Org: org.Name, App: svc.App, Service: svc.Name, Region: sr.Region,
				Purpose: store.PurposeDelete}); err != nil {
				return err
			}
			touched = append(touched, sr.Region)
		}
		return storeErr(tx.DeleteService(ctx, svc.OrgID, svc.AppID, svc.Name), "service")
	})
	if err == nil {
		s.log.Info("service deleted", "app", r.PathValue("app"), "service", r.PathValue("service"), "regions", touched)
		s.engine.Nudge(touched...)
	}
	return err
}

// cancelDeployment cancels a running deployment: regions not reached yet
// are canceled, and regions that got the new version are reverted to their
// previous deployment.
func (s *Server) cancelDeployment(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	id := r.PathValue("id")
	var out api.Deployment
	var touched []string
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		touched = nil
		d, err := tx.GetDeployment(ctx, callerOf(ctx).orgID, id)
		if err != nil {
			return storeErr(err, "deployment "+definition.Quote(id))
		}
		active, err := tx.ListActiveDeployments(ctx, d.ServiceID)
		if err != nil {
			return err
		}
		running := slices.ContainsFunc(active, func(a store.ActiveDeployment) bool { return a.ID == d.ID })
		if d.Status == api.StatusCanceled {
			return errConflict("deployment %s (version %d) is already canceled", d.ID, d.Version)
		}
		if !running || (d.Status != api.StatusPending && d.Status != api.StatusProgressing) {
			return errConflict("deployment %s (version %d) already finished as %s; a finished deployment cannot be canceled (deploy again to change the service)",
				d.ID, d.Version, d.Status)
		}
		org, err := tx.GetOrg(ctx, d.OrgID)
		if err != nil {
			return err
		}
		if touched, err = s.engine.Cancel(ctx, tx, org.Name, d); err != nil {
			return err
		}
		out, err = tx.GetDeployment(ctx, d.OrgID, d.ID)
		if err != nil {
			return err
		}
		showImage(&out)
		out.Events, err = tx.ListDeploymentEvents(ctx, d.ID)
		return err
	})
	if err != nil {
		return err
	}
	s.log.Info("deployment canceled", "deployment", id, "reverting", touched)
	s.engine.Nudge(touched...)
	s.engine.NudgeDeployment(id)
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) listDeployments(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.Deployment, string, error) {
		svc, err := findService(ctx, tx, r.PathValue("app"), r.PathValue("service"))
		if err != nil {
			return nil, "", err
		}
		ds, next, err := tx.ListDeployments(ctx, svc.OrgID, svc.ID, p)
		return showImages(ds), next, err
	})
}

func (s *Server) getDeployment(w http.ResponseWriter, r *http.Request) error {
	return get(s, w, r, func(ctx context.Context, tx store.Tx) (api.Deployment, error) {
		id := r.PathValue("id")
		d, err := tx.GetDeployment(ctx, callerOf(ctx).orgID, id)
		if err != nil {
			return d, storeErr(err, "deployment "+definition.Quote(id))
		}
		showImage(&d)
		d.Events, err = tx.ListDeploymentEvents(ctx, id)
		return d, err
	})
}

// Secrets.

func (s *Server) putSecret(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if !definition.ValidSecretName(name) {
		return fieldErr("name", "%s is not a valid secret name: use letters, digits, '_', '.' and '-', not starting with '.' or '-', at most 128", definition.Quote(name))
	}
	var req api.PutSecretRequest
	if _, err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if len(req.Value) > maxSecretBytes {
		return fieldErr("value", "longer than %d bytes", maxSecretBytes)
	}
	ctx := r.Context()
	orgID := callerOf(ctx).orgID
	now := s.cfg.Now().UTC()
	sec := api.Secret{ID: newID("sec"), OrgID: orgID, Name: name, CreatedAt: now, UpdatedAt: now}
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		if old, err := tx.GetSecret(ctx, orgID, name); err == nil {
			sec.ID, sec.CreatedAt = old.ID, old.CreatedAt
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		_, err := tx.PutSecret(ctx, store.SecretRecord{Secret: sec, Sealed: s.sealer.Seal(orgID, name, []byte(req.Value))})
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sec)
	return nil
}

func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.Secret, string, error) {
		return tx.ListSecrets(ctx, callerOf(ctx).orgID, p)
	})
}

func (s *Server) deleteSecret(w http.ResponseWriter, r *http.Request) error {
	return s.remove(w, r, func(ctx context.Context, tx store.Tx) error {
		name := r.PathValue("name")
		return storeErr(tx.DeleteSecret(ctx, callerOf(ctx).orgID, name), "secret "+definition.Quote(name))
	})
}

// Regions.

var regionStatuses = []string{api.RegionProvisioning, api.RegionTesting, api.RegionOpen, api.RegionDraining}

func checkRegionFields(name string, lat, lon float64, u string) error {
	var fields []api.FieldError
	if len(name) > 100 {
		fields = append(fields, api.FieldError{Path: "name", Message: "longer than 100 characters"})
	}
	if math.IsNaN(lat) || lat < -90 || lat > 90 {
		fields = append(fields, api.FieldError{Path: "latitude", Message: fmt.Sprintf("%v is not in [-90, 90]", lat)})
	}
	if math.IsNaN(lon) || lon < -180 || lon > 180 {
		fields = append(fields, api.FieldError{Path: "longitude", Message: fmt.Sprintf("%v is not in [-180, 180]", lon)})
	}
	if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
		fields = append(fields, api.FieldError{Path: "url", Message: fmt.Sprintf("%s is not an http(s) URL of the region's control plane", definition.Quote(u))})
	}
	if len(fields) == 0 {
		return nil
	}
	return fieldsErr(fields...)
}

func (s *Server) createRegion(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateRegionRequest
	body, err := s.decodeJSON(w, r, &req)
	if err != nil {
		return err
	}
	if err := checkLabel("id", req.ID); err != nil {
		return err
	}
	if req.Name == "" {
		req.Name = req.ID
	}
	if err := checkRegionFields(req.Name, req.Latitude, req.Longitude, req.URL); err != nil {
		return err
	}
	return s.create(w, r, body, http.StatusCreated, func(ctx context.Context, tx store.Tx) (any, error) {
		now := s.cfg.Now().UTC()
		reg := api.Region{ID: req.ID, Name: req.Name, Latitude: req.Latitude, Longitude: req.Longitude,
			URL: req.URL, Status: api.RegionProvisioning, CreatedAt: now, UpdatedAt: now}
		if err := tx.CreateRegion(ctx, reg); err != nil {
			return nil, storeErr(err, "region "+definition.Quote(req.ID))
		}
		s.log.Info("region registered", "region", reg.ID, "url", reg.URL)
		return reg, nil
	})
}

func (s *Server) listRegions(w http.ResponseWriter, r *http.Request) error {
	return list(s, w, r, func(ctx context.Context, tx store.Tx, p store.Page) ([]api.Region, string, error) {
		return tx.ListRegions(ctx, p)
	})
}

func (s *Server) getRegion(w http.ResponseWriter, r *http.Request) error {
	return get(s, w, r, func(ctx context.Context, tx store.Tx) (api.Region, error) {
		id := r.PathValue("id")
		reg, err := tx.GetRegion(ctx, id)
		return reg, storeErr(err, "region "+definition.Quote(id))
	})
}

func (s *Server) updateRegion(w http.ResponseWriter, r *http.Request) error {
	var req api.UpdateRegionRequest
	if _, err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Status != nil && !slices.Contains(regionStatuses, *req.Status) {
		return fieldErr("status", "%s is not one of %s", definition.Quote(*req.Status), strings.Join(regionStatuses, ", "))
	}
	ctx := r.Context()
	id := r.PathValue("id")
	var reg api.Region
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		reg, err = tx.GetRegion(ctx, id)
		if err != nil {
			return storeErr(err, "region "+definition.Quote(id))
		}
		if req.Name != nil {
			reg.Name = *req.Name
		}
		if req.Latitude != nil {
			reg.Latitude = *req.Latitude
		}
		if req.Longitude != nil {
			reg.Longitude = *req.Longitude
		}
		if req.URL != nil {
			reg.URL = *req.URL
		}
		if req.Status != nil {
			reg.Status = *req.Status
		}
		if err := checkRegionFields(reg.Name, reg.Latitude, reg.Longitude, reg.URL); err != nil {
			return err
		}
		reg.UpdatedAt = s.cfg.Now().UTC()
		return storeErr(tx.UpdateRegion(ctx, reg), "region "+definition.Quote(id))
	})
	if err != nil {
		return err
	}
	s.log.Info("region updated", "region", reg.ID, "status", reg.Status)
	writeJSON(w, http.StatusOK, reg)
	return nil
}

// CheckDomain checks the apps' domain: a DNS name short enough that every
// app's host, a 63-character label under it, fits DNS's 253 characters.
func CheckDomain(d string) error {
	if len(d) > 253-64 {
		return fmt.Errorf("%s is %d characters long; at most %d leave room for the apps' 63-character host labels", definition.Quote(d), len(d), 253-64)
	}
	for l := range strings.SplitSeq(d, ".") {
		ok := l != "" && len(l) <= 63 && l[0] != '-' && l[len(l)-1] != '-'
		for i := 0; ok && i < len(l); i++ {
			c := l[i]
			ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
		}
		if !ok {
			return fmt.Errorf("%s is not a DNS name: want lowercase labels of letters, digits and '-', separated by dots", definition.Quote(d))
		}
	}
	return nil
}
