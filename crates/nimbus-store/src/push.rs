//! Push notifications' persistence: per-project VAPID keys, subscriptions and their topics,
//! messages and their delivery rows (one per target subscription).
//!
//! A send is durable as one transaction ([`PushStore::enqueue`]): the message, one `queued`
//! delivery per subscription it targets, and the `dev.nimbus.push.message.queued` event. The
//! sender claims due deliveries with a lease ([`PushStore::claim`]); a delivery whose lease ran
//! out (the process died mid-send) is due again, so a crash at any instant loses nothing
//! (EVENTS.md principles 1 and 5). Bounds (counts, sizes) are the service's (`nimbus-push`); the
//! per-project and per-user subscription counts are checked here, inside the write transaction,
//! so concurrent registrations cannot exceed them.

use nimbus_model::UnixMillis;
use serde::Serialize;
use serde_json::Value;

use crate::Result;

#[cfg(feature = "conformance")]
pub mod conformance;

/// The event a send appends, in its transaction.
pub const EVENT_QUEUED: &str = "dev.nimbus.push.message.queued";

/// A project's VAPID key pair (P-256): the private scalar and the uncompressed public point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VapidKey {
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: UnixMillis,
}

/// A subscription to register. `kind` names the provider (`webpush`); FCM/APNs would add kinds.
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub user_id: Option<&'a str>,
    pub endpoint: &'a str,
    pub p256dh: &'a str,
    pub auth: &'a str,
    pub now: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub id: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub topics: Vec<String>,
    pub created_at: UnixMillis,
}

/// Why a registration was refused, besides the backend failing.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("the project has {limit} subscriptions, the most it may have")]
    ProjectFull { limit: u32 },
    #[error("the user has {limit} subscriptions, the most one user may have")]
    UserFull { limit: u32 },
    #[error("this endpoint is registered to another user")]
    EndpointTaken,
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// Whom a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Topic(String),
    Subscription(String),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::User(_) => "user",
            Target::Topic(_) => "topic",
            Target::Subscription(_) => "subscription",
        }
    }
    pub fn value(&self) -> &str {
        match self {
            Target::User(v) | Target::Topic(v) | Target::Subscription(v) => v,
        }
    }
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub id: &'a str,
    pub target: &'a Target,
    pub payload: &'a [u8],
    /// Seconds the push service keeps it (RFC 8030 `TTL`); also how long Nimbus retries.
    pub ttl: u32,
    pub urgency: &'a str,
    /// RFC 8030 `Topic` (replaces an undelivered message with the same topic).
    pub topic: Option<&'a str>,
    /// Who sent it, for the record and the event.
    pub sender: Value,
    pub now: UnixMillis,
    /// Refuse (with [`EnqueueError::TooManyTargets`]) beyond this many subscriptions.
    pub max_targets: u32,
    /// The data of the queued event (the service's shape); the store adds `deliveries`, the
    /// number of subscriptions it targets.
    pub event_data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the subscription does not exist")]
    NoSuchSubscription,
    #[error("the message targets more than {limit} subscriptions")]
    TooManyTargets { limit: u32 },
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// Delivery states.
pub const QUEUED: &str = "queued";
pub const SENT: &str = "sent";
pub const FAILED: &str = "failed";
pub const EXPIRED: &str = "expired";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    pub expired: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageInfo {
    pub id: String,
    pub target: String,
    pub target_kind: String,
    pub ttl: u32,
    pub urgency: String,
    pub topic: Option<String>,
    pub sender: Value,
    pub created_at: UnixMillis,
    pub deliveries: DeliveryCounts,
}

/// One delivery's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryInfo {
    /// Commit-ordered, the paging cursor.
    pub id: u64,
    pub message: String,
    pub subscription: String,
    pub state: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A delivery claimed for sending, with everything the provider needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: u64,
    pub project: String,
    pub message: String,
    pub attempts: u32,
    /// `None`: the subscription was removed after the message was queued.
    pub subscription: Option<Subscription>,
    pub payload: Vec<u8>,
    pub ttl: u32,
    pub urgency: String,
    pub topic: Option<String>,
    /// When the message's TTL runs out: no attempt after this.
    pub expires_at: UnixMillis,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent { status: u16 },
    Retry { at: UnixMillis, status: Option<u16>, error: String },
    Failed { status: Option<u16>, error: String, remove_subscription: bool },
    Expired,
}

/// The sender's backlog across projects, for the lag gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Deliveries in state `queued` (due, leased, or waiting for a retry).
    pub queued: u64,
    /// When the message of the oldest queued delivery was sent (`None`: nothing queued).
    pub oldest_queued_at: Option<UnixMillis>,
}

/// Filters of the delivery listing.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery<'a> {
    pub message: Option<&'a str>,
    pub subscription: Option<&'a str>,
    pub after: Option<u64>,
    pub limit: u32,
}

pub trait PushStore: Send + Sync + 'static {
    fn vapid_key(&self, project: &str) -> Result<Option<VapidKey>>;
    /// Store `key` unless the project has one; returns the one stored (so two racing first uses
    /// agree on one key).
    fn insert_vapid_key(&self, project: &str, key: &VapidKey) -> Result<VapidKey>;

    /// Register (or re-register: the endpoint is the identity) a subscription. Re-registering an
    /// endpoint updates its keys; an end user cannot take over another user's endpoint.
    fn put_subscription(
        &self,
        project: &str,
        sub: &NewSubscription<'_>,
        max_per_project: u32,
        max_per_user: u32,
    ) -> Result<Subscription, SubscribeError>;
    fn get_subscription(&self, project: &str, id: &str) -> Result<Option<Subscription>>;
    /// A page of subscriptions (by id), optionally of one user or one topic.
    fn list_subscriptions(
        &self,
        project: &str,
        user: Option<&str>,
        topic: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Subscription>>;
    /// Remove a subscription (with its topics); returns whether it existed.
    fn delete_subscription(&self, project: &str, id: &str) -> Result<bool>;
    /// Join a topic (idempotent); `NotFound` if the subscription does not exist; `Conflict` when
    /// it is in `max_topics` topics already.
    fn join_topic(&self, project: &str, id: &str, topic: &str, max_topics: u32) -> Result<()>;
    fn leave_topic(&self, project: &str, id: &str, topic: &str) -> Result<bool>;

    /// The message, its deliveries and its event, in one transaction. Returns how many
    /// deliveries were queued and the event's position.
    fn enqueue(&self, project: &str, msg: &NewMessage<'_>) -> Result<(u64, u64), EnqueueError>;
    fn message(&self, project: &str, id: &str) -> Result<Option<MessageInfo>>;
    fn deliveries(&self, project: &str, q: &DeliveryQuery<'_>) -> Result<Vec<DeliveryInfo>>;

    /// Housekeeping, across projects: lease up to `limit` queued deliveries that are due (next
    /// attempt reached, no live lease) until `lease_until`.
    fn claim(&self, now: UnixMillis, lease_until: UnixMillis, limit: u32) -> Result<Vec<Claimed>>;
    /// Record attempts' outcomes, in one transaction. A `Failed` with `remove_subscription`
    /// deletes the subscription (the push service said it is gone).
    fn complete(&self, outcomes: &[(u64, Outcome)], now: UnixMillis) -> Result<()>;
    /// The earliest next attempt of a queued delivery, if any (the sender sleeps until then).
    fn next_due(&self) -> Result<Option<UnixMillis>>;
    /// How many deliveries are queued, and since when the oldest one's message waits.
    fn backlog(&self) -> Result<Backlog>;
    /// Replay: put the `failed` deliveries of one message and/or one subscription of `project`
    /// back in the queue, due at `now` with fresh attempts. Deliveries whose subscription is gone
    /// (removed, or a 404/410) or whose message's TTL has run out at `now` stay `failed`.
    /// Returns how many were queued again.
    fn requeue_failed(
        &self,
        project: &str,
        message: Option<&str>,
        subscription: Option<&str>,
        now: UnixMillis,
    ) -> Result<u64>;

    /// Retention, across projects: delete up to `limit` messages sent before `before` that have
    /// no queued delivery left, with their delivery records. Returns how many messages went.
    fn prune_messages(&self, before: UnixMillis, limit: u32) -> Result<u64>;

    /// The push part of deleting a project: keys, subscriptions, topics, messages, deliveries.
    fn delete_project(&self, project: &str) -> Result<u64>;
}
