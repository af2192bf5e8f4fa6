//! Events as a function receives them: the CloudEvents 1.0 HTTP binding in binary mode (`ce-*`
//! headers, the data as a JSON body), parsed into typed values. See docs/triggers.md.
//!
//! ```ignore
//! fn handle(request: IncomingRequest, out: ResponseOutparam) {
//!     match nimbus_sdk::events::Event::from_request(&request) {
//!         Ok(Event::ObjectCreated(o)) => { /* o.bucket, o.key, o.size ... */ }
//!         Ok(other) => { /* ... */ }
//!         Err(e) => { /* not an event: a plain HTTP request */ }
//!     }
//! }
//! ```

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// Largest event body read (queue messages are at most 256 KiB).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// The envelope: every CloudEvents attribute Nimbus sends, and the raw data.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// Stable across retries: deduplicate on it.
    pub id: String,
    pub source: String,
    /// e.g. `dev.nimbus.storage.object.created`.
    pub kind: String,
    pub subject: Option<String>,
    /// RFC 3339.
    pub time: Option<String>,
    pub data: Value,
    /// Which attempt this is (1 first).
    pub attempt: u32,
    /// The function's trigger that subscribed to it.
    pub trigger: Option<String>,
}

impl CloudEvent {
    /// Parse the request's `ce-*` headers and JSON body. Fails when `ce-specversion` is not 1.0
    /// or a required attribute is missing (the request is not an event).
    pub fn from_request(request: &wasi::http::types::IncomingRequest) -> Result<CloudEvent, Error> {
        let headers = request.headers();
        let get = |name: &str| {
            headers
                .get(&name.to_string())
                .first()
                .and_then(|v| String::from_utf8(v.clone()).ok())
        };
        let body = crate::http::read_request_body(request, MAX_EVENT_BYTES)?;
        Self::from_parts(&get, &body)
    }

    /// The same from headers (by lowercase name) and a body: what `from_request` does, for tests
    /// and other transports.
    pub fn from_parts(get: &dyn Fn(&str) -> Option<String>, body: &[u8]) -> Result<CloudEvent, Error> {
        let missing = |what: &str| Error::Decode(format!("not a CloudEvent: no {what} header"));
        if get("ce-specversion").as_deref() != Some("1.0") {
            return Err(Error::Decode("not a CloudEvent: ce-specversion is not 1.0".into()));
        }
        let data = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .map_err(|e| Error::Decode(format!("the event data is not JSON: {e}")))?
        };
        Ok(CloudEvent {
            id: get("ce-id").ok_or_else(|| missing("ce-id"))?,
            source: get("ce-source").ok_or_else(|| missing("ce-source"))?,
            kind: get("ce-type").ok_or_else(|| missing("ce-type"))?,
            subject: get("ce-subject"),
            time: get("ce-time"),
            data,
            attempt: get("x-nimbus-delivery-attempt").and_then(|a| a.parse().ok()).unwrap_or(1),
            trigger: get("x-nimbus-trigger"),
        })
    }

    /// The data as a type of your own.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.data.clone())
            .map_err(|e| Error::Decode(format!("unexpected event data: {e}")))
    }
}

/// A file-storage object event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ObjectEvent {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub content_type: String,
    pub etag: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    /// Who uploaded or deleted it (`{"kind": "service"}`, `{"kind": "user", "id": ...}`...).
    #[serde(default)]
    pub uploader: Value,
}

/// A document event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DocumentEvent {
    pub collection: String,
    pub id: String,
    pub revision: u64,
    /// The document after the change (before it, for a deletion).
    pub document: Value,
    /// The document before an update.
    #[serde(default)]
    pub previous: Option<Value>,
}

/// A schedule tick.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TickEvent {
    pub function: String,
    pub trigger: String,
    pub cron: String,
    pub timezone: String,
    /// When the tick was due (RFC 3339) and in milliseconds since the epoch.
    pub scheduled_time: String,
    pub tick: i64,
    pub late_ms: i64,
}

/// A queue message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueueMessage {
    pub queue: String,
    pub id: String,
    pub body: Value,
    pub deliver_at: i64,
    #[serde(default)]
    pub ordering_key: Option<String>,
}

/// An event, by type. Types this SDK does not know yet come as `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ObjectCreated(ObjectEvent),
    ObjectDeleted(ObjectEvent),
    DocumentCreated(DocumentEvent),
    DocumentUpdated(DocumentEvent),
    DocumentDeleted(DocumentEvent),
    /// An auth event (`user.created`, `user.deleted`, `user.signed_in`, `user.email_verified`)
    /// about the user `user_id`.
    Auth { event: String, user_id: String, data: Value },
    ScheduleTick(TickEvent),
    QueueMessage(QueueMessage),
    Other(CloudEvent),
}

impl Event {
    /// Parse a request into a typed event (and its envelope).
    pub fn from_request(
        request: &wasi::http::types::IncomingRequest,
    ) -> Result<(Event, CloudEvent), Error> {
        let ce = CloudEvent::from_request(request)?;
        Ok((Self::from_cloud_event(&ce)?, ce))
    }

    pub fn from_cloud_event(ce: &CloudEvent) -> Result<Event, Error> {
        Ok(match ce.kind.as_str() {
            "dev.nimbus.storage.object.created" => Event::ObjectCreated(ce.data_as()?),
            "dev.nimbus.storage.object.deleted" => Event::ObjectDeleted(ce.data_as()?),
            "dev.nimbus.documents.document.created" => Event::DocumentCreated(ce.data_as()?),
            "dev.nimbus.documents.document.updated" => Event::DocumentUpdated(ce.data_as()?),
            "dev.nimbus.documents.document.deleted" => Event::DocumentDeleted(ce.data_as()?),
            "dev.nimbus.scheduler.tick" => Event::ScheduleTick(ce.data_as()?),
            "dev.nimbus.queue.message.published" => Event::QueueMessage(ce.data_as()?),
            kind => match kind.strip_prefix("dev.nimbus.auth.") {
                Some(event) => Event::Auth {
                    event: event.to_owned(),
                    user_id: ce.subject.clone().unwrap_or_default(),
                    data: ce.data.clone(),
                },
                None => Event::Other(ce.clone()),
            },
        })
    }
}
