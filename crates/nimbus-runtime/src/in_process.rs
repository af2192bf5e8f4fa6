//! The in-process API: a function reaches its project's data services (documents, KV, ...) with
//! plain outbound `wasi:http` to [`IN_PROCESS_AUTHORITY`], and the runtime hands those requests to
//! the embedder in-process, without a socket, the allow-list or the network policy.
//!
//! Each invocation gets a fresh random token ([`TOKEN_ENV`]); a request that presents it acts as
//! the project's service role. The token is only ever accepted here, on the outbound path of the
//! invocation it was made for, so a leaked token is worth nothing anywhere else or later. A request
//! without it (for example one that forwards the calling end user's access token instead) goes
//! through as that caller, under the project's rules. The project is the invocation's and cannot
//! be chosen by the guest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// The host name of the in-process API. `.internal` is reserved for private use (ICANN, 2024),
/// so it never names a public host that a function might want to reach.
pub const IN_PROCESS_AUTHORITY: &str = "nimbus.internal";
/// Environment variable with the base URL of the in-process API.
pub const URL_ENV: &str = "NIMBUS_API_URL";
/// Its value (a test checks that it names [`IN_PROCESS_AUTHORITY`]).
const URL: &str = "http://nimbus.internal";
/// Environment variable with the invocation's service token.
pub const TOKEN_ENV: &str = "NIMBUS_API_TOKEN";
/// Environment variable with the function's project.
pub const PROJECT_ENV: &str = "NIMBUS_PROJECT";

/// Requests one invocation may have in flight to the in-process API at once; more wait. A guest
/// cannot turn one request into an unbounded burst of host work this way.
const MAX_IN_FLIGHT: usize = 16;

/// A body crossing between the guest and the embedder's in-process API.
pub type InProcessBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Who makes an in-process request.
#[derive(Debug, Clone)]
pub struct InProcessCaller {
    pub project: Arc<str>,
    pub function: Arc<str>,
    /// The request presented the invocation's token: it acts as the project's service role.
    /// Otherwise it acts as whatever credentials it carries (an end user's access token, or none).
    pub service: bool,
}

/// What serves in-process requests: the embedder's API, with `caller` fixed by the runtime.
pub trait InProcessApi: Send + Sync + 'static {
    fn call(
        &self,
        caller: InProcessCaller,
        request: http::Request<InProcessBody>,
    ) -> Pin<Box<dyn Future<Output = http::Response<InProcessBody>> + Send>>;
}

/// One invocation's view of the in-process API.
pub(crate) struct InProcessCtx {
    pub(crate) api: Arc<dyn InProcessApi>,
    pub(crate) project: Arc<str>,
    pub(crate) function: Arc<str>,
    pub(crate) token: String,
    /// Made by the first in-process request: most invocations make none.
    in_flight: std::sync::OnceLock<Arc<Semaphore>>,
}

impl InProcessCtx {
    pub(crate) fn new(api: Arc<dyn InProcessApi>, project: Arc<str>, function: Arc<str>) -> Self {
        // 128 random bits: unguessable, and valid only for this invocation's own requests.
        // Hex-encoded into a buffer, without `format!`'s machinery: this runs on every invocation.
        let mut hex = [0u8; 32];
        hex::encode_to_slice(rand::random::<[u8; 16]>(), &mut hex).expect("16 bytes are 32 digits");
        let mut token = String::with_capacity(4 + hex.len());
        token.push_str("nbi_");
        token.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
        InProcessCtx { api, project, function, token, in_flight: std::sync::OnceLock::new() }
    }

    /// The environment variables that tell the guest where the API is and how to act as its
    /// project's service role.
    pub(crate) fn env(&self) -> [(&'static str, &str); 3] {
        [(URL_ENV, URL), (TOKEN_ENV, &self.token), (PROJECT_ENV, &self.project)]
    }

    /// Dispatch one outbound request of the guest to the embedder.
    pub(crate) fn send(
        &self,
        mut request: http::Request<WasiBody>,
    ) -> impl Future<Output = Result<http::Response<WasiBody>, HttpError>> + Send + 'static {
        let service = take_token(request.headers_mut(), &self.token);
        let caller = InProcessCaller {
            project: self.project.clone(),
            function: self.function.clone(),
            service,
        };
        let api = self.api.clone();
        let in_flight =
            self.in_flight.get_or_init(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT))).clone();
        async move {
            let _permit =
                in_flight.acquire_owned().await.map_err(|_| HttpError::HttpRequestDenied)?;
            let request = request.map(|b| b.map_err(|e| Box::new(e) as _).boxed_unsync());
            let response = api.call(caller, request).await;
            Ok(response.map(|b| {
                b.map_err(|e| HttpError::InternalError(Some(e.to_string()))).boxed_unsync()
            }))
        }
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`; if so the header is removed (the
/// embedder sees the resulting role, never the token).
fn take_token(headers: &mut http::HeaderMap, token: &str) -> bool {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let matches = presented.is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes())));
    if matches {
        headers.remove(http::header::AUTHORIZATION);
    }
    matches
}

/// Whether a guest's outbound request is for the in-process API.
pub(crate) fn is_in_process(uri: &http::Uri) -> bool {
    uri.scheme() == Some(&http::uri::Scheme::HTTP)
        && uri.host().is_some_and(|h| h.eq_ignore_ascii_case(IN_PROCESS_AUTHORITY))
        && uri.port_u16().is_none_or(|p| p == 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_authority() {
        assert_eq!(URL, format!("http://{IN_PROCESS_AUTHORITY}"));
    }

    #[test]
    fn the_token_is_taken_only_when_it_matches() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer nbi_abc".parse().unwrap());
        assert!(!take_token(&mut h, "nbi_abd"));
        assert!(h.contains_key(http::header::AUTHORIZATION), "a user's token passes through");
        assert!(take_token(&mut h, "nbi_abc"));
        assert!(!h.contains_key(http::header::AUTHORIZATION));
        h.insert(http::header::AUTHORIZATION, "bearer  nbi_abc".parse().unwrap());
        assert!(take_token(&mut h, "nbi_abc"));
        assert!(!take_token(&mut http::HeaderMap::new(), "nbi_abc"));
    }

    #[test]
    fn only_plain_http_to_the_internal_host_is_in_process() {
        let yes = ["http://nimbus.internal/v1/kv", "http://NIMBUS.internal:80/x"];
        let no = [
            "https://nimbus.internal/v1/kv",
            "http://nimbus.internal:8080/v1",
            "http://nimbus.internal.evil.com/",
            "http://example.com/",
        ];
        for u in yes {
            assert!(is_in_process(&u.parse().unwrap()), "{u}");
        }
        for u in no {
            assert!(!is_in_process(&u.parse().unwrap()), "{u}");
        }
    }
}
