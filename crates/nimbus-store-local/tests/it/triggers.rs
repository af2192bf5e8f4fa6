//! The generic conformance suite of event delivery (`nimbus_store::triggers::conformance`) on
//! SQLite, in memory and on a file (reads on the reader pool).

use nimbus_store_local::SqliteStore;

#[test]
fn conformance_in_memory() {
    nimbus_store::triggers::conformance::run_all(&SqliteStore::open_in_memory().unwrap());
}

#[test]
fn conformance_on_file() {
    let dir = tempfile::tempdir().unwrap();
    nimbus_store::triggers::conformance::run_all(
        &SqliteStore::open(&dir.path().join("nimbus.db")).unwrap(),
    );
}
