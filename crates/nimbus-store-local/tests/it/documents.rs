//! The backend-independent DocumentStore / EventLog suite, on SQLite (in memory and on disk).

use nimbus_store_local::SqliteStore;

#[test]
fn conformance_in_memory() {
    nimbus_store::documents::conformance::run_all(&SqliteStore::open_in_memory().unwrap());
}

#[test]
fn conformance_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    nimbus_store::documents::conformance::run_all(
        &SqliteStore::open(&dir.path().join("n.db")).unwrap(),
    );
}
