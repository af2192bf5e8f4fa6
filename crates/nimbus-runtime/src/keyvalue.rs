//! `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) for guests, over a [`KeyValueHost`] the
//! embedder provides.
//!
//! The bindings are generated here from the WIT in `wit/keyvalue/` rather than taken from
//! `wasmtime-wasi-keyvalue`, whose host keeps an in-memory copy per `open` and cannot be given
//! another backend. Every call is scoped to the invocation's project: a guest names only a bucket,
//! never a project, so it cannot reach another project's data.
//!
//! The host functions are async and run the (blocking) [`KeyValueHost`] calls on tokio's blocking
//! pool, so a guest waiting on storage never holds an async worker.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::host::HostState;

mod generated {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "nimbus:keyvalue/host",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

use generated::wasi::keyvalue::{atomics, batch, store};

/// Why a key-value call failed, as the guest sees it (`wasi:keyvalue/store.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvHostError {
    /// The bucket name is not one the host accepts.
    #[error("no such store")]
    NoSuchStore,
    #[error("access denied")]
    AccessDenied,
    /// Anything else, with a message safe to show the guest (bounds, bad values, storage).
    #[error("{0}")]
    Other(String),
}

/// The key-value storage behind `wasi:keyvalue`, implemented by the embedder (the server wires
/// `nimbus-kv`). Methods block; the runtime calls them on tokio's blocking pool. Every method
/// names the invocation's project, which the runtime takes from
/// [`InvocationParams::project`](crate::InvocationParams::project), never from the guest.
pub trait KeyValueHost: Send + Sync + 'static {
    /// Check that `bucket` may be opened (buckets exist implicitly).
    fn open(&self, project: &str, bucket: &str) -> Result<(), KvHostError>;
    fn get(&self, project: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvHostError>;
    fn set(&self, project: &str, bucket: &str, key: &str, value: &[u8]) -> Result<(), KvHostError>;
    fn delete(&self, project: &str, bucket: &str, key: &str) -> Result<(), KvHostError>;
    fn exists(&self, project: &str, bucket: &str, key: &str) -> Result<bool, KvHostError>;
    /// One page of keys after `after`, and the cursor of the next page if there is one.
    fn list_keys(
        &self,
        project: &str,
        bucket: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), KvHostError>;
    /// Atomic: concurrent increments of one key from any number of invocations all count.
    fn increment(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        delta: u64,
    ) -> Result<u64, KvHostError>;
    fn get_many(
        &self,
        project: &str,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, KvHostError>;
    fn set_many(
        &self,
        project: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
    ) -> Result<(), KvHostError>;
    fn delete_many(&self, project: &str, bucket: &str, keys: &[String]) -> Result<(), KvHostError>;
}

/// Buckets one invocation may hold open at once, and `list-keys` cursors one bucket hands out:
/// both live in host memory for the invocation, so both are bounded.
const MAX_OPEN_BUCKETS: usize = 64;
const MAX_CURSORS: usize = 4096;

/// An open bucket: its name, and the keys `list-keys` cursors stand for. The WIT cursor is a
/// `u64`, while the store pages by key; cursor `n` is the `n`-th key this handle gave out.
pub struct Bucket {
    name: Arc<str>,
    cursors: Vec<String>,
}

/// The per-invocation key-value state in `HostState`.
pub(crate) struct KvCtx {
    host: Option<Arc<dyn KeyValueHost>>,
    project: Arc<str>,
    open: usize,
}

impl KvCtx {
    pub(crate) fn new(host: Option<Arc<dyn KeyValueHost>>, project: Arc<str>) -> Self {
        KvCtx { host, project, open: 0 }
    }
}

pub(crate) struct KvView<'a> {
    ctx: &'a mut KvCtx,
    table: &'a mut ResourceTable,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Add `wasi:keyvalue/{store,atomics,batch}` to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    fn view(h: &mut HostState) -> KvView<'_> {
        KvView { ctx: &mut h.kv, table: &mut h.table }
    }
    store::add_to_linker::<HostState, HasKv>(linker, view)?;
    atomics::add_to_linker::<HostState, HasKv>(linker, view)?;
    batch::add_to_linker::<HostState, HasKv>(linker, view)?;
    Ok(())
}

type GuestResult<T> = wasmtime::Result<Result<T, store::Error>>;

/// What a call on a bucket needs, owned: the backend, the project and the bucket name.
type Target = (Arc<dyn KeyValueHost>, Arc<str>, Arc<str>);

fn to_guest(e: KvHostError) -> store::Error {
    match e {
        KvHostError::NoSuchStore => store::Error::NoSuchStore,
        KvHostError::AccessDenied => store::Error::AccessDenied,
        KvHostError::Other(m) => store::Error::Other(m),
    }
}

impl KvView<'_> {
    /// The host, project and bucket name a call on `bucket` needs, owned so that the call can move
    /// to the blocking pool.
    fn target(&self, bucket: &Resource<Bucket>) -> GuestResult<Target> {
        let name = self.table.get(bucket)?.name.clone();
        Ok(match &self.ctx.host {
            Some(host) => Ok((host.clone(), self.ctx.project.clone(), name)),
            None => Err(store::Error::NoSuchStore),
        })
    }

    /// Run `f` against the bucket's backend on the blocking pool. The future owns what it needs
    /// (the view holds the non-`Sync` resource table, which must not be borrowed across the await).
    fn run<R: Send + 'static>(
        &self,
        bucket: &Resource<Bucket>,
        f: impl FnOnce(&dyn KeyValueHost, &str, &str) -> Result<R, KvHostError> + Send + 'static,
    ) -> impl Future<Output = GuestResult<R>> + Send + 'static {
        let target = self.target(bucket);
        async move {
            let (host, project, name) = match target? {
                Ok(t) => t,
                Err(e) => return Ok(Err(e)),
            };
            let joined = tokio::task::spawn_blocking(move || f(&*host, &project, &name)).await;
            // A panic in the backend is the host's bug, not the guest's: trap rather than answer.
            let result =
                joined.map_err(|e| wasmtime::Error::msg(format!("key-value task failed: {e}")))?;
            Ok(result.map_err(to_guest))
        }
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> GuestResult<Resource<Bucket>> {
        let Some(host) = self.ctx.host.clone() else {
            return Ok(Err(store::Error::NoSuchStore));
        };
        if self.ctx.open >= MAX_OPEN_BUCKETS {
            return Ok(Err(store::Error::Other(format!(
                "at most {MAX_OPEN_BUCKETS} buckets may be open at once"
            ))));
        }
        // The empty identifier is the default bucket (Wasmtime's in-memory host uses "" too).
        let name: Arc<str> =
            if identifier.is_empty() { "default".into() } else { identifier.into() };
        let project = self.ctx.project.clone();
        let bucket = name.clone();
        let checked = tokio::task::spawn_blocking(move || host.open(&project, &bucket))
            .await
            .map_err(|e| wasmtime::Error::msg(format!("key-value task failed: {e}")))?;
        if let Err(e) = checked {
            return Ok(Err(to_guest(e)));
        }
        let handle = self.table.push(Bucket { name, cursors: Vec::new() })?;
        self.ctx.open += 1;
        Ok(Ok(handle))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> GuestResult<Option<Vec<u8>>> {
        self.run(&bucket, move |h, p, b| h.get(p, b, &key)).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> GuestResult<()> {
        self.run(&bucket, move |h, p, b| h.set(p, b, &key, &value)).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> GuestResult<()> {
        self.run(&bucket, move |h, p, b| h.delete(p, b, &key)).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> GuestResult<bool> {
        self.run(&bucket, move |h, p, b| h.exists(p, b, &key)).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> GuestResult<store::KeyResponse> {
        let after = match cursor {
            None => None,
            Some(c) => {
                let handle = self.table.get(&bucket)?;
                match usize::try_from(c).ok().and_then(|i| handle.cursors.get(i)) {
                    Some(key) => Some(key.clone()),
                    None => {
                        return Ok(Err(store::Error::Other(format!(
                            "unknown cursor {c}: cursors are valid only on the bucket handle \
                             that returned them"
                        ))));
                    }
                }
            }
        };
        let page = self.run(&bucket, move |h, p, b| h.list_keys(p, b, after.as_deref())).await?;
        let (keys, next) = match page {
            Ok(page) => page,
            Err(e) => return Ok(Err(e)),
        };
        let cursor = match next {
            None => None,
            Some(next) => {
                let handle = self.table.get_mut(&bucket)?;
                if handle.cursors.len() >= MAX_CURSORS {
                    return Ok(Err(store::Error::Other(format!(
                        "at most {MAX_CURSORS} list-keys pages per bucket handle; open the \
                         bucket again to list further"
                    ))));
                }
                handle.cursors.push(next);
                Some(handle.cursors.len() as u64 - 1)
            }
        };
        Ok(Ok(store::KeyResponse { keys, cursor }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.ctx.open = self.ctx.open.saturating_sub(1);
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> GuestResult<u64> {
        self.run(&bucket, move |h, p, b| h.increment(p, b, &key, delta)).await
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> GuestResult<Vec<Option<(String, Vec<u8>)>>> {
        self.run(&bucket, move |h, p, b| {
            let values = h.get_many(p, b, &keys)?;
            Ok(keys.into_iter().zip(values).map(|(k, v)| v.map(|v| (k, v))).collect())
        })
        .await
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> GuestResult<()> {
        self.run(&bucket, move |h, p, b| h.set_many(p, b, &key_values)).await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> GuestResult<()> {
        self.run(&bucket, move |h, p, b| h.delete_many(p, b, &keys)).await
    }
}
