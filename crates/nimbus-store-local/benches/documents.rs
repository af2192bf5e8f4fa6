//! Document store throughput through the `DocumentStore` trait, on a file-backed SQLite store
//! (WAL, synchronous=NORMAL) like the server's: single inserts (each its own transaction, with
//! its event appended), batched inserts, and an indexed list (filter + sort + 20 per page) over
//! 100,000 documents.
//!
//! `cargo bench -p nimbus-store-local --bench documents`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nimbus_store::documents::{
    CollectionSpec, CompareOp, DocumentStore, Expect, FieldPath, Filter, IndexSpec, Query,
    SortField, SortKey, WriteOp,
};
use nimbus_store_local::SqliteStore;
use serde_json::{Value, json};

fn doc(i: u64) -> Value {
    // About 1 KiB of JSON.
    json!({"status": if i.is_multiple_of(4) { "open" } else { "closed" }, "age": i % 97, "owner": format!("u{}", i % 1000),
           "title": format!("document number {i}"), "body": "x".repeat(900)})
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    let spec = CollectionSpec {
        schema: None,
        rules: json!({}),
        indexes: vec![IndexSpec {
            name: "by_status_age".into(),
            fields: vec![FieldPath::parse("status").unwrap(), FieldPath::parse("age").unwrap()],
        }],
    };
    s.create_collection("p", "c", &spec).unwrap();
    (dir, s)
}

fn put(i: u64) -> WriteOp {
    WriteOp {
        collection: "c".into(),
        id: format!("d{i:08}"),
        data: Some(doc(i)),
        expect: Expect::Absent,
    }
}

fn inserts(c: &mut Criterion) {
    let (_dir, s) = store();
    let mut g = c.benchmark_group("insert");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("single", |b| {
        b.iter(|| {
            i += 1;
            s.write("p", &[put(i)]).unwrap().unwrap();
        })
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_of_100", |b| {
        b.iter(|| {
            let ops: Vec<WriteOp> = (0..100)
                .map(|_| {
                    i += 1;
                    put(i)
                })
                .collect();
            s.write("p", &ops).unwrap().unwrap();
        })
    });
    g.finish();
}

fn list(c: &mut Criterion) {
    let (_dir, s) = store();
    for chunk in 0..100u64 {
        let ops: Vec<WriteOp> = (0..1000).map(|j| put(chunk * 1000 + j)).collect();
        s.write("p", &ops).unwrap().unwrap();
    }
    let q = Query {
        filter: Some(Filter::Compare(
            FieldPath::parse("status").unwrap(),
            CompareOp::Eq,
            json!("open"),
        )),
        sort: vec![SortKey {
            field: SortField::Field(FieldPath::parse("age").unwrap()),
            descending: true,
        }],
        after: None,
        limit: 20,
    };
    let page = s.query("p", "c", &q).unwrap();
    assert_eq!(page.index.as_deref(), Some("by_status_age"));
    assert_eq!(page.documents.len(), 20);
    let mut g = c.benchmark_group("list");
    g.throughput(Throughput::Elements(1));
    g.bench_function("indexed_filter_sort_20_of_100k", |b| {
        b.iter(|| s.query("p", "c", &q).unwrap())
    });
    let second = Query { after: page.next.clone(), ..q.clone() };
    g.bench_function("indexed_second_page_of_100k", |b| {
        b.iter(|| s.query("p", "c", &second).unwrap())
    });
    g.finish();
}

criterion_group!(benches, inserts, list);
criterion_main!(benches);
