//! Pruning invocation records in short steps.
//!
//! SQLite has one writer, and the recorder writes every invocation's record through it: while a
//! transaction holds the writer, records queue up, and once the recorder's backlog bound of them
//! wait, the node refuses new invocations (503 `recorder_backlog`). Pruning in one transaction
//! scanned the whole table three times under that lock (by age, the segments straddling the
//! age limit, a window over every segment for the count): seconds on a node with millions of
//! segments.
//!
//! So every step here is one short transaction, found through an index, and what can be read
//! is read outside the writer (WAL readers never wait for it):
//! - By age, project by project: the `started` index (project, min, max start) finds the whole
//!   segments due, [`STEP`] at a time; then the few that straddle the limit are rewritten one
//!   by one.
//! - By count, function by function, and only for functions that got records since the last
//!   pass (only they can have gone over the count): a read walks the function's newest segments
//!   to the one where the count runs out; that one is rewritten, and the older ones are
//!   deleted [`STEP`] at a time.
//!
//! A pass is not atomic, and need not be: the recorder only appends segments (newer positions),
//! and only pruning rewrites or deletes them, so a step's view stays true until the next step;
//! records that arrive during a pass are newer than everything it removes.

use std::collections::BTreeSet;

use nimbus_model::{InvocationRecord, UnixMillis};
use rusqlite::OptionalExtension;

use super::{SEGMENT_COLUMNS, read_segments, rewrite};
use crate::error::Context;
use crate::sqlite::SqliteStore;
use nimbus_store::Result;

/// Segments one step deletes. A segment holds up to a batch of records (its body can span many
/// pages), so a step frees at most a few MiB.
const STEP: usize = 256;

/// How far the last pass looked: segments up to `through` (a position) had been pruned by count
/// with `keep` per function. Process memory, not the database: after a restart (or with a
/// different `keep`) the first pass looks at every function, which is always right, only slower.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PruneMark {
    through: i64,
    keep: Option<u32>,
}

pub(super) fn prune(store: &SqliteStore, before: UnixMillis, keep: u32) -> Result<u64> {
    // One pass at a time: two would each find the same edge segments.
    let mut mark = store.prune_mark.lock();
    let mut removed = 0;
    for project in projects(store)? {
        removed += by_age(store, &project, before)?;
    }
    let newest: i64 = store.read(|conn| {
        conn.query_row("SELECT coalesce(max(seq_end), 0) FROM invocation_segments", [], |r| {
            r.get(0)
        })
        .context("reading the newest invocation segment")
    })?;
    let functions = if mark.keep == Some(keep) {
        functions(store, Some((mark.through, newest)))?
    } else {
        functions(store, None)?
    };
    for (project, function) in functions {
        removed += by_count(store, &project, &function, keep)?;
    }
    *mark = PruneMark { through: newest, keep: Some(keep) };
    if removed > 0 {
        tracing::debug!(removed, "pruned invocation records");
    }
    Ok(removed)
}

/// Every project with segments, read without the writer, by seeking the index from one name to
/// the next (a seek per project, not a scan of its segments).
fn projects(store: &SqliteStore) -> Result<Vec<String>> {
    store.read(|conn| {
        let ctx = || "listing the projects with invocation records".to_string();
        let mut stmt = conn
            .prepare_cached(
                "SELECT project FROM invocation_segments WHERE project > ?1 \
                 ORDER BY project LIMIT 1",
            )
            .with_context(ctx)?;
        let mut out: Vec<String> = Vec::new();
        let mut last = String::new();
        while let Some(p) =
            stmt.query_row([&last], |r| r.get::<_, String>(0)).optional().with_context(ctx)?
        {
            out.push(p.clone());
            last = p;
        }
        Ok(out)
    })
}

/// The (project, function) pairs with segments, read without the writer: every one (seeking the
/// index from one to the next), or those of the segments in positions `(after, through]` (a
/// range of the rowid; the set drops the repeats).
fn functions(
    store: &SqliteStore,
    written: Option<(i64, i64)>,
) -> Result<BTreeSet<(String, String)>> {
    store.read(|conn| {
        let ctx = || "listing the functions with invocation records".to_string();
        let mut out = BTreeSet::new();
        if let Some((after, through)) = written {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT project, function FROM invocation_segments \
                     WHERE seq_end > ?1 AND seq_end <= ?2",
                )
                .with_context(ctx)?;
            let rows = stmt
                .query_map([after, through], |r| Ok((r.get(0)?, r.get(1)?)))
                .with_context(ctx)?;
            for pair in rows {
                out.insert(pair.with_context(ctx)?);
            }
            return Ok(out);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT project, function FROM invocation_segments \
                 WHERE (project, function) > (?1, ?2) ORDER BY project, function LIMIT 1",
            )
            .with_context(ctx)?;
        let mut last = (String::new(), String::new());
        while let Some(pair) = stmt
            .query_row([&last.0, &last.1], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .with_context(ctx)?
        {
            out.insert(pair.clone());
            last = pair;
        }
        Ok(out)
    })
}

/// Delete, `STEP` at a time, the segments that `condition` selects (SQL on the segment's
/// columns, with `args`). Returns the records removed.
pub(super) fn delete_in_steps(
    store: &SqliteStore,
    condition: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<u64> {
    let sql = format!(
        "DELETE FROM invocation_segments WHERE seq_end IN ( \
             SELECT seq_end FROM invocation_segments WHERE {condition} LIMIT {STEP} \
         ) RETURNING len"
    );
    store.in_steps("pruning invocation records", STEP, |tx| {
        let lens = tx
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(args, |r| r.get::<_, u64>(0))?
                    .collect::<rusqlite::Result<Vec<u64>>>()
            })
            .context("pruning invocation records")?;
        Ok((lens.len(), lens.iter().sum()))
    })
}

/// Records of `project` that started before `before`.
fn by_age(store: &SqliteStore, project: &str, before: UnixMillis) -> Result<u64> {
    // Whole segments (the `started` index holds both bounds)...
    let mut removed = delete_in_steps(
        store,
        "project = ?1 AND min_started_at < ?2 AND max_started_at < ?2",
        &[&project, &before],
    )?;
    // ...then the ones that started before and end after: what is left below the limit. A
    // segment spans one minute, so these are few.
    let straddling: Vec<i64> = store.read(|conn| {
        conn.prepare_cached(
            "SELECT seq_end FROM invocation_segments WHERE project = ?1 AND min_started_at < ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_map(rusqlite::params![project, before], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()
        })
        .context("finding invocation segments at the age limit")
    })?;
    for seq_end in straddling {
        removed += store.write_step("pruning invocation records by age", |tx| {
            let Some(records) = one_segment(tx, seq_end)? else { return Ok(0) };
            let total = records.len();
            let keep: Vec<_> = records.into_iter().filter(|r| r.started_at >= before).collect();
            rewrite(tx, seq_end, &keep)?;
            Ok((total - keep.len()) as u64)
        })?;
    }
    Ok(removed)
}

/// Records of one function beyond its newest `keep` (by position).
fn by_count(store: &SqliteStore, project: &str, function: &str, keep: u32) -> Result<u64> {
    let keep = u64::from(keep);
    // The newest segment that does not fit whole, and how many records are in newer ones.
    let edge: Option<(i64, u64)> = store.read(|conn| {
        let ctx = || format!("counting the invocation records of {function}");
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq_end, len FROM invocation_segments \
                 WHERE project = ?1 AND function = ?2 ORDER BY seq_end DESC",
            )
            .with_context(ctx)?;
        let mut rows = stmt.query([project, function]).with_context(ctx)?;
        let mut newer = 0u64;
        while let Some(row) = rows.next().with_context(ctx)? {
            let (seq_end, len): (i64, u64) =
                (row.get(0).with_context(ctx)?, row.get(1).with_context(ctx)?);
            if newer + len > keep {
                return Ok(Some((seq_end, newer)));
            }
            newer += len;
        }
        Ok(None)
    })?;
    let Some((edge, newer)) = edge else { return Ok(0) };
    // The edge keeps its newest `keep - newer` records (none: it goes)...
    let mut removed = store.write_step("pruning invocation records by count", |tx| {
        let Some(records) = one_segment(tx, edge)? else { return Ok(0) };
        let room = keep.saturating_sub(newer) as usize;
        let total = records.len();
        let kept = &records[total.saturating_sub(room)..];
        rewrite(tx, edge, kept)?;
        Ok((total - kept.len()) as u64)
    })?;
    // ...and every older segment of the function goes whole.
    removed += delete_in_steps(
        store,
        "project = ?1 AND function = ?2 AND seq_end < ?3",
        &[&project, &function, &edge],
    )?;
    Ok(removed)
}

/// The records of the segment at `seq_end`, if it is still there.
fn one_segment(tx: &rusqlite::Connection, seq_end: i64) -> Result<Option<Vec<InvocationRecord>>> {
    Ok(read_segments(
        tx,
        &format!("SELECT {SEGMENT_COLUMNS} FROM invocation_segments WHERE seq_end = ?1"),
        [seq_end],
    )?
    .pop())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nimbus_model::{InvocationQuery, InvocationRecord};
    use nimbus_store::InvocationStore;

    use super::*;
    use crate::invocations::tests::{query_plan, record_at};

    fn record_of(project: &str, function: &str, millis: i64) -> InvocationRecord {
        InvocationRecord { project: project.into(), ..record_at(millis, function) }
    }

    /// Every statement of a pass seeks through an index: none scans the table or an index,
    /// under the writer or outside it.
    #[test]
    fn every_step_uses_an_index() {
        let store = SqliteStore::open_in_memory().unwrap();
        let plan = |sql: &str| query_plan(&store, sql);
        let delete = |condition: &str| {
            format!(
                "DELETE FROM invocation_segments WHERE seq_end IN (SELECT seq_end FROM \
                 invocation_segments WHERE {condition} LIMIT {STEP}) RETURNING len"
            )
        };
        for sql in [
            "SELECT project FROM invocation_segments WHERE project > 'a' ORDER BY project LIMIT 1"
                .to_string(),
            "SELECT project, function FROM invocation_segments WHERE (project, function) > \
             ('a', 'f') ORDER BY project, function LIMIT 1"
                .to_string(),
            "SELECT project, function FROM invocation_segments \
             WHERE seq_end > 1 AND seq_end <= 9"
                .to_string(),
            delete("project = 'p' AND min_started_at < 5 AND max_started_at < 5"),
            "SELECT seq_end FROM invocation_segments WHERE project = 'p' AND min_started_at < 5"
                .to_string(),
            "SELECT seq_end, len FROM invocation_segments WHERE project = 'p' AND function = 'f' \
             ORDER BY seq_end DESC"
                .to_string(),
            delete("project = 'p' AND function = 'f' AND seq_end < 9"),
        ] {
            let plan = plan(&sql);
            // Every step seeks (`SEARCH`): no scan of the table, nor of a whole index (a `SCAN
            // ... USING COVERING INDEX` per project or function would make a pass quadratic).
            for step in plan.split("; ") {
                assert!(!step.starts_with("SCAN"), "{sql}: {plan}");
            }
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }

    /// Work spread over many steps (more than `STEP` segments by age and by count, in two
    /// projects) comes out as exact as one transaction did.
    #[test]
    fn many_steps_remove_exactly_what_is_due() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = 1_700_000_000_000;
        // A segment per record: every record in a batch of its own, a minute apart.
        let mut all = Vec::new();
        for i in 0..(2 * STEP as i64 + 10) {
            for (project, function) in [("p", "f"), ("p", "g"), ("q", "f")] {
                let mut batch = vec![record_of(project, function, t + i * 60_000)];
                store.insert_batch(&mut batch).unwrap();
                all.extend(batch);
            }
        }
        let n = all.len() as u64;
        // By age: the first STEP + 5 minutes of each.
        let before = t + (STEP as i64 + 5) * 60_000;
        assert_eq!(store.prune(before, u32::MAX).unwrap(), 3 * (STEP as u64 + 5));
        // By count: 7 of each function stay.
        let left = n - 3 * (STEP as u64 + 5);
        assert_eq!(store.prune(0, 7).unwrap(), left - 3 * 7);
        for (project, function) in [("p", "f"), ("p", "g"), ("q", "f")] {
            let q = InvocationQuery {
                function: Some(function.into()),
                ascending: true,
                ..Default::default()
            };
            let got = store.query(project, &q).unwrap();
            let mine: Vec<_> =
                all.iter().filter(|r| r.project == project && r.function == function).collect();
            let want: Vec<_> = mine[mine.len() - 7..].iter().map(|r| (*r).clone()).collect();
            assert_eq!(got, want, "{project}/{function}");
        }
    }

    /// Deleting a project goes in steps too: more than `STEP` segments, all gone and counted,
    /// and another project's records untouched.
    #[test]
    fn deleting_a_project_takes_all_its_segments_in_steps() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = 1_700_000_000_000;
        for i in 0..(STEP as i64 + 50) {
            let mut batch = vec![record_of("p", "f", t + i * 60_000), record_of("q", "f", t)];
            store.insert_batch(&mut batch).unwrap();
        }
        assert_eq!(store.delete_project("p").unwrap(), STEP as u64 + 50);
        assert!(store.query("p", &InvocationQuery::default()).unwrap().is_empty());
        let q = InvocationQuery { limit: Some(1000), ..Default::default() };
        assert_eq!(store.query("q", &q).unwrap().len(), STEP + 50);
    }

    /// A pass walks only the functions written since the last one, and a pass with another
    /// count walks them all again.
    #[test]
    fn later_passes_find_what_is_new_and_a_new_count_applies_to_all() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = 1_700_000_000_000;
        let insert = |function: &str, from: i64, n: i64| {
            let mut batch: Vec<_> = (from..from + n).map(|i| record_at(t + i, function)).collect();
            store.insert_batch(&mut batch).unwrap();
        };
        insert("f", 0, 5);
        insert("g", 10, 5);
        assert_eq!(store.prune(0, 3).unwrap(), 4);
        // Only f grows; its older records go, g is already within the count.
        insert("f", 20, 4);
        assert_eq!(store.prune(0, 3).unwrap(), 4);
        assert_eq!(store.prune(0, 3).unwrap(), 0);
        // A smaller count reaches g too, though g got nothing new.
        assert_eq!(store.prune(0, 1).unwrap(), 4);
        let count = |f: &str| {
            let q = InvocationQuery { function: Some(f.into()), ..Default::default() };
            store.query("p", &q).unwrap().len()
        };
        assert_eq!((count("f"), count("g")), (1, 1));
    }

    /// The point of the steps: while a long prune runs, the recorder's writes get the writer
    /// between its steps instead of waiting for the end (where one transaction let none in).
    #[test]
    fn writes_get_in_while_a_long_prune_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("n.db")).unwrap());
        let t = 1_700_000_000_000;
        // 40 functions x 500 segments of one record, all due by age.
        for i in 0..500 {
            let mut batch: Vec<_> =
                (0..40).map(|f| record_at(t + i * 60_000, &format!("f{f}"))).collect();
            store.insert_batch(&mut batch).unwrap();
        }
        let writer = store.clone();
        let (pruned, inside, _) = crate::stepping_tests::writes_beside(
            move |i| {
                let mut batch = vec![record_at(t + 1_000 * 60_000 + i as i64, "new")];
                writer.insert_batch(&mut batch).unwrap();
            },
            || store.prune(t + 600 * 60_000, u32::MAX).unwrap(),
        );
        assert_eq!(pruned, 20_000);
        // 20,000 segments are 79 steps; one transaction would let no write in. Usually many get
        // in, but a machine busy with other work may not schedule the writer at every step.
        assert!(inside >= 2, "{inside} writes began and ended during the prune");
    }
}
