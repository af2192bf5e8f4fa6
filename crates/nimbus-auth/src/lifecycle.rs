//! [`ProjectDeletion`]: deleting a project, crash-safe, with each service deleting its own part.
//!
//! 1. The tombstone, one short transaction ([`AuthService::mark_deleting`]): from then on the
//!    project is found nowhere (404 by slug and id, not listed), its API keys, S3 keys and tokens
//!    stop working, and its slug cannot be created again (409 `project_deleting`).
//! 2. Each service's [`ProjectLifecycle::delete_project_data`], in the order given at
//!    construction; each is idempotent.
//! 3. The project row, with what cascades from it and identity's own rows, last
//!    ([`AuthService::remove_project`]).
//!
//! A crash or a failed part leaves the tombstone: a retry of the deletion resumes it (a project
//! being deleted is not "not found" to [`ProjectDeletion::delete`]), and so does every start
//! ([`ProjectDeletion::spawn_resume`]). Two runs at once (a retry during the start's resume) are
//! harmless: every step is idempotent.

use std::sync::Arc;
use std::time::Instant;

use nimbus_model::lifecycle::ProjectLifecycle;

use crate::{AuthError, AuthService};

/// Runs project deletions over the services' parts. Cheap to clone.
#[derive(Clone)]
pub struct ProjectDeletion {
    auth: AuthService,
    parts: Arc<[Arc<dyn ProjectLifecycle>]>,
}

impl ProjectDeletion {
    /// `parts` run in this order (a part may appear twice, to catch what raced its first pass).
    pub fn new(auth: AuthService, parts: Vec<Arc<dyn ProjectLifecycle>>) -> Self {
        ProjectDeletion { auth, parts: parts.into() }
    }

    /// Delete a project, or finish deleting one whose deletion was interrupted. `NotFound` if
    /// there is no such project, live or being deleted; `InvalidInput` for the default project;
    /// `DeletionPart` if a service failed (the project stays marked, found nowhere, and the
    /// deletion resumes on the next call or start).
    pub async fn delete(&self, project: &str) -> Result<(), AuthError> {
        self.auth.mark_deleting(project).await?;
        self.finish(project).await
    }

    /// Steps 2 and 3, for a project already marked.
    async fn finish(&self, project: &str) -> Result<(), AuthError> {
        let started = Instant::now();
        for part in self.parts.iter() {
            let at = Instant::now();
            part.delete_project_data(project).await.map_err(|source| AuthError::DeletionPart {
                project: project.to_string(),
                part: part.part(),
                source,
            })?;
            tracing::debug!(
                project,
                part = part.part(),
                ms = at.elapsed().as_millis() as u64,
                "deleted a part of the project"
            );
        }
        self.auth.remove_project(project).await?;
        tracing::info!(project, ms = started.elapsed().as_millis() as u64, "project deleted");
        Ok(())
    }

    /// Finish every deletion a previous run left (crash, failed part), one project at a time.
    /// Returns how many finished; a project whose deletion fails again stays marked for the
    /// next try and does not stop the others.
    pub async fn resume(&self) -> Result<usize, AuthError> {
        let pending = self.auth.deleting_projects().await?;
        let mut finished = 0;
        for project in &pending {
            tracing::info!(project, "resuming an interrupted project deletion");
            match self.finish(project).await {
                Ok(()) => finished += 1,
                Err(e) => tracing::error!(project, error = %e,
                    "resuming a project deletion failed; it stays marked and is retried on the \
                     next DELETE or start"),
            }
        }
        Ok(finished)
    }

    /// [`Self::resume`] in the background, so that a start is not delayed by a big project.
    pub fn spawn_resume(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.resume().await {
                tracing::error!(error = %e, "listing interrupted project deletions failed");
            }
        })
    }
}
