package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	_ "modernc.org/sqlite"             // registers the "sqlite" driver
)

// Retry policy of Update and View: a transaction that loses a race
// (serialization failure, deadlock, busy database) runs again up to
// maxAttempts times in all, after a jittered exponential backoff.
const (
	maxAttempts = 12
	backoffBase = time.Millisecond
	backoffMax  = 50 * time.Millisecond
)

// SQLite connection settings. busy_timeout covers other processes holding
// the file; inside one process all writes go through one connection.
const (
	sqliteBusyTimeoutMS = 10000
	sqliteReaders       = 4
)

// Option configures a store at open.
type Option func(*options)

type options struct {
	log *slog.Logger
}

// WithLogger sets the logger of the store (migrations applied, retried
// transactions). The default discards logs.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// sqlStore is the Store over database/sql. SQLite uses two pools: one
// connection for writes, whose transactions begin IMMEDIATE, and a few
// read-only connections for View (WAL lets them read while a write runs).
// PostgreSQL uses one pool for both.
type sqlStore struct {
	d      *dialect
	writer *sql.DB
	reader *sql.DB
	log    *slog.Logger
}

// Open opens the store named by rawURL: a postgres:// or postgresql:// URL
// is a PostgreSQL DSN; sqlite://PATH (sqlite:///abs/path for an absolute
// one), sqlite:PATH or a plain file path is a SQLite database file.
func Open(ctx context.Context, rawURL string, opts ...Option) (Store, error) {
	switch {
	case rawURL == "":
		return nil, errors.New("store: store URL is empty")
	case strings.HasPrefix(rawURL, "postgres://"), strings.HasPrefix(rawURL, "postgresql://"):
		return OpenPostgres(ctx, rawURL, opts...)
	case strings.HasPrefix(rawURL, "sqlite://"):
		return OpenSQLite(ctx, strings.TrimPrefix(rawURL, "sqlite://"), opts...)
	case strings.HasPrefix(rawURL, "sqlite:"):
		return OpenSQLite(ctx, strings.TrimPrefix(rawURL, "sqlite:"), opts...)
	case strings.Contains(rawURL, "://"):
		scheme, _, _ := strings.Cut(rawURL, "://")
		return nil, fmt.Errorf("store: store URL scheme %q is not supported (want postgres://, postgresql:// or sqlite://)", scheme)
	default:
		return OpenSQLite(ctx, rawURL, opts...)
	}
}

// OpenSQLite opens (creating it and its directory when absent) the SQLite
// database file at path, in WAL mode with foreign keys on, and migrates it.
func OpenSQLite(ctx context.Context, path string, opts ...Option) (Store, error) {
	o := buildOptions(opts)
	switch {
	case path == "":
		return nil, errors.New("store: sqlite path is empty")
	case path == ":memory:" || strings.HasPrefix(path, "file:"):
		return nil, fmt.Errorf("store: sqlite path %q: want a plain file path", path)
	case strings.ContainsAny(path, "?#"):
		return nil, fmt.Errorf("store: sqlite path %q: must not contain '?' or '#'", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: sqlite path %q: %w", path, err)
	}
	if err := privateFile(path); err != nil {
		return nil, fmt.Errorf("store: sqlite path %q: %w", path, err)
	}
	common := url.Values{}
	common.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeoutMS))
	common.Add("_pragma", "foreign_keys(1)")

	w := url.Values{}
	for k, v := range common {
		w[k] = append([]string(nil), v...)
	}
	w.Add("_pragma", "journal_mode(WAL)")
	w.Add("_pragma", "synchronous(FULL)")
	w.Set("_txlock", "immediate")
	writer, err := sql.Open("sqlite", path+"?"+w.Encode())
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite %q: %w", path, err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxIdleTime(0)
	writer.SetConnMaxLifetime(0)

	d := newSQLiteDialect()
	if err := migrateSQLite(ctx, writer, d, o.log); err != nil {
		writer.Close()
		return nil, fmt.Errorf("store: sqlite %q: %w", path, err)
	}

	r := common
	r.Add("_pragma", "query_only(1)")
	reader, err := sql.Open("sqlite", path+"?"+r.Encode())
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("store: open sqlite %q: %w", path, err)
	}
	reader.SetMaxOpenConns(sqliteReaders)
	reader.SetMaxIdleConns(sqliteReaders)
	reader.SetConnMaxIdleTime(0)
	reader.SetConnMaxLifetime(0)
	if err := reader.PingContext(ctx); err != nil {
		writer.Close()
		reader.Close()
		return nil, fmt.Errorf("store: open sqlite %q: %w", path, err)
	}
	return &sqlStore{d: d, writer: writer, reader: reader, log: o.log}, nil
}

// privateFile makes the database file and its -wal and -shm files
// readable by their owner only (0600), creating the database file empty
// when absent (SQLite gives the -wal and -shm files it creates the
// database file's mode). The store holds token hashes, sealed secrets and
// every organization's definitions. An existing file is changed by path,
// never opened: closing a descriptor of a file drops every POSIX lock this
// process holds on it, SQLite's included (another store of this process
// may have the file open).
func privateFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		return f.Close()
	}
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && p != path {
			continue
		}
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, fi.Mode().Perm()&^0o077); err != nil {
				return err
			}
		}
	}
	return nil
}

// migrateSQLite migrates a SQLite database, retrying while another process
// or connection holds the file: a connection that opens while another one
// switches the file to WAL or migrates it can be told SQLITE_BUSY at once,
// without its busy timeout.
func migrateSQLite(ctx context.Context, db *sql.DB, d *dialect, log *slog.Logger) error {
	deadline := time.Now().Add(sqliteBusyTimeoutMS * time.Millisecond)
	for attempt := 1; ; attempt++ {
		err := migrate(ctx, db, d, log)
		if err == nil || !retryable(err) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(time.Duration(min(attempt, 10)) * 5 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (after %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// OpenPostgres connects to the PostgreSQL database of dsn (a postgres://
// URL or key=value string understood by pgx) and migrates it, holding an
// advisory lock so replicas starting together migrate one at a time.
func OpenPostgres(ctx context.Context, dsn string, opts ...Option) (Store, error) {
	o := buildOptions(opts)
	if dsn == "" {
		return nil, errors.New("store: postgres DSN is empty")
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect postgres: %w", err)
	}
	d := newPostgresDialect()
	if err := migrate(ctx, db, d, o.log); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: postgres: %w", err)
	}
	return &sqlStore{d: d, writer: db, reader: db, log: o.log}, nil
}

// Update runs fn in a read-write transaction and commits it when fn returns
// nil; otherwise it rolls back and returns fn's error. A transaction that
// fails for a serialization failure, deadlock or busy database is rolled
// back and fn runs again (at most 12 times in all), so fn must have no
// effects outside tx. Update must not be called from inside fn.
func (s *sqlStore) Update(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, false, fn)
}

// View runs fn in a read-only transaction; writes fail. Like Update, it may
// run fn again after a serialization failure.
func (s *sqlStore) View(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, true, fn)
}

// Close closes the store's connections.
func (s *sqlStore) Close() error {
	err := s.writer.Close()
	if s.reader != s.writer {
		err = errors.Join(err, s.reader.Close())
	}
	return err
}

func (s *sqlStore) run(ctx context.Context, readOnly bool, fn func(Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := s.attempt(ctx, readOnly, fn)
		if err == nil || !retryable(err) {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("store: transaction failed %d times: %w", attempt, err)
		}
		s.log.Debug("store transaction retried", "attempt", attempt, "err", err)
		d := min(backoffBase<<(attempt-1), backoffMax)
		t := time.NewTimer(d/2 + rand.N(d/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("store: transaction: %w (after %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

func (s *sqlStore) attempt(ctx context.Context, readOnly bool, fn func(Tx) error) (err error) {
	db := s.writer
	if readOnly {
		db = s.reader
	}
	iso := s.d.updateIsolation
	if readOnly {
		iso = s.d.viewIsolation
	}
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: iso, ReadOnly: readOnly})
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tx.Rollback() //nolint:errcheck // fn panicked; the panic goes on
		}
	}()
	if err := fn(&sqlTx{tx: tx, d: s.d, lock: s.d.lockRows && !readOnly}); err != nil {
		done = true
		tx.Rollback() //nolint:errcheck // fn's error is the one to report
		return err
	}
	done = true
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}
