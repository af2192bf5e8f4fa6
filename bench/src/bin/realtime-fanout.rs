//! Realtime fan-out for bench/realtime-fanout.sh: opens N Server-Sent-Events subscribers to one
//! collection (Nimbus `/v1/projects/{p}/realtime/sse?collection=c`, or PocketBase `/api/realtime`
//! plus its subscription POST), then creates documents one at a time at a fixed pace. Each document
//! carries the time its create request was sent (`sent_us`, microseconds since this process
//! started, one monotonic clock for sender and receivers); each subscriber records
//! `arrival - sent_us` for every event. Prints p50/p99/max over all subscribers x commits, how many
//! events arrived out of how many expected, and the server's RSS before and after the subscribers
//! connected (from /proc/PID/status), divided by N.
//!
//! SSE is parsed by hand (split on the blank line, look for `"sent_us":` / `"clientId":`): the
//! only fields needed are two numbers and an id, and a full SSE + JSON parse per event per
//! subscriber would add client CPU on the same 2 cores as the server under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Kind {
    Nimbus,
    Pocketbase,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    kind: Kind,
    /// Base URL of the server, e.g. http://127.0.0.1:8080
    #[arg(long)]
    base: String,
    /// Collection to subscribe to and write into (public list/create rules)
    #[arg(long, default_value = "rt")]
    collection: String,
    /// Nimbus project
    #[arg(long, default_value = "default")]
    project: String,
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    #[arg(long, default_value_t = 200)]
    commits: u64,
    /// Pause between two commits
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Server process whose RSS to read
    #[arg(long)]
    pid: Option<u32>,
    /// Subscribers connecting at once
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// How long to wait for the last events after the last commit
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
}

/// CPU time (user + system) of a process in seconds, from /proc/PID/stat (clock ticks, 100/s).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The unsigned integer after `key` in `text` (`"sent_us":123` -> 123).
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = text[at..].iter().copied().take_while(|b| b.is_ascii_digit()).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn string_after(text: &[u8], key: &[u8]) -> Option<String> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &text[at..];
    let start = rest.iter().position(|&b| b == b'"')? + 1;
    let len = rest[start..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&rest[start..start + len]).into_owned())
}

/// Index just past the first blank line (end of one SSE event), for LF or CRLF streams.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Shared {
    start: Instant,
    delivered: AtomicU64,
    errors: AtomicU64,
}

/// One subscriber: connect, subscribe, then record latencies until `commits` events arrived or
/// `stop` fires. Sends `()` on `ready` once subscribed.
async fn subscriber(
    args: Arc<Args>,
    client: reqwest::Client,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: tokio::sync::mpsc::UnboundedSender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
) -> Vec<u32> {
    let url = match args.kind {
        Kind::Nimbus => format!(
            "{}/v1/projects/{}/realtime/sse?collection={}",
            args.base, args.project, args.collection
        ),
        Kind::Pocketbase => format!("{}/api/realtime", args.base),
    };
    let response = match client.get(&url).header("Accept", "text/event-stream").send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let _ = ready.send(Err(anyhow::anyhow!("subscribe: status {}", r.status())));
            return Vec::new();
        }
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("subscribe: {e}")));
            return Vec::new();
        }
    };
    let mut body = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    if args.kind == Kind::Pocketbase {
        // The first event is PB_CONNECT with the client id to subscribe with.
        let client_id = loop {
            if let Some(end) = event_end(&buf) {
                let id = string_after(&buf[..end], b"\"clientId\":");
                buf.drain(..end);
                if let Some(id) = id {
                    break id;
                }
                continue;
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                _ => {
                    let _ = ready.send(Err(anyhow::anyhow!("no PB_CONNECT event")));
                    return Vec::new();
                }
            }
        };
        let sub = client
            .post(format!("{}/api/realtime", args.base))
            .json(&serde_json::json!({"clientId": client_id, "subscriptions": [args.collection]}))
            .send()
            .await;
        match sub {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let _ = ready.send(Err(anyhow::anyhow!("subscription: status {}", r.status())));
                return Vec::new();
            }
            Err(e) => {
                let _ = ready.send(Err(anyhow::anyhow!("subscription: {e}")));
                return Vec::new();
            }
        }
    }
    drop(permit);
    let _ = ready.send(Ok(()));
    let mut latencies = Vec::with_capacity(args.commits as usize);
    while (latencies.len() as u64) < args.commits {
        while let Some(end) = event_end(&buf) {
            let event = &buf[..end];
            if let Some(sent) = number_after(event, b"\"sent_us\":") {
                let now = shared.start.elapsed().as_micros() as u64;
                latencies.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                shared.delivered.fetch_add(1, Ordering::Relaxed);
            } else if event.windows(12).any(|w| w == b"event: error" || w == b"event:error\n") {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            buf.drain(..end);
        }
        tokio::select! {
            chunk = body.next() => match chunk {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                _ => { shared.errors.fetch_add(1, Ordering::Relaxed); break; }
            },
            _ = stop.changed() => break,
        }
    }
    latencies
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let shared = Arc::new(Shared {
        start: Instant::now(),
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).tcp_nodelay(true).build()?;
    let rss_before = rss_kib(args.pid);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let opening = Instant::now();
    let mut tasks = Vec::with_capacity(args.subscribers);
    for _ in 0..args.subscribers {
        let permit = gate.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(subscriber(
            args.clone(),
            client.clone(),
            shared.clone(),
            permit,
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None);
    while ok + failed < args.subscribers {
        match ready_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    let open_secs = opening.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(args.pid);
    eprintln!("opened {ok} subscribers in {open_secs:.1} s, {failed} failed");
    if let Some(e) = &first_error {
        eprintln!("first failure: {e:#}");
    }
    if ok == 0 {
        bail!("no subscriber connected");
    }

    // Commits, one at a time at a fixed pace (not back to back: the latency of a commit is
    // measured, not the throughput of the fan-out).
    let writer = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let url = match args.kind {
        Kind::Nimbus => format!(
            "{}/v1/projects/{}/collections/{}/documents",
            args.base, args.project, args.collection
        ),
        Kind::Pocketbase => format!("{}/api/collections/{}/records", args.base, args.collection),
    };
    let server_cpu_before = args.pid.and_then(|p| cpu_seconds(&p.to_string()));
    let client_cpu_before = cpu_seconds("self");
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commit_ms = Vec::new();
    for n in 0..args.commits {
        tick.tick().await;
        let sent = shared.start.elapsed().as_micros() as u64;
        let r = writer
            .post(&url)
            .json(&serde_json::json!({"n": n, "sent_us": sent}))
            .send()
            .await
            .context("committing")?;
        if !r.status().is_success() {
            bail!("commit {n}: status {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        commit_ms.push((shared.start.elapsed().as_micros() as u64 - sent) as u32);
    }
    let expected = ok as u64 * args.commits;
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server_cpu = args
        .pid
        .and_then(|p| cpu_seconds(&p.to_string()))
        .zip(server_cpu_before)
        .map(|(a, b)| a - b);
    let client_cpu = cpu_seconds("self").zip(client_cpu_before).map(|(a, b)| a - b);
    let _ = stop_tx.send(true);
    let mut all = Vec::with_capacity(expected as usize);
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    commit_ms.sort_unstable();
    let kib = |v: Option<u64>| v.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
    let per_sub = match (rss_before, rss_after) {
        (Some(b), Some(a)) => format!("{:.1}", (a as f64 - b as f64) / ok as f64),
        _ => "-".to_owned(),
    };
    let delivered = shared.delivered.load(Ordering::Relaxed).max(1) as f64;
    let cpu = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.2}"));
    let per_event =
        |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{:.1}", c * 1e6 / delivered));
    println!(
        "result kind={:?} subscribers={ok} failed={failed} commits={} interval_ms={} \
         delivered={}/{expected} errors={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} \
         commit_p50_ms={:.2} rss_before_mib={} rss_after_mib={} kib_per_subscriber={per_sub} \
         open_seconds={open_secs:.1} server_cpu_s={} client_cpu_s={} server_us_per_event={} \
         client_us_per_event={}",
        args.kind,
        args.commits,
        args.interval_ms,
        all.len(),
        shared.errors.load(Ordering::Relaxed),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        percentile(&commit_ms, 0.50),
        kib(rss_before),
        kib(rss_after),
        cpu(server_cpu),
        cpu(client_cpu),
        per_event(server_cpu),
        per_event(client_cpu),
    );
    Ok(())
}
