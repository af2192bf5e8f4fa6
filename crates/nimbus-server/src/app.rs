//! The router: `/healthz`, `/metrics`, `/v1/openapi.json`, the admin API under `/v1`, and the
//! function gateway as the fallback for every other path.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use nimbus_functions::FunctionService;
use nimbus_model::{DEFAULT_PROJECT, LimitPolicy, validate_project};
use subtle::ConstantTimeEq;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api;
use crate::error::ApiError;
use crate::gateway;

/// Header that picks the project an admin request acts on (default: the default project).
pub const PROJECT_HEADER: &str = "x-nimbus-project";

/// Who is calling the management API, and for which project; set by the auth middleware.
#[derive(Clone, Debug)]
pub struct Caller {
    pub project: String,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub functions: Arc<FunctionService>,
    admin_token: Arc<str>,
    pub limits: LimitPolicy,
    /// `<project>.<base_domain>` host names route to that project's functions.
    pub base_domain: Arc<str>,
    /// Turns true when the server starts shutting down: long-lived streams (log followers) end
    /// then, so graceful shutdown does not wait on them forever.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    pub fn new(
        functions: Arc<FunctionService>,
        admin_token: String,
        limits: LimitPolicy,
        base_domain: &str,
        shutting_down: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        AppState {
            functions,
            admin_token: admin_token.into(),
            limits,
            base_domain: base_domain.into(),
            shutting_down,
        }
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
        .split_for_parts();
    let openapi = Arc::new(openapi);

    let admin = api
        .route("/v1/functions/{name}/invoke", any(api::functions::invoke))
        .route("/v1/functions/{name}/invoke/{*path}", any(api::functions::invoke))
        .layer(api::functions::deploy_body_limit())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));

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

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes())) => {
            let project = match request.headers().get(PROJECT_HEADER).map(|v| v.to_str()) {
                None => DEFAULT_PROJECT.to_string(),
                Some(Ok(p)) if validate_project(p).is_ok() => p.to_string(),
                Some(_) => {
                    return ApiError::bad_request(
                        "invalid_project",
                        format!("{PROJECT_HEADER} must be a project slug"),
                    )
                    .into_response();
                }
            };
            let mut request = request;
            request.extensions_mut().insert(Caller { project });
            next.run(request).await
        }
        Some(_) => ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not valid",
        )
        .into_response(),
        None => ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <admin token>`",
        )
        .into_response(),
    }
}
