//! Push notifications: per-project Web Push subscriptions (registered by signed-in end users,
//! bound to their user id, or by service callers) and topics, a per-project VAPID key pair made
//! on first use, durable sends, the sender that delivers them, and the in-app live channel.
//!
//! - **Durable.** [`PushService::send`] writes the message, one delivery row per target
//!   subscription and the `dev.nimbus.push.message.queued` event in one transaction
//!   ([`PushStore::enqueue`]). The sender ([`PushService::spawn_sender`]) claims due deliveries
//!   with a lease, sends them with bounded concurrency (a topic's subscriptions in parallel), and
//!   records each outcome; a delivery whose lease runs out (the process died) is sent again, so a
//!   restart loses nothing. Retries (429, 5xx, network errors) honour `Retry-After`, back off
//!   exponentially with jitter, and stop at `max_attempts` (`failed`) or the message's TTL
//!   (`expired`). A push service's 404/410 removes the subscription.
//! - **Providers.** [`Provider`] is what delivers to one kind of subscription; Web Push
//!   ([`webpush::WebPush`]: RFC 8291 encryption + RFC 8292 VAPID via `web-push-native`) is the
//!   only one. FCM/APNs would be providers of their own `kind`.
//! - **Outbound.** Endpoints are URLs users supply: HTTPS only unless the operator allows plain
//!   HTTP, and the operator's network policy ([`nimbus_model::net::NetPolicy`]) applies to every
//!   address connected to.
//! - **In-app.** [`live::Live`] tails the event log and hands user-targeted messages to that
//!   user's realtime connections.
//!
//! Architecture invariant: no HTTP status codes of the API and no SQL here. The methods are
//! blocking (the store is synchronous): call them through [`PushService::call`].

pub mod live;
pub mod metrics;
mod sender;
pub mod webpush;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use nimbus_model::{UnixMillis, now_millis};
use nimbus_store::StoreError;
use nimbus_store::push::{
    Claimed, DeliveryQuery, EnqueueError, NewMessage, NewSubscription, PushStore, SubscribeError,
    VapidKey,
};
pub use nimbus_store::push::{
    DeliveryCounts, DeliveryInfo, MessageInfo, Outcome, Subscription, Target,
};
use serde_json::{Value, json};
use web_push_native::jwt_simple::algorithms::{ECDSAP256PublicKeyLike as _, ES256KeyPair};

/// Operator bounds and sender settings.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub max_subscriptions_per_project: u32,
    pub max_subscriptions_per_user: u32,
    /// Longest endpoint URL, in bytes (real push services' are a few hundred).
    pub max_endpoint_bytes: usize,
    /// Largest payload. A Web Push message is at most 4096 bytes once encrypted (RFC 8030
    /// section 7.2); aes128gcm adds an 86-byte header (salt, record size, sender key), a 16-byte
    /// tag and a 1-byte delimiter, which leaves 3993 bytes of plaintext.
    pub max_payload_bytes: usize,
    pub max_topics_per_subscription: u32,
    /// Most subscriptions one message may target (a topic's size for one send).
    pub max_targets: u32,
    pub default_ttl: u32,
    pub max_ttl: u32,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How long a claimed delivery is reserved for its sender; after that it is due again.
    pub lease: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Timeout of one POST to a push service.
    pub request_timeout: Duration,
    /// Accept `http://` endpoints (tests against a local push service); HTTPS only otherwise.
    pub allow_http: bool,
    /// Internal networks endpoints may nevertheless reach (the operator's outbound policy).
    pub allow_nets: Vec<ipnet::IpNet>,
    /// The VAPID `sub` claim: a contact for push services (`mailto:` or `https:`).
    pub vapid_subject: String,
    /// Pending in-app notifications per live connection before it is dropped as slow.
    pub live_queue: usize,
    /// How long a message and its delivery records are kept once none of its deliveries is
    /// queued (the sender prunes hourly).
    pub retention: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_subscriptions_per_project: 100_000,
            max_subscriptions_per_user: 20,
            max_endpoint_bytes: 2048,
            max_payload_bytes: 3993,
            max_topics_per_subscription: 100,
            max_targets: 100_000,
            default_ttl: 24 * 3600,
            max_ttl: 28 * 24 * 3600,
            concurrency: 64,
            lease: Duration::from_secs(60),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            request_timeout: Duration::from_secs(15),
            allow_http: false,
            allow_nets: Vec::new(),
            vapid_subject: "mailto:push@nimbus.invalid".into(),
            live_queue: 64,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Limit(String),
    #[error("payload of {size} bytes is larger than the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for PushError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => PushError::NotFound(format!("{what} not found")),
            StoreError::Conflict(m) => PushError::Limit(m),
            e => PushError::Store(e),
        }
    }
}

pub type Result<T, E = PushError> = std::result::Result<T, E>;

/// Who registers a subscription or acts on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in end user: registrations are bound to them; they see only their own.
    User(String),
    /// Admin token, service key or a function: may act on any subscription of the project.
    Service,
}

/// A subscription as a client registers it (the browser's `PushSubscription.toJSON()`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
    /// `null` in browsers; ignored.
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<Value>,
    /// Service callers only: the user this subscription belongs to.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Topics to join right away.
    #[serde(default)]
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

/// What a replay re-queues the failed deliveries of.
#[derive(Debug, Clone, Copy)]
pub enum ReplayTarget<'a> {
    Message(&'a str),
    Subscription(&'a str),
}

/// A send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub target: Target,
    pub payload: Vec<u8>,
    pub ttl: Option<u32>,
    pub urgency: Option<String>,
    pub topic: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SendReceipt {
    pub id: String,
    pub deliveries: u64,
    /// The position of its `queued` event in the log.
    pub position: u64,
}

/// Delivers to one kind of subscription. Web Push is the only implementation; mobile push
/// services (FCM, APNs) would be others, keyed by the subscription's `kind`.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The subscription kind it serves (`webpush`).
    fn kind(&self) -> &'static str;
    /// Check a registration before it is stored (endpoint and keys).
    fn validate(&self, input: &SubscriptionInput) -> Result<()>;
    /// One attempt to deliver `payload` to `sub`.
    async fn deliver(&self, keys: &ProjectKeys, sub: &Subscription, msg: &Claimed) -> Attempt;
}

/// A project's VAPID key pair, ready to sign.
pub struct ProjectKeys {
    pub vapid: ES256KeyPair,
}

/// What one attempt came to, in the provider's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    /// The subscription no longer exists (404/410): remove it.
    Gone {
        status: u16,
    },
    /// Worth trying again (429, 5xx, a network error), not before `retry_after` if given.
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
    /// Will not succeed by retrying (other 4xx, a denied address, bad keys).
    Rejected {
        status: Option<u16>,
        error: String,
    },
}

/// The push service. Cheap to clone.
#[derive(Clone)]
pub struct PushService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PushStore>,
    config: PushConfig,
    providers: HashMap<&'static str, Arc<dyn Provider>>,
    keys: parking_lot::Mutex<HashMap<String, Arc<ProjectKeys>>>,
    wake: tokio::sync::Notify,
    live: live::Live,
    metrics: metrics::PushMetrics,
}

/// Topic names: the same small alphabet as bucket names, plus `.` and `:` for namespacing.
pub fn validate_topic(topic: &str) -> Result<()> {
    let ok = (1..=64).contains(&topic.len())
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PushError::Invalid(
            "invalid_topic",
            format!("invalid topic {topic:?}: use 1 to 64 characters of A-Z, a-z, 0-9, - _ . :"),
        ))
    }
}

fn validate_user_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(PushError::Invalid("invalid_input", "a user id is 1 to 128 characters".into()));
    }
    Ok(())
}

impl PushService {
    /// The service with the Web Push provider; the live channel starts at the log's head.
    pub async fn start(
        store: Arc<dyn PushStore>,
        log: Arc<dyn nimbus_events::EventLog>,
        config: PushConfig,
    ) -> Result<PushService> {
        let webpush = webpush::WebPush::new(&config)?;
        let live = live::Live::start(log, config.live_queue).await?;
        let mut providers: HashMap<&'static str, Arc<dyn Provider>> = HashMap::new();
        providers.insert(webpush.kind(), Arc::new(webpush));
        Ok(PushService {
            inner: Arc::new(Inner {
                store,
                config,
                providers,
                keys: Default::default(),
                wake: tokio::sync::Notify::new(),
                live,
                metrics: Default::default(),
            }),
        })
    }

    pub fn config(&self) -> &PushConfig {
        &self.inner.config
    }

    pub fn live(&self) -> &live::Live {
        &self.inner.live
    }

    pub fn metrics(&self) -> &metrics::PushMetrics {
        &self.inner.metrics
    }

    /// Read the backlog gauges from the store (blocking; `/metrics` calls it before rendering).
    pub fn refresh_metrics(&self) -> Result<()> {
        let backlog = self.inner.store.backlog()?;
        let m = &self.inner.metrics;
        m.pending.set(backlog.queued as i64);
        let age = backlog.oldest_queued_at.map_or(0, |at| (now_millis() - at).max(0) / 1000);
        m.oldest_pending_seconds.set(age);
        Ok(())
    }

    /// Run blocking service calls on tokio's blocking pool.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PushService) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| PushError::Internal(format!("push task failed: {e}")))?
    }

    /// The project's VAPID key pair, made and stored on first use.
    pub fn project_keys(&self, project: &str) -> Result<Arc<ProjectKeys>> {
        if let Some(k) = self.inner.keys.lock().get(project) {
            return Ok(k.clone());
        }
        let stored = match self.inner.store.vapid_key(project)? {
            Some(k) => k,
            None => {
                let pair = ES256KeyPair::generate();
                let key = VapidKey {
                    private_key: pair.to_bytes(),
                    public_key: pair.public_key().public_key().to_bytes_uncompressed(),
                    created_at: now_millis(),
                };
                // Two first uses at once: the store keeps one, both use it.
                self.inner.store.insert_vapid_key(project, &key)?
            }
        };
        let vapid = ES256KeyPair::from_bytes(&stored.private_key)
            .map_err(|e| PushError::Internal(format!("the stored VAPID key is unusable: {e}")))?;
        let keys = Arc::new(ProjectKeys { vapid });
        self.inner.keys.lock().insert(project.to_owned(), keys.clone());
        Ok(keys)
    }

    /// The VAPID public key clients pass to `pushManager.subscribe` as `applicationServerKey`:
    /// the uncompressed P-256 point, base64url without padding.
    pub fn vapid_public_key(&self, project: &str) -> Result<String> {
        let keys = self.project_keys(project)?;
        Ok(URL_SAFE_NO_PAD.encode(keys.vapid.public_key().public_key().to_bytes_uncompressed()))
    }

    /// Register a subscription (again: the endpoint is its identity).
    pub fn subscribe(
        &self,
        project: &str,
        actor: &Actor,
        input: SubscriptionInput,
    ) -> Result<Subscription> {
        let c = &self.inner.config;
        if input.endpoint.len() > c.max_endpoint_bytes {
            return Err(PushError::Invalid(
                "invalid_endpoint",
                format!("an endpoint is at most {} bytes", c.max_endpoint_bytes),
            ));
        }
        if input.topics.len() > c.max_topics_per_subscription as usize {
            return Err(PushError::Limit(format!(
                "a subscription joins at most {} topics",
                c.max_topics_per_subscription
            )));
        }
        input.topics.iter().try_for_each(|t| validate_topic(t))?;
        let user = match (actor, &input.user_id) {
            (Actor::User(_), Some(_)) => {
                return Err(PushError::Invalid(
                    "invalid_input",
                    "user_id is set by service callers only; yours is taken from your token".into(),
                ));
            }
            (Actor::User(id), None) => Some(id.clone()),
            (Actor::Service, Some(id)) => {
                validate_user_id(id)?;
                Some(id.clone())
            }
            (Actor::Service, None) => None,
        };
        let provider = self.inner.providers.get("webpush").expect("registered at start");
        provider.validate(&input)?;
        let id = uuid::Uuid::now_v7().to_string();
        let sub = self
            .inner
            .store
            .put_subscription(
                project,
                &NewSubscription {
                    id: &id,
                    kind: provider.kind(),
                    user_id: user.as_deref(),
                    endpoint: &input.endpoint,
                    p256dh: &input.keys.p256dh,
                    auth: &input.keys.auth,
                    now: now_millis(),
                },
                c.max_subscriptions_per_project,
                c.max_subscriptions_per_user,
            )
            .map_err(|e| match e {
                SubscribeError::Store(e) => PushError::from(e),
                SubscribeError::EndpointTaken => PushError::Forbidden(e.to_string()),
                e => PushError::Limit(e.to_string()),
            })?;
        for topic in &input.topics {
            self.inner.store.join_topic(project, &sub.id, topic, c.max_topics_per_subscription)?;
        }
        if input.topics.is_empty() {
            return Ok(sub);
        }
        self.get(project, actor, &sub.id)
    }

    /// A subscription the actor may see (an end user: their own; otherwise `NotFound`).
    pub fn get(&self, project: &str, actor: &Actor, id: &str) -> Result<Subscription> {
        let sub = self.inner.store.get_subscription(project, id)?;
        match (sub, actor) {
            (Some(s), Actor::Service) => Ok(s),
            (Some(s), Actor::User(u)) if s.user_id.as_deref() == Some(u.as_str()) => Ok(s),
            _ => Err(PushError::NotFound(format!("subscription {id:?} not found"))),
        }
    }

    /// A page of subscriptions (an end user's own only).
    pub fn list(
        &self,
        project: &str,
        actor: &Actor,
        user: Option<&str>,
        topic: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<Subscription>> {
        if let Some(t) = topic {
            validate_topic(t)?;
        }
        let user = match actor {
            Actor::User(u) => Some(u.as_str()),
            Actor::Service => user,
        };
        let limit = limit.unwrap_or(100).clamp(1, 1000);
        Ok(self.inner.store.list_subscriptions(project, user, topic, after, limit)?)
    }

    pub fn unsubscribe(&self, project: &str, actor: &Actor, id: &str) -> Result<()> {
        self.get(project, actor, id)?;
        self.inner.store.delete_subscription(project, id)?;
        Ok(())
    }

    pub fn join(&self, project: &str, actor: &Actor, id: &str, topic: &str) -> Result<()> {
        validate_topic(topic)?;
        self.get(project, actor, id)?;
        let max = self.inner.config.max_topics_per_subscription;
        Ok(self.inner.store.join_topic(project, id, topic, max)?)
    }

    pub fn leave(&self, project: &str, actor: &Actor, id: &str, topic: &str) -> Result<bool> {
        validate_topic(topic)?;
        self.get(project, actor, id)?;
        Ok(self.inner.store.leave_topic(project, id, topic)?)
    }

    /// Queue a message durably and wake the sender. `sender` is recorded with it.
    pub fn send(&self, project: &str, req: SendRequest, sender: Value) -> Result<SendReceipt> {
        let c = &self.inner.config;
        match &req.target {
            Target::Topic(t) => validate_topic(t)?,
            Target::User(u) => validate_user_id(u)?,
            Target::Subscription(s) if s.is_empty() || s.len() > 64 => {
                return Err(PushError::Invalid("invalid_input", "invalid subscription id".into()));
            }
            Target::Subscription(_) => {}
        }
        if req.payload.len() > c.max_payload_bytes {
            return Err(PushError::PayloadTooLarge {
                size: req.payload.len(),
                limit: c.max_payload_bytes,
            });
        }
        let ttl = req.ttl.unwrap_or(c.default_ttl);
        if ttl > c.max_ttl {
            return Err(PushError::Invalid(
                "invalid_ttl",
                format!("a TTL is at most {} seconds", c.max_ttl),
            ));
        }
        let urgency = req.urgency.as_deref().unwrap_or("normal");
        if !["very-low", "low", "normal", "high"].contains(&urgency) {
            return Err(PushError::Invalid(
                "invalid_urgency",
                "urgency is one of very-low, low, normal, high (RFC 8030)".into(),
            ));
        }
        if let Some(t) = &req.topic {
            // RFC 8030 section 5.4: at most 32 characters of the URL-safe base64 alphabet.
            let ok = (1..=32).contains(&t.len())
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !ok {
                return Err(PushError::Invalid(
                    "invalid_topic",
                    "the Topic header is 1 to 32 characters of A-Z, a-z, 0-9, - and _".into(),
                ));
            }
        }
        // The VAPID key exists before anything is queued, so the sender never makes one.
        self.project_keys(project)?;
        let id = uuid::Uuid::now_v7().to_string();
        let mut data = json!({
            "id": id,
            "target": {"kind": req.target.kind(), "value": req.target.value()},
            "ttl": ttl,
            "urgency": urgency,
            "topic": req.topic,
            "sender": sender,
        });
        if let Target::User(u) = &req.target {
            data["user"] = json!(u);
        }
        match std::str::from_utf8(&req.payload) {
            Ok(text) => data["payload"] = json!(text),
            Err(_) => data["payload_base64"] = json!(STANDARD.encode(&req.payload)),
        }
        let (deliveries, position) = self
            .inner
            .store
            .enqueue(
                project,
                &NewMessage {
                    id: &id,
                    target: &req.target,
                    payload: &req.payload,
                    ttl,
                    urgency,
                    topic: req.topic.as_deref(),
                    sender,
                    now: now_millis(),
                    max_targets: c.max_targets,
                    event_data: data,
                },
            )
            .map_err(|e| match e {
                EnqueueError::NoSuchSubscription => {
                    PushError::NotFound(format!("subscription {:?} not found", req.target.value()))
                }
                EnqueueError::TooManyTargets { .. } => PushError::Limit(e.to_string()),
                EnqueueError::Store(e) => PushError::from(e),
            })?;
        if deliveries > 0 {
            self.inner.wake.notify_one();
        }
        Ok(SendReceipt { id, deliveries, position })
    }

    pub fn message(&self, project: &str, id: &str) -> Result<MessageInfo> {
        self.inner
            .store
            .message(project, id)?
            .ok_or_else(|| PushError::NotFound(format!("message {id:?} not found")))
    }

    /// Delivery records, of one message or one subscription, in commit order.
    pub fn deliveries(
        &self,
        project: &str,
        message: Option<&str>,
        subscription: Option<&str>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<DeliveryInfo>> {
        let limit = limit.unwrap_or(100).clamp(1, 1000);
        Ok(self
            .inner
            .store
            .deliveries(project, &DeliveryQuery { message, subscription, after, limit })?)
    }

    /// Replay: queue the `failed` deliveries of a message, or of a subscription, again (fresh
    /// attempts, due now). Deliveries whose subscription is gone or whose message's TTL has run
    /// out stay failed. Returns how many were queued again.
    pub fn replay(&self, project: &str, target: ReplayTarget<'_>) -> Result<u64> {
        let (message, subscription) = match target {
            ReplayTarget::Message(id) => {
                self.message(project, id)?;
                (Some(id), None)
            }
            ReplayTarget::Subscription(id) => {
                self.get(project, &Actor::Service, id)?;
                (None, Some(id))
            }
        };
        let n = self.inner.store.requeue_failed(project, message, subscription, now_millis())?;
        if n > 0 {
            self.inner.wake.notify_one();
        }
        tracing::info!(project, ?message, ?subscription, requeued = n, "replayed push deliveries");
        Ok(n)
    }

    /// Retention: delete the messages older than `retention` with no queued delivery left, and
    /// their delivery records. Returns how many messages went.
    pub fn prune(&self) -> Result<u64> {
        const BATCH: u32 = 1000;
        let before = now_millis() - self.inner.config.retention.as_millis() as i64;
        let mut total = 0;
        // Batches, so the single writer is never held long.
        loop {
            let n = self.inner.store.prune_messages(before, BATCH)?;
            total += n;
            if n < u64::from(BATCH) {
                return Ok(total);
            }
        }
    }

    /// The push part of deleting a project.
    pub fn delete_project(&self, project: &str) -> Result<u64> {
        let n = self.inner.store.delete_project(project)?;
        self.inner.keys.lock().remove(project);
        self.inner.live.close_project(project);
        tracing::info!(project, removed = n, "deleted the project's push data");
        Ok(n)
    }

    /// Start the sender; it runs until the handle is aborted.
    pub fn spawn_sender(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(sender::run(self.clone()))
    }

    fn retry_at(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        now: UnixMillis,
    ) -> UnixMillis {
        let c = &self.inner.config;
        let jittered = nimbus_model::retry::backoff(c.backoff_base, c.backoff_max, attempts);
        let wait = retry_after.map_or(jittered, |ra| ra.max(jittered));
        now + wait.as_millis() as i64
    }

    /// What an attempt means for the delivery record.
    fn outcome(&self, c: &Claimed, attempt: Attempt, now: UnixMillis) -> Outcome {
        match attempt {
            Attempt::Delivered { status } => Outcome::Sent { status },
            Attempt::Gone { status } => Outcome::Failed {
                status: Some(status),
                error: format!("the push service answered {status}: subscription removed"),
                remove_subscription: true,
            },
            Attempt::Rejected { status, error } => {
                Outcome::Failed { status, error, remove_subscription: false }
            }
            Attempt::Retry { status, retry_after, error } => {
                if c.attempts >= self.inner.config.max_attempts {
                    return Outcome::Failed {
                        status,
                        error: format!("gave up after {} attempts: {error}", c.attempts),
                        remove_subscription: false,
                    };
                }
                let at = self.retry_at(c.attempts, retry_after, now);
                if at >= c.expires_at {
                    Outcome::Expired
                } else {
                    Outcome::Retry { at, status, error }
                }
            }
        }
    }
}

/// VAPID key, subscriptions, topics, messages and deliveries; live connections close.
impl nimbus_model::lifecycle::ProjectLifecycle for PushService {
    fn part(&self) -> &'static str {
        "push"
    }

    fn delete_project_data<'a>(
        &'a self,
        project: &'a str,
    ) -> nimbus_model::lifecycle::PartFuture<'a> {
        let p = project.to_owned();
        Box::pin(async move { Ok(self.call(move |s| s.delete_project(&p)).await.map(drop)?) })
    }
}

#[cfg(test)]
mod tests;
