//! The document database over HTTP.
//!
//! - Management (admin token or a service key, like the rest of `/v1`): `/v1/collections`
//!   create, list, show, replace (schema, rules, indexes), delete, and `explain`.
//! - Data, public to apps under the collection's access rules:
//!   `/v1/projects/{project}/collections/{collection}/documents[/{id}]` and
//!   `/v1/projects/{project}/documents/batch`. The caller is an end user (bearer access token),
//!   anonymous (no credentials, or a public key), or the project's service role (a service key or
//!   the admin token: rules do not apply).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_auth::Claims;
use nimbus_documents::{BatchWrite, CollectionConfig, DocumentView, ListParams, Principal};
use nimbus_store::documents::{Expect, WriteOutcome};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{AppState, Caller};
use crate::data_caller::{DataCaller, data_caller};
use crate::error::{ApiError, ErrorBody};
use crate::in_process::InProcess;

/// The caller of a data endpoint, verified for `project` (see `data_caller`).
pub(crate) async fn principal(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
    in_process: &InProcess,
) -> Result<Principal, ApiError> {
    let in_process = in_process.as_ref().map(|axum::Extension(c)| c);
    Ok(match data_caller(state, project, headers, in_process).await? {
        DataCaller::User(auth) => Principal::User(auth),
        DataCaller::Anonymous => Principal::anonymous(),
        DataCaller::Admin | DataCaller::ServiceKey { .. } | DataCaller::Function { .. } => {
            Principal::Service
        }
    })
}

/// The `auth` value rules see for a signed-in user.
pub(crate) fn user_principal(claims: &Claims) -> Principal {
    Principal::User(crate::data_caller::user_auth(claims))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

async fn body_bytes(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit.saturating_add(1)).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    })
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn with_etag(status: StatusCode, view: DocumentView) -> Response {
    let tag = etag(view.revision);
    let mut r = (status, Json(view)).into_response();
    r.headers_mut().insert(header::ETAG, tag);
    r
}

/// `If-Match`: `*` (exists) or a revision, quoted or not.
fn if_match(headers: &HeaderMap) -> Result<Option<Expect>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let bad = || {
        ApiError::bad_request(
            "invalid_precondition",
            "If-Match is `*` or a revision ETag like \"3\"",
        )
    };
    let text = v.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some(Expect::Exists));
    }
    let rev = text.trim_start_matches("W/").trim_matches('"').parse::<u64>().map_err(|_| bad())?;
    Ok(Some(Expect::Revision(rev)))
}

fn revision_of(expect: Option<Expect>) -> Option<u64> {
    match expect {
        Some(Expect::Revision(r)) => Some(r),
        _ => None,
    }
}

// -- management -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCollection {
    name: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    rules: Option<Value>,
    #[serde(default)]
    indexes: Option<Value>,
}

/// A collection's configuration as sent; checked field by field by `into_config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CollectionConfigJson {
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    rules: Option<Value>,
    #[serde(default)]
    indexes: Option<Value>,
}

impl CollectionConfigJson {
    fn into_config(self) -> Result<CollectionConfig, ApiError> {
        let v = json!({
            "schema": self.schema,
            "rules": self.rules.unwrap_or(json!({})),
            "indexes": self.indexes.unwrap_or(json!([])),
        });
        serde_json::from_value(v).map_err(|e| ApiError::bad_request("invalid_input", e.to_string()))
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("invalid_input", e.to_string()))
}

/// Limit on management bodies (schemas, rules).
const CONFIG_BODY_LIMIT: usize = 256 << 10;

/// Create a collection: optional JSON Schema, access rules and indexes.
#[utoipa::path(post, path = "/v1/collections", tag = "documents",
    request_body(content = schema::NewCollection, content_type = "application/json"),
    responses((status = 201, body = schema::CollectionInfo),
              (status = 409, description = "the collection exists", body = ErrorBody)))]
pub(crate) async fn create_collection(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: NewCollection = parse_body(&body_bytes(body, CONFIG_BODY_LIMIT).await?)?;
    let config =
        CollectionConfigJson { schema: body.schema, rules: body.rules, indexes: body.indexes }
            .into_config()?;
    let c = state.documents.create_collection(&caller.project, &body.name, &config).await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

/// The project's collections.
#[utoipa::path(get, path = "/v1/collections", tag = "documents",
    responses((status = 200, body = schema::CollectionList)))]
pub(crate) async fn list_collections(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let list = state.documents.list_collections(&caller.project).await?;
    Ok(Json(json!({ "collections": list })).into_response())
}

/// One collection's configuration.
#[utoipa::path(get, path = "/v1/collections/{name}", tag = "documents",
    params(("name" = String, Path)), responses((status = 200, body = schema::CollectionInfo)))]
pub(crate) async fn show_collection(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.documents.get_collection(&caller.project, &name).await?).into_response())
}

/// Replace a collection's schema, rules and indexes.
#[utoipa::path(put, path = "/v1/collections/{name}", tag = "documents",
    params(("name" = String, Path)),
    request_body(content = schema::CollectionConfig, content_type = "application/json"),
    responses((status = 200, body = schema::CollectionInfo)))]
pub(crate) async fn replace_collection(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: CollectionConfigJson = parse_body(&body_bytes(body, CONFIG_BODY_LIMIT).await?)?;
    let c = state.documents.update_collection(&caller.project, &name, &body.into_config()?).await?;
    Ok(Json(c).into_response())
}

/// Delete a collection and its documents.
#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "documents",
    params(("name" = String, Path)), responses((status = 204, description = "deleted")))]
pub(crate) async fn delete_collection(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.documents.delete_collection(&caller.project, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("collection {name} not found")))
    }
}

/// How the store would run a list query: the declared index it uses and the plan.
#[utoipa::path(get, path = "/v1/collections/{name}/explain", tag = "documents",
    params(("name" = String, Path), schema::ListQuery),
    responses((status = 200, body = schema::Plan)))]
pub(crate) async fn explain(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(q)?;
    Ok(Json(state.documents.explain(&caller.project, &name, &params).await?).into_response())
}

// -- documents --------------------------------------------------------------------------------

/// Query a collection: filter, sort, cursor pagination, projection, count. The `list` rule
/// filters the results.
#[utoipa::path(get, path = "/v1/projects/{project}/collections/{collection}/documents",
    tag = "documents", params(("project" = String, Path), ("collection" = String, Path), schema::ListQuery), security((), ("admin_token" = [])),
    responses((status = 200, body = schema::DocumentPage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path((project, coll)): Path<(String, String)>,
    headers: HeaderMap,
    in_process: InProcess,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(q)?;
    let who = principal(&state, &project, &headers, &in_process).await?;
    Ok(Json(state.documents.list(&project, &coll, &params, &who).await?).into_response())
}

/// Create a document with a server-assigned id.
#[utoipa::path(post, path = "/v1/projects/{project}/collections/{collection}/documents",
    tag = "documents", params(("project" = String, Path), ("collection" = String, Path)), security((), ("admin_token" = [])),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 201, body = schema::Document,
               headers(("etag" = String), ("location" = String)))))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Path((project, coll)): Path<(String, String)>,
    headers: HeaderMap,
    in_process: InProcess,
    body: Body,
) -> Result<Response, ApiError> {
    let max = state.documents.config().max_document_bytes;
    let bytes = body_bytes(body, max).await?;
    let who = principal(&state, &project, &headers, &in_process).await?;
    let data = nimbus_documents::validate::parse_document(&bytes, max)?;
    let doc = state.documents.create(&project, &coll, None, data, &who).await?;
    let location = format!("/v1/projects/{project}/collections/{coll}/documents/{}", doc.id);
    let mut r = with_etag(StatusCode::CREATED, doc.into());
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// Read a document (`If-None-Match` with its ETag answers 304).
#[utoipa::path(get, path = "/v1/projects/{project}/collections/{collection}/documents/{id}",
    tag = "documents", params(("project" = String, Path), ("collection" = String, Path), ("id" = String, Path)), security((), ("admin_token" = [])),
    responses((status = 200, body = schema::Document, headers(("etag" = String))),
              (status = 304, description = "not modified")))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path((project, coll, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<Response, ApiError> {
    let who = principal(&state, &project, &headers, &in_process).await?;
    let doc = state.documents.get(&project, &coll, &id, &who).await?;
    if let Some(v) = headers.get(header::IF_NONE_MATCH)
        && v.as_bytes() == etag(doc.revision).as_bytes()
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, etag(doc.revision));
        return Ok(r);
    }
    Ok(with_etag(StatusCode::OK, doc.into()))
}

/// Create or replace a document (`If-Match` makes it conditional, `If-None-Match: *` creates
/// only).
#[utoipa::path(put, path = "/v1/projects/{project}/collections/{collection}/documents/{id}",
    tag = "documents", params(("project" = String, Path), ("collection" = String, Path), ("id" = String, Path)), security((), ("admin_token" = [])),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = schema::Document, headers(("etag" = String))),
              (status = 201, body = schema::Document, headers(("etag" = String))),
              (status = 412, description = "a precondition failed", body = ErrorBody)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path((project, coll, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    in_process: InProcess,
    body: Body,
) -> Result<Response, ApiError> {
    let max = state.documents.config().max_document_bytes;
    let bytes = body_bytes(body, max).await?;
    let who = principal(&state, &project, &headers, &in_process).await?;
    let mut expect = if_match(&headers)?.unwrap_or(Expect::Any);
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.as_bytes() != b"*" {
            return Err(ApiError::bad_request(
                "invalid_precondition",
                "on a write, If-None-Match takes only `*` (create if absent)",
            ));
        }
        expect = Expect::Absent;
    }
    let data = nimbus_documents::validate::parse_document(&bytes, max)?;
    let out = state.documents.put(&project, &coll, &id, data, expect, &who).await?;
    Ok(match out {
        WriteOutcome::Created(d) => with_etag(StatusCode::CREATED, d.into()),
        WriteOutcome::Updated(d) | WriteOutcome::Deleted(d) => with_etag(StatusCode::OK, d.into()),
    })
}

/// Apply a JSON merge patch (RFC 7386).
#[utoipa::path(patch, path = "/v1/projects/{project}/collections/{collection}/documents/{id}",
    tag = "documents", params(("project" = String, Path), ("collection" = String, Path), ("id" = String, Path)), security((), ("admin_token" = [])),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = schema::Document, headers(("etag" = String))),
              (status = 412, description = "a precondition failed", body = ErrorBody)))]
pub(crate) async fn patch(
    State(state): State<AppState>,
    Path((project, coll, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    in_process: InProcess,
    body: Body,
) -> Result<Response, ApiError> {
    let max = state.documents.config().max_document_bytes;
    let bytes = body_bytes(body, max).await?;
    let who = principal(&state, &project, &headers, &in_process).await?;
    let patch = parse_json(&bytes)?;
    let rev = revision_of(if_match(&headers)?);
    let doc = state.documents.patch(&project, &coll, &id, patch, rev, &who).await?;
    Ok(with_etag(StatusCode::OK, doc.into()))
}

/// Delete a document.
#[utoipa::path(delete, path = "/v1/projects/{project}/collections/{collection}/documents/{id}",
    tag = "documents", params(("project" = String, Path), ("collection" = String, Path), ("id" = String, Path)), security((), ("admin_token" = [])),
    responses((status = 204, description = "deleted"),
              (status = 412, description = "a precondition failed", body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((project, coll, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    in_process: InProcess,
) -> Result<StatusCode, ApiError> {
    let who = principal(&state, &project, &headers, &in_process).await?;
    let rev = revision_of(if_match(&headers)?);
    state.documents.delete(&project, &coll, &id, rev, &who).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    writes: Vec<BatchWrite>,
}

/// Writes across collections that commit together or not at all.
#[utoipa::path(post, path = "/v1/projects/{project}/documents/batch", tag = "documents",
    params(("project" = String, Path)), security((), ("admin_token" = [])),
    request_body(content = schema::Batch, content_type = "application/json"),
    responses((status = 200, body = schema::BatchResults),
              (status = 409, description = "a write's condition failed", body = ErrorBody),
              (status = 412, description = "a precondition failed", body = ErrorBody)))]
pub(crate) async fn batch(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    in_process: InProcess,
    body: Body,
) -> Result<Response, ApiError> {
    let max = state.documents.config().max_document_bytes;
    let bytes = body_bytes(body, max.saturating_mul(8)).await?;
    let who = principal(&state, &project, &headers, &in_process).await?;
    let batch: Batch = parse_body(&bytes)?;
    let outcomes = state.documents.batch(&project, batch.writes, &who).await?;
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|o| {
            let (kind, d) = match o {
                WriteOutcome::Created(d) => ("created", d),
                WriteOutcome::Updated(d) => ("updated", d),
                WriteOutcome::Deleted(d) => ("deleted", d),
            };
            json!({ "result": kind, "document": DocumentView::from(d) })
        })
        .collect();
    Ok(Json(json!({ "results": results })).into_response())
}

/// Shapes for the OpenAPI document only: the handlers work on `serde_json::Value` and the
/// services' own types, which do not depend on utoipa.
pub(crate) mod schema {
    use serde_json::Value;
    use utoipa::{IntoParams, ToSchema};

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct NewCollection {
        /// `[a-z][a-z0-9_]*`, at most 63 characters.
        name: String,
        /// A JSON Schema every document must satisfy.
        schema: Option<Object>,
        /// Rules per operation: `list`, `get`, `create`, `update`, `delete`.
        rules: Option<Object>,
        /// `[{"name": "by_owner", "fields": ["owner", "created"]}]`.
        indexes: Option<Vec<Object>>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct CollectionConfig {
        schema: Option<Object>,
        rules: Option<Object>,
        indexes: Option<Vec<Object>>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct CollectionInfo {
        project: String,
        name: String,
        schema: Option<Object>,
        rules: Object,
        indexes: Vec<Object>,
        created_at: i64,
        updated_at: i64,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct CollectionList {
        collections: Vec<CollectionInfo>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct Plan {
        /// The declared index the query uses, if any.
        index: Option<String>,
        /// True when the query reads the whole collection.
        scan: bool,
        detail: Vec<String>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct Document {
        id: String,
        /// 1 on creation, +1 on every write: the ETag.
        revision: u64,
        /// Milliseconds since the Unix epoch.
        created_at: i64,
        updated_at: i64,
        data: Object,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct DocumentPage {
        documents: Vec<Document>,
        /// Pass as `cursor` for the next page; absent on the last page.
        next_cursor: Option<String>,
        count: Option<u64>,
        /// The declared index the query used.
        index: Option<String>,
        /// True when the query read the whole collection: declare an index.
        scan: bool,
        warning: Option<String>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    #[allow(dead_code)]
    pub(crate) struct ListQuery {
        /// A filter in the rule language, for example `doc.status == "open" && doc.n > 2`.
        filter: Option<String>,
        /// Comma-separated fields, `-` for descending; `$id`, `$created`, `$updated`.
        sort: Option<String>,
        /// The `next_cursor` of the previous page.
        cursor: Option<String>,
        /// Documents per page (default 20, at most 1000).
        limit: Option<u32>,
        /// Comma-separated fields of `data` to return.
        fields: Option<String>,
        /// Also count every match.
        count: Option<bool>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct Batch {
        /// `{"op": "create"|"replace"|"patch"|"delete", "collection", "id", "data"|"patch", "if_match"?}`.
        writes: Vec<Object>,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct BatchResult {
        /// `created`, `updated` or `deleted`.
        result: String,
        document: Document,
    }

    #[derive(ToSchema)]
    #[allow(dead_code)]
    pub(crate) struct BatchResults {
        results: Vec<BatchResult>,
    }

    /// Any JSON object.
    pub(crate) type Object = serde_json::Map<String, Value>;
}
