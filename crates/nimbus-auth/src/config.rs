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

/// Limits per client IP and per account for each unauthenticated (or cheaply authenticated) auth
/// endpoint. `None` disables that limit. Every endpoint that a stranger can call has at least a
/// per-IP limit; "account" is the email named in the request, the user of the bearer token, or
/// the refresh token's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `signin`, per IP and per email.
    pub sign_in_per_ip: Option<RateLimit>,
    pub sign_in_per_account: Option<RateLimit>,
    /// `signup` and `upgrade` (both register an email and hash a password), per IP and per email.
    pub sign_up_per_ip: Option<RateLimit>,
    pub sign_up_per_account: Option<RateLimit>,
    /// `reset-password/request` (sends an email), per IP and per email.
    pub password_reset_per_ip: Option<RateLimit>,
    pub password_reset_per_account: Option<RateLimit>,
    /// `reset-password` (spends an emailed token, sets a password), per IP.
    pub reset_password_per_ip: Option<RateLimit>,
    /// `refresh` and `signout` (both present a refresh token), per IP and per token.
    pub refresh_per_ip: Option<RateLimit>,
    pub refresh_per_account: Option<RateLimit>,
    /// `anonymous` (creates a user), per IP.
    pub anonymous_per_ip: Option<RateLimit>,
    /// `verify-email/request` (sends an email), per IP and per user.
    pub verification_request_per_ip: Option<RateLimit>,
    pub verification_request_per_account: Option<RateLimit>,
    /// `verify-email` (spends an emailed token), per IP.
    pub verify_email_per_ip: Option<RateLimit>,
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
            // A person clicks one link; several people behind one NAT may each click a few.
            reset_password_per_ip: Some(RateLimit::new(10, MIN * 5)),
            refresh_per_ip: Some(RateLimit::new(300, MIN)),
            refresh_per_account: Some(RateLimit::new(10, MIN)),
            anonymous_per_ip: Some(RateLimit::new(30, MIN)),
            verification_request_per_ip: Some(RateLimit::new(10, HOUR)),
            verification_request_per_account: Some(RateLimit::new(3, HOUR)),
            verify_email_per_ip: Some(RateLimit::new(10, MIN * 5)),
        }
    }
}

/// Where one named limit lives in [`RateLimits`].
type LimitField = fn(&mut RateLimits) -> &mut Option<RateLimit>;

impl RateLimits {
    /// Each limit's name, as operators write it, and its field: one table, so names and fields
    /// cannot drift apart.
    const BY_NAME: [(&'static str, LimitField); 13] = [
        ("sign_in_per_ip", |l| &mut l.sign_in_per_ip),
        ("sign_in_per_account", |l| &mut l.sign_in_per_account),
        ("sign_up_per_ip", |l| &mut l.sign_up_per_ip),
        ("sign_up_per_account", |l| &mut l.sign_up_per_account),
        ("password_reset_per_ip", |l| &mut l.password_reset_per_ip),
        ("password_reset_per_account", |l| &mut l.password_reset_per_account),
        ("reset_password_per_ip", |l| &mut l.reset_password_per_ip),
        ("refresh_per_ip", |l| &mut l.refresh_per_ip),
        ("refresh_per_account", |l| &mut l.refresh_per_account),
        ("anonymous_per_ip", |l| &mut l.anonymous_per_ip),
        ("verification_request_per_ip", |l| &mut l.verification_request_per_ip),
        ("verification_request_per_account", |l| &mut l.verification_request_per_account),
        ("verify_email_per_ip", |l| &mut l.verify_email_per_ip),
    ];

    /// The names [`RateLimits::set`] accepts.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::BY_NAME.iter().map(|(n, _)| *n)
    }

    /// Set one limit by name (`None` turns it off). Errors name the accepted names.
    pub fn set(&mut self, name: &str, limit: Option<RateLimit>) -> Result<(), String> {
        let Some((_, field)) = Self::BY_NAME.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = Self::names().collect();
            return Err(format!("unknown rate limit {name:?}; known: {}", known.join(", ")));
        };
        *field(self) = limit;
        Ok(())
    }

    /// No limits at all (tests that are not about limits).
    pub fn unlimited() -> Self {
        let mut limits = RateLimits::default();
        for (_, field) in Self::BY_NAME {
            *field(&mut limits) = None;
        }
        limits
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
    /// Password hashes (and verifications) that may run at once, each on a blocking thread with
    /// `password_hash.memory_kib` of memory. Default: the number of cores.
    pub max_concurrent_hashes: usize,
    /// How long a request waits for a hashing slot before it is answered `Busy` (503).
    pub hash_wait: Duration,
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
            .field("max_concurrent_hashes", &self.max_concurrent_hashes)
            .field("hash_wait", &self.hash_wait)
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
            max_concurrent_hashes: default_concurrent_hashes(),
            hash_wait: Duration::from_millis(250),
            public_url: "http://127.0.0.1:8080".into(),
            app_name: "Nimbus".into(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// One hash per core: hashing is pure CPU, so more at once only adds memory and latency.
pub fn default_concurrent_hashes() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_its_own_name() {
        let somes = |l: &RateLimits| format!("{l:?}").matches("Some(").count();
        // A field missing from the table would stay `Some` here.
        let mut limits = RateLimits::unlimited();
        assert_eq!(somes(&limits), 0);
        let one = Some(RateLimit::new(1, Duration::from_secs(1)));
        for (i, name) in RateLimits::names().enumerate() {
            limits.set(name, one).unwrap();
            assert_eq!(somes(&limits), i + 1, "{name} shares a field with an earlier name");
        }
        let err = limits.set("other_per_ip", None).unwrap_err();
        assert!(err.contains("verify_email_per_ip"), "{err}");
    }
}
