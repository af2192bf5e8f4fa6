//! Prometheus metrics of the functions service. The server renders [`Metrics::registry`] at
//! `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub project: String,
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheResultLabel {
    /// `hit` (taken from the compile cache) or `miss` (compiled).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub project: String,
    pub function: String,
    pub status: String,
}

type HistogramFamily = Family<FunctionLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub invocations: Family<StatusLabels, Counter>,
    pub errors: Family<FunctionLabel, Counter>,
    pub duration: HistogramFamily,
    pub queue_wait: HistogramFamily,
    pub rejections: Family<FunctionLabel, Counter>,
    pub cold_starts: Family<FunctionLabel, Counter>,
    pub instances_in_use: Family<FunctionLabel, Gauge>,
    pub instantiation: Histogram,
    pub component_load: Histogram,
    pub compiles: Counter,
    pub compile_cache_functions: Family<CacheResultLabel, Counter>,
    pub compile_cache_bytes: Gauge,
    pub cold_start: Histogram,
    pub queue_length: Family<FunctionLabel, Gauge>,
    pub(crate) residency: crate::residency::ResidencyMetrics,
    pub(crate) node: crate::fair::GateMetrics,
    pub registry: Registry,
}

impl Metrics {
    /// Count one compile's use of the compile cache.
    pub(crate) fn compiled(
        &self,
        cache: Option<nimbus_runtime::CacheUse>,
        stats: Option<nimbus_runtime::CompileCacheStats>,
    ) {
        self.compiles.inc();
        if let Some(s) = stats {
            self.compile_cache_bytes.set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        }
        if let Some(c) = cache {
            let label = |r: &str| CacheResultLabel { result: r.to_string() };
            self.compile_cache_functions.get_or_create(&label("hit")).inc_by(c.hits);
            self.compile_cache_functions.get_or_create(&label("miss")).inc_by(c.misses);
        }
    }
}

fn latency_histogram() -> Histogram {
    // 50 us .. ~100 s
    Histogram::new(exponential_buckets(0.000_05, 2.5, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let invocations = Family::<StatusLabels, Counter>::default();
        let errors = Family::<FunctionLabel, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let queue_wait: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let rejections = Family::<FunctionLabel, Counter>::default();
        let cold_starts = Family::<FunctionLabel, Counter>::default();
        let instances_in_use = Family::<FunctionLabel, Gauge>::default();
        // 1 us .. ~1 s
        let instantiation = Histogram::new(exponential_buckets(0.000_001, 2.0, 21));
        let component_load = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));

        let compiles = Counter::default();
        let compile_cache_functions = Family::<CacheResultLabel, Counter>::default();
        let compile_cache_bytes = Gauge::default();
        // 100 us .. ~13 s
        let cold_start = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        let queue_length = Family::<FunctionLabel, Gauge>::default();
        let residency = crate::residency::ResidencyMetrics::default();
        let node = crate::fair::GateMetrics::default();
        let mut registry = Registry::with_prefix("nimbus");
        registry.register(
            "invocations",
            "Invocations by function and outcome (ok, trap, timeout, memory_limit, rejected, error)",
            invocations.clone(),
        );
        registry.register(
            "function_errors",
            "Invocations that did not end ok, or answered with a 5xx status",
            errors.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Wall time of an invocation, admission to end of response body",
            duration.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time requests waited for a free instance slot",
            queue_wait.clone(),
        );
        registry.register(
            "queue_rejections",
            "Requests refused because the function's queue was full or timed out",
            rejections.clone(),
        );
        registry.register(
            "cold_starts",
            "Invocations that had to load their function's code first (first request after a \
             start, or after the code was evicted)",
            cold_starts.clone(),
        );
        registry.register(
            "instances_in_use",
            "Instances currently running, per function",
            instances_in_use.clone(),
        );
        registry.register(
            "instantiation_seconds",
            "Time to instantiate a pre-instantiated component for one request",
            instantiation.clone(),
        );
        registry.register(
            "component_load_seconds",
            "Time to load a compiled component (deserialize + pre-instantiate)",
            component_load.clone(),
        );
        registry.register(
            "component_compiles",
            "Components compiled with Cranelift (deploys, and artifacts this engine could not load)",
            compiles.clone(),
        );
        registry.register(
            "compile_cache_functions",
            "Functions of compiled components taken from the compile cache (hit) or compiled (miss)",
            compile_cache_functions.clone(),
        );
        registry.register(
            "compile_cache_bytes",
            "Size of the compile cache on disk (bounded by serve --compile-cache-size)",
            compile_cache_bytes.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Time a request spent loading its function's code (memory-map + pre-instantiate)",
            cold_start.clone(),
        );
        registry.register(
            "queue_length",
            "Requests waiting for a slot, per function (its own limit or the node's fair share)",
            queue_length.clone(),
        );
        registry.register(
            "resident_functions",
            "Function versions whose compiled code is loaded (the rest are scaled to zero)",
            residency.resident_functions.clone(),
        );
        registry.register(
            "resident_code_bytes",
            "Bytes of compiled code resident (artifact sizes), bounded by serve --code-memory-budget",
            residency.resident_bytes.clone(),
        );
        registry.register(
            "code_evictions",
            "Function versions whose code was evicted, least recently used, beyond the budget",
            residency.evictions.clone(),
        );
        registry.register(
            "node_instances_in_use",
            "Instance slots of the node in use, all functions together",
            node.in_use.clone(),
        );
        registry.register(
            "node_queue_length",
            "Requests waiting for a slot of the node (it is full or their function is at its share)",
            node.queued.clone(),
        );
        Metrics {
            cold_start,
            queue_length,
            residency,
            node,
            invocations,
            errors,
            duration,
            queue_wait,
            rejections,
            cold_starts,
            instances_in_use,
            instantiation,
            component_load,
            compiles,
            compile_cache_functions,
            compile_cache_bytes,
            registry,
        }
    }
}

/// One function version's metric handles, looked up once when the version is loaded so the
/// request path does no label hashing.
#[derive(Clone)]
pub(crate) struct FunctionMetrics {
    pub(crate) ok: Counter,
    pub(crate) errors: Counter,
    pub(crate) duration: Histogram,
    pub(crate) queue_wait: Histogram,
    pub(crate) rejections: Counter,
    pub(crate) cold_starts: Counter,
    pub(crate) in_use: Gauge,
    pub(crate) queued: Gauge,
}

impl Metrics {
    pub(crate) fn function(&self, project: &str, function: &str) -> FunctionMetrics {
        let label = Self::label(project, function);
        FunctionMetrics {
            ok: self.status_counter(project, function, "ok"),
            errors: self.errors.get_or_create(&label).clone(),
            duration: self.duration.get_or_create(&label).clone(),
            queue_wait: self.queue_wait.get_or_create(&label).clone(),
            rejections: self.rejections.get_or_create(&label).clone(),
            cold_starts: self.cold_starts.get_or_create(&label).clone(),
            in_use: self.instances_in_use.get_or_create(&label).clone(),
            queued: self.queue_length.get_or_create(&label).clone(),
        }
    }

    pub(crate) fn status_counter(&self, project: &str, function: &str, status: &str) -> Counter {
        let labels = StatusLabels {
            project: project.to_string(),
            function: function.to_string(),
            status: status.to_string(),
        };
        self.invocations.get_or_create(&labels).clone()
    }

    pub fn label(project: &str, function: &str) -> FunctionLabel {
        FunctionLabel { project: project.to_string(), function: function.to_string() }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
