//! Callbacks of asynchronous invocations. Finishing an invocation marks its callback pending in
//! the same write (see `ProducerStore::update_async`), so a restart loses none: this worker claims
//! due callbacks with a lease, POSTs each to its URL, and records delivered, retry later (backoff
//! with jitter) or failed after `callback_max_attempts`. At least once: a call that a crash cuts
//! short is made again when its lease ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nimbus_model::now_millis;
use nimbus_store::triggers::{AsyncInvocation, CallbackOutcome};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{TriggerService, blocking};

/// Callbacks in flight at once on this node.
const MAX_IN_FLIGHT: usize = 16;
/// A claimed callback is not claimed again before this; longer than a call can take.
const LEASE: Duration = Duration::from_secs(30);
/// One call's time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between looks at the store when nothing woke the worker.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// At a graceful stop, how long calls in flight may take to end before they are given back.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(2);

pub(crate) async fn run(service: TriggerService) {
    let inner = &service.inner;
    let mut running = JoinSet::new();
    // The callback each running call makes, to give back the ones a stop cuts short.
    let mut in_flight: HashMap<tokio::task::Id, (String, String)> = HashMap::new();
    loop {
        while let Some(done) = running.try_join_next_with_id() {
            ended(&mut in_flight, done);
        }
        if inner.stopping.load(Ordering::Acquire) {
            stop(&service, running, in_flight).await;
            return;
        }
        let free = MAX_IN_FLIGHT - running.len();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            let store = inner.stores.producers.clone();
            let now = now_millis();
            let lease_until = now + LEASE.as_millis() as i64;
            blocking(move || Ok(store.claim_callbacks(now, lease_until, free as u32)?))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "claiming callbacks");
                    Vec::new()
                })
        };
        if claimed.is_empty() {
            let wait = if free == 0 {
                IDLE_POLL
            } else {
                let store = inner.stores.producers.clone();
                blocking(move || Ok(store.next_callback_due()?))
                    .await
                    .ok()
                    .flatten()
                    .map(|at| Duration::from_millis((at - now_millis()).max(0) as u64))
                    .unwrap_or(IDLE_POLL)
                    .min(IDLE_POLL)
            };
            tokio::select! {
                _ = inner.callback_wake.notified() => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    ended(&mut in_flight, done);
                }
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        for inv in claimed {
            let key = (inv.project.clone(), inv.id.clone());
            in_flight.insert(running.spawn(call(service.clone(), inv)).id(), key);
        }
    }
}

/// Forget the callback of a call that ended (however it ended).
fn ended(
    in_flight: &mut HashMap<tokio::task::Id, (String, String)>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    in_flight.remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
}

/// Let the calls in flight end within [`STOP_GRACE`], then cancel the others and give their
/// callbacks back: due at once, their attempt not counted. Without this they would keep their
/// lease and wait [`LEASE`] after the next start.
async fn stop(
    service: &TriggerService,
    mut running: JoinSet<()>,
    mut in_flight: HashMap<tokio::task::Id, (String, String)>,
) {
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while let Some(done) = running.join_next_with_id().await {
            ended(&mut in_flight, done);
        }
    })
    .await;
    running.abort_all();
    while running.join_next().await.is_some() {}
    if in_flight.is_empty() {
        return;
    }
    let cut: Vec<(String, String)> = in_flight.into_values().collect();
    let n = cut.len();
    let store = service.inner.stores.producers.clone();
    match blocking(move || Ok(store.release_callbacks(&cut, now_millis())?)).await {
        Ok(()) => tracing::info!(callbacks = n, "gave back callbacks cut short by the stop"),
        Err(e) => {
            tracing::warn!(error = %e, "giving back callbacks at the stop; their lease ends them")
        }
    }
}

async fn call(service: TriggerService, inv: AsyncInvocation) {
    let Some(url) = inv.callback_url.clone() else { return };
    let config = &service.inner.config;
    let attempt = inv.callback.attempts;
    let outcome = match post_checked(&service, &url, &body(&inv)).await {
        Ok(status) if status.is_success() => CallbackOutcome::Delivered,
        result => {
            let error = match result {
                Ok(status) => format!("the callback URL answered {status}"),
                Err(e) => e,
            };
            tracing::info!(%url, %error, attempt, id = %inv.id, "callback failed");
            if attempt >= config.callback_max_attempts {
                service.inner.metrics.callback_failures.inc();
                CallbackOutcome::Failed { error }
            } else {
                let wait =
                    nimbus_model::retry::backoff(config.retry_base, config.retry_max, attempt);
                CallbackOutcome::RetryAt { at: now_millis() + wait.as_millis() as i64, error }
            }
        }
    };
    let (store, project, id) = (service.inner.stores.producers.clone(), inv.project, inv.id);
    if let Err(e) = blocking(move || Ok(store.finish_callback(&project, &id, &outcome)?)).await {
        tracing::warn!(error = %e, "recording a callback");
    }
}

/// What the callback URL receives: the invocation's outcome and the function's response.
fn body(inv: &AsyncInvocation) -> Value {
    use base64::Engine as _;
    json!({
        "id": inv.id,
        "function": inv.function,
        "status": inv.status,
        "attempts": inv.attempts,
        "invocation_id": inv.invocation_id,
        "error": inv.error,
        "response": {
            "status": inv.response_status,
            "headers": inv.response_headers,
            "body_base64": base64::engine::general_purpose::STANDARD.encode(&inv.response_body),
            "truncated": inv.response_truncated,
        },
    })
}

/// POST to a callback URL: resolved once, every address checked against the operator's network
/// policy (as guests' outbound requests are), and the request pinned to a checked address.
async fn post_checked(
    service: &TriggerService,
    url: &str,
    body: &Value,
) -> std::result::Result<reqwest::StatusCode, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("no host")?.trim_matches(['[', ']']).to_owned();
    let port = parsed.port_or_known_default().ok_or("no port")?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    let policy = &service.inner.config.callback_policy;
    let Some(addr) = addrs.iter().find(|a| policy.permits(a.ip())) else {
        return Err(format!("{host} resolves only to addresses the network policy denies"));
    };
    let client = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, *addr)
        .build()
        .map_err(|e| e.to_string())?;
    client.post(url).json(body).send().await.map(|r| r.status()).map_err(|e| e.to_string())
}
