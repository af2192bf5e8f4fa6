//! End-to-end tests of the `nimbus` binary.
//!
//! Most tests start `nimbus serve --listen 127.0.0.1:0 --data <tempdir>` as a child process, read
//! the `nimbus listening on http://...` line for its URL, and drive it with the CLI exactly as a
//! user would. The guest components come from `test-programs-artifacts`.
//!
//! `slow_new_build_deploy_and_curl` is SLOW: it builds a freshly scaffolded project with cargo for
//! wasm32-wasip2, which needs that target installed and the `wasi` crate from crates.io.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;
use serde_json::Value;
use tempfile::TempDir;

const NIMBUS: &str = env!("CARGO_BIN_EXE_nimbus");

// Tests of `nimbus new` templates and `nimbus dev`, in files of their own (one test binary).
#[path = "cli/dev.rs"]
mod dev;
#[path = "cli/templates.rs"]
mod templates;
#[path = "cli/usage.rs"]
mod usage;

/// Keep the caller's NIMBUS_* settings and CLI config out of the tests: the config is a file
/// that no test writes unless it sets NIMBUS_CONFIG itself.
fn scrub_env(cmd: &mut StdCommand) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NIMBUS_") || key == "NO_COLOR" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NIMBUS_CONFIG", std::env::temp_dir().join("nimbus-cli-tests-no-config.toml"));
}

/// A `nimbus` command with a clean environment and a timeout.
fn nimbus() -> Command {
    let mut std_cmd = StdCommand::new(NIMBUS);
    scrub_env(&mut std_cmd);
    let mut cmd = Command::from_std(std_cmd);
    cmd.timeout(Duration::from_secs(120));
    cmd
}

struct TestServer {
    child: Child,
    url: String,
    data: TempDir,
    log: TempDir,
}

impl TestServer {
    fn start() -> TestServer {
        let log = tempfile::tempdir().unwrap();
        // Each server saves its `local` profile into a config of its own.
        let config = log.path().join("config.toml");
        TestServer::start_with(&["--listen", "127.0.0.1:0"], &config, log)
    }

    /// `nimbus serve ARGS --data <new tempdir>` with the CLI config at `config`; `log` keeps
    /// the server's stderr.
    fn start_with(args: &[&str], config: &Path, log: TempDir) -> TestServer {
        let data = tempfile::tempdir().unwrap();
        let log_file = std::fs::File::create(log.path().join("server.log")).unwrap();
        let mut cmd = StdCommand::new(NIMBUS);
        scrub_env(&mut cmd);
        let mut child = cmd
            .arg("serve")
            .args(args)
            .arg("--data")
            .arg(data.path())
            .env("NIMBUS_CONFIG", config)
            .env("NIMBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start nimbus serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("nimbus listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let mut server = TestServer { child, url: String::new(), data, log };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => server.url = url,
            Err(_) => panic!("nimbus serve did not print its address; log:\n{}", server.log()),
        }
        assert!(server.url.starts_with("http://127.0.0.1:"), "{}", server.url);
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path().join("server.log")).unwrap_or_default()
    }

    /// `nimbus --url <server> --data-dir <server's data dir>`.
    fn cmd(&self) -> Command {
        let mut cmd = nimbus();
        cmd.arg("--url").arg(&self.url).arg("--data-dir").arg(self.data.path());
        cmd
    }

    /// Run a command that must succeed; return its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "nimbus {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run `nimbus logs ...` until its output contains `needle`: invocation records are written
    /// asynchronously (batched a few milliseconds after the response), so poll, bounded.
    fn logs_until(&self, args: &[&str], needle: &str) -> String {
        let mut out = String::new();
        for _ in 0..100 {
            out = self.ok(args);
            if out.contains(needle) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("`nimbus {args:?}` never showed {needle:?}; last output:\n{out}");
    }

    /// `--json` output once `array` in it has at least `n` entries (records are written
    /// asynchronously, in batches).
    fn json_until(&self, args: &[&str], array: &str, n: usize) -> Value {
        let mut value = Value::Null;
        for _ in 0..100 {
            value = self.json(args);
            if value[array].as_array().is_some_and(|a| a.len() >= n) {
                return value;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("`nimbus {args:?}` never listed {n} {array}; last output:\n{value}");
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("nimbus {args:?}: not JSON ({e}): {out}"))
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.url, path)
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data.path().join("admin-token")).unwrap().trim().to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- nimbus serve log ---\n{}", self.log());
        }
    }
}

/// A plain HTTP/1.0 GET (no client library between the test and the server), returning status and body.
fn http_get(url: &str, path: &str) -> (u16, String) {
    let addr = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        s = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn hello_wasm() -> &'static str {
    test_programs_artifacts::HELLO
}

#[test]
fn deploy_list_invoke_route_logs_rollback_delete() {
    let s = TestServer::start();

    let out = s.ok(&["deploy", hello_wasm(), "--name", "hello", "--route", "/hello"]);
    assert!(out.contains("Deployed hello v1 (sha256 "), "{out}");
    assert!(out.contains("\n  compile: ") && out.contains(" functions compiled, "), "{out}");
    assert!(out.contains(&format!("{}/hello", s.url)), "{out}");

    let list = s.json(&["list"]);
    let functions = list["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 1);
    assert_eq!(functions[0]["name"], "hello");
    assert_eq!(functions[0]["active_version"], 1);
    assert!(s.ok(&["ls"]).contains("hello"));

    assert_eq!(s.ok(&["invoke", "hello"]), "Hello from Nimbus!\n");
    let with_head = s.ok(&["invoke", "hello", "-i"]);
    assert!(with_head.starts_with("HTTP/"), "{with_head}");
    assert!(with_head.contains("x-nimbus-invocation-id: "), "{with_head}");

    assert_eq!(s.get("/hello"), (200, "Hello from Nimbus!\n".to_string()));

    let logs = s.logs_until(&["logs", "hello"], " v1 ok 200 ");
    assert!(logs.contains(" v1 ok 200 "), "{logs}");
    let logs = s.json_until(&["logs", "hello"], "invocations", 3);
    assert!(logs["invocations"].as_array().unwrap().iter().all(|r| r["status"] == "ok"), "{logs}");

    // A second version: the `logs` guest, which writes to stdout and stderr.
    let out =
        s.ok(&["deploy", test_programs_artifacts::LOGS, "--name", "hello", "--route", "/hello"]);
    assert!(out.contains("Deployed hello v2 "), "{out}");
    assert_eq!(s.get("/hello"), (200, "logged\n".to_string()));
    let logs = s.logs_until(&["logs", "hello", "--limit", "1"], " v2 ok 200 ");
    assert!(logs.contains(" v2 ok 200 "), "{logs}");
    assert!(logs.contains("  stdout| hello stdout\n"), "{logs}");
    assert!(logs.contains("  stderr| hello stderr\n"), "{logs}");

    let versions = s.json(&["versions", "hello"]);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    assert!(s.ok(&["versions", "hello"]).contains("v2"));

    let out = s.ok(&["rollback", "hello", "1"]);
    assert!(out.contains("hello is now at v1"), "{out}");
    assert_eq!(s.get("/hello"), (200, "Hello from Nimbus!\n".to_string()));
    let info = s.json(&["show", "hello"]);
    assert_eq!(info["active_version"], 1);
    assert_eq!(info["latest_version"], 2);
    assert!(s.ok(&["show", "hello"]).contains(&format!("{}/hello", s.url)));

    let inv = s.json_until(&["invocations", "--function", "hello"], "invocations", 5);
    let versions: Vec<_> =
        inv["invocations"].as_array().unwrap().iter().map(|r| &r["version"]).collect();
    assert!(versions.contains(&&Value::from(1)) && versions.contains(&&Value::from(2)), "{inv}");
    let table = s.ok(&["invocations", "--status", "ok", "--limit", "3"]);
    assert!(table.starts_with("SEQ "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    assert!(s.ok(&["delete", "hello", "--yes"]).contains("Deleted hello"));
    assert_eq!(s.json(&["list"])["functions"].as_array().unwrap().len(), 0);
    assert_eq!(s.get("/hello").0, 404);
}

#[test]
fn invoke_sends_method_path_headers_and_body() {
    let s = TestServer::start();
    s.ok(&["deploy", test_programs_artifacts::ECHO, "--name", "echo"]);

    let out = s.ok(&[
        "invoke",
        "echo",
        "--path",
        "/a/b?x=1",
        "-X",
        "PUT",
        "-d",
        "hello body",
        "-H",
        "X-Test: yes",
        "-i",
    ]);
    assert!(out.contains("x-method: PUT"), "{out}");
    assert!(out.contains("x-path-with-query: /a/b?x=1"), "{out}");
    assert!(out.contains("x-echo-x-test: yes"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello body") || out.ends_with("\n\nhello body"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "from a file").unwrap();
    let at_file = format!("@{}", body.display());
    assert_eq!(s.ok(&["invoke", "echo", "-d", &at_file]), "from a file");

    // -d defaults to POST; the body can come from stdin.
    s.cmd()
        .args(["invoke", "echo", "-d", "@-", "-i"])
        .write_stdin("piped")
        .assert()
        .success()
        .stdout(contains("x-method: POST").and(contains("piped")));
}

#[test]
fn invoke_async_queues_then_waits_or_shows_the_result() {
    let s = TestServer::start();
    s.ok(&["deploy", test_programs_artifacts::ECHO, "--name", "echo"]);

    // --wait prints the response as a plain invoke does, once the worker ran it.
    let out = s.ok(&["invoke", "echo", "--async", "--wait", "-d", "later", "--path", "/job", "-i"]);
    assert!(out.contains("x-path-with-query: /job"), "{out}");
    assert!(out.ends_with("\n\nlater"), "{out}");

    // Without --wait: the id at once, and --result shows the response when it is there.
    let queued = s.ok(&["invoke", "echo", "--async", "-d", "second", "--idempotency-key", "k1"]);
    let id = queued.trim().strip_prefix("queued ").expect(&queued).to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = s.ok(&["invoke", "echo", "--result", &id]);
        if out == "second" {
            break;
        }
        assert!(out.starts_with(&format!("{id}: ")), "{out}");
        assert!(std::time::Instant::now() < deadline, "never finished: {out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The same idempotency key answers the first invocation.
    let again = s.ok(&["invoke", "echo", "--async", "-d", "third", "--idempotency-key", "k1"]);
    assert_eq!(again.trim(), format!("queued {id} (an earlier call with this key)"));
    let json: Value =
        serde_json::from_str(&s.ok(&["--json", "invoke", "x", "--result", &id])).unwrap();
    assert_eq!(
        (json["status"].as_str(), json["response"]["body"].as_str()),
        (Some("succeeded"), Some("second"))
    );
    // --wait without --async is a usage error.
    s.cmd().args(["invoke", "echo", "--wait"]).assert().failure();
}

#[test]
fn secrets_and_env() {
    let s = TestServer::start();
    s.ok(&["deploy", test_programs_artifacts::ENV, "--name", "env", "--env", "GREETING=hi there"]);
    let out = s.ok(&["invoke", "env"]);
    let vars: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(vars["GREETING"], "hi there", "{out}");

    // The value comes from stdin, never from the command line.
    s.cmd()
        .args(["secrets", "set", "env", "API_TOKEN"])
        .write_stdin("s3cret\n")
        .assert()
        .success()
        .stdout(contains("Set secret API_TOKEN on env"));
    s.ok(&["secrets", "set", "env", "OTHER", "value"]);
    let names = s.ok(&["secrets", "list", "env"]);
    assert_eq!(names, "API_TOKEN\nOTHER\n");
    let json = s.json(&["secrets", "list", "env"]);
    assert_eq!(json["secrets"], serde_json::json!(["API_TOKEN", "OTHER"]));
    assert!(!s.ok(&["show", "env"]).contains("s3cret"));

    s.ok(&["secrets", "rm", "env", "API_TOKEN"]);
    assert_eq!(s.ok(&["secrets", "list", "env"]), "OTHER\n");
}

#[test]
fn logs_follow_streams_new_invocations() {
    let s = TestServer::start();
    s.ok(&["deploy", test_programs_artifacts::LOGS, "--name", "tail", "--route", "/tail"]);

    let mut cmd = StdCommand::new(NIMBUS);
    scrub_env(&mut cmd);
    let mut child = cmd
        .arg("--url")
        .arg(&s.url)
        .arg("--data-dir")
        .arg(s.data.path())
        .args(["logs", "tail", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Keep calling until the follower prints a call (it may connect after the first ones).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let found = 'outer: loop {
        if Instant::now() > deadline {
            break false;
        }
        assert_eq!(s.get("/tail").0, 200);
        let until = Instant::now() + Duration::from_secs(1);
        while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            let hit = line.contains("stdout| hello stdout");
            seen.push(line);
            if hit {
                break 'outer true;
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "logs -f printed:\n{}", seen.join("\n"));
    assert!(seen.iter().any(|l| l.contains(" v1 ok 200 ")), "{}", seen.join("\n"));
}

#[test]
fn api_errors_are_reported() {
    let s = TestServer::start();

    s.cmd()
        .args(["show", "nope"])
        .assert()
        .code(1)
        .stderr(contains("error: ").and(contains("HTTP 404")));
    s.cmd()
        .args(["invoke", "nope"])
        .assert()
        .code(1)
        .stderr(contains("error: ").and(contains("HTTP 404")));
    s.cmd().args(["delete", "nope", "--yes"]).assert().code(1).stderr(contains("HTTP 404"));

    // Not WebAssembly at all: refused before upload.
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "just text").unwrap();
    s.cmd()
        .arg("deploy")
        .arg(&txt)
        .args(["--name", "bad"])
        .assert()
        .code(1)
        .stderr(contains("is not a WebAssembly file"));

    // Looks like a component but is not one: the server refuses it.
    let fake = dir.path().join("fake.wasm");
    std::fs::write(&fake, b"\0asm\x0d\x00\x01\x00garbage garbage").unwrap();
    s.cmd()
        .arg("deploy")
        .arg(&fake)
        .args(["--name", "bad"])
        .assert()
        .code(1)
        .stderr(contains("error: ").and(predicate::str::is_match(r"HTTP 4\d\d\)").unwrap()));

    // A route the platform reserves is refused locally with the model's message.
    s.cmd()
        .args(["deploy", hello_wasm(), "--name", "bad", "--route", "/v1/mine"])
        .assert()
        .code(1)
        .stderr(contains("belong to Nimbus"));

    // A wrong token.
    let mut cmd = nimbus();
    cmd.args(["--url", &s.url, "--token", "wrong", "list"])
        .assert()
        .code(1)
        .stderr(contains("refused the admin token").and(contains("HTTP 401")));

    // The right token passed explicitly works without the data dir.
    let mut cmd = nimbus();
    cmd.args(["--url", &s.url, "--data-dir", "/nonexistent", "--json", "list"])
        .env("NIMBUS_TOKEN", s.token())
        .assert()
        .success();

    s.ok(&["deploy", hello_wasm(), "--name", "hello"]);
    s.cmd().args(["rollback", "hello", "7"]).assert().code(1).stderr(contains("error: "));
}

#[cfg(unix)]
#[test]
fn serve_stops_gracefully_on_sigterm() {
    let mut s = TestServer::start();
    assert_eq!(s.get("/healthz").0, 200);
    let status =
        StdCommand::new("kill").arg("-TERM").arg(s.child.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "nimbus serve exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "nimbus serve did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- Without a server ----

#[test]
fn unreachable_server_is_explained() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    nimbus()
        .args(["--token", "x", "list"])
        .env("NIMBUS_URL", &url)
        .assert()
        .code(1)
        .stderr(contains(format!("cannot reach Nimbus at {url} (is `nimbus serve` running?)")));
}

#[test]
fn missing_token_file_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = nimbus().arg("--data-dir").arg(dir.path()).arg("list").assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains(&dir.path().join("admin-token").display().to_string()), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
}

#[test]
fn deploy_checks_before_uploading() {
    let dir = tempfile::tempdir().unwrap();
    // A .wasm file needs a name.
    nimbus().args(["deploy", hello_wasm()]).assert().code(1).stderr(contains("needs --name"));
    // No manifest in the directory.
    nimbus().arg("deploy").arg(dir.path()).assert().code(1).stderr(contains("no nimbus.toml"));
    // A misspelt manifest key is named.
    std::fs::write(dir.path().join("nimbus.toml"), "name = \"x\"\nrotues = [\"/x\"]\n").unwrap();
    nimbus().arg("deploy").arg(dir.path()).assert().code(1).stderr(contains("rotues"));
    // Bad flag values are refused by the parser.
    nimbus()
        .args(["deploy", hello_wasm(), "--name", "x", "--memory", "lots"])
        .assert()
        .code(2)
        .stderr(contains("invalid size"));
    // A failing build command stops the deploy.
    std::fs::write(
        dir.path().join("nimbus.toml"),
        "name = \"x\"\ncomponent = \"x.wasm\"\n[build]\ncommand = \"exit 3\"\n",
    )
    .unwrap();
    nimbus()
        .args(["--token", "x", "deploy"])
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(contains("the build command `exit 3` failed"));
}

#[test]
fn new_scaffolds_a_project_and_refuses_to_overwrite() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("hello-world");
    nimbus()
        .args(["new", "hello-world", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(contains("Created hello-world"));
    for file in ["Cargo.toml", "src/lib.rs", "nimbus.toml", ".gitignore"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let manifest = std::fs::read_to_string(dir.join("nimbus.toml")).unwrap();
    assert!(manifest.contains("target/wasm32-wasip2/release/hello_world.wasm"), "{manifest}");
    let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains("crate-type = [\"cdylib\"]") && cargo.contains("[workspace]"),
        "{cargo}"
    );

    nimbus()
        .args(["new", "hello-world", "--dir"])
        .arg(&dir)
        .assert()
        .code(1)
        .stderr(contains("not empty"));
    nimbus()
        .args(["new", "Bad_Name", "--dir"])
        .arg(work.path().join("bad"))
        .assert()
        .code(1)
        .stderr(contains("invalid function name"));
}

#[test]
fn build_runs_the_command_and_checks_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let write_manifest = |command: &str| {
        std::fs::write(
            dir.path().join("nimbus.toml"),
            format!("name = \"x\"\ncomponent = \"out/x.wasm\"\n[build]\ncommand = \"{command}\"\n"),
        )
        .unwrap();
    };
    write_manifest("echo building");
    nimbus()
        .arg("build")
        .arg(dir.path())
        .assert()
        .code(1)
        .stdout(contains("building"))
        .stderr(contains("did not produce"));

    let hello = Path::new(hello_wasm());
    write_manifest(&format!("mkdir -p out && cp {} out/x.wasm", hello.display()));
    nimbus()
        .arg("build")
        .arg(dir.path().join("nimbus.toml"))
        .assert()
        .success()
        .stdout(contains("x.wasm ("));
}

/// SLOW: `nimbus new`, then a real cargo build for wasm32-wasip2 (fetches the `wasi` crate from
/// crates.io the first time), then deploy and a plain HTTP request to the new route.
#[test]
fn slow_new_build_deploy_and_curl() {
    let s = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("greeter");
    s.cmd().args(["new", "greeter", "--dir"]).arg(&dir).assert().success();

    // A target dir in the environment does not move the artifact the manifest names.
    s.cmd()
        .arg("build")
        .arg(&dir)
        .env("CARGO_TARGET_DIR", work.path().join("elsewhere"))
        .timeout(Duration::from_secs(900))
        .assert()
        .success()
        .stdout(contains("greeter.wasm ("));

    let out = s.ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    assert!(out.contains("Deployed greeter v1 "), "{out}");
    assert!(out.contains(&format!("{}/greeter", s.url)), "{out}");

    let (status, body) = s.get("/greeter");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["message"], "Hello from greeter!", "{body}");
    let logs = s.logs_until(&["logs", "greeter"], "stdout| handling /greeter");
    assert!(logs.contains("stdout| handling /greeter"), "{logs}");

    // Deploying from the directory runs the (now up to date) build again: the same bytes, so
    // no new version.
    let out = s.ok(&["deploy", dir.to_str().unwrap()]);
    assert!(out.contains("Unchanged: greeter v1 "), "{out}");
}

/// A plain HTTP/1.0 POST of a JSON body, returning status and body.
fn http_post_json(url: &str, path: &str, body: &Value) -> (u16, String) {
    let addr = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_string() })
}

#[test]
fn projects_keys_and_users() {
    let s = TestServer::start();

    // Projects (admin token).
    let out = s.ok(&["projects", "create", "acme", "--name", "Acme Inc"]);
    assert!(out.contains("Created project acme (Acme Inc)"), "{out}");
    let projects = s.json(&["projects", "list"]);
    let slugs: Vec<&str> = projects["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["slug"].as_str().unwrap())
        .collect();
    assert!(slugs.contains(&"acme") && slugs.contains(&"default"), "{projects}");
    assert!(s.ok(&["projects", "ls"]).contains("Acme Inc"));
    s.cmd().args(["projects", "create", "acme"]).assert().code(1).stderr(contains("HTTP 409"));

    // A service key for acme.
    let created =
        s.json(&["--project", "acme", "keys", "create", "--scope", "service", "--name", "ci"]);
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["info"]["id"].as_str().unwrap().to_string();
    let prefix = created["info"]["prefix"].as_str().unwrap().to_string();
    assert!(key.starts_with("nbk_"), "{created}");
    assert_eq!(created["info"]["project"], "acme");
    assert_eq!(created["info"]["scope"], "service");
    let human =
        s.ok(&["--project", "acme", "keys", "create", "--scope", "public", "--expires-in", "30d"]);
    assert!(human.contains("nbk_") && human.contains("shown only once"), "{human}");

    // The key acts on acme without --project and without the admin token.
    let with_key = |args: &[&str]| {
        let mut cmd = nimbus();
        cmd.args(["--url", &s.url, "--data-dir", "/nonexistent", "--token", &key]).args(args);
        cmd
    };
    let out = with_key(&["--json", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["functions"], serde_json::json!([]));
    with_key(&["deploy", hello_wasm(), "--name", "hello"])
        .assert()
        .success()
        .stdout(contains("Deployed hello v1 "));
    let acme = s.json(&["--project", "acme", "list"]);
    assert_eq!(acme["functions"][0]["name"], "hello", "{acme}");
    assert_eq!(s.json(&["--project", "acme", "show", "hello"])["require_auth"], false);
    with_key(&["deploy", hello_wasm(), "--name", "hello", "--require-auth"])
        .assert()
        .success()
        .stdout(contains("Deployed hello v2 "));
    assert_eq!(s.json(&["--project", "acme", "show", "hello"])["require_auth"], true);
    assert!(s.ok(&["--project", "acme", "show", "hello"]).contains("auth:           required"));
    assert_eq!(s.json(&["list"])["functions"], serde_json::json!([]));
    // A service key cannot create projects.
    with_key(&["projects", "create", "other"]).assert().code(1).stderr(contains("HTTP 403"));

    // Listing shows prefixes, never secrets.
    let keys_out = s.ok(&["--json", "--project", "acme", "keys", "list"]);
    assert!(!keys_out.contains(&key), "{keys_out}");
    let keys: Value = serde_json::from_str(&keys_out).unwrap();
    let listed = keys["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{keys}");
    let ours = listed.iter().find(|k| k["id"] == key_id.as_str()).unwrap();
    assert_eq!(ours["prefix"], prefix.as_str());
    assert!(ours["revoked_at"].is_null());
    let table = s.ok(&["--project", "acme", "keys", "list"]);
    assert!(table.contains(&prefix) && !table.contains(&key), "{table}");
    assert_eq!(s.json(&["keys", "list"])["keys"], serde_json::json!([]));

    // Revoked: the key stops working at once.
    let out = s.ok(&["--project", "acme", "keys", "revoke", &key_id]);
    assert!(out.contains(&format!("Revoked key {key_id}")), "{out}");
    with_key(&["list"]).assert().code(1).stderr(contains("HTTP 401").and(contains("unauthorized")));
    let keys = s.json(&["--project", "acme", "keys", "list"]);
    let ours =
        keys["keys"].as_array().unwrap().iter().find(|k| k["id"] == key_id.as_str()).unwrap();
    assert!(ours["revoked_at"].is_i64(), "{keys}");

    // End users of the default project.
    let email = "ada@example.com";
    let creds = serde_json::json!({ "email": email, "password": "correct horse battery staple" });
    let (status, body) = http_post_json(&s.url, "/v1/projects/default/auth/signup", &creds);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_post_json(&s.url, "/v1/projects/default/auth/signin", &creds);
    assert_eq!(status, 200, "{body}");

    let users = s.json(&["users", "list"]);
    let list = users["users"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{users}");
    assert_eq!(list[0]["email"], email);
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert!(s.ok(&["users", "list", "--email", "ada"]).contains(email));
    assert_eq!(s.json(&["users", "list", "--email", "bob"])["users"], serde_json::json!([]));
    assert!(
        s.json(&["--project", "acme", "users", "list"])["users"].as_array().unwrap().is_empty()
    );
    assert_eq!(s.json(&["users", "show", &id])["email"], email);

    assert!(s.ok(&["users", "disable", &id]).contains("Disabled user"));
    assert_eq!(s.json(&["users", "show", &id])["disabled"], true);
    let (status, _) = http_post_json(&s.url, "/v1/projects/default/auth/signin", &creds);
    assert!((400..500).contains(&status), "a disabled user signed in: {status}");
    assert_eq!(s.json(&["users", "enable", &id])["disabled"], false);

    let user =
        s.json(&["users", "set-claims", &id, "--role", "editor", "--claims", r#"{"plan":"pro"}"#]);
    assert_eq!(user["roles"], serde_json::json!(["editor"]), "{user}");
    assert_eq!(user["claims"]["plan"], "pro", "{user}");
    assert!(s.ok(&["users", "show", &id]).contains("editor"));
    s.cmd().args(["users", "set-claims", &id]).assert().code(1).stderr(contains("nothing to set"));

    let revoked = s.json(&["users", "revoke-sessions", &id]);
    assert!(revoked["sessions"].is_u64(), "{revoked}");

    let outbox = s.json(&["outbox"]);
    let messages = outbox["messages"].as_array().unwrap();
    assert!(messages.iter().any(|m| m["to"] == email), "{outbox}");
    assert!(s.ok(&["outbox"]).contains(email));

    let events = s.json(&["events", "log"]);
    let kinds: Vec<&str> =
        events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"user.created"), "{events}");
    assert!(s.ok(&["events", "log"]).contains("user.created"));

    assert!(s.ok(&["users", "delete", &id, "--yes"]).contains(&format!("Deleted user {id}")));
    s.cmd().args(["users", "show", &id]).assert().code(1).stderr(contains("HTTP 404"));
    assert_eq!(s.json(&["users", "list"])["users"], serde_json::json!([]));

    // Deleting a project asks for --yes, then takes its functions along.
    s.cmd().args(["projects", "delete", "acme"]).assert().code(1).stderr(contains("--yes"));
    assert!(s.ok(&["projects", "delete", "acme", "--yes"]).contains("Deleted project acme"));
    assert!(!s.ok(&["projects", "list"]).contains("acme"));
    s.cmd().args(["--project", "acme", "list"]).assert().code(1).stderr(contains("HTTP 404"));
    s.cmd()
        .args(["projects", "delete", "default", "--yes"])
        .assert()
        .code(1)
        .stderr(contains("default project"));
}

// ---------------------------------------------------------------------------------------------
// Event triggers: kill -9 while changes are made

/// The crash test of issue 9, through the same harness as the figures (`bench/triggers.py crash`):
/// the server is killed with SIGKILL at random instants while objects are uploaded, documents
/// written and queue messages published; after the last start every acknowledged change's event
/// must have been delivered (the harness exits 1 otherwise, or past its deadline).
#[test]
fn kill_9_while_changes_are_made_loses_no_event() {
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/triggers.py");
    let out = StdCommand::new("python3")
        .arg(&harness)
        .args(["crash", "--nimbus", NIMBUS, "--guest", test_programs_artifacts::EVENTS])
        .args(["--rounds", "4", "--deadline", "150"])
        .output()
        .expect("python3 runs the harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Every kind of change was acknowledged and delivered at least once in the run.
    for kind in ["upload", "document", "queue"] {
        let line =
            stdout.lines().find(|l| l.trim_start().starts_with(&format!("{kind}:"))).unwrap();
        let acked: u64 =
            line.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(acked > 0, "{stdout}");
        assert!(line.ends_with(", 0 acknowledged but not delivered"), "{stdout}");
    }
}

// ---------------------------------------------------------------------------------------------
// File storage: kill -9 during uploads

/// A server child that is killed when dropped, so that a failed assertion leaves no process.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `nimbus serve` on an existing data directory; returns the child and its URL's address.
fn serve_on(data: &Path, log: &Path) -> (Killed, String) {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = StdCommand::new(NIMBUS);
    scrub_env(&mut cmd);
    let mut child = cmd
        .args(["serve", "--no-profile", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("NIMBUS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("start nimbus serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("nimbus listening on ") {
                let _ = tx.send(url.trim().trim_start_matches("http://").to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("nimbus serve did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default())
    });
    (Killed(child), addr)
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`): status and body. The
/// body is written in `chunk`-byte pieces with `pause` between them, so that a kill can land in
/// the middle of an upload.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
    chunk: usize,
    pause: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let content_type =
        if body.starts_with(b"{") { "application/json" } else { "application/octet-stream" };
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    for piece in body.chunks(chunk.max(1)) {
        conn.write_all(piece)?;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    let mut out = Vec::new();
    conn.read_to_end(&mut out)?;
    let status = std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let start = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |i| i + 4);
    Ok((status, out[start..].to_vec()))
}

/// The bytes of object `key`: derived from the key, so any reader can check them.
fn object_bytes(key: &str) -> Vec<u8> {
    key.as_bytes().iter().copied().cycle().take(512 << 10).collect()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
        }
    }
    out
}

/// kill -9 while uploads stream in: after a restart no object is half visible, every object's
/// bytes are there and match its ETag, every acknowledged upload survived with an event, and the
/// crash's leftovers (temporary files, bytes never published) are swept.
#[test]
fn kill_9_during_uploads_leaves_a_consistent_store() {
    use md5::{Digest, Md5};
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let (mut child, addr) = serve_on(data.path(), &log);
    let token =
        std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let (status, body) =
        http(&addr, "POST", "/v1/buckets", &token, br#"{"name":"crash"}"#, 1 << 20, Duration::ZERO)
            .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));

    // Four writers upload until the server dies; each remembers what was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, token, stop) = (addr.clone(), token.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // Some keys are rewritten: replacing an object must be atomic too.
                    let key = format!("w{w}/obj-{}", n % 7);
                    let path = format!("/v1/projects/default/buckets/crash/objects/{key}");
                    match http(
                        &addr,
                        "PUT",
                        &path,
                        &token,
                        &object_bytes(&key),
                        32 << 10,
                        Duration::from_millis(1),
                    ) {
                        Ok((201, _)) => acked.push(key),
                        Ok((status, body)) => {
                            panic!("upload: {status} {}", String::from_utf8_lossy(&body))
                        }
                        Err(_) => break, // the server is gone
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let in_flight = files_under(&data.path().join("objects/tmp")).len();
    eprintln!("killed with {} uploads acknowledged and {in_flight} in flight", acked.len());
    assert!(acked.len() >= 4, "too few uploads completed before the kill: {}", acked.len());
    // Plant what a crash between storing and publishing leaves: bytes nobody references.
    let orphan = data.path().join("objects/data/zz/0000000000000000000000000000zzzz");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"never published").unwrap();

    let (child, addr) = serve_on(data.path(), &log);
    let (status, body) = http(
        &addr,
        "GET",
        "/v1/projects/default/buckets/crash/objects?limit=1000",
        &token,
        b"",
        1,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_slice(&body).unwrap();
    let objects = listed["objects"].as_array().unwrap().clone();
    let keys: Vec<String> =
        objects.iter().map(|o| o["key"].as_str().unwrap().to_string()).collect();
    for key in &acked {
        assert!(keys.contains(key), "acknowledged upload {key} is missing after the crash");
    }
    // Every listed object is complete: its bytes are all there and match its ETag.
    for o in &objects {
        let key = o["key"].as_str().unwrap();
        let (status, bytes) = http(
            &addr,
            "GET",
            &format!("/v1/projects/default/buckets/crash/objects/{key}"),
            &token,
            b"",
            1,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(status, 200, "{key}");
        assert_eq!(bytes, object_bytes(key), "{key} is not the complete upload");
        assert_eq!(o["etag"].as_str().unwrap(), hex::encode(Md5::digest(&bytes)));
    }
    // The sweep at start-up removed every leftover: one file per object, no temporaries.
    let root = data.path().join("objects");
    assert!(!orphan.exists(), "the orphan was not swept");
    assert_eq!(files_under(&root.join("tmp")), Vec::<std::path::PathBuf>::new());
    assert_eq!(files_under(&root.join("data")).len(), objects.len(), "unreferenced bytes remain");
    drop(child);

    // Every object that exists has its created event in the log, with its ETag.
    use nimbus_store::events::EventLog;
    let db = nimbus_store_local::SqliteStore::open(&data.path().join("nimbus.db")).unwrap();
    let events = db.read(0, Some("default"), 100_000).unwrap();
    for o in &objects {
        let key = o["key"].as_str().unwrap();
        let last = events
            .iter()
            .rfind(|e| e.kind == "dev.nimbus.storage.object.created" && e.data["key"] == key)
            .unwrap_or_else(|| panic!("no created event for {key}"));
        assert_eq!(last.data["etag"], o["etag"], "{key}: the newest event names another version");
    }
    // And no event names a version that was never published: each created event's ETag is
    // that of the key's bytes (all versions of a key have the same bytes here).
    for e in events.iter().filter(|e| e.kind == "dev.nimbus.storage.object.created") {
        let key = e.data["key"].as_str().unwrap();
        assert_eq!(e.data["etag"].as_str().unwrap(), hex::encode(Md5::digest(object_bytes(key))));
    }
}

// ---- Issue 12: the first hour and the rough edges ----

/// A `nimbus` command with the CLI config at `config` and nothing else: no --url, no token.
fn with_config(config: &Path) -> Command {
    let mut cmd = nimbus();
    cmd.env("NIMBUS_CONFIG", config);
    cmd
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn first_start_saves_a_profile_so_deploy_works_from_any_directory() {
    let s = TestServer::start();
    let config = s.log.path().join("config.toml");
    let text = std::fs::read_to_string(&config).expect("serve wrote the CLI config");
    assert!(text.contains("[profiles.local]") && text.contains(&s.url), "{text}");
    assert!(text.contains("default_profile = \"local\""), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the config holds tokens");
    }

    // A function folder elsewhere, deployed from inside it without any flag (the README's
    // `cd greeter && nimbus deploy`): no ./nimbus-data there.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("nimbus.toml"),
        format!("name = \"greeter\"\ncomponent = {:?}\nroutes = [\"/greeter\"]\n", hello_wasm()),
    )
    .unwrap();
    let out = stdout_of(with_config(&config).current_dir(work.path()).arg("deploy"));
    assert!(out.contains("Deployed greeter v1"), "{out}");
    assert!(out.contains(&format!("{}/greeter", s.url)), "{out}");
    assert_eq!(s.get("/greeter").0, 200);

    // The same deploy again is no new version (issue 12 §3).
    let out = stdout_of(with_config(&config).current_dir(work.path()).arg("deploy"));
    assert!(out.contains("Unchanged: greeter v1"), "{out}");
    let v = stdout_of(with_config(&config).args(["--json", "versions", "greeter"]));
    assert_eq!(serde_json::from_str::<Value>(&v).unwrap()["versions"].as_array().unwrap().len(), 1);

    // Profiles are listed with their token masked, never in full.
    let token = s.token();
    let out = stdout_of(with_config(&config).arg("profiles"));
    assert!(out.contains("local") && out.contains(&s.url), "{out}");
    assert!(!out.contains(&token), "token printed in full: {out}");
    let out = stdout_of(with_config(&config).args(["--json", "profiles"]));
    assert!(!out.contains(&token), "token printed in full: {out}");

    // Precedence: a flag beats the profile (a wrong token is refused)...
    with_config(&config)
        .args(["--token", "wrong", "list"])
        .assert()
        .code(1)
        .stderr(contains("HTTP 401"));
    // ...and so does its env variable.
    with_config(&config)
        .env("NIMBUS_TOKEN", "wrong")
        .arg("list")
        .assert()
        .code(1)
        .stderr(contains("HTTP 401"));
    // The profile's token is never sent to another server: with another URL, there is none.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let other = format!("http://127.0.0.1:{port}");
    with_config(&config)
        .current_dir(work.path())
        .args(["--url", &other, "list"])
        .assert()
        .code(1)
        .stderr(contains(format!("no credentials for {other}")).and(contains("nimbus login")));
}

#[test]
fn login_saves_a_profile_with_a_default_project_and_output_follows_the_project() {
    let s = TestServer::start();
    s.ok(&["projects", "create", "acme"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nimbus").join("config.toml");

    // A wrong token is refused before anything is saved.
    with_config(&config)
        .args(["--url", &s.url, "--token", "wrong", "login"])
        .assert()
        .code(1)
        .stderr(contains("cannot log in"));
    assert!(!config.exists());

    // The token from stdin, as a person pastes it.
    let token = s.token();
    let out = stdout_of(
        with_config(&config)
            .args(["--url", &s.url, "--profile", "acme", "--project", "acme", "login"])
            .write_stdin(format!("{token}\n")),
    );
    assert!(out.contains("Logged in to") && out.contains("profile acme"), "{out}");
    assert!(!out.contains(&token), "token printed in full: {out}");

    // The profile's project applies: the deploy lands in acme, and its URLs point at acme's routes.
    let out = stdout_of(with_config(&config).args([
        "deploy",
        hello_wasm(),
        "--name",
        "hi",
        "--route",
        "/hi",
    ]));
    assert!(out.contains(&format!("{}/@acme/hi", s.url)), "{out}");
    assert_eq!(s.get("/@acme/hi").0, 200);
    assert_eq!(s.get("/hi").0, 404);
    let show = stdout_of(with_config(&config).args(["show", "hi"]));
    assert!(show.contains(&format!("{}/@acme/hi", s.url)), "{show}");

    // A hint carries --project, and works when pasted (here: without the profile).
    let out = stdout_of(with_config(&config).args(["deploy", hello_wasm(), "--name", "bare"]));
    let hint = out.split('`').nth(1).unwrap_or_else(|| panic!("no hint in {out}")).to_string();
    assert_eq!(hint, "nimbus --project acme invoke bare", "{out}");
    let args: Vec<&str> = hint.split_whitespace().skip(1).collect();
    let pasted = s.ok(&args);
    assert_eq!(pasted, "Hello from Nimbus!\n");

    // `--project` overrides the profile's project.
    let list = stdout_of(with_config(&config).args(["--project", "default", "--json", "list"]));
    assert_eq!(serde_json::from_str::<Value>(&list).unwrap()["functions"], serde_json::json!([]));
    let key = stdout_of(with_config(&config).args(["keys", "create", "--scope", "service"]));
    assert!(key.contains("`nimbus --project acme keys revoke "), "{key}");
}

#[test]
fn rough_edges_of_the_cli() {
    let s = TestServer::start();
    s.ok(&["deploy", hello_wasm(), "--name", "hello", "--route", "/hello"]);
    s.ok(&["deploy", test_programs_artifacts::LOGS, "--name", "hello", "--route", "/hello"]);

    // `rollback NAME v1`, as listings print versions.
    assert!(s.ok(&["rollback", "hello", "v1"]).contains("hello is now at v1"));
    assert!(s.ok(&["rollback", "hello", "2"]).contains("hello is now at v2"));
    s.cmd().args(["rollback", "hello", "version2"]).assert().code(2).stderr(contains("like v2"));

    // `delete` asks; without a terminal and without --yes it refuses and deletes nothing.
    s.cmd().args(["delete", "hello"]).write_stdin("").assert().code(1).stderr(contains("--yes"));
    assert_eq!(s.get("/hello").0, 200);

    // `invoke --data` is the request body, as in curl.
    s.ok(&["deploy", test_programs_artifacts::ECHO, "--name", "echo"]);
    assert_eq!(s.ok(&["invoke", "echo", "--data", r#"{"a":1}"#]), r#"{"a":1}"#);

    // --json: errors in the API's shape, and output from every command.
    let out = s.cmd().args(["--json", "show", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    assert_eq!(err["error"]["status"], 404, "{err}");
    let out = s.cmd().args(["--json", "delete", "nope"]).write_stdin("").output().unwrap();
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "cli_error", "{err}");
    // A usage error too (exit code 2, as without --json).
    let out = s.cmd().args(["--json", "rollback", "hello", "version2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(err["error"]["code"], "usage", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("like v2"), "{err}");
    assert_eq!(s.json(&["secrets", "set", "echo", "K", "v"])["set"], "K");
    assert_eq!(s.json(&["secrets", "rm", "echo", "K"])["removed"], "K");
    assert_eq!(s.json(&["delete", "echo", "--yes"])["deleted"], "echo");

    // Limit errors in user units, naming the serve flag that raises the ceiling.
    let out = s
        .cmd()
        .args(["deploy", hello_wasm(), "--name", "slow", "--timeout", "2h"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("timeout 2h") && stderr.contains("nimbus serve --max-timeout"),
        "{stderr}"
    );
    assert!(!stderr.contains("7200000"), "{stderr}");
    let out = s
        .cmd()
        .args(["deploy", hello_wasm(), "--name", "big", "--memory", "1GiB"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memory 1GiB") && stderr.contains("--max-memory"), "{stderr}");

    // logs: -n 0 means none; filters by status and time.
    assert_eq!(s.get("/hello").0, 200);
    s.ok(&["deploy", test_programs_artifacts::TRAP, "--name", "trap", "--route", "/trap"]);
    assert_eq!(s.get("/trap").0, 500);
    assert_eq!(s.get("/trap").0, 500);
    s.logs_until(&["logs", "hello"], " ok 200 ");
    s.logs_until(&["logs", "trap", "-n", "5"], " trap ");
    assert_eq!(s.ok(&["logs", "hello", "-n", "0"]), "");
    assert_eq!(s.ok(&["invocations", "-n", "0"]), "");
    assert_eq!(s.json(&["invocations", "-n", "0"])["invocations"], serde_json::json!([]));
    assert_eq!(s.json(&["logs", "hello", "-n", "0"])["invocations"], serde_json::json!([]));
    let traps = s.json(&["logs", "trap", "--status", "trap"]);
    assert_eq!(traps["invocations"].as_array().unwrap().len(), 2, "{traps}");
    assert_eq!(s.json(&["logs", "trap", "--status", "ok"])["invocations"], serde_json::json!([]));
    assert_eq!(
        s.json(&["logs", "trap", "--status", "trap", "-n", "1"])["invocations"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.json(&["logs", "hello", "--since", "1h"])["invocations"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        s.json(&["logs", "hello", "--since", "2999-01-01T00:00:00Z"])["invocations"],
        serde_json::json!([])
    );
    s.cmd()
        .args(["logs", "hello", "--status", "fine"])
        .assert()
        .code(2)
        .stderr(contains("unknown status"));

    // No colour codes in a log file, nor in anything the CLI printed to a pipe.
    let log = s.log();
    assert!(log.contains("INFO") && !log.contains('\x1b'), "ANSI codes in the server log:\n{log}");
}

#[test]
fn serve_has_its_own_flags_and_takes_a_port_alone() {
    // `serve --help` lists serve's flags, not the client's.
    let help = stdout_of(nimbus().args(["serve", "--help"]));
    assert!(help.contains("--listen") && help.contains("--data <DIR>"), "{help}");
    for client_flag in ["--url", "--token", "--project", "--profile", "--data-dir", "--json"] {
        assert!(!help.contains(client_flag), "serve --help lists {client_flag}:\n{help}");
    }
    // A client flag given to serve is refused with what to use instead.
    nimbus().args(["serve", "--url", "http://x"]).assert().code(1).stderr(contains("--listen"));
    // ...while the client commands keep them.
    let help = stdout_of(nimbus().args(["list", "--help"]));
    assert!(help.contains("--url") && help.contains("--data-dir"), "{help}");

    // `--listen 8081`: a port alone means 127.0.0.1.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let log = tempfile::tempdir().unwrap();
    let config = log.path().join("config.toml");
    let s = TestServer::start_with(&["--listen", &port], &config, log);
    assert_eq!(s.url, format!("http://127.0.0.1:{port}"));
    assert_eq!(s.get("/healthz").0, 200);
}

#[test]
fn completions_for_each_shell() {
    for (shell, needle) in
        [("bash", "complete -F"), ("zsh", "#compdef nimbus"), ("fish", "complete -c nimbus")]
    {
        let out = stdout_of(nimbus().args(["completions", shell]));
        assert!(
            out.contains(needle) && out.contains("deploy") && out.contains("rollback"),
            "{shell}"
        );
    }
    nimbus().args(["completions", "cmd.exe"]).assert().code(2);
}

/// Every `sh` block of docs/guide (not marked `norun`), in reading order, run by bash against a
/// real server, as a reader would type it: `nimbus` on the PATH, the server found through the
/// `local` profile it saved, `./nimbus-data` its data directory, and `hello.wasm` at hand.
#[test]
fn guide_samples_run() {
    let log = tempfile::tempdir().unwrap();
    let config = log.path().join("config.toml");
    let s = TestServer::start_with(&["--listen", "127.0.0.1:0"], &config, log);
    let work = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(s.data.path(), work.path().join("nimbus-data")).unwrap();
    std::fs::copy(hello_wasm(), work.path().join("hello.wasm")).unwrap();
    let addr = s.url.strip_prefix("http://").unwrap().to_string();
    let bin_dir = Path::new(NIMBUS).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/guide");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut ran = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(info) = line.strip_prefix("```") else { continue };
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            if info != "sh" {
                continue; // `sh norun` blocks are only parsed (guide_commands_parse)
            }
            let script = body.join("\n").replace("127.0.0.1:8080", &addr);
            let mut cmd = StdCommand::new("bash");
            scrub_env(&mut cmd);
            // -e: a failing command fails the sample (a pipeline's status is its last command's,
            // so `nimbus ... | grep X` checks the output).
            let out = cmd
                .args(["-e", "-c", &script])
                .current_dir(work.path())
                .env("PATH", &path)
                .env("NIMBUS_CONFIG", &config)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: sample failed ({}):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 15, "only {ran} samples ran");
}

/// A manifest's `[[triggers]]` subscribe the function; `events publish` queues a message; a
/// failing subscriber's message lands in `events dead`, which `events replay` delivers again and
/// `events purge` removes.
#[test]
fn triggers_from_the_manifest_and_the_dead_letter_commands() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let wasm = test_programs_artifacts::get("events").unwrap();
    std::fs::write(
        dir.path().join("nimbus.toml"),
        format!(
            "name = \"flaky\"\ncomponent = {wasm:?}\n[env]\nFAIL_ATTEMPTS = \"1\"\n\
             [[triggers]]\nkind = \"queue\"\nqueue = \"jobs\"\nmax_attempts = 1\n"
        ),
    )
    .unwrap();
    s.ok(&["deploy", dir.path().to_str().unwrap()]);
    let subs = s.json(&["events"]);
    assert_eq!(subs["subscriptions"][0]["trigger"], "queue", "{subs}");
    assert!(s.ok(&["events"]).contains("flaky"));
    let published = s.json(&["events", "publish", "jobs", r#"{"n": 1}"#]);
    assert!(published["id"].is_string(), "{published}");
    let dead = s.json_until(&["events", "dead"], "deliveries", 1);
    let id = dead["deliveries"][0]["id"].to_string();
    assert_eq!(dead["deliveries"][0]["event"]["data"]["body"]["n"], 1);
    assert!(s.ok(&["events", "show", &id]).contains("the function answered HTTP 500"));
    // The second attempt succeeds (FAIL_ATTEMPTS=1).
    assert!(s.ok(&["events", "replay", &id]).contains("Replayed 1"));
    for _ in 0..100 {
        if s.json(&["events", "dead"])["deliveries"].as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.json(&["events", "dead"])["deliveries"], serde_json::json!([]));
    s.ok(&["events", "publish", "jobs", "again"]);
    s.json_until(&["events", "dead"], "deliveries", 1);
    s.cmd().args(["events", "purge", "--all"]).assert().failure().stderr(contains("--yes"));
    assert!(s.ok(&["events", "purge", "--all", "--yes"]).contains("Purged 1"));
}

#[test]
fn buckets_and_files() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    s.ok(&["buckets", "create", "media", "--access", "public-read", "--quota-bytes", "10000000"]);
    let listed = s.json(&["buckets", "ls"]);
    assert_eq!(listed["buckets"][0]["name"], "media");
    assert_eq!(listed["buckets"][0]["access"], "public-read");
    assert!(s.ok(&["buckets", "ls"]).contains("public-read"));

    // A 3 MiB file streams up and back down byte for byte.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let src = dir.path().join("big.bin");
    std::fs::write(&src, &data).unwrap();
    let stored = s.json(&[
        "files",
        "put",
        "media",
        "dir/big file.bin",
        src.to_str().unwrap(),
        "--content-type",
        "application/x-test",
    ]);
    assert_eq!(stored["size"], data.len());
    assert_eq!(stored["content_type"], "application/x-test");
    let out = dir.path().join("back.bin");
    s.ok(&["files", "get", "media", "dir/big file.bin", "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data, "the download differs");
    // To stdout, from stdin.
    let mut cmd = s.cmd();
    cmd.args(["files", "put", "media", "notes.txt", "-"])
        .write_stdin("from stdin")
        .assert()
        .success();
    s.cmd().args(["files", "get", "media", "notes.txt"]).assert().success().stdout("from stdin");

    let listed = s.json(&["files", "ls", "media"]);
    let keys: Vec<&str> =
        listed["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["dir/big file.bin", "notes.txt"]);
    let table = s.ok(&["files", "ls", "media", "--delimiter", "/"]);
    assert!(table.contains("dir/") && table.contains("notes.txt"), "{table}");
    assert!(!table.contains("big file"), "{table}");

    s.ok(&["files", "rm", "media", "notes.txt"]);
    s.cmd()
        .args(["files", "get", "media", "notes.txt"])
        .assert()
        .code(1)
        .stderr(contains("HTTP 404"));
    s.cmd()
        .args(["files", "put", "media", "x", "/nonexistent/file"])
        .assert()
        .code(1)
        .stderr(contains("cannot open"));
    // Not empty: refused unless forced.
    s.cmd().args(["buckets", "delete", "media"]).assert().code(1).stderr(contains("HTTP 409"));
    assert!(s.ok(&["buckets", "delete", "media", "--force"]).contains("1 objects"));
    assert_eq!(s.json(&["buckets", "ls"])["buckets"], serde_json::json!([]));
}

/// `logs` filters by method and path prefix (kept in each record), listing and following.
#[test]
fn logs_filter_by_method_and_path() {
    let s = TestServer::start();
    s.ok(&["deploy", hello_wasm(), "--name", "hi", "--route", "/hi/..."]);
    assert_eq!(http_get(&s.url, "/hi/a").0, 200);
    assert_eq!(http_get(&s.url, "/hi/b/c").0, 200);
    assert_eq!(http_post_json(&s.url, "/hi/b/d", &serde_json::json!({})).0, 200);
    s.json_until(&["logs", "hi"], "invocations", 3);
    let paths = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["logs", "hi"];
        all.extend_from_slice(args);
        s.json(&all)["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r["method"].as_str().unwrap(), r["path"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(paths(&["--path", "/hi/b"]), ["GET /hi/b/c", "POST /hi/b/d"]);
    assert_eq!(paths(&["--method", "post"]), ["POST /hi/b/d"]);
    assert_eq!(paths(&["--method", "GET", "--path", "/hi/a"]), ["GET /hi/a"]);
    assert!(s.ok(&["logs", "hi", "--path", "/hi/a"]).contains(" GET /hi/a\n"));
}

/// `NIMBUS_DATA` (the env variable of both `serve --data` and the client's `--data-dir`) must not
/// break `serve`: it once panicked on a type mismatch between the two flags.
#[test]
fn serve_starts_with_nimbus_data_in_the_environment() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = StdCommand::new(NIMBUS);
    scrub_env(&mut cmd);
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--no-profile"])
        .env("NIMBUS_DATA", data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data.path().join("admin-token").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("serve exited ({status}) with NIMBUS_DATA set:\n{err}");
        }
        assert!(Instant::now() < deadline, "serve did not create its data directory in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `push send` queues a message (the API's receipt), `push status` shows its counts, `push
/// replay` answers how many failed deliveries it queued again, and refuses what is not there.
#[test]
fn push_send_status_and_replay() {
    let s = TestServer::start();
    // No subscription yet: the message is queued for nobody (and would reach live users).
    let out = s.ok(&["push", "send", "--user", "u1", r#"{"title": "hi"}"#]);
    assert!(out.starts_with("Queued message ") && out.contains("for 0 subscription(s)"), "{out}");
    let sent = s.json(&["push", "send", "--topic", "news", "hello", "--ttl", "60"]);
    let id = sent["id"].as_str().unwrap().to_string();
    assert_eq!(sent["deliveries"], 0);
    let status = s.json(&["push", "status", &id]);
    assert_eq!(status["message"]["target"], "news");
    assert_eq!(status["message"]["target_kind"], "topic");
    assert_eq!(status["message"]["ttl"], 60);
    assert_eq!(status["deliveries"], serde_json::json!([]));
    assert!(s.ok(&["push", "status", &id]).contains("0 queued, 0 sent, 0 failed, 0 expired"));
    assert_eq!(s.json(&["push", "replay", &id]), serde_json::json!({"count": 0}));
    assert!(s.ok(&["push", "replay", &id]).contains("Queued 0 failed"));
    s.cmd()
        .args(["push", "replay", "no-such-message"])
        .assert()
        .failure()
        .stderr(contains("not found"));
    s.cmd()
        .args(["push", "replay", "--subscription", "no-such-subscription"])
        .assert()
        .failure()
        .stderr(contains("not found"));
    // One target, exactly.
    s.cmd().args(["push", "send", "hi"]).assert().failure();
    s.cmd().args(["push", "send", "--user", "a", "--topic", "b", "hi"]).assert().failure();
    s.cmd()
        .args(["push", "send", "--topic", "a b", "hi"])
        .assert()
        .failure()
        .stderr(contains("invalid topic"));
}
