//! The function runtime: everything Nimbus does with Wasmtime.
//!
//! - [`Runtime::compile`] validates an upload (a `wasi:http/proxy` component whose imports Nimbus
//!   provides) and compiles it once with Cranelift into a serialized artifact, reusing the
//!   functions an earlier compile already produced (the compile cache, [`CompileCacheConfig`]);
//! - [`Runtime::load`] deserializes such an artifact (no recompilation after a restart) and
//!   pre-instantiates it into a [`LoadedComponent`];
//! - [`Runtime::invoke`] runs one HTTP request in a fresh instance, with the function's limits, and
//!   reports how it went as an [`Outcome`].
//!
//! Architecture invariant: this is the only crate that imports `wasmtime`. Nothing in guest memory
//! survives an invocation: every request gets a new `Store` and a new instance.

mod compile_cache;
mod engine;
mod host;
mod in_process;
mod invoke;
mod keyvalue;
mod net;
mod validate;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use compile_cache::{CacheIo, CacheUse, CompileCacheConfig, CompileCacheStats};
pub use host::OutboundPolicy;
pub use in_process::{
    IN_PROCESS_AUTHORITY, InProcessApi, InProcessBody, InProcessCaller, PROJECT_ENV, TOKEN_ENV,
    URL_ENV,
};
pub use invoke::{
    BodyError, ConfigVars, GuestBody, Invocation, InvocationParams, Outcome, OutcomeStatus,
};
pub use ipnet::IpNet;
pub use keyvalue::{KeyValueHost, KvHostError};
pub use net::{NetPolicy, internal_range};
pub use validate::DeployError;

use compile_cache::{CompileScope, DiskCache};
use host::HostState;

/// Operator settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances that may exist at once across all functions (the pooling allocator's size).
    pub max_instances: u32,
    /// The ceiling on any one instance's linear memory, in bytes.
    pub max_memory_bytes: u64,
    /// Granularity of wall-clock timeouts.
    pub epoch_tick: Duration,
    /// Bytes of stdout + stderr kept per invocation; the rest is dropped and marked truncated.
    pub log_bytes_per_invocation: usize,
    /// Threads of the guest pool: the tokio runtime that runs every guest, apart from the
    /// workers that serve I/O, so guests cannot occupy those. 0 means one per core.
    pub guest_threads: usize,
    /// Networks guests may reach although they are internal (loopback, private, link-local,
    /// metadata...: denied by default, whatever a function's allow-list says).
    pub outbound_allow_nets: Vec<IpNet>,
    /// Cranelift's compiled functions kept on disk by content, so that recompiling a component
    /// that shares most of its code with an earlier one (an edited JavaScript or Python function:
    /// the same language engine) compiles only what changed. None: no cache.
    pub compile_cache: Option<CompileCacheConfig>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 1000,
            max_memory_bytes: 512 << 20,
            epoch_tick: Duration::from_millis(10),
            log_bytes_per_invocation: 64 << 10,
            guest_threads: 0,
            outbound_allow_nets: Vec::new(),
            compile_cache: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("configuring the Wasmtime engine: {0}")]
    Engine(String),
    #[error("loading compiled artifact {path}: {reason}")]
    Artifact { path: String, reason: String },
    #[error("starting the guest thread pool: {0}")]
    GuestPool(std::io::Error),
    #[error("opening the compile cache {path}: {source}")]
    CompileCache { path: String, source: std::io::Error },
}

/// The engine, the linker with every host interface Nimbus offers, the epoch ticker, and the
/// guest pool.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    ticker_stop: Arc<AtomicBool>,
    guests: GuestPool,
    net: Arc<NetPolicy>,
    /// What `wasi:keyvalue` calls reach; without one, `open` answers `no-such-store`.
    kv: Option<Arc<dyn KeyValueHost>>,
    /// Where requests to `http://nimbus.internal` go; without one they are ordinary outbound
    /// requests (and the allow-list denies them).
    in_process: Option<Arc<dyn InProcessApi>>,
    compile_cache: Option<Arc<DiskCache>>,
}

/// The tokio runtime guests run on (`nimbus-guest` threads). A guest yields at every epoch tick,
/// which lets other guests on this pool take turns; keeping the pool apart from the caller's
/// runtime means that even guests that fill it never hold a worker that serves I/O (`/healthz`,
/// the API) for longer than one fuel slice: a guest starts on its caller's task and moves here
/// the first time it would wait (see `Runtime::invoke`). Response bodies and heads of guests that
/// moved cross the two runtimes through channels.
struct GuestPool(Option<tokio::runtime::Runtime>);

impl GuestPool {
    fn new(threads: usize) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("nimbus-guest")
            .enable_all()
            .build()?;
        Ok(GuestPool(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("the guest pool lives as long as the Runtime").handle()
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        // Dropping a tokio runtime blocks, which panics inside another runtime (tests, and the
        // server's shutdown); guests still running are abandoned, as at process exit.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A compiled, validated component ready to serialize.
pub struct Compiled {
    /// The serialized artifact (`Component::serialize`): store it and pass it to [`Runtime::load`].
    pub artifact: Vec<u8>,
    pub compile_time: Duration,
    /// Functions this compile took from the compile cache and compiled afresh (None: no cache).
    pub cache: Option<CacheUse>,
    /// Where `compile_time` went.
    pub phases: CompilePhases,
}

/// The parts of [`Runtime::compile`], for the deploy's breakdown (logged at debug level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompilePhases {
    /// `Component::new`: parsing, validating and translating the component, and compiling
    /// every function (through the cache when it is on).
    pub compile: Duration,
    /// Time inside the compile cache, summed over the compile's threads (part of `compile`).
    pub cache_io: Option<CacheIo>,
    /// Checking the imports and the export against the linker (pre-instantiation).
    pub link: Duration,
    /// `Component::serialize`: the artifact's bytes.
    pub serialize: Duration,
    pub artifact_bytes: u64,
}

/// A deployed version, pre-instantiated: instantiating it for a request is just allocation and
/// copy-on-write mapping. Cheap to clone.
#[derive(Clone)]
pub struct LoadedComponent {
    pre: ProxyPre<HostState>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let compile_cache = match &config.compile_cache {
            Some(c) => Some(Arc::new(DiskCache::open(c).map_err(|source| {
                RuntimeError::CompileCache { path: c.dir.display().to_string(), source }
            })?)),
            None => None,
        };
        let engine = engine::build(&config, compile_cache.clone())
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        // What `wasmtime serve -S cli` gives a guest: wasi:http plus wasi:cli, clocks, random, io
        // (and sockets/filesystem interfaces, which are linked but have nothing to reach: no
        // preopens, no network permission).
        // Plus `wasi:config/store` (as `wasmtime serve -S config` offers), serving the function's
        // env vars and secrets. Plus `wasi:keyvalue` (store, atomics, batch) over the project's
        // KV store, once `with_key_value` gives one.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .and_then(|()| {
                wasmtime_wasi_config::add_to_linker(&mut linker, |h: &mut HostState| {
                    wasmtime_wasi_config::WasiConfig::from(&*h.config)
                })
            })
            .and_then(|()| keyvalue::add_to_linker(&mut linker))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let guests = GuestPool::new(config.guest_threads).map_err(RuntimeError::GuestPool)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(&engine, config.epoch_tick, ticker_stop.clone());
        let net = Arc::new(NetPolicy::new(config.outbound_allow_nets.clone()));
        Ok(Runtime {
            engine,
            linker,
            config,
            ticker_stop,
            guests,
            net,
            kv: None,
            in_process: None,
            compile_cache,
        })
    }

    /// Serve `wasi:keyvalue` from `host` (scoped per invocation to its project).
    pub fn with_key_value(mut self, host: Arc<dyn KeyValueHost>) -> Self {
        self.kv = Some(host);
        self
    }

    /// Serve the in-process API (`http://nimbus.internal`, see [`InProcessApi`]) from `api`.
    pub fn with_in_process_api(mut self, api: Arc<dyn InProcessApi>) -> Self {
        self.in_process = Some(api);
        self
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The compile cache's counters and size, if it is on.
    pub fn compile_cache_stats(&self) -> Option<CompileCacheStats> {
        self.compile_cache.as_ref().map(|c| c.stats())
    }

    /// A string that changes whenever an artifact compiled by this engine could no longer be loaded
    /// by it (another Wasmtime version or engine setting): part of artifact cache keys.
    pub fn artifact_fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Validate an uploaded component and compile it. Errors name the problem for the developer.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, DeployError> {
        let start = Instant::now();
        validate::check_header(wasm)?;
        let mut phases = CompilePhases::default();
        let (component, cache) = if self.compile_cache.is_some() {
            let scope = Arc::new(CompileScope::default());
            let component = self.compile_in_scope(wasm, scope.clone())?;
            phases.cache_io = Some(scope.io());
            (component, Some(scope.usage()))
        } else {
            (self.new_component(wasm)?, None)
        };
        phases.compile = start.elapsed();
        // Pre-instantiating checks that every import is one Nimbus provides, then the export.
        let t = Instant::now();
        self.pre_instantiate(&component)?;
        phases.link = t.elapsed();
        let t = Instant::now();
        let artifact = component.serialize().map_err(|e| {
            DeployError::Internal(format!("serializing the compiled component: {e:#}"))
        })?;
        phases.serialize = t.elapsed();
        phases.artifact_bytes = artifact.len() as u64;
        Ok(Compiled { artifact, compile_time: start.elapsed(), cache, phases })
    }

    fn new_component(&self, wasm: &[u8]) -> Result<Component, DeployError> {
        Component::new(&self.engine, wasm).map_err(|e| DeployError::Invalid(format!("{e:#}")))
    }

    /// Compile on a rayon pool of this compile's own (Wasmtime compiles functions in parallel on
    /// the current rayon pool), whose threads count their cache lookups in `scope`: the cache is
    /// engine-wide and deploys compile concurrently, so this is what makes the per-deploy figures
    /// exact without serializing compiles. Threads are cheap next to a compile.
    fn compile_in_scope(
        &self,
        wasm: &[u8],
        scope: Arc<CompileScope>,
    ) -> Result<Component, DeployError> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("nimbus-compile-{i}"))
            .start_handler(move |_| compile_cache::enter_scope(scope.clone()))
            .build()
            .map_err(|e| DeployError::Internal(format!("starting compile threads: {e}")))?;
        pool.install(|| self.new_component(wasm))
    }

    /// Load an artifact written by [`Runtime::compile`] from a file (memory-mapped, not recompiled).
    pub fn load_file(&self, path: &Path) -> Result<LoadedComponent, RuntimeError> {
        let err =
            |reason: String| RuntimeError::Artifact { path: path.display().to_string(), reason };
        // Refuse anything that is not an artifact this engine wrote, before the unsafe load.
        match Engine::detect_precompiled_file(path) {
            Ok(Some(wasmtime::Precompiled::Component)) => {}
            Ok(_) => return Err(err("not a precompiled component".into())),
            Err(e) => return Err(err(format!("{e:#}"))),
        }
        // SAFETY: Nimbus only loads artifacts it serialized itself into its own data directory,
        // under a key that includes `artifact_fingerprint`, so the engine configuration matches.
        let component = unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| err(format!("{e:#}")))?;
        let pre = self.pre_instantiate(&component).map_err(|e| err(e.to_string()))?;
        Ok(LoadedComponent { pre })
    }

    fn pre_instantiate(&self, component: &Component) -> Result<ProxyPre<HostState>, DeployError> {
        let instance_pre =
            self.linker.instantiate_pre(component).map_err(validate::explain_link_error)?;
        validate::check_exports(&self.engine, component)?;
        ProxyPre::new(instance_pre).map_err(|e| DeployError::NoHandler(format!("{e:#}")))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Epochs are how a guest spinning in wasm gives its thread back: one thread bumps the engine's
/// epoch every tick, and at each tick every running store yields (or traps once its wall-clock
/// deadline has passed).
fn spawn_epoch_ticker(engine: &Engine, tick: Duration, stop: Arc<AtomicBool>) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("nimbus-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch thread at start-up");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(cache: &std::path::Path) -> Runtime {
        Runtime::new(RuntimeConfig {
            max_instances: 4,
            guest_threads: 1,
            compile_cache: Some(CompileCacheConfig {
                dir: cache.to_path_buf(),
                max_bytes: 1 << 30,
            }),
            ..RuntimeConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_second_compile_of_the_same_code_takes_its_functions_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
        let rt = runtime(dir.path());
        let first = rt.compile(&wasm).unwrap();
        let c1 = first.cache.unwrap();
        let total = c1.hits + c1.misses;
        assert!(c1.misses > 0);
        assert_eq!(c1.untranslated, 0);
        for _ in 0..3 {
            let compiled = rt.compile(&wasm).unwrap();
            let c = compiled.cache.unwrap();
            // Every function is found: the Wasm functions before translation (their bodies and
            // module are the same), the trampolines by their IR (before the patch in
            // vendor/wasmtime-internal-cranelift, 15-40 of these 355 missed on every compile).
            assert_eq!((c.hits, c.misses), (total, 0));
            assert!(c.untranslated > 0 && c.untranslated < total, "{c:?}");
            // What the cache gives is what a compile gives, byte for byte.
            assert!(compiled.artifact == first.artifact);
            let io = compiled.phases.cache_io.unwrap();
            assert!(io.read_bytes > 0 && io.read > Duration::ZERO, "{io:?}");
            assert_eq!(compiled.phases.artifact_bytes, compiled.artifact.len() as u64);
        }
        // A new process (a restart) with a fresh cache instance finds them too: the cache is on
        // disk, and the keys do not depend on what the process compiled before.
        drop(rt);
        let rt = runtime(dir.path());
        let c = rt.compile(&wasm).unwrap().cache.unwrap();
        assert_eq!((c.hits, c.misses), (total, 0));
        let s = rt.compile_cache_stats().unwrap();
        assert_eq!((s.hits, s.misses, s.untranslated), (c.hits, c.misses, c.untranslated));
    }

    /// A component of two core modules: the first holds data only (like a language engine's
    /// snapshot), the second code that traps (so its artifact maps code to Wasm offsets).
    fn two_modules(data_len: usize, global: i32) -> Vec<u8> {
        let data = "x".repeat(data_len);
        wat::parse_str(format!(
            r#"(component
                (core module $snapshot
                    (memory (export "m") 1)
                    (data (i32.const 0) "{data}")
                    (func (export "f") (result i32) i32.const 1))
                (core module $code
                    (memory 1)
                    (global $g (mut i32) (i32.const {global}))
                    (data (i32.const 16) "hello")
                    (func $triple (param i32) (result i32)
                        local.get 0 i32.const 3 i32.mul global.get $g i32.add)
                    (func $load (export "load") (param i32) (result i32)
                        local.get 0 call $triple i32.load)
                    (func (export "trap") unreachable))
                (core instance (instantiate $snapshot))
                (core instance (instantiate $code)))"#
        ))
        .unwrap()
    }

    /// Compile without the deploy's checks (these components export nothing): the artifact and
    /// the compile's use of the cache.
    fn compile_raw(rt: &Runtime, wasm: &[u8]) -> (Vec<u8>, CacheUse) {
        let scope = Arc::new(CompileScope::default());
        let component = rt.compile_in_scope(wasm, scope.clone()).unwrap();
        (component.serialize().unwrap(), scope.usage())
    }

    #[test]
    fn a_change_of_data_only_translates_no_function_and_gives_the_same_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let (_, first) = compile_raw(&rt, &two_modules(10, 0));
        assert_eq!(first.untranslated, 0);
        // More data in the first module moves the second one within the component: its
        // functions are taken whole, and their source locations moved.
        let edited = two_modules(300, 0);
        let (artifact, c) = compile_raw(&rt, &edited);
        assert_eq!(c.misses, 0, "{c:?}");
        assert_eq!(c.untranslated, 4, "{c:?}");
        let fresh_dir = tempfile::tempdir().unwrap();
        let (fresh, f) = compile_raw(&runtime(fresh_dir.path()), &edited);
        assert_eq!(f.untranslated, 0);
        assert!(artifact == fresh, "the artifact differs from a fresh compile's");
    }

    #[test]
    fn a_changed_module_context_is_translated_and_its_functions_found_by_their_code() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        compile_raw(&rt, &two_modules(10, 0));
        // A global's initial value is part of the second module's context: its three functions
        // are translated again (and found by their IR, which did not change); the first
        // module's function is still taken whole.
        let edited = two_modules(10, 7);
        let (artifact, c) = compile_raw(&rt, &edited);
        assert_eq!(c.misses, 0, "{c:?}");
        assert_eq!(c.untranslated, 1, "{c:?}");
        let fresh_dir = tempfile::tempdir().unwrap();
        let (fresh, _) = compile_raw(&runtime(fresh_dir.path()), &edited);
        assert!(artifact == fresh, "the artifact differs from a fresh compile's");
    }

    #[test]
    fn a_fresh_cache_instance_finds_every_function_after_other_compiles() {
        // Compile other components first, so that the engine's reused compiler contexts last
        // held other functions and trampolines when HELLO is compiled again.
        let dir = tempfile::tempdir().unwrap();
        let hello = std::fs::read(test_programs_artifacts::HELLO).unwrap();
        let rt = runtime(dir.path());
        let first = rt.compile(&hello).unwrap().cache.unwrap();
        drop(rt);
        let rt = runtime(dir.path());
        for other in [test_programs_artifacts::ECHO, test_programs_artifacts::HELLO] {
            rt.compile(&std::fs::read(other).unwrap()).unwrap();
        }
        let c = rt.compile(&hello).unwrap().cache.unwrap();
        assert_eq!((c.hits, c.misses), (first.hits + first.misses, 0));
    }

    #[test]
    fn without_a_cache_there_is_no_report() {
        let rt = Runtime::new(RuntimeConfig {
            max_instances: 4,
            guest_threads: 1,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
        assert!(rt.compile(&wasm).unwrap().cache.is_none());
        assert!(rt.compile_cache_stats().is_none());
    }
}
