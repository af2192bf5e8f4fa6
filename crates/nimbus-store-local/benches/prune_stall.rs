//! How long pruning invocation records keeps the recorder's writes waiting, on a file database
//! with many segments (not criterion: one long run, reported as latencies).
//!
//! Fills a database with `SEGMENTS` one-record segments over `FUNCTIONS` functions (a node at
//! light load writes a segment per record), half of them past the age limit; then, while a
//! writer thread inserts a batch of 100 records every 10 ms (the recorder at 10,000
//! invocations/s), runs a pruning pass and a second one, and prints the pass times and the
//! writer's insert latencies during the first pass.
//!
//!   SEGMENTS=500000 FUNCTIONS=1000 cargo bench -p nimbus-store-local --bench prune_stall

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nimbus_model::{InvocationRecord, InvocationStatus};
use nimbus_store::InvocationStore;
use nimbus_store_local::SqliteStore;

const T0: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;

fn record(function: &str, started_at: i64) -> InvocationRecord {
    let (secs, ms) = (started_at.div_euclid(1000), started_at.rem_euclid(1000));
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs as u64, ms as u32 * 1_000_000);
    InvocationRecord {
        seq: 0,
        id: uuid::Uuid::new_v7(ts).to_string(),
        project: "p".into(),
        function: function.into(),
        version: 1,
        trigger: "http".into(),
        method: "GET".into(),
        path: "/hello".into(),
        started_at,
        duration_us: 200,
        queue_us: 3,
        fuel: 40_000,
        peak_memory_bytes: 1 << 20,
        memory_limit_mb: 128,
        outbound_bytes: 0,
        status: InvocationStatus::Ok,
        http_status: Some(200),
        error: None,
        stdout: String::new(),
        stderr: String::new(),
        logs_truncated: false,
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let segments = env("SEGMENTS", 500_000);
    let functions = env("FUNCTIONS", 1000).max(1);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("nimbus.db")).unwrap());

    // One batch: a record per function, each its own segment; batches a minute apart.
    let batches = segments.div_ceil(functions);
    let names: Vec<String> = (0..functions).map(|f| format!("f{f}")).collect();
    let start = Instant::now();
    for b in 0..batches {
        let mut batch: Vec<_> = names.iter().map(|f| record(f, T0 + b as i64 * MINUTE)).collect();
        store.insert_batch(&mut batch).unwrap();
    }
    let size = std::fs::metadata(dir.path().join("nimbus.db")).map(|m| m.len()).unwrap_or(0);
    println!(
        "filled {} segments over {functions} functions in {:.1} s ({} MiB)",
        batches * functions,
        start.elapsed().as_secs_f64(),
        size >> 20
    );

    // The recorder at 10,000 invocations/s: 100 records every 10 ms, newer than everything.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut spans = Vec::new();
            let mut i = 0i64;
            let live = T0 + (batches as i64 + 10) * MINUTE;
            while !stop.load(Ordering::Relaxed) {
                let mut batch: Vec<_> =
                    (0..100).map(|k| record("live", live + i * 100 + k)).collect();
                let begun = Instant::now();
                store.insert_batch(&mut batch).unwrap();
                spans.push((begun, begun.elapsed()));
                i += 1;
                std::thread::sleep(Duration::from_millis(10).saturating_sub(begun.elapsed()));
            }
            spans
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Half the segments are past the age limit; 10,000 per function is the default count.
    let before = T0 + (batches as i64 / 2) * MINUTE;
    let first = Instant::now();
    let removed = store.prune(before, 10_000).unwrap();
    let first_end = Instant::now();
    let again = Instant::now();
    let removed_again = store.prune(before, 10_000).unwrap();
    let again_took = again.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let spans = writer.join().unwrap();

    let mut during: Vec<Duration> = spans
        .iter()
        .filter(|(begun, took)| *begun + *took > first && *begun < first_end)
        .map(|(_, took)| *took)
        .collect();
    during.sort();
    let mut idle: Vec<Duration> =
        spans.iter().filter(|(begun, _)| *begun < first).map(|(_, took)| *took).collect();
    idle.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "first pass: removed {removed} records in {:.1} ms; second pass: removed {removed_again} in {:.1} ms",
        ms(first_end - first),
        ms(again_took)
    );
    println!(
        "writer inserts (100 records) before the pass: {} , p50 {:.2} ms, max {:.2} ms",
        idle.len(),
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 1.0))
    );
    println!(
        "writer inserts overlapping the first pass: {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        during.len(),
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99)),
        ms(percentile(&during, 1.0))
    );
}
