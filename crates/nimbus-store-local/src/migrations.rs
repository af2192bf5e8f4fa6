//! Schema migrations, keyed by `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Each runs in its own transaction
//! together with the `user_version` bump, so a crash leaves the database at a whole version. Never edit
//! a migration that has shipped: append a new one.

use nimbus_store::StoreError;
use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Context, backend};

/// The schema version this build writes: the number of migrations.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const MIGRATIONS: &[&str] = &[
    // 1: functions, versions, secrets, invocation records.
    r#"
    CREATE TABLE functions (
        name           TEXT    NOT NULL PRIMARY KEY,
        active_version INTEGER NOT NULL,
        latest_version INTEGER NOT NULL,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE versions (
        function      TEXT    NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        version       INTEGER NOT NULL,
        module_sha256 TEXT    NOT NULL,
        module_size   INTEGER NOT NULL,
        spec_json     TEXT    NOT NULL,
        limits_json   TEXT    NOT NULL,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (function, version)
    ) STRICT;

    CREATE TABLE secrets (
        function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        key      TEXT NOT NULL,
        value    TEXT NOT NULL,
        PRIMARY KEY (function, key)
    ) STRICT;

    -- No foreign key to functions: records outlive their function (usage history, billing).
    CREATE TABLE invocations (
        id                TEXT    NOT NULL PRIMARY KEY, -- UUIDv7: ORDER BY id is chronological
        function          TEXT    NOT NULL,
        version           INTEGER NOT NULL,
        "trigger"         TEXT    NOT NULL,
        started_at        INTEGER NOT NULL,
        duration_us       INTEGER NOT NULL,
        queue_us          INTEGER NOT NULL,
        fuel              INTEGER NOT NULL,
        peak_memory_bytes INTEGER NOT NULL,
        status            TEXT    NOT NULL,
        http_status       INTEGER,
        error             TEXT,
        stdout            TEXT    NOT NULL,
        stderr            TEXT    NOT NULL,
        logs_truncated    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX invocations_function_id ON invocations (function, id);
    CREATE INDEX invocations_started_at ON invocations (started_at);
    "#,
];

/// Bring the schema up to [`SCHEMA_VERSION`]. Refuses a database written by a newer build.
///
/// The version is read inside each migration's (immediate) transaction, so two processes opening the
/// same file at once cannot both apply a migration.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a migration")?;
        let current: u32 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .context("reading the schema version")?;
        if current > SCHEMA_VERSION {
            return Err(backend(
                "opening the database",
                format!(
                    "its schema version is {current}, newer than this build's {SCHEMA_VERSION}: \
                     upgrade Nimbus or restore a backup"
                ),
            ));
        }
        let Some(sql) = MIGRATIONS.get(current as usize) else {
            return Ok(());
        };
        let target = current + 1;
        tx.execute_batch(sql).with_context(|| format!("applying migration {target}"))?;
        tx.pragma_update(None, "user_version", target)
            .with_context(|| format!("recording migration {target}"))?;
        tx.commit().with_context(|| format!("committing migration {target}"))?;
        tracing::info!(version = target, "applied database migration");
    }
}
