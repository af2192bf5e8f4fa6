//! Captured guest output and invocation records, listed and followed live.

use std::time::Duration;

use crate::common::{TestServer, error_code};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn stdout_and_stderr_are_recorded_per_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("logs", json!({"name": "logs", "routes": ["/logs"]})).await;
    let r = s.get("/logs").await;
    let id = r.headers()["x-nimbus-invocation-id"].to_str().unwrap().to_string();
    s.records("logs", 1).await;
    let logs: Value =
        s.api(Method::GET, "/v1/functions/logs/logs").send().await.unwrap().json().await.unwrap();
    let rec = &logs["invocations"][0];
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(rec["stdout"], "hello stdout\n");
    assert_eq!(rec["stderr"], "hello stderr\n");
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["http_status"], 200);
    assert_eq!(rec["trigger"], "http");
    assert_eq!(rec["version"], 1);
    assert!(rec["fuel"].as_u64().unwrap() > 0);
    assert!(rec["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert!(rec["duration_us"].as_u64().unwrap() > 0);
    let r = s.api(Method::GET, "/v1/functions/nope/logs").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    let r = s.api(Method::GET, "/v1/invocations?status=weird").send().await.unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_query".to_string()));
    s.stop().await;
}

#[tokio::test]
async fn logs_can_be_followed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("logs", json!({"name": "logs", "routes": ["/logs"]})).await;
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    s.get("/logs").await; // backlog
    s.records("logs", 1).await;
    let r = s.api(Method::GET, "/v1/functions/logs/logs?follow=true").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = r.bytes_stream();
    s.get("/hello").await; // another function: must not appear
    s.get("/logs").await; // live
    let mut seen = Vec::new();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        let chunk =
            tokio::time::timeout_at(deadline, events.next()).await.expect("two events in time");
        buf.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                seen.push(serde_json::from_str::<Value>(data).unwrap());
            }
        }
    }
    assert!(seen.iter().all(|r| r["function"] == "logs"), "{seen:?}");
    assert!(seen[0]["id"].as_str() < seen[1]["id"].as_str());
    s.stop().await;
}
