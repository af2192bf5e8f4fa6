//! The event log on SQLite: `event_log` (position = AUTOINCREMENT rowid, assigned inside the
//! writing transaction by the single writer, hence commit-ordered), `event_consumers` (one durable
//! cursor per consumer) and `event_log_state` (how far pruning went).

use nimbus_model::{UnixMillis, now_millis};
use nimbus_store::Result;
use nimbus_store::events::{Event, EventLog, LogBounds, NewEvent};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Context;
use crate::sqlite::SqliteStore;

/// Events one pruning step deletes (one write transaction; events are small rows).
const PRUNE_STEP: usize = 2048;

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
        // Past every consumer's cursor, and older than the retention window. Positions grow
        // with time, so this is a prefix of the log, found on a reader (the writer is not held
        // while the prefix is looked through): it ends before the first event at or after
        // `before`, and at the slowest cursor.
        let through: Option<i64> = self.read(|conn| {
            let min_cursor: Option<i64> = conn
                .query_row("SELECT min(position) FROM event_consumers", [], |r| r.get(0))
                .context("reading consumer cursors")?;
            let first_kept: Option<i64> = conn
                .prepare_cached(
                    "SELECT position FROM event_log WHERE time >= ?1 ORDER BY position LIMIT 1",
                )
                .and_then(|mut stmt| stmt.query_row([before], |r| r.get(0)).optional())
                .context("finding the prune boundary")?;
            let limit = min_cursor.unwrap_or(i64::MAX).min(first_kept.map_or(i64::MAX, |p| p - 1));
            conn.query_row(
                "SELECT max(position) FROM event_log WHERE position <= ?1",
                [limit],
                |r| r.get(0),
            )
            .context("finding the prune boundary")
        })?;
        let Some(through) = through else { return Ok(0) };
        // Deleted a step at a time, each its own transaction that hands the writer on, so the
        // writes that append events (and the recorder) are not held up for the whole prefix.
        // `pruned_through` moves with each step, so it is exact after every commit.
        self.in_steps("pruning the event log", PRUNE_STEP, |tx| {
            let positions = tx
                .prepare_cached(&format!(
                    "DELETE FROM event_log WHERE position IN (SELECT position FROM event_log \
                     WHERE position <= ?1 ORDER BY position LIMIT {PRUNE_STEP}) \
                     RETURNING position"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map([through], |r| r.get::<_, i64>(0))?
                        .collect::<rusqlite::Result<Vec<i64>>>()
                })
                .context("pruning events")?;
            if let Some(last) = positions.iter().max() {
                tx.execute(
                    "UPDATE event_log_state SET pruned_through = max(pruned_through, ?1)",
                    [last],
                )
                .context("recording the prune boundary")?;
            }
            Ok((positions.len(), positions.len() as u64))
        })
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.event_watch().subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn event() -> NewEvent {
        NewEvent {
            project: "p".into(),
            kind: "dev.nimbus.test.tick".into(),
            source: "/t".into(),
            subject: "s".into(),
            data: serde_json::json!({"n": 1}),
        }
    }

    /// Events with the given times, at positions 1, 2, ...
    fn at_times(store: &SqliteStore, times: &[i64]) {
        store
            .write("test events", |tx| {
                for t in times {
                    tx.execute(
                        "INSERT INTO event_log (id, project, type, source, subject, time, data) \
                         VALUES ('x', 'p', 't', '/t', 's', ?1, 'null')",
                        [t],
                    )
                    .unwrap();
                }
                Ok(())
            })
            .unwrap();
    }

    /// What goes is the prefix before the first event inside the window, up to the slowest
    /// cursor, and `pruned_through` says exactly where it ended.
    #[test]
    fn prune_takes_the_prefix_before_the_window_and_the_slowest_cursor() {
        let store = SqliteStore::open_in_memory().unwrap();
        at_times(&store, &[100, 200, 300, 400, 500, 600, 700, 2000, 900, 1000]);
        assert_eq!(store.prune(550).unwrap(), 5);
        assert_eq!(store.bounds().unwrap().pruned_through, 5);
        store.set_cursor("slow", 6).unwrap();
        assert_eq!(store.prune(10_000).unwrap(), 1);
        assert_eq!(store.bounds().unwrap().pruned_through, 6);
        store.delete_cursor("slow").unwrap();
        // Position 9 is older than 1000 but comes after 8, which is not: the log is cut at 8.
        assert_eq!(store.prune(1_000).unwrap(), 1);
        assert_eq!(store.bounds().unwrap().pruned_through, 7);
        assert_eq!(store.prune(1_000).unwrap(), 0);
        assert_eq!(EventLog::read(&store, 0, None, 10).unwrap().len(), 3);
    }

    /// A deleted project's events go in steps, other projects' appends getting in between,
    /// and only its own.
    #[test]
    fn a_deleted_projects_events_go_in_steps() {
        use nimbus_store::auth::AuthStore;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("e.db")).unwrap());
        let n = 8 * crate::auth::EVENT_DELETE_STEP + 5;
        let batch: Vec<NewEvent> = (0..1000).map(|_| event()).collect();
        for _ in 0..n / 1000 {
            store.append(&batch).unwrap();
        }
        store.append(&batch[..n % 1000]).unwrap();
        let other = || NewEvent { project: "q".into(), ..event() };
        store.append(&[other()]).unwrap();
        let writer = store.clone();
        let (_, inside, writes) = crate::stepping_tests::writes_beside(
            move |_| {
                writer.append(&[other()]).unwrap();
            },
            || store.delete_project("p").unwrap(),
        );
        // One statement lets none in; a busy machine may not schedule the writer at every step.
        assert!(inside >= 1, "{inside} appends began and ended during the deletion");
        let left = EventLog::read(&*store, 0, None, 100_000).unwrap();
        assert_eq!(left.len(), 1 + writes);
        assert!(left.iter().all(|e| e.project == "q"));
    }

    /// While a long prune runs, appends get the writer between its steps (one transaction used
    /// to hold them all back), and none of what they append is pruned.
    #[test]
    fn appends_get_in_while_a_long_prune_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("e.db")).unwrap());
        let batch: Vec<NewEvent> = (0..1000).map(|_| event()).collect();
        for _ in 0..100 {
            store.append(&batch).unwrap();
        }
        let writer = store.clone();
        let (removed, inside, writes) = crate::stepping_tests::writes_beside(
            move |_| {
                writer.append(&[event()]).unwrap();
            },
            || store.prune(now_millis() + 3_600_000).unwrap(),
        );
        // 100,000 events are 49 steps. One transaction lets none in; a machine busy with other
        // work may not schedule the writer at every step.
        assert!(inside >= 1, "{inside} appends began and ended during the prune");
        // What went is a prefix (the 100,000 and what the writer appended before the boundary
        // was read), and everything after it is still there.
        assert!(removed >= 100_000, "{removed}");
        assert_eq!(store.bounds().unwrap().pruned_through, removed);
        let left = EventLog::read(&*store, 0, None, 1_000_000).unwrap();
        assert_eq!(left.len() as u64, 100_000 + writes as u64 - removed);
        assert_eq!(left.first().map(|e| e.position), Some(removed + 1));
    }
}
