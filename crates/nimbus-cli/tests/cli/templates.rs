//! `nimbus new --lang L`: every template builds with its own toolchain, deploys, and answers,
//! reading its env and secrets and calling the data APIs (documents and KV, in-process).
//!
//! SLOW: each builds a fresh function (cargo for Rust; `npm ci` + ComponentizeJS for JavaScript
//! and TypeScript; componentize-py for Python, installed once into target/tmp). The JavaScript and
//! Python ones need node/npm and python3 with pip; without them they skip, unless
//! NIMBUS_REQUIRE_FOREIGN is set (scripts/test.sh sets it), as the foreign-guest tests do.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::TestServer;

/// Whether `program --version` runs; if not, the test must skip (or fail when required).
fn have(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_FOREIGN").is_none(),
            "{program} is needed to build this template (NIMBUS_REQUIRE_FOREIGN is set)"
        );
        eprintln!("SKIPPED: {program} not found");
    }
    found
}

/// Where Python templates install componentize-py: shared by test runs, never the user's cache.
pub fn tools_dir() -> &'static str {
    concat!(env!("CARGO_TARGET_TMPDIR"), "/nimbus-tools")
}

/// `nimbus new NAME --lang LANG` in a fresh directory; the function's directory.
pub fn scaffold(s: &TestServer, work: &Path, name: &str, lang: &str) -> std::path::PathBuf {
    let dir = work.join(name);
    let out = s.ok(&["new", name, "--lang", lang, "--dir", dir.to_str().unwrap()]);
    assert!(out.contains(&format!("Created {name}")), "{out}");
    dir
}

fn builds_deploys_and_answers(lang: &str, needs: &[&str]) {
    if !needs.iter().all(|p| have(p)) {
        return;
    }
    let s = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let name = format!("fn-{lang}");
    let dir = scaffold(&s, work.path(), &name, lang);

    // `deploy` runs the manifest's build command: the first one installs the locked toolchain.
    let out = s
        .cmd()
        .arg("deploy")
        .arg(&dir)
        .env("NIMBUS_TOOLS_DIR", tools_dir())
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy of the {lang} template failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("Deployed {name} v1 ")), "{stdout}");

    let call = || {
        let (status, body) = s.get(&format!("/{name}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let first = call();
    assert_eq!(first["message"], format!("Hello from {name}!"), "{first}");
    assert_eq!(first["lang"], lang, "{first}");
    assert_eq!(first["api_key_set"], false, "{first}");
    assert_eq!(first["visits"], 1, "{first}");
    let doc = first["document"].as_str().expect("a document id");

    // A secret reaches the handler as an env var; the KV counter and documents persist.
    s.ok(&["secrets", "set", &name, "API_KEY", "s3cret"]);
    let second = call();
    assert_eq!(second["api_key_set"], true, "{second}");
    assert_eq!(second["visits"], 2, "{second}");
    assert_ne!(second["document"].as_str(), Some(doc), "{second}");
    assert!(!second.to_string().contains("s3cret"));

    // Both documents are in the project's `visits` collection, written by the function.
    let addr = s.url.strip_prefix("http://").unwrap();
    let path = "/v1/projects/default/collections/visits/documents";
    let (status, body) =
        super::http(addr, "GET", path, &s.token(), b"", 1, Duration::ZERO).unwrap();
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body)
        .or_else(|_| serde_json::from_str(&super::dechunk(&body)))
        .unwrap_or_else(|e| panic!("{e}: {body}"));
    let docs = listed["documents"].as_array().unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(docs.len(), 2, "{listed}");
    assert!(docs.iter().all(|d| d["data"]["path"] == format!("/{name}")), "{listed}");

    let logs = s.logs_until(&["logs", &name], &format!("/{name}"));
    assert!(logs.contains("stdout|"), "{logs}");
}

#[test]
fn slow_template_rust_builds_deploys_and_answers() {
    builds_deploys_and_answers("rust", &["cargo"]);
}

#[test]
fn slow_template_js_builds_deploys_and_answers() {
    builds_deploys_and_answers("js", &["node", "npm"]);
}

#[test]
fn slow_template_ts_builds_deploys_and_answers() {
    builds_deploys_and_answers("ts", &["node", "npm"]);
}

#[test]
fn slow_template_python_builds_deploys_and_answers() {
    builds_deploys_and_answers("python", &["python3"]);
}
