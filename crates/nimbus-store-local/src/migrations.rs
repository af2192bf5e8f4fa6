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
    -- Every table is keyed by project first: no row is reachable without naming its project.
    CREATE TABLE functions (
        project        TEXT    NOT NULL,
        name           TEXT    NOT NULL,
        active_version INTEGER NOT NULL,
        latest_version INTEGER NOT NULL,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        PRIMARY KEY (project, name)
    ) STRICT;

    CREATE TABLE versions (
        project       TEXT    NOT NULL,
        function      TEXT    NOT NULL,
        version       INTEGER NOT NULL,
        module_sha256 TEXT    NOT NULL,
        module_size   INTEGER NOT NULL,
        spec_json     TEXT    NOT NULL,
        limits_json   TEXT    NOT NULL,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (project, function, version),
        FOREIGN KEY (project, function) REFERENCES functions(project, name) ON DELETE CASCADE
    ) STRICT;

    CREATE TABLE secrets (
        project  TEXT NOT NULL,
        function TEXT NOT NULL,
        key      TEXT NOT NULL,
        value    TEXT NOT NULL,
        PRIMARY KEY (project, function, key),
        FOREIGN KEY (project, function) REFERENCES functions(project, name) ON DELETE CASCADE
    ) STRICT;

    -- No foreign key to functions: records outlive their function (usage history, billing).
    CREATE TABLE invocations (
        id                TEXT    NOT NULL, -- UUIDv7: ORDER BY id is chronological
        project           TEXT    NOT NULL,
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
        logs_truncated    INTEGER NOT NULL,
        -- The key doubles as the table (no rowid B-tree): this table takes a row per request, so
        -- each row costs two B-tree inserts, not three. Unique, so a retried batch is not
        -- counted twice. Pruning scans the table every few minutes instead of indexing time.
        PRIMARY KEY (project, id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX invocations_project_function_id ON invocations (project, function, id);
    "#,
    // 2: identity (nimbus-auth): projects, signing keys, API keys, users + identities, sessions +
    // refresh tokens, one-time tokens, and the durable events outbox. Every table but `projects`
    // carries `project`, and every index a query uses starts with it.
    r#"
    CREATE TABLE projects (
        id         TEXT    NOT NULL PRIMARY KEY,
        slug       TEXT    NOT NULL UNIQUE,
        name       TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;
    INSERT INTO projects (id, slug, name, created_at)
        VALUES ('default', 'default', 'Default project', CAST(strftime('%s', 'now') AS INTEGER) * 1000);

    CREATE TABLE signing_keys (
        project       TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        kid           TEXT    NOT NULL,
        private_pkcs8 BLOB    NOT NULL,
        public_key    BLOB    NOT NULL,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (project, kid)
    ) STRICT;

    CREATE TABLE api_keys (
        id         TEXT    NOT NULL PRIMARY KEY,
        project    TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        prefix     TEXT    NOT NULL UNIQUE,
        hash       BLOB    NOT NULL, -- SHA-256 of the whole key
        scope      TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
    ) STRICT;
    CREATE INDEX api_keys_project ON api_keys (project, id);

    CREATE TABLE users (
        id             TEXT    NOT NULL PRIMARY KEY, -- UUIDv7
        project        TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        email          TEXT,                          -- normalised; NULL for anonymous users
        email_verified INTEGER NOT NULL,
        disabled       INTEGER NOT NULL,
        anon           INTEGER NOT NULL,
        roles_json     TEXT    NOT NULL,
        claims_json    TEXT    NOT NULL,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX users_project_email ON users (project, email) WHERE email IS NOT NULL;
    CREATE INDEX users_project_id ON users (project, id);

    -- How users sign in: 'password' (subject = email, secret = Argon2id PHC string) now, OAuth/OIDC
    -- providers later (subject = the provider's sub), without touching users.
    CREATE TABLE identities (
        id               TEXT    NOT NULL PRIMARY KEY,
        project          TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id          TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        provider         TEXT    NOT NULL,
        provider_subject TEXT    NOT NULL,
        secret_hash      TEXT,
        created_at       INTEGER NOT NULL,
        UNIQUE (project, provider, provider_subject)
    ) STRICT;
    CREATE INDEX identities_user ON identities (project, user_id);

    -- A session is one sign-in and the family of refresh tokens descending from it.
    CREATE TABLE sessions (
        id         TEXT    NOT NULL PRIMARY KEY,
        project    TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id    TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) STRICT;
    CREATE INDEX sessions_user ON sessions (project, user_id);
    CREATE INDEX sessions_revoked ON sessions (project, revoked_at) WHERE revoked_at IS NOT NULL;

    CREATE TABLE refresh_tokens (
        hash       BLOB    NOT NULL PRIMARY KEY, -- SHA-256 of the token
        project    TEXT    NOT NULL,
        session    TEXT    NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        parent     BLOB,                         -- the token this one replaced
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
    ) STRICT;
    CREATE INDEX refresh_tokens_session ON refresh_tokens (session);

    CREATE TABLE one_time_tokens (
        hash       BLOB    NOT NULL PRIMARY KEY, -- SHA-256 of the token
        project    TEXT    NOT NULL,
        user_id    TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        purpose    TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
    ) STRICT;
    CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id);

    -- Written in the same transaction as the change it reports; delivered later by an event
    -- dispatcher. No foreign keys: events outlive their subject.
    CREATE TABLE events (
        id           TEXT    NOT NULL PRIMARY KEY, -- UUIDv7
        project      TEXT    NOT NULL,
        type         TEXT    NOT NULL,
        subject      TEXT    NOT NULL,
        data_json    TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
    ) STRICT;
    CREATE INDEX events_project_id ON events (project, id);
    CREATE INDEX events_undelivered ON events (id) WHERE delivered_at IS NULL;
    "#,
    // 3 (issue 7): the event log, its consumers' cursors, document collections and documents.
    r#"
    -- The event log. `position` is assigned inside the writing transaction, and this database has
    -- one writer at a time, so position order is commit order: a reader that has seen N has seen
    -- every event committed before N. AUTOINCREMENT so that positions are never reused, even once
    -- the newest events are pruned (consumers' cursors would otherwise skip new events).
    -- (A PostgreSQL backend must not use a plain sequence for this: sequence values are taken
    -- before commit, so a slow writer's smaller position can commit after a reader passed it.)
    CREATE TABLE event_log (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id       TEXT    NOT NULL, -- UUIDv7, for deduplication; not an order
        project  TEXT    NOT NULL,
        type     TEXT    NOT NULL,
        source   TEXT    NOT NULL,
        subject  TEXT    NOT NULL,
        time     INTEGER NOT NULL,
        data     TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX event_log_project ON event_log (project, position);
    -- One durable cursor per consumer (realtime hub, later triggers, push, usage).
    CREATE TABLE event_consumers (
        name       TEXT    NOT NULL PRIMARY KEY,
        position   INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    -- Everything up to `pruned_through` is gone: readers behind it must resynchronise.
    CREATE TABLE event_log_state (
        id             INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        pruned_through INTEGER NOT NULL
    ) STRICT;
    INSERT INTO event_log_state (id, pruned_through) VALUES (1, 0);

    -- A collection's integer id keys its documents and names its indexes (`dix_<id>_<hash>`,
    -- partial on `coll = <id>`), so that no user text ever becomes an SQL identifier.
    CREATE TABLE doc_collections (
        id           INTEGER NOT NULL PRIMARY KEY,
        project      TEXT    NOT NULL,
        name         TEXT    NOT NULL,
        schema_json  TEXT,
        rules_json   TEXT    NOT NULL,
        indexes_json TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        UNIQUE (project, name)
    ) STRICT;
    -- A document reaches its project through its collection: every method resolves
    -- (project, collection name) to `coll` first.
    CREATE TABLE documents (
        coll       INTEGER NOT NULL REFERENCES doc_collections(id) ON DELETE CASCADE,
        id         TEXT    NOT NULL,
        revision   INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        data       BLOB    NOT NULL, -- SQLite JSONB
        PRIMARY KEY (coll, id)
    ) STRICT;
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
