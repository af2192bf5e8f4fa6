//! Hostile clients at the node's edge (issue 6): credentials never forwarded to guests, strict
//! credential parsing, one source for a request's project, protected metrics, bounded specs and
//! secrets, and connections bounded in number and time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

async fn service_key(s: &TestServer, project: &str) -> String {
    let r = s
        .api(Method::POST, "/v1/keys")
        .header("x-nimbus-project", project)
        .json(&json!({ "scope": "service" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["key"].as_str().expect("the new key").to_string()
}

fn echoed(r: &reqwest::Response, header: &str) -> Option<String> {
    r.headers().get(format!("x-echo-{header}")).map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn operator_and_key_credentials_never_reach_guests() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("echo", spec("echo", &["/echo"])).await;
    let key = service_key(&s, "default").await;

    // The management invoke endpoint with the admin token (what `nimbus invoke` does), and with
    // a service key in either header, plus a cookie.
    for (auth, api_key) in
        [(Some(s.token.clone()), None), (Some(key.clone()), None), (None, Some(key.clone()))]
    {
        let mut req = s.client.post(s.url("/v1/functions/echo/invoke/x")).header("cookie", "sid=1");
        if let Some(token) = &auth {
            req = req.bearer_auth(token);
        }
        if let Some(k) = &api_key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(echoed(&r, "authorization"), None, "Authorization reached the guest");
        assert_eq!(echoed(&r, "x-api-key"), None, "x-api-key reached the guest");
        assert_eq!(echoed(&r, "cookie"), None, "a cookie reached the guest");
        assert!(echoed(&r, "x-nimbus-auth").is_some());
    }

    // The gateway with a service key as bearer or x-api-key: consumed, not forwarded.
    let r = s.client.get(s.url("/echo")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echoed(&r, "authorization"), None);
    assert_eq!(echoed(&r, "x-nimbus-auth").as_deref(), Some("service"));
    let r = s.client.get(s.url("/echo")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(echoed(&r, "x-api-key"), None);

    // An end user's own access token may reach the function they called (documented).
    let session = user_session(&s, "default", "u@example.com").await;
    let access = session["access_token"].as_str().unwrap();
    let r = s.client.get(s.url("/echo")).bearer_auth(access).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echoed(&r, "authorization"), Some(format!("Bearer {access}")));

    // The admin token at the gateway is not a credential there at all.
    let r = s.client.get(s.url("/echo")).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(r.status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn malformed_authorization_is_401_and_the_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("echo", spec("echo", &["/echo"])).await;
    for bad in ["Bearer", "Bearer ", "garbage", "Basic dXNlcjpwYXNz", "Bearer a b"] {
        let r = s.client.get(s.url("/echo")).header("authorization", bad).send().await.unwrap();
        assert_eq!(error_code(r).await, (401, "unauthorized".into()), "gateway, {bad:?}");
        let r =
            s.client.get(s.url("/v1/functions")).header("authorization", bad).send().await.unwrap();
        assert_eq!(error_code(r).await, (401, "unauthorized".into()), "API, {bad:?}");
    }
    let r = s.client.get(s.url("/echo")).header("x-api-key", "").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // No credentials at all is still anonymous at the gateway.
    let r = s.client.get(s.url("/echo")).send().await.unwrap();
    assert_eq!(echoed(&r, "x-nimbus-auth").as_deref(), Some("anonymous"));
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = s
            .client
            .get(s.url("/v1/functions"))
            .header("authorization", format!("{scheme} {}", s.token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_function_named_invoker_is_invoked_with_the_right_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("echo", spec("invoker", &[])).await;
    for (path, expected) in [
        ("/v1/functions/invoker/invoke", "/"),
        ("/v1/functions/invoker/invoke/a/invoke/b?q=1", "/a/invoke/b?q=1"),
    ] {
        let r = s.api(Method::POST, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-path-with-query"].to_str().unwrap(), expected, "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn host_and_path_naming_different_projects_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("alpha").await;
    s.create_project("beta").await;
    let wasm = std::fs::read(test_programs_artifacts::get("echo").unwrap()).unwrap();
    let (status, _) = s.deploy_bytes_in("beta", spec("f", &["/f"]), wasm).await;
    assert_eq!(status, 201);
    let get = |host: &'static str| s.client.get(s.url("/@beta/f")).header("host", host).send();
    let (status, code) = error_code(get("alpha.localhost").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert_eq!(get("beta.localhost").await.unwrap().status(), 200);
    assert_eq!(get("localhost").await.unwrap().status(), 200);
    assert_eq!(get("BETA.localhost:8080").await.unwrap().status(), 200);
    // The host alone still routes.
    let r = s.client.get(s.url("/f")).header("host", "beta.localhost").send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

/// wasi:http needs an authority; an HTTP/1.0 request may come without `Host`. The runtime gives
/// it a placeholder (for every caller: the gateway, the invoke endpoint, events, async), so the
/// function still runs.
#[tokio::test]
async fn an_http_1_0_request_without_host_reaches_the_function() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("hello", spec("hello", &["/hello"])).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /hello HTTP/1.0\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut seen))
        .await
        .expect("the response within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("x-nimbus-invocation-id"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn metrics_need_the_admin_token_or_the_metrics_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start_with(config).await;
    let metrics_addr = s.metrics_addr.expect("a metrics listener");
    s.deploy("echo", spec("echo", &["/echo"])).await;
    let key = service_key(&s, "default").await;

    let r = s.get("/metrics").await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = s.client.get(s.url("/metrics")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 401, "a tenant's service key must not read every tenant's metrics");
    let r = s.api(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("nimbus_connections_open"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "one EOF at the end: {text}");
    assert_eq!(text.matches("# EOF").count(), 1);

    // Prometheus on the private listener needs no token.
    let r = s.client.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("nimbus_invocations"));
    // And that listener serves nothing else.
    let r = s.client.get(format!("http://{metrics_addr}/v1/functions")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn routes_env_and_secrets_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let wasm = std::fs::read(test_programs_artifacts::get("hello").unwrap()).unwrap();
    let routes: Vec<String> = (0..101).map(|i| format!("/r{i}")).collect();
    let (status, body) =
        s.deploy_bytes(json!({"name": "many", "routes": routes}), wasm.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("routes"), "{body}");
    let big = "x".repeat(40 << 10);
    let (status, body) =
        s.deploy_bytes(json!({"name": "big", "env": {"BIG": big}}), wasm.clone()).await;
    assert_eq!(status, 400, "{body}");
    s.deploy("hello", spec("hello", &["/hello"])).await;

    // A 20 MiB secret is refused by the body limit before it is read whole.
    let huge = json!({ "value": "x".repeat(20 << 20) });
    let r =
        s.api(Method::PUT, "/v1/functions/hello/secrets/HUGE").json(&huge).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = s
        .api(Method::PUT, "/v1/functions/hello/secrets/BIG")
        .json(&json!({ "value": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_spec".into()));
    for i in 0..100 {
        let r = s
            .api(Method::PUT, &format!("/v1/functions/hello/secrets/S{i}"))
            .json(&json!({ "value": "v" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = s
        .api(Method::PUT, "/v1/functions/hello/secrets/S100")
        .json(&json!({ "value": "v" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_spec".into()));
    // Replacing an existing one is still fine at the cap.
    let r = s
        .api(Method::PUT, "/v1/functions/hello/secrets/S7")
        .json(&json!({ "value": "w" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    s.stop().await;
}

/// A connection from `source` (any 127.x address works on Linux) that sends part of a request
/// head and stops.
async fn slow_client(source: [u8; 4], server: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((source, 0))).ok()?;
    let mut tcp = socket.connect(server).await.ok()?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.ok()?;
    Some(tcp)
}

async fn healthz_within(s: &TestServer, bound: Duration) -> Duration {
    let start = Instant::now();
    let r = tokio::time::timeout(bound, s.client.get(s.url("/healthz")).send())
        .await
        .unwrap_or_else(|_| panic!("/healthz did not answer within {bound:?}"))
        .unwrap();
    assert_eq!(r.status(), 200);
    start.elapsed()
}

/// Reads until the server closes the connection; panics if it does not within `bound`.
async fn closed_within(mut tcp: TcpStream, bound: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    tokio::time::timeout(bound, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server kept the connection open past {bound:?}"));
    seen
}

fn limited_config(dir: &std::path::Path) -> nimbus_server::ServerConfig {
    let mut config = test_config(dir);
    config.connections = nimbus_server::ConnectionLimits {
        max_connections: 64,
        max_per_client: 16,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
    };
    config
}

#[tokio::test]
async fn one_client_holding_many_slow_connections_cannot_starve_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(limited_config(dir.path())).await;
    // 500 slow connections from one address: 16 are kept, the rest closed at once.
    let mut held = Vec::new();
    for _ in 0..500 {
        if let Some(tcp) = slow_client([127, 0, 0, 2], s.addr).await {
            held.push(tcp);
        }
    }
    assert!(held.len() > 400, "the attacker could open its connections");
    for _ in 0..5 {
        healthz_within(&s, Duration::from_millis(500)).await;
    }
    // The server closes a connection whose head never completes after the header timeout.
    let start = Instant::now();
    let last = held.pop().unwrap();
    closed_within(held.remove(0), Duration::from_secs(3)).await;
    closed_within(last, Duration::from_secs(3)).await;
    assert!(start.elapsed() < Duration::from_secs(3));
    s.stop().await;
}

#[tokio::test]
async fn many_slow_clients_over_the_global_cap_delay_others_only_until_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(limited_config(dir.path())).await;
    // 8 addresses x 16 = 128 slow connections against a cap of 64: the cap is full.
    let mut held = Vec::new();
    for source in 2..10u8 {
        for _ in 0..16 {
            if let Some(tcp) = slow_client([127, 0, 1, source], s.addr).await {
                held.push(tcp);
            }
        }
    }
    // New clients wait in the backlog until the header timeout (1 s) frees slots: bounded.
    let waited = healthz_within(&s, Duration::from_secs(4)).await;
    assert!(waited < Duration::from_secs(4));
    drop(held);
    healthz_within(&s, Duration::from_millis(500)).await;
    s.stop().await;
}

/// The header timeout holds on a connection that served requests before: a head that stalls
/// after three requests is cut off once the timeout (1 s) has passed since the connection began
/// waiting for it (when it sent the last response), not before, and not later than a bound.
#[tokio::test]
async fn a_head_that_stalls_on_a_busy_keep_alive_connection_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(limited_config(dir.path())).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let mut last_request = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        last_request = Instant::now();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let seen = closed_within(tcp, Duration::from_secs(4)).await;
    let waited = last_request.elapsed();
    assert!(waited >= Duration::from_millis(950), "cut off early: {waited:?}");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    s.stop().await;
}

/// What the header timeout must not cut: a request still being answered (a function that takes
/// longer than the timeout), and a connection upgraded to a WebSocket. The timeout watches
/// connections waiting for a request head (`spawn_head_watchdog` in `listener.rs`).
#[tokio::test]
async fn requests_under_way_and_websockets_outlive_the_header_timeout() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(limited_config(dir.path())).await;
    s.deploy("sleep", json!({"name": "nap", "routes": ["/nap"]})).await;
    // 2.5 s of a function against a header timeout of 1 s.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /nap?ms=2500 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));

    // A WebSocket quiet for 2.5 s still delivers.
    crate::documents::collection(&s, "default", json!({"name": "ws"})).await;
    let url = format!("ws://{}/v1/projects/default/realtime/ws?collection=ws", s.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::Text(json!({"type": "auth", "token": s.token}).to_string().into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let path = format!("{}/late", crate::documents::docs("default", "ws"));
    let r = crate::documents::admin(&s, Method::PUT, &path).json(&json!({"n": 1})).send().await;
    assert!(r.unwrap().status().is_success());
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no event within 5 s")
        .expect("the WebSocket ended")
        .unwrap();
    assert!(msg.to_text().unwrap().contains("\"late\""), "{msg:?}");
    s.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_and_stalled_bodies_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(limited_config(dir.path())).await;
    // Connected, never a byte sent (the HTTP/1-or-2 sniffing must not wait forever).
    let silent = TcpStream::connect(s.addr).await.unwrap();
    let seen = closed_within(silent, Duration::from_secs(4)).await;
    assert!(seen.is_empty());
    // Idle after a complete request: closed after the header timeout.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let seen = closed_within(tcp, Duration::from_secs(4)).await;
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));

    // A body that stops halfway: the request fails and the connection closes.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"slug\":",
        s.token
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let seen = closed_within(tcp, Duration::from_secs(4)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    s.stop().await;
}
