package global

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/store"
	"github.com/meridian-run/meridian/store/storetest"
	"github.com/meridian-run/meridian/testutil"
)

// newTestClock is a clock for Config.Now that tests move forward instead
// of sleeping.
func newTestClock() *clock.Fake { return clock.NewFake(time.Now()) }

// logRecorder is a slog.Handler keeping every record, debug included.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}

// deleted sums the "deleted" counts of the janitor's debug records, and
// lists the warnings and errors logged about idempotency.
func (l *logRecorder) deleted() (n int64, problems []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.records {
		if r.Level >= slog.LevelWarn && strings.Contains(r.Message, "idempotency") {
			problems = append(problems, fmt.Sprintf("%s %s", r.Level, r.Message))
		}
		if r.Level == slog.LevelDebug && r.Message == "expired idempotency records deleted" {
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "deleted" {
					n += a.Value.Int64()
				}
				return true
			})
		}
	}
	return n, problems
}

// storedKeys lists which of keys have an idempotency record of orgID.
func storedKeys(t testing.TB, st store.Store, orgID string, keys ...string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	err := st.View(ctx, func(tx store.Tx) error {
		out = nil
		for _, k := range keys {
			_, err := tx.GetIdempotency(ctx, orgID, k)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, k)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func idempotencyRecord(t testing.TB, h *harness, orgID, key string) store.Idempotency {
	t.Helper()
	ctx := context.Background()
	var rec store.Idempotency
	err := h.st.View(ctx, func(tx store.Tx) (err error) {
		rec, err = tx.GetIdempotency(ctx, orgID, key)
		return err
	})
	if err != nil {
		t.Fatalf("idempotency record %q: %v", key, err)
	}
	return rec
}

func orgID(t testing.TB, h *harness, name string) string {
	t.Helper()
	o, err := h.admin.GetOrg(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return o.ID
}

// TestIdempotencyKeysExpire: within the TTL a retry replays the first
// answer; past it the same key runs the request again, whatever its body,
// and replaces the record.
func TestIdempotencyKeysExpire(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st store.Store) {
		clk := newTestClock()
		h := newHarness(t, st, func(c *Config) {
			c.Now = clk.Now
			c.IdempotencySweep = time.Hour // only the request path sees the expired records
		})
		ctx := testutil.Context(t, time.Minute)
		acmeID := orgID(t, h, "acme")
		post := func(path, body, key string) (int, bool, []byte) {
			t.Helper()
			status, hdr, b := rawHeader(t, h, "POST", path, h.acme.Token, "application/json", []byte(body), "Idempotency-Key", key)
			return status, hdr.Get("Idempotent-Replayed") == "true", b
		}
		status, replayed, first := post("/v1/tokens", `{"name":"ci"}`, "ci-1")
		var t1 api.Token
		if status != http.StatusCreated || replayed || json.Unmarshal(first, &t1) != nil || t1.Value == "" {
			t.Fatalf("first create: %d replayed=%v %s", status, replayed, first)
		}

		clk.Advance(DefaultIdempotencyTTL - time.Second)
		status, replayed, again := post("/v1/tokens", `{"name":"ci"}`, "ci-1")
		if status != http.StatusCreated || !replayed || !bytes.Equal(again, first) {
			t.Fatalf("retry within the TTL: %d replayed=%v %s, want the first answer %s", status, replayed, again, first)
		}
		status, _, _ = post("/v1/tokens", `{"name":"other"}`, "ci-1")
		if status != http.StatusUnprocessableEntity {
			t.Fatalf("another request with the key within the TTL: %d, want 422", status)
		}

		clk.Advance(2 * time.Second)
		status, replayed, fresh := post("/v1/tokens", `{"name":"ci"}`, "ci-1")
		var t2 api.Token
		if status != http.StatusCreated || replayed || json.Unmarshal(fresh, &t2) != nil {
			t.Fatalf("retry past the TTL: %d replayed=%v %s", status, replayed, fresh)
		}
		if t2.ID == t1.ID || t2.Value == t1.Value {
			t.Fatalf("past the TTL the key replayed token %s instead of making a new one", t1.ID)
		}
		toks, err := h.acme.ListTokens(ctx, api.ListOptions{})
		if err != nil || len(toks.Items) != 3 {
			t.Fatalf("tokens after a key expired: %+v (%v), want test and two ci", toks.Items, err)
		}
		rec := idempotencyRecord(t, h, acmeID, "ci-1")
		if !rec.CreatedAt.Equal(clk.Now().Truncate(time.Microsecond)) {
			t.Fatalf("the replaced record was created at %s, want %s", rec.CreatedAt, clk.Now())
		}
		status, replayed, again = post("/v1/tokens", `{"name":"ci"}`, "ci-1")
		if status != http.StatusCreated || !replayed || !bytes.Equal(again, fresh) {
			t.Fatalf("retry after the replacement: %d replayed=%v %s, want %s", status, replayed, again, fresh)
		}

		// Past the TTL a key may come with another request.
		if status, _, b := post("/v1/apps", `{"name":"web"}`, "app-1"); status != http.StatusCreated {
			t.Fatalf("create app: %d %s", status, b)
		}
		clk.Advance(DefaultIdempotencyTTL + time.Minute)
		if status, replayed, b := post("/v1/apps", `{"name":"api"}`, "app-1"); status != http.StatusCreated || replayed {
			t.Fatalf("an expired key with another request: %d replayed=%v %s", status, replayed, b)
		}
		if _, err := h.acme.GetApp(ctx, "api"); err != nil {
			t.Fatalf("the app created with an expired key: %v", err)
		}
	})
}

// TestIdempotencyTTLConfig: the TTL is configurable and checked.
func TestIdempotencyTTLConfig(t *testing.T) {
	st := storetest.Open(t, "sqlite")
	key, _ := base64.StdEncoding.DecodeString(NewSecretKey())
	for _, ttl := range []time.Duration{-time.Hour, time.Second, MaxIdempotencyTTL + time.Hour} {
		_, err := Start(context.Background(), Config{Listen: "127.0.0.1:0", Store: st, AdminToken: testAdminToken, SecretKey: key, IdempotencyTTL: ttl})
		if err == nil || !strings.Contains(err.Error(), "IdempotencyTTL") {
			t.Errorf("IdempotencyTTL %s: %v, want an error naming it", ttl, err)
		}
	}
	clk := newTestClock()
	h := newHarness(t, st, func(c *Config) { c.Now, c.IdempotencyTTL = clk.Now, time.Hour })
	create := func() int {
		status, _ := raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/json", []byte(`{"name":"web"}`), "Idempotency-Key", "k")
		return status
	}
	if s := create(); s != http.StatusCreated {
		t.Fatalf("create: %d", s)
	}
	clk.Advance(59 * time.Minute)
	if s := create(); s != http.StatusCreated {
		t.Fatalf("replay within an hour: %d", s)
	}
	clk.Advance(2 * time.Minute)
	if s := create(); s != http.StatusConflict {
		t.Fatalf("past the 1h TTL the create runs again and finds the app: %d, want 409", s)
	}
}

// TestIdempotencyJanitor: the janitor deletes expired records, in
// batches, and keeps fresh ones; it logs what it deleted at debug level.
func TestIdempotencyJanitor(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st store.Store) {
		clk := newTestClock()
		logs := &logRecorder{}
		h := newHarness(t, st, func(c *Config) {
			c.Now, c.Logger = clk.Now, slog.New(logs)
			c.IdempotencySweep, c.IdempotencySweepBatch = 10*time.Millisecond, 3
		})
		acmeID := orgID(t, h, "acme")
		var old, fresh []string
		for i := range 7 {
			k := fmt.Sprintf("old-%d", i)
			if status, b := raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/json", fmt.Appendf(nil, `{"name":"old-%d"}`, i), "Idempotency-Key", k); status != http.StatusCreated {
				t.Fatalf("create: %d %s", status, b)
			}
			old = append(old, k)
		}
		clk.Advance(DefaultIdempotencyTTL + time.Minute)
		for i := range 2 {
			k := fmt.Sprintf("fresh-%d", i)
			if status, b := raw(t, h, "POST", "/v1/apps", h.acme.Token, "application/json", fmt.Appendf(nil, `{"name":"fresh-%d"}`, i), "Idempotency-Key", k); status != http.StatusCreated {
				t.Fatalf("create: %d %s", status, b)
			}
			fresh = append(fresh, k)
		}
		testutil.Eventually(t, 10*time.Second, "the janitor deletes the expired records and logs it", func() (bool, string) {
			left := storedKeys(t, st, acmeID, old...)
			n, _ := logs.deleted()
			return len(left) == 0 && n == int64(len(old)), fmt.Sprintf("expired records left: %v; logged %d deleted", left, n)
		})
		if kept := storedKeys(t, st, acmeID, fresh...); len(kept) != len(fresh) {
			t.Fatalf("fresh records kept: %v, want %v", kept, fresh)
		}
		if _, problems := logs.deleted(); len(problems) > 0 {
			t.Fatalf("the janitor logged %v", problems)
		}
		// A fresh record expires in its turn.
		clk.Advance(DefaultIdempotencyTTL + time.Second)
		testutil.Eventually(t, 10*time.Second, "the janitor deletes the records that expired later", func() (bool, string) {
			left := storedKeys(t, st, acmeID, fresh...)
			return len(left) == 0, fmt.Sprintf("records left: %v", left)
		})
		// Close returns once the janitor has stopped.
		if err := h.srv.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-h.srv.janitorDone:
		default:
			t.Fatal("the janitor still runs after Close")
		}
	})
}

// TestIdempotencyJanitorTwoReplicas: two servers on one store sweep it
// together without errors, each expired record deleted once.
func TestIdempotencyJanitorTwoReplicas(t *testing.T) {
	for _, kind := range storetest.Kinds(t) {
		t.Run(kind, func(t *testing.T) {
			stores := storetest.OpenShared(t, kind, 2)
			clk := newTestClock()
			key, _ := base64.StdEncoding.DecodeString(NewSecretKey())
			logs := []*logRecorder{{}, {}}
			for i, st := range stores {
				srv, err := Start(context.Background(), Config{
					Listen: "127.0.0.1:0", Store: st, AdminToken: testAdminToken, SecretKey: key,
					Logger: slog.New(logs[i]), Now: clk.Now, Owner: fmt.Sprintf("replica-%d", i),
					IdempotencySweep: 5 * time.Millisecond, IdempotencySweepBatch: 4,
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { srv.Close() })
			}
			ctx := testutil.Context(t, time.Minute)
			const n = 60
			var keys []string
			err := stores[0].Update(ctx, func(tx store.Tx) error {
				keys = nil
				for i := range n {
					k := fmt.Sprintf("k%02d", i)
					keys = append(keys, k)
					rec := store.Idempotency{Key: k, RequestHash: []byte{1}, Status: 201, Body: []byte(`{}`),
						CreatedAt: clk.Now().Add(-DefaultIdempotencyTTL - time.Duration(n-i)*time.Second)}
					if err := tx.PutIdempotency(ctx, rec); err != nil {
						return err
					}
				}
				return tx.PutIdempotency(ctx, store.Idempotency{Key: "fresh", RequestHash: []byte{1}, Status: 201, Body: []byte(`{}`), CreatedAt: clk.Now()})
			})
			if err != nil {
				t.Fatal(err)
			}
			logged := func() int64 {
				d0, _ := logs[0].deleted()
				d1, _ := logs[1].deleted()
				return d0 + d1
			}
			testutil.Eventually(t, 20*time.Second, "the janitors delete the expired records and log it", func() (bool, string) {
				left := storedKeys(t, stores[1], "", keys...)
				return len(left) == 0 && logged() >= n, fmt.Sprintf("%d expired records left; logged %d deleted", len(left), logged())
			})
			if kept := storedKeys(t, stores[0], "", "fresh"); len(kept) != 1 {
				t.Fatal("the fresh record was deleted")
			}
			for i, l := range logs {
				if _, problems := l.deleted(); len(problems) > 0 {
					t.Errorf("replica %d logged %v", i, problems)
				}
			}
			if total := logged(); total != n {
				t.Fatalf("the replicas logged %d records deleted, want %d: each deleted once", total, n)
			}
		})
	}
}

// TestTokenCreatesKeepNoTokenInClear: the answers kept for retried API
// token creates are sealed: the store row does not hold the token, and a
// retry still gets it.
func TestTokenCreatesKeepNoTokenInClear(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		acmeID := orgID(t, h, "acme")
		for _, tc := range []struct {
			name, path, token, scope, key string
		}{
			{"admin creates an organization's token", "/v1/organizations/acme/tokens", testAdminToken, "", "org-tok-1"},
			{"an organization creates another token", "/v1/tokens", h.acme.Token, acmeID, "tok-1"},
		} {
			body := []byte(`{"name":"deploy"}`)
			status, first := raw(t, h, "POST", tc.path, tc.token, "application/json", body, "Idempotency-Key", tc.key)
			var tok api.Token
			if status != http.StatusCreated || json.Unmarshal(first, &tok) != nil || !strings.HasPrefix(tok.Value, orgTokenPrefix) {
				t.Fatalf("%s: %d %s", tc.name, status, first)
			}
			rec := idempotencyRecord(t, h, tc.scope, tc.key)
			if bytes.Contains(rec.Body, []byte(tok.Value)) || bytes.Contains(rec.Body, []byte(orgTokenPrefix)) || bytes.Contains(rec.Body, []byte(tok.ID)) {
				t.Errorf("%s: the kept answer is in clear: %q", tc.name, rec.Body)
			}
			status, hdr, again := rawHeader(t, h, "POST", tc.path, tc.token, "application/json", body, "Idempotency-Key", tc.key)
			if status != http.StatusCreated || hdr.Get("Idempotent-Replayed") != "true" || !bytes.Equal(again, first) {
				t.Fatalf("%s: replay %d %s, want %s", tc.name, status, again, first)
			}
			if _, err := api.NewClient(h.srv.URL(), tok.Value).ListApps(ctx, api.ListOptions{}); err != nil {
				t.Fatalf("%s: the replayed token: %v", tc.name, err)
			}
		}
		toks, err := h.acme.ListTokens(ctx, api.ListOptions{})
		if err != nil || len(toks.Items) != 3 {
			t.Fatalf("tokens: %+v (%v), want test and two deploy", toks.Items, err)
		}
	})
}

// TestClearIdempotencyRecordStillReplays: an answer kept in clear before
// token creates were sealed replays as it was until it expires; a kept
// answer that is neither sealed nor JSON is an internal error, not a new
// token.
func TestClearIdempotencyRecordStillReplays(t *testing.T) {
	forEachStore(t, func(t *testing.T, h *harness) {
		ctx := testutil.Context(t, time.Minute)
		acmeID := orgID(t, h, "acme")
		body := []byte(`{"name":"legacy"}`)
		value := newTokenValue(orgTokenPrefix)
		tok := api.Token{ID: newID("tok"), OrgID: acmeID, Name: "legacy", CreatedAt: time.Now().UTC().Truncate(time.Second)}
		err := h.st.Update(ctx, func(tx store.Tx) error {
			if err := tx.CreateToken(ctx, store.TokenRecord{Token: tok, Hash: hashToken(value)}); err != nil {
				return err
			}
			answer := tok
			answer.Value = value
			clear, err := json.Marshal(answer)
			if err != nil {
				return err
			}
			if err := tx.PutIdempotency(ctx, store.Idempotency{OrgID: acmeID, Key: "legacy-1", RequestHash: idempotencyHash("POST", "/v1/tokens", body),
				Status: http.StatusCreated, Body: clear, CreatedAt: time.Now().Add(-time.Hour)}); err != nil {
				return err
			}
			return tx.PutIdempotency(ctx, store.Idempotency{OrgID: acmeID, Key: "garbled", RequestHash: idempotencyHash("POST", "/v1/tokens", body),
				Status: http.StatusCreated, Body: []byte("\x00not sealed, not JSON"), CreatedAt: time.Now()})
		})
		if err != nil {
			t.Fatal(err)
		}
		status, hdr, b := rawHeader(t, h, "POST", "/v1/tokens", h.acme.Token, "application/json", body, "Idempotency-Key", "legacy-1")
		var got api.Token
		if status != http.StatusCreated || hdr.Get("Idempotent-Replayed") != "true" || json.Unmarshal(b, &got) != nil || got.Value != value || got.ID != tok.ID {
			t.Fatalf("replay of a clear record: %d %s, want token %s", status, b, tok.ID)
		}
		if _, err := api.NewClient(h.srv.URL(), got.Value).ListApps(ctx, api.ListOptions{}); err != nil {
			t.Fatalf("the replayed token: %v", err)
		}
		status, b = raw(t, h, "POST", "/v1/tokens", h.acme.Token, "application/json", body, "Idempotency-Key", "garbled")
		if status != http.StatusInternalServerError {
			t.Fatalf("a garbled record: %d %s, want 500", status, b)
		}
		toks, err := h.acme.ListTokens(ctx, api.ListOptions{})
		if err != nil || len(toks.Items) != 2 {
			t.Fatalf("tokens: %+v (%v), want test and legacy only", toks.Items, err)
		}
	})
}
