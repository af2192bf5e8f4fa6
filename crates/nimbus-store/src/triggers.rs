//! Event delivery to functions (issue 9): the persistence side of triggers, schedules, queues and
//! asynchronous invocations. See ARCHITECTURE.md, "Triggers".
//!
//! The event log is read by one dispatcher per store (a durable consumer). For each event it finds
//! the subscriptions that want it and writes one *delivery* per subscription, advancing its cursor
//! in the same transaction ([`DeliveryStore::fan_out`]), so each event is fanned out exactly once
//! even across a crash. Deliveries then live on their own: claimed with a lease, retried with
//! backoff, dead-lettered after their attempts or age, replayed or purged, independently per
//! subscription. A delivery holds a copy of its event, so pruning the log never loses one.

use nimbus_model::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::events::{Event, NewEvent};

/// A delivery to write at fan-out.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub project: String,
    pub function: String,
    /// The subscription's name within the function (`async` for asynchronous invocations).
    pub trigger: String,
    pub event: Event,
    /// The path the event is sent to on the function.
    pub path: String,
    /// Deliveries of one subscription with the same key run one at a time, in order.
    pub order_key: Option<String>,
    /// Not before this time (a queue message's delay).
    pub not_before: UnixMillis,
    pub max_attempts: u32,
    /// Past this, a failed delivery is dead-lettered instead of retried.
    pub expires_at: UnixMillis,
    /// How long a claim holds the delivery: longer than the function may run, so a live
    /// attempt is never claimed twice, short enough that a crashed node's claims come back.
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt, or claimed by a worker (see `leased_until`).
    Pending,
    Delivered,
    /// In the dead-letter queue.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "dead" => DeliveryState::Dead,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: u64,
    pub project: String,
    pub function: String,
    pub trigger: String,
    pub event: Event,
    pub path: String,
    pub order_key: Option<String>,
    pub state: DeliveryState,
    /// Attempts started so far (a claim counts as one, so a crash mid-attempt counts too).
    pub attempts: u32,
    pub max_attempts: u32,
    pub next_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub leased_until: UnixMillis,
    pub lease_ms: u64,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub last_error: Option<String>,
    /// The invocation of the last attempt: its record holds the logs.
    pub last_invocation: Option<String>,
}

/// One attempt's outcome, recorded with the delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    /// The invocation record of this attempt (logs, fuel, memory), if the function ran.
    pub invocation_id: Option<String>,
    pub started_at: UnixMillis,
    pub duration_ms: u64,
    pub http_status: Option<u16>,
    pub ok: bool,
    pub error: Option<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterAttempt {
    Delivered,
    RetryAt(UnixMillis),
    Dead,
}

/// A page of deliveries of one project.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub function: Option<String>,
    pub trigger: Option<String>,
    pub state: Option<DeliveryState>,
    /// Deliveries with a greater id (the page cursor).
    pub after: u64,
    pub limit: u32,
}

/// What a subscription has in flight, for `nimbus events` and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    pub project: String,
    pub function: String,
    pub trigger: String,
    pub pending: u64,
    pub dead: u64,
    /// When the oldest pending delivery's event happened.
    pub oldest_pending_at: Option<UnixMillis>,
    /// Pending deliveries that have failed at least once.
    pub retrying: u64,
}

/// Deliveries: fan-out, claims, outcomes, the dead-letter queue.
pub trait DeliveryStore: Send + Sync + 'static {
    /// Insert `deliveries` and set consumer `consumer`'s cursor on the event log to `through`, in
    /// one transaction.
    fn fan_out(&self, consumer: &str, through: u64, deliveries: &[NewDelivery]) -> Result<()>;
    /// Lease up to `limit` due deliveries (pending, `next_at <= now`, not leased), counting an
    /// attempt for each; never one whose subscription has an earlier pending delivery with the
    /// same order key.
    fn claim(&self, now: UnixMillis, limit: u32) -> Result<Vec<Delivery>>;
    /// Give a claimed delivery back without counting its attempt (its function had no free
    /// slot for events): claimable again from `next_at`.
    fn release(&self, id: u64, next_at: UnixMillis) -> Result<()>;
    /// The earliest `next_at` of a pending delivery not leased, or its lease's end: when a
    /// claimer should look next.
    fn next_due(&self) -> Result<Option<UnixMillis>>;
    /// Record an attempt and move the delivery on. Ignored (false) if the delivery is no longer
    /// pending (replayed, purged or its project deleted meanwhile).
    fn finish(&self, id: u64, attempt: &Attempt, next: AfterAttempt) -> Result<bool>;
    /// [`finish`](Self::finish) for each of `attempts`, in order, in one transaction where the
    /// backend has them (attempts that end together are written together). One answer each.
    fn finish_many(&self, attempts: &[(u64, Attempt, AfterAttempt)]) -> Result<Vec<bool>> {
        attempts.iter().map(|(id, a, next)| self.finish(*id, a, *next)).collect()
    }
    fn list_deliveries(&self, project: &str, q: &DeliveryQuery) -> Result<Vec<Delivery>>;
    fn get_delivery(&self, project: &str, id: u64) -> Result<Option<(Delivery, Vec<Attempt>)>>;
    /// Dead deliveries matching `q` (or the one `id`) back to pending with fresh attempts and a
    /// fresh age window of `max_age_ms`. Returns how many.
    fn replay(
        &self,
        project: &str,
        id: Option<u64>,
        q: &DeliveryQuery,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<u64>;
    /// Delete dead deliveries matching `q` (or the one `id`). Returns how many.
    fn purge(&self, project: &str, id: Option<u64>, q: &DeliveryQuery) -> Result<u64>;
    /// Per-subscription counts, of one project or of all (metrics).
    fn subscription_stats(&self, project: Option<&str>) -> Result<Vec<SubscriptionStats>>;
    /// Delete delivered deliveries updated before `delivered_before` and dead ones updated before
    /// `dead_before`, with their attempts. Returns how many.
    fn prune_deliveries(
        &self,
        delivered_before: UnixMillis,
        dead_before: UnixMillis,
    ) -> Result<u64>;
    /// A function was deleted: drop its pending and dead deliveries.
    fn delete_function_deliveries(&self, project: &str, function: &str) -> Result<u64>;
    /// Everything of the project: deliveries, schedules, async invocations, idempotency keys.
    fn delete_project_triggers(&self, project: &str) -> Result<()>;
}

/// Schedules: each tick fires once, across restarts and nodes.
pub trait ScheduleStore: Send + Sync + 'static {
    /// The last tick fired for a schedule.
    fn last_tick(&self, project: &str, function: &str, trigger: &str)
    -> Result<Option<UnixMillis>>;
    /// Record `tick` as fired and append its events, in one transaction, if no tick at or after it
    /// was fired already (false then: another node or an earlier run fired it).
    fn fire_tick(
        &self,
        project: &str,
        function: &str,
        trigger: &str,
        tick: UnixMillis,
        events: &[NewEvent],
    ) -> Result<bool>;
}

/// An idempotency key as the producer gives it: the same `key` in `scope` (a queue, a function)
/// since `since` returns the first result instead of doing the work again.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub since: UnixMillis,
}

/// The outcome of a producer call with an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum Once {
    /// Done now: the events' positions.
    First(Vec<u64>),
    /// Done before: the first call's result.
    Repeat(Value),
}

/// An asynchronous invocation: the request kept until a worker runs it, then its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncInvocation {
    pub id: String,
    pub project: String,
    pub function: String,
    /// queued, running, succeeded, failed.
    pub status: String,
    pub method: String,
    /// Path and query, as the function sees them.
    pub path: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "bytes_b64")]
    pub body: Vec<u8>,
    pub callback_url: Option<String>,
    pub created_at: UnixMillis,
    pub completed_at: Option<UnixMillis>,
    pub attempts: u32,
    pub invocation_id: Option<String>,
    pub response_status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    #[serde(with = "bytes_b64")]
    pub response_body: Vec<u8>,
    pub response_truncated: bool,
    pub error: Option<String>,
    /// Where its callback stands (nothing when it has no callback URL or has not finished).
    #[serde(default)]
    pub callback: CallbackState,
}

/// The callback of a finished asynchronous invocation: kept in the store, so a restart does not
/// lose it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallbackState {
    /// pending, delivered, failed; `None` before the invocation finished or without a URL.
    pub status: Option<String>,
    /// Calls made so far (a call cut short by a crash counts).
    pub attempts: u32,
    /// Why the last call failed.
    pub error: Option<String>,
}

/// What became of one callback call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallbackOutcome {
    Delivered,
    /// Call again at this time.
    RetryAt {
        at: UnixMillis,
        error: String,
    },
    /// Out of attempts.
    Failed {
        error: String,
    },
}

/// The result of an attempt of an asynchronous invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncResult {
    /// running (an attempt started), queued (failed, will retry), succeeded, failed (for good).
    pub status: String,
    pub attempts: u32,
    pub invocation_id: Option<String>,
    pub response_status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub response_truncated: bool,
    pub error: Option<String>,
    pub completed_at: Option<UnixMillis>,
}

/// Producers that take idempotency keys: queue publishes and asynchronous invocations.
pub trait ProducerStore: Send + Sync + 'static {
    /// Append `events` (with `idem`: unless the key was used since `idem.since`, in which case
    /// nothing is written and the first call's `result` comes back).
    fn append_once(
        &self,
        events: &[NewEvent],
        idem: Option<Idempotency<'_>>,
        result: &Value,
    ) -> Result<Once>;
    /// Store an asynchronous invocation and append its event, under the same idempotency rule
    /// (`result` is what a repeated call gets back).
    fn create_async(
        &self,
        inv: &AsyncInvocation,
        event: &NewEvent,
        idem: Option<Idempotency<'_>>,
        result: &Value,
    ) -> Result<Once>;
    fn get_async(&self, project: &str, id: &str) -> Result<Option<AsyncInvocation>>;
    /// Record an attempt's result. A result with `completed_at` makes the invocation's callback
    /// (if it has a URL) pending and due at once, in the same write.
    fn update_async(&self, project: &str, id: &str, result: &AsyncResult) -> Result<()>;
    /// Claim up to `limit` pending callbacks due at `now`: each counts one more attempt and is
    /// not due again before `lease_until`, so one that a crash interrupts is claimed again then.
    fn claim_callbacks(
        &self,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: u32,
    ) -> Result<Vec<AsyncInvocation>>;
    fn finish_callback(&self, project: &str, id: &str, outcome: &CallbackOutcome) -> Result<()>;
    /// Give back claimed callbacks whose calls were stopped before they ended (a graceful stop):
    /// due again at `at`, and the attempt their claim counted is not counted.
    fn release_callbacks(&self, callbacks: &[(String, String)], at: UnixMillis) -> Result<()>;
    /// When the earliest pending callback is due.
    fn next_callback_due(&self) -> Result<Option<UnixMillis>>;
    /// Delete finished asynchronous invocations completed before `before` (but not those whose
    /// callback is still pending) and idempotency keys
    /// created before `keys_before`. Returns how many rows.
    fn prune_async(&self, before: UnixMillis, keys_before: UnixMillis) -> Result<u64>;
}

mod bytes_b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "conformance")]
pub mod conformance;
