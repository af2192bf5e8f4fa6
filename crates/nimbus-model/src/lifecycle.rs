//! The project lifecycle seam: what each service does when a project goes. The identity service
//! owns projects and runs a deletion (`nimbus_auth::ProjectDeletion`); every service that keeps
//! data of a project implements [`ProjectLifecycle`] for its own tables, so nothing above the
//! services (the HTTP layer included) orchestrates them. Here because every service depends on
//! this crate and no service depends on another for it; the trait does no I/O itself.

use std::future::Future;
use std::pin::Pin;

/// Why a service could not delete its part; the service's own typed error, boxed.
pub type PartError = Box<dyn std::error::Error + Send + Sync>;

/// The future of [`ProjectLifecycle::delete_project_data`] (boxed: the trait is used as `dyn`).
pub type PartFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PartError>> + Send + 'a>>;

/// A service's part in a project's lifecycle.
pub trait ProjectLifecycle: Send + Sync + 'static {
    /// The service, for logs and errors (`functions`, `kv`, ...).
    fn part(&self) -> &'static str;

    /// Delete everything this service keeps for `project`. The project is already marked as
    /// being deleted, so no request resolves it any more; only work already in flight can still
    /// touch it. Must be idempotent: after a crash or a failed later part it runs again, over
    /// what is left or over nothing.
    fn delete_project_data<'a>(&'a self, project: &'a str) -> PartFuture<'a>;
}
