//! Push notifications over REST (docs/push.md).
//!
//! Management (admin token, service key, or a function in-process), on the caller's project:
//! - `GET /v1/push/vapid-key`
//! - `GET|POST /v1/push/subscriptions`, `GET|DELETE /v1/push/subscriptions/{id}`,
//!   `PUT|DELETE /v1/push/subscriptions/{id}/topics/{topic}`,
//!   `GET /v1/push/subscriptions/{id}/deliveries`
//! - `POST /v1/push/messages` (send), `GET /v1/push/messages/{id}` (with delivery counts),
//!   `GET /v1/push/messages/{id}/deliveries`
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
use nimbus_push::{Actor, PushError, SendRequest, SubscriptionInput, Target};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{AppState, Caller, CallerKind};
use crate::data_caller::{DataCaller, data_caller};
use crate::error::ApiError;
use crate::in_process::InProcess;

pub(crate) fn management_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/push/vapid-key", get(m_vapid_key))
        .route("/v1/push/subscriptions", get(m_list).post(m_subscribe))
        .route("/v1/push/subscriptions/{id}", get(m_get).delete(m_delete))
        .route("/v1/push/subscriptions/{id}/topics/{topic}", put(m_join).delete(m_leave))
        .route("/v1/push/subscriptions/{id}/deliveries", get(m_sub_deliveries))
        .route("/v1/push/messages", post(m_send))
        .route("/v1/push/messages/{id}", get(m_message))
        .route("/v1/push/messages/{id}/deliveries", get(m_msg_deliveries))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    user: Option<String>,
    topic: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    cursor: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub(crate) enum To {
    User(String),
    Topic(String),
    Subscription(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    to: To,
    /// A string is sent as its UTF-8 bytes; any other JSON value as its JSON text.
    payload: Option<Value>,
    /// Binary payloads.
    payload_base64: Option<String>,
    ttl: Option<u32>,
    urgency: Option<String>,
    topic: Option<String>,
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

async fn m_vapid_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    vapid_key(&state, caller.project).await
}

async fn m_list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    list(&state, caller.project, Actor::Service, query(q)?).await
}

async fn m_subscribe(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    b: Result<Json<SubscriptionInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    subscribe(&state, caller.project, Actor::Service, body(b)?).await
}

async fn m_get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    get_one(&state, caller.project, Actor::Service, path(id)?).await
}

async fn m_delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    delete_one(&state, caller.project, Actor::Service, path(id)?).await
}

async fn m_join(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    join(&state, caller.project, Actor::Service, path(p)?).await
}

async fn m_leave(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    leave(&state, caller.project, Actor::Service, path(p)?).await
}

async fn m_send(
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

async fn m_message(
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

async fn m_msg_deliveries(
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

async fn m_sub_deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (id, q) = (path(id)?, query(q)?);
    deliveries(&state, caller.project, None, Some(id), q).await
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

async fn d_vapid_key(
    State(state): State<AppState>,
    project: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let project = path(project)?;
    // Public, but only for projects that exist (no key is made for a name nobody created).
    state.auth.get_project_by_slug(&project).await?;
    vapid_key(&state, project).await
}

async fn d_list(
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

async fn d_subscribe(
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

async fn d_get(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    get_one(&state, project, actor, id).await
}

async fn d_delete(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    delete_one(&state, project, actor, id).await
}

async fn d_join(
    State(state): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id, topic) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    join(&state, project, actor, (id, topic)).await
}

async fn d_leave(
    State(state): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, id, topic) = path(p)?;
    let actor = actor(&state, &project, &headers, &in_process).await?;
    leave(&state, project, actor, (id, topic)).await
}
