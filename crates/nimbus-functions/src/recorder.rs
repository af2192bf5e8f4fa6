//! Invocation records leave the request path through a channel; one task batches them into the
//! store and then tells log followers, with the commit position (`seq`) the store gave each.
//! The store counts usage (billing, quotas) in the transaction that writes each batch, so a
//! record written is a record billed, and a record is never given up.
//!
//! Bounded with back-pressure, without a task per record: the channel itself never refuses (the
//! record of a finished invocation is sent from a synchronous callback on the guest's task, which
//! must not block), but every record queued and not yet committed is counted, and while that
//! count is at [`BACKLOG`] the service admits no new invocation (503 `recorder_backlog`). What is
//! held is therefore at most `BACKLOG` + the invocations already running when it filled up. A
//! store that stays down keeps the writer retrying (backoff up to [`MAX_BACKOFF`]) and the node
//! refusing new invocations until the store is back: nothing ran that is not recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nimbus_model::InvocationRecord;
use nimbus_store::InvocationStore;
use tokio::sync::{broadcast, mpsc, oneshot};

const BATCH: usize = 1024;
/// Records held in memory (queued, or in a batch being written) beyond which new invocations are
/// refused. At ~1 KiB a record (more with logs) this is tens of MiB.
pub(crate) const BACKLOG: usize = 16_384;
const LINGER: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

// Records are nearly every message: boxing them would cost an allocation each to shrink the
// rare flush.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(InvocationRecord),
    /// Answered once every record queued before it is in the store.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
    /// Records queued and not yet committed.
    pending: Arc<AtomicUsize>,
    pub(crate) followers: broadcast::Sender<Arc<InvocationRecord>>,
}

impl Recorder {
    pub(crate) fn spawn(store: Arc<dyn InvocationStore>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (followers, _) = broadcast::channel(1024);
        let pending = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(store, rx, followers.clone(), pending.clone()));
        (Recorder { tx, pending, followers }, task)
    }

    /// Whether a new invocation may start: the backlog of unwritten records is under its bound.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.load(Ordering::Relaxed) < BACKLOG
    }

    /// Records queued and not yet in the store.
    pub(crate) fn backlog(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Queue a record without waiting (bounded by admission, see the module doc).
    pub(crate) fn record_now(&self, record: InvocationRecord) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Record(record)).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            // Only after the writer task ended (the service is being dropped).
            tracing::error!("invocation recorder has stopped; record lost");
        }
    }

    /// Wait until every record queued so far is written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(
    store: Arc<dyn InvocationStore>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    followers: broadcast::Sender<Arc<InvocationRecord>>,
    pending: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Let a batch gather before writing: under load this turns one wake-up and one blocking
        // hand-off per record into one per LINGER, and costs a log follower at most LINGER.
        if batch.len() < BATCH {
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        let mut flushes = Vec::new();
        let records: Vec<InvocationRecord> = batch
            .drain(..)
            .filter_map(|m| match m {
                Msg::Record(r) => Some(r),
                Msg::Flush(ack) => {
                    flushes.push(ack);
                    None
                }
            })
            .collect();
        if !records.is_empty() {
            let n = records.len();
            write(&store, records, &followers).await;
            pending.fetch_sub(n, Ordering::Relaxed);
        }
        for ack in flushes {
            let _ = ack.send(());
        }
    }
}

async fn write(
    store: &Arc<dyn InvocationStore>,
    records: Vec<InvocationRecord>,
    followers: &broadcast::Sender<Arc<InvocationRecord>>,
) {
    let mut records = Some(records);
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0u32;
    // Retried until it is stored. Every record is in exactly one batch, so only a retry can
    // repeat one: retries go through `retry_batch`, idempotent by id, so a batch whose commit
    // succeeded but whose answer was lost is neither duplicated nor counted twice.
    let mut written = loop {
        attempt += 1;
        let (s, batch) = (store.clone(), records.take().expect("kept between attempts"));
        let result = tokio::task::spawn_blocking(move || {
            let mut batch = batch;
            let r =
                if attempt == 1 { s.insert_batch(&mut batch) } else { s.retry_batch(&mut batch) };
            (r, batch)
        })
        .await;
        match result {
            Ok((Ok(()), batch)) => break batch,
            Ok((Err(e), batch)) => {
                tracing::warn!(error = %e, attempt, n = batch.len(), "writing invocation records; retrying");
                records = Some(batch);
            }
            Err(e) => {
                // The blocking task panicked: the batch went with it. Not expected from a store;
                // nothing to retry with.
                tracing::error!(error = %e, "invocation record writer panicked; batch lost");
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    };
    // Sent after the commit, with the positions the store assigned, in position order (one
    // writer task, one batch at a time): a follower can drop what it already read from the store
    // by comparing positions.
    // Without followers (the usual case) the records are just dropped, not boxed for nobody. A
    // follower that subscribes after this check reads these records from the store: they are
    // committed, and it subscribes before it reads.
    if followers.receiver_count() > 0 {
        // The store may position a batch's records in another order than they came (by
        // function, for SQLite).
        written.sort_unstable_by_key(|r| r.seq);
        for r in written {
            // A follower that left in between is not an error.
            let _ = followers.send(Arc::new(r));
        }
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
    }

    impl InvocationStore for Flaky {
        fn insert_batch(&self, records: &mut [InvocationRecord]) -> Result<()> {
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

    fn record(id: u32) -> InvocationRecord {
        InvocationRecord {
            seq: 0,
            id: id.to_string(),
            project: "p".into(),
            function: "f".into(),
            version: 1,
            trigger: "http".into(),
            method: String::new(),
            path: String::new(),
            started_at: 0,
            duration_us: 0,
            queue_us: 0,
            fuel: 0,
            peak_memory_bytes: 0,
            memory_limit_mb: 0,
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
        let store = Arc::new(Flaky {
            failures: Mutex::new(6),
            retries: Mutex::new(0),
            kept: Mutex::new(vec![]),
        });
        let (recorder, _task) = Recorder::spawn(store.clone());
        for i in 0..100 {
            recorder.record_now(record(i));
        }
        assert_eq!(recorder.backlog(), 100);
        recorder.flush().await;
        assert_eq!(store.kept.lock().len(), 100);
        assert_eq!(*store.failures.lock(), 0, "it failed 6 times first");
        assert_eq!(*store.retries.lock(), 6, "every attempt after the first is a retry");
        assert_eq!(recorder.backlog(), 0);
        assert!(recorder.has_room());
    }
}
