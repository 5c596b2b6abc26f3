package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
)

// envPostgres names the variable holding the DSN of the PostgreSQL the
// contract tests run against; without it they skip PostgreSQL, except
// under CI, where they fail.
const envPostgres = "MERIDIAN_TEST_POSTGRES"

// backend opens fresh, empty databases of one kind.
type backend struct {
	name string
	// fresh returns the location (path or DSN) of a new empty database,
	// removed when the test ends.
	fresh func(t testing.TB) string
	open  func(ctx context.Context, loc string) (Store, error)
}

func sqliteBackend() backend {
	return backend{
		name: "sqlite",
		fresh: func(t testing.TB) string {
			return filepath.Join(t.TempDir(), "state", "global.db")
		},
		open: func(ctx context.Context, loc string) (Store, error) { return OpenSQLite(ctx, loc) },
	}
}

// postgresBackend returns the PostgreSQL backend, or skips (fails under CI)
// when no DSN is configured.
func postgresBackend(t testing.TB) backend {
	t.Helper()
	dsn := os.Getenv(envPostgres)
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s is empty: the PostgreSQL store would go untested", envPostgres)
		}
		t.Skipf("%s is not set; PostgreSQL not tested (e.g. %s=postgres://postgres@127.0.0.1:5432/test?sslmode=disable)", envPostgres, envPostgres)
	}
	return backend{
		name: "postgres",
		fresh: func(t testing.TB) string {
			return freshSchema(t, dsn)
		},
		open: func(ctx context.Context, loc string) (Store, error) { return OpenPostgres(ctx, loc) },
	}
}

// freshSchema creates a schema for one test, dropped at cleanup, and returns
// base with its search_path set to it.
func freshSchema(t testing.TB, base string) string {
	t.Helper()
	b := make([]byte, 8)
	rand.Read(b)
	schema := "store_test_" + hex.EncodeToString(b)
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", envPostgres, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestSQLite(t *testing.T) {
	runContract(t, sqliteBackend())
}

func TestPostgres(t *testing.T) {
	runContract(t, postgresBackend(t))
}

// runContract runs every contract test against b, each on a fresh database.
func runContract(t *testing.T, b backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b backend)
	}{
		{"Orgs", testOrgs},
		{"Tokens", testTokens},
		{"EdgeTokens", testEdgeTokens},
		{"UpgradeToEdgeTokens", testUpgradeToEdgeTokens},
		{"Apps", testApps},
		{"Secrets", testSecrets},
		{"Regions", testRegions},
		{"Idempotency", testIdempotency},
		{"IdempotencyRace", testIdempotencyRace},
		{"IdempotencyExpiry", testIdempotencyExpiry},
		{"IdempotencyExpiryConcurrent", testIdempotencyExpiryConcurrent},
		{"Deployments", testDeployments},
		{"DeploymentIsolation", testDeploymentIsolation},
		{"DeploymentErrors", testDeploymentErrors},
		{"RollbackOnError", testRollback},
		{"FailedCreateLeavesNothing", testFailedCreateLeavesNothing},
		{"ConcurrentCreateDeployment", testConcurrentCreateDeployment},
		{"DeleteServiceCascades", testCascade},
		{"Pagination", testPagination},
		{"BadPageTokens", testBadPageTokens},
		{"ViewIsReadOnly", testViewReadOnly},
		{"TxUsableAfterConflict", testTxUsableAfterConflict},
		{"ReadModifyWrite", testReadModifyWrite},
		{"DeadlockRetried", testDeadlockRetried},
		{"ReopenKeepsData", testReopen},
		{"RefusesNewerSchema", testNewerSchema},
		{"ConcurrentOpen", testConcurrentOpen},
		{"Rollout", testRollout},
		{"Leases", testLeases},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, b)
		})
	}
}

// fixture is a fresh store with deterministic times and ids.
type fixture struct {
	t   testing.TB
	s   Store
	loc string
	b   backend
	n   atomic.Int64
}

// base is the first fixture time; it has microseconds, as stored times do.
var base = time.Date(2026, 3, 4, 5, 6, 7, 123456000, time.UTC)

func newFixture(t testing.TB, b backend) *fixture {
	t.Helper()
	f := &fixture{t: t, b: b, loc: b.fresh(t)}
	f.s = f.open()
	return f
}

func (f *fixture) open() Store {
	f.t.Helper()
	s, err := f.b.open(context.Background(), f.loc)
	if err != nil {
		f.t.Fatalf("open %s: %v", f.b.name, err)
	}
	f.t.Cleanup(func() { s.Close() })
	return s
}

// now returns a time one second later than the previous one.
func (f *fixture) now() time.Time {
	return base.Add(time.Duration(f.n.Add(1)) * time.Second)
}

func (f *fixture) id(prefix string) string {
	return fmt.Sprintf("%s-%04d", prefix, f.n.Add(1))
}

func (f *fixture) update(fn func(Tx) error) {
	f.t.Helper()
	if err := f.s.Update(context.Background(), fn); err != nil {
		f.t.Fatalf("update: %v", err)
	}
}

func (f *fixture) view(fn func(Tx) error) {
	f.t.Helper()
	if err := f.s.View(context.Background(), fn); err != nil {
		f.t.Fatalf("view: %v", err)
	}
}

// updateErr runs fn in Update and returns its error.
func (f *fixture) updateErr(fn func(Tx) error) error {
	return f.s.Update(context.Background(), fn)
}

func (f *fixture) org(name string) api.Organization {
	f.t.Helper()
	o := api.Organization{ID: f.id("org"), Name: name, CreatedAt: f.now()}
	f.update(func(tx Tx) error { return tx.CreateOrg(context.Background(), o) })
	return o
}

func (f *fixture) app(org api.Organization, name string) api.App {
	f.t.Helper()
	a := api.App{ID: f.id("app"), OrgID: org.ID, Name: name, Host: name + "." + org.Name + ".example.test", CreatedAt: f.now()}
	f.update(func(tx Tx) error { return tx.CreateApp(context.Background(), a) })
	return a
}

func definition(service, image string, regions ...string) api.Definition {
	return api.Definition{
		Name:    service,
		Type:    api.TypeWeb,
		Regions: regions,
		Image:   image,
		Ports:   []api.Port{{Port: 8080, Protocol: "http"}},
		Routes:  []api.Route{{Port: 8080, Path: "/"}},
		Env:     []api.EnvVar{{Key: "MODE", Value: "prod"}, {Key: "DB", Secret: "db-url", Scopes: []string{regions[0]}}},
		Scalings: []api.Scaling{
			{Min: 1, Max: 3},
		},
		HealthChecks: []api.HealthCheck{{Port: 8080, HTTP: &api.HTTPCheck{Path: "/healthz"}, Interval: "5s"}},
	}
}

// newDeployment describes a deployment of service in app across regions
// (listed in the order given; the store sorts them).
func (f *fixture) newDeployment(app api.App, service, image string, regions ...string) NewDeployment {
	at := f.now()
	d := NewDeployment{
		Service: api.Service{ID: f.id("svc"), OrgID: app.OrgID, AppID: app.ID, Name: service, CreatedAt: at},
		Deployment: api.Deployment{
			ID:         f.id("dep"),
			Status:     api.StatusPending,
			Definition: definition(service, image, regions...),
			CreatedAt:  at,
		},
	}
	for i, r := range regions {
		d.Deployment.Regional = append(d.Deployment.Regional, api.RegionalDeployment{
			ID:         f.id("rd"),
			Region:     r,
			Generation: int64(i + 1),
			Status:     api.StatusPending,
			Definition: api.RegionalDefinition{
				Region:       r,
				Name:         service,
				Type:         api.TypeWeb,
				Image:        image,
				Ports:        []api.Port{{Port: 8080, Protocol: "http"}},
				Routes:       []api.Route{{Port: 8080, Path: "/"}},
				Env:          []api.ResolvedEnv{{Key: "MODE", Value: "prod"}},
				Scaling:      api.ScalingRange{Min: 1, Max: 3},
				InstanceType: api.InstanceType{Name: "small", MilliCPU: 500, MemoryMB: 256},
				Datacenters:  []string{r + "-a", r + "-b"},
				HealthChecks: []api.HealthCheck{{Port: 8080, TCP: &api.TCPCheck{}}},
				Strategy:     api.Strategy{Type: api.StrategyRolling},
			},
			UpdatedAt: at,
		})
	}
	return d
}

func (f *fixture) deploy(app api.App, service, image string, regions ...string) api.Deployment {
	f.t.Helper()
	nd := f.newDeployment(app, service, image, regions...)
	var out api.Deployment
	f.update(func(tx Tx) (err error) {
		out, err = tx.CreateDeployment(context.Background(), nd)
		return err
	})
	return out
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func equal(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func testOrgs(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	beta := f.org("beta")

	f.view(func(tx Tx) error {
		got, err := tx.GetOrg(ctx, acme.ID)
		if err != nil {
			return err
		}
		equal(t, "GetOrg", got, acme)
		got, err = tx.GetOrgByName(ctx, "beta")
		if err != nil {
			return err
		}
		equal(t, "GetOrgByName", got, beta)
		_, err = tx.GetOrg(ctx, "nope")
		wantErr(t, "GetOrg unknown", err, ErrNotFound)
		_, err = tx.GetOrgByName(ctx, "nope")
		wantErr(t, "GetOrgByName unknown", err, ErrNotFound)
		list, next, err := tx.ListOrgs(ctx, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListOrgs", list, []api.Organization{acme, beta})
		equal(t, "ListOrgs next", next, "")
		return nil
	})

	err := f.updateErr(func(tx Tx) error {
		return tx.CreateOrg(ctx, api.Organization{ID: f.id("org"), Name: "acme", CreatedAt: f.now()})
	})
	wantErr(t, "CreateOrg same name", err, ErrConflict)
	err = f.updateErr(func(tx Tx) error {
		return tx.CreateOrg(ctx, api.Organization{ID: acme.ID, Name: "other", CreatedAt: f.now()})
	})
	wantErr(t, "CreateOrg same id", err, ErrConflict)
	err = f.updateErr(func(tx Tx) error { return tx.CreateOrg(ctx, api.Organization{ID: "x"}) })
	if err == nil || !strings.Contains(err.Error(), "name is empty") {
		t.Fatalf("CreateOrg without name: %v, want an error naming the field", err)
	}

	// Times keep microseconds and come back in UTC.
	at := time.Date(2026, 1, 2, 3, 4, 5, 987654321, time.FixedZone("X", 3600))
	o := api.Organization{ID: f.id("org"), Name: "times", CreatedAt: at}
	f.update(func(tx Tx) error { return tx.CreateOrg(ctx, o) })
	f.view(func(tx Tx) error {
		got, err := tx.GetOrg(ctx, o.ID)
		if err != nil {
			return err
		}
		want := time.Date(2026, 1, 2, 2, 4, 5, 987654000, time.UTC)
		equal(t, "stored time", got.CreatedAt, want)
		return nil
	})
}

func testTokens(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme, beta := f.org("acme"), f.org("beta")
	at := f.now()
	// Two tokens share a creation time: the id breaks the tie.
	t2 := TokenRecord{Token: api.Token{ID: "tok-b", OrgID: acme.ID, Name: "ci", CreatedAt: at}, Hash: []byte("hash-2")}
	t1 := TokenRecord{Token: api.Token{ID: "tok-a", OrgID: acme.ID, Name: "laptop", CreatedAt: at}, Hash: []byte("hash-1")}
	t0 := TokenRecord{Token: api.Token{ID: "tok-z", OrgID: acme.ID, Name: "old", CreatedAt: at.Add(-time.Hour)}, Hash: []byte("hash-0")}
	tb := TokenRecord{Token: api.Token{ID: "tok-beta", OrgID: beta.ID, Name: "beta", CreatedAt: at}, Hash: []byte("hash-beta")}
	f.update(func(tx Tx) error {
		for _, r := range []TokenRecord{t2, t1, t0, tb} {
			if err := tx.CreateToken(ctx, r); err != nil {
				return err
			}
		}
		return nil
	})
	f.view(func(tx Tx) error {
		got, err := tx.TokenByHash(ctx, []byte("hash-1"))
		if err != nil {
			return err
		}
		equal(t, "TokenByHash", got, t1.Token)
		_, err = tx.TokenByHash(ctx, []byte("nope"))
		wantErr(t, "TokenByHash unknown", err, ErrNotFound)
		list, _, err := tx.ListTokens(ctx, acme.ID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListTokens", list, []api.Token{t0.Token, t1.Token, t2.Token})
		list, _, err = tx.ListTokens(ctx, beta.ID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListTokens beta", list, []api.Token{tb.Token})
		return nil
	})

	err := f.updateErr(func(tx Tx) error {
		return tx.CreateToken(ctx, TokenRecord{Token: api.Token{ID: "tok-new", OrgID: acme.ID, CreatedAt: at}, Hash: []byte("hash-1")})
	})
	wantErr(t, "CreateToken same hash", err, ErrConflict)
	err = f.updateErr(func(tx Tx) error {
		return tx.CreateToken(ctx, TokenRecord{Token: api.Token{ID: "tok-new", OrgID: "no-such-org", CreatedAt: at}, Hash: []byte("h")})
	})
	wantErr(t, "CreateToken unknown org", err, ErrNotFound)

	// Another org's token looks absent.
	err = f.updateErr(func(tx Tx) error { return tx.DeleteToken(ctx, beta.ID, t1.ID) })
	wantErr(t, "DeleteToken other org", err, ErrNotFound)
	f.update(func(tx Tx) error { return tx.DeleteToken(ctx, acme.ID, t1.ID) })
	err = f.updateErr(func(tx Tx) error { return tx.DeleteToken(ctx, acme.ID, t1.ID) })
	wantErr(t, "DeleteToken twice", err, ErrNotFound)
	f.view(func(tx Tx) error {
		_, err := tx.TokenByHash(ctx, []byte("hash-1"))
		wantErr(t, "TokenByHash deleted", err, ErrNotFound)
		return nil
	})
}

func testApps(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme, beta := f.org("acme"), f.org("beta")
	web := f.app(acme, "web")
	api2 := f.app(acme, "api")
	betaWeb := f.app(beta, "web") // same name, other org: fine

	f.view(func(tx Tx) error {
		got, err := tx.GetApp(ctx, acme.ID, "web")
		if err != nil {
			return err
		}
		equal(t, "GetApp", got, web)
		got, err = tx.GetApp(ctx, beta.ID, "web")
		if err != nil {
			return err
		}
		equal(t, "GetApp beta", got, betaWeb)
		_, err = tx.GetApp(ctx, beta.ID, "api")
		wantErr(t, "GetApp other org", err, ErrNotFound)
		list, _, err := tx.ListApps(ctx, acme.ID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListApps", list, []api.App{api2, web})
		return nil
	})

	err := f.updateErr(func(tx Tx) error {
		return tx.CreateApp(ctx, api.App{ID: f.id("app"), OrgID: acme.ID, Name: "web", Host: "other.test"})
	})
	wantErr(t, "CreateApp same name", err, ErrConflict)
	err = f.updateErr(func(tx Tx) error {
		return tx.CreateApp(ctx, api.App{ID: f.id("app"), OrgID: beta.ID, Name: "taken-host", Host: web.Host})
	})
	wantErr(t, "CreateApp same host", err, ErrConflict)
	err = f.updateErr(func(tx Tx) error {
		return tx.CreateApp(ctx, api.App{ID: f.id("app"), OrgID: "no-such-org", Name: "x"})
	})
	wantErr(t, "CreateApp unknown org", err, ErrNotFound)

	// An app with services cannot go.
	f.deploy(web, "frontend", "nginx:1", "fra")
	err = f.updateErr(func(tx Tx) error { return tx.DeleteApp(ctx, acme.ID, "web") })
	wantErr(t, "DeleteApp with services", err, ErrConflict)
	err = f.updateErr(func(tx Tx) error { return tx.DeleteApp(ctx, beta.ID, "api") })
	wantErr(t, "DeleteApp other org", err, ErrNotFound)
	f.update(func(tx Tx) error { return tx.DeleteApp(ctx, acme.ID, "api") })
	f.update(func(tx Tx) error { return tx.DeleteService(ctx, acme.ID, web.ID, "frontend") })
	f.update(func(tx Tx) error { return tx.DeleteApp(ctx, acme.ID, "web") })
	f.view(func(tx Tx) error {
		list, _, err := tx.ListApps(ctx, acme.ID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListApps after delete", list, []api.App{})
		return nil
	})
}

func testSecrets(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme, beta := f.org("acme"), f.org("beta")
	created := f.now()
	s := SecretRecord{Secret: api.Secret{ID: f.id("sec"), OrgID: acme.ID, Name: "db-url", CreatedAt: created, UpdatedAt: created}, Sealed: []byte("sealed-1")}
	f.update(func(tx Tx) error {
		ok, err := tx.PutSecret(ctx, s)
		if err != nil {
			return err
		}
		equal(t, "PutSecret new: created", ok, true)
		return nil
	})
	updated := f.now()
	f.update(func(tx Tx) error {
		ok, err := tx.PutSecret(ctx, SecretRecord{
			Secret: api.Secret{ID: f.id("sec"), OrgID: acme.ID, Name: "db-url", CreatedAt: updated, UpdatedAt: updated},
			Sealed: []byte("sealed-2"),
		})
		if err != nil {
			return err
		}
		equal(t, "PutSecret again: created", ok, false)
		return nil
	})
	f.update(func(tx Tx) error {
		_, err := tx.PutSecret(ctx, SecretRecord{Secret: api.Secret{ID: f.id("sec"), OrgID: acme.ID, Name: "api-key", CreatedAt: updated, UpdatedAt: updated}, Sealed: []byte("k")})
		return err
	})
	f.view(func(tx Tx) error {
		got, err := tx.GetSecret(ctx, acme.ID, "db-url")
		if err != nil {
			return err
		}
		want := SecretRecord{Secret: api.Secret{ID: s.ID, OrgID: acme.ID, Name: "db-url", CreatedAt: created, UpdatedAt: updated}, Sealed: []byte("sealed-2")}
		equal(t, "GetSecret", got, want)
		_, err = tx.GetSecret(ctx, beta.ID, "db-url")
		wantErr(t, "GetSecret other org", err, ErrNotFound)
		list, _, err := tx.ListSecrets(ctx, acme.ID, Page{})
		if err != nil {
			return err
		}
		if len(list) != 2 || list[0].Name != "api-key" || list[1].Name != "db-url" || list[1].Value != "" {
			t.Fatalf("ListSecrets: %+v", list)
		}
		equal(t, "ListSecrets item", list[1], want.Secret)
		list, _, err = tx.ListSecrets(ctx, beta.ID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListSecrets beta", list, []api.Secret{})
		return nil
	})
	_, err := putSecret(f, SecretRecord{Secret: api.Secret{ID: f.id("sec"), OrgID: "no-such-org", Name: "x"}})
	wantErr(t, "PutSecret unknown org", err, ErrNotFound)
	_, err = putSecret(f, SecretRecord{Secret: api.Secret{ID: s.ID, OrgID: beta.ID, Name: "other"}})
	wantErr(t, "PutSecret taken id", err, ErrConflict)

	err = f.updateErr(func(tx Tx) error { return tx.DeleteSecret(ctx, beta.ID, "db-url") })
	wantErr(t, "DeleteSecret other org", err, ErrNotFound)
	f.update(func(tx Tx) error { return tx.DeleteSecret(ctx, acme.ID, "db-url") })
	err = f.updateErr(func(tx Tx) error { return tx.DeleteSecret(ctx, acme.ID, "db-url") })
	wantErr(t, "DeleteSecret twice", err, ErrNotFound)
}

func putSecret(f *fixture, s SecretRecord) (created bool, err error) {
	err = f.updateErr(func(tx Tx) error {
		created, err = tx.PutSecret(context.Background(), s)
		return err
	})
	return created, err
}

func testRegions(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	at := f.now()
	fra := api.Region{ID: "fra", Name: "Frankfurt", Latitude: 50.1109, Longitude: 8.6821, URL: "https://127.0.0.1:7001", Status: api.RegionProvisioning, Message: "smoke test failed", CreatedAt: at, UpdatedAt: at}
	ams := api.Region{ID: "ams", Name: "Amsterdam", Latitude: 52.37, Longitude: 4.89, URL: "https://127.0.0.1:7002", Status: api.RegionOpen, CreatedAt: at, UpdatedAt: at}
	f.update(func(tx Tx) error {
		if err := tx.CreateRegion(ctx, fra); err != nil {
			return err
		}
		return tx.CreateRegion(ctx, ams)
	})
	err := f.updateErr(func(tx Tx) error { return tx.CreateRegion(ctx, fra) })
	wantErr(t, "CreateRegion twice", err, ErrConflict)

	fra2 := fra
	fra2.Status, fra2.URL, fra2.Message, fra2.UpdatedAt = api.RegionOpen, "https://127.0.0.1:7009", "", f.now()
	fra2.CreatedAt = f.now() // ignored
	f.update(func(tx Tx) error { return tx.UpdateRegion(ctx, fra2) })
	fra2.CreatedAt = fra.CreatedAt
	err = f.updateErr(func(tx Tx) error { return tx.UpdateRegion(ctx, api.Region{ID: "nope"}) })
	wantErr(t, "UpdateRegion unknown", err, ErrNotFound)

	f.view(func(tx Tx) error {
		got, err := tx.GetRegion(ctx, "fra")
		if err != nil {
			return err
		}
		equal(t, "GetRegion", got, fra2)
		_, err = tx.GetRegion(ctx, "nope")
		wantErr(t, "GetRegion unknown", err, ErrNotFound)
		list, next, err := tx.ListRegions(ctx, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListRegions", list, []api.Region{ams, fra2})
		equal(t, "ListRegions next", next, "")
		return nil
	})
}

func testIdempotency(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme, beta := f.org("acme"), f.org("beta")
	rec := Idempotency{OrgID: acme.ID, Key: "key-1", RequestHash: []byte{1, 2, 3}, Status: 201, Body: []byte(`{"id":"x"}`), CreatedAt: f.now()}
	f.update(func(tx Tx) error { return tx.PutIdempotency(ctx, rec) })
	err := f.updateErr(func(tx Tx) error {
		return tx.PutIdempotency(ctx, Idempotency{OrgID: acme.ID, Key: "key-1", RequestHash: []byte{9}, Status: 200, CreatedAt: f.now()})
	})
	wantErr(t, "PutIdempotency taken key", err, ErrConflict)
	// The same key in another org is another record.
	other := Idempotency{OrgID: beta.ID, Key: "key-1", RequestHash: []byte{4}, Status: 409, Body: []byte(`{}`), CreatedAt: f.now()}
	f.update(func(tx Tx) error { return tx.PutIdempotency(ctx, other) })
	f.view(func(tx Tx) error {
		got, err := tx.GetIdempotency(ctx, acme.ID, "key-1")
		if err != nil {
			return err
		}
		equal(t, "GetIdempotency", got, rec)
		got, err = tx.GetIdempotency(ctx, beta.ID, "key-1")
		if err != nil {
			return err
		}
		equal(t, "GetIdempotency beta", got, other)
		_, err = tx.GetIdempotency(ctx, acme.ID, "key-2")
		wantErr(t, "GetIdempotency unknown", err, ErrNotFound)
		return nil
	})
}

// idempotencyKeys lists the keys of orgID's records that are still
// stored, among keys.
func (f *fixture) idempotencyKeys(orgID string, keys ...string) []string {
	f.t.Helper()
	ctx := context.Background()
	var out []string
	f.view(func(tx Tx) error {
		out = nil
		for _, k := range keys {
			_, err := tx.GetIdempotency(ctx, orgID, k)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, k)
		}
		return nil
	})
	return out
}

// testIdempotencyExpiry: DeleteIdempotencyBefore deletes records strictly
// older than its time, oldest first, at most limit at a time, in every
// organization; DeleteIdempotency deletes one key so that it can be put
// again in the same transaction.
func testIdempotencyExpiry(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme, beta := f.org("acme"), f.org("beta")
	keys := []string{"k0", "k1", "k2", "k3", "k4"}
	// acme's record of key i is created at times[i], beta's a second later.
	times := make([]time.Time, len(keys))
	for i, k := range keys {
		times[i] = f.now()
		betaAt := f.now()
		f.update(func(tx Tx) error {
			if err := tx.PutIdempotency(ctx, Idempotency{OrgID: acme.ID, Key: k, RequestHash: []byte{1}, Status: 201, Body: []byte(`{}`), CreatedAt: times[i]}); err != nil {
				return err
			}
			return tx.PutIdempotency(ctx, Idempotency{OrgID: beta.ID, Key: k, RequestHash: []byte{2}, Status: 201, Body: []byte(`{}`), CreatedAt: betaAt})
		})
	}
	del := func(before time.Time, limit int) int {
		t.Helper()
		var n int
		f.update(func(tx Tx) (err error) {
			n, err = tx.DeleteIdempotencyBefore(ctx, before, limit)
			return err
		})
		return n
	}
	// Four records (k0 and k1 of both organizations) are older than
	// times[2]; the limit bounds one call, oldest first.
	equal(t, "first batch", del(times[2], 3), 3)
	equal(t, "acme after the first batch", f.idempotencyKeys(acme.ID, keys...), []string{"k2", "k3", "k4"})
	equal(t, "beta after the first batch", f.idempotencyKeys(beta.ID, keys...), []string{"k1", "k2", "k3", "k4"})
	equal(t, "second batch", del(times[2], 3), 1)
	equal(t, "nothing left before times[2]", del(times[2], 3), 0)
	equal(t, "beta after the second batch", f.idempotencyKeys(beta.ID, keys...), []string{"k2", "k3", "k4"})
	// A record created at exactly the time given is kept.
	equal(t, "at times[2]", del(times[2], 10), 0)
	equal(t, "just after times[2]", del(times[2].Add(time.Microsecond), 10), 1)
	equal(t, "acme kept", f.idempotencyKeys(acme.ID, keys...), []string{"k3", "k4"})
	equal(t, "beta kept", f.idempotencyKeys(beta.ID, keys...), []string{"k2", "k3", "k4"})

	err := f.updateErr(func(tx Tx) error {
		_, err := tx.DeleteIdempotencyBefore(ctx, times[4], 0)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "limit 0") {
		t.Fatalf("DeleteIdempotencyBefore with limit 0: %v", err)
	}

	// Replacing one key in one transaction; the other org's is untouched.
	fresh := Idempotency{OrgID: acme.ID, Key: "k3", RequestHash: []byte{3}, Status: 200, Body: []byte(`{"new":true}`), CreatedAt: f.now()}
	f.update(func(tx Tx) error {
		if err := tx.DeleteIdempotency(ctx, acme.ID, "k3"); err != nil {
			return err
		}
		return tx.PutIdempotency(ctx, fresh)
	})
	f.view(func(tx Tx) error {
		got, err := tx.GetIdempotency(ctx, acme.ID, "k3")
		if err != nil {
			return err
		}
		equal(t, "replaced record", got, fresh)
		got, err = tx.GetIdempotency(ctx, beta.ID, "k3")
		if err != nil {
			return err
		}
		equal(t, "beta's record", got.CreatedAt, times[3].Add(time.Second))
		return nil
	})
	err = f.updateErr(func(tx Tx) error { return tx.DeleteIdempotency(ctx, acme.ID, "k2") })
	wantErr(t, "DeleteIdempotency of a deleted key", err, ErrNotFound)
	err = f.updateErr(func(tx Tx) error { return tx.DeleteIdempotency(ctx, "org-none", "k4") })
	wantErr(t, "DeleteIdempotency in another org", err, ErrNotFound)
	equal(t, "beta still has k4", f.idempotencyKeys(beta.ID, "k4"), []string{"k4"})
	// A rolled-back replacement leaves the old record.
	errBoom := errors.New("boom")
	err = f.updateErr(func(tx Tx) error {
		if err := tx.DeleteIdempotency(ctx, beta.ID, "k4"); err != nil {
			return err
		}
		return errBoom
	})
	wantErr(t, "rolled back", err, errBoom)
	equal(t, "beta's k4 after a rollback", f.idempotencyKeys(beta.ID, "k4"), []string{"k4"})
}

// testIdempotencyExpiryConcurrent: two callers deleting expired records
// at once (two replicas' janitors) delete each record once between them.
// In PostgreSQL the second does not wait for the first, whose transaction
// is still open: it skips the rows the first holds.
func testIdempotencyExpiryConcurrent(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	var keys []string
	f.update(func(tx Tx) error {
		for i := range 10 {
			k := fmt.Sprintf("k%d", i)
			keys = append(keys, k)
			if err := tx.PutIdempotency(ctx, Idempotency{OrgID: acme.ID, Key: k, RequestHash: []byte{1}, Status: 201, CreatedAt: base.Add(time.Duration(i) * time.Second)}); err != nil {
				return err
			}
		}
		return nil
	})
	cutoff := base.Add(time.Hour)
	if b.name != "postgres" {
		// SQLite runs one write transaction at a time: the two calls
		// follow each other.
		var n1, n2 int
		f.update(func(tx Tx) (err error) { n1, err = tx.DeleteIdempotencyBefore(ctx, cutoff, 4); return err })
		f.update(func(tx Tx) (err error) { n2, err = tx.DeleteIdempotencyBefore(ctx, cutoff, 100); return err })
		equal(t, "deleted", []int{n1, n2}, []int{4, 6})
		equal(t, "left", f.idempotencyKeys(acme.ID, keys...), []string(nil))
		return
	}
	firstDone := make(chan struct{})
	release := make(chan struct{})
	errA := make(chan error, 1)
	var nA int
	go func() {
		errA <- f.s.Update(ctx, func(tx Tx) (err error) {
			nA, err = tx.DeleteIdempotencyBefore(ctx, cutoff, 4)
			if err != nil {
				return err
			}
			close(firstDone)
			<-release
			return nil
		})
	}()
	select {
	case <-firstDone:
	case err := <-errA:
		t.Fatalf("first delete: %v", err)
	}
	// The first transaction is open, holding its 4 rows.
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var nB int
	err := f.s.Update(bctx, func(tx Tx) (err error) {
		nB, err = tx.DeleteIdempotencyBefore(bctx, cutoff, 100)
		return err
	})
	close(release)
	if err != nil {
		t.Fatalf("second delete while the first is open: %v", err)
	}
	if err := <-errA; err != nil {
		t.Fatalf("first delete: %v", err)
	}
	equal(t, "deleted", []int{nA, nB}, []int{4, 6})
	equal(t, "left", f.idempotencyKeys(acme.ID, keys...), []string(nil))
}

func testDeployments(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")

	d1 := f.deploy(web, "frontend", "nginx:1", "sin", "fra", "iad")
	d2 := f.deploy(web, "frontend", "nginx:2", "fra")
	d3 := f.deploy(web, "frontend", "nginx:3", "fra", "iad")
	other := f.deploy(web, "backend", "api:1", "fra")
	for i, d := range []api.Deployment{d1, d2, d3} {
		if d.Version != i+1 {
			t.Fatalf("deployment %d has version %d", i+1, d.Version)
		}
		if d.ServiceID != d1.ServiceID {
			t.Fatalf("deployment %d of service %q, want %q", i+1, d.ServiceID, d1.ServiceID)
		}
	}
	if other.Version != 1 || other.ServiceID == d1.ServiceID {
		t.Fatalf("other service's deployment: %+v", other)
	}
	if d1.App != "web" || d1.AppID != web.ID || d1.Service != "frontend" || d1.OrgID != acme.ID {
		t.Fatalf("deployment names: %+v", d1)
	}
	regions := func(d api.Deployment) (rs []string) {
		for _, r := range d.Regional {
			rs = append(rs, r.Region)
			if r.DeploymentID != d.ID {
				t.Fatalf("regional %q has deployment id %q, want %q", r.ID, r.DeploymentID, d.ID)
			}
		}
		return rs
	}
	equal(t, "regions sorted", regions(d1), []string{"fra", "iad", "sin"})

	f.view(func(tx Tx) error {
		// CreateDeployment returned exactly what is stored.
		for _, want := range []api.Deployment{d1, d2, d3, other} {
			got, err := tx.GetDeployment(ctx, acme.ID, want.ID)
			if err != nil {
				return err
			}
			equal(t, "GetDeployment", got, want)
		}
		svc, err := tx.GetService(ctx, acme.ID, web.ID, "frontend")
		if err != nil {
			return err
		}
		if svc.ID != d1.ServiceID || svc.LatestDeployment != d3.ID || svc.LatestVersion != 3 || svc.Status != api.StatusPending ||
			svc.App != "web" || svc.AppID != web.ID || svc.OrgID != acme.ID {
			t.Fatalf("GetService: %+v", svc)
		}
		if svc.Definition == nil || !reflect.DeepEqual(*svc.Definition, d3.Definition) {
			t.Fatalf("GetService definition: %+v, want %+v", svc.Definition, d3.Definition)
		}
		equal(t, "service created", svc.CreatedAt, d1.CreatedAt)
		equal(t, "service updated", svc.UpdatedAt, d3.CreatedAt)

		list, next, err := tx.ListServices(ctx, acme.ID, web.ID, Page{})
		if err != nil {
			return err
		}
		if len(list) != 2 || next != "" || list[0].Name != "backend" || list[1].Name != "frontend" {
			t.Fatalf("ListServices: %+v %q", list, next)
		}
		svc.Definition = nil
		equal(t, "ListServices item", list[1], svc)

		deps, next, err := tx.ListDeployments(ctx, acme.ID, d1.ServiceID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListDeployments", deps, []api.Deployment{d3, d2, d1})
		equal(t, "ListDeployments next", next, "")
		return nil
	})

	// Status updates show in the deployment and its service.
	at := f.now()
	f.update(func(tx Tx) error { return tx.UpdateDeploymentStatus(ctx, d3.ID, api.StatusDegraded, "iad failed", at) })
	err := f.updateErr(func(tx Tx) error { return tx.UpdateDeploymentStatus(ctx, "nope", api.StatusHealthy, "", at) })
	wantErr(t, "UpdateDeploymentStatus unknown", err, ErrNotFound)

	rd := d3.Regional[1] // iad
	rd.Generation, rd.Status, rd.Message, rd.UpdatedAt = 7, api.StatusError, "health deadline", f.now()
	rd.Definition.Scaling = api.ScalingRange{Min: 2, Max: 5}
	f.update(func(tx Tx) error { return tx.UpdateRegionalDeployment(ctx, rd) })
	// By deployment and region when the id is not known.
	rd0 := d3.Regional[0] // fra
	rd0.ID = ""
	rd0.Generation, rd0.Status, rd0.UpdatedAt = 9, api.StatusHealthy, f.now()
	f.update(func(tx Tx) error { return tx.UpdateRegionalDeployment(ctx, rd0) })
	rd0.ID = d3.Regional[0].ID
	err = f.updateErr(func(tx Tx) error {
		return tx.UpdateRegionalDeployment(ctx, api.RegionalDeployment{ID: "nope", Status: api.StatusHealthy})
	})
	wantErr(t, "UpdateRegionalDeployment unknown", err, ErrNotFound)

	f.view(func(tx Tx) error {
		got, err := tx.GetDeployment(ctx, acme.ID, d3.ID)
		if err != nil {
			return err
		}
		want := d3
		want.Status, want.Message, want.UpdatedAt = api.StatusDegraded, "iad failed", at
		want.Regional = []api.RegionalDeployment{rd0, rd}
		equal(t, "GetDeployment after updates", got, want)
		svc, err := tx.GetService(ctx, acme.ID, web.ID, "frontend")
		if err != nil {
			return err
		}
		equal(t, "service status", svc.Status, api.StatusDegraded)
		return nil
	})

	// A deployment with no regions has an empty, non-nil list.
	nd := f.newDeployment(web, "empty", "x:1", "fra")
	nd.Deployment.Regional = nil
	f.update(func(tx Tx) error {
		got, err := tx.CreateDeployment(ctx, nd)
		if err != nil {
			return err
		}
		if got.Regional == nil || len(got.Regional) != 0 {
			t.Fatalf("regional of a deployment without regions: %#v", got.Regional)
		}
		stored, err := tx.GetDeployment(ctx, acme.ID, got.ID)
		if err != nil {
			return err
		}
		equal(t, "GetDeployment without regions", stored, got)
		return nil
	})
}

func testDeploymentIsolation(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme, beta := f.org("acme"), f.org("beta")
	web := f.app(acme, "web")
	betaWeb := f.app(beta, "web")
	d := f.deploy(web, "frontend", "nginx:1", "fra")

	f.view(func(tx Tx) error {
		_, err := tx.GetDeployment(ctx, beta.ID, d.ID)
		wantErr(t, "GetDeployment other org", err, ErrNotFound)
		_, err = tx.GetService(ctx, beta.ID, web.ID, "frontend")
		wantErr(t, "GetService other org", err, ErrNotFound)
		_, err = tx.GetService(ctx, beta.ID, betaWeb.ID, "frontend")
		wantErr(t, "GetService other org's app", err, ErrNotFound)
		list, _, err := tx.ListServices(ctx, beta.ID, web.ID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListServices other org", list, []api.Service{})
		deps, _, err := tx.ListDeployments(ctx, beta.ID, d.ServiceID, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListDeployments other org", deps, []api.Deployment{})
		return nil
	})
	err := f.updateErr(func(tx Tx) error { return tx.DeleteService(ctx, beta.ID, web.ID, "frontend") })
	wantErr(t, "DeleteService other org", err, ErrNotFound)

	// Deploying into another org's app is deploying into nothing.
	nd := f.newDeployment(web, "sneaky", "x:1", "fra")
	nd.Service.OrgID = beta.ID
	err = f.updateErr(func(tx Tx) error { _, err := tx.CreateDeployment(ctx, nd); return err })
	wantErr(t, "CreateDeployment into other org's app", err, ErrNotFound)

	// The same service name in the other org's own app is another service.
	bd := f.deploy(betaWeb, "frontend", "nginx:9", "fra")
	if bd.Version != 1 || bd.ServiceID == d.ServiceID {
		t.Fatalf("beta's frontend: %+v", bd)
	}
}

func testDeploymentErrors(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")
	create := func(nd NewDeployment) error {
		return f.updateErr(func(tx Tx) error { _, err := tx.CreateDeployment(ctx, nd); return err })
	}

	nd := f.newDeployment(web, "frontend", "x:1", "fra")
	nd.Service.AppID = "no-such-app"
	wantErr(t, "CreateDeployment unknown app", create(nd), ErrNotFound)

	d := f.deploy(web, "frontend", "x:1", "fra")
	nd = f.newDeployment(web, "frontend", "x:2", "fra")
	nd.Deployment.ID = d.ID
	wantErr(t, "CreateDeployment taken id", create(nd), ErrConflict)

	nd = f.newDeployment(web, "frontend", "x:2", "fra")
	nd.Deployment.Regional[0].ID = d.Regional[0].ID
	wantErr(t, "CreateDeployment taken regional id", create(nd), ErrConflict)

	nd = f.newDeployment(web, "other", "x:2", "fra")
	nd.Service.ID = d.ServiceID
	wantErr(t, "CreateDeployment taken service id", create(nd), ErrConflict)

	nd = f.newDeployment(web, "frontend", "x:2", "fra", "iad")
	nd.Deployment.Regional[1].Region = "fra"
	if err := create(nd); err == nil || !strings.Contains(err.Error(), "regional[1].region") {
		t.Fatalf("CreateDeployment with a repeated region: %v, want an error naming regional[1].region", err)
	}
	nd = f.newDeployment(web, "frontend", "x:2", "fra")
	nd.Deployment.ID = ""
	if err := create(nd); err == nil || !strings.Contains(err.Error(), "deployment id is empty") {
		t.Fatalf("CreateDeployment without id: %v", err)
	}

	// None of the failures moved the service on.
	f.view(func(tx Tx) error {
		svc, err := tx.GetService(ctx, acme.ID, web.ID, "frontend")
		if err != nil {
			return err
		}
		equal(t, "latest version", svc.LatestVersion, 1)
		_, err = tx.GetService(ctx, acme.ID, web.ID, "other")
		wantErr(t, "service of a failed deployment", err, ErrNotFound)
		return nil
	})
	if got := f.deploy(web, "frontend", "x:2", "fra"); got.Version != 2 {
		t.Fatalf("next version after failures: %d, want 2", got.Version)
	}
}

var errBoom = errors.New("boom")

func testRollback(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")
	f.deploy(web, "frontend", "x:1", "fra")

	err := f.updateErr(func(tx Tx) error {
		if _, err := tx.CreateDeployment(ctx, f.newDeployment(web, "frontend", "x:2", "fra", "iad")); err != nil {
			return err
		}
		if _, err := tx.CreateDeployment(ctx, f.newDeployment(web, "fresh", "x:2", "fra")); err != nil {
			return err
		}
		if err := tx.CreateOrg(ctx, api.Organization{ID: "org-rolled-back", Name: "gone"}); err != nil {
			return err
		}
		return fmt.Errorf("caller changed its mind: %w", errBoom)
	})
	wantErr(t, "Update with failing fn", err, errBoom)

	f.view(func(tx Tx) error {
		svc, err := tx.GetService(ctx, acme.ID, web.ID, "frontend")
		if err != nil {
			return err
		}
		equal(t, "latest version after rollback", svc.LatestVersion, 1)
		deps, _, err := tx.ListDeployments(ctx, acme.ID, svc.ID, Page{})
		if err != nil {
			return err
		}
		equal(t, "deployments after rollback", len(deps), 1)
		_, err = tx.GetService(ctx, acme.ID, web.ID, "fresh")
		wantErr(t, "new service after rollback", err, ErrNotFound)
		_, err = tx.GetOrg(ctx, "org-rolled-back")
		wantErr(t, "org after rollback", err, ErrNotFound)
		return nil
	})
	counts := rowCounts(t, f.s)
	equal(t, "rows after rollback", counts, map[string]int{"services": 1, "deployments": 1, "regional_deployments": 1})

	// A panicking fn rolls back too, and the panic goes on.
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic in fn was swallowed")
			}
		}()
		f.s.Update(ctx, func(tx Tx) error {
			if _, err := tx.CreateDeployment(ctx, f.newDeployment(web, "frontend", "x:3", "fra")); err != nil {
				return err
			}
			panic("fn panics")
		})
	}()
	equal(t, "rows after panic", rowCounts(t, f.s), counts)
	if got := f.deploy(web, "frontend", "x:3", "fra"); got.Version != 2 {
		t.Fatalf("version after rollbacks: %d, want 2", got.Version)
	}
}

// rowCounts counts the rows of the deployment tables, bypassing the API.
func rowCounts(t *testing.T, s Store) map[string]int {
	t.Helper()
	db := s.(*sqlStore).writer
	out := map[string]int{}
	for _, table := range []string{"services", "deployments", "regional_deployments"} {
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM ` + table).Scan(&n); err != nil {
			t.Fatalf("count %s: %v", table, err)
		}
		out[table] = n
	}
	return out
}

// testFailedCreateLeavesNothing: a CreateDeployment that fails half way
// (its third regional deployment's id is taken) leaves nothing behind even
// when the caller swallows the error and commits.
func testFailedCreateLeavesNothing(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")
	d := f.deploy(web, "frontend", "x:1", "fra")
	before := rowCounts(t, f.s)

	f.update(func(tx Tx) error {
		nd := f.newDeployment(web, "newsvc", "x:2", "ams", "fra", "iad")
		nd.Deployment.Regional[2].ID = d.Regional[0].ID
		_, err := tx.CreateDeployment(ctx, nd)
		wantErr(t, "CreateDeployment with taken regional id", err, ErrConflict)
		// The transaction goes on and commits.
		return tx.CreateOrg(ctx, api.Organization{ID: f.id("org"), Name: "after-failure", CreatedAt: f.now()})
	})
	equal(t, "rows after failed CreateDeployment", rowCounts(t, f.s), before)
	f.view(func(tx Tx) error {
		_, err := tx.GetService(ctx, acme.ID, web.ID, "newsvc")
		wantErr(t, "service of failed CreateDeployment", err, ErrNotFound)
		_, err = tx.GetOrgByName(ctx, "after-failure")
		return err
	})
}

func testConcurrentCreateDeployment(t *testing.T, b backend) {
	for _, existing := range []bool{true, false} {
		t.Run(fmt.Sprintf("existing=%v", existing), func(t *testing.T) {
			f := newFixture(t, b)
			ctx := context.Background()
			acme := f.org("acme")
			web := f.app(acme, "web")
			base := 0
			if existing {
				f.deploy(web, "frontend", "x:0", "fra")
				base = 1
			}
			const n = 8
			versions := make([]int, n)
			errs := make([]error, n)
			serviceIDs := make([]string, n)
			nds := make([]NewDeployment, n)
			for i := range nds {
				nds[i] = f.newDeployment(web, "frontend", fmt.Sprintf("x:%d", i+1), "fra", "iad")
			}
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					<-start
					errs[i] = f.s.Update(ctx, func(tx Tx) error {
						d, err := tx.CreateDeployment(ctx, nds[i])
						versions[i], serviceIDs[i] = d.Version, d.ServiceID
						return err
					})
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("goroutine %d: %v", i, err)
				}
			}
			slices.Sort(versions)
			for i, v := range versions {
				if v != base+i+1 {
					t.Fatalf("versions %v, want %d..%d", versions, base+1, base+n)
				}
			}
			for _, id := range serviceIDs {
				if id != serviceIDs[0] {
					t.Fatalf("deployments landed in services %v", serviceIDs)
				}
			}
			f.view(func(tx Tx) error {
				svc, err := tx.GetService(ctx, acme.ID, web.ID, "frontend")
				if err != nil {
					return err
				}
				equal(t, "latest version", svc.LatestVersion, base+n)
				deps, _, err := tx.ListDeployments(ctx, acme.ID, svc.ID, Page{})
				if err != nil {
					return err
				}
				equal(t, "deployments", len(deps), base+n)
				if deps[0].ID != svc.LatestDeployment {
					t.Fatalf("latest deployment %q, newest listed %q", svc.LatestDeployment, deps[0].ID)
				}
				return nil
			})
		})
	}
}

func testCascade(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")
	d1 := f.deploy(web, "frontend", "x:1", "fra", "iad")
	f.deploy(web, "frontend", "x:2", "fra", "iad", "sin")
	keep := f.deploy(web, "backend", "y:1", "fra")
	equal(t, "rows before", rowCounts(t, f.s), map[string]int{"services": 2, "deployments": 3, "regional_deployments": 6})

	f.update(func(tx Tx) error { return tx.DeleteService(ctx, acme.ID, web.ID, "frontend") })
	equal(t, "rows after", rowCounts(t, f.s), map[string]int{"services": 1, "deployments": 1, "regional_deployments": 1})
	err := f.updateErr(func(tx Tx) error { return tx.DeleteService(ctx, acme.ID, web.ID, "frontend") })
	wantErr(t, "DeleteService twice", err, ErrNotFound)
	f.view(func(tx Tx) error {
		_, err := tx.GetDeployment(ctx, acme.ID, d1.ID)
		wantErr(t, "GetDeployment of deleted service", err, ErrNotFound)
		got, err := tx.GetDeployment(ctx, acme.ID, keep.ID)
		if err != nil {
			return err
		}
		equal(t, "other service's deployment", got, keep)
		return nil
	})
	// The name starts over.
	if d := f.deploy(web, "frontend", "x:3", "fra"); d.Version != 1 || d.ServiceID == d1.ServiceID {
		t.Fatalf("redeployed service: %+v", d)
	}
}

// pageAll lists everything with pages of limit items and checks every page
// but the last is full.
func pageAll[T any](t *testing.T, f *fixture, limit int, list func(Tx, Page) ([]T, string, error)) []T {
	t.Helper()
	var all []T
	tok := ""
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("pagination does not end")
		}
		var items []T
		var next string
		f.view(func(tx Tx) (err error) {
			items, next, err = list(tx, Page{Limit: limit, Token: tok})
			return err
		})
		all = append(all, items...)
		if next == "" {
			return all
		}
		if len(items) != limit {
			t.Fatalf("page %d has %d items and a next page, want %d", pages, len(items), limit)
		}
		tok = next
	}
}

func testPagination(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	beta := f.org("beta")
	web := f.app(acme, "web")
	// Names in a shuffled order, with mixed case: order is bytewise.
	names := []string{"delta", "Alpha", "charlie", "bravo", "echo", "foxtrot", "golf"}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	at := f.now()
	f.update(func(tx Tx) error {
		for i, n := range names {
			if err := tx.CreateOrg(ctx, api.Organization{ID: f.id("org"), Name: "org-" + n, CreatedAt: at}); err != nil {
				return err
			}
			if err := tx.CreateApp(ctx, api.App{ID: f.id("app"), OrgID: beta.ID, Name: n, Host: n + ".beta.test", CreatedAt: at}); err != nil {
				return err
			}
			if _, err := tx.PutSecret(ctx, SecretRecord{Secret: api.Secret{ID: f.id("sec"), OrgID: acme.ID, Name: n, CreatedAt: at, UpdatedAt: at}, Sealed: []byte(n)}); err != nil {
				return err
			}
			if err := tx.CreateRegion(ctx, api.Region{ID: n, Name: n, Status: api.RegionOpen, CreatedAt: at, UpdatedAt: at}); err != nil {
				return err
			}
			// Tokens: three share a creation time, the rest are older.
			tokAt := at
			if i >= 3 {
				tokAt = at.Add(-time.Duration(i) * time.Minute)
			}
			if err := tx.CreateToken(ctx, TokenRecord{Token: api.Token{ID: "tok-" + n, OrgID: acme.ID, Name: n, CreatedAt: tokAt}, Hash: []byte(n)}); err != nil {
				return err
			}
		}
		return nil
	})
	for _, n := range names {
		f.deploy(web, n, "x:1", "fra")
	}
	var frontend []api.Deployment
	for i := range 7 {
		frontend = append(frontend, f.deploy(web, "frontend", fmt.Sprintf("x:%d", i), "fra", "iad"))
	}
	slices.Reverse(frontend)

	for _, limit := range []int{1, 3, 7, 0} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			orgs := pageAll(t, f, limit, func(tx Tx, p Page) ([]api.Organization, string, error) { return tx.ListOrgs(ctx, p) })
			var orgNames []string
			for _, o := range orgs {
				orgNames = append(orgNames, o.Name)
			}
			wantOrgs := []string{"acme", "beta"}
			for _, n := range sorted {
				wantOrgs = append(wantOrgs, "org-"+n)
			}
			slices.Sort(wantOrgs)
			equal(t, "orgs", orgNames, wantOrgs)

			apps := pageAll(t, f, limit, func(tx Tx, p Page) ([]api.App, string, error) { return tx.ListApps(ctx, beta.ID, p) })
			equal(t, "apps", namesOf(apps, func(a api.App) string { return a.Name }), sorted)

			secrets := pageAll(t, f, limit, func(tx Tx, p Page) ([]api.Secret, string, error) { return tx.ListSecrets(ctx, acme.ID, p) })
			equal(t, "secrets", namesOf(secrets, func(s api.Secret) string { return s.Name }), sorted)

			regions := pageAll(t, f, limit, func(tx Tx, p Page) ([]api.Region, string, error) { return tx.ListRegions(ctx, p) })
			equal(t, "regions", namesOf(regions, func(r api.Region) string { return r.ID }), sorted)

			tokens := pageAll(t, f, limit, func(tx Tx, p Page) ([]api.Token, string, error) { return tx.ListTokens(ctx, acme.ID, p) })
			// bravo, echo, foxtrot, golf are older (by i minutes); delta,
			// Alpha and charlie share the newest time, in id order.
			equal(t, "tokens", namesOf(tokens, func(k api.Token) string { return k.Name }),
				[]string{"golf", "foxtrot", "echo", "bravo", "Alpha", "charlie", "delta"})

			services := pageAll(t, f, limit, func(tx Tx, p Page) ([]api.Service, string, error) { return tx.ListServices(ctx, acme.ID, web.ID, p) })
			wantServices := append(slices.Clone(sorted), "frontend")
			slices.Sort(wantServices)
			equal(t, "services", namesOf(services, func(s api.Service) string { return s.Name }), wantServices)

			deps := pageAll(t, f, limit, func(tx Tx, p Page) ([]api.Deployment, string, error) {
				return tx.ListDeployments(ctx, acme.ID, frontend[0].ServiceID, p)
			})
			equal(t, "deployments", deps, frontend)
		})
	}
	// Limits above the maximum are capped, not refused.
	f.view(func(tx Tx) error {
		list, next, err := tx.ListRegions(ctx, Page{Limit: 100000})
		if err != nil {
			return err
		}
		if len(list) != len(names) || next != "" {
			t.Fatalf("ListRegions with a huge limit: %d items, next %q", len(list), next)
		}
		return nil
	})
	equal(t, "limit 0", Page{}.limit(), DefaultPageLimit)
	equal(t, "limit -1", Page{Limit: -1}.limit(), DefaultPageLimit)
	equal(t, "limit 501", Page{Limit: 501}.limit(), MaxPageLimit)
	equal(t, "limit 500", Page{Limit: 500}.limit(), 500)
}

func namesOf[T any](items []T, name func(T) string) []string {
	out := []string{}
	for _, it := range items {
		out = append(out, name(it))
	}
	return out
}

func testBadPageTokens(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	f.org("beta")
	var appsToken string
	f.update(func(tx Tx) error {
		for _, n := range []string{"a", "b", "c"} {
			if err := tx.CreateApp(ctx, api.App{ID: f.id("app"), OrgID: acme.ID, Name: n}); err != nil {
				return err
			}
		}
		var err error
		_, appsToken, err = tx.ListApps(ctx, acme.ID, Page{Limit: 1})
		return err
	})
	if appsToken == "" {
		t.Fatal("no next page token")
	}
	bad := []string{
		"!!!not base64!!!",
		base64.RawURLEncoding.EncodeToString([]byte("not json")),
		base64.RawURLEncoding.EncodeToString([]byte(`{"l":"apps","n":"x"}`)),
		appsToken + "=",
	}
	f.view(func(tx Tx) error {
		for _, tok := range bad {
			_, _, err := tx.ListApps(ctx, acme.ID, Page{Token: tok})
			wantErr(t, fmt.Sprintf("ListApps with token %q", tok), err, ErrBadPageToken)
		}
		// A token of one list is no token for another.
		calls := map[string]func(Page) error{
			"ListOrgs":        func(p Page) error { _, _, err := tx.ListOrgs(ctx, p); return err },
			"ListTokens":      func(p Page) error { _, _, err := tx.ListTokens(ctx, acme.ID, p); return err },
			"ListEdgeTokens":  func(p Page) error { _, _, err := tx.ListEdgeTokens(ctx, p); return err },
			"ListSecrets":     func(p Page) error { _, _, err := tx.ListSecrets(ctx, acme.ID, p); return err },
			"ListRegions":     func(p Page) error { _, _, err := tx.ListRegions(ctx, p); return err },
			"ListServices":    func(p Page) error { _, _, err := tx.ListServices(ctx, acme.ID, "app", p); return err },
			"ListDeployments": func(p Page) error { _, _, err := tx.ListDeployments(ctx, acme.ID, "svc", p); return err },
		}
		for name, call := range calls {
			wantErr(t, name+" with an apps token", call(Page{Token: appsToken}), ErrBadPageToken)
			wantErr(t, name+" with garbage", call(Page{Token: "%%%"}), ErrBadPageToken)
		}
		return nil
	})
}

func testViewReadOnly(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	err := f.s.View(ctx, func(tx Tx) error {
		return tx.CreateOrg(ctx, api.Organization{ID: "o", Name: "o"})
	})
	if err == nil {
		t.Fatal("CreateOrg in View succeeded")
	}
	f.view(func(tx Tx) error {
		_, err := tx.GetOrg(ctx, "o")
		wantErr(t, "org written in View", err, ErrNotFound)
		return nil
	})
	// fn's own error comes back as is.
	wantErr(t, "View error", f.s.View(ctx, func(Tx) error { return errBoom }), errBoom)
}

// testTxUsableAfterConflict: ErrConflict and ErrNotFound do not poison the
// transaction, so a caller can record the answer in the same transaction.
func testTxUsableAfterConflict(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	f.app(acme, "web")
	f.update(func(tx Tx) error {
		err := tx.CreateApp(ctx, api.App{ID: f.id("app"), OrgID: acme.ID, Name: "web"})
		wantErr(t, "CreateApp conflict", err, ErrConflict)
		_, err = tx.GetApp(ctx, acme.ID, "nope")
		wantErr(t, "GetApp", err, ErrNotFound)
		err = tx.CreateApp(ctx, api.App{ID: f.id("app"), OrgID: "no-org", Name: "web"})
		wantErr(t, "CreateApp unknown org", err, ErrNotFound)
		return tx.PutIdempotency(ctx, Idempotency{OrgID: acme.ID, Key: "k", Status: 409, Body: []byte("conflict")})
	})
	f.view(func(tx Tx) error {
		rec, err := tx.GetIdempotency(ctx, acme.ID, "k")
		if err != nil {
			return err
		}
		equal(t, "status", rec.Status, 409)
		return nil
	})
}

// testReadModifyWrite: concurrent read-modify-write transactions on one
// row lose no update: SQLite runs writers one at a time, PostgreSQL locks
// the row read.
func testReadModifyWrite(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")
	d := f.deploy(web, "frontend", "x:1", "fra")
	f.update(func(tx Tx) error {
		return tx.CreateRegion(ctx, api.Region{ID: "fra", Name: "0", Status: api.RegionOpen})
	})
	const n = 8
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			err := f.s.Update(ctx, func(tx Tx) error {
				r, err := tx.GetRegion(ctx, "fra")
				if err != nil {
					return err
				}
				var v int
				fmt.Sscan(r.Name, &v)
				r.Name = fmt.Sprint(v + 1)
				return tx.UpdateRegion(ctx, r)
			})
			if err != nil {
				t.Errorf("increment region: %v", err)
			}
		})
		wg.Go(func() {
			err := f.s.Update(ctx, func(tx Tx) error {
				got, err := tx.GetDeployment(ctx, acme.ID, d.ID)
				if err != nil {
					return err
				}
				rd := got.Regional[0]
				rd.Generation++
				return tx.UpdateRegionalDeployment(ctx, rd)
			})
			if err != nil {
				t.Errorf("increment generation: %v", err)
			}
		})
	}
	wg.Wait()
	f.view(func(tx Tx) error {
		r, err := tx.GetRegion(ctx, "fra")
		if err != nil {
			return err
		}
		equal(t, "region counter", r.Name, fmt.Sprint(n))
		got, err := tx.GetDeployment(ctx, acme.ID, d.ID)
		if err != nil {
			return err
		}
		equal(t, "generation", got.Regional[0].Generation, d.Regional[0].Generation+n)
		return nil
	})
}

// testDeadlockRetried: two transactions that lock two rows in opposite
// orders deadlock in PostgreSQL; the victim (SQLSTATE 40P01) runs again
// and both succeed. In SQLite they cannot interleave and both succeed.
func testDeadlockRetried(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	f.update(func(tx Tx) error {
		for _, id := range []string{"x", "y"} {
			if err := tx.CreateRegion(ctx, api.Region{ID: id, Name: "0", Status: api.RegionOpen}); err != nil {
				return err
			}
		}
		return nil
	})
	interleave := b.name == "postgres"
	var attempts atomic.Int32
	lockedA, lockedB := make(chan struct{}), make(chan struct{})
	// bump locks first, then signals mine and waits for theirs (on the
	// first attempt only), then locks second; it renames both.
	bump := func(first, second string, mine, theirs chan struct{}) error {
		try := 0
		return f.s.Update(ctx, func(tx Tx) error {
			attempts.Add(1)
			try++
			r1, err := tx.GetRegion(ctx, first)
			if err != nil {
				return err
			}
			if interleave && try == 1 {
				close(mine)
				select {
				case <-theirs:
				case <-time.After(30 * time.Second):
					return errors.New("the other transaction never locked its first row")
				}
			}
			r2, err := tx.GetRegion(ctx, second)
			if err != nil {
				return err
			}
			for _, r := range []api.Region{r1, r2} {
				var v int
				fmt.Sscan(r.Name, &v)
				r.Name = fmt.Sprint(v + 1)
				if err := tx.UpdateRegion(ctx, r); err != nil {
					return err
				}
			}
			return nil
		})
	}
	errs := make(chan error, 2)
	go func() { errs <- bump("x", "y", lockedA, lockedB) }()
	go func() { errs <- bump("y", "x", lockedB, lockedA) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("transaction: %v", err)
		}
	}
	if interleave && attempts.Load() != 3 {
		t.Fatalf("%d attempts, want 3 (one deadlock victim retried)", attempts.Load())
	}
	f.view(func(tx Tx) error {
		for _, id := range []string{"x", "y"} {
			r, err := tx.GetRegion(ctx, id)
			if err != nil {
				return err
			}
			equal(t, "counter "+id, r.Name, "2")
		}
		return nil
	})
}

// testIdempotencyRace: two write transactions asking for one idempotency
// key do not both miss it: the second waits for the first and finds its
// record (PostgreSQL: advisory lock; SQLite: one writer at a time).
func testIdempotencyRace(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	const key = "retry-me"
	aRead := make(chan struct{})
	bWaiting := make(chan struct{})
	errA := make(chan error, 1)
	interleave := b.name == "postgres"
	go func() {
		errA <- f.s.Update(ctx, func(tx Tx) error {
			if _, err := tx.GetIdempotency(ctx, acme.ID, key); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("A: %w", err)
			}
			if interleave {
				close(aRead)
				select {
				case <-bWaiting:
				case <-time.After(30 * time.Second):
					return errors.New("B never waited for the key")
				}
			}
			return tx.PutIdempotency(ctx, Idempotency{OrgID: acme.ID, Key: key, RequestHash: []byte("a"), Status: 201, CreatedAt: f.now()})
		})
	}()
	if interleave {
		<-aRead
		polled := make(chan struct{})
		defer func() { <-polled }()
		go func() {
			defer close(polled)
			// Wait, with a deadline, until B blocks on the key's lock.
			db := f.s.(*sqlStore).writer
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				var waiting bool
				err := db.QueryRow(`SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
					AND classid = $1 AND objid = (hashtext($2 || '/' || $3)::bigint & 4294967295)::oid AND objsubid = 2)`,
					idempotencyLockClass, acme.ID, key).Scan(&waiting)
				if err != nil {
					t.Errorf("pg_locks: %v", err)
					return
				}
				if waiting {
					close(bWaiting)
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	} else if err := <-errA; err != nil {
		t.Fatal(err)
	}
	f.update(func(tx Tx) error {
		rec, err := tx.GetIdempotency(ctx, acme.ID, key)
		if err != nil {
			return fmt.Errorf("B: %w", err)
		}
		equal(t, "B sees A's record", rec.RequestHash, []byte("a"))
		return nil
	})
	if interleave {
		if err := <-errA; err != nil {
			t.Fatal(err)
		}
	}
}

func testReopen(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")
	d := f.deploy(web, "frontend", "x:1", "fra", "iad")
	if err := f.s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for range 2 {
		s := f.open()
		if err := s.View(ctx, func(tx Tx) error {
			got, err := tx.GetDeployment(ctx, acme.ID, d.ID)
			if err != nil {
				return err
			}
			equal(t, "deployment after reopen", got, d)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		var n, max int
		if err := s.(*sqlStore).writer.QueryRow(`SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &max); err != nil {
			t.Fatal(err)
		}
		if n != SchemaVersion() || max != SchemaVersion() {
			t.Fatalf("schema_migrations has %d rows up to %d, want %d", n, max, SchemaVersion())
		}
		s.Close()
	}
}

func testNewerSchema(t *testing.T, b backend) {
	f := newFixture(t, b)
	db := f.s.(*sqlStore).writer
	if _, err := db.Exec(f.s.(*sqlStore).d.rebind(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`),
		SchemaVersion()+1, "from the future"); err != nil {
		t.Fatal(err)
	}
	f.s.Close()
	s, err := f.b.open(context.Background(), f.loc)
	if err == nil {
		s.Close()
		t.Fatal("opened a database with a newer schema")
	}
	wantErr(t, "open newer schema", err, ErrSchemaTooNew)
	if !strings.Contains(err.Error(), fmt.Sprintf("schema version %d", SchemaVersion()+1)) {
		t.Fatalf("error does not name the version: %v", err)
	}
}

// testConcurrentOpen: two replicas opening one empty database together
// both succeed and migrate it once.
func testConcurrentOpen(t *testing.T, b backend) {
	loc := b.fresh(t)
	const n = 3
	stores := make([]Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = b.open(context.Background(), loc) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("open %d: %v", i, errs[i])
		}
		defer stores[i].Close()
	}
	var count int
	if err := stores[0].(*sqlStore).writer.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&count); err != nil {
		t.Fatal(err)
	}
	equal(t, "migrations recorded", count, SchemaVersion())
}

func TestMigrationsAgree(t *testing.T) {
	if len(sqliteMigrations) != len(postgresMigrations) {
		t.Fatalf("%d SQLite migrations, %d PostgreSQL", len(sqliteMigrations), len(postgresMigrations))
	}
	for i := range sqliteMigrations {
		s, p := sqliteMigrations[i], postgresMigrations[i]
		if s.version != i+1 || p.version != i+1 || s.name != p.name {
			t.Fatalf("migration %d: sqlite %d %q, postgres %d %q", i+1, s.version, s.name, p.version, p.name)
		}
	}
}

func TestOpenURL(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, u := range []string{"sqlite://" + filepath.Join(dir, "a.db"), "sqlite:" + filepath.Join(dir, "c.db"), filepath.Join(dir, "b", "b.db")} {
		s, err := Open(ctx, u)
		if err != nil {
			t.Fatalf("Open(%q): %v", u, err)
		}
		if s.(*sqlStore).d.name != "sqlite" {
			t.Fatalf("Open(%q) opened %s", u, s.(*sqlStore).d.name)
		}
		s.Close()
	}
	for u, want := range map[string]string{
		"":                 "empty",
		"mysql://x/y":      `scheme "mysql"`,
		":memory:":         "plain file path",
		"sqlite://":        "path is empty",
		dir + "/x.db?mode": "must not contain",
	} {
		s, err := Open(ctx, u)
		if err == nil {
			s.Close()
			t.Fatalf("Open(%q) succeeded", u)
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("Open(%q): %v, want an error saying %q", u, err, want)
		}
	}
	if dsn := os.Getenv(envPostgres); dsn != "" {
		loc := freshSchema(t, dsn)
		for _, u := range []string{loc, strings.Replace(loc, "postgres://", "postgresql://", 1)} {
			s, err := Open(ctx, u)
			if err != nil {
				t.Fatalf("Open(%q): %v", u, err)
			}
			if s.(*sqlStore).d.name != "postgres" {
				t.Fatalf("Open(%q) opened %s", u, s.(*sqlStore).d.name)
			}
			s.Close()
		}
	}
}

func TestRebind(t *testing.T) {
	d := newPostgresDialect()
	equal(t, "rebind", d.rebind(`SELECT a FROM t WHERE b = ? AND (c > ? OR d IN (?, ?))`),
		`SELECT a FROM t WHERE b = $1 AND (c > $2 OR d IN ($3, $4))`)
	equal(t, "sqlite keeps ?", newSQLiteDialect().rebind(`b = ?`), `b = ?`)
}

// TestSQLiteErrorClasses checks error classification on real SQLite errors:
// a busy database is retryable, a duplicate key is a conflict.
func TestSQLiteErrorClasses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raw.db")
	open := func() *sql.DB {
		db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(0)&_txlock=immediate")
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { db.Close() })
		return db
	}
	a, b := open(), open()
	if _, err := a.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)`); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(`INSERT INTO t (id, name) VALUES (1, 'x')`); err != nil {
		t.Fatal(err)
	}
	_, err := a.Exec(`INSERT INTO t (id, name) VALUES (2, 'x')`)
	if !isUnique(err) || !errors.Is(mapErr("insert", err), ErrConflict) || retryable(err) {
		t.Fatalf("unique violation %v: isUnique %v retryable %v", err, isUnique(err), retryable(err))
	}
	_, err = a.Exec(`INSERT INTO t (id, name) VALUES (1, 'y')`)
	if !isUnique(err) {
		t.Fatalf("primary key violation %v not a conflict", err)
	}
	txA, err := a.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer txA.Rollback()
	_, err = b.Begin()
	if err == nil || !retryable(err) {
		t.Fatalf("second writer: %v, want a retryable busy error", err)
	}
	if isUnique(err) {
		t.Fatalf("busy error %v classified as a conflict", err)
	}
	if !errors.Is(mapErr("x", sql.ErrNoRows), ErrNotFound) {
		t.Fatal("sql.ErrNoRows is not ErrNotFound")
	}
	if !bytes.Equal(bytesOrEmpty(nil), []byte{}) {
		t.Fatal("bytesOrEmpty(nil)")
	}
}

func testRollout(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	web := f.app(acme, "web")
	d1 := f.deploy(web, "api", "x:1", "fra", "iad")
	d2 := f.deploy(web, "api", "x:2", "fra", "iad")
	other := f.deploy(web, "worker", "x:1", "fra")

	// Active deployments: created PENDING, listed until cleared.
	f.view(func(tx Tx) error {
		all, err := tx.ListActiveDeployments(ctx, "")
		if err != nil {
			return err
		}
		equal(t, "active deployments", len(all), 3)
		equal(t, "oldest first", all[0].ID, d1.ID)
		mine, err := tx.ListActiveDeployments(ctx, d1.ServiceID)
		if err != nil {
			return err
		}
		equal(t, "active of one service", []string{mine[0].ID, mine[1].ID}, []string{d1.ID, d2.ID})
		equal(t, "active carries org and version", mine[1], ActiveDeployment{ID: d2.ID, OrgID: acme.ID, ServiceID: d2.ServiceID, Version: 2})
		return nil
	})
	at := f.now()
	f.update(func(tx Tx) error {
		return tx.SetDeploymentState(ctx, d1.ID, api.StatusSuperseded, "superseded by version 2", false, at)
	})
	err := f.updateErr(func(tx Tx) error { return tx.SetDeploymentState(ctx, "nope", api.StatusHealthy, "", false, at) })
	wantErr(t, "SetDeploymentState unknown", err, ErrNotFound)
	f.view(func(tx Tx) error {
		all, err := tx.ListActiveDeployments(ctx, "")
		if err != nil {
			return err
		}
		equal(t, "active after clearing one", len(all), 2)
		got, err := tx.GetDeployment(ctx, acme.ID, d1.ID)
		if err != nil {
			return err
		}
		equal(t, "state", []any{got.Status, got.Message, got.UpdatedAt}, []any{api.StatusSuperseded, "superseded by version 2", at})
		return nil
	})

	// started_at round-trips and clears.
	rd := d1.Regional[0]
	started := f.now()
	rd.Status, rd.StartedAt, rd.UpdatedAt = api.StatusHealthy, &started, f.now()
	f.update(func(tx Tx) error { return tx.UpdateRegionalDeployment(ctx, rd) })
	f.view(func(tx Tx) error {
		got, err := tx.GetDeployment(ctx, acme.ID, d1.ID)
		if err != nil {
			return err
		}
		equal(t, "regional with started_at", got.Regional[0], rd)
		if got.Regional[1].StartedAt != nil {
			t.Fatalf("unstarted regional has started_at %v", got.Regional[1].StartedAt)
		}
		return nil
	})

	// The latest HEALTHY deployment of a region, below a version.
	f.view(func(tx Tx) error {
		got, err := tx.LatestHealthyDeployment(ctx, acme.ID, d1.ServiceID, "fra", 3)
		if err != nil {
			return err
		}
		equal(t, "latest healthy in fra", got.ID, d1.ID)
		_, err = tx.LatestHealthyDeployment(ctx, acme.ID, d1.ServiceID, "fra", 1)
		wantErr(t, "healthy below version 1", err, ErrNotFound)
		_, err = tx.LatestHealthyDeployment(ctx, acme.ID, d1.ServiceID, "iad", 3)
		wantErr(t, "healthy in iad", err, ErrNotFound)
		_, err = tx.LatestHealthyDeployment(ctx, "org-other", d1.ServiceID, "fra", 3)
		wantErr(t, "healthy of another org", err, ErrNotFound)
		return nil
	})

	// Events, oldest first.
	evs := []api.DeploymentEvent{
		{At: f.now(), Type: api.EventCreated, Message: "version 2"},
		{At: f.now(), Region: "fra", Type: api.EventApplying, Message: "generation 1"},
		{At: f.now(), Region: "fra", Type: api.EventFailed, Message: "instance i-1: health check failed"},
	}
	f.update(func(tx Tx) error {
		for _, e := range evs {
			if err := tx.AddDeploymentEvent(ctx, d2.ID, e); err != nil {
				return err
			}
		}
		return nil
	})
	err = f.updateErr(func(tx Tx) error { return tx.AddDeploymentEvent(ctx, "nope", evs[0]) })
	wantErr(t, "event of unknown deployment", err, ErrNotFound)
	f.view(func(tx Tx) error {
		got, err := tx.ListDeploymentEvents(ctx, d2.ID)
		if err != nil {
			return err
		}
		equal(t, "events", got, evs)
		none, err := tx.ListDeploymentEvents(ctx, other.ID)
		if err != nil {
			return err
		}
		equal(t, "no events", len(none), 0)
		return nil
	})

	// Generations count per service key and region, and outlive the
	// service.
	key := "acme.web.api"
	alloc := func(region string, deleted bool) int64 {
		var g int64
		f.update(func(tx Tx) (err error) {
			g, err = tx.AllocateGeneration(ctx, key, region, deleted, f.now())
			return err
		})
		return g
	}
	equal(t, "first generations", []int64{alloc("fra", false), alloc("fra", false), alloc("iad", false)}, []int64{1, 2, 1})
	f.update(func(tx Tx) error { return tx.DeleteService(ctx, acme.ID, web.ID, "api") })
	equal(t, "generation after the service's deletion", alloc("fra", true), int64(3))
	f.view(func(tx Tx) error {
		srs, err := tx.ServiceRegions(ctx, key)
		if err != nil {
			return err
		}
		equal(t, "service regions", len(srs), 2)
		equal(t, "fra", []any{srs[0].Region, srs[0].Generation, srs[0].Deleted}, []any{"fra", int64(3), true})
		equal(t, "iad", []any{srs[1].Region, srs[1].Generation, srs[1].Deleted}, []any{"iad", int64(1), false})
		evs, err := tx.ListDeploymentEvents(ctx, d2.ID)
		if err != nil {
			return err
		}
		equal(t, "events after the service's deletion", len(evs), 0)
		return nil
	})

	// Region operations: a newer generation supersedes pending older ones.
	mk := func(id string, gen int64, region string) RegionOp {
		return RegionOp{ID: id, ServiceKey: key, Region: region, Generation: gen, Kind: OpApply, Purpose: PurposeRollout,
			DeploymentID: "dep-x", TargetDeploymentID: "dep-x", Payload: []byte(`{"a":1}`), State: OpPending, CreatedAt: f.now()}
	}
	op1, op2, op3 := mk("op-1", 4, "fra"), mk("op-2", 5, "fra"), mk("op-3", 2, "iad")
	f.update(func(tx Tx) error {
		for _, o := range []RegionOp{op1, op3} {
			if err := tx.CreateRegionOp(ctx, o); err != nil {
				return err
			}
		}
		return nil
	})
	op1.State, op1.Applied, op1.Message, op1.Attempts, op1.UpdatedAt = OpDone, true, "applied", 2, f.now()
	f.update(func(tx Tx) error { return tx.UpdateRegionOp(ctx, op1) })
	op1b := mk("op-1b", 6, "fra")
	op1b.CreatedAt = op1.CreatedAt.Add(time.Millisecond)
	f.update(func(tx Tx) error {
		if err := tx.CreateRegionOp(ctx, op2); err != nil {
			return err
		}
		return tx.CreateRegionOp(ctx, op1b)
	})
	err = f.updateErr(func(tx Tx) error { return tx.CreateRegionOp(ctx, mk("op-4", 5, "fra")) })
	wantErr(t, "op with a taken generation", err, ErrConflict)
	err = f.updateErr(func(tx Tx) error { return tx.UpdateRegionOp(ctx, RegionOp{ID: "nope", State: OpDone}) })
	wantErr(t, "update unknown op", err, ErrNotFound)
	f.view(func(tx Tx) error {
		got, err := tx.GetRegionOp(ctx, "op-1")
		if err != nil {
			return err
		}
		op1.UpdatedAt = normTime(op1.UpdatedAt)
		op1.CreatedAt = normTime(op1.CreatedAt)
		equal(t, "done op untouched by newer ones", got, op1)
		got2, err := tx.GetRegionOp(ctx, "op-2")
		if err != nil {
			return err
		}
		equal(t, "older pending op superseded", got2.State, OpSuperseded)
		pending, err := tx.ListRegionOps(ctx, OpFilter{State: OpPending})
		if err != nil {
			return err
		}
		equal(t, "pending ops", []string{pending[0].ID, pending[1].ID}, []string{"op-1b", "op-3"})
		fra, err := tx.ListRegionOps(ctx, OpFilter{Region: "fra", DeploymentID: "dep-x", ServiceKey: key})
		if err != nil {
			return err
		}
		equal(t, "ops in fra, oldest first", len(fra), 3)
		_, err = tx.GetRegionOp(ctx, "nope")
		wantErr(t, "unknown op", err, ErrNotFound)
		return nil
	})
}

func testLeases(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	now := f.now()
	acquire := func(name, owner string, at time.Time) bool {
		var ok bool
		f.update(func(tx Tx) (err error) {
			ok, err = tx.AcquireLease(ctx, name, owner, at, 10*time.Second)
			return err
		})
		return ok
	}
	owner := func(name string, at time.Time) string {
		var o string
		f.view(func(tx Tx) (err error) {
			o, err = tx.LeaseOwner(ctx, name, at)
			return err
		})
		return o
	}
	equal(t, "a takes the free lease", acquire("dep:1", "a", now), true)
	equal(t, "b is refused while a holds it", acquire("dep:1", "b", now.Add(5*time.Second)), false)
	equal(t, "a renews", acquire("dep:1", "a", now.Add(9*time.Second)), true)
	equal(t, "b is refused after the renewal", acquire("dep:1", "b", now.Add(15*time.Second)), false)
	equal(t, "owner", owner("dep:1", now.Add(15*time.Second)), "a")
	equal(t, "owner after expiry", owner("dep:1", now.Add(19*time.Second)), "")
	equal(t, "b takes the expired lease", acquire("dep:1", "b", now.Add(19*time.Second)), true)
	equal(t, "another lease is free", acquire("dep:2", "a", now), true)
	f.update(func(tx Tx) error { return tx.ReleaseLease(ctx, "dep:1", "a") }) // not a's: nothing
	equal(t, "release by a non-owner", owner("dep:1", now.Add(20*time.Second)), "b")
	f.update(func(tx Tx) error { return tx.ReleaseLease(ctx, "dep:1", "b") })
	equal(t, "released", owner("dep:1", now.Add(20*time.Second)), "")
	equal(t, "a takes the released lease", acquire("dep:1", "a", now.Add(20*time.Second)), true)

	// Racing owners: exactly one wins; racing allocations never repeat.
	const n = 8
	wins := make([]bool, n)
	gens := make([]int64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			err := f.s.Update(ctx, func(tx Tx) (err error) {
				wins[i], err = tx.AcquireLease(ctx, "race", fmt.Sprintf("o%d", i), now, time.Minute)
				if err != nil {
					return err
				}
				gens[i], err = tx.AllocateGeneration(ctx, "acme.web.race", "fra", false, now)
				return err
			})
			if err != nil {
				t.Errorf("racer %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	won := 0
	for _, w := range wins {
		if w {
			won++
		}
	}
	equal(t, "lease winners", won, 1)
	slices.Sort(gens)
	equal(t, "racing generations", gens, []int64{1, 2, 3, 4, 5, 6, 7, 8})
}
