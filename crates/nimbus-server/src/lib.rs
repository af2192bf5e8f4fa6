//! The Nimbus server: the composition root. It opens the data directory, wires the storage
//! backends into the services, and serves the REST API (`/v1`), the function gateway (every other
//! path), `/healthz` and `/metrics`.
//!
//! Architecture invariant: this is the only crate that knows HTTP status codes and the JSON error
//! shape; services return typed errors and [`error::ApiError`] maps them.

mod api;
mod app;
mod client_ip;
mod data_dir;
mod error;
mod gateway;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt as _;
use nimbus_auth::{AuthConfig, AuthService, Mailer, Outbox, SmtpConfig, SmtpMailer};
use nimbus_functions::{FunctionService, FunctionsConfig, Stores};
use nimbus_model::LimitPolicy;
use nimbus_runtime::{Runtime, RuntimeConfig};
use nimbus_store_local::{LocalBlobStore, SqliteStore};

pub use app::{AppState, router};
pub use data_dir::ADMIN_TOKEN_FILE;
pub use nimbus_auth;
pub use nimbus_documents;

/// The operator's configuration of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Defaults and ceilings for every function's limits.
    pub limits: LimitPolicy,
    pub log_bytes_per_invocation: usize,
    pub log_retention: Duration,
    pub log_keep_per_function: u32,
    /// How long a request may wait for a busy function before a 503.
    pub queue_timeout: Duration,
    /// Instances that may exist at once across all functions.
    pub instance_pool_size: u32,
    /// Functions of project `p` answer at `p.<base_domain>` (and at `/@p/...` on any host).
    pub base_domain: String,
    /// End-user authentication: token lifetimes, Argon2id cost, password policy, rate limits,
    /// and the public URL used in emailed links.
    pub auth: AuthConfig,
    /// Deliver auth emails over SMTP; without it they go to an in-memory outbox readable at
    /// `GET /v1/outbox` (development).
    pub smtp: Option<SmtpConfig>,
    /// Reverse proxies whose `X-Forwarded-For` is believed when counting per-IP rate limits.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Document size limit, realtime queue per subscriber, ...
    pub documents: nimbus_documents::DocumentsConfig,
    /// How long events stay in the log once every consumer has passed them: the window in
    /// which a realtime client can resume without a `resync`.
    pub event_retention: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./nimbus-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            limits: LimitPolicy::default(),
            log_bytes_per_invocation: 64 << 10,
            log_retention: Duration::from_secs(7 * 24 * 3600),
            log_keep_per_function: 10_000,
            queue_timeout: Duration::from_secs(10),
            instance_pool_size: 1000,
            base_domain: "localhost".to_string(),
            auth: AuthConfig::default(),
            smtp: None,
            trusted_proxies: Vec::new(),
            documents: nimbus_documents::DocumentsConfig::default(),
            event_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// A bound, loaded server, ready to [`run`](Server::run).
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
    shutting_down: tokio::sync::watch::Sender<bool>,
    event_log: Arc<dyn nimbus_events::EventLog>,
    event_retention: Duration,
}

/// How long in-flight requests get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Server {
    /// Open the data directory (creating it and the admin token on first start), load every
    /// function, and bind the listener.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Server> {
        let dirs = data_dir::DataDir::open(&config.data_dir)?;
        let admin_token = dirs.admin_token()?;
        let sqlite = Arc::new(
            SqliteStore::open(&dirs.database())
                .with_context(|| format!("opening {}", dirs.database().display()))?,
        );
        let blobs = Arc::new(LocalBlobStore::new(dirs.blobs()).context("opening the blob store")?);
        let runtime = Runtime::new(RuntimeConfig {
            max_instances: config.instance_pool_size,
            max_memory_bytes: config.limits.ceilings.memory_bytes,
            log_bytes_per_invocation: config.log_bytes_per_invocation,
            ..RuntimeConfig::default()
        })?;
        let mailer: Arc<dyn Mailer> = match &config.smtp {
            Some(smtp) => Arc::new(SmtpMailer::new(smtp).context("configuring SMTP")?),
            None => Arc::new(Outbox::new(1000)),
        };
        let auth = AuthService::new(sqlite.clone(), mailer, config.auth.clone())
            .context("starting the auth service")?;
        let documents = nimbus_documents::DocumentService::start(
            sqlite.clone(),
            sqlite.clone(),
            config.documents.clone(),
        )
        .await
        .context("starting the documents service")?;
        let event_log: Arc<dyn nimbus_events::EventLog> = sqlite.clone();
        let functions = FunctionService::start(
            Arc::new(runtime),
            Stores { functions: sqlite.clone(), invocations: sqlite, blobs },
            FunctionsConfig {
                limits: config.limits,
                queue_timeout: config.queue_timeout,
                artifact_dir: dirs.artifacts(),
                log_retention: config.log_retention,
                log_keep_per_function: config.log_keep_per_function,
            },
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let (shutting_down, watch) = tokio::sync::watch::channel(false);
        let state =
            AppState::new(Arc::new(functions), auth, documents, admin_token, &config, watch);
        Ok(Server {
            listener,
            state,
            shutting_down,
            event_log,
            event_retention: config.event_retention,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound TCP listener has an address")
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "nimbus serving");
        let _housekeeping = AbortOnDrop(spawn_auth_pruner(self.state.auth.clone()));
        let _event_pruner = AbortOnDrop(nimbus_events::spawn_pruner(
            self.event_log.clone(),
            self.event_retention,
            EVENT_PRUNE_EVERY,
        ));
        let app = router(self.state);
        let notify = self.shutting_down;
        let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = notify.send(true);
            let _ = grace_tx.send(());
        };
        // A response is written whole; Nagle's algorithm could only delay it. (The bare host in
        // bench/ sets it too, so the comparison stays like for like.)
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY");
            }
        });
        let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(signal)
            .into_future();
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => return result.context("serving HTTP"),
            _ = grace_rx => {}
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, serve).await {
            Ok(result) => result.context("serving HTTP"),
            Err(_) => {
                tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
                Ok(())
            }
        }
    }
}

/// How often the event log is pruned.
const EVENT_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How often used and expired tokens and dead sessions are deleted.
const AUTH_PRUNE_EVERY: Duration = Duration::from_secs(3600);

fn spawn_auth_pruner(auth: AuthService) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(AUTH_PRUNE_EVERY);
        loop {
            every.tick().await;
            match auth.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned auth tokens and sessions"),
                Err(e) => tracing::warn!(error = %e, "pruning auth tokens and sessions"),
            }
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
