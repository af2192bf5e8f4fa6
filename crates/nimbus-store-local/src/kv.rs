//! [`KvStore`] on SQLite: one `kv_entries` table keyed (project, bucket, key), WITHOUT ROWID.
//!
//! Expired rows stay until `purge_expired` removes them; every read filters them out with
//! `expires_at > now`, so they are invisible from the moment they expire. Increments and
//! compare-and-swap read and write inside one immediate transaction on the single writer
//! connection, which makes them atomic against every other write.

use nimbus_model::UnixMillis;
use nimbus_store::Result;
use nimbus_store::kv::{Expiry, IncrementError, KeyPage, KvStore, KvValue};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::error::Context;
use crate::sqlite::SqliteStore;

/// Entries deleted per transaction when a bucket or a project's entries go. A bucket holds as
/// many entries as a tenant cares to write (bounded only by the stored-bytes quota, if any), and
/// one DELETE of all of them would hold SQLite's single writer, and so every project's writes,
/// for as long as it takes; in steps, other writes get in between (`delete_in_steps`). A bucket
/// has no row of its own to retire first: an entry written into it while it is being deleted
/// may go or stay, as if it had been written just before or just after the deletion.
const DELETE_STEP: usize = 1000;

/// The live-entry condition, with the current time as `?now`.
const LIVE: &str = "(expires_at IS NULL OR expires_at > :now)";

/// Insert or replace one entry. With `Expiry::Keep`, a live entry keeps its expiry; an expired
/// one (not yet purged) is replaced as if it were absent.
fn upsert(
    tx: &Transaction<'_>,
    project: &str,
    bucket: &str,
    key: &str,
    value: &[u8],
    expiry: Expiry,
    now: UnixMillis,
) -> Result<()> {
    let (keep, expires_at) = match expiry {
        Expiry::Keep => (true, None),
        Expiry::Never => (false, None),
        Expiry::At(t) => (false, Some(t)),
    };
    tx.prepare_cached(
        "INSERT INTO kv_entries (project, bucket, key, value, expires_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (project, bucket, key) DO UPDATE SET
             value = excluded.value,
             updated_at = excluded.updated_at,
             expires_at = CASE
                 WHEN NOT ?7 THEN excluded.expires_at
                 WHEN kv_entries.expires_at IS NOT NULL AND kv_entries.expires_at <= ?6 THEN NULL
                 ELSE kv_entries.expires_at
             END",
    )
    .and_then(|mut stmt| stmt.execute(params![project, bucket, key, value, expires_at, now, keep]))
    .context("writing a KV entry")?;
    Ok(())
}

fn live_value(
    tx: &Transaction<'_>,
    project: &str,
    bucket: &str,
    key: &str,
    now: UnixMillis,
) -> Result<Option<Vec<u8>>> {
    tx.prepare_cached(&format!(
        "SELECT value FROM kv_entries
         WHERE project = :project AND bucket = :bucket AND key = :key AND {LIVE}"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            rusqlite::named_params! {":project": project, ":bucket": bucket, ":key": key, ":now": now},
            |row| row.get(0),
        )
        .optional()
    })
    .context("reading a KV entry")
}

/// The smallest string greater than every string that starts with `prefix`, if there is one: the
/// exclusive upper bound of a prefix range. SQLite compares TEXT bytewise and UTF-8 preserves code
/// point order, so bumping the last code point that can be bumped gives the bound.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl KvStore for SqliteStore {
    fn get(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<Option<KvValue>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT value, expires_at FROM kv_entries
                 WHERE project = :project AND bucket = :bucket AND key = :key AND {LIVE}"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(
                    rusqlite::named_params! {
                        ":project": project, ":bucket": bucket, ":key": key, ":now": now
                    },
                    |row| Ok(KvValue { value: row.get(0)?, expires_at: row.get(1)? }),
                )
                .optional()
            })
            .context("reading a KV entry")
        })
    }

    fn set(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<()> {
        self.write("setting a KV entry", |tx| upsert(tx, project, bucket, key, value, expiry, now))
    }

    fn delete(&self, project: &str, bucket: &str, key: &str, now: UnixMillis) -> Result<bool> {
        self.write("deleting a KV entry", |tx| {
            // Delete the row whatever its state, but report only a live one as deleted.
            let live = live_value(tx, project, bucket, key, now)?.is_some();
            tx.prepare_cached(
                "DELETE FROM kv_entries WHERE project = ?1 AND bucket = ?2 AND key = ?3",
            )
            .and_then(|mut stmt| stmt.execute(params![project, bucket, key]))
            .context("deleting a KV entry")?;
            Ok(live)
        })
    }

    fn exists(&self, project: &str, bucket: &str, key: &str, now: UnixMillis) -> Result<bool> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM kv_entries
                 WHERE project = :project AND bucket = :bucket AND key = :key AND {LIVE})"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(
                    rusqlite::named_params! {
                        ":project": project, ":bucket": bucket, ":key": key, ":now": now
                    },
                    |row| row.get(0),
                )
            })
            .context("checking a KV entry")
        })
    }

    fn list_keys(
        &self,
        project: &str,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<KeyPage> {
        let upper = prefix_upper_bound(prefix);
        // Both bounds are plain comparisons on the key column, so the scan is a range of the
        // primary key; the statement text varies only with which bounds exist (four cached forms).
        let mut sql = format!(
            "SELECT key FROM kv_entries
             WHERE project = :project AND bucket = :bucket AND key >= :prefix AND {LIVE}"
        );
        if upper.is_some() {
            sql.push_str(" AND key < :upper");
        }
        if after.is_some() {
            sql.push_str(" AND key > :after");
        }
        sql.push_str(" ORDER BY key LIMIT :limit");
        let fetch = i64::from(limit) + 1;
        let mut keys: Vec<String> = self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).context("listing KV keys")?;
            let mut params: Vec<(&str, &dyn rusqlite::ToSql)> = vec![
                (":project", &project),
                (":bucket", &bucket),
                (":prefix", &prefix),
                (":now", &now),
                (":limit", &fetch),
            ];
            if let Some(upper) = &upper {
                params.push((":upper", upper));
            }
            if let Some(after) = &after {
                params.push((":after", after));
            }
            stmt.query_map(params.as_slice(), |row| row.get(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
                .context("listing KV keys")
        })?;
        let next = if keys.len() > limit as usize {
            keys.truncate(limit as usize);
            keys.last().cloned()
        } else {
            None
        };
        Ok(KeyPage { keys, next })
    }

    fn increment(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        delta: i64,
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<i64, IncrementError> {
        self.write("incrementing a KV entry", |tx| {
            let current = match live_value(tx, project, bucket, key, now)? {
                None => 0,
                Some(bytes) => {
                    match std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|s| s.trim().parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return Ok(Err(IncrementError::NotAnInteger(key.to_string()))),
                    }
                }
            };
            let Some(new) = current.checked_add(delta) else {
                return Ok(Err(IncrementError::Overflow(key.to_string())));
            };
            upsert(tx, project, bucket, key, new.to_string().as_bytes(), expiry, now)?;
            Ok(Ok(new))
        })?
    }

    fn compare_and_swap(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<bool> {
        self.write("compare-and-swap on a KV entry", |tx| {
            let current = live_value(tx, project, bucket, key, now)?;
            if current.as_deref() != expected {
                return Ok(false);
            }
            upsert(tx, project, bucket, key, value, expiry, now)?;
            Ok(true)
        })
    }

    fn get_many(
        &self,
        project: &str,
        bucket: &str,
        keys: &[String],
        now: UnixMillis,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        // One statement per key on one connection: a cached point lookup each, without building
        // an IN list whose length SQLite bounds.
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT value FROM kv_entries
                     WHERE project = :project AND bucket = :bucket AND key = :key AND {LIVE}"
                ))
                .context("reading KV entries")?;
            keys.iter()
                .map(|key| {
                    stmt.query_row(
                        rusqlite::named_params! {
                            ":project": project, ":bucket": bucket, ":key": key, ":now": now
                        },
                        |row| row.get(0),
                    )
                    .optional()
                    .context("reading KV entries")
                })
                .collect()
        })
    }

    fn set_many(
        &self,
        project: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
        expiry: Expiry,
        now: UnixMillis,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write("setting KV entries", |tx| {
            for (key, value) in entries {
                upsert(tx, project, bucket, key, value, expiry, now)?;
            }
            Ok(())
        })
    }

    fn delete_many(
        &self,
        project: &str,
        bucket: &str,
        keys: &[String],
        now: UnixMillis,
    ) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.write("deleting KV entries", |tx| {
            let mut live = 0;
            let mut stmt = tx
                .prepare_cached(
                    "DELETE FROM kv_entries WHERE project = ?1 AND bucket = ?2 AND key = ?3
                     RETURNING expires_at IS NULL OR expires_at > ?4",
                )
                .context("deleting KV entries")?;
            for key in keys {
                let was_live: Option<bool> = stmt
                    .query_row(params![project, bucket, key, now], |row| row.get(0))
                    .optional()
                    .context("deleting KV entries")?;
                live += u64::from(was_live == Some(true));
            }
            Ok(live)
        })
    }

    fn list_buckets(&self, project: &str, now: UnixMillis) -> Result<Vec<(String, u64)>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT bucket, count(*) FROM kv_entries WHERE project = :project AND {LIVE}
                 GROUP BY bucket ORDER BY bucket"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::named_params! {":project": project, ":now": now}, |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect()
            })
            .context("listing KV buckets")
        })
    }

    fn delete_bucket(&self, project: &str, bucket: &str) -> Result<u64> {
        self.delete_in_steps(
            "deleting a KV bucket",
            "kv_entries",
            "project, bucket, key",
            "project = ?1 AND bucket = ?2",
            DELETE_STEP,
            &[&project, &bucket],
        )
    }

    fn delete_project(&self, project: &str) -> Result<u64> {
        self.delete_in_steps(
            "deleting a project's KV entries",
            "kv_entries",
            "project, bucket, key",
            "project = ?1",
            DELETE_STEP,
            &[&project],
        )
    }

    fn purge_expired(&self, now: UnixMillis, limit: u32) -> Result<u64> {
        self.write("purging expired KV entries", |tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM kv_entries WHERE (project, bucket, key) IN (
                         SELECT project, bucket, key FROM kv_entries
                         WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
                )
                .and_then(|mut stmt| stmt.execute(params![now, limit]))
                .context("purging expired KV entries")?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nimbus_store::kv::{Expiry, KvStore};

    use super::*;

    /// `n` entries of 10 bytes (key + value) in `bucket`, in one transaction.
    fn fill(s: &SqliteStore, project: &str, bucket: &str, n: usize) {
        s.write("filling", |tx| {
            for i in 0..n {
                upsert(tx, project, bucket, &format!("k{i:05}"), b"vvvv", Expiry::Never, 1)?;
            }
            Ok(())
        })
        .unwrap();
    }

    /// (entries of `p`/`big`, entries of `p`/`keep`, entries of `q`); and checks that `p`'s
    /// stored KV bytes (kept by triggers) match its rows.
    fn counts(s: &SqliteStore) -> (i64, i64, i64) {
        s.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT (SELECT count(*) FROM kv_entries WHERE project = 'p' AND bucket = 'big'), \
                     (SELECT count(*) FROM kv_entries WHERE project = 'p' AND bucket = 'keep'), \
                     (SELECT count(*) FROM kv_entries WHERE project = 'q'), \
                     (SELECT coalesce(sum(kv_bytes), 0) FROM project_storage WHERE project = 'p'), \
                     (SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0) \
                      FROM kv_entries WHERE project = 'p')",
                    [],
                    |r| {
                        let (stored, actual): (i64, i64) = (r.get(3)?, r.get(4)?);
                        assert_eq!(stored, actual, "stored KV bytes follow every entry");
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    },
                )
                .unwrap())
        })
        .unwrap()
    }

    /// A big bucket goes `DELETE_STEP` entries per transaction, with other writes getting in
    /// between the steps; the count and the stored bytes are exact, other buckets untouched.
    #[test]
    fn deleting_a_big_bucket_goes_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(&dir.path().join("kv.db")).unwrap());
        let big = 8 * DELETE_STEP + 123;
        fill(&s, "p", "big", big);
        fill(&s, "p", "keep", 3);
        fill(&s, "q", "big", 7);
        assert_eq!(counts(&s), (big as i64, 3, 7));
        let writer = s.clone();
        let (deleted, inside, writes) = crate::stepping_tests::writes_beside(
            move |i| {
                writer.set("p", "keep", &format!("w{i}"), b"v", Expiry::Never, 2).unwrap();
            },
            || s.delete_bucket("p", "big").unwrap(),
        );
        assert_eq!(deleted, big as u64, "every entry, counted once");
        // One deletion in a single transaction lets none in; a machine busy with other work may
        // not schedule the writer at every step.
        assert!(inside >= 1, "{inside} writes began and ended during the deletion");
        let kept = 3 + writes as i64;
        assert_eq!(counts(&s), (0, kept, 7));
        assert_eq!(s.delete_bucket("p", "big").unwrap(), 0, "idempotent");

        // A project's entries go the same way, every bucket of it, no other project's.
        fill(&s, "p", "big", 2 * DELETE_STEP);
        assert_eq!(
            KvStore::delete_project(&*s, "p").unwrap(),
            2 * DELETE_STEP as u64 + kept as u64
        );
        assert_eq!(counts(&s), (0, 0, 7));
    }

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("user:").as_deref(), Some("user;"));
        assert_eq!(prefix_upper_bound("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_upper_bound(&format!("p{}", char::MAX)).as_deref(), Some("q"));
        assert_eq!(prefix_upper_bound(&char::MAX.to_string()), None);
    }
}
