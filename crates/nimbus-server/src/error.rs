//! One error type for every handler: a status, a stable machine-readable code and a safe message,
//! rendered as `{"error":{"code":"...","message":"..."}}`. Internal causes are logged once, here,
//! and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_auth::AuthError;
use nimbus_documents::DocError;
use nimbus_functions::{FunctionError, InvokeError, Rejection};
use nimbus_runtime::DeployError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// For `quota_exceeded`: which quota, and when it resets (RFC 3339).
    pub quota: Option<(&'static str, Option<String>)>,
}

/// The error body every endpoint answers with.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `invalid_module`, `route_conflict`, `timeout`...
    pub code: String,
    pub message: String,
    /// With `quota_exceeded`: the quota that is used up (`invocations_per_month`,
    /// `gb_seconds_per_month`, `concurrent_executions`, `stored_bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// With `quota_exceeded` of a monthly quota: when it resets (the next UTC month, RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None, quota: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (quota, resets_at) = match self.quota {
            Some((q, r)) => (Some(q.to_string()), r),
            None => (None, None),
        };
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.into(), message: self.message, quota, resets_at },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<FunctionError> for ApiError {
    fn from(e: FunctionError) -> Self {
        match &e {
            FunctionError::InvalidSpec(_) => ApiError::bad_request("invalid_spec", e.to_string()),
            FunctionError::InvalidModule(DeployError::Internal(_)) => ApiError::internal(&e),
            FunctionError::InvalidModule(_) => {
                ApiError::bad_request("invalid_module", e.to_string())
            }
            FunctionError::RouteConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "route_conflict", e.to_string())
            }
            FunctionError::NotFound(_) => ApiError::not_found(e.to_string()),
            FunctionError::InvalidRange(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_range", e.to_string())
            }
            FunctionError::InvalidQuotas(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_quotas", e.to_string())
            }
            FunctionError::Store(_) | FunctionError::Internal(_) => ApiError::internal(&e),
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        let (status, code) = match e {
            InvokeError::Rejected(Rejection::QueueFull, _) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            InvokeError::Rejected(Rejection::QueueTimeout, _) => {
                (StatusCode::SERVICE_UNAVAILABLE, "queue_timeout")
            }
            InvokeError::Rejected(Rejection::NodeFull, _) => {
                (StatusCode::SERVICE_UNAVAILABLE, "node_full")
            }
            InvokeError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            InvokeError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            InvokeError::MemoryLimit => (StatusCode::INTERNAL_SERVER_ERROR, "memory_limit"),
            InvokeError::Trap => (StatusCode::INTERNAL_SERVER_ERROR, "function_crashed"),
            InvokeError::Failed => (StatusCode::INTERNAL_SERVER_ERROR, "function_failed"),
            InvokeError::RecorderBacklog => (StatusCode::SERVICE_UNAVAILABLE, "recorder_backlog"),
            InvokeError::Quota(ref q) => {
                return quota_error(q);
            }
            InvokeError::Unavailable => (StatusCode::INTERNAL_SERVER_ERROR, "function_unavailable"),
        };
        let mut api = ApiError::new(status, code, e.to_string());
        match e {
            InvokeError::Rejected(_, retry) => api.retry_after = Some(retry.as_secs().max(1)),
            InvokeError::RecorderBacklog => api.retry_after = Some(1),
            _ => {}
        }
        api
    }
}

/// 429 `quota_exceeded` for a write refused by the stored-bytes quota. No `resets_at` and no
/// `Retry-After`: time does not free it, deleting data does (the message says so).
pub(crate) fn storage_full(e: &nimbus_model::usage::StorageFull) -> ApiError {
    let mut api = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", e.to_string());
    api.quota = Some((nimbus_model::usage::QUOTA_STORED_BYTES, None));
    api
}

/// 429 naming the quota and when it resets.
fn quota_error(q: &nimbus_functions::QuotaExceeded) -> ApiError {
    let resets = q.resets_at.map(nimbus_model::usage::rfc3339);
    let message = match &resets {
        Some(at) => format!(
            "project {}'s quota {} is used up until {at} (the start of the next UTC month)",
            q.project, q.quota
        ),
        None => format!(
            "project {}'s quota {} is used up: try again when one of its invocations ends",
            q.project, q.quota
        ),
    };
    let mut api = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message);
    api.retry_after = Some(match q.resets_at {
        Some(t) => ((t - nimbus_model::now_millis()).max(1000) / 1000) as u64,
        None => 1,
    });
    api.quota = Some((q.quota, resets));
    api
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match &e {
            AuthError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            AuthError::WeakPassword(_) => (StatusCode::BAD_REQUEST, "weak_password"),
            AuthError::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            AuthError::TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired"),
            AuthError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AuthError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            AuthError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AuthError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AuthError::ProjectDeleting(_) => (StatusCode::CONFLICT, "project_deleting"),
            AuthError::Disabled => (StatusCode::FORBIDDEN, "user_disabled"),
            AuthError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            AuthError::Store(_) | AuthError::Internal(_) | AuthError::DeletionPart { .. } => {
                return ApiError::internal(&e);
            }
        };
        let mut api = ApiError::new(status, code, e.to_string());
        if let AuthError::RateLimited { retry_after } | AuthError::Busy { retry_after } = e {
            api.retry_after = Some(retry_after.as_secs().max(1));
        }
        api
    }
}

/// Turn a non-JSON error response of Nimbus's own endpoints (axum's extractor rejections are
/// plain text; an unmatched method has no body) into the JSON error shape, keeping its status and
/// headers such as `Allow`.
pub(crate) async fn json_rejections(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Rejection texts are short; anything longer is cut, never buffered whole.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut json = ApiError::new(status, code, message).into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in parts.headers.iter() {
        json.headers_mut().insert(name.clone(), value.clone());
    }
    json
}

impl From<DocError> for ApiError {
    fn from(e: DocError) -> Self {
        let (status, code) = match &e {
            DocError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DocError::Invalid { code, .. } => (StatusCode::BAD_REQUEST, *code),
            DocError::Schema { .. } => (StatusCode::BAD_REQUEST, "schema_violation"),
            DocError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            DocError::PreconditionFailed(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            DocError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            DocError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            DocError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            DocError::StorageFull(full) => return storage_full(full),
            DocError::Store(_) | DocError::Internal(_) => return ApiError::internal(&e),
        };
        ApiError::new(status, code, e.to_string())
    }
}
