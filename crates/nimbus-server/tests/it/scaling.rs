//! Autoscaling on one node (issue 10, sections 4): functions scale to zero (code loaded by the
//! first request, one load for concurrent first requests), least recently used code is evicted
//! beyond the operator's budget, `min_warm` pins a function, and a noisy function at its limit
//! does not starve a quiet one.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, error_code, spec, test_config};

async fn metrics(s: &TestServer) -> String {
    s.api(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap()
}

/// The value of the sample named exactly `name` (with its labels), 0 if absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn cold(f: &str) -> String {
    format!("nimbus_cold_starts_total{{project=\"default\",function=\"{f}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_scale_to_zero_load_once_on_first_request_and_are_evicted_beyond_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    for name in ["a", "b", "c"] {
        s.deploy("hello", spec(name, &[format!("/{name}").as_str()])).await;
    }
    let mut pinned = spec("p", &["/p"]);
    pinned["limits"] = json!({"min_warm": 1});
    s.deploy("hello", pinned).await;
    s.stop().await;
    // One module, four versions: each version's slot maps the artifact and counts its size.
    let artifacts: Vec<_> = std::fs::read_dir(dir.path().join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(artifacts.len(), 1);
    let size = artifacts[0];

    // Room for the pinned function and one more.
    let mut config = test_config(dir.path());
    config.code_memory_budget = 2 * size + size / 2;
    let s = TestServer::start_with(config).await;
    let m = metrics(&s).await;
    assert_eq!(sample(&m, "nimbus_resident_functions"), 1.0, "only the pinned one is loaded\n{m}");
    assert_eq!(sample(&m, "nimbus_resident_code_bytes"), size as f64);

    // Concurrent first requests share one load.
    let first: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (s.client.clone(), s.url("/a"));
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    for t in first {
        assert_eq!(t.await.unwrap(), (200, "Hello from Nimbus!\n".to_string()));
    }
    let m = metrics(&s).await;
    assert_eq!(sample(&m, &cold("a")), 1.0, "{m}");
    assert_eq!(sample(&m, "nimbus_cold_start_seconds_count"), 1.0, "{m}");
    assert_eq!(sample(&m, "nimbus_resident_functions"), 2.0, "{m}");
    assert_eq!(sample(&m, "nimbus_code_evictions_total"), 0.0, "{m}");

    // b does not fit beside a and p: a (least recently used, not pinned) goes.
    assert_eq!(s.get("/b").await.status(), 200);
    let m = metrics(&s).await;
    assert_eq!(sample(&m, &cold("b")), 1.0, "{m}");
    assert_eq!(sample(&m, "nimbus_code_evictions_total"), 1.0, "{m}");
    assert_eq!(sample(&m, "nimbus_resident_functions"), 2.0, "{m}");
    assert!(sample(&m, "nimbus_resident_code_bytes") <= (2 * size + size / 2) as f64, "{m}");
    // A warm request is not a cold start.
    assert_eq!(s.get("/b").await.status(), 200);
    // a comes back on its next request (evicting b), answering as before.
    assert_eq!(s.get("/a").await.text().await.unwrap(), "Hello from Nimbus!\n");
    // The pinned function answers from resident code every time.
    for _ in 0..3 {
        assert_eq!(s.get("/p").await.status(), 200);
    }
    let m = metrics(&s).await;
    assert_eq!(sample(&m, &cold("a")), 2.0, "{m}");
    assert_eq!(sample(&m, &cold("b")), 1.0, "{m}");
    assert_eq!(sample(&m, &cold("p")), 0.0, "{m}");
    assert_eq!(sample(&m, "nimbus_code_evictions_total"), 2.0, "{m}");
    // c was never called: it never cost anything.
    assert_eq!(sample(&m, &cold("c")), 0.0, "{m}");
    assert_eq!(sample(&m, "nimbus_component_compiles_total"), 0.0, "{m}");
    s.stop().await;
}

#[tokio::test]
async fn min_warm_and_max_instances_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
    let mut bad = spec("f", &["/f"]);
    bad["limits"] = json!({"max_instances": 2, "min_warm": 3});
    let (status, body) = s.deploy_bytes(bad, wasm.clone()).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("min_warm 3") && message.contains("max_instances"), "{body}");
    let mut bad = spec("f", &["/f"]);
    bad["limits"] = json!({"min_warm": -1});
    assert_eq!(s.deploy_bytes(bad, wasm.clone()).await.0, 400);

    // `max_instances` is the concurrency limit under its autoscaling name.
    let mut good = spec("f", &["/f"]);
    good["limits"] = json!({"max_instances": 2, "min_warm": 2});
    let (status, body) = s.deploy_bytes(good, wasm).await;
    assert_eq!(status, 201, "{body}");
    let limits = &body["version"]["limits"];
    assert_eq!((&limits["max_concurrency"], &limits["min_warm"]), (&json!(2), &json!(2)), "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_function_at_its_limit_does_not_starve_a_quiet_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // 8 slots: one function may hold 7 of them.
    config.instance_pool_size = 8;
    let s = TestServer::start_with(config).await;
    let mut noisy = spec("noisy", &["/noisy"]);
    noisy["limits"] = json!({"max_instances": 20, "max_queue": 100});
    s.deploy("sleep", noisy).await;
    s.deploy("hello", spec("quiet", &["/quiet"])).await;

    // The quiet function unloaded, for reference.
    let mut unloaded = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(s.get("/quiet").await.status(), 200);
        unloaded = unloaded.max(t.elapsed());
    }

    // The noisy one asks for more than the node has: 14 requests of 2 s each.
    let noisy: Vec<_> = (0..14)
        .map(|_| {
            let (client, url) = (s.client.clone(), s.url("/noisy?ms=2000"));
            // The body is read to its end: a client that hangs up after the head makes the
            // guest's write fail, and its record says trap.
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                r.bytes().await.unwrap();
                status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = metrics(&s).await;
    let label = "{project=\"default\",function=\"noisy\"}";
    assert_eq!(sample(&m, &format!("nimbus_instances_in_use{label}")), 7.0, "{m}");
    assert_eq!(sample(&m, &format!("nimbus_queue_length{label}")), 7.0, "{m}");
    assert_eq!(sample(&m, "nimbus_node_queue_length"), 7.0, "{m}");

    // Meanwhile every quiet request is served at once, not after the noisy ones' 2 s.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let r = s.get("/quiet").await;
        assert_eq!(r.status(), 200, "{:?}", error_code(r).await);
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_millis(500).max(unloaded * 4),
        "quiet took {worst:?} under load (unloaded worst {unloaded:?})"
    );
    // The noisy requests all complete: the queued ones in the second round.
    for t in noisy {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Records are written once the guests' tasks have finished, slots released.
    let records: Vec<Value> = s.records("noisy", 14).await;
    assert!(records.iter().all(|r| r["status"] == "ok"), "{records:?}");
    let m = metrics(&s).await;
    assert_eq!(sample(&m, "nimbus_node_queue_length"), 0.0, "{m}");
    assert_eq!(sample(&m, "nimbus_node_instances_in_use"), 0.0, "{m}");
    s.stop().await;
}
