//! The HTTP trigger: every request that is not for Nimbus itself is routed to a function, streamed
//! in, and the function's response streamed back with its invocation id.

use axum::body::Body;
use axum::extract::{Request, State};
use std::borrow::Cow;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_auth::{ApiKeyScope, Claims};
use nimbus_functions::{Invoked, RouteMatch};
use nimbus_model::{DEFAULT_PROJECT, validate_project};

use crate::app::AppState;
use crate::error::ApiError;

pub const INVOCATION_ID: HeaderName = HeaderName::from_static("x-nimbus-invocation-id");

/// Requests reach another project's functions under `/@<project>/...` (the prefix is stripped
/// before routing and before the guest sees the path), or by host name `<project>.<base domain>`.
/// Everything else goes to the default project.
pub(crate) async fn handle(State(state): State<AppState>, request: Request) -> Response {
    serve(&state, request).await
}

/// [`handle`] without the router: the main listener calls it directly for every path that is
/// not Nimbus's own.
pub(crate) async fn serve(state: &AppState, mut request: Request) -> Response {
    let project = match resolve_project(&state.base_domain, &mut request) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let method = request.method().clone();
    match state.functions.route(&project, method.as_str(), request.uri().path()) {
        RouteMatch::Found(target) => {
            let identity = match identify(state, &project, request.headers_mut()).await {
                Ok(identity) => identity,
                Err(e) => return e.into_response(),
            };
            if target.info.spec.require_auth && !identity.is_authenticated() {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this function requires a signed-in user or a service key",
                )
                .into_response();
            }
            identity.write(&project, request.headers_mut());
            let invoked = state.functions.invoke(target, request, "http").await;
            respond(invoked)
        }
        RouteMatch::MethodNotAllowed { allowed } => {
            let mut r = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here; allowed: {}", allowed.join(", ")),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            r
        }
        RouteMatch::NotFound => {
            ApiError::not_found(format!("no function is routed at {}", request.uri().path()))
                .into_response()
        }
        RouteMatch::BadPath => {
            ApiError::bad_request("bad_path", "the path is not valid percent-encoded UTF-8")
                .into_response()
        }
    }
}

/// The verified caller of a function, passed to it in `x-nimbus-*` headers.
pub(crate) enum Identity {
    /// No credentials: public functions still run, marked anonymous.
    Anonymous,
    /// A signed-in end user (possibly an anonymous user account).
    User(Arc<Claims>),
    /// A project API key.
    Key(ApiKeyScope),
    /// The operator, through the management API's invoke endpoint.
    Admin,
}

const IDENTITY_PREFIX: &str = "x-nimbus-";
// Constants, so that the names are checked at compile time rather than on every request.
const X_PROJECT: HeaderName = HeaderName::from_static("x-nimbus-project");
const X_AUTH: HeaderName = HeaderName::from_static("x-nimbus-auth");

impl Identity {
    fn is_authenticated(&self) -> bool {
        matches!(self, Identity::User(_) | Identity::Key(ApiKeyScope::Service) | Identity::Admin)
    }

    /// Replace whatever `x-nimbus-*` headers the client sent with the verified identity, so a
    /// function can trust them.
    pub(crate) fn write(&self, project: &str, headers: &mut HeaderMap) {
        // Collecting no names allocates nothing: the usual request pays one scan.
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(IDENTITY_PREFIX))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(&name);
        }
        // hyper sizes the map for the headers it parsed: room for both identity headers at once
        // is one reallocation instead of one per insert.
        headers.reserve(2);
        let project = match project {
            DEFAULT_PROJECT => Ok(HeaderValue::from_static(DEFAULT_PROJECT)),
            project => HeaderValue::from_str(project),
        };
        if let Ok(v) = project {
            headers.insert(X_PROJECT, v);
        }
        let auth = match self {
            Identity::Anonymous => "anonymous",
            Identity::Admin => "admin",
            Identity::Key(scope) => scope.as_str(),
            Identity::User(_) => "user",
        };
        headers.insert(X_AUTH, HeaderValue::from_static(auth));
        if let Identity::User(claims) = self {
            let mut set = |name: &'static str, value: &str| {
                if let Ok(v) = HeaderValue::from_str(value) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            };
            set("x-nimbus-user-id", &claims.sub);
            // Roles given before the role rule existed may hold a comma: never let one role
            // read as two.
            let roles: Vec<&str> = claims
                .roles
                .iter()
                .map(String::as_str)
                .filter(|r| nimbus_auth::is_valid_role(r))
                .collect();
            set("x-nimbus-user-roles", &roles.join(","));
            set("x-nimbus-user-anonymous", if claims.anon { "true" } else { "false" });
            set("x-nimbus-session-id", &claims.sid);
            if !claims.custom.is_empty() {
                set(
                    "x-nimbus-user-claims",
                    &serde_json::Value::from(claims.custom.clone()).to_string(),
                );
            }
        }
    }
}

/// Verify the caller's credentials for `project`: a bearer access token, or an API key (as a
/// bearer token or in `x-api-key`). Credentials that are present but invalid are refused rather
/// than downgraded to anonymous, so a client learns its token expired.
async fn identify(
    state: &AppState,
    project: &str,
    headers: &mut HeaderMap,
) -> Result<Identity, ApiError> {
    let bearer = crate::credentials::bearer(headers)?.map(str::to_owned);
    let key = crate::credentials::api_key(headers)?.map(str::to_owned);
    match (bearer, key) {
        (Some(token), key) if !token.starts_with("nbk_") => {
            let claims = state.auth.verify_access_token(project, &token).await?;
            // The user's own token may reach the function they called (documented); a key sent
            // beside it was not used and is not forwarded.
            if key.is_some() {
                headers.remove(&crate::credentials::API_KEY);
            }
            Ok(Identity::User(claims))
        }
        (Some(key), _) | (None, Some(key)) => {
            let unauthorized = || {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the API key is not valid for this project",
                )
            };
            let info = state.auth.verify_api_key(&key).await.map_err(|_| unauthorized())?;
            if info.project != project {
                return Err(unauthorized());
            }
            // Nimbus consumed the key: the function learns the scope, never the key itself.
            crate::credentials::strip_consumed(headers);
            Ok(Identity::Key(info.scope))
        }
        (None, None) => Ok(Identity::Anonymous),
    }
}

/// The project of a gateway request: from a `/@<project>` path prefix, or from a
/// `<project>.<base domain>` host, or the default project. When both name a project and they
/// differ, the request is refused (404): otherwise `/@b/...` on host `a.<domain>` would serve
/// project b's function under project a's browser origin. A `/@<project>` prefix is taken off the
/// request's path.
fn resolve_project(
    base_domain: &str,
    request: &mut Request,
) -> Result<Cow<'static, str>, ApiError> {
    let host_project = host_project(base_domain, request);
    let path = request.uri().path();
    let Some(rest) = path.strip_prefix("/@") else {
        return Ok(host_project.map_or(Cow::Borrowed(DEFAULT_PROJECT), Cow::Owned));
    };
    let (slug, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if validate_project(slug).is_err() {
        return Err(ApiError::not_found(format!("no project {slug:?}")));
    }
    if let Some(host_project) = host_project.filter(|h| h != slug) {
        return Err(ApiError::not_found(format!(
            "this host serves project {host_project:?}; /@{slug} is not on it"
        )));
    }
    let slug = slug.to_string();
    let path_and_query = match request.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_string(),
    };
    *request.uri_mut() = path_and_query
        .parse()
        .map_err(|_| ApiError::bad_request("bad_path", "the path is not a valid URI"))?;
    Ok(Cow::Owned(slug))
}

/// The project a `<project>.<base domain>` host names, if it names one.
fn host_project(base_domain: &str, request: &Request) -> Option<String> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    // Compared without allocating (this runs on every gateway request); only a slug that is
    // found is lowercased.
    let split = host.len().checked_sub(base_domain.len())?;
    let domain = host.get(split..)?;
    if !domain.eq_ignore_ascii_case(base_domain) {
        return None;
    }
    let slug = host.get(..split)?.strip_suffix('.')?.to_ascii_lowercase();
    validate_project(&slug).is_ok().then_some(slug)
}

pub(crate) fn respond(invoked: Invoked) -> Response {
    let mut response = match invoked.result {
        Ok(r) => r.map(Body::new),
        Err(e) => ApiError::from(e).into_response(),
    };
    // The id's own bytes become the header value: no copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(invoked.id)) {
        response.headers_mut().insert(INVOCATION_ID, v);
    }
    response
}
