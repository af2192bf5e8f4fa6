//! The router: `/healthz`, `/metrics`, `/v1/openapi.json`, the admin API under `/v1`, and the
//! function gateway as the fallback for every other path.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use nimbus_auth::{ApiKeyScope, AuthError, AuthService};
use nimbus_functions::FunctionService;
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

/// Header carrying an API key, for clients that keep `Authorization` for a user's token.
pub const API_KEY_HEADER: &str = "x-api-key";

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
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub functions: Arc<FunctionService>,
    pub auth: AuthService,
    pub documents: nimbus_documents::DocumentService,
    admin_token: Arc<str>,
    /// `<project>.<base_domain>` host names route to that project's functions.
    pub base_domain: Arc<str>,
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Turns true when the server starts shutting down: long-lived streams (log followers) end
    /// then, so graceful shutdown does not wait on them forever.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    pub fn new(
        functions: Arc<FunctionService>,
        auth: AuthService,
        documents: nimbus_documents::DocumentService,
        admin_token: String,
        config: &crate::ServerConfig,
        shutting_down: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        AppState {
            functions,
            auth,
            documents,
            admin_token: admin_token.into(),
            base_domain: config.base_domain.as_str().into(),
            trusted_proxies: config.trusted_proxies.clone().into(),
            shutting_down,
        }
    }

    /// Whether `presented` is the operator's admin token (constant-time).
    pub(crate) fn is_admin_token(&self, presented: &str) -> bool {
        bool::from(presented.as_bytes().ct_eq(self.admin_token.as_bytes()))
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_signal(mut self) {
        let _ = self.shutting_down.wait_for(|down| *down).await;
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
    paths(api::functions::invoke),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth),
    security(("admin_token" = [])),
    tags((name = "functions", description = "Deploy, version, configure and invoke functions"),
         (name = "projects", description = "Projects (tenants) and their API keys"),
         (name = "users", description = "A project's end users, as its operator sees them"),
         (name = "auth", description = "End-user sign-up, sign-in and sessions (public)"),
         (name = "invocations", description = "Invocation records and logs"))
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

/// Build the whole application; tests call this with a state and `oneshot` requests.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::functions::list, api::functions::deploy))
        .routes(routes!(api::functions::show, api::functions::delete))
        .routes(routes!(api::functions::versions))
        .routes(routes!(api::functions::rollback))
        .routes(routes!(api::functions::set_secret, api::functions::delete_secret))
        .routes(routes!(api::invocations::logs))
        .routes(routes!(api::invocations::list))
        .routes(routes!(api::projects::create, api::projects::list))
        .routes(routes!(api::projects::delete))
        .routes(routes!(api::projects::create_key, api::projects::list_keys))
        .routes(routes!(api::projects::revoke_key))
        .routes(routes!(api::users::list))
        .routes(routes!(api::users::show, api::users::update, api::users::delete))
        .routes(routes!(api::users::revoke_sessions))
        .routes(routes!(api::users::events))
        .routes(routes!(api::users::outbox))
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
    let mut openapi = openapi;
    openapi.merge(public_doc);
    let openapi = Arc::new(openapi);

    let admin = api
        .route("/v1/functions/{name}/invoke", any(api::functions::invoke))
        .route("/v1/functions/{name}/invoke/{*path}", any(api::functions::invoke))
        .route(
            "/v1/collections",
            get(api::documents::list_collections).post(api::documents::create_collection),
        )
        .route(
            "/v1/collections/{name}",
            get(api::documents::show_collection)
                .put(api::documents::replace_collection)
                .delete(api::documents::delete_collection),
        )
        .route("/v1/collections/{name}/explain", get(api::documents::explain))
        .layer(api::functions::deploy_body_limit())
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
        // Documents and realtime: public to apps, under each collection's access rules.
        .route(
            "/v1/projects/{project}/collections/{collection}/documents",
            get(api::documents::list).post(api::documents::create),
        )
        .route(
            "/v1/projects/{project}/collections/{collection}/documents/{id}",
            get(api::documents::get)
                .put(api::documents::put)
                .patch(api::documents::patch)
                .delete(api::documents::delete),
        )
        .route("/v1/projects/{project}/documents/batch", post(api::documents::batch))
        .route("/v1/projects/{project}/realtime/tickets", post(api::realtime::ticket))
        .route("/v1/projects/{project}/realtime/sse", get(api::realtime::sse))
        .route("/v1/projects/{project}/realtime/ws", get(api::realtime::ws))
        .route("/v1", any(api_not_found))
        .route("/v1/{*rest}", any(api_not_found))
        .fallback(gateway::handle)
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.functions.metrics().render(),
    )
}

async fn api_not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no API endpoint {} {}", request.method(), request.uri().path()))
}

/// Authenticate a management request: the admin token (acting on the project named by
/// `X-Nimbus-Project`, default `default`), or a project's service API key (acting on its own
/// project only). Public keys and end-user tokens never reach the management API.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let headers = request.headers().clone();
    match caller(&state, &headers).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .ok_or_else(|| {
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
    if bool::from(presented.as_bytes().ct_eq(state.admin_token.as_bytes())) {
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
            CallerKind::Service { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the operator's admin token may do this",
            )),
        }
    }
}
