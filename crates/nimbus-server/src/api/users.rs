//! `/v1/users`, `/v1/events`, `/v1/outbox`: a project's end users as its operator or backend sees
//! them (admin token or service key).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use nimbus_auth::{EmailMessage, Event, User, UserPage};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::invocations::parse_position;
use crate::app::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, IntoParams)]
pub(crate) struct UserQuery {
    /// Only users whose email starts with this.
    email: Option<String>,
    /// Page after this user id.
    after: Option<String>,
    limit: Option<u32>,
}

/// List or search users.
#[utoipa::path(get, path = "/v1/users", tag = "users", params(UserQuery),
    responses((status = 200, description = "{users, next}", body = Object)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<UserQuery>,
) -> Result<Json<UserPage>, ApiError> {
    let page = state
        .auth
        .list_users(&caller.project, q.email.as_deref(), q.after.as_deref(), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(page))
}

/// Show a user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.auth.get_user(&caller.project, &id).await?))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct UserPatch {
    /// Disable (true) or re-enable (false): a disabled user cannot sign in or refresh.
    disabled: Option<bool>,
    /// Roles, as they appear in access tokens (`roles`): at most 32, each 1-64 characters of
    /// `A-Z a-z 0-9 _ . : -` (functions receive them comma-separated).
    roles: Option<Vec<String>>,
    /// Custom claims, as they appear in access tokens (`custom`).
    #[schema(value_type = Option<Object>)]
    claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Disable or enable a user, or set their roles and custom claims.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    request_body = UserPatch,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(patch): Json<UserPatch>,
) -> Result<Json<User>, ApiError> {
    let mut user = state.auth.get_user(&caller.project, &id).await?;
    // Roles and claims first: they are what can be refused (400), and a refused patch must not
    // have disabled the user already.
    if patch.roles.is_some() || patch.claims.is_some() {
        let roles = patch.roles.unwrap_or(user.roles);
        let claims = patch.claims.unwrap_or(user.claims);
        user = state.auth.set_user_claims(&caller.project, &id, roles, claims).await?;
    }
    if let Some(disabled) = patch.disabled {
        user = state.auth.set_user_disabled(&caller.project, &id, disabled).await?;
    }
    Ok(Json(user))
}

/// Delete a user and their sessions.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.delete_user(&caller.project, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Revoked {
    sessions: usize,
}

/// Revoke all of a user's sessions (their access tokens stop working at once).
#[utoipa::path(post, path = "/v1/users/{id}/revoke-sessions", tag = "users",
    params(("id" = String, Path)), responses((status = 200, body = Revoked)))]
pub(crate) async fn revoke_sessions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    state.auth.get_user(&caller.project, &id).await?;
    let sessions = state.auth.revoke_user_sessions(&caller.project, &id).await?;
    Ok(Json(Revoked { sessions }))
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct EventQuery {
    /// Only events recorded after this position: the `seq` of the last event seen. Positions
    /// are given in the transaction that records an event, so paging with them misses none.
    #[param(value_type = Option<u64>)]
    after: Option<String>,
    /// 1-1000, default 100.
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct EventList {
    #[schema(value_type = Vec<Object>)]
    events: Vec<Event>,
}

/// Auth events (user.created, user.deleted, user.signed_in), recorded in the same transaction as
/// the change, in the order they were recorded (by `seq`).
#[utoipa::path(get, path = "/v1/events", tag = "users", params(EventQuery),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EventQuery>,
) -> Result<Json<EventList>, ApiError> {
    let after = parse_position(q.after.as_deref())?;
    let events = state.auth.list_events(&caller.project, after, q.limit.unwrap_or(100)).await?;
    Ok(Json(EventList { events }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct OutboxList {
    #[schema(value_type = Vec<Object>)]
    messages: Vec<EmailMessage>,
}

/// Emails the development outbox holds for the project (when no SMTP server is configured).
#[utoipa::path(get, path = "/v1/outbox", tag = "users",
    responses((status = 200, body = OutboxList), (status = 404, body = ErrorBody)))]
pub(crate) async fn outbox(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<OutboxList>, ApiError> {
    let messages = state.auth.outbox(&caller.project).ok_or_else(|| {
        ApiError::not_found("emails go out over SMTP; there is no development outbox")
    })?;
    Ok(Json(OutboxList { messages }))
}
