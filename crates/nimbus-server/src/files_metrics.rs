//! Prometheus metrics of file storage, for REST and the S3 endpoint alike: requests by API,
//! method and result class, body bytes in and out (as they cross the socket: an `aws-chunked`
//! upload counts its framing), and S3 uploads whose payload is streamed (`aws-chunked`, by the
//! `x-amz-content-sha256` mode the client chose).

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    api: &'static str,
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ApiLabel {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PayloadLabel {
    payload: &'static str,
}

pub struct FilesMetrics {
    requests: Family<RequestLabels, Counter>,
    bytes_in: Family<ApiLabel, Counter>,
    bytes_out: Family<ApiLabel, Counter>,
    streaming_uploads: Family<PayloadLabel, Counter>,
    registry: Registry,
}

impl Default for FilesMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nimbus_files");
        let (requests, bytes_in, bytes_out, streaming_uploads) =
            (Family::default(), Family::default(), Family::default(), Family::default());
        registry.register(
            "requests",
            "File requests (REST data API and S3 endpoint) by method and result class",
            Family::clone(&requests),
        );
        registry.register("received_bytes", "Request body bytes received", bytes_in.clone());
        registry.register("sent_bytes", "Response body bytes sent", bytes_out.clone());
        registry.register(
            "s3_streaming_uploads",
            "S3 requests with an aws-chunked (streaming) payload, by x-amz-content-sha256 mode",
            streaming_uploads.clone(),
        );
        FilesMetrics { requests, bytes_in, bytes_out, streaming_uploads, registry }
    }
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::POST => "POST",
        http::Method::DELETE => "DELETE",
        _ => "other",
    }
}

fn result_label(s: http::StatusCode) -> &'static str {
    match s.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The `x-amz-content-sha256` modes of `aws-chunked` bodies (a fixed set, so labels stay few).
fn streaming_mode(v: &str) -> Option<&'static str> {
    const MODES: [&str; 5] = [
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    ];
    if !v.starts_with("STREAMING-") {
        return None;
    }
    Some(MODES.into_iter().find(|m| *m == v).unwrap_or("other"))
}

impl FilesMetrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Count a request of `api` ("rest" or "s3") and wrap its body to count bytes in.
    pub(crate) fn request_in(&self, api: &'static str, request: Request) -> Request {
        if api == "s3"
            && let Some(mode) = request
                .headers()
                .get("x-amz-content-sha256")
                .and_then(|v| v.to_str().ok())
                .and_then(streaming_mode)
        {
            self.streaming_uploads.get_or_create(&PayloadLabel { payload: mode }).inc();
        }
        let counter = self.bytes_in.get_or_create(&ApiLabel { api }).clone();
        // `inspect_frame` keeps the body's size hint, which s3s needs for signed payloads.
        request.map(|body| {
            Body::new(body.inspect_frame(move |f| {
                if let Some(data) = f.data_ref() {
                    counter.inc_by(data.len() as u64);
                }
            }))
        })
    }

    /// Count a response's result and wrap its body to count bytes out.
    pub(crate) fn response_out(
        &self,
        api: &'static str,
        method: &http::Method,
        response: Response,
    ) -> Response {
        let labels = RequestLabels {
            api,
            method: method_label(method),
            result: result_label(response.status()),
        };
        self.requests.get_or_create(&labels).inc();
        let counter = self.bytes_out.get_or_create(&ApiLabel { api }).clone();
        response.map(|body| {
            Body::new(body.inspect_frame(move |f| {
                if let Some(data) = f.data_ref() {
                    counter.inc_by(data.len() as u64);
                }
            }))
        })
    }
}

/// Middleware of the REST data routes.
pub(crate) async fn rest_layer(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<FilesMetrics>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let request = metrics.request_in("rest", request);
    let response = next.run(request).await;
    metrics.response_out("rest", &method, response)
}

/// A download body that counts the object bytes it hands to the connection and adds them to
/// the project's file egress once, when it ends or is dropped (a client that breaks off counts
/// what went out before it did). The count is local to the body: no lock or I/O per chunk.
pub(crate) struct Metered<S> {
    inner: S,
    sent: u64,
    meter: std::sync::Arc<nimbus_functions::usage::EgressMeter>,
    project: String,
}

impl<S> Metered<S> {
    pub(crate) fn new(
        inner: S,
        meter: std::sync::Arc<nimbus_functions::usage::EgressMeter>,
        project: String,
    ) -> Self {
        Metered { inner, sent: 0, meter, project }
    }
}

impl<S> futures::Stream for Metered<S>
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            self.sent += chunk.len() as u64;
        }
        polled
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        self.meter.add(&self.project, self.sent);
    }
}
