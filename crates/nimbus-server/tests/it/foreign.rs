//! wasi:http components built by other toolchains (componentize-py with CPython inside,
//! ComponentizeJS with SpiderMonkey inside) run unchanged. `scripts/build-foreign-guests.sh`
//! builds them; `.ci/run` does so and sets NIMBUS_REQUIRE_FOREIGN=1, so these tests cannot
//! silently pass in CI without running.

use std::path::PathBuf;
use std::time::Instant;

use crate::common::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_component_runs_unchanged() {
    runs_unchanged("python-hello", "/py", "Hello from Python!\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_component_runs_unchanged() {
    runs_unchanged("js-hello", "/js", "Hello from JavaScript!\n").await;
}

/// Deploys target/foreign-guests/`guest`.wasm on `prefix`/..., checks that it answers `body`
/// and echoes the path in `x-path-with-query`, then again after a restart. Skips (unless
/// NIMBUS_REQUIRE_FOREIGN is set) when the guest is not built.
async fn runs_unchanged(guest: &str, prefix: &str, body: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../target/foreign-guests/{guest}.wasm"));
    if !path.exists() {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_FOREIGN").is_none(),
            "{} is missing: run scripts/build-foreign-guests.sh",
            path.display()
        );
        eprintln!("SKIPPED: {} not built (run scripts/build-foreign-guests.sh)", path.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let wasm = std::fs::read(&path).unwrap();
    let size = wasm.len();
    let started = Instant::now();
    let (status, deployed) =
        s.deploy_bytes(json!({"name": guest, "routes": [format!("{prefix}/...")]}), wasm).await;
    assert_eq!(status, 201, "{deployed}");
    eprintln!("{guest}: {size} bytes deployed (compiled) in {:?}", started.elapsed());
    let url = format!("{prefix}/hello?x=1");
    for _ in 0..3 {
        let r = s.get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-path-with-query"], url.as_str());
        assert_eq!(r.text().await.unwrap(), body);
    }
    // And again after a restart, from the cached artifact.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let r = s.get(&format!("{prefix}/")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);
    s.stop().await;
}
