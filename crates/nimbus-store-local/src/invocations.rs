//! [`InvocationStore`] on SQLite: records stored in segments (migration 15).
//!
//! A record is written for every request, so its cost is paid on every request. A row per record
//! with the three access paths the API needs (by project, by function, by id) cost about 33,000
//! instructions per request (`bench/instructions.sh`), a fifth of the whole request; each B-tree
//! entry is ~7,500 of them. So the records of a batch are grouped into **segments**, one per
//! (project, function, minute of `started_at`), and a segment is one row: its records, encoded
//! together (see [`segment`] for the formats), and the bounds that the indexes need. The B-tree
//! work is paid per segment, and under load a segment holds a whole batch of one function's
//! records.
//!
//! - Positions: a segment's records have consecutive positions, in their batch order; `seq_end`,
//!   the last, is the rowid, so segments are appended in position order and never overlap.
//! - By project or function: the indexes end with the rowid, so they list segments in position
//!   order; the records are filtered after decoding (as a row per record was filtered after its
//!   index lookup).
//! - By id: Nimbus's ids are UUIDv7 made with the record's `started_at`, and a segment spans at
//!   most one minute of start times, so only segments near the id's time are looked at, and of
//!   those only the ones whose body contains the id (its text, or its 16 bytes) are decoded.
//!   Other ids (never made by Nimbus) scan the project's segments.
//! - Pruning keeps its exact contract: a segment partly due is rewritten with what remains.

use nimbus_model::usage::{UsageCounters, hour_of, month_of};
use nimbus_model::{InvocationQuery, InvocationRecord, UnixMillis, invocation_id_millis};
use nimbus_store::{InvocationStore, Result};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Context;
use crate::sqlite::SqliteStore;

mod prune;
mod segment;
pub(crate) use prune::PruneMark;
use segment::{FORMAT_JSON_V1, FORMAT_POSTCARD_V2};

/// Query limit when none is asked for, and the most one query returns.
const DEFAULT_QUERY_LIMIT: u32 = 100;
const MAX_QUERY_LIMIT: u32 = 1000;

/// A segment spans start times within one minute: what bounds a lookup by id.
const SEGMENT_SPAN_MS: i64 = 60_000;
/// How far a record's `started_at` may be from its id's time: records of builds before segments
/// read the clock twice.
const ID_TIME_SLACK_MS: i64 = 1_000;

fn minute_of(t: UnixMillis) -> i64 {
    t.div_euclid(SEGMENT_SPAN_MS)
}

/// The columns [`segment_from_row`] reads. The records are in `body` (text) in format 1 and in
/// `data` (a blob) since (migration 18).
const SEGMENT_COLUMNS: &str = "project, function, format, coalesce(data, body)";

/// A segment row as [`SEGMENT_COLUMNS`] reads it, not yet decoded.
type SegmentRow = segment::Body;

fn segment_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SegmentRow> {
    let bytes = match row.get_ref(3)? {
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                3,
                other.data_type(),
                "an invocation segment's body is text or a blob".into(),
            ));
        }
    };
    Ok(segment::Body { project: row.get(0)?, function: row.get(1)?, format: row.get(2)?, bytes })
}

/// A segment's records, oldest first.
fn load(row: SegmentRow) -> Result<Vec<InvocationRecord>> {
    segment::decode(&row)
}

/// Write `records[which]` as new records: positions, segments, usage and quota events.
/// Returns the position of the last event written, if any.
fn insert_new(
    tx: &Connection,
    records: &mut [InvocationRecord],
    which: &[usize],
) -> Result<Option<u64>> {
    if which.is_empty() {
        return Ok(None);
    }
    // Segments in order of first appearance, each with its records in batch order.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    // A key hashed per record on the recorder's thread: foldhash (randomly seeded), not SipHash.
    // A batch holds at most 2,048 records, which bounds what colliding names could cost.
    let mut by_key: foldhash::HashMap<(&str, &str, i64), usize> = Default::default();
    for &i in which {
        let r = &records[i];
        let key = (r.project.as_str(), r.function.as_str(), minute_of(r.started_at));
        let g = *by_key.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    drop(by_key);

    // Positions for the whole batch, reserved under the write lock: one counter update per
    // transaction.
    let n = which.len() as u64;
    let last: u64 = tx
        .prepare_cached(
            "UPDATE sequences SET value = value + ?1 WHERE name = 'invocations' RETURNING value",
        )
        .and_then(|mut stmt| stmt.query_row([n], |row| row.get(0)))
        .context("reserving invocation positions")?;
    let mut next = last - n + 1;
    for group in &groups {
        for &i in group {
            records[i].seq = next;
            next += 1;
        }
    }

    let mut insert = tx
        .prepare_cached(
            "INSERT INTO invocation_segments (seq_end, seq_start, project, function, \
             min_started_at, max_started_at, len, format, body, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '', ?9)",
        )
        .context("preparing the segment insert")?;
    let mut body = Vec::with_capacity(4096);
    let mut usage: foldhash::HashMap<(&str, i64, &str), UsageCounters> = Default::default();
    for group in &groups {
        let first = &records[group[0]];
        let (mut min, mut max) = (first.started_at, first.started_at);
        let mut counted: Option<UsageCounters> = None;
        for &i in group {
            let r = &records[i];
            min = min.min(r.started_at);
            max = max.max(r.started_at);
            if let Some(c) = UsageCounters::of(r) {
                counted.get_or_insert_default().add(&c);
            }
        }
        segment::encode(group.iter().map(|&i| &records[i]), &mut body);
        let seq_start = first.seq;
        let seq_end = records[*group.last().expect("groups are not empty")].seq;
        insert
            .execute(params![
                seq_end,
                seq_start,
                first.project,
                first.function,
                min,
                max,
                group.len(),
                FORMAT_POSTCARD_V2,
                body
            ])
            .with_context(|| format!("inserting the invocation records of {}", first.function))?;
        if let Some(c) = counted {
            // One segment is one minute, so one hour.
            usage
                .entry((first.project.as_str(), hour_of(first.started_at), first.function.as_str()))
                .or_default()
                .add(&c);
        }
    }
    for ((project, hour, function), c) in &usage {
        crate::usage::add_hourly(tx, project, *hour, function, c)?;
    }
    let mut months: Vec<(&str, i64)> =
        usage.keys().map(|(p, hour, _)| (*p, month_of(*hour))).collect();
    months.sort_unstable();
    months.dedup();
    let mut last_event = None;
    for (project, month) in months {
        if let Some(p) = crate::usage::thresholds_crossed(tx, project, month)? {
            last_event = Some(p);
        }
    }
    Ok(last_event)
}

/// Find a record by id (see the module doc for which segments are looked at).
fn find(conn: &Connection, project: &str, id: &str) -> Result<Option<InvocationRecord>> {
    let ctx = || format!("reading invocation record {id}");
    // `instr` skips, without decoding, the segments that cannot hold the id: ?2 is what the id
    // looks like in a JSON body, ?3 in a postcard one (in `data`).
    let needle_v2 = segment::id_needle_v2(id);
    let segments = |sql: &str, more: &[&dyn rusqlite::ToSql]| {
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&project, &id, &needle_v2];
        args.extend_from_slice(more);
        conn.prepare_cached(&format!(
            "SELECT {SEGMENT_COLUMNS} FROM invocation_segments WHERE project = ?1 AND {sql} \
             AND CASE format WHEN {FORMAT_JSON_V1} THEN instr(body, ?2) \
             ELSE instr(data, ?3) END > 0"
        ))
        .and_then(|mut stmt| {
            stmt.query_map(&args[..], segment_from_row)?.collect::<rusqlite::Result<Vec<_>>>()
        })
        .with_context(ctx)
    };
    let Some(t) = invocation_id_millis(id) else {
        // Not an id Nimbus made.
        return find_in(segments("1", &[])?, id);
    };
    let (lo, hi) = (t - ID_TIME_SLACK_MS, t + ID_TIME_SLACK_MS);
    let near = segments(
        "min_started_at BETWEEN ?4 AND ?5 AND max_started_at >= ?6",
        &[&(minute_of(lo) * SEGMENT_SPAN_MS), &hi, &lo],
    )?;
    if let Some(r) = find_in(near, id)? {
        return Ok(Some(r));
    }
    // Records of builds before segments, whose start was read apart from their id's time. Only
    // those, so a lookup of an unknown id stays bounded; pruning makes them fewer.
    let legacy = conn
        .prepare_cached("SELECT value FROM sequences WHERE name = 'invocations_before_segments'")
        .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)).optional())
        .with_context(ctx)?
        .unwrap_or(0);
    if legacy == 0 {
        return Ok(None);
    }
    find_in(segments("seq_end <= ?4", &[&legacy])?, id)
}

fn find_in(rows: Vec<SegmentRow>, id: &str) -> Result<Option<InvocationRecord>> {
    for row in rows {
        if let Some(r) = load(row)?.into_iter().find(|r| r.id == id) {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

fn matches(r: &InvocationRecord, q: &InvocationQuery) -> bool {
    q.after.is_none_or(|after| r.seq > after)
        && q.status.is_none_or(|s| r.status == s)
        && q.method.as_ref().is_none_or(|m| r.method == *m)
        // A prefix, not a pattern: `%` and `_` in a path are not wildcards.
        && q.path_prefix.as_ref().is_none_or(|p| r.path.starts_with(p.as_str()))
}

/// Replace a segment's records with `keep` (not empty), or drop the segment if it is empty.
fn rewrite(tx: &Connection, seq_end: i64, keep: &[InvocationRecord]) -> Result<()> {
    let ctx = || format!("rewriting invocation segment {seq_end}");
    if keep.is_empty() {
        tx.prepare_cached("DELETE FROM invocation_segments WHERE seq_end = ?1")
            .and_then(|mut stmt| stmt.execute([seq_end]))
            .with_context(ctx)?;
        return Ok(());
    }
    let mut body = Vec::new();
    segment::encode(keep.iter(), &mut body);
    let min = keep.iter().map(|r| r.started_at).min().unwrap_or_default();
    let max = keep.iter().map(|r| r.started_at).max().unwrap_or_default();
    // `seq_start` and `seq_end` stay: they bound the records' positions, which is all readers
    // need, and `seq_end` is the row's identity.
    tx.prepare_cached(
        "UPDATE invocation_segments SET min_started_at = ?2, max_started_at = ?3, len = ?4, \
         format = ?5, body = '', data = ?6 WHERE seq_end = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![seq_end, min, max, keep.len(), FORMAT_POSTCARD_V2, body])
    })
    .with_context(ctx)?;
    Ok(())
}

/// The records of each segment `sql` selects.
fn read_segments(
    tx: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Vec<InvocationRecord>>> {
    let rows = tx
        .prepare_cached(sql)
        .and_then(|mut stmt| {
            stmt.query_map(args, segment_from_row)?.collect::<rusqlite::Result<Vec<_>>>()
        })
        .context("reading invocation segments")?;
    rows.into_iter().map(load).collect()
}

impl InvocationStore for SqliteStore {
    fn insert_batch(&self, records: &mut [InvocationRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let which: Vec<usize> = (0..records.len()).collect();
        let last_event =
            self.write("inserting invocation records", |tx| insert_new(tx, records, &which))?;
        if let Some(p) = last_event {
            self.events_committed(p);
        }
        Ok(())
    }

    fn retry_batch(&self, records: &mut [InvocationRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let last_event = self.write("inserting invocation records again", |tx| {
            let mut which = Vec::with_capacity(records.len());
            for (i, r) in records.iter_mut().enumerate() {
                match find(tx, &r.project, &r.id)? {
                    // Stored by the attempt whose answer was lost: keep its position.
                    Some(stored) => r.seq = stored.seq,
                    None => which.push(i),
                }
            }
            insert_new(tx, records, &which)
        })?;
        if let Some(p) = last_event {
            self.events_committed(p);
        }
        Ok(())
    }

    fn query(&self, project: &str, query: &InvocationQuery) -> Result<Vec<InvocationRecord>> {
        let limit = query.limit.unwrap_or(DEFAULT_QUERY_LIMIT).min(MAX_QUERY_LIMIT) as usize;
        // The project is always the first condition; the function picks the index.
        let mut sql =
            format!("SELECT {SEGMENT_COLUMNS} FROM invocation_segments WHERE project = ?1");
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&project];
        if let Some(function) = &query.function {
            args.push(function);
            sql.push_str(&format!(" AND function = ?{}", args.len()));
        }
        let after = query.after.map(|a| a.min(i64::MAX as u64) as i64);
        if let Some(after) = &after {
            args.push(after);
            sql.push_str(&format!(" AND seq_end > ?{}", args.len()));
        }
        sql.push_str(if query.ascending {
            " ORDER BY seq_end ASC"
        } else {
            " ORDER BY seq_end DESC"
        });
        self.read(|conn| {
            let ctx = || format!("querying invocation records of project {project}");
            let mut stmt = conn.prepare_cached(&sql).with_context(ctx)?;
            let mut rows = stmt.query(&args[..]).with_context(ctx)?;
            let mut out = Vec::new();
            // Segments are read one at a time, so a query stops as soon as it has its page.
            while out.len() < limit {
                let Some(row) = rows.next().with_context(ctx)? else { break };
                let mut records = load(segment_from_row(row).with_context(ctx)?)?;
                if !query.ascending {
                    records.reverse();
                }
                out.extend(
                    records.into_iter().filter(|r| matches(r, query)).take(limit - out.len()),
                );
            }
            Ok(out)
        })
    }

    fn get(&self, project: &str, id: &str) -> Result<Option<InvocationRecord>> {
        self.read(|conn| find(conn, project, id))
    }

    fn prune(&self, before: UnixMillis, keep_per_function: u32) -> Result<u64> {
        prune::prune(self, before, keep_per_function)
    }

    fn delete_project(&self, project: &str) -> Result<u64> {
        // A step at a time, like pruning: a project's records are not bounded by a storage
        // quota, and deleting a big project must not hold every other project's writes.
        prune::delete_in_steps(self, "project = ?1", &[&project])
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use nimbus_model::InvocationStatus;

    pub(crate) fn record_at(millis: i64, function: &str) -> InvocationRecord {
        let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs as u64, ms as u32 * 1_000_000);
        InvocationRecord {
            seq: 0,
            id: uuid::Uuid::new_v7(ts).to_string(),
            project: "p".into(),
            function: function.into(),
            version: 1,
            trigger: "http".into(),
            method: "GET".into(),
            path: "/".into(),
            started_at: millis,
            duration_us: 1000,
            queue_us: 0,
            fuel: 1,
            peak_memory_bytes: 1,
            memory_limit_mb: 1,
            outbound_bytes: 0,
            status: InvocationStatus::Ok,
            http_status: Some(200),
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            logs_truncated: false,
        }
    }

    fn segments(store: &SqliteStore) -> Vec<(i64, i64, String, i64)> {
        store
            .read(|conn| {
                let mut stmt = conn
                    .prepare("SELECT seq_start, seq_end, function, len FROM invocation_segments")
                    .unwrap();
                Ok(stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect())
            })
            .unwrap()
    }

    /// A batch is one segment per function and minute, and each record is found by its id,
    /// on either side of a minute boundary.
    #[test]
    fn a_batch_is_a_segment_per_function_and_minute() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = 1_700_000_040_000; // a minute boundary
        let mut batch: Vec<_> = [(t - 2, "f"), (t - 1, "g"), (t - 1, "f"), (t, "f"), (t + 5, "g")]
            .into_iter()
            .map(|(at, f)| record_at(at, f))
            .collect();
        store.insert_batch(&mut batch).unwrap();
        assert_eq!(
            segments(&store),
            [
                (1, 2, "f".to_string(), 2),
                (3, 3, "g".to_string(), 1),
                (4, 4, "f".to_string(), 1),
                (5, 5, "g".to_string(), 1),
            ]
        );
        for r in &batch {
            assert_eq!(store.get("p", &r.id).unwrap().as_ref(), Some(r));
            assert!(store.get("q", &r.id).unwrap().is_none());
        }
        // An id of the same time that was never stored.
        assert!(store.get("p", &record_at(t, "f").id).unwrap().is_none());
    }

    /// SQLite's plan for `sql`, its steps joined by "; ".
    pub(crate) fn query_plan(store: &SqliteStore, sql: &str) -> String {
        store
            .read(|conn| {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                Ok(stmt
                    .query_map([], |r| r.get::<_, String>(3))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
                    .join("; "))
            })
            .unwrap()
    }

    /// The listings and the lookup by id use the indexes, in position order, with no sort.
    #[test]
    fn queries_use_the_indexes() {
        let store = SqliteStore::open_in_memory().unwrap();
        let plan = |sql: &str| query_plan(&store, sql);
        let base = format!("SELECT {SEGMENT_COLUMNS} FROM invocation_segments WHERE project = 'p'");
        for (sql, index) in [
            (
                format!("{base} AND seq_end > 5 ORDER BY seq_end DESC"),
                "invocation_segments_project",
            ),
            (format!("{base} ORDER BY seq_end ASC"), "invocation_segments_project"),
            (
                format!("{base} AND function = 'f' AND seq_end > 5 ORDER BY seq_end ASC"),
                "invocation_segments_function",
            ),
            (
                format!("{base} AND min_started_at BETWEEN 1 AND 2 AND max_started_at >= 1"),
                "invocation_segments_started",
            ),
        ] {
            let plan = plan(&sql);
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }

    fn batches(store: &SqliteStore, t: i64, n: usize, per: usize) -> Vec<InvocationRecord> {
        let mut all = Vec::new();
        for b in 0..n {
            let mut batch: Vec<_> =
                (0..per).map(|i| record_at(t + (b * per + i) as i64, "f")).collect();
            store.insert_batch(&mut batch).unwrap();
            all.extend(batch);
        }
        all
    }

    /// Pages cut through segments: `after` in the middle of one, limits that end inside one.
    #[test]
    fn pages_cross_segments() {
        let store = SqliteStore::open_in_memory().unwrap();
        let all = batches(&store, 1_700_000_000_000, 4, 3);
        assert_eq!(segments(&store).len(), 4);
        let seqs = |q: &InvocationQuery| -> Vec<u64> {
            store.query("p", q).unwrap().iter().map(|r| r.seq).collect()
        };
        let all_seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        let q = InvocationQuery {
            after: Some(all[4].seq),
            ascending: true,
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(seqs(&q), all_seqs[5..10]);
        let q = InvocationQuery { limit: Some(4), ..Default::default() };
        assert_eq!(seqs(&q), all_seqs.iter().rev().take(4).copied().collect::<Vec<_>>());
        let q = InvocationQuery { after: Some(all[7].seq), ..Default::default() };
        assert_eq!(seqs(&q), all_seqs[8..].iter().rev().copied().collect::<Vec<_>>());
    }

    /// Pruning by count and by age across segments: whole segments go, the one at the edge is
    /// rewritten with what remains, and the counts are exact.
    #[test]
    fn pruning_rewrites_the_segment_at_the_edge() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = 1_700_000_000_000;
        let all = batches(&store, t, 3, 3);
        // The newest 4 stay: the oldest segment goes whole, the middle one keeps its last record.
        assert_eq!(store.prune(0, 4).unwrap(), 5);
        let left: Vec<_> =
            store.query("p", &InvocationQuery { ascending: true, ..Default::default() }).unwrap();
        assert_eq!(left, all[5..]);
        assert_eq!(segments(&store).iter().map(|s| s.3).collect::<Vec<_>>(), [1, 3]);
        // By age: records 5 and 6 started before t + 7.
        assert_eq!(store.prune(t + 7, u32::MAX).unwrap(), 2);
        let left =
            store.query("p", &InvocationQuery { ascending: true, ..Default::default() }).unwrap();
        assert_eq!(left, all[7..]);
        assert_eq!(segments(&store).iter().map(|s| s.3).collect::<Vec<_>>(), [2]);
        // A rewritten segment still finds its records by id.
        assert_eq!(store.get("p", &all[8].id).unwrap().as_ref(), Some(&all[8]));
        assert_eq!(store.prune(i64::MAX, u32::MAX).unwrap(), 2);
        assert!(segments(&store).is_empty());
    }
}
