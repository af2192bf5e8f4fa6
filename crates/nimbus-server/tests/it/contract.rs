//! The API contract, tested by a client nobody here wrote: schemathesis (PyPI) generates requests
//! from `/v1/openapi.json` and checks that no answer is a 5xx, that every status is documented,
//! and that every body and content type matches the schema (errors included). Bounded in time.
//!
//! `scripts/test.sh` installs schemathesis and sets `NIMBUS_REQUIRE_SCHEMATHESIS=1`, so CI never
//! skips this; a bare `cargo test` without it prints a note and skips.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

const SCHEMATHESIS: &str = "schemathesis";

fn installed() -> bool {
    std::process::Command::new(SCHEMATHESIS)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violations() {
    if !installed() {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_SCHEMATHESIS").is_none(),
            "schemathesis is required (pip install schemathesis) but not installed"
        );
        eprintln!("skipping: schemathesis is not installed (scripts/test.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    // Some data for the generated requests to find.
    s.deploy("hello", json!({"name": "hello", "routes": ["/hello"]})).await;
    s.create_project("acme").await;
    user_session(&s, "default", "someone@example.com").await;

    let report = dir.path().join("schemathesis.xml");
    // One worker: with two, hypothesis's lambda-source cache raced in its threads once ("AST
    // constructor recursion depth mismatch", a tool error, not a finding about the API).
    let mut cmd = tokio::process::Command::new(SCHEMATHESIS);
    cmd.arg("run")
        .arg(s.url("/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {}", s.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        .args(["--max-examples", "30", "--max-time", "60", "--workers", "1", "--seed", "6"])
        .args(["--no-color", "--report", "junit", "--report-junit-path"])
        .arg(&report)
        .current_dir(dir.path())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("schemathesis finished within 4 minutes")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found contract violations:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It must have exercised the API, not just loaded the schema.
    assert!(stdout.contains("passed"), "{stdout}");
    assert!(report.exists());
    s.stop().await;
}
