package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
)

// ErrSchemaTooNew is returned by the Open functions when the database was
// migrated by a newer Meridian than this one: this binary does not know its
// schema and refuses to touch it.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary")

// migration is one step of a dialect's schema history. Versions count from
// 1 without gaps; a released migration is never edited, only followed.
type migration struct {
	version int
	name    string
	stmts   []string
}

// SchemaVersion is the schema version this binary migrates databases to.
func SchemaVersion() int { return len(sqliteMigrations) }

// Timestamps are INTEGER microseconds since the Unix epoch in SQLite and
// TIMESTAMPTZ in PostgreSQL; definitions are JSON (TEXT / JSONB); tables are
// STRICT in SQLite and text keys compare bytewise (COLLATE "C") in
// PostgreSQL, so both sort names the same way.
var sqliteMigrations = []migration{{
	version: 1,
	name:    "initial schema",
	stmts: []string{
		`CREATE TABLE orgs (
			id         TEXT PRIMARY KEY,
			name       TEXT NOT NULL UNIQUE,
			created_at INTEGER NOT NULL
		) STRICT`,
		`CREATE TABLE tokens (
			id         TEXT PRIMARY KEY,
			org_id     TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			name       TEXT NOT NULL,
			hash       BLOB NOT NULL UNIQUE,
			created_at INTEGER NOT NULL
		) STRICT`,
		`CREATE INDEX tokens_org ON tokens (org_id, created_at, id)`,
		`CREATE TABLE apps (
			id         TEXT PRIMARY KEY,
			org_id     TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			name       TEXT NOT NULL,
			host       TEXT NOT NULL,
			created_at INTEGER NOT NULL,
			UNIQUE (org_id, name)
		) STRICT`,
		`CREATE UNIQUE INDEX apps_host ON apps (host) WHERE host <> ''`,
		`CREATE TABLE services (
			id                   TEXT PRIMARY KEY,
			org_id               TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			app_id               TEXT NOT NULL REFERENCES apps (id),
			name                 TEXT NOT NULL,
			latest_deployment_id TEXT NOT NULL DEFAULT '',
			latest_version       INTEGER NOT NULL DEFAULT 0,
			created_at           INTEGER NOT NULL,
			updated_at           INTEGER NOT NULL,
			UNIQUE (org_id, app_id, name)
		) STRICT`,
		`CREATE INDEX services_app ON services (app_id)`,
		`CREATE TABLE deployments (
			id         TEXT PRIMARY KEY,
			org_id     TEXT NOT NULL,
			service_id TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
			version    INTEGER NOT NULL,
			status     TEXT NOT NULL,
			message    TEXT NOT NULL DEFAULT '',
			definition TEXT NOT NULL,
			created_at INTEGER NOT NULL,
			updated_at INTEGER NOT NULL,
			UNIQUE (service_id, version)
		) STRICT`,
		`CREATE TABLE regional_deployments (
			id            TEXT PRIMARY KEY,
			deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
			region        TEXT NOT NULL,
			generation    INTEGER NOT NULL,
			status        TEXT NOT NULL,
			message       TEXT NOT NULL DEFAULT '',
			definition    TEXT NOT NULL,
			updated_at    INTEGER NOT NULL,
			UNIQUE (deployment_id, region)
		) STRICT`,
		`CREATE TABLE secrets (
			id         TEXT PRIMARY KEY,
			org_id     TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			name       TEXT NOT NULL,
			sealed     BLOB NOT NULL,
			created_at INTEGER NOT NULL,
			updated_at INTEGER NOT NULL,
			UNIQUE (org_id, name)
		) STRICT`,
		`CREATE TABLE regions (
			id         TEXT PRIMARY KEY,
			name       TEXT NOT NULL,
			latitude   REAL NOT NULL,
			longitude  REAL NOT NULL,
			url        TEXT NOT NULL,
			status     TEXT NOT NULL,
			created_at INTEGER NOT NULL,
			updated_at INTEGER NOT NULL
		) STRICT`,
		`CREATE TABLE idempotency (
			org_id       TEXT NOT NULL,
			idem_key     TEXT NOT NULL,
			request_hash BLOB NOT NULL,
			status       INTEGER NOT NULL,
			body         BLOB NOT NULL,
			created_at   INTEGER NOT NULL,
			PRIMARY KEY (org_id, idem_key)
		) STRICT`,
		`CREATE INDEX idempotency_created ON idempotency (created_at)`,
	},
}, {
	version: 2,
	name:    "rollouts",
	stmts: []string{
		`ALTER TABLE regions ADD COLUMN message TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE deployments ADD COLUMN active INTEGER NOT NULL DEFAULT 0`,
		`UPDATE deployments SET active = 1 WHERE status IN ('PENDING', 'PROGRESSING')`,
		`CREATE INDEX deployments_active ON deployments (service_id) WHERE active = 1`,
		`ALTER TABLE regional_deployments ADD COLUMN started_at INTEGER`,
		`CREATE TABLE deployment_events (
			seq           INTEGER PRIMARY KEY,
			deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
			at            INTEGER NOT NULL,
			region        TEXT NOT NULL DEFAULT '',
			type          TEXT NOT NULL,
			message       TEXT NOT NULL
		) STRICT`,
		`CREATE INDEX deployment_events_deployment ON deployment_events (deployment_id, seq)`,
		`CREATE TABLE service_regions (
			service_key TEXT NOT NULL,
			region      TEXT NOT NULL,
			generation  INTEGER NOT NULL,
			deleted     INTEGER NOT NULL,
			updated_at  INTEGER NOT NULL,
			PRIMARY KEY (service_key, region)
		) STRICT`,
		`CREATE TABLE region_ops (
			id                   TEXT PRIMARY KEY,
			service_key          TEXT NOT NULL,
			region               TEXT NOT NULL,
			generation           INTEGER NOT NULL,
			kind                 TEXT NOT NULL,
			purpose              TEXT NOT NULL,
			deployment_id        TEXT NOT NULL,
			target_deployment_id TEXT NOT NULL,
			payload              TEXT NOT NULL,
			state                TEXT NOT NULL,
			applied              INTEGER NOT NULL DEFAULT 0,
			message              TEXT NOT NULL DEFAULT '',
			attempts             INTEGER NOT NULL DEFAULT 0,
			created_at           INTEGER NOT NULL,
			updated_at           INTEGER NOT NULL,
			UNIQUE (service_key, region, generation)
		) STRICT`,
		`CREATE INDEX region_ops_state ON region_ops (state, region)`,
		`CREATE INDEX region_ops_deployment ON region_ops (deployment_id)`,
		`CREATE TABLE leases (
			name       TEXT PRIMARY KEY,
			owner      TEXT NOT NULL,
			expires_at INTEGER NOT NULL
		) STRICT`,
	},
}, {
	version: 3,
	name:    "edge tokens",
	stmts: []string{
		`CREATE TABLE edge_tokens (
			id         TEXT PRIMARY KEY,
			name       TEXT NOT NULL UNIQUE,
			hash       BLOB NOT NULL UNIQUE,
			created_at INTEGER NOT NULL
		) STRICT`,
	},
}}

var postgresMigrations = []migration{{
	version: 1,
	name:    "initial schema",
	stmts: []string{
		`CREATE TABLE orgs (
			id         TEXT COLLATE "C" PRIMARY KEY,
			name       TEXT COLLATE "C" NOT NULL UNIQUE,
			created_at TIMESTAMPTZ NOT NULL
		)`,
		`CREATE TABLE tokens (
			id         TEXT COLLATE "C" PRIMARY KEY,
			org_id     TEXT COLLATE "C" NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			name       TEXT NOT NULL,
			hash       BYTEA NOT NULL UNIQUE,
			created_at TIMESTAMPTZ NOT NULL
		)`,
		`CREATE INDEX tokens_org ON tokens (org_id, created_at, id)`,
		`CREATE TABLE apps (
			id         TEXT COLLATE "C" PRIMARY KEY,
			org_id     TEXT COLLATE "C" NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			name       TEXT COLLATE "C" NOT NULL,
			host       TEXT COLLATE "C" NOT NULL,
			created_at TIMESTAMPTZ NOT NULL,
			UNIQUE (org_id, name)
		)`,
		`CREATE UNIQUE INDEX apps_host ON apps (host) WHERE host <> ''`,
		`CREATE TABLE services (
			id                   TEXT COLLATE "C" PRIMARY KEY,
			org_id               TEXT COLLATE "C" NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			app_id               TEXT COLLATE "C" NOT NULL REFERENCES apps (id),
			name                 TEXT COLLATE "C" NOT NULL,
			latest_deployment_id TEXT COLLATE "C" NOT NULL DEFAULT '',
			latest_version       BIGINT NOT NULL DEFAULT 0,
			created_at           TIMESTAMPTZ NOT NULL,
			updated_at           TIMESTAMPTZ NOT NULL,
			UNIQUE (org_id, app_id, name)
		)`,
		`CREATE INDEX services_app ON services (app_id)`,
		`CREATE TABLE deployments (
			id         TEXT COLLATE "C" PRIMARY KEY,
			org_id     TEXT COLLATE "C" NOT NULL,
			service_id TEXT COLLATE "C" NOT NULL REFERENCES services (id) ON DELETE CASCADE,
			version    BIGINT NOT NULL,
			status     TEXT NOT NULL,
			message    TEXT NOT NULL DEFAULT '',
			definition JSONB NOT NULL,
			created_at TIMESTAMPTZ NOT NULL,
			updated_at TIMESTAMPTZ NOT NULL,
			UNIQUE (service_id, version)
		)`,
		`CREATE TABLE regional_deployments (
			id            TEXT COLLATE "C" PRIMARY KEY,
			deployment_id TEXT COLLATE "C" NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
			region        TEXT COLLATE "C" NOT NULL,
			generation    BIGINT NOT NULL,
			status        TEXT NOT NULL,
			message       TEXT NOT NULL DEFAULT '',
			definition    JSONB NOT NULL,
			updated_at    TIMESTAMPTZ NOT NULL,
			UNIQUE (deployment_id, region)
		)`,
		`CREATE TABLE secrets (
			id         TEXT COLLATE "C" PRIMARY KEY,
			org_id     TEXT COLLATE "C" NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
			name       TEXT COLLATE "C" NOT NULL,
			sealed     BYTEA NOT NULL,
			created_at TIMESTAMPTZ NOT NULL,
			updated_at TIMESTAMPTZ NOT NULL,
			UNIQUE (org_id, name)
		)`,
		`CREATE TABLE regions (
			id         TEXT COLLATE "C" PRIMARY KEY,
			name       TEXT NOT NULL,
			latitude   DOUBLE PRECISION NOT NULL,
			longitude  DOUBLE PRECISION NOT NULL,
			url        TEXT NOT NULL,
			status     TEXT NOT NULL,
			created_at TIMESTAMPTZ NOT NULL,
			updated_at TIMESTAMPTZ NOT NULL
		)`,
		`CREATE TABLE idempotency (
			org_id       TEXT COLLATE "C" NOT NULL,
			idem_key     TEXT COLLATE "C" NOT NULL,
			request_hash BYTEA NOT NULL,
			status       INTEGER NOT NULL,
			body         BYTEA NOT NULL,
			created_at   TIMESTAMPTZ NOT NULL,
			PRIMARY KEY (org_id, idem_key)
		)`,
		`CREATE INDEX idempotency_created ON idempotency (created_at)`,
	},
}, {
	version: 2,
	name:    "rollouts",
	stmts: []string{
		`ALTER TABLE regions ADD COLUMN message TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE deployments ADD COLUMN active BOOLEAN NOT NULL DEFAULT FALSE`,
		`UPDATE deployments SET active = TRUE WHERE status IN ('PENDING', 'PROGRESSING')`,
		`CREATE INDEX deployments_active ON deployments (service_id) WHERE active`,
		`ALTER TABLE regional_deployments ADD COLUMN started_at TIMESTAMPTZ`,
		`CREATE TABLE deployment_events (
			seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			deployment_id TEXT COLLATE "C" NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
			at            TIMESTAMPTZ NOT NULL,
			region        TEXT COLLATE "C" NOT NULL DEFAULT '',
			type          TEXT NOT NULL,
			message       TEXT NOT NULL
		)`,
		`CREATE INDEX deployment_events_deployment ON deployment_events (deployment_id, seq)`,
		`CREATE TABLE service_regions (
			service_key TEXT COLLATE "C" NOT NULL,
			region      TEXT COLLATE "C" NOT NULL,
			generation  BIGINT NOT NULL,
			deleted     BOOLEAN NOT NULL,
			updated_at  TIMESTAMPTZ NOT NULL,
			PRIMARY KEY (service_key, region)
		)`,
		`CREATE TABLE region_ops (
			id                   TEXT COLLATE "C" PRIMARY KEY,
			service_key          TEXT COLLATE "C" NOT NULL,
			region               TEXT COLLATE "C" NOT NULL,
			generation           BIGINT NOT NULL,
			kind                 TEXT NOT NULL,
			purpose              TEXT NOT NULL,
			deployment_id        TEXT COLLATE "C" NOT NULL,
			target_deployment_id TEXT COLLATE "C" NOT NULL,
			payload              TEXT NOT NULL,
			state                TEXT NOT NULL,
			applied              BOOLEAN NOT NULL DEFAULT FALSE,
			message              TEXT NOT NULL DEFAULT '',
			attempts             INTEGER NOT NULL DEFAULT 0,
			created_at           TIMESTAMPTZ NOT NULL,
			updated_at           TIMESTAMPTZ NOT NULL,
			UNIQUE (service_key, region, generation)
		)`,
		`CREATE INDEX region_ops_state ON region_ops (state, region)`,
		`CREATE INDEX region_ops_deployment ON region_ops (deployment_id)`,
		`CREATE TABLE leases (
			name       TEXT COLLATE "C" PRIMARY KEY,
			owner      TEXT NOT NULL,
			expires_at TIMESTAMPTZ NOT NULL
		)`,
	},
}, {
	version: 3,
	name:    "edge tokens",
	stmts: []string{
		`CREATE TABLE edge_tokens (
			id         TEXT COLLATE "C" PRIMARY KEY,
			name       TEXT COLLATE "C" NOT NULL UNIQUE,
			hash       BYTEA NOT NULL UNIQUE,
			created_at TIMESTAMPTZ NOT NULL
		)`,
	},
}}

// migrationLockClass is the first key of the PostgreSQL advisory lock held
// while migrating ("MERI"); the second is a hash of the current schema, so
// replicas sharing a schema serialize and different schemas do not.
const migrationLockClass = 0x4d455249

// migrate brings db to the newest schema of d in one transaction, refusing a
// database newer than d knows.
func migrate(ctx context.Context, db *sql.DB, d *dialect, log *slog.Logger) error {
	for i, m := range d.migrations {
		if m.version != i+1 {
			return fmt.Errorf("store: %s migration %d has version %d", d.name, i+1, m.version)
		}
	}
	// READ COMMITTED in PostgreSQL: after waiting for the advisory lock each
	// statement must see what the replica that held it committed.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: migrateIsolation(d)})
	if err != nil {
		return fmt.Errorf("store: migrate: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit

	if d.postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))`, migrationLockClass); err != nil {
			return fmt.Errorf("store: migrate: advisory lock: %w", err)
		}
	}
	appliedType := "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP"
	if d.postgres {
		appliedType = "TIMESTAMPTZ NOT NULL DEFAULT now()"
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at `+appliedType+`
	)`); err != nil {
		return fmt.Errorf("store: migrate: create schema_migrations: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("store: migrate: read version: %w", err)
	}
	if current > len(d.migrations) {
		return fmt.Errorf("store: %s database is at schema version %d, this binary knows up to %d; upgrade Meridian: %w",
			d.name, current, len(d.migrations), ErrSchemaTooNew)
	}
	for _, m := range d.migrations[current:] {
		for i, stmt := range m.stmts {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("store: migration %d (%s) statement %d: %w", m.version, m.name, i+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, d.rebind(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`), m.version, m.name); err != nil {
			return fmt.Errorf("store: migration %d (%s): record: %w", m.version, m.name, err)
		}
		log.Info("store migration applied", "dialect", d.name, "version", m.version, "name", m.name)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: migrate: commit: %w", err)
	}
	return nil
}

func migrateIsolation(d *dialect) sql.IsolationLevel {
	if d.postgres {
		return sql.LevelReadCommitted
	}
	return sql.LevelDefault
}
