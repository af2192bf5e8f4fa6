//! Profile the object write path without HTTP: stream MIB mebibytes of FRAME-byte frames (as a
//! server's body stream gives them, through a channel from another task) into
//! `FilesService::put_object` on a local store under DIR, the way the REST and S3 handlers do.
//! Prints MiB/s for the body bridge in use (`stream_reader`) and, with `old`, for the
//! `SyncIoBridge` it replaced; `parts` also times MD5 alone and write + fsync alone on the
//! same bytes. For profiling (e.g. under `valgrind --tool=callgrind`), not a figure of record:
//! those come from `bench/files.sh`.
//!
//!   cargo run --release -p nimbus-files --example write_path -- [MIB] [FRAME] [DIR] [old] [parts]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use md5::{Digest, Md5};
use nimbus_files::{BucketConfig, FilesConfig, FilesService, Principal};
use nimbus_store_local::{LocalObjectStore, SqliteStore};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let frame: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16 << 10);
    let dir = args.get(2).map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let old = args.iter().any(|a| a == "old");
    let parts = args.iter().any(|a| a == "parts");
    let scratch = tempfile::tempdir_in(&dir).unwrap();

    // One MiB of pseudo-random bytes, sliced into frames without copying.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let block: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let block = Bytes::from(block);

    if parts {
        let t = Instant::now();
        let mut h = Md5::new();
        for _ in 0..mib {
            h.update(&block);
        }
        let _ = h.finalize();
        report("md5 alone", mib, t);
        let t = Instant::now();
        let mut f = std::fs::File::create(scratch.path().join("raw")).unwrap();
        for _ in 0..mib {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
        report("write + fsync alone (1 MiB writes)", mib, t);
        drop(f);
        std::fs::remove_file(scratch.path().join("raw")).unwrap();
    }

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let db = Arc::new(SqliteStore::open(&scratch.path().join("nimbus.db")).unwrap());
        let objects =
            Arc::new(LocalObjectStore::open(db.clone(), &scratch.path().join("objects")).unwrap());
        let files = FilesService::new(objects, db, FilesConfig::default(), b"bench");
        files.create_bucket("p", "bench", &BucketConfig::default()).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
        tokio::spawn(async move {
            let per_block = (1 << 20) / frame;
            for _ in 0..mib {
                for i in 0..per_block {
                    if tx.send(Ok(block.slice(i * frame..(i + 1) * frame))).await.is_err() {
                        return;
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut reader: Box<dyn std::io::Read + Send> = if old {
            Box::new(tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream)))
        } else {
            Box::new(nimbus_files::body::stream_reader(stream))
        };
        let t = Instant::now();
        let who = Principal::Service { identity: serde_json::json!({"kind": "admin"}) };
        let meta = files
            .call(move |f| {
                f.put_object(
                    "p",
                    "bench",
                    "big",
                    "application/octet-stream",
                    &BTreeMap::new(),
                    &who,
                    None,
                    &mut reader,
                )
            })
            .await
            .unwrap();
        assert_eq!(meta.size, (mib as u64) << 20);
        report(
            if old { "put_object via SyncIoBridge" } else { "put_object via stream_reader" },
            mib,
            t,
        );
    });
}

fn report(what: &str, mib: usize, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!("{what}: {mib} MiB in {s:.2} s = {:.0} MiB/s", mib as f64 / s);
}
