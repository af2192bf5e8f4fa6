//! Concurrency limit per function (shared by its versions, so a rollback under load never runs
//! more than the limit at once): up to `max_concurrency` instances run at once; up to
//! `max_queue` more requests wait for a slot, each at most `queue_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Ids of admissions: the node's fair-share gate tells functions apart by them.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Every slot is busy and the queue is full.
    QueueFull,
    /// Waited `queue_timeout` without getting a slot.
    QueueTimeout,
    /// The function had a slot, but the node's instance pool had none (every function together
    /// is at the operator's `instance_pool_size`).
    NodeFull,
}

pub(crate) struct Admission {
    /// Stable for the function while its versions share this admission.
    pub(crate) id: u64,
    /// The function's `queue_length` gauge: requests waiting here or at the node's gate.
    pub(crate) queued: Gauge,
    permits: Arc<Semaphore>,
    waiting: AtomicU32,
    max_queue: u32,
    queue_timeout: Duration,
}

struct Waiting<'a>(&'a AtomicU32, &'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

impl Admission {
    pub(crate) fn new(
        max_concurrency: u32,
        max_queue: u32,
        queue_timeout: Duration,
        queued: Gauge,
    ) -> Self {
        Admission {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            queued,
            permits: Arc::new(Semaphore::new(max_concurrency as usize)),
            waiting: AtomicU32::new(0),
            max_queue,
            queue_timeout,
        }
    }

    /// A slot to run one instance, or why there is none. Returns whether the caller waited.
    pub(crate) async fn admit(&self) -> Result<(OwnedSemaphorePermit, bool), Rejection> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok((permit, false));
        }
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        self.queued.inc();
        let _waiting = Waiting(&self.waiting, &self.queued);
        if before >= self.max_queue {
            return Err(Rejection::QueueFull);
        }
        match tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok((permit, true)),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(Rejection::QueueTimeout),
        }
    }

    pub(crate) fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_then_reject() {
        let a = Arc::new(Admission::new(1, 1, Duration::from_millis(200), Gauge::default()));
        let (held, waited) = a.admit().await.unwrap();
        assert!(!waited);
        // One waiter fits in the queue...
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit().await.map(|(_, w)| w) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ...a second does not.
        assert_eq!(a.admit().await.err(), Some(Rejection::QueueFull));
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(true));
        // With the slot held again, a waiter times out.
        let (_held, _) = a.admit().await.unwrap();
        assert_eq!(a.admit().await.err(), Some(Rejection::QueueTimeout));
    }
}
