//! `LocalBlobStore` on a temporary directory.

use nimbus_store::{BlobStore, StoreError};
use nimbus_store_local::LocalBlobStore;

fn store() -> (tempfile::TempDir, LocalBlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::new(dir.path().join("blobs")).unwrap();
    (dir, store)
}

#[test]
fn round_trip() {
    let (_dir, store) = store();
    assert_eq!(store.get("modules/abc.wasm").unwrap(), None);
    store.put("modules/abc.wasm", b"\0asm hello").unwrap();
    assert_eq!(store.get("modules/abc.wasm").unwrap().as_deref(), Some(&b"\0asm hello"[..]));
    store.put("top", b"").unwrap();
    assert_eq!(store.get("top").unwrap(), Some(Vec::new()));

    let path = store.path_of("modules/abc.wasm").unwrap();
    assert_eq!(path, store.root().join("modules").join("abc.wasm"));
    assert_eq!(std::fs::read(&path).unwrap(), b"\0asm hello");

    assert!(store.delete("modules/abc.wasm").unwrap());
    assert!(!store.delete("modules/abc.wasm").unwrap());
    assert_eq!(store.get("modules/abc.wasm").unwrap(), None);
    // A key that is only a directory is not a blob.
    store.put("dir/inner", b"x").unwrap();
    assert_eq!(store.get("dir").unwrap(), None);
    assert!(!store.delete("dir").unwrap());
}

#[test]
fn list_walks_a_folder_and_skips_writes_in_progress() {
    let (_dir, store) = store();
    assert!(store.list("modules").unwrap().is_empty(), "a missing folder lists nothing");
    for key in ["modules/b.wasm", "modules/a.wasm", "modules/x/y/z", "other/c"] {
        store.put(key, b"x").unwrap();
    }
    std::fs::write(store.root().join("modules/.TMP-123"), b"partial").unwrap();
    assert_eq!(
        store.list("modules").unwrap(),
        ["modules/a.wasm", "modules/b.wasm", "modules/x/y/z"]
    );
    assert_eq!(store.list("modules/x").unwrap(), ["modules/x/y/z"]);
    assert!(store.list("modules/a.wasm").unwrap().is_empty(), "a blob is not a folder");
}

#[test]
fn overwrite_is_atomic_and_leaves_no_temporary_files() {
    let (_dir, store) = store();
    store.put("modules/m.wasm", &[1u8; 100_000]).unwrap();
    let path = store.path_of("modules/m.wasm").unwrap();
    // A reader that opened the old blob keeps reading the old bytes: the new one is a new file.
    let old = std::fs::File::open(&path).unwrap();
    store.put("modules/m.wasm", &[2u8; 10]).unwrap();
    assert_eq!(store.get("modules/m.wasm").unwrap().unwrap(), [2u8; 10]);
    let old_bytes = std::io::read_to_string(std::io::BufReader::new(old)).ok();
    assert!(old_bytes.is_none_or(|s| s.len() == 100_000));

    let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, ["m.wasm"]);
}

#[test]
fn concurrent_writers_never_tear_a_blob() {
    let (_dir, store) = store();
    let store = std::sync::Arc::new(store);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    store.put("k", &vec![t; 64 * 1024]).unwrap();
                    let got = store.get("k").unwrap().unwrap();
                    assert_eq!(got.len(), 64 * 1024);
                    assert!(got.iter().all(|b| *b == got[0]), "torn blob");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn path_tricks_are_rejected() {
    let (dir, store) = store();
    for key in ["../x", "/etc/passwd", "a//b", "a/../b", "./a", "a/", "", "A", "a\\b", ".."] {
        assert!(matches!(store.put(key, b"x"), Err(StoreError::Conflict(_))), "put {key:?}");
        assert!(matches!(store.get(key), Err(StoreError::Conflict(_))), "get {key:?}");
        assert!(matches!(store.delete(key), Err(StoreError::Conflict(_))), "delete {key:?}");
        assert!(store.path_of(key).is_err(), "path_of {key:?}");
        assert!(store.list(key).is_err(), "list {key:?}");
    }
    assert!(!dir.path().join("x").exists());
}

#[test]
fn new_creates_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/c");
    let store = LocalBlobStore::new(root.clone()).unwrap();
    assert!(root.is_dir());
    store.put("k", b"v").unwrap();
    // A second store on the same root sees the same blobs.
    assert_eq!(LocalBlobStore::new(root).unwrap().get("k").unwrap().as_deref(), Some(&b"v"[..]));
}
