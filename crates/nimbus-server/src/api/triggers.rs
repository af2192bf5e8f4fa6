//! Event delivery (issue 9): subscriptions (`/v1/triggers`), deliveries and the dead-letter queue
//! (`/v1/deliveries`), queues (`/v1/queues`) and asynchronous invocations
//! (`/v1/async-invocations/{id}`; started by `Prefer: respond-async` on the invoke endpoint).
//! Reference: docs/triggers.md.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use nimbus_model::{TriggerSpec, UnixMillis, trigger_names};
use nimbus_store::triggers::{Attempt, Delivery, DeliveryQuery, DeliveryState};
use nimbus_triggers::{AsyncRequest, TriggerError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};

/// Header naming an idempotency key on queue publishes and asynchronous invocations.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header giving an asynchronous invocation's callback URL.
pub(crate) const CALLBACK_URL: &str = "x-nimbus-callback-url";

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match &e {
            TriggerError::NotFound(_) => ApiError::not_found(e.to_string()),
            TriggerError::Invalid(_) => ApiError::bad_request("invalid_request", e.to_string()),
            TriggerError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string())
            }
            TriggerError::Backlog(_) => {
                let mut a =
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "backlog_full", e.to_string());
                a.retry_after = Some(5);
                a
            }
            TriggerError::Store(_) => ApiError::internal(&e),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Subscription {
    function: String,
    /// The trigger's name within the function.
    trigger: String,
    /// The trigger as declared; null for asynchronous invocations (`trigger: "async"`) and for
    /// triggers that no active version has any more (their backlog is still listed).
    #[schema(value_type = Option<Object>)]
    spec: Option<TriggerSpec>,
    /// Deliveries waiting or running.
    pending: u64,
    /// Pending deliveries that failed at least once.
    retrying: u64,
    /// Deliveries in the dead-letter queue.
    dead: u64,
    /// When the oldest pending delivery's event happened (ms since the epoch).
    oldest_pending_at: Option<UnixMillis>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SubscriptionList {
    subscriptions: Vec<Subscription>,
}

/// Every event subscription of the project's active functions, with its backlog.
#[utoipa::path(get, path = "/v1/triggers", tag = "triggers",
    responses((status = 200, body = SubscriptionList)))]
pub(crate) async fn list_triggers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SubscriptionList>, ApiError> {
    let stats = state.triggers.stats(&caller.project).await?;
    let mut functions = state.functions.triggered(&caller.project);
    functions.sort_by(|a, b| a.info.function.cmp(&b.info.function));
    let mut subscriptions = Vec::new();
    for f in functions {
        let spec = &f.info.spec;
        for (t, name) in spec.triggers.iter().zip(trigger_names(&spec.triggers)) {
            let s = stats.iter().find(|s| s.function == spec.name && s.trigger == name);
            subscriptions.push(Subscription {
                function: spec.name.clone(),
                pending: s.map_or(0, |s| s.pending),
                retrying: s.map_or(0, |s| s.retrying),
                dead: s.map_or(0, |s| s.dead),
                oldest_pending_at: s.and_then(|s| s.oldest_pending_at),
                trigger: name,
                spec: Some(t.clone()),
            });
        }
    }
    // Backlogs of subscriptions that no active version has any more (removed by a deploy, or
    // asynchronous invocations) are listed too: they still hold dead letters.
    for s in stats {
        if !subscriptions.iter().any(|x| x.function == s.function && x.trigger == s.trigger) {
            subscriptions.push(Subscription {
                function: s.function,
                trigger: s.trigger.clone(),
                spec: None,
                pending: s.pending,
                retrying: s.retrying,
                dead: s.dead,
                oldest_pending_at: s.oldest_pending_at,
            });
        }
    }
    Ok(Json(SubscriptionList { subscriptions }))
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct DeliveryParams {
    /// Only this function's deliveries.
    function: Option<String>,
    /// Only this trigger's (by name; `async` for asynchronous invocations).
    trigger: Option<String>,
    /// pending, delivered or dead.
    state: Option<String>,
    /// Deliveries with a greater id (the last id of the previous page).
    after: Option<u64>,
    /// 1-1000, default 100.
    limit: Option<u32>,
}

impl DeliveryParams {
    fn query(&self, default_state: Option<DeliveryState>) -> Result<DeliveryQuery, ApiError> {
        let state = match self.state.as_deref() {
            None => default_state,
            Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("state is pending, delivered or dead, not {s:?}"),
                )
            })?),
        };
        Ok(DeliveryQuery {
            function: self.function.clone(),
            trigger: self.trigger.clone(),
            state,
            after: self.after.unwrap_or(0),
            limit: self.limit.unwrap_or(100).clamp(1, 1000),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    #[schema(value_type = Vec<Object>)]
    deliveries: Vec<Delivery>,
}

/// Deliveries of the project's events to its functions, oldest first; `state=dead` is the
/// dead-letter queue.
#[utoipa::path(get, path = "/v1/deliveries", tag = "triggers", params(DeliveryParams),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let q = p.query(None)?;
    let deliveries = state.triggers.deliveries(&caller.project, q).await?;
    Ok(Json(DeliveryList { deliveries }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryDetail {
    #[schema(value_type = Object)]
    delivery: Delivery,
    /// Every attempt, with the invocation whose record holds its logs.
    #[schema(value_type = Vec<Object>)]
    attempts: Vec<Attempt>,
}

/// One delivery, with its event and every attempt.
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "triggers",
    params(("id" = u64, Path, description = "The delivery's id")),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_delivery(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let (delivery, attempts) = state.triggers.delivery(&caller.project, id).await?;
    Ok(Json(DeliveryDetail { delivery, attempts }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Affected {
    /// How many dead letters were replayed or purged.
    count: u64,
}

/// Replay one dead letter: it is delivered again, with fresh attempts, keeping its event id.
#[utoipa::path(post, path = "/v1/deliveries/{id}/replay", tag = "triggers",
    params(("id" = u64, Path, description = "The delivery's id")),
    responses((status = 200, body = Affected), (status = 404, body = ErrorBody)))]
pub(crate) async fn replay_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Json<Affected>, ApiError> {
    let count = state.triggers.replay(&caller.project, Some(id), DeliveryQuery::default()).await?;
    if count == 0 {
        return Err(ApiError::not_found(format!("dead letter {id}")));
    }
    Ok(Json(Affected { count }))
}

/// Replay every dead letter matching the filters.
#[utoipa::path(post, path = "/v1/deliveries/replay", tag = "triggers", params(DeliveryParams),
    responses((status = 200, body = Affected)))]
pub(crate) async fn replay_all(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<DeliveryParams>,
) -> Result<Json<Affected>, ApiError> {
    let q = p.query(Some(DeliveryState::Dead))?;
    let count = state.triggers.replay(&caller.project, None, q).await?;
    Ok(Json(Affected { count }))
}

/// Purge one dead letter.
#[utoipa::path(delete, path = "/v1/deliveries/{id}", tag = "triggers",
    params(("id" = u64, Path, description = "The delivery's id")),
    responses((status = 200, body = Affected), (status = 404, body = ErrorBody)))]
pub(crate) async fn purge_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Json<Affected>, ApiError> {
    let count = state.triggers.purge(&caller.project, Some(id), DeliveryQuery::default()).await?;
    if count == 0 {
        return Err(ApiError::not_found(format!("dead letter {id}")));
    }
    Ok(Json(Affected { count }))
}

/// Purge every dead letter matching the filters.
#[utoipa::path(delete, path = "/v1/deliveries", tag = "triggers", params(DeliveryParams),
    responses((status = 200, body = Affected)))]
pub(crate) async fn purge_all(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<DeliveryParams>,
) -> Result<Json<Affected>, ApiError> {
    let q = p.query(Some(DeliveryState::Dead))?;
    let count = state.triggers.purge(&caller.project, None, q).await?;
    Ok(Json(Affected { count }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Queue {
    name: String,
    /// Functions whose triggers subscribe to it: each gets every message.
    subscribers: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct QueueList {
    queues: Vec<Queue>,
}

/// The project's queues: those some active function subscribes to.
#[utoipa::path(get, path = "/v1/queues", tag = "triggers",
    responses((status = 200, body = QueueList)))]
pub(crate) async fn list_queues(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<QueueList> {
    let queues = state
        .triggers
        .queues(&caller.project)
        .into_iter()
        .map(|(name, subscribers)| Queue { name, subscribers })
        .collect();
    Json(QueueList { queues })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Publish {
    /// The message: any JSON value (at most 256 KiB encoded).
    #[schema(value_type = Object)]
    body: Value,
    /// Deliver no sooner than this many seconds from now.
    #[serde(default)]
    delay_seconds: u64,
    /// Messages with the same key go one at a time, in order, to `ordered` subscribers.
    ordering_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Accepted {
    id: String,
    /// When a queue message becomes deliverable (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at: Option<UnixMillis>,
    /// The idempotency key matched an earlier call: this is its result; nothing new was queued.
    repeated: bool,
    /// Where an asynchronous invocation's status and response are.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_url: Option<String>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_header", "Idempotency-Key must be visible ASCII")
            })
        })
        .transpose()
}

/// Publish a message to a queue. Answers 202; `Idempotency-Key` makes retries safe.
#[utoipa::path(post, path = "/v1/queues/{queue}/messages", tag = "triggers",
    params(("queue" = String, Path, description = "The queue's name"),
           ("Idempotency-Key" = Option<String>, Header, description = "The same key within 24 hours returns the first result")),
    request_body = Publish,
    responses((status = 202, body = Accepted), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Json(p): Json<Publish>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let published = state
        .triggers
        .publish(
            &caller.project,
            &queue,
            p.body,
            Duration::from_secs(p.delay_seconds.min(u32::MAX as u64)),
            p.ordering_key,
            key,
        )
        .await?;
    let body = Accepted {
        id: published.id,
        deliver_at: published.deliver_at,
        repeated: published.repeated,
        status_url: None,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Queue an invocation (the management invoke endpoint with `Prefer: respond-async`): the
/// request is stored and run by a delivery worker, with retries; 202 names where its result will
/// be.
pub(crate) async fn accept_async(
    state: &AppState,
    caller: &Caller,
    function: &str,
    request: axum::extract::Request,
    callback: Option<HeaderValue>,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let key = idempotency_key(&parts.headers)?.map(str::to_owned);
    let callback_url = callback
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                ApiError::bad_request("invalid_header", "X-Nimbus-Callback-Url must be ASCII")
            })
        })
        .transpose()?;
    let max = state.triggers.max_message_bytes();
    let body = axum::body::to_bytes(Body::new(body), max).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("an asynchronous request body is at most {max} bytes"),
        )
    })?;
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                IDEMPOTENCY_KEY | CALLBACK_URL | "prefer" | "content-length" | "host"
            )
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let path = parts.uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
    let request = AsyncRequest {
        method: parts.method.as_str().to_owned(),
        path,
        headers,
        body,
        callback_url,
    };
    let accepted =
        state.triggers.invoke_async(&caller.project, function, request, key.as_deref()).await?;
    let status_url = format!("/v1/async-invocations/{}", accepted.id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: accepted.id,
            deliver_at: None,
            repeated: accepted.repeated,
            status_url: Some(status_url.clone()),
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AsyncStatus {
    id: String,
    function: String,
    /// queued, running, succeeded or failed.
    status: String,
    attempts: u32,
    created_at: UnixMillis,
    completed_at: Option<UnixMillis>,
    /// The last attempt's invocation (its record holds the logs).
    invocation_id: Option<String>,
    error: Option<String>,
    /// The function's response, once it answered.
    response: Option<AsyncResponse>,
    /// The callback, when a callback URL was given and the invocation finished.
    callback: Option<AsyncCallback>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AsyncCallback {
    /// pending, delivered or failed (after its last attempt).
    status: String,
    attempts: u32,
    /// Why the last call failed.
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AsyncResponse {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body as text, when it is UTF-8.
    body: Option<String>,
    body_base64: String,
    /// The body was longer than what is kept (1 MiB).
    truncated: bool,
}

/// An asynchronous invocation: its status and, once it ran, the function's response.
#[utoipa::path(get, path = "/v1/async-invocations/{id}", tag = "triggers",
    params(("id" = String, Path, description = "The id the 202 answered with")),
    responses((status = 200, body = AsyncStatus), (status = 404, body = ErrorBody)))]
pub(crate) async fn async_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<AsyncStatus>, ApiError> {
    let inv = state.triggers.get_async(&caller.project, &id).await?;
    let response = inv.response_status.map(|status| AsyncResponse {
        status,
        headers: inv.response_headers.clone(),
        body: String::from_utf8(inv.response_body.clone()).ok(),
        body_base64: base64::engine::general_purpose::STANDARD.encode(&inv.response_body),
        truncated: inv.response_truncated,
    });
    Ok(Json(AsyncStatus {
        id: inv.id,
        function: inv.function,
        status: inv.status,
        attempts: inv.attempts,
        created_at: inv.created_at,
        completed_at: inv.completed_at,
        invocation_id: inv.invocation_id,
        error: inv.error,
        response,
        callback: inv.callback.status.map(|status| AsyncCallback {
            status,
            attempts: inv.callback.attempts,
            error: inv.callback.error,
        }),
    }))
}
