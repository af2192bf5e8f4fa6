//! Service-level tests on a real (in-memory) SQLite store.

use std::sync::Arc;
use std::time::Duration;

use nimbus_store::events::EventLog;
use nimbus_store_local::SqliteStore;
use serde_json::json;

use super::*;
use crate::realtime::{Next, SubscribeRequest, Target};

async fn service(queue: usize) -> (DocumentService, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let config = DocumentsConfig { subscriber_queue: queue, ..DocumentsConfig::default() };
    let svc = DocumentService::start(store.clone(), store.clone(), config).await.unwrap();
    svc.create_collection("p", "c", &CollectionConfig::default()).await.unwrap();
    (svc, store)
}

fn sub(since: Option<u64>) -> SubscribeRequest {
    SubscribeRequest {
        project: "p".into(),
        collection: "c".into(),
        target: Target::Collection,
        filter: None,
        since,
        who: Principal::Service,
    }
}

async fn next(s: &mut realtime::Subscription) -> Next {
    tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("an event within 5 s")
}

#[tokio::test]
async fn resume_beyond_retention_gets_resync_and_within_it_no_gap() {
    let (svc, store) = service(64).await;
    for i in 0..3 {
        svc.create("p", "c", Some(format!("d{i}")), json!({"i": i}), &Principal::Service)
            .await
            .unwrap();
    }
    // Within the log: everything after position 1, then live.
    let mut s = svc.hub().subscribe(&svc, sub(Some(1))).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match next(&mut s).await {
            Next::Event(e) => got.push(e.position),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, [2, 3]);
    svc.create("p", "c", Some("d3".into()), json!({}), &Principal::Service).await.unwrap();
    assert!(matches!(next(&mut s).await, Next::Event(e) if e.position == 4));

    // Pruned past the client's position: an explicit resync, then live events.
    store.prune(nimbus_model::now_millis() + 60_000).unwrap();
    let mut s = svc.hub().subscribe(&svc, sub(Some(1))).await.unwrap();
    assert!(matches!(next(&mut s).await, Next::Resync { position: 4 }));
    svc.create("p", "c", Some("d4".into()), json!({}), &Principal::Service).await.unwrap();
    assert!(matches!(next(&mut s).await, Next::Event(e) if e.data["id"] == "d4"));
}

#[tokio::test]
async fn writes_racing_a_subscription_are_neither_lost_nor_doubled() {
    let (svc, _store) = service(10_000).await;
    let writer = {
        let svc = svc.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                svc.create("p", "c", Some(format!("d{i:03}")), json!({}), &Principal::Service)
                    .await
                    .unwrap();
            }
        })
    };
    // Subscribe repeatedly while writes land, each resuming from position 0 (the whole log).
    let mut subs = Vec::new();
    for _ in 0..10 {
        subs.push(svc.hub().subscribe(&svc, sub(Some(0))).await.unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    writer.await.unwrap();
    for mut s in subs {
        for expected in 1..=300u64 {
            match next(&mut s).await {
                Next::Event(e) => assert_eq!(e.position, expected),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_full_queue_drops_the_subscriber_not_the_others() {
    let (svc, _store) = service(4).await;
    let mut slow = svc.hub().subscribe(&svc, sub(None)).await.unwrap();
    let mut fast = svc.hub().subscribe(&svc, sub(None)).await.unwrap();
    let mut fast_got = 0;
    for i in 0..20 {
        svc.create("p", "c", Some(format!("d{i}")), json!({}), &Principal::Service).await.unwrap();
        // Let the hub dispatch, then drain the fast one.
        tokio::time::sleep(Duration::from_millis(5)).await;
        while let Ok(Next::Event(_)) =
            tokio::time::timeout(Duration::from_millis(50), fast.next()).await
        {
            fast_got += 1;
        }
    }
    assert_eq!(fast_got, 20);
    let mut slow_got = 0;
    let reason = loop {
        match next(&mut slow).await {
            Next::Event(_) => slow_got += 1,
            Next::Closed(reason) => break reason,
            Next::Resync { .. } => panic!("resync"),
        }
    };
    assert_eq!(reason, "slow_consumer");
    assert!(slow_got <= 4, "the slow queue held {slow_got} events");
    assert_eq!(svc.hub().subscribers(), 1);
}
