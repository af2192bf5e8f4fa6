//! File storage over REST (docs/files.md).
//!
//! - Management (admin token or a service key, the caller's project): `/v1/buckets[/{bucket}]`
//!   (create, list, show, update, delete — refused with 409 while objects remain unless
//!   `?force=true`) and `/v1/s3-keys[/{access_key}]` (access keys of the S3 endpoint).
//! - Data, public to apps under each bucket's access settings:
//!   `/v1/projects/{project}/buckets/{bucket}/objects` (GET lists; POST is a browser's
//!   `multipart/form-data` upload), `/objects/{*key}` (GET with `Range` and conditional
//!   requests, HEAD, PUT with a raw body, DELETE), `/copy` and `/sign` (signed URLs; service
//!   callers). A signed URL (`?expires=&signature=`) authorises its one method and key.
//!
//! Bodies stream both ways: an upload goes from the socket through a bounded bridge into the
//! store's file, a download from the file through a bounded channel to the socket, so memory
//! stays flat whatever the object's size. Neither the management body limit nor axum's default
//! applies to uploads; the bucket's and server's size limits do, while streaming (413).

use std::collections::BTreeMap;
use std::io::Read;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use bytes::Bytes;
use futures::TryStreamExt;
use md5::{Digest, Md5};
use nimbus_files::{Bucket, BucketConfig, FilesError, Principal};
use nimbus_model::now_millis;
use nimbus_store::objects::{ObjectData, ObjectMeta, RangeSpec, S3KeyInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, Caller, CallerKind};
use crate::data_caller::{DataCaller, data_caller};
use crate::error::{ApiError, ErrorBody};
use crate::in_process::InProcess;

/// User metadata travels in headers with this prefix (`x-nimbus-meta-color: blue`).
pub(crate) const META_PREFIX: &str = "x-nimbus-meta-";
/// Chunks of a download between the reading thread and the socket; at most
/// `DOWNLOAD_QUEUE` of them wait, so a slow client holds at most ~1 MiB per download.
const DOWNLOAD_CHUNK: usize = 256 << 10;
const DOWNLOAD_QUEUE: usize = 4;

/// Management routes (behind the management auth middleware).
pub(crate) fn management_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/buckets", get(list_buckets).post(create_bucket))
        .route("/v1/buckets/{bucket}", get(show_bucket).put(update_bucket).delete(delete_bucket))
        .route("/v1/s3-keys", get(list_s3_keys).post(create_s3_key))
        .route("/v1/s3-keys/{access_key}", axum::routing::delete(delete_s3_key))
}

/// Data routes (public, under access settings). No body limit here: uploads stream and the
/// store enforces the size limits.
pub(crate) fn data_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/v1/projects/{project}/buckets/{bucket}/objects",
            get(list_objects).post(form_upload),
        )
        .route(
            "/v1/projects/{project}/buckets/{bucket}/objects/{*key}",
            get(get_object).head(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/projects/{project}/buckets/{bucket}/copy", post(copy_object))
        .route("/v1/projects/{project}/buckets/{bucket}/sign", post(sign_url))
        .layer(DefaultBodyLimit::disable())
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t).map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

fn json_body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))
}

fn service_principal(caller: &Caller) -> Principal {
    let identity = match &caller.kind {
        CallerKind::Admin => json!({"kind": "admin"}),
        CallerKind::Service { key_id } => json!({"kind": "service-key", "id": key_id}),
        CallerKind::Function { name } => json!({"kind": "function", "name": name}),
    };
    Principal::Service { identity }
}

/// The caller of a data endpoint, verified for `project` (see `data_caller`), including a
/// function calling through the in-process API.
async fn principal(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
    in_process: &InProcess,
) -> Result<Principal, ApiError> {
    let in_process = in_process.as_ref().map(|axum::Extension(c)| c);
    let caller = data_caller(state, project, headers, in_process).await?;
    Ok(match (caller.service_identity(), caller) {
        (Some(identity), _) => Principal::Service { identity },
        (None, DataCaller::User(auth)) => Principal::User(auth),
        (None, _) => Principal::anonymous(),
    })
}

// ---------------------------------------------------------------------------------------------
// Management: buckets and S3 keys

#[derive(Serialize, ToSchema)]
pub(crate) struct BucketList {
    #[schema(value_type = Vec<Object>)]
    buckets: Vec<Bucket>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewBucket {
    /// 3-63 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit.
    name: String,
    /// `private` (default), `public-read`, `signed-in`, `owner-only`, or
    /// `{"rules": {"get": "...", "list": "...", "create": "...", "update": "...", "delete": "..."}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    access: nimbus_files::Access,
    max_object_bytes: Option<u64>,
    #[serde(default)]
    allowed_content_types: Vec<String>,
    quota_bytes: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ForceQuery {
    /// Delete the bucket's objects too (each with a deleted event).
    #[serde(default)]
    force: bool,
}

/// List the project's buckets with their settings and usage.
#[utoipa::path(get, path = "/v1/buckets", tag = "files",
    responses((status = 200, body = BucketList)))]
pub(crate) async fn list_buckets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<BucketList>, ApiError> {
    let buckets = state.files.call(move |f| f.list_buckets(&caller.project)).await?;
    Ok(Json(BucketList { buckets }))
}

/// Create a bucket.
#[utoipa::path(post, path = "/v1/buckets", tag = "files", request_body = NewBucket,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub(crate) async fn create_bucket(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewBucket>, JsonRejection>,
) -> Result<(StatusCode, Json<Bucket>), ApiError> {
    let b = json_body(body)?;
    let config = BucketConfig {
        access: b.access,
        max_object_bytes: b.max_object_bytes,
        allowed_content_types: b.allowed_content_types,
        quota_bytes: b.quota_bytes,
    };
    let bucket =
        state.files.call(move |f| f.create_bucket(&caller.project, &b.name, &config)).await?;
    Ok((StatusCode::CREATED, Json(bucket)))
}

/// A bucket's settings and usage.
#[utoipa::path(get, path = "/v1/buckets/{bucket}", tag = "files",
    params(("bucket" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_bucket(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    bucket: Result<Path<String>, PathRejection>,
) -> Result<Json<Bucket>, ApiError> {
    let bucket = path(bucket)?;
    Ok(Json(state.files.call(move |f| f.get_bucket(&caller.project, &bucket)).await?))
}

/// Replace a bucket's settings (access, limits).
#[utoipa::path(put, path = "/v1/buckets/{bucket}", tag = "files",
    params(("bucket" = String, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn update_bucket(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    bucket: Result<Path<String>, PathRejection>,
    body: Result<Json<BucketConfig>, JsonRejection>,
) -> Result<Json<Bucket>, ApiError> {
    let (bucket, config) = (path(bucket)?, json_body(body)?);
    Ok(Json(state.files.call(move |f| f.update_bucket(&caller.project, &bucket, &config)).await?))
}

/// Delete a bucket. One that holds objects or uploads is refused (409) unless `force=true`.
#[utoipa::path(delete, path = "/v1/buckets/{bucket}", tag = "files",
    params(("bucket" = String, Path), ForceQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_bucket(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    bucket: Result<Path<String>, PathRejection>,
    q: Result<Query<ForceQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (bucket, q) = (path(bucket)?, query(q)?);
    let who = service_principal(&caller);
    let n =
        state.files.call(move |f| f.delete_bucket(&caller.project, &bucket, q.force, &who)).await?;
    Ok(Json(json!({ "deleted_objects": n })))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct NewS3Key {
    #[serde(default)]
    name: String,
    /// `service` (default): the project's service role, access settings do not apply.
    /// `public`: an anonymous caller held to each bucket's access settings (like a public API
    /// key), e.g. for a client app that reads a public-read bucket with an S3 SDK.
    #[serde(default)]
    #[schema(value_type = String)]
    scope: nimbus_store::objects::S3KeyScope,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedS3Key {
    access_key_id: String,
    /// Shown this once.
    secret_access_key: String,
    #[schema(value_type = Object)]
    info: S3KeyInfo,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct S3KeyList {
    #[schema(value_type = Vec<Object>)]
    keys: Vec<S3KeyInfo>,
}

/// Issue an access key for the S3-compatible endpoint, acting on the caller's project with
/// service rights (`"scope": "service"`, the default) or held to the buckets' access settings
/// (`"scope": "public"`), like API keys. The secret is shown once.
#[utoipa::path(post, path = "/v1/s3-keys", tag = "files", request_body = NewS3Key,
    responses((status = 201, body = CreatedS3Key), (status = 400, body = ErrorBody)))]
pub(crate) async fn create_s3_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewS3Key>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedS3Key>), ApiError> {
    let body = json_body(body)?;
    let (info, secret) =
        state.files.call(move |f| f.create_s3_key(&caller.project, &body.name, body.scope)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedS3Key {
            access_key_id: info.access_key.clone(),
            secret_access_key: secret,
            info,
        }),
    ))
}

/// The project's S3 access keys (never their secrets).
#[utoipa::path(get, path = "/v1/s3-keys", tag = "files",
    responses((status = 200, body = S3KeyList)))]
pub(crate) async fn list_s3_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<S3KeyList>, ApiError> {
    let keys = state.files.call(move |f| f.list_s3_keys(&caller.project)).await?;
    Ok(Json(S3KeyList { keys }))
}

/// Revoke an S3 access key, with immediate effect.
#[utoipa::path(delete, path = "/v1/s3-keys/{access_key}", tag = "files",
    params(("access_key" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_s3_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    key: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let key = path(key)?;
    let msg = format!("no S3 access key {key:?} in this project");
    if state.files.call(move |f| f.delete_s3_key(&caller.project, &key)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(msg))
    }
}

// ---------------------------------------------------------------------------------------------
// Data: objects

#[derive(Serialize)]
struct ObjectView<'a> {
    key: &'a str,
    size: u64,
    content_type: &'a str,
    etag: &'a str,
    created_at: i64,
    metadata: &'a BTreeMap<String, String>,
}

fn view(m: &ObjectMeta) -> ObjectView<'_> {
    ObjectView {
        key: &m.key,
        size: m.size,
        content_type: &m.content_type,
        etag: &m.etag,
        created_at: m.created_at,
        metadata: &m.metadata,
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    #[serde(default)]
    prefix: String,
    delimiter: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// List objects: `prefix`, `delimiter` (groups keys into `common_prefixes`), `limit`, `cursor`.
#[utoipa::path(get, path = "/v1/projects/{project}/buckets/{bucket}/objects", tag = "files",
    params(("project" = String, Path), ("bucket" = String, Path), ListParams), security((), ("admin_token" = [])),
    responses((status = 200, body = schema::ObjectPage)))]
pub(crate) async fn list_objects(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let ((project, bucket), q) = (path(p)?, query(q)?);
    let who = principal(&state, &project, &headers, &in_process).await?;
    // The cursor is opaque to clients: hex of the store's lower bound (which may hold a NUL).
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            Some(hex::decode(c).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "the cursor is not valid")
            })?)
        }
    };
    let page = state
        .files
        .call(move |f| {
            f.list_objects(
                &project,
                &bucket,
                &q.prefix,
                q.delimiter.as_deref(),
                cursor,
                q.limit,
                &who,
            )
        })
        .await?;
    let objects: Vec<_> = page.objects.iter().map(view).collect();
    Ok(Json(json!({
        "objects": objects,
        "common_prefixes": page.common_prefixes,
        "cursor": page.next.map(hex::encode),
    }))
    .into_response())
}

/// A signed URL's query (`POST .../sign` makes them): both or neither.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SignedParams {
    expires: Option<i64>,
    signature: Option<String>,
}

/// The principal of an object request: a signed URL's holder when it carries a signature
/// (checked for this method and key), else from the credentials.
#[allow(clippy::too_many_arguments)]
async fn object_principal(
    state: &AppState,
    project: &str,
    bucket: &str,
    key: &str,
    method: &Method,
    signed: &SignedParams,
    headers: &HeaderMap,
    in_process: &InProcess,
) -> Result<Principal, ApiError> {
    match (&signed.expires, &signed.signature) {
        (None, None) => principal(state, project, headers, in_process).await,
        (Some(expires), Some(sig)) => {
            state.files.verify_signature(project, method.as_str(), bucket, key, *expires, sig)?;
            Ok(Principal::SignedUrl)
        }
        _ => Err(ApiError::bad_request(
            "invalid_signature",
            "a signed URL needs both `expires` and `signature`",
        )),
    }
}

fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok("application/octet-stream".to_string()),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request("invalid_content_type", "invalid Content-Type")),
    }
}

fn metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        if let Some(k) = name.as_str().strip_prefix(META_PREFIX) {
            let v = value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_metadata", "metadata values must be visible ASCII")
            })?;
            out.insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A reader over a request body, for the blocking store: a task receives the body ahead of the
/// store in bounded batches (`nimbus_files::body`), so an upload is never buffered whole and
/// receiving overlaps hashing and writing. Create it on an async worker and use it on a blocking
/// thread.
pub(crate) fn body_reader(body: Body) -> impl Read + Send + 'static {
    nimbus_files::body::stream_reader(body.into_data_stream().map_err(std::io::Error::other))
}

/// Stream `data` to a response body: a blocking thread reads chunks into a small channel. With
/// `egress`, the bytes the body hands out count as the project's file egress.
pub(crate) fn body_from_reader(
    mut reader: Box<dyn Read + Send>,
    egress: Option<(std::sync::Arc<nimbus_functions::usage::EgressMeter>, String)>,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(DOWNLOAD_QUEUE);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; DOWNLOAD_CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    match egress {
        Some((meter, project)) => {
            Body::from_stream(crate::files_metrics::Metered::new(stream, meter, project))
        }
        None => Body::from_stream(stream),
    }
}

fn http_date(millis: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis.max(0) as u64);
    httpdate::fmt_http_date(t)
}

fn object_headers(h: &mut HeaderMap, meta: &ObjectMeta) {
    let set = |h: &mut HeaderMap, name: HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    set(h, header::ETAG, &format!("\"{}\"", meta.etag));
    set(h, header::LAST_MODIFIED, &http_date(meta.created_at));
    set(h, header::CONTENT_TYPE, &meta.content_type);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    for (k, v) in &meta.metadata {
        if let (Ok(name), Ok(value)) =
            (HeaderName::try_from(format!("{META_PREFIX}{k}")), HeaderValue::from_str(v))
        {
            h.insert(name, value);
        }
    }
}

/// `Range: bytes=a-b | a- | -n`. One range only; a list or another unit is ignored (the whole
/// object is served, which RFC 9110 allows). A malformed single range is ignored likewise.
fn parse_range(headers: &HeaderMap) -> Option<RangeSpec> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = v.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(b.parse().ok()?)),
        (false, true) => Some(RangeSpec::From(a.parse().ok()?)),
        (false, false) => Some(RangeSpec::FromTo(a.parse().ok()?, b.parse().ok()?)),
        (true, true) => None,
    }
}

/// `If-None-Match` (wins) or `If-Modified-Since` says the client's copy is current.
fn not_modified(headers: &HeaderMap, meta: &ObjectMeta) -> bool {
    if let Some(v) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return v
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
            .any(|t| t == "*" || t == meta.etag);
    }
    if let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        let modified = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs((meta.created_at.max(0) / 1000) as u64);
        return modified <= since;
    }
    false
}

/// Seconds since the epoch of an object's `Last-Modified` (HTTP dates have whole seconds).
fn modified_secs(meta: &ObjectMeta) -> u64 {
    (meta.created_at.max(0) / 1000) as u64
}

fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

/// Strong comparison (RFC 9110 8.8.3.2): a weak tag never matches.
fn strong_match(tag: &str, meta: &ObjectMeta) -> bool {
    let tag = tag.trim();
    !tag.starts_with("W/") && tag.trim_matches('"') == meta.etag
}

/// `If-Match`, else `If-Unmodified-Since` (RFC 9110 13.2.2, steps 1-2): false means 412. An
/// unparseable date is ignored, as the RFC says.
fn preconditions_hold(headers: &HeaderMap, meta: &ObjectMeta) -> bool {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let v = v.to_str().unwrap_or("");
        return v.split(',').any(|t| t.trim() == "*" || strong_match(t, meta));
    }
    match header_date(headers, header::IF_UNMODIFIED_SINCE) {
        Some(since) => modified_secs(meta) <= since,
        None => true,
    }
}

/// `If-Range` (RFC 9110 13.1.5): the range applies only if the validator still matches, by
/// strong ETag comparison or an exactly equal date; otherwise the whole object is served.
fn if_range_matches(headers: &HeaderMap, meta: &ObjectMeta) -> bool {
    let Some(v) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return strong_match(v, meta);
    }
    header_date(headers, header::IF_RANGE).is_some_and(|d| d == modified_secs(meta))
}

fn precondition_failed() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "the object does not match If-Match / If-Unmodified-Since",
    )
}

/// A reader that checks the MD5 a client declared (`Content-MD5`) once the body ends: a mismatch
/// fails the read, so the store publishes nothing. The store hashes the bytes again for the
/// ETag; the second pass runs only when a client asks for the check.
pub(crate) struct Md5Verify<R> {
    inner: R,
    md5: Md5,
    expected: [u8; 16],
    checked: bool,
}

/// The error an [`Md5Verify`] fails with, found again in the store's `Body` error.
#[derive(Debug, thiserror::Error)]
#[error("the body does not match its Content-MD5")]
pub(crate) struct BadDigest;

impl<R: Read> Read for Md5Verify<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.checked {
            self.checked = true;
            let got: [u8; 16] = self.md5.finalize_reset().into();
            if got != self.expected {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, BadDigest));
            }
        }
        self.md5.update(&buf[..n]);
        Ok(n)
    }
}

/// Decode a `Content-MD5` value (base64 of 16 bytes); `None` if it is not one.
pub(crate) fn parse_content_md5(v: &str) -> Option<[u8; 16]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()?;
    bytes.try_into().ok()
}

/// Wrap `reader` to verify `content_md5` if the client sent one.
pub(crate) fn verify_md5<R: Read + Send + 'static>(
    reader: R,
    content_md5: Option<[u8; 16]>,
) -> Box<dyn Read + Send> {
    match content_md5 {
        None => Box::new(reader),
        Some(expected) => {
            Box::new(Md5Verify { inner: reader, md5: Md5::new(), expected, checked: false })
        }
    }
}

/// Whether a store error is an [`Md5Verify`] mismatch.
pub(crate) fn is_bad_digest(e: &FilesError) -> bool {
    match e {
        FilesError::Object(nimbus_store::objects::ObjectError::Body(io)) => {
            io.get_ref().is_some_and(|inner| inner.is::<BadDigest>())
        }
        _ => false,
    }
}

fn content_md5(headers: &HeaderMap) -> Result<Option<[u8; 16]>, ApiError> {
    match headers.get("content-md5") {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(parse_content_md5).map(Some).ok_or_else(|| {
            ApiError::bad_request("invalid_digest", "Content-MD5 must be the base64 of 16 bytes")
        }),
    }
}

fn bad_digest() -> ApiError {
    ApiError::bad_request(
        "bad_digest",
        "the body does not match its Content-MD5; nothing was stored",
    )
}

/// What opening an object with a range gave.
enum Opened {
    Full,
    Partial,
    /// The range did not fit; the data is the whole object (If-Range may still want it).
    Unsatisfiable,
}

/// Download an object (streamed), or a `Range` of it; conditional requests as RFC 9110.
#[utoipa::path(method(get, head), path = "/v1/projects/{project}/buckets/{bucket}/objects/{key}", tag = "files",
    params(("project" = String, Path), ("bucket" = String, Path), ("key" = String, Path, description = "the object key; `/` is part of it"), SignedParams), security((), ("admin_token" = [])),
    responses((status = 200, description = "the object's bytes", content_type = "*/*",
               headers(("etag" = String), ("last-modified" = String))),
              (status = 206, description = "the requested range", content_type = "*/*",
               headers(("content-range" = String))),
              (status = 304, description = "not modified (If-None-Match / If-Modified-Since)"),
              (status = 412, description = "If-Match / If-Unmodified-Since failed", body = ErrorBody),
              (status = 416, description = "the range is outside the object", body = ErrorBody)))]
pub(crate) async fn get_object(
    State(state): State<AppState>,
    method: Method,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<SignedParams>, QueryRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let (project, bucket, key) = path(p)?;
    let signed = query(q)?;
    let who =
        object_principal(&state, &project, &bucket, &key, &method, &signed, &headers, &in_process)
            .await?;
    let egress_project = project.clone();
    let range = parse_range(&headers);
    let head = method == Method::HEAD;
    let (p2, b2, k2, who2) = (project.clone(), bucket.clone(), key.clone(), who.clone());
    let opened: Result<(ObjectData, Opened), _> = state
        .files
        .call(move |f| {
            if head {
                // No file is opened for HEAD.
                let meta = f.head_object(&project, &bucket, &key, &who)?;
                let size = meta.size;
                let data = ObjectData { meta, range: 0..size, reader: Box::new(std::io::empty()) };
                return Ok((data, Opened::Full));
            }
            match f.open_object(&project, &bucket, &key, range, &who) {
                Ok(d) if range.is_some() => Ok((d, Opened::Partial)),
                Ok(d) => Ok((d, Opened::Full)),
                Err(FilesError::Object(
                    nimbus_store::objects::ObjectError::RangeNotSatisfiable { .. },
                )) => {
                    Ok((f.open_object(&project, &bucket, &key, None, &who)?, Opened::Unsatisfiable))
                }
                Err(e) => Err(e),
            }
        })
        .await;
    let (mut data, mut opened) = opened?;
    // RFC 9110 13.2.2: If-Match / If-Unmodified-Since, then If-None-Match / If-Modified-Since,
    // then If-Range decides whether Range applies.
    if !preconditions_hold(&headers, &data.meta) {
        return Err(precondition_failed());
    }
    let mut response_headers = HeaderMap::new();
    object_headers(&mut response_headers, &data.meta);
    if not_modified(&headers, &data.meta) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        response_headers.remove(header::CONTENT_TYPE);
        r.headers_mut().extend(response_headers);
        return Ok(r);
    }
    if !matches!(opened, Opened::Full) && !if_range_matches(&headers, &data.meta) {
        // The client's copy is stale: the whole (current) object instead of a range of it.
        if matches!(opened, Opened::Partial) {
            data = state.files.call(move |f| f.open_object(&p2, &b2, &k2, None, &who2)).await?;
            response_headers.clear();
            object_headers(&mut response_headers, &data.meta);
        }
        opened = Opened::Full;
    }
    if matches!(opened, Opened::Unsatisfiable) {
        let size = data.meta.size;
        let mut r = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the object has {size} bytes"),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return Ok(r);
    }
    let len = data.range.end - data.range.start;
    let partial = matches!(opened, Opened::Partial) && !head;
    let status = if partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    if partial
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            data.range.start,
            data.range.end - 1,
            data.meta.size
        ))
    {
        response_headers.insert(header::CONTENT_RANGE, v);
    }
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // A function's download through the in-process API never leaves the node: not egress.
    let egress = in_process.is_none().then(|| (state.usage.egress().clone(), egress_project));
    let body = if head { Body::empty() } else { body_from_reader(data.reader, egress) };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().extend(response_headers);
    Ok(r)
}

/// Upload an object (raw body, streamed). `Content-MD5` is verified; `X-Nimbus-Meta-*` headers
/// are its metadata.
#[utoipa::path(put, path = "/v1/projects/{project}/buckets/{bucket}/objects/{key}", tag = "files",
    params(("project" = String, Path), ("bucket" = String, Path), ("key" = String, Path, description = "the object key; `/` is part of it"), SignedParams), security((), ("admin_token" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = schema::ObjectInfo),
              (status = 413, description = "over the size limit or quota", body = ErrorBody),
              (status = 415, description = "content type not allowed", body = ErrorBody)))]
pub(crate) async fn put_object(
    State(state): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<SignedParams>, QueryRejection>,
    headers: HeaderMap,
    in_process: InProcess,
    body: Body,
) -> Result<Response, ApiError> {
    let (project, bucket, key) = path(p)?;
    let signed = query(q)?;
    let who = object_principal(
        &state,
        &project,
        &bucket,
        &key,
        &Method::PUT,
        &signed,
        &headers,
        &in_process,
    )
    .await?;
    let (ct, meta) = (content_type(&headers)?, metadata(&headers)?);
    let declared = declared_length(&headers);
    let md5 = content_md5(&headers)?;
    let mut reader = verify_md5(body_reader(body), md5);
    let stored = state
        .files
        .call(move |f| {
            f.put_object(&project, &bucket, &key, &ct, &meta, &who, declared, &mut reader)
        })
        .await
        .map_err(|e| if is_bad_digest(&e) { bad_digest() } else { e.into() })?;
    let mut r = (StatusCode::CREATED, Json(view(&stored))).into_response();
    object_headers(r.headers_mut(), &stored);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

#[utoipa::path(delete, path = "/v1/projects/{project}/buckets/{bucket}/objects/{key}", tag = "files",
    params(("project" = String, Path), ("bucket" = String, Path), ("key" = String, Path, description = "the object key; `/` is part of it")), security((), ("admin_token" = [])),
    responses((status = 204, description = "deleted")))]
pub(crate) async fn delete_object(
    State(state): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<StatusCode, ApiError> {
    let (project, bucket, key) = path(p)?;
    let who = principal(&state, &project, &headers, &in_process).await?;
    let msg = format!("no object {key:?}");
    match state.files.call(move |f| f.delete_object(&project, &bucket, &key, &who)).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::not_found(msg)),
    }
}

/// A browser's form upload: fields `key` (optional; default: the file's name) and `file` (the
/// bytes, streamed as they arrive), in that order.
#[utoipa::path(post, path = "/v1/projects/{project}/buckets/{bucket}/objects", tag = "files",
    params(("project" = String, Path), ("bucket" = String, Path)), security((), ("admin_token" = [])),
    request_body(content = schema::FormUpload, content_type = "multipart/form-data"),
    responses((status = 201, body = schema::ObjectInfo),
              (status = 413, description = "over the size limit or quota", body = ErrorBody),
              (status = 415, description = "content type not allowed", body = ErrorBody)))]
pub(crate) async fn form_upload(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let (project, bucket) = path(p)?;
    let who = principal(&state, &project, &headers, &in_process).await?;
    let mut form = form.map_err(|e| ApiError::bad_request("invalid_form", e.body_text()))?;
    let bad = |m: String| ApiError::bad_request("invalid_form", m);
    let mut key: Option<String> = None;
    let mut meta = BTreeMap::new();
    while let Some(field) = form.next_field().await.map_err(|e| bad(e.body_text()))? {
        match field.name() {
            Some("key") => {
                let text = field.text().await.map_err(|e| bad(e.body_text()))?;
                if text.len() > nimbus_store::objects::MAX_KEY_BYTES * 4 {
                    return Err(bad("the key field is too long".into()));
                }
                key = Some(text);
            }
            Some(name) if name.starts_with("meta-") => {
                let name = name["meta-".len()..].to_string();
                let text = field.text().await.map_err(|e| bad(e.body_text()))?;
                meta.insert(name, text);
            }
            Some("file") => {
                let key = key
                    .take()
                    .or_else(|| field.file_name().map(str::to_string))
                    .ok_or_else(|| bad("a `key` field (or a file name) must come first".into()))?;
                let ct = field.content_type().unwrap_or("application/octet-stream").to_string();
                // Stream the field: a channel between the async multipart parser and the store.
                let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut reader = nimbus_files::body::stream_reader(stream);
                let files = state.files.clone();
                let (p2, b2, who2) = (project.clone(), bucket.clone(), who.clone());
                let store = tokio::spawn(async move {
                    files
                        .call(move |f| {
                            f.put_object(&p2, &b2, &key, &ct, &meta, &who2, None, &mut reader)
                        })
                        .await
                });
                let mut field = field;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            if tx.send(Ok(chunk)).await.is_err() {
                                break; // the store stopped reading (an error it will report)
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(std::io::Error::other(e.body_text()))).await;
                            break;
                        }
                    }
                }
                drop(tx);
                let stored = store.await.map_err(|e| ApiError::internal(&e))??;
                let mut r = (StatusCode::CREATED, Json(view(&stored))).into_response();
                object_headers(r.headers_mut(), &stored);
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(r);
            }
            _ => {}
        }
    }
    Err(bad("the form has no `file` field".into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyRequest {
    /// Default: this bucket.
    source_bucket: Option<String>,
    source_key: String,
    key: String,
    content_type: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

/// Copy an object (the bytes are shared, not rewritten).
#[utoipa::path(post, path = "/v1/projects/{project}/buckets/{bucket}/copy", tag = "files",
    params(("project" = String, Path), ("bucket" = String, Path)), security((), ("admin_token" = [])),
    request_body(content = CopyRequest, content_type = "application/json"),
    responses((status = 201, body = schema::ObjectInfo)))]
pub(crate) async fn copy_object(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
    body: Result<Json<CopyRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let ((project, bucket), c) = (path(p)?, json_body(body)?);
    let who = principal(&state, &project, &headers, &in_process).await?;
    let stored = state
        .files
        .call(move |f| {
            let src_bucket = c.source_bucket.unwrap_or_else(|| bucket.clone());
            let replace = match (c.content_type, c.metadata) {
                (None, None) => None,
                (ct, m) => {
                    let src = f.head_object(&project, &src_bucket, &c.source_key, &who)?;
                    Some((ct.unwrap_or(src.content_type), m.unwrap_or(src.metadata)))
                }
            };
            f.copy_object(&project, &src_bucket, &c.source_key, &bucket, &c.key, replace, &who)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view(&stored))).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignRequest {
    key: String,
    /// `GET` (default) or `PUT`.
    #[serde(default = "default_method")]
    method: String,
    /// Seconds from now (default 900).
    #[serde(default = "default_expiry")]
    expires_in: i64,
}

fn default_method() -> String {
    "GET".into()
}

fn default_expiry() -> i64 {
    900
}

/// Sign a URL (service callers): whoever holds it may GET (or PUT) that one key until it expires.
#[utoipa::path(post, path = "/v1/projects/{project}/buckets/{bucket}/sign", tag = "files",
    params(("project" = String, Path), ("bucket" = String, Path)), security((), ("admin_token" = [])),
    request_body(content = SignRequest, content_type = "application/json"),
    responses((status = 200, body = schema::SignedUrl)))]
pub(crate) async fn sign_url(
    State(state): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    in_process: InProcess,
    body: Result<Json<SignRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let ((project, bucket), r) = (path(p)?, json_body(body)?);
    let who = principal(&state, &project, &headers, &in_process).await?;
    if !matches!(who, Principal::Service { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "signing URLs needs a service key or the admin token",
        ));
    }
    let method = r.method.to_ascii_uppercase();
    // Checked: a stranger's huge `expires_in` must be a 400, not an overflow (schemathesis
    // found the panic); the service rejects anything past its longest validity anyway.
    let expires = (now_millis() / 1000)
        .checked_add(r.expires_in)
        .ok_or_else(|| ApiError::bad_request("invalid_input", "expires_in is out of range"))?;
    let signature = state.files.sign(&project, &method, &bucket, &r.key, expires)?;
    let encoded: String = percent_encoding::utf8_percent_encode(&r.key, KEY_ENCODE).to_string();
    let url = format!(
        "/v1/projects/{project}/buckets/{bucket}/objects/{encoded}?expires={expires}&signature={signature}"
    );
    Ok(Json(json!({ "url": url, "method": method, "expires": expires })))
}

/// Everything but unreserved characters and `/` is escaped in a key's URL path.
const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        use nimbus_store::objects::ObjectError as O;
        let (status, code) = match &e {
            FilesError::InvalidBucket(_) => (StatusCode::BAD_REQUEST, "invalid_bucket"),
            FilesError::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
            FilesError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            FilesError::ContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type_not_allowed")
            }
            FilesError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            FilesError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            FilesError::BadSignature => (StatusCode::FORBIDDEN, "invalid_signature"),
            FilesError::Expired => (StatusCode::FORBIDDEN, "signature_expired"),
            FilesError::TooManyBuckets(_) => (StatusCode::CONFLICT, "too_many_buckets"),
            FilesError::StorageFull(full) => return crate::error::storage_full(full),
            FilesError::Object(o) => match o {
                O::NoSuchBucket(_) | O::NoSuchKey(_) | O::NoSuchUpload(_) => {
                    (StatusCode::NOT_FOUND, "not_found")
                }
                O::BucketExists(_) => (StatusCode::CONFLICT, "bucket_exists"),
                O::BucketNotEmpty(_) => (StatusCode::CONFLICT, "bucket_not_empty"),
                O::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
                O::QuotaExceeded { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded"),
                O::RangeNotSatisfiable { .. } => {
                    (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
                }
                O::InvalidPart(_) => (StatusCode::BAD_REQUEST, "invalid_part"),
                O::Body(_) => (StatusCode::BAD_REQUEST, "body_failed"),
                O::Store(_) => return ApiError::internal(&e),
            },
            FilesError::Internal(_) => return ApiError::internal(&e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Shapes of the object endpoints' bodies, for the OpenAPI document.
pub(crate) mod schema {
    use utoipa::ToSchema;

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct ObjectInfo {
        key: String,
        size: u64,
        content_type: String,
        /// MD5 hex of the bytes (multipart: MD5 of the parts' MD5s, then `-<parts>`).
        etag: String,
        /// Milliseconds since the Unix epoch.
        created_at: i64,
        metadata: std::collections::BTreeMap<String, String>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct ObjectPage {
        objects: Vec<ObjectInfo>,
        common_prefixes: Vec<String>,
        /// Pass as `cursor` for the next page; null on the last.
        cursor: Option<String>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct FormUpload {
        /// The object key (default: the file's name). Must come before `file`.
        key: Option<String>,
        #[schema(value_type = String, format = Binary)]
        file: Vec<u8>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct SignedUrl {
        /// A path with `?expires=&signature=`, relative to the server.
        url: String,
        method: String,
        /// Unix seconds.
        expires: i64,
    }
}
