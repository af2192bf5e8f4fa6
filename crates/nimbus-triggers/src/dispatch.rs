//! The dispatcher: one durable consumer of the event log that turns each event into one delivery
//! per subscription that wants it. Writing the deliveries and moving the cursor is one
//! transaction, so a crash re-reads at most the batch it had not committed, and no event is
//! fanned out twice.

use std::time::Duration;

use nimbus_events::Tail;
use nimbus_model::event_types::{INVOCATION_REQUESTED, QUEUE_MESSAGE};
use nimbus_model::trigger_names;
use nimbus_store::events::Event;
use nimbus_store::triggers::NewDelivery;

use crate::{DISPATCHER, TriggerService, blocking};

/// Events read per transaction.
const BATCH: u32 = 256;

/// Attempts and age of asynchronous invocations (Lambda's defaults: two retries, six hours).
pub(crate) const ASYNC_MAX_ATTEMPTS: u32 = 3;
pub(crate) const ASYNC_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
pub(crate) const ASYNC_TRIGGER: &str = "async";

/// A claim outlives the function's timeout by this much.
const LEASE_MARGIN_MS: u64 = 30_000;

pub(crate) async fn run(service: TriggerService, start: u64) {
    loop {
        if let Err(e) = dispatch(&service, start).await {
            tracing::warn!(error = %e, "trigger dispatcher failed; restarting from its cursor");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn dispatch(service: &TriggerService, start: u64) -> crate::Result<()> {
    let inner = &service.inner;
    let mut tail = Tail::durable(inner.stores.log.clone(), DISPATCHER, start, BATCH).await?;
    loop {
        let events = tail.next().await?;
        let through = tail.position();
        let deliveries: Vec<NewDelivery> =
            events.iter().flat_map(|e| fan_out(service, e)).collect();
        let n = deliveries.len();
        let store = inner.stores.deliveries.clone();
        blocking(move || Ok(store.fan_out(DISPATCHER, through, &deliveries)?)).await?;
        if n > 0 {
            inner.metrics.fanned_out.inc_by(n as u64);
            inner.wake.notify_one();
        }
    }
}

/// The deliveries one event makes: one per matching trigger of the project's active functions.
fn fan_out(service: &TriggerService, e: &Event) -> Vec<NewDelivery> {
    let inner = &service.inner;
    let not_before = match e.kind.as_str() {
        QUEUE_MESSAGE => e.data.get("deliver_at").and_then(|v| v.as_i64()).unwrap_or(e.time),
        _ => e.time,
    };
    if e.kind == INVOCATION_REQUESTED {
        // An asynchronous invocation names its function; it needs no trigger.
        let Some(function) = e.data.get("function").and_then(|v| v.as_str()) else {
            return Vec::new();
        };
        let timeout = inner
            .functions
            .active(&e.project, function)
            .map_or(LEASE_MARGIN_MS, |f| f.info.limits.timeout_ms);
        return vec![NewDelivery {
            project: e.project.clone(),
            function: function.to_owned(),
            trigger: ASYNC_TRIGGER.to_owned(),
            event: e.clone(),
            path: "/".to_owned(),
            order_key: None,
            not_before,
            max_attempts: ASYNC_MAX_ATTEMPTS,
            expires_at: e.time + ASYNC_MAX_AGE.as_millis() as i64,
            lease_ms: timeout + LEASE_MARGIN_MS,
        }];
    }
    let mut out = Vec::new();
    for f in inner.functions.triggered(&e.project) {
        let spec = &f.info.spec;
        for (t, name) in spec.triggers.iter().zip(trigger_names(&spec.triggers)) {
            if !t.matches(&spec.name, &name, &e.kind, &e.data) {
                continue;
            }
            out.push(NewDelivery {
                project: e.project.clone(),
                function: spec.name.clone(),
                order_key: t.ordering_key(&e.subject, &e.data),
                trigger: name,
                event: e.clone(),
                path: t.path().to_owned(),
                not_before,
                max_attempts: t.max_attempts(),
                expires_at: not_before.saturating_add(t.max_age_secs() as i64 * 1000),
                lease_ms: f.info.limits.timeout_ms + LEASE_MARGIN_MS,
            });
        }
    }
    if out.is_empty() && e.kind == QUEUE_MESSAGE {
        // Publishing checks that the queue has a subscriber; this one was removed since.
        inner.metrics.unrouted.inc();
    }
    out
}
