//! The sender: claims due deliveries (leased), sends them with bounded concurrency, and records
//! the outcomes in batches.
//!
//! It claims only as many deliveries as it can start at once, so no lease is held by a delivery
//! waiting for a slot. Outcomes go to a recorder task that writes them many per transaction (a
//! fan-out of 10,000 is 10,000 outcomes; one transaction each would make the single SQLite writer
//! the bottleneck). A delivery sent but not yet recorded when the process dies is sent again
//! after its lease: at least once, as push services expect (a `Topic` or the message id in the
//! payload lets clients deduplicate).

use std::sync::Arc;
use std::time::Duration;

use nimbus_model::now_millis;
use nimbus_store::push::{Claimed, Outcome};
use tokio::sync::{Semaphore, mpsc};

use crate::{Attempt, PushService};

/// Outcomes written per transaction, at most.
const RECORD_BATCH: usize = 512;
/// How long the sender sleeps when nothing is due and nothing wakes it (a retry scheduled by
/// another process, a clock jump): the fallback poll.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How often old messages and their delivery records are pruned (also once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub(crate) async fn run(service: PushService) {
    let concurrency = service.inner.config.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let (done, outcomes) = mpsc::channel::<(u64, Outcome)>(concurrency * 4);
    let recorder = tokio::spawn(record(service.clone(), outcomes));
    let _stop_recorder = AbortOnDrop(recorder);
    let _stop_pruner = AbortOnDrop(tokio::spawn(prune(service.clone())));
    loop {
        // Wait for a free slot before claiming anything.
        let free = match slots.available_permits() {
            0 => {
                drop(slots.acquire().await);
                continue;
            }
            n => n,
        };
        let s = service.clone();
        let lease = service.inner.config.lease;
        let claimed = tokio::task::spawn_blocking(move || {
            let now = now_millis();
            s.inner.store.claim(now, now + lease.as_millis() as i64, free.min(256) as u32)
        })
        .await;
        let claimed = match claimed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "push sender: claiming deliveries");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "push sender: claim task failed");
                continue;
            }
        };
        if claimed.is_empty() {
            idle(&service).await;
            continue;
        }
        for c in claimed {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let (s, done) = (service.clone(), done.clone());
            tokio::spawn(async move {
                let id = c.id;
                let outcome = attempt(&s, c).await;
                let _ = done.send((id, outcome)).await;
                drop(permit);
            });
        }
    }
}

/// Sleep until the next delivery is due, a send wakes us, or the fallback poll.
async fn idle(service: &PushService) {
    let s = service.clone();
    let next = tokio::task::spawn_blocking(move || s.inner.store.next_due()).await;
    let wait = match next {
        Ok(Ok(Some(at))) => {
            Duration::from_millis((at - now_millis()).clamp(1, IDLE_POLL.as_millis() as i64) as u64)
        }
        _ => IDLE_POLL,
    };
    tokio::select! {
        _ = service.inner.wake.notified() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

async fn attempt(service: &PushService, c: Claimed) -> Outcome {
    if now_millis() >= c.expires_at {
        return Outcome::Expired;
    }
    let Some(sub) = c.subscription.clone() else {
        return Outcome::Failed {
            status: None,
            error: "the subscription was removed".into(),
            remove_subscription: false,
        };
    };
    let Some(provider) = service.inner.providers.get(sub.kind.as_str()).cloned() else {
        return Outcome::Failed {
            status: None,
            error: format!("no provider for subscriptions of kind {:?}", sub.kind),
            remove_subscription: false,
        };
    };
    let s = service.clone();
    let project = c.project.clone();
    let keys = match tokio::task::spawn_blocking(move || s.project_keys(&project)).await {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => {
            let a = Attempt::Retry { status: None, retry_after: None, error: e.to_string() };
            return service.outcome(&c, a, now_millis());
        }
        Err(e) => {
            let a = Attempt::Retry { status: None, retry_after: None, error: e.to_string() };
            return service.outcome(&c, a, now_millis());
        }
    };
    let result = provider.deliver(&keys, &sub, &c).await;
    if let Attempt::Retry { error, .. } | Attempt::Rejected { error, .. } = &result {
        tracing::debug!(
            delivery = c.id,
            attempts = c.attempts,
            error,
            "push attempt not delivered"
        );
    }
    service.outcome(&c, result, now_millis())
}

/// Write outcomes in batches: everything waiting, up to [`RECORD_BATCH`], per transaction.
async fn record(service: PushService, mut outcomes: mpsc::Receiver<(u64, Outcome)>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while outcomes.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let s = service.clone();
        let items = std::mem::take(&mut batch);
        let r = tokio::task::spawn_blocking(move || {
            let r = s.inner.store.complete(&items, now_millis());
            (r, items)
        })
        .await;
        match r {
            Ok((Ok(()), items)) => service.inner.metrics.recorded(&items),
            // The deliveries stay leased and are sent again after the lease: at least once.
            Ok((Err(e), items)) => {
                tracing::warn!(error = %e, n = items.len(), "push sender: recording outcomes")
            }
            Err(e) => tracing::warn!(error = %e, "push sender: recording task failed"),
        }
    }
}

/// Retention: prune at start, then every [`PRUNE_EVERY`].
async fn prune(service: PushService) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        match service.call(|p| p.prune()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "pruned old push messages"),
            Err(e) => tracing::warn!(error = %e, "pruning push messages"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
