//! The generic object-store conformance suite (`nimbus_store::objects::conformance`) on SQLite +
//! a local directory, and what only the local backend can show: the layout on disk, the sweep of
//! orphaned and temporary files, and state surviving a reopen.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use nimbus_store::objects::{BucketSettings, ObjectStore, ObjectWrite, conformance};
use nimbus_store_local::{LocalObjectStore, SqliteStore};
use serde_json::json;

fn open(dir: &std::path::Path) -> (Arc<SqliteStore>, LocalObjectStore) {
    let db = Arc::new(SqliteStore::open(&dir.join("nimbus.db")).unwrap());
    let objects = LocalObjectStore::open(db.clone(), &dir.join("objects")).unwrap();
    (db, objects)
}

#[test]
fn conformance_on_file() {
    for (name, test) in conformance::ALL {
        eprintln!("objects conformance: {name}");
        let dir = tempfile::tempdir().unwrap();
        let (db, objects) = open(dir.path());
        test(&objects, db.as_ref());
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        out.push(entry);
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn keys_never_become_paths_and_sweep_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = open(dir.path());
    s.create_bucket("p", "b", &BucketSettings::default()).unwrap();
    let meta = BTreeMap::new();
    let who = json!(null);
    for key in ["../../escape", "/abs/path", "a/b/c"] {
        let w = ObjectWrite {
            project: "p",
            bucket: "b",
            key,
            content_type: "x/y",
            metadata: &meta,
            uploader: &who,
        };
        s.put(&w, &mut &b"data"[..], None).unwrap();
    }
    let root = dir.path().join("objects");
    let files = files_under(&root);
    assert_eq!(files.len(), 3);
    for f in &files {
        assert!(f.starts_with(root.join("data")), "{f:?}");
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
    assert!(!dir.path().join("escape").exists());
    // An orphan (bytes renamed into place, crash before the commit) and a temporary file.
    std::fs::create_dir_all(root.join("data/ff")).unwrap();
    std::fs::write(root.join("data/ff/0000000000000000000000000000ffff"), b"orphan").unwrap();
    std::fs::write(root.join("tmp/.tmpXYZ"), b"half").unwrap();
    let now = nimbus_model::now_millis() + 1000;
    // With a grace period longer than their age, fresh files stay (a write may be in flight).
    let r = s.sweep(now, 3_600_000, 0).unwrap();
    assert_eq!((r.orphans, r.temporaries), (0, 0));
    let r = s.sweep(now, 0, 0).unwrap();
    assert_eq!((r.orphans, r.temporaries), (1, 1));
    assert_eq!(files_under(&root).len(), 3, "referenced files stay");
    for key in ["../../escape", "/abs/path", "a/b/c"] {
        let mut out = Vec::new();
        s.open("p", "b", key, None).unwrap().reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"data");
    }
}

#[test]
fn objects_survive_reopen_and_deleted_bytes_go() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, s) = open(dir.path());
        s.create_bucket("p", "b", &BucketSettings::default()).unwrap();
        let meta = BTreeMap::new();
        let who = json!(null);
        let w = |key| ObjectWrite {
            project: "p",
            bucket: "b",
            key,
            content_type: "x/y",
            metadata: &meta,
            uploader: &who,
        };
        s.put(&w("keep"), &mut &b"kept"[..], None).unwrap();
        s.put(&w("gone"), &mut &b"gone"[..], None).unwrap();
        s.put(&w("keep"), &mut &b"kept2"[..], None).unwrap();
        s.delete("p", "b", "gone", &who).unwrap();
    }
    let (_db, s) = open(dir.path());
    let mut out = Vec::new();
    s.open("p", "b", "keep", None).unwrap().reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"kept2");
    assert_eq!(
        files_under(&dir.path().join("objects")).len(),
        1,
        "replaced and deleted bytes were unlinked"
    );
}

/// A copy is a hard link: no byte is read or written, the two names share one inode, and each
/// name is referenced by its own row, so deleting either leaves the other's bytes.
#[cfg(unix)]
#[test]
fn copies_link_and_the_sweep_spares_fresh_links_of_old_bytes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = open(dir.path());
    s.create_bucket("p", "b", &BucketSettings::default()).unwrap();
    let meta = BTreeMap::new();
    let who = json!(null);
    let w = |key| ObjectWrite {
        project: "p",
        bucket: "b",
        key,
        content_type: "x/y",
        metadata: &meta,
        uploader: &who,
    };
    s.put(&w("src"), &mut &b"shared bytes"[..], None).unwrap();
    let root = dir.path().join("objects");
    let [src_file] = files_under(&root).try_into().unwrap();
    // Make the source's bytes look a day old, as the hourly sweep would see an old object.
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    std::fs::File::options().write(true).open(&src_file).unwrap().set_modified(day_ago).unwrap();

    s.copy("b", "src", &w("dst"), None).unwrap();
    let files = files_under(&root);
    assert_eq!(files.len(), 2);
    let (a, b) = (std::fs::metadata(&files[0]).unwrap(), std::fs::metadata(&files[1]).unwrap());
    assert_eq!(a.ino(), b.ino(), "the copy shares the source's inode");
    assert_eq!(a.nlink(), 2);

    // A link made but not yet committed (a copy in flight, or one a kill -9 cut short) of those
    // day-old bytes: the hourly sweep (6 h grace) leaves it, since the link is new (ctime)...
    let in_flight = root.join("data/ee/000000000000000000000000000000ee");
    std::fs::create_dir_all(in_flight.parent().unwrap()).unwrap();
    std::fs::hard_link(&src_file, &in_flight).unwrap();
    let r = s.sweep(nimbus_model::now_millis(), 6 * 3_600_000, 0).unwrap();
    assert_eq!(r.orphans, 0, "a fresh link of old bytes is not an old orphan");
    assert!(in_flight.exists());
    // ...and the start-up sweep (no grace: nothing is in flight) removes it.
    let r = s.sweep(nimbus_model::now_millis() + 1000, 0, 0).unwrap();
    assert_eq!(r.orphans, 1);
    assert!(!in_flight.exists());

    // Deleting the source leaves the copy, and its bytes are still shared by nothing else.
    s.delete("p", "b", "src", &who).unwrap();
    let files = files_under(&root);
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().nlink(), 1);
    let mut out = Vec::new();
    s.open("p", "b", "dst", None).unwrap().reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"shared bytes");
}

/// A reader that hands out `body` in `piece`-byte reads, then fails with `fail_at` if set.
struct Pieces<'a> {
    body: &'a [u8],
    pos: usize,
    piece: usize,
    fail_at: Option<usize>,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.fail_at.is_some_and(|at| self.pos >= at) {
            return Err(std::io::Error::other("client went away"));
        }
        let n = buf.len().min(self.piece).min(self.body.len() - self.pos);
        buf[..n].copy_from_slice(&self.body[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Bodies on both sides of the store's chunk sizes (64 KiB first read, 1 MiB chunks hashed on
/// one thread and written by another) are stored byte for byte with their MD5 as ETag, from
/// readers with odd read sizes; a body over the limit or failing midway leaves no file behind.
#[test]
fn bodies_across_chunk_boundaries_are_stored_exactly() {
    use md5::{Digest, Md5};
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = open(dir.path());
    s.create_bucket("p", "b", &BucketSettings::default()).unwrap();
    let (meta, who) = (BTreeMap::new(), json!(null));
    let mib = 1usize << 20;
    let body: Vec<u8> = (0..3 * mib + 12_345).map(|i| (i * 7 + i / 4093) as u8).collect();
    let sizes = [0, 1, 64 << 10, (64 << 10) + 1, mib - 1, mib, mib + 1, 2 * mib, body.len()];
    for (i, &size) in sizes.iter().enumerate() {
        for piece in [7_777, 1 << 20, 3 << 20] {
            let key = format!("k{i}-{piece}");
            let w = ObjectWrite {
                project: "p",
                bucket: "b",
                key: &key,
                content_type: "x/y",
                metadata: &meta,
                uploader: &who,
            };
            let mut r = Pieces { body: &body[..size], pos: 0, piece, fail_at: None };
            let stored = s.put(&w, &mut r, Some(body.len() as u64)).unwrap();
            assert_eq!(stored.size, size as u64, "{key}");
            assert_eq!(stored.etag, hex::encode(Md5::digest(&body[..size])), "{key}");
            let mut out = Vec::new();
            s.open("p", "b", &key, None).unwrap().reader.read_to_end(&mut out).unwrap();
            assert!(out == body[..size], "{key}: the bytes read back differ");
        }
    }
    let root = dir.path().join("objects");
    let stored_files = files_under(&root).len();
    let w = ObjectWrite {
        project: "p",
        bucket: "b",
        key: "failing",
        content_type: "x/y",
        metadata: &meta,
        uploader: &who,
    };
    // Over the limit in the third chunk, and a reader failing in the third chunk.
    let mut r = Pieces { body: &body, pos: 0, piece: 7_777, fail_at: None };
    let err = s.put(&w, &mut r, Some(2 * mib as u64 + 5)).unwrap_err();
    assert!(matches!(err, nimbus_store::objects::ObjectError::TooLarge { .. }), "{err:?}");
    let mut r = Pieces { body: &body, pos: 0, piece: 7_777, fail_at: Some(2 * mib + 100) };
    let err = s.put(&w, &mut r, None).unwrap_err();
    assert!(matches!(err, nimbus_store::objects::ObjectError::Body(_)), "{err:?}");
    assert!(s.head("p", "b", "failing").unwrap().is_none());
    assert_eq!(files_under(&root).len(), stored_files, "no temporary or staged file is left");
}

/// The project's stored file bytes (`project_storage`, kept by triggers in each publishing
/// transaction) follow puts, overwrites, copies, completed multipart uploads and every kind of
/// delete.
#[test]
fn stored_file_bytes_follow_every_change() {
    use nimbus_store::usage::UsageStore;
    let dir = tempfile::tempdir().unwrap();
    let (db, s) = open(dir.path());
    let files = |p: &str| db.data_gauges(p).unwrap().file_bytes;
    s.create_bucket("p", "b", &BucketSettings::default()).unwrap();
    s.create_bucket("p", "c", &BucketSettings::default()).unwrap();
    let (meta, who) = (BTreeMap::new(), json!({"kind": "service"}));
    let w = |bucket: &'static str, key: &'static str| ObjectWrite {
        project: "p",
        bucket,
        key,
        content_type: "text/plain",
        metadata: &meta,
        uploader: &who,
    };
    s.put(&w("b", "one"), &mut &[7u8; 100][..], None).unwrap();
    assert_eq!(files("p"), 100);
    s.put(&w("b", "one"), &mut &[7u8; 30][..], None).unwrap();
    assert_eq!(files("p"), 30, "an overwrite replaces the old size");
    s.copy("b", "one", &w("c", "copy"), None).unwrap();
    assert_eq!(files("p"), 60, "a copy stores its bytes again, as far as the quota knows");
    let up = s.create_upload(&w("b", "multi")).unwrap();
    let p1 = s.put_part("p", "b", &up.id, 1, &mut &[1u8; 5 << 20][..], None).unwrap();
    let p2 = s.put_part("p", "b", &up.id, 2, &mut &[2u8; 10][..], None).unwrap();
    assert_eq!(files("p"), 60, "parts are not objects yet");
    s.complete_upload("p", "b", &up.id, &[(1, p1.etag), (2, p2.etag)], None).unwrap();
    assert_eq!(files("p"), 60 + (5 << 20) + 10);
    s.delete("p", "b", "multi", &who).unwrap();
    assert_eq!(files("p"), 60);
    s.delete_bucket("p", "c", true, &who).unwrap();
    assert_eq!(files("p"), 30);
    s.put(&w("b", "two"), &mut &[0u8; 9][..], None).unwrap();
    assert_eq!(files("p"), 39);
    assert_eq!(files("other"), 0);
    s.delete_project("p").unwrap();
    assert_eq!(files("p"), 0);
}
