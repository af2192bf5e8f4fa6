//! A wasi:http component built by another toolchain (componentize-py, CPython inside) runs
//! unchanged. `scripts/build-foreign-guests.sh` builds it; `.ci/run` does so and sets
//! NIMBUS_REQUIRE_FOREIGN=1, so this test cannot silently pass in CI without running.

use std::path::PathBuf;

use crate::common::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_component_runs_unchanged() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/foreign-guests/python-hello.wasm");
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
    let (status, body) = s
        .deploy_bytes(
            json!({"name": "python", "routes": ["/py/..."]}),
            std::fs::read(&path).unwrap(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for _ in 0..3 {
        let r = s.get("/py/hello?x=1").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-path-with-query"], "/py/hello?x=1");
        assert_eq!(r.text().await.unwrap(), "Hello from Python!\n");
    }
    // And again after a restart, from the cached artifact.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.get("/py/").await.status(), 200);
    s.stop().await;
}
