//! Invocation records leave the request path through a queue; one thread batches them into the
//! store and then tells log followers, with the commit position (`seq`) the store gave each.
//! The store counts usage (billing, quotas) in the transaction that writes each batch, so a
//! record written is a record billed, and a record is never given up.
//!
//! Bounded with back-pressure, without a task per record: the queue itself never refuses (the
//! record of a finished invocation is sent from a synchronous callback on the guest's task, which
//! must not block), but every record queued and not yet committed is counted, and while that
//! count is at [`BACKLOG`] the service admits no new invocation (503 `recorder_backlog`). What is
//! held is therefore at most `BACKLOG` + the invocations already running when it filled up. A
//! store that stays down keeps the writer retrying (backoff up to [`MAX_BACKOFF`]) and the node
//! refusing new invocations until the store is back: nothing ran that is not recorded.
//!
//! The writer is a thread of its own rather than a task that hands each batch to tokio's
//! blocking pool, so every batch runs on the same thread and no worker schedules it. (Its CPU
//! per record was not measured to drop with this: 1.0-1.8 µs at full load either way, within
//! this machine's noise.) The thread ends once the [`Recorder`] is dropped, after writing what
//! was queued.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nimbus_model::usage::{Execution, UsageCounters};
use nimbus_model::{InvocationRecord, InvocationStatus, UnixMillis};
use nimbus_store::InvocationStore;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{broadcast, oneshot};

/// Records written in one transaction at most.
const BATCH: usize = 2048;
/// Records held in memory (queued, or in a batch being written) beyond which new invocations are
/// refused. At ~1 KiB a record (more with logs) this is tens of MiB.
pub(crate) const BACKLOG: usize = 16_384;
/// How long a batch gathers. Each commit writes the pages its records fill and, again, the few
/// pages every commit touches (the segment indexes' leaves, positions, usage), and a commit has
/// costs of its own (the WAL's frames and checkpoints, a wake-up): fewer, larger commits cost
/// less per record. Against 10 ms (and 1,024 records), with postcard segments, the recorder's
/// thread went from ~1.56 to ~0.57 µs per hello request (`perf` on that thread;
/// docs/benchmarks.md, stop 26). The price: a log follower sees a record up to 50 ms later, and
/// a kill -9 loses up to 50 ms of finished invocations' records (and their usage) rather than 10.
const LINGER: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

// Records are nearly every message: boxing them would cost an allocation each to shrink the
// rare flush.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Finished),
    /// Answered once every record queued before it is in the store.
    Flush(oneshot::Sender<()>),
}

/// What a record takes from its function's version.
pub(crate) trait RecordNames: Send + Sync {
    fn project(&self) -> &str;
    fn function(&self) -> &str;
    fn version(&self) -> u32;
    /// The configured memory limit in MiB, rounded up: what GB-seconds are billed on.
    fn memory_limit_mb(&self) -> u64;
}

/// An invocation's record as the request path hands it over: values inline, the names through
/// the version it ran, and no string of its own unless the invocation wrote logs, failed or has
/// a long path. The writer thread makes the [`InvocationRecord`] of it.
///
/// Why not the record itself: its six strings were allocated and filled on a worker, then read
/// and freed on the writer's thread. Now they are made and freed on the writer alone; with the
/// other request-path changes of stop 25 this took ~4,000 instructions per request off the
/// workers (`bench/instructions.sh`).
pub(crate) struct Finished {
    pub(crate) names: Arc<dyn RecordNames>,
    pub(crate) draft: Draft,
}

/// A [`Finished`] record's own values.
pub(crate) struct Draft {
    pub(crate) id: uuid::Uuid,
    /// `http`, `invoke`, `async`, or an event trigger's `kind:name`.
    pub(crate) trigger: Cow<'static, str>,
    pub(crate) method: http::Method,
    /// The request path's bytes (valid UTF-8), inline when short.
    pub(crate) path: smallvec::SmallVec<[u8; 40]>,
    pub(crate) started_at: UnixMillis,
    pub(crate) duration_us: u64,
    pub(crate) queue_us: u64,
    pub(crate) fuel: u64,
    pub(crate) peak_memory_bytes: u64,
    pub(crate) outbound_bytes: u64,
    pub(crate) status: InvocationStatus,
    pub(crate) http_status: Option<u16>,
    pub(crate) error: Option<String>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) logs_truncated: bool,
}

impl Finished {
    /// What it adds to usage; `None` when it never ran.
    pub(crate) fn usage(&self) -> Option<UsageCounters> {
        let d = &self.draft;
        UsageCounters::of_execution(&Execution {
            status: d.status,
            duration_us: d.duration_us,
            queue_us: d.queue_us,
            memory_limit_mb: self.names.memory_limit_mb(),
            fuel: d.fuel,
            outbound_bytes: d.outbound_bytes,
            event: d.trigger.contains(':'),
        })
    }

    fn into_record(self) -> InvocationRecord {
        let (names, d) = (self.names, self.draft);
        InvocationRecord {
            seq: 0, // given by the store when the record is written
            id: nimbus_model::invocation_id_string(&d.id),
            project: names.project().to_owned(),
            function: names.function().to_owned(),
            version: names.version(),
            trigger: d.trigger.into_owned(),
            method: d.method.as_str().to_owned(),
            // Made from a `&str` on the request path.
            path: String::from_utf8_lossy(&d.path).into_owned(),
            started_at: d.started_at,
            duration_us: d.duration_us,
            queue_us: d.queue_us,
            fuel: d.fuel,
            peak_memory_bytes: d.peak_memory_bytes,
            memory_limit_mb: names.memory_limit_mb(),
            outbound_bytes: d.outbound_bytes,
            status: d.status,
            http_status: d.http_status,
            error: d.error,
            stdout: d.stdout,
            stderr: d.stderr,
            logs_truncated: d.logs_truncated,
        }
    }
}

/// Cheap to clone (one reference count): every invocation takes one to its finishing callback.
#[derive(Clone)]
pub(crate) struct Recorder(Arc<Shared>);

struct Shared {
    queue: Arc<Queue>,
    followers: broadcast::Sender<Arc<InvocationRecord>>,
}

/// Between the request path and the writer: a vector behind one lock, which the writer swaps
/// for its empty one. Hand-written rather than a channel because of what a record costs the
/// request path: tokio's unbounded channel writes five shared cache lines per message (its
/// semaphore, tail position, slot flags and receiver's waker, and the backlog count beside
/// it), and every 32 messages a block allocated on a worker is recycled or freed by the
/// writer. Here the lock, the vector and the count share one line (`align(64)`), nothing is
/// allocated per message, and the writer takes a whole batch in one swap instead of popping
/// and moving each record out. Serving hello, four of five A/B runs gave +0.6% to +5.2% req/s
/// and one −6%, on a machine that swings by ±5% (docs/benchmarks.md, stop 28).
#[repr(align(64))]
struct Queue {
    state: Mutex<Queued>,
    /// Records queued or being written: what [`BACKLOG`] bounds. Read without the lock.
    pending: AtomicUsize,
    /// The writer waits here when it has nothing to do.
    wake: Condvar,
}

struct Queued {
    msgs: Vec<Msg>,
    /// The [`Recorder`] is gone: write what is queued and end.
    closed: bool,
    /// The writer's thread ended (it panicked): nothing queued would ever be written.
    stopped: bool,
}

impl Queue {
    fn push(&self, msg: Msg, records: usize) {
        let mut q = self.state.lock();
        if q.stopped {
            drop(q);
            // A flush's sender is dropped with `msg`: its caller stops waiting.
            if records > 0 {
                tracing::error!("invocation recorder has stopped; record lost");
            }
            return;
        }
        q.msgs.push(msg);
        // Under the lock, whose cache line this is: no second line to take.
        self.pending.fetch_add(records, Ordering::Relaxed);
        drop(q);
        // Only a load of the condition variable's state (in this same line) unless the writer
        // is waiting on it.
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.queue.state.lock().closed = true;
        self.queue.wake.notify_one();
    }
}

impl Recorder {
    pub(crate) fn spawn(store: Arc<dyn InvocationStore>) -> std::io::Result<Self> {
        let (followers, _) = broadcast::channel(1024);
        let queue = Arc::new(Queue {
            state: Mutex::new(Queued {
                msgs: Vec::with_capacity(BATCH),
                closed: false,
                stopped: false,
            }),
            pending: AtomicUsize::new(0),
            wake: Condvar::new(),
        });
        let writer = Writer { store, followers: followers.clone(), queue: queue.clone() };
        std::thread::Builder::new().name("nimbus-recorder".into()).spawn(move || writer.run())?;
        Ok(Recorder(Arc::new(Shared { queue, followers })))
    }

    /// Whether a new invocation may start: the backlog of unwritten records is under its bound.
    pub(crate) fn has_room(&self) -> bool {
        self.0.queue.pending.load(Ordering::Relaxed) < BACKLOG
    }

    /// Records queued and not yet in the store.
    pub(crate) fn backlog(&self) -> usize {
        self.0.queue.pending.load(Ordering::Relaxed)
    }

    /// Queue a record without waiting (bounded by admission, see the module doc).
    pub(crate) fn record_now(&self, record: Finished) {
        self.0.queue.push(Msg::Record(record), 1);
    }

    /// Wait until every record queued so far is written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.0.queue.push(Msg::Flush(tx), 0);
        let _ = rx.await;
    }

    /// Committed records, in position order, as they are written.
    pub(crate) fn follow(&self) -> broadcast::Receiver<Arc<InvocationRecord>> {
        self.0.followers.subscribe()
    }
}

struct Writer {
    store: Arc<dyn InvocationStore>,
    followers: broadcast::Sender<Arc<InvocationRecord>>,
    queue: Arc<Queue>,
}

impl Writer {
    fn run(self) {
        // Swapped with the queue's vector: both keep their capacity, so a batch allocates
        // nothing for the messages, nor does the request path for the next ones.
        let mut taken: Vec<Msg> = Vec::with_capacity(BATCH);
        let mut records: Vec<InvocationRecord> = Vec::with_capacity(BATCH);
        let mut flushes = Vec::new();
        // Declared after the vectors, so dropped before them: the queue is marked stopped
        // before the flushes held in them are let go.
        let _stopped = Stopped(&self.queue);
        loop {
            {
                let mut q = self.queue.state.lock();
                while q.msgs.is_empty() && !q.closed {
                    self.queue.wake.wait(&mut q);
                }
                if q.msgs.is_empty() {
                    return; // closed, and everything written
                }
                // Let a batch gather before writing: under load this turns one wake-up per
                // record into one per LINGER, and costs a log follower at most LINGER.
                if q.msgs.len() < BATCH && !q.closed {
                    drop(q);
                    std::thread::sleep(LINGER);
                    q = self.queue.state.lock();
                }
                std::mem::swap(&mut q.msgs, &mut taken);
            }
            let mut msgs = taken.drain(..);
            loop {
                // At most BATCH records per transaction; flushes are answered after the
                // records queued before them are in.
                for m in msgs.by_ref() {
                    match m {
                        Msg::Record(r) => records.push(r.into_record()),
                        Msg::Flush(ack) => flushes.push(ack),
                    }
                    if records.len() == BATCH {
                        break;
                    }
                }
                if records.is_empty() {
                    break;
                }
                let n = records.len();
                self.write(&mut records);
                records.clear();
                self.queue.pending.fetch_sub(n, Ordering::Relaxed);
            }
            drop(msgs);
            for ack in flushes.drain(..) {
                let _ = ack.send(());
            }
            // A burst's backlog (up to BACKLOG records) is not kept allocated for good.
            taken.shrink_to(4 * BATCH);
        }
    }

    /// Write `records` (or give them up: see the errors below).
    fn write(&self, records: &mut Vec<InvocationRecord>) {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0u32;
        // Retried until it is stored. Every record is in exactly one batch, so only a retry can
        // repeat one: retries go through `retry_batch`, idempotent by id, so a batch whose commit
        // succeeded but whose answer was lost is neither duplicated nor counted twice.
        loop {
            attempt += 1;
            let store = &self.store;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if attempt == 1 { store.insert_batch(records) } else { store.retry_batch(records) }
            }));
            match result {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, attempt, n = records.len(), "writing invocation records; retrying");
                }
                Err(_) => {
                    // Not expected from a store: nothing sensible to retry with.
                    tracing::error!(
                        n = records.len(),
                        "invocation record writer panicked; batch lost"
                    );
                    return;
                }
            }
            if self.queue.is_closed() {
                // The service is gone (dropped without a graceful shutdown, which flushes
                // first): nobody is left to wait for the store to come back.
                tracing::error!(
                    n = records.len(),
                    "the functions service stopped while the store was failing; batch lost"
                );
                return;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        // Sent after the commit, with the positions the store assigned, in position order (one
        // writer, one batch at a time): a follower can drop what it already read from the store
        // by comparing positions.
        // Without followers (the usual case) the records are just dropped, not boxed for nobody. A
        // follower that subscribes after this check reads these records from the store: they are
        // committed, and it subscribes before it reads.
        if self.followers.receiver_count() > 0 {
            // The store may position a batch's records in another order than they came (by
            // function, for SQLite).
            records.sort_unstable_by_key(|r| r.seq);
            for r in records.drain(..) {
                // A follower that left in between is not an error.
                let _ = self.followers.send(Arc::new(r));
            }
        }
    }
}

/// Marks the queue stopped when the writer's thread ends, by a panic included, and drops what is
/// queued: records can no longer be written, and flushes waiting on them must not wait forever.
struct Stopped<'a>(&'a Queue);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut q = self.0.state.lock();
        q.stopped = true;
        let lost = std::mem::take(&mut q.msgs);
        drop(q);
        let records = lost.iter().filter(|m| matches!(m, Msg::Record(_))).count();
        if records > 0 {
            tracing::error!(
                records,
                "invocation recorder stopped with records queued; they are lost"
            );
        }
        self.0.pending.fetch_sub(records, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_model::{InvocationQuery, InvocationStatus, UnixMillis};
    use nimbus_store::{Result, StoreError};
    use parking_lot::Mutex;

    /// A store that fails its first `failures` writes, then keeps what it is given.
    struct Flaky {
        failures: Mutex<u32>,
        retries: Mutex<u32>,
        kept: Mutex<Vec<InvocationRecord>>,
        /// The size of every batch it was given.
        batches: Mutex<Vec<usize>>,
    }

    impl Flaky {
        fn failing(failures: u32) -> Arc<Self> {
            Arc::new(Flaky {
                failures: Mutex::new(failures),
                retries: Mutex::new(0),
                kept: Mutex::new(vec![]),
                batches: Mutex::new(vec![]),
            })
        }
    }

    impl InvocationStore for Flaky {
        fn insert_batch(&self, records: &mut [InvocationRecord]) -> Result<()> {
            self.batches.lock().push(records.len());
            let mut f = self.failures.lock();
            if *f > 0 {
                *f -= 1;
                return Err(StoreError::Conflict("the disk is full".into()));
            }
            self.kept.lock().extend(records.iter().cloned());
            Ok(())
        }
        fn retry_batch(&self, records: &mut [InvocationRecord]) -> Result<()> {
            *self.retries.lock() += 1;
            self.insert_batch(records)
        }
        fn query(&self, _: &str, _: &InvocationQuery) -> Result<Vec<InvocationRecord>> {
            Ok(vec![])
        }
        fn get(&self, _: &str, _: &str) -> Result<Option<InvocationRecord>> {
            Ok(None)
        }
        fn prune(&self, _: UnixMillis, _: u32) -> Result<u64> {
            Ok(0)
        }
        fn delete_project(&self, _: &str) -> Result<u64> {
            Ok(0)
        }
    }

    struct Names;

    impl RecordNames for Names {
        fn project(&self) -> &str {
            "p"
        }
        fn function(&self) -> &str {
            "f"
        }
        fn version(&self) -> u32 {
            1
        }
        fn memory_limit_mb(&self) -> u64 {
            128
        }
    }

    fn record(path: &str) -> Finished {
        Finished { names: Arc::new(Names), draft: draft(path) }
    }

    fn draft(path: &str) -> Draft {
        Draft {
            id: nimbus_model::new_invocation_uuid().0,
            trigger: "http".into(),
            method: http::Method::GET,
            path: path.as_bytes().into(),
            started_at: 0,
            duration_us: 0,
            queue_us: 0,
            fuel: 0,
            peak_memory_bytes: 0,
            outbound_bytes: 0,
            status: InvocationStatus::Ok,
            http_status: None,
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            logs_truncated: false,
        }
    }

    /// The old writer gave a batch up after five failed writes; this one keeps it until the
    /// store takes it (six failures: 50+100+...+1600 ms of backoff), counted as backlog meanwhile.
    #[tokio::test]
    async fn a_failing_store_loses_nothing() {
        let store = Flaky::failing(6);
        let recorder = Recorder::spawn(store.clone()).unwrap();
        for i in 0..100 {
            // Paths inline and too long to be.
            recorder.record_now(record(&format!("/{}", "x".repeat(i))));
        }
        assert_eq!(recorder.backlog(), 100);
        recorder.flush().await;
        let kept = store.kept.lock().clone();
        assert_eq!(kept.len(), 100);
        for (i, r) in kept.iter().enumerate() {
            assert_eq!(r.path, format!("/{}", "x".repeat(i)));
            assert_eq!((r.project.as_str(), r.function.as_str(), r.version), ("p", "f", 1));
            assert_eq!((r.method.as_str(), r.memory_limit_mb), ("GET", 128));
            assert_eq!(nimbus_model::invocation_id_millis(&r.id).map(|_| ()), Some(()));
        }
        assert_eq!(*store.failures.lock(), 0, "it failed 6 times first");
        assert_eq!(*store.retries.lock(), 6, "every attempt after the first is a retry");
        assert_eq!(recorder.backlog(), 0);
        assert!(recorder.has_room());
    }

    /// Records from several threads at once all arrive, in transactions of at most BATCH, and
    /// dropping the recorder writes what is still queued, then ends the writer's thread.
    #[test]
    fn records_from_many_threads_are_all_written_when_the_recorder_is_dropped() {
        let store = Flaky::failing(0);
        let recorder = Recorder::spawn(store.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for i in 0..3000 {
                        recorder.record_now(record(&format!("/{t}/{i}")));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(recorder.backlog() <= 12_000);
        drop(recorder);
        // The writer holds the store until its thread ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&store) > 1 {
            assert!(std::time::Instant::now() < deadline, "the writer did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        let kept = store.kept.lock();
        assert_eq!(kept.len(), 12_000);
        let paths: std::collections::HashSet<&str> = kept.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths.len(), 12_000, "each record once");
        let batches = store.batches.lock();
        assert!(batches.iter().all(|&n| (1..=BATCH).contains(&n)), "{batches:?}");
    }

    struct Panicky;

    impl RecordNames for Panicky {
        fn project(&self) -> &str {
            panic!("a bug in the writer's path")
        }
        fn function(&self) -> &str {
            "f"
        }
        fn version(&self) -> u32 {
            1
        }
        fn memory_limit_mb(&self) -> u64 {
            128
        }
    }

    /// If the writer's thread dies, a flush returns instead of waiting forever for it, and
    /// later records are not queued for nobody.
    #[tokio::test]
    async fn a_dead_writer_does_not_hang_flushes() {
        let recorder = Recorder::spawn(Flaky::failing(0)).unwrap();
        recorder.record_now(Finished { names: Arc::new(Panicky), draft: draft("/boom") });
        tokio::time::timeout(Duration::from_secs(5), recorder.flush())
            .await
            .expect("flush returned after the writer died");
        let before = recorder.backlog();
        recorder.record_now(record("/after"));
        assert_eq!(recorder.backlog(), before, "nothing is queued once the writer is gone");
        tokio::time::timeout(Duration::from_secs(5), recorder.flush()).await.unwrap();
    }
}
