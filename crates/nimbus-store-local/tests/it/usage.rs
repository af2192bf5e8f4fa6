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

/// A deleted project's history is retired under the time its deletion began (the tombstone),
/// whenever the part runs, and its stored-bytes row goes with its quotas.
#[test]
fn retired_usage_is_named_by_the_tombstone_and_storage_goes() {
    use nimbus_store::auth::{AuthStore, ProjectRecord};
    let store = SqliteStore::open_in_memory().unwrap();
    let record = ProjectRecord {
        id: "acme".into(),
        slug: "acme".into(),
        name: "Acme".into(),
        created_at: 1,
    };
    store.create_project(&record).unwrap();
    store.set("acme", "b", "k", b"value", Expiry::Never, 1).unwrap();
    store.accrue_storage(nimbus_model::now_millis()).unwrap();
    assert_eq!(store.data_gauges("acme").unwrap().kv_bytes, 6);
    store.mark_project_deleting("acme", 1_000).unwrap();
    assert!(store.delete("acme", "b", "k", 2).unwrap());
    let name = store.retire_project_usage("acme", 5_000).unwrap();
    assert_eq!(name, "acme~deleted-1000");
    assert_eq!(store.retire_project_usage("acme", 9_000).unwrap(), name, "a second run");
    assert!(!store.project_rows("acme").unwrap().iter().any(|(t, _)| t == "project_storage"));
}
