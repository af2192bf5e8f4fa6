//! The event log: one append-only, commit-ordered log of everything that happened in every
//! project (document writes today; files, queues, auth later), read by independent consumers
//! (the realtime hub now; triggers, push, usage later). See ARCHITECTURE.md, "The event log".
//!
//! Appending happens inside the transaction of the change it reports: a backend's write methods
//! (e.g. [`DocumentStore::write`](crate::documents::DocumentStore::write)) append their events
//! themselves, in the same transaction, and [`EventLog::append`] is for producers with nothing else
//! to write. A backend assigns each event its `position` inside that transaction, so a reader that
//! has seen position N has seen every event committed before N.

use nimbus_model::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;

/// An event to append: CloudEvents-shaped. The backend gives it an id, a position and a time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub project: String,
    /// Reverse-DNS type, e.g. `dev.nimbus.documents.document.created`.
    pub kind: String,
    /// A URI reference naming what produced it, e.g. `/v1/projects/p/collections/posts`.
    pub source: String,
    /// What it is about within the source, e.g. `posts/0192…`.
    pub subject: String,
    pub data: Value,
}

/// A committed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Commit order, strictly increasing, never reused (also after pruning). The cursor.
    pub position: u64,
    /// Stable id (UUIDv7) for consumers to deduplicate by; not an order.
    pub id: String,
    pub project: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub subject: String,
    pub time: UnixMillis,
    pub data: Value,
}

/// Where the log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// The newest committed position (0 when nothing was ever appended).
    pub last: u64,
    /// Every position up to and including this one has been pruned: a reader at a cursor below it
    /// has missed events and must resynchronise.
    pub pruned_through: u64,
}

/// The persistence side of the event log. Synchronous like every store trait; see the crate doc.
pub trait EventLog: Send + Sync + 'static {
    /// Append events in a transaction of their own. Returns their positions.
    fn append(&self, events: &[NewEvent]) -> Result<Vec<u64>>;
    /// Up to `limit` events with `position > after`, oldest first; of one project, or of all (for
    /// consumers that dispatch per project themselves, like the realtime hub).
    fn read(&self, after: u64, project: Option<&str>, limit: u32) -> Result<Vec<Event>>;
    fn bounds(&self) -> Result<LogBounds>;
    /// A consumer's durable cursor (the last position it has processed), if it has one.
    fn cursor(&self, consumer: &str) -> Result<Option<u64>>;
    /// Store a consumer's cursor (creating the consumer).
    fn set_cursor(&self, consumer: &str, position: u64) -> Result<()>;
    /// Forget a consumer: it no longer holds back pruning.
    fn delete_cursor(&self, consumer: &str) -> Result<bool>;
    /// Every consumer and its cursor, for metrics (lag).
    fn cursors(&self) -> Result<Vec<(String, u64)>>;
    /// Delete events older than `before` that every consumer has passed. Returns how many.
    fn prune(&self, before: UnixMillis) -> Result<u64>;
    /// Wakes on every commit that appended events, carrying the newest position. Consumers wait
    /// on it, then read from their cursor (so a missed wake-up costs nothing but latency).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}
