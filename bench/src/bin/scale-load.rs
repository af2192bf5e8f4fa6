//! Load generator for the autoscaling benchmarks (bench/scale-to-zero.sh, bench/sleep-1000.sh,
//! bench/burst.sh): deploy many functions through the API, time first requests, fire N
//! concurrent requests, and a constant-rate (open-loop) burst against a quiet function's probe.
//! Written here rather than with wrk because wrk is closed-loop (a slow server lowers the
//! offered rate, hiding queueing) and wrk2 is not packaged; raw figures go to stdout.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    /// Base URL of the Nimbus server.
    #[arg(long)]
    url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deploy COUNT functions named f<i> with route /f<i>, all running WASM, through the API.
    DeployMany {
        #[arg(long)]
        token: String,
        #[arg(long)]
        wasm: std::path::PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Skip the first FROM functions (resume).
        #[arg(long, default_value_t = 0)]
        from: usize,
    },
    /// GET /f<i> once for each of SAMPLE functions spread over COUNT, one at a time; print
    /// each latency's percentiles (first requests to functions whose code is not resident).
    FirstRequests {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 200)]
        sample: usize,
    },
    /// N concurrent GETs of PATH; all must answer 200.
    Concurrent {
        #[arg(long)]
        path: String,
        #[arg(long)]
        n: usize,
    },
    /// QUIET_RATE req/s on QUIET for 3 phases of PHASE seconds (before, during, after); during
    /// the middle phase NOISY_RATE req/s on NOISY too. Prints the quiet function's latency per
    /// phase and the noisy function's status counts.
    Burst {
        #[arg(long)]
        quiet: String,
        #[arg(long)]
        noisy: String,
        #[arg(long, default_value_t = 50)]
        quiet_rate: u32,
        #[arg(long, default_value_t = 2000)]
        noisy_rate: u32,
        #[arg(long, default_value_t = 10)]
        phase: u64,
        /// Requests of the noisy function in flight at most; beyond it a tick is counted as
        /// skipped rather than queued in the generator.
        #[arg(long, default_value_t = 4000)]
        max_in_flight: usize,
    },
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(120))
        .build()?)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn summary(label: &str, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "{label}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let c = client()?;
    let base = args.url.trim_end_matches('/').to_string();
    match args.cmd {
        Cmd::DeployMany { token, wasm, count, concurrency, from } => {
            let wasm =
                std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let start = Instant::now();
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(from));
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (c, base, token, wasm, next) =
                    (c.clone(), base.clone(), token.clone(), wasm.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= count {
                            return Ok::<_, anyhow::Error>(());
                        }
                        let spec = serde_json::json!({"name": format!("f{i}"), "routes": [format!("/f{i}")]});
                        let form = reqwest::multipart::Form::new()
                            .part("spec", reqwest::multipart::Part::text(spec.to_string()))
                            .part(
                                "module",
                                reqwest::multipart::Part::bytes(wasm.clone())
                                    .mime_str("application/wasm")?,
                            );
                        let r = c
                            .post(format!("{base}/v1/functions"))
                            .bearer_auth(&token)
                            .multipart(form)
                            .send()
                            .await?;
                        if !r.status().is_success() {
                            bail!("deploy f{i}: {} {}", r.status(), r.text().await?);
                        }
                        if i % 1000 == 0 {
                            eprintln!("deployed f{i} at {:.1}s", start.elapsed().as_secs_f64());
                        }
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
            println!(
                "deployed {} functions in {:.1}s",
                count - from,
                start.elapsed().as_secs_f64()
            );
        }
        Cmd::FirstRequests { count, sample } => {
            let step = (count / sample.max(1)).max(1);
            let mut lat = Vec::new();
            for i in (0..count).step_by(step).take(sample) {
                let t = Instant::now();
                let r = c.get(format!("{base}/f{i}")).send().await?;
                let status = r.status();
                r.bytes().await?;
                let d = t.elapsed();
                if !status.is_success() {
                    bail!("/f{i}: {status}");
                }
                lat.push(d);
            }
            summary("first request to a non-resident function", lat);
        }
        Cmd::Concurrent { path, n } => {
            let start = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (c, url) = (c.clone(), format!("{base}{path}"));
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let r = c.get(url).send().await?;
                        let status = r.status().as_u16();
                        r.bytes().await?;
                        Ok::<_, anyhow::Error>((status, t.elapsed()))
                    })
                })
                .collect();
            let (mut ok, mut other, mut lat) = (0, std::collections::BTreeMap::new(), Vec::new());
            for t in tasks {
                match t.await? {
                    Ok((200, d)) => {
                        ok += 1;
                        lat.push(d);
                    }
                    Ok((s, _)) => *other.entry(s.to_string()).or_insert(0) += 1,
                    Err(e) => *other.entry(format!("error: {e}")).or_insert(0) += 1,
                }
            }
            println!(
                "{n} concurrent: {ok} ok, others {other:?}, wall {:.2}s",
                start.elapsed().as_secs_f64()
            );
            summary("latency of the ok ones", lat);
            if ok != n {
                bail!("{} of {n} did not answer 200", n - ok);
            }
        }
        Cmd::Burst { quiet, noisy, quiet_rate, noisy_rate, phase, max_in_flight } => {
            let phase = Duration::from_secs(phase);
            let start = Instant::now();
            let quiet_task = {
                let (c, url) = (c.clone(), format!("{base}{quiet}"));
                tokio::spawn(open_loop(c, url, quiet_rate, phase * 3, usize::MAX))
            };
            tokio::time::sleep(phase).await;
            let noisy_task = {
                let (c, url) = (c.clone(), format!("{base}{noisy}"));
                tokio::spawn(open_loop(c, url, noisy_rate, phase, max_in_flight))
            };
            let noisy = noisy_task.await?;
            let quiet = quiet_task.await?;
            let mut phases: [Vec<Duration>; 3] = Default::default();
            let mut quiet_failed = 0;
            for s in &quiet.samples {
                let i = ((s.sent - start).as_secs_f64() / phase.as_secs_f64()) as usize;
                match s.status {
                    Some(200) => phases[i.min(2)].push(s.latency),
                    _ => quiet_failed += 1,
                }
            }
            for (name, lat) in ["before", "during", "after"].iter().zip(phases) {
                summary(&format!("quiet {quiet_rate} req/s, {name} the burst"), lat);
            }
            println!("quiet failures (non-200 or errors): {quiet_failed}");
            let mut statuses = std::collections::BTreeMap::new();
            for s in &noisy.samples {
                *statuses.entry(s.status.map_or("error".into(), |c| c.to_string())).or_insert(0) +=
                    1;
            }
            println!(
                "noisy {noisy_rate} req/s for {}s: sent {}, skipped (generator at {max_in_flight} in flight) {}, statuses {statuses:?}",
                phase.as_secs(),
                noisy.samples.len(),
                noisy.skipped
            );
            let ok: Vec<_> =
                noisy.samples.iter().filter(|s| s.status == Some(200)).map(|s| s.latency).collect();
            summary("noisy ok latency", ok);
        }
    }
    Ok(())
}

struct Sample {
    sent: Instant,
    latency: Duration,
    status: Option<u16>,
}

struct OpenLoop {
    samples: Vec<Sample>,
    skipped: u64,
}

/// Send `rate` requests per second for `duration` whatever the answers' speed (each request its
/// own task), so queueing in the server shows as latency.
async fn open_loop(
    c: reqwest::Client,
    url: String,
    rate: u32,
    duration: Duration,
    max_in_flight: usize,
) -> OpenLoop {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    let mut skipped = 0;
    while Instant::now() < end {
        tick.tick().await;
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= max_in_flight {
            skipped += 1;
            continue;
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (c, url, in_flight) = (c.clone(), url.clone(), in_flight.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = match c.get(url).send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    r.bytes().await.ok().map(|_| s)
                }
                Err(_) => None,
            };
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            Sample { sent, latency: sent.elapsed(), status }
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    OpenLoop { samples, skipped }
}
