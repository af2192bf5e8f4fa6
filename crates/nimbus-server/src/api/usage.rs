//! `GET /v1/usage`: metered usage (requests, execution time, GB-seconds, fuel, egress, events,
//! file egress, push messages sent) per project and function, day or hour, with costs from the
//! operator's price sheet.

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use nimbus_functions::usage::{GroupBy, UsageReport};
use nimbus_model::now_millis;
use nimbus_model::usage::{month_of, parse_time};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::{AppState, Caller, CallerKind};
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, IntoParams)]
pub(crate) struct UsageParams {
    /// The project to report. The admin token: any project, or every project when absent; a
    /// project's API key: its own only (the default).
    project: Option<String>,
    /// Start (inclusive, rounded down to the hour): unix ms, a UTC date (`2026-12-01`) or
    /// RFC 3339. Default: the start of the current UTC month.
    from: Option<String>,
    /// End (exclusive, rounded up to the hour), same forms. Default: now.
    to: Option<String>,
    /// `function` (the default), `day` or `hour`.
    by: Option<String>,
}

fn time(name: &str, value: Option<&str>, default: i64) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => parse_time(v).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("{name} is unix ms, a date (2026-12-01) or RFC 3339, not {v:?}"),
            )
        }),
    }
}

/// Usage and cost over a range, grouped by function, day or hour.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageParams),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub(crate) async fn report(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let project = scope(&caller, p.project)?;
    let now = now_millis();
    let from = time("from", p.from.as_deref(), month_of(now))?;
    let to = time("to", p.to.as_deref(), now)?;
    let by = match p.by.as_deref() {
        None | Some("function") => GroupBy::Function,
        Some("day") => GroupBy::Day,
        Some("hour") => GroupBy::Hour,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("by is function, day or hour, not {other:?}"),
            ));
        }
    };
    Ok(Json(state.usage.report(project.as_deref(), from, to, by).await?))
}

/// A project's quotas and what its current UTC month has used of them.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct QuotaStatus {
    project: String,
    /// `null` when the project has none.
    quotas: Option<nimbus_model::usage::Quotas>,
}

/// A project's quotas (admin token only).
#[utoipa::path(get, path = "/v1/projects/{project}/quotas", tag = "usage",
    params(("project" = String, Path)),
    responses((status = 200, body = QuotaStatus), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn get_quotas(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(project): axum::extract::Path<String>,
) -> Result<Json<QuotaStatus>, ApiError> {
    caller.require_admin()?;
    state.auth.get_project_by_slug(&project).await?;
    let quotas = state.functions.quotas(&project).await?;
    Ok(Json(QuotaStatus { project, quotas }))
}

/// Set a project's quotas (admin token only): `invocations_per_month`, `gb_seconds_per_month`,
/// `concurrent_executions`, `stored_bytes` (each absent or null = unlimited) and
/// `soft_threshold_percent` (default 80). Beyond a hard quota the project's functions answer
/// 429 `quota_exceeded`; crossing the soft threshold of a monthly quota writes one
/// `dev.nimbus.quota.threshold_crossed` event per quota and month, and of `stored_bytes` one
/// per crossing (within ~2 s; going back under re-arms it). At or over `stored_bytes`,
/// writes that add documents, KV entries or files answer 429 `quota_exceeded` until data is
/// deleted (S3: `QuotaExceeded`, 403).
#[utoipa::path(put, path = "/v1/projects/{project}/quotas", tag = "usage",
    params(("project" = String, Path)), request_body = nimbus_model::usage::Quotas,
    responses((status = 200, body = QuotaStatus), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_quotas(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(project): axum::extract::Path<String>,
    Json(quotas): Json<nimbus_model::usage::Quotas>,
) -> Result<Json<QuotaStatus>, ApiError> {
    caller.require_admin()?;
    state.auth.get_project_by_slug(&project).await?;
    state.functions.set_quotas(&project, Some(quotas)).await?;
    Ok(Json(QuotaStatus { project, quotas: Some(quotas) }))
}

/// Remove a project's quotas (admin token only).
#[utoipa::path(delete, path = "/v1/projects/{project}/quotas", tag = "usage",
    params(("project" = String, Path)),
    responses((status = 204, description = "removed"), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_quotas(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(project): axum::extract::Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    caller.require_admin()?;
    state.auth.get_project_by_slug(&project).await?;
    state.functions.set_quotas(&project, None).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct ExportParams {
    /// The project to export; as for `/v1/usage` (admin: all when absent; a key: its own).
    project: Option<String>,
    /// Start (rounded down to the hour); default: the start of the current UTC month.
    from: Option<String>,
    /// End (exclusive); only complete hours are exported. Default: now.
    to: Option<String>,
}

/// Usage as a batch of CloudEvents in the format OpenMeter ingests
/// (`application/cloudevents-batch+json`): one event per project, function, complete hour and
/// meter (`requests`, `execution_ms`, `gb_seconds`, `fuel`, `outbound_bytes`, `events`, and
/// the data services' `file_egress_bytes` and `push_sent` under the function `""`), type
/// `nimbus.usage`, subject the project, data `{meter, value, function, hour_start}`, and an id
/// derived from (project, function, hour, meter), so a re-export is deduplicated.
#[utoipa::path(get, path = "/v1/usage/export", tag = "usage", params(ExportParams),
    responses((status = 200, description = "a JSON array of CloudEvents",
               content_type = "application/cloudevents-batch+json", body = Vec<Object>),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<ExportParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let project = scope(&caller, p.project)?;
    let now = now_millis();
    let from = time("from", p.from.as_deref(), month_of(now))?;
    let to = time("to", p.to.as_deref(), now)?;
    let events = state.usage.export(project.as_deref(), from, to, &node_source()).await?;
    let body = serde_json::to_vec(&events).map_err(|e| ApiError::internal(&e))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/cloudevents-batch+json")], body)
        .into_response())
}

/// The CloudEvents `source` of this node's usage: stable across exports from the same node.
fn node_source() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("nimbus://{host}")
}

/// Which projects a caller may read usage of: the admin token any (or all, `None`); a project's
/// key its own.
fn scope(caller: &Caller, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match (&caller.kind, asked) {
        (CallerKind::Admin, project) => Ok(project),
        (_, Some(other)) if other != caller.project => Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "a project key reads its own project's usage only",
        )),
        _ => Ok(Some(caller.project.clone())),
    }
}
