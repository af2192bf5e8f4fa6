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
    // 3: commit positions. Invocation records and auth events get a `seq` assigned inside the
    // transaction that writes them, so that a reader that has seen position N has seen everything
    // committed before N (ids are made when a request starts, and a slow one commits after faster
    // ones that started later: paging by id skipped it). Existing rows are numbered in their
    // current (id) order. Both tables are rebuilt (SQLite cannot add a key column in place); the
    // same columns exist in every shape migration 1 ever gave `invocations`.
    r#"
    -- Counters that only grow, bumped in the transaction that uses them: never reused, even after
    -- the newest rows are pruned or deleted (a consumer's cursor may point past them).
    CREATE TABLE sequences (
        name  TEXT    NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE invocations_v3 (
        seq               INTEGER NOT NULL, -- commit position, from sequences 'invocations'
        id                TEXT    NOT NULL, -- UUIDv7, made when the request started
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
        -- Clustered by position within a project: following and listing are range scans, and
        -- new rows append at the end of their project's range.
        PRIMARY KEY (project, seq)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO invocations_v3 (seq, id, project, function, version, "trigger", started_at,
            duration_us, queue_us, fuel, peak_memory_bytes, status, http_status, error, stdout,
            stderr, logs_truncated)
        SELECT row_number() OVER (ORDER BY id, project), id, project, function, version,
            "trigger", started_at, duration_us, queue_us, fuel, peak_memory_bytes, status,
            http_status, error, stdout, stderr, logs_truncated
        FROM invocations;
    INSERT INTO sequences (name, value)
        SELECT 'invocations', coalesce(max(seq), 0) FROM invocations_v3;
    DROP TABLE invocations;
    ALTER TABLE invocations_v3 RENAME TO invocations;
    -- Unique: a retried batch is not stored twice; also the lookup by id.
    CREATE UNIQUE INDEX invocations_project_id ON invocations (project, id);
    CREATE INDEX invocations_project_function_seq ON invocations (project, function, seq);

    -- The rowid is the position: SQLite assigns it under the write lock, and AUTOINCREMENT keeps
    -- it from being reused after the newest events are deleted.
    CREATE TABLE events_v3 (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        id           TEXT    NOT NULL UNIQUE, -- UUIDv7: stable, for deduplication
        project      TEXT    NOT NULL,
        type         TEXT    NOT NULL,
        subject      TEXT    NOT NULL,
        data_json    TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
    ) STRICT;
    INSERT INTO events_v3 (seq, id, project, type, subject, data_json, created_at, delivered_at)
        SELECT row_number() OVER (ORDER BY id), id, project, type, subject, data_json,
            created_at, delivered_at
        FROM events;
    DROP TABLE events;
    ALTER TABLE events_v3 RENAME TO events;
    CREATE INDEX events_project_seq ON events (project, seq);
    CREATE INDEX events_undelivered ON events (seq) WHERE delivered_at IS NULL;
    "#,
    // KV (nimbus-kv): per project, per bucket byte values with an optional expiry. Self-contained:
    // touches no other table.
    r#"
    -- WITHOUT ROWID: the primary key is the only access path, so the row lives in its B-tree.
    CREATE TABLE kv_entries (
        project    TEXT    NOT NULL,
        bucket     TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        value      BLOB    NOT NULL,
        expires_at INTEGER,            -- unix ms; NULL never expires
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (project, bucket, key)
    ) STRICT, WITHOUT ROWID;
    -- For the purge of expired entries across projects.
    CREATE INDEX kv_entries_expiry ON kv_entries (expires_at) WHERE expires_at IS NOT NULL;
    "#,
    // 5 (issue 7): the event log, its consumers' cursors, document collections and documents.
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
    // 6 (issue 8): file storage. Bytes live on disk under `data_id`s (never user keys); these
    // tables are the metadata, published in the same transaction as the object's event.
    r#"
    CREATE TABLE object_buckets (
        project    TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        settings   TEXT    NOT NULL, -- JSON BucketSettings
        created_at INTEGER NOT NULL,
        objects    INTEGER NOT NULL DEFAULT 0, -- kept in each publishing transaction
        bytes      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (project, name)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE objects (
        project      TEXT    NOT NULL,
        bucket       TEXT    NOT NULL,
        key          TEXT    NOT NULL,
        data_id      TEXT    NOT NULL,
        size         INTEGER NOT NULL,
        content_type TEXT    NOT NULL,
        etag         TEXT    NOT NULL,
        metadata     TEXT    NOT NULL, -- JSON object of strings
        uploader     TEXT    NOT NULL, -- JSON identity
        created_at   INTEGER NOT NULL,
        PRIMARY KEY (project, bucket, key)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX objects_data ON objects (data_id);
    CREATE TABLE object_uploads (
        id           TEXT    NOT NULL PRIMARY KEY,
        project      TEXT    NOT NULL,
        bucket       TEXT    NOT NULL,
        key          TEXT    NOT NULL,
        content_type TEXT    NOT NULL,
        metadata     TEXT    NOT NULL,
        uploader     TEXT    NOT NULL,
        created_at   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX object_uploads_bucket ON object_uploads (project, bucket, key);
    CREATE INDEX object_uploads_age ON object_uploads (created_at);
    CREATE TABLE object_parts (
        upload_id  TEXT    NOT NULL REFERENCES object_uploads(id) ON DELETE CASCADE,
        number     INTEGER NOT NULL,
        data_id    TEXT    NOT NULL,
        size       INTEGER NOT NULL,
        etag       TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (upload_id, number)
    ) STRICT;
    CREATE INDEX object_parts_data ON object_parts (data_id);
    -- Access keys of the S3-compatible endpoint. SigV4 derives its signing key from the secret
    -- itself, so unlike API keys the secret cannot be stored hashed; the file is mode 0600, like
    -- the per-project JWT signing keys it already holds.
    CREATE TABLE s3_access_keys (
        access_key TEXT    NOT NULL PRIMARY KEY,
        project    TEXT    NOT NULL,
        secret     TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX s3_access_keys_project ON s3_access_keys (project);
    "#,
    // 7 (issue 9): event delivery to functions. The dispatcher fans each event out into one
    // delivery per subscription (with a copy of the event, so pruning the log loses none) in the
    // transaction that moves its cursor; schedules remember their last tick; asynchronous
    // invocations keep their request and response; producers' idempotency keys.
    r#"
    CREATE TABLE trigger_deliveries (
        id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        project         TEXT    NOT NULL,
        function        TEXT    NOT NULL,
        trigger         TEXT    NOT NULL,
        event_position  INTEGER NOT NULL,
        event_id        TEXT    NOT NULL,
        event_type      TEXT    NOT NULL,
        event_source    TEXT    NOT NULL,
        event_subject   TEXT    NOT NULL,
        event_time      INTEGER NOT NULL,
        event_data      TEXT    NOT NULL,
        path            TEXT    NOT NULL,
        order_key       TEXT,
        state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        max_attempts    INTEGER NOT NULL,
        next_at         INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        leased_until    INTEGER NOT NULL DEFAULT 0,
        lease_ms        INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        last_error      TEXT,
        last_invocation TEXT
    ) STRICT;
    -- Claims look at due pending deliveries only.
    CREATE INDEX trigger_deliveries_due ON trigger_deliveries (next_at, id)
        WHERE state = 'pending';
    -- An ordered delivery waits for earlier pending ones of its subscription and key.
    CREATE INDEX trigger_deliveries_order ON trigger_deliveries (project, function, trigger, order_key, id)
        WHERE state = 'pending' AND order_key IS NOT NULL;
    CREATE INDEX trigger_deliveries_sub ON trigger_deliveries (project, function, trigger, state);
    CREATE INDEX trigger_deliveries_age ON trigger_deliveries (state, updated_at);
    CREATE TABLE trigger_attempts (
        delivery      INTEGER NOT NULL REFERENCES trigger_deliveries(id) ON DELETE CASCADE,
        attempt       INTEGER NOT NULL,
        invocation_id TEXT,
        started_at    INTEGER NOT NULL,
        duration_ms   INTEGER NOT NULL,
        http_status   INTEGER,
        ok            INTEGER NOT NULL,
        error         TEXT,
        PRIMARY KEY (delivery, attempt)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE trigger_schedules (
        project   TEXT    NOT NULL,
        function  TEXT    NOT NULL,
        trigger   TEXT    NOT NULL,
        last_tick INTEGER NOT NULL,
        PRIMARY KEY (project, function, trigger)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE async_invocations (
        id                 TEXT    NOT NULL PRIMARY KEY,
        project            TEXT    NOT NULL,
        function           TEXT    NOT NULL,
        status             TEXT    NOT NULL,
        method             TEXT    NOT NULL,
        path               TEXT    NOT NULL,
        headers            TEXT    NOT NULL, -- JSON [[name, value], ...]
        body               BLOB    NOT NULL,
        callback_url       TEXT,
        created_at         INTEGER NOT NULL,
        completed_at       INTEGER,
        attempts           INTEGER NOT NULL DEFAULT 0,
        invocation_id      TEXT,
        response_status    INTEGER,
        response_headers   TEXT    NOT NULL DEFAULT '[]',
        response_body      BLOB    NOT NULL DEFAULT x'',
        response_truncated INTEGER NOT NULL DEFAULT 0,
        error              TEXT
    ) STRICT;
    CREATE INDEX async_invocations_done ON async_invocations (completed_at)
        WHERE completed_at IS NOT NULL;
    CREATE TABLE idempotency_keys (
        project    TEXT    NOT NULL,
        scope      TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        result     TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (project, scope, key)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
    -- Auth events move onto the event log (written in the change's transaction there from now
    -- on), so triggers can deliver them; the old outbox, which nothing delivered, goes.
    INSERT INTO event_log (id, project, type, source, subject, time, data)
        SELECT id, project, 'dev.nimbus.auth.' || type, '/v1/projects/' || project || '/auth',
               subject, created_at, data_json
        FROM events ORDER BY seq;
    DROP TABLE events;
    -- Verification and reset mail, written in the transaction that issues its one-time token and
    -- deleted once sent (or given up): a restart loses none. The message holds the token's link
    -- until then, like the SMTP server it goes to.
    CREATE TABLE mail_outbox (
        id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        project      TEXT    NOT NULL,
        message      TEXT    NOT NULL, -- JSON EmailMessage
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        leased_until INTEGER NOT NULL DEFAULT 0,
        expires_at   INTEGER NOT NULL,
        created_at   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX mail_outbox_due ON mail_outbox (next_at);
    "#,
    // 8 (issue 8): scopes of S3 access keys, like API keys' (`public` keys obey bucket access
    // settings).
    r#"
    ALTER TABLE s3_access_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'service'
        CHECK (scope IN ('service', 'public'));
    "#,
    // 9 (issue 11): push notifications (nimbus-push): per-project VAPID keys, subscriptions, topics,
    // messages and one delivery row per (message, subscription).
    r#"
    CREATE TABLE push_vapid_keys (
        project     TEXT    NOT NULL PRIMARY KEY,
        private_key BLOB    NOT NULL,
        public_key  BLOB    NOT NULL,
        created_at  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE push_subscriptions (
        project    TEXT    NOT NULL,
        id         TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        user_id    TEXT,
        endpoint   TEXT    NOT NULL,
        p256dh     TEXT    NOT NULL,
        auth       TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (project, id),
        UNIQUE (project, endpoint)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX push_subscriptions_user ON push_subscriptions (project, user_id)
        WHERE user_id IS NOT NULL;
    CREATE TABLE push_topic_members (
        project      TEXT NOT NULL,
        topic        TEXT NOT NULL,
        subscription TEXT NOT NULL,
        PRIMARY KEY (project, topic, subscription)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX push_topic_members_sub ON push_topic_members (project, subscription);
    CREATE TABLE push_messages (
        project     TEXT    NOT NULL,
        id          TEXT    NOT NULL,
        target_kind TEXT    NOT NULL,
        target      TEXT    NOT NULL,
        payload     BLOB    NOT NULL,
        ttl         INTEGER NOT NULL,
        urgency     TEXT    NOT NULL,
        topic       TEXT,
        sender      TEXT    NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        PRIMARY KEY (project, id)
    ) STRICT;
    CREATE TABLE push_deliveries (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        project         TEXT    NOT NULL,
        message         TEXT    NOT NULL,
        subscription    TEXT    NOT NULL,
        state           TEXT    NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        lease_until     INTEGER NOT NULL DEFAULT 0,
        last_status     INTEGER,
        last_error      TEXT,
        updated_at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX push_deliveries_due ON push_deliveries (next_attempt_at) WHERE state = 'queued';
    CREATE INDEX push_deliveries_message ON push_deliveries (project, message, id);
    CREATE INDEX push_deliveries_subscription ON push_deliveries (project, subscription, id);
    "#,
    // 10 (issue 12): the request's method and path in invocation records, for `logs` filters.
    r#"
    ALTER TABLE invocations ADD COLUMN method TEXT NOT NULL DEFAULT '';
    ALTER TABLE invocations ADD COLUMN path TEXT NOT NULL DEFAULT '';
    "#,
    // 11 (issue 9): durable callbacks of asynchronous invocations. A finished invocation with a
    // callback URL is `pending` until the callback is acknowledged or runs out of attempts.
    r#"
    ALTER TABLE async_invocations ADD COLUMN callback_status TEXT;
    ALTER TABLE async_invocations ADD COLUMN callback_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE async_invocations ADD COLUMN callback_next_at INTEGER;
    ALTER TABLE async_invocations ADD COLUMN callback_error TEXT;
    CREATE INDEX async_invocations_callbacks ON async_invocations (callback_next_at)
        WHERE callback_status = 'pending';
    "#,
    // 12 (issue 10): usage metering and quotas. The two record columns are what GB-seconds and
    // egress are counted from; `usage_hourly` is bumped in the transaction that inserts the
    // records and is never pruned (days and months are sums of hours).
    r#"
    ALTER TABLE invocations ADD COLUMN memory_limit_mb INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN outbound_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE usage_hourly (
        project        TEXT    NOT NULL,
        hour           INTEGER NOT NULL, -- unix ms of the UTC hour's start
        function       TEXT    NOT NULL,
        requests       INTEGER NOT NULL,
        exec_ms        INTEGER NOT NULL,
        mb_ms          INTEGER NOT NULL,
        fuel           INTEGER NOT NULL,
        outbound_bytes INTEGER NOT NULL,
        events         INTEGER NOT NULL,
        PRIMARY KEY (project, hour, function)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX usage_hourly_hour ON usage_hourly (hour);
    CREATE TABLE project_quotas (
        project TEXT NOT NULL PRIMARY KEY,
        quotas  TEXT NOT NULL -- JSON: nimbus_model::usage::Quotas
    ) STRICT;
    -- One row per soft threshold crossed: its event is written once per quota and month.
    CREATE TABLE quota_thresholds (
        project TEXT    NOT NULL,
        quota   TEXT    NOT NULL,
        period  INTEGER NOT NULL, -- unix ms of the UTC month's start
        PRIMARY KEY (project, quota, period)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 13 (issue 10): what each project stores, kept exactly by triggers in the transaction of
    // every change to documents, KV entries and objects (the stored-bytes quota reads it before
    // every write that adds data, so it must be one row, not a scan), seeded here from the rows
    // there are. File egress and push messages sent are hourly usage like the functions'; data
    // services' rows use the empty function name.
    r#"
    ALTER TABLE usage_hourly ADD COLUMN file_egress_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_hourly ADD COLUMN push_sent INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE project_storage (
        project        TEXT    NOT NULL PRIMARY KEY,
        documents      INTEGER NOT NULL DEFAULT 0,
        document_bytes INTEGER NOT NULL DEFAULT 0, -- JSONB size
        kv_bytes       INTEGER NOT NULL DEFAULT 0, -- key (UTF-8) + value bytes
        file_bytes     INTEGER NOT NULL DEFAULT 0  -- object sizes
    ) STRICT, WITHOUT ROWID;
    INSERT INTO project_storage (project)
        SELECT project FROM doc_collections
        UNION SELECT project FROM kv_entries
        UNION SELECT project FROM objects;
    UPDATE project_storage SET
        documents = (SELECT count(*) FROM documents d JOIN doc_collections c ON c.id = d.coll
                     WHERE c.project = project_storage.project),
        document_bytes = (SELECT coalesce(sum(length(d.data)), 0) FROM documents d
                          JOIN doc_collections c ON c.id = d.coll
                          WHERE c.project = project_storage.project),
        kv_bytes = (SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0)
                    FROM kv_entries WHERE project = project_storage.project),
        file_bytes = (SELECT coalesce(sum(size), 0) FROM objects
                      WHERE project = project_storage.project);

    -- A document reaches its project through its collection (still there: collections are
    -- deleted after their documents). Rows are created with INSERT ... WHERE NOT EXISTS, not
    -- INSERT OR IGNORE: an outer statement's conflict clause (an upsert's) overrides the one of
    -- a statement in its trigger.
    CREATE TRIGGER documents_stored_insert AFTER INSERT ON documents BEGIN
        INSERT INTO project_storage (project)
            SELECT project FROM doc_collections c WHERE id = NEW.coll
            AND NOT EXISTS (SELECT 1 FROM project_storage s WHERE s.project = c.project);
        UPDATE project_storage SET documents = documents + 1,
            document_bytes = document_bytes + length(NEW.data)
            WHERE project = (SELECT project FROM doc_collections WHERE id = NEW.coll);
    END;
    -- A document never changes collection (the key is (coll, id)): only its data changes.
    CREATE TRIGGER documents_stored_update AFTER UPDATE OF data ON documents BEGIN
        UPDATE project_storage
            SET document_bytes = document_bytes - length(OLD.data) + length(NEW.data)
            WHERE project = (SELECT project FROM doc_collections WHERE id = NEW.coll);
    END;
    CREATE TRIGGER documents_stored_delete AFTER DELETE ON documents BEGIN
        UPDATE project_storage SET documents = documents - 1,
            document_bytes = document_bytes - length(OLD.data)
            WHERE project = (SELECT project FROM doc_collections WHERE id = OLD.coll);
    END;

    CREATE TRIGGER kv_entries_stored_insert AFTER INSERT ON kv_entries BEGIN
        INSERT INTO project_storage (project) SELECT NEW.project
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage
            SET kv_bytes = kv_bytes + length(CAST(NEW.key AS BLOB)) + length(NEW.value)
            WHERE project = NEW.project;
    END;
    CREATE TRIGGER kv_entries_stored_update AFTER UPDATE OF project, key, value ON kv_entries BEGIN
        UPDATE project_storage
            SET kv_bytes = kv_bytes - length(CAST(OLD.key AS BLOB)) - length(OLD.value)
            WHERE project = OLD.project;
        INSERT INTO project_storage (project) SELECT NEW.project
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage
            SET kv_bytes = kv_bytes + length(CAST(NEW.key AS BLOB)) + length(NEW.value)
            WHERE project = NEW.project;
    END;
    CREATE TRIGGER kv_entries_stored_delete AFTER DELETE ON kv_entries BEGIN
        UPDATE project_storage
            SET kv_bytes = kv_bytes - length(CAST(OLD.key AS BLOB)) - length(OLD.value)
            WHERE project = OLD.project;
    END;

    -- Objects are published with an upsert (an UPDATE when the key exists): `INSERT OR REPLACE`
    -- would delete the old row without firing the delete trigger (recursive_triggers is off).
    CREATE TRIGGER objects_stored_insert AFTER INSERT ON objects BEGIN
        INSERT INTO project_storage (project) SELECT NEW.project
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage SET file_bytes = file_bytes + NEW.size WHERE project = NEW.project;
    END;
    CREATE TRIGGER objects_stored_update AFTER UPDATE OF project, size ON objects BEGIN
        UPDATE project_storage SET file_bytes = file_bytes - OLD.size WHERE project = OLD.project;
        INSERT INTO project_storage (project) SELECT NEW.project
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage SET file_bytes = file_bytes + NEW.size WHERE project = NEW.project;
    END;
    CREATE TRIGGER objects_stored_delete AFTER DELETE ON objects BEGIN
        UPDATE project_storage SET file_bytes = file_bytes - OLD.size WHERE project = OLD.project;
    END;
    "#,
    // 14 (issue 10): storage billed by how long it is held. Once a minute the bytes each
    // project stores are accrued as byte-seconds into its hourly usage (empty function name),
    // from `accrued_at` (the instant accrued up to) to now, in one transaction: two nodes
    // accruing never count the same interval twice. A project's row starts its clock when its
    // first data creates it: migration 13's triggers that create rows are replaced by the same
    // triggers setting `accrued_at` (rows from before this migration start at their first
    // accrual). The time is SQLite's clock in unix ms (julianday: any SQLite version).
    r#"
    ALTER TABLE usage_hourly ADD COLUMN stored_byte_seconds INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE project_storage ADD COLUMN accrued_at INTEGER;

    DROP TRIGGER documents_stored_insert;
    CREATE TRIGGER documents_stored_insert AFTER INSERT ON documents BEGIN
        INSERT INTO project_storage (project, accrued_at)
            SELECT project, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
            FROM doc_collections c WHERE id = NEW.coll
            AND NOT EXISTS (SELECT 1 FROM project_storage s WHERE s.project = c.project);
        UPDATE project_storage SET documents = documents + 1,
            document_bytes = document_bytes + length(NEW.data)
            WHERE project = (SELECT project FROM doc_collections WHERE id = NEW.coll);
    END;
    DROP TRIGGER kv_entries_stored_insert;
    CREATE TRIGGER kv_entries_stored_insert AFTER INSERT ON kv_entries BEGIN
        INSERT INTO project_storage (project, accrued_at)
            SELECT NEW.project, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage
            SET kv_bytes = kv_bytes + length(CAST(NEW.key AS BLOB)) + length(NEW.value)
            WHERE project = NEW.project;
    END;
    DROP TRIGGER kv_entries_stored_update;
    CREATE TRIGGER kv_entries_stored_update AFTER UPDATE OF project, key, value ON kv_entries BEGIN
        UPDATE project_storage
            SET kv_bytes = kv_bytes - length(CAST(OLD.key AS BLOB)) - length(OLD.value)
            WHERE project = OLD.project;
        INSERT INTO project_storage (project, accrued_at)
            SELECT NEW.project, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage
            SET kv_bytes = kv_bytes + length(CAST(NEW.key AS BLOB)) + length(NEW.value)
            WHERE project = NEW.project;
    END;
    DROP TRIGGER objects_stored_insert;
    CREATE TRIGGER objects_stored_insert AFTER INSERT ON objects BEGIN
        INSERT INTO project_storage (project, accrued_at)
            SELECT NEW.project, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage SET file_bytes = file_bytes + NEW.size WHERE project = NEW.project;
    END;
    DROP TRIGGER objects_stored_update;
    CREATE TRIGGER objects_stored_update AFTER UPDATE OF project, size ON objects BEGIN
        UPDATE project_storage SET file_bytes = file_bytes - OLD.size WHERE project = OLD.project;
        INSERT INTO project_storage (project, accrued_at)
            SELECT NEW.project, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
            WHERE NOT EXISTS (SELECT 1 FROM project_storage WHERE project = NEW.project);
        UPDATE project_storage SET file_bytes = file_bytes + NEW.size WHERE project = NEW.project;
    END;
    "#,
    // 15 (issue 10, the request path): invocation records in segments, one row per (project,
    // function, minute) of a batch instead of one per record with three index entries (see
    // `invocations.rs`). Each old row becomes a segment of one record, with its position.
    r#"
    CREATE TABLE invocation_segments (
        seq_end        INTEGER PRIMARY KEY, -- the last record's position: segments append
        seq_start      INTEGER NOT NULL,    -- the first record's position
        project        TEXT    NOT NULL,
        function       TEXT    NOT NULL,
        min_started_at INTEGER NOT NULL,    -- all within one minute
        max_started_at INTEGER NOT NULL,
        len            INTEGER NOT NULL,    -- records in body
        format         INTEGER NOT NULL,    -- 1: a JSON array of positional arrays
        body           TEXT    NOT NULL
    ) STRICT;
    INSERT INTO invocation_segments (seq_end, seq_start, project, function, min_started_at,
            max_started_at, len, format, body)
        SELECT seq, seq, project, function, started_at, started_at, 1, 1,
            json_array(json_array(seq, id, version, "trigger", method, path, started_at,
                duration_us, queue_us, fuel, peak_memory_bytes, memory_limit_mb, outbound_bytes,
                status, http_status, error, stdout, stderr,
                json(CASE WHEN logs_truncated THEN 'true' ELSE 'false' END)))
        FROM invocations;
    -- Records written before this migration may start up to some time after their id's time
    -- (two clock reads): a lookup by id that misses near the id's time also looks through them.
    INSERT INTO sequences (name, value)
        SELECT 'invocations_before_segments', coalesce(max(seq), 0) FROM invocations;
    DROP TABLE invocations;
    -- Each index ends with the rowid (seq_end), so it lists segments in position order.
    CREATE INDEX invocation_segments_project ON invocation_segments (project);
    CREATE INDEX invocation_segments_function ON invocation_segments (project, function);
    CREATE INDEX invocation_segments_started
        ON invocation_segments (project, min_started_at, max_started_at);
    "#,
    // 16: per-subscription counts of deliveries kept in the same transaction as each change, so
    // `GET /v1/triggers` and the trigger gauges read a row per subscription instead of scanning
    // the backlog. The oldest pending event comes from a partial index. Seeded from the rows.
    r#"
    CREATE TABLE trigger_delivery_stats (
        project  TEXT    NOT NULL,
        function TEXT    NOT NULL,
        trigger  TEXT    NOT NULL,
        pending  INTEGER NOT NULL DEFAULT 0,
        dead     INTEGER NOT NULL DEFAULT 0,
        retrying INTEGER NOT NULL DEFAULT 0, -- pending, after a failed attempt
        PRIMARY KEY (project, function, trigger)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO trigger_delivery_stats (project, function, trigger, pending, dead, retrying)
        SELECT project, function, trigger, sum(state = 'pending'), sum(state = 'dead'),
            sum(state = 'pending' AND last_error IS NOT NULL)
        FROM trigger_deliveries WHERE state != 'delivered'
        GROUP BY project, function, trigger;
    CREATE INDEX trigger_deliveries_oldest_pending
        ON trigger_deliveries (project, function, trigger, event_time) WHERE state = 'pending';
    -- A row's project, function and trigger never change; its state and last error do.
    CREATE TRIGGER trigger_deliveries_count_insert AFTER INSERT ON trigger_deliveries
        WHEN NEW.state != 'delivered'
    BEGIN
        INSERT INTO trigger_delivery_stats (project, function, trigger, pending, dead, retrying)
            VALUES (NEW.project, NEW.function, NEW.trigger, NEW.state = 'pending',
                NEW.state = 'dead', NEW.state = 'pending' AND NEW.last_error IS NOT NULL)
            ON CONFLICT DO UPDATE SET pending = pending + excluded.pending,
                dead = dead + excluded.dead, retrying = retrying + excluded.retrying;
    END;
    CREATE TRIGGER trigger_deliveries_count_update AFTER UPDATE OF state, last_error
        ON trigger_deliveries
    BEGIN
        INSERT INTO trigger_delivery_stats (project, function, trigger, pending, dead, retrying)
            VALUES (NEW.project, NEW.function, NEW.trigger,
                (NEW.state = 'pending') - (OLD.state = 'pending'),
                (NEW.state = 'dead') - (OLD.state = 'dead'),
                (NEW.state = 'pending' AND NEW.last_error IS NOT NULL)
                    - (OLD.state = 'pending' AND OLD.last_error IS NOT NULL))
            ON CONFLICT DO UPDATE SET pending = pending + excluded.pending,
                dead = dead + excluded.dead, retrying = retrying + excluded.retrying;
        DELETE FROM trigger_delivery_stats WHERE project = NEW.project
            AND function = NEW.function AND trigger = NEW.trigger
            AND pending = 0 AND dead = 0 AND retrying = 0;
    END;
    CREATE TRIGGER trigger_deliveries_count_delete AFTER DELETE ON trigger_deliveries
        WHEN OLD.state != 'delivered'
    BEGIN
        UPDATE trigger_delivery_stats SET pending = pending - (OLD.state = 'pending'),
            dead = dead - (OLD.state = 'dead'),
            retrying = retrying - (OLD.state = 'pending' AND OLD.last_error IS NOT NULL)
            WHERE project = OLD.project AND function = OLD.function AND trigger = OLD.trigger;
        DELETE FROM trigger_delivery_stats WHERE project = OLD.project
            AND function = OLD.function AND trigger = OLD.trigger
            AND pending = 0 AND dead = 0 AND retrying = 0;
    END;
    "#,
    // 17: the tombstone of a project's deletion. The row stays, marked with the time its
    // deletion began, until every service has deleted its part: reads that resolve a project
    // skip it, its slug cannot be taken again meanwhile, and a start finishes a deletion that a
    // crash interrupted. NULL: the project is live.
    r#"
    ALTER TABLE projects ADD COLUMN deleting_at INTEGER;
    "#,
    // 18 (issue 10, the request path): invocation segments in format 2, postcard (see
    // `invocations/segment.rs`), a blob. The table is STRICT and `body` TEXT, so their records go
    // in a new column and `body` is left empty; format 1 segments keep theirs in `body`, and
    // `data` is NULL for them. Adding a column rewrites nothing.
    r#"
    ALTER TABLE invocation_segments ADD COLUMN data BLOB;
    "#,
    // 19: the user of a session or identity, indexed on its own. Deleting a user cascades to
    // them by `user_id`, which the `(project, user_id)` indexes cannot serve: each deleted user
    // scanned every project's sessions and identities, and a project's deletion did that once
    // per user.
    r#"
    CREATE INDEX sessions_user_id ON sessions (user_id);
    CREATE INDEX identities_user_id ON identities (user_id);
    "#,
];

/// Migration 1 was edited after it had landed (3c28f07 added `project` to every table). A
/// database created before that edit says `user_version = 1` but has the original shape, which
/// the later migrations and every query assume away. This brings such a database to what
/// migration 1 creates today (its rows into the `default` project, the only one there was), so
/// that it can carry on from version 1. Detected by shape, since the version number is the same.
/// Like a migration, never edit this once landed.
const REPAIR_ORIGINAL_V1: &str = r#"
    -- Move the original tables aside (their foreign keys and indexes follow the rename); the
    -- caller then runs today's migration 1 and the copy below.
    ALTER TABLE functions   RENAME TO original_v1_functions;
    ALTER TABLE versions    RENAME TO original_v1_versions;
    ALTER TABLE secrets     RENAME TO original_v1_secrets;
    ALTER TABLE invocations RENAME TO original_v1_invocations;
"#;

/// The second half of [`REPAIR_ORIGINAL_V1`], after migration 1's current text has run. The
/// originals are dropped children first, so that no cascade fires.
const REPAIR_ORIGINAL_V1_COPY: &str = r#"
    INSERT INTO functions (project, name, active_version, latest_version, created_at, updated_at)
        SELECT 'default', name, active_version, latest_version, created_at, updated_at
        FROM original_v1_functions;
    INSERT INTO versions (project, function, version, module_sha256, module_size, spec_json,
            limits_json, created_at)
        SELECT 'default', function, version, module_sha256, module_size, spec_json, limits_json,
            created_at
        FROM original_v1_versions;
    INSERT INTO secrets (project, function, key, value)
        SELECT 'default', function, key, value FROM original_v1_secrets;
    INSERT INTO invocations (id, project, function, version, "trigger", started_at, duration_us,
            queue_us, fuel, peak_memory_bytes, status, http_status, error, stdout, stderr,
            logs_truncated)
        SELECT id, 'default', function, version, "trigger", started_at, duration_us, queue_us,
            fuel, peak_memory_bytes, status, http_status, error, stdout, stderr, logs_truncated
        FROM original_v1_invocations;
    DROP TABLE original_v1_versions;
    DROP TABLE original_v1_secrets;
    DROP TABLE original_v1_functions;
    DROP TABLE original_v1_invocations;
"#;

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
        if current == 1 && has_original_v1_shape(&tx)? {
            tracing::warn!("database has migration 1's original shape; bringing it up to date");
            tx.execute_batch(REPAIR_ORIGINAL_V1)
                .and_then(|()| tx.execute_batch(MIGRATIONS[0]))
                .and_then(|()| tx.execute_batch(REPAIR_ORIGINAL_V1_COPY))
                .context("repairing migration 1's original shape")?;
        }
        let target = current + 1;
        tx.execute_batch(sql).with_context(|| format!("applying migration {target}"))?;
        tx.pragma_update(None, "user_version", target)
            .with_context(|| format!("recording migration {target}"))?;
        tx.commit().with_context(|| format!("committing migration {target}"))?;
        tracing::info!(version = target, "applied database migration");
    }
}

/// Whether the database has the shape migration 1 had before it was edited: `functions` without
/// a `project` column.
fn has_original_v1_shape(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT count(*) = 0 FROM pragma_table_info('functions') WHERE name = 'project'",
        [],
        |row| row.get(0),
    )
    .context("inspecting the schema")
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use sha2::{Digest, Sha256};

    use super::*;

    /// SHA-256 of the text of every landed migration, in order. A landed migration has run on
    /// databases that exist: editing it changes nothing for them, and leaves them with another
    /// schema than new databases get (migration 1 was edited three times before this test).
    /// Append a hash here when a new migration lands; never change one.
    const LANDED: &[&str] = &[
        "6553f6fe987d3cfc0ac8e747acd77c71f984199a58b132142ca2b10e054312e9",
        "5686debec54b8fb19ffe3f4bfd10371aaba06811c63f1dfb7c7b392e35a9c21d",
        "1b2a5ce5ff08dca48cebff2628dbc7ef6e6dd944263a63de350fc87e073f59bb",
        "ae10f8b53c7f15a5130b2f8e85c0e9a67b21749c6b7754607888d71036ab9081",
        "b58a99c7d5e07db9e3adce9fa165abebda3bd889cbc38f24641e527c49dcd532",
        "897e3fdc0c7e0225a6e1633528f99376e03b762482c1f141113426e4f38ef5e8",
        "0fee7770dedfcdd1bbd6d355cae12b5ff05d88a44c5a30e6be82bcd6f2e43ed4",
        "883173b0a5c5859f5b02bc80d627b64065ea280c03d6c261c4928edafccd28df",
        "da86ff1df48cb75b8db1451073900052fa749a909540d1cb13d93a98bcc1c74c",
        "aa0735fbe78e67deb5d4afa0a9eb7fafa87cf07e72c2030e69893e3c29cf136d",
        "39bb479b7a8c57c05382e910b860bfa257f90f8e1d76adec4c34d0444ee1b3d9",
        "14ba569bbe8c83adbafacdc8bd2f7ae358e1083636dc51c54f1ab77b4ec96244",
        "3a392430bb5ea090749369f76f6ff178062cbecdcbe8e2d0f9aacda09e77daf2",
        "a89aed80ef08bbd84b084cb3e24928632eb294cb9b289300d3529b5c19bf6454",
        "09f00d79a8a377555a7c6cec4e6ab4b5e115f5d804f1992b11b35dbe091278f6",
        "3cb0a9dd7962ff4dbda6e38676868857950530ff22f09894ad45893719324198",
        "8d16bd19930846aeca593b621e04b05431d076a65d76d3dad96a736abda15f66",
        "df1e369033f8da018084861f24512e97b1cce8152c1dffd3810eb50a1cac37f1",
        "9456aa826572f07d8c899fc9bb4edb9ff3a17b9586e6a419b9d474272002a181",
    ];
    /// Likewise for the repair of migration 1's original shape.
    const LANDED_REPAIR: [&str; 2] = [
        "750d3469757b4c6c041ab21ab80a07e3dfbc27429a8b789f73fd1fa85d9b3c5e",
        "b838846432a0a79d51cc07bd354a11fc42b8a90064ff3b0bd6789b23ac22f00e",
    ];

    fn sha256(text: &str) -> String {
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    #[test]
    fn landed_migrations_are_unchanged() {
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let n = i + 1;
            let Some(landed) = LANDED.get(i) else {
                panic!(
                    "migration {n} has no recorded hash: once it lands, append \"{}\" to LANDED",
                    sha256(sql)
                );
            };
            assert_eq!(
                sha256(sql),
                *landed,
                "migration {n} has landed and must not be edited: revert the edit and add a new \
                 migration instead"
            );
        }
        assert_eq!(LANDED.len(), MIGRATIONS.len(), "a landed migration was removed");
        for (sql, landed) in [REPAIR_ORIGINAL_V1, REPAIR_ORIGINAL_V1_COPY].iter().zip(LANDED_REPAIR)
        {
            assert_eq!(sha256(sql), landed, "the repair of migration 1 has landed: do not edit it");
        }
    }

    /// A database at version 2, as builds before positions left it, with rows in two projects
    /// written out of id order.
    fn at_version_2() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        let tx = conn.transaction().unwrap();
        for (id, project) in [("03", "a"), ("01", "b"), ("04", "b"), ("02", "a")] {
            tx.execute(
                "INSERT INTO invocations (id, project, function, version, \"trigger\", \
                 started_at, duration_us, queue_us, fuel, peak_memory_bytes, status, stdout, \
                 stderr, logs_truncated) VALUES (?1, ?2, 'f', 1, 'http', 1, 1, 0, 1, 1, 'ok', \
                 ?1, '', 0)",
                [id, project],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO events (id, project, type, subject, data_json, created_at) \
                 VALUES (?1, ?2, 'user.created', 'u', '{}', 1)",
                [id, project],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        conn
    }

    fn column(conn: &Connection, sql: &str) -> Vec<(i64, String)> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }

    /// Apply migration 3 only (later ones moved the auth outbox onto the event log).
    fn to_version_3(conn: &mut Connection) {
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[2]).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn positions_are_backfilled_in_id_order_and_continue_after() {
        let mut conn = at_version_2();
        to_version_3(&mut conn);
        let expected: Vec<(i64, String)> = (1..=4).map(|n| (n, format!("{n:02}"))).collect();
        assert_eq!(column(&conn, "SELECT seq, id FROM invocations ORDER BY seq"), expected);
        assert_eq!(column(&conn, "SELECT seq, id FROM events ORDER BY seq"), expected);
        // The counters start after the backfilled rows: new rows are numbered 5 on.
        assert_eq!(
            column(&conn, "SELECT value, name FROM sequences"),
            [(4, "invocations".to_string())]
        );
        conn.execute(
            "INSERT INTO events (id, project, type, subject, data_json, created_at) \
             VALUES ('00', 'a', 'user.created', 'u', '{}', 1)",
            [],
        )
        .unwrap();
        assert_eq!(column(&conn, "SELECT seq, id FROM events WHERE id = '00'"), [(5, "00".into())]);
    }

    #[test]
    fn event_positions_are_not_reused_after_the_newest_events_go() {
        let mut conn = at_version_2();
        to_version_3(&mut conn);
        // A project with the newest events is deleted; the next event still gets a new position.
        conn.execute("DELETE FROM events WHERE seq >= 3", []).unwrap();
        conn.execute(
            "INSERT INTO events (id, project, type, subject, data_json, created_at) \
             VALUES ('05', 'a', 'user.created', 'u', '{}', 1)",
            [],
        )
        .unwrap();
        assert_eq!(column(&conn, "SELECT seq, id FROM events WHERE id = '05'"), [(5, "05".into())]);
    }

    #[test]
    fn migration_7_moves_auth_events_onto_the_event_log_in_order() {
        let mut conn = at_version_2();
        migrate(&mut conn).unwrap();
        let moved = column(
            &conn,
            "SELECT position, id || ' ' || project || ' ' || type || ' ' || source FROM event_log \
             ORDER BY position",
        );
        let expected: Vec<(i64, String)> = [("01", "b"), ("02", "a"), ("03", "a"), ("04", "b")]
            .iter()
            .enumerate()
            .map(|(i, (id, p))| {
                (
                    i as i64 + 1,
                    format!("{id} {p} dev.nimbus.auth.user.created /v1/projects/{p}/auth"),
                )
            })
            .collect();
        assert_eq!(moved, expected, "in the outbox's commit order, typed for the log");
        let outbox: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'events'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(outbox, 0, "the old outbox is gone");
    }

    /// A database at version 12 with documents, KV entries and objects in two projects: the
    /// upgrade seeds `project_storage` from them, and the triggers keep it from then on.
    #[test]
    fn migration_13_seeds_stored_bytes_from_existing_rows() {
        use nimbus_store::kv::{Expiry, KvStore};
        use nimbus_store::usage::UsageStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        let expected_doc_bytes: i64 = {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..12] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 12).unwrap();
            tx.execute_batch(
                r#"
                INSERT INTO doc_collections (id, project, name, rules_json, indexes_json,
                    created_at, updated_at) VALUES (1, 'a', 'c', '{}', '[]', 1, 1),
                    (2, 'b', 'c', '{}', '[]', 1, 1);
                INSERT INTO documents (coll, id, revision, created_at, updated_at, data) VALUES
                    (1, 'x', 1, 1, 1, jsonb('{"name":"ünïcode","n":[1,2,3]}')),
                    (1, 'y', 1, 1, 1, jsonb('{}')),
                    (2, 'z', 1, 1, 1, jsonb('{"other":"project"}'));
                INSERT INTO kv_entries (project, bucket, key, value, expires_at, updated_at)
                    VALUES ('a', 'b', 'ké', x'00010203', NULL, 1), ('b', 'b', 'k', x'00', NULL, 1);
                INSERT INTO objects (project, bucket, key, data_id, size, content_type, etag,
                    metadata, uploader, created_at) VALUES
                    ('a', 'files', 'one', 'd1', 1000, 'text/plain', 'e', '{}', 'null', 1),
                    ('a', 'files', 'two', 'd2', 24, 'text/plain', 'e', '{}', 'null', 1),
                    ('c', 'files', 'only', 'd3', 5, 'text/plain', 'e', '{}', 'null', 1);
                "#,
            )
            .unwrap();
            let bytes = tx
                .query_row("SELECT sum(length(data)) FROM documents WHERE coll = 1", [], |r| {
                    r.get(0)
                })
                .unwrap();
            tx.commit().unwrap();
            bytes
        };
        let store = crate::SqliteStore::open(&path).unwrap();
        let a = store.data_gauges("a").unwrap();
        assert_eq!(a.documents, 2);
        assert_eq!(a.document_bytes, expected_doc_bytes as u64);
        assert_eq!(a.kv_bytes, 3 + 4, "`ké` is 3 bytes of UTF-8");
        assert_eq!(a.file_bytes, 1024);
        assert_eq!(store.data_gauges("b").unwrap().kv_bytes, 2);
        assert_eq!(store.data_gauges("c").unwrap().file_bytes, 5);
        assert_eq!(store.data_gauges("none").unwrap(), Default::default());
        // From here on the triggers keep it.
        store.set("a", "b", "ké", b"", Expiry::Never, 2).unwrap();
        assert_eq!(store.data_gauges("a").unwrap().kv_bytes, 3);
    }

    /// A database at migration 13 with usage and stored data: its hours keep their counters
    /// (stored byte-seconds 0), and storage accrues from the first accrual after the upgrade.
    #[test]
    fn migration_14_keeps_usage_and_starts_accruing_storage() {
        use nimbus_store::usage::UsageStore;
        const H: i64 = 3_600_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..13] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 13).unwrap();
            tx.execute_batch(
                r#"
                INSERT INTO usage_hourly (project, hour, function, requests, exec_ms, mb_ms, fuel,
                    outbound_bytes, events, file_egress_bytes, push_sent)
                    VALUES ('a', 0, 'f', 3, 9, 576, 100, 10, 1, 7, 2);
                INSERT INTO kv_entries (project, bucket, key, value, expires_at, updated_at)
                    VALUES ('a', 'b', 'k', zeroblob(99), NULL, 1);
                "#,
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = crate::SqliteStore::open(&path).unwrap();
        let before = store.usage_total("a", 0, H).unwrap();
        assert_eq!((before.requests, before.file_egress_bytes, before.push_sent), (3, 7, 2));
        assert_eq!(before.stored_byte_seconds, 0);
        store.accrue_storage(10 * H).unwrap();
        store.accrue_storage(10 * H + 60_000).unwrap();
        assert_eq!(store.usage_total("a", 10 * H, 11 * H).unwrap().stored_byte_seconds, 100 * 60);
    }

    /// A database at version 14 with records that need escaping and NULLs, in two projects: each
    /// becomes a segment of one record that reads back field for field, with its position.
    #[test]
    fn migration_15_moves_each_record_into_a_segment() {
        use nimbus_model::{InvocationQuery, InvocationStatus};
        use nimbus_store::InvocationStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..14] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 14).unwrap();
            tx.execute_batch(
                r#"
                INSERT INTO invocations (seq, id, project, function, version, "trigger",
                    started_at, duration_us, queue_us, fuel, peak_memory_bytes, status,
                    http_status, error, stdout, stderr, logs_truncated, method, path,
                    memory_limit_mb, outbound_bytes) VALUES
                    (7, 'id-7', 'a', 'f', 2, 'queue:jobs', 1000, 2500, 10, 9007199254740993,
                        65536, 'trap', NULL, 'wasm "trap"\n', 'line 1
                    ünïcode \ "quoted"', '', 1, 'POST', '/x?y=1', 128, 42),
                    (9, 'id-9', 'b', 'g', 1, 'http', 2000, 1, 0, 0, 0, 'ok', 200, NULL, '', '',
                        0, 'GET', '/', 64, 0);
                UPDATE sequences SET value = 9 WHERE name = 'invocations';
                "#,
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = crate::SqliteStore::open(&path).unwrap();
        let a = store.query("a", &InvocationQuery::default()).unwrap();
        assert_eq!(a.len(), 1);
        let r = &a[0];
        assert_eq!((r.seq, r.id.as_str(), r.function.as_str(), r.version), (7, "id-7", "f", 2));
        assert_eq!(
            (r.trigger.as_str(), r.started_at, r.duration_us, r.queue_us),
            ("queue:jobs", 1000, 2500, 10)
        );
        assert_eq!(r.fuel, 9_007_199_254_740_993, "integers beyond 2^53 survive JSON");
        assert_eq!((r.peak_memory_bytes, r.memory_limit_mb, r.outbound_bytes), (65536, 128, 42));
        assert_eq!((r.status, r.http_status), (InvocationStatus::Trap, None));
        assert_eq!(r.error.as_deref(), Some("wasm \"trap\"\\n"));
        assert_eq!(r.stdout, "line 1\n                    ünïcode \\ \"quoted\"");
        assert!(r.logs_truncated);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/x?y=1"));
        let b = store.get("b", "id-9").unwrap().unwrap();
        assert_eq!(
            (b.seq, b.http_status, b.error.as_deref(), b.logs_truncated),
            (9, Some(200), None, false)
        );
        assert!(store.get("a", "id-9").unwrap().is_none(), "still scoped to its project");
        // New records are positioned after the old ones.
        let mut new = [nimbus_model::InvocationRecord { id: "id-10".into(), ..b.clone() }];
        store.insert_batch(&mut new).unwrap();
        assert_eq!(new[0].seq, 10);
    }

    /// A database at version 15 with deliveries in every state: migration 16 seeds the counts
    /// from them, and the stats read the same as the scan they replace.
    #[test]
    fn migration_16_seeds_subscription_counts_from_the_rows() {
        use nimbus_store::triggers::DeliveryStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..15] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 15).unwrap();
            for (n, (function, state, error, time)) in [
                ("f", "pending", None, 30),
                ("f", "pending", Some("HTTP 500"), 20),
                ("f", "dead", Some("HTTP 500"), 10),
                ("f", "delivered", None, 5),
                ("g", "delivered", None, 1),
                ("h", "dead", None, 2),
            ]
            .into_iter()
            .enumerate()
            {
                tx.execute(
                    "INSERT INTO trigger_deliveries (project, function, trigger, event_position, \
                     event_id, event_type, event_source, event_subject, event_time, event_data, \
                     path, state, max_attempts, next_at, expires_at, lease_ms, created_at, \
                     updated_at, last_error) VALUES ('a', ?1, 't', ?2, ?2, 'x', '/s', 's', ?3, \
                     '{}', '/', ?4, 3, 0, 0, 1000, 0, 0, ?5)",
                    rusqlite::params![function, n as i64, time, state, error],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = crate::SqliteStore::open(&path).unwrap();
        let stats: Vec<_> = store
            .subscription_stats(Some("a"))
            .unwrap()
            .into_iter()
            .map(|s| (s.function, s.pending, s.dead, s.oldest_pending_at, s.retrying))
            .collect();
        assert_eq!(stats, [("f".to_string(), 2, 1, Some(20), 1), ("h".to_string(), 0, 1, None, 0)]);
    }

    /// A database at version 16 with projects and an API key: after migration 17 every project
    /// is live (found, listed, its key working), none is being deleted, and the tombstone works.
    #[test]
    fn migration_17_keeps_existing_projects_live() {
        use nimbus_store::auth::AuthStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..16] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 16).unwrap();
            tx.execute_batch(
                r#"
                INSERT INTO projects (id, slug, name, created_at) VALUES ('acme', 'acme', 'Acme', 5);
                INSERT INTO api_keys (id, project, prefix, hash, scope, name, created_at)
                    VALUES ('k', 'acme', 'abcdefgh', x'00', 'service', '', 5);
                "#,
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = crate::SqliteStore::open(&path).unwrap();
        let ids: Vec<_> = store.list_projects().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["acme", "default"]);
        let acme = store.get_project_by_slug("acme").unwrap().unwrap();
        assert_eq!((acme.name.as_str(), acme.created_at), ("Acme", 5));
        assert!(store.get_project("default").unwrap().is_some());
        assert_eq!(store.api_key_by_prefix("abcdefgh").unwrap().unwrap().project, "acme");
        assert!(store.deleting_projects().unwrap().is_empty());
        store.mark_project_deleting("acme", 9).unwrap();
        assert!(store.get_project("acme").unwrap().is_none());
        assert_eq!(store.deleting_projects().unwrap(), ["acme"]);
    }

    /// A database at version 17 with JSON segments (format 1), as the builds before format 2
    /// wrote them: after migration 18 they read and are found by id as before, new records go
    /// into postcard segments beside them, and pruning rewrites a JSON segment as postcard.
    #[test]
    fn migration_18_reads_json_segments_and_writes_postcard() {
        use nimbus_store::InvocationStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        let t = 1_700_000_000_000_i64;
        let ids: Vec<String> = (0..4)
            .map(|i| {
                let ts = uuid::Timestamp::from_unix(uuid::NoContext, (t / 1000) as u64 + i, 0);
                uuid::Uuid::new_v7(ts).to_string()
            })
            .collect();
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..17] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 17).unwrap();
            // One segment of three records, its body as builds before format 2 wrote it.
            let rows: Vec<String> = ids[..3]
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    format!(
                        r#"[{},"{id}",1,"http","GET","/old",{},1000,0,5,64,128,0,"ok",200,null,"",""
                        ,false]"#,
                        i + 1,
                        t + i as i64 * 1000
                    )
                })
                .collect();
            tx.execute(
                "INSERT INTO invocation_segments (seq_end, seq_start, project, function, \
                 min_started_at, max_started_at, len, format, body) \
                 VALUES (3, 1, 'p', 'f', ?1, ?2, 3, 1, ?3)",
                rusqlite::params![t, t + 2000, format!("[{}]", rows.join(","))],
            )
            .unwrap();
            tx.execute("UPDATE sequences SET value = 3 WHERE name = 'invocations'", []).unwrap();
            tx.commit().unwrap();
        }
        let store = crate::SqliteStore::open(&path).unwrap();
        let old = store.get("p", &ids[1]).unwrap().unwrap();
        assert_eq!((old.seq, old.path.as_str(), old.started_at), (2, "/old", t + 1000));
        let mut new = [nimbus_model::InvocationRecord {
            id: ids[3].clone(),
            path: "/new".into(),
            started_at: t + 3000,
            ..old.clone()
        }];
        store.insert_batch(&mut new).unwrap();
        assert_eq!(new[0].seq, 4);
        let formats = |store: &crate::SqliteStore| -> Vec<(i64, i64, bool)> {
            store
                .read(|conn| {
                    let mut stmt = conn
                        .prepare(
                            "SELECT seq_end, format, data IS NULL FROM invocation_segments \
                             ORDER BY seq_end",
                        )
                        .unwrap();
                    Ok(stmt
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect())
                })
                .unwrap()
        };
        assert_eq!(formats(&store), [(3, 1, true), (4, 2, false)]);
        let all = store
            .query("p", &nimbus_model::InvocationQuery { ascending: true, ..Default::default() })
            .unwrap();
        let paths: Vec<_> = all.iter().map(|r| (r.seq, r.path.as_str())).collect();
        assert_eq!(paths, [(1, "/old"), (2, "/old"), (3, "/old"), (4, "/new")]);
        assert_eq!(store.get("p", &new[0].id).unwrap().as_ref(), Some(&new[0]));
        // Keep the newest 3: the JSON segment loses its first record and is rewritten.
        assert_eq!(store.prune(0, 3).unwrap(), 1);
        assert_eq!(formats(&store), [(3, 2, false), (4, 2, false)]);
        assert_eq!(store.get("p", &ids[2]).unwrap().as_ref(), Some(&all[2]));
        assert!(store.get("p", &ids[0]).unwrap().is_none());
    }

    /// A deletion of a parent row finds its children through an index: for every foreign key,
    /// the child's columns lead some index of the child table (a primary key counts). Without
    /// one, each parent deleted scans the whole child table, every project's rows included.
    #[test]
    fn every_foreign_key_is_indexed_on_the_child() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::SqliteStore::open(&dir.path().join("n.db")).unwrap());
        let conn = Connection::open(dir.path().join("n.db")).unwrap();
        let unindexed = (|| -> rusqlite::Result<Vec<String>> {
            let tables: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut unindexed = Vec::new();
            for table in tables {
                // Each foreign key's child columns, in key order.
                let mut keys: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
                let mut stmt = conn.prepare(
                    "SELECT id, \"from\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
                )?;
                let mut rows = stmt.query([&table])?;
                while let Some(row) = rows.next()? {
                    keys.entry(row.get(0)?).or_default().push(row.get(1)?);
                }
                // The columns of each index a lookup can use: a partial one serves only its rows.
                let names: Vec<String> = conn
                    .prepare("SELECT name FROM pragma_index_list(?1) WHERE partial = 0")?
                    .query_map([&table], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut indexes: Vec<Vec<String>> = Vec::new();
                for name in names {
                    indexes.push(
                        conn.prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
                            .query_map([&name], |r| r.get(0))?
                            .collect::<Result<_, _>>()?,
                    );
                }
                for columns in keys.values() {
                    let led = indexes.iter().any(|index| {
                        index.len() >= columns.len()
                            && columns.iter().all(|c| index[..columns.len()].contains(c))
                    });
                    if !led {
                        unindexed.push(format!("{table}({columns:?})"));
                    }
                }
            }
            Ok(unindexed)
        })()
        .unwrap();
        assert!(unindexed.is_empty(), "foreign keys without an index on the child: {unindexed:?}");
    }
}
