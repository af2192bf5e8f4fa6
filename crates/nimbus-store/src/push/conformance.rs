//! The backend-independent conformance suite of [`PushStore`] (with the [`EventLog`] a send
//! writes to). Each test takes a fresh store: claims and the backlog are across projects, so
//! tests sharing one would see each other's deliveries. A backend's tests run every entry of
//! [`ALL`] (see `nimbus-store-local/tests/it/push.rs`).

use serde_json::json;

use super::*;
use crate::StoreError;
use crate::events::EventLog;

/// What the suite needs of a backend (usage: delivered messages are metered with their outcome).
pub trait Backend: PushStore + EventLog + crate::usage::UsageStore {}
impl<T: PushStore + EventLog + crate::usage::UsageStore> Backend for T {}

/// One conformance test: it panics on a failed expectation.
pub type Test = fn(&dyn Backend);

pub const ALL: &[(&str, Test)] = &[
    ("vapid_keys_first_one_wins", vapid_keys_first_one_wins),
    ("endpoints_are_identities_and_owned", endpoints_are_identities_and_owned),
    ("subscription_counts_are_bounded", subscription_counts_are_bounded),
    ("listing_and_topics", listing_and_topics),
    ("enqueue_is_one_transaction_with_its_event", enqueue_is_one_transaction_with_its_event),
    ("claims_lease_and_outcomes", claims_lease_and_outcomes),
    ("delivery_records_page_in_commit_order", delivery_records_page_in_commit_order),
    ("backlog_counts_what_is_queued", backlog_counts_what_is_queued),
    ("replay_requeues_failed_deliveries_only", replay_requeues_failed_deliveries_only),
    ("old_finished_messages_are_pruned", old_finished_messages_are_pruned),
    ("projects_are_isolated_and_deleted", projects_are_isolated_and_deleted),
    ("delivered_messages_are_metered_once", delivered_messages_are_metered_once),
];

const T0: UnixMillis = 1_700_000_000_000;
const MANY: u32 = 1000;

fn subscribe(
    s: &dyn Backend,
    project: &str,
    id: &str,
    user: Option<&str>,
    endpoint: &str,
) -> Result<Subscription, SubscribeError> {
    s.put_subscription(
        project,
        &NewSubscription {
            id,
            kind: "webpush",
            user_id: user,
            endpoint,
            p256dh: "key-1",
            auth: "auth-1",
            now: T0,
        },
        MANY,
        MANY,
    )
}

fn sub(s: &dyn Backend, project: &str, id: &str, user: Option<&str>) -> Subscription {
    subscribe(s, project, id, user, &format!("https://push.example/{project}/{id}")).unwrap()
}

fn message<'a>(id: &'a str, target: &'a Target, ttl: u32, now: UnixMillis) -> NewMessage<'a> {
    NewMessage {
        id,
        target,
        payload: b"payload",
        ttl,
        urgency: "normal",
        topic: None,
        sender: json!({"kind": "admin"}),
        now,
        max_targets: MANY,
        event_data: json!({"id": id}),
    }
}

fn enqueue(s: &dyn Backend, project: &str, id: &str, target: Target) -> (u64, u64) {
    s.enqueue(project, &message(id, &target, 3600, T0)).unwrap()
}

fn all_deliveries(s: &dyn Backend, project: &str, message: &str) -> Vec<DeliveryInfo> {
    s.deliveries(
        project,
        &DeliveryQuery { message: Some(message), limit: MANY, ..Default::default() },
    )
    .unwrap()
}

fn counts(s: &dyn Backend, project: &str, id: &str) -> DeliveryCounts {
    s.message(project, id).unwrap().unwrap().deliveries
}

fn topic(name: &str) -> Target {
    Target::Topic(name.into())
}

pub fn vapid_keys_first_one_wins(s: &dyn Backend) {
    assert_eq!(s.vapid_key("p").unwrap(), None);
    let k1 = VapidKey { private_key: vec![1; 32], public_key: vec![4; 65], created_at: T0 };
    let k2 = VapidKey { private_key: vec![2; 32], public_key: vec![5; 65], created_at: T0 + 1 };
    assert_eq!(s.insert_vapid_key("p", &k1).unwrap(), k1);
    // A racing second first use gets the stored key back, not its own.
    assert_eq!(s.insert_vapid_key("p", &k2).unwrap(), k1);
    assert_eq!(s.vapid_key("p").unwrap(), Some(k1.clone()));
    // One key per project.
    assert_eq!(s.vapid_key("q").unwrap(), None);
    assert_eq!(s.insert_vapid_key("q", &k2).unwrap(), k2);
}

pub fn endpoints_are_identities_and_owned(s: &dyn Backend) {
    let a = subscribe(s, "p", "s1", Some("alice"), "https://push.example/e1").unwrap();
    assert_eq!(
        (a.id.as_str(), a.kind.as_str(), a.user_id.as_deref()),
        ("s1", "webpush", Some("alice"))
    );
    assert_eq!((a.p256dh.as_str(), a.auth.as_str(), a.created_at), ("key-1", "auth-1", T0));
    // The same endpoint again (fresh keys, a new id offered): the same subscription, new keys.
    let again = s
        .put_subscription(
            "p",
            &NewSubscription {
                id: "s1-again",
                kind: "webpush",
                user_id: Some("alice"),
                endpoint: "https://push.example/e1",
                p256dh: "key-2",
                auth: "auth-2",
                now: T0 + 5,
            },
            MANY,
            MANY,
        )
        .unwrap();
    assert_eq!(
        (again.id.as_str(), again.p256dh.as_str(), again.auth.as_str()),
        ("s1", "key-2", "auth-2")
    );
    assert_eq!(s.get_subscription("p", "s1-again").unwrap(), None);
    // Another user cannot take it over.
    assert!(matches!(
        subscribe(s, "p", "s2", Some("bob"), "https://push.example/e1"),
        Err(SubscribeError::EndpointTaken)
    ));
    // The service (no user) may re-register it; the owner stays.
    let by_service = subscribe(s, "p", "s3", None, "https://push.example/e1").unwrap();
    assert_eq!((by_service.id.as_str(), by_service.user_id.as_deref()), ("s1", Some("alice")));
    // An endpoint registered without a user becomes a signed-in user's when they register it.
    subscribe(s, "p", "s4", None, "https://push.example/e4").unwrap();
    let claimed = subscribe(s, "p", "s5", Some("bob"), "https://push.example/e4").unwrap();
    assert_eq!((claimed.id.as_str(), claimed.user_id.as_deref()), ("s4", Some("bob")));
    // The same endpoint in another project is another subscription.
    let other = subscribe(s, "q", "s6", Some("bob"), "https://push.example/e1").unwrap();
    assert_eq!(other.id, "s6");
    assert_eq!(s.get_subscription("p", "s1").unwrap().unwrap().user_id.as_deref(), Some("alice"));
}

pub fn subscription_counts_are_bounded(s: &dyn Backend) {
    let put = |id: &str, user: Option<&str>, max_project: u32, max_user: u32| {
        s.put_subscription(
            "p",
            &NewSubscription {
                id,
                kind: "webpush",
                user_id: user,
                endpoint: &format!("https://push.example/{id}"),
                p256dh: "k",
                auth: "a",
                now: T0,
            },
            max_project,
            max_user,
        )
    };
    put("a1", Some("alice"), 3, 2).unwrap();
    put("a2", Some("alice"), 3, 2).unwrap();
    assert!(matches!(put("a3", Some("alice"), 3, 2), Err(SubscribeError::UserFull { limit: 2 })));
    put("b1", Some("bob"), 3, 2).unwrap();
    assert!(matches!(put("n1", None, 3, 2), Err(SubscribeError::ProjectFull { limit: 3 })));
    // Re-registering an existing endpoint is not a new subscription: allowed when full.
    assert_eq!(put("a1", Some("alice"), 3, 2).unwrap().id, "a1");
    // Refused registrations left nothing behind.
    assert_eq!(s.list_subscriptions("p", None, None, None, MANY).unwrap().len(), 3);
}

pub fn listing_and_topics(s: &dyn Backend) {
    for (id, user) in
        [("s1", Some("alice")), ("s2", None), ("s3", Some("alice")), ("s4", Some("bob"))]
    {
        sub(s, "p", id, user);
    }
    let ids = |subs: Vec<Subscription>| subs.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_subscriptions("p", None, None, None, MANY).unwrap()),
        ["s1", "s2", "s3", "s4"]
    );
    assert_eq!(ids(s.list_subscriptions("p", None, None, None, 2).unwrap()), ["s1", "s2"]);
    assert_eq!(ids(s.list_subscriptions("p", None, None, Some("s2"), 2).unwrap()), ["s3", "s4"]);
    assert_eq!(
        ids(s.list_subscriptions("p", Some("alice"), None, None, MANY).unwrap()),
        ["s1", "s3"]
    );

    s.join_topic("p", "s1", "news", 2).unwrap();
    s.join_topic("p", "s1", "news", 2).unwrap(); // idempotent
    s.join_topic("p", "s1", "sports", 2).unwrap();
    // A third topic is over the bound; joining one already joined is not.
    assert!(matches!(s.join_topic("p", "s1", "weather", 2), Err(StoreError::Conflict(_))));
    s.join_topic("p", "s1", "sports", 2).unwrap();
    s.join_topic("p", "s3", "news", 2).unwrap();
    s.join_topic("p", "s4", "news", 2).unwrap();
    assert!(matches!(s.join_topic("p", "nope", "news", 2), Err(StoreError::NotFound(_))));
    assert_eq!(s.get_subscription("p", "s1").unwrap().unwrap().topics, ["news", "sports"]);
    assert_eq!(
        ids(s.list_subscriptions("p", None, Some("news"), None, MANY).unwrap()),
        ["s1", "s3", "s4"]
    );
    assert_eq!(
        ids(s.list_subscriptions("p", Some("alice"), Some("news"), None, MANY).unwrap()),
        ["s1", "s3"]
    );
    let listed = s.list_subscriptions("p", None, Some("sports"), None, MANY).unwrap();
    assert_eq!(listed[0].topics, ["news", "sports"], "a listing carries every topic");
    assert!(s.leave_topic("p", "s3", "news").unwrap());
    assert!(!s.leave_topic("p", "s3", "news").unwrap());
    assert_eq!(
        ids(s.list_subscriptions("p", None, Some("news"), None, MANY).unwrap()),
        ["s1", "s4"]
    );
    // Deleting a subscription takes its memberships with it.
    assert!(s.delete_subscription("p", "s1").unwrap());
    assert!(!s.delete_subscription("p", "s1").unwrap());
    assert_eq!(s.get_subscription("p", "s1").unwrap(), None);
    assert_eq!(ids(s.list_subscriptions("p", None, Some("news"), None, MANY).unwrap()), ["s4"]);
    let (n, _) = enqueue(s, "p", "m-sports", topic("sports"));
    assert_eq!(n, 0, "the deleted subscription left no membership behind");
}

pub fn enqueue_is_one_transaction_with_its_event(s: &dyn Backend) {
    for id in ["s1", "s2", "s3"] {
        sub(s, "p", id, Some("alice"));
        s.join_topic("p", id, "news", 10).unwrap();
    }
    let before = s.bounds().unwrap().last;
    let target = topic("news");
    let mut msg = message("m1", &target, 60, T0);
    msg.topic = Some("greeting");
    msg.urgency = "high";
    msg.sender = json!({"kind": "function", "name": "f"});
    msg.event_data = json!({"id": "m1", "payload": "hi"});
    let (n, position) = s.enqueue("p", &msg).unwrap();
    assert_eq!(n, 3);
    let events = s.read(before, Some("p"), 10).unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!((e.position, e.kind.as_str(), e.project.as_str()), (position, EVENT_QUEUED, "p"));
    assert_eq!(e.subject, "messages/m1");
    assert_eq!(e.data, json!({"id": "m1", "payload": "hi", "deliveries": 3}));
    let info = s.message("p", "m1").unwrap().unwrap();
    assert_eq!(
        (info.target_kind.as_str(), info.target.as_str(), info.ttl, info.urgency.as_str()),
        ("topic", "news", 60, "high")
    );
    assert_eq!(info.topic.as_deref(), Some("greeting"));
    assert_eq!(info.sender, json!({"kind": "function", "name": "f"}));
    assert_eq!(info.created_at, T0);
    assert_eq!(info.deliveries, DeliveryCounts { queued: 3, sent: 0, failed: 0, expired: 0 });
    let rows = all_deliveries(s, "p", "m1");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|d| d.state == QUEUED && d.attempts == 0 && d.next_attempt_at == T0));

    // A user with no subscription: a message and its event, no delivery.
    let (n, p2) = enqueue(s, "p", "m2", Target::User("nobody".into()));
    assert_eq!(n, 0);
    assert!(p2 > position);
    assert_eq!(s.message("p", "m2").unwrap().unwrap().deliveries.queued, 0);

    // Refused sends write nothing: neither message nor event.
    let last = s.bounds().unwrap().last;
    let missing = Target::Subscription("nope".into());
    assert!(matches!(
        s.enqueue("p", &message("m3", &missing, 60, T0)),
        Err(EnqueueError::NoSuchSubscription)
    ));
    let mut too_many = message("m4", &target, 60, T0);
    too_many.max_targets = 2;
    assert!(matches!(s.enqueue("p", &too_many), Err(EnqueueError::TooManyTargets { limit: 2 })));
    assert_eq!(s.message("p", "m3").unwrap(), None);
    assert_eq!(s.message("p", "m4").unwrap(), None);
    assert_eq!(s.bounds().unwrap().last, last);
    assert!(s.read(last, None, 10).unwrap().is_empty());
    // One subscription, by id.
    let (n, _) = enqueue(s, "p", "m5", Target::Subscription("s2".into()));
    assert_eq!(n, 1);
    assert_eq!(all_deliveries(s, "p", "m5")[0].subscription, "s2");
}

pub fn claims_lease_and_outcomes(s: &dyn Backend) {
    for id in ["s1", "s2", "s3", "s4", "s5"] {
        sub(s, "p", id, None);
        s.join_topic("p", id, "t", 10).unwrap();
    }
    let target = topic("t");
    let mut msg = message("m", &target, 100, T0);
    msg.topic = Some("tp");
    s.enqueue("p", &msg).unwrap();
    assert_eq!(s.next_due().unwrap(), Some(T0));
    // Nothing is due before it was queued.
    assert!(s.claim(T0 - 1, T0 + 1000, 10).unwrap().is_empty());
    let first = s.claim(T0, T0 + 1000, 3).unwrap();
    assert_eq!(first.len(), 3, "at most the limit");
    let c = &first[0];
    assert_eq!((c.project.as_str(), c.message.as_str(), c.attempts), ("p", "m", 1));
    assert_eq!((c.payload.as_slice(), c.ttl, c.urgency.as_str()), (&b"payload"[..], 100, "normal"));
    assert_eq!((c.topic.as_deref(), c.expires_at), (Some("tp"), T0 + 100_000));
    let s1 = c.subscription.as_ref().expect("the subscription rides along");
    assert_eq!(
        (s1.endpoint.as_str(), s1.p256dh.as_str()),
        (format!("https://push.example/p/{}", s1.id).as_str(), "key-1")
    );
    // The rest, then nothing: leased ones are not due.
    let rest = s.claim(T0, T0 + 1000, 10).unwrap();
    assert_eq!(rest.len(), 2);
    assert!(s.claim(T0 + 999, T0 + 2000, 10).unwrap().is_empty());
    assert_eq!(s.next_due().unwrap(), Some(T0 + 1000), "a lease is the next due time");
    // The lease ran out (the sender died): due again, and the claim counts another attempt.
    let again = s.claim(T0 + 1000, T0 + 2000, 10).unwrap();
    assert_eq!(again.len(), 5);
    assert!(again.iter().all(|c| c.attempts == 2));
    let by_sub =
        |id: &str| again.iter().find(|c| c.subscription.as_ref().unwrap().id == id).unwrap().id;

    let now = T0 + 1500;
    s.complete(
        &[
            (by_sub("s1"), Outcome::Sent { status: 201 }),
            (
                by_sub("s2"),
                Outcome::Retry { at: now + 60_000, status: Some(503), error: "busy".into() },
            ),
            (
                by_sub("s3"),
                Outcome::Failed {
                    status: Some(410),
                    error: "gone".into(),
                    remove_subscription: true,
                },
            ),
            (
                by_sub("s4"),
                Outcome::Failed {
                    status: Some(400),
                    error: "bad".into(),
                    remove_subscription: false,
                },
            ),
            (by_sub("s5"), Outcome::Expired),
        ],
        now,
    )
    .unwrap();
    assert_eq!(counts(s, "p", "m"), DeliveryCounts { queued: 1, sent: 1, failed: 2, expired: 1 });
    let rows = all_deliveries(s, "p", "m");
    let row = |sub: &str| rows.iter().find(|d| d.subscription == sub).unwrap().clone();
    assert_eq!(
        (row("s1").state.as_str(), row("s1").last_status, row("s1").updated_at),
        (SENT, Some(201), now)
    );
    let retry = row("s2");
    assert_eq!(
        (retry.state.as_str(), retry.next_attempt_at, retry.attempts),
        (QUEUED, now + 60_000, 2)
    );
    assert_eq!((retry.last_status, retry.last_error.as_deref()), (Some(503), Some("busy")));
    assert_eq!((row("s3").state.as_str(), row("s3").last_status), (FAILED, Some(410)));
    assert_eq!(row("s4").last_error.as_deref(), Some("bad"));
    assert_eq!(row("s5").state, EXPIRED);
    // 410 removed the subscription (and its topics); 400 did not.
    assert_eq!(s.get_subscription("p", "s3").unwrap(), None);
    assert!(s.get_subscription("p", "s4").unwrap().is_some());
    assert_eq!(s.list_subscriptions("p", None, Some("t"), None, MANY).unwrap().len(), 4);
    // The retry is due at its time, not before.
    assert_eq!(s.next_due().unwrap(), Some(now + 60_000));
    assert!(s.claim(now + 59_999, now + 70_000, 10).unwrap().is_empty());
    // A late outcome for a delivery already recorded (a duplicate after a lease ran out)
    // changes nothing.
    s.complete(
        &[(by_sub("s1"), Outcome::Expired), (by_sub("s3"), Outcome::Sent { status: 201 })],
        now + 1,
    )
    .unwrap();
    assert_eq!(counts(s, "p", "m"), DeliveryCounts { queued: 1, sent: 1, failed: 2, expired: 1 });

    // A subscription removed after the send: the claim says so (None) rather than dropping it.
    sub(s, "p", "late", None);
    s.enqueue("p", &message("m2", &Target::Subscription("late".into()), 100, T0)).unwrap();
    assert!(s.delete_subscription("p", "late").unwrap());
    let orphan = s.claim(T0 + 2000, T0 + 3000, 10).unwrap();
    assert_eq!(orphan.len(), 1);
    assert_eq!((orphan[0].message.as_str(), orphan[0].subscription.as_ref()), ("m2", None));
    s.complete(
        &[(
            orphan[0].id,
            Outcome::Failed { status: None, error: "removed".into(), remove_subscription: false },
        )],
        T0 + 2000,
    )
    .unwrap();
    assert_eq!(counts(s, "p", "m2").failed, 1);
}

pub fn delivery_records_page_in_commit_order(s: &dyn Backend) {
    for id in ["s1", "s2", "s3"] {
        sub(s, "p", id, None);
        s.join_topic("p", id, "t", 10).unwrap();
    }
    enqueue(s, "p", "m1", topic("t"));
    enqueue(s, "p", "m2", topic("t"));
    let page = |q: DeliveryQuery<'_>| s.deliveries("p", &q).unwrap();
    let m1 = page(DeliveryQuery { message: Some("m1"), limit: 2, ..Default::default() });
    assert_eq!(m1.len(), 2);
    assert!(m1[0].id < m1[1].id);
    let rest = page(DeliveryQuery {
        message: Some("m1"),
        after: Some(m1[1].id),
        limit: 2,
        ..Default::default()
    });
    assert_eq!(rest.len(), 1);
    assert!(rest[0].id > m1[1].id);
    assert!(rest.iter().chain(&m1).all(|d| d.message == "m1"));
    let s2 = page(DeliveryQuery { subscription: Some("s2"), limit: 10, ..Default::default() });
    assert_eq!(s2.iter().map(|d| d.message.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
    let both = page(DeliveryQuery {
        message: Some("m2"),
        subscription: Some("s3"),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(both.len(), 1);
    assert_eq!(page(DeliveryQuery { limit: 10, ..Default::default() }).len(), 6);
    assert!(
        s.deliveries("q", &DeliveryQuery { limit: 10, ..Default::default() }).unwrap().is_empty()
    );
}

pub fn backlog_counts_what_is_queued(s: &dyn Backend) {
    assert_eq!(s.backlog().unwrap(), Backlog { queued: 0, oldest_queued_at: None });
    sub(s, "p", "s1", None);
    sub(s, "q", "s2", None);
    let first = Target::Subscription("s1".into());
    s.enqueue("p", &message("m1", &first, 3600, T0 + 10)).unwrap();
    let second = Target::Subscription("s2".into());
    s.enqueue("q", &message("m2", &second, 3600, T0 + 20)).unwrap();
    // Across projects, dated by the oldest message.
    assert_eq!(s.backlog().unwrap(), Backlog { queued: 2, oldest_queued_at: Some(T0 + 10) });
    // Leased deliveries are still pending.
    let claimed = s.claim(T0 + 30, T0 + 1000, 1).unwrap();
    assert_eq!(claimed[0].message, "m1");
    assert_eq!(s.backlog().unwrap().queued, 2);
    s.complete(&[(claimed[0].id, Outcome::Sent { status: 201 })], T0 + 40).unwrap();
    assert_eq!(s.backlog().unwrap(), Backlog { queued: 1, oldest_queued_at: Some(T0 + 20) });
}

pub fn replay_requeues_failed_deliveries_only(s: &dyn Backend) {
    for id in ["s1", "s2", "s3", "s4"] {
        sub(s, "p", id, None);
        s.join_topic("p", id, "t", 10).unwrap();
    }
    let target = topic("t");
    s.enqueue("p", &message("m", &target, 3600, T0)).unwrap();
    // A second message to s1, whose TTL will have run out at replay time.
    let one = Target::Subscription("s1".into());
    s.enqueue("p", &message("short", &one, 1, T0)).unwrap();
    let claimed = s.claim(T0, T0 + 1000, 10).unwrap();
    assert_eq!(claimed.len(), 5);
    let id_of = |m: &str, sub: &str| {
        claimed
            .iter()
            .find(|c| c.message == m && c.subscription.as_ref().unwrap().id == sub)
            .unwrap()
            .id
    };
    let failed = |remove| Outcome::Failed {
        status: Some(500),
        error: "x".into(),
        remove_subscription: remove,
    };
    s.complete(
        &[
            (id_of("m", "s1"), failed(false)),
            (id_of("m", "s2"), failed(false)),
            (id_of("m", "s3"), failed(true)), // its subscription is gone
            (id_of("m", "s4"), Outcome::Sent { status: 201 }),
            (id_of("short", "s1"), failed(false)),
        ],
        T0 + 100,
    )
    .unwrap();
    let now = T0 + 5_000; // "short" expired at T0 + 1000
    // Nothing of another project, an unknown message, or a subscription with nothing failed.
    assert_eq!(s.requeue_failed("q", Some("m"), None, now).unwrap(), 0);
    assert_eq!(s.requeue_failed("p", Some("nope"), None, now).unwrap(), 0);
    assert_eq!(s.requeue_failed("p", None, Some("s4"), now).unwrap(), 0);
    // By subscription: s1's failed delivery of "m" (not the expired message's).
    assert_eq!(s.requeue_failed("p", None, Some("s1"), now).unwrap(), 1);
    // By message: s2's (s1's is queued already, s3's subscription is gone, s4's was sent).
    assert_eq!(s.requeue_failed("p", Some("m"), None, now).unwrap(), 1);
    assert_eq!(s.requeue_failed("p", Some("m"), None, now).unwrap(), 0, "already queued");
    assert_eq!(counts(s, "p", "m"), DeliveryCounts { queued: 2, sent: 1, failed: 1, expired: 0 });
    assert_eq!(counts(s, "p", "short").failed, 1);
    // Due now, with fresh attempts.
    assert!(s.claim(now - 1, now + 1000, 10).unwrap().is_empty());
    let replayed = s.claim(now, now + 1000, 10).unwrap();
    let mut subs: Vec<&str> =
        replayed.iter().map(|c| c.subscription.as_ref().unwrap().id.as_str()).collect();
    subs.sort();
    assert_eq!(subs, ["s1", "s2"]);
    assert!(replayed.iter().all(|c| c.message == "m" && c.attempts == 1));
}

pub fn old_finished_messages_are_pruned(s: &dyn Backend) {
    sub(s, "p", "s1", None);
    sub(s, "q", "s2", None);
    let to = |id: &str| Target::Subscription(id.into());
    // Three old messages: two finished (sent, failed), one with a delivery still queued.
    for (project, id, sub_id) in
        [("p", "done", "s1"), ("q", "failed", "s2"), ("p", "pending", "s1")]
    {
        s.enqueue(project, &message(id, &to(sub_id), 3600, T0)).unwrap();
    }
    let claimed = s.claim(T0, T0 + 1000, 10).unwrap();
    let outcomes: Vec<(u64, Outcome)> = claimed
        .iter()
        .filter_map(|c| match c.message.as_str() {
            "done" => Some((c.id, Outcome::Sent { status: 201 })),
            "failed" => Some((
                c.id,
                Outcome::Failed {
                    status: Some(400),
                    error: "x".into(),
                    remove_subscription: false,
                },
            )),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes.len(), 2);
    s.complete(&outcomes, T0 + 10).unwrap();
    // A recent finished one.
    s.enqueue("p", &message("recent", &to("s1"), 3600, T0 + 50_000)).unwrap();
    let recent = s.claim(T0 + 50_000, T0 + 51_000, 10).unwrap();
    let recent: Vec<_> = recent.into_iter().filter(|c| c.message == "recent").collect();
    s.complete(&[(recent[0].id, Outcome::Sent { status: 201 })], T0 + 50_001).unwrap();

    // At most `limit` per call.
    assert_eq!(s.prune_messages(T0 + 10_000, 1).unwrap(), 1);
    assert_eq!(s.prune_messages(T0 + 10_000, 10).unwrap(), 1);
    assert_eq!(s.prune_messages(T0 + 10_000, 10).unwrap(), 0);
    assert_eq!(s.message("p", "done").unwrap(), None);
    assert_eq!(s.message("q", "failed").unwrap(), None);
    assert!(all_deliveries(s, "p", "done").is_empty(), "deliveries go with their message");
    assert!(all_deliveries(s, "q", "failed").is_empty());
    // The queued one stays however old; the recent one stays.
    assert_eq!(s.message("p", "pending").unwrap().unwrap().deliveries.queued, 1);
    assert_eq!(s.message("p", "recent").unwrap().unwrap().deliveries.sent, 1);
}

pub fn projects_are_isolated_and_deleted(s: &dyn Backend) {
    let key = VapidKey { private_key: vec![1; 32], public_key: vec![4; 65], created_at: T0 };
    for p in ["p", "q"] {
        s.insert_vapid_key(p, &key).unwrap();
        sub(s, p, "s1", Some("alice"));
        s.join_topic(p, "s1", "t", 10).unwrap();
        enqueue(s, p, "m1", topic("t"));
    }
    // The same ids in two projects are two rows each.
    assert!(s.delete_subscription("q", "s1").unwrap());
    assert!(s.get_subscription("p", "s1").unwrap().is_some());
    assert_eq!(s.list_subscriptions("p", None, Some("t"), None, MANY).unwrap().len(), 1);
    assert!(s.message("p", "m1").unwrap().is_some());
    assert_eq!(s.message("r", "m1").unwrap(), None);
    sub(s, "q", "s1", Some("alice"));

    let removed = s.delete_project("p").unwrap();
    assert!(removed >= 5, "key, subscription, topic, message, delivery: {removed}");
    assert_eq!(s.vapid_key("p").unwrap(), None);
    assert_eq!(s.get_subscription("p", "s1").unwrap(), None);
    assert_eq!(s.message("p", "m1").unwrap(), None);
    assert!(all_deliveries(s, "p", "m1").is_empty());
    // q is untouched, and only q's delivery is left to claim.
    assert!(s.vapid_key("q").unwrap().is_some());
    assert!(s.get_subscription("q", "s1").unwrap().is_some());
    assert_eq!(s.message("q", "m1").unwrap().unwrap().deliveries.queued, 1);
    let claimed = s.claim(T0, T0 + 1000, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].project, "q");
}

/// Each delivery that a push service accepted counts once in the project's hourly usage
/// (`push_sent`, empty function name), in the transaction that records it: not retries, not
/// failures, not an outcome recorded twice.
pub fn delivered_messages_are_metered_once(s: &dyn Backend) {
    use nimbus_model::usage::hour_of;
    for id in ["s1", "s2", "s3"] {
        sub(s, "p", id, None);
        s.join_topic("p", id, "t", 10).unwrap();
    }
    sub(s, "q", "other", None);
    enqueue(s, "p", "m1", topic("t"));
    enqueue(s, "q", "m2", Target::Subscription("other".into()));
    let claimed = s.claim(T0 + 1, T0 + 1000, 10).unwrap();
    assert_eq!(claimed.len(), 4);
    let id = |sub: &str| {
        claimed.iter().find(|c| c.subscription.as_ref().is_some_and(|s| s.id == sub)).unwrap().id
    };
    let now = T0 + 2 * 3_600_000 + 5;
    let outcomes = [
        (id("s1"), Outcome::Sent { status: 201 }),
        (id("s2"), Outcome::Sent { status: 201 }),
        (id("s3"), Outcome::Retry { at: now + 10, status: Some(503), error: "busy".into() }),
        (
            id("other"),
            Outcome::Failed { status: Some(400), error: "bad".into(), remove_subscription: false },
        ),
    ];
    s.complete(&outcomes, now).unwrap();
    // Recorded again (a sender retrying its batch): the deliveries left `queued`, nothing counts.
    s.complete(&outcomes[..2], now).unwrap();
    let rows = s.usage_hours(Some("p"), T0, now + 1).unwrap();
    let got: Vec<(&str, i64, u64)> =
        rows.iter().map(|r| (r.function.as_str(), r.hour, r.counters.push_sent)).collect();
    assert_eq!(got, [("", hour_of(now), 2)]);
    assert_eq!(rows[0].counters.requests, 0);
    let retried = s.claim(now + 10, now + 1000, 10).unwrap();
    assert_eq!(retried.len(), 1);
    s.complete(&[(retried[0].id, Outcome::Sent { status: 201 })], now + 20).unwrap();
    assert_eq!(s.usage_total("p", T0, now + 1000).unwrap().push_sent, 3);
    assert!(s.usage_hours(Some("q"), T0, now + 1000).unwrap().is_empty(), "a failure is not sent");
}
