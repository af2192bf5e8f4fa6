//! `/v1/projects` (operator) and `/v1/keys` (a project's API keys).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use nimbus_auth::{ApiKeyInfo, ApiKeyScope, Project};
use nimbus_model::UnixMillis;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, ToSchema)]
pub(crate) struct NewProject {
    /// Also the project's id, immutable, and the host name label of `<slug>.<base domain>`:
    /// 1-40 characters of `a-z`, `0-9` and `-`, not starting or ending with `-` (RFC 1123, so a
    /// leading digit is fine).
    slug: String,
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ProjectList {
    #[schema(value_type = Vec<Object>)]
    projects: Vec<Project>,
}

/// Create a project (admin token only). 409 `conflict` if the slug is taken, 409
/// `project_deleting` if it belongs to a project whose deletion has not finished yet (retry once
/// it has: a new project never inherits the old one's data).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, description = "the project", body = Object),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, description = "`conflict`: the slug is taken; `project_deleting`: \
                  the slug's project is still being deleted", body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    caller.require_admin()?;
    let name = body.name.unwrap_or_else(|| body.slug.clone());
    Ok((StatusCode::CREATED, Json(state.auth.create_project(&body.slug, &name).await?)))
}

/// List projects (admin token only).
#[utoipa::path(get, path = "/v1/projects", tag = "projects",
    responses((status = 200, body = ProjectList), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ProjectList>, ApiError> {
    caller.require_admin()?;
    Ok(Json(ProjectList { projects: state.auth.list_projects().await? }))
}

/// Delete a project with its functions, invocation records, users, sessions, API keys,
/// events, documents, key-value entries, buckets, objects, S3 access keys, deliveries,
/// schedules, push data, quotas and stored-bytes counter (admin token only). The default project
/// cannot be deleted (400). Its usage history is kept for billing, under
/// `<slug>~deleted-<ms>` (`GET /v1/usage?project=`), so a project created again under the slug
/// starts with no quota and no usage.
///
/// The project is found nowhere from the moment its deletion begins (its keys and tokens stop
/// working, its routes answer 404), and its slug cannot be created again until the deletion has
/// finished. If the deletion is interrupted (a crash, a failure: 500), it resumes at the next
/// start, and a retry of this request finishes it too: a project whose deletion has begun
/// answers 204 here, not 404. 404 only for a project that does not exist at all.
#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)),
    responses((status = 204, description = "deleted (or a deletion interrupted earlier, \
                  finished)"), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 500, description = "a service failed to delete its part; the project \
                  stays unreachable and the deletion resumes on a retry or at the next start",
                  body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    state.projects.delete(&project).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct NewKey {
    /// `service` (full access to the project's APIs, bypasses access rules; keep it on servers)
    /// or `public` (identifies the project to apps; end users act under access rules).
    scope: String,
    #[serde(default)]
    name: String,
    /// Expiry, milliseconds since the epoch.
    expires_at: Option<UnixMillis>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    /// The whole key: shown this once, stored only as a hash.
    key: String,
    #[schema(value_type = Object)]
    info: ApiKeyInfo,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KeyList {
    #[schema(value_type = Vec<Object>)]
    keys: Vec<ApiKeyInfo>,
}

/// Create an API key for the caller's project.
#[utoipa::path(post, path = "/v1/keys", tag = "projects", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody)))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let scope = ApiKeyScope::parse(&body.scope)
        .ok_or_else(|| ApiError::bad_request("invalid_input", "scope is `service` or `public`"))?;
    let created =
        state.auth.create_api_key(&caller.project, scope, &body.name, body.expires_at).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key: created.key, info: created.info })))
}

/// List the caller's project's API keys (prefixes only, never secrets).
#[utoipa::path(get, path = "/v1/keys", tag = "projects", responses((status = 200, body = KeyList)))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList { keys: state.auth.list_api_keys(&caller.project).await? }))
}

/// Revoke an API key, with immediate effect.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "projects", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyInfo>, ApiError> {
    Ok(Json(state.auth.revoke_api_key(&caller.project, &id).await?))
}
