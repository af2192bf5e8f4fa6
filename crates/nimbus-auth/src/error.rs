//! [`AuthError`]: what the identity service answers, in kinds the API layer maps to statuses.

use std::time::Duration;

use nimbus_store::StoreError;

/// Errors of [`AuthService`](crate::AuthService). The messages are safe to show to a client except
/// for [`AuthError::Store`] and [`AuthError::Internal`], whose causes are for the operator's log.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong email or password, unknown email, unknown or revoked API key: deliberately one answer.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The new password fails the policy; the reason is safe to show.
    #[error("weak password: {0}")]
    WeakPassword(String),
    /// A token (access, refresh, one-time) that is malformed, forged, revoked, reused, for another
    /// project or already used.
    #[error("invalid token")]
    InvalidToken,
    #[error("token expired")]
    TokenExpired,
    /// Too many attempts: answer 429 with `Retry-After`.
    #[error("too many attempts; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    /// Every password-hashing slot stayed taken for the short wait allowed: answer 503 with
    /// `Retry-After` (the node is saturated, not the client over a limit).
    #[error("too many password checks at once; retry in {}s", retry_after.as_secs().max(1))]
    Busy { retry_after: Duration },
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The slug belongs to a project whose deletion has begun and not finished: it can be
    /// created again once the deletion is done.
    #[error("project {0} is being deleted; create it again once its deletion has finished")]
    ProjectDeleting(String),
    /// A service failed to delete its part of a project; the project stays marked deleting and
    /// the deletion resumes on a retry or at the next start.
    #[error("deleting the {part} part of project {project}: {source}")]
    DeletionPart {
        project: String,
        part: &'static str,
        #[source]
        source: nimbus_model::lifecycle::PartError,
    },
    /// The user is disabled by an administrator.
    #[error("user disabled")]
    Disabled,
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The store failed.
    #[error("storage: {0}")]
    Store(#[source] StoreError),
    /// Anything else that failed (a crypto backend, a panicked blocking task, the mailer).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AuthError::NotFound(what),
            StoreError::Conflict(what) => AuthError::Conflict(what),
            other => AuthError::Store(other),
        }
    }
}

impl AuthError {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        AuthError::Internal(e.to_string())
    }
}
