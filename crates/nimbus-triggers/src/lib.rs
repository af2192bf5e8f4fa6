//! Event delivery to functions (issue 9): every trigger kind rides one mechanism.
//!
//! ```text
//!  producers ──append in their transaction──▶ event log
//!    (documents, files, auth, queues,                │  durable consumer "triggers"
//!     schedules, async invocations)                  ▼
//!                               dispatcher: match subscriptions, fan out one delivery
//!                               per subscription + move the cursor (one transaction)
//!                                                    │
//!                               workers: claim due deliveries with a lease, POST the
//!                               event as a CloudEvent to the function, then
//!                               delivered / retry with backoff + jitter / dead letter
//! ```
//!
//! Subscriptions are the `triggers` of each function's active version (so they are versioned
//! with the code). Deliveries are invocations: they go through [`FunctionService::invoke`] and so
//! are admitted, limited, metered and recorded like HTTP ones, with the trigger in the record.
//! Event work has its own concurrency per function (half the function's `max_concurrency`), so a
//! burst of events leaves room for HTTP traffic.

mod callbacks;
mod deliver;
mod dispatch;
mod metrics;
mod producers;
mod schedule;

use std::sync::Arc;
use std::time::Duration;

use nimbus_functions::FunctionService;
use nimbus_store::StoreError;
use nimbus_store::events::EventLog;
use nimbus_store::triggers::{
    Attempt, Delivery, DeliveryQuery, DeliveryStore, ProducerStore, ScheduleStore,
    SubscriptionStats,
};

pub use metrics::TriggerMetrics;
pub use producers::{AsyncRequest, Published};

/// The name of the dispatcher's durable cursor on the event log.
pub const DISPATCHER: &str = "triggers";

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} is too large: at most {max} bytes")]
    TooLarge { what: &'static str, max: usize },
    /// The project has too much undelivered work; producers should slow down.
    #[error("{0}")]
    Backlog(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = TriggerError> = std::result::Result<T, E>;

/// Operator settings.
#[derive(Debug, Clone)]
pub struct TriggersConfig {
    /// Deliveries running at once on this node, across functions.
    pub max_in_flight: usize,
    /// First retry delay; doubles per attempt (with jitter) up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long delivered deliveries (and their attempts) stay listable.
    pub delivered_retention: Duration,
    /// How long dead letters are kept before they are dropped.
    pub dead_retention: Duration,
    /// How long a finished asynchronous invocation's response can be fetched.
    pub async_retention: Duration,
    /// The same idempotency key within this window returns the first result.
    pub idempotency_window: Duration,
    /// Largest queue message body and asynchronous request body.
    pub max_message_bytes: usize,
    /// Longest delay of a queue message.
    pub max_delay: Duration,
    /// Largest response body kept for an asynchronous invocation (more is truncated).
    pub max_async_response_bytes: usize,
    /// Pending deliveries a project may have before queue publishes and asynchronous
    /// invocations are refused (events of data changes are never refused: their change has
    /// committed).
    pub max_pending_per_project: u64,
    /// Schedule ticks due less than this long ago run; older ones were missed (server down)
    /// and are skipped unless the trigger says `catch_up`.
    pub schedule_grace: Duration,
    /// Networks that callback URLs may reach although internal (the guests' outbound policy).
    pub callback_policy: nimbus_model::net::NetPolicy,
    /// Allow `http://` callback URLs (default: HTTPS only).
    pub callback_allow_http: bool,
    /// Calls of a callback URL before it is given up (backing off like deliveries).
    pub callback_max_attempts: u32,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        TriggersConfig {
            max_in_flight: 256,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            delivered_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(14 * 24 * 3600),
            async_retention: Duration::from_secs(24 * 3600),
            idempotency_window: Duration::from_secs(24 * 3600),
            max_message_bytes: 256 << 10,
            max_delay: Duration::from_secs(12 * 3600),
            max_async_response_bytes: 1 << 20,
            max_pending_per_project: 100_000,
            schedule_grace: Duration::from_secs(30),
            callback_policy: nimbus_model::net::NetPolicy::new(Vec::new()),
            callback_allow_http: false,
            callback_max_attempts: 8,
        }
    }
}

/// The storage the service needs.
#[derive(Clone)]
pub struct TriggerStores {
    pub log: Arc<dyn EventLog>,
    pub deliveries: Arc<dyn DeliveryStore>,
    pub schedules: Arc<dyn ScheduleStore>,
    pub producers: Arc<dyn ProducerStore>,
}

/// The trigger service: cheap to clone.
#[derive(Clone)]
pub struct TriggerService {
    inner: Arc<Inner>,
}

struct Inner {
    stores: TriggerStores,
    functions: Arc<FunctionService>,
    config: TriggersConfig,
    metrics: TriggerMetrics,
    /// Rung when new deliveries were written, so workers claim without waiting for a poll.
    wake: tokio::sync::Notify,
    /// Rung when an asynchronous invocation finished with a callback to make, and at a stop.
    callback_wake: tokio::sync::Notify,
    /// Set by [`Tasks::stop`]: the callback worker gives back what it has in flight and ends.
    stopping: std::sync::atomic::AtomicBool,
    /// Per-function event concurrency.
    gates: deliver::Gates,
    /// Pending deliveries per project, as of the last stats refresh (see `metrics.rs`).
    pending: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
}

impl TriggerService {
    pub fn new(
        stores: TriggerStores,
        functions: Arc<FunctionService>,
        config: TriggersConfig,
    ) -> Self {
        TriggerService {
            inner: Arc::new(Inner {
                stores,
                functions,
                config,
                metrics: TriggerMetrics::default(),
                wake: tokio::sync::Notify::new(),
                callback_wake: tokio::sync::Notify::new(),
                stopping: Default::default(),
                gates: Default::default(),
                pending: Default::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &TriggerMetrics {
        &self.inner.metrics
    }

    /// Start the dispatcher, the delivery workers, the scheduler and housekeeping. The tasks stop
    /// when the handles are dropped (see [`Tasks`]).
    pub async fn start(&self) -> Result<Tasks> {
        let start = {
            let log = self.inner.stores.log.clone();
            blocking(move || Ok(log.bounds()?.last)).await?
        };
        self.inner.stopping.store(false, std::sync::atomic::Ordering::Release);
        Ok(Tasks {
            handles: vec![
                tokio::spawn(dispatch::run(self.clone(), start)),
                tokio::spawn(deliver::run(self.clone())),
                tokio::spawn(schedule::run(self.clone())),
                tokio::spawn(metrics::run(self.clone())),
            ],
            callbacks: Some(tokio::spawn(callbacks::run(self.clone()))),
            service: self.clone(),
        })
    }

    /// Per-subscription backlog of a project.
    pub async fn stats(&self, project: &str) -> Result<Vec<SubscriptionStats>> {
        let (s, p) = (self.inner.stores.deliveries.clone(), project.to_owned());
        blocking(move || Ok(s.subscription_stats(Some(&p))?)).await
    }

    pub async fn deliveries(&self, project: &str, q: DeliveryQuery) -> Result<Vec<Delivery>> {
        let (s, p) = (self.inner.stores.deliveries.clone(), project.to_owned());
        blocking(move || Ok(s.list_deliveries(&p, &q)?)).await
    }

    pub async fn delivery(&self, project: &str, id: u64) -> Result<(Delivery, Vec<Attempt>)> {
        let (s, p) = (self.inner.stores.deliveries.clone(), project.to_owned());
        blocking(move || Ok(s.get_delivery(&p, id)?))
            .await?
            .ok_or_else(|| TriggerError::NotFound(format!("delivery {id}")))
    }

    /// Replay dead letters (one, or all matching `q`): delivered again with fresh attempts and
    /// a fresh age window, keeping their event ids.
    pub async fn replay(&self, project: &str, id: Option<u64>, q: DeliveryQuery) -> Result<u64> {
        let (s, p) = (self.inner.stores.deliveries.clone(), project.to_owned());
        let max_age = nimbus_model::trigger_bounds::DEFAULT_MAX_AGE_SECS * 1000;
        let n = blocking(move || Ok(s.replay(&p, id, &q, nimbus_model::now_millis(), max_age)?))
            .await?;
        if n > 0 {
            self.inner.wake.notify_one();
        }
        Ok(n)
    }

    /// Delete dead letters (one, or all matching `q`).
    pub async fn purge(&self, project: &str, id: Option<u64>, q: DeliveryQuery) -> Result<u64> {
        let (s, p) = (self.inner.stores.deliveries.clone(), project.to_owned());
        blocking(move || Ok(s.purge(&p, id, &q)?)).await
    }

    /// The largest queue message or asynchronous request body.
    pub fn max_message_bytes(&self) -> usize {
        self.inner.config.max_message_bytes
    }

    /// Delete everything the service keeps for a project (deliveries, dead letters, schedules,
    /// asynchronous invocations, idempotency keys).
    pub async fn delete_project(&self, project: &str) -> Result<()> {
        let (s, p) = (self.inner.stores.deliveries.clone(), project.to_owned());
        blocking(move || Ok(s.delete_project_triggers(&p)?)).await
    }
}

/// The service's background tasks; dropping this stops them at once, [`Tasks::stop`] first
/// lets the callbacks in flight end or gives them back.
pub struct Tasks {
    handles: Vec<tokio::task::JoinHandle<()>>,
    callbacks: Option<tokio::task::JoinHandle<()>>,
    service: TriggerService,
}

impl Tasks {
    /// A graceful stop: callback calls in flight get [`callbacks::STOP_GRACE`] to end, and the
    /// leases of those that do not are given back, so the next start makes them at once rather
    /// than after their lease. (Deliveries need no such step: an attempt cut short here is
    /// given back by its own lease, which is the function's timeout plus a margin.)
    pub async fn stop(mut self) {
        let inner = &self.service.inner;
        inner.stopping.store(true, std::sync::atomic::Ordering::Release);
        inner.callback_wake.notify_one();
        if let Some(task) = self.callbacks.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(callbacks::STOP_GRACE * 2, task).await.is_err() {
                tracing::warn!("the callback worker did not stop in time");
                abort.abort();
            }
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in self.handles.iter().chain(&self.callbacks) {
            t.abort();
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| TriggerError::Store(StoreError::backend(e)))?
}

/// Deliveries, dead letters, schedules, asynchronous invocations and idempotency keys.
impl nimbus_model::lifecycle::ProjectLifecycle for TriggerService {
    fn part(&self) -> &'static str {
        "triggers"
    }

    fn delete_project_data<'a>(
        &'a self,
        project: &'a str,
    ) -> nimbus_model::lifecycle::PartFuture<'a> {
        Box::pin(async move { Ok(self.delete_project(project).await?) })
    }
}
