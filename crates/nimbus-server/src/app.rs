//! The router: `/healthz`, `/metrics`, `/v1/openapi.json`, the admin API under `/v1`, and the
//! function gateway as the fallback for every other path.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use nimbus_auth::{ApiKeyScope, AuthError, AuthService};
use nimbus_functions::FunctionService;
use nimbus_model::lifecycle::ProjectLifecycle;
use nimbus_model::{DEFAULT_PROJECT, validate_project};
use subtle::ConstantTimeEq;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api;
use crate::error::ApiError;
use crate::gateway;

/// Header that picks the project an admin request acts on (default: the default project).
pub const PROJECT_HEADER: &str = "x-nimbus-project";

pub use crate::credentials::API_KEY_HEADER;

/// Who is calling the management API, and for which project; set by the auth middleware.
#[derive(Clone, Debug)]
pub struct Caller {
    pub project: String,
    pub kind: CallerKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallerKind {
    /// The operator's admin token.
    Admin,
    /// A project's service API key.
    Service { key_id: String },
    /// A function of the project, through the in-process API with its invocation's token.
    Function { name: String },
}

/// Shared state of every handler. axum clones it for every request: one reference count here
/// instead of one per service handle (a dozen atomic increments and decrements per request,
/// about 1.5% of the gateway's CPU in a profile of the hello benchmark).
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct AppStateInner {
    pub functions: Arc<FunctionService>,
    pub auth: AuthService,
    pub kv: nimbus_kv::KvService,
    pub documents: nimbus_documents::DocumentService,
    pub files: nimbus_files::FilesService,
    pub triggers: nimbus_triggers::TriggerService,
    pub push: nimbus_push::PushService,
    /// Usage reports and prices.
    pub usage: nimbus_functions::usage::UsageService,
    /// Project deletion over the services' parts (`DELETE /v1/projects/{p}`, resumed at start).
    pub projects: nimbus_auth::ProjectDeletion,
    admin_token: Arc<str>,
    /// `<project>.<base_domain>` host names route to that project's functions.
    pub base_domain: Arc<str>,
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Turns true when the server starts shutting down: long-lived streams (log followers) end
    /// then, so graceful shutdown does not wait on them forever.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
    /// The listener's connection metrics, rendered at `/metrics` beside the services' own.
    pub connections: Arc<crate::listener::ConnectionMetrics>,
    /// File storage's request and byte counters (REST and S3).
    pub files_metrics: Arc<crate::files_metrics::FilesMetrics>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        functions: Arc<FunctionService>,
        auth: AuthService,
        kv: nimbus_kv::KvService,
        documents: nimbus_documents::DocumentService,
        files: nimbus_files::FilesService,
        triggers: nimbus_triggers::TriggerService,
        push: nimbus_push::PushService,
        usage: nimbus_functions::usage::UsageService,
        admin_token: String,
        config: &crate::ServerConfig,
        shutting_down: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        // The order of a project's deletion, after its tombstone (keys and tokens already refused,
        // the project found nowhere): functions first, so its routes stop answering and nothing
        // of it runs; documents (and realtime subscribers); functions again, in case a deploy
        // that passed the project check before the tombstone landed after the first pass; KV
        // after functions, so that no function writes new entries; files, triggers, push. Usage
        // after all of them: invocations have stopped (so no record adds usage afterwards), the
        // data services' deletes have updated the stored-bytes row (their triggers) and push its
        // sent count; it then retires the history and drops the quotas, in the store and in
        // memory. The project row and identity's rows go last, so an interrupted deletion can be
        // resumed.
        let fns: Arc<dyn ProjectLifecycle> = functions.clone();
        let parts: Vec<Arc<dyn ProjectLifecycle>> = vec![
            fns.clone(),
            Arc::new(documents.clone()),
            fns,
            Arc::new(kv.clone()),
            Arc::new(files.clone()),
            Arc::new(triggers.clone()),
            Arc::new(push.clone()),
            Arc::new(usage.clone()),
        ];
        let projects = nimbus_auth::ProjectDeletion::new(auth.clone(), parts);
        AppState(Arc::new(AppStateInner {
            functions,
            auth,
            kv,
            documents,
            files,
            triggers,
            push,
            usage,
            projects,
            admin_token: admin_token.into(),
            base_domain: config.base_domain.as_str().into(),
            trusted_proxies: config.trusted_proxies.clone().into(),
            shutting_down,
            connections: Default::default(),
            files_metrics: Default::default(),
        }))
    }

    /// Whether `presented` is the operator's admin token (constant-time).
    pub(crate) fn is_admin_token(&self, presented: &str) -> bool {
        bool::from(presented.as_bytes().ct_eq(self.admin_token.as_bytes()))
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_signal(self) {
        let mut down = self.shutting_down.clone();
        let _ = down.wait_for(|down| *down).await;
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nimbus API",
        description = "Manage and invoke functions on a Nimbus server. Every /v1 endpoint needs \
                       `Authorization: Bearer <admin token>`; an admin request acts on the \
                       project named by the `X-Nimbus-Project` header (default: `default`). \
                       Errors are \
                       `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}`."
    ),
    paths(api::functions::invoke, api::kv::list_buckets, api::kv::list_keys,
          api::kv::delete_bucket, api::kv::get_value, api::kv::put_value, api::kv::delete_value,
          api::kv::op, api::files::list_buckets, api::files::create_bucket,
          api::files::show_bucket, api::files::update_bucket, api::files::delete_bucket,
          api::files::create_s3_key, api::files::list_s3_keys, api::files::delete_s3_key,
          api::files::list_objects, api::files::form_upload, api::files::get_object,
          api::files::put_object, api::files::delete_object, api::files::copy_object,
          api::files::sign_url, api::push::m_vapid_key, api::push::m_list,
          api::push::m_subscribe, api::push::m_get, api::push::m_delete, api::push::m_join,
          api::push::m_leave, api::push::m_sub_deliveries, api::push::m_sub_replay,
          api::push::m_send, api::push::m_message, api::push::m_msg_deliveries,
          api::push::m_msg_replay, api::push::d_vapid_key, api::push::d_list,
          api::push::d_subscribe, api::push::d_get, api::push::d_delete, api::push::d_join,
          api::push::d_leave),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth),
    security(("admin_token" = [])),
    tags((name = "functions", description = "Deploy, version, configure and invoke functions"),
         (name = "projects", description = "Projects (tenants) and their API keys"),
         (name = "users", description = "A project's end users, as its operator sees them"),
         (name = "auth", description = "End-user sign-up, sign-in and sessions (public)"),
         (name = "invocations", description = "Invocation records and logs"),
         (name = "kv", description = "The project's key-value buckets (docs/kv.md)"),
         (name = "documents", description = "Collections and documents (docs/documents.md). The \
                                             data endpoints are public to apps: end users with \
                                             their access token, anonymous callers, or the \
                                             service role, under each collection's rules"),
         (name = "files", description = "File storage (docs/files.md): buckets and S3 access keys \
                                         (management), and objects, public to apps under each \
                                         bucket's access settings"),
         (name = "triggers", description = "Event delivery to functions: subscriptions, \
                                            deliveries and dead letters, queues, asynchronous \
                                            invocations (docs/triggers.md)"),
         (name = "push", description = "Push notifications (docs/push.md): Web Push \
                                        subscriptions and topics, sends and their delivery \
                                        records (management); the VAPID key and end users' own \
                                        subscriptions (public to apps)"),
         (name = "usage", description = "Metered usage and its cost (docs/usage.md)"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Add the error statuses every operation can answer with but no handler spells out: 401/403 on
/// authenticated endpoints, and the body rejections (400, 413, 415, 422) on JSON bodies.
fn document_common_responses(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::Operation;
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
            .build()
    };
    let add = |op: &mut Operation, status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error(description).into());
    };
    for item in openapi.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
        ];
        for op in ops.into_iter().flatten() {
            let public = op
                .security
                .as_ref()
                .is_some_and(|reqs| reqs.iter().all(|r| *r == SecurityRequirement::default()));
            if !public {
                add(op, "400", "bad request (for example an invalid X-Nimbus-Project)");
                add(op, "401", "missing, malformed or invalid credentials");
                add(op, "403", "the credentials may not do this");
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                add(op, "400", "a path or query parameter is not valid");
                add(op, "404", "not found");
            }
            let json_body = op.request_body.as_ref().is_some_and(|body| match body {
                utoipa::openapi::RefOr::T(body) => body.content.contains_key("application/json"),
                utoipa::openapi::RefOr::Ref(_) => true,
            });
            if json_body {
                add(op, "400", "the body is not valid JSON");
                add(op, "413", "the body is too large");
                add(op, "415", "the body is not `application/json`");
                add(op, "422", "the JSON does not have the expected shape");
            }
        }
    }
}

/// Largest JSON body of a management request (component uploads have their own limit).
const MANAGEMENT_BODY_LIMIT: usize = 1 << 20;

/// Largest push request body: a subscription, or a message of at most 4 KiB (base64 in JSON).
const PUSH_BODY_LIMIT: usize = 64 << 10;

/// Build the whole application; tests call this with a state and `oneshot` requests.
pub fn router(state: AppState) -> Router {
    // Component uploads may be large; every other management body is small JSON.
    let uploads = OpenApiRouter::new()
        .routes(routes!(api::functions::list, api::functions::deploy))
        .layer(api::functions::deploy_body_limit());
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(uploads)
        .routes(routes!(api::functions::show, api::functions::delete))
        .routes(routes!(api::functions::versions))
        .routes(routes!(api::functions::rollback))
        .routes(routes!(api::functions::set_secret, api::functions::delete_secret))
        .routes(routes!(api::invocations::logs))
        .routes(routes!(api::invocations::list))
        .routes(routes!(api::usage::report))
        .routes(routes!(api::usage::export))
        .routes(routes!(api::usage::get_quotas, api::usage::set_quotas, api::usage::delete_quotas))
        .routes(routes!(api::projects::create, api::projects::list))
        .routes(routes!(api::projects::delete))
        .routes(routes!(api::projects::create_key, api::projects::list_keys))
        .routes(routes!(api::projects::revoke_key))
        .routes(routes!(api::users::list))
        .routes(routes!(api::users::show, api::users::update, api::users::delete))
        .routes(routes!(api::users::revoke_sessions))
        .routes(routes!(api::users::events))
        .routes(routes!(api::users::outbox))
        .routes(routes!(api::documents::list_collections, api::documents::create_collection))
        .routes(routes!(
            api::documents::show_collection,
            api::documents::replace_collection,
            api::documents::delete_collection
        ))
        .routes(routes!(api::documents::explain))
        .routes(routes!(api::triggers::list_triggers))
        .routes(routes!(api::triggers::list_deliveries, api::triggers::purge_all))
        .routes(routes!(api::triggers::show_delivery, api::triggers::purge_one))
        .routes(routes!(api::triggers::replay_one))
        .routes(routes!(api::triggers::replay_all))
        .routes(routes!(api::triggers::list_queues))
        .routes(routes!(api::triggers::publish))
        .routes(routes!(api::triggers::async_status))
        .split_for_parts();
    // End-user authentication: public, outside the management middleware.
    let (public, public_doc) = OpenApiRouter::new()
        .routes(routes!(api::auth::signup))
        .routes(routes!(api::auth::signin))
        .routes(routes!(api::auth::anonymous))
        .routes(routes!(api::auth::refresh))
        .routes(routes!(api::auth::signout))
        .routes(routes!(api::auth::signout_all))
        .routes(routes!(api::auth::user))
        .routes(routes!(api::auth::upgrade))
        .routes(routes!(api::auth::request_verification))
        .routes(routes!(api::auth::verify_email))
        .routes(routes!(api::auth::request_reset))
        .routes(routes!(api::auth::reset_password))
        .routes(routes!(api::auth::jwks))
        .split_for_parts();
    // Documents: public to apps, under each collection's access rules.
    let (data, data_doc) = OpenApiRouter::new()
        .routes(routes!(api::documents::list, api::documents::create))
        .routes(routes!(
            api::documents::get,
            api::documents::put,
            api::documents::patch,
            api::documents::delete
        ))
        .routes(routes!(api::documents::batch))
        .split_for_parts();
    let mut openapi = openapi;
    openapi.merge(public_doc);
    openapi.merge(data_doc);
    document_common_responses(&mut openapi);
    let openapi = Arc::new(openapi);

    // axum's own rejections (malformed JSON, wrong content type, bad path or query) become the
    // JSON error shape. Not on the invoke routes: those answer with the function's own response.
    let api = api.layer(middleware::map_response(crate::error::json_rejections));
    let public = public.layer(middleware::map_response(crate::error::json_rejections));
    let data = data.layer(middleware::map_response(crate::error::json_rejections));
    let admin = api
        .route("/v1/functions/{name}/invoke", any(api::functions::invoke))
        .route("/v1/functions/{name}/invoke/{*path}", any(api::functions::invoke))
        .layer(DefaultBodyLimit::max(MANAGEMENT_BODY_LIMIT))
        // After the upload limit: KV bounds its bodies itself, with the JSON error shape.
        .merge(api::kv::router())
        .merge(api::files::management_router().layer(DefaultBodyLimit::max(MANAGEMENT_BODY_LIMIT)))
        .merge(api::push::management_router().layer(DefaultBodyLimit::max(PUSH_BODY_LIMIT)))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));

    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(admin)
        .merge(public)
        .merge(data)
        // Files: public to apps, under each bucket's access settings; uploads stream unbounded
        // by the management limit (the bucket's limits apply while streaming).
        .merge(api::files::data_router().layer(middleware::from_fn_with_state(
            state.files_metrics.clone(),
            crate::files_metrics::rest_layer,
        )))
        // Push: the VAPID key and end users' own subscriptions.
        .merge(api::push::data_router().layer(DefaultBodyLimit::max(PUSH_BODY_LIMIT)))
        // Realtime: public to apps, under each collection's access rules.
        .route("/v1/projects/{project}/realtime/tickets", post(api::realtime::ticket))
        .route("/v1/projects/{project}/realtime/sse", get(api::realtime::sse))
        .route("/v1/projects/{project}/realtime/ws", get(api::realtime::ws))
        .route("/v1", any(api_not_found))
        .route("/v1/{*rest}", any(api_not_found))
        .fallback(gateway::handle)
        .with_state(state)
}

/// Whether `path` is one of Nimbus's own (what [`router`] routes: `/healthz`, `/metrics` and
/// everything under `/v1`); every other path goes to the function gateway. Functions cannot
/// claim these paths (`nimbus_model::RESERVED_PREFIXES`).
pub(crate) fn is_platform_path(path: &str) -> bool {
    path == "/healthz" || path == "/metrics" || path == "/v1" || path.starts_with("/v1/")
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// `/metrics` on the main listener: it names every project and function, so it needs the admin
/// token (Prometheus sends it with `authorization: {credentials_file: ...}`). A separate listener
/// (`--metrics-listen`) serves it without one, for scrapers on a private interface.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match crate::credentials::bearer(&headers) {
        Ok(Some(token)) if state.is_admin_token(token) => {
            refresh_metrics(&state).await;
            render_metrics(&state).into_response()
        }
        Ok(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/metrics needs `Authorization: Bearer <admin token>` (or use --metrics-listen)",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn open_metrics(State(state): State<AppState>) -> Response {
    refresh_metrics(&state).await;
    render_metrics(&state).into_response()
}

/// Gauges of durable state that are read from the store when scraped (the push backlog). A
/// failed read leaves the last values and is logged: the scrape still answers.
async fn refresh_metrics(state: &AppState) {
    if let Err(e) = state.push.call(|p| p.refresh_metrics()).await {
        tracing::warn!(error = %e, "reading the push backlog for /metrics");
    }
}

fn render_metrics(state: &AppState) -> impl IntoResponse + use<> {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode_registry(&mut out, &state.functions.metrics().registry)
        .and_then(|()| encode_registry(&mut out, state.connections.registry()))
        .and_then(|()| encode_registry(&mut out, &state.triggers.metrics().registry))
        .and_then(|()| encode_registry(&mut out, state.files_metrics.registry()))
        .and_then(|()| encode_registry(&mut out, &state.push.metrics().registry))
        .and_then(|()| encode_eof(&mut out));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
}

/// The router of the `--metrics-listen` listener: `/metrics` without a token, and `/healthz`.
pub(crate) fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(open_metrics))
        .with_state(state)
}

async fn api_not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no API endpoint {} {}", request.method(), request.uri().path()))
}

/// Authenticate a management request: the admin token (acting on the project named by
/// `X-Nimbus-Project`, default `default`), or a project's service API key (acting on its own
/// project only). Public keys and end-user tokens never reach the management API.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let found = match request.extensions().get::<nimbus_runtime::InProcessCaller>() {
        Some(in_process) => in_process_caller(in_process),
        None => caller(&state, request.headers()).await,
    };
    match found {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// A function calling the management part of the API in-process (collections, KV): as its
/// project's service role with the invocation's token; an end user's token never gets this far.
fn in_process_caller(caller: &nimbus_runtime::InProcessCaller) -> Result<Caller, ApiError> {
    if !caller.service {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this endpoint needs the function's service token (`Authorization: Bearer \
             $NIMBUS_API_TOKEN`); end users cannot use it",
        ));
    }
    Ok(Caller {
        project: caller.project.to_string(),
        kind: CallerKind::Function { name: caller.function.to_string() },
    })
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let bearer = crate::credentials::bearer(headers)?;
    let key = crate::credentials::api_key(headers)?;
    let presented = bearer.or(key).ok_or_else(|| {
        unauthorized("this endpoint needs `Authorization: Bearer <admin token or service key>`")
    })?;
    let asked = match headers.get(PROJECT_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(p)) if validate_project(p).is_ok() => Some(p.to_string()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_project",
                format!("{PROJECT_HEADER} must be a project slug"),
            ));
        }
    };
    if state.is_admin_token(presented) {
        let project = asked.unwrap_or_else(|| DEFAULT_PROJECT.to_string());
        if project != DEFAULT_PROJECT {
            state.auth.get_project_by_slug(&project).await?;
        }
        return Ok(Caller { project, kind: CallerKind::Admin });
    }
    if presented.starts_with("nbk_") {
        let key = state.auth.verify_api_key(presented).await.map_err(|e| match e {
            AuthError::Store(_) | AuthError::Internal(_) => ApiError::from(e),
            _ => unauthorized("the API key is not valid (unknown, revoked or expired)"),
        })?;
        if key.scope != ApiKeyScope::Service {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a public key cannot use the management API; use a service key",
            ));
        }
        if asked.as_deref().is_some_and(|p| p != key.project) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this key belongs to project {:?}", key.project),
            ));
        }
        return Ok(Caller { project: key.project, kind: CallerKind::Service { key_id: key.id } });
    }
    Err(unauthorized("the bearer token is not valid"))
}

impl Caller {
    /// Operator-only actions (creating projects) need the admin token.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.kind {
            CallerKind::Admin => Ok(()),
            CallerKind::Service { .. } | CallerKind::Function { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the operator's admin token may do this",
            )),
        }
    }
}
