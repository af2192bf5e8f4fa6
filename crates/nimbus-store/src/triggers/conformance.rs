//! The backend-independent conformance suite of [`DeliveryStore`], [`ScheduleStore`] and
//! [`ProducerStore`] (with the [`EventLog`] they write to). Every backend's tests run
//! [`run_all`] on a fresh store.

use serde_json::json;

use super::*;
use crate::events::EventLog;

pub fn run_all<S: DeliveryStore + ScheduleStore + ProducerStore + EventLog>(store: &S) {
    fan_out_moves_the_cursor_atomically(store);
    claims_lease_and_finish(store);
    finish_many_is_finish_for_each(store);
    ordered_deliveries_wait_for_earlier_ones(store);
    dead_letters_replay_and_purge(store);
    schedules_fire_each_tick_once(store);
    idempotency_keys(store);
    async_invocations(store);
    projects_are_isolated(store);
}

fn event(project: &str, position: u64, subject: &str) -> Event {
    Event {
        position,
        id: format!("ev-{position}"),
        project: project.into(),
        kind: "dev.nimbus.test.thing".into(),
        source: "/test".into(),
        subject: subject.into(),
        time: 1_000 + position as i64,
        data: json!({ "n": position }),
    }
}

fn delivery(project: &str, function: &str, e: Event, order_key: Option<&str>) -> NewDelivery {
    NewDelivery {
        project: project.into(),
        function: function.into(),
        trigger: "t".into(),
        event: e,
        path: "/events".into(),
        order_key: order_key.map(str::to_owned),
        not_before: 0,
        max_attempts: 2,
        expires_at: i64::MAX,
        lease_ms: 10_000,
    }
}

fn attempt(n: u32, ok: bool) -> Attempt {
    Attempt {
        attempt: n,
        invocation_id: Some(format!("inv-{n}")),
        started_at: 5,
        duration_ms: 3,
        http_status: Some(if ok { 200 } else { 500 }),
        ok,
        error: (!ok).then(|| "HTTP 500".to_owned()),
    }
}

fn all<S: DeliveryStore>(s: &S, project: &str, f: &str) -> Vec<Delivery> {
    s.list_deliveries(
        project,
        &DeliveryQuery { function: Some(f.into()), limit: 1000, ..Default::default() },
    )
    .unwrap()
}

pub fn fan_out_moves_the_cursor_atomically<S: DeliveryStore + EventLog>(s: &S) {
    s.fan_out(
        "dispatch-a",
        7,
        &[
            delivery("p1", "fa", event("p1", 6, "x"), None),
            delivery("p1", "fa", event("p1", 7, "y"), None),
        ],
    )
    .unwrap();
    assert_eq!(s.cursor("dispatch-a").unwrap(), Some(7));
    let got = all(s, "p1", "fa");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].event, event("p1", 6, "x"), "the delivery keeps a copy of its event");
    assert_eq!(got[0].state, DeliveryState::Pending);
    assert_eq!(got[0].path, "/events");
    // Nothing to deliver still moves the cursor.
    s.fan_out("dispatch-a", 9, &[]).unwrap();
    assert_eq!(s.cursor("dispatch-a").unwrap(), Some(9));
    // Clean up for the next tests, which claim everything due.
    for d in got {
        assert!(s.finish(d.id, &attempt(1, true), AfterAttempt::Delivered).unwrap());
    }
}

pub fn finish_many_is_finish_for_each<S: DeliveryStore>(s: &S) {
    let ds: Vec<NewDelivery> =
        (30..33).map(|n| delivery("pm", "fm", event("pm", n, "m"), None)).collect();
    s.fan_out("dispatch-m", 33, &ds).unwrap();
    let claimed = s.claim(10_000, 10).unwrap();
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    let (a, b, c) = (claimed[0].id, claimed[1].id, claimed[2].id);
    let done = s
        .finish_many(&[
            (a, attempt(1, true), AfterAttempt::Delivered),
            (b, attempt(1, false), AfterAttempt::RetryAt(60_000)),
            (c, attempt(1, false), AfterAttempt::Dead),
            // Twice in one batch: the second finds it no longer pending, as `finish` would.
            (a, attempt(1, true), AfterAttempt::Delivered),
        ])
        .unwrap();
    assert_eq!(done, [true, true, true, false]);
    let state = |id| s.get_delivery("pm", id).unwrap().unwrap();
    assert_eq!(state(a).0.state, DeliveryState::Delivered);
    assert_eq!(state(a).1.len(), 1, "one attempt recorded");
    let (retry, attempts) = state(b);
    assert_eq!(
        (retry.state, retry.next_at, retry.leased_until),
        (DeliveryState::Pending, 60_000, 0)
    );
    assert_eq!(attempts[0].error.as_deref(), Some("HTTP 500"));
    assert_eq!(state(c).0.state, DeliveryState::Dead);
    assert!(s.finish_many(&[]).unwrap().is_empty());
    // Clean up for the next tests, which claim everything due.
    let again = s.claim(60_000, 10).unwrap();
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [b]);
    assert!(s.finish(b, &attempt(2, true), AfterAttempt::Delivered).unwrap());
    assert_eq!(s.purge("pm", Some(c), &DeliveryQuery::default()).unwrap(), 1);
}

pub fn claims_lease_and_finish<S: DeliveryStore>(s: &S) {
    let mut later = delivery("p1", "fb", event("p1", 20, "a"), None);
    later.not_before = 50_000;
    s.fan_out("dispatch-b", 21, &[delivery("p1", "fb", event("p1", 21, "b"), None), later])
        .unwrap();
    let now = 10_000;
    let claimed = s.claim(now, 10).unwrap();
    assert_eq!(claimed.len(), 1, "only the due delivery is claimed: {claimed:?}");
    let d = &claimed[0];
    assert_eq!((d.attempts, d.leased_until), (1, now + 10_000));
    assert!(s.claim(now + 1, 10).unwrap().is_empty(), "a leased delivery is not claimed twice");
    assert_eq!(s.next_due().unwrap(), Some(now + 10_000), "the lease's end is when to look next");
    // Given back (no slot): claimable again from the given time, the attempt not counted.
    s.release(d.id, now + 5).unwrap();
    assert!(s.claim(now + 4, 10).unwrap().is_empty());
    let back = s.claim(now + 5, 10).unwrap();
    assert_eq!((back.len(), back[0].attempts), (1, 1), "a release does not count an attempt");
    // The lease expired (the claimer died): claimed again, as a second attempt.
    let again = s.claim(now + 5 + 10_001, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    assert!(s.finish(d.id, &attempt(2, false), AfterAttempt::RetryAt(now + 20_000)).unwrap());
    assert_eq!(s.get_delivery("p1", d.id).unwrap().unwrap().0.leased_until, 0);
    assert!(s.claim(now + 19_999, 10).unwrap().is_empty(), "not before its retry time");
    assert_eq!(s.next_due().unwrap(), Some(now + 20_000));
    let third = s.claim(now + 20_000, 10).unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].last_error.as_deref(), Some("HTTP 500"));
    assert!(s.finish(d.id, &attempt(3, true), AfterAttempt::Delivered).unwrap());
    assert!(
        !s.finish(d.id, &attempt(3, true), AfterAttempt::Delivered).unwrap(),
        "finishing a delivery that is no longer pending is ignored"
    );
    let (done, attempts) = s.get_delivery("p1", d.id).unwrap().unwrap();
    assert_eq!(done.state, DeliveryState::Delivered);
    assert_eq!(done.last_invocation.as_deref(), Some("inv-3"));
    assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), [2, 3]);
    // The delayed one becomes due at its time.
    let delayed = s.claim(50_000, 10).unwrap();
    assert_eq!(delayed.len(), 1);
    assert!(s.finish(delayed[0].id, &attempt(1, true), AfterAttempt::Delivered).unwrap());
    // Pruning removes delivered ones updated before the bound.
    assert!(s.prune_deliveries(i64::MAX, 0).unwrap() >= 2);
    assert!(all(s, "p1", "fb").is_empty());
}

pub fn ordered_deliveries_wait_for_earlier_ones<S: DeliveryStore>(s: &S) {
    s.fan_out(
        "dispatch-c",
        33,
        &[
            delivery("p1", "fc", event("p1", 30, "k1"), Some("k1")),
            delivery("p1", "fc", event("p1", 31, "k1"), Some("k1")),
            delivery("p1", "fc", event("p1", 32, "k2"), Some("k2")),
            delivery("p1", "fc", event("p1", 33, "-"), None),
        ],
    )
    .unwrap();
    let first = s.claim(100, 10).unwrap();
    let positions: Vec<u64> = first.iter().map(|d| d.event.position).collect();
    assert_eq!(positions, [30, 32, 33], "the second k1 waits for the first");
    let k1 = first.iter().find(|d| d.event.position == 30).unwrap();
    // A failed first attempt keeps the order: the second still waits through the backoff.
    assert!(s.finish(k1.id, &attempt(1, false), AfterAttempt::RetryAt(200)).unwrap());
    assert!(s.claim(150, 10).unwrap().is_empty());
    let retried = s.claim(200, 10).unwrap();
    assert_eq!(retried.iter().map(|d| d.event.position).collect::<Vec<_>>(), [30]);
    assert!(s.finish(k1.id, &attempt(2, true), AfterAttempt::Delivered).unwrap());
    let next = s.claim(201, 10).unwrap();
    assert_eq!(next.iter().map(|d| d.event.position).collect::<Vec<_>>(), [31]);
    for d in first.iter().filter(|d| d.event.position != 30).chain(&next) {
        s.finish(d.id, &attempt(1, true), AfterAttempt::Delivered).unwrap();
    }
}

pub fn dead_letters_replay_and_purge<S: DeliveryStore>(s: &S) {
    s.fan_out(
        "dispatch-d",
        42,
        &[
            delivery("p1", "fd", event("p1", 40, "a"), None),
            delivery("p1", "fd", event("p1", 41, "b"), None),
            delivery("p1", "fe", event("p1", 42, "c"), None),
        ],
    )
    .unwrap();
    for d in s.claim(100, 10).unwrap() {
        assert!(s.finish(d.id, &attempt(1, false), AfterAttempt::Dead).unwrap());
    }
    let dead_q =
        DeliveryQuery { state: Some(DeliveryState::Dead), limit: 100, ..Default::default() };
    assert_eq!(s.list_deliveries("p1", &dead_q).unwrap().len(), 3);
    let stats = s.subscription_stats(Some("p1")).unwrap();
    let fd = stats.iter().find(|st| st.function == "fd").unwrap();
    assert_eq!((fd.pending, fd.dead), (0, 2));
    // Replay one: back to pending, claimable, with attempts numbered on.
    let one = s.list_deliveries("p1", &dead_q).unwrap()[0].clone();
    assert_eq!(s.replay("p1", Some(one.id), &DeliveryQuery::default(), 500, 1000).unwrap(), 1);
    let claimed = s.claim(500, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, one.id);
    assert_eq!((claimed[0].attempts, claimed[0].max_attempts), (2, 3));
    assert_eq!(claimed[0].expires_at, 1500);
    assert!(s.finish(one.id, &attempt(2, true), AfterAttempt::Delivered).unwrap());
    // Replay by filter, then purge by filter.
    let fe = DeliveryQuery { function: Some("fe".into()), ..Default::default() };
    assert_eq!(s.purge("p1", None, &fe).unwrap(), 1);
    let fd_q = DeliveryQuery { function: Some("fd".into()), ..Default::default() };
    assert_eq!(s.replay("p1", None, &fd_q, 600, 1000).unwrap(), 1);
    let d = s.claim(600, 10).unwrap();
    assert_eq!(d.len(), 1);
    s.finish(d[0].id, &attempt(2, false), AfterAttempt::Dead).unwrap();
    assert_eq!(s.purge("p1", Some(d[0].id), &DeliveryQuery::default()).unwrap(), 1);
    assert!(s.list_deliveries("p1", &dead_q).unwrap().is_empty());
}

pub fn schedules_fire_each_tick_once<S: ScheduleStore + EventLog>(s: &S) {
    let tick = |n: i64| crate::events::NewEvent {
        project: "p1".into(),
        kind: "dev.nimbus.scheduler.tick".into(),
        source: "/sched".into(),
        subject: "f/s".into(),
        data: json!({ "tick": n }),
    };
    assert_eq!(s.last_tick("p1", "f", "s").unwrap(), None);
    let before = s.bounds().unwrap().last;
    assert!(s.fire_tick("p1", "f", "s", 60_000, &[tick(60_000)]).unwrap());
    assert!(!s.fire_tick("p1", "f", "s", 60_000, &[tick(60_000)]).unwrap(), "fired twice");
    assert!(!s.fire_tick("p1", "f", "s", 0, &[tick(0)]).unwrap(), "an older tick fired");
    assert!(s.fire_tick("p1", "f", "s", 120_000, &[tick(120_000)]).unwrap());
    assert_eq!(s.last_tick("p1", "f", "s").unwrap(), Some(120_000));
    let events = s.read(before, Some("p1"), 10).unwrap();
    let ticks: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "dev.nimbus.scheduler.tick")
        .map(|e| e.data["tick"].clone())
        .collect();
    assert_eq!(ticks, [json!(60_000), json!(120_000)], "one event per fired tick");
}

pub fn idempotency_keys<S: ProducerStore + EventLog>(s: &S) {
    let msg = |n: i64| crate::events::NewEvent {
        project: "p1".into(),
        kind: "dev.nimbus.queue.message.published".into(),
        source: "/q".into(),
        subject: "q".into(),
        data: json!({ "n": n }),
    };
    let idem = Idempotency { scope: "queue:q", key: "k-1", since: 0 };
    let first = s.append_once(&[msg(1)], Some(idem), &json!({"id": "m1"})).unwrap();
    assert!(matches!(first, Once::First(ref p) if p.len() == 1));
    let again = s.append_once(&[msg(2)], Some(idem), &json!({"id": "m2"})).unwrap();
    assert_eq!(again, Once::Repeat(json!({"id": "m1"})), "the same key returns the first result");
    // Outside the window, the key is new again.
    let later = Idempotency { since: i64::MAX, ..idem };
    assert!(matches!(
        s.append_once(&[msg(3)], Some(later), &json!({"id": "m3"})).unwrap(),
        Once::First(_)
    ));
    // Another scope is another key.
    let other = Idempotency { scope: "queue:r", ..idem };
    assert!(matches!(s.append_once(&[msg(4)], Some(other), &json!({})).unwrap(), Once::First(_)));
    assert!(matches!(s.append_once(&[msg(5)], None, &json!({})).unwrap(), Once::First(_)));
    let data: Vec<_> = s
        .read(0, Some("p1"), 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "dev.nimbus.queue.message.published")
        .map(|e| e.data["n"].clone())
        .collect();
    assert_eq!(data, [json!(1), json!(3), json!(4), json!(5)], "a repeated key appended nothing");
}

pub fn async_invocations<S: ProducerStore + EventLog>(s: &S) {
    let inv = AsyncInvocation {
        id: "a1".into(),
        project: "p1".into(),
        function: "f".into(),
        status: "queued".into(),
        method: "POST".into(),
        path: "/x?y=1".into(),
        headers: vec![("content-type".into(), "text/plain".into())],
        body: b"hello".to_vec(),
        callback_url: Some("https://example.com/cb".into()),
        created_at: 7,
        completed_at: None,
        attempts: 0,
        invocation_id: None,
        response_status: None,
        response_headers: vec![],
        response_body: vec![],
        response_truncated: false,
        error: None,
        callback: Default::default(),
    };
    let ev = crate::events::NewEvent {
        project: "p1".into(),
        kind: "dev.nimbus.functions.invocation.requested".into(),
        source: "/f".into(),
        subject: "a1".into(),
        data: json!({ "id": "a1", "function": "f" }),
    };
    let idem = Idempotency { scope: "invoke:f", key: "same", since: 0 };
    assert!(matches!(
        s.create_async(&inv, &ev, Some(idem), &json!({"id": "a1"})).unwrap(),
        Once::First(_)
    ));
    let second = AsyncInvocation { id: "a2".into(), ..inv.clone() };
    assert_eq!(
        s.create_async(&second, &ev, Some(idem), &json!({"id": "a2"})).unwrap(),
        Once::Repeat(json!({"id": "a1"}))
    );
    assert_eq!(s.get_async("p1", "a2").unwrap(), None, "a repeated key stored nothing");
    assert_eq!(s.get_async("p1", "a1").unwrap().as_ref(), Some(&inv));
    assert_eq!(s.get_async("p2", "a1").unwrap(), None, "another project's invocation");
    let done = AsyncResult {
        status: "succeeded".into(),
        attempts: 1,
        invocation_id: Some("inv".into()),
        response_status: Some(201),
        response_headers: vec![("x".into(), "y".into())],
        response_body: b"done".to_vec(),
        response_truncated: false,
        error: None,
        completed_at: Some(99),
    };
    s.update_async("p1", "a1", &done).unwrap();
    let got = s.get_async("p1", "a1").unwrap().unwrap();
    assert_eq!(
        (got.status.as_str(), got.response_status, got.response_body.as_slice()),
        ("succeeded", Some(201), &b"done"[..])
    );
    assert_eq!(got.callback.status.as_deref(), Some("pending"), "finishing makes the callback due");
    // A pending callback is claimed with a lease, counted, and kept from pruning.
    assert_eq!(s.prune_async(100, 0).unwrap(), 0, "a pending callback keeps its invocation");
    assert_eq!(s.next_callback_due().unwrap(), Some(99));
    let claimed = s.claim_callbacks(99, 200, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].callback.attempts, 1);
    assert_eq!(claimed[0].response_body, b"done");
    assert!(s.claim_callbacks(150, 300, 10).unwrap().is_empty(), "leased until 200");
    assert_eq!(s.next_callback_due().unwrap(), Some(200));
    // Unfinished, or without a URL: no callback.
    let plain = AsyncInvocation { id: "a3".into(), callback_url: None, ..inv.clone() };
    s.create_async(&plain, &ev, None, &json!({})).unwrap();
    s.update_async("p1", "a3", &done).unwrap();
    assert_eq!(s.get_async("p1", "a3").unwrap().unwrap().callback, CallbackState::default());
    let retry = CallbackOutcome::RetryAt { at: 300, error: "503".into() };
    s.finish_callback("p1", "a1", &retry).unwrap();
    assert!(s.claim_callbacks(299, 400, 10).unwrap().is_empty());
    let again = s.claim_callbacks(300, 400, 10).unwrap();
    assert_eq!((again.len(), again[0].callback.attempts), (1, 2));
    // A graceful stop gives a claimed callback back: due at once, its attempt not counted.
    s.release_callbacks(&[("p1".into(), "a1".into()), ("p1".into(), "nope".into())], 310).unwrap();
    assert_eq!(s.next_callback_due().unwrap(), Some(310));
    let again = s.claim_callbacks(310, 400, 10).unwrap();
    assert_eq!((again.len(), again[0].callback.attempts), (1, 2));
    s.finish_callback("p1", "a1", &CallbackOutcome::Delivered).unwrap();
    let got = s.get_async("p1", "a1").unwrap().unwrap();
    assert_eq!(
        (got.callback.status.as_deref(), got.callback.attempts, got.callback.error.as_deref()),
        (Some("delivered"), 2, None)
    );
    assert_eq!(s.next_callback_due().unwrap(), None);
    // A late outcome (a call that outlived its lease) does not reopen a settled callback.
    s.finish_callback("p1", "a1", &retry).unwrap();
    assert_eq!(
        s.get_async("p1", "a1").unwrap().unwrap().callback.status.as_deref(),
        Some("delivered")
    );
    assert_eq!(s.prune_async(100, 0).unwrap(), 2);
    assert_eq!(s.get_async("p1", "a1").unwrap(), None);
}

pub fn projects_are_isolated<S: DeliveryStore + ScheduleStore + ProducerStore>(s: &S) {
    s.fan_out(
        "dispatch-e",
        51,
        &[
            delivery("p2", "fx", event("p2", 50, "a"), None),
            delivery("p3", "fx", event("p3", 51, "a"), None),
        ],
    )
    .unwrap();
    let q = DeliveryQuery { limit: 100, ..Default::default() };
    let p2 = s.list_deliveries("p2", &q).unwrap();
    assert_eq!(p2.len(), 1);
    assert!(s.get_delivery("p3", p2[0].id).unwrap().is_none(), "read across projects");
    assert_eq!(s.subscription_stats(Some("p2")).unwrap().len(), 1);
    assert!(s.fire_tick("p2", "fx", "s", 1, &[]).unwrap());
    s.delete_project_triggers("p2").unwrap();
    assert!(s.list_deliveries("p2", &q).unwrap().is_empty());
    assert_eq!(s.last_tick("p2", "fx", "s").unwrap(), None);
    assert_eq!(s.list_deliveries("p3", &q).unwrap().len(), 1, "another project's rows survived");
    assert_eq!(s.delete_function_deliveries("p3", "fx").unwrap(), 1);
}
