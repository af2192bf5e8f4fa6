//! Hostile guests: each misbehaves in its own way; the server answers with the right error, records
//! it, and keeps every other function serving.

use std::time::{Duration, Instant};

use crate::common::{TestServer, error_code};
use nimbus_server::ServerConfig;
use serde_json::{Value, json};

async fn hello_still_answers(s: &TestServer) {
    let r = s.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");
}

fn find<'a>(records: &'a [Value], status: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["status"] == status)
        .unwrap_or_else(|| panic!("no {status} record in {records:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out_while_others_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    s.deploy("spin", json!({"name": "spin", "routes": ["/spin"], "limits": {"timeout_ms": 700}}))
        .await;

    // Two spinning guests occupy both cores' worth of wasm; hello must still answer meanwhile.
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (s.client.clone(), s.url("/spin"));
            tokio::spawn(async move {
                let start = Instant::now();
                let r = client.get(url).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap(), start.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    hello_still_answers(&s).await;
    for spinner in spinners {
        let (status, body, took) = spinner.await.unwrap();
        assert_eq!(status, 504);
        assert_eq!(body["error"]["code"], "timeout");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    let records = s.records("spin", 2).await;
    assert_eq!(find(&records, "timeout")["http_status"], 504);
    hello_still_answers(&s).await;
    s.stop().await;
}

/// GET `path` with a hard bound: the time it took, or a panic naming what stalled.
async fn answers_within(s: &TestServer, path: &str, bound: Duration) -> Duration {
    let start = Instant::now();
    let request = match path.starts_with("/v1/") {
        true => s.api(reqwest::Method::GET, path),
        false => s.client.get(s.url(path)),
    };
    let r = tokio::time::timeout(bound, request.send())
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer within {bound:?}"))
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    // The timer runs on the same runtime as the server: if that stalls, it fires late.
    let took = start.elapsed();
    assert!(took < bound, "{path} took {took:?}");
    took
}

/// Issue 6.1: four times as many spinning guests as this machine's cores, with a long timeout,
/// must not stall the node's own endpoints or other functions while they spin, and must still be
/// stopped at their timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_never_starve_the_node() {
    const SPINNERS: usize = 8;
    const TIMEOUT: Duration = Duration::from_secs(6);
    const BOUND: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    s.deploy(
        "spin",
        json!({"name": "spin", "routes": ["/spin"], "limits": {"timeout_ms": TIMEOUT.as_millis() as u64}}),
    )
    .await;

    let start = Instant::now();
    let spinners: Vec<_> = (0..SPINNERS)
        .map(|_| {
            let (client, url) = (s.client.clone(), s.url("/spin"));
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                (r.status().as_u16(), start.elapsed())
            })
        })
        .collect();
    // Let every spinner get into its loop, then probe while they spin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        for path in ["/healthz", "/hello", "/v1/functions"] {
            worst = worst.max(answers_within(&s, path, BOUND).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(start.elapsed() < TIMEOUT, "the probes must run while the guests spin");
    assert!(
        spinners.iter().all(|t| !t.is_finished()),
        "the spinners must still be running while the node answers"
    );
    for spinner in spinners {
        let (status, took) = spinner.await.unwrap();
        assert_eq!(status, 504);
        assert!(took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(3), "took {took:?}");
    }
    let records = s.records("spin", SPINNERS).await;
    assert!(records.iter().all(|r| r["status"] == "timeout"), "{records:?}");
    eprintln!("30 probes while {SPINNERS} guests spun; slowest {worst:?}");
    s.stop().await;
}

#[tokio::test]
async fn blocked_guest_times_out_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy(
        "sleep",
        json!({"name": "sleep", "routes": ["/sleep"], "limits": {"timeout_ms": 300}}),
    )
    .await;
    let start = Instant::now();
    let r = s.get("/sleep?ms=10000").await;
    assert_eq!(error_code(r).await, (504, "timeout".to_string()));
    assert!(start.elapsed() < Duration::from_secs(5));
    s.stop().await;
}

#[tokio::test]
async fn memory_bomb_hits_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    s.deploy(
        "membomb",
        json!({"name": "membomb", "routes": ["/bomb"], "limits": {"memory_bytes": 16 << 20}}),
    )
    .await;
    let r = s.get("/bomb").await;
    assert_eq!(error_code(r).await, (500, "memory_limit".to_string()));
    let records = s.records("membomb", 1).await;
    let r = find(&records, "memory_limit");
    assert!(r["peak_memory_bytes"].as_u64().unwrap() <= 16 << 20, "{r}");
    assert!(r["peak_memory_bytes"].as_u64().unwrap() > 8 << 20, "{r}");
    hello_still_answers(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn traps_and_panics_are_500s_with_logs() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    s.deploy("trap", json!({"name": "trap", "routes": ["/trap"]})).await;
    s.deploy("panic", json!({"name": "panic", "routes": ["/panic"]})).await;
    for path in ["/trap", "/panic"] {
        let r = s.get(path).await;
        assert!(r.headers().contains_key("x-nimbus-invocation-id"));
        assert_eq!(error_code(r).await, (500, "function_crashed".to_string()), "{path}");
    }
    let records = s.records("panic", 1).await;
    let r = find(&records, "trap");
    assert!(r["stderr"].as_str().unwrap().contains("guest panicked on purpose"), "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("unreachable"), "{r}");
    // The guest keeps its name section and line tables: frames are named, with file:line.
    assert!(error.contains(" - handle\n"), "frames are not named: {error}");
    assert!(error.contains("core[") && error.contains("::panicking::panic_fmt"), "{error}");
    assert!(error.contains("guests/panic/src/lib.rs:11:9"), "no file:line: {error}");
    hello_still_answers(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn endless_stdout_is_bounded_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        log_bytes_per_invocation: 8 << 10,
        ..ServerConfig::default()
    })
    .await;
    s.deploy(
        "stdout-flood",
        json!({"name": "flood", "routes": ["/flood"], "limits": {"timeout_ms": 500}}),
    )
    .await;
    let r = s.get("/flood").await;
    assert_eq!(error_code(r).await.0, 504);
    let r = s.get("/flood?n=3").await;
    assert_eq!(r.text().await.unwrap(), "done");
    let records = s.records("flood", 2).await;
    let flood = find(&records, "timeout");
    assert_eq!(flood["logs_truncated"], true);
    assert_eq!(flood["stdout"].as_str().unwrap().len(), 8 << 10);
    let ok = find(&records, "ok");
    assert_eq!(ok["logs_truncated"], false);
    assert_eq!(ok["stdout"].as_str().unwrap().lines().count(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_then_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy(
        "sleep",
        json!({"name": "sleep", "routes": ["/sleep"], "limits": {"max_concurrency": 1, "max_queue": 1}}),
    )
    .await;
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let (client, url) = (s.client.clone(), s.url("/sleep?ms=400"));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50 * i)).await;
                let r = client.get(url).send().await.unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    results.sort();
    assert_eq!(results[0].0, 200);
    assert_eq!(results[1].0, 200, "the queued request runs after the first: {results:?}");
    assert_eq!(results[2].0, 429);
    assert!(results[2].1.as_deref().unwrap().parse::<u64>().unwrap() >= 1);
    let records = s.records("sleep", 3).await;
    assert!(
        records.iter().any(|r| r["queue_us"].as_u64().unwrap() > 100_000),
        "one waited: {records:?}"
    );
    find(&records, "rejected");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeout_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        queue_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    s.deploy(
        "sleep",
        json!({"name": "sleep", "routes": ["/sleep"], "limits": {"max_concurrency": 1}}),
    )
    .await;
    let (client, url) = (s.client.clone(), s.url("/sleep?ms=1500"));
    let first =
        tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = s.get("/sleep?ms=10").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (503, "queue_timeout".to_string()));
    assert_eq!(first.await.unwrap(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_a_function_share_its_concurrency_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let spec = json!({"name": "sleep", "routes": ["/sleep"], "limits": {"max_concurrency": 1, "max_queue": 0}});
    s.deploy("sleep", spec.clone()).await;
    let (client, url) = (s.client.clone(), s.url("/sleep?ms=3000"));
    let slow = tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Version 2 goes live while version 1 still holds the only slot (an env change: an
    // identical redeploy would make no new version).
    let mut spec = spec;
    spec["env"] = json!({"V": "2"});
    let v2 = s.deploy("sleep", spec).await;
    assert_eq!(v2["version"]["version"], 2, "{v2}");
    let r = s.get("/sleep?ms=10").await;
    assert_eq!(error_code(r).await, (429, "too_many_requests".to_string()));
    assert_eq!(slow.await.unwrap(), 200);
    s.get_until_ok("/sleep?ms=10").await; // the slot is free again
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_answers_503_not_500() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(dir.path());
    config.instance_pool_size = 2;
    // A request waits this long for a slot of the full node before its 503.
    config.queue_timeout = Duration::from_millis(300);
    let s = TestServer::start_with(config).await;
    // Two functions fill the node's two slots (each may hold one: the fair share keeps a slot
    // for others when the pool has two).
    s.deploy("sleep", json!({"name": "a", "routes": ["/a"]})).await;
    s.deploy("sleep", json!({"name": "b", "routes": ["/b"]})).await;
    let slow: Vec<_> = ["/a?ms=1200", "/b?ms=1200"]
        .into_iter()
        .map(|path| {
            let (client, url) = (s.client.clone(), s.url(path));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let started = Instant::now();
    let r = s.get("/a?ms=10").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (503, "node_full".to_string()));
    assert!(started.elapsed() >= Duration::from_millis(280), "it waited the queue timeout first");
    for t in slow {
        assert_eq!(t.await.unwrap(), 200);
    }
    s.get_until_ok("/a?ms=10").await; // slots come back to the pool
    let records = s.records("a", 3).await;
    let rejected = find(&records, "rejected");
    assert_eq!(rejected["http_status"], 503, "{rejected}");
    s.stop().await;
}

#[tokio::test]
async fn outbound_http_is_denied_unless_allowed() {
    // A real upstream on loopback.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(
        axum::serve(
            upstream,
            axum::Router::new().route("/", axum::routing::get(|| async { "upstream" })),
        )
        .into_future(),
    );

    let dir = tempfile::tempdir().unwrap();
    // The upstream is on loopback, which guests reach only when the operator allows it.
    let mut config = crate::common::test_config(dir.path());
    config.outbound_allow_nets = vec!["127.0.0.0/8".parse().unwrap()];
    let s = TestServer::start_with(config).await;
    s.deploy("outbound", json!({"name": "closed", "routes": ["/closed"]})).await;
    s.deploy("outbound", json!({"name": "open", "routes": ["/open"], "outbound_hosts": [format!("127.0.0.1:{port}")]}))
        .await;
    let target = format!("http://127.0.0.1:{port}/");
    let r = s.get(&format!("/closed?url={target}")).await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
    let r = s.get(&format!("/open?url={target}")).await;
    assert_eq!(r.text().await.unwrap(), "ok 200");
    // The allow-list is per host and port.
    let r = s.get(&format!("/open?url=http://127.0.0.1:{}/", port.wrapping_add(1))).await;
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
    s.stop().await;
}

/// Issue 6.3: a function that puts the node's own address on its allow-list (as an IP, or as a
/// name that resolves to loopback) still cannot reach it, nor cloud metadata: the operator's
/// network policy is checked on the resolved address. With the operator's allow-net it works.
#[tokio::test]
async fn guests_cannot_reach_internal_addresses_unless_the_operator_allows() {
    async fn fetch(s: &TestServer, url: &str) -> String {
        s.get(&format!("/out?url={url}")).await.text().await.unwrap()
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let port = s.addr.port();
    let hosts = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "169.254.169.254".to_string(),
    ];
    s.deploy("outbound", json!({"name": "out", "routes": ["/out"], "outbound_hosts": hosts})).await;
    for url in [
        format!("http://127.0.0.1:{port}/metrics"),
        format!("http://localhost:{port}/metrics"),
        format!("http://[::1]:{port}/metrics"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let start = Instant::now();
        let answer = fetch(&s, &url).await;
        assert_eq!(answer, "error ErrorCode::DestinationIpProhibited", "{url}");
        assert!(start.elapsed() < Duration::from_secs(5), "denied before connecting: {url}");
    }
    s.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(dir.path());
    config.outbound_allow_nets = vec!["127.0.0.0/8".parse().unwrap()];
    let s = TestServer::start_with(config).await;
    let port = s.addr.port();
    let hosts = [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
    s.deploy("outbound", json!({"name": "out", "routes": ["/out"], "outbound_hosts": hosts})).await;
    // `/metrics` answers (whatever its status): the guest reached the node.
    for url in
        [format!("http://127.0.0.1:{port}/metrics"), format!("http://localhost:{port}/metrics")]
    {
        let answer = fetch(&s, &url).await;
        assert!(answer.starts_with("ok "), "{url}: {answer}");
    }
    // ::1 is loopback too, but not in 127.0.0.0/8.
    let answer = fetch(&s, &format!("http://[::1]:{port}/metrics")).await;
    assert_eq!(answer, "error ErrorCode::DestinationIpProhibited");
    s.stop().await;
}

/// Send `request` on a fresh connection and read until the server closes it (bounded).
async fn raw_exchange(s: &TestServer, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        // A reset is as much an end as EOF here: what matters is what arrived before it.
        while let Ok(n @ 1..) = tcp.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither finished nor aborted the response within 10 s");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Issue 6.9: a guest that fails after sending its response head must not produce a response
/// that looks complete: no terminating chunk, and clients see an error. A finished body still
/// ends cleanly.
#[tokio::test]
async fn a_response_cut_short_by_a_failing_guest_is_not_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("trap", json!({"name": "trap", "routes": ["/trap"], "limits": {"timeout_ms": 500}}))
        .await;
    s.deploy("echo", json!({"name": "echo", "routes": ["/echo"]})).await;

    for path in ["/trap?partial=3000&wait_ms=200", "/trap?partial=3000&then=spin"] {
        let response = raw_exchange(
            &s,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response:.200}");
        assert!(response.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{path}");
        assert!(response.contains(&"x".repeat(3000)), "{path}: the body written so far arrives");
        assert!(!response.ends_with("0\r\n\r\n"), "{path}: no terminating chunk: {response:?}");
        let start = Instant::now();
        // The abort can come before or after hyper has flushed the head: an error either way.
        let body = match s.client.get(s.url(path)).send().await {
            Ok(r) => r.bytes().await.map(|b| b.len()),
            Err(e) => Err(e),
        };
        assert!(body.is_err(), "{path}: reqwest must see the response fail: {body:?}");
        assert!(start.elapsed() < Duration::from_secs(5), "{path}");
    }
    let records = s.records("trap", 4).await;
    assert!(records.iter().any(|r| r["status"] == "trap"), "{records:?}");
    assert!(records.iter().any(|r| r["status"] == "timeout"), "{records:?}");

    // A body the guest finished ends with the terminating chunk.
    let response = raw_exchange(
        &s,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{response}");
    assert!(response.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{response:?}");
    s.stop().await;
}
