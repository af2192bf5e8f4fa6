//! The generic conformance suite of event delivery (`nimbus_store::triggers::conformance`) on
//! SQLite, in memory and on a file (reads on the reader pool).

use nimbus_store_local::SqliteStore;

#[test]
fn conformance_in_memory() {
    nimbus_store::triggers::conformance::run_all(&SqliteStore::open_in_memory().unwrap());
}

#[test]
fn conformance_on_file() {
    let dir = tempfile::tempdir().unwrap();
    nimbus_store::triggers::conformance::run_all(
        &SqliteStore::open(&dir.path().join("nimbus.db")).unwrap(),
    );
}

/// The per-subscription counts (kept by SQLite triggers, migration 16) equal a count of the
/// rows at every step: fan-out, outcomes of each kind, a replay, a purge, pruning and deleting a
/// function's deliveries.
#[test]
fn subscription_counts_match_the_rows_at_every_step() {
    use nimbus_store::events::Event;
    use nimbus_store::triggers::{
        AfterAttempt, Attempt, DeliveryQuery, DeliveryStore, NewDelivery,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    let store = SqliteStore::open(&path).unwrap();
    type Row = (String, String, String, u64, u64, Option<i64>, u64);
    let recount = || -> Vec<Row> {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT project, function, trigger, sum(state = 'pending'), sum(state = 'dead'), \
                 min(CASE WHEN state = 'pending' THEN event_time END), \
                 sum(state = 'pending' AND last_error IS NOT NULL) \
                 FROM trigger_deliveries WHERE state != 'delivered' \
                 GROUP BY project, function, trigger ORDER BY project, function, trigger",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let check = |step: &str, expected_subscriptions: usize| {
        let stats: Vec<Row> = store
            .subscription_stats(None)
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.project,
                    s.function,
                    s.trigger,
                    s.pending,
                    s.dead,
                    s.oldest_pending_at,
                    s.retrying,
                )
            })
            .collect();
        assert_eq!(stats, recount(), "after {step}");
        assert_eq!(stats.len(), expected_subscriptions, "after {step}: {stats:?}");
    };
    let delivery = |function: &str, position: u64| NewDelivery {
        project: "p".into(),
        function: function.into(),
        trigger: "t".into(),
        event: Event {
            position,
            id: format!("ev-{position}"),
            project: "p".into(),
            kind: "dev.nimbus.test".into(),
            source: "/test".into(),
            subject: "s".into(),
            time: 1_000 + position as i64,
            data: serde_json::json!({}),
        },
        path: "/events".into(),
        order_key: None,
        not_before: 0,
        max_attempts: 3,
        expires_at: i64::MAX,
        lease_ms: 10_000,
    };
    let attempt = |ok: bool| Attempt {
        attempt: 1,
        invocation_id: None,
        started_at: 5,
        duration_ms: 1,
        http_status: Some(if ok { 200 } else { 500 }),
        ok,
        error: (!ok).then(|| "HTTP 500".to_owned()),
    };

    let new: Vec<_> = [("fa", 1), ("fa", 2), ("fa", 3), ("fb", 4), ("fb", 5)]
        .into_iter()
        .map(|(f, n)| delivery(f, n))
        .collect();
    store.fan_out("c", 5, &new).unwrap();
    check("fan-out", 2);
    let claimed = store.claim(100, 10).unwrap();
    assert_eq!(claimed.len(), 5);
    let outcomes = [
        (true, AfterAttempt::Delivered),
        (false, AfterAttempt::RetryAt(200)),
        (false, AfterAttempt::Dead),
        (false, AfterAttempt::Dead),
        (false, AfterAttempt::RetryAt(300)),
    ];
    let batch: Vec<_> =
        claimed.iter().zip(outcomes).map(|(d, (ok, next))| (d.id, attempt(ok), next)).collect();
    store.finish_many(&batch).unwrap();
    check("outcomes", 2);
    let fb = DeliveryQuery { function: Some("fb".into()), ..Default::default() };
    assert_eq!(store.replay("p", None, &fb, 400, 1000).unwrap(), 1);
    check("a replay", 2);
    let fa = DeliveryQuery { function: Some("fa".into()), ..Default::default() };
    assert_eq!(store.purge("p", None, &fa).unwrap(), 1);
    check("a purge", 2);
    store.prune_deliveries(i64::MAX, i64::MAX).unwrap();
    check("pruning", 2);
    assert!(store.delete_function_deliveries("p", "fa").unwrap() > 0);
    check("deleting fa's deliveries", 1);
    // fb's replayed delivery and its retry.
    let left = store.claim(1_000_000, 10).unwrap();
    assert_eq!(left.len(), 2);
    for d in left {
        assert!(store.finish(d.id, &attempt(false), AfterAttempt::Dead).unwrap());
    }
    check("the last ones dead", 1);
    store.prune_deliveries(i64::MAX, i64::MAX).unwrap();
    check("the last ones dead, then pruned", 0);

    // More than one pruning step (1,000 rows) of each kind: all of it goes, counted exactly.
    let many: Vec<_> = (10..2510).map(|n| delivery("fc", n)).collect();
    store.fan_out("c", 2510, &many).unwrap();
    let claimed = store.claim(2_000_000, 5000).unwrap();
    assert_eq!(claimed.len(), 2500);
    let batch: Vec<_> = claimed
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let next = if i % 2 == 0 { AfterAttempt::Delivered } else { AfterAttempt::Dead };
            (d.id, attempt(i % 2 == 0), next)
        })
        .collect();
    store.finish_many(&batch).unwrap();
    check("2,500 finished", 1);
    assert_eq!(store.prune_deliveries(i64::MAX, i64::MAX).unwrap(), 2500);
    check("2,500 pruned in steps", 0);
}
