//! `subscription_stats` (what `GET /v1/triggers` and the trigger gauges on `/metrics` read) with
//! a backlog of 20,000 pending deliveries over four subscriptions, against the scan it replaced
//! (migration 16: counts kept by triggers, the oldest pending event from a partial index), run
//! as raw SQL on the same file.
//!
//! `cargo bench -p nimbus-store-local --bench delivery_stats`

use criterion::{Criterion, criterion_group, criterion_main};
use nimbus_store::events::Event;
use nimbus_store::triggers::{DeliveryStore, NewDelivery};
use nimbus_store_local::SqliteStore;

const BACKLOG: u64 = 20_000;

/// The query `subscription_stats` ran before migration 16.
const SCAN: &str = "SELECT project, function, trigger, sum(state = 'pending'), \
     sum(state = 'dead'), min(CASE WHEN state = 'pending' THEN event_time END), \
     sum(state = 'pending' AND last_error IS NOT NULL) FROM trigger_deliveries \
     WHERE state != 'delivered' AND project = ?1 GROUP BY project, function, trigger \
     ORDER BY project, function, trigger";

fn delivery(n: u64) -> NewDelivery {
    NewDelivery {
        project: "p".into(),
        function: format!("f{}", n % 4),
        trigger: "t".into(),
        event: Event {
            position: n,
            id: format!("ev-{n}"),
            project: "p".into(),
            kind: "dev.nimbus.bench".into(),
            source: "/bench".into(),
            subject: "s".into(),
            time: n as i64,
            data: serde_json::json!({}),
        },
        path: "/events".into(),
        order_key: None,
        not_before: 0,
        max_attempts: 3,
        expires_at: i64::MAX,
        lease_ms: 10_000,
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let store = SqliteStore::open(&path).unwrap();
    let all: Vec<_> = (1..=BACKLOG).map(delivery).collect();
    for (i, chunk) in all.chunks(1000).enumerate() {
        store.fan_out("bench", (i as u64 + 1) * 1000, chunk).unwrap();
    }
    assert_eq!(store.subscription_stats(Some("p")).unwrap().len(), 4);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut g = c.benchmark_group("subscription_stats, 20k pending");
    g.bench_function("counts (migration 16)", |b| {
        b.iter(|| store.subscription_stats(Some("p")).unwrap())
    });
    g.bench_function("scan (before)", |b| {
        b.iter(|| {
            let mut stmt = conn.prepare_cached(SCAN).unwrap();
            stmt.query_map(["p"], |r| r.get::<_, i64>(3)).unwrap().count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
