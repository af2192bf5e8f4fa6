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
//! - hyper's header-read timeout: a request head must arrive whole within it. hyper also starts
//!   that timer while a keep-alive connection waits for its next request, so it is the idle
//!   timeout too;
//! - a body timeout between two chunks of a request body (tower-http's `TimeoutBody`), so a
//!   client that stops sending mid-body does not hold a function slot forever.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
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

/// Serve `app` on `listener` until `shutdown` resolves, then give in-flight connections `grace`
/// to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    metrics: Arc<ConnectionMetrics>,
) {
    let max = limits.effective_max_connections();
    let slots = Arc::new(Semaphore::new(max));
    let clients = Arc::new(PerClient::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
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
        let service = app.clone().map_request(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.map(|body| axum::body::Body::new(TimeoutBody::new(body_timeout, body)))
        });
        let open = OpenConnection::new(&metrics);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
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
            let connection = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(tcp),
                    TowerToHyperService::new(service),
                )
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop((permit, client, open));
        });
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "shutting down: finishing in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {grace:?}; stopping anyway");
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
