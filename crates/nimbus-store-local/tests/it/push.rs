//! The generic conformance suite of push notifications (`nimbus_store::push::conformance`) on
//! SQLite, in memory and on a file (reads on the reader pool), a fresh store per test.

use nimbus_store::push::conformance;
use nimbus_store_local::SqliteStore;

#[test]
fn conformance_in_memory() {
    for (name, test) in conformance::ALL {
        eprintln!("push conformance (memory): {name}");
        test(&SqliteStore::open_in_memory().unwrap());
    }
}

#[test]
fn conformance_on_file() {
    for (name, test) in conformance::ALL {
        eprintln!("push conformance (file): {name}");
        let dir = tempfile::tempdir().unwrap();
        test(&SqliteStore::open(&dir.path().join("nimbus.db")).unwrap());
    }
}
