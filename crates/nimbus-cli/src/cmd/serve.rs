//! `serve`: run the Nimbus server in this process.
//!
//! The server itself (Wasmtime and all) is behind the default `server` feature; a build with
//! `--no-default-features` is a lightweight client whose `serve` only explains what is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use nimbus_model::{LimitPolicy, Limits};
use tracing_subscriber::EnvFilter;
#[cfg(feature = "server")]
use {
    anyhow::Context as _,
    nimbus_server::{ADMIN_TOKEN_FILE, Server, ServerConfig},
    std::io::Write as _,
};

use crate::GlobalArgs;
use crate::manifest::{parse_duration, parse_duration_ms, parse_size};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory: the server's state (SQLite, modules, files) and its admin token
    #[arg(long, value_name = "DIR", env = "NIMBUS_DATA", default_value = "./nimbus-data")]
    pub data: PathBuf,

    /// Address to listen on, or a port alone for 127.0.0.1 (port 0 picks a free port)
    #[arg(long, env = "NIMBUS_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Do not save this server as the `local` profile of the CLI config on its first start
    #[arg(long, env = "NIMBUS_NO_PROFILE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_profile: bool,

    #[command(flatten)]
    pub client_flags: ClientFlags,

    /// Log format on stderr
    #[arg(long, env = "NIMBUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Timeout of functions that do not set one
    #[arg(long, env = "NIMBUS_DEFAULT_TIMEOUT", value_parser = parse_duration_ms, default_value = "10s")]
    pub default_timeout: u64,

    /// Largest timeout a function may ask for
    #[arg(long, env = "NIMBUS_MAX_TIMEOUT", value_parser = parse_duration_ms, default_value = "300s")]
    pub max_timeout: u64,

    /// Memory limit of functions that do not set one
    #[arg(long, env = "NIMBUS_DEFAULT_MEMORY", value_parser = parse_size, default_value = "64MiB")]
    pub default_memory: u64,

    /// Largest memory limit a function may ask for
    #[arg(long, env = "NIMBUS_MAX_MEMORY", value_parser = parse_size, default_value = "512MiB")]
    pub max_memory: u64,

    /// Concurrency of functions that do not set one
    #[arg(long, env = "NIMBUS_DEFAULT_CONCURRENCY", default_value_t = 64)]
    pub default_concurrency: u32,

    /// Largest concurrency a function may ask for
    #[arg(long, env = "NIMBUS_MAX_CONCURRENCY", default_value_t = 1000)]
    pub max_concurrency: u32,

    /// Largest `min_warm` a function may ask for (functions with min_warm > 0 keep their code
    /// resident whatever the code memory budget); 0 forbids it
    #[arg(long, env = "NIMBUS_MAX_MIN_WARM", default_value_t = 1000)]
    pub max_min_warm: u32,

    /// Memory budget for resident compiled code (the mapped size of loaded artifacts): beyond
    /// it the least recently used functions are evicted and reload on their next request.
    /// Functions with min_warm > 0 are never evicted. 0 means no budget
    #[arg(long, env = "NIMBUS_CODE_MEMORY_BUDGET", value_parser = parse_size, default_value = "1GiB")]
    pub code_memory_budget: u64,

    /// Queue length of functions that do not set one
    #[arg(long, env = "NIMBUS_DEFAULT_QUEUE", default_value_t = 256)]
    pub default_queue: u32,

    /// Longest queue a function may ask for
    #[arg(long, env = "NIMBUS_MAX_QUEUE", default_value_t = 10_000)]
    pub max_queue: u32,

    /// Request body limit of functions that do not set one
    #[arg(long, env = "NIMBUS_MAX_BODY", value_parser = parse_size, default_value = "10MiB")]
    pub max_body: u64,

    /// Largest request body limit a function may ask for
    #[arg(long, env = "NIMBUS_MAX_BODY_CEILING", value_parser = parse_size, default_value = "100MiB")]
    pub max_body_ceiling: u64,

    /// Stdout+stderr kept per invocation
    #[arg(long, env = "NIMBUS_LOG_BYTES", value_parser = parse_size, default_value = "64KiB")]
    pub log_bytes: u64,

    /// Largest document the document database accepts
    #[arg(long, env = "NIMBUS_MAX_DOCUMENT_SIZE", value_parser = parse_size, default_value = "1MiB")]
    pub max_document_size: u64,

    /// How long events stay in the event log (the realtime resume window)
    #[arg(long, env = "NIMBUS_EVENT_RETENTION", value_parser = parse_duration, default_value = "24h")]
    pub event_retention: Duration,

    /// Disk budget of the compile cache (`<data>/compile-cache/`: compiled functions reused when
    /// an edited component shares code with an earlier one, e.g. a JavaScript or Python engine);
    /// least recently used entries go beyond it. 0 turns the cache off
    #[arg(long, env = "NIMBUS_COMPILE_CACHE_SIZE", value_parser = parse_size, default_value = "1GiB")]
    pub compile_cache_size: u64,

    /// Price sheet (TOML: currency, per_million_requests, per_gb_second, per_gb_month_stored,
    /// per_gb_egress, [free_tier] requests/gb_seconds/egress_gb/stored_gb); usage reports
    /// (`nimbus usage`, GET /v1/usage) then carry costs. See docs/usage.md
    #[arg(long, value_name = "FILE", env = "NIMBUS_PRICING")]
    pub pricing: Option<PathBuf>,

    /// How long invocation records and logs are kept
    #[arg(long, env = "NIMBUS_LOG_RETENTION", value_parser = parse_duration, default_value = "7d")]
    pub log_retention: Duration,

    /// Invocation records kept per function
    #[arg(long, env = "NIMBUS_LOG_KEEP", default_value_t = 10_000)]
    pub log_keep: u32,

    /// How long a request may wait for a free instance before a 503
    #[arg(long, env = "NIMBUS_QUEUE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub queue_timeout: Duration,

    /// Instances the pooling allocator reserves, across all functions
    #[arg(long, env = "NIMBUS_INSTANCE_POOL", default_value_t = 1000)]
    pub instance_pool: u32,

    /// Base URL of this server as users reach it, for links in emails (default: http://<listen>)
    #[arg(long, env = "NIMBUS_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// A refresh token used again within this long counts as a concurrent refresh (two tabs),
    /// not as theft; 0s makes every second use revoke the session
    #[arg(long, env = "NIMBUS_REFRESH_REUSE_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub refresh_reuse_grace: Duration,

    /// Argon2id memory cost for password hashes, in KiB (OWASP's minimum: 19456)
    #[arg(long, env = "NIMBUS_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// Argon2id iterations
    #[arg(long, env = "NIMBUS_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Argon2id parallelism
    #[arg(long, env = "NIMBUS_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,

    /// SMTP server for auth emails, host:port (default: keep emails in the development outbox)
    #[arg(long, env = "NIMBUS_SMTP")]
    pub smtp: Option<String>,

    /// SMTP transport security: none, starttls or tls
    #[arg(long, env = "NIMBUS_SMTP_SECURITY", default_value = "starttls")]
    pub smtp_security: String,

    /// SMTP user name
    #[arg(long, env = "NIMBUS_SMTP_USER")]
    pub smtp_user: Option<String>,

    /// SMTP password
    #[arg(long, env = "NIMBUS_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,

    /// Sender address of auth emails
    #[arg(long, env = "NIMBUS_SMTP_FROM", default_value = "Nimbus <no-reply@localhost>")]
    pub smtp_from: String,

    /// Functions of project P also answer at host P.<base-domain> (and at /@P/... on any host)
    #[arg(long, env = "NIMBUS_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,

    /// Password hashes (Argon2id, each with --argon2-memory-kib of memory) that may run at once;
    /// beyond that, sign-up, sign-in and reset answer 503 with Retry-After (default: the number of
    /// cores)
    #[arg(long, env = "NIMBUS_MAX_CONCURRENT_HASHES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_hashes: Option<u32>,

    /// Change an auth rate limit: NAME=COUNT/WINDOW (sign_in_per_ip=30/1m) or NAME=off.
    /// Repeatable. Per client IP, and per account (the email, user or refresh token): sign_in_per_ip,
    /// sign_in_per_account, sign_up_per_ip, sign_up_per_account (also upgrades),
    /// password_reset_per_ip, password_reset_per_account (reset emails), reset_password_per_ip
    /// (setting a password with a reset token), refresh_per_ip, refresh_per_account (also
    /// sign-outs), anonymous_per_ip, verification_request_per_ip,
    /// verification_request_per_account, verify_email_per_ip
    #[arg(long = "rate-limit", env = "NIMBUS_RATE_LIMITS", value_delimiter = ',', value_parser = parse_rate_limit)]
    pub rate_limits: Vec<RateLimitArg>,

    /// A reverse proxy (IP or CIDR) whose X-Forwarded-For names the client for per-IP rate
    /// limits. Repeatable
    #[arg(long = "trusted-proxy", env = "NIMBUS_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Client connections open at once; beyond it, new ones wait in the kernel's backlog
    /// (lowered to fit the file-descriptor limit)
    #[arg(long, env = "NIMBUS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Connections open at once from one client address; more are closed at once (raise it
    /// behind a reverse proxy, whose connections all come from one address)
    #[arg(long, env = "NIMBUS_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 1_000)]
    pub max_connections_per_client: usize,

    /// Time for a request head to arrive whole (enforced within 1.5 times it); an idle keep-alive
    /// connection is closed after it too
    #[arg(long, env = "NIMBUS_HEADER_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub header_timeout: Duration,

    /// Longest pause allowed between two chunks of a request body
    #[arg(long, env = "NIMBUS_BODY_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub body_timeout: Duration,

    /// Also serve /metrics without a token on this address (bind it to a private interface);
    /// on the main listener /metrics needs the admin token
    #[arg(long, env = "NIMBUS_METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// An internal network (CIDR or IP) guests may reach with outbound HTTP. Loopback, private,
    /// link-local (cloud metadata), CGNAT, multicast and unspecified addresses are denied unless
    /// listed here, whatever a function's allow-list says. Repeatable
    #[arg(long = "outbound-allow-net", env = "NIMBUS_OUTBOUND_ALLOW_NETS", value_delimiter = ',', value_parser = parse_net)]
    pub outbound_allow_nets: Vec<ipnet::IpNet>,

    /// Accept push subscription endpoints over plain http:// (a local push service in tests);
    /// HTTPS only otherwise. Internal addresses still need --outbound-allow-net
    #[arg(long = "push-allow-http", env = "NIMBUS_PUSH_ALLOW_HTTP")]
    pub push_allow_http: bool,

    /// The VAPID contact push services see (`mailto:` or `https:` URL)
    #[arg(
        long = "push-vapid-subject",
        env = "NIMBUS_PUSH_VAPID_SUBJECT",
        default_value = "mailto:push@nimbus.invalid"
    )]
    pub push_vapid_subject: String,

    /// How long push messages and their delivery records are kept once delivered or failed
    #[arg(long, env = "NIMBUS_PUSH_RETENTION", value_parser = parse_duration, default_value = "7d")]
    pub push_retention: Duration,

    /// Largest value in the key-value store
    #[arg(long, env = "NIMBUS_KV_MAX_VALUE", value_parser = parse_size, default_value = "1MiB")]
    pub kv_max_value: u64,

    /// Serve the S3-compatible file storage endpoint on this address (off by default). It needs
    /// its own address: S3 signatures cover the whole path
    #[arg(long, env = "NIMBUS_S3_LISTEN", value_parser = parse_listen)]
    pub s3_listen: Option<SocketAddr>,

    /// Virtual-host style S3 requests: `<bucket>.<domain>` names a bucket (default: the base
    /// domain)
    #[arg(long, env = "NIMBUS_S3_DOMAIN")]
    pub s3_domain: Option<String>,

    /// Largest stored file, whatever a bucket allows
    #[arg(long, env = "NIMBUS_MAX_OBJECT_SIZE", value_parser = parse_size, default_value = "5120GiB")]
    pub max_object_size: u64,

    /// Event deliveries (triggers, queues, schedules, async invocations) running at once
    #[arg(long, env = "NIMBUS_EVENT_WORKERS", default_value_t = 256)]
    pub event_workers: usize,

    /// First retry delay of a failed event delivery (doubles per attempt, with jitter)
    #[arg(long, env = "NIMBUS_EVENT_RETRY_BASE", value_parser = parse_duration, default_value = "1s")]
    pub event_retry_base: Duration,

    /// Longest retry delay of a failed event delivery
    #[arg(long, env = "NIMBUS_EVENT_RETRY_MAX", value_parser = parse_duration, default_value = "10m")]
    pub event_retry_max: Duration,

    /// How long dead letters are kept before they are dropped
    #[arg(long, env = "NIMBUS_DEAD_LETTER_RETENTION", value_parser = parse_duration, default_value = "14d")]
    pub dead_letter_retention: Duration,

    /// Undelivered events a project may have before queue publishes and async invocations get 429
    #[arg(long, env = "NIMBUS_MAX_PENDING_EVENTS", default_value_t = 100_000)]
    pub max_pending_events: u64,

    /// Allow plain-http callback URLs for asynchronous invocations (default: https only)
    #[arg(long, env = "NIMBUS_CALLBACK_ALLOW_HTTP")]
    pub callback_allow_http: bool,
}

/// The client flags (`--url`, `--token`, ...) are global to the other commands; defining them
/// here, hidden, keeps clap from propagating them into `serve --help` (it skips ids a subcommand
/// already has), and `run` refuses them with a pointer to what serve takes instead.
#[derive(Args, Debug, Default)]
pub struct ClientFlags {
    #[arg(long, hide = true)]
    url: Option<String>,
    #[arg(long, hide = true)]
    token: Option<String>,
    #[arg(long, hide = true)]
    project: Option<String>,
    #[arg(long, hide = true)]
    profile: Option<String>,
    // Same type as the global flag: both are the id `data_dir`, and NIMBUS_DATA fills it.
    #[arg(long = "data-dir", hide = true)]
    data_dir: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    json: bool,
}

impl ClientFlags {
    fn refuse(&self) -> Result<()> {
        // Only flags typed on `serve`'s command line are mistakes: the client's env variables
        // (NIMBUS_URL, NIMBUS_DATA...) may well be exported in the shell that runs the server,
        // and clap fills these shadows from them too.
        let typed = |value: Option<&std::ffi::OsStr>, env: &str| {
            value.is_some_and(|v| std::env::var_os(env).as_deref() != Some(v))
        };
        fn os(v: &Option<String>) -> Option<&std::ffi::OsStr> {
            v.as_deref().map(std::ffi::OsStr::new)
        }
        let given = [
            ("--url", typed(os(&self.url), "NIMBUS_URL"), "--listen ADDR"),
            (
                "--token",
                typed(os(&self.token), "NIMBUS_TOKEN"),
                "the token it writes to <data>/admin-token",
            ),
            ("--project", typed(os(&self.project), "NIMBUS_PROJECT"), "every project"),
            (
                "--profile",
                typed(os(&self.profile), "NIMBUS_PROFILE"),
                "--data DIR and --listen ADDR",
            ),
            (
                "--data-dir",
                typed(self.data_dir.as_deref().map(std::path::Path::as_os_str), "NIMBUS_DATA"),
                "--data DIR",
            ),
            ("--json", self.json && std::env::var_os("NIMBUS_JSON").is_none(), "--log-format json"),
        ];
        if let Some((flag, _, instead)) = given.iter().find(|g| g.1) {
            bail!(
                "`serve` does not take {flag} (a flag of the client commands); it uses {instead}"
            );
        }
        Ok(())
    }
}

/// `--listen`: `host:port`, or a port alone, which means 127.0.0.1 (like the default; say
/// `0.0.0.0:PORT` to listen on every interface).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = s.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not an address: give HOST:PORT like 127.0.0.1:8080 or 0.0.0.0:8080, or a port like 8080")
    })
}

/// One `--rate-limit` override: `None` turns the limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitArg {
    pub name: String,
    pub limit: Option<(u32, Duration)>,
}

fn parse_rate_limit(s: &str) -> Result<RateLimitArg, String> {
    let (name, value) = s.split_once('=').ok_or("give NAME=COUNT/WINDOW or NAME=off")?;
    let limit = if value == "off" {
        None
    } else {
        let (count, window) = value.split_once('/').ok_or("give COUNT/WINDOW, e.g. 30/1m")?;
        let count: u32 = count.parse().map_err(|_| format!("{count:?} is not a count"))?;
        let window = parse_duration(window)?;
        if count == 0 || window.is_zero() {
            return Err("count and window must be above zero (use NAME=off to disable)".into());
        }
        Some((count, window))
    };
    Ok(RateLimitArg { name: name.trim().to_string(), limit })
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR block"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServeArgs {
    /// The operator's limit policy, checked for defaults above ceilings.
    #[cfg(feature = "server")]
    fn smtp(&self) -> Result<Option<nimbus_server::nimbus_auth::SmtpConfig>> {
        use nimbus_server::nimbus_auth::{SmtpConfig, SmtpSecurity};
        let Some(addr) = &self.smtp else { return Ok(None) };
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .with_context(|| format!("--smtp {addr:?}: give host:port"))?;
        let security = match self.smtp_security.as_str() {
            "none" => SmtpSecurity::None,
            "starttls" => SmtpSecurity::StartTls,
            "tls" => SmtpSecurity::Tls,
            other => anyhow::bail!("--smtp-security {other:?}: use none, starttls or tls"),
        };
        Ok(Some(SmtpConfig {
            host,
            port,
            security,
            username: self.smtp_user.clone(),
            password: self.smtp_password.clone(),
            from: self.smtp_from.clone(),
            timeout: Duration::from_secs(10),
        }))
    }

    #[cfg(feature = "server")]
    fn rate_limits(&self) -> Result<nimbus_server::nimbus_auth::RateLimits> {
        use nimbus_server::nimbus_auth::{RateLimit, RateLimits};
        let mut limits = RateLimits::default();
        for arg in &self.rate_limits {
            let limit = arg.limit.map(|(count, window)| RateLimit::new(count, window));
            limits.set(&arg.name, limit).map_err(|e| anyhow::anyhow!("--rate-limit: {e}"))?;
        }
        Ok(limits)
    }

    pub fn limit_policy(&self) -> Result<LimitPolicy> {
        let defaults = Limits {
            timeout_ms: self.default_timeout,
            memory_bytes: self.default_memory,
            max_concurrency: self.default_concurrency,
            max_queue: self.default_queue,
            max_body_bytes: self.max_body,
            min_warm: 0,
        };
        let ceilings = Limits {
            timeout_ms: self.max_timeout,
            memory_bytes: self.max_memory,
            max_concurrency: self.max_concurrency,
            max_queue: self.max_queue,
            max_body_bytes: self.max_body_ceiling,
            min_warm: self.max_min_warm,
        };
        // Values in the units the flags take (`2s`, `1GiB`), not milliseconds and bytes.
        let count = |n: u64| n.to_string();
        type Pair = (&'static str, &'static str, u64, u64, fn(u64) -> String);
        let pairs: [Pair; 5] = [
            (
                "--default-timeout",
                "--max-timeout",
                defaults.timeout_ms,
                ceilings.timeout_ms,
                nimbus_model::format_ms,
            ),
            (
                "--default-memory",
                "--max-memory",
                defaults.memory_bytes,
                ceilings.memory_bytes,
                nimbus_model::format_size,
            ),
            (
                "--default-concurrency",
                "--max-concurrency",
                defaults.max_concurrency.into(),
                ceilings.max_concurrency.into(),
                count,
            ),
            (
                "--default-queue",
                "--max-queue",
                defaults.max_queue.into(),
                ceilings.max_queue.into(),
                count,
            ),
            (
                "--max-body",
                "--max-body-ceiling",
                defaults.max_body_bytes,
                ceilings.max_body_bytes,
                nimbus_model::format_size,
            ),
        ];
        for (default, ceiling, d, c, fmt) in pairs {
            if d > c {
                bail!("{default} ({}) is above {ceiling} ({})", fmt(d), fmt(c));
            }
            if d == 0 && default != "--default-queue" {
                bail!("{default} must be greater than zero");
            }
        }
        Ok(LimitPolicy { defaults, ceilings })
    }

    #[cfg(feature = "server")]
    pub fn server_config(&self) -> Result<ServerConfig> {
        Ok(ServerConfig {
            data_dir: self.data.clone(),
            listen: self.listen,
            limits: self.limit_policy()?,
            log_bytes_per_invocation: usize::try_from(self.log_bytes)
                .context("--log-bytes is too large")?,
            log_retention: self.log_retention,
            log_keep_per_function: self.log_keep,
            queue_timeout: self.queue_timeout,
            instance_pool_size: self.instance_pool,
            base_domain: self.base_domain.clone(),
            auth: nimbus_server::nimbus_auth::AuthConfig {
                public_url: self
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", self.listen)),
                password_hash: nimbus_server::nimbus_auth::PasswordHashConfig {
                    memory_kib: self.argon2_memory_kib,
                    iterations: self.argon2_iterations,
                    parallelism: self.argon2_parallelism,
                },
                rate_limits: self.rate_limits()?,
                max_concurrent_hashes: self
                    .max_concurrent_hashes
                    .map_or_else(nimbus_server::nimbus_auth::default_concurrent_hashes, |n| {
                        n as usize
                    }),
                refresh_reuse_grace: self.refresh_reuse_grace,
                ..Default::default()
            },
            smtp: self.smtp()?,
            trusted_proxies: self.trusted_proxies.clone(),
            connections: nimbus_server::ConnectionLimits {
                max_connections: self.max_connections.max(1),
                max_per_client: self.max_connections_per_client.max(1),
                header_timeout: self.header_timeout,
                body_timeout: self.body_timeout,
            },
            metrics_listen: self.metrics_listen,
            outbound_allow_nets: self.outbound_allow_nets.clone(),
            kv: nimbus_server::nimbus_kv::KvConfig {
                max_value_bytes: usize::try_from(self.kv_max_value)
                    .context("--kv-max-value is too large")?,
                ..Default::default()
            },
            documents: nimbus_server::nimbus_documents::DocumentsConfig {
                max_document_bytes: usize::try_from(self.max_document_size)
                    .context("--max-document-size is too large")?,
                ..Default::default()
            },
            event_retention: self.event_retention,
            compile_cache_bytes: self.compile_cache_size,
            code_memory_budget: self.code_memory_budget,
            files: nimbus_server::nimbus_files::FilesConfig {
                max_object_bytes: self.max_object_size,
                ..Default::default()
            },
            push: nimbus_server::nimbus_push::PushConfig {
                allow_http: self.push_allow_http,
                vapid_subject: self.push_vapid_subject.clone(),
                retention: self.push_retention,
                ..Default::default()
            },
            s3_listen: self.s3_listen,
            s3: nimbus_server::S3Limits { domain: self.s3_domain.clone(), ..Default::default() },
            triggers: nimbus_server::nimbus_triggers::TriggersConfig {
                max_in_flight: self.event_workers.max(1),
                retry_base: self.event_retry_base,
                retry_max: self.event_retry_max.max(self.event_retry_base),
                dead_retention: self.dead_letter_retention,
                max_pending_per_project: self.max_pending_events,
                callback_allow_http: self.callback_allow_http,
                ..Default::default()
            },
            prices: match &self.pricing {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading the price sheet {}", path.display()))?;
                    Some(
                        nimbus_model::usage::PriceSheet::from_toml(&text)
                            .with_context(|| format!("in {}", path.display()))?,
                    )
                }
            },
        })
    }
}

#[cfg_attr(not(feature = "server"), allow(dead_code))]
fn init_tracing(format: LogFormat) {
    let filter = std::env::var("NIMBUS_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only for a person at a terminal: log files and pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(crate::output::colour_on_stderr());
    // A second initialisation (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

#[cfg(not(feature = "server"))]
pub async fn run(_g: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    args.client_flags.refuse()?;
    args.limit_policy()?;
    bail!(
        "this nimbus was built without the server (cargo feature `server`); \
         install the full build to run `nimbus serve`"
    )
}

#[cfg(feature = "server")]
pub async fn run(_g: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    args.client_flags.refuse()?;
    init_tracing(args.log_format);
    let config = args.server_config()?;
    let data_dir = config.data_dir.clone();
    let first_start = !data_dir.join(ADMIN_TOKEN_FILE).exists();
    let server = Server::bind(config).await.with_context(|| {
        format!("cannot start the server (data directory {})", data_dir.display())
    })?;
    let addr = server.local_addr();
    // Saved before the "listening" line, so that whoever waits for that line finds the profile.
    if first_start && !args.no_profile {
        save_local_profile(&data_dir, addr);
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "nimbus listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(
        token_file = %data_dir.join(ADMIN_TOKEN_FILE).display(),
        "admin token for the CLI and API"
    );
    server.run(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Save this server as the CLI config's `local` profile (the default one if there is none), so
/// that `nimbus deploy` works from any directory. A failure is only logged: the server runs anyway.
#[cfg(feature = "server")]
fn save_local_profile(data_dir: &std::path::Path, addr: SocketAddr) {
    use crate::config::{Config, LOCAL_PROFILE, Profile, config_path};
    let result = (|| -> Result<std::path::PathBuf> {
        let token = std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE))?.trim().to_string();
        // A wildcard address is reached through loopback from this machine.
        let host = match addr.ip() {
            ip if ip.is_unspecified() && addr.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let path = config_path()?;
        let mut cfg = Config::load(&path)?;
        let url = format!("http://{host}:{}", addr.port());
        cfg.profiles
            .insert(LOCAL_PROFILE.into(), Profile { url, token: Some(token), project: None });
        cfg.default_profile.get_or_insert_with(|| LOCAL_PROFILE.into());
        cfg.save(&path)?;
        Ok(path)
    })();
    match result {
        Ok(path) => {
            tracing::info!(config = %path.display(), "saved this server as the CLI profile `local`")
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not save the CLI profile `local`")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: ServeArgs,
    }

    #[test]
    fn listen_takes_a_port_alone() {
        assert_eq!(parse_listen("8081").unwrap(), "127.0.0.1:8081".parse().unwrap());
        assert_eq!(parse_listen("localhost:9").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert_eq!(parse_listen("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(parse_listen("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_listen("nope").unwrap_err().contains("8080"));
        assert!(parse_listen("70000").is_err());
    }

    #[test]
    fn defaults_match_the_model() {
        let t = T::try_parse_from(["nimbus"]).unwrap();
        assert_eq!(t.s.limit_policy().unwrap(), LimitPolicy::default());
    }

    #[cfg(feature = "server")]
    #[test]
    fn server_config_from_defaults() {
        let t = T::try_parse_from(["nimbus"]).unwrap();
        let c = t.s.server_config().unwrap();
        assert_eq!(c.log_bytes_per_invocation, 64 * 1024);
        assert_eq!(c.log_retention, Duration::from_secs(7 * 86400));
        assert_eq!(c.queue_timeout, Duration::from_secs(10));
        assert_eq!(c.instance_pool_size, 1000);
        assert_eq!(c.log_keep_per_function, 10_000);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            c.auth.max_concurrent_hashes,
            nimbus_server::nimbus_auth::default_concurrent_hashes()
        );
        let t = T::try_parse_from(["nimbus", "--max-concurrent-hashes", "3"]).unwrap();
        assert_eq!(t.s.server_config().unwrap().auth.max_concurrent_hashes, 3);
        assert!(T::try_parse_from(["nimbus", "--max-concurrent-hashes", "0"]).is_err());
    }

    #[test]
    fn flags_set_the_policy() {
        let t = T::try_parse_from([
            "nimbus",
            "--default-timeout",
            "2s",
            "--max-memory",
            "1GiB",
            "--max-body",
            "1MB",
            "--listen",
            "0.0.0.0:9000",
        ])
        .unwrap();
        let p = t.s.limit_policy().unwrap();
        assert_eq!(p.defaults.timeout_ms, 2000);
        assert_eq!(p.ceilings.memory_bytes, 1 << 30);
        assert_eq!(p.defaults.max_body_bytes, 1_000_000);
        let t = T::try_parse_from(["nimbus", "--default-memory", "1GiB"]).unwrap();
        let err = t.s.limit_policy().unwrap_err().to_string();
        assert!(err.contains("--default-memory") && err.contains("--max-memory"), "{err}");
        assert!(err.contains("(1GiB)") && err.contains("(512MiB)"), "{err}");
    }

    #[cfg(feature = "server")]
    #[test]
    fn rate_limits_and_trusted_proxies_from_flags() {
        use nimbus_server::nimbus_auth::{RateLimit, RateLimits};
        let t = T::try_parse_from([
            "nimbus",
            "--rate-limit",
            "sign_in_per_ip=5/10s,refresh_per_account=off",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "::1",
        ])
        .unwrap();
        let c = t.s.server_config().unwrap();
        let limits = c.auth.rate_limits;
        assert_eq!(limits.sign_in_per_ip, Some(RateLimit::new(5, Duration::from_secs(10))));
        assert_eq!(limits.refresh_per_account, None);
        assert_eq!(
            limits.sign_up_per_ip,
            RateLimits::default().sign_up_per_ip,
            "others keep defaults"
        );
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);

        // The flag's help names every limit there is.
        let command = <T as clap::CommandFactory>::command();
        let arg = command.get_arguments().find(|a| a.get_id() == "rate_limits").unwrap();
        let help = arg.get_long_help().or(arg.get_help()).unwrap().to_string();
        for name in RateLimits::names() {
            assert!(help.contains(name), "--rate-limit help lacks {name}: {help}");
        }

        let t = T::try_parse_from(["nimbus", "--rate-limit", "sign_on=5/1m"]).unwrap();
        let err = t.s.server_config().unwrap_err().to_string();
        assert!(err.contains("sign_on") && err.contains("sign_in_per_ip"), "{err}");
        for bad in
            ["sign_in_per_ip", "sign_in_per_ip=5", "sign_in_per_ip=0/1m", "sign_in_per_ip=x/1m"]
        {
            assert!(T::try_parse_from(["nimbus", "--rate-limit", bad]).is_err(), "{bad}");
        }
        assert!(T::try_parse_from(["nimbus", "--trusted-proxy", "10.0.0.0/33"]).is_err());
    }

    #[cfg(feature = "server")]
    #[test]
    fn outbound_allow_nets_from_flags() {
        let t = T::try_parse_from(["nimbus"]).unwrap();
        assert!(t.s.server_config().unwrap().outbound_allow_nets.is_empty(), "none by default");
        let t = T::try_parse_from([
            "nimbus",
            "--outbound-allow-net",
            "127.0.0.0/8,10.1.0.0/16",
            "--outbound-allow-net",
            "fd00::1",
        ])
        .unwrap();
        let nets: Vec<String> =
            t.s.server_config()
                .unwrap()
                .outbound_allow_nets
                .iter()
                .map(|n| n.to_string())
                .collect();
        assert_eq!(nets, ["127.0.0.0/8", "10.1.0.0/16", "fd00::1/128"]);
        assert!(T::try_parse_from(["nimbus", "--outbound-allow-net", "localhost"]).is_err());
    }
}
