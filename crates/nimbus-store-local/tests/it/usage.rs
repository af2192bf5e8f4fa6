//! The usage conformance suite (`nimbus_store::usage::conformance`) on SQLite, in memory and on
//! a file (reads on the reader pool), and the data gauges over the services' tables.

use nimbus_store::kv::{Expiry, KvStore};
use nimbus_store::usage::UsageStore;
use nimbus_store_local::SqliteStore;

#[test]
fn conformance_in_memory() {
    nimbus_store::usage::conformance::run_all(&SqliteStore::open_in_memory().unwrap());
}

#[test]
fn conformance_on_file() {
    let dir = tempfile::tempdir().unwrap();
    nimbus_store::usage::conformance::run_all(
        &SqliteStore::open(&dir.path().join("nimbus.db")).unwrap(),
    );
}

#[test]
fn kv_bytes_are_a_gauge_of_keys_and_values() {
    let store = SqliteStore::open_in_memory().unwrap();
    store.set("p", "b", "key", b"0123456789", Expiry::Never, 1).unwrap();
    store.set("q", "b", "other", b"xx", Expiry::Never, 1).unwrap();
    let g = store.data_gauges("p").unwrap();
    assert_eq!((g.kv_bytes, g.file_bytes, g.documents), (13, 0, 0));
}

#[test]
fn gauges_follow_kv_and_document_writes() {
    nimbus_store::usage::conformance::gauges_follow_writes(&SqliteStore::open_in_memory().unwrap());
}

#[test]
fn storage_threshold_event_per_crossing() {
    nimbus_store::usage::conformance::storage_threshold_event_per_crossing(
        &SqliteStore::open_in_memory().unwrap(),
    );
}

#[test]
fn storage_accrues_by_the_hour() {
    nimbus_store::usage::conformance::storage_accrues_by_the_hour(
        &SqliteStore::open_in_memory().unwrap(),
    );
}
