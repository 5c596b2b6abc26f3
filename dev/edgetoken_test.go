package dev

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/global"
	"github.com/meridian-run/meridian/store/storetest"
	"github.com/meridian-run/meridian/testutil"
)

// TestEdgeTokenFile: dev makes the edges' token once against a real
// global: a read-only edge token in DIR/edge.token, mode 0600, reused by a
// restart with the same state dir, replaced when global no longer accepts
// it or when its file was lost; global keeps one dev-edges token.
func TestEdgeTokenFile(t *testing.T) {
	const adminToken = "dev-test-admin-token-0123456789"
	key, _ := base64.StdEncoding.DecodeString(global.NewSecretKey())
	srv, err := global.Start(context.Background(), global.Config{
		Listen: "127.0.0.1:0", Store: storetest.Open(t, "sqlite"), AdminToken: adminToken, SecretKey: key,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx := testutil.Context(t, time.Minute)
	admin := api.NewClient(srv.URL(), adminToken)
	if _, err := admin.CreateRegion(ctx, api.CreateRegionRequest{ID: "fra", Latitude: 50.1, Longitude: 8.7, URL: "https://127.0.0.1:1"}, ""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// start is what one run of dev does: a new Env on the same state dir.
	start := func() (string, string) {
		t.Helper()
		e := &Env{cfg: Config{StateDir: dir}, log: slog.New(slog.DiscardHandler), info: Info{API: srv.URL()}}
		path, err := e.edgeTokenFile(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		if path != filepath.Join(dir, "edge.token") {
			t.Fatalf("edge token file %s", path)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("edge token file mode %v, want 0600", fi.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		tok := strings.TrimSpace(string(b))
		if !strings.HasPrefix(tok, "mre_") || tok == adminToken {
			t.Fatalf("edge token file holds %q", tok)
		}
		return path, tok
	}
	// onlyOne checks that global has one dev-edges token and that tok is
	// it: it reads the region registry and nothing else.
	onlyOne := func(tok string) {
		t.Helper()
		list, err := admin.ListEdgeTokens(ctx, api.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 || list.Items[0].Name != devEdgeTokenName {
			t.Fatalf("edge tokens %+v, want one %s", list.Items, devEdgeTokenName)
		}
		edge := api.NewClient(srv.URL(), tok)
		if regions, err := edge.ListRegions(ctx, api.ListOptions{}); err != nil || len(regions.Items) != 1 {
			t.Fatalf("the edge token lists regions %+v, %v", regions.Items, err)
		}
		_, err = edge.ListOrgs(ctx, api.ListOptions{})
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
			t.Fatalf("the edge token listing organizations: %v, want 403", err)
		}
	}

	path, first := start()
	onlyOne(first)
	// A restart reuses it.
	if _, again := start(); again != first {
		t.Fatal("a restart with the same state dir made another edge token")
	}
	onlyOne(first)

	// Revoked: the next start makes another.
	list, err := admin.ListEdgeTokens(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteEdgeToken(ctx, list.Items[0].ID); err != nil {
		t.Fatal(err)
	}
	_, second := start()
	if second == first {
		t.Fatal("a revoked edge token was kept")
	}
	onlyOne(second)

	// The file lost while global has the token: its value is gone, so it
	// is revoked and replaced.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, third := start()
	if third == second {
		t.Fatal("the lost token came back")
	}
	onlyOne(third)
	_, err = api.NewClient(srv.URL(), second).ListRegions(ctx, api.ListOptions{})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Fatalf("the token whose file was lost: %v, want 401", err)
	}
	// No temporary file is left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("state dir holds %v, want edge.token only", entries)
	}
}
