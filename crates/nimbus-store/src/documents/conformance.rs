//! The backend-independent test suite of [`DocumentStore`] and [`EventLog`]: every backend's tests
//! call [`run_all`] on a fresh store (the SQLite backend does in `nimbus-store-local`'s tests; a
//! PostgreSQL backend will). Panics on the first failure, naming it.

use serde_json::{Value, json};

use super::*;
use crate::events::EventLog;

fn path(p: &str) -> FieldPath {
    FieldPath::parse(p).expect("valid path")
}

fn spec(indexes: &[(&str, &[&str])]) -> CollectionSpec {
    CollectionSpec {
        schema: None,
        rules: json!({}),
        indexes: indexes
            .iter()
            .map(|(n, f)| IndexSpec {
                name: n.to_string(),
                fields: f.iter().map(|p| path(p)).collect(),
            })
            .collect(),
    }
}

fn put(coll: &str, id: &str, data: Value) -> WriteOp {
    WriteOp { collection: coll.into(), id: id.into(), data: Some(data), expect: Expect::Any }
}

/// Every check, in order, on one fresh store.
pub fn run_all<S: DocumentStore + EventLog>(store: &S) {
    collections(store);
    crud_revisions_and_events(store);
    failed_batch_writes_nothing(store);
    filters(store);
    pagination(store);
    indexes(store);
    projects_are_isolated(store);
    event_log(store);
    concurrent_writes(store);
}

pub fn collections<S: DocumentStore>(s: &S) {
    let c = s.create_collection("p1", "c_meta", &spec(&[("by_a", &["a"])])).unwrap();
    assert_eq!(c.name, "c_meta");
    assert!(matches!(
        s.create_collection("p1", "c_meta", &spec(&[])),
        Err(crate::StoreError::Conflict(_))
    ));
    let updated = s.update_collection("p1", "c_meta", &spec(&[("by_b", &["b", "a"])])).unwrap();
    assert_eq!(updated.spec.indexes[0].name, "by_b");
    assert!(s.list_collections("p1").unwrap().iter().any(|c| c.name == "c_meta"));
    assert!(s.delete_collection("p1", "c_meta").unwrap());
    assert!(!s.delete_collection("p1", "c_meta").unwrap());
    assert!(matches!(s.get("p1", "c_meta", "x"), Err(crate::StoreError::NotFound(_))));
}

pub fn crud_revisions_and_events<S: DocumentStore + EventLog>(s: &S) {
    s.create_collection("p1", "crud", &spec(&[])).unwrap();
    let before = s.bounds().unwrap().last;
    let out = s.write("p1", &[put("crud", "a", json!({"n": 1}))]).unwrap().unwrap();
    assert!(matches!(&out[0], WriteOutcome::Created(d) if d.revision == 1));
    let out = s.write("p1", &[put("crud", "a", json!({"n": 2}))]).unwrap().unwrap();
    assert!(matches!(&out[0], WriteOutcome::Updated(d) if d.revision == 2));
    let doc = s.get("p1", "crud", "a").unwrap().unwrap();
    assert_eq!((doc.revision, doc.data.clone()), (2, json!({"n": 2})));
    // Conditions.
    let absent = WriteOp { expect: Expect::Absent, ..put("crud", "a", json!({})) };
    assert_eq!(s.write("p1", &[absent]).unwrap().unwrap_err().reason, FailureReason::AlreadyExists);
    let stale = WriteOp { expect: Expect::Revision(1), ..put("crud", "a", json!({})) };
    assert_eq!(
        s.write("p1", &[stale]).unwrap().unwrap_err().reason,
        FailureReason::RevisionMismatch(Some(2))
    );
    let fresh = WriteOp { expect: Expect::Revision(2), ..put("crud", "a", json!({"n": 3})) };
    assert!(s.write("p1", &[fresh]).unwrap().is_ok());
    let missing = WriteOp { expect: Expect::Exists, ..put("crud", "zz", json!({})) };
    assert_eq!(s.write("p1", &[missing]).unwrap().unwrap_err().reason, FailureReason::NotFound);
    let del =
        WriteOp { collection: "crud".into(), id: "a".into(), data: None, expect: Expect::Any };
    let out = s.write("p1", std::slice::from_ref(&del)).unwrap().unwrap();
    assert!(matches!(&out[0], WriteOutcome::Deleted(d) if d.data == json!({"n": 3})));
    assert_eq!(s.write("p1", &[del]).unwrap().unwrap_err().reason, FailureReason::NotFound);
    assert!(s.get("p1", "crud", "a").unwrap().is_none());
    // One event per committed write, in order, with the document.
    let events = s.read(before, Some("p1"), 100).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, [EVENT_CREATED, EVENT_UPDATED, EVENT_UPDATED, EVENT_DELETED]);
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(events[1].data["document"]["data"], json!({"n": 2}));
    // An update carries the data it replaced; a create and a delete do not need to.
    assert_eq!(events[1].data["previous"], json!({"n": 1}));
    assert_eq!(events[2].data["previous"], json!({"n": 2}));
    assert!(events[0].data.get("previous").is_none());
    assert_eq!(events[3].data["document"]["data"], json!({"n": 3}));
    assert_eq!(events[0].subject, "a");
}

pub fn failed_batch_writes_nothing<S: DocumentStore + EventLog>(s: &S) {
    s.create_collection("p1", "batch", &spec(&[])).unwrap();
    s.write("p1", &[put("batch", "x", json!({"v": 0}))]).unwrap().unwrap();
    let before = s.bounds().unwrap().last;
    let ops = [
        put("batch", "y", json!({"v": 1})),
        put("batch", "x", json!({"v": 1})),
        WriteOp { expect: Expect::Absent, ..put("batch", "x", json!({})) },
    ];
    let failure = s.write("p1", &ops).unwrap().unwrap_err();
    assert_eq!(failure.index, 2);
    assert!(s.get("p1", "batch", "y").unwrap().is_none(), "first write of a failed batch kept");
    assert_eq!(s.get("p1", "batch", "x").unwrap().unwrap().data, json!({"v": 0}));
    assert_eq!(s.bounds().unwrap().last, before, "a failed batch appended events");
    let unknown = s.write("p1", &[put("nope", "x", json!({}))]).unwrap().unwrap_err();
    assert_eq!(unknown.reason, FailureReason::NoCollection);
    // A good batch commits whole.
    let out = s.write("p1", &ops[..2]).unwrap().unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(s.read(before, Some("p1"), 10).unwrap().len(), 2);
}

fn ids<S: DocumentStore>(s: &S, coll: &str, filter: Filter) -> Vec<String> {
    let q = Query { filter: Some(filter), limit: 100, ..Query::default() };
    s.query("p1", coll, &q).unwrap().documents.into_iter().map(|d| d.id).collect()
}

pub fn filters<S: DocumentStore>(s: &S) {
    s.create_collection("p1", "f", &spec(&[("by_n", &["n"])])).unwrap();
    let docs = [
        ("a", json!({"n": 1, "s": "x", "b": true, "tags": ["red", "blue"], "o": {"k": 1}})),
        (
            "b",
            json!({"n": 2.5, "s": "y", "b": false, "tags": ["green"], "nested": {"deep": {"v": "z"}}}),
        ),
        ("c", json!({"n": "1", "s": "xyz", "tags": "a red car"})),
        ("d", json!({"n": null, "b": 1})),
        ("e", json!({"n": 3})),
    ];
    let ops: Vec<WriteOp> = docs.iter().map(|(id, d)| put("f", id, d.clone())).collect();
    s.write("p1", &ops).unwrap().unwrap();
    use CompareOp::*;
    let cmp = |p: &str, op, v: Value| Filter::Compare(path(p), op, v);
    // Typed equality: 1 == 1.0, never "1", never true.
    assert_eq!(ids(s, "f", cmp("n", Eq, json!(1))), ["a"]);
    assert_eq!(ids(s, "f", cmp("n", Eq, json!(1.0))), ["a"]);
    assert_eq!(ids(s, "f", cmp("n", Eq, json!("1"))), ["c"]);
    assert_eq!(ids(s, "f", cmp("b", Eq, json!(true))), ["a"]);
    assert_eq!(ids(s, "f", cmp("b", Eq, json!(1))), ["d"]);
    // Missing and null are both null.
    assert_eq!(ids(s, "f", cmp("n", Eq, Value::Null)), ["d"]);
    assert_eq!(ids(s, "f", cmp("s", Eq, Value::Null)), ["d", "e"]);
    assert_eq!(ids(s, "f", cmp("s", Ne, json!("x"))), ["b", "c", "d", "e"]);
    // Ordering only between numbers or between strings.
    assert_eq!(ids(s, "f", cmp("n", Gt, json!(1))), ["b", "e"]);
    assert_eq!(ids(s, "f", cmp("n", Le, json!(2.5))), ["a", "b"]);
    assert_eq!(ids(s, "f", cmp("s", Ge, json!("xa"))), ["b", "c"]);
    assert_eq!(ids(s, "f", Filter::Not(Box::new(cmp("n", Gt, json!(1))))), ["a", "c", "d"]);
    assert_eq!(ids(s, "f", cmp("nested.deep.v", Eq, json!("z"))), ["b"]);
    assert_eq!(ids(s, "f", Filter::In(path("n"), vec![json!(3), json!("1")])), ["c", "e"]);
    // Contains: list element, substring, object key.
    assert_eq!(ids(s, "f", Filter::Contains(path("tags"), json!("red"))), ["a", "c"]);
    assert_eq!(ids(s, "f", Filter::Contains(path("o"), json!("k"))), ["a"]);
    assert_eq!(ids(s, "f", Filter::Exists(path("b"))), ["a", "b", "d"]);
    assert_eq!(
        ids(s, "f", Filter::IsContainer { path: path("tags"), strings: false }),
        ["a", "b", "d", "e"]
    );
    let and = Filter::And(vec![cmp("n", Ge, json!(1)), Filter::Exists(path("tags"))]);
    assert_eq!(ids(s, "f", and), ["a", "b"]);
    let or = Filter::Or(vec![cmp("s", Eq, json!("y")), cmp("n", Eq, json!(3))]);
    assert_eq!(ids(s, "f", or), ["b", "e"]);
    assert_eq!(s.count("p1", "f", Some(&cmp("n", Ge, json!(1)))).unwrap(), 3);
    assert_eq!(s.count("p1", "f", None).unwrap(), 5);
}

/// Pages concatenated give exactly the whole sorted result, for several sorts.
pub fn pagination<S: DocumentStore>(s: &S) {
    s.create_collection("p1", "pg", &spec(&[("by_g_n", &["g", "n"])])).unwrap();
    let mut ops = Vec::new();
    for i in 0..47u32 {
        let g = if i % 7 == 0 { Value::Null } else { json!(i % 3) };
        ops.push(put("pg", &format!("d{i:03}"), json!({"g": g, "n": (i * 37) % 11, "i": i})));
    }
    s.write("p1", &ops).unwrap().unwrap();
    let sorts: Vec<Vec<SortKey>> = vec![
        vec![],
        vec![SortKey { field: SortField::Field(path("g")), descending: false }],
        vec![
            SortKey { field: SortField::Field(path("g")), descending: false },
            SortKey { field: SortField::Field(path("n")), descending: false },
        ],
        vec![
            SortKey { field: SortField::Field(path("g")), descending: true },
            SortKey { field: SortField::Field(path("n")), descending: false },
        ],
        vec![SortKey { field: SortField::Field(path("n")), descending: true }],
        vec![SortKey { field: SortField::Id, descending: true }],
    ];
    for sort in sorts {
        let all = Query { sort: sort.clone(), limit: 1000, ..Query::default() };
        let expected: Vec<String> =
            s.query("p1", "pg", &all).unwrap().documents.into_iter().map(|d| d.id).collect();
        assert_eq!(expected.len(), 47);
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let q = Query { sort: sort.clone(), after: after.take(), limit: 5, ..Query::default() };
            let page = s.query("p1", "pg", &q).unwrap();
            got.extend(page.documents.into_iter().map(|d| d.id));
            match page.next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        assert_eq!(got, expected, "pages of sort {sort:?}");
        // The order is the sort's.
        let docs = s.query("p1", "pg", &all).unwrap().documents;
        let key = |d: &Document, f: &str| d.data.get(f).cloned().unwrap_or(Value::Null);
        for w in docs.windows(2) {
            if let Some(k) = sort.first()
                && let SortField::Field(p) = &k.field
            {
                let (a, b) = (key(&w[0], &p.to_string()), key(&w[1], &p.to_string()));
                let ord = |v: &Value| (if v.is_null() { 0 } else { 1 }, v.as_f64().unwrap_or(0.0));
                let (a, b) = (ord(&a), ord(&b));
                assert!(if k.descending { a >= b } else { a <= b }, "{sort:?}");
            }
        }
    }
}

pub fn indexes<S: DocumentStore>(s: &S) {
    s.create_collection("p1", "ix", &spec(&[("by_status_age", &["status", "age"])])).unwrap();
    let ops: Vec<WriteOp> = (0..200)
        .map(|i| {
            let status = if i % 2 == 0 { "open" } else { "closed" };
            put("ix", &format!("{i:04}"), json!({"status": status, "age": i, "x": i}))
        })
        .collect();
    s.write("p1", &ops).unwrap().unwrap();
    let by_status = Query {
        filter: Some(Filter::Compare(path("status"), CompareOp::Eq, json!("open"))),
        sort: vec![SortKey { field: SortField::Field(path("age")), descending: true }],
        limit: 3,
        ..Query::default()
    };
    let plan = s.explain("p1", "ix", &by_status).unwrap();
    assert_eq!(plan.index.as_deref(), Some("by_status_age"), "{plan:?}");
    assert!(!plan.scan, "{plan:?}");
    let page = s.query("p1", "ix", &by_status).unwrap();
    assert_eq!(page.index.as_deref(), Some("by_status_age"));
    let ages: Vec<i64> = page.documents.iter().map(|d| d.data["age"].as_i64().unwrap()).collect();
    assert_eq!(ages, [198, 196, 194]);
    let unindexed = Query {
        filter: Some(Filter::Compare(path("x"), CompareOp::Gt, json!(100))),
        limit: 3,
        ..Query::default()
    };
    let page = s.query("p1", "ix", &unindexed).unwrap();
    assert!(page.scan && page.index.is_none());
    assert_eq!(page.documents.len(), 3);
}

pub fn projects_are_isolated<S: DocumentStore>(s: &S) {
    s.create_collection("p2", "crud", &spec(&[])).unwrap();
    s.write("p2", &[put("crud", "a", json!({"p": 2}))]).unwrap().unwrap();
    s.write("p1", &[put("crud", "a", json!({"p": 1}))]).unwrap().unwrap();
    assert_eq!(s.get("p2", "crud", "a").unwrap().unwrap().data, json!({"p": 2}));
    assert_eq!(s.get("p1", "crud", "a").unwrap().unwrap().data, json!({"p": 1}));
    assert!(matches!(s.get("p3", "crud", "a"), Err(crate::StoreError::NotFound(_))));
    assert_eq!(s.delete_project("p2").unwrap(), 1);
    assert!(s.get_collection("p2", "crud").unwrap().is_none());
    assert_eq!(s.get("p1", "crud", "a").unwrap().unwrap().data, json!({"p": 1}));
}

pub fn event_log<S: EventLog>(s: &S) {
    let mut wake = s.subscribe();
    let positions = s
        .append(&[crate::events::NewEvent {
            project: "p9".into(),
            kind: "dev.nimbus.test.happened".into(),
            source: "/test".into(),
            subject: "s".into(),
            data: json!({"k": 1}),
        }])
        .unwrap();
    assert!(wake.has_changed().unwrap(), "a commit did not wake subscribers");
    assert_eq!(*wake.borrow_and_update(), positions[0]);
    let bounds = s.bounds().unwrap();
    assert_eq!(bounds.last, positions[0]);
    let got = s.read(positions[0] - 1, Some("p9"), 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].kind.as_str(), got[0].data.clone()),
        ("dev.nimbus.test.happened", json!({"k": 1}))
    );
    assert!(s.read(0, Some("p-none"), 10).unwrap().is_empty());
    // Cursors hold back pruning; pruning never reuses positions.
    s.set_cursor("slow", 1).unwrap();
    assert_eq!(s.cursor("slow").unwrap(), Some(1));
    let far_future = nimbus_model::now_millis() + 3_600_000;
    s.prune(far_future).unwrap();
    assert_eq!(s.bounds().unwrap().pruned_through, 1);
    assert_eq!(s.read(1, None, 1000).unwrap().len() as u64, bounds.last - 1);
    assert!(s.delete_cursor("slow").unwrap());
    s.prune(far_future).unwrap();
    assert_eq!(s.bounds().unwrap().pruned_through, bounds.last);
    assert!(s.read(0, None, 10).unwrap().is_empty());
    let next = s
        .append(&[crate::events::NewEvent {
            project: "p9".into(),
            kind: "dev.nimbus.test.happened".into(),
            source: "/test".into(),
            subject: "s".into(),
            data: json!(null),
        }])
        .unwrap();
    assert!(next[0] > bounds.last, "a position was reused after pruning");
}

/// Many writers at once (a backend may commit them together): each gets its own outcome, a
/// failed condition fails only its own write, and every committed write has its event, once.
pub fn concurrent_writes<S: DocumentStore + EventLog>(s: &S) {
    s.create_collection("p1", "race", &spec(&[])).unwrap();
    let before = s.bounds().unwrap().last;
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                scope.spawn(move || {
                    (0..25)
                        .map(|i| {
                            // Every writer also tries to create the one shared id "same":
                            // exactly one of those succeeds.
                            let id = if i == 0 { "same".to_string() } else { format!("t{t}-{i}") };
                            let op = WriteOp {
                                expect: Expect::Absent,
                                ..put("race", &id, json!({"t": t, "i": i}))
                            };
                            (id, s.write("p1", &[op]).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<_> = outcomes.iter().filter(|(id, r)| id == "same" && r.is_ok()).collect();
    assert_eq!(won.len(), 1, "exactly one create of the shared id succeeds");
    for (id, r) in &outcomes {
        match r {
            Ok(out) => assert!(matches!(&out[0], WriteOutcome::Created(d) if &d.id == id)),
            Err(f) => {
                assert_eq!(id, "same");
                assert_eq!(f.reason, FailureReason::AlreadyExists);
            }
        }
    }
    let committed = outcomes.iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(committed, 8 * 24 + 1);
    let events = s.read(before, Some("p1"), 1000).unwrap();
    assert_eq!(events.len(), committed, "one event per committed write");
    let mut subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), committed);
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
}
