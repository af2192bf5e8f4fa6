//! The runtime's `wasi:keyvalue` host, backed by the KV service: the bridge between
//! `nimbus-runtime` (which knows no storage) and `nimbus-kv` (which knows no Wasmtime).

use nimbus_kv::{KvError, KvService};
use nimbus_runtime::{KeyValueHost, KvHostError};
use nimbus_store::kv::IncrementError;

pub(crate) struct KvHost(pub(crate) KvService);

/// What a guest is told: the service's message for its own mistakes (bounds, bad values), a
/// generic one for the host's (logged here, once).
fn to_guest(e: KvError) -> KvHostError {
    match e {
        KvError::InvalidBucket(_) => KvHostError::NoSuchStore,
        KvError::Store(_) | KvError::Internal(_) | KvError::Increment(IncrementError::Store(_)) => {
            tracing::error!(error = %e, "key-value storage failed under a guest call");
            KvHostError::Other("key-value storage error".into())
        }
        other => KvHostError::Other(other.to_string()),
    }
}

impl KeyValueHost for KvHost {
    fn open(&self, _project: &str, bucket: &str) -> Result<(), KvHostError> {
        nimbus_kv::validate_bucket(bucket).map_err(to_guest)
    }

    fn get(&self, project: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvHostError> {
        Ok(self.0.get(project, bucket, key).map_err(to_guest)?.map(|v| v.value))
    }

    fn set(&self, project: &str, bucket: &str, key: &str, value: &[u8]) -> Result<(), KvHostError> {
        self.0.set(project, bucket, key, value, None).map_err(to_guest)
    }

    fn delete(&self, project: &str, bucket: &str, key: &str) -> Result<(), KvHostError> {
        self.0.delete(project, bucket, key).map(drop).map_err(to_guest)
    }

    fn exists(&self, project: &str, bucket: &str, key: &str) -> Result<bool, KvHostError> {
        self.0.exists(project, bucket, key).map_err(to_guest)
    }

    fn list_keys(
        &self,
        project: &str,
        bucket: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), KvHostError> {
        let page = self.0.list_keys(project, bucket, "", after, None).map_err(to_guest)?;
        Ok((page.keys, page.next))
    }

    fn increment(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        delta: u64,
    ) -> Result<u64, KvHostError> {
        let delta = i64::try_from(delta)
            .map_err(|_| KvHostError::Other(format!("delta {delta} is larger than i64::MAX")))?;
        let value = self.0.increment(project, bucket, key, delta, None).map_err(to_guest)?;
        // Counters are signed in the store (REST may decrement); the WIT result is unsigned.
        u64::try_from(value).map_err(|_| {
            KvHostError::Other(format!("the counter is negative ({value}) after the increment"))
        })
    }

    fn get_many(
        &self,
        project: &str,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, KvHostError> {
        self.0.get_many(project, bucket, keys).map_err(to_guest)
    }

    fn set_many(
        &self,
        project: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
    ) -> Result<(), KvHostError> {
        self.0.set_many(project, bucket, entries, None).map_err(to_guest)
    }

    fn delete_many(&self, project: &str, bucket: &str, keys: &[String]) -> Result<(), KvHostError> {
        self.0.delete_many(project, bucket, keys).map(drop).map_err(to_guest)
    }
}
