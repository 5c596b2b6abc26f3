package store

import (
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// dialect is what differs between SQLite and PostgreSQL: placeholders, the
// representation of timestamps, row locking, isolation, error codes and DDL.
// Queries are written once with ? placeholders.
type dialect struct {
	name string
	// postgres selects $n placeholders, time.Time timestamps, FOR UPDATE and
	// SQLSTATE error codes; otherwise SQLite.
	postgres bool
	// updateIsolation and viewIsolation are the isolation levels of Update
	// and View transactions.
	updateIsolation, viewIsolation sql.IsolationLevel
	// lockRows is true when a read-write transaction must lock the rows it
	// reads to modify (SELECT ... FOR UPDATE); SQLite has one writer at a
	// time and no row locks.
	lockRows bool
	// migrations is the ordered schema history of this dialect.
	migrations []migration

	rebound sync.Map // query with ? → query with $n (PostgreSQL only)
}

func newSQLiteDialect() *dialect {
	return &dialect{
		name: "sqlite",
		// SQLite transactions are serializable: writers run one at a time
		// and a reader sees one snapshot.
		updateIsolation: sql.LevelDefault,
		viewIsolation:   sql.LevelDefault,
		migrations:      sqliteMigrations,
	}
}

func newPostgresDialect() *dialect {
	return &dialect{
		name:     "postgres",
		postgres: true,
		// Update runs at READ COMMITTED and locks what it reads to modify
		// (see sqlTx), so concurrent writers of one row wait for each other
		// instead of failing; View reads one snapshot.
		updateIsolation: sql.LevelReadCommitted,
		viewIsolation:   sql.LevelRepeatableRead,
		lockRows:        true,
		migrations:      postgresMigrations,
	}
}

// rebind rewrites the ? placeholders of q as $1, $2, ... for PostgreSQL.
// Queries never hold a literal question mark.
func (d *dialect) rebind(q string) string {
	if !d.postgres {
		return q
	}
	if v, ok := d.rebound.Load(q); ok {
		return v.(string)
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	r := b.String()
	d.rebound.Store(q, r)
	return r
}

// ts is the database value of t: microseconds since the Unix epoch in
// SQLite, a timestamptz in PostgreSQL. Both keep microseconds, so t is
// truncated to them in either case and reads back equal.
func (d *dialect) ts(t time.Time) any {
	if d.postgres {
		return t.UTC().Truncate(time.Microsecond)
	}
	return t.UnixMicro()
}

// tsOrNull is ts of *t, or NULL when t is nil.
func (d *dialect) tsOrNull(t *time.Time) any {
	if t == nil {
		return nil
	}
	return d.ts(*t)
}

// normTime is t as it reads back from the store.
func normTime(t time.Time) time.Time {
	return time.UnixMicro(t.UnixMicro()).UTC()
}

// scanTime is an sql.Scanner for a timestamp column of either dialect.
type scanTime struct{ t *time.Time }

// Scan implements sql.Scanner.
func (s scanTime) Scan(v any) error {
	switch x := v.(type) {
	case int64:
		*s.t = time.UnixMicro(x).UTC()
	case time.Time:
		*s.t = normTime(x)
	case nil:
		*s.t = time.Time{}
	default:
		return fmt.Errorf("store: timestamp column holds %T", v)
	}
	return nil
}

// bytesOrEmpty keeps nil slices out of NOT NULL blob columns.
func bytesOrEmpty(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// retryable reports whether err means the transaction lost a race and
// should run again: a PostgreSQL serialization failure or deadlock, or a
// busy/locked SQLite database.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		switch sqErr.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
	}
	return false
}

// isUnique reports whether err is a unique or primary key violation.
func isUnique(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		switch sqErr.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return true
		}
	}
	return false
}

// isForeignKey reports whether err is a foreign key violation.
func isForeignKey(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23503"
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		return sqErr.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
	}
	return false
}

// mapErr wraps err with op, translating missing rows into ErrNotFound and
// unique violations into ErrConflict while keeping the driver error in the
// chain (so retryable still sees it).
func mapErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("store: %s: %w", op, ErrNotFound)
	case isUnique(err):
		return fmt.Errorf("store: %s: %w (%w)", op, ErrConflict, err)
	case isForeignKey(err):
		return fmt.Errorf("store: %s: %w (%w)", op, ErrNotFound, err)
	default:
		return fmt.Errorf("store: %s: %w", op, err)
	}
}
