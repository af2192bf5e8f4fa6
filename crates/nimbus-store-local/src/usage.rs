//! [`UsageStore`] on SQLite: `usage_hourly` rows (written by `insert_batch` in `sqlite.rs`, in
//! the records' transaction; push deliveries by `push.rs` in the outcome's transaction; file
//! egress by `add_usage` in batches) and the data gauges (`project_storage`, kept by triggers).

use nimbus_model::UnixMillis;
use nimbus_model::usage::{
    DataGauges, QUOTA_GB_SECONDS, QUOTA_INVOCATIONS, QUOTA_STORED_BYTES, Quotas, THRESHOLD_EVENT,
    UsageCounters, UsageRow, hour_of, next_month, retired_project,
};
use nimbus_store::Result;
use nimbus_store::events::NewEvent;
use nimbus_store::usage::UsageStore;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Context;
use crate::sqlite::SqliteStore;

const SELECT: &str = "SELECT project, function, hour, requests, exec_ms, mb_ms, fuel, \
                      outbound_bytes, events, file_egress_bytes, push_sent, stored_byte_seconds \
                      FROM usage_hourly";

/// Add `c` to the (project, hour, function) row, in the caller's transaction.
pub(crate) fn add_hourly(
    tx: &Connection,
    project: &str,
    hour: UnixMillis,
    function: &str,
    c: &UsageCounters,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO usage_hourly (project, hour, function, requests, exec_ms, mb_ms, fuel, \
         outbound_bytes, events, file_egress_bytes, push_sent, stored_byte_seconds) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (project, hour, function) DO UPDATE SET \
         requests = requests + excluded.requests, \
         exec_ms = exec_ms + excluded.exec_ms, \
         mb_ms = mb_ms + excluded.mb_ms, \
         fuel = fuel + excluded.fuel, \
         outbound_bytes = outbound_bytes + excluded.outbound_bytes, \
         events = events + excluded.events, \
         file_egress_bytes = file_egress_bytes + excluded.file_egress_bytes, \
         push_sent = push_sent + excluded.push_sent, \
         stored_byte_seconds = stored_byte_seconds + excluded.stored_byte_seconds",
    )
    .and_then(|mut s| {
        s.execute(params![
            project,
            hour,
            function,
            c.requests,
            c.exec_ms,
            c.mb_ms,
            c.fuel,
            c.outbound_bytes,
            c.events,
            c.file_egress_bytes,
            c.push_sent,
            c.stored_byte_seconds
        ])
    })
    .context("counting usage")?;
    Ok(())
}

fn counters(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UsageCounters> {
    Ok(UsageCounters {
        requests: r.get(at)?,
        exec_ms: r.get(at + 1)?,
        mb_ms: r.get(at + 2)?,
        fuel: r.get(at + 3)?,
        outbound_bytes: r.get(at + 4)?,
        events: r.get(at + 5)?,
        file_egress_bytes: r.get(at + 6)?,
        push_sent: r.get(at + 7)?,
        stored_byte_seconds: r.get(at + 8)?,
    })
}

/// A row of [`SELECT`].
fn usage_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRow> {
    Ok(UsageRow {
        project: row.get(0)?,
        function: row.get(1)?,
        hour: row.get(2)?,
        counters: counters(row, 3)?,
    })
}

/// Rows of usage history moved per transaction when a deleted project's history is retired.
const RETIRE_STEP: usize = 1_000;

fn quotas_on(conn: &Connection, project: &str) -> Result<Option<Quotas>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT quotas FROM project_quotas WHERE project = ?1")
        .and_then(|mut s| s.query_row([project], |r| r.get(0)).optional())
        .context("reading quotas")?;
    json.map(|j| serde_json::from_str(&j).context("decoding quotas")).transpose()
}

fn total_on(
    conn: &Connection,
    project: &str,
    from: UnixMillis,
    to: UnixMillis,
) -> Result<UsageCounters> {
    conn.prepare_cached(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(exec_ms), 0), coalesce(sum(mb_ms), 0), \
         coalesce(sum(fuel), 0), coalesce(sum(outbound_bytes), 0), coalesce(sum(events), 0), \
         coalesce(sum(file_egress_bytes), 0), coalesce(sum(push_sent), 0), \
         coalesce(sum(stored_byte_seconds), 0) \
         FROM usage_hourly WHERE project = ?1 AND hour >= ?2 AND hour < ?3",
    )
    .and_then(|mut s| s.query_row(params![project, from, to], |r| counters(r, 0)))
    .context("summing usage")
}

/// In `insert_batch`'s transaction, after the usage of `project`'s `month` grew: write one
/// threshold event for each monthly quota whose soft threshold the month has now reached, unless
/// that quota's event for the month was written already. Returns the last event's position.
pub(crate) fn thresholds_crossed(
    tx: &Connection,
    project: &str,
    month: UnixMillis,
) -> Result<Option<u64>> {
    let Some(quotas) = quotas_on(tx, project)? else { return Ok(None) };
    let total = total_on(tx, project, month, next_month(month))?;
    let soft = u128::from(quotas.soft_threshold_percent);
    let mut last = None;
    let checks = [
        (QUOTA_INVOCATIONS, quotas.invocations_per_month, total.requests),
        (QUOTA_GB_SECONDS, quotas.mb_ms_per_month(), total.mb_ms),
    ];
    for (quota, limit, used) in checks {
        let Some(limit) = limit else { continue };
        // used / limit >= soft %, in integers.
        if u128::from(used) * 100 < u128::from(limit) * soft {
            continue;
        }
        let first = tx
            .prepare_cached(
                "INSERT INTO quota_thresholds (project, quota, period) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![project, quota, month]))
            .context("marking a quota threshold")?
            == 1;
        if !first {
            continue;
        }
        let (used_v, limit_v) = if quota == QUOTA_GB_SECONDS {
            (
                serde_json::json!(used as f64 / 1024.0 / 1000.0),
                serde_json::json!(quotas.gb_seconds_per_month),
            )
        } else {
            (serde_json::json!(used), serde_json::json!(limit))
        };
        let event = NewEvent {
            project: project.to_string(),
            kind: THRESHOLD_EVENT.to_string(),
            source: format!("/v1/projects/{project}/quotas"),
            subject: quota.to_string(),
            data: serde_json::json!({
                "quota": quota,
                "used": used_v,
                "limit": limit_v,
                "threshold_percent": quotas.soft_threshold_percent,
                "period_start": month,
                "resets_at": next_month(month),
            }),
        };
        last = crate::events::append_in(tx, &[event])?.last().copied();
    }
    Ok(last)
}

impl UsageStore for SqliteStore {
    fn usage_total(
        &self,
        project: &str,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<UsageCounters> {
        self.read(|conn| total_on(conn, project, from, to))
    }

    fn set_quotas(&self, project: &str, quotas: Option<&Quotas>) -> Result<()> {
        self.write("setting quotas", |tx| {
            match quotas {
                Some(q) => {
                    let json = serde_json::to_string(q).context("encoding quotas")?;
                    tx.execute(
                        "INSERT INTO project_quotas (project, quotas) VALUES (?1, ?2) \
                         ON CONFLICT (project) DO UPDATE SET quotas = excluded.quotas",
                        params![project, json],
                    )
                    .context("writing quotas")?;
                }
                None => {
                    tx.execute("DELETE FROM project_quotas WHERE project = ?1", [project])
                        .context("removing quotas")?;
                }
            }
            Ok(())
        })
    }

    fn quotas(&self, project: &str) -> Result<Option<Quotas>> {
        self.read(|conn| quotas_on(conn, project))
    }

    fn accrue_storage(&self, now: UnixMillis) -> Result<()> {
        const H: i64 = 3_600_000;
        self.write("accruing stored bytes", |tx| {
            let rows: Vec<(String, u64, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT project, document_bytes + kv_bytes + file_bytes, accrued_at \
                     FROM project_storage",
                )
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect()
                })
                .context("reading what projects store")?;
            for (project, bytes, accrued_at) in rows {
                // From the last accrual (the first one starts the clock) to now, split at hour
                // boundaries so that each hour gets what was held in it (a node down for a day
                // accrues that day at its next start, at the size it finds).
                if let Some(mut at) = accrued_at.filter(|at| *at < now)
                    && bytes > 0
                {
                    while at < now {
                        let end = (hour_of(at) + H).min(now);
                        let byte_seconds = u128::from(bytes) * (end - at) as u128 / 1000;
                        let c = UsageCounters {
                            stored_byte_seconds: u64::try_from(byte_seconds).unwrap_or(u64::MAX),
                            ..Default::default()
                        };
                        add_hourly(tx, &project, hour_of(at), "", &c)?;
                        at = end;
                    }
                }
                if accrued_at.is_none_or(|at| at < now) {
                    tx.prepare_cached(
                        "UPDATE project_storage SET accrued_at = ?2 WHERE project = ?1",
                    )
                    .and_then(|mut s| s.execute(params![project, now]))
                    .context("noting the accrual")?;
                }
            }
            Ok(())
        })
    }

    fn check_storage_threshold(&self, project: &str) -> Result<Option<bool>> {
        let checked = self.write("checking the stored-bytes threshold", |tx| {
            let Some(quotas) = quotas_on(tx, project)? else { return Ok((None, None)) };
            let Some(limit) = quotas.stored_bytes else { return Ok((None, None)) };
            let used: u64 = tx
                .prepare_cached(
                    "SELECT document_bytes + kv_bytes + file_bytes FROM project_storage \
                     WHERE project = ?1",
                )
                .and_then(|mut s| s.query_row([project], |r| r.get(0)).optional())
                .context("reading what a project stores")?
                .unwrap_or(0);
            let soft = u128::from(quotas.soft_threshold_percent);
            let above = u128::from(used) * 100 >= u128::from(limit) * soft;
            // Not monthly: one row while the project is at or over, removed once it is back
            // under so that the next crossing is reported too.
            if !above {
                tx.prepare_cached(
                    "DELETE FROM quota_thresholds WHERE project = ?1 AND quota = ?2 AND period = 0",
                )
                .and_then(|mut s| s.execute(params![project, QUOTA_STORED_BYTES]))
                .context("re-arming the stored-bytes threshold")?;
                return Ok((Some(false), None));
            }
            let first = tx
                .prepare_cached(
                    "INSERT INTO quota_thresholds (project, quota, period) VALUES (?1, ?2, 0) \
                     ON CONFLICT DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![project, QUOTA_STORED_BYTES]))
                .context("marking the stored-bytes threshold")?
                == 1;
            if !first {
                return Ok((Some(true), None));
            }
            let event = NewEvent {
                project: project.to_string(),
                kind: THRESHOLD_EVENT.to_string(),
                source: format!("/v1/projects/{project}/quotas"),
                subject: QUOTA_STORED_BYTES.to_string(),
                data: serde_json::json!({
                    "quota": QUOTA_STORED_BYTES,
                    "used": used,
                    "limit": limit,
                    "threshold_percent": quotas.soft_threshold_percent,
                }),
            };
            let last = crate::events::append_in(tx, &[event])?.last().copied();
            Ok((Some(true), last))
        })?;
        if let (_, Some(p)) = checked {
            self.events_committed(p);
        }
        Ok(checked.0)
    }

    fn retire_project_usage(&self, project: &str, now: UnixMillis) -> Result<String> {
        // The tombstone's time (migration 17), the same on every run of one deletion.
        let deleted_at: Option<UnixMillis> = self.read(|conn| {
            conn.prepare_cached("SELECT deleting_at FROM projects WHERE id = ?1")
                .and_then(|mut s| s.query_row([project], |r| r.get(0)).optional())
                .map(Option::flatten)
                .context("reading when a project's deletion began")
        })?;
        let name = retired_project(project, deleted_at.unwrap_or(now));
        // Moved by merging into the retired name's rows, not renamed: a run after an
        // interrupted one may find a straggler for an hour it already moved.
        self.in_steps("retiring a project's usage history", RETIRE_STEP, |tx| {
            let rows: Vec<UsageRow> = tx
                .prepare_cached(&format!(
                    "{SELECT} WHERE project = ?1 ORDER BY hour, function LIMIT {RETIRE_STEP}"
                ))
                .and_then(|mut s| s.query_map([project], usage_row)?.collect())
                .context("reading a deleted project's usage")?;
            for r in &rows {
                add_hourly(tx, &name, r.hour, &r.function, &r.counters)?;
                tx.prepare_cached(
                    "DELETE FROM usage_hourly WHERE project = ?1 AND hour = ?2 AND function = ?3",
                )
                .and_then(|mut s| s.execute(params![project, r.hour, r.function]))
                .context("moving a deleted project's usage")?;
            }
            Ok((rows.len(), 0))
        })?;
        self.write("deleting a project's quotas", |tx| {
            for table in ["project_quotas", "quota_thresholds", "project_storage"] {
                tx.execute(&format!("DELETE FROM {table} WHERE project = ?1"), [project])
                    .with_context(|| format!("deleting {table} of project {project}"))?;
            }
            Ok(())
        })?;
        Ok(name)
    }

    fn all_quotas(&self) -> Result<Vec<(String, Quotas)>> {
        self.read(|conn| {
            let rows: Vec<(String, String)> = conn
                .prepare_cached("SELECT project, quotas FROM project_quotas ORDER BY project")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .context("listing quotas")?;
            rows.into_iter()
                .map(|(p, j)| Ok((p, serde_json::from_str(&j).context("decoding quotas")?)))
                .collect()
        })
    }

    fn usage_hours(
        &self,
        project: Option<&str>,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<UsageRow>> {
        self.read(|conn| {
            let sql = match project {
                Some(_) => format!(
                    "{SELECT} WHERE project = ?3 AND hour >= ?1 AND hour < ?2 \
                     ORDER BY hour, function"
                ),
                None => format!(
                    "{SELECT} WHERE hour >= ?1 AND hour < ?2 ORDER BY hour, project, function"
                ),
            };
            let mut stmt = conn.prepare_cached(&sql).context("preparing the usage query")?;
            let rows = match project {
                Some(p) => stmt.query_map(params![from, to, p], usage_row),
                None => stmt.query_map(params![from, to], usage_row),
            }
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .context("reading usage")?;
            Ok(rows)
        })
    }

    fn usage_projects(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<String>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT DISTINCT project FROM usage_hourly WHERE hour >= ?1 AND hour < ?2 \
                 ORDER BY project",
            )
            .and_then(|mut stmt| stmt.query_map(params![from, to], |row| row.get(0))?.collect())
            .context("listing projects with usage")
        })
    }

    fn data_gauges(&self, project: &str) -> Result<DataGauges> {
        // One row, kept by triggers in each change's transaction (migration 13): read before
        // every write that adds data, so never a scan.
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT documents, document_bytes, kv_bytes, file_bytes FROM project_storage \
                 WHERE project = ?1",
            )
            .and_then(|mut s| {
                s.query_row([project], |r| {
                    Ok(DataGauges {
                        documents: r.get(0)?,
                        document_bytes: r.get(1)?,
                        kv_bytes: r.get(2)?,
                        file_bytes: r.get(3)?,
                    })
                })
                .optional()
            })
            .map(Option::unwrap_or_default)
            .context("reading what a project stores")
        })
    }

    fn add_usage(&self, rows: &[UsageRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write("adding usage", |tx| {
            for r in rows {
                add_hourly(tx, &r.project, hour_of(r.hour), &r.function, &r.counters)?;
            }
            Ok(())
        })
    }
}
