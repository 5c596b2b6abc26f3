package store

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meridian-run/meridian/api"
)

// testEdgeTokens: edge tokens are created, listed by name without their
// hashes, found by hash (as are API tokens, in one read) and revoked; taken
// names, ids and hashes conflict.
func testEdgeTokens(t *testing.T, b backend) {
	f := newFixture(t, b)
	ctx := context.Background()
	acme := f.org("acme")
	orgTok := TokenRecord{Token: api.Token{ID: "tok-acme", OrgID: acme.ID, Name: "ci", CreatedAt: f.now()}, Hash: []byte("hash-org")}
	par := EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-par", Name: "edge-par", CreatedAt: f.now()}, Hash: []byte("hash-par")}
	nyc := EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-nyc", Name: "edge-nyc", CreatedAt: f.now()}, Hash: []byte("hash-nyc")}
	f.update(func(tx Tx) error {
		if err := tx.CreateToken(ctx, orgTok); err != nil {
			return err
		}
		if err := tx.CreateEdgeToken(ctx, par); err != nil {
			return err
		}
		return tx.CreateEdgeToken(ctx, nyc)
	})
	f.view(func(tx Tx) error {
		got, err := tx.BearerByHash(ctx, []byte("hash-par"))
		if err != nil {
			return err
		}
		equal(t, "BearerByHash edge token", got, Bearer{Edge: true, TokenID: par.ID})
		got, err = tx.BearerByHash(ctx, []byte("hash-org"))
		if err != nil {
			return err
		}
		equal(t, "BearerByHash API token", got, Bearer{TokenID: orgTok.ID, OrgID: acme.ID})
		_, err = tx.BearerByHash(ctx, []byte("nope"))
		wantErr(t, "BearerByHash unknown", err, ErrNotFound)
		_, err = tx.BearerByHash(ctx, nil)
		wantErr(t, "BearerByHash empty", err, ErrNotFound)
		list, next, err := tx.ListEdgeTokens(ctx, Page{})
		if err != nil {
			return err
		}
		equal(t, "ListEdgeTokens", list, []api.EdgeToken{nyc.EdgeToken, par.EdgeToken})
		equal(t, "ListEdgeTokens next", next, "")
		return nil
	})

	for _, tc := range []struct {
		what string
		rec  EdgeTokenRecord
	}{
		{"same name", EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-new", Name: "edge-par"}, Hash: []byte("hash-new")}},
		{"same id", EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: par.ID, Name: "other"}, Hash: []byte("hash-new")}},
		{"same hash", EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-new", Name: "other"}, Hash: []byte("hash-par")}},
	} {
		err := f.updateErr(func(tx Tx) error { return tx.CreateEdgeToken(ctx, tc.rec) })
		wantErr(t, "CreateEdgeToken "+tc.what, err, ErrConflict)
	}
	for field, rec := range map[string]EdgeTokenRecord{
		"id":   {EdgeToken: api.EdgeToken{Name: "x"}, Hash: []byte("h")},
		"name": {EdgeToken: api.EdgeToken{ID: "x"}, Hash: []byte("h")},
		"hash": {EdgeToken: api.EdgeToken{ID: "x", Name: "x"}},
	} {
		err := f.updateErr(func(tx Tx) error { return tx.CreateEdgeToken(ctx, rec) })
		if err == nil || !strings.Contains(err.Error(), field+" is empty") {
			t.Fatalf("CreateEdgeToken without %s: %v, want an error naming the field", field, err)
		}
	}

	// A conflict leaves the transaction usable, and a failed transaction
	// leaves nothing behind.
	f.update(func(tx Tx) error {
		err := tx.CreateEdgeToken(ctx, EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-dup", Name: "edge-nyc"}, Hash: []byte("h-dup")})
		wantErr(t, "CreateEdgeToken conflict in a transaction", err, ErrConflict)
		return tx.CreateEdgeToken(ctx, EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-sin", Name: "edge-sin", CreatedAt: f.now()}, Hash: []byte("hash-sin")})
	})
	err := f.updateErr(func(tx Tx) error {
		if err := tx.CreateEdgeToken(ctx, EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-gone", Name: "gone", CreatedAt: f.now()}, Hash: []byte("hash-gone")}); err != nil {
			return err
		}
		if err := tx.DeleteEdgeToken(ctx, par.ID); err != nil {
			return err
		}
		return errBoom
	})
	wantErr(t, "Update with failing fn", err, errBoom)
	f.view(func(tx Tx) error {
		list, _, err := tx.ListEdgeTokens(ctx, Page{})
		if err != nil {
			return err
		}
		equal(t, "edge tokens after a rolled back transaction", namesOf(list, func(e api.EdgeToken) string { return e.Name }),
			[]string{"edge-nyc", "edge-par", "edge-sin"})
		_, err = tx.BearerByHash(ctx, []byte("hash-gone"))
		wantErr(t, "BearerByHash of a rolled back token", err, ErrNotFound)
		return nil
	})

	// Pages.
	all := pageAll(t, f, 2, func(tx Tx, p Page) ([]api.EdgeToken, string, error) { return tx.ListEdgeTokens(ctx, p) })
	equal(t, "ListEdgeTokens paged", namesOf(all, func(e api.EdgeToken) string { return e.Name }), []string{"edge-nyc", "edge-par", "edge-sin"})

	// Revocation.
	f.update(func(tx Tx) error { return tx.DeleteEdgeToken(ctx, par.ID) })
	err = f.updateErr(func(tx Tx) error { return tx.DeleteEdgeToken(ctx, par.ID) })
	wantErr(t, "DeleteEdgeToken twice", err, ErrNotFound)
	err = f.updateErr(func(tx Tx) error { return tx.DeleteEdgeToken(ctx, orgTok.ID) })
	wantErr(t, "DeleteEdgeToken of an API token", err, ErrNotFound)
	f.view(func(tx Tx) error {
		_, err := tx.BearerByHash(ctx, []byte("hash-par"))
		wantErr(t, "BearerByHash revoked", err, ErrNotFound)
		if _, err := tx.BearerByHash(ctx, []byte("hash-org")); err != nil {
			return fmt.Errorf("API token after revoking an edge token: %w", err)
		}
		return nil
	})
	// The name of a revoked token is free again.
	f.update(func(tx Tx) error {
		return tx.CreateEdgeToken(ctx, EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-par2", Name: "edge-par", CreatedAt: f.now()}, Hash: []byte("hash-par2")})
	})
}

// testUpgradeToEdgeTokens: a database at schema version 2, with its API
// tokens, is migrated to the edge tokens' schema on open and keeps them.
func testUpgradeToEdgeTokens(t *testing.T, b backend) {
	ctx := context.Background()
	loc := b.fresh(t)
	var d *dialect
	var db *sql.DB
	var err error
	if b.name == "postgres" {
		d = newPostgresDialect()
		db, err = sql.Open("pgx", loc)
	} else {
		d = newSQLiteDialect()
		if err := os.MkdirAll(filepath.Dir(loc), 0o700); err != nil {
			t.Fatal(err)
		}
		db, err = sql.Open("sqlite", loc+"?_pragma=foreign_keys(1)")
	}
	if err != nil {
		t.Fatal(err)
	}
	d.migrations = d.migrations[:2]
	if err := migrate(ctx, db, d, slog.New(slog.DiscardHandler)); err != nil {
		db.Close()
		t.Fatalf("migrate to version 2: %v", err)
	}
	org := api.Organization{ID: "org-old", Name: "old", CreatedAt: base}
	tok := TokenRecord{Token: api.Token{ID: "tok-old", OrgID: org.ID, Name: "ci", CreatedAt: base}, Hash: []byte("hash-old")}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	v2 := &sqlTx{tx: tx, d: d}
	if err := v2.CreateOrg(ctx, org); err != nil {
		t.Fatal(err)
	}
	if err := v2.CreateToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := b.open(ctx, loc)
	if err != nil {
		t.Fatalf("open a version 2 database: %v", err)
	}
	defer s.Close()
	f := &fixture{t: t, s: s, loc: loc, b: b}
	f.update(func(tx Tx) error {
		return tx.CreateEdgeToken(ctx, EdgeTokenRecord{EdgeToken: api.EdgeToken{ID: "etk-1", Name: "edge", CreatedAt: base}, Hash: []byte("hash-edge")})
	})
	f.view(func(tx Tx) error {
		got, err := tx.BearerByHash(ctx, tok.Hash)
		if err != nil {
			return err
		}
		equal(t, "API token after the upgrade", got, Bearer{TokenID: tok.ID, OrgID: org.ID})
		got, err = tx.BearerByHash(ctx, []byte("hash-edge"))
		if err != nil {
			return err
		}
		equal(t, "edge token after the upgrade", got, Bearer{Edge: true, TokenID: "etk-1"})
		return nil
	})
	var version int
	if err := s.(*sqlStore).writer.QueryRow(`SELECT MAX(version) FROM schema_migrations`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	equal(t, "schema version after the upgrade", version, SchemaVersion())
}
