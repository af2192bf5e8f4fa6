//! Upgrading databases that older builds wrote: the later migrations keep every row.

use nimbus_model::{DEFAULT_PROJECT, InvocationQuery, InvocationStatus, RouteSpec};
use nimbus_store::auth::{AuthStore, NewEvent, UserRecord};
use nimbus_store::{FunctionStore, InvocationStore};
use nimbus_store_local::{SCHEMA_VERSION, SqliteStore};

const P: &str = DEFAULT_PROJECT;

/// The first landed schema (migration 1 as commit a135096 had it) with a few rows, at version 1.
const ORIGINAL_V1: &str = include_str!("../fixtures/schema-v1-original.sql");

fn user_version(path: &std::path::Path) -> u32 {
    rusqlite::Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap()
}

#[test]
fn a_database_of_the_first_landed_schema_upgrades_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    rusqlite::Connection::open(&path).unwrap().execute_batch(ORIGINAL_V1).unwrap();
    assert_eq!(user_version(&path), 1);

    let store = SqliteStore::open(&path).expect("upgrade the original schema");
    assert_eq!(user_version(&path), SCHEMA_VERSION);

    // Functions, with their active version's configuration, in the default project.
    let hello = store.get_function(P, "hello").unwrap().expect("hello survived");
    assert_eq!((hello.active_version, hello.latest_version), (1, 2));
    assert_eq!((hello.created_at, hello.updated_at), (1_732_600_000_000, 1_732_600_300_000));
    assert_eq!(hello.routes, vec![RouteSpec::from("/hello")]);
    assert_eq!(hello.env["GREETING"], "hi");
    assert_eq!(hello.module_sha256, "1".repeat(64));
    assert_eq!(hello.limits.timeout_ms, 10_000);
    assert_eq!(hello.secrets, ["TOKEN"]);
    let greet = store.get_function(P, "greet").unwrap().expect("greet survived");
    assert_eq!(greet.limits.timeout_ms, 2000);
    assert_eq!(greet.limits.max_concurrency, 4);
    assert_eq!(greet.outbound_hosts, ["api.example.com"]);
    let names: Vec<_> = store.list_functions(P).unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"hello".to_string()) && names.contains(&"greet".to_string()));

    // Versions, immutable, the inactive one included.
    let versions = store.list_versions(P, "hello").unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    let v2 = &versions[1];
    assert_eq!((v2.module_sha256.as_str(), v2.module_size), ("2".repeat(64).as_str(), 81_300));
    assert_eq!(v2.spec.routes[1].path, "/hello/...");
    assert_eq!(v2.spec.routes[1].methods, ["GET", "POST"]);
    assert_eq!(v2.created_at, 1_732_600_250_000);
    let mut active = store.active_versions().unwrap();
    active.sort_by(|a, b| a.function.cmp(&b.function));
    assert_eq!(
        active.iter().map(|v| (v.function.as_str(), v.version)).collect::<Vec<_>>(),
        [("greet", 1), ("hello", 1)]
    );

    // Secrets, values included.
    assert_eq!(store.secrets(P, "hello").unwrap()["TOKEN"], "s3cret");
    assert_eq!(store.secrets(P, "greet").unwrap()["API_KEY"], "k-123");

    // Invocation records, numbered in their id order (the order they were read in before).
    let asc = InvocationQuery { ascending: true, ..Default::default() };
    let records = store.query(P, &asc).unwrap();
    let got: Vec<_> = records.iter().map(|r| (r.seq, r.id.as_str())).collect();
    assert_eq!(
        got,
        [
            (1, "01936a1e-2a00-7000-8000-000000000001"),
            (2, "01936a1e-2b00-7000-8000-000000000002"),
            (3, "01936a1e-2c00-7000-8000-000000000003"),
            (4, "01936a1e-2d00-7000-8000-000000000004"),
        ]
    );
    let first = &records[0];
    assert_eq!((first.project.as_str(), first.function.as_str()), (P, "hello"));
    assert_eq!((first.version, first.trigger.as_str()), (1, "http"));
    assert_eq!(
        (first.started_at, first.duration_us, first.queue_us),
        (1_732_600_010_000, 1800, 12)
    );
    assert_eq!((first.fuel, first.peak_memory_bytes), (50_000, 1_114_112));
    assert_eq!((first.status, first.http_status), (InvocationStatus::Ok, Some(200)));
    assert_eq!((first.stdout.as_str(), first.stderr.as_str()), ("hello v1\n", "note\n"));
    let timeout = &records[2];
    assert_eq!((timeout.status, timeout.http_status), (InvocationStatus::Timeout, None));
    assert_eq!(timeout.error.as_deref(), Some("deadline exceeded after 2000 ms"));
    assert!(timeout.logs_truncated);
    assert_eq!(records[3].function, "gone");
    assert_eq!(store.get(P, &records[3].id).unwrap().as_ref(), Some(&records[3]));
    let by_fn = InvocationQuery { function: Some("hello".into()), after: Some(1), ..asc.clone() };
    assert_eq!(store.query(P, &by_fn).unwrap(), records[1..2]);

    // And the upgraded database takes new writes: positions continue after the old rows, versions
    // after the old ones, and the identity tables (migration 2) work.
    let mut new = vec![nimbus_model::InvocationRecord { id: "01936a1f".into(), ..first.clone() }];
    store.insert_batch(&mut new).unwrap();
    assert_eq!(new[0].seq, 5);
    assert!(store.get_project(P).unwrap().is_some());
    let user = UserRecord {
        id: "u1".into(),
        project: P.into(),
        email: Some("a@x.io".into()),
        email_verified: false,
        disabled: false,
        anon: false,
        roles: vec![],
        claims: Default::default(),
        created_at: 1,
        updated_at: 1,
    };
    let event = NewEvent {
        id: "e1".into(),
        kind: "user.created".into(),
        subject: "u1".into(),
        data: serde_json::json!({}),
        created_at: 1,
    };
    store.create_user(P, &user, &[], &[event]).unwrap();
    assert_eq!(store.list_events(P, None, 10).unwrap()[0].seq, 1);

    // Reopening changes nothing.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.query(P, &asc).unwrap().len(), 5);
    assert_eq!(store.list_versions(P, "hello").unwrap(), versions);
}
