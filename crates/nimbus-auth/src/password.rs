//! Password policy and Argon2id hashing.

use std::collections::HashSet;
use std::sync::OnceLock;

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
}
