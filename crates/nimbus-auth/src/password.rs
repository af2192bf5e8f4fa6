//! Password policy and Argon2id hashing, with a bound on how many hashes run at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use rand::RngCore;

use crate::config::{PasswordHashConfig, PasswordPolicy};
use crate::error::AuthError;

/// The 10,000 most common passwords (zxcvbn's frequency list; see the file's header).
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Check a new password against the policy. The error's reason is safe to show to the user.
pub fn check_policy(
    policy: &PasswordPolicy,
    password: &str,
    email: Option<&str>,
) -> Result<(), AuthError> {
    let chars = password.chars().count();
    if chars < policy.min_chars {
        return Err(AuthError::WeakPassword(format!(
            "must be at least {} characters long",
            policy.min_chars
        )));
    }
    if password.len() > policy.max_bytes {
        return Err(AuthError::WeakPassword(format!(
            "must be at most {} bytes long",
            policy.max_bytes
        )));
    }
    let lower = password.to_lowercase();
    if policy.reject_common && common_passwords().contains(lower.as_str()) {
        return Err(AuthError::WeakPassword("is one of the most common passwords".into()));
    }
    if email.is_some_and(|e| e.eq_ignore_ascii_case(password)) {
        return Err(AuthError::WeakPassword("must not be the email address".into()));
    }
    if password.chars().all(|c| password.starts_with(c)) {
        return Err(AuthError::WeakPassword("must not repeat a single character".into()));
    }
    Ok(())
}

/// Hashes and verifies passwords with Argon2id. CPU- and memory-heavy: call from a blocking thread.
#[derive(Clone)]
pub struct PasswordHasherService {
    argon: Argon2<'static>,
    /// A hash of a random password with the configured parameters: verified against when the email
    /// is unknown, so that answer takes as long as a wrong password.
    dummy: String,
}

impl PasswordHasherService {
    pub fn new(config: PasswordHashConfig) -> Result<Self, AuthError> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| AuthError::InvalidInput(format!("argon2 parameters: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut this = PasswordHasherService { argon, dummy: String::new() };
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        this.dummy = this.hash(&hex::encode(random))?;
        Ok(this)
    }

    /// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(AuthError::internal)?;
        Ok(self
            .argon
            .hash_password(password.as_bytes(), &salt)
            .map_err(AuthError::internal)?
            .to_string())
    }

    /// Whether `password` matches `hash` (a PHC string; its own parameters are used). `None`
    /// verifies against the dummy hash and returns false, taking the same time.
    pub fn verify(&self, password: &str, hash: Option<&str>) -> bool {
        let (stored, real) = match hash {
            Some(h) => (h, true),
            None => (self.dummy.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        let ok = self.argon.verify_password(password.as_bytes(), &parsed).is_ok();
        ok && real
    }
}

/// How long a client is told to wait (`Retry-After`) when every hashing slot stayed busy.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Every Argon2 computation of the service goes through here: on the blocking pool (Argon2 takes
/// milliseconds of CPU and megabytes of memory, which must not sit on an async worker), and at most
/// `max_concurrent` at once, so a flood of sign-ups or sign-ins costs at most that many cores and
/// `max_concurrent x memory_kib` of memory. A request that finds every slot taken waits up to
/// `max_wait` (a tokio semaphore is fair: first come, first served), then gets
/// [`AuthError::Busy`] instead of queueing without bound.
#[derive(Clone)]
pub(crate) struct BoundedHasher {
    hasher: PasswordHasherService,
    slots: Arc<tokio::sync::Semaphore>,
    max_wait: Duration,
    /// Argon2 computations started (hashes and verifications, dummy ones included).
    computed: Arc<AtomicU64>,
}

impl BoundedHasher {
    pub(crate) fn new(
        hasher: PasswordHasherService,
        max_concurrent: usize,
        max_wait: Duration,
    ) -> Result<Self, AuthError> {
        if max_concurrent == 0 {
            return Err(AuthError::InvalidInput(
                "the number of concurrent password hashes must be at least 1".into(),
            ));
        }
        Ok(BoundedHasher {
            hasher,
            slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            max_wait,
            computed: Arc::new(AtomicU64::new(0)),
        })
    }

    pub(crate) fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    /// Run `work` with the hasher on the blocking pool once a slot is free. The slot moves into the
    /// blocking task: if the caller goes away mid-hash, the slot stays taken until the hash ends,
    /// so the bound holds for the CPU actually in use.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasherService) -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let slot = tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy { retry_after: BUSY_RETRY_AFTER })?
            .map_err(AuthError::internal)?;
        let hasher = self.hasher.clone();
        let computed = self.computed.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            computed.fetch_add(1, Ordering::Relaxed);
            work(&hasher)
        })
        .await
        .map_err(AuthError::internal)
    }

    pub(crate) async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move |h| h.hash(&password)).await?
    }

    /// See [`PasswordHasherService::verify`]; `None` verifies against the dummy hash.
    pub(crate) async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, AuthError> {
        self.run(move |h| h.verify(&password, hash.as_deref())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let p = PasswordPolicy::default();
        assert!(check_policy(&p, "correct horse battery", None).is_ok());
        for bad in ["short", "1234567890", "qwertyuiop", "aaaaaaaaaaaa", &"x".repeat(129)] {
            assert!(
                matches!(check_policy(&p, bad, None), Err(AuthError::WeakPassword(_))),
                "{bad}"
            );
        }
        assert!(check_policy(&p, "Alice@Example.com", Some("alice@example.com")).is_err());
        assert!(common_passwords().len() >= 9_900);
    }

    #[test]
    fn hash_and_verify() {
        let h = PasswordHasherService::new(PasswordHashConfig::insecure_for_tests()).unwrap();
        let hash = h.hash("pässwörd one").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(h.verify("pässwörd one", Some(&hash)));
        assert!(!h.verify("pässwörd two", Some(&hash)));
        assert!(!h.verify("anything", None));
        assert!(!h.verify("x", Some("not a hash")));
    }

    #[tokio::test]
    async fn bounded_hasher_answers_busy_beyond_its_slots_and_counts() {
        let h = PasswordHasherService::new(PasswordHashConfig::insecure_for_tests()).unwrap();
        let bounded = BoundedHasher::new(h, 1, Duration::from_millis(20)).unwrap();
        // Hold the only slot, as a long hash would.
        let held = bounded.slots.clone().acquire_owned().await.unwrap();
        match bounded.hash("a fine passphrase".into()).await {
            Err(AuthError::Busy { retry_after }) => assert!(retry_after >= Duration::from_secs(1)),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(bounded.computed(), 0, "nothing was hashed while busy");
        drop(held);
        let hash = bounded.hash("a fine passphrase".into()).await.unwrap();
        assert!(bounded.verify("a fine passphrase".into(), Some(hash)).await.unwrap());
        assert!(!bounded.verify("a fine passphrase".into(), None).await.unwrap());
        assert_eq!(bounded.computed(), 3);
        assert!(BoundedHasher::new(bounded.hasher.clone(), 0, Duration::ZERO).is_err());
    }
}
