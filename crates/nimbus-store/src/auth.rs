//! Persistence of the identity service (`nimbus-auth`): projects, signing keys, API keys, end users
//! and their identities, sessions with rotating refresh tokens, one-time tokens (email verification,
//! password reset) and the durable `events` outbox.
//!
//! # Isolation is structural
//!
//! A project is the tenancy boundary. Every method that touches a project's rows takes the project
//! id as its first argument, and a backend must filter every statement by it: there is no method that
//! reads or changes another project's rows given a project argument. The only lookups without one
//! are [`AuthStore::list_projects`] and [`AuthStore::api_key_by_prefix`] (an API key is what names
//! its project).
//!
//! # Secrets
//!
//! Nothing here stores a usable secret except the signing keys' private halves (which the service
//! needs to sign). API keys, refresh tokens and one-time tokens are stored as SHA-256 hashes; password
//! hashes are PHC strings (Argon2id) computed by the service.
//!
//! # Events
//!
//! Methods that change who exists or who signed in take the [`NewEvent`]s to record, and a backend
//! writes them in the same transaction as the change: an event exists if and only if its change
//! committed. The backend gives each event a position (`seq`) in that transaction, from a
//! sequence that only grows, so a reader that has seen position N has seen every event committed
//! before N; readers page by it, never by the event id (made before the transaction).

use nimbus_model::UnixMillis;

use crate::Result;

/// The default project: always present (created by the schema migration).
pub const DEFAULT_PROJECT: &str = "default";

/// The provider of email + password identities.
pub const PASSWORD_PROVIDER: &str = "password";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    /// Immutable id; `default` for the default project.
    pub id: String,
    /// Unique, DNS-label shaped.
    pub slug: String,
    pub name: String,
    pub created_at: UnixMillis,
}

/// An Ed25519 signing key of a project. The newest (highest `created_at`, then `kid`) signs; all are
/// published in the project's JWKS until deleted.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// The private key, PKCS#8 DER.
    pub private_pkcs8: Vec<u8>,
    /// The 32-byte public key.
    pub public_key: Vec<u8>,
    pub created_at: UnixMillis,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub project: String,
    /// The public, unique part of the key (`nbk_<prefix>_<secret>`).
    pub prefix: String,
    /// SHA-256 of the whole presented key.
    pub hash: Vec<u8>,
    /// `service` or `public` (the service crate owns the meaning).
    pub scope: String,
    pub name: String,
    pub created_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
    pub revoked_at: Option<UnixMillis>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub project: String,
    /// Normalised (trimmed, lowercase); `None` for anonymous users.
    pub email: Option<String>,
    pub email_verified: bool,
    pub disabled: bool,
    pub anon: bool,
    pub roles: Vec<String>,
    /// Custom claims copied into access tokens: always a JSON object.
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// How a user proves who they are: `password` (subject = normalised email, secret = password hash)
/// today; OAuth/OIDC providers later (subject = the provider's `sub`, no secret). Unique per
/// `(project, provider, provider_subject)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub id: String,
    pub user: String,
    pub provider: String,
    pub provider_subject: String,
    pub secret_hash: Option<String>,
    pub created_at: UnixMillis,
}

/// Paging through a project's users by id (UUIDv7: creation order).
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Only users whose email starts with this (already normalised).
    pub email_prefix: Option<String>,
    /// Only users with an id greater than this (the last id of the previous page).
    pub after: Option<String>,
    pub limit: u32,
}

/// One sign-in: the family of refresh tokens that descend from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub user: String,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

/// A refresh token, stored by hash. `parent` is the token it replaced (`None` for the first of a
/// session), so the chain of a family can be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefreshToken {
    pub hash: Vec<u8>,
    pub parent: Option<Vec<u8>>,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// What presenting a refresh token did, decided and applied in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshOutcome {
    /// The token was current: it is now used and `new` replaces it.
    Rotated {
        session: String,
        user: UserRecord,
    },
    /// The token had been used before: the whole session (family) is now revoked.
    Reused {
        session: String,
    },
    /// The session was already revoked (sign-out, reuse, reset, admin).
    Revoked,
    Expired,
    /// The user is disabled: nothing was changed.
    Disabled,
    /// No such token in this project.
    Unknown,
}

/// A message for the mail outbox (the service's `EmailMessage`, as JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMail {
    pub message: serde_json::Value,
    pub created_at: UnixMillis,
    /// Given up after this (the link it carries has expired).
    pub expires_at: UnixMillis,
}

/// A claimed message of the mail outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMail {
    pub id: i64,
    pub project: String,
    pub message: serde_json::Value,
    /// Attempts so far, this one included.
    pub attempts: u32,
    pub expires_at: UnixMillis,
}

/// A single-use token (email verification, password reset), stored by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOneTimeToken {
    pub hash: Vec<u8>,
    pub user: String,
    pub purpose: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// The token was valid; it is now used. Carries its user.
    Consumed {
        user: String,
    },
    Expired,
    /// Unknown, already used, or for another purpose or project.
    Invalid,
}

/// What a one-time token is worth now, looked up without spending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Unused and unexpired: [`AuthStore::consume_one_time_token`] would succeed now (unless
    /// someone spends it first). Carries its user.
    Valid {
        user: String,
    },
    Expired,
    /// Unknown, already used, or for another purpose or project.
    Invalid,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// UUIDv7: a stable id for deduplication, not an order (see [`EventRecord::seq`]).
    pub id: String,
    /// e.g. `user.created`, `user.deleted`, `user.signed_in`.
    pub kind: String,
    /// What it is about (a user id).
    pub subject: String,
    pub data: serde_json::Value,
    pub created_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Commit position, assigned in the transaction that wrote the event.
    pub seq: u64,
    pub id: String,
    pub project: String,
    pub kind: String,
    pub subject: String,
    pub data: serde_json::Value,
    pub created_at: UnixMillis,
    pub delivered_at: Option<UnixMillis>,
}

/// Persistence of the identity service. See the module documentation for the isolation rule.
pub trait AuthStore: Send + Sync + 'static {
    // -- projects ---------------------------------------------------------------------------------
    /// `Conflict` if the id or slug is taken (by a live project or one being deleted).
    fn create_project(&self, project: &ProjectRecord) -> Result<()>;
    /// Live projects only: one being deleted is not found, by id or slug, nor listed.
    fn get_project(&self, id: &str) -> Result<Option<ProjectRecord>>;
    fn get_project_by_slug(&self, slug: &str) -> Result<Option<ProjectRecord>>;
    fn list_projects(&self) -> Result<Vec<ProjectRecord>>;
    /// The first step of deleting a project, one short transaction: mark it deleting (the
    /// tombstone). From then on the reads above and [`Self::api_key_by_prefix`] skip it, while
    /// its row keeps the slug taken until [`Self::delete_project`]. Idempotent. Returns when its
    /// deletion began (now, or an earlier call's time), or `None` if there is no such project.
    fn mark_project_deleting(&self, id: &str, now: UnixMillis) -> Result<Option<UnixMillis>>;
    /// Projects marked deleting and not yet deleted, oldest deletion first: what a start resumes.
    fn deleting_projects(&self) -> Result<Vec<String>>;
    /// The last step of deleting a project: its row with everything identity holds for it
    /// (signing keys, API keys, users, identities, sessions, tokens, events). Returns whether it
    /// existed.
    fn delete_project(&self, id: &str) -> Result<bool>;

    // -- signing keys -----------------------------------------------------------------------------
    fn insert_signing_key(&self, project: &str, key: &SigningKeyRecord) -> Result<()>;
    /// Newest first.
    fn list_signing_keys(&self, project: &str) -> Result<Vec<SigningKeyRecord>>;
    fn delete_signing_key(&self, project: &str, kid: &str) -> Result<bool>;

    // -- API keys ---------------------------------------------------------------------------------
    /// `Conflict` if the prefix is taken (the caller draws another).
    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    /// The one lookup across projects: the key names its project. Includes revoked keys, not
    /// the keys of a project being deleted.
    fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKeyRecord>>;
    fn list_api_keys(&self, project: &str) -> Result<Vec<ApiKeyRecord>>;
    /// Returns the key as revoked now, or `None` if there is no such key in the project. Revoking a
    /// revoked key keeps its first `revoked_at`.
    fn revoke_api_key(
        &self,
        project: &str,
        id: &str,
        now: UnixMillis,
    ) -> Result<Option<ApiKeyRecord>>;

    // -- users and identities ---------------------------------------------------------------------
    /// Insert a user with its identities and events. `Conflict` if the email or an identity's
    /// `(provider, provider_subject)` is taken in the project.
    fn create_user(
        &self,
        project: &str,
        user: &UserRecord,
        identities: &[IdentityRecord],
        events: &[NewEvent],
    ) -> Result<()>;
    fn get_user(&self, project: &str, id: &str) -> Result<Option<UserRecord>>;
    fn get_user_by_email(&self, project: &str, email: &str) -> Result<Option<UserRecord>>;
    /// The identity and its user.
    fn find_identity(
        &self,
        project: &str,
        provider: &str,
        subject: &str,
    ) -> Result<Option<(IdentityRecord, UserRecord)>>;
    fn list_users(&self, project: &str, query: &UserQuery) -> Result<Vec<UserRecord>>;
    /// Turn an anonymous user into a regular one: set the email, `anon = false`, add the identity.
    /// `NotFound` if no such anonymous user; `Conflict` if the email or identity is taken.
    fn upgrade_anonymous(
        &self,
        project: &str,
        user: &str,
        email: &str,
        identity: &IdentityRecord,
        events: &[NewEvent],
        now: UnixMillis,
    ) -> Result<UserRecord>;
    fn set_email_verified(&self, project: &str, user: &str, now: UnixMillis) -> Result<bool>;
    /// Set (or create) the `password` identity of a user with an email, and revoke all its
    /// sessions, in one transaction. Returns the revoked session ids.
    fn set_password(
        &self,
        project: &str,
        user: &str,
        identity: &IdentityRecord,
        now: UnixMillis,
    ) -> Result<Vec<String>>;
    /// Returns the updated user, `None` if no such user.
    fn set_user_disabled(
        &self,
        project: &str,
        user: &str,
        disabled: bool,
        now: UnixMillis,
    ) -> Result<Option<UserRecord>>;
    fn set_user_claims(
        &self,
        project: &str,
        user: &str,
        roles: &[String],
        claims: &serde_json::Map<String, serde_json::Value>,
        now: UnixMillis,
    ) -> Result<Option<UserRecord>>;
    /// Delete the user with identities, sessions, tokens; records `events` with it. Returns the
    /// ids of the sessions it had that were not revoked, or `None` if there was no such user.
    fn delete_user(
        &self,
        project: &str,
        user: &str,
        events: &[NewEvent],
    ) -> Result<Option<Vec<String>>>;

    // -- sessions and refresh tokens --------------------------------------------------------------
    /// Start a session with its first refresh token, recording `events` with it.
    fn create_session(
        &self,
        project: &str,
        session: &SessionRecord,
        token: &NewRefreshToken,
        events: &[NewEvent],
    ) -> Result<()>;
    /// Present a refresh token (by hash): decide and apply the outcome atomically. On `Rotated`,
    /// `replacement` (whose `parent` is the presented hash) becomes the session's current token.
    ///
    /// A token used less than `reuse_grace_ms` before `now` is a concurrent refresh (two tabs
    /// racing with the same token), not theft: it gets `replacement` as a sibling of its first
    /// replacement. Used longer ago, it is reuse: the whole session is revoked.
    fn rotate_refresh_token(
        &self,
        project: &str,
        presented: &[u8],
        replacement: &NewRefreshToken,
        now: UnixMillis,
        reuse_grace_ms: i64,
    ) -> Result<RefreshOutcome>;
    /// Revoke the session a refresh token (used or not) belongs to. Returns its id if it was live.
    fn revoke_session_by_token(
        &self,
        project: &str,
        token: &[u8],
        now: UnixMillis,
    ) -> Result<Option<String>>;
    /// Revoke every live session of a user; returns their ids.
    fn revoke_user_sessions(
        &self,
        project: &str,
        user: &str,
        now: UnixMillis,
    ) -> Result<Vec<String>>;
    /// Sessions revoked at or after `since` (for the access-token deny list).
    fn revoked_sessions_since(&self, project: &str, since: UnixMillis) -> Result<Vec<String>>;
    fn list_user_sessions(&self, project: &str, user: &str) -> Result<Vec<SessionRecord>>;

    // -- one-time tokens --------------------------------------------------------------------------
    fn insert_one_time_token(&self, project: &str, token: &NewOneTimeToken) -> Result<()>;
    /// Insert a one-time token and queue the mail that carries it, in one transaction.
    fn insert_one_time_token_with_mail(
        &self,
        project: &str,
        token: &NewOneTimeToken,
        mail: &NewMail,
    ) -> Result<()>;

    // -- the mail outbox --------------------------------------------------------------------------
    /// Queue a message for the mail worker.
    fn enqueue_mail(&self, project: &str, mail: &NewMail) -> Result<()>;
    /// Lease up to `limit` due messages for `lease_ms`, counting an attempt for each.
    fn claim_mail(&self, now: UnixMillis, lease_ms: i64, limit: u32) -> Result<Vec<QueuedMail>>;
    /// Sent or given up (`None`: deleted), or to be retried at a time.
    fn finish_mail(&self, id: i64, retry_at: Option<UnixMillis>) -> Result<()>;
    /// Atomically mark the token used if it exists for `purpose` in the project, is unused and has
    /// not expired.
    fn consume_one_time_token(
        &self,
        project: &str,
        hash: &[u8],
        purpose: &str,
        now: UnixMillis,
    ) -> Result<ConsumeOutcome>;
    /// Look a token up without spending it (a read): lets the service refuse a bad token before
    /// any expensive work, such as hashing the new password of a reset.
    fn check_one_time_token(
        &self,
        project: &str,
        hash: &[u8],
        purpose: &str,
        now: UnixMillis,
    ) -> Result<TokenCheck>;

    // -- events -----------------------------------------------------------------------------------
    /// Events with a position (`seq`) greater than `after`, in commit order (oldest first).
    fn list_events(
        &self,
        project: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<EventRecord>>;

    // -- housekeeping -----------------------------------------------------------------------------
    /// Delete what can no longer be used, in every project: used or expired one-time tokens,
    /// expired refresh tokens, sessions revoked before `revoked_before` (their access tokens
    /// have expired, so the deny list no longer needs them) and sessions with no unexpired
    /// refresh token left. Returns the number of rows removed.
    fn prune_auth(&self, now: UnixMillis, revoked_before: UnixMillis) -> Result<u64>;
}
