//! The Nimbus server: the composition root. It opens the data directory, wires the storage
//! backends into the services, and serves the REST API (`/v1`), the function gateway (every other
//! path), `/healthz` and `/metrics`.
//!
//! Architecture invariant: this is the only crate that knows HTTP status codes and the JSON error
//! shape; services return typed errors and [`error::ApiError`] maps them.

mod api;
mod app;
mod client_ip;
mod credentials;
mod data_caller;
mod data_dir;
mod error;
mod files_metrics;
mod gateway;
mod in_process;
mod kv_host;
mod listener;
mod s3;

pub use s3::S3Limits;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nimbus_auth::{AuthConfig, AuthService, Mailer, Outbox, SmtpConfig, SmtpMailer};
use nimbus_files::{FilesConfig, FilesService};
use nimbus_functions::{FunctionService, FunctionsConfig, Stores};
use nimbus_kv::{KvConfig, KvService};
use nimbus_model::LimitPolicy;
use nimbus_runtime::{CompileCacheConfig, Runtime, RuntimeConfig};
use nimbus_store_local::{LocalBlobStore, LocalObjectStore, SqliteStore};

pub use app::{AppState, router};
pub use data_dir::ADMIN_TOKEN_FILE;
pub use listener::ConnectionLimits;
pub use nimbus_auth;
pub use nimbus_documents;
pub use nimbus_files;
pub use nimbus_kv;
pub use nimbus_push;
pub use nimbus_triggers;

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
    /// Bounds on client connections: how many, per client, and how long heads and bodies take.
    pub connections: ConnectionLimits,
    /// Also serve `/metrics` without a token on this address (for Prometheus on a private
    /// interface); on the main listener `/metrics` needs the admin token.
    pub metrics_listen: Option<SocketAddr>,
    /// Internal networks (loopback, private, link-local, metadata...) that guests may reach with
    /// outbound HTTP; all others of those are denied, whatever a function's allow-list says.
    pub outbound_allow_nets: Vec<ipnet::IpNet>,
    /// Key-value store bounds (key and value sizes, batch and page sizes) and purge interval.
    pub kv: KvConfig,
    /// Document size limit, realtime queue per subscriber, ...
    pub documents: nimbus_documents::DocumentsConfig,
    /// How long events stay in the log once every consumer has passed them: the window in
    /// which a realtime client can resume without a `resync`.
    pub event_retention: Duration,
    /// Bytes the compile cache (`<data>/compile-cache/`, compiled functions reused by later
    /// compiles) may hold; 0 turns it off.
    pub compile_cache_bytes: u64,
    /// Bytes of compiled code kept resident (artifact sizes); beyond it the least recently used
    /// functions are evicted and reload on their next request. 0: no budget.
    pub code_memory_budget: u64,
    /// File storage bounds (largest object, page sizes, upload expiry, sweep interval).
    pub files: FilesConfig,
    /// Push notifications (issue 11); `allow_nets` is taken from `outbound_allow_nets`.
    pub push: nimbus_push::PushConfig,
    /// Serve the S3-compatible endpoint on this address (off when `None`). It has its own
    /// listener because SigV4 signs the full path, so it cannot live under a prefix.
    pub s3_listen: Option<SocketAddr>,
    /// Limits of the S3 endpoint: requests served at once (more wait), and the largest body of a
    /// request that is not an object upload (XML documents such as DeleteObjects).
    pub s3: S3Limits,
    /// Event delivery: retries, retention of deliveries and dead letters, queue bounds. Its
    /// `callback_policy` is replaced by `outbound_allow_nets` (callbacks obey guests' policy).
    pub triggers: nimbus_triggers::TriggersConfig,
    /// The operator's price sheet (`serve --pricing`): usage reports carry costs when set.
    pub prices: Option<nimbus_model::usage::PriceSheet>,
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
            connections: ConnectionLimits::default(),
            metrics_listen: None,
            outbound_allow_nets: Vec::new(),
            kv: KvConfig::default(),
            documents: nimbus_documents::DocumentsConfig::default(),
            event_retention: Duration::from_secs(24 * 3600),
            compile_cache_bytes: DEFAULT_COMPILE_CACHE_BYTES,
            code_memory_budget: 1 << 30,
            files: FilesConfig::default(),
            push: nimbus_push::PushConfig::default(),
            s3_listen: None,
            s3: S3Limits::default(),
            triggers: nimbus_triggers::TriggersConfig::default(),
            prices: None,
        }
    }
}

/// A bound, loaded server, ready to [`run`](Server::run).
pub struct Server {
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    s3_listener: Option<tokio::net::TcpListener>,
    s3_limits: S3Limits,
    connections: ConnectionLimits,
    state: AppState,
    shutting_down: tokio::sync::watch::Sender<bool>,
    event_log: Arc<dyn nimbus_events::EventLog>,
    event_retention: Duration,
    in_process: Arc<in_process::InProcessRouter>,
}

/// The compile cache's default budget: room for a few language engines (ComponentizeJS and
/// componentize-py each fill tens of MB) and many edits.
pub const DEFAULT_COMPILE_CACHE_BYTES: u64 = 1 << 30;

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
        // The stored-bytes quota: the data services ask it before writes that add data; the
        // functions service keeps its limits with the other quotas.
        let storage_quota = nimbus_functions::StorageQuota::new(sqlite.clone());
        let guard: Arc<dyn nimbus_store::usage::StorageGuard> = storage_quota.clone();
        let kv =
            KvService::new(sqlite.clone(), config.kv.clone()).with_storage_guard(guard.clone());
        let in_process = Arc::new(in_process::InProcessRouter::default());
        let objects = Arc::new(
            LocalObjectStore::open(sqlite.clone(), &dirs.objects())
                .context("opening the file storage")?,
        );
        let files =
            FilesService::new(objects, sqlite.clone(), config.files.clone(), &dirs.files_secret()?)
                .with_storage_guard(guard.clone());
        // Nothing is being written yet: every unreferenced file is a crash's leftover.
        files.call(|f| f.startup_sweep()).await.context("sweeping the file storage")?;
        let runtime = Runtime::new(RuntimeConfig {
            max_instances: config.instance_pool_size,
            max_memory_bytes: config.limits.ceilings.memory_bytes,
            log_bytes_per_invocation: config.log_bytes_per_invocation,
            outbound_allow_nets: config.outbound_allow_nets.clone(),
            compile_cache: (config.compile_cache_bytes > 0).then(|| CompileCacheConfig {
                dir: dirs.compile_cache(),
                max_bytes: config.compile_cache_bytes,
            }),
            ..RuntimeConfig::default()
        })?
        .with_key_value(Arc::new(kv_host::KvHost(kv.clone())))
        .with_in_process_api(in_process.clone());
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
        .context("starting the documents service")?
        .with_storage_guard(guard);
        let event_log: Arc<dyn nimbus_events::EventLog> = sqlite.clone();
        // Subscription endpoints are user-supplied URLs: the operator's outbound policy applies.
        let push_config = nimbus_push::PushConfig {
            allow_nets: config.outbound_allow_nets.clone(),
            ..config.push.clone()
        };
        let push = nimbus_push::PushService::start(sqlite.clone(), event_log.clone(), push_config)
            .await
            .context("starting the push service")?;
        let functions = FunctionService::start(
            Arc::new(runtime),
            Stores {
                functions: sqlite.clone(),
                invocations: sqlite.clone(),
                blobs,
                usage: sqlite.clone(),
                storage_quota,
            },
            FunctionsConfig {
                limits: config.limits,
                queue_timeout: config.queue_timeout,
                artifact_dir: dirs.artifacts(),
                log_retention: config.log_retention,
                log_keep_per_function: config.log_keep_per_function,
                code_memory_budget: config.code_memory_budget,
            },
        )
        .await?;
        let functions = Arc::new(functions);
        let usage =
            nimbus_functions::usage::UsageService::new(sqlite.clone(), config.prices.clone())
                .with_functions(&functions);
        let triggers = nimbus_triggers::TriggerService::new(
            nimbus_triggers::TriggerStores {
                log: sqlite.clone(),
                deliveries: sqlite.clone(),
                schedules: sqlite.clone(),
                producers: sqlite,
            },
            functions.clone(),
            nimbus_triggers::TriggersConfig {
                callback_policy: nimbus_model::net::NetPolicy::new(
                    config.outbound_allow_nets.clone(),
                ),
                ..config.triggers.clone()
            },
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener {addr}"))?,
            ),
            None => None,
        };
        let s3_listener = match config.s3_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the S3 listener {addr}"))?,
            ),
            None => None,
        };
        let (shutting_down, watch) = tokio::sync::watch::channel(false);
        let state = AppState::new(
            functions,
            auth,
            kv,
            documents,
            files,
            triggers,
            push,
            usage,
            admin_token,
            &config,
            watch,
        );
        Ok(Server {
            listener,
            metrics_listener,
            s3_listener,
            s3_limits: config.s3.clone(),
            connections: config.connections.clone(),
            state,
            shutting_down,
            event_log,
            event_retention: config.event_retention,
            in_process,
        })
    }

    /// The identity service this server runs (for embedding and tests: its counters, such as
    /// [`AuthService::password_hashes`]).
    pub fn auth(&self) -> &AuthService {
        &self.state.auth
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound TCP listener has an address")
    }

    /// The address of the unauthenticated metrics listener, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address of the S3-compatible endpoint, if one was configured.
    pub fn s3_addr(&self) -> Option<SocketAddr> {
        self.s3_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "nimbus serving");
        let _housekeeping = AbortOnDrop(spawn_auth_pruner(self.state.auth.clone()));
        // Deletions a previous run left unfinished (a crash, a failed part): finished in the
        // background, since a big project takes a while; until then it is found nowhere.
        let _deletions = AbortOnDrop(self.state.projects.spawn_resume());
        // Mail a previous run queued but did not send; stopped with the server.
        let _mail = self.state.auth.start_mail_worker().map(AbortOnDrop);
        let _metrics = self.metrics_listener.map(|listener| {
            tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics without a token");
            let app = app::metrics_router(self.state.clone());
            let limits = self.connections.clone();
            let conn_metrics = self.state.connections.clone();
            let stop = self.state.clone().shutdown_signal();
            AbortOnDrop(tokio::spawn(listener::serve(
                listener,
                listener::Served::router(app),
                limits,
                stop,
                Duration::from_secs(1),
                conn_metrics,
            )))
        });
        let _s3 = self.s3_listener.map(|listener| {
            tracing::info!(addr = ?listener.local_addr().ok(), "serving the S3-compatible endpoint");
            let app = s3::router(self.state.clone(), &self.s3_limits, &self.state.base_domain);
            let limits = self.connections.clone();
            let conn_metrics = self.state.connections.clone();
            let stop = self.state.clone().shutdown_signal();
            AbortOnDrop(tokio::spawn(listener::serve(
                listener,
                listener::Served::router(app),
                limits,
                stop,
                SHUTDOWN_GRACE,
                conn_metrics,
            )))
        });
        let _files_sweeper = AbortOnDrop(self.state.files.spawn_sweeper());
        let triggers = self.state.triggers.start().await.context("starting event delivery")?;
        let conn_metrics = self.state.connections.clone();
        let _kv_purger = AbortOnDrop(self.state.kv.spawn_purger());
        let _push_sender = AbortOnDrop(self.state.push.spawn_sender());
        let _storage_accrual = AbortOnDrop(self.state.usage.spawn_storage_accrual());
        let _event_pruner = AbortOnDrop(nimbus_events::spawn_pruner(
            self.event_log.clone(),
            self.event_retention,
            EVENT_PRUNE_EVERY,
        ));
        let functions = self.state.functions.clone();
        let usage = self.state.usage.clone();
        let app = router(self.state.clone());
        self.in_process.set(Some(app.clone()));
        let app = listener::Served::with_gateway(app, self.state);
        let notify = self.shutting_down;
        let signal = async move {
            shutdown.await;
            let _ = notify.send(true);
        };
        listener::serve(self.listener, app, self.connections, signal, SHUTDOWN_GRACE, conn_metrics)
            .await;
        self.in_process.set(None);
        // Callbacks in flight end or are given back, so the next start makes them at once.
        triggers.stop().await;
        // Every request has been answered; write the records (and usage) still queued, so a
        // graceful stop loses none.
        functions.shutdown().await;
        // Downloads still streaming after the grace count what they sent when dropped, with
        // the server; what has been counted by now is written.
        if let Err(e) = usage.egress().flush().await {
            tracing::error!(error = %e, "writing the last file egress usage failed; it is lost");
        }
        // Storage held up to the stop (the next start accrues from here anyway; this keeps the
        // hour it falls in right).
        if let Err(e) = usage.accrue_storage().await {
            tracing::warn!(error = %e, "accruing stored bytes at the stop");
        }
        Ok(())
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
