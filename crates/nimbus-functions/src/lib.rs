//! The functions service: deploys components as immutable numbered versions, keeps the active
//! version of each function loaded and routed, admits and runs invocations, and records them.
//!
//! Architecture invariant: this crate knows no HTTP server and no SQL. It takes requests as
//! `http::Request` values, talks to storage through `nimbus-store` traits and to Wasmtime through
//! `nimbus-runtime`.

mod admission;
mod fair;
mod invoke;
mod metrics;
mod quota;
mod recorder;
mod residency;
mod router;
pub mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use nimbus_model::{
    FunctionInfo, FunctionSpec, InvocationQuery, InvocationRecord, LimitPolicy, SpecError,
    VersionInfo, now_millis,
};
use nimbus_runtime::{
    CacheUse, DeployError, InvocationParams, LoadedComponent, OutboundPolicy, Runtime,
};
use nimbus_store::{BlobStore, FunctionStore, InvocationStore, NewVersion, StoreError};
use residency::{CodeSlot, Residency};
use sha2::Digest;
use tokio::sync::broadcast;

pub use admission::Rejection;
pub use invoke::{InvokeError, Invoked};
pub use metrics::Metrics;
pub use quota::{QuotaExceeded, StorageQuota};
pub use router::RouteMatch;

use admission::Admission;
use recorder::Recorder;
use router::{Entry, RouteTable, claims_overlap};

/// The persistent maps the request path looks up (routes, active versions). foldhash, randomly
/// seeded per map, rather than the default SipHash: a request looks up several of them and
/// SipHash was ~1k instructions of it (`bench/instructions.sh`); the keys are project, function
/// and path names, which only tenants' own deploys insert.
type FastMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error(transparent)]
    InvalidModule(#[from] DeployError),
    #[error("route {route} is already claimed by function {owner:?}")]
    RouteConflict { route: String, owner: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
    /// A usage range that is empty, reversed or too long.
    #[error("{0}")]
    InvalidRange(String),
    #[error("{0}")]
    InvalidQuotas(String),
}

impl From<StoreError> for FunctionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => FunctionError::NotFound(what),
            other => FunctionError::Store(other),
        }
    }
}

/// How long a graceful shutdown waits for the store to take the queued records.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(30);

type Result<T, E = FunctionError> = std::result::Result<T, E>;

/// Operator settings of the functions service.
#[derive(Debug, Clone)]
pub struct FunctionsConfig {
    pub limits: LimitPolicy,
    pub queue_timeout: Duration,
    /// Node-local cache of compiled artifacts (derived data: rebuilt from the blob store if lost).
    pub artifact_dir: PathBuf,
    pub log_retention: Duration,
    pub log_keep_per_function: u32,
    /// Bytes of compiled code (artifact sizes) kept resident; beyond it the least recently used
    /// functions are evicted and reload on their next request. 0: no budget.
    pub code_memory_budget: u64,
}

/// The storage the service needs, as traits.
#[derive(Clone)]
pub struct Stores {
    pub functions: Arc<dyn FunctionStore>,
    pub invocations: Arc<dyn InvocationStore>,
    pub blobs: Arc<dyn BlobStore>,
    /// Usage totals and quotas (the invocation store counts usage as it writes records).
    pub usage: Arc<dyn nimbus_store::usage::UsageStore>,
    /// The stored-bytes quota the data services check; the service keeps its limits in step
    /// with the quotas it stores.
    pub storage_quota: Arc<StorageQuota>,
}

/// One function's active version, routed and ready to invoke; its code is loaded on demand.
pub struct ActiveVersion {
    pub info: VersionInfo,
    /// The compiled code, resident or scaled to zero (loaded by the next request).
    code: Arc<CodeSlot>,
    params: InvocationParams,
    admission: Arc<Admission>,
    metrics: metrics::FunctionMetrics,
    /// The service's metrics, reached through the version an invocation already holds: a
    /// reference of its own would write one more shared reference count per request.
    node_metrics: Arc<Metrics>,
}

/// Functions are keyed by (project, name).
type Key = (String, String);

fn key(project: &str, name: &str) -> Key {
    (project.to_string(), name.to_string())
}

/// What requests and triggers see: every active version, routed. Swapped whole (lookups never
/// lock) but made of persistent maps, so that a change clones it in O(1) and touches only the
/// function it changes: deploys do not slow down as functions accumulate on the node.
#[derive(Clone, Default)]
struct Snapshot {
    functions: FastMap<Key, Arc<ActiveVersion>>,
    /// One route table per project: routes never cross projects.
    routes: FastMap<String, RouteTable<ActiveVersion>>,
    /// Functions with event triggers, per project and by name: what the trigger dispatcher
    /// matches each event against.
    triggered: FastMap<String, imbl::OrdMap<String, Arc<ActiveVersion>>>,
}

impl Snapshot {
    /// This snapshot with `key`'s active version replaced by `new` (`None`: removed).
    fn with(&self, key: Key, new: Option<Arc<ActiveVersion>>) -> Snapshot {
        let mut next = self.clone();
        next.set(key, new);
        next
    }

    /// Replace `key`'s active version in place (no copy of nodes this snapshot owns alone, as
    /// when the server starts).
    fn set(&mut self, key: Key, new: Option<Arc<ActiveVersion>>) {
        let (project, name) = &key;
        if let Some(old) = self.functions.remove(&key) {
            let table = self.routes.entry(project.clone()).or_default();
            for pattern in old.info.spec.routes.iter().filter_map(|spec| spec.parse().ok()) {
                table.remove(&pattern, |target| target.info.function == *name);
            }
            if table.is_empty() {
                self.routes.remove(project);
            }
            if let Some(triggered) = self.triggered.get_mut(project) {
                triggered.remove(name);
                if triggered.is_empty() {
                    self.triggered.remove(project);
                }
            }
        }
        if let Some(new) = new {
            let table = self.routes.entry(project.clone()).or_default();
            for spec in &new.info.spec.routes {
                if let Ok(pattern) = spec.parse() {
                    table.insert(pattern, Entry { spec: spec.clone(), target: new.clone() });
                }
            }
            if !new.info.spec.triggers.is_empty() {
                self.triggered
                    .entry(project.clone())
                    .or_default()
                    .insert(name.clone(), new.clone());
            }
            self.functions.insert(key, new);
        }
    }

    /// This snapshot without any function of `project`.
    fn without_project(&self, project: &str) -> Snapshot {
        let mut next = self.clone();
        next.functions.retain(|(p, _), _| p != project);
        next.routes.remove(project);
        next.triggered.remove(project);
        next
    }
}

/// The result of a deploy.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub function: FunctionInfo,
    pub version: VersionInfo,
    /// The active version already had these bytes, spec and limits: `version` is that version,
    /// nothing was compiled or written, and `compile` is zero.
    pub unchanged: bool,
    pub compile: Duration,
    /// Functions taken from the compile cache and compiled afresh (None: the cache is off).
    pub cache: Option<CacheUse>,
    /// Nothing was compiled: these bytes had been compiled before (another function or version
    /// runs them) and their artifact was reused.
    pub reused_artifact: bool,
}

pub struct FunctionService {
    runtime: Arc<Runtime>,
    stores: Stores,
    config: FunctionsConfig,
    snapshot: ArcSwap<Snapshot>,
    /// Deploy, rollback, delete and secret changes run one at a time, so route checks and
    /// snapshot swaps cannot interleave.
    changes: tokio::sync::Mutex<()>,
    recorder: Recorder,
    quotas: quota::QuotaGate,
    metrics: Arc<Metrics>,
    /// Which versions' code is resident, within the operator's budget.
    residency: Arc<Residency>,
    /// The node's instance slots, shared fairly between functions.
    gate: Arc<fair::NodeGate>,
    /// Versions taken out of the routes (replaced by a deploy, a rollback or new settings, or
    /// deleted) while invocations may still hold them: a project's deletion waits for these as
    /// well as for its current versions. Only this node's invocations hold them, which is all a
    /// deletion here can wait for. Pruned of the versions no invocation holds at each addition.
    retired: parking_lot::Mutex<Vec<std::sync::Weak<ActiveVersion>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FunctionService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FunctionService {
    /// Write every invocation record still queued (graceful shutdown, after the listener has
    /// stopped). Bounded: a store that stays down for [`SHUTDOWN_FLUSH`] loses what is queued,
    /// and says how much.
    pub async fn shutdown(&self) {
        let backlog = self.recorder.backlog();
        if tokio::time::timeout(SHUTDOWN_FLUSH, self.recorder.flush()).await.is_err() {
            tracing::error!(
                records = self.recorder.backlog(),
                "the store did not take the queued invocation records in time; they are lost"
            );
        } else if backlog > 0 {
            tracing::info!(records = backlog, "wrote the queued invocation records");
        }
    }

    /// Seed every project's quota counters from the store (start-up).
    async fn seed_quotas(&self) -> Result<()> {
        let usage = self.stores.usage.clone();
        let now = nimbus_model::now_millis();
        let seeds = blocking(move || {
            let month = nimbus_model::usage::month_of(now);
            let mut out = Vec::new();
            for (project, q) in usage.all_quotas()? {
                let used =
                    usage.usage_total(&project, month, nimbus_model::usage::next_month(now))?;
                out.push((project, q, used));
            }
            Ok(out)
        })
        .await?;
        for (project, q, used) in seeds {
            self.stores.storage_quota.set(&project, Some(&q));
            self.quotas.set(&project, Some(q), used, now);
        }
        Ok(())
    }

    /// A project's quotas, if it has any.
    pub async fn quotas(&self, project: &str) -> Result<Option<nimbus_model::usage::Quotas>> {
        let (usage, p) = (self.stores.usage.clone(), project.to_string());
        blocking(move || Ok(usage.quotas(&p)?)).await
    }

    /// Set (or remove) a project's quotas: stored, then the in-memory counters reseeded from the
    /// month's usage once every queued record is written (so the seed misses none).
    pub async fn set_quotas(
        &self,
        project: &str,
        quotas: Option<nimbus_model::usage::Quotas>,
    ) -> Result<()> {
        if let Some(q) = &quotas {
            q.validate().map_err(FunctionError::InvalidQuotas)?;
        }
        let (usage, p) = (self.stores.usage.clone(), project.to_string());
        blocking(move || Ok(usage.set_quotas(&p, quotas.as_ref())?)).await?;
        self.recorder.flush().await;
        let (usage, p) = (self.stores.usage.clone(), project.to_string());
        let now = nimbus_model::now_millis();
        let used = blocking(move || {
            Ok(usage.usage_total(
                &p,
                nimbus_model::usage::month_of(now),
                nimbus_model::usage::next_month(now),
            )?)
        })
        .await?;
        self.stores.storage_quota.set(project, quotas.as_ref());
        self.quotas.set(project, quotas, used, now);
        Ok(())
    }

    /// Write every queued invocation record (a project's deletion, before its usage history
    /// is retired: the last invocations' usage is counted under the project first).
    pub async fn flush_records(&self) {
        self.recorder.flush().await;
    }

    /// Drop a deleted project's quota counters and stored-bytes limit (its stored quotas are
    /// gone already), so a project created again under the slug is not limited by them.
    pub(crate) fn forget_quotas(&self, project: &str) {
        self.stores.storage_quota.set(project, None);
        self.quotas.set(project, None, Default::default(), nimbus_model::now_millis());
    }

    /// Records queued and not yet stored (for metrics and tests).
    pub fn record_backlog(&self) -> usize {
        self.recorder.backlog()
    }

    /// Start the service: route the active version of every function without loading its code
    /// (scale to zero: the first request loads it), except functions with `min_warm > 0` and
    /// versions whose artifact is missing (compiled now, not on a request); then start the record
    /// writer and pruner.
    pub async fn start(
        runtime: Arc<Runtime>,
        stores: Stores,
        config: FunctionsConfig,
    ) -> Result<Self> {
        std::fs::create_dir_all(&config.artifact_dir).map_err(|e| {
            FunctionError::Internal(format!("creating {}: {e}", config.artifact_dir.display()))
        })?;
        let recorder = Recorder::spawn(stores.invocations.clone())
            .map_err(|e| FunctionError::Internal(format!("starting the record writer: {e}")))?;
        let pruner = spawn_pruner(stores.invocations.clone(), &config);
        let thresholds = quota::spawn_threshold_checks(stores.storage_quota.clone());
        let metrics = Arc::new(Metrics::default());
        let residency = Residency::new(config.code_memory_budget, metrics.residency.clone());
        let gate = fair::NodeGate::new(
            runtime.config().max_instances,
            config.queue_timeout,
            metrics.node.clone(),
        );
        let service = FunctionService {
            runtime,
            stores,
            config,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changes: tokio::sync::Mutex::new(()),
            recorder,
            quotas: quota::QuotaGate::default(),
            metrics,
            residency,
            gate,
            retired: parking_lot::Mutex::new(Vec::new()),
            tasks: vec![pruner, thresholds],
        };
        let fs = service.stores.functions.clone();
        let active = blocking(move || fs.active_versions().map_err(FunctionError::from)).await?;
        let mut loaded = Snapshot::default();
        let (mut resident, total) = (0, active.len());
        for info in active {
            let k = key(&info.project, &info.function);
            // A missing artifact (deleted cache, engine upgrade) is compiled now rather than by
            // some unlucky first request.
            let load =
                info.limits.min_warm > 0 || !service.artifact_path(&info.module_sha256).exists();
            resident += usize::from(load);
            match service.prepare(info, load).await {
                Ok(v) => loaded.set(k, Some(v)),
                Err(e) => {
                    tracing::error!(project = %k.0, function = %k.1, error = %e, "could not load function")
                }
            }
        }
        tracing::info!(functions = loaded.functions.len(), of = total, resident, "functions ready");
        service.seed_quotas().await?;
        service.snapshot.store(Arc::new(loaded));
        {
            let _changes = service.changes.lock().await;
            service.collect_garbage().await;
        }
        Ok(service)
    }

    /// Delete stored modules that no version references any more, and compiled artifacts of
    /// such modules or of another engine build (an upgrade leaves those behind). Runs under the
    /// `changes` lock, so no deploy sits between storing its module and recording its version.
    /// Best effort: failures are logged, never returned to the change that triggered it.
    async fn collect_garbage(&self) {
        let (fs, blobs) = (self.stores.functions.clone(), self.stores.blobs.clone());
        let artifact_dir = self.config.artifact_dir.clone();
        let fingerprint = self.runtime.artifact_fingerprint();
        let swept = blocking(move || {
            let referenced = fs.module_shas()?;
            let mut modules = 0;
            for key in blobs.list("modules")? {
                let sha = key.strip_prefix("modules/").and_then(|k| k.strip_suffix(".wasm"));
                if sha.is_some_and(|sha| !referenced.contains(sha)) && blobs.delete(&key)? {
                    modules += 1;
                }
            }
            let mut artifacts = 0;
            let entries = std::fs::read_dir(&artifact_dir)
                .map_err(|e| FunctionError::Internal(format!("listing artifacts: {e}")))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some((sha, fp)) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".cwasm"))
                    .and_then(|n| n.split_once('-'))
                else {
                    continue;
                };
                // Unlinking a file that a loaded component still maps is safe: the mapping
                // keeps the inode alive.
                if (!referenced.contains(sha) || fp != fingerprint)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    artifacts += 1;
                }
            }
            Ok((modules, artifacts))
        })
        .await;
        match swept {
            Ok((0, 0)) => {}
            Ok((modules, artifacts)) => {
                tracing::info!(modules, artifacts, "removed unused modules and artifacts")
            }
            Err(e) => tracing::warn!(error = %e, "collecting unused modules and artifacts"),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Validate, compile and store a new version of `spec.name`, then move traffic to it.
    pub async fn deploy(&self, project: &str, spec: FunctionSpec, wasm: Bytes) -> Result<Deployed> {
        nimbus_model::validate_project(project)?;
        spec.validate()?;
        let limits = self.config.limits.resolve(&spec.limits)?;
        // Refuse a clashing route before spending seconds compiling; checked again under the lock.
        self.check_routes(project, &spec.name, &spec)?;

        // Compiling is pure and can take seconds for a big component: it runs outside the lock,
        // so one project's upload never holds up another's deploy, rollback or delete.
        let started = Instant::now();
        let sha = hex::encode(sha2::Sha256::digest(&wasm));
        let sha_time = started.elapsed();
        // Redeploying what is already active (the same bytes, spec and resolved limits) makes
        // no new version and compiles nothing: a version number then means a change.
        if let Some(active) = self.active_version(project, &spec.name).await?
            && active.module_sha256 == sha
            && active.spec == spec
            && active.limits == limits
        {
            let function = self.info(project, &spec.name).await?;
            tracing::info!(project, function = %spec.name, version = active.version, "deploy unchanged");
            return Ok(Deployed {
                function,
                version: active,
                unchanged: true,
                compile: Duration::ZERO,
                cache: None,
                reused_artifact: true,
            });
        }
        let size = wasm.len() as u64;
        let artifact = self.artifact_path(&sha);
        // These exact bytes were compiled (and validated) by this engine before, for another
        // function or version: the artifact is reused, and loading it below checks it.
        let compiled = if artifact.exists() {
            None
        } else {
            let (runtime, module) = (self.runtime.clone(), wasm.clone());
            let compiled =
                blocking(move || runtime.compile(&module).map_err(FunctionError::from)).await?;
            self.metrics.compiled(compiled.cache, self.runtime.compile_cache_stats());
            Some(compiled)
        };
        let (compile, cache) = match &compiled {
            Some(c) => (c.compile_time, c.cache),
            None => (Duration::ZERO, None),
        };

        let _changes = self.changes.lock().await;
        self.check_routes(project, &spec.name, &spec)?;
        let blobs = self.stores.blobs.clone();
        let key = module_key(&sha);
        let t = Instant::now();
        blocking(move || blobs.put(&key, &wasm).map_err(FunctionError::from)).await?;
        let blob_time = t.elapsed();
        let t = Instant::now();
        if let Some(compiled) = &compiled {
            write_atomic(&artifact, &compiled.artifact)?;
        }
        let artifact_time = t.elapsed();
        let phases = compiled.as_ref().map(|c| c.phases).unwrap_or_default();

        let t = Instant::now();
        let fs = self.stores.functions.clone();
        let (spec2, sha2, project2) = (spec.clone(), sha.clone(), project.to_string());
        let version = blocking(move || {
            fs.create_version(NewVersion {
                project: &project2,
                spec: &spec2,
                limits,
                module_sha256: &sha2,
                module_size: size,
            })
            .map_err(FunctionError::from)
        })
        .await?;
        let db_time = t.elapsed();
        let t = Instant::now();
        // Loaded now: the new version is resident for its first requests.
        let active = self.prepare(version.clone(), true).await?;
        let load_time = t.elapsed();
        self.swap_in(active);
        let function = self.info(project, &spec.name).await?;
        // Where a deploy's time goes (bench/deploy-cache.sh prints these; issue 13). Cache
        // times are summed over the compile's threads, so they can exceed `compile_ms`.
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let io = phases.cache_io.unwrap_or_default();
        tracing::debug!(
            project,
            function = %spec.name,
            module_bytes = size,
            sha_ms = ms(sha_time),
            compile_ms = ms(phases.compile),
            cache_read_ms = ms(io.read),
            cache_read_bytes = io.read_bytes,
            cache_write_ms = ms(io.write),
            link_ms = ms(phases.link),
            serialize_ms = ms(phases.serialize),
            artifact_bytes = phases.artifact_bytes,
            blob_put_ms = ms(blob_time),
            artifact_write_ms = ms(artifact_time),
            db_ms = ms(db_time),
            load_ms = ms(load_time),
            total_ms = ms(started.elapsed()),
            "deploy phases"
        );
        tracing::info!(project, function = %spec.name, version = version.version, compile_ms = compile.as_millis() as u64, cached_functions = cache.map(|c| c.hits), compiled_functions = cache.map(|c| c.misses), untranslated_functions = cache.map(|c| c.untranslated), "deployed");
        let reused_artifact = compiled.is_none();
        Ok(Deployed { function, version, unchanged: false, compile, cache, reused_artifact })
    }

    /// The active version of a function, if it exists.
    async fn active_version(&self, project: &str, name: &str) -> Result<Option<VersionInfo>> {
        let fs = self.stores.functions.clone();
        let (p, n) = (project.to_string(), name.to_string());
        blocking(move || {
            let Some(f) = fs.get_function(&p, &n)? else { return Ok(None) };
            Ok(fs.get_version(&p, &n, f.active_version)?)
        })
        .await
    }

    /// Move traffic to an earlier (or later) existing version, at once.
    pub async fn rollback(&self, project: &str, name: &str, version: u32) -> Result<FunctionInfo> {
        let _changes = self.changes.lock().await;
        let fs = self.stores.functions.clone();
        let (p, n) = (project.to_string(), name.to_string());
        let info = blocking(move || fs.get_version(&p, &n, version).map_err(FunctionError::from))
            .await?
            .ok_or_else(|| {
                FunctionError::NotFound(format!("version {version} of function {name}"))
            })?;
        self.check_routes(project, name, &info.spec)?;
        // Load before switching, so the switch itself cannot fail and no request sees a gap.
        let active = self.prepare(info, true).await?;
        let fs = self.stores.functions.clone();
        let (p, n) = (project.to_string(), name.to_string());
        blocking(move || fs.set_active_version(&p, &n, version).map_err(FunctionError::from))
            .await?;
        self.swap_in(active);
        tracing::info!(project, function = %name, version, "rolled back");
        self.info(project, name).await
    }

    pub async fn delete(&self, project: &str, name: &str) -> Result<()> {
        let _changes = self.changes.lock().await;
        let fs = self.stores.functions.clone();
        let (p, n) = (project.to_string(), name.to_string());
        if !blocking(move || fs.delete_function(&p, &n).map_err(FunctionError::from)).await? {
            return Err(FunctionError::NotFound(format!("function {name}")));
        }
        let current = self.snapshot.load_full();
        let k = key(project, name);
        self.retire(current.functions.get(&k));
        self.snapshot.store(Arc::new(current.with(k, None)));
        tracing::info!(project, function = %name, "deleted");
        self.collect_garbage().await;
        Ok(())
    }

    /// Delete every function of a project and its invocation records (the project is being
    /// deleted). Returns the names of the functions removed.
    pub async fn delete_project(&self, project: &str) -> Result<Vec<String>> {
        let _changes = self.changes.lock().await;
        let (fs, p) = (self.stores.functions.clone(), project.to_string());
        let names =
            blocking(move || fs.delete_project_functions(&p).map_err(FunctionError::from)).await?;
        let current = self.snapshot.load_full();
        let mut running: Vec<std::sync::Weak<ActiveVersion>> = current
            .functions
            .iter()
            .filter(|((p, _), _)| p == project)
            .map(|(_, v)| Arc::downgrade(v))
            .collect();
        // And the versions replaced earlier that invocations still run (a deploy during a long
        // invocation): theirs is usage of this project too.
        self.retired.lock().retain(|v| match v.upgrade() {
            Some(version) if version.info.project == project => {
                running.push(v.clone());
                false
            }
            Some(_) => true,
            None => false,
        });
        self.snapshot.store(Arc::new(current.without_project(project)));
        drop(current);
        if !names.is_empty() {
            self.collect_garbage().await;
        }
        wait_for_invocations(project, running).await;
        // Records of invocations that already finished may still sit in the writer's batch.
        self.recorder.flush().await;
        let (records, p) = (self.stores.invocations.clone(), project.to_string());
        let removed =
            blocking(move || records.delete_project(&p).map_err(FunctionError::from)).await?;
        tracing::info!(
            project,
            functions = names.len(),
            records = removed,
            "deleted project's functions"
        );
        Ok(names)
    }

    pub async fn set_secret(
        &self,
        project: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let mut probe = FunctionSpec { name: name.into(), ..Default::default() };
        probe.env.insert(key.into(), String::new());
        probe.validate()?;
        nimbus_model::validate_value(key, value)?;
        let _changes = self.changes.lock().await;
        let fs = self.stores.functions.clone();
        let (p, n, k, v) =
            (project.to_string(), name.to_string(), key.to_string(), value.to_string());
        blocking(move || {
            // Checked under the change lock, so two concurrent sets cannot both pass the count.
            let existing = fs.secrets(&p, &n)?;
            let max = nimbus_model::spec_bounds::MAX_SECRETS;
            if !existing.contains_key(&k) && existing.len() >= max {
                return Err(FunctionError::InvalidSpec(nimbus_model::SpecError::TooMany {
                    what: "secrets",
                    max,
                }));
            }
            fs.set_secret(&p, &n, &k, &v).map_err(FunctionError::from)
        })
        .await?;
        self.reload_params(project, name).await
    }

    pub async fn delete_secret(&self, project: &str, name: &str, key: &str) -> Result<()> {
        let _changes = self.changes.lock().await;
        let fs = self.stores.functions.clone();
        let (p, n, k) = (project.to_string(), name.to_string(), key.to_string());
        if !blocking(move || fs.delete_secret(&p, &n, &k).map_err(FunctionError::from)).await? {
            return Err(FunctionError::NotFound(format!("secret {key} of function {name}")));
        }
        self.reload_params(project, name).await
    }

    pub async fn info(&self, project: &str, name: &str) -> Result<FunctionInfo> {
        let fs = self.stores.functions.clone();
        let (p, n) = (project.to_string(), name.to_string());
        blocking(move || fs.get_function(&p, &n).map_err(FunctionError::from))
            .await?
            .ok_or_else(|| FunctionError::NotFound(format!("function {name}")))
    }

    pub async fn list(&self, project: &str) -> Result<Vec<FunctionInfo>> {
        let fs = self.stores.functions.clone();
        let p = project.to_string();
        blocking(move || fs.list_functions(&p).map_err(FunctionError::from)).await
    }

    pub async fn versions(&self, project: &str, name: &str) -> Result<Vec<VersionInfo>> {
        let fs = self.stores.functions.clone();
        let (p, n) = (project.to_string(), name.to_string());
        blocking(move || fs.list_versions(&p, &n).map_err(FunctionError::from)).await
    }

    pub async fn invocations(
        &self,
        project: &str,
        query: InvocationQuery,
    ) -> Result<Vec<InvocationRecord>> {
        let is = self.stores.invocations.clone();
        let p = project.to_string();
        blocking(move || is.query(&p, &query).map_err(FunctionError::from)).await
    }

    /// Every invocation record, as soon as it is stored.
    pub fn follow(&self) -> broadcast::Receiver<Arc<InvocationRecord>> {
        self.recorder.follow()
    }

    /// The function of `project` answering `method` on `path`.
    pub fn route(&self, project: &str, method: &str, path: &str) -> RouteMatch<ActiveVersion> {
        match self.snapshot.load().routes.get(project) {
            Some(table) => table.lookup(method, path),
            None if nimbus_model::normalize_path(path).is_none() => RouteMatch::BadPath,
            None => RouteMatch::NotFound,
        }
    }

    /// The active version of a function, by project and name.
    pub fn active(&self, project: &str, name: &str) -> Option<Arc<ActiveVersion>> {
        self.snapshot.load().functions.get(&key(project, name)).cloned()
    }

    /// The active versions of `project` that have event triggers.
    pub fn triggered(&self, project: &str) -> Vec<Arc<ActiveVersion>> {
        let snapshot = self.snapshot.load();
        snapshot.triggered.get(project).map(|fs| fs.values().cloned().collect()).unwrap_or_default()
    }

    /// Every active version with event triggers, in every project (the scheduler's view).
    pub fn all_triggered(&self) -> Vec<Arc<ActiveVersion>> {
        self.snapshot.load().triggered.values().flat_map(|fs| fs.values().cloned()).collect()
    }

    /// Refuse routes that another function of the project already claims: the same pattern
    /// with methods in common. One lookup per route in the project's table, however many
    /// functions the node holds.
    fn check_routes(&self, project: &str, name: &str, spec: &FunctionSpec) -> Result<()> {
        let snapshot = self.snapshot.load();
        let Some(table) = snapshot.routes.get(project) else { return Ok(()) };
        for route in &spec.routes {
            let Ok(pattern) = route.parse() else { continue };
            let owner = table
                .claims(&pattern)
                .iter()
                .find(|e| e.target.info.function != name && claims_overlap(route, &e.spec));
            if let Some(owner) = owner {
                return Err(FunctionError::RouteConflict {
                    route: route.path.clone(),
                    owner: owner.target.info.function.clone(),
                });
            }
        }
        Ok(())
    }

    fn swap_in(&self, active: Arc<ActiveVersion>) {
        let key = key(&active.info.project, &active.info.function);
        let current = self.snapshot.load_full();
        self.retire(current.functions.get(&key));
        self.snapshot.store(Arc::new(current.with(key, Some(active))));
    }

    /// Note a version leaving the routes, for a later deletion of its project to wait for.
    fn retire(&self, old: Option<&Arc<ActiveVersion>>) {
        let mut retired = self.retired.lock();
        retired.retain(|v| v.strong_count() > 0);
        retired.extend(old.map(Arc::downgrade));
    }

    async fn reload_params(&self, project: &str, name: &str) -> Result<()> {
        if let Some(current) = self.active(project, name) {
            // Same version: its code slot (resident or not) carries over.
            let active = self.prepare(current.info.clone(), false).await?;
            self.swap_in(active);
        }
        Ok(())
    }

    /// Resolve a version's invocation parameters and give it a code slot: the current active
    /// version's if it has the same module (a secret change), else a new one, loaded now if
    /// `load` (a deploy or rollback, or a pinned function) and on first use otherwise.
    async fn prepare(&self, info: VersionInfo, load: bool) -> Result<Arc<ActiveVersion>> {
        let pinned = info.limits.min_warm > 0;
        let current = self.active(&info.project, &info.function);
        let code = match &current {
            Some(c) if c.code.sha == info.module_sha256 && c.code.pinned == pinned => {
                c.code.clone()
            }
            _ => self.residency.slot(&info.module_sha256, pinned),
        };
        if load || pinned {
            self.load_code(&code).await?;
        }
        let fs = self.stores.functions.clone();
        let (project, name) = (info.project.clone(), info.function.clone());
        let secrets =
            blocking(move || fs.secrets(&project, &name).map_err(FunctionError::from)).await?;
        let mut env: Vec<(String, String)> = info.spec.env.clone().into_iter().collect();
        // Secrets win over plain env vars of the same name.
        env.retain(|(k, _)| !secrets.contains_key(k));
        env.extend(secrets);
        let params = InvocationParams {
            project: info.project.as_str().into(),
            function: info.function.as_str().into(),
            config: env.iter().cloned().collect(),
            env: env.into(),
            timeout: Duration::from_millis(info.limits.timeout_ms),
            memory_bytes: info.limits.memory_bytes,
            outbound: Arc::new(OutboundPolicy::new(info.spec.outbound_hosts.clone())),
        };
        let (max_concurrency, max_queue) = (info.limits.max_concurrency, info.limits.max_queue);
        // Versions of one function share its slots while the limits stay the same: in-flight
        // requests of the old version still count against the new one. (The queue timeout is
        // the service's, the same for every version.)
        let metrics = self.metrics.function(&info.project, &info.function);
        let admission = match current {
            Some(current)
                if current.info.limits.max_concurrency == max_concurrency
                    && current.info.limits.max_queue == max_queue =>
            {
                current.admission.clone()
            }
            _ => Arc::new(Admission::new(
                max_concurrency,
                max_queue,
                self.config.queue_timeout,
                metrics.queued.clone(),
            )),
        };
        let node_metrics = self.metrics.clone();
        Ok(Arc::new(ActiveVersion { info, code, params, admission, metrics, node_metrics }))
    }

    /// The slot's code, loading it (once, however many callers ask at the same time) if it is
    /// not resident. The flag says whether this call loaded it.
    async fn load_code(&self, slot: &CodeSlot) -> Result<(Arc<LoadedComponent>, bool)> {
        slot.get_or_load(|| async {
            let start = Instant::now();
            let loaded = self.load_component(&slot.sha).await?;
            self.metrics.component_load.observe(start.elapsed().as_secs_f64());
            Ok::<_, FunctionError>(loaded)
        })
        .await
    }

    /// Load a module's artifact (memory-mapped), compiling it from the stored module if the
    /// artifact is missing or this engine cannot load it. Returns it with the artifact's size.
    async fn load_component(&self, sha: &str) -> Result<(LoadedComponent, u64)> {
        let path = self.artifact_path(sha);
        let runtime = self.runtime.clone();
        let p = path.clone();
        if path.exists() {
            let loaded = blocking(move || {
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                Ok(runtime.load_file(&p).map(|c| (c, size)))
            });
            match loaded.await? {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(error = %e, "cached artifact unusable; recompiling"),
            }
        }
        let blobs = self.stores.blobs.clone();
        let key = module_key(sha);
        let wasm = blocking(move || blobs.get(&key).map_err(FunctionError::from))
            .await?
            .ok_or_else(|| FunctionError::Internal(format!("stored module {sha} is missing")))?;
        let runtime = self.runtime.clone();
        let compiled =
            blocking(move || runtime.compile(&wasm).map_err(FunctionError::from)).await?;
        self.metrics.compiled(compiled.cache, self.runtime.compile_cache_stats());
        write_atomic(&path, &compiled.artifact)?;
        let size = compiled.artifact.len() as u64;
        let runtime = self.runtime.clone();
        blocking(move || {
            let c = runtime.load_file(&path).map_err(|e| FunctionError::Internal(e.to_string()))?;
            Ok((c, size))
        })
        .await
    }

    fn artifact_path(&self, sha: &str) -> PathBuf {
        self.config
            .artifact_dir
            .join(format!("{sha}-{}.cwasm", self.runtime.artifact_fingerprint()))
    }
}

fn module_key(sha: &str) -> String {
    format!("modules/{sha}.wasm")
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let err =
        |e: std::io::Error| FunctionError::Internal(format!("writing {}: {e}", path.display()));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FunctionError::Internal(format!("blocking task failed: {e}")))?
}

fn spawn_pruner(
    store: Arc<dyn InvocationStore>,
    config: &FunctionsConfig,
) -> tokio::task::JoinHandle<()> {
    let retention = config.log_retention;
    let keep = config.log_keep_per_function;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            let store = store.clone();
            let before = now_millis() - retention.as_millis() as i64;
            match tokio::task::spawn_blocking(move || store.prune(before, keep)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "pruned invocation records"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning invocation records"),
                Err(e) => tracing::warn!(error = %e, "pruning task failed"),
            }
        }
    })
}

/// How long a deletion waits, beyond its functions' own timeout and queue timeout, for the
/// invocations under way to end.
const DELETION_GRACE: Duration = Duration::from_secs(5);

/// Wait until no invocation of `versions` (taken out of the routes, so none starts anew) is
/// queued or running and each one's record is queued: every running invocation holds its
/// version until its record reaches the recorder's thread. A deletion then counts their usage
/// under the project before its usage history is retired; without the wait, one that ended
/// after that was counted under the slug, and so against a project created again under it.
/// Bounded by the longest timeout among them.
async fn wait_for_invocations(project: &str, versions: Vec<std::sync::Weak<ActiveVersion>>) {
    let longest = versions
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .map(|v| Duration::from_millis(v.info.limits.timeout_ms) + v.admission.queue_timeout())
        .max()
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + longest + DELETION_GRACE;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let running = versions.iter().filter(|v| v.strong_count() > 0).count();
        if running == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                project,
                running,
                "deleting a project: invocations still held its functions past their timeout; \
                 their usage may be counted under the slug"
            );
            return;
        }
        poll.tick().await;
    }
}

/// Functions go first in a project's deletion: its routes stop answering and nothing new of it
/// runs; its invocation records go with them.
impl nimbus_model::lifecycle::ProjectLifecycle for FunctionService {
    fn part(&self) -> &'static str {
        "functions"
    }

    fn delete_project_data<'a>(
        &'a self,
        project: &'a str,
    ) -> nimbus_model::lifecycle::PartFuture<'a> {
        Box::pin(async move { Ok(self.delete_project(project).await.map(drop)?) })
    }
}
