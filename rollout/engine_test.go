package rollout

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
	"github.com/meridian-run/meridian/store/storetest"
)

// fixture is an engine on a real store holding organization acme, app
// shop, and deployment version 1 of service web HEALTHY in fra and was;
// the engine's clock stands still until the test moves it.
type fixture struct {
	t   *testing.T
	ctx context.Context
	st  store.Store
	e   *Engine
	now time.Time
	org api.Organization
	v1  api.Deployment
}

func newFixture(t *testing.T, st store.Store) *fixture {
	f := &fixture{t: t, ctx: context.Background(), st: st, now: t0, org: api.Organization{ID: "org_acme", Name: "acme", CreatedAt: t0}}
	e, err := New(Config{Store: st, Now: func() time.Time { return f.now }, Poll: time.Second, RegionTimeout: time.Second,
		RetryMin: time.Millisecond, RetryMax: time.Second, Owner: "test", LeaseTTL: time.Hour,
		Secrets: func(context.Context, string, api.RegionalDefinition) (map[string]string, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	f.e = e
	f.update(func(tx store.Tx) error {
		if err := tx.CreateOrg(f.ctx, f.org); err != nil {
			return err
		}
		return tx.CreateApp(f.ctx, api.App{ID: "app_shop", OrgID: f.org.ID, Name: "shop", Host: "shop-acme.example", CreatedAt: t0})
	})
	f.v1 = f.create(api.StatusHealthy, api.Strategy{}, "fra", "was")
	return f
}

func (f *fixture) update(fn func(tx store.Tx) error) {
	f.t.Helper()
	if err := f.st.Update(f.ctx, fn); err != nil {
		f.t.Fatal(err)
	}
}

// create stores the next version of the service in regions, every region
// in status.
func (f *fixture) create(status string, s api.Strategy, regions ...string) api.Deployment {
	f.t.Helper()
	d := newDeployment(s, regions...)
	d.ID, d.OrgID, d.AppID, d.Status = fmt.Sprintf("dep_%d", f.now.UnixNano()), f.org.ID, "app_shop", status
	for i := range d.Regional {
		d.Regional[i].ID, d.Regional[i].DeploymentID, d.Regional[i].Status = d.ID+"_"+d.Regional[i].Region, d.ID, status
	}
	var out api.Deployment
	f.update(func(tx store.Tx) (err error) {
		out, err = tx.CreateDeployment(f.ctx, store.NewDeployment{Deployment: d,
			Service: api.Service{ID: "svc_web", OrgID: f.org.ID, AppID: "app_shop", App: "shop", Name: "web", CreatedAt: t0, UpdatedAt: t0}})
		return err
	})
	f.now = f.now.Add(time.Second)
	return out
}

// stored reads a deployment with its events, whether it is active, and
// its operations.
func (f *fixture) stored(id string) (api.Deployment, bool, []store.RegionOp) {
	f.t.Helper()
	var d api.Deployment
	var active bool
	var ops []store.RegionOp
	err := f.st.View(f.ctx, func(tx store.Tx) error {
		var err error
		if d, err = tx.GetDeployment(f.ctx, f.org.ID, id); err != nil {
			return err
		}
		if d.Events, err = tx.ListDeploymentEvents(f.ctx, id); err != nil {
			return err
		}
		act, err := tx.ListActiveDeployments(f.ctx, d.ServiceID)
		active = slices.ContainsFunc(act, func(a store.ActiveDeployment) bool { return a.ID == id })
		if err != nil {
			return err
		}
		ops, err = tx.ListRegionOps(f.ctx, store.OpFilter{DeploymentID: id})
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return d, active, ops
}

// same fails the test unless the store holds what the model says: the
// deployment's and its regions' state, the operations, and the events the
// decisions wrote (the operations' own events aside).
func (f *fixture) same(m *model, announced string) {
	f.t.Helper()
	d, active, ops := f.stored(m.st.Deployment.ID)
	want := m.st.Deployment
	if d.Status != want.Status || d.Message != want.Message || active != m.st.Active {
		f.t.Fatalf("stored deployment %s %q active %v; the model's %s %q active %v", d.Status, d.Message, active, want.Status, want.Message, m.st.Active)
	}
	for i, rd := range d.Regional {
		w := want.Regional[i]
		if rd.Region != w.Region || rd.Status != w.Status || rd.Message != w.Message || rd.Generation != w.Generation ||
			(rd.StartedAt == nil) != (w.StartedAt == nil) || (rd.StartedAt != nil && !rd.StartedAt.Equal(*w.StartedAt)) {
			f.t.Fatalf("stored region %+v;\nthe model's %+v", rd, w)
		}
	}
	type opView struct {
		Region, Purpose, Kind, State, Target string
		Generation                           int64
	}
	var got, exp []opView
	for _, o := range ops {
		got = append(got, opView{o.Region, o.Purpose, o.Kind, o.State, o.TargetDeploymentID, o.Generation})
	}
	for _, o := range m.st.Ops {
		target := ""
		if t := m.targets[o.ID]; t != nil {
			target = t.DeploymentID
		}
		exp = append(exp, opView{o.Region, o.Purpose, o.Kind, o.State, target, o.Generation})
	}
	// Operations made in one step share their creation time: the store
	// lists them by generation and id.
	order := func(a, b opView) int {
		return strings.Compare(fmt.Sprint(a.Region, a.Purpose, a.Generation), fmt.Sprint(b.Region, b.Purpose, b.Generation))
	}
	slices.SortFunc(got, order)
	slices.SortFunc(exp, order)
	if !reflect.DeepEqual(got, exp) {
		f.t.Fatalf("stored operations %+v;\nthe model's %+v", got, exp)
	}
	var events []string
	for _, e := range d.Events {
		if e.Type != api.EventApplied && e.Type != api.EventReverted {
			events = append(events, fmt.Sprintf("%s %s %s: %s", e.At.UTC().Format(time.TimeOnly), e.Region, e.Type, e.Message))
		}
	}
	wantEvents := []string{fmt.Sprintf("%s  %s: rollout driven by replica test", announced, api.EventProgress)}
	for _, e := range want.Events {
		wantEvents = append(wantEvents, fmt.Sprintf("%s %s %s: %s", e.At.UTC().Format(time.TimeOnly), e.Region, e.Type, e.Message))
	}
	if !slices.Equal(events, wantEvents) {
		f.t.Fatalf("stored events\n  %s\nthe model's\n  %s", strings.Join(events, "\n  "), strings.Join(wantEvents, "\n  "))
	}
}

// settle settles a pending operation through the engine, as its region's
// worker does, and in the model.
func (f *fixture) settle(m *model, region, purpose string) {
	f.t.Helper()
	_, _, ops := f.stored(m.st.Deployment.ID)
	for _, o := range ops {
		if o.Region == region && o.Purpose == purpose && o.State == store.OpPending {
			if err := f.e.settle(o, store.OpDone, true, fmt.Sprintf("generation %d accepted", o.Generation)); err != nil {
				f.t.Fatal(err)
			}
			m.settle(region, purpose, store.OpDone, "")
			return
		}
	}
	f.t.Fatalf("no pending %s operation in %s", purpose, region)
}

// TestEngineWritesTheDecisions drives a deployment through the engine's
// transactions on a real store, step by step with the regions' answers
// given, and checks after each step that the store holds what the model
// of the decisions says: the engine writes each action as decided, loads
// the state Decide needs (generations, operations, the previous healthy
// deployment per region), and numbers operations as decided.
func TestEngineWritesTheDecisions(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st store.Store) {
		f := newFixture(t, st)
		s := api.Strategy{CanaryRegions: []string{"fra"}, MaxParallelRegions: 1, OnFailure: api.OnFailureAll, HealthDeadline: "30s"}
		v2 := f.create(api.StatusPending, s, "fra", "was", "sin")
		m := newModel(t, v2)
		for _, rd := range f.v1.Regional {
			m.st.Previous[rd.Region] = Target{DeploymentID: f.v1.ID, Version: f.v1.Version, Definition: rd.Definition}
		}
		if !f.e.acquire(f.ctx, "deployment:"+v2.ID) {
			t.Fatal("lease not acquired")
		}
		d := &driver{e: f.e, id: v2.ID, orgID: f.org.ID, lease: "deployment:" + v2.ID, failed: map[string]map[string]bool{}, org: f.org.Name}
		announced := f.now.Add(time.Second).Format(time.TimeOnly) // the first step's
		step := func(obs map[string]Observation) bool {
			t.Helper()
			f.now = f.now.Add(time.Second)
			m.now = f.now
			m.decide(obs)
			over, err := d.decide(f.ctx, obs)
			if err != nil {
				t.Fatal(err)
			}
			if over != (m.finishedAt >= 0) {
				t.Fatalf("the engine says over=%v; the model %v", over, m.finishedAt >= 0)
			}
			f.same(m, announced)
			return over
		}
		step(nil) // the canary starts
		f.settle(m, "fra", store.PurposeRollout)
		step(nil)
		step(map[string]Observation{"fra": healthyStatus(v2, 1, 2)}) // then was
		f.settle(m, "was", store.PurposeRollout)
		step(nil)
		step(map[string]Observation{"was": progressingStatus(v2, 1, 1, "0/1 healthy")})
		step(map[string]Observation{"was": progressingStatus(v2, 1, 1, "0/1 healthy", "i-1")}) // was fails: every region reverted
		if d.failed["was"]["i-1"] != true {
			t.Fatalf("the driver's memory: %v", d.failed)
		}
		f.settle(m, "fra", store.PurposeRevert)
		step(nil)
		f.settle(m, "was", store.PurposeRevert)
		if !step(nil) {
			t.Fatal("the rollout did not finish")
		}
		m.checkFinished()
		got, _, _ := f.stored(v2.ID)
		if got.Status != api.StatusError || !strings.HasPrefix(got.Message, "rolled back everywhere (fra) because was failed") {
			t.Fatalf("v2: %s %q", got.Status, got.Message)
		}
	})
}

// TestEngineCancel writes a user's cancellation on a real store as Cancel
// decides it, reverting the regions that got the new version.
func TestEngineCancel(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st store.Store) {
		f := newFixture(t, st)
		v2 := f.create(api.StatusPending, api.Strategy{}, "fra", "sin")
		f.e.acquire(f.ctx, "deployment:"+v2.ID)
		d := &driver{e: f.e, id: v2.ID, orgID: f.org.ID, lease: "deployment:" + v2.ID, failed: map[string]map[string]bool{}, org: f.org.Name}
		if _, err := d.decide(f.ctx, nil); err != nil {
			t.Fatal(err)
		}
		cur, _, _ := f.stored(v2.ID)
		var touched []string
		f.update(func(tx store.Tx) (err error) {
			touched, err = f.e.Cancel(f.ctx, tx, f.org.Name, cur)
			return err
		})
		if !slices.Equal(touched, []string{"fra", "sin"}) {
			t.Fatalf("reverting %v", touched)
		}
		got, active, ops := f.stored(v2.ID)
		if got.Status != api.StatusCanceled || got.Message != "canceled by the user; reverting fra, sin" || !active {
			t.Fatalf("canceled: %s %q active %v", got.Status, got.Message, active)
		}
		want := map[string]string{"fra": "canceled; reverting to version 1 (" + f.v1.ID + ")",
			"sin": "canceled; stopping the service there (no earlier deployment was healthy in this region)"}
		for _, rd := range got.Regional {
			if rd.Status != api.StatusCanceled || rd.Message != want[rd.Region] {
				t.Fatalf("%s: %s %q", rd.Region, rd.Status, rd.Message)
			}
		}
		var reverts []string
		for _, o := range ops {
			if o.Purpose == store.PurposeRevert {
				reverts = append(reverts, fmt.Sprintf("%s %s gen %d %s", o.Region, o.Kind, o.Generation, o.TargetDeploymentID))
			}
		}
		slices.Sort(reverts)
		if !slices.Equal(reverts, []string{"fra apply gen 2 " + f.v1.ID, "sin delete gen 2 "}) {
			t.Fatalf("reverts %v", reverts)
		}
	})
}

// TestEngineFencedByLease: a replica whose lease another holds writes
// nothing.
func TestEngineFencedByLease(t *testing.T) {
	f := newFixture(t, storetest.Open(t, "sqlite"))
	v2 := f.create(api.StatusPending, api.Strategy{}, "fra")
	f.update(func(tx store.Tx) error {
		_, err := tx.AcquireLease(f.ctx, "deployment:"+v2.ID, "other", f.now, time.Hour)
		return err
	})
	d := &driver{e: f.e, id: v2.ID, orgID: f.org.ID, lease: "deployment:" + v2.ID, failed: map[string]map[string]bool{}, org: f.org.Name}
	if _, err := d.decide(f.ctx, nil); !errors.Is(err, errLeaseLost) {
		t.Fatalf("decide under another's lease: %v", err)
	}
	if got, _, ops := f.stored(v2.ID); got.Status != api.StatusPending || len(ops) != 0 || len(got.Events) != 0 {
		t.Fatalf("written under another's lease: %s, %d ops, %d events", got.Status, len(ops), len(got.Events))
	}
}

// TestApplyRefusesAMovedGeneration: a decision that numbered an operation
// with a generation another writer took fails its transaction whole.
func TestApplyRefusesAMovedGeneration(t *testing.T) {
	f := newFixture(t, storetest.Open(t, "sqlite"))
	v2 := f.create(api.StatusPending, api.Strategy{}, "fra")
	var st State
	f.update(func(tx store.Tx) error {
		st = State{Deployment: v2, Active: true}
		if err := load(f.ctx, tx, f.org.Name, &st); err != nil {
			return err
		}
		// Another writer allocates the next generation meanwhile.
		_, err := tx.AllocateGeneration(f.ctx, regionapi.ServiceKey("acme", "shop", "web"), "fra", false, f.now)
		return err
	})
	actions := Decide(st, nil, f.now)
	err := f.st.Update(f.ctx, func(tx store.Tx) error {
		_, err := apply(f.ctx, tx, f.org.Name, v2, f.now, actions)
		return err
	})
	if !errors.Is(err, errGenerationMoved) || !strings.Contains(err.Error(), "acme.shop.web in fra got generation 2, decided 1") {
		t.Fatalf("apply with a moved generation: %v", err)
	}
	if got, _, ops := f.stored(v2.ID); got.Status != api.StatusPending || len(ops) != 0 || len(got.Events) != 0 {
		t.Fatalf("a failed decision left writes: %s, %d ops, %d events", got.Status, len(ops), len(got.Events))
	}
}

func TestNewChecksConfig(t *testing.T) {
	ok := Config{Store: storetest.Open(t, "sqlite"), Now: time.Now, Owner: "o", Poll: time.Second, RegionTimeout: time.Second,
		RetryMin: time.Second, RetryMax: time.Second, LeaseTTL: time.Second,
		Secrets: func(context.Context, string, api.RegionalDefinition) (map[string]string, error) { return nil, nil }}
	for _, c := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.Store = nil }, "Store is required"},
		{func(c *Config) { c.Now = nil }, "Now is required"},
		{func(c *Config) { c.Owner = "" }, "Owner is required"},
		{func(c *Config) { c.Secrets = nil }, "Secrets is required"},
		{func(c *Config) { c.Poll = 0 }, "Poll must be positive, not 0s"},
		{func(c *Config) { c.LeaseTTL = -time.Second }, "LeaseTTL must be positive, not -1s"},
		{func(c *Config) { c.RetryMax = time.Millisecond }, "RetryMax 1ms is below RetryMin 1s"},
	} {
		cfg := ok
		c.change(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want %q, got %v", c.want, err)
		}
	}
	e, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}
