//! The HTTP trigger: every request that is not for Nimbus itself is routed to a function, streamed
//! in, and the function's response streamed back with its invocation id.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_functions::{Invoked, RouteMatch};

use crate::app::AppState;
use crate::error::ApiError;

pub const INVOCATION_ID: HeaderName = HeaderName::from_static("x-nimbus-invocation-id");

pub(crate) async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let method = request.method().as_str().to_owned();
    match state.functions.route(&method, request.uri().path()) {
        RouteMatch::Found(target) => {
            let invoked = state.functions.invoke(target, prepare(request), "http").await;
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

/// wasi:http needs an authority: HTTP/1.1 requests carry it in `Host`; give HTTP/1.0 requests
/// without one a placeholder rather than refusing them.
pub(crate) fn prepare(mut request: Request) -> Request {
    if request.uri().authority().is_none() && !request.headers().contains_key(header::HOST) {
        request.headers_mut().insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    request
}

pub(crate) fn respond(invoked: Invoked) -> Response {
    let mut response = match invoked.result {
        Ok(r) => r.map(Body::new),
        Err(e) => ApiError::from(e).into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&invoked.id) {
        response.headers_mut().insert(INVOCATION_ID, v);
    }
    response
}
