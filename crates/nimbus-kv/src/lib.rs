//! The key-value service: per-project buckets of byte values with optional TTLs.
//!
//! It owns the bounds (bucket names, key length, value size, batch and page sizes, TTL range), the
//! clock (expired entries are invisible from their expiry on; the store filters by the `now` this
//! service passes), housekeeping (periodic purge of expired entries), and the KV part of project
//! deletion. Storage is the [`KvStore`] trait; the REST API and the runtime's `wasi:keyvalue` host
//! (both wired in `nimbus-server`) call this service.
//!
//! Architecture invariant: no HTTP and no SQL here. The methods are blocking (the store is
//! synchronous): call them off the async workers, e.g. through [`KvService::call`].

use std::sync::Arc;
use std::time::Duration;

use nimbus_model::{UnixMillis, now_millis};
use nimbus_store::StoreError;
use nimbus_store::kv::{Expiry, IncrementError, KeyPage, KvStore, KvValue};
use nimbus_store::usage::{StorageFull, StorageGuard, Unlimited};

/// The bucket guests get from `wasi:keyvalue/store.open("")` and REST clients name `default`.
pub const DEFAULT_BUCKET: &str = "default";

/// Operator bounds of the KV service.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Longest key, in UTF-8 bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys in one batch get/set/delete.
    pub max_batch: usize,
    /// Keys per list page when none is asked for, and the most one page returns.
    pub default_page: u32,
    pub max_page: u32,
    /// Longest TTL accepted (keeps `now + ttl` far from overflow and typos from living forever
    /// by accident; no TTL at all is always allowed).
    pub max_ttl: Duration,
    /// How often expired entries are purged, and how many per store call.
    pub purge_every: Duration,
    pub purge_batch: u32,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_batch: 1000,
            default_page: 100,
            max_page: 1000,
            max_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            purge_every: Duration::from_secs(60),
            purge_batch: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(
        "invalid bucket name {0:?}: use 1 to 64 characters of a-z, 0-9, '-' and '_', starting with \
         a letter or digit"
    )]
    InvalidBucket(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("value of {size} bytes is larger than the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("invalid TTL: {0}")]
    InvalidTtl(String),
    #[error("{count} keys in one batch, more than the limit of {limit}")]
    BatchTooLarge { count: usize, limit: usize },
    #[error(transparent)]
    Increment(IncrementError),
    /// The project's stored-bytes quota is used up: writes that add data are refused until
    /// it deletes some (deletes and reads still work).
    #[error(transparent)]
    StorageFull(#[from] StorageFull),
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        KvError::Store(e)
    }
}

impl From<IncrementError> for KvError {
    fn from(e: IncrementError) -> Self {
        match e {
            IncrementError::Store(e) => KvError::Store(e),
            other => KvError::Increment(other),
        }
    }
}

pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// The KV service. Cheap to clone.
#[derive(Clone)]
pub struct KvService {
    store: Arc<dyn KvStore>,
    config: Arc<KvConfig>,
    /// Asked before every write that adds data (the stored-bytes quota).
    guard: Arc<dyn StorageGuard>,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Checks a bucket name: the same small alphabet everywhere a bucket is named (URL segment,
/// `wasi:keyvalue` identifier), so no escaping question ever arises.
pub fn validate_bucket(bucket: &str) -> Result<()> {
    let ok = (1..=64).contains(&bucket.len())
        && bucket.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if ok { Ok(()) } else { Err(KvError::InvalidBucket(bucket.to_string())) }
}

impl KvService {
    pub fn new(store: Arc<dyn KvStore>, config: KvConfig) -> Self {
        KvService { store, config: Arc::new(config), guard: Arc::new(Unlimited) }
    }

    /// Check `guard` (the stored-bytes quota) before every write that adds data.
    pub fn with_storage_guard(mut self, guard: Arc<dyn StorageGuard>) -> Self {
        self.guard = guard;
        self
    }

    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// Run blocking service calls on tokio's blocking pool.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KvService) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| KvError::Internal(format!("KV task failed: {e}")))?
    }

    fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(KvError::InvalidKey("a key cannot be empty".into()));
        }
        if key.len() > self.config.max_key_bytes {
            return Err(KvError::InvalidKey(format!(
                "a key is at most {} bytes, this one has {}",
                self.config.max_key_bytes,
                key.len()
            )));
        }
        // Control characters make keys unprintable in logs and listings, for no use.
        if key.chars().any(char::is_control) {
            return Err(KvError::InvalidKey("a key cannot contain control characters".into()));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.config.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                size: value.len(),
                limit: self.config.max_value_bytes,
            });
        }
        Ok(())
    }

    fn check_batch(&self, count: usize) -> Result<()> {
        if count > self.config.max_batch {
            return Err(KvError::BatchTooLarge { count, limit: self.config.max_batch });
        }
        Ok(())
    }

    /// What a write's optional TTL means for the stored expiry.
    fn expiry(
        &self,
        ttl: Option<Duration>,
        keep_otherwise: bool,
        now: UnixMillis,
    ) -> Result<Expiry> {
        match ttl {
            None if keep_otherwise => Ok(Expiry::Keep),
            None => Ok(Expiry::Never),
            Some(ttl) if ttl.is_zero() => Err(KvError::InvalidTtl("a TTL must be positive".into())),
            Some(ttl) if ttl > self.config.max_ttl => Err(KvError::InvalidTtl(format!(
                "a TTL is at most {} seconds",
                self.config.max_ttl.as_secs()
            ))),
            // At least 1 ms, so a sub-millisecond TTL does not mean "already expired".
            Some(ttl) => Ok(Expiry::At(now + (ttl.as_millis() as i64).max(1))),
        }
    }

    pub fn get(&self, project: &str, bucket: &str, key: &str) -> Result<Option<KvValue>> {
        validate_bucket(bucket)?;
        self.check_key(key)?;
        Ok(self.store.get(project, bucket, key, now_millis())?)
    }

    /// Set a value; with a TTL it expires that long from now, without one it never expires.
    pub fn set(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<()> {
        validate_bucket(bucket)?;
        self.check_key(key)?;
        self.check_value(value)?;
        let now = now_millis();
        let expiry = self.expiry(ttl, false, now)?;
        self.guard.may_store(project)?;
        Ok(self.store.set(project, bucket, key, value, expiry, now)?)
    }

    /// Returns whether a live entry was deleted.
    pub fn delete(&self, project: &str, bucket: &str, key: &str) -> Result<bool> {
        validate_bucket(bucket)?;
        self.check_key(key)?;
        Ok(self.store.delete(project, bucket, key, now_millis())?)
    }

    pub fn exists(&self, project: &str, bucket: &str, key: &str) -> Result<bool> {
        validate_bucket(bucket)?;
        self.check_key(key)?;
        Ok(self.store.exists(project, bucket, key, now_millis())?)
    }

    /// A page of keys starting with `prefix`, after the cursor `after`. `limit` defaults to and is
    /// capped by the configured page sizes.
    pub fn list_keys(
        &self,
        project: &str,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<KeyPage> {
        validate_bucket(bucket)?;
        if prefix.len() > self.config.max_key_bytes {
            return Err(KvError::InvalidKey(format!(
                "a prefix is at most {} bytes",
                self.config.max_key_bytes
            )));
        }
        let limit = limit.unwrap_or(self.config.default_page).clamp(1, self.config.max_page);
        Ok(self.store.list_keys(project, bucket, prefix, after, limit, now_millis())?)
    }

    /// Atomically add `delta` (a missing key counts as 0). The entry keeps its expiry unless a TTL
    /// is given.
    pub fn increment(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64> {
        validate_bucket(bucket)?;
        self.check_key(key)?;
        let now = now_millis();
        let expiry = self.expiry(ttl, true, now)?;
        self.guard.may_store(project)?;
        Ok(self.store.increment(project, bucket, key, delta, expiry, now)?)
    }

    /// Write `value` only if the current value is `expected` (`None`: only if absent).
    pub fn compare_and_swap(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        validate_bucket(bucket)?;
        self.check_key(key)?;
        self.check_value(value)?;
        let now = now_millis();
        let expiry = self.expiry(ttl, false, now)?;
        self.guard.may_store(project)?;
        Ok(self.store.compare_and_swap(project, bucket, key, expected, value, expiry, now)?)
    }

    pub fn get_many(
        &self,
        project: &str,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        validate_bucket(bucket)?;
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|k| self.check_key(k))?;
        Ok(self.store.get_many(project, bucket, keys, now_millis())?)
    }

    /// Set every pair in one transaction: all or none.
    pub fn set_many(
        &self,
        project: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        validate_bucket(bucket)?;
        self.check_batch(entries.len())?;
        for (k, v) in entries {
            self.check_key(k)?;
            self.check_value(v)?;
        }
        let now = now_millis();
        let expiry = self.expiry(ttl, false, now)?;
        self.guard.may_store(project)?;
        Ok(self.store.set_many(project, bucket, entries, expiry, now)?)
    }

    pub fn delete_many(&self, project: &str, bucket: &str, keys: &[String]) -> Result<u64> {
        validate_bucket(bucket)?;
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|k| self.check_key(k))?;
        Ok(self.store.delete_many(project, bucket, keys, now_millis())?)
    }

    /// Buckets holding at least one live entry, with their entry counts.
    pub fn list_buckets(&self, project: &str) -> Result<Vec<(String, u64)>> {
        Ok(self.store.list_buckets(project, now_millis())?)
    }

    pub fn delete_bucket(&self, project: &str, bucket: &str) -> Result<u64> {
        validate_bucket(bucket)?;
        Ok(self.store.delete_bucket(project, bucket)?)
    }

    /// The KV part of deleting a project: every entry of every bucket.
    pub fn delete_project(&self, project: &str) -> Result<u64> {
        let n = self.store.delete_project(project)?;
        tracing::info!(project, removed = n, "deleted the project's KV entries");
        Ok(n)
    }

    /// Remove every entry expired by now, in bounded store calls (so the writer is never held
    /// long). Returns how many.
    pub fn purge_expired(&self) -> Result<u64> {
        let batch = self.config.purge_batch.max(1);
        let mut total = 0;
        loop {
            let n = self.store.purge_expired(now_millis(), batch)?;
            total += n;
            if n < u64::from(batch) {
                return Ok(total);
            }
        }
    }

    /// Purge expired entries every `purge_every`, until the handle is aborted.
    pub fn spawn_purger(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(this.config.purge_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match this.call(|kv| kv.purge_expired()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "purged expired KV entries"),
                    Err(e) => tracing::warn!(error = %e, "purging expired KV entries"),
                }
            }
        })
    }
}

/// Every entry of every bucket; after functions, so that no function writes new ones.
impl nimbus_model::lifecycle::ProjectLifecycle for KvService {
    fn part(&self) -> &'static str {
        "kv"
    }

    fn delete_project_data<'a>(
        &'a self,
        project: &'a str,
    ) -> nimbus_model::lifecycle::PartFuture<'a> {
        let p = project.to_owned();
        Box::pin(async move { Ok(self.call(move |kv| kv.delete_project(&p)).await.map(drop)?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_store_local::SqliteStore;

    fn service(config: KvConfig) -> KvService {
        KvService::new(Arc::new(SqliteStore::open_in_memory().unwrap()), config)
    }

    #[test]
    fn bucket_names() {
        for good in ["default", "a", "cache-1", "x_y", &"a".repeat(64)] {
            assert!(validate_bucket(good).is_ok(), "{good}");
        }
        for bad in ["", "Default", "-a", "_a", "a/b", "a.b", "ä", &"a".repeat(65)] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_are_enforced_with_clear_errors() {
        let kv = service(KvConfig {
            max_key_bytes: 8,
            max_value_bytes: 4,
            max_batch: 2,
            ..Default::default()
        });
        assert!(matches!(kv.set("p", "default", "", b"v", None), Err(KvError::InvalidKey(_))));
        assert!(matches!(
            kv.set("p", "default", "123456789", b"v", None),
            Err(KvError::InvalidKey(_))
        ));
        assert!(matches!(kv.set("p", "default", "a\nb", b"v", None), Err(KvError::InvalidKey(_))));
        let e = kv.set("p", "default", "k", b"12345", None).unwrap_err();
        assert_eq!(e.to_string(), "value of 5 bytes is larger than the limit of 4 bytes");
        assert!(matches!(kv.set("p", "Bad", "k", b"v", None), Err(KvError::InvalidBucket(_))));
        let keys: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        assert!(matches!(
            kv.get_many("p", "default", &keys),
            Err(KvError::BatchTooLarge { count: 3, limit: 2 })
        ));
        assert!(matches!(
            kv.set("p", "default", "k", b"v", Some(Duration::ZERO)),
            Err(KvError::InvalidTtl(_))
        ));
        assert!(matches!(
            kv.set("p", "default", "k", b"v", Some(Duration::from_secs(u64::MAX))),
            Err(KvError::InvalidTtl(_))
        ));
        // Nothing was written by the refused calls.
        assert!(kv.list_keys("p", "default", "", None, None).unwrap().keys.is_empty());
        kv.set("p", "default", "k", b"1234", None).unwrap();
        assert_eq!(kv.increment("p", "default", "k", 1, None).unwrap(), 1235);
        assert!(matches!(
            kv.increment("p", "default", "k", i64::MAX, None),
            Err(KvError::Increment(IncrementError::Overflow(_)))
        ));
    }

    #[test]
    fn ttl_expires_and_purges() {
        let kv = service(KvConfig { purge_batch: 1, ..Default::default() });
        kv.set("p", "default", "short", b"v", Some(Duration::from_millis(30))).unwrap();
        kv.set("p", "default", "short2", b"v", Some(Duration::from_millis(30))).unwrap();
        kv.set("p", "default", "long", b"v", Some(Duration::from_secs(3600))).unwrap();
        assert!(kv.exists("p", "default", "short").unwrap());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!kv.exists("p", "default", "short").unwrap());
        // Purges in batches of one until none is left.
        assert_eq!(kv.purge_expired().unwrap(), 2);
        assert_eq!(kv.list_keys("p", "default", "", None, None).unwrap().keys, vec!["long"]);
    }
}
