//! Prometheus metrics of event delivery, and the housekeeping loop that refreshes the backlog
//! gauges from the store (they count durable state, so they are read, not tracked) and prunes.

use std::time::Duration;

use nimbus_model::now_millis;
use nimbus_store::triggers::{AfterAttempt, Delivery};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{TriggerService, blocking};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    pub project: String,
    pub function: String,
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub project: String,
    pub function: String,
    pub trigger: String,
    /// `delivered`, `retried` or `dead`.
    pub result: String,
}

pub struct TriggerMetrics {
    pub attempts: Family<ResultLabels, Counter>,
    pub pending: Family<SubscriptionLabels, Gauge>,
    pub dead_letters: Family<SubscriptionLabels, Gauge>,
    pub oldest_pending_seconds: Family<SubscriptionLabels, Gauge>,
    pub fanned_out: Counter,
    pub published: Counter,
    pub unrouted: Counter,
    pub ticks: Counter,
    pub ticks_skipped: Counter,
    pub callback_failures: Counter,
    /// From an event (or a delayed message's due time) to its first attempt's start.
    pub lag: Histogram,
    pub registry: Registry,
}

impl Default for TriggerMetrics {
    fn default() -> Self {
        let m = TriggerMetrics {
            attempts: Default::default(),
            pending: Default::default(),
            dead_letters: Default::default(),
            oldest_pending_seconds: Default::default(),
            fanned_out: Default::default(),
            published: Default::default(),
            unrouted: Default::default(),
            ticks: Default::default(),
            ticks_skipped: Default::default(),
            callback_failures: Default::default(),
            lag: Histogram::new(exponential_buckets(0.000_25, 2.0, 20)),
            registry: Registry::default(),
        };
        let mut r = Registry::default();
        r.register(
            "nimbus_trigger_attempts",
            "Delivery attempts by outcome (delivered, retried, dead)",
            m.attempts.clone(),
        );
        r.register(
            "nimbus_trigger_pending",
            "Deliveries waiting or running, per subscription",
            m.pending.clone(),
        );
        r.register(
            "nimbus_trigger_dead_letters",
            "Deliveries in the dead-letter queue, per subscription",
            m.dead_letters.clone(),
        );
        r.register(
            "nimbus_trigger_oldest_pending_seconds",
            "Age of the oldest pending delivery's event, per subscription",
            m.oldest_pending_seconds.clone(),
        );
        r.register(
            "nimbus_trigger_fanned_out",
            "Deliveries created from the event log",
            m.fanned_out.clone(),
        );
        r.register("nimbus_queue_published", "Queue messages published", m.published.clone());
        r.register(
            "nimbus_queue_unrouted",
            "Queue messages without a subscriber at dispatch",
            m.unrouted.clone(),
        );
        r.register("nimbus_schedule_ticks", "Schedule ticks fired", m.ticks.clone());
        r.register(
            "nimbus_schedule_ticks_skipped",
            "Runs of missed schedule ticks skipped",
            m.ticks_skipped.clone(),
        );
        r.register(
            "nimbus_async_callback_failures",
            "Asynchronous invocation callbacks given up after their last attempt",
            m.callback_failures.clone(),
        );
        r.register(
            "nimbus_trigger_delivery_lag_seconds",
            "From an event to the start of its first delivery attempt",
            m.lag.clone(),
        );
        TriggerMetrics { registry: r, ..m }
    }
}

impl TriggerMetrics {
    pub(crate) fn finished(&self, d: &Delivery, next: AfterAttempt) {
        let result = match next {
            AfterAttempt::Delivered => "delivered",
            AfterAttempt::RetryAt(_) => "retried",
            AfterAttempt::Dead => "dead",
        };
        self.attempts
            .get_or_create(&ResultLabels {
                project: d.project.clone(),
                function: d.function.clone(),
                trigger: d.trigger.clone(),
                result: result.to_owned(),
            })
            .inc();
    }
}

const REFRESH_EVERY: Duration = Duration::from_secs(2);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Refresh the backlog gauges and the per-project pending counts (which bound producers), and
/// prune old deliveries, asynchronous results and idempotency keys.
pub(crate) async fn run(service: TriggerService) {
    let inner = &service.inner;
    let mut last_prune = std::time::Instant::now();
    loop {
        let store = inner.stores.deliveries.clone();
        match blocking(move || Ok(store.subscription_stats(None)?)).await {
            Ok(stats) => {
                let m = &inner.metrics;
                m.pending.clear();
                m.dead_letters.clear();
                m.oldest_pending_seconds.clear();
                let now = now_millis();
                let mut per_project = std::collections::HashMap::new();
                for s in stats {
                    *per_project.entry(s.project.clone()).or_insert(0) += s.pending;
                    let l = SubscriptionLabels {
                        project: s.project,
                        function: s.function,
                        trigger: s.trigger,
                    };
                    m.pending.get_or_create(&l).set(s.pending as i64);
                    m.dead_letters.get_or_create(&l).set(s.dead as i64);
                    if let Some(at) = s.oldest_pending_at {
                        m.oldest_pending_seconds.get_or_create(&l).set((now - at).max(0) / 1000);
                    }
                }
                *inner.pending.lock() = per_project;
            }
            Err(e) => tracing::warn!(error = %e, "reading delivery stats"),
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = std::time::Instant::now();
            let c = &inner.config;
            let now = now_millis();
            let ms = |d: Duration| d.as_millis() as i64;
            let (delivered, dead) = (now - ms(c.delivered_retention), now - ms(c.dead_retention));
            let (asyncs, keys) = (now - ms(c.async_retention), now - ms(c.idempotency_window));
            let (d, p) = (inner.stores.deliveries.clone(), inner.stores.producers.clone());
            match blocking(move || {
                Ok(d.prune_deliveries(delivered, dead)? + p.prune_async(asyncs, keys)?)
            })
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned deliveries"),
                Err(e) => tracing::warn!(error = %e, "pruning deliveries"),
            }
        }
        tokio::time::sleep(REFRESH_EVERY).await;
    }
}
