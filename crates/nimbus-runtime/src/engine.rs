//! Engine configuration: Cranelift, async, fuel for CPU accounting, epochs for timeouts, and a
//! pooling allocator tuned for a fresh instance per request.

use std::sync::Arc;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    WasmBacktraceDetails,
};

use crate::RuntimeConfig;
use crate::compile_cache::DiskCache;

/// Settings the benchmark's bare host copies, so the comparison is like for like.
pub const KEEP_RESIDENT_BYTES: usize = 4 << 20;

pub(crate) fn build(
    cfg: &RuntimeConfig,
    cache: Option<Arc<DiskCache>>,
) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    if let Some(cache) = cache {
        // Cranelift reuses compiled functions by content: an edit recompiles what changed.
        // It does not change the code produced, nor `precompile_compatibility_hash`.
        config.enable_incremental_compilation(cache)?;
    }
    // CPU accounting: fuel consumed per invocation is what usage metering bills.
    config.consume_fuel(true);
    config.epoch_interruption(true);
    // Trap messages name the guest's frames (from the name section, always) and give file:line
    // where the component carries DWARF: the artifact keeps the DWARF sections, and they are
    // only parsed (addr2line) when a trap's backtrace is symbolized. Loading, instantiation and
    // requests that do not trap are unaffected; the setting changes the engine fingerprint, so
    // artifacts compiled without it are recompiled once at start.
    config.wasm_backtrace_details(WasmBacktraceDetails::Enable);

    let n = cfg.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // Real toolchains (componentize-py, ComponentizeJS) produce components with several core
        // instances and memories; allow room for them.
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .table_elements(100_000)
        .max_memory_size(usize::try_from(cfg.max_memory_bytes).unwrap_or(usize::MAX))
        // Resetting memory between instances dominates the cost of a request; keeping the first
        // pages resident (and letting the kernel report dirty pages) nearly doubles throughput.
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config.memory_init_cow(true);
    Engine::new(&config)
}
