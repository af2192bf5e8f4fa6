//! Access tokens: EdDSA (Ed25519) JWTs, one key set per project, published as a JWKS.
//!
//! Signing goes through `jsonwebtoken`. Verification is done here, on purpose: `jsonwebtoken`
//! decompresses the Ed25519 public key on every call, which costs about as much as the signature
//! check itself; keeping each project's [`VerifyingKey`]s decoded in memory halves the cost. The
//! parser is strict: exactly three base64url (unpadded) segments, `alg` must be `EdDSA` (so
//! `none` and HMAC-confusion tokens fail before any key is touched), `kid` must name one of the
//! project's keys, no `crit`, and the signature is checked with `verify_strict` (no malleable or
//! small-order encodings). Tests cross-check both directions with `jsonwebtoken` through the JWKS.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use nimbus_model::UnixMillis;
use nimbus_store::auth::SigningKeyRecord;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::AuthError;

/// The claims of a Nimbus access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer (`AuthConfig::issuer`).
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The project id: a token is only valid for its own project.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    /// Token id (UUIDv7).
    pub jti: String,
    /// The session (refresh-token family) this token was issued for.
    pub sid: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Custom claims set by an administrator (`set_user_claims`), nested so they can never shadow
    /// a registered claim.
    #[serde(default)]
    pub custom: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub anon: bool,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A fresh Ed25519 key pair as stored: PKCS#8 private key, raw public key, RFC 7638 thumbprint as
/// `kid`.
pub(crate) fn generate_key(now: UnixMillis) -> Result<SigningKeyRecord, AuthError> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let signing = SigningKey::from_bytes(&seed);
    let der = signing.to_pkcs8_der().map_err(AuthError::internal)?;
    let public = signing.verifying_key().to_bytes();
    Ok(SigningKeyRecord {
        kid: thumbprint(&public),
        private_pkcs8: der.as_bytes().to_vec(),
        public_key: public.to_vec(),
        created_at: now,
    })
}

/// RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 §2 member order).
fn thumbprint(public: &[u8]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, B64.encode(public));
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A project's keys, decoded once: the newest signs, all verify.
pub(crate) struct ProjectKeys {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    verifying: HashMap<String, VerifyingKey>,
    jwks: serde_json::Value,
}

impl ProjectKeys {
    /// `records` newest first, at least one.
    pub(crate) fn new(records: &[SigningKeyRecord]) -> Result<Self, AuthError> {
        let newest =
            records.first().ok_or_else(|| AuthError::internal("project has no signing key"))?;
        let mut verifying = HashMap::new();
        let mut jwks = Vec::new();
        for r in records {
            let bytes: [u8; 32] =
                r.public_key.as_slice().try_into().map_err(|_| {
                    AuthError::internal(format!("signing key {} is malformed", r.kid))
                })?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(AuthError::internal)?;
            verifying.insert(r.kid.clone(), key);
            jwks.push(serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": B64.encode(bytes),
                "kid": r.kid,
                "alg": "EdDSA",
                "use": "sig",
            }));
        }
        Ok(ProjectKeys {
            kid: newest.kid.clone(),
            encoding: jsonwebtoken::EncodingKey::from_ed_der(&newest.private_pkcs8),
            verifying,
            jwks: serde_json::json!({ "keys": jwks }),
        })
    }

    pub(crate) fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    pub(crate) fn signing_kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(AuthError::internal)
    }

    /// Check the token's form and signature and parse its claims. Time, issuer and audience are
    /// the caller's to check.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut parts = token.splitn(4, '.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::InvalidToken);
        };
        let header_json = B64.decode(h).map_err(|_| AuthError::InvalidToken)?;
        let header: Header =
            serde_json::from_slice(&header_json).map_err(|_| AuthError::InvalidToken)?;
        if header.alg != "EdDSA" || header.crit.is_some() {
            return Err(AuthError::InvalidToken);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(AuthError::InvalidToken)?;
        let mut sig = [0u8; 64];
        match B64.decode_slice(s, &mut sig) {
            Ok(64) => {}
            _ => return Err(AuthError::InvalidToken),
        }
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        key.verify_strict(signed, &Signature::from_bytes(&sig))
            .map_err(|_| AuthError::InvalidToken)?;
        let payload = B64.decode(p).map_err(|_| AuthError::InvalidToken)?;
        serde_json::from_slice(&payload).map_err(|_| AuthError::InvalidToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "nimbus".into(),
            sub: "u1".into(),
            aud: "default".into(),
            exp: 2_000_000_000,
            iat: 1_000_000_000,
            nbf: 1_000_000_000,
            jti: "j".into(),
            sid: "s".into(),
            roles: vec!["admin".into()],
            custom: Default::default(),
            anon: false,
            email_verified: true,
            email: None,
        }
    }

    #[test]
    fn round_trip_and_rotation() {
        let old = generate_key(1).unwrap();
        let new = generate_key(2).unwrap();
        let keys_old = ProjectKeys::new(std::slice::from_ref(&old)).unwrap();
        let token_old = keys_old.sign(&claims()).unwrap();
        let keys = ProjectKeys::new(&[new.clone(), old.clone()]).unwrap();
        assert_eq!(keys.signing_kid(), new.kid);
        // A token from the previous key still verifies after rotation.
        assert_eq!(keys.verify(&token_old).unwrap(), claims());
        let token = keys.sign(&claims()).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), claims());
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 2);
        // A key set without the signer rejects.
        let other = ProjectKeys::new(&[generate_key(3).unwrap()]).unwrap();
        assert!(other.verify(&token).is_err());
        for bad in ["", "a.b", "a.b.c.d", &format!("{token}x"), &token.replace('.', "..")] {
            assert!(keys.verify(bad).is_err(), "{bad}");
        }
    }
}
