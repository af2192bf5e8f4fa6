//! Push notifications against a local push service (`push_service.py`) that decrypts every
//! payload with the subscription's private key (`http_ece`) and verifies the VAPID JWT
//! (`cryptography`): implementations independent of the one Nimbus sends with.
//!
//! `scripts/test.sh` installs them and sets `NIMBUS_REQUIRE_PUSH_TOOLS=1`, so CI never skips.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, error_code, test_config, user_session};

/// The local push service, killed on drop.
struct PushService {
    child: Child,
    url: String,
    client: reqwest::Client,
}

impl Drop for PushService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PushService {
    fn start() -> Option<PushService> {
        let present = Command::new("python3")
            .args(["-c", "import http_ece, cryptography"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            assert!(
                std::env::var_os("NIMBUS_REQUIRE_PUSH_TOOLS").is_none(),
                "python3 with http_ece and cryptography is required (scripts/test.sh installs them)"
            );
            eprintln!("skipping: python3 http_ece/cryptography not installed (scripts/test.sh)");
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/push_service.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the push service");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("PORT ").expect("PORT <n>").to_string();
        Some(PushService {
            child,
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        })
    }

    /// A new browser-side subscription: `{endpoint, keys: {p256dh, auth}}`.
    async fn new_sub(&self, behavior: &str) -> Value {
        let r = self.client.get(format!("{}/new?behavior={behavior}", self.url)).send().await;
        r.unwrap().json().await.unwrap()
    }

    async fn received(&self) -> Vec<Value> {
        let r = self.client.get(format!("{}/received", self.url)).send().await.unwrap();
        r.json().await.unwrap()
    }
}

fn sub_id(sub: &Value) -> String {
    sub["endpoint"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
}

fn config(dir: &std::path::Path) -> nimbus_server::ServerConfig {
    let mut c = test_config(dir);
    c.outbound_allow_nets = vec!["127.0.0.0/8".parse().unwrap()];
    c.push.allow_http = true;
    c.push.backoff_base = Duration::from_millis(200);
    c
}

async fn register(s: &TestServer, sub: &Value, topics: &[&str]) -> Value {
    let mut body = sub.clone();
    body["topics"] = json!(topics);
    let r = s.api(Method::POST, "/v1/push/subscriptions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn send(s: &TestServer, body: Value) -> Value {
    let r = s.api(Method::POST, "/v1/push/messages").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// Wait until no delivery of the message is queued; returns the message.
async fn settled(s: &TestServer, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let m: Value = s
            .api(Method::GET, &format!("/v1/push/messages/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["deliveries"]["queued"] == 0 {
            return m;
        }
        assert!(start.elapsed() < within, "message {id} still has queued deliveries: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_implementation_decrypts_and_verifies_what_nimbus_sends() {
    let Some(ps) = PushService::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;

    // The VAPID key is public, the same every time, and an uncompressed P-256 point.
    let key: Value = s.get("/v1/projects/default/push/vapid-key").await.json().await.unwrap();
    let key = key["public_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 87, "65 bytes in base64url: {key}");
    let again: Value = s.get("/v1/projects/default/push/vapid-key").await.json().await.unwrap();
    assert_eq!(again["public_key"], key);

    // A signed-in user registers their browser; it is bound to them.
    let alice = user_session(&s, "default", "alice@example.com").await;
    let (a_tok, a_id) =
        (alice["access_token"].as_str().unwrap(), alice["user"]["id"].as_str().unwrap());
    let browser = ps.new_sub("ok").await;
    let r = s
        .client
        .post(s.url("/v1/projects/default/push/subscriptions"))
        .bearer_auth(a_tok)
        .json(&browser)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let registered: Value = r.json().await.unwrap();
    assert_eq!(registered["user_id"], a_id);
    // Two more on a topic, registered by the server.
    let news = [ps.new_sub("ok").await, ps.new_sub("ok").await];
    for n in &news {
        register(&s, n, &["news"]).await;
    }

    let to_alice = send(
        &s,
        json!({"to": {"user": a_id}, "payload": "hello alice ✓", "ttl": 60, "urgency": "high",
               "topic": "greeting"}),
    )
    .await;
    assert_eq!(to_alice["deliveries"], 1);
    let to_news = send(&s, json!({"to": {"topic": "news"}, "payload": {"n": 1}})).await;
    assert_eq!(to_news["deliveries"], 2);
    for (m, n) in [(&to_alice, 1), (&to_news, 2)] {
        let settled = settled(&s, m["id"].as_str().unwrap(), Duration::from_secs(20)).await;
        assert_eq!(settled["deliveries"]["sent"], n, "{settled}");
    }

    let received = ps.received().await;
    assert_eq!(received.len(), 3, "{received:#?}");
    for r in &received {
        assert_eq!(r["verified"], true, "the push service refused: {r}");
        assert_eq!(r["status"], 201);
        assert_eq!(r["encoding"], "aes128gcm");
        assert_eq!(r["vapid_key"], key.as_str(), "signed with the served key");
        assert_eq!(r["sub_claim"], "mailto:push@nimbus.invalid");
    }
    let alice_got = received.iter().find(|r| r["sub"] == sub_id(&browser).as_str()).unwrap();
    assert_eq!(alice_got["payload"], "hello alice ✓");
    assert_eq!(alice_got["ttl"], "60");
    assert_eq!(alice_got["urgency"], "high");
    assert_eq!(alice_got["topic"], "greeting");
    for n in &news {
        let got = received.iter().find(|r| r["sub"] == sub_id(n).as_str()).unwrap();
        assert_eq!(got["payload"], r#"{"n":1}"#);
        assert_eq!(got["urgency"], "normal");
    }

    // Delivery records per message and per subscription.
    let d: Value = s
        .api(
            Method::GET,
            &format!("/v1/push/messages/{}/deliveries", to_news["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = d["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert!(
        d.iter().all(|d| d["state"] == "sent" && d["last_status"] == 201 && d["attempts"] == 1)
    );
    let per_sub: Value = s
        .api(
            Method::GET,
            &format!("/v1/push/subscriptions/{}/deliveries", registered["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(per_sub["deliveries"][0]["message"], to_alice["id"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_subscriptions_are_removed_and_throttled_ones_retried_after_retry_after() {
    let Some(ps) = PushService::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    let mut ids = std::collections::HashMap::new();
    for behavior in ["ok", "gone", "notfound", "busy", "busydate", "fail5xx"] {
        let sub = ps.new_sub(behavior).await;
        let reg = register(&s, &sub, &["t"]).await;
        ids.insert(behavior, (reg["id"].as_str().unwrap().to_string(), sub_id(&sub)));
    }
    let m = send(&s, json!({"to": {"topic": "t"}, "payload": "x"})).await;
    assert_eq!(m["deliveries"], 6);
    let m = settled(&s, m["id"].as_str().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(m["deliveries"], json!({"queued": 0, "sent": 4, "failed": 2, "expired": 0}));
    // Usage counts the four delivered (not the failures), with their outcomes.
    let usage: Value =
        s.api(Method::GET, "/v1/usage?project=default").send().await.unwrap().json().await.unwrap();
    assert_eq!(usage["projects"][0]["push_sent"], 4, "{usage}");
    let line = usage["lines"].as_array().unwrap().iter().find(|l| l["function"] == "").unwrap();
    assert_eq!(line["push_sent"], 4);

    // 404 and 410 removed the subscription; the others remain.
    for (behavior, (id, _)) in &ids {
        let r = s.api(Method::GET, &format!("/v1/push/subscriptions/{id}")).send().await.unwrap();
        let gone = ["gone", "notfound"].contains(behavior);
        assert_eq!(r.status(), if gone { 404 } else { 200 }, "{behavior}");
    }
    // 429 with Retry-After: 1 was tried again no sooner than a second later, then delivered.
    let received = ps.received().await;
    let busy: Vec<&Value> =
        received.iter().filter(|r| r["sub"] == ids["busy"].1.as_str()).collect();
    assert_eq!(busy.len(), 2, "{busy:?}");
    assert_eq!(busy[0]["status"], 429);
    assert_eq!(busy[1]["status"], 201);
    assert_eq!(busy[1]["verified"], true);
    let gap = busy[1]["time"].as_f64().unwrap() - busy[0]["time"].as_f64().unwrap();
    assert!(gap >= 0.95, "Retry-After: 1 honoured, retried after {gap:.3} s");
    // Retry-After as an HTTP-date (RFC 9110): at least a second ahead when it was sent, and
    // honoured (the backoff alone would have retried after 0.1 to 0.2 s).
    let dated: Vec<&Value> =
        received.iter().filter(|r| r["sub"] == ids["busydate"].1.as_str()).collect();
    assert_eq!(dated.iter().map(|r| r["status"].clone()).collect::<Vec<_>>(), [429, 201]);
    let gap = dated[1]["time"].as_f64().unwrap() - dated[0]["time"].as_f64().unwrap();
    assert!(gap >= 0.95, "Retry-After as a date honoured, retried after {gap:.3} s");
    let flaky: Vec<&Value> =
        received.iter().filter(|r| r["sub"] == ids["fail5xx"].1.as_str()).collect();
    assert_eq!(flaky.iter().map(|r| r["status"].clone()).collect::<Vec<_>>(), [503, 201]);

    let d: Value = s
        .api(Method::GET, &format!("/v1/push/subscriptions/{}/deliveries", ids["busy"].0))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["deliveries"][0]["attempts"], 2);
    assert_eq!(d["deliveries"][0]["state"], "sent");
    let d: Value = s
        .api(Method::GET, &format!("/v1/push/messages/{}/deliveries", m["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed: Vec<&Value> =
        d["deliveries"].as_array().unwrap().iter().filter(|d| d["state"] == "failed").collect();
    let mut statuses: Vec<u64> =
        failed.iter().map(|d| d["last_status"].as_u64().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [404, 410]);
    s.stop().await;
}

/// The value of one sample on `/metrics` (`name{labels} value`), if present.
async fn metric(s: &TestServer, sample: &str) -> Option<f64> {
    let text = s.api(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_replayed_and_the_sender_lag_is_on_metrics() {
    let Some(ps) = PushService::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    let mut ids = std::collections::HashMap::new();
    for behavior in ["ok", "gone", "fail400"] {
        let sub = ps.new_sub(behavior).await;
        let reg = register(&s, &sub, &["r"]).await;
        ids.insert(behavior, (reg["id"].as_str().unwrap().to_string(), sub_id(&sub)));
    }
    let m = send(&s, json!({"to": {"topic": "r"}, "payload": "again"})).await;
    let id = m["id"].as_str().unwrap().to_string();
    let m = settled(&s, &id, Duration::from_secs(20)).await;
    assert_eq!(m["deliveries"], json!({"queued": 0, "sent": 1, "failed": 2, "expired": 0}));
    assert_eq!(metric(&s, r#"nimbus_push_deliveries_total{outcome="sent"}"#).await, Some(1.0));
    assert_eq!(metric(&s, r#"nimbus_push_deliveries_total{outcome="failed"}"#).await, Some(2.0));
    assert_eq!(metric(&s, r#"nimbus_push_deliveries_total{outcome="expired"}"#).await, Some(0.0));
    assert_eq!(metric(&s, "nimbus_push_subscriptions_removed_total").await, Some(1.0));
    assert_eq!(metric(&s, "nimbus_push_pending_deliveries").await, Some(0.0));
    assert_eq!(metric(&s, "nimbus_push_oldest_pending_seconds").await, Some(0.0));

    // Replay: the 400 is queued again and now delivered; the 410's subscription is gone, so its
    // delivery stays failed.
    let replay = |path: String| {
        let s = &s;
        async move { s.api(Method::POST, &path).send().await.unwrap() }
    };
    let r = replay(format!("/v1/push/messages/{id}/replay")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"count": 1}));
    let m = settled(&s, &id, Duration::from_secs(20)).await;
    assert_eq!(m["deliveries"], json!({"queued": 0, "sent": 2, "failed": 1, "expired": 0}));
    let received = ps.received().await;
    let retried: Vec<&Value> =
        received.iter().filter(|r| r["sub"] == ids["fail400"].1.as_str()).collect();
    assert_eq!(retried.iter().map(|r| r["status"].clone()).collect::<Vec<_>>(), [400, 201]);
    assert_eq!(retried[1]["payload"], "again");
    assert_eq!(retried[1]["verified"], true);
    let d: Value = s
        .api(Method::GET, &format!("/v1/push/subscriptions/{}/deliveries", ids["fail400"].0))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["deliveries"][0]["state"], "sent");
    assert_eq!(d["deliveries"][0]["attempts"], 1, "a replay starts with fresh attempts");
    // Nothing left to replay; unknown message or removed subscription: 404.
    let r = replay(format!("/v1/push/messages/{id}/replay")).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"count": 0}));
    let r = replay(format!("/v1/push/subscriptions/{}/replay", ids["fail400"].0)).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"count": 0}));
    let r = replay(format!("/v1/push/subscriptions/{}/replay", ids["gone"].0)).await;
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    let r = replay("/v1/push/messages/no-such-message/replay".into()).await;
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    // Another project cannot replay this one's message.
    s.create_project("other").await;
    let r = s
        .api(Method::POST, &format!("/v1/push/messages/{id}/replay"))
        .header("x-nimbus-project", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    assert_eq!(metric(&s, r#"nimbus_push_deliveries_total{outcome="sent"}"#).await, Some(2.0));

    // Lag: a push service that keeps answering 429 with Retry-After: 3600 leaves a delivery
    // pending; the gauges show it and its age.
    let busy = ps.new_sub("busylong").await;
    let reg = register(&s, &busy, &[]).await;
    send(&s, json!({"to": {"subscription": reg["id"]}, "payload": "later"})).await;
    let start = Instant::now();
    while !ps.received().await.iter().any(|r| r["sub"] == sub_id(&busy).as_str()) {
        assert!(start.elapsed() < Duration::from_secs(10), "never attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(metric(&s, "nimbus_push_pending_deliveries").await, Some(1.0));
    let age = metric(&s, "nimbus_push_oldest_pending_seconds").await.unwrap();
    assert!((1.0..30.0).contains(&age), "oldest pending {age} s");
    assert!(metric(&s, "nimbus_push_retries_total").await.unwrap() >= 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_fan_out_loses_nothing() {
    const FAN_OUT: usize = 24;
    let Some(ps) = PushService::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // Slow answers (2 s) and 4 at a time: the fan-out of 24 takes ~12 s; it is stopped after the
    // first few are in flight. (With 12, ~6 s, a loaded machine sometimes finished it before the
    // stop took effect: the test's premise failed on d97b564 too, 1 run in 8 while a build ran.)
    c.push.concurrency = 4;
    c.push.lease = Duration::from_secs(3);
    let s = TestServer::start_with(c.clone()).await;
    let mut subs = Vec::new();
    for _ in 0..FAN_OUT {
        let sub = ps.new_sub("slow").await;
        register(&s, &sub, &["all"]).await;
        subs.push(sub_id(&sub));
    }
    let m = send(&s, json!({"to": {"topic": "all"}, "payload": "survives"})).await;
    let id = m["id"].as_str().unwrap().to_string();
    // Wait until the first deliveries are in flight, then stop the server: the sender is aborted
    // with deliveries leased and unrecorded.
    let start = Instant::now();
    while ps.received().await.len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
    let after_stop = ps.received().await.len();
    assert!(after_stop < FAN_OUT, "the fan-out had not finished when the server stopped");

    let s = TestServer::start_with(c).await;
    let m = settled(&s, &id, Duration::from_secs(40)).await;
    assert_eq!(m["deliveries"]["sent"], FAN_OUT, "{m}");
    let received = ps.received().await;
    for sub in &subs {
        assert!(
            received.iter().any(|r| r["sub"] == sub.as_str() && r["verified"] == true),
            "subscription {sub} never got the message"
        );
    }
    assert!(received.iter().all(|r| r["payload"] == "survives"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_send_through_the_in_process_api() {
    let Some(ps) = PushService::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    s.deploy("data", json!({"name": "data", "routes": ["/raw"]})).await;
    let sub = ps.new_sub("ok").await;
    let reg = register(&s, &sub, &[]).await;
    let raw = |op: Value| {
        let s = &s;
        async move {
            let r = s.client.post(s.url("/raw")).json(&op).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            (v["status"].as_u64().unwrap(), v["body"].clone())
        }
    };
    let (status, body) = raw(json!({"method": "POST", "path": "/v1/push/messages",
        "body": {"to": {"subscription": reg["id"]}, "payload": "from a function"}}))
    .await;
    assert_eq!(status, 202, "{body}");
    let m = settled(&s, body["id"].as_str().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(m["deliveries"]["sent"], 1);
    assert_eq!(m["sender"], json!({"kind": "function", "name": "data"}));
    let received = ps.received().await;
    assert_eq!(received[0]["payload"], "from a function");
    assert_eq!(received[0]["verified"], true);
    // Without the invocation's token a function is nobody; another project's push is out of reach.
    let (status, _) = raw(json!({"method": "POST", "path": "/v1/push/messages", "auth": "none",
        "body": {"to": {"topic": "x"}}}))
    .await;
    assert_eq!(status, 403);
    s.create_project("other").await;
    let (status, _) =
        raw(json!({"method": "GET", "path": "/v1/projects/other/push/subscriptions"})).await;
    assert_eq!(status, 403);
    let (status, body) =
        raw(json!({"method": "GET", "path": "/v1/projects/default/push/subscriptions"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subscriptions"][0]["id"], reg["id"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_ownership_bounds_and_the_network_policy() {
    let Some(ps) = PushService::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    s.create_project("other").await;
    let alice = user_session(&s, "default", "alice@example.com").await;
    let bob = user_session(&s, "default", "bob@example.com").await;
    let (a_tok, a_id) =
        (alice["access_token"].as_str().unwrap(), alice["user"]["id"].as_str().unwrap());
    let b_tok = bob["access_token"].as_str().unwrap();
    let public = |method: Method, path: &str, token: Option<&str>| {
        let mut r = s.client.request(method, s.url(&format!("/v1/projects/default/push{path}")));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    };
    let sub = ps.new_sub("ok").await;
    let r = public(Method::POST, "/subscriptions", Some(a_tok)).json(&sub).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let mine: Value = r.json().await.unwrap();
    let mine_id = mine["id"].as_str().unwrap();

    // Another project sees none of it and reaches no one.
    let r = s
        .api(Method::GET, "/v1/push/subscriptions")
        .header("x-nimbus-project", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["subscriptions"], json!([]));
    let r = s
        .api(Method::POST, "/v1/push/messages")
        .header("x-nimbus-project", "other")
        .json(&json!({"to": {"user": a_id}, "payload": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["deliveries"], 0);
    let r = s
        .api(Method::GET, &format!("/v1/push/subscriptions/{mine_id}"))
        .header("x-nimbus-project", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s
        .api(Method::POST, "/v1/push/messages")
        .header("x-nimbus-project", "other")
        .json(&json!({"to": {"subscription": mine_id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));

    // Bob cannot see, remove or re-topic Alice's subscription, nor take over her endpoint.
    for (m, p) in [
        (Method::GET, format!("/subscriptions/{mine_id}")),
        (Method::DELETE, format!("/subscriptions/{mine_id}")),
        (Method::PUT, format!("/subscriptions/{mine_id}/topics/x")),
    ] {
        let r = public(m.clone(), &p, Some(b_tok)).send().await.unwrap();
        assert_eq!(error_code(r).await, (404, "not_found".into()), "{m} {p}");
    }
    let r = public(Method::POST, "/subscriptions", Some(b_tok)).json(&sub).send().await.unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
    let r: Value = public(Method::GET, "/subscriptions", Some(b_tok))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["subscriptions"], json!([]));
    // Alice can.
    let r = public(Method::PUT, &format!("/subscriptions/{mine_id}/topics/sports"), Some(a_tok))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r: Value = public(Method::GET, "/subscriptions", Some(a_tok))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["subscriptions"][0]["topics"], json!(["sports"]));

    // Hostile input: anonymous, a user naming a user id, bad keys, a denied address, a too-large
    // payload, an unknown field, a bad urgency.
    let r = public(Method::POST, "/subscriptions", None).json(&sub).send().await.unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let mut other_user = ps.new_sub("ok").await;
    other_user["user_id"] = json!("someone");
    let r =
        public(Method::POST, "/subscriptions", Some(a_tok)).json(&other_user).send().await.unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_input".into()));
    let mut bad_keys = ps.new_sub("ok").await;
    bad_keys["keys"]["p256dh"] = json!("AAAA");
    let r = public(Method::POST, "/subscriptions", Some(a_tok)).json(&bad_keys).send().await;
    assert_eq!(error_code(r.unwrap()).await, (400, "invalid_keys".into()));
    let mut internal = ps.new_sub("ok").await;
    internal["endpoint"] = json!("http://10.1.2.3/push/1");
    let r = public(Method::POST, "/subscriptions", Some(a_tok)).json(&internal).send().await;
    assert_eq!(error_code(r.unwrap()).await, (403, "forbidden".into()));
    let mut ftp = ps.new_sub("ok").await;
    ftp["endpoint"] = json!("ftp://push.example.com/x");
    let r = public(Method::POST, "/subscriptions", Some(a_tok)).json(&ftp).send().await;
    assert_eq!(error_code(r.unwrap()).await, (400, "invalid_endpoint".into()));
    let mut long = ps.new_sub("ok").await;
    long["endpoint"] = json!(format!("https://push.example.com/{}", "a".repeat(3000)));
    let r = public(Method::POST, "/subscriptions", Some(a_tok)).json(&long).send().await;
    assert_eq!(error_code(r.unwrap()).await, (400, "invalid_endpoint".into()));
    let r = s
        .api(Method::POST, "/v1/push/messages")
        .json(&json!({"to": {"topic": "t"}, "payload": "x".repeat(3994)}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (413, "payload_too_large".into()));
    let r = s
        .api(Method::POST, "/v1/push/messages")
        .json(&json!({"to": {"topic": "t"}, "urgency": "now!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_urgency".into()));
    let r = s
        .api(Method::POST, "/v1/push/messages")
        .json(&json!({"to": {"topic": "t"}, "bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_json".into()));
    // End users cannot send.
    let r = s
        .client
        .post(s.url("/v1/push/messages"))
        .bearer_auth(a_tok)
        .json(&json!({"to": {"topic": "t"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Deleting a project removes its push data.
    s.create_project("doomed").await;
    let r = s
        .api(Method::POST, "/v1/push/subscriptions")
        .header("x-nimbus-project", "doomed")
        .json(&ps.new_sub("ok").await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s.api(Method::DELETE, "/v1/projects/doomed").send().await.unwrap();
    assert_eq!(r.status(), 204);
    s.create_project("doomed").await;
    let r = s
        .api(Method::GET, "/v1/push/subscriptions")
        .header("x-nimbus-project", "doomed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["subscriptions"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_users_get_their_notifications_live_over_sse() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    let alice = user_session(&s, "default", "alice@example.com").await;
    let (a_tok, a_id) =
        (alice["access_token"].as_str().unwrap(), alice["user"]["id"].as_str().unwrap());
    // Anonymous callers get no push channel.
    let r =
        s.client.get(s.url("/v1/projects/default/realtime/sse?channel=push")).send().await.unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
    let mut r = s
        .client
        .get(s.url("/v1/projects/default/realtime/sse?channel=push"))
        .bearer_auth(a_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Someone else's notification first, then Alice's: she gets hers only.
    send(&s, json!({"to": {"user": "somebody-else"}, "payload": "not for alice"})).await;
    let m = send(&s, json!({"to": {"user": a_id}, "payload": "live for alice"})).await;
    assert_eq!(m["deliveries"], 0, "no Web Push subscription: in-app only");
    let mut text = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains("live for alice") {
            let chunk = r.chunk().await.unwrap().expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(got.is_ok(), "no notification within 10 s: {text}");
    assert!(text.contains("event: notification"), "{text}");
    assert!(!text.contains("not for alice"), "{text}");
    let data = text.lines().find(|l| l.contains("live for alice")).unwrap();
    let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["id"], m["id"]);
    assert_eq!(v["payload"], "live for alice");
    drop(r);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_users_get_their_notifications_live_over_websocket() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(dir.path())).await;
    let alice = user_session(&s, "default", "alice@example.com").await;
    let (a_tok, a_id) =
        (alice["access_token"].as_str().unwrap(), alice["user"]["id"].as_str().unwrap());
    let url = format!("ws://{}/v1/projects/default/realtime/ws?channel=push", s.addr);
    // The service role is not a user: no push channel for it.
    let (mut service, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    service
        .send(Message::Text(json!({"type": "auth", "token": s.token}).to_string().into()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), service.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4403),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::Text(json!({"type": "auth", "token": a_tok}).to_string().into()))
        .await
        .unwrap();
    // The channel starts at the head once the auth message is processed: send until one
    // arrives (each to someone else first, which must never show up).
    let start = Instant::now();
    let got = loop {
        assert!(start.elapsed() < Duration::from_secs(10), "no notification over the WebSocket");
        send(&s, json!({"to": {"user": "somebody-else"}, "payload": "not for alice"})).await;
        send(&s, json!({"to": {"user": a_id}, "payload": "ws for alice"})).await;
        if let Ok(msg) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
            break msg.unwrap().unwrap().into_text().unwrap().to_string();
        }
    };
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["event"], "notification");
    assert_eq!(v["payload"], "ws for alice");
    // The first one it carries is one of Alice's (a send to her, not the other user's).
    let listed: Value = s
        .api(Method::GET, &format!("/v1/push/messages/{}", v["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["target"], a_id, "{listed}");
    drop(ws);
    s.stop().await;
}
