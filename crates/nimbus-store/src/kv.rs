//! The key-value store's persistence interface: per project, per named bucket, byte values with an
//! optional expiry time.
//!
//! The store knows no clock: every call that must hide expired entries takes `now`, so an entry is
//! invisible from the millisecond its `expires_at` is reached, whether or not
//! [`KvStore::purge_expired`] has removed it yet, and tests can move time without sleeping.
//!
//! Bounds on key length, value size and batch size are the service's (`nimbus-kv`): a backend stores
//! what it is given. A backend must make [`KvStore::increment`] and [`KvStore::compare_and_swap`]
//! atomic with respect to every other write of the same key.
//!
//! The generic conformance suite every backend should pass is in [`conformance`] (feature
//! `conformance`).

use nimbus_model::UnixMillis;

use crate::{Result, StoreError};

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvValue {
    pub value: Vec<u8>,
    /// When the entry stops existing; `None` keeps it until deleted.
    pub expires_at: Option<UnixMillis>,
}

/// A page of keys, in ascending byte order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// Pass as `after` to get the next page; `None` when this page is the last.
    pub next: Option<String>,
}

/// Why an increment failed, besides the backend failing.
#[derive(Debug, thiserror::Error)]
pub enum IncrementError {
    #[error("the value of key {0:?} is not a decimal integer")]
    NotAnInteger(String),
    #[error("incrementing key {0:?} would overflow a signed 64-bit integer")]
    Overflow(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a write does to an existing entry's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Keep whatever expiry the entry has (none for a new entry).
    Keep,
    /// Never expire.
    Never,
    /// Expire at this time.
    At(UnixMillis),
}

/// Per-project key-value buckets. Every method names its project: no call reaches another
/// project's entries. Buckets exist implicitly while they hold an entry.
pub trait KvStore: Send + Sync + 'static {
    fn get(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<Option<KvValue>>;

    /// Insert or replace. `Expiry::Keep` keeps a live entry's expiry (an expired one's is dropped).
    fn set(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<()>;

    /// Returns whether a live entry was deleted.
    fn delete(&self, project: &str, bucket: &str, key: &str, now: UnixMillis) -> Result<bool>;

    fn exists(&self, project: &str, bucket: &str, key: &str, now: UnixMillis) -> Result<bool>;

    /// Live keys starting with `prefix`, greater than `after` if given, at most `limit` of them.
    fn list_keys(
        &self,
        project: &str,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<KeyPage>;

    /// Atomically add `delta` to the decimal integer stored at `key` (a missing or expired entry
    /// counts as 0) and return the new value, stored as decimal text. The entry's expiry is kept
    /// unless `expiry` says otherwise.
    fn increment(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        delta: i64,
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<i64, IncrementError>;

    /// Atomically replace the value if the current live value equals `expected` (`None`: only if
    /// absent). Returns whether it was written.
    #[allow(clippy::too_many_arguments)]
    fn compare_and_swap(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<bool>;

    /// Values of `keys`, in the same order; `None` for a missing or expired key.
    fn get_many(
        &self,
        project: &str,
        bucket: &str,
        keys: &[String],
        now: UnixMillis,
    ) -> Result<Vec<Option<Vec<u8>>>>;

    /// Set every pair, in one transaction.
    fn set_many(
        &self,
        project: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<()>;

    /// Delete every key, in one transaction. Returns how many live entries went.
    fn delete_many(
        &self,
        project: &str,
        bucket: &str,
        keys: &[String],
        now: UnixMillis,
    ) -> Result<u64>;

    /// Buckets of a project holding at least one live entry, sorted, with their live entry count.
    fn list_buckets(&self, project: &str, now: UnixMillis) -> Result<Vec<(String, u64)>>;

    /// Delete every entry of a bucket. Returns how many entries (live or not) went. A bucket can
    /// be big: a backend with a single writer deletes it in steps rather than holding the writer
    /// for all of it.
    fn delete_bucket(&self, project: &str, bucket: &str) -> Result<u64>;

    /// Delete every entry of a project (the project is being deleted). Returns how many.
    fn delete_project(&self, project: &str) -> Result<u64>;

    /// Remove up to `limit` entries of any project that expired at or before `now`. Returns how
    /// many; housekeeping calls it again while it returns `limit`.
    fn purge_expired(&self, now: UnixMillis, limit: u32) -> Result<u64>;
}

/// Generic tests any [`KvStore`] backend can run: each function takes a fresh, empty store and
/// panics on a failed expectation. A backend's test suite calls every one of them (see
/// `nimbus-store-local/tests/it/kv.rs`).
#[cfg(feature = "conformance")]
pub mod conformance {
    use super::*;

    const P: &str = "proj";
    const B: &str = "default";
    const T0: UnixMillis = 1_700_000_000_000;

    /// One conformance test: it panics on a failed expectation.
    pub type Test = fn(&dyn KvStore);

    /// Every conformance test taking a borrowed store, by name. [`concurrent_increments`] needs
    /// a shared one and is called on its own.
    pub const ALL: &[(&str, Test)] = &[
        ("set_get_delete", set_get_delete),
        ("binary_values", binary_values),
        ("expiry_hides_entries", expiry_hides_entries),
        ("keep_expiry", keep_expiry),
        ("purge_expired", purge_expired),
        ("list_prefix_and_cursor", list_prefix_and_cursor),
        ("increment", increment),
        ("increment_errors", increment_errors),
        ("compare_and_swap", compare_and_swap),
        ("batches", batches),
        ("isolation", isolation),
        ("buckets_and_project_deletion", buckets_and_project_deletion),
    ];

    pub fn set_get_delete(s: &dyn KvStore) {
        assert_eq!(s.get(P, B, "k", T0).unwrap(), None);
        assert!(!s.exists(P, B, "k", T0).unwrap());
        s.set(P, B, "k", b"v1", Expiry::Never, T0).unwrap();
        assert_eq!(
            s.get(P, B, "k", T0).unwrap(),
            Some(KvValue { value: b"v1".to_vec(), expires_at: None })
        );
        assert!(s.exists(P, B, "k", T0).unwrap());
        s.set(P, B, "k", b"v2", Expiry::Never, T0).unwrap();
        assert_eq!(s.get(P, B, "k", T0).unwrap().unwrap().value, b"v2");
        assert!(s.delete(P, B, "k", T0).unwrap());
        assert!(!s.delete(P, B, "k", T0).unwrap());
        assert_eq!(s.get(P, B, "k", T0).unwrap(), None);
        // Empty values are values.
        s.set(P, B, "empty", b"", Expiry::Never, T0).unwrap();
        assert_eq!(s.get(P, B, "empty", T0).unwrap().unwrap().value, b"");
    }

    pub fn binary_values(s: &dyn KvStore) {
        let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
        s.set(P, B, "bin", &bytes, Expiry::Never, T0).unwrap();
        assert_eq!(s.get(P, B, "bin", T0).unwrap().unwrap().value, bytes);
        let key = "ключ/🔑 with spaces";
        s.set(P, B, key, b"x", Expiry::Never, T0).unwrap();
        assert_eq!(s.get(P, B, key, T0).unwrap().unwrap().value, b"x");
    }

    pub fn expiry_hides_entries(s: &dyn KvStore) {
        s.set(P, B, "t", b"v", Expiry::At(T0 + 1000), T0).unwrap();
        assert_eq!(s.get(P, B, "t", T0 + 999).unwrap().unwrap().expires_at, Some(T0 + 1000));
        // Invisible from the expiry time on, to every read, before any purge.
        assert_eq!(s.get(P, B, "t", T0 + 1000).unwrap(), None);
        assert!(!s.exists(P, B, "t", T0 + 1000).unwrap());
        assert_eq!(s.list_keys(P, B, "", None, 10, T0 + 1000).unwrap().keys, Vec::<String>::new());
        assert_eq!(s.get_many(P, B, &["t".into()], T0 + 1000).unwrap(), vec![None]);
        assert!(!s.delete(P, B, "t", T0 + 1000).unwrap(), "an expired entry is not live");
        assert!(s.list_buckets(P, T0 + 1000).unwrap().is_empty());
        // A compare-and-swap expecting absence succeeds over an expired entry.
        s.set(P, B, "t2", b"old", Expiry::At(T0 + 10), T0).unwrap();
        assert!(s.compare_and_swap(P, B, "t2", None, b"new", Expiry::Never, T0 + 10).unwrap());
        assert_eq!(s.get(P, B, "t2", T0 + 10).unwrap().unwrap().value, b"new");
        // Setting with no expiry clears one.
        s.set(P, B, "t3", b"v", Expiry::At(T0 + 10), T0).unwrap();
        s.set(P, B, "t3", b"v", Expiry::Never, T0).unwrap();
        assert!(s.exists(P, B, "t3", T0 + 1_000_000).unwrap());
    }

    pub fn keep_expiry(s: &dyn KvStore) {
        s.set(P, B, "k", b"1", Expiry::At(T0 + 100), T0).unwrap();
        s.set(P, B, "k", b"2", Expiry::Keep, T0 + 1).unwrap();
        assert_eq!(
            s.get(P, B, "k", T0 + 2).unwrap(),
            Some(KvValue { value: b"2".to_vec(), expires_at: Some(T0 + 100) })
        );
        assert_eq!(s.increment(P, B, "k", 5, Expiry::Keep, T0 + 3).unwrap(), 7);
        assert_eq!(s.get(P, B, "k", T0 + 4).unwrap().unwrap().expires_at, Some(T0 + 100));
        // Once expired, a keep-expiry write starts a fresh entry without expiry.
        assert_eq!(s.increment(P, B, "k", 1, Expiry::Keep, T0 + 100).unwrap(), 1);
        assert_eq!(s.get(P, B, "k", T0 + 200).unwrap().unwrap().expires_at, None);
    }

    pub fn purge_expired(s: &dyn KvStore) {
        for i in 0..5 {
            s.set(P, B, &format!("e{i}"), b"v", Expiry::At(T0 + 10), T0).unwrap();
        }
        s.set("other", B, "e", b"v", Expiry::At(T0 + 10), T0).unwrap();
        s.set(P, B, "live", b"v", Expiry::At(T0 + 1000), T0).unwrap();
        s.set(P, B, "forever", b"v", Expiry::Never, T0).unwrap();
        assert_eq!(s.purge_expired(T0 + 9, 100).unwrap(), 0);
        assert_eq!(s.purge_expired(T0 + 10, 4).unwrap(), 4, "bounded by the limit");
        assert_eq!(s.purge_expired(T0 + 10, 100).unwrap(), 2);
        assert_eq!(s.purge_expired(T0 + 10, 100).unwrap(), 0);
        let keys = s.list_keys(P, B, "", None, 100, T0).unwrap().keys;
        assert_eq!(keys, vec!["forever".to_string(), "live".to_string()]);
    }

    pub fn list_prefix_and_cursor(s: &dyn KvStore) {
        for k in ["a", "user:1", "user:2", "user:3", "user;", "user", "users:9", "z"] {
            s.set(P, B, k, b"v", Expiry::Never, T0).unwrap();
        }
        s.set(P, "other-bucket", "user:4", b"v", Expiry::Never, T0).unwrap();
        let page = s.list_keys(P, B, "user:", None, 2, T0).unwrap();
        assert_eq!(page.keys, vec!["user:1", "user:2"]);
        assert_eq!(page.next.as_deref(), Some("user:2"));
        let page = s.list_keys(P, B, "user:", page.next.as_deref(), 2, T0).unwrap();
        assert_eq!(page.keys, vec!["user:3"]);
        assert_eq!(page.next, None);
        // An exactly full last page may or may not carry a cursor, but the next page is empty.
        let page = s.list_keys(P, B, "user:", None, 3, T0).unwrap();
        assert_eq!(page.keys.len(), 3);
        if let Some(after) = page.next {
            assert!(s.list_keys(P, B, "user:", Some(&after), 3, T0).unwrap().keys.is_empty());
        }
        let all = s.list_keys(P, B, "", None, 100, T0).unwrap();
        assert_eq!(
            all.keys,
            vec!["a", "user", "user:1", "user:2", "user:3", "user;", "users:9", "z"]
        );
        assert_eq!(all.next, None);
        // Prefixes are literal: no wildcard characters.
        s.set(P, B, "100%", b"v", Expiry::Never, T0).unwrap();
        s.set(P, B, "100_x", b"v", Expiry::Never, T0).unwrap();
        assert_eq!(s.list_keys(P, B, "100%", None, 10, T0).unwrap().keys, vec!["100%"]);
        assert_eq!(s.list_keys(P, B, "10_", None, 10, T0).unwrap().keys, Vec::<String>::new());
        // A prefix ending in the largest code point still bounds correctly.
        let max = format!("p{}", char::MAX);
        s.set(P, B, &format!("{max}x"), b"v", Expiry::Never, T0).unwrap();
        s.set(P, B, "q", b"v", Expiry::Never, T0).unwrap();
        assert_eq!(s.list_keys(P, B, &max, None, 10, T0).unwrap().keys, vec![format!("{max}x")]);
    }

    pub fn increment(s: &dyn KvStore) {
        assert_eq!(s.increment(P, B, "n", 1, Expiry::Keep, T0).unwrap(), 1);
        assert_eq!(s.increment(P, B, "n", 41, Expiry::Keep, T0).unwrap(), 42);
        assert_eq!(s.increment(P, B, "n", -50, Expiry::Keep, T0).unwrap(), -8);
        assert_eq!(s.get(P, B, "n", T0).unwrap().unwrap().value, b"-8");
        s.set(P, B, "m", b"  17 ", Expiry::Never, T0).unwrap();
        assert_eq!(s.increment(P, B, "m", 0, Expiry::Keep, T0).unwrap(), 17);
        assert_eq!(s.increment(P, B, "ttl", 3, Expiry::At(T0 + 5), T0).unwrap(), 3);
        assert_eq!(s.get(P, B, "ttl", T0).unwrap().unwrap().expires_at, Some(T0 + 5));
    }

    pub fn increment_errors(s: &dyn KvStore) {
        s.set(P, B, "text", b"hello", Expiry::Never, T0).unwrap();
        assert!(matches!(
            s.increment(P, B, "text", 1, Expiry::Keep, T0),
            Err(IncrementError::NotAnInteger(k)) if k == "text"
        ));
        s.set(P, B, "big", i64::MAX.to_string().as_bytes(), Expiry::Never, T0).unwrap();
        assert!(matches!(
            s.increment(P, B, "big", 1, Expiry::Keep, T0),
            Err(IncrementError::Overflow(_))
        ));
        // Failed increments change nothing.
        assert_eq!(s.get(P, B, "text", T0).unwrap().unwrap().value, b"hello");
        assert_eq!(s.get(P, B, "big", T0).unwrap().unwrap().value, i64::MAX.to_string().as_bytes());
    }

    pub fn compare_and_swap(s: &dyn KvStore) {
        assert!(s.compare_and_swap(P, B, "c", None, b"1", Expiry::Never, T0).unwrap());
        assert!(!s.compare_and_swap(P, B, "c", None, b"x", Expiry::Never, T0).unwrap());
        assert!(!s.compare_and_swap(P, B, "c", Some(b"0"), b"x", Expiry::Never, T0).unwrap());
        assert!(s.compare_and_swap(P, B, "c", Some(b"1"), b"2", Expiry::Never, T0).unwrap());
        assert_eq!(s.get(P, B, "c", T0).unwrap().unwrap().value, b"2");
        assert!(!s.compare_and_swap(P, B, "absent", Some(b""), b"x", Expiry::Never, T0).unwrap());
    }

    pub fn batches(s: &dyn KvStore) {
        let entries: Vec<(String, Vec<u8>)> =
            (0..50).map(|i| (format!("b{i:02}"), vec![i as u8; i])).collect();
        s.set_many(P, B, &entries, Expiry::Never, T0).unwrap();
        let keys: Vec<String> = vec!["b03".into(), "missing".into(), "b49".into(), "b03".into()];
        assert_eq!(
            s.get_many(P, B, &keys, T0).unwrap(),
            vec![Some(vec![3; 3]), None, Some(vec![49; 49]), Some(vec![3; 3])]
        );
        assert_eq!(s.delete_many(P, B, &keys, T0).unwrap(), 2);
        assert_eq!(s.list_keys(P, B, "b", None, 100, T0).unwrap().keys.len(), 48);
        s.set_many(P, B, &[], Expiry::Never, T0).unwrap();
        assert_eq!(s.get_many(P, B, &[], T0).unwrap(), Vec::<Option<Vec<u8>>>::new());
    }

    pub fn isolation(s: &dyn KvStore) {
        s.set("a", B, "k", b"from a", Expiry::Never, T0).unwrap();
        s.set("b", B, "k", b"from b", Expiry::Never, T0).unwrap();
        s.set("a", "other", "k", b"a other", Expiry::Never, T0).unwrap();
        assert_eq!(s.get("a", B, "k", T0).unwrap().unwrap().value, b"from a");
        assert_eq!(s.get("b", B, "k", T0).unwrap().unwrap().value, b"from b");
        assert_eq!(s.get("b", "other", "k", T0).unwrap(), None);
        assert_eq!(s.increment("b", B, "n", 1, Expiry::Keep, T0).unwrap(), 1);
        assert_eq!(s.get("a", B, "n", T0).unwrap(), None);
        assert!(s.delete("b", B, "k", T0).unwrap());
        assert!(s.exists("a", B, "k", T0).unwrap());
        assert_eq!(s.list_keys("b", B, "", None, 10, T0).unwrap().keys, vec!["n"]);
    }

    pub fn buckets_and_project_deletion(s: &dyn KvStore) {
        s.set(P, "x", "1", b"v", Expiry::Never, T0).unwrap();
        s.set(P, "x", "2", b"v", Expiry::Never, T0).unwrap();
        s.set(P, "y", "1", b"v", Expiry::Never, T0).unwrap();
        s.set(P, "z", "1", b"v", Expiry::At(T0 + 1), T0).unwrap();
        s.set("keep", "x", "1", b"v", Expiry::Never, T0).unwrap();
        assert_eq!(
            s.list_buckets(P, T0 + 1).unwrap(),
            vec![("x".to_string(), 2), ("y".to_string(), 1)]
        );
        assert_eq!(s.delete_bucket(P, "y").unwrap(), 1);
        assert_eq!(s.list_buckets(P, T0 + 1).unwrap(), vec![("x".to_string(), 2)]);
        assert_eq!(s.delete_project(P).unwrap(), 3);
        assert!(s.list_buckets(P, T0).unwrap().is_empty());
        assert!(s.exists("keep", "x", "1", T0).unwrap());
    }

    /// Many threads increment one key at once; no increment is lost.
    pub fn concurrent_increments(s: std::sync::Arc<dyn KvStore>) {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        s.increment(P, B, "hits", 1, Expiry::Keep, T0).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.get(P, B, "hits", T0).unwrap().unwrap().value, b"400");
    }
}
