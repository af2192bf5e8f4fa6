//! What the documents service can refuse, typed; `nimbus-server` maps each kind to a status.

use nimbus_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// A collection or a document that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Malformed or unacceptable input: `code` is machine-readable (`invalid_json`,
    /// `invalid_filter`, `too_deep`, `invalid_id`, ...).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The document does not satisfy the collection's JSON Schema.
    #[error("the document does not match the collection's schema at {path:?}: {message}")]
    Schema { path: String, message: String },
    #[error("{0}")]
    TooLarge(String),
    /// A conditional write's condition did not hold (If-Match / If-None-Match).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// Something with this name or id already exists.
    #[error("{0}")]
    Conflict(String),
    /// The collection's access rules deny the caller.
    #[error("{0}")]
    Forbidden(String),
    /// A credential (realtime ticket) that is unknown, used or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// The project's stored-bytes quota is used up (deletes still work).
    #[error(transparent)]
    StorageFull(#[from] nimbus_store::usage::StorageFull),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl DocError {
    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> DocError {
        DocError::Invalid { code, message: message.into() }
    }
}

pub type Result<T, E = DocError> = std::result::Result<T, E>;
