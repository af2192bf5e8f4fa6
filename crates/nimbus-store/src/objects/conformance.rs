//! Generic tests any [`ObjectStore`] backend can run: each takes a fresh, empty store (and the
//! event log it writes to) and panics on a failed expectation. See
//! `nimbus-store-local/tests/it/objects.rs`.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::{Value, json};

use super::*;
use crate::events::EventLog;

const P: &str = "proj";
const B: &str = "photos";

/// One conformance test.
pub type Test = fn(&dyn ObjectStore, &dyn EventLog);

pub const ALL: &[(&str, Test)] = &[
    ("put_get_head_delete", put_get_head_delete),
    ("ranges", ranges),
    ("overwrite", overwrite),
    ("list_prefix_delimiter_pages", list_prefix_delimiter_pages),
    ("buckets", buckets),
    ("limits", limits),
    ("failed_body_publishes_nothing", failed_body_publishes_nothing),
    ("multipart", multipart),
    ("events_with_the_change", events_with_the_change),
    ("isolation_and_project_deletion", isolation_and_project_deletion),
    ("reader_survives_delete", reader_survives_delete),
    ("sweep_expires_uploads", sweep_expires_uploads),
    ("copy_is_independent_of_its_source", copy_is_independent_of_its_source),
];

fn user() -> Value {
    json!({"kind": "user", "id": "u1"})
}

fn bucket(s: &dyn ObjectStore, project: &str, name: &str) {
    s.create_bucket(project, name, &BucketSettings::default()).unwrap();
}

fn put(s: &dyn ObjectStore, project: &str, bucket: &str, key: &str, bytes: &[u8]) -> ObjectMeta {
    let meta = BTreeMap::from([("color".to_string(), "blue".to_string())]);
    let uploader = user();
    let w = ObjectWrite {
        project,
        bucket,
        key,
        content_type: "image/png",
        metadata: &meta,
        uploader: &uploader,
    };
    s.put(&w, &mut &bytes[..], None).unwrap()
}

fn read_all(s: &dyn ObjectStore, key: &str, range: Option<RangeSpec>) -> Vec<u8> {
    let mut data = s.open(P, B, key, range).unwrap();
    let mut out = Vec::new();
    data.reader.read_to_end(&mut out).unwrap();
    out
}

fn md5_hex_of_hello() -> &'static str {
    // md5("hello world")
    "5eb63bbbe01eeed093cb22bb8f5acdc3"
}

pub fn put_get_head_delete(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, P, B);
    let meta = put(s, P, B, "a/b.png", b"hello world");
    assert_eq!(meta.size, 11);
    assert_eq!(meta.etag, md5_hex_of_hello());
    assert_eq!(meta.content_type, "image/png");
    assert_eq!(meta.metadata.get("color").map(String::as_str), Some("blue"));
    let head = s.head(P, B, "a/b.png").unwrap().unwrap();
    assert_eq!(head, meta);
    assert_eq!(read_all(s, "a/b.png", None), b"hello world");
    // Keys are data: traversal text is just a key.
    put(s, P, B, "../../etc/passwd", b"x");
    assert_eq!(read_all(s, "../../etc/passwd", None), b"x");
    let gone = s.delete(P, B, "a/b.png", &user()).unwrap().unwrap();
    assert_eq!(gone.key, "a/b.png");
    assert!(s.head(P, B, "a/b.png").unwrap().is_none());
    assert!(s.delete(P, B, "a/b.png", &user()).unwrap().is_none());
    assert!(matches!(s.open(P, B, "a/b.png", None), Err(ObjectError::NoSuchKey(_))));
    assert!(matches!(s.open(P, "nope", "k", None), Err(ObjectError::NoSuchBucket(_))));
    // Empty objects exist.
    let empty = put(s, P, B, "empty", b"");
    assert_eq!(empty.size, 0);
    assert_eq!(empty.etag, "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(read_all(s, "empty", None), b"");
}

pub fn ranges(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, P, B);
    put(s, P, B, "r", b"0123456789");
    assert_eq!(read_all(s, "r", Some(RangeSpec::FromTo(2, 4))), b"234");
    assert_eq!(read_all(s, "r", Some(RangeSpec::From(7))), b"789");
    assert_eq!(read_all(s, "r", Some(RangeSpec::Suffix(2))), b"89");
    assert_eq!(read_all(s, "r", Some(RangeSpec::FromTo(8, 100))), b"89");
    let data = s.open(P, B, "r", Some(RangeSpec::FromTo(1, 1))).unwrap();
    assert_eq!(data.range, 1..2);
    assert_eq!(data.meta.size, 10);
    assert!(matches!(
        s.open(P, B, "r", Some(RangeSpec::From(10))),
        Err(ObjectError::RangeNotSatisfiable { size: 10 })
    ));
}

pub fn overwrite(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, P, B);
    put(s, P, B, "k", b"first version");
    put(s, P, B, "k", b"second");
    assert_eq!(read_all(s, "k", None), b"second");
    let info = s.get_bucket(P, B).unwrap().unwrap();
    assert_eq!((info.objects, info.bytes), (1, 6));
}

pub fn list_prefix_delimiter_pages(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, P, B);
    for k in ["a.txt", "dir/1", "dir/2", "dir/sub/3", "dir2/x", "z", "dir/sub/4"] {
        put(s, P, B, k, b"v");
    }
    let keys = |p: &ListPage| p.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
    let all = s.list(P, B, &ListQuery { limit: 100, ..Default::default() }).unwrap();
    assert_eq!(keys(&all), ["a.txt", "dir/1", "dir/2", "dir/sub/3", "dir/sub/4", "dir2/x", "z"]);
    assert_eq!(all.next, None);
    let top = s
        .list(P, B, &ListQuery { delimiter: Some("/".into()), limit: 100, ..Default::default() })
        .unwrap();
    assert_eq!(keys(&top), ["a.txt", "z"]);
    assert_eq!(top.common_prefixes, ["dir/", "dir2/"]);
    let dir = s
        .list(
            P,
            B,
            &ListQuery {
                prefix: "dir/".into(),
                delimiter: Some("/".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(keys(&dir), ["dir/1", "dir/2"]);
    assert_eq!(dir.common_prefixes, ["dir/sub/"]);
    // Pages of 2 entries (objects and common prefixes count alike) visit everything once.
    let mut seen = Vec::new();
    let mut from = None;
    loop {
        let page = s
            .list(
                P,
                B,
                &ListQuery { delimiter: Some("/".into()), limit: 2, from, ..Default::default() },
            )
            .unwrap();
        assert!(page.objects.len() + page.common_prefixes.len() <= 2);
        seen.extend(keys(&page));
        seen.extend(page.common_prefixes.clone());
        match page.next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["a.txt", "dir/", "dir2/", "z"]);
    // Start after a key: the key + NUL.
    let after = s
        .list(P, B, &ListQuery { from: Some("dir/2\0".into()), limit: 100, ..Default::default() })
        .unwrap();
    assert_eq!(keys(&after), ["dir/sub/3", "dir/sub/4", "dir2/x", "z"]);
    // Prefixes are literal.
    put(s, P, B, "100%", b"v");
    let lit = s.list(P, B, &ListQuery { prefix: "10_".into(), limit: 10, ..Default::default() });
    assert!(lit.unwrap().objects.is_empty());
}

pub fn buckets(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, P, "b1");
    assert!(matches!(
        s.create_bucket(P, "b1", &BucketSettings::default()),
        Err(ObjectError::BucketExists(_))
    ));
    bucket(s, P, "b2");
    let names: Vec<_> = s.list_buckets(P).unwrap().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["b1", "b2"]);
    let settings = BucketSettings {
        access: json!("public-read"),
        max_object_bytes: Some(10),
        allowed_content_types: vec!["image/*".into()],
        quota_bytes: Some(100),
    };
    let info = s.update_bucket(P, "b1", &settings).unwrap();
    assert_eq!(info.settings, settings);
    assert_eq!(s.get_bucket(P, "b1").unwrap().unwrap().settings, settings);
    put(s, P, "b1", "k", b"v");
    assert!(matches!(
        s.delete_bucket(P, "b1", false, &user()),
        Err(ObjectError::BucketNotEmpty(_))
    ));
    assert_eq!(s.delete_bucket(P, "b1", true, &user()).unwrap(), 1);
    assert!(s.get_bucket(P, "b1").unwrap().is_none());
    assert_eq!(s.delete_bucket(P, "b2", false, &user()).unwrap(), 0);
    assert!(matches!(s.delete_bucket(P, "b2", false, &user()), Err(ObjectError::NoSuchBucket(_))));
    assert!(matches!(
        s.update_bucket(P, "b2", &BucketSettings::default()),
        Err(ObjectError::NoSuchBucket(_))
    ));
}

pub fn limits(s: &dyn ObjectStore, _: &dyn EventLog) {
    let settings = BucketSettings { quota_bytes: Some(10), ..Default::default() };
    s.create_bucket(P, B, &settings).unwrap();
    let meta = BTreeMap::new();
    let who = user();
    let w = |key| ObjectWrite {
        project: P,
        bucket: B,
        key,
        content_type: "text/plain",
        metadata: &meta,
        uploader: &who,
    };
    assert!(matches!(
        s.put(&w("big"), &mut &b"123456"[..], Some(5)),
        Err(ObjectError::TooLarge { limit: 5 })
    ));
    assert!(s.head(P, B, "big").unwrap().is_none());
    s.put(&w("a"), &mut &b"12345678"[..], None).unwrap();
    assert!(matches!(
        s.put(&w("b"), &mut &b"123"[..], None),
        Err(ObjectError::QuotaExceeded { quota: 10 })
    ));
    assert!(s.head(P, B, "b").unwrap().is_none());
    // Replacing counts the difference only.
    s.put(&w("a"), &mut &b"1234567890"[..], None).unwrap();
    s.delete(P, B, "a", &who).unwrap();
    s.put(&w("b"), &mut &b"123"[..], None).unwrap();
    assert_eq!(s.get_bucket(P, B).unwrap().unwrap().bytes, 3);
    assert!(matches!(
        s.put(&ObjectWrite { bucket: "missing", ..w("x") }, &mut &b"1"[..], None),
        Err(ObjectError::NoSuchBucket(_))
    ));
}

/// A reader that fails after some bytes, like a client that disconnects mid-upload.
struct Broken(usize);

impl Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "gone"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
}

pub fn failed_body_publishes_nothing(s: &dyn ObjectStore, log: &dyn EventLog) {
    bucket(s, P, B);
    put(s, P, B, "k", b"old");
    let before = log.bounds().unwrap().last;
    let meta = BTreeMap::new();
    let who = user();
    let w = ObjectWrite {
        project: P,
        bucket: B,
        key: "k",
        content_type: "text/plain",
        metadata: &meta,
        uploader: &who,
    };
    assert!(matches!(s.put(&w, &mut Broken(100_000), None), Err(ObjectError::Body(_))));
    assert_eq!(read_all(s, "k", None), b"old");
    assert_eq!(log.bounds().unwrap().last, before, "no event for a failed write");
}

pub fn multipart(s: &dyn ObjectStore, log: &dyn EventLog) {
    bucket(s, P, B);
    let meta = BTreeMap::from([("m".to_string(), "1".to_string())]);
    let who = user();
    let w = ObjectWrite {
        project: P,
        bucket: B,
        key: "big/file",
        content_type: "application/zip",
        metadata: &meta,
        uploader: &who,
    };
    let up = s.create_upload(&w).unwrap();
    assert_eq!(s.get_upload(P, B, &up.id).unwrap().key, "big/file");
    let p1 = s.put_part(P, B, &up.id, 1, &mut &b"hello "[..], None).unwrap();
    let p2 = s.put_part(P, B, &up.id, 2, &mut &b"XXXX"[..], None).unwrap();
    // Re-uploading a part replaces it.
    let p2 = {
        let again = s.put_part(P, B, &up.id, 2, &mut &b"world"[..], None).unwrap();
        assert_ne!(again.etag, p2.etag);
        again
    };
    let p3 = s.put_part(P, B, &up.id, 3, &mut &b"!"[..], None).unwrap();
    let listed: Vec<u32> = s.list_parts(P, B, &up.id).unwrap().iter().map(|p| p.number).collect();
    assert_eq!(listed, [1, 2, 3]);
    assert_eq!(s.list_uploads(P, B, "big/").unwrap().len(), 1);
    assert!(s.list_uploads(P, B, "other").unwrap().is_empty());
    // Invalid lists: wrong ETag, wrong order, unknown part.
    assert!(matches!(
        s.complete_upload(P, B, &up.id, &[(1, "bad".into())], None),
        Err(ObjectError::InvalidPart(_))
    ));
    assert!(matches!(
        s.complete_upload(P, B, &up.id, &[(2, p2.etag.clone()), (1, p1.etag.clone())], None),
        Err(ObjectError::InvalidPart(_))
    ));
    assert!(s.head(P, B, "big/file").unwrap().is_none(), "not visible before completion");
    let before = log.bounds().unwrap().last;
    // Parts 1 and 2 only (3 is dropped, as S3 does); ETags may come quoted.
    let done = s
        .complete_upload(
            P,
            B,
            &up.id,
            &[(1, format!("\"{}\"", p1.etag)), (2, p2.etag.clone())],
            None,
        )
        .unwrap();
    let _ = p3;
    assert_eq!(done.size, 11);
    let mut md5s = Vec::new();
    md5s.extend(hex_decode(&p1.etag));
    md5s.extend(hex_decode(&p2.etag));
    assert!(done.etag.ends_with("-2"), "{}", done.etag);
    assert_eq!(done.etag.len(), 32 + 2);
    assert_eq!(done.content_type, "application/zip");
    assert_eq!(read_all(s, "big/file", None), b"hello world");
    assert_eq!(log.bounds().unwrap().last, before + 1, "one created event");
    assert!(matches!(s.get_upload(P, B, &up.id), Err(ObjectError::NoSuchUpload(_))));
    assert!(s.list_uploads(P, B, "").unwrap().is_empty());
    // Abort.
    let up = s.create_upload(&w).unwrap();
    s.put_part(P, B, &up.id, 1, &mut &b"x"[..], None).unwrap();
    assert!(s.abort_upload(P, B, &up.id).unwrap());
    assert!(!s.abort_upload(P, B, &up.id).unwrap());
    assert!(matches!(
        s.put_part(P, B, &up.id, 1, &mut &b"x"[..], None),
        Err(ObjectError::NoSuchUpload(_))
    ));
    assert_eq!(read_all(s, "big/file", None), b"hello world");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

pub fn events_with_the_change(s: &dyn ObjectStore, log: &dyn EventLog) {
    bucket(s, P, B);
    let start = log.bounds().unwrap().last;
    put(s, P, B, "e", b"hello world");
    s.delete(P, B, "e", &json!({"kind": "service"})).unwrap();
    let events = log.read(start, Some(P), 10).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EVENT_CREATED);
    assert_eq!(events[0].subject, "e");
    assert_eq!(events[0].data["bucket"], B);
    assert_eq!(events[0].data["size"], 11);
    assert_eq!(events[0].data["etag"], md5_hex_of_hello());
    assert_eq!(events[0].data["content_type"], "image/png");
    assert_eq!(events[0].data["uploader"], user());
    assert_eq!(events[1].kind, EVENT_DELETED);
    assert_eq!(events[1].data["uploader"], json!({"kind": "service"}));
    // A refused write (quota) leaves no event.
    s.update_bucket(P, B, &BucketSettings { quota_bytes: Some(1), ..Default::default() }).unwrap();
    let meta = BTreeMap::new();
    let who = user();
    let w = ObjectWrite {
        project: P,
        bucket: B,
        key: "q",
        content_type: "text/plain",
        metadata: &meta,
        uploader: &who,
    };
    assert!(s.put(&w, &mut &b"toolong"[..], None).is_err());
    assert_eq!(log.read(start, Some(P), 10).unwrap().len(), 2);
    // A forced bucket deletion reports every object it deleted.
    s.update_bucket(P, B, &BucketSettings::default()).unwrap();
    put(s, P, B, "x", b"1");
    put(s, P, B, "y", b"2");
    let mark = log.bounds().unwrap().last;
    s.delete_bucket(P, B, true, &json!("admin")).unwrap();
    let kinds: Vec<_> = log.read(mark, Some(P), 10).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EVENT_DELETED, EVENT_DELETED]);
}

pub fn isolation_and_project_deletion(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, "p1", B);
    bucket(s, "p2", B);
    put(s, "p1", B, "k", b"one");
    put(s, "p2", B, "k", b"two");
    assert!(s.head("p3", B, "k").unwrap().is_none());
    let mut out = Vec::new();
    s.open("p2", B, "k", None).unwrap().reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"two");
    assert_eq!(s.delete_project("p1").unwrap(), 1);
    assert!(s.list_buckets("p1").unwrap().is_empty());
    assert!(s.head("p2", B, "k").unwrap().is_some());
}

pub fn reader_survives_delete(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, P, B);
    put(s, P, B, "k", b"the old bytes");
    let mut data = s.open(P, B, "k", None).unwrap();
    put(s, P, B, "k", b"new");
    s.delete(P, B, "k", &user()).unwrap();
    let mut out = Vec::new();
    data.reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"the old bytes", "an open reader sees the version it opened");
}

pub fn sweep_expires_uploads(s: &dyn ObjectStore, _: &dyn EventLog) {
    bucket(s, P, B);
    let meta = BTreeMap::new();
    let who = user();
    let w = ObjectWrite {
        project: P,
        bucket: B,
        key: "k",
        content_type: "text/plain",
        metadata: &meta,
        uploader: &who,
    };
    let up = s.create_upload(&w).unwrap();
    s.put_part(P, B, &up.id, 1, &mut &b"part"[..], None).unwrap();
    put(s, P, B, "kept", b"data");
    // Not yet expired.
    let r = s.sweep(up.created_at, 0, up.created_at).unwrap();
    assert_eq!(r.expired_uploads, 0);
    assert!(s.get_upload(P, B, &up.id).is_ok());
    let r = s.sweep(up.created_at + 1, 0, up.created_at + 1).unwrap();
    assert_eq!(r.expired_uploads, 1);
    assert_eq!(r.orphans, 0, "every remaining file is referenced");
    assert!(s.get_upload(P, B, &up.id).is_err());
    assert_eq!(read_all(s, "kept", None), b"data");
}

pub fn copy_is_independent_of_its_source(s: &dyn ObjectStore, log: &dyn EventLog) {
    bucket(s, P, B);
    bucket(s, P, "other");
    let src = put(s, P, B, "src", b"hello world");
    let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let who = user();
    let w = ObjectWrite {
        project: P,
        bucket: "other",
        key: "dst",
        content_type: "text/plain",
        metadata: &meta,
        uploader: &who,
    };
    let before = log.read(0, Some(P), 1000).unwrap().len();
    let copied = s.copy(B, "src", &w, None).unwrap();
    assert_eq!((copied.size, copied.etag.as_str()), (11, src.etag.as_str()));
    assert_eq!((copied.content_type.as_str(), &copied.metadata), ("text/plain", &meta));
    let events = log.read(0, Some(P), 1000).unwrap();
    assert_eq!(events.len(), before + 1);
    assert_eq!(events.last().unwrap().data["key"], "dst");
    let read = |bucket: &str, key: &str| {
        let mut out = Vec::new();
        s.open(P, bucket, key, None).unwrap().reader.read_to_end(&mut out).unwrap();
        out
    };
    // Replacing or deleting the source leaves the copy's bytes alone, and the other way round.
    put(s, P, B, "src", b"replaced");
    assert_eq!(read("other", "dst"), b"hello world");
    s.delete(P, B, "src", &who).unwrap();
    assert_eq!(read("other", "dst"), b"hello world");
    s.copy("other", "dst", &ObjectWrite { bucket: B, key: "back", ..w.clone() }, None).unwrap();
    s.delete(P, "other", "dst", &who).unwrap();
    assert_eq!(read(B, "back"), b"hello world");
    // Onto itself: still there.
    s.copy(B, "back", &ObjectWrite { bucket: B, key: "back", ..w.clone() }, None).unwrap();
    assert_eq!(read(B, "back"), b"hello world");
    // A sweep right away finds nothing to remove: every name is referenced.
    let r = s.sweep(i64::MAX / 4, 0, 0).unwrap();
    assert_eq!(r.orphans, 0);
    assert_eq!(read(B, "back"), b"hello world");
    // Limits and missing sources.
    let e = s.copy(B, "back", &ObjectWrite { key: "big", ..w.clone() }, Some(5)).unwrap_err();
    assert!(matches!(e, ObjectError::TooLarge { limit: 5 }), "{e}");
    let e = s.copy(B, "nothing", &w, None).unwrap_err();
    assert!(matches!(e, ObjectError::NoSuchKey(_)), "{e}");
    assert!(s.head(P, "other", "big").unwrap().is_none());
}
