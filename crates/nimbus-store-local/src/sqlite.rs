//! [`SqliteStore`]: functions, versions, secrets and invocation records in one SQLite file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nimbus_model::{FunctionInfo, FunctionSpec, Limits, UnixMillis, VersionInfo, now_millis};
use nimbus_store::{FunctionStore, NewVersion, Result, StoreError};
use parking_lot::Mutex;
use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};

use crate::error::{Context, backend};
use crate::migrations;

/// Read-only connections kept next to the writer of a file-backed store.
pub const READER_POOL_SIZE: usize = 4;

/// How long a connection waits on a lock held by another connection (another process, or a WAL
/// checkpoint) before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded store of function metadata and invocation records.
///
/// One read-write connection behind a mutex does every write (SQLite has a single writer anyway);
/// reads go to a pool of read-only connections, which in WAL mode never wait for the writer. See the
/// crate documentation.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    /// Empty for an in-memory database: reads then use the writer connection.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    path: Option<PathBuf>,
    /// The newest committed event position: consumers of the event log wait on it.
    events: tokio::sync::watch::Sender<u64>,
    /// Query plans of document queries, by SQL text (see `documents.rs`).
    pub(crate) plans: Mutex<std::collections::HashMap<String, (Option<String>, bool)>>,
    /// Document writes waiting for the group commit (see `documents.rs`). Bounded by the number
    /// of threads that can be blocked in `write`.
    pub(crate) doc_writes: Mutex<std::collections::VecDeque<crate::documents::QueuedWrite>>,
    /// Where the last pruning pass stopped looking for new invocation segments, and the count
    /// it kept per function (see `invocations/prune.rs`).
    pub(crate) prune_mark: Mutex<crate::invocations::PruneMark>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("readers", &self.readers.len())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating it if needed, with mode `0600` and any missing parent directories) the database
    /// at `path`, and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        create_private_file(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = Connection::open_with_flags(path, flags)
            .with_context(|| format!("opening database {}", path.display()))?;
        configure_writer(&writer, true)?;
        migrations::migrate(&mut writer)?;

        // Opened after the migrations, so they see the final schema (and the WAL files exist).
        let readers = (0..READER_POOL_SIZE)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .with_context(|| format!("opening database {} for reading", path.display()))?;
                conn.busy_timeout(BUSY_TIMEOUT).context("setting the busy timeout")?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>>>()?;

        tracing::debug!(path = %path.display(), "opened sqlite store");
        let last = crate::events::last_position(&writer)?;
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            path: Some(path.to_path_buf()),
            events: tokio::sync::watch::Sender::new(last),
            plans: Mutex::default(),
            doc_writes: Mutex::default(),
            prune_mark: Mutex::default(),
        })
    }

    /// A private in-memory database, for tests. Reads share the single (writer) connection.
    pub fn open_in_memory() -> Result<Self> {
        let mut writer = Connection::open_in_memory().context("opening an in-memory database")?;
        configure_writer(&writer, false)?;
        migrations::migrate(&mut writer)?;
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
            path: None,
            events: tokio::sync::watch::Sender::new(0),
            plans: Mutex::default(),
            doc_writes: Mutex::default(),
            prune_mark: Mutex::default(),
        })
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Wake the event log's consumers: events up to `position` are committed.
    pub(crate) fn events_committed(&self, position: u64) {
        self.events.send_if_modified(|last| {
            let newer = position > *last;
            if newer {
                *last = position;
            }
            newer
        });
    }

    pub(crate) fn event_watch(&self) -> &tokio::sync::watch::Sender<u64> {
        &self.events
    }

    /// Run `f` on a read-only connection: a free one from the pool if any, else wait for one.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.readers.is_empty() {
            return f(&self.writer.lock());
        }
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Some(conn) = self.readers[(start + i) % n].try_lock() {
                return f(&conn);
            }
        }
        f(&self.readers[start].lock())
    }

    /// The writer connection, for writes that manage their own transaction.
    pub(crate) fn writer_lock(&self) -> parking_lot::MutexGuard<'_, Connection> {
        self.writer.lock()
    }

    /// [`Self::write`] for one step of a long job done in many short transactions (pruning):
    /// the writer goes straight to a thread already waiting for it, so the recorder and API
    /// writes get in between the steps rather than waiting for the whole job (a plain unlock
    /// lets this thread take the lock again at once).
    pub(crate) fn write_step<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.writer.lock();
        let out = transact(&mut conn, what, f);
        parking_lot::MutexGuard::unlock_fair(conn);
        out
    }

    /// Run `step` ([`Self::write_step`]) until it reports fewer than `size` rows: a long job
    /// (housekeeping that may find a large backlog due, after a burst or a node that was down)
    /// that never holds the writer for all of it. Each step returns (rows it took, what it
    /// counts); returns the sum of the counts.
    pub(crate) fn in_steps(
        &self,
        what: &str,
        size: usize,
        mut step: impl FnMut(&rusqlite::Transaction<'_>) -> Result<(usize, u64)>,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let (rows, counted) = self.write_step(what, &mut step)?;
            total += counted;
            if rows < size {
                return Ok(total);
            }
        }
    }

    /// [`Self::in_steps`] of deleting the rows of `table` that match `filter` (whose parameters
    /// are `args`), `size` at a time, picked by `key` (the columns that identify a row, comma
    /// separated). Returns the rows removed.
    pub(crate) fn delete_in_steps(
        &self,
        what: &str,
        table: &str,
        key: &str,
        filter: &str,
        size: usize,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<u64> {
        let delete = format!(
            "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {filter} LIMIT {size})"
        );
        self.in_steps(what, size, |tx| {
            let n = tx
                .prepare_cached(&delete)
                .and_then(|mut stmt| stmt.execute(args))
                .with_context(|| what.to_string())?;
            Ok((n, n as u64))
        })
    }

    /// Run `f` in an immediate transaction on the writer connection, committing if it returns `Ok`.
    pub(crate) fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        transact(&mut self.writer.lock(), what, f)
    }
}

/// `f` in an immediate transaction on `conn`, committed if it returns `Ok`.
fn transact<T>(
    conn: &mut Connection,
    what: &str,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .with_context(|| format!("{what}: starting a transaction"))?;
    let out = f(&tx)?;
    tx.commit().with_context(|| format!("{what}: committing"))?;
    Ok(out)
}

/// Create the database file with mode `0600` if it does not exist yet, so that it never exists with
/// looser permissions. SQLite gives its `-wal` and `-shm` files the mode of the database file.
fn create_private_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => {
            tracing::info!(path = %path.display(), "created database file");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(backend(format!("creating database {}", path.display()), e)),
    }
}

/// Prepared statements kept per connection: document queries are one statement per collection
/// and query shape (the collection id is part of the SQL, see `documents.rs`).
const STATEMENT_CACHE: usize = 256;

fn configure_writer(conn: &Connection, wal: bool) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT).context("setting the busy timeout")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if wal {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .context("enabling WAL mode")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(backend("enabling WAL mode", format!("SQLite kept journal mode {mode:?}")));
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL").context("setting synchronous=NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON").context("enabling foreign keys")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Row mapping

/// A JSON column that did not parse: reported like any other column conversion failure.
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

const VERSION_COLUMNS: &str =
    "project, function, version, module_sha256, module_size, spec_json, limits_json, created_at";

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<VersionInfo> {
    Ok(VersionInfo {
        project: row.get(0)?,
        function: row.get(1)?,
        version: row.get(2)?,
        module_sha256: row.get(3)?,
        module_size: row.get(4)?,
        spec: json_column(row, 5)?,
        limits: json_column(row, 6)?,
        created_at: row.get(7)?,
    })
}

/// A function row joined with its active version; secrets are filled in afterwards. Callers add
/// `WHERE f.project = ?1 ...`: there is no unscoped use of it.
const FUNCTION_SELECT: &str = "SELECT f.project, f.name, f.active_version, f.latest_version, \
     f.created_at, f.updated_at, v.spec_json, v.limits_json, v.module_sha256 \
     FROM functions f JOIN versions v \
     ON v.project = f.project AND v.function = f.name AND v.version = f.active_version";

fn function_from_row(row: &Row<'_>) -> rusqlite::Result<FunctionInfo> {
    let spec: FunctionSpec = json_column(row, 6)?;
    let limits: Limits = json_column(row, 7)?;
    Ok(FunctionInfo {
        project: row.get(0)?,
        name: row.get(1)?,
        active_version: row.get(2)?,
        latest_version: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        routes: spec.routes,
        env: spec.env,
        limits,
        outbound_hosts: spec.outbound_hosts,
        require_auth: spec.require_auth,
        secrets: Vec::new(),
        module_sha256: row.get(8)?,
    })
}

fn get_version_on(
    conn: &Connection,
    project: &str,
    name: &str,
    version: u32,
) -> Result<Option<VersionInfo>> {
    conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions \
         WHERE project = ?1 AND function = ?2 AND version = ?3"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(params![project, name, version], version_from_row).optional()
    })
    .with_context(|| format!("reading version {version} of function {project}/{name}"))
}

fn function_exists(conn: &Connection, project: &str, name: &str) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM functions WHERE project = ?1 AND name = ?2")
        .and_then(|mut stmt| stmt.exists([project, name]))
        .with_context(|| format!("looking up function {project}/{name}"))
}

fn touch_function(conn: &Connection, project: &str, name: &str, now: UnixMillis) -> Result<()> {
    conn.prepare_cached("UPDATE functions SET updated_at = ?3 WHERE project = ?1 AND name = ?2")
        .and_then(|mut stmt| stmt.execute(params![project, name, now]))
        .with_context(|| format!("updating function {project}/{name}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// FunctionStore
//
// Every query names its project in its WHERE clause (or, for `active_versions`, joins on it): one
// project's rows are unreachable through another project's arguments.

impl FunctionStore for SqliteStore {
    fn create_version(&self, new: NewVersion<'_>) -> Result<VersionInfo> {
        let project = new.project;
        let name = new.spec.name.as_str();
        let spec_json = serde_json::to_string(new.spec).context("encoding the function spec")?;
        let limits_json = serde_json::to_string(&new.limits).context("encoding limits")?;
        let what = format!("creating a version of function {project}/{name}");
        self.write(&what, |tx| {
            let now = now_millis();
            tx.prepare_cached(
                "INSERT INTO functions \
                 (project, name, active_version, latest_version, created_at, updated_at) \
                 VALUES (?1, ?2, 0, 0, ?3, ?3) ON CONFLICT (project, name) DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(params![project, name, now]))
            .with_context(|| format!("{what}: inserting the function"))?;
            // The right-hand sides see the old row: both pointers move to latest + 1.
            let version: u32 = tx
                .prepare_cached(
                    "UPDATE functions SET latest_version = latest_version + 1, \
                     active_version = latest_version + 1, updated_at = ?3 \
                     WHERE project = ?1 AND name = ?2 RETURNING latest_version",
                )
                .and_then(|mut stmt| stmt.query_row(params![project, name, now], |row| row.get(0)))
                .with_context(|| format!("{what}: numbering the version"))?;
            tx.prepare_cached(&format!(
                "INSERT INTO versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))
            .and_then(|mut stmt| {
                stmt.execute(params![
                    project,
                    name,
                    version,
                    new.module_sha256,
                    new.module_size,
                    spec_json,
                    limits_json,
                    now
                ])
            })
            .with_context(|| format!("{what}: inserting version {version}"))?;
            Ok(VersionInfo {
                project: project.to_string(),
                function: name.to_string(),
                version,
                module_sha256: new.module_sha256.to_string(),
                module_size: new.module_size,
                spec: new.spec.clone(),
                limits: new.limits,
                created_at: now,
            })
        })
    }

    fn get_function(&self, project: &str, name: &str) -> Result<Option<FunctionInfo>> {
        self.read(|conn| {
            let what = || format!("reading function {project}/{name}");
            // One consistent snapshot for both queries.
            let tx = conn.unchecked_transaction().with_context(what)?;
            let Some(mut info) = tx
                .prepare_cached(&format!("{FUNCTION_SELECT} WHERE f.project = ?1 AND f.name = ?2"))
                .and_then(|mut stmt| stmt.query_row([project, name], function_from_row).optional())
                .with_context(what)?
            else {
                return Ok(None);
            };
            info.secrets = tx
                .prepare_cached(
                    "SELECT key FROM secrets WHERE project = ?1 AND function = ?2 ORDER BY key",
                )
                .and_then(|mut stmt| {
                    stmt.query_map([project, name], |row| row.get(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .with_context(what)?;
            Ok(Some(info))
        })
    }

    fn list_functions(&self, project: &str) -> Result<Vec<FunctionInfo>> {
        self.read(|conn| {
            let what = || format!("listing functions of project {project}");
            // One consistent snapshot for both queries.
            let tx = conn.unchecked_transaction().with_context(what)?;
            let mut functions: Vec<FunctionInfo> = tx
                .prepare_cached(&format!("{FUNCTION_SELECT} WHERE f.project = ?1 ORDER BY f.name"))
                .and_then(|mut stmt| {
                    stmt.query_map([project], function_from_row)?.collect::<rusqlite::Result<_>>()
                })
                .with_context(what)?;
            let mut secrets: BTreeMap<String, Vec<String>> = BTreeMap::new();
            tx.prepare_cached(
                "SELECT function, key FROM secrets WHERE project = ?1 ORDER BY function, key",
            )
            .and_then(|mut stmt| {
                let mut rows = stmt.query([project])?;
                while let Some(row) = rows.next()? {
                    secrets.entry(row.get(0)?).or_default().push(row.get(1)?);
                }
                Ok(())
            })
            .with_context(what)?;
            for f in &mut functions {
                f.secrets = secrets.remove(&f.name).unwrap_or_default();
            }
            Ok(functions)
        })
    }

    fn list_versions(&self, project: &str, name: &str) -> Result<Vec<VersionInfo>> {
        let versions: Vec<VersionInfo> = self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions \
                 WHERE project = ?1 AND function = ?2 ORDER BY version"
            ))
            .and_then(|mut stmt| stmt.query_map([project, name], version_from_row)?.collect())
            .with_context(|| format!("listing versions of function {project}/{name}"))
        })?;
        // Every function has at least one version: none means no such function.
        if versions.is_empty() {
            return Err(StoreError::NotFound(format!("function {name}")));
        }
        Ok(versions)
    }

    fn get_version(&self, project: &str, name: &str, version: u32) -> Result<Option<VersionInfo>> {
        self.read(|conn| get_version_on(conn, project, name, version))
    }

    fn active_versions(&self) -> Result<Vec<VersionInfo>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT v.project, v.function, v.version, v.module_sha256, v.module_size, \
                 v.spec_json, v.limits_json, v.created_at \
                 FROM functions f JOIN versions v \
                 ON v.project = f.project AND v.function = f.name AND v.version = f.active_version \
                 WHERE f.project NOT IN (SELECT id FROM projects WHERE deleting_at IS NOT NULL) \
                 ORDER BY f.project, f.name",
            )
            .and_then(|mut stmt| stmt.query_map([], version_from_row)?.collect())
            .context("listing active versions")
        })
    }

    fn set_active_version(&self, project: &str, name: &str, version: u32) -> Result<VersionInfo> {
        let what = format!("activating version {version} of function {project}/{name}");
        self.write(&what, |tx| {
            let Some(info) = get_version_on(tx, project, name, version)? else {
                return Err(if function_exists(tx, project, name)? {
                    StoreError::NotFound(format!("version {version} of function {name}"))
                } else {
                    StoreError::NotFound(format!("function {name}"))
                });
            };
            tx.prepare_cached(
                "UPDATE functions SET active_version = ?3, updated_at = ?4 \
                 WHERE project = ?1 AND name = ?2",
            )
            .and_then(|mut stmt| stmt.execute(params![project, name, version, now_millis()]))
            .context(&what)?;
            Ok(info)
        })
    }

    fn delete_function(&self, project: &str, name: &str) -> Result<bool> {
        // Versions and secrets go with it (ON DELETE CASCADE); invocation records stay.
        let what = format!("deleting function {project}/{name}");
        self.write(&what, |tx| {
            let n = tx
                .prepare_cached("DELETE FROM functions WHERE project = ?1 AND name = ?2")
                .and_then(|mut stmt| stmt.execute([project, name]))
                .context(&what)?;
            Ok(n > 0)
        })
    }

    fn delete_project_functions(&self, project: &str) -> Result<Vec<String>> {
        let what = format!("deleting the functions of project {project}");
        self.write(&what, |tx| {
            tx.prepare_cached("DELETE FROM functions WHERE project = ?1 RETURNING name")
                .and_then(|mut stmt| stmt.query_map([project], |r| r.get(0))?.collect())
                .context(&what)
        })
    }

    fn module_shas(&self) -> Result<std::collections::HashSet<String>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT DISTINCT module_sha256 FROM versions")
                .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
                .context("listing referenced modules")
        })
    }

    fn set_secret(&self, project: &str, function: &str, key: &str, value: &str) -> Result<()> {
        self.write(&format!("setting a secret of function {project}/{function}"), |tx| {
            if !function_exists(tx, project, function)? {
                return Err(StoreError::NotFound(format!("function {function}")));
            }
            tx.prepare_cached(
                "INSERT INTO secrets (project, function, key, value) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (project, function, key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut stmt| stmt.execute(params![project, function, key, value]))
            .with_context(|| format!("setting secret {key} of function {project}/{function}"))?;
            touch_function(tx, project, function, now_millis())
        })
    }

    fn delete_secret(&self, project: &str, function: &str, key: &str) -> Result<bool> {
        self.write(&format!("deleting a secret of function {project}/{function}"), |tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM secrets WHERE project = ?1 AND function = ?2 AND key = ?3",
                )
                .and_then(|mut stmt| stmt.execute(params![project, function, key]))
                .with_context(|| {
                    format!("deleting secret {key} of function {project}/{function}")
                })?;
            if n > 0 {
                touch_function(tx, project, function, now_millis())?;
            }
            Ok(n > 0)
        })
    }

    fn secrets(&self, project: &str, function: &str) -> Result<BTreeMap<String, String>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT key, value FROM secrets WHERE project = ?1 AND function = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_map([project, function], |row| Ok((row.get(0)?, row.get(1)?)))?.collect()
            })
            .with_context(|| format!("reading secrets of function {project}/{function}"))
        })
    }
}
