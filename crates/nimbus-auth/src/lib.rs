//! The identity service of Nimbus: projects (tenancy), API keys, end users, sessions, email
//! verification and password reset, abuse limits and the auth events outbox.
//!
//! [`AuthService`] is the entry point; the HTTP API, the gateway and the CLI call it. Persistence is
//! the [`AuthStore`](nimbus_store::auth::AuthStore) trait (SQLite in `nimbus-store-local`), mail the
//! [`Mailer`] trait ([`SmtpMailer`], or the in-memory [`Outbox`] in development).
//!
//! # Projects
//!
//! A project is the isolation boundary. Every method takes the project id and every store query
//! filters by it; access tokens carry it as `aud` and are signed by per-project Ed25519 keys, so a
//! user, key or token of one project is useless in another. The `default` project always exists.
//!
//! # Tokens
//!
//! - API keys `nbk_<prefix8>_<secret>`: stored as SHA-256 (the secret has 256 random bits, so a fast
//!   hash loses nothing and keeps verification to one lookup and one hash), listed by prefix,
//!   revocable with immediate effect (the in-memory cache is updated by `revoke_api_key`).
//! - Access tokens: EdDSA JWTs (`kid` in the header; JWKS per project; rotation keeps old keys
//!   verifying until retired), 15 minutes by default.
//! - Refresh tokens: 256 random bits, stored hashed, single use. Each refresh spends the presented
//!   token and issues its successor; presenting a spent token again revokes the whole session
//!   (the family of tokens descending from one sign-in).
//! - One-time tokens (email verification, password reset): 256 random bits, stored hashed with a
//!   purpose and an expiry, spent atomically.
//!
//! # Revocation of access tokens
//!
//! Access tokens are stateless, but revocation still takes effect at once: sign-out, sign-out
//! everywhere, refresh-token reuse, password reset, disabling and deleting a user put the session
//! ids on a per-project deny list that `verify_access_token` checks (a hash lookup). Entries live as
//! long as an access token can (TTL + leeway); at start-up the list is rebuilt from the sessions
//! revoked in that window. The list is per process: with several Nimbus processes sharing a store,
//! another process learns of a revocation only when it (re)loads the project, so there revocation
//! takes effect at the latest when the access token expires.
//!
//! # Abuse bounds
//!
//! What a stranger can make the node do is bounded, cheapest checks first:
//! - every endpoint callable without an account (sign-up, sign-in, anonymous sign-in, refresh and
//!   sign-out, both email flows and their token links, upgrade) is rate-limited per IP, and per
//!   account where the request names one ([`RateLimits`]);
//! - input and tokens are checked before any password is hashed: a reset token is looked up (one
//!   SHA-256, one indexed read) before the new password reaches Argon2, sign-up checks the address
//!   and the password policy first;
//! - Argon2 (by default 19 MiB and ~13 ms of a core per hash) runs only on the blocking pool, at
//!   most [`AuthConfig::max_concurrent_hashes`] at once; a request that finds no slot within
//!   [`AuthConfig::hash_wait`] gets [`AuthError::Busy`] (503 with `Retry-After`). The count of
//!   hashes is [`AuthService::password_hashes`].
//!
//! # Enumeration resistance
//!
//! - Sign-in: unknown email and wrong password are one error (`InvalidCredentials`) after the same
//!   work: an unknown email is verified against a dummy Argon2 hash with the configured parameters.
//! - Sign-up: always answers `SignUpOutcome { confirmation_sent: true }`, hashing the password
//!   either way. A new address gets a verification email; an existing one gets a "someone tried to
//!   sign up with your address" notice. No session is returned; the client signs in next.
//! - Password reset: always `Ok` for a well-formed address; the lookup, token and email happen in
//!   a background task, so neither the answer nor its timing depends on the address.
//! - Rate limits are keyed by the address whether or not it exists.
//! - A `Busy` answer (every hashing slot taken) comes after the account lookup for sign-in and
//!   before the store for sign-up, the same whether or not the address exists.
//! - Left as is: upgrading an anonymous user to a taken address answers `Conflict` (the caller is
//!   already a user of the project, and the sign-up limits apply).

mod config;
mod error;
mod jwt;
mod lifecycle;
mod mail;
mod password;
mod ratelimit;
mod service;
mod types;

pub use config::{
    AuthConfig, Clock, ManualClock, PasswordHashConfig, PasswordPolicy, RateLimit, RateLimits,
    SystemClock, default_concurrent_hashes,
};
pub use error::AuthError;
pub use jwt::Claims;
pub use lifecycle::ProjectDeletion;
pub use mail::{
    EmailKind, EmailMessage, MailError, Mailer, Outbox, SmtpConfig, SmtpMailer, SmtpSecurity,
};
pub use password::{PasswordHasherService, check_policy};
pub use service::{AuthService, is_valid_role, normalize_email};
pub use types::{
    ApiKeyInfo, ApiKeyScope, Event, NewApiKey, Project, Session, SignUpOutcome, User, UserPage,
};
