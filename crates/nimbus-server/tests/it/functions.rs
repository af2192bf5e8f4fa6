//! The functions API and the HTTP gateway, against a real server on port 0 with real guests.

use std::time::Duration;

use crate::common::{TestServer, error_code, spec};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn deploy_and_serve_hello() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let body = s.deploy("hello", spec("hello", &["/hello"])).await;
    assert_eq!(body["version"]["version"], 1);
    assert_eq!(body["function"]["active_version"], 1);

    for path in ["/hello", "/hello/", "/h%65llo", "/x/../hello"] {
        let r = s.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers().contains_key("x-nimbus-invocation-id"), "{path}");
        assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");
    }
    let (status, code) = error_code(s.get("/nothing-here").await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let (status, code) = error_code(s.get("/bad%ff").await).await;
    assert_eq!((status, code.as_str()), (400, "bad_path"));
    s.stop().await;
}

#[tokio::test]
async fn every_invocation_gets_a_fresh_instance() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("counter", spec("counter", &["/count"])).await;
    for _ in 0..5 {
        assert_eq!(s.get("/count").await.text().await.unwrap(), "1");
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_uploads_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text", b"hello, not wasm".to_vec(), "not a WebAssembly binary"),
        ("core module", wat::parse_str("(module)").unwrap(), "core WebAssembly module"),
        ("empty component", wat::parse_str("(component)").unwrap(), "does not export wasi:http/incoming-handler"),
        (
            "unknown import",
            wat::parse_str(r#"(component (import "acme:rockets/launch@1.0.0" (instance (export "fire" (func)))))"#).unwrap(),
            "acme:rockets/launch@1.0.0",
        ),
        ("truncated component", b"\0asm\x0d\0\x01\0\x07\x05".to_vec(), "invalid"),
    ];
    for (what, wasm, needle) in cases {
        let (status, body) = s.deploy_bytes(spec("bad", &["/bad"]), wasm).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_module", "{what}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // Bad specs.
    let hello = std::fs::read(test_programs_artifacts::HELLO).unwrap();
    for (bad_spec, needle) in [
        (json!({"name": "Bad Name"}), "invalid function name"),
        (json!({"name": "x", "routes": ["no-slash"]}), "starts with '/'"),
        (json!({"name": "x", "routes": ["/v1/mine"]}), "belong to Nimbus"),
        (json!({"name": "x", "limits": {"timeout_ms": 99999999}}), "ceiling"),
        (json!({"name": "x", "colour": "blue"}), "colour"),
    ] {
        let (status, body) = s.deploy_bytes(bad_spec.clone(), hello.clone()).await;
        assert_eq!(status, 400, "{bad_spec}: {body}");
        assert_eq!(body["error"]["code"], "invalid_spec");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{body}");
    }
    // Malformed multipart and missing parts.
    let r = s
        .api(Method::POST, "/v1/functions")
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\nnot a part")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_upload".to_string()));
    let form = reqwest::multipart::Form::new().text("spec", spec("x", &[]).to_string());
    let r = s.api(Method::POST, "/v1/functions").multipart(form).send().await.unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_upload".to_string()));
    // Nothing was created by any of it.
    let list: Value =
        s.api(Method::GET, "/v1/functions").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["functions"], json!([]));
    s.stop().await;
}

#[tokio::test]
async fn routes_conflict_across_functions_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", spec("first", &["/shared", "/api/..."])).await;
    let wasm = std::fs::read(test_programs_artifacts::COUNTER).unwrap();
    let (status, body) = s.deploy_bytes(spec("second", &["/shared/"]), wasm.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "route_conflict");
    assert!(body["error"]["message"].as_str().unwrap().contains("\"first\""), "{body}");
    // A more specific route under another function's prefix is fine, and wins.
    let (status, _) = s.deploy_bytes(spec("second", &["/api/count"]), wasm.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(s.get("/api/count").await.text().await.unwrap(), "1");
    assert_eq!(s.get("/api/other").await.text().await.unwrap(), "Hello from Nimbus!\n");
    // Redeploying a function over its own routes is not a conflict (a changed env, so that it
    // is a new version: an identical redeploy makes none).
    let mut again = spec("first", &["/shared", "/api/..."]);
    again["env"] = json!({"V": "2"});
    let v2 = s.deploy("hello", again).await;
    assert_eq!(v2["version"]["version"], 2, "{v2}");
    // Method-restricted routes: 405 with Allow.
    s.deploy(
        "hello",
        json!({"name": "getter", "routes": [{"path": "/only-get", "methods": ["GET"]}]}),
    )
    .await;
    let r = s.client.post(s.url("/only-get")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET");
    assert_eq!(error_code(r).await, (405, "method_not_allowed".to_string()));
    // A redeploy that drops a route frees it: the path stops answering, and another function
    // may claim it.
    let mut moved = spec("first", &["/api/..."]);
    moved["env"] = json!({"V": "3"});
    s.deploy("hello", moved).await;
    assert_eq!(s.get("/shared").await.status(), 404);
    let (status, body) = s.deploy_bytes(spec("third", &["/shared"]), wasm.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(s.get("/shared").await.text().await.unwrap(), "1");
    // Deleting a function removes its routes: the prefix of "first" answers there again.
    let r = s.api(Method::DELETE, "/v1/functions/second").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(s.get("/api/count").await.text().await.unwrap(), "Hello from Nimbus!\n");
    s.stop().await;
}

#[tokio::test]
async fn echo_streams_method_path_headers_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("echo", spec("echo", &["/echo/..."])).await;
    let r = s
        .client
        .put(s.url("/echo/a%20b/?q=1&r=%2F"))
        .header("x-custom", "yes")
        .body("payload bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-method"], "PUT");
    assert_eq!(r.headers()["x-path-with-query"], "/echo/a%20b/?q=1&r=%2F");
    assert_eq!(r.headers()["x-echo-x-custom"], "yes");
    assert_eq!(r.text().await.unwrap(), "payload bytes");

    // A streamed (chunked) body of 4 MiB goes through whole.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|i| Ok(vec![i as u8; 64 << 10])).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let r = s.client.post(s.url("/echo/stream")).body(body).send().await.unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), 4 << 20);
    assert!(bytes[(64 << 10) * 63..].iter().all(|b| *b == 63));
    s.stop().await;
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy(
        "echo",
        json!({"name": "echo", "routes": ["/echo"], "limits": {"max_body_bytes": 1024}}),
    )
    .await;
    let r = s.client.post(s.url("/echo")).body(vec![b'x'; 1024]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.client.post(s.url("/echo")).body(vec![b'x'; 2048]).send().await.unwrap();
    assert_eq!(error_code(r).await, (413, "payload_too_large".to_string()));
    // Without Content-Length the limit applies as the body streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'y'; 512])).collect();
    let sent = s
        .client
        .post(s.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // Refused before the response started (413, or the server closed the connection while the
    // client was still sending the excess), or the streamed echo was cut short. Never the whole echo.
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap_or_default();
            assert!(status == 413 || body.len() < 2048, "status {status}, {} bytes", body.len());
        }
        Err(e) => assert!(e.is_request() || e.is_body(), "unexpected error: {e}"),
    }
    assert_eq!(s.get("/echo").await.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn env_and_write_only_secrets_reach_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy(
        "env",
        json!({"name": "env", "routes": ["/env"], "env": {"GREETING": "hi", "SHADOWED": "plain"}}),
    )
    .await;
    for (k, v) in [("API_KEY", "s3cr3t"), ("SHADOWED", "secret wins")] {
        let r = s
            .api(Method::PUT, &format!("/v1/functions/env/secrets/{k}"))
            .json(&json!({ "value": v }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let env: Value = s.get("/env").await.json().await.unwrap();
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["API_KEY"], "s3cr3t");
    assert_eq!(env["SHADOWED"], "secret wins");
    let info = s.api(Method::GET, "/v1/functions/env").send().await.unwrap().text().await.unwrap();
    assert!(info.contains("API_KEY"));
    assert!(!info.contains("s3cr3t"), "secret value leaked: {info}");
    let r = s.api(Method::DELETE, "/v1/functions/env/secrets/API_KEY").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let env: Value = s.get("/env").await.json().await.unwrap();
    assert!(env.get("API_KEY").is_none());
    let r = s
        .api(Method::PUT, "/v1/functions/env/secrets/bad-name")
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 400);
    let r = s
        .api(Method::PUT, "/v1/functions/nope/secrets/K")
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn env_and_secrets_also_reach_wasi_config() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("config", json!({"name": "cfg", "routes": ["/cfg"], "env": {"GREETING": "hi"}})).await;
    let r = s
        .api(Method::PUT, "/v1/functions/cfg/secrets/API_KEY")
        .json(&json!({ "value": "s3cr3t" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let get = |key: &str| {
        let url = s.url(&format!("/cfg?key={key}"));
        let client = s.client.clone();
        async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = get("GREETING").await;
    assert_eq!(v, json!({"value": "hi", "keys": ["API_KEY", "GREETING"]}));
    assert_eq!(get("API_KEY").await["value"], "s3cr3t");
    assert_eq!(get("MISSING").await["value"], Value::Null);
    s.stop().await;
}

#[tokio::test]
async fn versions_and_rollback_without_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", spec("flip", &["/flip"])).await;
    s.deploy("counter", spec("flip", &["/flip"])).await;
    assert_eq!(s.get("/flip").await.text().await.unwrap(), "1");
    let versions: Value = s
        .api(Method::GET, "/v1/functions/flip/versions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);

    // Hammer the route while flipping between versions: every request must succeed.
    let url = s.url("/flip");
    let client = s.client.clone();
    let load = tokio::spawn(async move {
        let mut bodies = std::collections::HashSet::new();
        for _ in 0..300 {
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            bodies.insert(r.text().await.unwrap());
        }
        bodies
    });
    for i in 0..20 {
        let v = if i % 2 == 0 { 1 } else { 2 };
        let r = s
            .api(Method::POST, "/v1/functions/flip/rollback")
            .json(&json!({"version": v}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bodies = load.await.unwrap();
    assert!(bodies.iter().all(|b| b == "1" || b == "Hello from Nimbus!\n"), "{bodies:?}");

    let r = s
        .api(Method::POST, "/v1/functions/flip/rollback")
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["active_version"], 1);
    assert_eq!(info["latest_version"], 2);
    assert_eq!(s.get("/flip").await.text().await.unwrap(), "Hello from Nimbus!\n");
    // A deploy after a rollback gets a new number.
    let body = s.deploy("counter", spec("flip", &["/flip"])).await;
    assert_eq!(body["version"]["version"], 3);
    let r = s
        .api(Method::POST, "/v1/functions/flip/rollback")
        .json(&json!({"version": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 404);

    let r = s.api(Method::DELETE, "/v1/functions/flip").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get("/flip").await.status(), 404);
    let r = s.api(Method::DELETE, "/v1/functions/flip").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn invoke_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("echo", spec("private-echo", &[])).await;
    let r = s
        .api(Method::POST, "/v1/functions/private-echo/invoke/some/path?x=1")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-path-with-query"], "/some/path?x=1");
    assert!(r.headers().contains_key("x-nimbus-invocation-id"));
    assert_eq!(r.text().await.unwrap(), "hi");
    let r = s.api(Method::GET, "/v1/functions/private-echo/invoke").send().await.unwrap();
    assert_eq!(r.headers()["x-path-with-query"], "/");
    let r = s.api(Method::GET, "/v1/functions/ghost/invoke").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    let records = s.records("private-echo", 2).await;
    assert!(records.iter().all(|r| r["trigger"] == "invoke"));
    s.stop().await;
}

#[tokio::test]
async fn admin_api_requires_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let r = s.client.get(s.url("/v1/functions")).send().await.unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".to_string()));
    let r = s.client.get(s.url("/v1/functions")).bearer_auth("nbs_wrong").send().await.unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".to_string()));
    let r = s
        .client
        .get(s.url("/v1/functions"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 401);
    let r = s.api(Method::GET, "/v1/functions").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.api(Method::GET, "/v1/nope").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", spec("hello", &["/hello"])).await;
    // Read the body: a client that drops it early makes the guest's write fail (it then panics).
    s.get("/hello").await.text().await.unwrap();
    let records = s.records("hello", 1).await;
    assert_eq!(records[0]["status"], "ok", "{records:?}");
    let health: Value = s.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let metrics =
        s.api(reqwest::Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    for needle in [
        "nimbus_invocations_total{project=\"default\",function=\"hello\",status=\"ok\"} 1",
        // A deploy loads the new version: its first request is not a cold start.
        "nimbus_cold_starts_total{project=\"default\",function=\"hello\"} 0",
        "nimbus_resident_functions 1",
        "nimbus_invocation_duration_seconds_count{project=\"default\",function=\"hello\"} 1",
        "nimbus_instantiation_seconds_count 1",
        "nimbus_instances_in_use{project=\"default\",function=\"hello\"} 0",
        "nimbus_component_compiles_total 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let doc: Value = s.get("/v1/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/functions",
        "/v1/functions/{name}",
        "/v1/functions/{name}/versions",
        "/v1/functions/{name}/rollback",
        "/v1/functions/{name}/secrets/{key}",
        "/v1/functions/{name}/invoke",
        "/v1/functions/{name}/logs",
        "/v1/invocations",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(doc["components"]["schemas"].get("FunctionSpec").is_some());
    s.stop().await;
}

#[tokio::test]
async fn restart_keeps_functions_and_does_not_recompile() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", spec("hello", &["/hello"])).await;
    s.deploy("counter", spec("counter", &["/count"])).await;
    s.stop().await;

    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.get("/hello").await.text().await.unwrap(), "Hello from Nimbus!\n");
    assert_eq!(s.get("/count").await.text().await.unwrap(), "1");
    let metrics =
        s.api(reqwest::Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("nimbus_component_compiles_total 0"), "{metrics}");

    // A lost artifact cache is rebuilt from the stored module.
    s.stop().await;
    std::fs::remove_dir_all(dir.path().join("artifacts")).unwrap();
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.get("/hello").await.status(), 200);
    let metrics =
        s.api(reqwest::Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("nimbus_component_compiles_total 2"), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn deleting_functions_removes_modules_nothing_references() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let sha = |deployed: &Value| deployed["version"]["module_sha256"].as_str().unwrap().to_string();
    let hello = sha(&s.deploy("hello", spec("a", &["/a"])).await);
    assert_eq!(sha(&s.deploy("hello", spec("b", &["/b"])).await), hello, "one module, two users");
    let echo = sha(&s.deploy("echo", spec("c", &["/c"])).await);
    let module = |sha: &str| dir.path().join(format!("blobs/modules/{sha}.wasm"));
    let artifacts = |sha: &str| -> Vec<String> {
        std::fs::read_dir(dir.path().join("artifacts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(sha))
            .collect()
    };
    assert!(module(&hello).exists() && module(&echo).exists());
    let echo_artifact = artifacts(&echo);
    assert_eq!(echo_artifact.len(), 1);

    let delete = |name: &str| s.api(Method::DELETE, &format!("/v1/functions/{name}")).send();
    assert_eq!(delete("a").await.unwrap().status(), 204);
    assert!(module(&hello).exists(), "b still runs it");
    assert_eq!(s.get("/b").await.status(), 200);

    // An artifact of another engine build is dead weight too.
    std::fs::write(dir.path().join(format!("artifacts/{echo}-0000000000000000.cwasm")), b"x")
        .unwrap();
    assert_eq!(delete("b").await.unwrap().status(), 204);
    assert!(!module(&hello).exists());
    assert!(artifacts(&hello).is_empty());
    assert!(module(&echo).exists());
    assert_eq!(artifacts(&echo), echo_artifact, "only the current engine's artifact stays");
    assert_eq!(s.get("/c").await.status(), 200);

    // Deploying the module again brings it back.
    s.deploy("hello", spec("a", &["/a"])).await;
    assert!(module(&hello).exists());
    assert_eq!(s.get("/a").await.status(), 200);
    s.stop().await;
}

/// Redeploying what is already active makes no new version and compiles nothing; any change to
/// the bytes or the spec does.
#[tokio::test]
async fn an_identical_redeploy_makes_no_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let compiles = || async {
        let text = s.api(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("nimbus_component_compiles_total "))
            .unwrap_or_else(|| panic!("no nimbus_component_compiles_total in:\n{text}"))
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    let hello = std::fs::read(test_programs_artifacts::HELLO).unwrap();
    let first = s.deploy("hello", spec("hello", &["/hello"])).await;
    assert_eq!(first["unchanged"], false, "{first}");
    let before = compiles().await;

    let (status, again) = s.deploy_bytes(spec("hello", &["/hello"]), hello.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["unchanged"], true, "{again}");
    assert_eq!(again["version"]["version"], 1, "{again}");
    assert!(again["compile"].is_null(), "{again}");
    assert_eq!(compiles().await, before, "an identical redeploy compiled");
    let versions: Value = s
        .api(Method::GET, "/v1/functions/hello/versions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1, "{versions}");

    // A changed spec (same bytes) is a new version; so are other bytes.
    let mut changed = spec("hello", &["/hello"]);
    changed["env"] = json!({"A": "1"});
    let (status, v2) = s.deploy_bytes(changed.clone(), hello.clone()).await;
    assert_eq!(
        (status, &v2["version"]["version"], &v2["unchanged"]),
        (201, &json!(2), &json!(false)),
        "{v2}"
    );
    let v3 = s.deploy("logs", changed).await;
    assert_eq!(v3["version"]["version"], 3, "{v3}");
    // After a rollback, the bytes of v3 are not the active ones: deploying them is a change.
    let r = s
        .api(Method::POST, "/v1/functions/hello/rollback")
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, back) = s.deploy_bytes(spec("hello", &["/hello"]), hello).await;
    assert_eq!(
        (status, &back["unchanged"], &back["version"]["version"]),
        (200, &json!(true), &json!(1)),
        "{back}"
    );
    s.stop().await;
}

/// The main listener sends every path that is not Nimbus's own straight to the gateway, without
/// the router (`listener::Served`): each documented endpoint, `/healthz` and `/metrics` must
/// still be answered by Nimbus even when a function claims every path.
#[tokio::test]
async fn api_paths_never_reach_a_catch_all_function() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", spec("hello", &["/..."])).await;
    let from_function = |r: &reqwest::Response| r.headers().contains_key("x-nimbus-invocation-id");
    for path in ["/anything", "/v1x", "/healthz/", "/@default/x"] {
        let r = s.get(path).await;
        assert!(from_function(&r), "{path} should reach the function");
        assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n", "{path}");
    }
    let doc: Value = s.get("/v1/openapi.json").await.json().await.unwrap();
    let documented = doc["paths"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert!(documented.len() > 50, "{documented:?}");
    let templated = fill_parameters(&documented);
    for path in
        templated.iter().map(String::as_str).chain(["/healthz", "/metrics", "/v1", "/v1/no"])
    {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let r = s.client.request(method.clone(), s.url(path)).send().await.unwrap();
            assert!(!from_function(&r), "{method} {path} reached the function: {}", r.status());
        }
    }
    s.stop().await;
}

/// Documented paths with every `{parameter}` filled in.
fn fill_parameters(paths: &[String]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            let mut out = String::new();
            let mut in_param = false;
            for c in p.chars() {
                match c {
                    '{' => in_param = true,
                    '}' => {
                        in_param = false;
                        out.push('x');
                    }
                    _ if in_param => {}
                    c => out.push(c),
                }
            }
            out
        })
        .collect()
}
