//! `nimbus usage` against a real server, and usage across a real kill -9 of `nimbus serve`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TestServer, hello_wasm, nimbus, serve_on};

/// GET `path` without credentials over a fresh connection; the status, or None if the server
/// went away before answering.
fn get(addr: &str, path: &str) -> Option<u16> {
    let mut conn = TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(conn, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out).ok()?;
    // Complete only if the whole body arrived (hello answers 19 bytes).
    let text = String::from_utf8_lossy(&out);
    if !text.ends_with("Hello from Nimbus!\n") {
        return None;
    }
    text.get(9..12)?.parse().ok()
}

fn api(addr: &str, token: &str, path: &str) -> Value {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}\n{body}");
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        super::dechunk(body)
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).unwrap()
}

/// Every record of `function` (paged by position).
fn records(addr: &str, token: &str, function: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = api(
            addr,
            token,
            &format!("/v1/invocations?function={function}&order=asc&limit=1000&after={after}"),
        );
        let list = page["invocations"].as_array().unwrap().clone();
        if list.is_empty() {
            return all;
        }
        after = list.last().unwrap()["seq"].as_u64().unwrap();
        all.extend(list);
    }
}

/// kill -9 while requests stream in. After a restart, usage equals the committed records
/// exactly (nothing counted twice, nothing counted that was not recorded); it is at most what
/// the clients sent, and it covers every request that completed before the window in which a
/// kill can lose records (the recorder's 50 ms linger plus one batch write, measured below; the
/// test allows 1 s for a loaded machine).
#[test]
fn usage_reconciles_with_the_records_across_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let (mut child, addr) = serve_on(data.path(), &log);
    let token =
        std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let out = nimbus()
        .args(["--url", &format!("http://{addr}"), "--data-dir"])
        .arg(data.path())
        .args(["deploy", hello_wasm(), "--name", "hello", "--route", "/hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, sent) = (addr.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                // Completion times (ms since start) of the requests answered 200.
                let mut done = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match get(&addr, "/hello") {
                        Some(200) => done.push(start.elapsed().as_millis() as u64),
                        Some(other) => panic!("hello answered {other}"),
                        None => break, // the server is gone
                    }
                }
                done
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2000));
    let killed_at = start.elapsed().as_millis() as u64;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let done: Vec<u64> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let sent = sent.load(Ordering::Relaxed);

    let (child, addr) = serve_on(data.path(), &log);
    let records = records(&addr, &token, "hello");
    let report = api(&addr, &token, &format!("/v1/usage?project=default&from={}", since()));
    drop(child);
    let line = &report["lines"][0];
    let billed = line["requests"].as_u64().unwrap();
    // Exactly the committed records.
    assert_eq!(billed, records.len() as u64, "{report}");
    let exec_ms: u64 = records
        .iter()
        .map(|r| {
            (r["duration_us"].as_u64().unwrap() - r["queue_us"].as_u64().unwrap()).div_ceil(1000)
        })
        .sum();
    assert_eq!(line["exec_ms"].as_u64().unwrap(), exec_ms);
    assert_eq!(
        line["fuel"].as_u64().unwrap(),
        records.iter().map(|r| r["fuel"].as_u64().unwrap()).sum::<u64>()
    );
    assert_eq!(
        line["mb_ms"].as_u64().unwrap(),
        records.iter().map(|r| r["memory_limit_mb"].as_u64().unwrap()).sum::<u64>() / billed
            * exec_ms,
        "one memory limit for every record"
    );
    // Never more than was sent; never less than what completed before the loss window.
    assert!(billed <= sent, "billed {billed} of {sent} sent");
    let settled = done.iter().filter(|&&t| t + 1000 <= killed_at).count() as u64;
    assert!(
        settled <= billed,
        "{settled} requests completed >= 1 s before the kill, {billed} billed"
    );
    let completed = done.len() as u64;
    eprintln!(
        "kill -9 after {killed_at} ms: sent {sent}, completed {completed}, billed {billed}; \
         completed but not billed: {}",
        completed.saturating_sub(billed)
    );
    assert!(completed > 100, "too few requests completed before the kill: {completed}");
}

/// A `from` (unix ms) within the 400 days a report may cover, before anything these tests do.
fn since() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (now.as_millis() - 30 * 86_400_000).to_string()
}

#[test]
fn usage_as_a_table_json_and_csv() {
    let s = TestServer::start();
    s.ok(&["deploy", hello_wasm(), "--name", "hello", "--route", "/hello"]);
    for _ in 0..3 {
        assert_eq!(s.get("/hello").0, 200);
    }
    s.json_until(&["invocations"], "invocations", 3);
    // Usage is written with the records: the same batch.
    let report = s.json(&["usage", "--project", "default", "--from", &since()]);
    assert_eq!(report["lines"][0]["function"], "hello");
    assert_eq!(report["lines"][0]["requests"], 3);
    let table = s.ok(&["usage", "--from", &since()]);
    assert!(table.contains("PROJECT") && table.contains("FUNCTION"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("default") && l.contains("hello")), "{table}");
    assert!(
        table.contains("Requests per day: ") || table.contains("Requests per hour: "),
        "{table}"
    );
    let csv = s.ok(&["usage", "--by", "day", "--csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "day,project,requests,exec_ms,gb_s,fuel,outbound,file_egress,events,push,stored_gb_months"
        )
    );
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!((row[1], row[2]), ("default", "3"), "{csv}");
    assert_eq!(lines.next(), None);
    // A bad range is the server's 400, explained.
    let out = s.cmd().args(["usage", "--from", "yesterday"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from is unix ms"), "{out:?}");

    // A deleted project's history stays readable under its retired name.
    s.ok(&["projects", "create", "acme"]);
    s.ok(&["--project", "acme", "deploy", hello_wasm(), "--name", "hi", "--route", "/hi"]);
    assert_eq!(s.get("/@acme/hi").0, 200);
    s.json_until(&["--project", "acme", "invocations"], "invocations", 1);
    s.ok(&["projects", "delete", "acme", "--yes"]);
    let all = s.json(&["usage", "--from", &since()]);
    let name = all["projects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["project"].as_str())
        .find(|p| p.starts_with("acme~deleted-"))
        .unwrap_or_else(|| panic!("{all}"))
        .to_string();
    let old = s.json(&["usage", "--project", &name, "--from", &since()]);
    assert_eq!(old["projects"][0]["requests"], 1, "{old}");
}
