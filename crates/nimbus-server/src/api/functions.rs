//! `/v1/functions`: deploy, list, show, delete, versions, rollback, secrets, invoke.

use axum::Extension;
use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use nimbus_model::{FunctionInfo, FunctionSpec, VersionInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::{AppState, Caller, CallerKind};
use crate::error::{ApiError, ErrorBody};
use crate::gateway;

/// Largest component upload accepted.
pub(crate) const MAX_UPLOAD_BYTES: usize = 256 << 20;

pub(crate) fn deploy_body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(MAX_UPLOAD_BYTES)
}

/// The multipart form of a deploy.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form; the handler reads it part by part
pub(crate) struct DeployForm {
    /// The function's spec, as JSON.
    spec: FunctionSpec,
    /// The component (`application/wasm`).
    #[schema(value_type = String, format = Binary)]
    module: Vec<u8>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct Deployed {
    pub function: FunctionInfo,
    pub version: VersionInfo,
    /// The active version already had this component, spec and limits: `version` is that
    /// version, no new one was made and nothing was compiled (the answer is then 200, not 201).
    pub unchanged: bool,
    /// Time to validate and compile the component, in milliseconds.
    pub compile_ms: u64,
    /// Which path the compile took (null when nothing was compiled).
    pub compile: Option<CompileReport>,
}

/// How a deploy's component was compiled.
#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct CompileReport {
    /// Functions taken from the compile cache (null when the server runs without one).
    pub cached_functions: Option<u64>,
    /// Functions compiled with Cranelift (null when the server runs without a compile cache).
    pub compiled_functions: Option<u64>,
    /// Of the cached functions, those taken without even translating them from Wasm: their
    /// body and their module (all but its code and data) were compiled before, as when only
    /// the data of a JavaScript or Python engine's snapshot changed.
    pub untranslated_functions: Option<u64>,
    /// Time to validate and compile the component, in milliseconds.
    pub ms: u64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct FunctionList {
    pub functions: Vec<FunctionInfo>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct VersionList {
    pub versions: Vec<VersionInfo>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct Rollback {
    pub version: u32,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct SecretValue {
    pub value: String,
}

/// Deploy a new version of a function (creating the function on its first deploy).
#[utoipa::path(post, path = "/v1/functions", tag = "functions",
    request_body(content = DeployForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = Deployed),
        (status = 200, description = "the active version is identical: nothing deployed", body = Deployed),
        (status = 400, description = "invalid spec or component", body = ErrorBody),
        (status = 409, description = "a route is claimed by another function", body = ErrorBody),
        (status = 413, description = "upload too large", body = ErrorBody),
    ))]
pub(crate) async fn deploy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    mut form: Multipart,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    let mut spec: Option<FunctionSpec> = None;
    let mut module: Option<Bytes> = None;
    let bad = |m: String| ApiError::bad_request("invalid_upload", m);
    while let Some(field) = form.next_field().await.map_err(|e| multipart_error(e.body_text()))? {
        match field.name() {
            Some("spec") => {
                let text = field.bytes().await.map_err(|e| multipart_error(e.body_text()))?;
                spec = Some(serde_json::from_slice(&text).map_err(|e| {
                    ApiError::bad_request(
                        "invalid_spec",
                        format!("the spec part is not a valid function spec: {e}"),
                    )
                })?);
            }
            Some("module") => {
                module = Some(field.bytes().await.map_err(|e| multipart_error(e.body_text()))?);
            }
            other => {
                return Err(bad(format!(
                    "unexpected form part {other:?}; send `spec` and `module`"
                )));
            }
        }
    }
    let spec = spec.ok_or_else(|| bad("the form has no `spec` part".into()))?;
    let module = module.ok_or_else(|| bad("the form has no `module` part".into()))?;
    let deployed = state.functions.deploy(&caller.project, spec, module).await?;
    let unchanged = deployed.unchanged;
    Ok((
        if unchanged { StatusCode::OK } else { StatusCode::CREATED },
        Json(Deployed {
            function: deployed.function,
            version: deployed.version,
            unchanged,
            compile_ms: deployed.compile.as_millis() as u64,
            compile: (!unchanged && !deployed.reused_artifact).then(|| CompileReport {
                cached_functions: deployed.cache.map(|c| c.hits),
                compiled_functions: deployed.cache.map(|c| c.misses),
                untranslated_functions: deployed.cache.map(|c| c.untranslated),
                ms: deployed.compile.as_millis() as u64,
            }),
        }),
    ))
}

fn multipart_error(text: String) -> ApiError {
    if text.contains("length limit") || text.contains("too large") {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("uploads are limited to {} MiB", MAX_UPLOAD_BYTES >> 20),
        )
    } else {
        ApiError::bad_request("invalid_upload", format!("malformed multipart upload: {text}"))
    }
}

/// List functions.
#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses((status = 200, body = FunctionList)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FunctionList>, ApiError> {
    Ok(Json(FunctionList { functions: state.functions.list(&caller.project).await? }))
}

/// Show one function: its active version's configuration and secret names.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path)),
    responses((status = 200, body = FunctionInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    Ok(Json(state.functions.info(&caller.project, &name).await?))
}

/// Delete a function, its versions and secrets. Its invocation records stay (usage history).
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.functions.delete(&caller.project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a function's versions, oldest first.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "functions",
    params(("name" = String, Path)),
    responses((status = 200, body = VersionList), (status = 404, body = ErrorBody)))]
pub(crate) async fn versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    Ok(Json(VersionList { versions: state.functions.versions(&caller.project, &name).await? }))
}

/// Move traffic to another existing version at once (in-flight requests finish on the old one).
#[utoipa::path(post, path = "/v1/functions/{name}/rollback", tag = "functions",
    params(("name" = String, Path)), request_body = Rollback,
    responses((status = 200, body = FunctionInfo), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<Rollback>,
) -> Result<Json<FunctionInfo>, ApiError> {
    Ok(Json(state.functions.rollback(&caller.project, &name, body.version).await?))
}

/// Set a secret. Secrets are write-only: they reach the function as environment variables and
/// are never returned by the API.
#[utoipa::path(put, path = "/v1/functions/{name}/secrets/{key}", tag = "functions",
    params(("name" = String, Path), ("key" = String, Path)), request_body = SecretValue,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, key)): Path<(String, String)>,
    Json(body): Json<SecretValue>,
) -> Result<StatusCode, ApiError> {
    state.functions.set_secret(&caller.project, &name, &key, &body.value).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a secret.
#[utoipa::path(delete, path = "/v1/functions/{name}/secrets/{key}", tag = "functions",
    params(("name" = String, Path), ("key" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.functions.delete_secret(&caller.project, &name, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invoke a function directly, whatever its routes. Any method; the function sees the path after
/// `/invoke` (or `/`), with the query, headers and body as sent. Answers with the function's response.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "functions",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "the function's own response"),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 429, description = "queue full; see Retry-After", body = ErrorBody),
        (status = 500, description = "the function crashed or ran out of memory", body = ErrorBody),
        (status = 503, description = "waited too long for a free instance", body = ErrorBody),
        (status = 504, description = "the function timed out", body = ErrorBody),
    ))]
pub(crate) async fn invoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Result<Response, ApiError> {
    // Both invoke routes start /v1/functions/{name}/invoke: read the name from the raw path and
    // strip exactly that prefix (a function may be named `invoker`).
    let name = request.uri().path().split('/').nth(3).unwrap_or_default().to_string();
    let asynchronous = request
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    let target = state
        .functions
        .active(&caller.project, &name)
        .ok_or_else(|| ApiError::not_found(format!("function {name} not found")))?;
    // Read before the identity headers are rewritten (every client `x-nimbus-*` goes).
    let callback = request.headers().get(crate::api::triggers::CALLBACK_URL).cloned();
    let (mut parts, body) = request.into_parts();
    // Re-root the URI at the part after `/invoke`, keeping the query.
    let prefix_len = "/v1/functions/".len() + name.len() + "/invoke".len();
    let rest = parts.uri.path().get(prefix_len..).unwrap_or("");
    let rest = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    parts.uri = path_and_query
        .parse()
        .map_err(|_| ApiError::bad_request("bad_path", "the invoke path is not a valid URI"))?;
    // The caller authenticated with the admin token or a service key: neither reaches the guest.
    crate::credentials::strip_consumed(&mut parts.headers);
    let mut request = Request::from_parts(parts, body);
    let identity = match caller.kind {
        CallerKind::Admin => gateway::Identity::Admin,
        CallerKind::Service { .. } | CallerKind::Function { .. } => {
            gateway::Identity::Key(nimbus_auth::ApiKeyScope::Service)
        }
    };
    identity.write(&caller.project, request.headers_mut());
    if asynchronous {
        return crate::api::triggers::accept_async(&state, &caller, &name, request, callback).await;
    }
    Ok(gateway::respond(state.functions.invoke(target, request, "invoke").await))
}
