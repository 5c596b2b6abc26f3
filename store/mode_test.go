package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/meridian-run/meridian/api"
)

// TestSQLiteFilesArePrivate: the database and its -wal and -shm files are
// readable by their owner only, whatever the umask, and a database file
// left readable by others is made private when opened.
func TestSQLiteFilesArePrivate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "global.db")
	st, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// A write, so that the WAL holds something.
	if err := st.Update(ctx, func(tx Tx) error {
		return tx.CreateOrg(ctx, api.Organization{ID: "org_1", Name: "acme"})
	}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"global.db", "global.db-wal", "global.db-shm"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %o, want 600", f, fi.Mode().Perm())
		}
	}
	st.Close()

	os.Chmod(path, 0o644)
	st, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("a 0644 database reopened: mode %o, want 600", fi.Mode().Perm())
	}
}
