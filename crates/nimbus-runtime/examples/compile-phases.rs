//! Compile components one after the other through a compile cache and print where each
//! compile's time went (issue 13). For profiling the deploy path without a server, e.g. under
//! `valgrind --tool=callgrind` (instruction counts are noise-free on a shared machine):
//!
//! ```text
//! cargo run --release -p nimbus-runtime --example compile-phases -- CACHE_DIR A.wasm B.wasm
//! ```
//!
//! The cache directory is kept: run once to fill it, then again to measure a warm compile.

use std::time::Instant;

use nimbus_runtime::{CompileCacheConfig, Runtime, RuntimeConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: CACHE_DIR WASM..."))?;
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 4,
        guest_threads: 1,
        compile_cache: Some(CompileCacheConfig { dir: dir.into(), max_bytes: 4 << 30 }),
        ..RuntimeConfig::default()
    })?;
    for path in args {
        let wasm = std::fs::read(&path)?;
        let start = Instant::now();
        let c = rt.compile(&wasm).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let p = c.phases;
        let io = p.cache_io.unwrap_or_default();
        println!(
            "{path}: {:?} total; compile {:?} (cache read {:?} for {} MiB, write {:?}, summed \
             over threads), link {:?}, serialize {:?} ({} MiB); {:?}",
            start.elapsed(),
            p.compile,
            io.read,
            io.read_bytes >> 20,
            io.write,
            p.link,
            p.serialize,
            p.artifact_bytes >> 20,
            c.cache,
        );
    }
    Ok(())
}
