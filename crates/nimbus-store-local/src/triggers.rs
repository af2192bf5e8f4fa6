//! Event delivery on SQLite (migration 7): `trigger_deliveries` + `trigger_attempts` (fan-out,
//! claims with leases, retries, the dead-letter queue), `trigger_schedules` (last tick fired),
//! `async_invocations` and `idempotency_keys`.

use nimbus_model::{UnixMillis, now_millis};
use nimbus_store::Result;
use nimbus_store::events::{Event, NewEvent};
use nimbus_store::triggers::{
    AfterAttempt, AsyncInvocation, AsyncResult, Attempt, CallbackOutcome, CallbackState, Delivery,
    DeliveryQuery, DeliveryState, DeliveryStore, Idempotency, NewDelivery, Once, ProducerStore,
    ScheduleStore, SubscriptionStats,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::error::Context;
use crate::events::append_in;
use crate::sqlite::{SqliteStore, json_column};

/// Rows one housekeeping step deletes (one write transaction).
const PRUNE_STEP: usize = 1000;

const DELIVERY_COLUMNS: &str = "id, project, function, trigger, event_position, event_id, \
    event_type, event_source, event_subject, event_time, event_data, path, order_key, state, \
    attempts, max_attempts, next_at, expires_at, leased_until, lease_ms, created_at, updated_at, \
    last_error, last_invocation";

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state: String = r.get(13)?;
    Ok(Delivery {
        id: r.get::<_, i64>(0)? as u64,
        project: r.get(1)?,
        function: r.get(2)?,
        trigger: r.get(3)?,
        event: Event {
            position: r.get::<_, i64>(4)? as u64,
            id: r.get(5)?,
            project: r.get(1)?,
            kind: r.get(6)?,
            source: r.get(7)?,
            subject: r.get(8)?,
            time: r.get(9)?,
            data: json_column(r, 10)?,
        },
        path: r.get(11)?,
        order_key: r.get(12)?,
        state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Dead),
        attempts: r.get(14)?,
        max_attempts: r.get(15)?,
        next_at: r.get(16)?,
        expires_at: r.get(17)?,
        leased_until: r.get(18)?,
        lease_ms: r.get::<_, i64>(19)? as u64,
        created_at: r.get(20)?,
        updated_at: r.get(21)?,
        last_error: r.get(22)?,
        last_invocation: r.get(23)?,
    })
}

/// `WHERE` conditions (after `project = ?1`) and their parameters for a [`DeliveryQuery`].
fn query_filter(q: &DeliveryQuery, params: &mut Vec<SqlValue>) -> String {
    let mut sql = String::new();
    if let Some(f) = &q.function {
        params.push(SqlValue::Text(f.clone()));
        sql += &format!(" AND function = ?{}", params.len());
    }
    if let Some(t) = &q.trigger {
        params.push(SqlValue::Text(t.clone()));
        sql += &format!(" AND trigger = ?{}", params.len());
    }
    if let Some(s) = q.state {
        params.push(SqlValue::Text(s.as_str().to_owned()));
        sql += &format!(" AND state = ?{}", params.len());
    }
    sql
}

impl DeliveryStore for SqliteStore {
    fn fan_out(&self, consumer: &str, through: u64, deliveries: &[NewDelivery]) -> Result<()> {
        self.write("fanning out events", |tx| {
            let now = now_millis();
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO trigger_deliveries (project, function, trigger, event_position, \
                     event_id, event_type, event_source, event_subject, event_time, event_data, \
                     path, order_key, state, max_attempts, next_at, expires_at, lease_ms, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                     ?11, ?12, 'pending', ?13, ?14, ?15, ?16, ?17, ?17)",
                )
                .context("preparing the delivery insert")?;
            for d in deliveries {
                let data = serde_json::to_string(&d.event.data).context("encoding event data")?;
                insert
                    .execute(params![
                        d.project,
                        d.function,
                        d.trigger,
                        d.event.position as i64,
                        d.event.id,
                        d.event.kind,
                        d.event.source,
                        d.event.subject,
                        d.event.time,
                        data,
                        d.path,
                        d.order_key,
                        d.max_attempts,
                        d.not_before,
                        d.expires_at,
                        d.lease_ms as i64,
                        now,
                    ])
                    .context("inserting a delivery")?;
            }
            tx.prepare_cached(
                "INSERT INTO event_consumers (name, position, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
                 updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![consumer, through as i64, now]))
            .context("moving the dispatcher's cursor")?;
            Ok(())
        })
    }

    fn claim(&self, now: UnixMillis, limit: u32) -> Result<Vec<Delivery>> {
        self.write("claiming deliveries", |tx| {
            let ids: Vec<i64> = tx
                .prepare_cached(
                    "SELECT d.id FROM trigger_deliveries d \
                     WHERE d.state = 'pending' AND d.next_at <= ?1 AND d.leased_until <= ?1 \
                     AND (d.order_key IS NULL OR NOT EXISTS ( \
                         SELECT 1 FROM trigger_deliveries e \
                         WHERE e.state = 'pending' AND e.order_key = d.order_key \
                         AND e.project = d.project AND e.function = d.function \
                         AND e.trigger = d.trigger AND e.id < d.id)) \
                     ORDER BY d.next_at, d.id LIMIT ?2",
                )
                .and_then(|mut s| s.query_map(params![now, limit], |r| r.get(0))?.collect())
                .context("finding due deliveries")?;
            let mut claimed = Vec::with_capacity(ids.len());
            let mut stmt = tx
                .prepare_cached(&format!(
                    "UPDATE trigger_deliveries SET attempts = attempts + 1, \
                     leased_until = ?2 + lease_ms, updated_at = ?2 WHERE id = ?1 \
                     RETURNING {DELIVERY_COLUMNS}"
                ))
                .context("preparing the claim")?;
            for id in ids {
                claimed.push(
                    stmt.query_row(params![id, now], delivery_from_row)
                        .context("claiming a delivery")?,
                );
            }
            Ok(claimed)
        })
    }

    fn release(&self, id: u64, next_at: UnixMillis) -> Result<()> {
        self.write("releasing a delivery", |tx| {
            tx.prepare_cached(
                "UPDATE trigger_deliveries SET leased_until = 0, next_at = ?2, \
                 attempts = max(attempts - 1, 0) WHERE id = ?1 AND state = 'pending'",
            )
            .and_then(|mut s| s.execute(params![id as i64, next_at]))
            .context("releasing a delivery")?;
            Ok(())
        })
    }

    fn next_due(&self) -> Result<Option<UnixMillis>> {
        self.read(|conn| {
            conn.query_row(
                "SELECT min(max(next_at, leased_until)) FROM trigger_deliveries \
                 WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .context("finding the next due delivery")
        })
    }

    fn finish(&self, id: u64, a: &Attempt, next: AfterAttempt) -> Result<bool> {
        self.write("finishing a delivery attempt", |tx| finish_in(tx, id, a, next))
    }

    fn finish_many(&self, attempts: &[(u64, Attempt, AfterAttempt)]) -> Result<Vec<bool>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        self.write("finishing delivery attempts", |tx| {
            attempts.iter().map(|(id, a, next)| finish_in(tx, *id, a, *next)).collect()
        })
    }

    fn list_deliveries(&self, project: &str, q: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let mut p = vec![SqlValue::Text(project.to_owned()), SqlValue::Integer(q.after as i64)];
        let filter = query_filter(q, &mut p);
        p.push(SqlValue::Integer(q.limit.clamp(1, 1000) as i64));
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM trigger_deliveries WHERE project = ?1 AND id > ?2 \
             {filter} ORDER BY id LIMIT ?{}",
            p.len()
        );
        self.read(|conn| {
            conn.prepare_cached(&sql)
                .and_then(|mut s| s.query_map(params_from_iter(p), delivery_from_row)?.collect())
                .context("listing deliveries")
        })
    }

    fn get_delivery(&self, project: &str, id: u64) -> Result<Option<(Delivery, Vec<Attempt>)>> {
        self.read(|conn| {
            let d = conn
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM trigger_deliveries \
                     WHERE project = ?1 AND id = ?2"
                ))
                .and_then(|mut s| s.query_row(params![project, id as i64], delivery_from_row))
                .optional()
                .context("reading a delivery")?;
            let Some(d) = d else { return Ok(None) };
            let attempts = conn
                .prepare_cached(
                    "SELECT attempt, invocation_id, started_at, duration_ms, http_status, ok, \
                     error FROM trigger_attempts WHERE delivery = ?1 ORDER BY attempt",
                )
                .and_then(|mut s| {
                    s.query_map([id as i64], |r| {
                        Ok(Attempt {
                            attempt: r.get(0)?,
                            invocation_id: r.get(1)?,
                            started_at: r.get(2)?,
                            duration_ms: r.get::<_, i64>(3)? as u64,
                            http_status: r.get(4)?,
                            ok: r.get(5)?,
                            error: r.get(6)?,
                        })
                    })?
                    .collect()
                })
                .context("reading attempts")?;
            Ok(Some((d, attempts)))
        })
    }

    fn replay(
        &self,
        project: &str,
        id: Option<u64>,
        q: &DeliveryQuery,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<u64> {
        let mut p = vec![
            SqlValue::Text(project.to_owned()),
            SqlValue::Integer(now),
            SqlValue::Integer(now.saturating_add(max_age_ms as i64)),
        ];
        let q = DeliveryQuery { state: Some(DeliveryState::Dead), ..q.clone() };
        let mut filter = query_filter(&q, &mut p);
        if let Some(id) = id {
            p.push(SqlValue::Integer(id as i64));
            filter += &format!(" AND id = ?{}", p.len());
        }
        // Attempts start again; the old ones stay recorded (numbered on from the last).
        let sql = format!(
            "UPDATE trigger_deliveries SET state = 'pending', max_attempts = attempts + \
             max_attempts, next_at = ?2, expires_at = ?3, leased_until = 0, updated_at = ?2 \
             WHERE project = ?1 {filter}"
        );
        self.write("replaying dead letters", |tx| {
            Ok(tx.execute(&sql, params_from_iter(p)).context("replaying dead letters")? as u64)
        })
    }

    fn purge(&self, project: &str, id: Option<u64>, q: &DeliveryQuery) -> Result<u64> {
        let mut p = vec![SqlValue::Text(project.to_owned())];
        let q = DeliveryQuery { state: Some(DeliveryState::Dead), ..q.clone() };
        let mut filter = query_filter(&q, &mut p);
        if let Some(id) = id {
            p.push(SqlValue::Integer(id as i64));
            filter += &format!(" AND id = ?{}", p.len());
        }
        let sql = format!("DELETE FROM trigger_deliveries WHERE project = ?1 {filter}");
        self.write("purging dead letters", |tx| {
            Ok(tx.execute(&sql, params_from_iter(p)).context("purging dead letters")? as u64)
        })
    }

    fn subscription_stats(&self, project: Option<&str>) -> Result<Vec<SubscriptionStats>> {
        // A row per subscription with deliveries pending or dead, kept by SQLite triggers in
        // each change's transaction (migration 16); the oldest pending event from a partial
        // index. So a call costs a row per subscription, not a scan of the backlog.
        let sql = format!(
            "SELECT s.project, s.function, s.trigger, s.pending, s.dead, \
             (SELECT min(d.event_time) FROM trigger_deliveries d \
              WHERE d.project = s.project AND d.function = s.function \
              AND d.trigger = s.trigger AND d.state = 'pending'), \
             s.retrying \
             FROM trigger_delivery_stats s WHERE (s.pending > 0 OR s.dead > 0) {} \
             ORDER BY s.project, s.function, s.trigger",
            if project.is_some() { "AND s.project = ?1" } else { "" }
        );
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).context("preparing delivery stats")?;
            let map = |r: &Row<'_>| {
                Ok(SubscriptionStats {
                    project: r.get(0)?,
                    function: r.get(1)?,
                    trigger: r.get(2)?,
                    pending: r.get::<_, i64>(3)? as u64,
                    dead: r.get::<_, i64>(4)? as u64,
                    oldest_pending_at: r.get(5)?,
                    retrying: r.get::<_, i64>(6)? as u64,
                })
            };
            match project {
                Some(p) => stmt.query_map([p], map).and_then(|rows| rows.collect()),
                None => stmt.query_map([], map).and_then(|rows| rows.collect()),
            }
            .context("reading delivery stats")
        })
    }

    fn prune_deliveries(
        &self,
        delivered_before: UnixMillis,
        dead_before: UnixMillis,
    ) -> Result<u64> {
        // Indexed (`trigger_deliveries_age`), a step at a time: ten minutes of a busy node's
        // deliveries (and their attempts, by cascade) would hold the writer for seconds.
        let (step, mut removed) = (PRUNE_STEP, 0);
        for (state, before) in [("delivered", delivered_before), ("dead", dead_before)] {
            removed += self.delete_in_steps(
                "pruning deliveries",
                "trigger_deliveries",
                "id",
                "state = ?1 AND updated_at < ?2",
                step,
                &[&state, &before],
            )?;
        }
        Ok(removed)
    }

    fn delete_function_deliveries(&self, project: &str, function: &str) -> Result<u64> {
        self.write("dropping a function's deliveries", |tx| {
            Ok(tx
                .execute(
                    "DELETE FROM trigger_deliveries WHERE project = ?1 AND function = ?2",
                    params![project, function],
                )
                .context("dropping a function's deliveries")? as u64)
        })
    }

    fn delete_project_triggers(&self, project: &str) -> Result<()> {
        self.write("deleting a project's deliveries", |tx| {
            for table in
                ["trigger_deliveries", "trigger_schedules", "async_invocations", "idempotency_keys"]
            {
                tx.execute(&format!("DELETE FROM {table} WHERE project = ?1"), [project])
                    .with_context(|| format!("deleting the project's {table}"))?;
            }
            Ok(())
        })
    }
}

impl ScheduleStore for SqliteStore {
    fn last_tick(
        &self,
        project: &str,
        function: &str,
        trigger: &str,
    ) -> Result<Option<UnixMillis>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT last_tick FROM trigger_schedules \
                 WHERE project = ?1 AND function = ?2 AND trigger = ?3",
            )
            .and_then(|mut s| s.query_row(params![project, function, trigger], |r| r.get(0)))
            .optional()
            .context("reading a schedule's last tick")
        })
    }

    fn fire_tick(
        &self,
        project: &str,
        function: &str,
        trigger: &str,
        tick: UnixMillis,
        events: &[NewEvent],
    ) -> Result<bool> {
        let positions = self.write("firing a schedule", |tx| {
            // Compare-and-set: only a tick later than the last fired one goes through.
            let n = tx
                .prepare_cached(
                    "INSERT INTO trigger_schedules (project, function, trigger, last_tick) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (project, function, trigger) \
                     DO UPDATE SET last_tick = excluded.last_tick \
                     WHERE trigger_schedules.last_tick < excluded.last_tick",
                )
                .and_then(|mut s| s.execute(params![project, function, trigger, tick]))
                .context("recording a tick")?;
            if n == 0 {
                return Ok(None);
            }
            append_in(tx, events).map(Some)
        })?;
        match positions {
            Some(p) => {
                if let Some(last) = p.last() {
                    self.events_committed(*last);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Look up an idempotency key; if it is new (or older than the window), claim it with `result`.
fn claim_key(
    tx: &Connection,
    project: &str,
    idem: &Idempotency<'_>,
    result: &serde_json::Value,
) -> Result<Option<serde_json::Value>> {
    let found: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT result, created_at FROM idempotency_keys \
             WHERE project = ?1 AND scope = ?2 AND key = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![project, idem.scope, idem.key], |r| Ok((r.get(0)?, r.get(1)?)))
        })
        .optional()
        .context("looking up an idempotency key")?;
    if let Some((first, at)) = found
        && at >= idem.since
    {
        return Ok(Some(serde_json::from_str(&first).context("decoding a stored result")?));
    }
    let text = serde_json::to_string(result).context("encoding a result")?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys (project, scope, key, result, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![project, idem.scope, idem.key, text, now_millis()]))
    .context("storing an idempotency key")?;
    Ok(None)
}

impl SqliteStore {
    /// Run `write` unless `idem`'s key was used within its window; append `events` with it.
    fn once(
        &self,
        project: &str,
        events: &[NewEvent],
        idem: Option<Idempotency<'_>>,
        result: &serde_json::Value,
        write: impl FnOnce(&Connection) -> Result<()>,
    ) -> Result<Once> {
        let out = self.write("appending with an idempotency key", |tx| {
            if let Some(idem) = &idem
                && let Some(first) = claim_key(tx, project, idem, result)?
            {
                return Ok(Once::Repeat(first));
            }
            write(tx)?;
            append_in(tx, events).map(Once::First)
        })?;
        if let Once::First(p) = &out
            && let Some(last) = p.last()
        {
            self.events_committed(*last);
        }
        Ok(out)
    }
}

const ASYNC_COLUMNS: &str = "id, project, function, status, method, path, headers, body, \
    callback_url, created_at, completed_at, attempts, invocation_id, response_status, \
    response_headers, response_body, response_truncated, error, callback_status, \
    callback_attempts, callback_error";

fn async_row(r: &Row<'_>) -> rusqlite::Result<AsyncInvocation> {
    Ok(AsyncInvocation {
        id: r.get(0)?,
        project: r.get(1)?,
        function: r.get(2)?,
        status: r.get(3)?,
        method: r.get(4)?,
        path: r.get(5)?,
        headers: json_column(r, 6)?,
        body: r.get(7)?,
        callback_url: r.get(8)?,
        created_at: r.get(9)?,
        completed_at: r.get(10)?,
        attempts: r.get(11)?,
        invocation_id: r.get(12)?,
        response_status: r.get(13)?,
        response_headers: json_column(r, 14)?,
        response_body: r.get(15)?,
        response_truncated: r.get(16)?,
        error: r.get(17)?,
        callback: CallbackState { status: r.get(18)?, attempts: r.get(19)?, error: r.get(20)? },
    })
}

impl ProducerStore for SqliteStore {
    fn append_once(
        &self,
        events: &[NewEvent],
        idem: Option<Idempotency<'_>>,
        result: &serde_json::Value,
    ) -> Result<Once> {
        let project = events.first().map(|e| e.project.clone()).unwrap_or_default();
        self.once(&project, events, idem, result, |_| Ok(()))
    }

    fn create_async(
        &self,
        inv: &AsyncInvocation,
        event: &NewEvent,
        idem: Option<Idempotency<'_>>,
        result: &serde_json::Value,
    ) -> Result<Once> {
        let headers = serde_json::to_string(&inv.headers).context("encoding headers")?;
        self.once(&inv.project, std::slice::from_ref(event), idem, result, |tx| {
            tx.prepare_cached(
                "INSERT INTO async_invocations (id, project, function, status, method, path, \
                 headers, body, callback_url, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    inv.id,
                    inv.project,
                    inv.function,
                    inv.status,
                    inv.method,
                    inv.path,
                    headers,
                    inv.body,
                    inv.callback_url,
                    inv.created_at
                ])
            })
            .context("storing an asynchronous invocation")?;
            Ok(())
        })
    }

    fn get_async(&self, project: &str, id: &str) -> Result<Option<AsyncInvocation>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {ASYNC_COLUMNS} FROM async_invocations WHERE project = ?1 AND id = ?2"
            ))
            .and_then(|mut s| s.query_row(params![project, id], async_row))
            .optional()
            .context("reading an asynchronous invocation")
        })
    }

    fn update_async(&self, project: &str, id: &str, u: &AsyncResult) -> Result<()> {
        let headers = serde_json::to_string(&u.response_headers).context("encoding headers")?;
        self.write("updating an asynchronous invocation", |tx| {
            tx.prepare_cached(
                "UPDATE async_invocations SET status = ?3, attempts = ?4, invocation_id = ?5, \
                 response_status = ?6, response_headers = ?7, response_body = ?8, \
                 response_truncated = ?9, error = ?10, completed_at = ?11, \
                 callback_status = CASE WHEN ?11 IS NOT NULL AND callback_url IS NOT NULL \
                     THEN 'pending' ELSE callback_status END, \
                 callback_next_at = CASE WHEN ?11 IS NOT NULL AND callback_url IS NOT NULL \
                     THEN ?11 ELSE callback_next_at END \
                 WHERE project = ?1 AND id = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    project,
                    id,
                    u.status,
                    u.attempts,
                    u.invocation_id,
                    u.response_status,
                    headers,
                    u.response_body,
                    u.response_truncated,
                    u.error,
                    u.completed_at
                ])
            })
            .context("updating an asynchronous invocation")?;
            Ok(())
        })
    }

    fn claim_callbacks(
        &self,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: u32,
    ) -> Result<Vec<AsyncInvocation>> {
        self.write("claiming callbacks", |tx| {
            let claimed = tx
                .prepare_cached(&format!(
                    "UPDATE async_invocations SET callback_attempts = callback_attempts + 1, \
                     callback_next_at = ?2 \
                     WHERE id IN (SELECT id FROM async_invocations \
                         WHERE callback_status = 'pending' AND callback_next_at <= ?1 \
                         ORDER BY callback_next_at LIMIT ?3) \
                     RETURNING {ASYNC_COLUMNS}"
                ))
                .and_then(|mut s| {
                    s.query_map(params![now, lease_until, limit], async_row)?.collect()
                })
                .context("claiming callbacks")?;
            Ok(claimed)
        })
    }

    fn finish_callback(&self, project: &str, id: &str, outcome: &CallbackOutcome) -> Result<()> {
        let (status, next_at, error) = match outcome {
            CallbackOutcome::Delivered => ("delivered", None, None),
            CallbackOutcome::RetryAt { at, error } => ("pending", Some(*at), Some(error.as_str())),
            CallbackOutcome::Failed { error } => ("failed", None, Some(error.as_str())),
        };
        self.write("recording a callback", |tx| {
            tx.prepare_cached(
                "UPDATE async_invocations SET callback_status = ?3, callback_next_at = ?4, \
                 callback_error = ?5 \
                 WHERE project = ?1 AND id = ?2 AND callback_status = 'pending'",
            )
            .and_then(|mut s| s.execute(params![project, id, status, next_at, error]))
            .context("recording a callback")?;
            Ok(())
        })
    }

    fn release_callbacks(&self, callbacks: &[(String, String)], at: UnixMillis) -> Result<()> {
        if callbacks.is_empty() {
            return Ok(());
        }
        self.write("releasing callbacks", |tx| {
            let mut release = tx
                .prepare_cached(
                    "UPDATE async_invocations SET callback_next_at = ?3, \
                     callback_attempts = max(callback_attempts - 1, 0) \
                     WHERE project = ?1 AND id = ?2 AND callback_status = 'pending'",
                )
                .context("preparing the callback release")?;
            for (project, id) in callbacks {
                release.execute(params![project, id, at]).context("releasing a callback")?;
            }
            Ok(())
        })
    }

    fn next_callback_due(&self) -> Result<Option<UnixMillis>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT min(callback_next_at) FROM async_invocations \
                 WHERE callback_status = 'pending'",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .context("reading the next callback")
        })
    }

    fn prune_async(&self, before: UnixMillis, keys_before: UnixMillis) -> Result<u64> {
        let step = PRUNE_STEP;
        let a = self.delete_in_steps(
            "pruning asynchronous invocations",
            "async_invocations",
            "id",
            "completed_at IS NOT NULL AND completed_at < ?1 AND callback_status IS NOT 'pending'",
            step,
            &[&before],
        )?;
        let k = self.delete_in_steps(
            "pruning idempotency keys",
            "idempotency_keys",
            "project, scope, key",
            "created_at < ?1",
            step,
            &[&keys_before],
        )?;
        Ok(a + k)
    }
}

/// One attempt's outcome, in the caller's transaction (see `DeliveryStore::finish`).
fn finish_in(
    tx: &rusqlite::Transaction<'_>,
    id: u64,
    a: &Attempt,
    next: AfterAttempt,
) -> Result<bool> {
    let now = now_millis();
    let (state, next_at) = match next {
        AfterAttempt::Delivered => ("delivered", now),
        AfterAttempt::RetryAt(at) => ("pending", at),
        AfterAttempt::Dead => ("dead", now),
    };
    let n = tx
        .prepare_cached(
            "UPDATE trigger_deliveries SET state = ?2, next_at = ?3, leased_until = 0, \
             updated_at = ?4, last_error = ?5, last_invocation = ?6 \
             WHERE id = ?1 AND state = 'pending'",
        )
        .and_then(|mut s| {
            s.execute(params![id as i64, state, next_at, now, a.error, a.invocation_id])
        })
        .context("updating a delivery")?;
    if n == 0 {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT OR REPLACE INTO trigger_attempts (delivery, attempt, invocation_id, \
         started_at, duration_ms, http_status, ok, error) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id as i64,
            a.attempt,
            a.invocation_id,
            a.started_at,
            a.duration_ms as i64,
            a.http_status,
            a.ok,
            a.error
        ])
    })
    .context("recording an attempt")?;
    Ok(true)
}
