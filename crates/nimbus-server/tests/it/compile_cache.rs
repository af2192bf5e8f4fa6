//! The compile cache (`<data>/compile-cache/`): a deploy whose component shares functions with an
//! earlier one compiles only the rest, says so in its response, serves the right output, and a
//! cache left torn or corrupt by a crash never breaks a deploy.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{TestServer, spec, test_config};

/// `wasm` with a custom section appended: another module (another SHA-256, another version) whose
/// code is the same, as a rebuild that changed only metadata would be.
fn with_custom_section(mut wasm: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    let name = b"nimbus-test";
    let mut content = leb128(name.len());
    content.extend_from_slice(name);
    content.extend_from_slice(payload);
    wasm.push(0); // custom section id
    wasm.extend(leb128(content.len()));
    wasm.extend(content);
    wasm
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn hello() -> Vec<u8> {
    std::fs::read(test_programs_artifacts::HELLO).unwrap()
}

/// (cached, compiled) of a deploy response, checking that `compile` is there and consistent.
/// Most functions of a recompile of `total` functions came from the cache. Not all: some
/// functions get a new key on every compile (measured for hello: 15 to 40 of 355, varying).
fn mostly_cached((cached, compiled): (u64, u64), total: u64, deployed: &Value) {
    assert_eq!(cached + compiled, total, "{deployed}");
    assert!(compiled * 4 < total, "{deployed}");
}

fn compile_report(deployed: &Value) -> (u64, u64) {
    let c = &deployed["compile"];
    assert_eq!(c["ms"], deployed["compile_ms"], "{deployed}");
    (c["cached_functions"].as_u64().unwrap(), c["compiled_functions"].as_u64().unwrap())
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(dir.join("compile-cache")).unwrap() {
        let shard = shard.unwrap();
        if shard.file_name() == "tmp" {
            continue;
        }
        for e in std::fs::read_dir(shard.path()).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_of_shared_code_is_served_from_the_compile_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;

    let first = s.deploy("hello", spec("hello", &["/hello"])).await;
    // Even an empty cache hits: a component has functions with equal code (trampolines,
    // adapters), compiled once.
    let (cached, compiled) = compile_report(&first);
    assert!(compiled > 10 && cached < compiled, "{first}");
    let total = cached + compiled;
    // One entry per compiled function (fewer if two threads compiled equal code at once), and
    // one more per Wasm function, keyed before translation.
    let entries = cache_files(dir.path()).len() as u64;
    assert!(entries > compiled / 2 && entries <= 2 * compiled, "{entries} entries");

    // Another module with the same code: every function comes from the cache.
    let (status, second) =
        s.deploy_bytes(spec("hello", &["/hello"]), with_custom_section(hello(), b"edit 1")).await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["version"]["module_sha256"], first["version"]["module_sha256"]);
    mostly_cached(compile_report(&second), total, &second);
    assert_eq!(second["version"]["version"], 2);
    let r = s.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");

    // A different guest built by the same toolchain shares part of its code (the standard
    // library, wasi bindings): some functions hit, its own are compiled.
    let logs = s.deploy("logs", spec("logs", &["/logs"])).await;
    let (cached, compiled) = compile_report(&logs);
    assert!(cached > 0 && compiled > 0, "{logs}");
    let r = s.get("/logs").await;
    assert_eq!(r.text().await.unwrap(), "logged\n");

    // The counters are on /metrics too.
    let metrics =
        s.api(reqwest::Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("nimbus_compile_cache_functions_total{result=\"hit\"}"), "{metrics}");
    assert!(metrics.contains("nimbus_compile_cache_bytes "), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_left_corrupt_by_a_crash_never_breaks_a_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let (cached, compiled) = compile_report(&s.deploy("hello", spec("hello", &["/hello"])).await);
    let total = cached + compiled;
    s.stop().await;

    // What a kill -9 (entries are not fsynced) or a bad disk can leave: every entry damaged.
    // A flipped bit would still deserialize as compiled code; a torn file would not.
    let files = cache_files(dir.path());
    assert!(!files.is_empty());
    for (i, f) in files.iter().enumerate() {
        let mut bytes = std::fs::read(f).unwrap();
        match i % 3 {
            0 => {
                let last = bytes.len() - 1;
                bytes[last] ^= 0x40;
            }
            1 => bytes.truncate(bytes.len() / 2),
            _ => bytes = b"garbage".to_vec(),
        }
        std::fs::write(f, bytes).unwrap();
    }
    // Half-written temporary files and stray files.
    std::fs::write(dir.path().join("compile-cache/tmp/999-1"), b"half an entry").unwrap();
    std::fs::write(dir.path().join("compile-cache/stray"), b"x").unwrap();
    // No artifact either: the restart must compile hello again, through the damaged cache.
    std::fs::remove_dir_all(dir.path().join("artifacts")).unwrap();

    let s = TestServer::start(dir.path()).await;
    let r = s.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");
    assert!(!dir.path().join("compile-cache/tmp/999-1").exists(), "temporary leftovers removed");

    // The restart replaced every damaged entry; a new deploy of the same code now hits them all.
    let (status, again) =
        s.deploy_bytes(spec("hello", &["/hello"]), with_custom_section(hello(), b"again")).await;
    assert_eq!(status, 201, "{again}");
    mostly_cached(compile_report(&again), total, &again);
    let r = s.get("/hello").await;
    assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_entries_are_compiled_again_on_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let (cached, compiled) = compile_report(&s.deploy("hello", spec("hello", &["/hello"])).await);
    let total = cached + compiled;
    // Damage the entries under a running server (as a crash of a concurrent writer would): each
    // is then a miss, compiled afresh, never code read back wrong.
    let files = cache_files(dir.path());
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(f, bytes).unwrap();
    }
    let (status, second) =
        s.deploy_bytes(spec("hello", &["/hello"]), with_custom_section(hello(), b"x")).await;
    assert_eq!(status, 201, "{second}");
    // Damaged entries are compiled again (a function whose twin was re-inserted first may hit
    // the fresh copy): nearly all that the first deploy compiled, and no function is taken
    // whole from a damaged entry.
    let (cached_now, compiled_now) = compile_report(&second);
    assert_eq!(cached_now + compiled_now, total, "{second}");
    assert!(compiled_now * 10 >= compiled * 9, "{} files: {second}", files.len());
    assert_eq!(second["compile"]["untranslated_functions"], 0, "{second}");
    let r = s.get("/hello").await;
    assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_budget_and_can_be_off() {
    // A budget far below one component's functions: deploys still work, the cache stays bounded.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.compile_cache_bytes = 64 << 10;
    let s = TestServer::start_with(config).await;
    s.deploy("hello", spec("hello", &["/hello"])).await;
    s.deploy("logs", spec("logs", &["/logs"])).await;
    let on_disk: u64 = cache_files(dir.path()).iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(on_disk > 0 && on_disk <= 64 << 10, "{on_disk} bytes");
    assert_eq!(s.get("/hello").await.text().await.unwrap(), "Hello from Nimbus!\n");
    s.stop().await;

    // 0 turns it off: the report says so with nulls, and nothing is written.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.compile_cache_bytes = 0;
    let s = TestServer::start_with(config).await;
    let d = s.deploy("hello", spec("hello", &["/hello"])).await;
    assert!(d["compile"]["cached_functions"].is_null(), "{d}");
    assert!(d["compile"]["compiled_functions"].is_null(), "{d}");
    assert!(!dir.path().join("compile-cache").exists());
    s.stop().await;
}
