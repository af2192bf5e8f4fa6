//! Usage metering (issue 10): usage equals the committed invocation records, survives a graceful
//! restart with nothing lost, prices with the free tier, and CPU (fuel) counts what ran however
//! an invocation ended.

use std::collections::HashMap;

use crate::common::{TestServer, error_code, test_config};
use nimbus_model::usage::PriceSheet;
use reqwest::Method;
use serde_json::{Value, json};

/// A `from` within the 400 days a report may cover, before anything these tests do.
fn since() -> String {
    (nimbus_model::now_millis() - 30 * 86_400_000).to_string()
}

async fn usage(s: &TestServer, query: &str) -> Value {
    let r = s.api(Method::GET, &format!("/v1/usage?{query}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

/// All records of a project, oldest first.
async fn all_records(s: &TestServer, project: &str) -> Vec<Value> {
    let r: Value = s
        .api(Method::GET, "/v1/invocations?order=asc&limit=1000")
        .header("x-nimbus-project", project)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["invocations"].as_array().unwrap().clone()
}

/// What usage must be, summed from records: (requests, exec_ms, mb_ms, fuel) per function.
fn expected(records: &[Value]) -> HashMap<String, [u64; 4]> {
    let mut out: HashMap<String, [u64; 4]> = HashMap::new();
    for r in records.iter().filter(|r| r["status"] != "rejected") {
        let ms =
            (r["duration_us"].as_u64().unwrap() - r["queue_us"].as_u64().unwrap()).div_ceil(1000);
        let e = out.entry(r["function"].as_str().unwrap().to_string()).or_default();
        e[0] += 1;
        e[1] += ms;
        e[2] += ms * r["memory_limit_mb"].as_u64().unwrap();
        e[3] += r["fuel"].as_u64().unwrap();
    }
    out
}

fn reported(report: &Value) -> HashMap<String, [u64; 4]> {
    report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let n = |k: &str| l[k].as_u64().unwrap();
            (
                l["function"].as_str().unwrap().to_string(),
                [n("requests"), n("exec_ms"), n("mb_ms"), n("fuel")],
            )
        })
        .collect()
}

#[tokio::test]
async fn usage_equals_the_records_and_a_graceful_stop_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy(
        "hello",
        json!({"name": "hello", "routes": ["/hello"], "limits": {"memory_bytes": 96 << 20}}),
    )
    .await;
    s.deploy("trap", json!({"name": "trap", "routes": ["/trap"]})).await;
    for _ in 0..20 {
        assert_eq!(s.get("/hello").await.status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(s.get("/trap").await.status(), 500);
    }
    s.records("hello", 20).await;
    s.records("trap", 3).await;
    let report = usage(&s, &format!("project=default&from={}", since())).await;
    let records = all_records(&s, "default").await;
    assert_eq!(reported(&report), expected(&records), "{report}");
    let hello = report["lines"].as_array().unwrap().iter().find(|l| l["function"] == "hello");
    let hello = hello.unwrap();
    assert_eq!(hello["requests"], 20);
    // 96 MiB for every billed millisecond.
    assert_eq!(hello["mb_ms"].as_u64().unwrap(), 96 * hello["exec_ms"].as_u64().unwrap());
    assert!(hello["exec_ms"].as_u64().unwrap() >= 20, "each rounds up to >= 1 ms");

    // Requests answered just before a graceful stop are written by the stop itself.
    let burst = 50;
    for _ in 0..burst {
        assert_eq!(s.get("/hello").await.status(), 200);
    }
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let records = all_records(&s, "default").await;
    assert_eq!(records.iter().filter(|r| r["function"] == "hello").count(), 20 + burst);
    let report = usage(&s, &format!("project=default&from={}", since())).await;
    assert_eq!(reported(&report), expected(&records), "{report}");
    assert_eq!(report["projects"][0]["requests"], 20 + 3 + burst);
    s.stop().await;
}

/// A loop stopped by its timeout used to be recorded with ~4,000 fuel (what it had at its last
/// call), while a loop that finished a known number of iterations records at least that many.
#[tokio::test]
async fn cpu_counts_a_loop_stopped_by_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("spin", json!({"name": "spin", "routes": ["/spin"], "limits": {"timeout_ms": 1000}}))
        .await;
    let iterations: u64 = 20_000_000;
    let r = s.get(&format!("/spin?iterations={iterations}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), iterations.to_string());
    assert_eq!(s.get("/spin").await.status(), 504);
    let records = s.records("spin", 2).await;
    let finished = &records[0];
    let stopped = &records[1];
    assert_eq!(finished["status"], "ok");
    assert_eq!(stopped["status"], "timeout");
    let (f, t) = (finished["fuel"].as_u64().unwrap(), stopped["fuel"].as_u64().unwrap());
    assert!(f >= iterations, "a loop of {iterations} iterations recorded {f} fuel");
    // A second of spinning, even on a loaded machine, does more than 20 M iterations' worth of
    // work (the finished loop takes ~10-30 ms alone).
    assert!(t > f, "the timed-out loop recorded {t} fuel, the {iterations}-iteration one {f}");
    // And usage bills it.
    let report = usage(&s, &format!("project=default&from={}", since())).await;
    assert_eq!(report["lines"][0]["fuel"].as_u64().unwrap(), f + t);
    s.stop().await;
}

#[tokio::test]
async fn usage_is_priced_after_the_free_tier_and_scoped_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.prices = Some(
        PriceSheet::from_toml(
            r#"
            currency = "EUR"
            per_million_requests = 1000000.0
            per_gb_second = 0.5
            [free_tier]
            requests = 2
            "#,
        )
        .unwrap(),
    );
    let s = TestServer::start_with(config).await;
    s.create_project("acme").await;
    let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
    let (status, _) =
        s.deploy_bytes_in("acme", json!({"name": "hi", "routes": ["/hi"]}), wasm).await;
    assert_eq!(status, 201);
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    for _ in 0..5 {
        assert_eq!(s.get("/@acme/hi").await.status(), 200);
    }
    assert_eq!(s.get("/hello").await.status(), 200);
    s.records("hello", 1).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let acme = loop {
        let r = usage(&s, &format!("project=acme&from={}", since())).await;
        if r["projects"][0]["requests"] == 5 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "acme's usage never reached 5: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(acme["currency"], "EUR");
    // Five requests, two free, one currency unit each.
    assert_eq!(acme["projects"][0]["cost"]["requests"].as_f64().unwrap(), 3.0);
    let gb_s = acme["projects"][0]["gb_seconds"].as_f64().unwrap();
    let compute = acme["projects"][0]["cost"]["compute"].as_f64().unwrap();
    assert!((compute - gb_s * 0.5).abs() < 1e-9, "{acme}");

    // The operator sees every project; by day, one line per project and day.
    let all = usage(&s, &format!("from={}&by=day", since())).await;
    let projects: Vec<&str> = all["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["project"].as_str().unwrap())
        .collect();
    assert_eq!(projects, ["acme", "default"]);
    assert!(all["lines"].as_array().unwrap().iter().all(|l| l["period"].is_i64()));

    // A project key: its own usage only.
    let key: Value = s
        .api(Method::POST, "/v1/keys")
        .header("x-nimbus-project", "acme")
        .json(&json!({"scope": "service"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap();
    let own: Value = s
        .client
        .get(s.url(&format!("/v1/usage?from={}", since())))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["projects"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["projects"][0]["project"], "acme");
    let r = s.client.get(s.url("/v1/usage?project=default")).bearer_auth(key).send().await.unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".to_string()));

    // Bad input is a 400 that says why.
    for (q, code) in [
        ("by=week", "invalid_query"),
        ("from=yesterday", "invalid_query"),
        ("from=2024-02-01&to=2024-01-01", "invalid_range"),
        ("from=2000-01-01&to=2024-01-01", "invalid_range"),
    ] {
        let r = s.api(Method::GET, &format!("/v1/usage?{q}")).send().await.unwrap();
        assert_eq!(error_code(r).await, (400, code.to_string()), "{q}");
    }
    s.stop().await;
}

/// Threshold events of `project` in the event log (read from the database file directly).
fn threshold_events(data: &std::path::Path, project: &str) -> Vec<Value> {
    use nimbus_store::events::EventLog;
    let db = nimbus_store_local::SqliteStore::open(&data.join("nimbus.db")).unwrap();
    db.read(0, Some(project), 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "dev.nimbus.quota.threshold_crossed")
        .map(|e| e.data)
        .collect()
}

#[tokio::test]
async fn a_quota_stops_what_it_should_with_one_threshold_event_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("acme").await;
    let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
    let (status, _) =
        s.deploy_bytes_in("acme", json!({"name": "hi", "routes": ["/hi"]}), wasm).await;
    assert_eq!(status, 201);
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    // Bad quotas, a service key, an unknown project: refused.
    let r = s
        .api(Method::PUT, "/v1/projects/acme/quotas")
        .json(&json!({"soft_threshold_percent": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_quotas".to_string()));
    let r = s
        .api(Method::PUT, "/v1/projects/acme/quotas")
        .json(&json!({"invocations": 5}))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 400 | 422), "unknown field: {}", r.status());
    let r = s.api(Method::PUT, "/v1/projects/nope/quotas").json(&json!({})).send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);

    let r = s
        .api(Method::PUT, "/v1/projects/acme/quotas")
        .json(&json!({"invocations_per_month": 5, "soft_threshold_percent": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value =
        s.api(Method::GET, "/v1/projects/acme/quotas").send().await.unwrap().json().await.unwrap();
    assert_eq!(got["quotas"]["invocations_per_month"], 5);
    for i in 0..5 {
        assert_eq!(s.get("/@acme/hi").await.status(), 200, "request {i}");
    }
    let r = s.get("/@acme/hi").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 31 * 86_400, "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["quota"], "invocations_per_month");
    let resets = body["error"]["resets_at"].as_str().unwrap();
    let expected = nimbus_model::usage::next_month(nimbus_model::now_millis());
    assert_eq!(nimbus_model::usage::parse_time(resets), Some(expected), "{resets}");
    assert!(body["error"]["message"].as_str().unwrap().contains(resets), "{body}");
    // Another project is not limited.
    assert_eq!(s.get("/hello").await.status(), 200);

    // One event for the crossing (60% of 5 = the 3rd request), whatever came after.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let events = loop {
        let e = threshold_events(dir.path(), "acme");
        if !e.is_empty() || tokio::time::Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    s.records("hello", 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["quota"], "invocations_per_month");
    assert_eq!(events[0]["limit"], 5);
    assert!(events[0]["used"].as_u64().unwrap() >= 3);
    assert_eq!(events[0]["resets_at"].as_i64(), Some(expected));

    // The counters are seeded from the store at start: still used up after a restart.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.get("/@acme/hi").await.status(), 429);
    // Raising the quota lets requests through at once.
    let r = s
        .api(Method::PUT, "/v1/projects/acme/quotas")
        .json(&json!({"invocations_per_month": 7, "concurrent_executions": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get("/@acme/hi").await.status(), 200);
    assert_eq!(threshold_events(dir.path(), "acme").len(), 1, "still one event this month");
    let r = s.api(Method::DELETE, "/v1/projects/acme/quotas").send().await.unwrap();
    assert_eq!(r.status(), 204);
    for _ in 0..3 {
        assert_eq!(s.get("/@acme/hi").await.status(), 200);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_concurrency_quota_counts_running_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("sleep", json!({"name": "sleep", "routes": ["/sleep"]})).await;
    let r = s
        .api(Method::PUT, "/v1/projects/default/quotas")
        .json(&json!({"concurrent_executions": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let slow = tokio::spawn({
        let (client, url) = (s.client.clone(), s.url("/sleep?ms=1500"));
        async move { client.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = s.get("/sleep?ms=1").await;
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["quota"], "concurrent_executions");
    assert!(body["error"].get("resets_at").is_none(), "{body}");
    assert_eq!(slow.await.unwrap(), 200);
    s.get_until_ok("/sleep?ms=1").await;
    s.stop().await;
}

/// A record of `function` in `project` that started at `at` (written straight into the store,
/// as the recorder would, to have usage in hours that are complete).
fn past_record(id: &str, project: &str, function: &str, at: i64) -> nimbus_model::InvocationRecord {
    nimbus_model::InvocationRecord {
        seq: 0,
        id: id.into(),
        project: project.into(),
        function: function.into(),
        version: 1,
        trigger: "http".into(),
        method: "GET".into(),
        path: "/".into(),
        started_at: at,
        duration_us: 4_200,
        queue_us: 0,
        fuel: 12_345,
        peak_memory_bytes: 1 << 20,
        memory_limit_mb: 128,
        outbound_bytes: 0,
        status: nimbus_model::InvocationStatus::Ok,
        http_status: Some(200),
        error: None,
        stdout: String::new(),
        stderr: String::new(),
        logs_truncated: false,
    }
}

#[tokio::test]
async fn export_is_openmeter_cloudevents_with_ids_stable_across_exports() {
    use nimbus_store::InvocationStore;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let hour = nimbus_model::usage::hour_of(nimbus_model::now_millis());
    {
        let db = nimbus_store_local::SqliteStore::open(&dir.path().join("nimbus.db")).unwrap();
        let mut batch = vec![
            past_record("e1", "default", "hello", hour - 2 * 3_600_000 + 5),
            past_record("e2", "default", "hello", hour - 2 * 3_600_000 + 9),
            past_record("e3", "default", "other", hour - 3_600_000 + 1),
            past_record("e4", "default", "hello", hour + 1), // the current hour: not exported
        ];
        db.insert_batch(&mut batch).unwrap();
        // The data services' usage: file egress (the meter's batches) and push messages sent.
        use nimbus_store::usage::UsageStore;
        db.add_usage(&[nimbus_model::usage::UsageRow {
            project: "default".into(),
            function: String::new(),
            hour: hour - 2 * 3_600_000,
            counters: nimbus_model::usage::UsageCounters {
                file_egress_bytes: 4096,
                push_sent: 3,
                ..Default::default()
            },
        }])
        .unwrap();
    }
    let export = |q: String| {
        let s = &s;
        async move {
            let r = s.api(Method::GET, &format!("/v1/usage/export?{q}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "application/cloudevents-batch+json");
            r.json::<Vec<Value>>().await.unwrap()
        }
    };
    let first = export(format!("from={}", since())).await;
    // hello's hour and other's hour, four nonzero meters each (requests, execution_ms,
    // gb_seconds, fuel), and the data services' two.
    assert_eq!(first.len(), 10, "{first:#?}");
    let data = |meter: &str| {
        first.iter().find(|e| e["data"]["meter"] == meter && e["data"]["function"] == "").cloned()
    };
    assert_eq!(data("file_egress_bytes").unwrap()["data"]["value"], 4096);
    assert_eq!(data("push_sent").unwrap()["data"]["value"], 3);
    for e in &first {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["type"], "nimbus.usage");
        assert_eq!(e["subject"], "default");
        assert!(e["source"].as_str().unwrap().starts_with("nimbus://"));
        assert!(e["time"].as_str().unwrap().ends_with(":00:00Z"), "{e}");
    }
    let requests: Vec<&Value> = first.iter().filter(|e| e["data"]["meter"] == "requests").collect();
    let hello = requests.iter().find(|e| e["data"]["function"] == "hello").unwrap();
    assert_eq!(hello["data"]["value"], 2);
    let gb_s = first
        .iter()
        .find(|e| e["data"]["meter"] == "gb_seconds" && e["data"]["function"] == "hello")
        .unwrap();
    assert_eq!(gb_s["data"]["value"].as_f64().unwrap(), 2.0 * 5.0 * 128.0 / 1024.0 / 1000.0);
    // Ids: unique within an export, the same in the next one.
    let ids = |events: &[Value]| {
        let mut v: Vec<String> =
            events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
        v.sort();
        v
    };
    let mut unique = ids(&first);
    unique.dedup();
    assert_eq!(unique.len(), 10);
    assert_eq!(ids(&export(format!("from={}", since())).await), ids(&first));
    // A narrower range is a subset with the same ids.
    let later = export_range(&s, hour - 3_600_000).await;
    assert_eq!(later.len(), 4);
    assert!(ids(&later).iter().all(|id| ids(&first).contains(id)));
    s.stop().await;
}

async fn export_range(s: &TestServer, from: i64) -> Vec<Value> {
    s.api(Method::GET, &format!("/v1/usage/export?from={from}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A refused write of the stored-bytes quota: 429 `quota_exceeded` naming the quota, saying
/// that deleting data frees it, with no reset time (it does not reset by the month).
async fn assert_storage_full(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 429, "{what}");
    assert!(r.headers().get("retry-after").is_none(), "{what}: time does not free it");
    let body: Value = r.json().await.unwrap();
    let e = &body["error"];
    assert_eq!(e["code"], "quota_exceeded", "{what}: {body}");
    assert_eq!(e["quota"], "stored_bytes", "{what}: {body}");
    assert!(e.get("resets_at").is_none(), "{what}: {body}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("stored_bytes")
            && message.contains("deleted")
            && message.contains("not at the start of a month"),
        "{what}: {message}"
    );
}

/// Writes of `n` until the first refusal (at most 20): how many went through.
async fn fill<F, Fut>(what: &str, mut write: F) -> usize
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    for n in 0..20 {
        let r = write(n).await;
        if r.status() == 429 {
            assert_storage_full(r, what).await;
            return n;
        }
        assert!(r.status().is_success(), "{what} {n}: {}", r.text().await.unwrap());
    }
    panic!("{what}: 20 writes and no refusal");
}

/// The stored-bytes quota over real HTTP: filled through documents, KV and files in turn, each
/// kind of write is refused at the limit (and the others with it), reads and deletes still work,
/// and a delete makes room again. The gauges in `/v1/usage` are the same counter.
#[tokio::test]
async fn the_stored_bytes_quota_refuses_writes_until_data_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let r = s
        .api(Method::PUT, "/v1/projects/default/quotas")
        .json(&json!({"stored_bytes": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r =
        s.api(Method::POST, "/v1/buckets").json(&json!({"name": "quota"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = s.api(Method::POST, "/v1/collections").json(&json!({"name": "notes"})).send();
    assert_eq!(r.await.unwrap().status(), 201);
    let obj = |key: &str| format!("/v1/projects/default/buckets/quota/objects/{key}");
    let docs = "/v1/projects/default/collections/notes/documents";
    let put_file = |key: String, bytes: Vec<u8>| {
        s.api(Method::PUT, &obj(&key)).header("content-type", "text/plain").body(bytes).send()
    };
    let put_kv = |key: String, bytes: Vec<u8>| {
        s.api(Method::PUT, &format!("/v1/kv/quota/{key}")).body(bytes).send()
    };
    let post_doc = |text: String| s.api(Method::POST, docs).json(&json!({"text": text})).send();
    // Every kind of write is refused while the project is at or over the quota.
    let all_refused = || async {
        assert_storage_full(put_file("x".into(), vec![1]).await.unwrap(), "file").await;
        assert_storage_full(put_kv("x".into(), vec![1]).await.unwrap(), "kv").await;
        assert_storage_full(post_doc("x".into()).await.unwrap(), "document").await;
    };
    let stored = || async {
        let u = usage(&s, "project=default").await;
        u["projects"][0]["data"].clone()
    };

    // Files: 400 bytes at a time; the write that crosses 1000 finishes, the next is refused.
    let n = fill("file", |i| async move { put_file(format!("f{i}"), vec![7; 400]).await.unwrap() })
        .await;
    assert_eq!(n, 3, "400 + 400 + 400 crosses 1000 and finishes; the fourth is refused");
    assert_eq!(stored().await["file_bytes"], 1200);
    all_refused().await;
    let r = s.api(Method::GET, &obj("f0")).send().await.unwrap();
    assert_eq!(r.status(), 200, "reads work over the quota");
    assert_eq!(r.bytes().await.unwrap().len(), 400);
    let r = s.api(Method::DELETE, &obj("f0")).send().await.unwrap();
    assert_eq!(r.status(), 204, "deletes work over the quota");
    assert_eq!(put_file("again".into(), vec![1; 10]).await.unwrap().status(), 201);
    for key in ["f1", "f2", "again"] {
        assert_eq!(s.api(Method::DELETE, &obj(key)).send().await.unwrap().status(), 204);
    }
    assert_eq!(stored().await["file_bytes"], 0);

    // KV: keys `k0`.. (2 bytes) with 450-byte values.
    let n =
        fill("kv", |i| async move { put_kv(format!("k{i}"), vec![1; 450]).await.unwrap() }).await;
    assert_eq!(n, 3);
    assert_eq!(stored().await["kv_bytes"], 3 * 452);
    all_refused().await;
    let r = s.api(Method::GET, "/v1/kv/quota/k0").send().await.unwrap();
    assert_eq!(r.status(), 200);
    for k in ["k0", "k1"] {
        let r = s.api(Method::DELETE, &format!("/v1/kv/quota/{k}")).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    assert!(put_kv("after".into(), vec![1; 10]).await.unwrap().status().is_success());
    for k in ["k2", "after"] {
        s.api(Method::DELETE, &format!("/v1/kv/quota/{k}")).send().await.unwrap();
    }
    assert_eq!(stored().await["kv_bytes"], 0);

    // Documents: about 310 bytes of JSONB each.
    let n = fill("document", |_| async move { post_doc("d".repeat(300)).await.unwrap() }).await;
    assert_eq!(n, 4, "310 x 3 < 1000: the fourth crosses and finishes");
    let data = stored().await;
    assert_eq!(data["documents"], 4);
    assert!(data["document_bytes"].as_u64().unwrap() >= 1000, "{data}");
    all_refused().await;
    let list: Value = s.api(Method::GET, docs).send().await.unwrap().json().await.unwrap();
    let first = list["documents"][0]["id"].as_str().unwrap().to_string();
    let r = s.api(Method::DELETE, &format!("{docs}/{first}")).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(post_doc("fits again".into()).await.unwrap().status(), 201);

    // Without the quota, nothing is refused.
    let r = s.api(Method::DELETE, "/v1/projects/default/quotas").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(put_file("free".into(), vec![1; 2000]).await.unwrap().status(), 201);
    s.stop().await;
}

/// The project's file egress in the current report (the data services' line has the empty
/// function name).
async fn file_egress(s: &TestServer) -> u64 {
    let u = usage(s, "project=default").await;
    u["projects"][0]["file_egress_bytes"].as_u64().unwrap_or(0)
}

/// Waits (at most 10 s) until file egress reaches `want`, then checks it stays there: the
/// meter writes every second, and a download is counted once.
async fn egress_settles_at(s: &TestServer, want: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while file_egress(s).await < want {
        assert!(tokio::time::Instant::now() < deadline, "file egress stayed below {want}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(file_egress(s).await, want);
}

/// Object downloads count the body bytes sent: REST GET whole and ranged, a signed URL; HEAD
/// sends none; a client that breaks off a large download counts only part of it. Shown in
/// `/v1/usage` under the empty function name, and priced as egress.
#[tokio::test]
async fn file_downloads_are_metered_as_file_egress() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.prices = Some(PriceSheet { per_gb_egress: 1.0, ..Default::default() });
    let s = TestServer::start_with(config).await;
    let r =
        s.api(Method::POST, "/v1/buckets").json(&json!({"name": "egress"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let obj = |key: &str| format!("/v1/projects/default/buckets/egress/objects/{key}");
    let r = s.api(Method::PUT, &obj("five")).body(vec![5u8; 5000]).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(file_egress(&s).await, 0, "uploads are not egress");

    let whole = s.api(Method::GET, &obj("five")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(whole.len(), 5000);
    let part = s.api(Method::GET, &obj("five")).header("range", "bytes=0-99").send().await;
    assert_eq!(part.unwrap().bytes().await.unwrap().len(), 100);
    let head = s.api(Method::HEAD, &obj("five")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let signed: Value = s
        .api(Method::POST, "/v1/projects/default/buckets/egress/sign")
        .json(&json!({"key": "five"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = s.url(signed["url"].as_str().unwrap());
    assert_eq!(s.client.get(url).send().await.unwrap().bytes().await.unwrap().len(), 5000);
    egress_settles_at(&s, 10_100).await;
    let u = usage(&s, "project=default").await;
    let line = u["lines"].as_array().unwrap().iter().find(|l| l["function"] == "").unwrap();
    assert_eq!(line["file_egress_bytes"], 10_100);
    assert_eq!(line["requests"], 0);
    let cost = line["cost"]["egress"].as_f64().unwrap();
    assert!((cost - 10_100.0 / (1u64 << 30) as f64).abs() < 1e-15, "priced as egress: {cost}");

    // 32 MiB, of which the client reads a little and hangs up: more than nothing is counted,
    // and far less than the object (loopback buffers hold a few MiB).
    let big = 32usize << 20;
    let r = s.api(Method::PUT, &obj("big")).body(vec![1u8; big]).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let mut r = s.api(Method::GET, &obj("big")).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(r);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while file_egress(&s).await == 10_100 {
        assert!(tokio::time::Instant::now() < deadline, "the broken-off download was not counted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let counted = file_egress(&s).await - 10_100;
    assert!(counted > 0 && counted < big as u64 / 2, "counted {counted} of {big}");
    s.stop().await;
}

/// Storage is billed by how long it is held: the bytes a project stores accrue as byte-seconds
/// of usage (each minute, and at a graceful stop), priced per GiB-month.
#[tokio::test]
async fn storage_is_billed_by_how_long_it_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = test_config(dir.path());
        config.prices = Some(
            PriceSheet::from_toml("currency = \"EUR\"\nper_gb_month_stored = 1000000.0").unwrap(),
        );
        config
    };
    let s = TestServer::start_with(config()).await;
    let value = vec![7u8; 100_000];
    let r = s.api(Method::PUT, "/v1/kv/default/big").body(value).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let held_from = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    s.stop().await;
    let held = held_from.elapsed().as_secs_f64();
    let s = TestServer::start_with(config()).await;
    let r = usage(&s, &format!("project=default&from={}", since())).await;
    let p = &r["projects"][0];
    let byte_seconds = p["stored_byte_seconds"].as_u64().unwrap();
    // 100,003 bytes (key + value), held from the server's first accrual (at its start, before
    // the write) to the stop: at least the 2.5 s slept, at most the time since the write plus
    // the start.
    let stored = 100_003.0;
    assert!(byte_seconds as f64 >= stored * 2.0, "{byte_seconds} byte-seconds: {r}");
    assert!(byte_seconds as f64 <= stored * (held + 5.0), "{byte_seconds} byte-seconds: {r}");
    let gb_months = byte_seconds as f64 / (1u64 << 30) as f64 / (730.0 * 3600.0);
    assert!((p["stored_gb_months"].as_f64().unwrap() - gb_months).abs() < 1e-15, "{r}");
    let expected = gb_months * 1e6;
    let cost = p["cost"]["storage"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-9 * expected.max(1.0), "{cost} vs {expected}: {r}");
    assert!(cost > 0.0 && (p["cost"]["total"].as_f64().unwrap() - cost).abs() < 1e-9, "{r}");
    s.stop().await;
}
