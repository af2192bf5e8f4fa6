//! The event log on SQLite: `event_log` (position = AUTOINCREMENT rowid, assigned inside the
//! writing transaction by the single writer, hence commit-ordered), `event_consumers` (one durable
//! cursor per consumer) and `event_log_state` (how far pruning went).

use nimbus_model::{UnixMillis, now_millis};
use nimbus_store::Result;
use nimbus_store::events::{Event, EventLog, LogBounds, NewEvent};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Context;
use crate::sqlite::SqliteStore;

/// Append `events` inside the caller's transaction. Returns their positions. The caller notifies
/// consumers after its commit ([`SqliteStore::events_committed`]).
/// Append `events` on `tx`: a connection inside a transaction (or a savepoint of one).
pub(crate) fn append_in(tx: &Connection, events: &[NewEvent]) -> Result<Vec<u64>> {
    append_with_ids(tx, events, &[])
}

/// [`append_in`], keeping the ids that producers gave their events (`ids[i]` for `events[i]`;
/// a fresh UUIDv7 for the rest).
pub(crate) fn append_with_ids(
    tx: &Connection,
    events: &[NewEvent],
    ids: &[String],
) -> Result<Vec<u64>> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO event_log (id, project, type, source, subject, time, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .context("preparing the event insert")?;
    let now = now_millis();
    let mut positions = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let data = serde_json::to_string(&e.data).context("encoding event data")?;
        let id = ids.get(i).cloned().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        stmt.execute(params![id, e.project, e.kind, e.source, e.subject, now, data])
            .with_context(|| format!("appending event {}", e.kind))?;
        positions.push(tx.last_insert_rowid() as u64);
    }
    Ok(positions)
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        position: row.get::<_, i64>(0)? as u64,
        id: row.get(1)?,
        project: row.get(2)?,
        kind: row.get(3)?,
        source: row.get(4)?,
        subject: row.get(5)?,
        time: row.get(6)?,
        data: crate::sqlite::json_column(row, 7)?,
    })
}

const EVENT_COLUMNS: &str = "position, id, project, type, source, subject, time, data";

pub(crate) fn last_position(conn: &rusqlite::Connection) -> Result<u64> {
    // sqlite_sequence keeps the highest position ever assigned, also once those rows are pruned.
    let seq: Option<i64> = conn
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'event_log'", [], |r| r.get(0))
        .optional()
        .context("reading the event log's last position")?;
    Ok(seq.unwrap_or(0) as u64)
}

impl EventLog for SqliteStore {
    fn append(&self, events: &[NewEvent]) -> Result<Vec<u64>> {
        let positions = self.write("appending events", |tx| append_in(tx, events))?;
        if let Some(last) = positions.last() {
            self.events_committed(*last);
        }
        Ok(positions)
    }

    fn read(&self, after: u64, project: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        self.read(|conn| {
            let rows = match project {
                Some(p) => conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM event_log \
                         WHERE project = ?1 AND position > ?2 ORDER BY position LIMIT ?3"
                    ))
                    .and_then(|mut s| {
                        s.query_map(params![p, after as i64, limit], event_from_row)?.collect()
                    }),
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM event_log \
                         WHERE position > ?1 ORDER BY position LIMIT ?2"
                    ))
                    .and_then(|mut s| {
                        s.query_map(params![after as i64, limit], event_from_row)?.collect()
                    }),
            };
            rows.context("reading the event log")
        })
    }

    fn bounds(&self) -> Result<LogBounds> {
        self.read(|conn| {
            let tx = conn.unchecked_transaction().context("reading event log bounds")?;
            let last = last_position(&tx)?;
            let pruned: i64 = tx
                .query_row("SELECT pruned_through FROM event_log_state", [], |r| r.get(0))
                .context("reading event log bounds")?;
            Ok(LogBounds { last, pruned_through: pruned as u64 })
        })
    }

    fn cursor(&self, consumer: &str) -> Result<Option<u64>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT position FROM event_consumers WHERE name = ?1")
                .and_then(|mut s| s.query_row([consumer], |r| r.get::<_, i64>(0)).optional())
                .map(|p| p.map(|p| p as u64))
                .with_context(|| format!("reading the cursor of {consumer}"))
        })
    }

    fn set_cursor(&self, consumer: &str, position: u64) -> Result<()> {
        self.write("storing a consumer cursor", |tx| {
            tx.prepare_cached(
                "INSERT INTO event_consumers (name, position, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
                 updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![consumer, position as i64, now_millis()]))
            .with_context(|| format!("storing the cursor of {consumer}"))?;
            Ok(())
        })
    }

    fn delete_cursor(&self, consumer: &str) -> Result<bool> {
        self.write("deleting a consumer cursor", |tx| {
            let n = tx
                .execute("DELETE FROM event_consumers WHERE name = ?1", [consumer])
                .context("deleting a consumer cursor")?;
            Ok(n > 0)
        })
    }

    fn cursors(&self) -> Result<Vec<(String, u64)>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT name, position FROM event_consumers ORDER BY name")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect()
                })
                .context("listing consumer cursors")
        })
    }

    fn prune(&self, before: UnixMillis) -> Result<u64> {
        self.write("pruning the event log", |tx| {
            // Past every consumer's cursor, and older than the retention window. Positions grow
            // with time, so this is a prefix of the log: `pruned_through` stays exact.
            let min_cursor: Option<i64> = tx
                .query_row("SELECT min(position) FROM event_consumers", [], |r| r.get(0))
                .context("reading consumer cursors")?;
            let through: Option<i64> = tx
                .query_row(
                    "SELECT max(position) FROM event_log WHERE position <= ?1 AND time < ?2",
                    params![min_cursor.unwrap_or(i64::MAX), before],
                    |r| r.get(0),
                )
                .context("finding the prune boundary")?;
            let Some(through) = through else { return Ok(0) };
            let n = tx
                .execute("DELETE FROM event_log WHERE position <= ?1", [through])
                .context("pruning events")?;
            tx.execute(
                "UPDATE event_log_state SET pruned_through = max(pruned_through, ?1)",
                [through],
            )
            .context("recording the prune boundary")?;
            Ok(n as u64)
        })
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.event_watch().subscribe()
    }
}
