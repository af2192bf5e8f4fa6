//! Delivery workers: claim due deliveries, run each as an invocation of its function (a
//! CloudEvent in the HTTP binding, binary mode; or the stored request of an asynchronous
//! invocation), and record the outcome: delivered, retried later, or dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nimbus_functions::{ActiveVersion, Invoked};
use nimbus_model::{UnixMillis, now_millis, trigger_names};
use nimbus_store::triggers::{
    AfterAttempt, AsyncInvocation, AsyncResult, Attempt, Delivery, DeliveryStore,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::dispatch::ASYNC_TRIGGER;
use crate::{TriggerService, blocking};

/// Per-function semaphores for event work, created on first use.
pub(crate) type Gates = parking_lot::Mutex<HashMap<(String, String), (u32, Arc<Semaphore>)>>;

/// How long a delivery given back for want of a slot waits before it can be claimed again.
const RELEASE_DELAY_MS: i64 = 100;
/// Longest wait between looks at the store when nothing woke the workers.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Body kept of an event delivery's response (only its status matters; the rest is drained).
const EVENT_RESPONSE_BYTES: usize = 64 << 10;

pub(crate) async fn run(service: TriggerService) {
    let inner = &service.inner;
    let slots = Arc::new(Semaphore::new(inner.config.max_in_flight));
    let finisher = Finisher::spawn(inner.stores.deliveries.clone());
    loop {
        let Ok(first) = slots.clone().acquire_owned().await else { return };
        let limit = slots.available_permits() as u32 + 1;
        let store = inner.stores.deliveries.clone();
        let claimed = match blocking(move || Ok(store.claim(now_millis(), limit)?)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming deliveries");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        };
        if claimed.is_empty() {
            drop(first);
            let store = inner.stores.deliveries.clone();
            let next = blocking(move || Ok(store.next_due()?)).await.ok().flatten();
            let wait = next
                .map(|at| Duration::from_millis((at - now_millis()).max(0) as u64))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let mut first = Some(first);
        for d in claimed {
            let slot = match first.take() {
                Some(p) => p,
                // Counted above: nothing else takes these slots meanwhile.
                None => match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        release(&service, d.id).await;
                        continue;
                    }
                },
            };
            let Some(gate) = gate(&service, &d) else {
                tokio::spawn(attempt(service.clone(), finisher.clone(), d, slot, None));
                continue;
            };
            match gate.try_acquire_owned() {
                Ok(g) => {
                    tokio::spawn(attempt(service.clone(), finisher.clone(), d, slot, Some(g)));
                }
                Err(_) => release(&service, d.id).await,
            }
        }
    }
}

/// The event gate of a delivery's function: half its instances, at least one.
fn gate(service: &TriggerService, d: &Delivery) -> Option<Arc<Semaphore>> {
    let f = service.inner.functions.active(&d.project, &d.function)?;
    let permits = (f.info.limits.max_concurrency / 2).max(1);
    let mut gates = service.inner.gates.lock();
    let entry = gates
        .entry((d.project.clone(), d.function.clone()))
        .or_insert_with(|| (permits, Arc::new(Semaphore::new(permits as usize))));
    if entry.0 != permits {
        // Limits changed with a deploy: new work uses the new gate; running work keeps its permit.
        *entry = (permits, Arc::new(Semaphore::new(permits as usize)));
    }
    Some(entry.1.clone())
}

async fn release(service: &TriggerService, id: u64) {
    let store = service.inner.stores.deliveries.clone();
    let at = now_millis() + RELEASE_DELAY_MS;
    if let Err(e) = blocking(move || Ok(store.release(id, at)?)).await {
        tracing::warn!(error = %e, delivery = id, "giving back a delivery");
    }
}

/// What one attempt came to.
struct Outcome {
    invocation_id: Option<String>,
    http_status: Option<u16>,
    ok: bool,
    error: Option<String>,
    response: Option<StoredResponse>,
}

/// A response kept for the caller of an asynchronous invocation: headers, body, and whether the
/// body was cut at the size kept.
type StoredResponse = (Vec<(String, String)>, Vec<u8>, bool);

impl Outcome {
    fn failed(error: impl Into<String>) -> Self {
        Outcome {
            invocation_id: None,
            http_status: None,
            ok: false,
            error: Some(error.into()),
            response: None,
        }
    }
}

/// A finished attempt, waiting to be written.
type Finished = (u64, Attempt, AfterAttempt, oneshot::Sender<Result<bool, String>>);

/// Writes the outcomes of attempts: those that end while a write is under way are written
/// together, in one transaction (`DeliveryStore::finish_many`), instead of one transaction
/// each, which was most of a delivery's store work. Bounded without a bound of its own: every
/// attempt queued here holds one of the `max_in_flight` delivery slots until it is answered.
#[derive(Clone)]
struct Finisher(mpsc::UnboundedSender<Finished>);

impl Finisher {
    fn spawn(store: Arc<dyn DeliveryStore>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                let (items, acks): (Vec<_>, Vec<_>) =
                    batch.drain(..).map(|(id, a, next, ack)| ((id, a, next), ack)).unzip();
                let store = store.clone();
                match blocking(move || Ok(store.finish_many(&items)?)).await {
                    Ok(done) => {
                        for (ack, d) in acks.into_iter().zip(done) {
                            let _ = ack.send(Ok(d));
                        }
                    }
                    Err(e) => {
                        for ack in acks {
                            let _ = ack.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Finisher(tx)
    }

    /// Record one attempt (see `DeliveryStore::finish`).
    async fn finish(&self, id: u64, attempt: Attempt, next: AfterAttempt) -> Result<bool, String> {
        let (ack, answer) = oneshot::channel();
        let stopped = || "the attempt writer has stopped".to_string();
        self.0.send((id, attempt, next, ack)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn attempt(
    service: TriggerService,
    finisher: Finisher,
    d: Delivery,
    _slot: OwnedSemaphorePermit,
    _gate: Option<OwnedSemaphorePermit>,
) {
    let inner = &service.inner;
    let started_at = now_millis();
    let started = Instant::now();
    if d.attempts == 1 {
        inner.metrics.lag.observe(
            (started_at - d.event.time.max(d.next_at.min(started_at))).max(0) as f64 / 1e3,
        );
    }
    let is_async = d.trigger == ASYNC_TRIGGER;
    let stored = if is_async { load_async(&service, &d).await } else { None };
    let outcome = match inner.functions.active(&d.project, &d.function) {
        None => Outcome::failed(format!("function {} does not exist (any more)", d.function)),
        Some(f) if is_async => match &stored {
            Some(inv) => run_async(&service, f, &d, inv).await,
            None => Outcome::failed("the asynchronous invocation's request is gone"),
        },
        Some(f) => match trigger_label(&f, &d.trigger) {
            Some(label) => run_event(&service, f, &d, label).await,
            None => Outcome::failed(format!(
                "function {} no longer has trigger {:?} (a later deploy removed it)",
                d.function, d.trigger
            )),
        },
    };
    let now = now_millis();
    let next = if outcome.ok {
        AfterAttempt::Delivered
    } else if d.attempts >= d.max_attempts || now >= d.expires_at {
        AfterAttempt::Dead
    } else {
        let wait = nimbus_model::retry::backoff(
            inner.config.retry_base,
            inner.config.retry_max,
            d.attempts,
        );
        let at = now + wait.as_millis() as i64;
        // A retry past the event's age would be dead on arrival: dead-letter at the deadline.
        AfterAttempt::RetryAt(at.min(d.expires_at))
    };
    let record = Attempt {
        attempt: d.attempts,
        invocation_id: outcome.invocation_id.clone(),
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        http_status: outcome.http_status,
        ok: outcome.ok,
        error: outcome.error.clone(),
    };
    if let Err(e) = finisher.finish(d.id, record, next).await {
        tracing::warn!(error = %e, delivery = d.id, "recording a delivery attempt");
    }
    inner.metrics.finished(&d, next);
    if is_async && let Some(inv) = stored {
        finish_async(&service, &d, inv, &outcome, next).await;
    }
    // A slot is free, and an ordered successor may be due now.
    inner.wake.notify_one();
}

/// `kind:name` of a function's trigger, if its active version still has it.
fn trigger_label(f: &ActiveVersion, trigger: &str) -> Option<String> {
    let spec = &f.info.spec;
    trigger_names(&spec.triggers)
        .into_iter()
        .zip(&spec.triggers)
        .find(|(name, _)| name == trigger)
        .map(|(name, t)| format!("{}:{name}", t.kind.as_str()))
}

fn rfc3339(ms: UnixMillis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The CloudEvents 1.0 HTTP binding, binary mode: attributes in `ce-*` headers, the data as the
/// body.
fn cloud_event_request(d: &Delivery) -> http::Request<Full<Bytes>> {
    let e = &d.event;
    let body = serde_json::to_vec(&e.data).unwrap_or_default();
    let mut b = http::Request::builder()
        .method(http::Method::POST)
        .uri(&d.path)
        .header(http::header::HOST, "localhost")
        .header("ce-specversion", "1.0")
        .header("ce-id", &e.id)
        .header("ce-source", &e.source)
        .header("ce-type", &e.kind)
        .header("ce-time", rfc3339(e.time))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-nimbus-project", &d.project)
        .header("x-nimbus-auth", "event")
        .header("x-nimbus-trigger", &d.trigger)
        .header("x-nimbus-delivery-id", d.id.to_string())
        .header("x-nimbus-delivery-attempt", d.attempts.to_string());
    if !e.subject.is_empty() {
        b = b.header("ce-subject", &e.subject);
    }
    b.body(Full::new(Bytes::from(body))).unwrap_or_else(|_| {
        // Only a header value could fail (a subject with control characters): send without it.
        let mut r = http::Request::new(Full::new(Bytes::new()));
        *r.method_mut() = http::Method::POST;
        r
    })
}

async fn run_event(
    service: &TriggerService,
    f: Arc<ActiveVersion>,
    d: &Delivery,
    label: String,
) -> Outcome {
    let request = cloud_event_request(d);
    let invoked = service.inner.functions.invoke(f, request, label).await;
    outcome(invoked, EVENT_RESPONSE_BYTES, false).await
}

async fn outcome(invoked: Invoked, keep: usize, want_body: bool) -> Outcome {
    let id = Some(invoked.id);
    match invoked.result {
        Err(e) => Outcome {
            invocation_id: id,
            http_status: Some(e.http_status()),
            ok: false,
            error: Some(e.to_string()),
            response: None,
        },
        Ok(response) => {
            let status = response.status();
            let headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            // Read the body to its end: a guest that fails mid-body failed. Beyond `keep`,
            // bytes are counted, not kept.
            let mut body = response.into_body();
            let mut kept = Vec::new();
            let mut truncated = false;
            let mut broken = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            let room = keep.saturating_sub(kept.len());
                            if data.len() > room {
                                truncated = true;
                            }
                            if want_body {
                                kept.extend_from_slice(&data[..data.len().min(room)]);
                            }
                        }
                    }
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            let ok = status.is_success() && broken.is_none();
            let error = match (&broken, status.is_success()) {
                (Some(b), _) => Some(format!("the response body failed: {b}")),
                (None, false) => Some(format!("the function answered HTTP {}", status.as_u16())),
                (None, true) => None,
            };
            Outcome {
                invocation_id: id,
                http_status: Some(status.as_u16()),
                ok,
                error,
                response: Some((headers, kept, truncated)),
            }
        }
    }
}

async fn load_async(service: &TriggerService, d: &Delivery) -> Option<AsyncInvocation> {
    let id = d.event.data.get("id")?.as_str()?.to_owned();
    let (store, project) = (service.inner.stores.producers.clone(), d.project.clone());
    let inv = blocking(move || Ok(store.get_async(&project, &id)?)).await.ok().flatten()?;
    // Mark it running (best effort: the delivery's own record is what counts).
    let running = AsyncResult {
        status: "running".into(),
        attempts: d.attempts,
        invocation_id: inv.invocation_id.clone(),
        response_status: None,
        response_headers: Vec::new(),
        response_body: Vec::new(),
        response_truncated: false,
        error: inv.error.clone(),
        completed_at: None,
    };
    let (store, project, id) =
        (service.inner.stores.producers.clone(), d.project.clone(), inv.id.clone());
    let _ = blocking(move || Ok(store.update_async(&project, &id, &running)?)).await;
    Some(inv)
}

async fn run_async(
    service: &TriggerService,
    f: Arc<ActiveVersion>,
    d: &Delivery,
    inv: &AsyncInvocation,
) -> Outcome {
    let mut b = http::Request::builder().method(inv.method.as_str()).uri(&inv.path);
    for (k, v) in &inv.headers {
        b = b.header(k, v);
    }
    b = b
        .header("x-nimbus-async-id", &inv.id)
        .header("x-nimbus-delivery-attempt", d.attempts.to_string());
    let request = match b.body(Full::new(Bytes::from(inv.body.clone()))) {
        Ok(r) => r,
        Err(e) => return Outcome::failed(format!("the stored request is not valid: {e}")),
    };
    let invoked = service.inner.functions.invoke(f, request, ASYNC_TRIGGER).await;
    outcome(invoked, service.inner.config.max_async_response_bytes, true).await
}

async fn finish_async(
    service: &TriggerService,
    d: &Delivery,
    inv: AsyncInvocation,
    o: &Outcome,
    next: AfterAttempt,
) {
    let (status, completed_at) = match next {
        AfterAttempt::Delivered => ("succeeded", Some(now_millis())),
        AfterAttempt::Dead => ("failed", Some(now_millis())),
        AfterAttempt::RetryAt(_) => ("queued", None),
    };
    let (headers, body, truncated) = o.response.clone().unwrap_or_default();
    let result = AsyncResult {
        status: status.into(),
        attempts: d.attempts,
        invocation_id: o.invocation_id.clone(),
        response_status: o.http_status,
        response_headers: headers,
        response_body: body,
        response_truncated: truncated,
        error: o.error.clone(),
        completed_at,
    };
    let (store, project, id) =
        (service.inner.stores.producers.clone(), d.project.clone(), inv.id.clone());
    if let Err(e) = blocking(move || Ok(store.update_async(&project, &id, &result)?)).await {
        tracing::warn!(error = %e, id = %inv.id, "recording an asynchronous invocation");
    }
    if completed_at.is_some() && inv.callback_url.is_some() {
        service.inner.callback_wake.notify_one();
    }
}
