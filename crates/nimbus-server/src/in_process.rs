//! The in-process API (see `nimbus_runtime::InProcessApi`): a function's requests to
//! `http://nimbus.internal` run through the same router, handlers, rules and limits as an
//! external client's, without a socket. The runtime fixes who calls (the invocation's project,
//! and whether it presented its service token); this module decides which part of the API a
//! function may reach that way, and the handlers read the caller from the request's extensions.

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use nimbus_runtime::{InProcessApi, InProcessBody, InProcessCaller};
use tower::ServiceExt;

use crate::app::PROJECT_HEADER;
use crate::error::ApiError;

/// What data handlers take to know whether a request came from a function in-process.
pub(crate) type InProcess = Option<axum::Extension<InProcessCaller>>;

/// Serves the runtime's in-process requests with the application's router, set while the server
/// runs (the router needs the services, which need the runtime, which needs this). Cleared when
/// the server stops: the router holds the runtime, so keeping it would be a reference cycle that
/// never frees either.
#[derive(Default)]
pub struct InProcessRouter {
    router: parking_lot::RwLock<Option<Router>>,
}

impl InProcessRouter {
    pub(crate) fn set(&self, router: Option<Router>) {
        *self.router.write() = router;
    }
}

impl InProcessApi for InProcessRouter {
    fn call(
        &self,
        caller: InProcessCaller,
        request: http::Request<InProcessBody>,
    ) -> Pin<Box<dyn Future<Output = http::Response<InProcessBody>> + Send>> {
        let router = self.router.read().clone();
        Box::pin(async move {
            let response = match (router, reachable(&caller, request.uri().path())) {
                (_, Err(e)) => e.into_response(),
                (None, _) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the in-process API is not ready",
                )
                .into_response(),
                (Some(router), Ok(())) => {
                    let (mut parts, body) = request.into_parts();
                    // The project is the invocation's, not the guest's choice.
                    parts.headers.remove(PROJECT_HEADER);
                    parts.extensions.insert(caller);
                    let request = Request::from_parts(parts, Body::new(body));
                    match router.oneshot(request).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                }
            };
            response.map(|b| b.map_err(|e| Box::new(e) as _).boxed_unsync())
        })
    }
}

/// The parts of the API a function reaches in-process: its project's data services. Not the
/// management of functions, projects or users, and not invoking functions (a function calling
/// itself through the host would be an unbounded loop that no allow-list stops).
fn reachable(caller: &InProcessCaller, path: &str) -> Result<(), ApiError> {
    let under = |prefix: &str| {
        path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("/v1/kv")
        || under("/v1/collections")
        || under("/v1/buckets")
        || under("/v1/queues")
        || under("/v1/push")
    {
        return Ok(());
    }
    if let Some(rest) = path.strip_prefix("/v1/projects/") {
        let (project, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let data =
            ["collections/", "documents/", "buckets/", "push/"].iter().any(|p| rest.starts_with(p));
        if data && project != &*caller.project {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a function reaches only its own project's data",
            ));
        }
        if data {
            return Ok(());
        }
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "{path} is not served to functions in-process (documents, files and push under \
             /v1/projects/{{project}}/..., /v1/collections, /v1/buckets, /v1/kv, /v1/queues and \
             /v1/push are)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_reach_their_own_data_apis_only() {
        let caller =
            InProcessCaller { project: "acme".into(), function: "f".into(), service: true };
        for ok in [
            "/v1/kv",
            "/v1/kv/cache/k",
            "/v1/collections",
            "/v1/collections/posts",
            "/v1/projects/acme/collections/posts/documents",
            "/v1/projects/acme/documents/batch",
            "/v1/buckets",
            "/v1/buckets/media",
            "/v1/projects/acme/buckets/media/objects/a/b.txt",
            "/v1/push/messages",
            "/v1/push/subscriptions/s1/topics/news",
            "/v1/projects/acme/push/subscriptions",
        ] {
            assert!(reachable(&caller, ok).is_ok(), "{ok}");
        }
        for denied in [
            "/v1/projects/other/collections/posts/documents",
            "/v1/projects/acme/realtime/sse",
            "/v1/projects",
            "/v1/functions/f/invoke",
            "/v1/functions",
            "/v1/kvx",
            "/v1/collectionsx",
            "/v1/bucketsx",
            "/v1/s3-keys",
            "/v1/projects/other/buckets/media/objects/a",
            "/v1/pushx",
            "/v1/projects/other/push/subscriptions",
            "/hello",
            "/metrics",
        ] {
            assert!(reachable(&caller, denied).is_err(), "{denied}");
        }
    }
}
