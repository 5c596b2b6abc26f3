package global

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/store"
)

// Idempotency records are kept for a TTL, as Stripe keeps its keys: within
// it a retry replays the first answer; past it the key is used anew, and a
// janitor deletes the expired records.
const (
	// DefaultIdempotencyTTL is Config.IdempotencyTTL's default.
	DefaultIdempotencyTTL = 24 * time.Hour
	// MinIdempotencyTTL and MaxIdempotencyTTL bound Config.IdempotencyTTL:
	// a shorter TTL would expire keys while clients still retry, a longer
	// one keeps records (and the store) growing for nothing.
	MinIdempotencyTTL = time.Minute
	MaxIdempotencyTTL = 30 * 24 * time.Hour
	// DefaultIdempotencySweep is Config.IdempotencySweep's default.
	DefaultIdempotencySweep = 5 * time.Minute
	// DefaultIdempotencySweepBatch is Config.IdempotencySweepBatch's
	// default.
	DefaultIdempotencySweepBatch = 1000
)

// CheckIdempotencyTTL reports whether ttl is a usable idempotency TTL,
// between MinIdempotencyTTL and MaxIdempotencyTTL.
func CheckIdempotencyTTL(ttl time.Duration) error {
	if ttl < MinIdempotencyTTL || ttl > MaxIdempotencyTTL {
		return fmt.Errorf("%s is not between %s and %s (30 days)", shortDuration(ttl), shortDuration(MinIdempotencyTTL), shortDuration(MaxIdempotencyTTL))
	}
	return nil
}

// shortDuration is d without its zero trailing units: "24h", not
// "24h0m0s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// create runs fn in one write transaction and answers its result with
// status. With an Idempotency-Key header the answer is stored in the same
// transaction, and a retry with the same key within the idempotency TTL
// replays it without running fn again; the same key with a different
// request is refused. Past the TTL the key is used anew.
func (s *Server) create(w http.ResponseWriter, r *http.Request, body []byte, status int, fn func(ctx context.Context, tx store.Tx) (any, error)) error {
	return s.createReplayable(w, r, body, status, false, fn)
}

// createSecret is create for answers that carry a secret shown once (a new
// token's value): the answer kept for an Idempotency-Key is sealed under
// the secret key, so the store never holds the secret in clear while a
// retry still gets it back.
func (s *Server) createSecret(w http.ResponseWriter, r *http.Request, body []byte, status int, fn func(ctx context.Context, tx store.Tx) (any, error)) error {
	return s.createReplayable(w, r, body, status, true, fn)
}

// idempotencySealName is what a sealed idempotent answer is bound to.
func idempotencySealName(key string) string { return "idempotency/" + key }

// idempotencyHash is the hash of a request kept with its key: a retry
// must send the same method, path and body.
func idempotencyHash(method, path string, body []byte) []byte {
	sum := sha256.Sum256(append([]byte(method+" "+path+"\n"), body...))
	return sum[:]
}

// idempotencyCutoff is the creation time before which an idempotency
// record has expired.
func (s *Server) idempotencyCutoff() time.Time {
	return s.cfg.Now().Add(-s.cfg.IdempotencyTTL)
}

func (s *Server) createReplayable(w http.ResponseWriter, r *http.Request, body []byte, status int, seal bool, fn func(ctx context.Context, tx store.Tx) (any, error)) error {
	ctx := r.Context()
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		var out any
		err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
			var err error
			out, err = fn(ctx, tx)
			return err
		})
		if err != nil {
			return err
		}
		writeJSON(w, status, out)
		return nil
	}
	if len(key) > 255 {
		return fieldErr("Idempotency-Key", "longer than 255 characters")
	}
	scope := callerOf(ctx).orgID
	sum := idempotencyHash(r.Method, r.URL.Path, body)
	errRace := errors.New("idempotency key taken concurrently")
	for attempt := 0; ; attempt++ {
		var rec store.Idempotency
		var answer []byte
		replay := false
		err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
			old, err := tx.GetIdempotency(ctx, scope, key)
			switch {
			case err == nil && !old.CreatedAt.Before(s.idempotencyCutoff()):
				rec, replay = old, true
				return nil
			case err == nil:
				// Expired (the janitor has not deleted it yet): the key
				// is used anew and its record replaced.
				if err := tx.DeleteIdempotency(ctx, scope, key); err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
			out, err := fn(ctx, tx)
			if err != nil {
				return err
			}
			b, err := json.Marshal(out)
			if err != nil {
				return err
			}
			answer = b
			if seal {
				b = s.sealer.Seal(scope, idempotencySealName(key), b)
			}
			rec = store.Idempotency{OrgID: scope, Key: key, RequestHash: sum, Status: status, Body: b, CreatedAt: s.cfg.Now()}
			if err := tx.PutIdempotency(ctx, rec); errors.Is(err, store.ErrConflict) {
				return errRace
			} else if err != nil {
				return err
			}
			return nil
		})
		if errors.Is(err, errRace) && attempt < 3 {
			continue
		}
		if err != nil {
			return err
		}
		if replay {
			if !bytes.Equal(rec.RequestHash, sum) {
				return apiErr(http.StatusUnprocessableEntity, api.CodeConflict,
					"Idempotency-Key %q was already used with a different request", key)
			}
			if answer, err = s.keptAnswer(rec, seal); err != nil {
				return err
			}
			w.Header().Set("Idempotent-Replayed", "true")
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rec.Status)
		w.Write(append(answer, '\n'))
		return nil
	}
}

// keptAnswer is the answer a record replays. A route that seals its
// answers may still find one kept in clear, written before it sealed them
// (API token creates did until they were sealed): a record that does not
// open under the secret key but is JSON is such an answer, replayed as it
// is until it expires.
func (s *Server) keptAnswer(rec store.Idempotency, sealed bool) ([]byte, error) {
	if !sealed {
		return rec.Body, nil
	}
	b, err := s.sealer.Open(rec.OrgID, idempotencySealName(rec.Key), rec.Body)
	switch {
	case err == nil:
		return b, nil
	case json.Valid(rec.Body):
		return rec.Body, nil
	}
	return nil, fmt.Errorf("replaying Idempotency-Key %q: %w", rec.Key, err)
}

// replays reports whether r carries an Idempotency-Key whose record is
// live, so that create would replay its answer without running its
// function (a deploy then skips calling the registry).
func (s *Server) replays(ctx context.Context, r *http.Request) bool {
	key := r.Header.Get("Idempotency-Key")
	if key == "" || len(key) > 255 {
		return false
	}
	live := false
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		old, err := tx.GetIdempotency(ctx, callerOf(ctx).orgID, key)
		live = err == nil && !old.CreatedAt.Before(s.idempotencyCutoff())
		return nil
	})
	return err == nil && live
}

// janitor deletes expired idempotency records at start and then every
// IdempotencySweep until ctx ends.
func (s *Server) janitor(ctx context.Context) {
	t := time.NewTicker(s.cfg.IdempotencySweep)
	defer t.Stop()
	for {
		before := s.idempotencyCutoff()
		n, err := s.sweepIdempotency(ctx, before)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("deleting expired idempotency records", "deleted", n, "before", before, "err", err)
		case n > 0:
			s.log.Debug("expired idempotency records deleted", "deleted", n, "before", before, "ttl", s.cfg.IdempotencyTTL)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweepIdempotency deletes the records created before before, one short
// transaction per batch of IdempotencySweepBatch, until a batch finds
// fewer (none left, or the rest held by another replica's janitor or by
// requests replacing them). It returns how many it deleted. Replicas
// sweeping one PostgreSQL at once never wait for each other; deleting
// what another already deleted is no error.
func (s *Server) sweepIdempotency(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		var n int
		err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
			var err error
			n, err = tx.DeleteIdempotencyBefore(ctx, before, s.cfg.IdempotencySweepBatch)
			return err
		})
		if err != nil {
			return total, fmt.Errorf("global: idempotency janitor: %w", err)
		}
		total += n
		if n < s.cfg.IdempotencySweepBatch {
			return total, nil
		}
	}
}
