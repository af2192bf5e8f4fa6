//! `ProjectDeletion` over a real SQLite store: the tombstone, parts that fail, resuming.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nimbus_auth::{ApiKeyScope, AuthError, AuthService, ProjectDeletion};
use nimbus_model::lifecycle::{PartFuture, ProjectLifecycle};

use crate::common::{Harness, harness};

/// A service's part that records the projects it was asked to delete, failing the first
/// `fail` calls.
struct Part {
    name: &'static str,
    calls: parking_lot::Mutex<Vec<String>>,
    fail: AtomicUsize,
}

impl Part {
    fn new(name: &'static str, fail: usize) -> Arc<Part> {
        Arc::new(Part { name, calls: Default::default(), fail: AtomicUsize::new(fail) })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }
}

impl ProjectLifecycle for Part {
    fn part(&self) -> &'static str {
        self.name
    }

    fn delete_project_data<'a>(&'a self, project: &'a str) -> PartFuture<'a> {
        Box::pin(async move {
            self.calls.lock().push(project.to_string());
            let left = self.fail.load(Ordering::SeqCst);
            if left > 0 {
                self.fail.store(left - 1, Ordering::SeqCst);
                return Err("disk on fire".into());
            }
            Ok(())
        })
    }
}

fn deletion(auth: &AuthService, parts: &[Arc<Part>]) -> ProjectDeletion {
    let parts = parts.iter().map(|p| p.clone() as Arc<dyn ProjectLifecycle>).collect();
    ProjectDeletion::new(auth.clone(), parts)
}

/// The project's key, an end user's access token, and a refresh token.
async fn credentials(h: &Harness, project: &str) -> (String, String) {
    let key = h.auth.create_api_key(project, ApiKeyScope::Service, "ci", None).await.unwrap();
    let session = h.user(project, "ann@example.com").await;
    (key.key, session.access_token)
}

/// Found nowhere, its credentials refused, its slug taken.
async fn assert_deleting(auth: &AuthService, project: &str, key: &str, token: &str) {
    assert!(auth.is_deleting(project));
    assert!(matches!(auth.get_project_by_slug(project).await, Err(AuthError::NotFound(_))));
    assert!(matches!(auth.get_project(project).await, Err(AuthError::NotFound(_))));
    assert!(auth.list_projects().await.unwrap().iter().all(|p| p.slug != project));
    assert!(matches!(auth.verify_api_key(key).await, Err(AuthError::InvalidCredentials)));
    assert!(auth.verify_access_token(project, token).await.is_err());
    match auth.create_project(project, "again").await {
        Err(AuthError::ProjectDeleting(p)) => assert_eq!(p, project),
        other => panic!("expected ProjectDeleting, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_part_leaves_the_tombstone_and_a_retry_finishes() {
    let h = harness(|_| {});
    h.auth.create_project("acme", "Acme").await.unwrap();
    let (key, token) = credentials(&h, "acme").await;
    assert!(h.auth.verify_api_key(&key).await.is_ok(), "cached from here on");
    h.auth.verify_access_token("acme", &token).await.unwrap();
    let (first, flaky, last) = (Part::new("first", 0), Part::new("flaky", 1), Part::new("last", 0));
    let projects = deletion(&h.auth, &[first.clone(), flaky.clone(), last.clone()]);

    match projects.delete("acme").await {
        Err(AuthError::DeletionPart { project, part, .. }) => {
            assert_eq!((project.as_str(), part), ("acme", "flaky"));
        }
        other => panic!("expected the flaky part's failure, got {other:?}"),
    }
    assert_eq!((first.calls(), last.calls()), (vec!["acme".to_string()], vec![]), "in order");
    assert_deleting(&h.auth, "acme", &key, &token).await;

    // A retry is not a 404: it resumes, running every part again (they are idempotent).
    projects.delete("acme").await.unwrap();
    assert_eq!((first.calls().len(), flaky.calls().len(), last.calls().len()), (2, 2, 1));
    assert!(!h.auth.is_deleting("acme"));
    assert!(matches!(projects.delete("acme").await, Err(AuthError::NotFound(_))), "done");
    assert!(matches!(projects.delete("default").await, Err(AuthError::InvalidInput(_))));
    assert!(matches!(projects.delete("nope").await, Err(AuthError::NotFound(_))));

    // The slug is free again, and the new project has nothing of the old one.
    h.auth.create_project("acme", "Acme again").await.unwrap();
    assert!(h.auth.list_api_keys("acme").await.unwrap().is_empty());
    assert!(h.auth.list_users("acme", None, None, 10).await.unwrap().users.is_empty());
    assert!(matches!(h.auth.verify_api_key(&key).await, Err(AuthError::InvalidCredentials)));
    assert!(h.auth.verify_access_token("acme", &token).await.is_err(), "signed by the old keys");
}

/// A crash right after the tombstone: the next start knows the project is being deleted before
/// anything resumes, and `resume` finishes it.
#[tokio::test]
async fn a_deletion_interrupted_after_the_tombstone_is_finished_by_resume() {
    let h = harness(|_| {});
    h.auth.create_project("acme", "Acme").await.unwrap();
    h.auth.create_project("keep", "Keep").await.unwrap();
    let (key, token) = credentials(&h, "acme").await;
    let crashing = Part::new("crashing", 1);
    assert!(deletion(&h.auth, &[crashing]).delete("acme").await.is_err());

    // "Restart": a new service over the same database.
    let store =
        Arc::new(nimbus_store_local::SqliteStore::open(&h._dir.path().join("nimbus.db")).unwrap());
    let auth = AuthService::new(store, h.outbox.clone(), h.auth.config().clone()).unwrap();
    assert_deleting(&auth, "acme", &key, &token).await;
    let part = Part::new("part", 0);
    let projects = deletion(&auth, std::slice::from_ref(&part));
    assert_eq!(projects.resume().await.unwrap(), 1);
    assert_eq!(part.calls(), ["acme"]);
    assert_eq!(projects.resume().await.unwrap(), 0, "nothing left to resume");
    let slugs: Vec<_> = auth.list_projects().await.unwrap().into_iter().map(|p| p.slug).collect();
    assert_eq!(slugs, ["default", "keep"]);
    auth.create_project("acme", "Fresh").await.unwrap();
}
