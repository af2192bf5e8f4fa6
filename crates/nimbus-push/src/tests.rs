use std::sync::Arc;

use nimbus_store_local::SqliteStore;
use web_push_native::jwt_simple::algorithms::ECDSAP256PublicKeyLike as _;

use super::*;

async fn service_on(store: Arc<SqliteStore>, config: PushConfig) -> PushService {
    PushService::start(store.clone(), store, config).await.unwrap()
}

async fn service(config: PushConfig) -> (PushService, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    (service_on(store.clone(), config).await, store)
}

fn input(endpoint: &str) -> SubscriptionInput {
    let key = ES256KeyPair::generate().public_key().public_key().to_bytes_uncompressed();
    SubscriptionInput {
        endpoint: endpoint.into(),
        keys: SubscriptionKeys {
            p256dh: URL_SAFE_NO_PAD.encode(key),
            auth: URL_SAFE_NO_PAD.encode([7u8; 16]),
        },
        expiration_time: None,
        user_id: None,
        topics: vec![],
    }
}

fn send_to(target: Target) -> SendRequest {
    SendRequest { target, payload: b"hi".to_vec(), ttl: Some(60), urgency: None, topic: None }
}

#[tokio::test]
async fn endpoints_are_https_and_public_by_default() {
    let (push, _) = service(PushConfig::default()).await;
    let ok = push.subscribe("p", &Actor::Service, input("https://push.example.com/a"));
    assert!(ok.is_ok(), "{ok:?}");
    for (bad, code) in [
        ("http://push.example.com/a", "invalid_endpoint"),
        ("ftp://push.example.com/a", "invalid_endpoint"),
        ("not a url", "invalid_endpoint"),
        ("https://user:pw@push.example.com/a", "invalid_endpoint"),
    ] {
        match push.subscribe("p", &Actor::Service, input(bad)) {
            Err(PushError::Invalid(c, _)) => assert_eq!(c, code, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    for internal in [
        "https://127.0.0.1/a",
        "https://10.0.0.1/a",
        "https://169.254.169.254/latest",
        "https://[::1]/a",
        "https://[::ffff:127.0.0.1]/a",
    ] {
        let r = push.subscribe("p", &Actor::Service, input(internal));
        assert!(matches!(r, Err(PushError::Forbidden(_))), "{internal}: {r:?}");
    }
    let long = format!("https://push.example.com/{}", "a".repeat(2048));
    assert!(matches!(
        push.subscribe("p", &Actor::Service, input(&long)),
        Err(PushError::Invalid("invalid_endpoint", _))
    ));
    let mut bad = input("https://push.example.com/b");
    bad.keys.auth = URL_SAFE_NO_PAD.encode([1u8; 15]);
    assert!(matches!(
        push.subscribe("p", &Actor::Service, bad),
        Err(PushError::Invalid("invalid_keys", _))
    ));
    // Allowing a network is the operator's choice, and plain HTTP too.
    let (open, _) = service(PushConfig {
        allow_http: true,
        allow_nets: vec!["127.0.0.0/8".parse().unwrap()],
        ..Default::default()
    })
    .await;
    assert!(open.subscribe("p", &Actor::Service, input("http://127.0.0.1:9/a")).is_ok());
    assert!(matches!(
        open.subscribe("p", &Actor::Service, input("http://10.0.0.1/a")),
        Err(PushError::Forbidden(_))
    ));
}

#[tokio::test]
async fn counts_ownership_and_tenancy() {
    let (push, _) = service(PushConfig {
        max_subscriptions_per_project: 3,
        max_subscriptions_per_user: 2,
        ..Default::default()
    })
    .await;
    let alice = Actor::User("alice".into());
    let a1 = push.subscribe("p", &alice, input("https://push.example.com/1")).unwrap();
    assert_eq!(a1.user_id.as_deref(), Some("alice"));
    // The endpoint is the identity: registering it again updates, it does not add.
    let again = push.subscribe("p", &alice, input("https://push.example.com/1")).unwrap();
    assert_eq!(again.id, a1.id);
    push.subscribe("p", &alice, input("https://push.example.com/2")).unwrap();
    assert!(matches!(
        push.subscribe("p", &alice, input("https://push.example.com/3")),
        Err(PushError::Limit(_))
    ));
    let bob = Actor::User("bob".into());
    assert!(matches!(
        push.subscribe("p", &bob, input("https://push.example.com/1")),
        Err(PushError::Forbidden(_))
    ));
    push.subscribe("p", &bob, input("https://push.example.com/4")).unwrap();
    assert!(matches!(
        push.subscribe("p", &Actor::Service, input("https://push.example.com/5")),
        Err(PushError::Limit(_))
    ));
    // Bob sees only his own, and not Alice's by id.
    assert_eq!(push.list("p", &bob, Some("alice"), None, None, None).unwrap().len(), 1);
    assert!(matches!(push.get("p", &bob, &a1.id), Err(PushError::NotFound(_))));
    assert!(matches!(push.unsubscribe("p", &bob, &a1.id), Err(PushError::NotFound(_))));
    // Another project: nothing of p, and sends reach no one.
    assert!(push.list("q", &Actor::Service, None, None, None, None).unwrap().is_empty());
    assert!(matches!(push.get("q", &Actor::Service, &a1.id), Err(PushError::NotFound(_))));
    let r = push.send("q", send_to(Target::User("alice".into())), json!({})).unwrap();
    assert_eq!(r.deliveries, 0);
    let r = push.send("p", send_to(Target::User("alice".into())), json!({})).unwrap();
    assert_eq!(r.deliveries, 2);
    assert!(matches!(
        push.send("q", send_to(Target::Subscription(a1.id.clone())), json!({})),
        Err(PushError::NotFound(_))
    ));
    // Project deletion removes every row of the project and only those.
    assert!(push.delete_project("p").unwrap() >= 5);
    assert!(push.list("p", &Actor::Service, None, None, None, None).unwrap().is_empty());
    assert!(matches!(push.message("p", &r.id), Err(PushError::NotFound(_))));
}

#[tokio::test]
async fn send_bounds() {
    let (push, _) = service(PushConfig::default()).await;
    let t = || Target::Topic("news".into());
    let big = SendRequest { payload: vec![b'x'; 3994], ..send_to(t()) };
    assert!(matches!(push.send("p", big, json!({})), Err(PushError::PayloadTooLarge { .. })));
    let fits = SendRequest { payload: vec![b'x'; 3993], ..send_to(t()) };
    assert!(push.send("p", fits, json!({})).is_ok());
    let long_ttl = SendRequest { ttl: Some(29 * 24 * 3600), ..send_to(t()) };
    assert!(matches!(
        push.send("p", long_ttl, json!({})),
        Err(PushError::Invalid("invalid_ttl", _))
    ));
    let urgency = SendRequest { urgency: Some("urgent".into()), ..send_to(t()) };
    assert!(matches!(push.send("p", urgency, json!({})), Err(PushError::Invalid(..))));
    let topic = SendRequest { topic: Some("has space".into()), ..send_to(t()) };
    assert!(matches!(push.send("p", topic, json!({})), Err(PushError::Invalid(..))));
    assert!(matches!(
        push.send("p", send_to(Target::Topic("a b".into())), json!({})),
        Err(PushError::Invalid("invalid_topic", _))
    ));
}

#[tokio::test]
async fn the_vapid_key_is_made_once_and_survives_a_restart() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let push = service_on(store.clone(), PushConfig::default()).await;
    let key = push.vapid_public_key("p").unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(&key).unwrap().len(), 65);
    assert_ne!(key, push.vapid_public_key("q").unwrap(), "one key per project");
    let restarted = service_on(store, PushConfig::default()).await;
    assert_eq!(restarted.vapid_public_key("p").unwrap(), key);
}

#[tokio::test]
async fn leases_make_a_crash_mid_send_retry_and_outcomes_follow_the_rules() {
    let (push, store) = service(PushConfig {
        max_attempts: 3,
        backoff_base: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    for i in 0..3 {
        push.subscribe(
            "p",
            &Actor::Service,
            SubscriptionInput {
                topics: vec!["t".into()],
                ..input(&format!("https://push.example.com/{i}"))
            },
        )
        .unwrap();
    }
    let r = push.send("p", send_to(Target::Topic("t".into())), json!({})).unwrap();
    assert_eq!(r.deliveries, 3);
    let now = now_millis();
    let claimed = store.claim(now, now + 1000, 10).unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.attempts == 1 && c.subscription.is_some()));
    // Leased: not due again until the lease runs out (the sender died: nobody completes them).
    assert!(store.claim(now + 999, now + 2000, 10).unwrap().is_empty());
    let again = store.claim(now + 1000, now + 3000, 10).unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|c| c.attempts == 2));

    // Retry-After is a floor; the attempt limit turns a retry into a failure.
    let c = &again[0];
    let retry = Attempt::Retry {
        status: Some(429),
        retry_after: Some(Duration::from_secs(30)),
        error: "busy".into(),
    };
    match push.outcome(c, retry.clone(), now) {
        Outcome::Retry { at, .. } => assert!(at >= now + 30_000, "{at} vs {now}"),
        o => panic!("{o:?}"),
    }
    let last = Claimed { attempts: 3, ..c.clone() };
    assert!(matches!(push.outcome(&last, retry.clone(), now), Outcome::Failed { .. }));
    // A retry that would come after the TTL is an expiry.
    let short = Claimed { expires_at: now + 10_000, ..c.clone() };
    assert_eq!(push.outcome(&short, retry, now), Outcome::Expired);
    assert!(matches!(
        push.outcome(c, Attempt::Gone { status: 410 }, now),
        Outcome::Failed { remove_subscription: true, .. }
    ));

    // Recording: sent, gone (removes the subscription), and a retry that is due later.
    let gone_sub = again[1].subscription.as_ref().unwrap().id.clone();
    store
        .complete(
            &[
                (again[0].id, Outcome::Sent { status: 201 }),
                (again[1].id, push.outcome(&again[1], Attempt::Gone { status: 410 }, now)),
                (
                    again[2].id,
                    Outcome::Retry { at: now + 60_000, status: Some(503), error: "x".into() },
                ),
            ],
            now,
        )
        .unwrap();
    let m = push.message("p", &r.id).unwrap();
    assert_eq!(m.deliveries, DeliveryCounts { queued: 1, sent: 1, failed: 1, expired: 0 });
    assert!(matches!(push.get("p", &Actor::Service, &gone_sub), Err(PushError::NotFound(_))));
    assert_eq!(store.next_due().unwrap(), Some(now + 60_000));
    assert!(store.claim(now + 59_999, now + 70_000, 10).unwrap().is_empty());
    let d = push.deliveries("p", Some(&r.id), None, None, None).unwrap();
    assert_eq!(
        d.iter().map(|d| d.state.as_str()).collect::<Vec<_>>(),
        ["sent", "failed", "queued"]
    );
    assert_eq!(d[1].last_status, Some(410));
}

#[tokio::test]
async fn the_queued_event_is_written_with_the_message() {
    let (push, store) = service(PushConfig::default()).await;
    use nimbus_store::events::EventLog;
    let before = store.bounds().unwrap().last;
    let r = push.send("p", send_to(Target::User("u1".into())), json!({"kind": "admin"})).unwrap();
    let events = store.read(before, Some("p"), 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, nimbus_store::push::EVENT_QUEUED);
    assert_eq!(events[0].position, r.position);
    assert_eq!(events[0].data["id"], r.id.as_str());
    assert_eq!(events[0].data["user"], "u1");
    assert_eq!(events[0].data["payload"], "hi");
    assert_eq!(events[0].data["deliveries"], 0);
    // A refused send writes neither message nor event.
    let refused = push.send("p", send_to(Target::Subscription("nope".into())), json!({}));
    assert!(refused.is_err());
    assert_eq!(store.read(r.position, Some("p"), 10).unwrap().len(), 0);
}

#[tokio::test]
async fn the_live_channel_hands_a_user_their_notifications_only() {
    let (push, _) = service(PushConfig::default()).await;
    let mut alice = push.live().subscribe("p", "alice");
    let mut other_project = push.live().subscribe("q", "alice");
    push.send("p", send_to(Target::User("bob".into())), json!({})).unwrap();
    let r = push.send("p", send_to(Target::User("alice".into())), json!({})).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), alice.next()).await.unwrap().unwrap();
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["id"], r.id.as_str());
    assert_eq!(v["payload"], "hi");
    assert!(tokio::time::timeout(Duration::from_millis(200), other_project.next()).await.is_err());
    drop(alice);
    assert_eq!(push.live().connections(), 1);
}

#[tokio::test]
async fn a_host_name_that_resolves_to_an_internal_address_is_refused_when_sending() {
    // `localhost` passes registration (not an IP literal) but resolves to loopback: the
    // resolver of the sending client refuses it, and the attempt is not retried.
    let config = PushConfig::default();
    let provider = webpush::WebPush::new(&config).unwrap();
    let sub_input = input("https://localhost:9/push/1");
    assert!(provider.validate(&sub_input).is_ok());
    let sub = Subscription {
        id: "s".into(),
        kind: "webpush".into(),
        user_id: None,
        endpoint: sub_input.endpoint.clone(),
        p256dh: sub_input.keys.p256dh.clone(),
        auth: sub_input.keys.auth.clone(),
        topics: vec![],
        created_at: 0,
    };
    let claimed = Claimed {
        id: 1,
        project: "p".into(),
        message: "m".into(),
        attempts: 1,
        subscription: Some(sub.clone()),
        payload: b"x".to_vec(),
        ttl: 60,
        urgency: "normal".into(),
        topic: None,
        expires_at: now_millis() + 60_000,
    };
    let keys = ProjectKeys { vapid: ES256KeyPair::generate() };
    match provider.deliver(&keys, &sub, &claimed).await {
        Attempt::Rejected { status: None, error } => {
            assert!(error.contains("network policy denies"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}
