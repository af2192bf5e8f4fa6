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

/// A JavaScript function writes and reads documents and KV through the in-process API with
/// plain `fetch`: the environment gives it the URL and the token, nothing else is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_component_uses_documents_and_kv() {
    let Some(wasm) = foreign_guest("js-data") else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    crate::documents::collection(&s, "default", json!({"name": "notes"})).await;
    let (status, deployed) =
        s.deploy_bytes(json!({"name": "js-data", "routes": ["/js-data"]}), wasm).await;
    assert_eq!(status, 201, "{deployed}");
    for visits in 1..=2 {
        let r = s.get(&format!("/js-data?title=note%20{visits}")).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["title"], format!("note {visits}"));
        assert_eq!(v["revision"], 1);
        assert_eq!(v["visits"], visits);
        // The document is there for clients too.
        let path = format!(
            "/v1/projects/default/collections/notes/documents/{}",
            v["id"].as_str().unwrap()
        );
        let doc: serde_json::Value =
            s.api(reqwest::Method::GET, &path).send().await.unwrap().json().await.unwrap();
        assert_eq!(doc["data"], json!({"title": format!("note {visits}"), "lang": "js"}));
    }
    s.stop().await;
}

/// The bytes of target/foreign-guests/`guest`.wasm; `None` (the test skips) when it is not built,
/// unless NIMBUS_REQUIRE_FOREIGN is set.
fn foreign_guest(guest: &str) -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../target/foreign-guests/{guest}.wasm"));
    if !path.exists() {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_FOREIGN").is_none(),
            "{} is missing: run scripts/build-foreign-guests.sh",
            path.display()
        );
        eprintln!("SKIPPED: {} not built (run scripts/build-foreign-guests.sh)", path.display());
        return None;
    }
    Some(std::fs::read(&path).unwrap())
}

/// Deploys target/foreign-guests/`guest`.wasm on `prefix`/..., checks that it answers `body`
/// and echoes the path in `x-path-with-query`, then again after a restart. Skips (unless
/// NIMBUS_REQUIRE_FOREIGN is set) when the guest is not built.
async fn runs_unchanged(guest: &str, prefix: &str, body: &str) {
    let Some(wasm) = foreign_guest(guest) else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_edit_compiles_only_what_changed() {
    edited_redeploy("python-hello", "/py", "Hello again from Python!\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_edit_compiles_only_what_changed() {
    edited_redeploy("js-hello", "/js", "Hello again from JavaScript!\n").await;
}

/// Deploys `guest`, then `guest`-edit (the same source with one line changed, built by
/// scripts/build-foreign-guests.sh): the second deploy takes nearly every function from the
/// compile cache (the language engine did not change) and serves the edited answer.
async fn edited_redeploy(guest: &str, prefix: &str, edited_body: &str) {
    let dir_of = |name: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../target/foreign-guests/{name}.wasm"))
    };
    let (path, edited) = (dir_of(guest), dir_of(&format!("{guest}-edit")));
    if !path.exists() || !edited.exists() {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_FOREIGN").is_none(),
            "{} or {} is missing: run scripts/build-foreign-guests.sh",
            path.display(),
            edited.display()
        );
        eprintln!("SKIPPED: {} not built (run scripts/build-foreign-guests.sh)", edited.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let route = json!({"name": guest, "routes": [format!("{prefix}/...")]});
    let started = Instant::now();
    let (status, first) = s.deploy_bytes(route.clone(), std::fs::read(&path).unwrap()).await;
    assert_eq!(status, 201, "{first}");
    let first_took = started.elapsed();
    let count = |d: &serde_json::Value, k: &str| d["compile"][k].as_u64().unwrap();
    let total = count(&first, "cached_functions") + count(&first, "compiled_functions");

    let started = Instant::now();
    let (status, second) = s.deploy_bytes(route.clone(), std::fs::read(&edited).unwrap()).await;
    assert_eq!(status, 201, "{second}");
    let second_took = started.elapsed();
    let (cached, compiled, untranslated) = (
        count(&second, "cached_functions"),
        count(&second, "compiled_functions"),
        count(&second, "untranslated_functions"),
    );
    eprintln!(
        "{guest}: first deploy {first_took:?} ({total} functions), edited deploy \
         {second_took:?} ({cached} from the cache, {untranslated} of them untranslated, \
         {compiled} compiled)"
    );
    // The engine is most of the component: at least 90% of its functions must come from the cache.
    assert!(cached * 10 >= total * 9, "{second}");
    // The edit changed only data: the engine's Wasm functions are not even translated. (The
    // other hits are trampolines, found by their IR; a small module whose globals hold snapshot
    // values is translated, 16 functions of componentize-py's 13,485.)
    let wasm_functions = defined_functions(&std::fs::read(&edited).unwrap());
    assert!(untranslated <= wasm_functions, "{second}");
    assert!(untranslated * 100 >= wasm_functions * 99, "{wasm_functions} functions: {second}");
    let r = s.get(&format!("{prefix}/")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), edited_body);

    // Going back to the first version compiles nothing: its artifact is still stored (the
    // first version references it) and is reused.
    let (status, back) = s.deploy_bytes(route.clone(), std::fs::read(&path).unwrap()).await;
    assert_eq!(status, 201, "{back}");
    assert!(back["compile"].is_null(), "{back}");
    assert_eq!(s.get(&format!("{prefix}/")).await.status(), 200);

    // Without the artifacts (deleted, or another engine's), compiling the edit again takes
    // every function from the cache under a key that depends only on the function (before the
    // patch in vendor/wasmtime-internal-cranelift, dozens missed on every compile).
    for entry in std::fs::read_dir(dir.path().join("artifacts")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let (status, again) = s.deploy_bytes(route, std::fs::read(&edited).unwrap()).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(
        (count(&again, "cached_functions"), count(&again, "compiled_functions")),
        (cached + compiled, 0),
        "{again}"
    );
    s.stop().await;
}

/// The number of functions the core modules of a component define.
fn defined_functions(component: &[u8]) -> u64 {
    let mut n = 0;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        if let wasmparser::Payload::CodeSectionStart { count, .. } = payload.unwrap() {
            n += u64::from(count);
        }
    }
    n
}
