//! [`AuthConfig`]: the operator's knobs, with defaults that are safe in production.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use nimbus_model::UnixMillis;

/// Argon2id cost. Verification reads the parameters from the stored hash, so changing them only
/// affects new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordHashConfig {
    /// OWASP's recommended Argon2id minimum: m = 19 MiB, t = 2, p = 1.
    fn default() -> Self {
        PasswordHashConfig { memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

impl PasswordHashConfig {
    /// Tiny parameters for tests: fast, and never for production.
    pub fn insecure_for_tests() -> Self {
        PasswordHashConfig { memory_kib: 64, iterations: 1, parallelism: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Minimum length in characters.
    pub min_chars: usize,
    /// Maximum length in bytes: bounds the hashing cost of a hostile request.
    pub max_bytes: usize,
    /// Reject the ~10,000 most common passwords (case-insensitively).
    pub reject_common: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy { min_chars: 10, max_bytes: 128, reject_common: true }
    }
}

/// At most `count` attempts per `window` (a token bucket that refills one attempt every
/// `window / count`, full at `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub window: Duration,
}

impl RateLimit {
    pub const fn new(count: u32, window: Duration) -> Self {
        RateLimit { count, window }
    }
}

/// Limits per client IP and per account (email, or refresh token family) for each guarded action.
/// `None` disables that limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub sign_in_per_ip: Option<RateLimit>,
    pub sign_in_per_account: Option<RateLimit>,
    pub sign_up_per_ip: Option<RateLimit>,
    pub sign_up_per_account: Option<RateLimit>,
    pub password_reset_per_ip: Option<RateLimit>,
    pub password_reset_per_account: Option<RateLimit>,
    pub refresh_per_ip: Option<RateLimit>,
    pub refresh_per_account: Option<RateLimit>,
    /// Anonymous sign-ins and email-verification requests, per IP.
    pub other_per_ip: Option<RateLimit>,
}

impl Default for RateLimits {
    fn default() -> Self {
        const MIN: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        RateLimits {
            sign_in_per_ip: Some(RateLimit::new(30, MIN)),
            sign_in_per_account: Some(RateLimit::new(10, MIN * 5)),
            sign_up_per_ip: Some(RateLimit::new(10, HOUR)),
            sign_up_per_account: Some(RateLimit::new(3, HOUR)),
            password_reset_per_ip: Some(RateLimit::new(10, HOUR)),
            password_reset_per_account: Some(RateLimit::new(3, HOUR)),
            refresh_per_ip: Some(RateLimit::new(300, MIN)),
            refresh_per_account: Some(RateLimit::new(10, MIN)),
            other_per_ip: Some(RateLimit::new(30, MIN)),
        }
    }
}

/// Where one named limit lives in [`RateLimits`].
type LimitField = fn(&mut RateLimits) -> &mut Option<RateLimit>;

impl RateLimits {
    /// Each limit's name, as operators write it, and its field: one table, so names and fields
    /// cannot drift apart.
    const BY_NAME: [(&'static str, LimitField); 9] = [
        ("sign_in_per_ip", |l| &mut l.sign_in_per_ip),
        ("sign_in_per_account", |l| &mut l.sign_in_per_account),
        ("sign_up_per_ip", |l| &mut l.sign_up_per_ip),
        ("sign_up_per_account", |l| &mut l.sign_up_per_account),
        ("password_reset_per_ip", |l| &mut l.password_reset_per_ip),
        ("password_reset_per_account", |l| &mut l.password_reset_per_account),
        ("refresh_per_ip", |l| &mut l.refresh_per_ip),
        ("refresh_per_account", |l| &mut l.refresh_per_account),
        ("other_per_ip", |l| &mut l.other_per_ip),
    ];

    /// Set one limit by name (`None` turns it off). Errors name the accepted names.
    pub fn set(&mut self, name: &str, limit: Option<RateLimit>) -> Result<(), String> {
        let Some((_, field)) = Self::BY_NAME.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = Self::BY_NAME.iter().map(|(n, _)| *n).collect();
            return Err(format!("unknown rate limit {name:?}; known: {}", known.join(", ")));
        };
        *field(self) = limit;
        Ok(())
    }

    /// No limits at all (tests that are not about limits).
    pub fn unlimited() -> Self {
        RateLimits {
            sign_in_per_ip: None,
            sign_in_per_account: None,
            sign_up_per_ip: None,
            sign_up_per_account: None,
            password_reset_per_ip: None,
            password_reset_per_account: None,
            refresh_per_ip: None,
            refresh_per_account: None,
            other_per_ip: None,
        }
    }
}

/// Where time comes from: the system clock, or a manual one in tests (token expiry without
/// sleeping). Rate limits use their own monotonic clock.
pub trait Clock: Send + Sync + 'static {
    fn now_millis(&self) -> UnixMillis;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> UnixMillis {
        nimbus_model::now_millis()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: UnixMillis) -> Self {
        ManualClock(AtomicI64::new(now))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> UnixMillis {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// A refresh token presented again within this long after its first use is taken for a
    /// concurrent refresh (two tabs of one app) and answered with a new token, instead of
    /// revoking the session as reuse. Zero makes every second use a reuse.
    pub refresh_reuse_grace: Duration,
    pub email_verification_ttl: Duration,
    pub password_reset_ttl: Duration,
    /// Allowed clock difference when checking `exp`/`nbf`.
    pub leeway: Duration,
    pub password_hash: PasswordHashConfig,
    pub password_policy: PasswordPolicy,
    pub rate_limits: RateLimits,
    /// Base of the links in emails, e.g. `https://nimbus.example.com`. Links are
    /// `{base}/v1/projects/{project}/auth/verify-email?token=…` and `…/auth/reset-password?token=…`.
    pub public_url: String,
    /// Product name in email subjects.
    pub app_name: String,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("refresh_reuse_grace", &self.refresh_reuse_grace)
            .field("password_hash", &self.password_hash)
            .field("password_policy", &self.password_policy)
            .field("rate_limits", &self.rate_limits)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "nimbus".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(10),
            email_verification_ttl: Duration::from_secs(24 * 3600),
            password_reset_ttl: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
            password_hash: PasswordHashConfig::default(),
            password_policy: PasswordPolicy::default(),
            rate_limits: RateLimits::default(),
            public_url: "http://127.0.0.1:8080".into(),
            app_name: "Nimbus".into(),
            clock: Arc::new(SystemClock),
        }
    }
}
