//! The consumer side of the event log (see `/shared/EVENTS.md` and ARCHITECTURE.md, "The event
//! log"). The log itself is the [`EventLog`] persistence trait: producers append through their
//! store's write methods, in the transaction of the change. This crate gives consumers what every
//! one of them needs, written once:
//!
//! - [`Tail`]: read from a position in commit order, waking on commits (the store's watch
//!   channel) instead of polling, and falling back to the log after a restart or when behind.
//! - Durable cursors: a named consumer resumes where it acknowledged ([`Tail::ack`]).
//! - [`spawn_pruner`]: drop events past every consumer's cursor once older than the retention.

use std::sync::Arc;
use std::time::Duration;

use nimbus_store::StoreError;
pub use nimbus_store::events::{Event, EventLog, LogBounds, NewEvent};

/// A consumer reading the log in commit order.
pub struct Tail {
    log: Arc<dyn EventLog>,
    /// Durable cursor name, if this consumer keeps one.
    name: Option<String>,
    position: u64,
    wake: tokio::sync::watch::Receiver<u64>,
    batch: u32,
}

/// Longest wait between looks at the log when no commit woke us: a commit made by another process
/// on the same database does not ring this process's bell.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

impl Tail {
    /// A durable consumer `name`: resumes after its stored cursor, or (first run) from `start`.
    pub async fn durable(
        log: Arc<dyn EventLog>,
        name: &str,
        start: u64,
        batch: u32,
    ) -> Result<Tail, StoreError> {
        let wake = log.subscribe();
        let (l, n) = (log.clone(), name.to_owned());
        let stored = blocking(move || l.cursor(&n)).await?;
        let position = match stored {
            Some(p) => p,
            None => {
                let (l, n) = (log.clone(), name.to_owned());
                blocking(move || l.set_cursor(&n, start)).await?;
                start
            }
        };
        Ok(Tail { log, name: Some(name.to_owned()), position, wake, batch })
    }

    /// An ephemeral reader from `position` (exclusive), with no stored cursor.
    pub fn from(log: Arc<dyn EventLog>, position: u64, batch: u32) -> Tail {
        let wake = log.subscribe();
        Tail { log, name: None, position, wake, batch }
    }

    /// The last position handed out.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next events after the position, waiting until there are some.
    pub async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        loop {
            // Mark the current value seen before reading, so a commit after the read wakes us.
            self.wake.borrow_and_update();
            let (log, after, batch) = (self.log.clone(), self.position, self.batch);
            let events = blocking(move || log.read(after, None, batch)).await?;
            if let Some(last) = events.last() {
                self.position = last.position;
                return Ok(events);
            }
            // The store dropped (shutdown) ends the wait with an error from `changed`: then poll.
            let _ = tokio::time::timeout(FALLBACK_POLL, self.wake.changed()).await;
        }
    }

    /// Store the position as this consumer's durable cursor (no-op for ephemeral tails).
    pub async fn ack(&self) -> Result<(), StoreError> {
        let Some(name) = self.name.clone() else { return Ok(()) };
        let (log, p) = (self.log.clone(), self.position);
        blocking(move || log.set_cursor(&name, p)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(StoreError::backend)?
}

/// Every `every`, prune events older than `retention` that every consumer has passed.
pub fn spawn_pruner(
    log: Arc<dyn EventLog>,
    retention: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let before = nimbus_model::now_millis() - retention.as_millis() as i64;
            let log = log.clone();
            match blocking(move || log.prune(before)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned the event log"),
                Err(e) => tracing::warn!(error = %e, "pruning the event log"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_store_local::SqliteStore;

    fn event(n: i64) -> NewEvent {
        NewEvent {
            project: "p".into(),
            kind: "dev.nimbus.test.tick".into(),
            source: "/t".into(),
            subject: n.to_string(),
            data: serde_json::json!(n),
        }
    }

    #[tokio::test]
    async fn tail_wakes_on_commit_and_durable_cursor_resumes() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let log: Arc<dyn EventLog> = store.clone();
        let mut tail = Tail::durable(log.clone(), "c1", 0, 10).await.unwrap();
        let waiter = tokio::spawn(async move {
            let got = tail.next().await.unwrap();
            tail.ack().await.unwrap();
            got
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let appended = std::time::Instant::now();
        log.append(&[event(1), event(2)]).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        // Woken by the commit, well before the fallback poll would have looked.
        assert!(appended.elapsed() < Duration::from_millis(500), "{:?}", appended.elapsed());
        assert_eq!(got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), [1, 2]);
        log.append(&[event(3)]).unwrap();
        let mut again = Tail::durable(log.clone(), "c1", 0, 10).await.unwrap();
        let got = again.next().await.unwrap();
        assert_eq!(got.len(), 1, "the durable cursor did not resume after the acked batch");
        assert_eq!(got[0].data, 3);
    }
}
