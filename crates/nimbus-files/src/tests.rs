use std::collections::BTreeMap;

use nimbus_store_local::{LocalObjectStore, SqliteStore};
use serde_json::json;

use super::*;

const P: &str = "proj";

fn service(dir: &std::path::Path) -> FilesService {
    let db = Arc::new(SqliteStore::open(&dir.join("nimbus.db")).unwrap());
    let objects = Arc::new(LocalObjectStore::open(db.clone(), &dir.join("objects")).unwrap());
    FilesService::new(objects, db, FilesConfig::default(), b"test secret")
}

fn admin() -> Principal {
    Principal::Service { identity: json!({"kind": "admin"}) }
}

fn user(id: &str) -> Principal {
    Principal::User(json!({"id": id, "roles": [], "anonymous": false}))
}

fn put(s: &FilesService, bucket: &str, key: &str, who: &Principal, ct: &str) -> Result<ObjectMeta> {
    s.put_object(P, bucket, key, ct, &BTreeMap::new(), who, None, &mut &b"data"[..])
}

fn bucket(s: &FilesService, name: &str, access: Access) {
    let config = BucketConfig { access, ..Default::default() };
    s.create_bucket(P, name, &config).unwrap();
}

#[test]
fn bucket_names() {
    for good in ["abc", "my-bucket.v2", "0ab", &"a".repeat(63)] {
        assert!(validate_bucket(good).is_ok(), "{good}");
    }
    for bad in ["ab", "-ab", "ab-", "a..b", "Abc", "a_b", "a/b", &"a".repeat(64), "../x"] {
        assert!(validate_bucket(bad).is_err(), "{bad}");
    }
}

#[test]
fn content_types() {
    let p = vec!["image/*".to_string(), "application/pdf".to_string()];
    assert!(content_type_allowed(&p, "image/png"));
    assert!(content_type_allowed(&p, "IMAGE/JPEG; q=1"));
    assert!(content_type_allowed(&p, "application/pdf"));
    assert!(!content_type_allowed(&p, "text/html"));
    assert!(!content_type_allowed(&p, "imagex/png"));
    assert!(content_type_allowed(&[], "anything/at-all"));
    assert!(content_type_allowed(&["*/*".into()], "text/html"));
}

#[test]
fn access_modes() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path());
    bucket(&s, "private", Access::Private);
    bucket(&s, "public", Access::PublicRead);
    bucket(&s, "members", Access::SignedIn);
    bucket(&s, "homes", Access::OwnerOnly);
    for b in ["private", "public", "members", "homes"] {
        put(&s, b, "alice/x", &admin(), "text/plain").unwrap();
    }
    let anon = Principal::anonymous();
    let alice = user("alice");
    let bob = user("bob");
    // Private: end users nothing.
    assert!(matches!(
        s.head_object(P, "private", "alice/x", &anon),
        Err(FilesError::Unauthorized(_))
    ));
    assert!(matches!(
        s.head_object(P, "private", "alice/x", &alice),
        Err(FilesError::Forbidden(_))
    ));
    // Public read: anyone reads and lists, nobody but services writes.
    assert!(s.head_object(P, "public", "alice/x", &anon).is_ok());
    assert!(s.list_objects(P, "public", "", None, None, None, &anon).is_ok());
    assert!(put(&s, "public", "k", &alice, "text/plain").is_err());
    assert!(s.delete_object(P, "public", "alice/x", &anon).is_err());
    // Signed in: users yes, anonymous no.
    assert!(put(&s, "members", "k", &bob, "text/plain").is_ok());
    assert!(s.head_object(P, "members", "alice/x", &bob).is_ok());
    assert!(s.head_object(P, "members", "alice/x", &anon).is_err());
    let anon_session = Principal::User(json!({"id": "u9", "anonymous": true}));
    assert!(put(&s, "members", "k", &anon_session, "text/plain").is_err());
    // Owner only: under <id>/ only.
    assert!(s.head_object(P, "homes", "alice/x", &alice).is_ok());
    assert!(s.head_object(P, "homes", "alice/x", &bob).is_err());
    assert!(put(&s, "homes", "bob/y", &bob, "text/plain").is_ok());
    assert!(put(&s, "homes", "alice/y", &bob, "text/plain").is_err());
    assert!(put(&s, "homes", "bobby", &bob, "text/plain").is_err());
    assert!(s.list_objects(P, "homes", "bob/", None, None, None, &bob).is_ok());
    assert!(s.list_objects(P, "homes", "", None, None, None, &bob).is_err());
    assert!(s.delete_object(P, "homes", "alice/x", &bob).is_err());
    assert!(s.delete_object(P, "homes", "bob/y", &bob).unwrap().is_some());
    // The uploader identity is recorded.
    let meta = put(&s, "members", "who", &bob, "text/plain").unwrap();
    assert_eq!(meta.uploader, json!({"kind": "user", "id": "bob"}));
}

#[test]
fn rule_access() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path());
    let rules = RuleSources {
        get: Some("auth.id != null && file.uploader.id == auth.id".into()),
        create: Some("auth.id != null && request.content_type == \"image/png\"".into()),
        list: Some("auth.id != null".into()),
        ..Default::default()
    };
    bucket(&s, "ruled", Access::Rules(rules));
    let alice = user("alice");
    let bob = user("bob");
    put(&s, "ruled", "pic", &alice, "image/png").unwrap();
    assert!(put(&s, "ruled", "doc", &alice, "text/plain").is_err(), "create rule on content type");
    assert!(put(&s, "ruled", "pic", &alice, "image/png").is_err(), "no update rule");
    assert!(s.head_object(P, "ruled", "pic", &alice).is_ok());
    assert!(s.head_object(P, "ruled", "pic", &bob).is_err());
    assert!(s.list_objects(P, "ruled", "", None, None, None, &bob).is_ok());
    assert!(s.delete_object(P, "ruled", "pic", &alice).is_err(), "no delete rule");
    // Invalid rules are refused when saved.
    let bad = BucketConfig {
        access: Access::Rules(RuleSources { get: Some("auth.id ==".into()), ..Default::default() }),
        ..Default::default()
    };
    assert!(matches!(s.create_bucket(P, "bad-rules", &bad), Err(FilesError::Invalid(_))));
}

#[test]
fn limits_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path());
    let config = BucketConfig {
        max_object_bytes: Some(3),
        allowed_content_types: vec!["text/*".into()],
        ..Default::default()
    };
    s.create_bucket(P, "small", &config).unwrap();
    assert!(matches!(
        put(&s, "small", "k", &admin(), "text/plain"),
        Err(FilesError::Object(ObjectError::TooLarge { limit: 3 }))
    ));
    assert!(matches!(
        put(&s, "small", "k", &admin(), "image/png"),
        Err(FilesError::ContentType(_))
    ));
    s.put_object(P, "small", "k", "text/plain", &BTreeMap::new(), &admin(), None, &mut &b"abc"[..])
        .unwrap();
    assert!(matches!(
        put(&s, "small", "a\0b", &admin(), "text/plain"),
        Err(FilesError::InvalidKey(_))
    ));
    assert!(matches!(
        put(&s, "small", &"k".repeat(2048), &admin(), "text/plain"),
        Err(FilesError::InvalidKey(_))
    ));
    // Non-empty bucket deletion needs force.
    assert!(matches!(
        s.delete_bucket(P, "small", false, &admin()),
        Err(FilesError::Object(ObjectError::BucketNotEmpty(_)))
    ));
    assert_eq!(s.delete_bucket(P, "small", true, &admin()).unwrap(), 1);
}

#[test]
fn signed_urls() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path());
    let now = now_millis() / 1000;
    let sig = s.sign(P, "GET", "bkt", "a/b", now + 60).unwrap();
    assert!(s.verify_signature(P, "GET", "bkt", "a/b", now + 60, &sig).is_ok());
    assert!(s.verify_signature(P, "HEAD", "bkt", "a/b", now + 60, &sig).is_ok());
    for (p, m, b, k, e) in [
        ("other", "GET", "bkt", "a/b", now + 60),
        (P, "PUT", "bkt", "a/b", now + 60),
        (P, "GET", "bkt2", "a/b", now + 60),
        (P, "GET", "bkt", "a/c", now + 60),
        (P, "GET", "bkt", "a/b", now + 61),
    ] {
        assert!(matches!(s.verify_signature(p, m, b, k, e, &sig), Err(FilesError::BadSignature)));
    }
    assert!(matches!(
        s.verify_signature(P, "GET", "bkt", "a/b", now + 60, "zz"),
        Err(FilesError::BadSignature)
    ));
    // Expired: a correct signature for a past expiry (made with the same key) is refused.
    let past = now - 1;
    let sig = hex::encode(s.signing_mac(P, "GET", "bkt", "a/b", past).finalize().into_bytes());
    assert!(matches!(
        s.verify_signature(P, "GET", "bkt", "a/b", past, &sig),
        Err(FilesError::Expired)
    ));
    assert!(s.sign(P, "GET", "bkt", "a/b", now - 1).is_err());
    assert!(s.sign(P, "DELETE", "bkt", "a/b", now + 10).is_err());
    // Another server secret: another signature.
    let other = FilesService::new(s.store.clone(), s.keys.clone(), FilesConfig::default(), b"x");
    let sig = s.sign(P, "GET", "bkt", "a/b", now + 60).unwrap();
    assert!(other.verify_signature(P, "GET", "bkt", "a/b", now + 60, &sig).is_err());
}

#[test]
fn s3_keys_and_project_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path());
    let (info, secret) =
        s.create_s3_key(P, "ci", nimbus_store::objects::S3KeyScope::Service).unwrap();
    assert_eq!(info.access_key.len(), 20);
    assert_eq!(secret.len(), 60);
    let (found, found_secret) = s.lookup_s3_key(&info.access_key).unwrap().unwrap();
    assert_eq!((found.project.as_str(), found_secret.as_str()), (P, secret.as_str()));
    assert_eq!(s.list_s3_keys(P).unwrap().len(), 1);
    assert!(!s.delete_s3_key("other", &info.access_key).unwrap(), "scoped to its project");
    bucket(&s, "bk1", Access::Private);
    put(&s, "bk1", "k", &admin(), "text/plain").unwrap();
    assert_eq!(s.delete_project(P).unwrap(), 1);
    assert!(s.lookup_s3_key(&info.access_key).unwrap().is_none());
    assert!(s.list_buckets(P).unwrap().is_empty());
    assert!(s.open_object(P, "bk1", "k", None, &admin()).is_err());
}
