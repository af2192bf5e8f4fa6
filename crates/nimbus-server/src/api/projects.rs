//! `/v1/projects` (operator) and `/v1/keys` (a project's API keys).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use nimbus_auth::{ApiKeyInfo, ApiKeyScope, Project};
use nimbus_model::{DEFAULT_PROJECT, UnixMillis};
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

/// Create a project (admin token only).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, description = "the project", body = Object),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
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
/// events, key-value entries, buckets, objects and S3 access keys (admin token only). The default project cannot be deleted.
#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    if project == DEFAULT_PROJECT {
        return Err(ApiError::bad_request(
            "invalid_input",
            "the default project cannot be deleted",
        ));
    }
    state.auth.get_project_by_slug(&project).await?;
    // Functions first, so its routes stop answering at once; then identity (keys and tokens stop
    // working); then functions again, in case a deploy raced the first pass.
    state.functions.delete_project(&project).await?;
    state.auth.delete_project(&project).await?;
    state.documents.delete_project(&project).await?;
    state.functions.delete_project(&project).await?;
    // Its key-value entries last: no function of it runs any more to write new ones.
    let p = project.clone();
    state.kv.call(move |kv| kv.delete_project(&p)).await?;
    // Its buckets, objects and S3 access keys.
    let p = project.clone();
    state.files.call(move |f| f.delete_project(&p)).await?;
    // Its deliveries, dead letters, schedules and asynchronous invocations.
    state.triggers.delete_project(&project).await?;
    // Its push keys, subscriptions, messages and deliveries (and live connections).
    let p = project.clone();
    state.push.call(move |s| s.delete_project(&p)).await?;
    tracing::info!(project, "project deleted");
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
