//! `nimbus usage`: metered usage and cost (GET /v1/usage) as a table with a trend line, JSON or
//! CSV.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use reqwest::Method;
use serde_json::Value;

use crate::GlobalArgs;
use crate::output::{Table, format_bytes, format_time, print_json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    Function,
    Day,
    Hour,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            By::Function => "function",
            By::Day => "day",
            By::Hour => "hour",
        }
    }
}

#[derive(Args)]
pub struct UsageArgs {
    /// Start: a UTC date (2026-12-01), RFC 3339, or unix ms (default: start of this month)
    #[arg(long)]
    pub from: Option<String>,
    /// End, exclusive, same forms (default: now)
    #[arg(long)]
    pub to: Option<String>,
    /// Group by function, day or hour
    #[arg(long, value_enum, default_value_t = By::Function)]
    pub by: By,
    /// Print CSV (one line per row of the table) instead of a table
    #[arg(long)]
    pub csv: bool,
}

pub async fn usage(g: &GlobalArgs, args: UsageArgs) -> Result<ExitCode> {
    // The project goes in the query, not the project header: the header must name a live
    // project, and usage is also read for deleted ones (their history is kept under
    // `<slug>~deleted-<ms>`).
    let client = g.client()?.with_project(None);
    let query = |by: By| {
        let mut q: Vec<(&str, String)> = vec![("by", by.as_str().to_string())];
        // Only an explicit --project narrows the report: without one, the admin token sees
        // every project and a project key its own.
        if let Some(p) = &g.project {
            q.push(("project", p.clone()));
        }
        if let Some(f) = &args.from {
            q.push(("from", f.clone()));
        }
        if let Some(t) = &args.to {
            q.push(("to", t.clone()));
        }
        q
    };
    let report =
        client.json(client.request(Method::GET, "/v1/usage").query(&query(args.by))).await?;
    if g.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines = report["lines"].as_array().cloned().unwrap_or_default();
    let priced = report.get("currency").is_some_and(|c| !c.is_null());
    if args.csv {
        print!("{}", csv(&lines, args.by, priced));
        return Ok(ExitCode::SUCCESS);
    }
    let (from, to) = (report["from"].as_i64().unwrap_or(0), report["to"].as_i64().unwrap_or(0));
    println!("Usage from {} to {}", format_time(from), format_time(to));
    if lines.is_empty() {
        println!("No usage in this range.");
    } else {
        table(&lines, args.by, priced).print()?;
    }
    // The trend: requests per day (per hour for ranges of two days or less).
    let step = if to - from <= 2 * 86_400_000 { By::Hour } else { By::Day };
    let trend = if step == args.by {
        report.clone()
    } else {
        client.json(client.request(Method::GET, "/v1/usage").query(&query(step))).await?
    };
    let series =
        per_period(&trend, from, to, if step == By::Hour { 3_600_000 } else { 86_400_000 });
    if series.iter().any(|&n| n > 0) {
        let unit = if step == By::Hour { "hour" } else { "day" };
        println!(
            "\nRequests per {unit}: {} (max {})",
            sparkline(&series),
            series.iter().max().unwrap_or(&0)
        );
    }
    let currency = report["currency"].as_str().unwrap_or("");
    for p in report["projects"].as_array().into_iter().flatten() {
        let d = &p["data"];
        let mut line = format!(
            "\n{}: {} requests, {:.3} GB-s, {} outbound + {} file egress, {} push sent, \
             {:.6} GB-months stored; now: {} documents ({}), KV {}, files {}",
            p["project"].as_str().unwrap_or("?"),
            p["requests"].as_u64().unwrap_or(0),
            p["gb_seconds"].as_f64().unwrap_or(0.0),
            format_bytes(p["outbound_bytes"].as_u64().unwrap_or(0)),
            format_bytes(p["file_egress_bytes"].as_u64().unwrap_or(0)),
            p["push_sent"].as_u64().unwrap_or(0),
            p["stored_gb_months"].as_f64().unwrap_or(0.0),
            d["documents"].as_u64().unwrap_or(0),
            format_bytes(d["document_bytes"].as_u64().unwrap_or(0)),
            format_bytes(d["kv_bytes"].as_u64().unwrap_or(0)),
            format_bytes(d["file_bytes"].as_u64().unwrap_or(0)),
        );
        if priced {
            line.push_str(&format!(
                "\n  cost: {} {currency} (after the free tier; storage held {}); storage {} \
                 {currency}/month at today's size",
                money(p["cost"]["total"].as_f64().unwrap_or(0.0)),
                money(p["cost"]["storage"].as_f64().unwrap_or(0.0)),
                money(p["storage_cost_per_month"].as_f64().unwrap_or(0.0)),
            ));
        }
        print!("{line}");
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

/// `OUTBOUND` is functions' outbound HTTP, `FILE EGRESS` object downloads (both priced as
/// egress), `PUSH` push messages delivered, `STORED GB-MONTHS` storage held over the period
/// (GiB x 730 hours).
const COLUMNS: [&str; 10] = [
    "REQUESTS",
    "EXEC MS",
    "GB-S",
    "FUEL",
    "OUTBOUND",
    "FILE EGRESS",
    "EVENTS",
    "PUSH",
    "STORED GB-MONTHS",
    "COST",
];

fn key_cells(l: &Value, by: By) -> Vec<String> {
    let project = l["project"].as_str().unwrap_or("").to_string();
    match by {
        // The data services (file egress, push) are metered under the empty function name.
        By::Function => match l["function"].as_str().unwrap_or("") {
            "" => vec![project, "(data services)".into()],
            f => vec![project, f.to_string()],
        },
        By::Day => vec![format_time(l["period"].as_i64().unwrap_or(0))[..10].to_string(), project],
        By::Hour => vec![format_time(l["period"].as_i64().unwrap_or(0))[..16].to_string(), project],
    }
}

fn cells(l: &Value, by: By, priced: bool, human: bool) -> Vec<String> {
    let mut c = key_cells(l, by);
    let n = |k: &str| l[k].as_u64().unwrap_or(0);
    c.push(n("requests").to_string());
    c.push(n("exec_ms").to_string());
    c.push(format!("{:.3}", l["gb_seconds"].as_f64().unwrap_or(0.0)));
    c.push(n("fuel").to_string());
    let bytes = |k: &str| if human { format_bytes(n(k)) } else { n(k).to_string() };
    c.push(bytes("outbound_bytes"));
    c.push(bytes("file_egress_bytes"));
    c.push(n("events").to_string());
    c.push(n("push_sent").to_string());
    c.push(format!("{:.6}", l["stored_gb_months"].as_f64().unwrap_or(0.0)));
    if priced {
        c.push(money(l["cost"]["total"].as_f64().unwrap_or(0.0)));
    }
    c
}

fn headers(by: By, priced: bool) -> Vec<&'static str> {
    let mut h = match by {
        By::Function => vec!["PROJECT", "FUNCTION"],
        By::Day => vec!["DAY", "PROJECT"],
        By::Hour => vec!["HOUR", "PROJECT"],
    };
    h.extend_from_slice(&COLUMNS[..if priced { COLUMNS.len() } else { COLUMNS.len() - 1 }]);
    h
}

fn table(lines: &[Value], by: By, priced: bool) -> Table {
    let mut t = Table::new(&headers(by, priced));
    for l in lines {
        t.row(cells(l, by, priced, true));
    }
    t
}

fn csv(lines: &[Value], by: By, priced: bool) -> String {
    // Hand-written: every cell is a slug, a number or a time, so quoting is only a safeguard.
    fn cell(s: &str) -> String {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.into()
        }
    }
    let mut out = headers(by, priced)
        .iter()
        .map(|h| h.to_ascii_lowercase().replace([' ', '-'], "_"))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for l in lines {
        out.push_str(
            &cells(l, by, priced, false).iter().map(|c| cell(c)).collect::<Vec<_>>().join(","),
        );
        out.push('\n');
    }
    out
}

fn money(x: f64) -> String {
    format!("{x:.4}")
}

/// Requests per period over `[from, to)`, every period present (zero when idle).
fn per_period(report: &Value, from: i64, to: i64, step: i64) -> Vec<u64> {
    let start = from - from.rem_euclid(step);
    let n = ((to - start + step - 1) / step).clamp(0, 2000) as usize;
    let mut out = vec![0u64; n];
    for l in report["lines"].as_array().into_iter().flatten() {
        let Some(t) = l["period"].as_i64() else { continue };
        let i = ((t - start) / step) as usize;
        if let Some(slot) = out.get_mut(i) {
            *slot += l["requests"].as_u64().unwrap_or(0);
        }
    }
    out
}

/// One line of block characters scaled to the largest value. Hand-written: eight glyphs and a
/// division do not need a plotting crate.
pub fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| if max == 0 { BARS[0] } else { BARS[((v * 7).div_ceil(max)) as usize] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sparkline_scales_to_the_largest() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8]), "▁▂▃▅█");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
    }

    #[test]
    fn csv_has_a_header_and_raw_numbers() {
        let lines = vec![
            json!({
                "project": "default", "function": "hello", "requests": 3, "exec_ms": 7,
                "mb_ms": 448, "gb_seconds": 0.0004375, "fuel": 99, "outbound_bytes": 1500,
                "events": 1, "cost": {"total": 0.5}
            }),
            json!({
                "project": "default", "function": "", "file_egress_bytes": 4096, "push_sent": 2,
                "stored_byte_seconds": 2_821_793_513_472_000_u64, "stored_gb_months": 1.0,
                "cost": {"total": 0.25}
            }),
        ];
        assert_eq!(
            csv(&lines, By::Function, true),
            "project,function,requests,exec_ms,gb_s,fuel,outbound,file_egress,events,push,\
             stored_gb_months,cost\n\
             default,hello,3,7,0.000,99,1500,0,1,0,0.000000,0.5000\n\
             default,(data services),0,0,0.000,0,0,4096,0,2,1.000000,0.2500\n"
        );
    }

    #[test]
    fn periods_fill_idle_days_with_zero() {
        let day = 86_400_000;
        let report = json!({"lines": [
            {"period": 2 * day, "requests": 5}, {"period": 2 * day, "requests": 1},
            {"period": 4 * day, "requests": 2}
        ]});
        assert_eq!(per_period(&report, day, 5 * day, day), [0, 6, 0, 2]);
    }
}
