//! Turning driver and I/O errors into [`StoreError::Backend`] with a word on what was being done.

use nimbus_store::StoreError;

/// A backend failure with what the store was doing when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub(crate) struct BackendError {
    context: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

pub(crate) fn backend(
    context: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::backend(BackendError { context: context.into(), source: source.into() })
}

pub(crate) trait Context<T> {
    /// Map the error to [`StoreError::Backend`], saying what was being done.
    fn context(self, context: &str) -> Result<T, StoreError>;
    /// Like [`Context::context`], with a message built only on error.
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, StoreError>;
}

impl<T, E> Context<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn context(self, context: &str) -> Result<T, StoreError> {
        self.map_err(|e| backend(context, e))
    }

    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, StoreError> {
        self.map_err(|e| backend(f(), e))
    }
}
