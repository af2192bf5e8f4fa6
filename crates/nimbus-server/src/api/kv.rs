//! `/v1/kv`: the project's key-value buckets, over REST (admin token or a service key).
//!
//! - `GET /v1/kv` lists buckets; `DELETE /v1/kv/{bucket}` empties one.
//! - `GET /v1/kv/{bucket}?prefix=&cursor=&limit=` lists keys, a page at a time.
//! - `GET | PUT | DELETE /v1/kv/{bucket}/{key}` read, write (raw body) and delete a value. Keys may
//!   contain `/`: everything after the bucket is the key (percent-decoded).
//! - `POST /v1/kv/{bucket}/{key}/incr?delta=` increments atomically. POST on a key path always
//!   names an operation in its last segment, so every key stays addressable (`POST .../a/incr/incr`
//!   increments key `a/incr`).
//!
//! TTL: `?ttl=<seconds>` or the `X-Nimbus-KV-TTL: <seconds>` header on PUT and incr.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nimbus_kv::KvError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};

/// The TTL header, in seconds (the `ttl` query parameter wins if both are given).
pub(crate) const TTL_HEADER: &str = "x-nimbus-kv-ttl";
/// On a GET of a value with a TTL: when it expires, in milliseconds since the epoch.
pub(crate) const EXPIRES_HEADER: &str = "x-nimbus-kv-expires-at";

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/kv", get(list_buckets))
        .route("/v1/kv/{bucket}", get(list_keys).delete(delete_bucket))
        .route(
            "/v1/kv/{bucket}/{*key}",
            get(get_value).put(put_value).delete(delete_value).post(op),
        )
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BucketInfo {
    name: String,
    /// Live (unexpired) keys.
    keys: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BucketList {
    buckets: Vec<BucketInfo>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KvKeyPage {
    /// Keys in ascending byte order.
    keys: Vec<String>,
    /// Pass as `cursor` to get the next page; null on the last page.
    cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only keys starting with this (literal) prefix.
    #[serde(default)]
    prefix: String,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
    /// Keys per page (default 100, at most 1000).
    limit: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TtlQuery {
    /// Expire the value this many seconds from now.
    ttl: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct IncrQuery {
    /// Added to the stored decimal integer (default 1; may be negative).
    delta: Option<i64>,
    /// Set the entry to expire this many seconds from now (default: keep its expiry).
    ttl: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Incremented {
    value: i64,
}

/// Malformed paths (bad percent-encoding) and query strings answer the JSON error shape.
fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t).map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

fn ttl(query: Option<u64>, headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let secs = match query {
        Some(s) => Some(s),
        None => match headers.get(TTL_HEADER) {
            None => None,
            Some(v) => {
                Some(v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_ttl",
                        format!("{TTL_HEADER} must be whole seconds"),
                    )
                })?)
            }
        },
    };
    Ok(secs.map(Duration::from_secs))
}

/// List the project's buckets that hold at least one live key.
#[utoipa::path(get, path = "/v1/kv", tag = "kv", responses((status = 200, body = BucketList)))]
pub(crate) async fn list_buckets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<BucketList>, ApiError> {
    let buckets = state.kv.call(move |kv| kv.list_buckets(&caller.project)).await?;
    Ok(Json(BucketList {
        buckets: buckets.into_iter().map(|(name, keys)| BucketInfo { name, keys }).collect(),
    }))
}

/// List a bucket's keys, optionally under a prefix, a page at a time.
#[utoipa::path(get, path = "/v1/kv/{bucket}", tag = "kv",
    params(("bucket" = String, Path), ListQuery),
    responses((status = 200, body = KvKeyPage), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    bucket: Result<Path<String>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KvKeyPage>, ApiError> {
    let (bucket, q) = (path(bucket)?, query(q)?);
    let page = state
        .kv
        .call(move |kv| {
            kv.list_keys(&caller.project, &bucket, &q.prefix, q.cursor.as_deref(), q.limit)
        })
        .await?;
    Ok(Json(KvKeyPage { keys: page.keys, cursor: page.next }))
}

/// Delete every key of a bucket.
#[utoipa::path(delete, path = "/v1/kv/{bucket}", tag = "kv", params(("bucket" = String, Path)),
    responses((status = 204, description = "emptied"), (status = 400, body = ErrorBody)))]
pub(crate) async fn delete_bucket(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    bucket: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let bucket = path(bucket)?;
    state.kv.call(move |kv| kv.delete_bucket(&caller.project, &bucket)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read a value: the raw bytes, with `X-Nimbus-KV-Expires-At` if it has a TTL.
#[utoipa::path(get, path = "/v1/kv/{bucket}/{key}", tag = "kv",
    params(("bucket" = String, Path), ("key" = String, Path, description = "may contain `/`")),
    responses((status = 200, description = "the value", content_type = "application/octet-stream",
               body = Vec<u8>),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_value(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (bucket, key) = path(p)?;
    let k = key.clone();
    let found = state.kv.call(move |kv| kv.get(&caller.project, &bucket, &k)).await?;
    let Some(entry) = found else {
        return Err(ApiError::not_found(format!("key {key:?} not found")));
    };
    let mut response =
        ([(header::CONTENT_TYPE, "application/octet-stream")], entry.value).into_response();
    if let Some(at) = entry.expires_at {
        response.headers_mut().insert(EXPIRES_HEADER, HeaderValue::from(at));
    }
    Ok(response)
}

/// Write a value (the raw request body). `If-None-Match: *` writes only if the key is absent
/// (412 otherwise).
#[utoipa::path(put, path = "/v1/kv/{bucket}/{key}", tag = "kv",
    params(("bucket" = String, Path), ("key" = String, Path, description = "may contain `/`"),
           TtlQuery,
           ("x-nimbus-kv-ttl" = Option<u64>, Header, description = "TTL in seconds"),
           ("if-none-match" = Option<String>, Header, description = "`*`: create only")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "written"), (status = 400, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn put_value(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<TtlQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let ((bucket, key), q) = (path(p)?, query(q)?);
    let ttl = ttl(q.ttl, &headers)?;
    let create_only = match headers.get(header::IF_NONE_MATCH) {
        None => false,
        Some(v) if v.as_bytes() == b"*" => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_input",
                "If-None-Match supports only `*` (create if absent)",
            ));
        }
    };
    let limit = state.kv.config().max_value_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("values are limited to {limit} bytes"),
        )
    };
    // Refuse a declared oversize body before reading it; bound the read for the rest.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let value = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            too_large()
        } else {
            ApiError::bad_request("invalid_body", format!("reading the body: {e}"))
        }
    })?;
    let written = state
        .kv
        .call(move |kv| {
            if create_only {
                kv.compare_and_swap(&caller.project, &bucket, &key, None, &value, ttl)
            } else {
                kv.set(&caller.project, &bucket, &key, &value, ttl).map(|()| true)
            }
        })
        .await?;
    if !written {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the key already exists (If-None-Match: *)",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a value. 404 if there was no live value.
#[utoipa::path(delete, path = "/v1/kv/{bucket}/{key}", tag = "kv",
    params(("bucket" = String, Path), ("key" = String, Path, description = "may contain `/`")),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_value(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (bucket, key) = path(p)?;
    let k = key.clone();
    if state.kv.call(move |kv| kv.delete(&caller.project, &bucket, &k)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("key {key:?} not found")))
    }
}

/// Atomically add `delta` (default 1) to the decimal integer stored at the key (a missing key
/// counts as 0) and return the new value. 409 if the value is not an integer or would overflow.
#[utoipa::path(post, path = "/v1/kv/{bucket}/{key}/incr", tag = "kv",
    params(("bucket" = String, Path), ("key" = String, Path, description = "may contain `/`"),
           IncrQuery,
           ("x-nimbus-kv-ttl" = Option<u64>, Header, description = "TTL in seconds")),
    responses((status = 200, body = Incremented), (status = 400, body = ErrorBody),
              (status = 404, description = "unknown operation", body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub(crate) async fn op(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<IncrQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Incremented>, ApiError> {
    let ((bucket, target), q) = (path(p)?, query(q)?);
    let Some(key) = target.strip_suffix("/incr").map(str::to_string) else {
        return Err(ApiError::not_found(
            "POST on a key names an operation: POST /v1/kv/{bucket}/{key}/incr",
        ));
    };
    let ttl = ttl(q.ttl, &headers)?;
    let delta = q.delta.unwrap_or(1);
    let value =
        state.kv.call(move |kv| kv.increment(&caller.project, &bucket, &key, delta, ttl)).await?;
    Ok(Json(Incremented { value }))
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        use nimbus_store::kv::IncrementError;
        let (status, code) = match &e {
            KvError::StorageFull(full) => return crate::error::storage_full(full),
            KvError::InvalidBucket(_) => (StatusCode::BAD_REQUEST, "invalid_bucket"),
            KvError::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
            KvError::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"),
            KvError::InvalidTtl(_) => (StatusCode::BAD_REQUEST, "invalid_ttl"),
            KvError::BatchTooLarge { .. } => (StatusCode::BAD_REQUEST, "batch_too_large"),
            KvError::Increment(IncrementError::NotAnInteger(_)) => {
                (StatusCode::CONFLICT, "not_an_integer")
            }
            KvError::Increment(IncrementError::Overflow(_)) => (StatusCode::CONFLICT, "overflow"),
            KvError::Increment(IncrementError::Store(_))
            | KvError::Store(_)
            | KvError::Internal(_) => return ApiError::internal(&e),
        };
        ApiError::new(status, code, e.to_string())
    }
}
