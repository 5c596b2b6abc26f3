// Package storetest opens real stores for other packages' tests: SQLite in
// a temporary directory, and PostgreSQL in a fresh schema when
// MERIDIAN_TEST_POSTGRES holds a DSN. Under CI (CI is set) a missing DSN
// fails the test instead of skipping PostgreSQL silently.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/meridian-run/meridian/store"
)

// EnvPostgres names the variable holding the PostgreSQL test DSN.
const EnvPostgres = "MERIDIAN_TEST_POSTGRES"

// Kinds lists the stores to test against: "sqlite" always, "postgres" when
// configured. Under CI without a DSN it fails t.
func Kinds(t testing.TB) []string {
	kinds := []string{"sqlite"}
	if os.Getenv(EnvPostgres) != "" {
		kinds = append(kinds, "postgres")
	} else if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but %s is empty: the PostgreSQL tests would not run", EnvPostgres)
	}
	return kinds
}

// Each runs fn as a subtest once per store kind, with a fresh store.
func Each(t *testing.T, fn func(t *testing.T, st store.Store)) {
	for _, kind := range Kinds(t) {
		t.Run(kind, func(t *testing.T) { fn(t, Open(t, kind)) })
	}
}

// Open returns a fresh, empty store of the given kind, closed (and for
// PostgreSQL, its schema dropped) when the test ends.
func Open(t testing.TB, kind string) store.Store {
	t.Helper()
	return OpenShared(t, kind, 1)[0]
}

// OpenShared returns n stores opened separately on one fresh, empty
// database of the given kind, as n replicas of the global control plane
// would open it.
func OpenShared(t testing.TB, kind string, n int) []store.Store {
	t.Helper()
	ctx := context.Background()
	var loc string
	var err error
	switch kind {
	case "sqlite":
		loc = filepath.Join(t.TempDir(), "global.db")
	case "postgres":
		loc, err = freshSchema(t)
	default:
		t.Fatalf("storetest: unknown store kind %q", kind)
	}
	if err != nil {
		t.Fatalf("storetest: open %s: %v", kind, err)
	}
	out := make([]store.Store, n)
	for i := range out {
		if kind == "sqlite" {
			out[i], err = store.OpenSQLite(ctx, loc)
		} else {
			out[i], err = store.OpenPostgres(ctx, loc)
		}
		if err != nil {
			t.Fatalf("storetest: open %s: %v", kind, err)
		}
		st := out[i]
		t.Cleanup(func() { st.Close() })
	}
	return out
}

// freshSchema creates a schema of its own for one test and returns a DSN
// whose search_path points at it.
func freshSchema(t testing.TB) (string, error) {
	base := os.Getenv(EnvPostgres)
	b := make([]byte, 6)
	rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	db, err := sql.Open("pgx", base)
	if err != nil {
		return "", err
	}
	if _, err := db.Exec("CREATE SCHEMA " + schema); err != nil {
		db.Close()
		return "", err
	}
	t.Cleanup(func() {
		db.Exec("DROP SCHEMA " + schema + " CASCADE")
		db.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
