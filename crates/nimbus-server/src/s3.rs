//! The S3-compatible endpoint (`--s3-listen`), on the `s3s` crate: it parses and serialises the
//! protocol and verifies Signature V4 (headers, presigned URLs, `aws-chunked` uploads); this
//! module maps its operations onto [`FilesService`] with the project of the access key.
//!
//! Its own listener, because SigV4 signs the full path: it cannot sit under a prefix of the main
//! API. Path-style (`/bucket/key`) and virtual-host style (`bucket.<domain>`) both work.
//!
//! s3s leaves abuse limits to its embedder (its README): requests in flight are bounded by a
//! semaphore (a request that waits too long for a slot gets 503 `SlowDown`), XML bodies by
//! `S3Limits::xml_max_body`, object bodies by the bucket's and server's size limits while
//! streaming, and connections by the same accept loop as the main listener (caps, timeouts).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use nimbus_files::{FilesError, FilesService, Op, Principal};
use nimbus_store::objects::{KeyError, ObjectError, ObjectMeta, RangeSpec, S3KeyScope};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::*;
use s3s::host::{S3Host, VirtualHost};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use serde_json::json;

use crate::app::AppState;

/// Bounds of the S3 endpoint.
#[derive(Debug, Clone)]
pub struct S3Limits {
    /// Requests handled at once; more wait up to `queue_timeout`, then get 503 `SlowDown`.
    pub max_concurrent: usize,
    pub queue_timeout: Duration,
    /// Largest XML request body (DeleteObjects with 1000 long keys fits in 2 MiB).
    pub xml_max_body: usize,
    /// Virtual-host style: `bucket.<domain>` names a bucket. Default: the server's base domain.
    pub domain: Option<String>,
    /// Requests per second per access key (the burst is the same number); unsigned requests
    /// share one budget. 0 turns the limit off. Past it: 503 `SlowDown`.
    pub per_key_rate: u32,
}

impl Default for S3Limits {
    fn default() -> Self {
        S3Limits {
            max_concurrent: 256,
            queue_timeout: Duration::from_secs(10),
            xml_max_body: 2 << 20,
            domain: None,
            per_key_rate: 200,
        }
    }
}

#[derive(Clone)]
struct S3State {
    service: S3Service,
    metrics: Arc<crate::files_metrics::FilesMetrics>,
    slots: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

/// The router of the S3 listener: every request goes to s3s, through the concurrency bound.
pub(crate) fn router(state: AppState, limits: &S3Limits, base_domain: &str) -> Router {
    let domain = limits.domain.clone().unwrap_or_else(|| base_domain.to_string());
    // Per-key request budget (s3s leaves rate limits to its embedder): governor's keyed GCRA
    // limiter, as the auth endpoints use.
    let limiter = std::num::NonZeroU32::new(limits.per_key_rate).map(|rate| {
        Arc::new(governor::DefaultKeyedRateLimiter::keyed(governor::Quota::per_second(rate)))
    });
    let mut builder = S3ServiceBuilder::new(NimbusS3 {
        files: state.files.clone(),
        egress: state.usage.egress().clone(),
        limiter,
        checks: Default::default(),
    });
    builder.set_auth(Keys { files: state.files.clone() });
    builder.set_access(Unsigned);
    builder.set_host(Host { domain: domain.to_ascii_lowercase() });
    let mut config = s3s::config::S3Config::default();
    config.xml_max_body_size = limits.xml_max_body;
    // Browser POST uploads are not offered; keep their limits small anyway.
    config.post_object_max_file_size = 0;
    builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(config))));
    let s3 = S3State {
        service: builder.build(),
        metrics: state.files_metrics.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
        wait: limits.queue_timeout,
    };
    Router::new().fallback(handle).with_state(s3)
}

async fn handle(State(s3): State<S3State>, request: Request) -> Response {
    let method = request.method().clone();
    let request = s3.metrics.request_in("s3", request);
    let response = serve(&s3, request).await;
    s3.metrics.response_out("s3", &method, response)
}

async fn serve(s3: &S3State, request: Request) -> Response {
    let permit = match tokio::time::timeout(s3.wait, s3.slots.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        _ => return error_response(s3_error!(SlowDown, "too many requests in flight")),
    };
    // A request without Content-Length or Transfer-Encoding has no body (RFC 9112); say so
    // exactly, since s3s wants a known length for signed payloads and a boxed body hides it.
    let bodiless = !request.headers().contains_key(http::header::CONTENT_LENGTH)
        && !request.headers().contains_key(http::header::TRANSFER_ENCODING);
    let request = request
        .map(|body| if bodiless { s3s::Body::empty() } else { s3s::Body::http_body_unsync(body) });
    match s3.service.call(request).await {
        Ok(response) => {
            // The slot is held until the response head is ready; a streaming download then
            // runs on its own bounded channel.
            drop(permit);
            response.map(axum::body::Body::new).into_response()
        }
        Err(e) => {
            tracing::warn!(error = ?e, "S3 request failed");
            (http::StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn error_response(e: S3Error) -> Response {
    let status = e.status_code().unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>{}</Message></Error>",
        e.code().as_str(),
        e.message().unwrap_or("")
    );
    (status, [(http::header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// Virtual host `bucket.<domain>`; anything else (an IP address, `localhost:9000`) is
/// path-style.
struct Host {
    domain: String,
}

impl S3Host for Host {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let lower = name.to_ascii_lowercase();
        if let Some(bucket) = lower.strip_suffix(&format!(".{}", self.domain))
            && !bucket.is_empty()
        {
            return Ok(VirtualHost::new(self.domain.as_str()).with_bucket(bucket.to_string()));
        }
        Ok(VirtualHost::new(name))
    }
}

/// Which unsigned requests reach the operations at all (s3s refuses every one by default):
/// GetObject and HeadObject, which then read as an anonymous caller under the bucket's access
/// settings (see `NimbusS3::caller`). Signed requests were verified before this.
struct Unsigned;

#[async_trait::async_trait]
impl s3s::access::S3Access for Unsigned {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_some() || matches!(cx.s3_op().name(), "GetObject" | "HeadObject") {
            return Ok(());
        }
        Err(s3_error!(AccessDenied, "sign the request with an access key"))
    }
}

/// Secrets of Nimbus-issued access keys, for s3s's SigV4 verification.
struct Keys {
    files: FilesService,
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let key = access_key.to_string();
        match self.files.call(move |f| f.lookup_s3_key(&key)).await {
            Ok(Some((_, secret))) => Ok(SecretKey::from(secret)),
            Ok(None) => Err(s3_error!(InvalidAccessKeyId)),
            Err(e) => Err(internal(&e)),
        }
    }
}

fn internal(e: &dyn std::fmt::Display) -> S3Error {
    tracing::error!(error = %e, "S3 endpoint: internal error");
    s3_error!(InternalError, "internal error; see the server log")
}

fn to_s3(e: FilesError) -> S3Error {
    let msg = e.to_string();
    let code = match &e {
        FilesError::InvalidBucket(_) => S3ErrorCode::InvalidBucketName,
        FilesError::InvalidKey(KeyError::TooLong(_)) => S3ErrorCode::KeyTooLongError,
        FilesError::InvalidKey(_) | FilesError::Invalid(_) | FilesError::ContentType(_) => {
            S3ErrorCode::InvalidArgument
        }
        FilesError::Forbidden(_)
        | FilesError::Unauthorized(_)
        | FilesError::BadSignature
        | FilesError::Expired => S3ErrorCode::AccessDenied,
        FilesError::TooManyBuckets(_) => S3ErrorCode::TooManyBuckets,
        // S3 has no code for this; s3s passes a custom one through. 403, not 429 or 503: SDKs
        // retry those (boto3 four times, with backoff), and only deleting data frees it.
        FilesError::StorageFull(_) => {
            let mut err = S3Error::with_message(S3ErrorCode::Custom("QuotaExceeded".into()), msg);
            err.set_status_code(http::StatusCode::FORBIDDEN);
            return err;
        }
        FilesError::Object(o) => match o {
            ObjectError::NoSuchBucket(_) => S3ErrorCode::NoSuchBucket,
            ObjectError::NoSuchKey(_) => S3ErrorCode::NoSuchKey,
            ObjectError::NoSuchUpload(_) => S3ErrorCode::NoSuchUpload,
            ObjectError::BucketExists(_) => S3ErrorCode::BucketAlreadyOwnedByYou,
            ObjectError::BucketNotEmpty(_) => S3ErrorCode::BucketNotEmpty,
            ObjectError::TooLarge { .. } | ObjectError::QuotaExceeded { .. } => {
                S3ErrorCode::EntityTooLarge
            }
            ObjectError::RangeNotSatisfiable { .. } => S3ErrorCode::InvalidRange,
            ObjectError::InvalidPart(_) => S3ErrorCode::InvalidPart,
            ObjectError::Body(_) => S3ErrorCode::IncompleteBody,
            ObjectError::Store(_) => return internal(&e),
        },
        FilesError::Internal(_) => return internal(&e),
    };
    S3Error::with_message(code, msg)
}

/// The S3 operations over the files service.
struct NimbusS3 {
    files: FilesService,
    /// GetObject bodies count as the project's file egress.
    egress: Arc<nimbus_functions::usage::EgressMeter>,
    limiter: Option<Arc<governor::DefaultKeyedRateLimiter<String>>>,
    /// Checks since the limiter last dropped idle keys (memory stays bounded by active keys).
    checks: std::sync::atomic::AtomicU64,
}

/// The project unsigned requests address: they name no key, hence no project. Other projects'
/// public buckets are public over REST (`/v1/projects/{p}/buckets/...`).
const ANONYMOUS_PROJECT: &str = "default";

/// The caller's project and identity, from the verified access key.
struct Who {
    project: String,
    principal: Principal,
}

fn etag(meta_etag: &str) -> ETag {
    ETag::Strong(meta_etag.to_string())
}

fn time(millis: i64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64))
}

fn metadata_in(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.map(|m| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()).unwrap_or_default()
}

fn metadata_out(m: &BTreeMap<String, String>) -> Option<Metadata> {
    if m.is_empty() { None } else { Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()) }
}

fn range_in(r: Option<Range>) -> Option<RangeSpec> {
    r.map(|r| match r {
        Range::Int { first, last: Some(last) } => RangeSpec::FromTo(first, last),
        Range::Int { first, last: None } => RangeSpec::From(first),
        Range::Suffix { length } => RangeSpec::Suffix(length),
    })
}

/// A request body as a blocking reader (received ahead in bounded batches; see
/// `api::files::body_reader`).
fn blob_reader(body: Option<StreamingBlob>) -> Box<dyn std::io::Read + Send> {
    match body {
        None => Box::new(std::io::empty()),
        Some(blob) => {
            let stream = blob.map_err(std::io::Error::other);
            Box::new(nimbus_files::body::stream_reader(stream))
        }
    }
}

/// Stream an open object out (bounded channel; see `api::files::body_from_reader`), counting
/// what it hands out as `project`'s file egress.
fn blob_from_reader(
    mut reader: Box<dyn std::io::Read + Send>,
    meter: Arc<nimbus_functions::usage::EgressMeter>,
    project: String,
) -> StreamingBlob {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; 256 << 10];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                        return;
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
    StreamingBlob::wrap(crate::files_metrics::Metered::new(stream, meter, project))
}

/// `If-None-Match` / `If-Modified-Since` of GetObject and HeadObject.
fn not_modified(
    meta: &ObjectMeta,
    if_none_match: Option<&ETagCondition>,
    since: Option<&Timestamp>,
) -> bool {
    if let Some(cond) = if_none_match {
        return cond.is_any() || cond.as_etag().is_some_and(|e| e.value() == meta.etag);
    }
    if let Some(since) = since {
        let since: SystemTime = time::OffsetDateTime::from(since.clone()).into();
        let modified =
            SystemTime::UNIX_EPOCH + Duration::from_secs((meta.created_at.max(0) / 1000) as u64);
        return modified <= since;
    }
    false
}

/// `If-Match`, else `If-Unmodified-Since` of GetObject and HeadObject (RFC 9110 13.2.2, as S3
/// evaluates them): false means 412 `PreconditionFailed`.
fn preconditions_hold(
    meta: &ObjectMeta,
    if_match: Option<&ETagCondition>,
    unmodified_since: Option<&Timestamp>,
) -> bool {
    if let Some(cond) = if_match {
        return cond.is_any() || cond.as_etag().and_then(|e| e.as_strong()) == Some(&meta.etag);
    }
    if let Some(since) = unmodified_since {
        let since: SystemTime = time::OffsetDateTime::from(since.clone()).into();
        let modified =
            SystemTime::UNIX_EPOCH + Duration::from_secs((meta.created_at.max(0) / 1000) as u64);
        return modified <= since;
    }
    true
}

fn precondition_failed() -> S3Error {
    s3_error!(PreconditionFailed, "the object does not match If-Match / If-Unmodified-Since")
}

/// The body reader of a PutObject / UploadPart, checking `Content-MD5` when the client sent one
/// (a mismatch fails the read, so nothing is published).
fn verified_reader(
    body: Option<StreamingBlob>,
    content_md5: Option<&str>,
) -> S3Result<Box<dyn std::io::Read + Send>> {
    let expected = match content_md5 {
        None => None,
        Some(v) => Some(
            crate::api::files::parse_content_md5(v)
                .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not base64 of 16 bytes"))?,
        ),
    };
    Ok(crate::api::files::verify_md5(blob_reader(body), expected))
}

/// A store error, or `BadDigest` when the body failed its `Content-MD5` check.
fn write_error(e: FilesError) -> S3Error {
    if crate::api::files::is_bad_digest(&e) {
        return s3_error!(BadDigest, "the body does not match its Content-MD5; nothing was stored");
    }
    to_s3(e)
}

fn copy_source(src: &CopySource) -> S3Result<(String, String)> {
    match src {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket.to_string(), key.to_string())),
        _ => Err(s3_error!(NotImplemented, "only bucket copy sources are supported")),
    }
}

impl NimbusS3 {
    /// The caller of an operation that needs a signed request.
    async fn who<T>(&self, req: &S3Request<T>) -> S3Result<Who> {
        self.caller(req, false).await
    }

    /// The caller: a verified access key (service role, or for a `public` key an anonymous
    /// caller held to the buckets' access settings), or with `anonymous_ok` (GetObject,
    /// HeadObject) an unsigned request, anonymous on [`ANONYMOUS_PROJECT`]. Each takes one
    /// request from its key's budget.
    async fn caller<T>(&self, req: &S3Request<T>, anonymous_ok: bool) -> S3Result<Who> {
        let Some(creds) = req.credentials.as_ref() else {
            if !anonymous_ok {
                return Err(s3_error!(AccessDenied, "sign the request with an access key"));
            }
            self.take_budget("")?;
            return Ok(Who {
                project: ANONYMOUS_PROJECT.to_string(),
                principal: Principal::anonymous(),
            });
        };
        let key = creds.access_key.clone();
        let found = self.files.call(move |f| f.lookup_s3_key(&key)).await.map_err(to_s3)?;
        let (info, _) = found.ok_or_else(|| s3_error!(InvalidAccessKeyId))?;
        self.take_budget(&info.access_key)?;
        let principal = match info.scope {
            S3KeyScope::Service => {
                Principal::Service { identity: json!({"kind": "s3-key", "id": info.access_key}) }
            }
            // As a public API key: anonymous under the bucket's access settings.
            S3KeyScope::Public => Principal::anonymous(),
        };
        Ok(Who { project: info.project, principal })
    }

    /// The caller of a bucket-management operation: a `service` key only.
    async fn service<T>(&self, req: &S3Request<T>) -> S3Result<Who> {
        let who = self.who(req).await?;
        if !matches!(who.principal, Principal::Service { .. }) {
            return Err(s3_error!(AccessDenied, "this operation needs a service-scope access key"));
        }
        Ok(who)
    }

    /// A non-service caller must pass the bucket's access settings for `op` on `key`.
    async fn check(&self, who: &Who, bucket: &str, op: Op, key: &str) -> S3Result<()> {
        if matches!(who.principal, Principal::Service { .. }) {
            return Ok(());
        }
        let (project, bucket, key, principal) =
            (who.project.clone(), bucket.to_string(), key.to_string(), who.principal.clone());
        self.run(move |f| f.authorize_in(&project, &bucket, op, &principal, &key)).await
    }

    fn take_budget(&self, key: &str) -> S3Result<()> {
        use std::sync::atomic::Ordering;
        let Some(limiter) = &self.limiter else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key.to_string())
            .map_err(|_| s3_error!(SlowDown, "this access key's request rate is over its limit"))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FilesService) -> Result<T, FilesError> + Send + 'static,
    ) -> S3Result<T> {
        self.files.call(f).await.map_err(to_s3)
    }
}

#[async_trait::async_trait]
impl S3 for NimbusS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let who = self.service(&req).await?;
        let buckets = self.run(move |f| f.list_buckets(&who.project)).await?;
        let buckets = buckets
            .into_iter()
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(time(b.created_at)),
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let who = self.service(&req).await?;
        let name = req.input.bucket.clone();
        let location = format!("/{name}");
        self.run(move |f| f.create_bucket(&who.project, &name, &Default::default())).await?;
        Ok(S3Response::new(CreateBucketOutput { location: Some(location) }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let who = self.service(&req).await?;
        let name = req.input.bucket.clone();
        self.run(move |f| f.delete_bucket(&who.project, &name, false, &who.principal)).await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let who = self.who(&req).await?;
        let name = req.input.bucket.clone();
        self.check(&who, &name, Op::List, "").await?;
        self.run(move |f| f.get_bucket(&who.project, &name)).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let who = self.who(&req).await?;
        let name = req.input.bucket.clone();
        self.check(&who, &name, Op::List, "").await?;
        self.run(move |f| f.get_bucket(&who.project, &name)).await?;
        // Empty: us-east-1, what every client assumes of a single-region endpoint.
        Ok(S3Response::new(GetBucketLocationOutput { location_constraint: None }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let ct = input.content_type.unwrap_or_else(|| "application/octet-stream".to_string());
        let metadata = metadata_in(input.metadata);
        let declared = input.content_length.and_then(|n| u64::try_from(n).ok());
        let mut reader = verified_reader(input.body, input.content_md5.as_deref())?;
        let (bucket, key) = (input.bucket, input.key);
        let meta = self
            .files
            .call(move |f| {
                f.put_object(
                    &who.project,
                    &bucket,
                    &key,
                    &ct,
                    &metadata,
                    &who.principal,
                    declared,
                    &mut reader,
                )
            })
            .await
            .map_err(write_error)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&meta.etag)),
            size: Some(meta.size as i64),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let who = self.caller(&req, true).await?;
        let input = req.input;
        let range = range_in(input.range);
        let (bucket, key) = (input.bucket, input.key);
        let project = who.project.clone();
        let data = self
            .run(move |f| f.open_object(&who.project, &bucket, &key, range, &who.principal))
            .await?;
        if !preconditions_hold(
            &data.meta,
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
        ) {
            return Err(precondition_failed());
        }
        if not_modified(&data.meta, input.if_none_match.as_ref(), input.if_modified_since.as_ref())
        {
            return Err(s3_error!(NotModified));
        }
        let meta = &data.meta;
        let len = data.range.end - data.range.start;
        let content_range = range.map(|_| {
            format!("bytes {}-{}/{}", data.range.start, data.range.end.saturating_sub(1), meta.size)
        });
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(len as i64),
            content_range,
            content_type: Some(meta.content_type.clone()),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(time(meta.created_at)),
            metadata: metadata_out(&meta.metadata),
            ..Default::default()
        };
        let mut output = output;
        output.body = Some(blob_from_reader(data.reader, self.egress.clone(), project));
        let mut response = S3Response::new(output);
        if range.is_some() {
            response.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(response)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let who = self.caller(&req, true).await?;
        let input = req.input;
        let (bucket, key) = (input.bucket, input.key);
        let meta =
            self.run(move |f| f.head_object(&who.project, &bucket, &key, &who.principal)).await?;
        if !preconditions_hold(&meta, input.if_match.as_ref(), input.if_unmodified_since.as_ref()) {
            return Err(precondition_failed());
        }
        if not_modified(&meta, input.if_none_match.as_ref(), input.if_modified_since.as_ref()) {
            return Err(s3_error!(NotModified));
        }
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(meta.size as i64),
            content_type: Some(meta.content_type.clone()),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(time(meta.created_at)),
            metadata: metadata_out(&meta.metadata),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let who = self.who(&req).await?;
        let (bucket, key) = (req.input.bucket, req.input.key);
        // S3 answers 204 whether or not the key existed.
        self.run(move |f| f.delete_object(&who.project, &bucket, &key, &who.principal)).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per request"));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let bucket = input.bucket;
        let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
        let results = self
            .run(move |f| {
                Ok(keys
                    .into_iter()
                    .map(|k| {
                        let r = f.delete_object(&who.project, &bucket, &k, &who.principal);
                        (k, r.map(|_| ()))
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, r) in results {
            match r {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject { key: Some(key), ..Default::default() });
                    }
                }
                Err(e) => {
                    let e = to_s3(e);
                    errors.push(Error {
                        code: Some(e.code().as_str().to_string()),
                        key: Some(key),
                        message: e.message().map(str::to_string),
                        version_id: None,
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: if errors.is_empty() { None } else { Some(errors) },
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let from = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => Some(
                hex::decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))?,
            ),
            (None, Some(after)) => Some(format!("{after}\0")),
            (None, None) => None,
        };
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone();
        let bucket = input.bucket.clone();
        let page = if max_keys == 0 {
            Default::default()
        } else {
            let (p, d) = (prefix.clone(), delimiter.clone());
            self.run(move |f| {
                f.list_objects(
                    &who.project,
                    &bucket,
                    &p,
                    d.as_deref(),
                    from,
                    Some(max_keys as u32),
                    &who.principal,
                )
            })
            .await?
        };
        let key_count = (page.objects.len() + page.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.map(hex::encode),
            contents: Some(page.objects.iter().map(object_entry).collect()),
            common_prefixes: Some(
                page.common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        // Marker = start after. A marker that is a common prefix skips its whole group.
        let from = input.marker.as_ref().map(|m| match &delimiter {
            Some(d) if m.ends_with(d.as_str()) && m.starts_with(&prefix) => {
                nimbus_store::objects::prefix_upper_bound(m).unwrap_or_else(|| format!("{m}\0"))
            }
            _ => format!("{m}\0"),
        });
        let max_keys = input.max_keys.unwrap_or(1000).clamp(1, 1000);
        let bucket = input.bucket.clone();
        let (p, d) = (prefix.clone(), delimiter.clone());
        let page = self
            .run(move |f| {
                f.list_objects(
                    &who.project,
                    &bucket,
                    &p,
                    d.as_deref(),
                    from,
                    Some(max_keys as u32),
                    &who.principal,
                )
            })
            .await?;
        let truncated = page.next.is_some();
        // The last entry returned, key or common prefix, whichever sorts last.
        let last_key = page.objects.last().map(|o| o.key.clone());
        let last_prefix = page.common_prefixes.last().cloned();
        let next_marker = if truncated { last_key.max(last_prefix) } else { None };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            marker: input.marker,
            max_keys: Some(max_keys),
            is_truncated: Some(truncated),
            next_marker,
            contents: Some(page.objects.iter().map(object_entry).collect()),
            common_prefixes: Some(
                page.common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str().eq_ignore_ascii_case("REPLACE"));
        let (bucket, key) = (input.bucket, input.key);
        let (ct, metadata) = (input.content_type, metadata_in(input.metadata));
        let meta = self
            .run(move |f| {
                let replace = if replace {
                    let ct = ct.unwrap_or_else(|| "application/octet-stream".into());
                    Some((ct, metadata))
                } else {
                    None
                };
                f.copy_object(
                    &who.project,
                    &src_bucket,
                    &src_key,
                    &bucket,
                    &key,
                    replace,
                    &who.principal,
                )
            })
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta.etag)),
                last_modified: Some(time(meta.created_at)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let ct = input.content_type.unwrap_or_else(|| "application/octet-stream".to_string());
        let metadata = metadata_in(input.metadata);
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let upload = self
            .run(move |f| {
                f.create_upload(&who.project, &bucket, &key, &ct, &metadata, &who.principal)
            })
            .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload.id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let number = u32::try_from(input.part_number)
            .map_err(|_| s3_error!(InvalidArgument, "invalid part number"))?;
        let mut reader = verified_reader(input.body, input.content_md5.as_deref())?;
        let (bucket, key, upload) = (input.bucket, input.key, input.upload_id);
        let part = self
            .files
            .call(move |f| {
                f.put_part(
                    &who.project,
                    &bucket,
                    &key,
                    &upload,
                    number,
                    &who.principal,
                    &mut reader,
                )
            })
            .await
            .map_err(write_error)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&part.etag)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let number = u32::try_from(input.part_number)
            .map_err(|_| s3_error!(InvalidArgument, "invalid part number"))?;
        let range = match &input.copy_source_range {
            None => None,
            Some(r) => Some(
                Range::parse(r)
                    .map(|r| range_in(Some(r)))
                    .map_err(|_| s3_error!(InvalidArgument, "invalid x-amz-copy-source-range"))?
                    .ok_or_else(|| s3_error!(InvalidArgument, "invalid range"))?,
            ),
        };
        let (bucket, key, upload) = (input.bucket, input.key, input.upload_id);
        let part = self
            .run(move |f| {
                let mut src =
                    f.open_object(&who.project, &src_bucket, &src_key, range, &who.principal)?;
                f.put_part(
                    &who.project,
                    &bucket,
                    &key,
                    &upload,
                    number,
                    &who.principal,
                    &mut src.reader,
                )
            })
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&part.etag)),
                last_modified: Some(time(part.created_at)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        let mut parts = Vec::new();
        for p in input.multipart_upload.and_then(|m| m.parts).unwrap_or_default() {
            let number = p
                .part_number
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no valid number"))?;
            let tag = p.e_tag.map(|e| e.value().to_string()).unwrap_or_default();
            parts.push((number, tag));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(s3_error!(InvalidPartOrder));
        }
        let (bucket, key, upload) = (input.bucket.clone(), input.key.clone(), input.upload_id);
        let meta = self
            .run(move |f| {
                f.complete_upload(&who.project, &bucket, &key, &upload, &parts, &who.principal)
            })
            .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag(&meta.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        self.check(&who, &input.bucket, Op::Write, &input.key).await?;
        let (bucket, key, upload) = (input.bucket, input.key, input.upload_id);
        self.run(move |f| f.abort_upload(&who.project, &bucket, &key, &upload)).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let who = self.who(&req).await?;
        let input = req.input;
        self.check(&who, &input.bucket, Op::Write, &input.key).await?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let (bucket, key, upload) =
            (input.bucket.clone(), input.key.clone(), input.upload_id.clone());
        let parts = self.run(move |f| f.list_parts(&who.project, &bucket, &key, &upload)).await?;
        let mut parts: Vec<_> = parts.into_iter().filter(|p| p.number as i32 > marker).collect();
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = if truncated { parts.last().map(|p| p.number as i32) } else { None };
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            next_part_number_marker: next,
            part_number_marker: input.part_number_marker,
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| Part {
                        e_tag: Some(etag(&p.etag)),
                        last_modified: Some(time(p.created_at)),
                        part_number: Some(p.number as i32),
                        size: Some(p.size as i64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let who = self.service(&req).await?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let (bucket, p) = (input.bucket.clone(), prefix.clone());
        let uploads = self.run(move |f| f.list_uploads(&who.project, &bucket, &p)).await?;
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        // The page after (key-marker, upload-id-marker) in listing order (key, then start
        // time): with an upload id, the uploads after that one; with a key only (or an upload
        // id no longer there), the uploads of later keys.
        let km = input.key_marker.as_deref().filter(|k| !k.is_empty());
        let start = match (km, input.upload_id_marker.as_deref()) {
            (None, _) => 0,
            (Some(k), id) => id
                .and_then(|id| uploads.iter().position(|u| u.key == k && u.id == id).map(|i| i + 1))
                .unwrap_or_else(|| uploads.partition_point(|u| u.key.as_str() <= k)),
        };
        let page: Vec<_> = uploads.into_iter().skip(start).collect();
        let truncated = page.len() > max;
        let page: Vec<_> = page.into_iter().take(max).collect();
        let (next_key, next_id) = match page.last() {
            Some(u) if truncated => (Some(u.key.clone()), Some(u.id.clone())),
            _ => (None, None),
        };
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: Some(prefix),
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            uploads: Some(
                page.into_iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.id),
                        initiated: Some(time(u.created_at)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}

fn object_entry(o: &ObjectMeta) -> Object {
    Object {
        e_tag: Some(etag(&o.etag)),
        key: Some(o.key.clone()),
        last_modified: Some(time(o.created_at)),
        size: Some(o.size as i64),
        ..Default::default()
    }
}
