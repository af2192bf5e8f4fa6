//! Persistence interfaces. Services depend on these traits only; backends (`nimbus-store-local`:
//! SQLite + local disk today; PostgreSQL / S3 later) implement them in their own crates.
//!
//! Architecture invariant: no SQL dialect, file layout or client library leaks through these traits.
//!
//! The traits are synchronous: the embedded backend is SQLite, whose calls are short and blocking.
//! Services call them from `tokio::task::spawn_blocking` (or a dedicated writer thread), so a networked
//! backend can use a blocking client or its own runtime handle without changing the services.

pub mod auth;
pub mod documents;
pub mod events;
pub mod kv;
pub mod objects;
pub mod push;
pub mod triggers;
pub mod usage;

use std::collections::BTreeMap;

use nimbus_model::{
    FunctionInfo, FunctionSpec, InvocationQuery, InvocationRecord, Limits, UnixMillis, VersionInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything the backend itself failed at (I/O, corruption, a driver error), with its cause.
    #[error("storage backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a new version needs besides its spec.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub project: &'a str,
    pub spec: &'a FunctionSpec,
    pub limits: Limits,
    pub module_sha256: &'a str,
    pub module_size: u64,
}

/// Functions, their immutable versions, the active-version pointer and secrets.
///
/// Every method but `active_versions` is scoped to one project: isolation between tenants is in the
/// signatures, not left to callers' filters.
pub trait FunctionStore: Send + Sync + 'static {
    /// Create the function if it does not exist, append the next version and make it active, in one
    /// transaction. Returns the new version.
    fn create_version(&self, new: NewVersion<'_>) -> Result<VersionInfo>;
    fn get_function(&self, project: &str, name: &str) -> Result<Option<FunctionInfo>>;
    fn list_functions(&self, project: &str) -> Result<Vec<FunctionInfo>>;
    /// Versions of a function, oldest first. `NotFound` if the function does not exist.
    fn list_versions(&self, project: &str, name: &str) -> Result<Vec<VersionInfo>>;
    fn get_version(&self, project: &str, name: &str, version: u32) -> Result<Option<VersionInfo>>;
    /// The active version of every function of every project: what the router is built from at
    /// start-up. Not those of a project being deleted: its routes answer nothing from the start,
    /// before the resumed deletion reaches its functions.
    fn active_versions(&self) -> Result<Vec<VersionInfo>>;
    /// Point traffic at an existing version. `NotFound` if the function or version does not exist.
    fn set_active_version(&self, project: &str, name: &str, version: u32) -> Result<VersionInfo>;
    /// Delete a function with its versions and secrets. Returns whether it existed.
    fn delete_function(&self, project: &str, name: &str) -> Result<bool>;
    /// Delete every function of a project, with versions and secrets. Returns their names.
    fn delete_project_functions(&self, project: &str) -> Result<Vec<String>>;
    /// The module hashes any version of any function still references (for blob GC).
    fn module_shas(&self) -> Result<std::collections::HashSet<String>>;
    /// Set a secret; `NotFound` if the function does not exist.
    fn set_secret(&self, project: &str, function: &str, key: &str, value: &str) -> Result<()>;
    /// Returns whether the secret existed.
    fn delete_secret(&self, project: &str, function: &str, key: &str) -> Result<bool>;
    /// Secret values, for the runtime only; the API never returns them.
    fn secrets(&self, project: &str, function: &str) -> Result<BTreeMap<String, String>>;
}

/// Invocation records: appended in batches off the request path, queried for logs and usage.
///
/// # Commit positions
///
/// Each stored record has a `seq` assigned inside the transaction that writes it, from one
/// counter per store that only grows. A reader that has seen position N has therefore seen every
/// record committed before N, which an id made when the request started cannot promise (a slow
/// invocation is written after faster ones that started later). Queries order and page by it.
/// The records of one batch are committed together, so their order among themselves is the
/// backend's (SQLite keeps each function's records of a batch together).
///
/// # Writing once
///
/// Checking every record's id for a duplicate would cost an index entry per record, the largest
/// part of a record's cost; the recorder hands each record to exactly one batch, so only a retry
/// can repeat one. Hence two calls: [`insert_batch`](Self::insert_batch) for records never given
/// before, and [`retry_batch`](Self::retry_batch) after an attempt whose outcome is unknown, which
/// checks.
pub trait InvocationStore: Send + Sync + 'static {
    /// Store records (they carry their project) in one transaction, setting each one's `seq` to
    /// its commit position, and count their usage. The records must not have been given to the
    /// store before: a record given twice is stored and counted twice.
    fn insert_batch(&self, records: &mut [InvocationRecord]) -> Result<()>;
    /// [`insert_batch`](Self::insert_batch) again, after an attempt that failed or whose answer
    /// was lost. Idempotent by id: a record already stored is not written or counted again and
    /// gets its stored position.
    fn retry_batch(&self, records: &mut [InvocationRecord]) -> Result<()>;
    /// Records in commit order (see [`InvocationQuery`]).
    fn query(&self, project: &str, query: &InvocationQuery) -> Result<Vec<InvocationRecord>>;
    /// A record by its id. Nimbus's ids are UUIDv7 whose time is the record's `started_at`; a
    /// backend may use that to look only near it, so a record whose id says otherwise may not be
    /// found.
    fn get(&self, project: &str, id: &str) -> Result<Option<InvocationRecord>>;
    /// Drop records that started before `before`, and beyond the newest (by position)
    /// `keep_per_function` of each function (of each project). Returns how many were removed.
    /// Positions are never reused after a prune. A backend may prune in many short transactions
    /// rather than one, so that record writes are not held up for the whole pass: it runs beside
    /// the recorder on a live node.
    fn prune(&self, before: UnixMillis, keep_per_function: u32) -> Result<u64>;
    /// Drop every record of a project (the project is being deleted). Returns how many.
    fn delete_project(&self, project: &str) -> Result<u64>;
}

/// Content-addressed-or-named immutable blobs (uploaded components today; files later).
pub trait BlobStore: Send + Sync + 'static {
    /// Store `bytes` under `key`, replacing any previous value atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Returns whether it existed.
    fn delete(&self, key: &str) -> Result<bool>;
    /// Every key under the folder `prefix` (`modules` lists `modules/…`), at any depth, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Blob keys are `[a-z0-9._-]` segments joined by `/`: no empty, `.` or `..` segment, so no backend
/// can be tricked into a path outside its root.
pub fn validate_blob_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if ok { Ok(()) } else { Err(StoreError::Conflict(format!("invalid blob key {key:?}"))) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn blob_keys() {
        for good in ["modules/ab12.wasm", "a", "x/y-z_1.bin"] {
            assert!(super::validate_blob_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "a//b", "../x", "a/../b", "a/./b", "A", "a\\b", "a/b/"] {
            assert!(super::validate_blob_key(bad).is_err(), "{bad}");
        }
    }
}
