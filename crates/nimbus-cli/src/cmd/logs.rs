//! `logs` (one function's invocations with their output, optionally followed live) and
//! `invocations` (a table across functions).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures::StreamExt as _;
use nimbus_model::{InvocationRecord, InvocationStatus, UnixMillis};

use crate::GlobalArgs;
use crate::client::{ApiError, Client, InvocationFilter, invocations_of, root_cause};
use crate::output::{Table, format_duration_us, format_time, print_json};
use crate::sse::SseParser;

#[derive(Args)]
pub struct LogsArgs {
    /// Function name
    pub name: String,

    /// Keep printing new invocations as they happen
    #[arg(short = 'f', long, env = "NIMBUS_LOGS_FOLLOW", value_parser = clap::builder::BoolishValueParser::new())]
    pub follow: bool,

    /// How many recent invocations to show (0: none; with -f, only new ones). At most 1000
    #[arg(short = 'n', long, env = "NIMBUS_LOGS_LIMIT", default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub limit: u32,

    /// Only invocations that ended so: ok, trap, timeout, memory_limit, rejected, error
    #[arg(long, env = "NIMBUS_LOGS_STATUS", value_parser = parse_status)]
    pub status: Option<InvocationStatus>,

    /// Only invocations started since then: a duration back from now (10m, 2h, 1d) or an RFC
    /// 3339 time (2025-01-31T12:00:00Z). Looks at the newest 1000 invocations
    #[arg(long, value_name = "WHEN", env = "NIMBUS_LOGS_SINCE", value_parser = parse_since)]
    pub since: Option<UnixMillis>,

    /// Only requests with this method (GET, POST...)
    #[arg(long, env = "NIMBUS_LOGS_METHOD", value_parser = |s: &str| Ok::<_, String>(s.to_ascii_uppercase()))]
    pub method: Option<String>,

    /// Only requests whose path starts with this (/api/ ...)
    #[arg(long, value_name = "PREFIX", env = "NIMBUS_LOGS_PATH")]
    pub path: Option<String>,
}

/// What `logs -f` keeps of the live stream (the server filters the listing).
#[derive(Default)]
pub(crate) struct LiveFilter {
    pub status: Option<InvocationStatus>,
    pub method: Option<String>,
    pub path: Option<String>,
}

impl LiveFilter {
    fn keeps(&self, r: &InvocationRecord) -> bool {
        self.status.is_none_or(|s| s == r.status)
            && self.method.as_ref().is_none_or(|m| *m == r.method)
            && self.path.as_ref().is_none_or(|p| r.path.starts_with(p.as_str()))
    }
}

fn parse_status(s: &str) -> Result<InvocationStatus, String> {
    InvocationStatus::parse(s).ok_or_else(|| {
        format!("unknown status {s:?}: use ok, trap, timeout, memory_limit, rejected or error")
    })
}

/// `--since`: `10m` (ago) or an RFC 3339 time, as milliseconds since the epoch.
fn parse_since(s: &str) -> Result<UnixMillis, String> {
    let at = match humantime::parse_duration(s) {
        Ok(d) => std::time::SystemTime::now().checked_sub(d).ok_or("too far back")?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("{s:?} is neither a duration (10m, 2h) nor a time (2025-01-31T12:00:00Z)")
        })?,
    };
    let ms = at.duration_since(std::time::UNIX_EPOCH).map_err(|_| "before 1970")?.as_millis();
    UnixMillis::try_from(ms).map_err(|_| "too far ahead".to_string())
}

#[derive(Args)]
pub struct InvocationsArgs {
    /// Only this function's invocations
    #[arg(long, env = "NIMBUS_INVOCATIONS_FUNCTION")]
    pub function: Option<String>,

    /// Only invocations that ended so: ok, trap, timeout, memory_limit, rejected, error
    #[arg(long, env = "NIMBUS_INVOCATIONS_STATUS")]
    pub status: Option<String>,

    /// Only invocations stored after this position (the SEQ of the last one seen)
    #[arg(long, value_name = "SEQ", env = "NIMBUS_INVOCATIONS_AFTER")]
    pub after: Option<u64>,

    /// How many to show (at most 1000)
    #[arg(short = 'n', long, env = "NIMBUS_INVOCATIONS_LIMIT", default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub limit: u32,

    /// Order, by position (the order in which invocations were stored)
    #[arg(long, env = "NIMBUS_INVOCATIONS_ORDER", value_parser = ["asc", "desc"], default_value = "desc")]
    pub order: String,
}

/// ` GET /path`, and the trigger when it is not an HTTP request (` [queue:jobs]`).
fn request_of(r: &InvocationRecord) -> String {
    let mut s = String::new();
    if !r.method.is_empty() {
        s = format!(" {} {}", r.method, r.path);
    }
    if !matches!(r.trigger.as_str(), "http" | "invoke" | "") {
        s.push_str(&format!(" [{}]", r.trigger));
    }
    s
}

/// One invocation as a block: a header line, then its output lines, indented.
pub fn format_record(r: &InvocationRecord) -> String {
    let http = r.http_status.map_or_else(|| "-".to_string(), |s| s.to_string());
    let mut out = format!(
        "{} {} v{} {} {} {} {} fuel{}\n",
        format_time(r.started_at),
        r.id,
        r.version,
        r.status.as_str(),
        http,
        format_duration_us(r.duration_us),
        r.fuel,
        request_of(r),
    );
    if let Some(err) = &r.error {
        for line in err.lines() {
            out.push_str(&format!("  error| {line}\n"));
        }
    }
    for (label, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        for line in text.lines() {
            out.push_str(&format!("  {label}| {line}\n"));
        }
    }
    if r.logs_truncated {
        out.push_str("  (output truncated at the server's per-invocation log limit)\n");
    }
    out
}

fn print_record(r: &InvocationRecord, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, r)?;
        writeln!(out)?;
    } else {
        out.write_all(format_record(r).as_bytes())?;
    }
    out.flush()
}

pub async fn logs(g: &GlobalArgs, args: LogsArgs) -> Result<ExitCode> {
    let client = g.client()?;
    let filtered = args.status.is_some()
        || args.since.is_some()
        || args.method.is_some()
        || args.path.is_some();
    // Filters go through the invocations listing (status on the server, the time here), which
    // holds the same records; the newest 1000 are looked at when a time is given.
    let value = if filtered {
        let filter = InvocationFilter {
            function: Some(args.name.clone()),
            status: args.status.map(|s| s.as_str().to_string()),
            method: args.method.clone(),
            path: args.path.clone(),
            limit: Some(if args.since.is_some() { 1000 } else { args.limit.max(1) }),
            ..Default::default()
        };
        client.invocations(&filter).await?
    } else {
        // The server wants a limit of at least 1; `-n 0` still learns the newest position, so
        // that `-n 0 -f` starts after it.
        client.logs(&args.name, None, Some(args.limit.max(1))).await?
    };
    let mut all = invocations_of(&value)?;
    all.sort_by_key(|r| r.seq); // oldest first, like a log
    let head = all.last().map_or(0, |r| r.seq);
    let mut records: Vec<InvocationRecord> =
        all.into_iter().filter(|r| args.since.is_none_or(|since| r.started_at >= since)).collect();
    let keep = (args.limit as usize).min(records.len());
    records.drain(..records.len() - keep);
    if g.json && !args.follow {
        print_json(&serde_json::json!({ "invocations": records }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() && !args.follow && !g.json && args.limit > 0 {
        eprintln!("No invocations of {} yet.", args.name);
    }
    for r in &records {
        print_record(r, g.json)?;
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // From the newest position listed (0 if none: every record stored since the listing), so
    // that nothing stored in between is missed.
    let last = records.last().map_or(head, |r| r.seq).max(head);
    let live = LiveFilter { status: args.status, method: args.method, path: args.path };
    follow(&client, &args.name, last, g.json, &live).await
}

/// Follow the SSE stream from after position `last_seq`, reconnecting after the last position
/// seen if the connection drops. Positions are given when records are stored, so a slow
/// invocation that ends after faster ones is still seen (ids, made at the start, would skip it).
pub(crate) async fn follow(
    client: &Client,
    name: &str,
    mut last_seq: u64,
    json: bool,
    filter: &LiveFilter,
) -> Result<ExitCode> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let resp = match client.logs_follow(name, Some(last_seq)).await {
            Ok(r) => r,
            // The API said no (function deleted, token revoked): nothing to retry.
            Err(e) if e.chain().any(|c| c.is::<ApiError>()) => return Err(e),
            Err(e) => {
                eprintln!("nimbus: {e:#}; retrying in {}", humantime::format_duration(backoff));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut parser = SseParser::new();
        let mut stream = resp.bytes_stream();
        let mut dropped = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    dropped = Some(root_cause(&e));
                    break;
                }
            };
            backoff = Duration::from_millis(250);
            for event in parser.push(&chunk) {
                let record: InvocationRecord = match serde_json::from_str(&event.data) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!(
                            "nimbus: skipping an unexpected {} event ({e}): {}",
                            event.event, event.data
                        );
                        continue;
                    }
                };
                // After a reconnect, skip anything already printed.
                if record.seq <= last_seq {
                    continue;
                }
                last_seq = record.seq;
                if !filter.keeps(&record) {
                    continue;
                }
                print_record(&record, json)?;
            }
        }
        match dropped {
            Some(e) => eprintln!("nimbus: log stream interrupted ({e}); reconnecting"),
            None => eprintln!("nimbus: log stream closed by the server; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

pub async fn invocations(g: &GlobalArgs, args: InvocationsArgs) -> Result<ExitCode> {
    if let Some(s) = &args.status
        && InvocationStatus::parse(s).is_none()
    {
        bail!("unknown status {s:?}: use ok, trap, timeout, memory_limit, rejected or error");
    }
    // `-n 0` asks for none: the server's smallest page is one.
    if args.limit == 0 {
        if g.json {
            print_json(&serde_json::json!({ "invocations": [] }))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let filter = InvocationFilter {
        function: args.function,
        status: args.status,
        after: args.after,
        limit: Some(args.limit),
        order: Some(args.order),
        ..Default::default()
    };
    let value = g.client()?.invocations(&filter).await?;
    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let records = invocations_of(&value)?;
    if records.is_empty() {
        eprintln!("No invocations match.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "SEQ", "TIME", "ID", "FUNCTION", "VERSION", "STATUS", "HTTP", "DURATION", "FUEL",
    ]);
    for r in &records {
        table.row(vec![
            r.seq.to_string(),
            format_time(r.started_at),
            r.id.clone(),
            r.function.clone(),
            format!("v{}", r.version),
            r.status.as_str().to_string(),
            r.http_status.map_or_else(|| "-".to_string(), |s| s.to_string()),
            format_duration_us(r.duration_us),
            r.fuel.to_string(),
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InvocationRecord {
        InvocationRecord {
            seq: 42,
            id: "0190a000-0000-7000-8000-000000000001".into(),
            project: "default".into(),
            function: "hello".into(),
            version: 3,
            trigger: "http".into(),
            method: "GET".into(),
            path: "/".into(),
            started_at: 1_700_000_000_123,
            duration_us: 1_500,
            queue_us: 0,
            fuel: 12_345,
            peak_memory_bytes: 1 << 16,
            memory_limit_mb: 128,
            outbound_bytes: 0,
            status: InvocationStatus::Ok,
            http_status: Some(200),
            error: None,
            stdout: "line one\nline two\n".into(),
            stderr: "warn\n".into(),
            logs_truncated: false,
        }
    }

    #[test]
    fn record_block() {
        assert_eq!(
            format_record(&record()),
            "2023-11-14T22:13:20.123Z 0190a000-0000-7000-8000-000000000001 v3 ok 200 1.5 ms 12345 fuel GET /\n\
             \x20 stdout| line one\n\
             \x20 stdout| line two\n\
             \x20 stderr| warn\n"
        );
    }

    #[test]
    fn record_block_with_error() {
        let mut r = record();
        r.status = InvocationStatus::Timeout;
        r.http_status = None;
        r.error = Some("deadline exceeded".into());
        r.stdout.clear();
        r.stderr.clear();
        r.logs_truncated = true;
        let text = format_record(&r);
        assert!(text.contains(" v3 timeout - 1.5 ms "), "{text}");
        assert!(text.contains("  error| deadline exceeded\n"), "{text}");
        assert!(text.contains("truncated"), "{text}");
    }

    #[test]
    fn records_from_sse_events() {
        let json = serde_json::to_string(&record()).unwrap();
        let mut p = SseParser::new();
        let stream = format!(": hello\n\ndata: {json}\n\n: heartbeat\n\n");
        let events = p.push(stream.as_bytes());
        assert_eq!(events.len(), 1);
        let r: InvocationRecord = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(r, record());
    }
}
