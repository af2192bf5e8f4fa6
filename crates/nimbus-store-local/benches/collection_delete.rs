//! How long deleting a big collection keeps other writes waiting (not criterion: one run,
//! reported as the deletion's time and a concurrent writer's worst wait). Fills a file database
//! with N documents of ~1 KiB in an indexed collection, then deletes it while another thread
//! writes a document every 5 ms.
//!
//!   cargo bench -p nimbus-store-local --bench collection_delete -- 200000

use nimbus_store::documents::{
    CollectionSpec, DocumentStore, Expect, FieldPath, IndexSpec, WriteOp,
};
use nimbus_store_local::SqliteStore;
use serde_json::json;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};
fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(&dir.path().join("b.db")).unwrap());
    let spec = CollectionSpec {
        schema: None,
        rules: json!({}),
        indexes: vec![IndexSpec {
            name: "by_status_age".into(),
            fields: vec![FieldPath::parse("status").unwrap(), FieldPath::parse("age").unwrap()],
        }],
    };
    s.create_collection("p", "c", &spec).unwrap();
    s.create_collection("p", "other", &CollectionSpec::default()).unwrap();
    let t = Instant::now();
    for b in 0..n / 1000 {
        let ops: Vec<WriteOp> = (0..1000).map(|k| { let i = b * 1000 + k; WriteOp { collection: "c".into(), id: format!("d{i:08}"), data: Some(json!({"status": if i % 4 == 0 {"open"} else {"closed"}, "age": i % 97, "body": "x".repeat(900)})), expect: Expect::Absent } }).collect();
        s.write("p", &ops).unwrap().unwrap();
    }
    println!("filled {n} in {:.1} s", t.elapsed().as_secs_f64());
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = Instant::now();
                s.write(
                    "p",
                    &[WriteOp {
                        collection: "other".into(),
                        id: format!("w{i}"),
                        data: Some(json!({})),
                        expect: Expect::Any,
                    }],
                )
                .unwrap()
                .unwrap();
                worst = worst.max(a.elapsed());
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (worst, i)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    s.delete_collection("p", "c").unwrap();
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (worst, writes) = w.join().unwrap();
    println!(
        "delete_collection of {n} documents took {:.2} s; a writer every 5 ms ({writes} writes) waited at most {:.1} ms",
        took.as_secs_f64(),
        worst.as_secs_f64() * 1e3
    );
}
