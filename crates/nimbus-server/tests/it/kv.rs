//! The key-value store through the real server: REST under /v1/kv, the `kv` guest through
//! `wasi:keyvalue`, TTLs, project isolation, restarts and concurrent increments.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, error_code, test_config};

const HEADER: &str = "x-nimbus-project";

/// A server whose values are limited to 1 KiB (so the size limit is cheap to hit).
async fn start(dir: &std::path::Path) -> TestServer {
    let mut config = test_config(dir);
    config.kv.max_value_bytes = 1024;
    TestServer::start_with(config).await
}

async fn deploy_kv_in(s: &TestServer, project: &str) {
    let wasm = std::fs::read(test_programs_artifacts::KV).unwrap();
    let (status, body) =
        s.deploy_bytes_in(project, json!({"name": "kv", "routes": ["/..."]}), wasm).await;
    assert_eq!(status, 201, "deploy kv into {project}: {body}");
}

/// Call the guest (in `project`, through `/@project/` unless it is the default); returns
/// (status, body text).
async fn guest(s: &TestServer, project: &str, path_and_query: &str) -> (u16, String) {
    let prefix = if project == "default" { String::new() } else { format!("/@{project}") };
    let r = s.get(&format!("{prefix}{path_and_query}")).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn rest_get(s: &TestServer, project: &str, path: &str) -> (u16, Vec<u8>) {
    let r = s.api(Method::GET, path).header(HEADER, project).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn rest_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let bytes: Vec<u8> = (0..=255u8).collect();

    // Put raw bytes under a key with a slash and a space, read them back unchanged.
    let r =
        s.api(Method::PUT, "/v1/kv/default/user/1%20a").body(bytes.clone()).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.api(Method::GET, "/v1/kv/default/user/1%20a").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.headers().get("x-nimbus-kv-expires-at").is_none());
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);

    // Listing: prefix and cursor pages.
    for k in ["user/2", "user/3", "other"] {
        let r = s.api(Method::PUT, &format!("/v1/kv/default/{k}")).body("v").send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
    let page: Value = s
        .api(Method::GET, "/v1/kv/default?prefix=user/&limit=2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["keys"], json!(["user/1 a", "user/2"]));
    let cursor = page["cursor"].as_str().unwrap().to_string();
    let page: Value = s
        .api(Method::GET, "/v1/kv/default")
        .query(&[("prefix", "user/"), ("limit", "2"), ("cursor", &cursor)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page, json!({"keys": ["user/3"], "cursor": null}));
    let buckets: Value = s.api(Method::GET, "/v1/kv").send().await.unwrap().json().await.unwrap();
    assert_eq!(buckets, json!({"buckets": [{"name": "default", "keys": 4}]}));

    // Increments: default delta 1, negative deltas, and a key ending in /incr stays addressable.
    let incr = |path: &str| s.api(Method::POST, path).send();
    let v: Value = incr("/v1/kv/default/n/incr").await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"value": 1}));
    let v: Value = incr("/v1/kv/default/n/incr?delta=-5").await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"value": -4}));
    let v: Value = incr("/v1/kv/default/x/incr/incr?delta=2").await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"value": 2}));
    assert_eq!(rest_get(&s, "default", "/v1/kv/default/x/incr").await, (200, b"2".to_vec()));
    assert_eq!(rest_get(&s, "default", "/v1/kv/default/n").await, (200, b"-4".to_vec()));

    // Create-only writes.
    let put_new = |k: &str| {
        s.api(Method::PUT, &format!("/v1/kv/default/{k}")).header("if-none-match", "*").body("x")
    };
    assert_eq!(put_new("fresh").send().await.unwrap().status(), 204);
    let r = put_new("fresh").send().await.unwrap();
    assert_eq!(error_code(r).await, (412, "precondition_failed".into()));

    // Delete: 204, then 404.
    let r = s.api(Method::DELETE, "/v1/kv/default/other").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.api(Method::DELETE, "/v1/kv/default/other").send().await.unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    let r = s.api(Method::GET, "/v1/kv/default/other").send().await.unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));

    // Hostile input: clear 4xx with the JSON error shape, and nothing written.
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (s.api(Method::PUT, "/v1/kv/Bad!/k").body("v"), 400, "invalid_bucket"),
        (s.api(Method::GET, &format!("/v1/kv/{}", "b".repeat(65))), 400, "invalid_bucket"),
        (
            s.api(Method::PUT, &format!("/v1/kv/default/{}", "k".repeat(1025))).body("v"),
            400,
            "invalid_key",
        ),
        (s.api(Method::PUT, "/v1/kv/default/a%0Ab").body("v"), 400, "invalid_key"),
        (s.api(Method::PUT, "/v1/kv/default/big").body(vec![0u8; 1025]), 413, "value_too_large"),
        (s.api(Method::PUT, "/v1/kv/default/t?ttl=0").body("v"), 400, "invalid_ttl"),
        (s.api(Method::PUT, "/v1/kv/default/t?ttl=-1").body("v"), 400, "invalid_query"),
        (
            s.api(Method::PUT, "/v1/kv/default/t").header("x-nimbus-kv-ttl", "soon").body("v"),
            400,
            "invalid_ttl",
        ),
        (
            s.api(Method::PUT, "/v1/kv/default/t").header("if-none-match", "\"abc\"").body("v"),
            400,
            "invalid_input",
        ),
        (s.api(Method::POST, "/v1/kv/default/user/2/incr"), 409, "not_an_integer"),
        (s.api(Method::POST, "/v1/kv/default/n/decr"), 404, "not_found"),
        (s.client.get(s.url("/v1/kv/default/n")), 401, "unauthorized"),
    ];
    for (request, status, code) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(error_code(r).await, (status, code.to_string()));
    }
    // A streamed body without Content-Length is bounded too.
    let stream = futures::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![1u8; 512])));
    let r = s
        .api(Method::PUT, "/v1/kv/default/big")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (413, "value_too_large".into()));
    assert_eq!(rest_get(&s, "default", "/v1/kv/default/big").await.0, 404);
    assert_eq!(rest_get(&s, "default", "/v1/kv/default/t").await.0, 404);

    // Emptying the bucket.
    let r = s.api(Method::DELETE, "/v1/kv/default").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let buckets: Value = s.api(Method::GET, "/v1/kv").send().await.unwrap().json().await.unwrap();
    assert_eq!(buckets, json!({"buckets": []}));

    // Documented in OpenAPI.
    let doc: Value = s.get("/v1/openapi.json").await.json().await.unwrap();
    for path in ["/v1/kv", "/v1/kv/{bucket}", "/v1/kv/{bucket}/{key}", "/v1/kv/{bucket}/{key}/incr"]
    {
        assert!(doc["paths"][path].is_object(), "{path} missing from OpenAPI");
    }
    s.stop().await;
}

#[tokio::test]
async fn ttl_hides_expired_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let put = |k: &str, ttl: &str| {
        s.api(Method::PUT, &format!("/v1/kv/default/{k}")).header("x-nimbus-kv-ttl", ttl).body("v")
    };
    assert_eq!(put("short", "1").send().await.unwrap().status(), 204);
    assert_eq!(put("long", "3600").send().await.unwrap().status(), 204);
    let r = s.api(Method::POST, "/v1/kv/default/counter/incr?ttl=1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.api(Method::GET, "/v1/kv/default/short").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let expires: i64 = r.headers()["x-nimbus-kv-expires-at"].to_str().unwrap().parse().unwrap();
    let now = nimbus_model::now_millis();
    assert!(expires > now && expires <= now + 1000, "expires at {expires}, now {now}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(rest_get(&s, "default", "/v1/kv/default/short").await.0, 404);
    let page: Value =
        s.api(Method::GET, "/v1/kv/default").send().await.unwrap().json().await.unwrap();
    assert_eq!(page["keys"], json!(["long"]));
    // An expired counter starts again from zero.
    let v: Value = s
        .api(Method::POST, "/v1/kv/default/counter/incr")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"value": 1}));
    s.stop().await;
}

#[tokio::test]
async fn guest_reads_and_writes_through_wasi_keyvalue() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    deploy_kv_in(&s, "default").await;

    assert_eq!(guest(&s, "default", "/get?key=greeting").await.0, 404);
    assert_eq!(guest(&s, "default", "/exists?key=greeting").await, (200, "false".into()));
    assert_eq!(guest(&s, "default", "/set?key=greeting&value=hello%20kv").await.0, 204);
    assert_eq!(guest(&s, "default", "/get?key=greeting").await, (200, "hello kv".into()));
    assert_eq!(guest(&s, "default", "/exists?key=greeting").await, (200, "true".into()));
    // The guest's default bucket ("" when opened) is the REST API's `default`.
    assert_eq!(
        rest_get(&s, "default", "/v1/kv/default/greeting").await,
        (200, b"hello kv".to_vec())
    );
    let r =
        s.api(Method::PUT, "/v1/kv/default/from-rest").body("set by REST").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(guest(&s, "default", "/get?key=from-rest").await, (200, "set by REST".into()));

    // Named buckets, atomics and batches.
    assert_eq!(guest(&s, "default", "/incr?key=n&bucket=counters").await, (200, "1".into()));
    assert_eq!(
        guest(&s, "default", "/incr?key=n&bucket=counters&delta=41").await,
        (200, "42".into())
    );
    assert_eq!(rest_get(&s, "default", "/v1/kv/counters/n").await, (200, b"42".to_vec()));
    assert_eq!(guest(&s, "default", "/set-many?pairs=a:1,b:2,c:3&bucket=batch").await.0, 204);
    assert_eq!(
        guest(&s, "default", "/many?keys=a,zz,c&bucket=batch").await,
        (200, "a=1\nzz!\nc=3".into())
    );
    assert_eq!(guest(&s, "default", "/delete-many?keys=a,c&bucket=batch").await.0, 204);
    assert_eq!(guest(&s, "default", "/list?bucket=batch").await, (200, "b".into()));
    assert_eq!(guest(&s, "default", "/delete?key=greeting").await.0, 204);
    assert_eq!(guest(&s, "default", "/get?key=greeting").await.0, 404);

    // list-keys follows cursors across pages (a page is 100 keys).
    for chunk in 0..3 {
        let pairs: Vec<String> = (0..50).map(|i| format!("k{:03}:x", chunk * 50 + i)).collect();
        let path = format!("/set-many?bucket=many&pairs={}", pairs.join(","));
        assert_eq!(guest(&s, "default", &path).await.0, 204);
    }
    let (status, body) = guest(&s, "default", "/list?bucket=many").await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = body.lines().collect();
    let expected: Vec<String> = (0..150).map(|i| format!("k{i:03}")).collect();
    assert_eq!(keys, expected);

    // Errors reach the guest as wasi:keyvalue errors, not traps.
    let (status, body) = guest(&s, "default", "/get?key=x&bucket=Not%20A%20Bucket").await;
    assert_eq!((status, body.as_str()), (500, "Error::NoSuchStore"));
    let (status, body) = guest(&s, "default", "/incr?key=from-rest").await;
    assert_eq!(status, 500);
    assert!(body.contains("not a decimal integer"), "{body}");
    let long = "k".repeat(1025);
    let (status, body) = guest(&s, "default", &format!("/set?key={long}&value=v")).await;
    assert_eq!(status, 500);
    assert!(body.contains("at most 1024 bytes"), "{body}");
    s.stop().await;
}

#[tokio::test]
async fn projects_never_see_each_others_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.create_project("beta").await;
    deploy_kv_in(&s, "default").await;
    deploy_kv_in(&s, "beta").await;

    // The same bucket and key in both projects hold different values.
    assert_eq!(guest(&s, "beta", "/set?key=secret&value=beta-only").await.0, 204);
    assert_eq!(guest(&s, "default", "/get?key=secret").await.0, 404);
    assert_eq!(guest(&s, "default", "/set?key=secret&value=default-only").await.0, 204);
    assert_eq!(guest(&s, "beta", "/get?key=secret").await, (200, "beta-only".into()));
    assert_eq!(guest(&s, "default", "/get?key=secret").await, (200, "default-only".into()));
    assert_eq!(guest(&s, "beta", "/incr?key=n").await, (200, "1".into()));
    assert_eq!(guest(&s, "default", "/incr?key=n").await, (200, "1".into()));
    assert_eq!(guest(&s, "beta", "/list").await, (200, "n\nsecret".into()));

    // REST: the admin token acts on the project it names; a service key only on its own.
    assert_eq!(rest_get(&s, "beta", "/v1/kv/default/secret").await, (200, b"beta-only".to_vec()));
    assert_eq!(
        rest_get(&s, "default", "/v1/kv/default/secret").await,
        (200, b"default-only".to_vec())
    );
    let key: Value = s
        .api(Method::POST, "/v1/keys")
        .header(HEADER, "beta")
        .json(&json!({"scope": "service"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    let as_beta = |m: Method, path: &str| s.client.request(m, s.url(path)).bearer_auth(&key);
    let r = as_beta(Method::GET, "/v1/kv/default/secret").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), "beta-only");
    let r = as_beta(Method::GET, "/v1/kv/default/secret").header(HEADER, "default").send();
    assert_eq!(r.await.unwrap().status(), 403);
    let r = as_beta(Method::PUT, "/v1/kv/default/only-beta").body("b").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(rest_get(&s, "default", "/v1/kv/default/only-beta").await.0, 404);

    // Deleting the project deletes its entries, and only its entries.
    let r = s.api(Method::DELETE, "/v1/projects/beta").send().await.unwrap();
    assert_eq!(r.status(), 204);
    s.create_project("beta").await;
    let buckets: Value = s
        .api(Method::GET, "/v1/kv")
        .header(HEADER, "beta")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(buckets, json!({"buckets": []}));
    assert_eq!(guest(&s, "default", "/get?key=secret").await, (200, "default-only".into()));
    s.stop().await;
}

#[tokio::test]
async fn values_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    deploy_kv_in(&s, "default").await;
    assert_eq!(guest(&s, "default", "/set?key=kept&value=across%20restarts").await.0, 204);
    assert_eq!(guest(&s, "default", "/incr?key=n&delta=5").await, (200, "5".into()));
    let r =
        s.api(Method::PUT, "/v1/kv/default/rest?ttl=3600").body("by rest").send().await.unwrap();
    assert_eq!(r.status(), 204);
    s.stop().await;

    let s = start(dir.path()).await;
    assert_eq!(guest(&s, "default", "/get?key=kept").await, (200, "across restarts".into()));
    assert_eq!(guest(&s, "default", "/incr?key=n").await, (200, "6".into()));
    assert_eq!(guest(&s, "default", "/get?key=rest").await, (200, "by rest".into()));
    let r = s.api(Method::GET, "/v1/kv/default/rest").send().await.unwrap();
    assert!(r.headers().contains_key("x-nimbus-kv-expires-at"), "the TTL survives too");
    s.stop().await;
}

#[tokio::test]
async fn concurrent_guest_increments_are_atomic() {
    const N: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    deploy_kv_in(&s, "default").await;
    let url = s.url("/incr?key=hits");
    let requests = (0..N).map(|_| {
        let client = s.client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    });
    let results = futures::future::join_all(requests).await;
    let mut seen = BTreeSet::new();
    for result in results {
        let (status, body) = result.unwrap();
        assert_eq!(status, 200, "{body}");
        seen.insert(body.parse::<u64>().unwrap());
    }
    // Every increment saw a distinct value: none was lost or applied twice.
    assert_eq!(seen, (1..=N as u64).collect::<BTreeSet<_>>());
    assert_eq!(guest(&s, "default", "/get?key=hits").await, (200, N.to_string()));
    s.stop().await;
}

/// The stored-bytes quota holds for `wasi:keyvalue` too: over it, a guest's set fails with an
/// error naming the quota, its get still works, and its delete makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_over_the_stored_bytes_quota_cannot_set() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    deploy_kv_in(&s, "default").await;
    let r = s
        .api(Method::PUT, "/v1/projects/default/quotas")
        .json(&json!({"stored_bytes": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        guest(&s, "default", &format!("/set?key=big&value={}", "v".repeat(60))).await.0,
        204
    );
    let (status, body) = guest(&s, "default", "/set?key=more&value=x").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("stored_bytes") && body.contains("deleted"), "{body}");
    // Crossing the soft threshold (80% by default) wrote one event, within the check interval.
    let first = threshold_events_within(dir.path(), 1).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        (first[0]["quota"].as_str(), first[0]["limit"].as_u64()),
        (Some("stored_bytes"), Some(50))
    );
    assert!(first[0]["used"].as_u64().unwrap() >= 63, "{first:?}");
    assert_eq!(guest(&s, "default", "/get?key=big").await.0, 200);
    assert_eq!(guest(&s, "default", "/delete?key=big").await.0, 204);
    assert_eq!(guest(&s, "default", "/set?key=more&value=x").await.0, 204);
    // Back under re-arms it (after a check has seen it under): the next crossing is reported.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(threshold_events_within(dir.path(), 1).await.len(), 1, "no event while under");
    assert_eq!(
        guest(&s, "default", &format!("/set?key=big&value={}", "v".repeat(60))).await.0,
        204
    );
    assert_eq!(threshold_events_within(dir.path(), 2).await.len(), 2);
    s.stop().await;
}

/// The `stored_bytes` threshold events of the default project, once there are `n` of them or
/// after 6 s (three rounds of the 2 s check).
async fn threshold_events_within(data: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    use nimbus_store::events::EventLog;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(6);
    loop {
        let db = nimbus_store_local::SqliteStore::open(&data.join("nimbus.db")).unwrap();
        let events: Vec<serde_json::Value> = db
            .read(0, Some("default"), 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "dev.nimbus.quota.threshold_crossed")
            .map(|e| e.data)
            .collect();
        if events.len() >= n || tokio::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
