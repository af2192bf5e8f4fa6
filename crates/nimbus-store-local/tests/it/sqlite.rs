//! `SqliteStore` against real database files in a temporary directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nimbus_model::{
    DEFAULT_PROJECT, FunctionSpec, InvocationQuery, InvocationRecord, InvocationStatus,
    LimitPolicy, Limits,
};
use nimbus_store::{FunctionStore, InvocationStore, NewVersion, StoreError};
use nimbus_store_local::{SCHEMA_VERSION, SqliteStore};

/// The project most tests work in.
const P: &str = DEFAULT_PROJECT;

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("nimbus.db")).expect("open store")
}

fn limits() -> Limits {
    LimitPolicy::default().defaults
}

fn spec(name: &str, route: &str) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        routes: vec![route.into()],
        env: BTreeMap::from([("MODE".to_string(), route.trim_start_matches('/').to_string())]),
        ..Default::default()
    }
}

/// Deploy `name` in the default project with a route and module hash derived from `tag`.
fn deploy(store: &SqliteStore, name: &str, tag: &str) -> u32 {
    deploy_in(store, P, name, tag)
}

/// Deploy `name` in `project` with a route and module hash derived from `tag`.
fn deploy_in(store: &SqliteStore, project: &str, name: &str, tag: &str) -> u32 {
    let spec = spec(name, &format!("/{tag}"));
    let sha = format!("sha-{tag}");
    let v = store
        .create_version(NewVersion {
            project,
            spec: &spec,
            limits: limits(),
            module_sha256: &sha,
            module_size: 1234,
        })
        .expect("create version");
    assert_eq!(v.project, project);
    assert_eq!(v.function, name);
    assert_eq!(v.spec, spec);
    v.version
}

fn record(id: u64, function: &str, started_at: i64, status: InvocationStatus) -> InvocationRecord {
    record_in(P, id, function, started_at, status)
}

fn record_in(
    project: &str,
    id: u64,
    function: &str,
    started_at: i64,
    status: InvocationStatus,
) -> InvocationRecord {
    InvocationRecord {
        seq: 0, // given by the store
        // Fixed-width, so string order is numeric order, as with UUIDv7.
        id: format!("{id:020}"),
        project: project.into(),
        function: function.into(),
        version: 1,
        trigger: "http".into(),
        method: if id.is_multiple_of(2) { "GET".into() } else { "POST".into() },
        path: format!("/api/{function}/{id}"),
        started_at,
        duration_us: 1500 + id,
        queue_us: 7,
        fuel: u64::from(u32::MAX) * 3,
        peak_memory_bytes: 1 << 20,
        memory_limit_mb: 128,
        outbound_bytes: id * 10,
        status,
        http_status: (status == InvocationStatus::Ok).then_some(200),
        error: (status != InvocationStatus::Ok).then(|| "boom".to_string()),
        stdout: format!("out {id}\n"),
        stderr: String::new(),
        logs_truncated: id.is_multiple_of(2),
    }
}

/// `r` with an id as Nimbus makes them: a UUIDv7 of now, whose time is the record's start.
fn with_uuid(r: InvocationRecord) -> InvocationRecord {
    let (id, started_at) = nimbus_model::new_invocation_id();
    InvocationRecord { id, started_at, ..r }
}

fn ids(records: &[InvocationRecord]) -> Vec<u64> {
    records.iter().map(|r| r.id.parse().unwrap()).collect()
}

#[test]
fn versions_are_numbered_and_never_reused_after_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(deploy(&store, "hello", "one"), 1);
    assert_eq!(deploy(&store, "hello", "two"), 2);

    let active = store.set_active_version(P, "hello", 1).unwrap();
    assert_eq!(active.version, 1);
    assert_eq!(active.module_sha256, "sha-one");

    // After a rollback the function shows version 1's configuration, with latest still 2.
    let info = store.get_function(P, "hello").unwrap().unwrap();
    assert_eq!((info.active_version, info.latest_version), (1, 2));
    assert_eq!(info.routes, vec!["/one".into()]);
    assert_eq!(info.env["MODE"], "one");
    assert_eq!(info.module_sha256, "sha-one");
    assert_eq!(info.limits, limits());

    // The next deploy is 3, not 2 again, and becomes active.
    assert_eq!(deploy(&store, "hello", "three"), 3);
    let info = store.get_function(P, "hello").unwrap().unwrap();
    assert_eq!((info.active_version, info.latest_version), (3, 3));
    assert_eq!(info.module_sha256, "sha-three");
    assert!(info.updated_at >= info.created_at);

    let versions = store.list_versions(P, "hello").unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(versions[1].module_sha256, "sha-two");
    assert_eq!(versions[1].module_size, 1234);
    assert_eq!(store.get_version(P, "hello", 2).unwrap().unwrap(), versions[1]);
    assert_eq!(store.get_version(P, "hello", 4).unwrap(), None);

    // Versions are numbered per function.
    assert_eq!(deploy(&store, "other", "x"), 1);
    let active: Vec<_> =
        store.active_versions().unwrap().into_iter().map(|v| (v.function, v.version)).collect();
    assert_eq!(active, [("hello".to_string(), 3), ("other".to_string(), 1)]);
    assert!(store.active_versions().unwrap().iter().all(|v| v.project == P));
    let names: Vec<_> = store.list_functions(P).unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["hello", "other"]);
}

#[test]
fn not_found_cases() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(store.get_function(P, "nope").unwrap().is_none());
    assert!(store.get_version(P, "nope", 1).unwrap().is_none());
    assert!(matches!(store.list_versions(P, "nope"), Err(StoreError::NotFound(_))));
    assert!(matches!(store.set_active_version(P, "nope", 1), Err(StoreError::NotFound(_))));
    assert!(matches!(store.set_secret(P, "nope", "K", "v"), Err(StoreError::NotFound(_))));
    assert!(!store.delete_secret(P, "nope", "K").unwrap());
    assert!(store.secrets(P, "nope").unwrap().is_empty());
    assert!(!store.delete_function(P, "nope").unwrap());
    assert!(store.list_functions(P).unwrap().is_empty());
    assert!(store.active_versions().unwrap().is_empty());

    deploy(&store, "hello", "one");
    match store.set_active_version(P, "hello", 7) {
        Err(StoreError::NotFound(what)) => assert!(what.contains("version 7"), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A failed activation changes nothing.
    assert_eq!(store.get_function(P, "hello").unwrap().unwrap().active_version, 1);
}

#[test]
fn secrets_set_overwrite_delete_and_list_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    deploy(&store, "hello", "one");
    deploy(&store, "other", "x");
    store.set_secret(P, "hello", "TOKEN", "t1").unwrap();
    store.set_secret(P, "hello", "API_KEY", "k1").unwrap();
    store.set_secret(P, "other", "ZED", "z").unwrap();
    store.set_secret(P, "hello", "TOKEN", "t2").unwrap();

    let secrets = store.secrets(P, "hello").unwrap();
    assert_eq!(
        secrets,
        BTreeMap::from([("API_KEY".to_string(), "k1".to_string()), ("TOKEN".into(), "t2".into())])
    );
    let info = store.get_function(P, "hello").unwrap().unwrap();
    assert_eq!(info.secrets, ["API_KEY", "TOKEN"]);
    let json = serde_json::to_string(&info).unwrap();
    assert!(!json.contains("t2") && !json.contains("k1"), "secret values leaked: {json}");
    let listed = store.list_functions(P).unwrap();
    assert_eq!(listed[0].secrets, ["API_KEY", "TOKEN"]);
    assert_eq!(listed[1].secrets, ["ZED"]);

    assert!(store.delete_secret(P, "hello", "TOKEN").unwrap());
    assert!(!store.delete_secret(P, "hello", "TOKEN").unwrap());
    assert_eq!(store.get_function(P, "hello").unwrap().unwrap().secrets, ["API_KEY"]);
    // Secrets belong to the function, not a version: a new deploy keeps them.
    deploy(&store, "hello", "two");
    assert_eq!(store.secrets(P, "hello").unwrap().len(), 1);
}

#[test]
fn delete_cascades_but_invocations_remain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    deploy(&store, "hello", "one");
    deploy(&store, "hello", "two");
    store.set_secret(P, "hello", "TOKEN", "t").unwrap();
    store.insert_batch(&mut [record(1, "hello", 100, InvocationStatus::Ok)]).unwrap();

    assert!(store.delete_function(P, "hello").unwrap());
    assert!(!store.delete_function(P, "hello").unwrap());
    assert!(store.get_function(P, "hello").unwrap().is_none());
    assert!(store.get_version(P, "hello", 1).unwrap().is_none());
    assert!(store.secrets(P, "hello").unwrap().is_empty());
    assert!(store.get(P, &format!("{:020}", 1)).unwrap().is_some(), "usage history must survive");

    // A function created again under the same name starts over, without old secrets.
    assert_eq!(deploy(&store, "hello", "again"), 1);
    assert!(store.get_function(P, "hello").unwrap().unwrap().secrets.is_empty());
}

#[test]
fn invocation_round_trip_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut records = Vec::new();
    for i in 1..=30u64 {
        let function = if i % 3 == 0 { "b" } else { "a" };
        let status = if i % 5 == 0 { InvocationStatus::Trap } else { InvocationStatus::Ok };
        records.push(record(i, function, 1000 + i as i64, status));
    }
    store.insert_batch(&mut records[..10]).unwrap();
    store.insert_batch(&mut records[10..]).unwrap();
    // Retrying is a no-op: the records keep their positions.
    let mut again = records[5..15].to_vec();
    store.retry_batch(&mut again).unwrap();
    assert_eq!(again, records[5..15]);
    store.insert_batch(&mut []).unwrap();

    let got = store.get(P, &records[4].id).unwrap().unwrap();
    assert_eq!(got, records[4]);
    assert!(store.get(P, "missing").unwrap().is_none());

    // Within a batch, each function's records are positioned together, in batch order.
    let mut by_position = records.clone();
    by_position.sort_by_key(|r| r.seq);
    assert_eq!(ids(&by_position[..10]), [1, 2, 4, 5, 7, 8, 10, 3, 6, 9]);
    assert_eq!(by_position[0].seq + 29, by_position[29].seq, "positions are consecutive");

    // Default: newest first, everything.
    let all = store.query(P, &InvocationQuery::default()).unwrap();
    assert_eq!(all, by_position.iter().rev().cloned().collect::<Vec<_>>());

    let q = InvocationQuery { function: Some("b".into()), ascending: true, ..Default::default() };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]);

    let q = InvocationQuery { status: Some(InvocationStatus::Trap), ..Default::default() };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [30, 15, 25, 20, 10, 5]);

    let q = InvocationQuery {
        function: Some("a".into()),
        status: Some(InvocationStatus::Trap),
        ascending: true,
        ..Default::default()
    };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [5, 10, 20, 25]);

    // Following: after a position, oldest first, in pages.
    let q = InvocationQuery {
        after: Some(records[19].seq),
        ascending: true,
        limit: Some(4),
        ..Default::default()
    };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [22, 23, 25, 26]);

    // Method and path prefix (a prefix, not a pattern).
    let q = InvocationQuery {
        function: Some("b".into()),
        method: Some("GET".into()),
        ascending: true,
        ..Default::default()
    };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [6, 12, 18, 24, 30]);
    let q = InvocationQuery {
        path_prefix: Some("/api/b/1".into()),
        ascending: true,
        ..Default::default()
    };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [12, 15, 18]);
    let q = InvocationQuery { path_prefix: Some("/api/b/%".into()), ..Default::default() };
    assert!(store.query(P, &q).unwrap().is_empty(), "% is not a wildcard");

    let q = InvocationQuery { limit: Some(3), ..Default::default() };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [30, 27, 24]);
    let q = InvocationQuery { function: Some("nope".into()), ..Default::default() };
    assert!(store.query(P, &q).unwrap().is_empty());
}

#[test]
fn query_limit_defaults_to_100_and_caps_at_1000() {
    let store = SqliteStore::open_in_memory().unwrap();
    let mut records: Vec<_> = (1..=1100).map(|i| record(i, "a", 1, InvocationStatus::Ok)).collect();
    store.insert_batch(&mut records).unwrap();
    assert_eq!(store.query(P, &InvocationQuery::default()).unwrap().len(), 100);
    let q = InvocationQuery { limit: Some(5000), ..Default::default() };
    assert_eq!(store.query(P, &q).unwrap().len(), 1000);
}

#[test]
fn prune_by_age_and_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // a: ids 1..=10 started at 100..=1000; b: ids 11..=13 started at 1100..=1300.
    let mut records: Vec<_> =
        (1..=10).map(|i| record(i, "a", i as i64 * 100, InvocationStatus::Ok)).collect();
    records.extend((11..=13).map(|i| record(i, "b", i as i64 * 100, InvocationStatus::Ok)));
    store.insert_batch(&mut records).unwrap();

    // By age only.
    assert_eq!(store.prune(350, u32::MAX).unwrap(), 3);
    let asc = InvocationQuery { ascending: true, ..Default::default() };
    assert_eq!(ids(&store.query(P, &asc).unwrap()), (4..=13).collect::<Vec<_>>());

    // By count only: the newest 2 of each function stay.
    assert_eq!(store.prune(0, 2).unwrap(), 6);
    assert_eq!(ids(&store.query(P, &asc).unwrap()), [9, 10, 12, 13]);

    // Both at once, and nothing left to do afterwards.
    assert_eq!(store.prune(950, 1).unwrap(), 2);
    assert_eq!(ids(&store.query(P, &asc).unwrap()), [10, 13]);
    assert_eq!(store.prune(950, 1).unwrap(), 0);
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    let mut records: Vec<_> =
        (1..=5).map(|i| record(i, "hello", 10, InvocationStatus::Ok)).collect();
    let before = {
        let store = SqliteStore::open(&path).unwrap();
        deploy(&store, "hello", "one");
        deploy(&store, "hello", "two");
        store.set_active_version(P, "hello", 1).unwrap();
        store.set_secret(P, "hello", "TOKEN", "t").unwrap();
        store.insert_batch(&mut records).unwrap();
        store.get_function(P, "hello").unwrap().unwrap()
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get_function(P, "hello").unwrap().unwrap(), before);
    assert_eq!(store.list_versions(P, "hello").unwrap().len(), 2);
    assert_eq!(store.secrets(P, "hello").unwrap()["TOKEN"], "t");
    let asc = InvocationQuery { ascending: true, ..Default::default() };
    assert_eq!(store.query(P, &asc).unwrap(), records);
    assert_eq!(deploy(&store, "hello", "three"), 3);

    let version: u32 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn refuses_a_database_from_a_newer_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    drop(SqliteStore::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)));
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn pragmas_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    let _store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn readers_are_not_blocked_by_a_writer_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    deploy(&store, "hello", "one");
    let done = Arc::new(AtomicBool::new(false));

    let writer = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut next = 1u64;
            for _ in 0..40 {
                let mut batch: Vec<_> = (next..next + 250)
                    .map(|i| record(i, "hello", 1, InvocationStatus::Ok))
                    .collect();
                next += 250;
                store.insert_batch(&mut batch).unwrap();
            }
            done.store(true, Ordering::SeqCst);
            next - 1
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last_newest = 0u64;
                let mut reads = 0u32;
                while !done.load(Ordering::SeqCst) || reads == 0 {
                    let q = InvocationQuery { limit: Some(10), ..Default::default() };
                    let page = store.query(P, &q).unwrap();
                    // Whole batches only (transactions are atomic), and never going back in time.
                    let newest = page.first().map(|r| r.id.parse::<u64>().unwrap()).unwrap_or(0);
                    assert_eq!(newest % 250, 0, "saw a partial batch: newest id {newest}");
                    assert!(newest >= last_newest);
                    last_newest = newest;
                    assert_eq!(store.get_function(P, "hello").unwrap().unwrap().active_version, 1);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let total = writer.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let q = InvocationQuery { limit: Some(1), ..Default::default() };
    assert_eq!(ids(&store.query(P, &q).unwrap()), [total]);
}

#[test]
fn in_memory_store_works() {
    let store = SqliteStore::open_in_memory().unwrap();
    assert!(store.path().is_none());
    assert_eq!(deploy(&store, "hello", "one"), 1);
    store.set_secret(P, "hello", "K", "v").unwrap();
    assert_eq!(store.list_functions(P).unwrap()[0].secrets, ["K"]);
}

#[test]
fn creates_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/nimbus.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.path(), Some(path.as_path()));
    assert!(path.is_file());
}

#[cfg(unix)]
#[test]
fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    let store = SqliteStore::open(&path).unwrap();
    deploy(&store, "hello", "one");
    store.set_secret(P, "hello", "TOKEN", "t").unwrap();
    for file in ["nimbus.db", "nimbus.db-wal", "nimbus.db-shm"] {
        let p = dir.path().join(file);
        if let Ok(meta) = std::fs::metadata(&p) {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        } else {
            assert_ne!(file, "nimbus.db", "database file missing");
        }
    }
}

/// `logs -f` pages "after the last record seen". A slow invocation's id (UUIDv7, made when it
/// started) is older than that of a fast one that started later but was stored first: paging by
/// id skipped it. By position (assigned when stored) the follower still gets it.
#[test]
fn a_follower_gets_a_slow_invocation_stored_after_a_faster_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let slow_id = uuid::Uuid::now_v7().to_string(); // the slow request starts...
    std::thread::sleep(std::time::Duration::from_millis(2));
    let fast_id = uuid::Uuid::now_v7().to_string(); // ...then a fast one, which ends first.
    assert!(slow_id < fast_id, "the scenario needs the slow id to sort first");
    let at = |id: &str, i| InvocationRecord {
        id: id.to_string(),
        ..record(i, "hello", 1, InvocationStatus::Ok)
    };

    let mut fast = [at(&fast_id, 1)];
    store.insert_batch(&mut fast).unwrap();
    let follow = |after| InvocationQuery {
        function: Some("hello".into()),
        after,
        ascending: true,
        ..Default::default()
    };
    let seen = store.query(P, &follow(None)).unwrap();
    assert_eq!(seen, fast);
    let cursor = seen.last().unwrap().seq;

    let mut slow = [at(&slow_id, 2)];
    store.insert_batch(&mut slow).unwrap();
    assert!(slow[0].seq > cursor, "{} <= {cursor}", slow[0].seq);
    assert_eq!(store.query(P, &follow(Some(cursor))).unwrap(), slow);
    // Across functions too, and the listing shows them in the order they were stored.
    let q = InvocationQuery { after: Some(cursor), ascending: true, ..Default::default() };
    assert_eq!(store.query(P, &q).unwrap(), slow);
    let newest_first = store.query(P, &InvocationQuery::default()).unwrap();
    assert_eq!(newest_first, [slow[0].clone(), fast[0].clone()]);
}

#[test]
fn positions_follow_storage_order_and_are_never_reused() {
    let store = SqliteStore::open_in_memory().unwrap();
    // Stored in reverse id order, in three batches: read back in the order stored.
    let mut records: Vec<_> =
        (0..30).rev().map(|i| with_uuid(record(i, "a", 1, InvocationStatus::Ok))).collect();
    for chunk in records.chunks_mut(10) {
        store.insert_batch(chunk).unwrap();
    }
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    let asc = InvocationQuery { ascending: true, ..Default::default() };
    assert_eq!(store.query(P, &asc).unwrap(), records);

    // A retried batch keeps the positions first given; nothing is stored twice.
    let before: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let mut again = records[5..15].to_vec();
    for r in &mut again {
        r.seq = 0;
    }
    store.retry_batch(&mut again).unwrap();
    assert_eq!(again.iter().map(|r| r.seq).collect::<Vec<_>>(), before[5..15]);
    assert_eq!(store.query(P, &asc).unwrap().len(), 30);

    // Pruning everything, the newest included, does not hand their positions out again: a
    // follower whose cursor is at the newest pruned record still sees the next one.
    let newest = records.last().unwrap().seq;
    assert_eq!(store.prune(i64::MAX, u32::MAX).unwrap(), 30);
    let mut next = [record(100, "a", 1, InvocationStatus::Ok)];
    store.insert_batch(&mut next).unwrap();
    assert!(next[0].seq > newest, "{} <= {newest}", next[0].seq);
    let q = InvocationQuery { after: Some(newest), ..Default::default() };
    assert_eq!(store.query(P, &q).unwrap(), next);
}

#[test]
fn reads_do_not_wait_for_an_open_write_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    let store = SqliteStore::open(&path).unwrap();
    deploy(&store, "hello", "one");
    store.insert_batch(&mut [record(1, "hello", 1, InvocationStatus::Ok)]).unwrap();

    // Another connection holds the database's write lock with uncommitted rows in it.
    let mut other = rusqlite::Connection::open(&path).unwrap();
    let tx = other.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    tx.execute("DELETE FROM invocation_segments", []).unwrap();

    // Reads answer at once (well under the busy timeout) from the last committed state.
    let started = std::time::Instant::now();
    assert_eq!(store.query(P, &InvocationQuery::default()).unwrap().len(), 1);
    assert!(store.get_function(P, "hello").unwrap().is_some());
    assert_eq!(store.list_functions(P).unwrap().len(), 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    tx.rollback().unwrap();
}

// ---------------------------------------------------------------------------------------------------
// Tenancy: projects are isolated from one another.

#[test]
fn same_name_in_two_projects_is_two_functions() {
    let store = SqliteStore::open_in_memory().unwrap();
    assert_eq!(deploy_in(&store, "a", "hello", "a1"), 1);
    assert_eq!(deploy_in(&store, "a", "hello", "a2"), 2);
    assert_eq!(deploy_in(&store, "a", "hello", "a3"), 3);
    // Numbering is per project: b's first deploy is 1, not 4.
    assert_eq!(deploy_in(&store, "b", "hello", "b1"), 1);

    let a = store.get_function("a", "hello").unwrap().unwrap();
    let b = store.get_function("b", "hello").unwrap().unwrap();
    assert_eq!((a.project.as_str(), a.active_version, a.latest_version), ("a", 3, 3));
    assert_eq!((b.project.as_str(), b.active_version, b.latest_version), ("b", 1, 1));
    assert_eq!((a.module_sha256.as_str(), b.module_sha256.as_str()), ("sha-a3", "sha-b1"));

    assert_eq!(store.list_versions("a", "hello").unwrap().len(), 3);
    let b_versions = store.list_versions("b", "hello").unwrap();
    assert_eq!(b_versions.len(), 1);
    assert_eq!(
        (b_versions[0].project.as_str(), b_versions[0].module_sha256.as_str()),
        ("b", "sha-b1")
    );
    assert!(store.get_version("b", "hello", 2).unwrap().is_none());
    assert_eq!(store.get_version("a", "hello", 2).unwrap().unwrap().project, "a");

    // Rolling back in a moves a only; b has no version 2 to roll back to.
    store.set_active_version("a", "hello", 1).unwrap();
    assert!(matches!(store.set_active_version("b", "hello", 2), Err(StoreError::NotFound(_))));
    assert_eq!(store.get_function("a", "hello").unwrap().unwrap().active_version, 1);
    assert_eq!(store.get_function("b", "hello").unwrap().unwrap().active_version, 1);
    assert_eq!(store.get_function("b", "hello").unwrap().unwrap().module_sha256, "sha-b1");

    // Secrets are per project.
    store.set_secret("a", "hello", "TOKEN", "from-a").unwrap();
    store.set_secret("b", "hello", "TOKEN", "from-b").unwrap();
    store.set_secret("b", "hello", "ONLY_B", "x").unwrap();
    assert_eq!(
        store.secrets("a", "hello").unwrap(),
        BTreeMap::from([("TOKEN".into(), "from-a".into())])
    );
    assert_eq!(store.secrets("b", "hello").unwrap()["TOKEN"], "from-b");
    assert_eq!(store.get_function("a", "hello").unwrap().unwrap().secrets, ["TOKEN"]);
    assert_eq!(store.get_function("b", "hello").unwrap().unwrap().secrets, ["ONLY_B", "TOKEN"]);
    assert!(!store.delete_secret("a", "hello", "ONLY_B").unwrap());
    assert!(store.delete_secret("a", "hello", "TOKEN").unwrap());
    assert_eq!(store.secrets("b", "hello").unwrap().len(), 2);

    // Deleting in b leaves a whole, versions and secrets included.
    store.set_secret("a", "hello", "KEEP", "k").unwrap();
    assert!(store.delete_function("b", "hello").unwrap());
    assert!(store.get_function("b", "hello").unwrap().is_none());
    assert!(store.secrets("b", "hello").unwrap().is_empty());
    let a = store.get_function("a", "hello").unwrap().unwrap();
    assert_eq!((a.active_version, a.latest_version), (1, 3));
    assert_eq!(a.secrets, ["KEEP"]);
    assert_eq!(store.list_versions("a", "hello").unwrap().len(), 3);
    // And b starts over at 1.
    assert_eq!(deploy_in(&store, "b", "hello", "b-again"), 1);
}

#[test]
fn a_function_is_invisible_from_another_project() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    deploy_in(&store, "a", "only-a", "x");
    store.set_secret("a", "only-a", "TOKEN", "t").unwrap();

    assert!(store.get_function("b", "only-a").unwrap().is_none());
    assert!(store.get_version("b", "only-a", 1).unwrap().is_none());
    assert!(matches!(store.list_versions("b", "only-a"), Err(StoreError::NotFound(_))));
    assert!(matches!(store.set_active_version("b", "only-a", 1), Err(StoreError::NotFound(_))));
    assert!(matches!(store.set_secret("b", "only-a", "K", "v"), Err(StoreError::NotFound(_))));
    assert!(store.secrets("b", "only-a").unwrap().is_empty());
    assert!(!store.delete_secret("b", "only-a", "TOKEN").unwrap());
    assert!(!store.delete_function("b", "only-a").unwrap());
    assert!(store.list_functions("b").unwrap().is_empty());

    // None of that touched a.
    let a = store.get_function("a", "only-a").unwrap().unwrap();
    assert_eq!(
        (a.project.as_str(), a.active_version, a.secrets.as_slice()),
        ("a", 1, &["TOKEN".to_string()][..])
    );
    assert_eq!(store.secrets("a", "only-a").unwrap()["TOKEN"], "t");
}

#[test]
fn listings_are_scoped_and_active_versions_span_projects() {
    let store = SqliteStore::open_in_memory().unwrap();
    deploy_in(&store, "b", "shared", "b1");
    deploy_in(&store, "a", "shared", "a1");
    deploy_in(&store, "a", "shared", "a2");
    deploy_in(&store, "a", "only-a", "x");
    deploy_in(&store, "b", "only-b", "y");
    store.set_secret("a", "shared", "A_SECRET", "1").unwrap();
    store.set_secret("b", "shared", "B_SECRET", "2").unwrap();

    let a = store.list_functions("a").unwrap();
    let b = store.list_functions("b").unwrap();
    let names = |fs: &[nimbus_model::FunctionInfo]| {
        fs.iter().map(|f| (f.project.clone(), f.name.clone())).collect::<Vec<_>>()
    };
    assert_eq!(names(&a), [("a".into(), "only-a".into()), ("a".into(), "shared".into())]);
    assert_eq!(names(&b), [("b".into(), "only-b".into()), ("b".into(), "shared".into())]);
    // Secret names are joined within the project only.
    assert_eq!(a[1].secrets, ["A_SECRET"]);
    assert_eq!(b[1].secrets, ["B_SECRET"]);
    assert_eq!(a[1].active_version, 2);
    assert_eq!(b[1].active_version, 1);
    assert!(store.list_functions(P).unwrap().is_empty());

    // The router sees everything, ordered by project then name, each with its project.
    let active: Vec<_> = store
        .active_versions()
        .unwrap()
        .into_iter()
        .map(|v| (v.project, v.function, v.version, v.module_sha256))
        .collect();
    assert_eq!(
        active,
        [
            ("a".into(), "only-a".into(), 1, "sha-x".into()),
            ("a".into(), "shared".into(), 2, "sha-a2".into()),
            ("b".into(), "only-b".into(), 1, "sha-y".into()),
            ("b".into(), "shared".into(), 1, "sha-b1".into()),
        ] as [(String, String, u32, String); 4]
    );
}

#[test]
fn invocation_records_are_scoped_to_their_project() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Same function name in both projects; ids interleave.
    let mut records: Vec<_> = (1..=10)
        .map(|i| {
            let project = if i % 2 == 0 { "a" } else { "b" };
            record_in(project, i, "hello", i as i64, InvocationStatus::Ok)
        })
        .collect();
    store.insert_batch(&mut records).unwrap();

    let asc = InvocationQuery { ascending: true, ..Default::default() };
    let a = store.query("a", &asc).unwrap();
    assert_eq!(ids(&a), [2, 4, 6, 8, 10]);
    assert!(a.iter().all(|r| r.project == "a"));
    assert_eq!(ids(&store.query("b", &asc).unwrap()), [1, 3, 5, 7, 9]);
    assert!(store.query(P, &asc).unwrap().is_empty());

    let by_fn = InvocationQuery { function: Some("hello".into()), ..Default::default() };
    assert_eq!(ids(&store.query("b", &by_fn).unwrap()), [9, 7, 5, 3, 1]);
    let follow = InvocationQuery {
        after: Some(records[0].seq),
        ascending: true,
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(ids(&store.query("a", &follow).unwrap()), [2, 4]);

    // Get by id: only from the record's own project.
    assert_eq!(store.get("a", &records[1].id).unwrap().unwrap(), records[1]);
    assert!(store.get("b", &records[1].id).unwrap().is_none());
    assert!(store.get(P, &records[1].id).unwrap().is_none());
    assert_eq!(store.get("b", &records[0].id).unwrap().unwrap(), records[0]);
}

#[test]
fn prune_keeps_the_newest_per_function_of_each_project() {
    let store = SqliteStore::open_in_memory().unwrap();
    // "hello" in a: ids 1..=5; "hello" in b: ids 6..=8.
    let mut records: Vec<_> =
        (1..=5).map(|i| record_in("a", i, "hello", 100, InvocationStatus::Ok)).collect();
    records.extend((6..=8).map(|i| record_in("b", i, "hello", 100, InvocationStatus::Ok)));
    store.insert_batch(&mut records).unwrap();

    // Keeping 2 per function: 2 of a's and 2 of b's, not 2 of "hello" overall.
    assert_eq!(store.prune(0, 2).unwrap(), 4);
    let asc = InvocationQuery { ascending: true, ..Default::default() };
    assert_eq!(ids(&store.query("a", &asc).unwrap()), [4, 5]);
    assert_eq!(ids(&store.query("b", &asc).unwrap()), [7, 8]);
}
