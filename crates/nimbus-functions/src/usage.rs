//! Usage reports: the stored hourly counters grouped by function, day or hour, priced with the
//! operator's price sheet (free tier per project and UTC month, consumed in time order), plus the
//! data services' gauges.

use std::collections::BTreeMap;
use std::sync::Arc;

use nimbus_model::UnixMillis;
use nimbus_model::usage::rfc3339;
use nimbus_model::usage::{
    Cost, DataGauges, FreeLeft, PriceSheet, UsageCounters, UsageRow, day_of, month_of,
    storage_cost_per_month,
};
use nimbus_store::usage::UsageStore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sha2::Digest as _;

use crate::{FunctionError, Result, blocking};

/// The longest range a report covers, and the most rows it returns.
pub const MAX_RANGE_MS: i64 = 400 * 24 * 3_600_000;
pub const MAX_ROWS: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Function,
    Day,
    Hour,
}

/// One line of a report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageLine {
    pub project: String,
    /// Set when grouped by function.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Start of the day or hour (unix ms, UTC), when grouped by day or hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<UnixMillis>,
    #[serde(flatten)]
    pub counters: UsageCounters,
    pub gb_seconds: f64,
    /// GiB-months stored (`stored_byte_seconds` over a 730-hour month).
    pub stored_gb_months: f64,
    /// After the free tier; absent without a price sheet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

/// A project's totals over the range, and what its data services hold now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectUsage {
    pub project: String,
    #[serde(flatten)]
    pub counters: UsageCounters,
    pub gb_seconds: f64,
    /// GiB-months stored over the range.
    pub stored_gb_months: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    pub data: DataGauges,
    /// What a month of holding `data` would cost at today's size (a projection; what was held
    /// is billed through `stored_byte_seconds` in `cost.storage`); absent without a price sheet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_cost_per_month: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub from: UnixMillis,
    pub to: UnixMillis,
    pub by: GroupBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub lines: Vec<UsageLine>,
    pub projects: Vec<ProjectUsage>,
}

#[derive(Clone)]
pub struct UsageService {
    store: Arc<dyn UsageStore>,
    prices: Option<Arc<PriceSheet>>,
    egress: Arc<EgressMeter>,
    /// Whose record writer and quota counters a project's deletion flushes and forgets (weak:
    /// the server owns the function service and its shutdown).
    functions: Option<std::sync::Weak<crate::FunctionService>>,
}

impl UsageService {
    /// Also starts the egress meter's writer (needs a tokio runtime).
    pub fn new(store: Arc<dyn UsageStore>, prices: Option<PriceSheet>) -> Self {
        let egress = EgressMeter::new(store.clone());
        egress.spawn_writer();
        UsageService { store, prices: prices.map(Arc::new), egress, functions: None }
    }

    /// The function service whose in-memory quota counters follow the stored quotas: a
    /// project's deletion writes its queued records first and forgets its counters after.
    pub fn with_functions(mut self, functions: &Arc<crate::FunctionService>) -> Self {
        self.functions = Some(Arc::downgrade(functions));
        self
    }

    /// The usage part of deleting `project`: what it used until now is written (queued
    /// records, counted file egress), then its quotas, threshold marks and stored-bytes row go
    /// and its history is retired ([`UsageStore::retire_project_usage`]), then the quota
    /// counters in memory are dropped, so the slug, if created again, starts with no quota and
    /// a month used at zero. Idempotent. Returns the name the history is kept under.
    pub async fn delete_project(&self, project: &str) -> Result<String> {
        let functions = self.functions.as_ref().and_then(std::sync::Weak::upgrade);
        if let Some(f) = &functions {
            f.flush_records().await;
        }
        self.egress.flush().await?;
        let (store, p) = (self.store.clone(), project.to_string());
        let now = nimbus_model::now_millis();
        let name = blocking(move || Ok(store.retire_project_usage(&p, now)?)).await?;
        if let Some(f) = &functions {
            f.forget_quotas(project);
        }
        tracing::info!(project, history = %name, "retired the project's usage history");
        Ok(name)
    }

    /// Accrue what every project stores up to now (each minute, and at a graceful stop).
    pub async fn accrue_storage(&self) -> Result<()> {
        let store = self.store.clone();
        blocking(move || Ok(store.accrue_storage(nimbus_model::now_millis())?)).await
    }

    /// The accrual task: [`UsageService::accrue_storage`] every [`STORAGE_ACCRUAL`], until the
    /// handle is aborted.
    pub fn spawn_storage_accrual(&self) -> tokio::task::JoinHandle<()> {
        let usage = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STORAGE_ACCRUAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = usage.accrue_storage().await {
                    tracing::warn!(error = %e, "accruing stored bytes; next minute");
                }
            }
        })
    }

    /// Where file downloads count the bytes they sent.
    pub fn egress(&self) -> &Arc<EgressMeter> {
        &self.egress
    }

    pub fn prices(&self) -> Option<&PriceSheet> {
        self.prices.as_deref()
    }

    /// Usage in `[from, to)` (whole hours: `from` rounds down, `to` up), for one project or all.
    pub async fn report(
        &self,
        project: Option<&str>,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> Result<UsageReport> {
        let (from, to) = hours(from, to)?;
        // Rows from the start of `from`'s month: the free tier is used up in time order, so a
        // report starting mid-month must know what the month used before it.
        let (store, p) = (self.store.clone(), project.map(str::to_owned));
        let start = month_of(from);
        let (rows, gauges) = blocking(move || {
            let rows = store.usage_hours(p.as_deref(), start, to)?;
            if rows.len() > MAX_ROWS * 4 {
                return Err(FunctionError::InvalidRange(format!(
                    "more than {MAX_ROWS} rows of usage: ask for a shorter range"
                )));
            }
            let mut projects: Vec<String> = match &p {
                Some(p) => vec![p.clone()],
                None => store.usage_projects(from, to)?,
            };
            projects.dedup();
            let mut gauges = BTreeMap::new();
            for project in projects {
                let g = store.data_gauges(&project)?;
                gauges.insert(project, g);
            }
            Ok((rows, gauges))
        })
        .await?;
        Ok(self.build(rows, gauges, from, to, by))
    }

    fn build(
        &self,
        rows: Vec<UsageRow>,
        gauges: BTreeMap<String, DataGauges>,
        from: UnixMillis,
        to: UnixMillis,
        by: GroupBy,
    ) -> UsageReport {
        let sheet = self.prices.as_deref();
        // (project, month) -> free tier left; rows come in (hour, project, function) order.
        let mut free: BTreeMap<(String, UnixMillis), FreeLeft> = BTreeMap::new();
        let mut lines: BTreeMap<(String, Option<String>, Option<UnixMillis>), UsageLine> =
            BTreeMap::new();
        let mut projects: BTreeMap<String, ProjectUsage> = BTreeMap::new();
        for row in rows {
            let cost = sheet.map(|sheet| {
                free.entry((row.project.clone(), month_of(row.hour)))
                    .or_insert_with(|| FreeLeft::new(&sheet.free_tier))
                    .charge(sheet, &row.counters)
            });
            if row.hour < from {
                continue; // counted only for the free tier
            }
            let key = match by {
                GroupBy::Function => (row.project.clone(), Some(row.function.clone()), None),
                GroupBy::Day => (row.project.clone(), None, Some(day_of(row.hour))),
                GroupBy::Hour => (row.project.clone(), None, Some(row.hour)),
            };
            let line = lines.entry(key.clone()).or_insert_with(|| UsageLine {
                project: key.0,
                function: key.1,
                period: key.2,
                counters: UsageCounters::default(),
                gb_seconds: 0.0,
                stored_gb_months: 0.0,
                cost: sheet.map(|_| Cost::default()),
            });
            line.counters.add(&row.counters);
            let total = projects.entry(row.project.clone()).or_insert_with(|| ProjectUsage {
                project: row.project.clone(),
                counters: UsageCounters::default(),
                gb_seconds: 0.0,
                stored_gb_months: 0.0,
                cost: sheet.map(|_| Cost::default()),
                data: DataGauges::default(),
                storage_cost_per_month: None,
            });
            total.counters.add(&row.counters);
            if let Some(c) = &cost {
                line.cost.get_or_insert_default().add(c);
                total.cost.get_or_insert_default().add(c);
            }
        }
        for (project, g) in gauges {
            let p = projects.entry(project.clone()).or_insert_with(|| ProjectUsage {
                project,
                counters: UsageCounters::default(),
                gb_seconds: 0.0,
                stored_gb_months: 0.0,
                cost: sheet.map(|_| Cost::default()),
                data: DataGauges::default(),
                storage_cost_per_month: None,
            });
            p.data = g;
            p.storage_cost_per_month = sheet.map(|s| storage_cost_per_month(s, g.stored_bytes()));
        }
        let mut lines: Vec<UsageLine> = lines.into_values().collect();
        for l in &mut lines {
            l.gb_seconds = l.counters.gb_seconds();
            l.stored_gb_months = l.counters.gb_months_stored();
        }
        // By time: in time order; by function: by project, then function (the map's order).
        if by != GroupBy::Function {
            lines.sort_by(|a, b| (a.period, &a.project).cmp(&(b.period, &b.project)));
        }
        lines.truncate(MAX_ROWS);
        let mut projects: Vec<ProjectUsage> = projects.into_values().collect();
        for p in &mut projects {
            p.gb_seconds = p.counters.gb_seconds();
            p.stored_gb_months = p.counters.gb_months_stored();
        }
        UsageReport { from, to, by, currency: sheet.map(|s| s.currency.clone()), lines, projects }
    }
}

impl UsageService {
    /// Usage as CloudEvents for OpenMeter's ingest API: one event per (project, function, hour,
    /// meter) with a nonzero value, over complete hours only (an hour still counting would be
    /// exported again with a larger value under the same id, and deduplicated away). The id is
    /// a hash of (project, function, hour, meter), so re-exporting a range sends the same ids and
    /// OpenMeter keeps each once.
    pub async fn export(
        &self,
        project: Option<&str>,
        from: UnixMillis,
        to: UnixMillis,
        source: &str,
    ) -> Result<Vec<serde_json::Value>> {
        let now_hour = nimbus_model::usage::hour_of(nimbus_model::now_millis());
        let (from, to) = hours(from, to)?;
        let to = to.min(now_hour);
        if to <= from {
            return Ok(Vec::new());
        }
        let (store, p) = (self.store.clone(), project.map(str::to_owned));
        let rows = blocking(move || Ok(store.usage_hours(p.as_deref(), from, to)?)).await?;
        let mut out = Vec::new();
        for row in rows {
            let c = &row.counters;
            let meters: [(&str, serde_json::Value); 9] = [
                ("requests", c.requests.into()),
                ("execution_ms", c.exec_ms.into()),
                ("gb_seconds", c.gb_seconds().into()),
                ("fuel", c.fuel.into()),
                ("outbound_bytes", c.outbound_bytes.into()),
                ("events", c.events.into()),
                ("file_egress_bytes", c.file_egress_bytes.into()),
                ("push_sent", c.push_sent.into()),
                ("stored_byte_seconds", c.stored_byte_seconds.into()),
            ];
            for (meter, value) in meters {
                if value.as_f64() == Some(0.0) {
                    continue;
                }
                if out.len() >= MAX_ROWS {
                    return Err(FunctionError::InvalidRange(format!(
                        "more than {MAX_ROWS} events: ask for a shorter range"
                    )));
                }
                // A deleted project's history keeps the ids its hours had under its slug
                // (`export_id_project`), so re-exporting it after the deletion bills nothing twice.
                let id_project = nimbus_model::usage::export_id_project(&row.project, row.hour);
                let key = format!("{id_project}\n{}\n{}\n{meter}", row.function, row.hour);
                let id = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16]);
                out.push(serde_json::json!({
                    "specversion": "1.0",
                    "id": id,
                    "source": source,
                    "type": "nimbus.usage",
                    "subject": row.project,
                    "time": rfc3339(row.hour),
                    "datacontenttype": "application/json",
                    "data": {
                        "meter": meter,
                        "value": value,
                        "function": row.function,
                        "hour_start": rfc3339(row.hour),
                    },
                }));
            }
        }
        Ok(out)
    }
}

/// Usage goes after every other service in a project's deletion (see `AppState::new`).
impl nimbus_model::lifecycle::ProjectLifecycle for UsageService {
    fn part(&self) -> &'static str {
        "usage"
    }

    fn delete_project_data<'a>(
        &'a self,
        project: &'a str,
    ) -> nimbus_model::lifecycle::PartFuture<'a> {
        Box::pin(async move { Ok(self.delete_project(project).await.map(drop)?) })
    }
}

/// How often the egress meter writes what it counted.
const EGRESS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// File egress, metered off the request path: a download adds the bytes it sent (once, when its
/// body ends or is dropped) to an in-memory sum per (project, hour), and a task writes the sums
/// every second in one transaction ([`UsageStore::add_usage`], the empty function name), like
/// the invocation recorder's batches. Bounded by construction: one entry per project and hour
/// however many downloads there are, so a store that stays down grows it by one entry per
/// project per hour. A failed write is merged back and retried; a kill -9 loses at most the
/// last second (graceful shutdown flushes).
pub struct EgressMeter {
    pending: parking_lot::Mutex<std::collections::HashMap<(String, UnixMillis), u64>>,
    store: Arc<dyn UsageStore>,
    /// One flush at a time, so a shutdown flush waits for the writer's and misses nothing.
    writing: tokio::sync::Mutex<()>,
}

impl EgressMeter {
    pub fn new(store: Arc<dyn UsageStore>) -> Arc<EgressMeter> {
        Arc::new(EgressMeter {
            pending: Default::default(),
            store,
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// Count `bytes` sent for `project` now. O(1): one short lock, no I/O.
    pub fn add(&self, project: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let hour = nimbus_model::usage::hour_of(nimbus_model::now_millis());
        *self.pending.lock().entry((project.to_string(), hour)).or_default() += bytes;
    }

    /// Write what was counted. On failure the sums are merged back for the next attempt.
    pub async fn flush(&self) -> Result<()> {
        let _one = self.writing.lock().await;
        let taken = std::mem::take(&mut *self.pending.lock());
        if taken.is_empty() {
            return Ok(());
        }
        let rows: Vec<UsageRow> = taken
            .iter()
            .map(|((project, hour), bytes)| UsageRow {
                project: project.clone(),
                function: String::new(),
                hour: *hour,
                counters: UsageCounters { file_egress_bytes: *bytes, ..Default::default() },
            })
            .collect();
        let store = self.store.clone();
        let written = blocking(move || Ok(store.add_usage(&rows)?)).await;
        if written.is_err() {
            let mut pending = self.pending.lock();
            for (k, v) in taken {
                *pending.entry(k).or_default() += v;
            }
        }
        written
    }

    /// The writer: a flush every [`EGRESS_FLUSH`], retried on the next tick when it fails. Holds
    /// the meter weakly, so it ends with the service.
    pub fn spawn_writer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let meter = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EGRESS_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(meter) = meter.upgrade() else { return };
                if let Err(e) = meter.flush().await {
                    tracing::warn!(error = %e, "writing file egress usage failed; will retry");
                }
            }
        })
    }
}

/// How often stored bytes are accrued into usage: the rectangle each accrual adds is the size at
/// that instant times the time since the last one, so this bounds how long a size change is
/// priced at the old size.
const STORAGE_ACCRUAL: std::time::Duration = std::time::Duration::from_secs(60);

/// `[from, to)` on whole hours, checked.
fn hours(from: UnixMillis, to: UnixMillis) -> Result<(UnixMillis, UnixMillis)> {
    const H: i64 = 3_600_000;
    let from = nimbus_model::usage::hour_of(from);
    let to = nimbus_model::usage::hour_of(to.saturating_add(H - 1));
    if to <= from {
        return Err(FunctionError::InvalidRange("`to` must be after `from`".into()));
    }
    if to - from > MAX_RANGE_MS {
        return Err(FunctionError::InvalidRange("the range is longer than 400 days".into()));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deleting a project's usage twice retires its history once, under the tombstone's time;
    /// its exported ids stay those of its slug for hours before the deletion's hour (exported
    /// already, perhaps) and differ from a re-created project's in the deletion's hour.
    #[tokio::test]
    async fn a_retired_history_keeps_its_export_ids_and_clashes_with_no_new_project() {
        use nimbus_store::auth::{AuthStore, ProjectRecord};
        const H: i64 = 3_600_000;
        let store = Arc::new(nimbus_store_local::SqliteStore::open_in_memory().unwrap());
        let usage = UsageService::new(store.clone(), None);
        let now_hour = nimbus_model::usage::hour_of(nimbus_model::now_millis());
        let (early, deleted_at) = (now_hour - 3 * H, now_hour - H + 60_000);
        let row = |project: &str, hour| UsageRow {
            project: project.into(),
            function: "f".into(),
            hour,
            counters: UsageCounters { requests: 2, ..Default::default() },
        };
        store.add_usage(&[row("acme", early), row("acme", now_hour - H)]).unwrap();
        let record = |slug: &str| ProjectRecord {
            id: slug.into(),
            slug: slug.into(),
            name: slug.into(),
            created_at: 0,
        };
        store.create_project(&record("acme")).unwrap();
        let ids = |events: &[serde_json::Value]| -> Vec<(String, String, i64)> {
            let mut v: Vec<_> = events
                .iter()
                .map(|e| {
                    let hour = nimbus_model::usage::parse_time(e["time"].as_str().unwrap());
                    (
                        e["id"].as_str().unwrap().into(),
                        e["subject"].as_str().unwrap().into(),
                        hour.unwrap(),
                    )
                })
                .collect();
            v.sort_by_key(|e| e.2);
            v
        };
        // What an export could have sent while the project lived: the hours before its
        // deletion's (that one was still counting).
        let from = now_hour - 4 * H;
        let before = ids(&usage.export(None, from, now_hour - H, "test").await.unwrap());
        assert_eq!(before.len(), 1);

        store.mark_project_deleting("acme", deleted_at).unwrap();
        let name = usage.delete_project("acme").await.unwrap();
        assert_eq!(name, nimbus_model::usage::retired_project("acme", deleted_at));
        assert_eq!(usage.delete_project("acme").await.unwrap(), name, "twice: the same");
        assert_eq!(store.usage_total(&name, from, now_hour).unwrap().requests, 4);
        assert!(store.delete_project("acme").unwrap());
        // Re-created within the deletion's hour, with usage in it.
        store.create_project(&record("acme")).unwrap();
        store.add_usage(&[row("acme", now_hour - H)]).unwrap();

        let after = ids(&usage.export(None, from, now_hour, "test").await.unwrap());
        assert_eq!(after.len(), 3);
        assert_eq!(after[0], (before[0].0.clone(), name.clone(), early), "kept id, new subject");
        let in_deletion_hour: Vec<_> = after.iter().filter(|e| e.2 == now_hour - H).collect();
        assert_eq!(in_deletion_hour.len(), 2);
        assert_ne!(in_deletion_hour[0].0, in_deletion_hour[1].0, "the two projects' ids differ");
    }

    /// Downloads add to one sum per project and hour; a flush writes each sum once, under the
    /// empty function name, and a flush with nothing counted writes nothing.
    #[tokio::test]
    async fn egress_is_summed_per_project_and_written_once() {
        let store = Arc::new(nimbus_store_local::SqliteStore::open_in_memory().unwrap());
        let meter = EgressMeter::new(store.clone());
        meter.add("a", 100);
        meter.add("a", 23);
        meter.add("b", 7);
        meter.add("c", 0);
        assert_eq!(meter.pending.lock().len(), 2, "one entry per project and hour");
        meter.flush().await.unwrap();
        meter.flush().await.unwrap();
        // Summed over a range around now (an hour may turn between the adds).
        let hour = nimbus_model::usage::hour_of(nimbus_model::now_millis());
        let (from, to) = (hour - 3_600_000, hour + 3_600_000);
        let rows = store.usage_hours(None, from, to).unwrap();
        assert!(rows.iter().all(|r| r.function.is_empty() && r.counters.requests == 0));
        let total = |p: &str| store.usage_total(p, from, to).unwrap().file_egress_bytes;
        assert_eq!((total("a"), total("b"), total("c")), (123, 7, 0));
        meter.add("a", 1);
        meter.flush().await.unwrap();
        assert_eq!(total("a"), 124);
    }
}
