//! `nimbus dev` on the Rust template, end to end: it starts a local server (none answers at its
//! --url), builds and deploys, streams the function's logs, redeploys an edit, keeps the last
//! good version serving when the source breaks (printing the compiler's error), and stops the
//! server it started on Ctrl-C (SIGINT).
//!
//! SLOW: the first build compiles the template's dependencies for wasm32-wasip2.

use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{NIMBUS, http_get, nimbus, scrub_env};

/// Everything a child printed (stdout and stderr), line by line, as it comes.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    fn collect(&self, pipe: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Wait (bounded) until the output has a line containing `needle`.
    fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.0.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "`nimbus dev` never printed {needle:?} within {timeout:?}; output:\n{}",
            self.text()
        );
    }
}

/// The function's JSON answer at `url` + `path`, if it answers 200.
fn answer(url: &str, path: &str) -> Option<Value> {
    let addr = url.strip_prefix("http://").unwrap();
    TcpStream::connect(addr).ok()?;
    let (status, body) = http_get(url, path);
    (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// A new Rust function `name` in `work`, and `nimbus dev` started in its folder against a free
/// loopback port where no server answers (so it must start one there, with its data in
/// `data`): the child, its output as it comes, the server's URL and the function's folder.
fn start_dev(
    work: &std::path::Path,
    data: &std::path::Path,
    name: &str,
    adjust: impl FnOnce(&mut StdCommand),
) -> (std::process::Child, Output, String, std::path::PathBuf) {
    let dir = work.join(name);
    let out = nimbus().args(["new", name, "--lang", "rust", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = StdCommand::new(NIMBUS);
    scrub_env(&mut cmd);
    cmd.arg("--url")
        .arg(&url)
        .arg("--data-dir")
        .arg(data)
        .args(["dev", "--debounce", "200ms"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    adjust(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let output = Output::default();
    output.collect(child.stdout.take().unwrap());
    output.collect(child.stderr.take().unwrap());
    (child, output, url, dir)
}

#[test]
fn slow_dev_builds_deploys_redeploys_on_edit_and_keeps_the_last_good_version() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (child, output, url, dir) = start_dev(work.path(), data.path(), "hot", |_| {});
    // Whatever happens, do not leave `nimbus dev` (and its server) running: SIGINT first, so
    // that it stops the server it started (a SIGKILL would leave that server behind).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let pid = self.0.id().to_string();
            let _ = StdCommand::new("kill").args(["-INT", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let mut child = Kill(child);

    output.wait_for("Local server started at", Duration::from_secs(120));
    output.wait_for("[nimbus dev] deployed hot v1", Duration::from_secs(1200));
    let first = answer(&url, "/hot").expect("v1 answers");
    assert_eq!(first["message"], "Hello from hot!", "{first}");
    // The function's own output reaches the terminal through the log stream.
    output.wait_for("stdout| handling /hot", Duration::from_secs(60));

    // An edit is rebuilt and redeployed; wait (bounded) for the new answer.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let edited = source.replace("from hot!", "from hot, edited!");
    assert_ne!(edited, source);
    std::fs::write(&lib, &edited).unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = answer(&url, "/hot");
        if now.as_ref().is_some_and(|v| v["message"] == "Hello from hot, edited!") {
            break;
        }
        assert!(Instant::now() < deadline, "the edit never went live; output:\n{}", output.text());
        std::thread::sleep(Duration::from_millis(500));
    }
    output.wait_for("[nimbus dev] deployed hot v2", Duration::from_secs(10));

    // A broken source: the compiler's error is shown and v2 keeps serving.
    std::fs::write(&lib, format!("{edited}\nfn broken( {{\n")).unwrap();
    output.wait_for("[nimbus dev] still serving v2", Duration::from_secs(600));
    let text = output.text();
    assert!(text.contains("error: ") && text.contains("src/lib.rs"), "{text}");
    let after = answer(&url, "/hot").expect("v2 still answers");
    assert_eq!(after["message"], "Hello from hot, edited!", "{after}");
    assert!(!text.contains("deployed hot v3"), "{text}");

    // Ctrl-C: `nimbus dev` stops, and so does the server it started.
    let status = StdCommand::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "nimbus dev did not stop; output:\n{}", output.text());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit}; output:\n{}", output.text());
    assert!(output.text().contains("Stopping the local server"), "{}", output.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(url.strip_prefix("http://").unwrap()).is_ok() {
        assert!(Instant::now() < deadline, "the server nimbus dev started still answers");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `nimbus dev` killed without a chance to stop its server (SIGKILL) still takes the server
/// down: Linux sends the server SIGTERM when its parent dies. Before, the server kept running
/// (and holding its port) after its `nimbus dev` was gone.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_dev_takes_its_server_down() {
    use std::os::unix::process::CommandExt;
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // Its own group, so that the kill below also stops the build it starts (but not the
    // server, which `nimbus dev` puts in a group of its own).
    let (mut child, output, url, _) = start_dev(work.path(), data.path(), "orphan", |cmd| {
        cmd.process_group(0);
    });
    output.wait_for("Local server started at", Duration::from_secs(120));
    assert!(answer(&url, "/healthz").is_some(), "the server answers");
    let group = format!("-{}", child.id());
    let _ = StdCommand::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(url.strip_prefix("http://").unwrap()).is_ok() {
        assert!(Instant::now() < deadline, "the server outlived its killed `nimbus dev`");
        std::thread::sleep(Duration::from_millis(100));
    }
}
