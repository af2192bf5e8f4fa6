//! Event triggers (issue 9): every producer's events reach the subscribed function as CloudEvents
//! (binary mode); failures retry with backoff, then land in the dead-letter queue, which can be
//! replayed and purged; queues, schedules and asynchronous invocations ride the same mechanism.
//! The subscriber is the `events` guest, which prints what it received into its invocation record.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, error_code, test_config};

fn config(dir: &std::path::Path) -> nimbus_server::ServerConfig {
    let mut c = test_config(dir);
    // Fast retries, so failure paths take milliseconds.
    c.triggers.retry_base = Duration::from_millis(20);
    c.triggers.retry_max = Duration::from_millis(200);
    c
}

/// Deploy the `events` guest as `name` with `triggers` (and `env`).
async fn subscriber(s: &TestServer, name: &str, triggers: Value, env: Value) {
    s.deploy(
        "events",
        json!({"name": name, "routes": [format!("/{name}")], "triggers": triggers, "env": env}),
    )
    .await;
}

/// What the guest printed for each invocation of `function` with a trigger, oldest first, once
/// there are at least `n` (fails after 10 s).
async fn received(s: &TestServer, function: &str, n: usize) -> Vec<(Value, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r: Value = s
            .api(Method::GET, &format!("/v1/invocations?function={function}&order=asc&limit=1000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<(Value, Value)> = r["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["trigger"] != "http")
            .map(|r| {
                let line = r["stdout"].as_str().unwrap().lines().next().unwrap_or("null");
                (r.clone(), serde_json::from_str(line).unwrap_or(Value::Null))
            })
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{function} got {} of {n} events: {r}", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

/// Deliveries of `function` in `state`, once there are `n` (fails after 10 s).
async fn deliveries(s: &TestServer, function: &str, state: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json_of(
            s.api(Method::GET, &format!("/v1/deliveries?function={function}&state={state}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let list = v["deliveries"].as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < deadline, "{function}: {} of {n} {state} deliveries", list.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_collection(s: &TestServer, name: &str) {
    let r =
        s.api(Method::POST, "/v1/collections").json(&json!({"name": name})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_write_runs_the_subscriber_with_a_cloudevent() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    create_collection(&s, "posts").await;
    create_collection(&s, "other").await;
    subscriber(
        &s,
        "on-posts",
        json!([{"kind": "documents", "collection": "posts", "events": ["created"], "path": "/hook"}]),
        json!({}),
    )
    .await;
    let r = s
        .api(Method::POST, "/v1/projects/default/collections/other/documents")
        .json(&json!({"x": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let doc = json_of(
        s.api(Method::POST, "/v1/projects/default/collections/posts/documents")
            .json(&json!({"title": "hello"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let got = received(&s, "on-posts", 1).await;
    let (record, req) = &got[0];
    assert_eq!(record["trigger"], "documents:documents");
    assert_eq!(req["method"], "POST");
    assert_eq!(req["path"], "/hook");
    let h = &req["headers"];
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-type"], "dev.nimbus.documents.document.created");
    assert_eq!(h["ce-source"], "/v1/projects/default/collections/posts");
    assert_eq!(h["ce-subject"], doc["id"]);
    assert!(h["ce-id"].as_str().is_some_and(|id| id.len() >= 32), "{h}");
    assert!(h["ce-time"].as_str().is_some_and(|t| t.ends_with('Z')), "{h}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-nimbus-project"], "default");
    let data: Value = serde_json::from_str(req["body"].as_str().unwrap()).unwrap();
    assert_eq!(data["document"]["data"]["title"], "hello");
    // An update is not subscribed, nor is the other collection: nothing more arrives.
    let r = s
        .api(
            Method::PATCH,
            &format!(
                "/v1/projects/default/collections/posts/documents/{}",
                doc["id"].as_str().unwrap()
            ),
        )
        .json(&json!({"title": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let delivered = deliveries(&s, "on-posts", "delivered", 1).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&s, "on-posts", 1).await.len(), 1, "an unsubscribed event was delivered");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_runs_the_storage_trigger_filtered_by_prefix_and_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    let r =
        s.api(Method::POST, "/v1/buckets").json(&json!({"name": "uploads"})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    subscriber(
        &s,
        "on-upload",
        json!([{"kind": "storage", "bucket": "uploads", "prefix": "in/", "suffix": ".txt"}]),
        json!({}),
    )
    .await;
    for key in ["in/a.txt", "in/b.jpg", "out/c.txt", "in/d.txt"] {
        let r = s
            .api(Method::PUT, &format!("/v1/projects/default/buckets/uploads/objects/{key}"))
            .header("content-type", "text/plain")
            .body(format!("contents of {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let r = s
        .api(Method::DELETE, "/v1/projects/default/buckets/uploads/objects/in/a.txt")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let got = received(&s, "on-upload", 3).await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|(_, req)| {
            (
                req["headers"]["ce-type"].as_str().unwrap().to_owned(),
                req["headers"]["ce-subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = vec![
        ("dev.nimbus.storage.object.created".to_owned(), "in/a.txt".to_owned()),
        ("dev.nimbus.storage.object.created".to_owned(), "in/d.txt".to_owned()),
        ("dev.nimbus.storage.object.deleted".to_owned(), "in/a.txt".to_owned()),
    ];
    let mut sorted = seen.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "only matching keys, each once");
    let data: Value = serde_json::from_str(got[0].1["body"].as_str().unwrap()).unwrap();
    assert_eq!(data["bucket"], "uploads");
    assert!(data["size"].as_u64().unwrap() > 0 && data["etag"].is_string(), "{data}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&s, "on-upload", 3).await.len(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_dead_letter_and_replay_keeps_the_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    // Fails its first three attempts; three attempts are allowed.
    subscriber(
        &s,
        "flaky",
        json!([{"kind": "queue", "queue": "jobs", "max_attempts": 3}]),
        json!({"FAIL_ATTEMPTS": "3"}),
    )
    .await;
    let r = s
        .api(Method::POST, "/v1/queues/jobs/messages")
        .json(&json!({"body": {"job": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let dead = deliveries(&s, "flaky", "dead", 1).await;
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["last_error"], "the function answered HTTP 500");
    let id = dead[0]["id"].as_u64().unwrap();
    let detail =
        json_of(s.api(Method::GET, &format!("/v1/deliveries/{id}")).send().await.unwrap()).await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a["ok"] == false && a["http_status"] == 500));
    // Each attempt links to its invocation record.
    let inv = attempts[0]["invocation_id"].as_str().unwrap();
    let got = received(&s, "flaky", 3).await;
    assert!(got.iter().any(|(r, _)| r["id"] == inv), "attempt not linked to its record");
    // Backoff between attempts (20 ms base, doubling, half jitter): the gaps are not zero.
    let starts: Vec<i64> = attempts.iter().map(|a| a["started_at"].as_i64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[1] - w[0] >= 10), "no backoff: {starts:?}");
    let subs = json_of(s.api(Method::GET, "/v1/triggers").send().await.unwrap()).await;
    let sub = &subs["subscriptions"][0];
    assert_eq!(
        (sub["function"].as_str(), sub["trigger"].as_str(), sub["dead"].as_u64()),
        (Some("flaky"), Some("queue"), Some(1))
    );

    // Replay: the fourth attempt succeeds, with the same event id as every earlier attempt.
    let r = s.api(Method::POST, &format!("/v1/deliveries/{id}/replay")).send().await.unwrap();
    assert_eq!(json_of(r).await["count"], 1);
    deliveries(&s, "flaky", "delivered", 1).await;
    let got = received(&s, "flaky", 4).await;
    let ids: std::collections::HashSet<_> =
        got.iter().map(|(_, req)| req["headers"]["ce-id"].clone()).collect();
    assert_eq!(ids.len(), 1, "the event id changed across retries: {ids:?}");
    let attempts: Vec<_> =
        got.iter().map(|(_, req)| req["headers"]["x-nimbus-delivery-attempt"].clone()).collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);

    // Purge: another message dies (attempts 5.. do not apply: a new delivery starts at 1).
    let r = s
        .api(Method::POST, "/v1/queues/jobs/messages")
        .json(&json!({"body": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    deliveries(&s, "flaky", "dead", 1).await;
    let r = s.api(Method::DELETE, "/v1/deliveries?function=flaky").send().await.unwrap();
    assert_eq!(json_of(r).await["count"], 1);
    let r = s.api(Method::GET, "/v1/deliveries?function=flaky&state=dead").send().await.unwrap();
    assert_eq!(json_of(r).await["deliveries"], json!([]));
    // Replaying what is not a dead letter is a 404.
    let r = s.api(Method::POST, &format!("/v1/deliveries/{id}/replay")).send().await.unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_take_delays_idempotency_keys_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    subscriber(&s, "worker", json!([{"kind": "queue", "queue": "mail"}]), json!({})).await;
    let publish = |body: Value, key: Option<&str>| {
        let mut r = s.api(Method::POST, "/v1/queues/mail/messages").json(&body);
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        r.send()
    };
    let first = json_of(publish(json!({"body": {"to": "a"}}), Some("k1")).await.unwrap()).await;
    let again = json_of(publish(json!({"body": {"to": "b"}}), Some("k1")).await.unwrap()).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        (first["repeated"].as_bool(), again["repeated"].as_bool()),
        (Some(false), Some(true))
    );
    let sent = Instant::now();
    let delayed =
        json_of(publish(json!({"body": "later", "delay_seconds": 1}), None).await.unwrap()).await;
    assert!(delayed["deliver_at"].as_i64().unwrap() > first["deliver_at"].as_i64().unwrap());
    let got = received(&s, "worker", 2).await;
    assert!(sent.elapsed() >= Duration::from_millis(900), "the delay was not kept");
    let bodies: Vec<Value> = got
        .iter()
        .map(|(_, req)| {
            serde_json::from_str::<Value>(req["body"].as_str().unwrap()).unwrap()["body"].clone()
        })
        .collect();
    assert_eq!(bodies, [json!({"to": "a"}), json!("later")], "the repeated key queued a message");

    let r = s
        .api(Method::POST, "/v1/queues/nobody/messages")
        .json(&json!({"body": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    let big = "x".repeat(300 << 10);
    let r = publish(json!({"body": big}), None).await.unwrap();
    assert_eq!(error_code(r).await, (413, "payload_too_large".into()));
    let r = publish(json!({"body": 1, "delay_seconds": 999_999}), None).await.unwrap();
    assert_eq!(error_code(r).await.0, 400);
    let r = publish(json!({"nobody": 1}), None).await.unwrap();
    assert_eq!(r.status(), 422);
    let queues = json_of(s.api(Method::GET, "/v1/queues").send().await.unwrap()).await;
    assert_eq!(queues["queues"], json!([{"name": "mail", "subscribers": ["worker"]}]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_deliveries_of_one_key_run_one_at_a_time_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    // Slow, and failing each message's first attempt: order must survive retries.
    subscriber(
        &s,
        "ordered",
        json!([{"kind": "queue", "queue": "q", "ordered": true}]),
        json!({"SLEEP_MS": "30", "FAIL_ATTEMPTS": "1"}),
    )
    .await;
    for i in 0..6 {
        let key = if i % 2 == 0 { "even" } else { "odd" };
        let r = s
            .api(Method::POST, "/v1/queues/q/messages")
            .json(&json!({"body": i, "ordering_key": key}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    deliveries(&s, "ordered", "delivered", 6).await;
    let got = received(&s, "ordered", 12).await;
    let ok: Vec<(i64, i64, i64)> = got
        .iter()
        .filter(|(r, _)| r["http_status"] == 200)
        .map(|(r, req)| {
            let body: Value = serde_json::from_str(req["body"].as_str().unwrap()).unwrap();
            let start = r["started_at"].as_i64().unwrap();
            (
                body["body"].as_i64().unwrap(),
                start,
                start + (r["duration_us"].as_i64().unwrap() / 1000),
            )
        })
        .collect();
    for parity in [0, 1] {
        let mut of_key: Vec<_> = ok.iter().filter(|(n, ..)| n % 2 == parity).collect();
        of_key.sort_by_key(|(_, start, _)| *start);
        let order: Vec<i64> = of_key.iter().map(|(n, ..)| *n).collect();
        assert_eq!(order, (0..6).filter(|n| n % 2 == parity).collect::<Vec<_>>());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_tick_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    subscriber(
        &s,
        "cron",
        json!([{"kind": "schedule", "cron": "* * * * * *", "timezone": "Europe/Paris"}]),
        json!({}),
    )
    .await;
    received(&s, "cron", 2).await;
    s.stop().await;
    let s = TestServer::start_with(config(dir.path())).await;
    let before = received(&s, "cron", 1).await.len();
    let got = received(&s, "cron", before + 2).await;
    let ticks: Vec<i64> = got
        .iter()
        .map(|(_, req)| {
            serde_json::from_str::<Value>(req["body"].as_str().unwrap()).unwrap()["tick"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let mut unique = ticks.clone();
    unique.dedup();
    assert_eq!(unique, ticks, "a tick fired twice (or out of order): {ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] > w[0] && (w[1] - w[0]) % 1000 == 0), "{ticks:?}");
    assert_eq!(got[0].1["headers"]["ce-type"], "dev.nimbus.scheduler.tick");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_invocation_answers_202_and_keeps_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.outbound_allow_nets = vec!["127.0.0.0/8".parse().unwrap()];
    c.triggers.callback_allow_http = true;
    let s = TestServer::start_with(c).await;
    subscriber(&s, "later", json!([]), json!({"STATUS": "201"})).await;

    // A callback receiver on loopback.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(4);
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cb = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let r = s
        .api(Method::POST, "/v1/functions/later/invoke/work?x=1")
        .header("prefer", "respond-async")
        .header("idempotency-key", "job-7")
        .header("x-nimbus-callback-url", &cb)
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let accepted = json_of(r).await;
    assert_eq!(location, format!("/v1/async-invocations/{}", accepted["id"].as_str().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let v = json_of(s.api(Method::GET, &location).send().await.unwrap()).await;
        if v["status"] == "succeeded" {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["response"]["status"], 201);
    assert_eq!(status["response"]["body"], "payload");
    let (_, req) = received(&s, "later", 1).await.remove(0);
    assert_eq!(req["path"], "/work?x=1");
    assert_eq!(req["method"], "POST");
    let cb_body = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(cb_body["id"], accepted["id"]);
    assert_eq!(cb_body["status"], "succeeded");
    assert_eq!(cb_body["response"]["status"], 201);
    // The same idempotency key returns the first invocation and runs nothing.
    let r = s
        .api(Method::POST, "/v1/functions/later/invoke/work")
        .header("prefer", "respond-async")
        .header("idempotency-key", "job-7")
        .send()
        .await
        .unwrap();
    let again = json_of(r).await;
    assert_eq!(
        (again["id"].clone(), again["repeated"].clone()),
        (accepted["id"].clone(), json!(true))
    );
    // A callback to an address the policy denies is refused up front when not https.
    let r = s
        .api(Method::POST, "/v1/functions/later/invoke")
        .header("prefer", "respond-async")
        .header("x-nimbus-callback-url", "ftp://example.com/x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 400);
    let r = s.api(Method::GET, "/v1/async-invocations/nope").send().await.unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_never_cross_projects_and_event_work_keeps_to_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    s.create_project("other").await;
    // Same queue name, same function name, another project.
    let wasm = std::fs::read(test_programs_artifacts::get("events").unwrap()).unwrap();
    let (status, body) = s
        .deploy_bytes_in(
            "other",
            json!({"name": "w", "triggers": [{"kind": "queue", "queue": "q"}]}),
            wasm,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Two instances at most: event work gets one of them.
    s.deploy(
        "events",
        json!({"name": "w", "routes": ["/w"], "env": {"SLEEP_MS": "100"},
               "limits": {"max_concurrency": 2},
               "triggers": [{"kind": "queue", "queue": "q"}]}),
    )
    .await;
    for i in 0..4 {
        let r = s
            .api(Method::POST, "/v1/queues/q/messages")
            .json(&json!({"body": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    deliveries(&s, "w", "delivered", 4).await;
    let got = received(&s, "w", 4).await;
    // One event at a time: no two event invocations overlapped.
    let mut spans: Vec<(i64, i64)> = got
        .iter()
        .map(|(r, _)| {
            let start = r["started_at"].as_i64().unwrap();
            (start, start + r["duration_us"].as_i64().unwrap() / 1000)
        })
        .collect();
    spans.sort();
    assert!(
        spans.windows(2).all(|w| w[1].0 >= w[0].1 - 1),
        "event invocations overlapped: {spans:?}"
    );
    let other: Value = json_of(
        s.api(Method::GET, "/v1/invocations?function=w")
            .header("x-nimbus-project", "other")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(other["invocations"], json!([]), "another project's function got the events");
    let r = s
        .api(Method::GET, "/v1/deliveries?function=w")
        .header("x-nimbus-project", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await["deliveries"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_and_sign_in_run_the_auth_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    s.create_project("app").await;
    let wasm = std::fs::read(test_programs_artifacts::get("events").unwrap()).unwrap();
    let (status, body) = s
        .deploy_bytes_in(
            "app",
            json!({"name": "welcome", "triggers": [{"kind": "auth", "events": ["user.created", "user.signed_in"]}]}),
            wasm,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = crate::common::user_session(&s, "app", "ada@example.com").await;
    let user_id = session["user"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let types = loop {
        let r = json_of(
            s.api(Method::GET, "/v1/invocations?function=welcome&order=asc")
                .header("x-nimbus-project", "app")
                .send()
                .await
                .unwrap(),
        )
        .await;
        let reqs: Vec<Value> = r["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::from_str(r["stdout"].as_str().unwrap().lines().next().unwrap()).unwrap()
            })
            .collect();
        if reqs.len() >= 2 {
            assert!(
                reqs.iter().all(|r| r["headers"]["ce-subject"] == user_id.as_str()),
                "{reqs:?}"
            );
            assert!(reqs.iter().all(|r| r["headers"]["x-nimbus-project"] == "app"));
            break reqs
                .iter()
                .map(|r| r["headers"]["ce-type"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut types = types;
    types.sort();
    // Not `ordered`: the two may run in either order.
    assert_eq!(types, ["dev.nimbus.auth.user.created", "dev.nimbus.auth.user.signed_in"]);
    s.stop().await;
}

/// The event a function receives parses with the CloudEvents Python SDK (`cloudevents`,
/// installed by scripts/test.sh), which nobody here wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivered_event_parses_with_the_cloudevents_sdk() {
    let sdk = std::process::Command::new("python3")
        .args(["-c", "import cloudevents.http"])
        .status()
        .is_ok_and(|s| s.success());
    if !sdk {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_CLOUDEVENTS").is_none(),
            "the cloudevents Python SDK is required (scripts/test.sh installs it)"
        );
        eprintln!("skipping: the cloudevents Python SDK is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    let r =
        s.api(Method::POST, "/v1/buckets").json(&json!({"name": "photos"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    subscriber(&s, "sdk", json!([{"kind": "storage", "bucket": "photos"}]), json!({})).await;
    let r = s
        .api(Method::PUT, "/v1/projects/default/buckets/photos/objects/cat.jpg")
        .header("content-type", "image/jpeg")
        .body(vec![0xffu8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, req) = received(&s, "sdk", 1).await.remove(0);
    let script = r#"
import json, sys
from cloudevents.http import from_http
got = json.load(sys.stdin)
event = from_http(got["headers"], got["body"].encode())
print(json.dumps({"specversion": event["specversion"], "id": event["id"], "type": event["type"],
                  "source": event["source"], "subject": event["subject"], "time": event["time"],
                  "data": event.data}))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the SDK refused the event: {req}");
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed["specversion"], "1.0");
    assert_eq!(parsed["type"], "dev.nimbus.storage.object.created");
    assert_eq!(parsed["source"], "/v1/projects/default/buckets/photos");
    assert_eq!(parsed["subject"], "cat.jpg");
    assert_eq!(parsed["id"], req["headers"]["ce-id"]);
    assert_eq!(parsed["data"]["size"], 1000);
    assert_eq!(parsed["data"]["content_type"], "image/jpeg");
    s.stop().await;
}

/// The example of serverless: an upload runs a function (the Rust SDK parses the event) that
/// reads the file in-process and writes a summary document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_file_is_summarised_into_a_document() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    let r =
        s.api(Method::POST, "/v1/buckets").json(&json!({"name": "uploads"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    create_collection(&s, "summaries").await;
    s.deploy(
        "upload-summary",
        json!({"name": "summary", "triggers": [
            {"kind": "storage", "bucket": "uploads", "suffix": ".txt", "events": ["created"]}]}),
    )
    .await;
    let r = s
        .api(Method::PUT, "/v1/projects/default/buckets/uploads/objects/notes/today.txt")
        .header("content-type", "text/plain")
        .body("hello world\nsecond line here\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let v = json_of(
            s.api(Method::GET, "/v1/projects/default/collections/summaries/documents")
                .send()
                .await
                .unwrap(),
        )
        .await;
        if let Some(d) = v["documents"].as_array().and_then(|a| a.first()) {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "no summary: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let data = &doc["data"];
    assert_eq!(data["key"], "notes/today.txt");
    assert_eq!(
        (data["lines"].as_u64(), data["words"].as_u64(), data["bytes"].as_u64()),
        (Some(2), Some(5), Some(29))
    );
    assert_eq!(data["first_line"], "hello world");
    // The document's id is the event's: a retried delivery would overwrite, not duplicate.
    let delivered = deliveries(&s, "summary", "delivered", 1).await;
    assert_eq!(doc["id"], delivered[0]["event"]["id"]);
    s.stop().await;
}

/// Asynchronous invocations' backlog is listed as its own subscription, without a spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invocations_are_listed_beside_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    subscriber(&s, "fails", json!([]), json!({"STATUS": "500"})).await;
    let r = s
        .api(Method::POST, "/v1/functions/fails/invoke")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    deliveries(&s, "fails", "dead", 1).await;
    let subs = json_of(s.api(Method::GET, "/v1/triggers").send().await.unwrap()).await;
    let listed = &subs["subscriptions"][0];
    assert_eq!((listed["trigger"].as_str(), listed["dead"].as_u64()), (Some("async"), Some(1)));
    assert_eq!(listed["spec"], Value::Null, "{subs}");
    s.stop().await;
}

/// A callback URL that refuses is called again with backoff, and the pending callback is kept in
/// the store: a server stopped while it is pending calls it after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_callback_is_retried_and_survives_a_restart() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    // Retries come 20-200 ms apart: on a loaded machine the default 8 attempts could all be
    // spent before the stop below, and a callback given up is never sent after the restart.
    let config = || {
        let mut c = callback_config(dir.path());
        c.triggers.callback_max_attempts = 1000;
        c
    };
    let s = TestServer::start_with(config()).await;
    subscriber(&s, "later", json!([]), json!({})).await;
    // The receiver answers 503 until it is opened, counting calls.
    let mut receiver = CallbackReceiver::start(REFUSE).await;
    let (calls, mut rx) = (receiver.calls.clone(), receiver.take_bodies());
    let location = invoke_with_callback(&s, &receiver.url).await;
    // Refused twice at least (retries 20-200 ms apart), and shown as pending meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let v = json_of(s.api(Method::GET, &location).send().await.unwrap()).await;
        if calls.load(Ordering::SeqCst) >= 2 && v["callback"]["attempts"].as_u64() >= Some(2) {
            break v;
        }
        assert!(Instant::now() < deadline, "the callback was not retried: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pending["status"], "succeeded");
    assert_eq!(pending["callback"]["status"], "pending", "{pending}");
    assert!(pending["callback"]["error"].as_str().unwrap().contains("503"), "{pending}");
    s.stop().await;

    // The old build sent callbacks from memory: a stop lost them. Now the next start sends it.
    receiver.set(ANSWER);
    let s = TestServer::start_with(config()).await;
    // An attempt in flight at the stop was given back by it (see the next test): sent at once.
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(got["status"], "succeeded");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json_of(s.api(Method::GET, &location).send().await.unwrap()).await;
        if v["callback"]["status"] == "delivered" {
            assert!(v["callback"]["attempts"].as_u64().unwrap() >= 3, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

/// A graceful stop gives back a callback whose call is still in flight: the next start makes it
/// at once. (The old stop dropped the call with its 30 s lease, so the restarted server waited
/// that out before calling again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_gives_back_a_callback_in_flight() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(callback_config(dir.path())).await;
    subscriber(&s, "later", json!([]), json!({})).await;
    // Calls hang (past the stop's grace) until the receiver answers, after the stop.
    let mut receiver = CallbackReceiver::start(HANG).await;
    let (calls, mut rx) = (receiver.calls.clone(), receiver.take_bodies());
    let location = invoke_with_callback(&s, &receiver.url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the callback was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
    assert!(rx.try_recv().is_err(), "no call ended before the stop");
    receiver.set(ANSWER);

    let s = TestServer::start_with(callback_config(dir.path())).await;
    // Well under the 30 s lease the cut call had.
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the callback cut short by the stop was not made again at once")
        .unwrap();
    assert_eq!(got["status"], "succeeded");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json_of(s.api(Method::GET, &location).send().await.unwrap()).await;
        if v["callback"]["status"] == "delivered" {
            // Calls given back are not counted (the store's conformance test checks the
            // count exactly; here an at-least-once repeat of the invocation may add calls).
            assert!(v["callback"]["attempts"].as_u64().unwrap() >= 1, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

/// A callback is given up after its last attempt, and the invocation says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_given_up_after_its_last_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.triggers.callback_allow_http = true;
    c.triggers.callback_max_attempts = 2;
    // Loopback is not in the callback policy: every call is refused before it connects.
    let s = TestServer::start_with(c).await;
    subscriber(&s, "later", json!([]), json!({})).await;
    let r = s
        .api(Method::POST, "/v1/functions/later/invoke")
        .header("prefer", "respond-async")
        .header("x-nimbus-callback-url", "http://127.0.0.1:9/cb")
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = json_of(s.api(Method::GET, &location).send().await.unwrap()).await;
        if v["callback"]["status"] == "failed" {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["callback"]["attempts"], 2);
    assert!(v["callback"]["error"].as_str().unwrap().contains("network policy"), "{v}");
    s.stop().await;
}

/// A server that may call callbacks on loopback over plain HTTP.
fn callback_config(dir: &std::path::Path) -> nimbus_server::ServerConfig {
    let mut c = config(dir);
    c.outbound_allow_nets = vec!["127.0.0.0/8".parse().unwrap()];
    c.triggers.callback_allow_http = true;
    c
}

/// What a [`CallbackReceiver`] does with a call.
const REFUSE: u8 = 0;
const HANG: u8 = 1;
const ANSWER: u8 = 2;

/// A callback URL on loopback: counts calls; refuses them (503), holds them (2 minutes), or
/// answers 204 and hands the body over, as set.
struct CallbackReceiver {
    url: String,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    calls: std::sync::Arc<std::sync::atomic::AtomicU32>,
    bodies: Option<tokio::sync::mpsc::Receiver<Value>>,
}

impl CallbackReceiver {
    async fn start(mode: u8) -> CallbackReceiver {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
        let (mode, calls) = (Arc::new(AtomicU8::new(mode)), Arc::new(AtomicU32::new(0)));
        let (tx, bodies) = tokio::sync::mpsc::channel::<Value>(4);
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post({
                let (mode, calls) = (mode.clone(), calls.clone());
                move |axum::Json(v): axum::Json<Value>| {
                    let (tx, mode, calls) = (tx.clone(), mode.clone(), calls.clone());
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        match mode.load(Ordering::SeqCst) {
                            REFUSE => return axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            HANG => tokio::time::sleep(Duration::from_secs(120)).await,
                            _ => {}
                        }
                        let _ = tx.send(v).await;
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        CallbackReceiver { url, mode, calls, bodies: Some(bodies) }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
    }

    fn take_bodies(&mut self) -> tokio::sync::mpsc::Receiver<Value> {
        self.bodies.take().expect("taken once")
    }
}

/// An asynchronous invocation of `later` with a callback to `url`; its status location.
async fn invoke_with_callback(s: &TestServer, url: &str) -> String {
    let r = s
        .api(Method::POST, "/v1/functions/later/invoke")
        .header("prefer", "respond-async")
        .header("x-nimbus-callback-url", url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.headers()["location"].to_str().unwrap().to_owned()
}
