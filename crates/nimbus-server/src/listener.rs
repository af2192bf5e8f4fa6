//! The accept loop: every connection is bounded in number, per client address and in time.
//!
//! axum's `serve` has no connection limit, no header-read timeout and no body timeout, so one
//! client holding idle sockets could take every file descriptor. This loop drives hyper-util's
//! `auto` builder (HTTP/1.1 and HTTP/2, with upgrades for WebSockets) directly:
//!
//! - a global cap on open connections (a semaphore: at the cap, the loop stops accepting and the
//!   kernel's backlog holds newcomers until a slot frees, as mini-redis does);
//! - a cap per client address, so one client cannot take all of the global slots (connections over
//!   it are closed at once);
//! - a header timeout: a connection that waits for a request head (its first, or the next one on
//!   a keep-alive connection) is closed when none has come whole within it, so it is the idle
//!   timeout too. A watchdog task per connection checks every half timeout (see
//!   [`spawn_head_watchdog`]) instead of hyper's own header-read timeout, which files and removes
//!   a timer in tokio's wheel on every request;
//! - a body timeout between two chunks of a request body (tower-http's `TimeoutBody`), so a
//!   client that stops sending mid-body does not hold a function slot forever.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutBody;

/// The operator's bounds on client connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at once, across all clients.
    pub max_connections: usize,
    /// Open connections at once from one client address.
    pub max_per_client: usize,
    /// Time for a request head to arrive whole, and for an idle keep-alive connection to start
    /// its next request.
    pub header_timeout: Duration,
    /// Longest pause between two chunks of a request body.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_per_client: 1_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// File descriptors kept free for everything that is not a client connection: the database,
/// artifacts, outbound requests of guests, log files.
const RESERVED_FDS: u64 = 512;

impl ConnectionLimits {
    /// The connection cap, lowered if the process's file-descriptor limit could not hold it (after
    /// raising the soft limit to the hard one, as servers do at start).
    pub(crate) fn effective_max_connections(&self) -> usize {
        let Some(fds) = raise_fd_limit() else { return self.max_connections };
        let fit = fds.saturating_sub(RESERVED_FDS).max(1);
        if (self.max_connections as u64) > fit {
            tracing::warn!(
                asked = self.max_connections,
                allowed = fit,
                fd_limit = fds,
                "--max-connections lowered to fit the file-descriptor limit"
            );
            fit as usize
        } else {
            self.max_connections
        }
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
fn raise_fd_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Open connections per client address. Entries go when their count reaches zero, so the map is
/// bounded by the global connection cap.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut map = self.0.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { clients: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.clients.0.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What a listener serves: a router, and on the main listener the function gateway beside it.
///
/// Gateway requests (every path that is not Nimbus's own, see [`crate::app::is_platform_path`])
/// go to the gateway directly rather than through the router, whose match would only end in the
/// same fallback. That skips the router's path match, its request conversions and two shared
/// reference counts (router and state) per request: about 2% of the node's throughput serving
/// a hello function (bench/interleaved.sh, docs/benchmarks.md).
#[derive(Clone)]
pub(crate) struct Served {
    router: Router,
    gateway: Option<crate::app::AppState>,
}

impl Served {
    /// Everything through `router`.
    pub(crate) fn router(router: Router) -> Self {
        Served { router, gateway: None }
    }

    /// Nimbus's own paths through `router`, the rest to the function gateway of `state`.
    pub(crate) fn with_gateway(router: Router, state: crate::app::AppState) -> Self {
        Served { router, gateway: Some(state) }
    }

    async fn call(
        &self,
        mut request: axum::extract::Request,
        peer: std::net::SocketAddr,
    ) -> axum::response::Response {
        match &self.gateway {
            Some(state) if !crate::app::is_platform_path(request.uri().path()) => {
                crate::gateway::serve(state, request).await
            }
            _ => {
                // Only Nimbus's own endpoints use the client's address (auth's rate limits).
                request.extensions_mut().insert(ConnectInfo(peer));
                match self.router.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        }
    }
}

/// Serve `app` on `listener` until `shutdown` resolves, then give in-flight connections `grace`
/// to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Served,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    metrics: Arc<ConnectionMetrics>,
) {
    let max = limits.effective_max_connections();
    let slots = Arc::new(Semaphore::new(max));
    let clients = Arc::new(PerClient::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is the watchdog's (below), not hyper's: `None` turns off hyper's
    // default of 30 s.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(client) = clients.take(peer.ip(), limits.max_per_client) else {
            metrics.refused_per_client.inc();
            tracing::debug!(%peer, "closing a connection over the per-client limit");
            drop(tcp);
            continue;
        };
        // A response is written whole; Nagle's algorithm could only delay it. (The bare host in
        // bench/ sets it too, so the comparison stays like for like.)
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
        let body_timeout = limits.body_timeout;
        // One handle per connection: each request clones this connection's own `Arc`, not a
        // reference count that every worker thread writes.
        let conn = Arc::new(Conn {
            app: app.clone(),
            activity: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        });
        let watched = Arc::downgrade(&conn);
        // hyper's own `service_fn`, not tower's behind `TowerToHyperService`: that adapter wraps
        // each request's future in a `Oneshot` state machine, which moves the whole future (a few
        // KiB) once more per request.
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let http1 = matches!(
                request.version(),
                http::Version::HTTP_09 | http::Version::HTTP_10 | http::Version::HTTP_11
            );
            // A request without a body (most GETs) has nothing to time out or track.
            let mut ended = None;
            let request = request.map(|body| {
                if hyper::body::Body::is_end_stream(&body) {
                    return axum::body::Body::new(body);
                }
                let flag = ended.insert(Arc::new(AtomicBool::new(false))).clone();
                let body = EndTracked::new(body, flag);
                axum::body::Body::new(TimeoutBody::new(body_timeout, body))
            });
            if !http1 {
                conn.http2.store(true, Ordering::Relaxed);
            }
            let in_flight = InFlight::start(&conn);
            async move {
                let mut response = in_flight.app.call(request, peer).await;
                if http1 && ended.is_some_and(|ended| !ended.load(Ordering::Acquire)) {
                    close_after(&mut response);
                }
                // In flight until hyper drops the body: written whole, or the connection gone.
                Ok::<_, std::convert::Infallible>(
                    response.map(|inner| Answer { inner, _in_flight: in_flight }),
                )
            }
        });
        let open = OpenConnection::new(&metrics);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = limits.header_timeout;
        let task = tokio::spawn(async move {
            // hyper's `auto` builder first reads to tell HTTP/1 from HTTP/2, with no timeout of its
            // own: a client that connects and sends nothing would hold its slot forever.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(header_timeout, tcp.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                drop((permit, client, open));
                return;
            }
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop((permit, client, open));
        });
        spawn_head_watchdog(watched, task.abort_handle(), header_timeout);
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "shutting down: finishing in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {grace:?}; stopping anyway");
    }
}

/// One client connection, shared by its requests and its watchdog.
struct Conn {
    app: Served,
    /// Requests started (bits 32-63, wrapping) and in flight (bits 0-31): a request is in flight
    /// from its head until hyper drops its response body.
    activity: AtomicU64,
    /// It carries HTTP/2, whose keep-alive pings watch it instead (hyper's `http2()` settings).
    http2: AtomicBool,
}

const STARTED: u64 = 1 << 32;
const IN_FLIGHT: u64 = 1;
const IN_FLIGHT_MASK: u64 = STARTED - 1;

/// A request of a [`Conn`] under way. Owns the connection's handle, so a request costs one
/// reference count of the connection's own and two writes to its activity, both on the thread
/// that serves it.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: &Arc<Conn>) -> Self {
        conn.activity.fetch_add(STARTED + IN_FLIGHT, Ordering::Relaxed);
        InFlight(conn.clone())
    }
}

impl std::ops::Deref for InFlight {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.fetch_sub(IN_FLIGHT, Ordering::Relaxed);
    }
}

/// A response body, holding its request in flight.
struct Answer {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Close a connection that has waited for a request head for `timeout`: one that sent none
/// (after its first byte, see the peek above), or stalls in the middle of one, or sits idle
/// between keep-alive requests. Every half `timeout` it reads the connection's activity; equal
/// activity two reads apart with nothing in flight means that no request started for at least
/// `timeout` and none ran meanwhile, so the connection is closed (aborting its task drops the
/// socket and the slots it holds). A stalled head is thus cut off between `timeout` and 1.5
/// `timeout` after the connection began waiting for it.
///
/// This replaces hyper's header-read timeout, which arms a timer in tokio's wheel for every
/// request head (an allocation, a lock and two writes to the runtime's shared reference count)
/// and removes it when the head is in: a few hundred nanoseconds of every request, where this
/// costs two writes to the connection's own counter. HTTP/2 connections are left to their
/// keep-alive once their first request came.
fn spawn_head_watchdog(
    conn: std::sync::Weak<Conn>,
    task: tokio::task::AbortHandle,
    timeout: Duration,
) {
    let half = (timeout / 2).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The activity at the two previous reads, oldest first (none before the start).
        let mut seen = [u64::MAX, 0];
        loop {
            ticks.tick().await;
            // Gone with the connection (ended, or upgraded to a WebSocket).
            let Some(conn) = conn.upgrade() else { return };
            if conn.http2.load(Ordering::Relaxed) {
                return;
            }
            let now = conn.activity.load(Ordering::Relaxed);
            if now == seen[0] && now & IN_FLIGHT_MASK == 0 {
                tracing::debug!(
                    "closing a connection that sent no request head within the header timeout"
                );
                task.abort();
                return;
            }
            seen = [seen[1], now];
        }
    });
}

/// A request body that records whether it was read to its end.
///
/// A handler may answer without reading the body (a bad key, a failed authorisation, a size
/// over the limit). hyper then drains what already arrived and, if the body is not complete, closes
/// the connection after the response, but it decides that only after writing the response
/// head, which therefore still promises keep-alive. A client that reuses the connection in that
/// instant gets a reset instead of an answer (boto3 with `Expect: 100-continue` sends the body
/// only after a `100 Continue`, so its bodies were never there: one hostile-key request in a
/// few failed so). [`close_after`] says `Connection: close` in the head instead.
struct EndTracked<B> {
    inner: B,
    ended: Arc<AtomicBool>,
}

impl<B: hyper::body::Body> EndTracked<B> {
    fn new(inner: B, ended: Arc<AtomicBool>) -> Self {
        if inner.is_end_stream() {
            ended.store(true, Ordering::Release);
        }
        EndTracked { inner, ended }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for EndTracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => self.ended.store(true, Ordering::Release),
            std::task::Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.ended.store(true, Ordering::Release);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Announce that the connection closes after `response` (HTTP/1: the request body was not read
/// to its end, so the connection cannot carry another request; see [`EndTracked`]).
fn close_after(response: &mut http::Response<axum::body::Body>) {
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    }
}

/// The server's own metrics about client connections.
pub struct ConnectionMetrics {
    open: Gauge,
    refused_per_client: Counter,
    registry: Registry,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        let open = Gauge::default();
        let refused_per_client = Counter::default();
        let mut registry = Registry::with_prefix("nimbus");
        registry.register("connections_open", "Client connections open now", open.clone());
        registry.register(
            "connections_refused_per_client",
            "Connections closed at once because their client address had too many open",
            refused_per_client.clone(),
        );
        ConnectionMetrics { open, refused_per_client, registry }
    }
}

impl ConnectionMetrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(metrics: &ConnectionMetrics) -> Self {
        metrics.open.inc();
        OpenConnection(metrics.open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
