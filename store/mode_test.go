package store

import (
	"context"
	"fmt"
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

	for _, f := range []string{"global.db", "global.db-wal", "global.db-shm"} {
		os.Chmod(filepath.Join(dir, f), 0o644)
	}
	st, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, f := range []string{"global.db", "global.db-wal", "global.db-shm"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s left 0644, reopened: mode %o, want 600", f, fi.Mode().Perm())
		}
	}
	// A second store of this process on the same file (as two replicas
	// in one test) leaves the first one's locks in place: both still
	// write.
	st2, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	for i, s := range []Store{st, st2} {
		if err := s.Update(ctx, func(tx Tx) error {
			return tx.CreateOrg(ctx, api.Organization{ID: fmt.Sprintf("org_%d", i+2), Name: fmt.Sprintf("o%d", i+2)})
		}); err != nil {
			t.Fatalf("store %d after a second open: %v", i+1, err)
		}
	}
}
