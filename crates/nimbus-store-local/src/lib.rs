//! The embedded default storage backend of Nimbus: everything a single node needs, with nothing to
//! install or run next to it.
//!
//! - [`SqliteStore`] implements [`FunctionStore`](nimbus_store::FunctionStore) and
//!   [`InvocationStore`](nimbus_store::InvocationStore) on one SQLite database file (WAL mode,
//!   `synchronous=NORMAL`, foreign keys on, schema migrations keyed by `PRAGMA user_version`). The
//!   file holds secrets, so it is created with mode `0600`.
//! - It also implements [`KvStore`](nimbus_store::kv::KvStore) (table `kv_entries`, see `kv.rs`).
//! - [`LocalObjectStore`] implements [`ObjectStore`](nimbus_store::objects::ObjectStore): file
//!   storage, metadata and events in the database (migration 6), bytes under internal ids on disk.
//! - [`LocalBlobStore`] implements [`BlobStore`](nimbus_store::BlobStore) on a directory, writing each
//!   blob atomically (temporary file in the same directory, `fsync`, `rename`).
//!
//! # One writer, several readers
//!
//! SQLite allows one writer at a time per database, whatever the number of connections, so the store
//! keeps exactly one read-write connection behind a mutex: writers queue in-process (cheaply, on the
//! mutex) instead of spinning on `SQLITE_BUSY`. In WAL mode readers never wait for the writer, so
//! queries run on a small pool of read-only connections: `nimbus logs`, the API and the router's
//! start-up scan keep working while a large batch of invocation records is being inserted. An
//! in-memory database cannot be shared between connections in WAL mode, so
//! [`SqliteStore::open_in_memory`] (for tests) reads through the writer connection.
//!
//! # Other backends
//!
//! Services only see the traits of `nimbus-store`. A PostgreSQL (or S3, for blobs) backend implements
//! the same traits in its own crate, with its own schema and migrations; nothing in this crate is
//! meant to be reused by it, and nothing SQLite-specific leaks through the traits.

mod auth;
mod blob;
mod documents;
mod error;
mod events;
mod footprint;
mod invocations;
mod kv;
mod migrations;
mod objects;
mod push;
mod sqlite;
#[cfg(test)]
mod stepping_tests;
mod triggers;
mod usage;

pub use blob::LocalBlobStore;
pub use migrations::SCHEMA_VERSION;
pub use objects::LocalObjectStore;
pub use sqlite::{READER_POOL_SIZE, SqliteStore};
