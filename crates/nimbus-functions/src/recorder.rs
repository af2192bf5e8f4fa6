//! Invocation records leave the request path through a channel; one task batches them into the
//! store and then tells log followers, with the commit position (`seq`) the store gave each.
//! Billing and quotas will read the same records.

use std::sync::Arc;
use std::time::Duration;

use nimbus_model::InvocationRecord;
use nimbus_store::InvocationStore;
use tokio::sync::{broadcast, mpsc, oneshot};

const BATCH: usize = 1024;
const CHANNEL: usize = 16_384;
const LINGER: Duration = Duration::from_millis(10);

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
    tx: mpsc::Sender<Msg>,
    pub(crate) followers: broadcast::Sender<Arc<InvocationRecord>>,
}

impl Recorder {
    pub(crate) fn spawn(store: Arc<dyn InvocationStore>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (followers, _) = broadcast::channel(1024);
        let task = tokio::spawn(run(store, rx, followers.clone()));
        (Recorder { tx, followers }, task)
    }

    /// Queue a record without waiting; if the writer is far behind, hand it to a task that
    /// waits (back-pressure instead of losing a billable record).
    pub(crate) fn record_now(&self, record: InvocationRecord) {
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Record(record))) => {
                let recorder = self.clone();
                tokio::spawn(async move { recorder.record(record).await });
            }
            Err(_) => tracing::error!("invocation recorder has stopped; record lost"),
        }
    }

    /// Wait until every record queued so far is written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Queue a record. Waits only if the writer is far behind (back-pressure instead of losing
    /// billable records); callers run this after the response has been handed over.
    pub(crate) async fn record(&self, record: InvocationRecord) {
        if self.tx.send(Msg::Record(record)).await.is_err() {
            tracing::error!("invocation recorder has stopped; record lost");
        }
    }
}

async fn run(
    store: Arc<dyn InvocationStore>,
    mut rx: mpsc::Receiver<Msg>,
    followers: broadcast::Sender<Arc<InvocationRecord>>,
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
            write(&store, records, &followers).await;
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
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let mut records = records;
        // Retry a failing backend a few times before giving the batch up, loudly.
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            match store.insert_batch(&mut records) {
                Ok(()) => return Some(records),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, n = records.len(), "writing invocation records");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        tracing::error!(n = records.len(), "dropping invocation records after 5 failed writes");
        None
    })
    .await;
    // Sent after the commit, with the positions the store assigned, in position order (one
    // writer task, one batch at a time): a follower can drop what it already read from the store
    // by comparing positions.
    if let Ok(Some(records)) = written {
        for r in records {
            // No follower is not an error.
            let _ = followers.send(Arc::new(r));
        }
    }
}
