//! The limit for bench/documents-vs-pocketbase.sh: raw SQLite inserts through rusqlite, with the
//! settings Nimbus's store uses (WAL, synchronous=NORMAL, one IMMEDIATE transaction per insert),
//! on a file in the given directory. Two shapes, each for `--seconds`:
//!
//! - `as-nimbus`: the tables of `nimbus-store-local` (documents keyed by (coll, id) with the data
//!   as JSONB, the same (status, age) expression index the harness declares, and one event-log row
//!   with the document's JSON per insert), i.e. the SQL work a Nimbus insert does, without HTTP,
//!   rules or JSON parsing on the request side.
//! - `bare`: one table (id, JSON text), one row per transaction: the floor of SQLite itself.
//!
//! Prints one line per shape: `<shape> <inserts> inserts in <secs> s: <rate> inserts/s`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use rusqlite::{Connection, TransactionBehavior, params};

#[derive(Parser)]
struct Args {
    /// Directory for the database files (created if missing)
    #[arg(long)]
    dir: PathBuf,
    /// Seconds per shape
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// About 1 KiB of JSON, the same shape as the harness's records.
fn record(n: u64) -> String {
    let status = ["open", "closed", "pending", "archived"][(n % 4) as usize];
    let body = "x".repeat(900);
    format!(
        r#"{{"status":"{status}","age":{},"title":"record {n}","body":"{body}"}}"#,
        (n * 7919) % 100_000
    )
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal mode {mode}");
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn as_nimbus(dir: &Path, secs: f64) -> anyhow::Result<(u64, f64)> {
    let mut conn = open(&dir.join("as-nimbus.db"))?;
    conn.execute_batch(
        r#"
        CREATE TABLE documents (
            coll INTEGER NOT NULL, id TEXT NOT NULL, revision INTEGER NOT NULL,
            created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (coll, id)) STRICT;
        CREATE INDEX dix_1 ON documents (json_extract(data, '$.status'),
            json_extract(data, '$.age'), id) WHERE coll = 1;
        CREATE TABLE event_log (
            position INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, project TEXT NOT NULL,
            type TEXT NOT NULL, source TEXT NOT NULL, subject TEXT NOT NULL,
            time INTEGER NOT NULL, data TEXT NOT NULL) STRICT;
        CREATE INDEX event_log_project ON event_log (project, position);
        "#,
    )?;
    run(secs, |n| {
        let doc = record(n);
        let id = format!("0193a1b2-c3d4-7e5f-8a9b-{n:012x}");
        let now = n as i64;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "INSERT INTO documents (coll, id, revision, created_at, updated_at, data) \
             VALUES (1, ?1, 1, ?2, ?2, jsonb(?3))",
        )?
        .execute(params![id, now, doc])?;
        let event = format!(
            r#"{{"collection":"bench","document":{{"id":"{id}","revision":1,"created_at":{now},"updated_at":{now},"data":{doc}}}}}"#
        );
        tx.prepare_cached(
            "INSERT INTO event_log (id, project, type, source, subject, time, data) \
             VALUES (?1, 'default', 'dev.nimbus.documents.document.created', \
             '/projects/default/collections/bench', ?2, ?3, ?4)",
        )?
        .execute(params![format!("{id}-e"), id, now, event])?;
        tx.commit()?;
        Ok(())
    })
}

fn bare(dir: &Path, secs: f64) -> anyhow::Result<(u64, f64)> {
    let mut conn = open(&dir.join("bare.db"))?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT NOT NULL) STRICT;")?;
    run(secs, |n| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("INSERT INTO t (id, data) VALUES (?1, ?2)")?
            .execute(params![n as i64, record(n)])?;
        tx.commit()?;
        Ok(())
    })
}

fn run(secs: f64, mut insert: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<(u64, f64)> {
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < limit {
        insert(n)?;
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    for (name, f) in
        [("as-nimbus", as_nimbus as fn(&Path, f64) -> anyhow::Result<(u64, f64)>), ("bare", bare)]
    {
        let (n, secs) = f(&args.dir, args.seconds)?;
        println!("{name} {n} inserts in {secs:.1} s: {:.0} inserts/s", n as f64 / secs);
    }
    Ok(())
}
