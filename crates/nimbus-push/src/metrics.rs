//! Prometheus metrics of the sender: outcomes as they are recorded (counters), and the backlog
//! read from the store when `/metrics` is scraped ([`crate::PushService::refresh_metrics`]): it
//! is durable state (a restart or a second node changes it), so it is read, not tracked.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use nimbus_store::push::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `sent`, `failed` or `expired`.
    pub outcome: String,
}

pub struct PushMetrics {
    /// Deliveries that reached a final state, by state.
    pub deliveries: Family<OutcomeLabels, Counter>,
    /// Attempts that will be tried again (429, 5xx, network errors).
    pub retries: Counter,
    /// Subscriptions removed because their push service answered 404 or 410.
    pub subscriptions_removed: Counter,
    /// Deliveries queued (due, in flight, or waiting for a retry), across projects.
    pub pending: Gauge,
    /// Seconds since the message of the oldest pending delivery was sent (0 when none).
    pub oldest_pending_seconds: Gauge,
    pub registry: Registry,
}

impl Default for PushMetrics {
    fn default() -> Self {
        let m = PushMetrics {
            deliveries: Default::default(),
            retries: Default::default(),
            subscriptions_removed: Default::default(),
            pending: Default::default(),
            oldest_pending_seconds: Default::default(),
            registry: Registry::default(),
        };
        let mut r = Registry::default();
        r.register(
            "nimbus_push_deliveries",
            "Push deliveries that reached a final state (sent, failed, expired)",
            m.deliveries.clone(),
        );
        r.register(
            "nimbus_push_retries",
            "Push attempts to be tried again (429, 5xx, network errors)",
            m.retries.clone(),
        );
        r.register(
            "nimbus_push_subscriptions_removed",
            "Subscriptions removed because the push service answered 404 or 410",
            m.subscriptions_removed.clone(),
        );
        r.register(
            "nimbus_push_pending_deliveries",
            "Push deliveries queued: due, in flight, or waiting for a retry",
            m.pending.clone(),
        );
        r.register(
            "nimbus_push_oldest_pending_seconds",
            "Age of the message of the oldest pending push delivery (0 when none): the sender's lag",
            m.oldest_pending_seconds.clone(),
        );
        // Every outcome shows from the start, at 0.
        for outcome in ["sent", "failed", "expired"] {
            let _ = m.deliveries.get_or_create(&OutcomeLabels { outcome: outcome.into() });
        }
        PushMetrics { registry: r, ..m }
    }
}

impl PushMetrics {
    /// Count outcomes the store has recorded.
    pub(crate) fn recorded(&self, outcomes: &[(u64, Outcome)]) {
        for (_, o) in outcomes {
            let outcome = match o {
                Outcome::Sent { .. } => "sent",
                Outcome::Failed { remove_subscription, .. } => {
                    if *remove_subscription {
                        self.subscriptions_removed.inc();
                    }
                    "failed"
                }
                Outcome::Expired => "expired",
                Outcome::Retry { .. } => {
                    self.retries.inc();
                    continue;
                }
            };
            self.deliveries.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
        }
    }
}
