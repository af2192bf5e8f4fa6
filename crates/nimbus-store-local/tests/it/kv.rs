//! The generic KV conformance suite (`nimbus_store::kv::conformance`) on SQLite: in memory, on a
//! file (WAL, reads on the reader pool), and across a reopen.

use std::sync::Arc;

use nimbus_store::kv::{Expiry, KvStore, conformance};
use nimbus_store_local::SqliteStore;

fn on_file(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("nimbus.db")).expect("open store")
}

#[test]
fn conformance_in_memory() {
    for (name, test) in conformance::ALL {
        eprintln!("kv conformance (memory): {name}");
        test(&SqliteStore::open_in_memory().unwrap());
    }
}

#[test]
fn conformance_on_file() {
    for (name, test) in conformance::ALL {
        eprintln!("kv conformance (file): {name}");
        let dir = tempfile::tempdir().unwrap();
        test(&on_file(&dir));
    }
}

#[test]
fn concurrent_increments_on_file() {
    let dir = tempfile::tempdir().unwrap();
    conformance::concurrent_increments(Arc::new(on_file(&dir)));
}

#[test]
fn entries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = on_file(&dir);
        s.set("p", "b", "k", b"kept", Expiry::Never, 0).unwrap();
        s.increment("p", "b", "n", 7, Expiry::Keep, 0).unwrap();
    }
    let s = on_file(&dir);
    assert_eq!(s.get("p", "b", "k", 1).unwrap().unwrap().value, b"kept");
    assert_eq!(s.increment("p", "b", "n", 1, Expiry::Keep, 1).unwrap(), 8);
}
