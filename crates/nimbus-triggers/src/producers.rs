//! Producers that belong to this service: queue messages and asynchronous invocations. Both are
//! events on the log, written (with their idempotency key) in one transaction; the dispatcher
//! delivers them like any other event.

use std::time::Duration;

use bytes::Bytes;
use nimbus_model::event_types::{INVOCATION_REQUESTED, QUEUE_MESSAGE};
use nimbus_model::{TriggerKind, UnixMillis, now_millis, validate_queue_name};
use nimbus_store::events::NewEvent;
use nimbus_store::triggers::{AsyncInvocation, Idempotency, Once};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Result, TriggerError, TriggerService, blocking};

/// What a publish or an asynchronous invocation answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Published {
    /// The message's or invocation's id.
    pub id: String,
    /// When the message becomes deliverable (queues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<UnixMillis>,
    /// True when an idempotency key matched an earlier call: this is that call's result, and
    /// nothing new was queued.
    pub repeated: bool,
}

/// An HTTP request to run later.
#[derive(Debug, Clone)]
pub struct AsyncRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub callback_url: Option<String>,
}

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 256;
const MAX_ORDERING_KEY: usize = 256;

impl TriggerService {
    /// Queue names of the project that some active function subscribes to.
    pub fn queues(&self, project: &str) -> Vec<(String, Vec<String>)> {
        let mut queues: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for f in self.inner.functions.triggered(project) {
            for t in &f.info.spec.triggers {
                if let (TriggerKind::Queue, Some(q)) = (t.kind, &t.queue) {
                    queues.entry(q.clone()).or_default().push(f.info.function.clone());
                }
            }
        }
        queues.into_iter().collect()
    }

    fn check_backlog(&self, project: &str) -> Result<()> {
        let pending = self.inner.pending.lock().get(project).copied().unwrap_or(0);
        let max = self.inner.config.max_pending_per_project;
        if pending >= max {
            return Err(TriggerError::Backlog(format!(
                "the project has {pending} undelivered events (the limit is {max}); retry later"
            )));
        }
        Ok(())
    }

    /// A checked idempotency key and the start of its window.
    fn idempotency(&self, key: Option<&str>) -> Result<Option<(String, UnixMillis)>> {
        let Some(key) = key else { return Ok(None) };
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
            return Err(TriggerError::Invalid(format!(
                "an idempotency key is 1-{MAX_IDEMPOTENCY_KEY} bytes without control characters"
            )));
        }
        let window = self.inner.config.idempotency_window.as_millis() as i64;
        Ok(Some((key.to_owned(), now_millis() - window)))
    }

    /// Publish a message (any JSON) to a queue of the project, deliverable after `delay`.
    pub async fn publish(
        &self,
        project: &str,
        queue: &str,
        body: Value,
        delay: Duration,
        ordering_key: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Result<Published> {
        validate_queue_name(queue).map_err(|e| TriggerError::Invalid(e.to_string()))?;
        if !self.queues(project).iter().any(|(q, _)| q == queue) {
            return Err(TriggerError::NotFound(format!(
                "queue {queue} (a queue exists while a function's trigger subscribes to it)"
            )));
        }
        let size = serde_json::to_vec(&body).map(|b| b.len()).unwrap_or(usize::MAX);
        let max = self.inner.config.max_message_bytes;
        if size > max {
            return Err(TriggerError::TooLarge { what: "the message", max });
        }
        if delay > self.inner.config.max_delay {
            return Err(TriggerError::Invalid(format!(
                "the delay is at most {} seconds",
                self.inner.config.max_delay.as_secs()
            )));
        }
        if ordering_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > MAX_ORDERING_KEY) {
            return Err(TriggerError::Invalid(format!(
                "an ordering key is 1-{MAX_ORDERING_KEY} bytes"
            )));
        }
        self.check_backlog(project)?;
        let scope = format!("queue:{queue}");
        let idem = self.idempotency(idempotency_key)?;
        let id = uuid::Uuid::now_v7().to_string();
        let deliver_at = now_millis() + delay.as_millis() as i64;
        let event = NewEvent {
            project: project.to_owned(),
            kind: QUEUE_MESSAGE.to_owned(),
            source: format!("/v1/projects/{project}/queues/{queue}"),
            subject: id.clone(),
            data: json!({
                "queue": queue,
                "id": id,
                "body": body,
                "deliver_at": deliver_at,
                "ordering_key": ordering_key,
            }),
        };
        let result = json!({ "id": id, "deliver_at": deliver_at });
        let store = self.inner.stores.producers.clone();
        let once = blocking(move || {
            let idem =
                idem.as_ref().map(|(key, since)| Idempotency { scope: &scope, key, since: *since });
            Ok(store.append_once(&[event], idem, &result)?)
        })
        .await?;
        Ok(match once {
            Once::First(_) => {
                self.inner.metrics.published.inc();
                Published { id, deliver_at: Some(deliver_at), repeated: false }
            }
            Once::Repeat(first) => Published {
                id: first["id"].as_str().unwrap_or_default().to_owned(),
                deliver_at: first["deliver_at"].as_i64(),
                repeated: true,
            },
        })
    }

    /// Accept a request to run `function` later; its response is kept for
    /// [`get_async`](Self::get_async) and posted to the callback URL, if any.
    pub async fn invoke_async(
        &self,
        project: &str,
        function: &str,
        request: AsyncRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Published> {
        if self.inner.functions.active(project, function).is_none() {
            return Err(TriggerError::NotFound(format!("function {function}")));
        }
        let max = self.inner.config.max_message_bytes;
        if request.body.len() > max {
            return Err(TriggerError::TooLarge { what: "an asynchronous request body", max });
        }
        if let Some(url) = &request.callback_url {
            self.check_callback_url(url)?;
        }
        self.check_backlog(project)?;
        let scope = format!("invoke:{function}");
        let idem = self.idempotency(idempotency_key)?;
        let id = uuid::Uuid::now_v7().to_string();
        let inv = AsyncInvocation {
            id: id.clone(),
            project: project.to_owned(),
            function: function.to_owned(),
            status: "queued".into(),
            method: request.method,
            path: request.path,
            headers: request.headers,
            body: request.body.to_vec(),
            callback_url: request.callback_url,
            created_at: now_millis(),
            completed_at: None,
            attempts: 0,
            invocation_id: None,
            response_status: None,
            response_headers: Vec::new(),
            response_body: Vec::new(),
            response_truncated: false,
            error: None,
            callback: Default::default(),
        };
        let event = NewEvent {
            project: project.to_owned(),
            kind: INVOCATION_REQUESTED.to_owned(),
            source: format!("/v1/projects/{project}/functions/{function}"),
            subject: id.clone(),
            data: json!({ "id": id, "function": function }),
        };
        let result = json!({ "id": id });
        let store = self.inner.stores.producers.clone();
        let once = blocking(move || {
            let idem =
                idem.as_ref().map(|(key, since)| Idempotency { scope: &scope, key, since: *since });
            Ok(store.create_async(&inv, &event, idem, &result)?)
        })
        .await?;
        Ok(match once {
            Once::First(_) => Published { id, deliver_at: None, repeated: false },
            Once::Repeat(first) => Published {
                id: first["id"].as_str().unwrap_or_default().to_owned(),
                deliver_at: None,
                repeated: true,
            },
        })
    }

    /// An asynchronous invocation of the project: its status and, once finished, its response.
    pub async fn get_async(&self, project: &str, id: &str) -> Result<AsyncInvocation> {
        let (store, p, i) =
            (self.inner.stores.producers.clone(), project.to_owned(), id.to_owned());
        blocking(move || Ok(store.get_async(&p, &i)?))
            .await?
            .ok_or_else(|| TriggerError::NotFound(format!("asynchronous invocation {id}")))
    }

    fn check_callback_url(&self, url: &str) -> Result<()> {
        let bad = |m: &str| TriggerError::Invalid(format!("callback URL {url:?}: {m}"));
        if url.len() > 2048 {
            return Err(bad("longer than 2048 bytes"));
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.inner.config.callback_allow_http => {}
            "http" => return Err(bad("use https (plain http is off on this server)")),
            _ => return Err(bad("use an https URL")),
        }
        if parsed.host_str().is_none()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(bad("give a host, and no credentials in the URL"));
        }
        Ok(())
    }
}
