//! The per-invocation host state: WASI context, wasi:http hooks (outbound policy), the memory
//! limiter, and the bounded stdout/stderr capture.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::net::NetPolicy;
use parking_lot::Mutex;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: OutboundHooks,
    pub(crate) limiter: GuestLimiter,
    pub(crate) config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
    pub(crate) kv: crate::keyvalue::KvCtx,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Which hosts a function may reach with outbound HTTP. Empty denies everything. The addresses
/// an allowed host resolves to must also pass the operator's [`NetPolicy`].
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// `host`, `host:port`, or `*.domain` (any subdomain, any port unless given).
    allowed: Vec<String>,
}

impl OutboundPolicy {
    pub fn new(allowed: Vec<String>) -> Self {
        OutboundPolicy { allowed: allowed.into_iter().map(|h| h.to_ascii_lowercase()).collect() }
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed.iter().any(|rule| {
            let (rule_host, rule_port) = match rule.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || rule.starts_with('[') => match p.parse() {
                    Ok(p) => (h, Some(p)),
                    Err(_) => (rule.as_str(), None),
                },
                _ => (rule.as_str(), None),
            };
            if rule_port.is_some_and(|p: u16| p != port) {
                return false;
            }
            match rule_host.strip_prefix("*.") {
                Some(domain) => {
                    host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}"))
                }
                None => rule_host == host,
            }
        })
    }
}

pub(crate) struct OutboundHooks {
    /// The invocation's shared state: its connections count their bytes in `egress`.
    pub(crate) shared: Arc<Shared>,
    /// The function's host allow-list.
    pub(crate) policy: Arc<OutboundPolicy>,
    /// The operator's network policy, checked on the resolved address.
    pub(crate) net: Arc<NetPolicy>,
    /// The project's in-process API, when the embedder serves one.
    pub(crate) in_process: Option<crate::in_process::InProcessCtx>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        // The in-process API needs no allow-list entry and never touches the network.
        if let Some(api) =
            self.in_process.as_ref().filter(|_| crate::in_process::is_in_process(uri))
        {
            drop(fut);
            let send = api.send(request);
            return Box::new(async move {
                let response = send.await?;
                let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, io))
            });
        }
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let allowed = uri.host().is_some_and(|host| {
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            self.policy.allows(host, port)
        });
        if !allowed {
            tracing::debug!(uri = %uri, "outbound request denied by the function's allow-list");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        drop(fut);
        let net = self.net.clone();
        Box::new(crate::net::send_request(net, request, options, self.shared.clone()))
    }
}

/// Enforces the function's memory limit across all of an instance's memories and records the peak.
pub(crate) struct GuestLimiter {
    pub(crate) limit: usize,
    pub(crate) current: usize,
    pub(crate) peak: usize,
    pub(crate) hit_limit: bool,
}

impl GuestLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        GuestLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            current: 0,
            peak: 0,
            hit_limit: false,
        }
    }
}

/// Generous enough for CPython or SpiderMonkey-based guests; a table bomb still stops here.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.current - current.min(self.current) + desired;
        if total > self.limit {
            self.hit_limit = true;
            // An error (rather than Ok(false)) traps the guest at once: most toolchains abort on a
            // failed grow anyway, and the trap names the cause in the invocation record.
            wasmtime::bail!("memory limit of {} bytes exceeded (asked for {total})", self.limit);
        }
        self.current = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// What the parts of one invocation share (its log pipes, outbound connections, response
/// callback, task and response body), in one allocation rather than one each.
pub(crate) struct Shared {
    pub(crate) logs: Mutex<LogBuffer>,
    /// Bytes written to the network by the invocation's outbound connections.
    pub(crate) egress: std::sync::atomic::AtomicU64,
    /// Whether and how the guest answered (`invoke.rs`).
    pub(crate) responded: std::sync::atomic::AtomicU32,
    /// How the guest ended (`invoke.rs`).
    pub(crate) end: std::sync::atomic::AtomicU8,
}

/// Captured stdout and stderr of one invocation, sharing one byte budget.
#[derive(Default)]
pub(crate) struct LogBuffer {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) remaining: usize,
    pub(crate) truncated: bool,
}

#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr. Writes past the budget are accepted and dropped, never refused: a
/// refused write makes most guests panic, and an endless writer is stopped by its timeout instead.
#[derive(Clone)]
pub(crate) struct LogPipe {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stream: Stream,
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut b = self.shared.logs.lock();
        let keep = buf.len().min(b.remaining);
        b.remaining -= keep;
        if keep < buf.len() {
            b.truncated = true;
        }
        match self.stream {
            Stream::Stdout => b.stdout.extend_from_slice(&buf[..keep]),
            Stream::Stderr => b.stderr.extend_from_slice(&buf[..keep]),
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_policy() {
        let p = OutboundPolicy::new(vec![
            "api.example.com".into(),
            "*.internal.test".into(),
            "localhost:9000".into(),
        ]);
        assert!(p.allows("api.example.com", 443));
        assert!(p.allows("API.example.com", 80));
        assert!(!p.allows("example.com", 443));
        assert!(!p.allows("evil-api.example.com", 443));
        assert!(p.allows("a.internal.test", 443));
        assert!(p.allows("a.b.internal.test", 8080));
        assert!(!p.allows("internal.test", 443));
        assert!(!p.allows("xinternal.test", 443));
        assert!(p.allows("localhost", 9000));
        assert!(!p.allows("localhost", 9001));
        assert!(!OutboundPolicy::default().allows("anything", 80));
    }

    #[test]
    fn limiter_tracks_total_and_peak() {
        let mut l = GuestLimiter::new(10 << 20);
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.memory_growing(0, 4 << 20, None).unwrap()); // a second memory
        assert_eq!(l.peak, 8 << 20);
        assert!(l.memory_growing(4 << 20, 6 << 20, None).unwrap()); // exactly at the limit
        assert!(l.memory_growing(6 << 20, 7 << 20, None).is_err());
        assert!(l.hit_limit);
    }
}
