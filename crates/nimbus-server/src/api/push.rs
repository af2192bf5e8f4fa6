//! Push notifications over REST (docs/push.md).
//!
//! Management (admin token, service key, or a function in-process), on the caller's project:
//! - `GET /v1/push/vapid-key`
//! - `GET|POST /v1/push/subscriptions`, `GET|DELETE /v1/push/subscriptions/{id}`,
//!   `PUT|DELETE /v1/push/subscriptions/{id}/topics/{topic}`,
//!   `GET /v1/push/subscriptions/{id}/deliveries`
//! - `POST /v1/push/messages` (send), `GET /v1/push/messages/{id}` (with delivery counts),
//!   `GET /v1/push/messages/{id}/deliveries`
//! - `POST /v1/push/messages/{id}/replay`, `POST /v1/push/subscriptions/{id}/replay`: queue the
//!   failed deliveries of a message or of a subscription again
//!
//! Public, for apps (`/v1/projects/{project}/push/...`): the VAPID key (anyone), and a signed-in
//! user's own subscriptions and topics (registering binds a subscription to the user). Service
//! credentials act on any subscription there too. End users cannot send.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use nimbus_push::{Actor, PushError, ReplayTarget, SendRequest, SubscriptionInput, Target};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, Caller, CallerKind};
use crate::data_caller::{DataCaller, data_caller};
use crate::error::{ApiError, ErrorBody};
use crate::in_process::InProcess;

pub(crate) fn management_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/push/vapid-key", get(m_vapid_key))
        .route("/v1/push/subscriptions", get(m_list).post(m_subscribe))
        .route("/v1/push/subscriptions/{id}", get(m_get).delete(m_delete))
        .route("/v1/push/subscriptions/{id}/topics/{topic}", put(m_join).delete(m_leave))
        .route("/v1/push/subscriptions/{id}/deliveries", get(m_sub_deliveries))
        .route("/v1/push/subscriptions/{id}/replay", post(m_sub_replay))
        .route("/v1/push/messages", post(m_send))
        .route("/v1/push/messages/{id}", get(m_message))
        .route("/v1/push/messages/{id}/deliveries", get(m_msg_deliveries))
        .route("/v1/push/messages/{id}/replay", post(m_msg_replay))
}

pub(crate) fn data_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/projects/{project}/push/vapid-key", get(d_vapid_key))
        .route("/v1/projects/{project}/push/subscriptions", get(d_list).post(d_subscribe))
        .route("/v1/projects/{project}/push/subscriptions/{id}", get(d_get).delete(d_delete))
        .route(
            "/v1/projects/{project}/push/subscriptions/{id}/topics/{topic}",
            put(d_join).delete(d_leave),
        )
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Invalid(code, m) => ApiError::bad_request(code, m),
            PushError::NotFound(m) => ApiError::not_found(m),
            PushError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            PushError::Limit(m) => ApiError::new(StatusCode::CONFLICT, "limit_exceeded", m),
            e @ PushError::PayloadTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string())
            }
            e @ (PushError::Store(_) | PushError::Internal(_)) => ApiError::internal(&e),
        }
    }
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t).map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Service callers: only this user's subscriptions (end users always see their own only).
    user: Option<String>,
    /// Only the subscriptions that joined this topic.
    topic: Option<String>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// The `cursor` of the previous page (a delivery id).
    cursor: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// Whom a message goes to: exactly one of the three.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub(crate) enum To {
    /// Every subscription of this user id (and their live in-app connections).
    User(String),
    /// Every subscription that joined this topic.
    Topic(String),
    /// One subscription, by id.
    Subscription(String),
}

/// A message to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    to: To,
    /// A string is sent as its UTF-8 bytes; any other JSON value as its JSON text (at most
    /// 3993 bytes).
    payload: Option<Value>,
    /// Binary payloads, base64 (instead of `payload`).
    payload_base64: Option<String>,
    /// Seconds the push service keeps the message (RFC 8030 `TTL`; default 1 day, at most 28).
    ttl: Option<u32>,
    /// `very-low`, `low`, `normal` (default) or `high` (RFC 8030 `Urgency`).
    urgency: Option<String>,
    /// RFC 8030 `Topic`: a newer message with the same topic replaces an undelivered one.
    topic: Option<String>,
}

/// How many failed deliveries a replay queued again.
#[derive(Serialize, ToSchema)]
pub(crate) struct Replayed {
    count: u64,
}

async fn call<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&nimbus_push::PushService) -> nimbus_push::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(state.push.call(f).await?)
}

// -- shared by both routers -------------------------------------------------------------------

async fn vapid_key(state: &AppState, project: String) -> Result<Response, ApiError> {
    let key = call(state, move |p| p.vapid_public_key(&project)).await?;
    Ok(Json(json!({ "public_key": key })).into_response())
}

async fn list(
    state: &AppState,
    project: String,
    actor: Actor,
    q: ListQuery,
) -> Result<Response, ApiError> {
    let limit = q.limit;
    let subs = call(state, move |p| {
        p.list(&project, &actor, q.user.as_deref(), q.topic.as_deref(), q.cursor.as_deref(), limit)
    })
    .await?;
    let limit = limit.unwrap_or(100).clamp(1, 1000) as usize;
    let cursor = (subs.len() == limit).then(|| subs.last().map(|s| s.id.clone())).flatten();
    Ok(Json(json!({ "subscriptions": subs, "cursor": cursor })).into_response())
}

async fn subscribe(
    state: &AppState,
    project: String,
    actor: Actor,
    input: SubscriptionInput,
) -> Result<Response, ApiError> {
    let sub = call(state, move |p| p.subscribe(&project, &actor, input)).await?;
    Ok((StatusCode::CREATED, Json(sub)).into_response())
}

async fn get_one(
    state: &AppState,
    project: String,
    actor: Actor,
    id: String,
) -> Result<Response, ApiError> {
    let sub = call(state, move |p| p.get(&project, &actor, &id)).await?;
    Ok(Json(sub).into_response())
}

async fn delete_one(
    state: &AppState,
    project: String,
    actor: Actor,
    id: String,
) -> Result<Response, ApiError> {
    call(state, move |p| p.unsubscribe(&project, &actor, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn join(
    state: &AppState,
    project: String,
    actor: Actor,
    (id, topic): (String, String),
) -> Result<Response, ApiError> {
    call(state, move |p| p.join(&project, &actor, &id, &topic)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn leave(
    state: &AppState,
    project: String,
    actor: Actor,
    (id, topic): (String, String),
) -> Result<Response, ApiError> {
    call(state, move |p| p.leave(&project, &actor, &id, &topic)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// -- management --------------------------------------------------------------------------------

fn sender(caller: &Caller) -> Value {
    match &caller.kind {
        CallerKind::Admin => json!({"kind": "admin"}),
        CallerKind::Service { key_id } => json!({"kind": "service-key", "id": key_id}),
        CallerKind::Function { name } => json!({"kind": "function", "name": name}),
    }
}

/// The project's VAPID public key (made on first use), for `pushManager.subscribe`.
#[utoipa::path(get, path = "/v1/push/vapid-key", tag = "push",
    responses((status = 200, body = schema::VapidKey)))]
pub(crate) async fn m_vapid_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    vapid_key(&state, caller.project).await
}

/// A page of the project's subscriptions, by id.
#[utoipa::path(get, path = "/v1/push/subscriptions", tag = "push", params(ListQuery),
    responses((status = 200, body = schema::SubscriptionPage)))]
pub(crate) async fn m_list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    list(&state, caller.project, Actor::Service, query(q)?).await
}

/// Register a subscription (registering its endpoint again updates its keys), optionally for a
/// user and with topics.
#[utoipa::path(post, path = "/v1/push/subscriptions", tag = "push",
    request_body = schema::SubscriptionInput,
    responses((status = 201, body = schema::Subscription),
              (status = 403, description = "the network policy denies the endpoint, or another \
                                            user registered it", body = ErrorBody),
              (status = 409, description = "a subscription limit is reached", body = ErrorBody)))]
pub(crate) async fn m_subscribe(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    b: Result<Json<SubscriptionInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    subscribe(&state, caller.project, Actor::Service, body(b)?).await
}

/// One subscription with its topics.
#[utoipa::path(get, path = "/v1/push/subscriptions/{id}", tag = "push",
    params(("id" = String, Path)),
    responses((status = 200, body = schema::Subscription), (status = 404, body = ErrorBody)))]
pub(crate) async fn m_get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    get_one(&state, caller.project, Actor::Service, path(id)?).await
}

/// Remove a subscription (and its topics).
#[utoipa::path(delete, path = "/v1/push/subscriptions/{id}", tag = "push",
    params(("id" = String, Path)),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
pub(crate) async fn m_delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    delete_one(&state, caller.project, Actor::Service, path(id)?).await
}

/// Join a topic (idempotent).
#[utoipa::path(put, path = "/v1/push/subscriptions/{id}/topics/{topic}", tag = "push",
    params(("id" = String, Path), ("topic" = String, Path)),
    responses((status = 204, description = "joined"), (status = 404, body = ErrorBody),
              (status = 409, description = "the subscription is in 100 topics", body = ErrorBody)))]
pub(crate) async fn m_join(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    join(&state, caller.project, Actor::Service, path(p)?).await
}

/// Leave a topic.
#[utoipa::path(delete, path = "/v1/push/subscriptions/{id}/topics/{topic}", tag = "push",
    params(("id" = String, Path), ("topic" = String, Path)),
    responses((status = 204, description = "left (or was not in it)"),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn m_leave(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    leave(&state, caller.project, Actor::Service, path(p)?).await
}

/// Send a message to a user, a topic or one subscription: queued durably (one delivery per
/// target subscription), then delivered by the sender.
#[utoipa::path(post, path = "/v1/push/messages", tag = "push", request_body = SendBody,
    responses((status = 202, body = schema::SendReceipt),
              (status = 404, description = "no such subscription", body = ErrorBody),
              (status = 409, description = "more targets than one message may have", body = ErrorBody),
              (status = 413, description = "the payload is too large", body = ErrorBody)))]
pub(crate) async fn m_send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    b: Result<Json<SendBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let payload = match (b.payload, b.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_input",
                "give payload or payload_base64, not both",
            ));
        }
        (Some(Value::String(s)), None) => s.into_bytes(),
        (Some(v), None) => v.to_string().into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| ApiError::bad_request("invalid_input", "payload_base64 is not base64"))?,
        (None, None) => Vec::new(),
    };
    let target = match b.to {
        To::User(u) => Target::User(u),
        To::Topic(t) => Target::Topic(t),
        To::Subscription(s) => Target::Subscription(s),
    };
    let req = SendRequest { target, payload, ttl: b.ttl, urgency: b.urgency, topic: b.topic };
    let who = sender(&caller);
    let project = caller.project;
    let receipt = call(&state, move |p| p.send(&project, req, who)).await?;
    Ok((StatusCode::ACCEPTED, Json(receipt)).into_response())
}

/// A message with its delivery counts.
#[utoipa::path(get, path = "/v1/push/messages/{id}", tag = "push",
    params(("id" = String, Path)),
    responses((status = 200, body = schema::Message), (status = 404, body = ErrorBody)))]
pub(crate) async fn m_message(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let info = call(&state, move |p| p.message(&caller.project, &id)).await?;
    Ok(Json(info).into_response())
}

async fn deliveries(
    state: &AppState,
    project: String,
    message: Option<String>,
    subscription: Option<String>,
    q: PageQuery,
) -> Result<Response, ApiError> {
    let limit = q.limit;
    let rows = call(state, move |p| {
        p.deliveries(&project, message.as_deref(), subscription.as_deref(), q.cursor, limit)
    })
    .await?;
    let limit = limit.unwrap_or(100).clamp(1, 1000) as usize;
    let cursor = (rows.len() == limit).then(|| rows.last().map(|d| d.id)).flatten();
    Ok(Json(json!({ "deliveries": rows, "cursor": cursor })).into_response())
}

/// A message's delivery records, one per subscription, in commit order.
#[utoipa::path(get, path = "/v1/push/messages/{id}/deliveries", tag = "push",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = schema::DeliveryPage), (status = 404, body = ErrorBody)))]
pub(crate) async fn m_msg_deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (id, q) = (path(id)?, query(q)?);
    // An unknown message is a 404, not an empty list.
    let (p, m) = (caller.project.clone(), id.clone());
    call(&state, move |s| s.message(&p, &m)).await?;
    deliveries(&state, caller.project, Some(id), None, q).await
}

/// A subscription's delivery records, in commit order.
#[utoipa::path(get, path = "/v1/push/subscriptions/{id}/deliveries", tag = "push",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = schema::DeliveryPage)))]
pub(crate) async fn m_sub_deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (id, q) = (path(id)?, query(q)?);
    deliveries(&state, caller.project, None, Some(id), q).await
}

/// Replay: queue the failed deliveries of a message again (fresh attempts, due now). Those
/// whose subscription is gone (removed, or 404/410) or whose message's TTL has run out stay
/// failed.
#[utoipa::path(post, path = "/v1/push/messages/{id}/replay", tag = "push",
    params(("id" = String, Path)),
    responses((status = 200, body = Replayed), (status = 404, body = ErrorBody)))]
pub(crate) async fn m_msg_replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let count =
        call(&state, move |p| p.replay(&caller.project, ReplayTarget::Message(&id))).await?;
    Ok(Json(Replayed { count }).into_response())
}

/// Replay: queue the failed deliveries of a subscription again (those of messages whose TTL
/// has not run out).
#[utoipa::path(post, path = "/v1/push/subscriptions/{id}/replay", tag = "push",
    params(("id" = String, Path)),
    responses((status = 200, body = Replayed), (status = 404, body = ErrorBody)))]
pub(crate) async fn m_sub_replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let count =
        call(&state, move |p| p.replay(&caller.project, ReplayTarget::Subscription(&id))).await?;
    Ok(Json(Replayed { count }).into_response())
}

// -- public (apps) -----------------------------------------------------------------------------

/// The actor of a public push request: a signed-in user, or the service role.
async fn actor(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
    in_process: &InProcess,
) -> Result<Actor, ApiError> {
    let in_process = in_process.as_ref().map(|axum::Extension(c)| c);
    match data_caller(state, project, headers, in_process).await? {
        DataCaller::User(auth) => match auth.get("id").and_then(Value::as_str) {
            Some(id) => Ok(Actor::User(id.to_owned())),
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "sign in first")),
        },
        DataCaller::Anonymous => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "push subscriptions need a signed-in user (Authorization: Bearer <access token>)",
        )),
        DataCaller::Admin | DataCaller::ServiceKey { .. } | DataCaller::Function { .. } => {
            Ok(Actor::Service)
        }
    }
}

/// The project's VAPID public key, for `pushManager.subscribe({applicationServerKey})`.
#[utoipa::path(get, path = "/v1/projects/{project}/push/vapid-key", tag = "push",
    params(("project" = String, Path)), security(()),
    responses((status = 200, body = schema::VapidKey), (status = 404, body = ErrorBody)))]
pub(crate) async fn d_vapid_key(
    State(state): State<AppState>,
    project: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let project = path(project)?;
    // Public, but only for projects that exist (no key is made for a name nobody created).
    state.auth.get_project_by_slug(&project).await?;
    vapid_key(&state, project).await
}

/// A page of the signed-in user's own subscriptions (service callers: the project's).
#[utoipa::path(get, path = "/v1/projects/{project}/push/subscriptions", tag = "push",
    params(("project" = String, Path), ListQuery), security(("admin_token" = [])),
    responses((status = 200, body = schema::SubscriptionPage)))]
pub(crate) async fn d_list(
    State(state): State<AppState>,
    project: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let project = path(project)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    list(&state, project, actor, query(q)?).await
}

/// Register the browser's subscription (`PushSubscription.toJSON()`), bound to the signed-in
/// user.
#[utoipa::path(post, path = "/v1/projects/{project}/push/subscriptions", tag = "push",
    params(("project" = String, Path)), security(("admin_token" = [])),
    request_body = schema::SubscriptionInput,
    responses((status = 201, body = schema::Subscription),
              (status = 403, description = "the network policy denies the endpoint, or another \
                                            user registered it", body = ErrorBody),
              (status = 409, description = "a subscription limit is reached", body = ErrorBody)))]
pub(crate) async fn d_subscribe(
    State(state): State<AppState>,
    project: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
    b: Result<Json<SubscriptionInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    let project = path(project)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    subscribe(&state, project, actor, body(b)?).await
}

/// One of the user's subscriptions (another user's is a 404).
#[utoipa::path(get, path = "/v1/projects/{project}/push/subscriptions/{id}", tag = "push",
    params(("project" = String, Path), ("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = schema::Subscription), (status = 404, body = ErrorBody)))]
pub(crate) async fn d_get(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    get_one(&state, project, actor, id).await
}

/// Remove one of the user's subscriptions.
#[utoipa::path(delete, path = "/v1/projects/{project}/push/subscriptions/{id}", tag = "push",
    params(("project" = String, Path), ("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
pub(crate) async fn d_delete(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    delete_one(&state, project, actor, id).await
}

/// Join a topic with one of the user's subscriptions.
#[utoipa::path(put, path = "/v1/projects/{project}/push/subscriptions/{id}/topics/{topic}",
    tag = "push", security(("admin_token" = [])),
    params(("project" = String, Path), ("id" = String, Path), ("topic" = String, Path)),
    responses((status = 204, description = "joined"), (status = 404, body = ErrorBody),
              (status = 409, description = "the subscription is in 100 topics", body = ErrorBody)))]
pub(crate) async fn d_join(
    State(state): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id, topic) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    join(&state, project, actor, (id, topic)).await
}

/// Leave a topic.
#[utoipa::path(delete, path = "/v1/projects/{project}/push/subscriptions/{id}/topics/{topic}",
    tag = "push", security(("admin_token" = [])),
    params(("project" = String, Path), ("id" = String, Path), ("topic" = String, Path)),
    responses((status = 204, description = "left (or was not in it)"),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn d_leave(
    State(state): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id, topic) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    leave(&state, project, actor, (id, topic)).await
}

/// The shapes of the push responses and the subscription body, for the OpenAPI document only
/// (the service's types live in crates that do not know utoipa).
pub(crate) mod schema {
    use utoipa::ToSchema;

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct VapidKey {
        /// The uncompressed P-256 point, base64url without padding.
        public_key: String,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct SubscriptionKeys {
        p256dh: String,
        auth: String,
    }

    /// What the browser's `PushSubscription.toJSON()` gives, plus `user_id` and `topics`.
    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct SubscriptionInput {
        /// The push service's URL (HTTPS; the network policy applies).
        endpoint: String,
        keys: SubscriptionKeys,
        /// `null` in browsers; ignored.
        #[schema(rename = "expirationTime")]
        expiration_time: Option<i64>,
        /// Service callers only: the user this subscription belongs to.
        user_id: Option<String>,
        /// Topics to join right away.
        topics: Option<Vec<String>>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct Subscription {
        id: String,
        /// The provider: `webpush`.
        kind: String,
        user_id: Option<String>,
        endpoint: String,
        p256dh: String,
        auth: String,
        topics: Vec<String>,
        /// Milliseconds since the Unix epoch.
        created_at: i64,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct SubscriptionPage {
        subscriptions: Vec<Subscription>,
        /// Pass as `cursor` for the next page; null on the last.
        cursor: Option<String>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct SendReceipt {
        id: String,
        /// How many subscriptions it targets (one delivery each).
        deliveries: u64,
        /// The position of its `dev.nimbus.push.message.queued` event in the log.
        position: u64,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct DeliveryCounts {
        queued: u64,
        sent: u64,
        failed: u64,
        expired: u64,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct Message {
        id: String,
        /// The user id, topic or subscription id it was sent to.
        target: String,
        /// `user`, `topic` or `subscription`.
        target_kind: String,
        ttl: u32,
        urgency: String,
        topic: Option<String>,
        /// Who sent it: `{"kind": "admin"|"service-key"|"function", ...}`.
        #[schema(value_type = Object)]
        sender: serde_json::Value,
        created_at: i64,
        deliveries: DeliveryCounts,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct Delivery {
        /// Commit-ordered; the paging cursor.
        id: u64,
        message: String,
        subscription: String,
        /// `queued`, `sent`, `failed` or `expired`.
        state: String,
        attempts: u32,
        /// The push service's last answer.
        last_status: Option<u16>,
        last_error: Option<String>,
        next_attempt_at: i64,
        updated_at: i64,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct DeliveryPage {
        deliveries: Vec<Delivery>,
        /// Pass as `cursor` for the next page; null on the last.
        cursor: Option<u64>,
    }
}
