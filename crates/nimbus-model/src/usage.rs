//! Usage metering and prices: what a project used, per function and hour, and what it costs.
//!
//! Usage is counted from invocation records, in the store transaction that writes them (so it is
//! exact and survives pruning). These are the rules every backend applies, so they live here.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{InvocationRecord, InvocationStatus, UnixMillis};

const HOUR_MS: i64 = 3_600_000;

/// Counters of one (project, function, hour). All integers, so sums are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageCounters {
    /// Invocations that ran (refused ones are not billed).
    pub requests: u64,
    /// Execution time: each invocation's wall time from admission to the end of its response,
    /// without its queue wait, rounded up to the millisecond.
    pub exec_ms: u64,
    /// Configured memory (MiB) x execution ms, summed: GB-seconds x 1,024,000.
    pub mb_ms: u64,
    /// CPU, in fuel units (about one per wasm instruction).
    pub fuel: u64,
    /// Bytes written to the network by outbound HTTP requests.
    pub outbound_bytes: u64,
    /// Invocations caused by an event (a trigger `kind:name`).
    pub events: u64,
    /// Object body bytes sent to clients (REST GET, signed URLs, S3 GetObject), as streamed: a
    /// download the client broke off counts what went out. Stored under the empty function
    /// name (data services are not functions).
    #[serde(default)]
    pub file_egress_bytes: u64,
    /// Push messages delivered (one per subscription a push service accepted), under the empty
    /// function name.
    #[serde(default)]
    pub push_sent: u64,
    /// Bytes stored (documents + KV + files) x seconds held, accrued once a minute under the
    /// empty function name: what `per_gb_month_stored` prices (see [`GB_MONTH_SECONDS`]).
    #[serde(default)]
    pub stored_byte_seconds: u64,
}

/// The month of a GB-month: 730 hours (365 x 24 / 12), as cloud storage is billed, so a GiB
/// held for any whole month costs about the same.
pub const GB_MONTH_SECONDS: u64 = 730 * 3600;

/// What an invocation is billed on: the fields of its record that [`UsageCounters::of`] reads.
pub struct Execution {
    pub status: InvocationStatus,
    pub duration_us: u64,
    pub queue_us: u64,
    pub memory_limit_mb: u64,
    pub fuel: u64,
    pub outbound_bytes: u64,
    /// Caused by an event trigger (`kind:name`).
    pub event: bool,
}

impl UsageCounters {
    /// What one record adds; `None` for a refused invocation (it never ran).
    pub fn of(r: &InvocationRecord) -> Option<UsageCounters> {
        UsageCounters::of_execution(&Execution {
            status: r.status,
            duration_us: r.duration_us,
            queue_us: r.queue_us,
            memory_limit_mb: r.memory_limit_mb,
            fuel: r.fuel,
            outbound_bytes: r.outbound_bytes,
            event: r.trigger.contains(':'),
        })
    }

    /// [`UsageCounters::of`] from the billed parts of a record, before it is one.
    pub fn of_execution(e: &Execution) -> Option<UsageCounters> {
        if e.status == InvocationStatus::Rejected {
            return None;
        }
        let exec_ms = e.duration_us.saturating_sub(e.queue_us).div_ceil(1000);
        Some(UsageCounters {
            requests: 1,
            exec_ms,
            mb_ms: exec_ms.saturating_mul(e.memory_limit_mb),
            fuel: e.fuel,
            outbound_bytes: e.outbound_bytes,
            events: u64::from(e.event),
            file_egress_bytes: 0,
            push_sent: 0,
            stored_byte_seconds: 0,
        })
    }

    pub fn add(&mut self, o: &UsageCounters) {
        self.requests += o.requests;
        self.exec_ms += o.exec_ms;
        self.mb_ms += o.mb_ms;
        self.fuel = self.fuel.saturating_add(o.fuel);
        self.outbound_bytes += o.outbound_bytes;
        self.events += o.events;
        self.file_egress_bytes += o.file_egress_bytes;
        self.push_sent += o.push_sent;
        self.stored_byte_seconds = self.stored_byte_seconds.saturating_add(o.stored_byte_seconds);
    }

    /// GiB-months stored (GiB x [`GB_MONTH_SECONDS`]).
    pub fn gb_months_stored(&self) -> f64 {
        self.stored_byte_seconds as f64 / (1u64 << 30) as f64 / GB_MONTH_SECONDS as f64
    }

    /// Bytes that left the node: function outbound HTTP plus file downloads (what
    /// `per_gb_egress` prices).
    pub fn egress_bytes(&self) -> u64 {
        self.outbound_bytes.saturating_add(self.file_egress_bytes)
    }

    /// GB-seconds (1 GB = 1024 MiB, as Lambda bills).
    pub fn gb_seconds(&self) -> f64 {
        self.mb_ms as f64 / 1024.0 / 1000.0
    }
}

/// One stored row: a function's usage in one UTC hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub project: String,
    pub function: String,
    /// Start of the hour (unix ms, UTC).
    pub hour: UnixMillis,
    #[serde(flatten)]
    pub counters: UsageCounters,
}

/// The name a deleted project's usage history is kept under: `{slug}~deleted-{ms}`, `ms` being
/// when its deletion began. Billing history outlives the project (the operator bills for what it
/// used), but under a name no live project can have (slugs are `a-z0-9-`), so a project created
/// later with the same slug neither inherits it (quotas count the month from zero) nor shows it.
pub fn retired_project(slug: &str, deleted_at: UnixMillis) -> String {
    format!("{slug}{RETIRED}{deleted_at}")
}

const RETIRED: &str = "~deleted-";

/// The slug and deletion time of a [`retired_project`] name; `None` for a live project's slug.
pub fn parse_retired(project: &str) -> Option<(&str, UnixMillis)> {
    let (slug, at) = project.split_once(RETIRED)?;
    Some((slug, at.parse().ok()?))
}

/// The project an exported usage event's id is derived from. A retired project's hours before
/// the hour its deletion began were complete, so possibly exported, under its slug: they keep
/// the slug's ids, so a re-export is deduplicated rather than billed twice. From the deletion's
/// hour on they use the retired name, which a project re-created under the slug (whose usage
/// starts after the deletion, possibly in the same hour) never has. (Not covered: a deletion
/// that finishes after its hour has ended, with an export in between, sends that hour twice.)
pub fn export_id_project(project: &str, hour: UnixMillis) -> &str {
    match parse_retired(project) {
        Some((slug, deleted_at)) if hour < hour_of(deleted_at) => slug,
        _ => project,
    }
}

/// Data held by a project's services now (gauges, read at query time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DataGauges {
    pub documents: u64,
    /// Stored document bytes (JSONB size).
    pub document_bytes: u64,
    pub kv_bytes: u64,
    pub file_bytes: u64,
}

impl DataGauges {
    pub fn stored_bytes(&self) -> u64 {
        self.document_bytes + self.kv_bytes + self.file_bytes
    }
}

/// A project's quotas (the operator sets them; `None` is unlimited). Monthly quotas reset at the
/// start of each UTC month.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default)]
    pub invocations_per_month: Option<u64>,
    #[serde(default)]
    pub gb_seconds_per_month: Option<f64>,
    /// Invocations of the project's functions running at once.
    #[serde(default)]
    pub concurrent_executions: Option<u32>,
    /// Documents + KV + file bytes. Not monthly: a project at or over it cannot add data until
    /// it deletes some (see docs/usage.md).
    #[serde(default)]
    pub stored_bytes: Option<u64>,
    /// Percent of a quota at which one `dev.nimbus.quota.threshold_crossed` event is written:
    /// once per quota and month for the monthly ones, once per crossing for `stored_bytes`.
    /// Default 80.
    #[serde(default = "default_soft")]
    pub soft_threshold_percent: u8,
}

fn default_soft() -> u8 {
    80
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            invocations_per_month: None,
            gb_seconds_per_month: None,
            concurrent_executions: None,
            stored_bytes: None,
            soft_threshold_percent: default_soft(),
        }
    }
}

impl Quotas {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.soft_threshold_percent) {
            return Err("soft_threshold_percent is 1 to 100".into());
        }
        if self.gb_seconds_per_month.is_some_and(|g| !g.is_finite() || g < 0.0) {
            return Err("gb_seconds_per_month must be finite and >= 0".into());
        }
        Ok(())
    }

    /// The monthly GB-second quota in the counters' unit (MiB-ms).
    pub fn mb_ms_per_month(&self) -> Option<u64> {
        self.gb_seconds_per_month.map(|g| (g * 1024.0 * 1000.0) as u64)
    }
}

/// Names of the quotas, as error codes and events carry them.
pub const QUOTA_INVOCATIONS: &str = "invocations_per_month";
pub const QUOTA_GB_SECONDS: &str = "gb_seconds_per_month";
pub const QUOTA_CONCURRENCY: &str = "concurrent_executions";
pub const QUOTA_STORED_BYTES: &str = "stored_bytes";

/// A write that would add data to a project whose stored bytes are at or over its
/// `stored_bytes` quota. Unlike the monthly quotas it does not reset with time: it frees when
/// the project deletes data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "project {project}'s quota stored_bytes is used up ({stored} of {limit} bytes stored): \
     it frees when data is deleted, not at the start of a month"
)]
pub struct StorageFull {
    pub project: String,
    pub stored: u64,
    pub limit: u64,
}

/// The type of the event written when a monthly quota crosses its soft threshold.
pub const THRESHOLD_EVENT: &str = "dev.nimbus.quota.threshold_crossed";

/// The start of the UTC hour holding `t`.
pub fn hour_of(t: UnixMillis) -> UnixMillis {
    t.div_euclid(HOUR_MS) * HOUR_MS
}

/// The start of the UTC day holding `t`.
pub fn day_of(t: UnixMillis) -> UnixMillis {
    t.div_euclid(24 * HOUR_MS) * 24 * HOUR_MS
}

fn utc(t: UnixMillis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t).single().unwrap_or_default()
}

/// The start of the UTC month holding `t`.
pub fn month_of(t: UnixMillis) -> UnixMillis {
    let d = utc(t);
    Utc.with_ymd_and_hms(d.year(), d.month(), 1, 0, 0, 0)
        .single()
        .map_or(0, |m| m.timestamp_millis())
}

/// The start of the UTC month after the one holding `t`: when monthly quotas and free tiers
/// start again.
pub fn next_month(t: UnixMillis) -> UnixMillis {
    let d = utc(t);
    let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().map_or(0, |m| m.timestamp_millis())
}

/// `t` as RFC 3339 in UTC, to the second: `2026-12-01T00:00:00Z`.
pub fn rfc3339(t: UnixMillis) -> String {
    utc(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A time as the usage API and CLI take it: unix milliseconds, a UTC date (`2026-12-01`, its
/// midnight), or RFC 3339 (`2026-12-01T10:00:00Z`).
pub fn parse_time(s: &str) -> Option<UnixMillis> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return (ms >= 0).then_some(ms);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// The operator's price sheet (`serve --pricing FILE`, TOML). Prices in one currency; every
/// field defaults to 0, so a sheet names only what it charges for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PriceSheet {
    /// A label only, e.g. `USD`.
    pub currency: String,
    pub per_million_requests: f64,
    pub per_gb_second: f64,
    /// Per GiB stored for a month (documents, KV and files).
    pub per_gb_month_stored: f64,
    /// Per GiB that leaves the node: functions' outbound HTTP and file downloads alike (one
    /// price for data out, as clouds charge it).
    pub per_gb_egress: f64,
    /// Free each month, per project, before anything is charged.
    pub free_tier: FreeTier,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FreeTier {
    pub requests: u64,
    pub gb_seconds: f64,
    pub egress_gb: f64,
    pub stored_gb: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("price sheet: {0}")]
pub struct PriceSheetError(String);

impl PriceSheet {
    pub fn from_toml(text: &str) -> Result<PriceSheet, PriceSheetError> {
        let sheet: PriceSheet = toml::from_str(text).map_err(|e| PriceSheetError(e.to_string()))?;
        let prices = [
            sheet.per_million_requests,
            sheet.per_gb_second,
            sheet.per_gb_month_stored,
            sheet.per_gb_egress,
            sheet.free_tier.gb_seconds,
            sheet.free_tier.egress_gb,
            sheet.free_tier.stored_gb,
        ];
        if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(PriceSheetError("prices and free amounts must be finite and >= 0".into()));
        }
        Ok(sheet)
    }
}

/// Cost of some usage, after the free tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cost {
    pub requests: f64,
    pub compute: f64,
    pub egress: f64,
    /// Storage held over the period (GiB-months accrued, after the free tier).
    #[serde(default)]
    pub storage: f64,
    pub total: f64,
}

impl Cost {
    pub fn add(&mut self, o: &Cost) {
        self.requests += o.requests;
        self.compute += o.compute;
        self.egress += o.egress;
        self.storage += o.storage;
        self.total += o.total;
    }
}

/// What is left of a project's free tier in one month, consumed in time order.
#[derive(Debug, Clone)]
pub struct FreeLeft {
    requests: u64,
    /// In MiB-ms, like the counters, so that consumption is exact.
    mb_ms: u64,
    /// Egress bytes (outbound HTTP + file downloads).
    egress_bytes: u64,
    /// Stored byte-seconds (the free GiB held for a month).
    stored_byte_seconds: u64,
}

impl FreeLeft {
    pub fn new(tier: &FreeTier) -> FreeLeft {
        FreeLeft {
            requests: tier.requests,
            mb_ms: (tier.gb_seconds * 1024.0 * 1000.0) as u64,
            egress_bytes: (tier.egress_gb * (1u64 << 30) as f64) as u64,
            stored_byte_seconds: (tier.stored_gb * (1u64 << 30) as f64 * GB_MONTH_SECONDS as f64)
                as u64,
        }
    }

    /// The cost of `c` at `sheet`'s prices, after taking what is left of the free tier.
    pub fn charge(&mut self, sheet: &PriceSheet, c: &UsageCounters) -> Cost {
        fn take(left: &mut u64, used: u64) -> u64 {
            let free = (*left).min(used);
            *left -= free;
            used - free
        }
        let requests = take(&mut self.requests, c.requests);
        let mb_ms = take(&mut self.mb_ms, c.mb_ms);
        let bytes = take(&mut self.egress_bytes, c.egress_bytes());
        let stored = take(&mut self.stored_byte_seconds, c.stored_byte_seconds);
        let requests = requests as f64 / 1e6 * sheet.per_million_requests;
        let compute = mb_ms as f64 / 1024.0 / 1000.0 * sheet.per_gb_second;
        let egress = bytes as f64 / (1u64 << 30) as f64 * sheet.per_gb_egress;
        let storage = UsageCounters { stored_byte_seconds: stored, ..Default::default() }
            .gb_months_stored()
            * sheet.per_gb_month_stored;
        Cost { requests, compute, egress, storage, total: requests + compute + egress + storage }
    }
}

/// What a month of storing `bytes` costs after the free tier.
pub fn storage_cost_per_month(sheet: &PriceSheet, bytes: u64) -> f64 {
    let gb = bytes as f64 / (1u64 << 30) as f64;
    (gb - sheet.free_tier.stored_gb).max(0.0) * sheet.per_gb_month_stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_project_keeps_its_slug_for_ids_of_hours_before_its_deletion() {
        let at = 1_706_745_600_000 + 30 * 60_000; // 2024-02-01T00:30Z
        let name = retired_project("acme", at);
        assert_eq!(name, "acme~deleted-1706747400000");
        assert_eq!(parse_retired(&name), Some(("acme", at)));
        assert_eq!(parse_retired("acme"), None);
        assert_eq!(parse_retired("acme~deleted-x"), None);
        assert_eq!(export_id_project(&name, hour_of(at) - HOUR_MS), "acme");
        assert_eq!(export_id_project(&name, hour_of(at)), name);
        assert_eq!(export_id_project("acme", 0), "acme");
    }

    #[test]
    fn times_parse_as_ms_dates_or_rfc3339() {
        assert_eq!(parse_time("1709214300000"), Some(1_709_214_300_000));
        assert_eq!(parse_time("2024-02-01"), Some(1_706_745_600_000));
        assert_eq!(parse_time("2024-02-01T01:00:00+01:00"), Some(1_706_745_600_000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("-5"), None);
    }

    #[test]
    fn months_and_hours_in_utc() {
        // 2024-02-29T13:45:00Z
        let t = 1_709_214_300_000;
        assert_eq!(hour_of(t), 1_709_211_600_000);
        assert_eq!(month_of(t), 1_706_745_600_000); // 2024-02-01
        assert_eq!(next_month(t), 1_709_251_200_000); // 2024-03-01
        assert_eq!(next_month(1_733_011_200_000 + 5), 1_735_689_600_000); // Dec 2024 -> 2025-01-01
    }

    #[test]
    fn the_free_tier_is_used_up_in_order_and_then_charged() {
        let sheet = PriceSheet {
            per_million_requests: 0.2,
            per_gb_second: 1.0,
            free_tier: FreeTier { requests: 1_500_000, gb_seconds: 1.0, ..Default::default() },
            ..Default::default()
        };
        let mut left = FreeLeft::new(&sheet.free_tier);
        let c = UsageCounters { requests: 1_000_000, mb_ms: 1024 * 1000, ..Default::default() };
        assert_eq!(left.charge(&sheet, &c).total, 0.0, "all inside the free tier");
        let cost = left.charge(&sheet, &c);
        assert!((cost.requests - 0.1).abs() < 1e-12, "{cost:?}");
        assert!((cost.compute - 1.0).abs() < 1e-12, "{cost:?}");
    }

    /// One egress price and free tier for data out: function outbound HTTP and file downloads.
    #[test]
    fn egress_prices_outbound_and_file_downloads_together() {
        let sheet = PriceSheet {
            per_gb_egress: 1.0,
            free_tier: FreeTier { egress_gb: 1.0, ..Default::default() },
            ..Default::default()
        };
        let mut left = FreeLeft::new(&sheet.free_tier);
        let gib = 1u64 << 30;
        let c = UsageCounters {
            outbound_bytes: gib / 2,
            file_egress_bytes: gib,
            push_sent: 7,
            ..Default::default()
        };
        let cost = left.charge(&sheet, &c);
        assert!((cost.egress - 0.5).abs() < 1e-12, "half a GiB over the free GiB: {cost:?}");
    }

    /// Storage is priced by GiB-months held: 2 GiB for half of a billing month is one GiB-month,
    /// and the free GiB-month goes first.
    #[test]
    fn storage_is_priced_by_gib_months_held() {
        let sheet = PriceSheet {
            per_gb_month_stored: 0.25,
            free_tier: FreeTier { stored_gb: 0.5, ..Default::default() },
            ..Default::default()
        };
        let mut left = FreeLeft::new(&sheet.free_tier);
        let c = UsageCounters {
            stored_byte_seconds: 2 * (1u64 << 30) * (GB_MONTH_SECONDS / 2),
            ..Default::default()
        };
        assert!((c.gb_months_stored() - 1.0).abs() < 1e-12);
        let cost = left.charge(&sheet, &c);
        assert!(
            (cost.storage - 0.125).abs() < 1e-9,
            "half a GiB-month over the free half: {cost:?}"
        );
        assert!((cost.total - cost.storage).abs() < 1e-12);
        assert!((left.charge(&sheet, &c).storage - 0.25).abs() < 1e-9, "the free tier is used up");
    }

    #[test]
    fn a_record_counts_ms_rounded_up_without_its_queue_wait() {
        let r = InvocationRecord {
            seq: 0,
            id: "x".into(),
            project: "p".into(),
            function: "f".into(),
            version: 1,
            trigger: "queue:jobs".into(),
            method: String::new(),
            path: String::new(),
            started_at: 0,
            duration_us: 5_001 + 700,
            queue_us: 700,
            fuel: 9,
            peak_memory_bytes: 0,
            memory_limit_mb: 128,
            outbound_bytes: 3,
            status: InvocationStatus::Timeout,
            http_status: None,
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            logs_truncated: false,
        };
        let c = UsageCounters::of(&r).unwrap();
        assert_eq!((c.requests, c.exec_ms, c.mb_ms, c.fuel, c.events), (1, 6, 768, 9, 1));
        let refused = InvocationRecord { status: InvocationStatus::Rejected, ..r };
        assert_eq!(UsageCounters::of(&refused), None);
    }
}
