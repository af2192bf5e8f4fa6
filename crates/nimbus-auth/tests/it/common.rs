use std::sync::Arc;
use std::time::Duration;

use nimbus_auth::{
    AuthConfig, AuthService, EmailKind, EmailMessage, ManualClock, Outbox, PasswordHashConfig,
    RateLimits,
};
use nimbus_store_local::SqliteStore;
use tempfile::TempDir;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Harness {
    pub auth: AuthService,
    pub outbox: Arc<Outbox>,
    pub clock: Arc<ManualClock>,
    pub _dir: TempDir,
}

/// A service on a real SQLite file in a temporary directory, with fast Argon2 parameters, no
/// rate limits (unless `tweak` sets some), the in-memory outbox and a manual clock at "now".
pub fn harness(tweak: impl FnOnce(&mut AuthConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("nimbus.db")).unwrap());
    let outbox = Arc::new(Outbox::default());
    let clock = Arc::new(ManualClock::new(nimbus_model::now_millis()));
    let mut config = AuthConfig {
        password_hash: PasswordHashConfig::insecure_for_tests(),
        rate_limits: RateLimits::unlimited(),
        clock: clock.clone(),
        ..AuthConfig::default()
    };
    tweak(&mut config);
    let auth = AuthService::new(store, outbox.clone(), config).unwrap();
    Harness { auth, outbox, clock, _dir: dir }
}

impl Harness {
    /// Wait (up to 5 s) for the newest message of `kind` to `to`; mail is sent in the background.
    pub async fn mail(&self, project: &str, to: &str, kind: EmailKind) -> EmailMessage {
        for _ in 0..500 {
            if let Some(m) = self
                .outbox
                .messages(project)
                .into_iter()
                .rev()
                .find(|m| m.to == to && m.kind == kind)
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no {kind:?} mail to {to} in project {project}");
    }

    /// Count messages of a kind to `to` after letting background tasks run.
    pub async fn count_mail(&self, project: &str, to: &str, kind: EmailKind) -> usize {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.outbox.messages(project).iter().filter(|m| m.to == to && m.kind == kind).count()
    }

    /// Sign up and return the user id (through sign-in).
    pub async fn user(&self, project: &str, email: &str) -> nimbus_auth::Session {
        self.auth.sign_up(project, email, PASSWORD, None).await.unwrap();
        self.auth.sign_in(project, email, PASSWORD, None).await.unwrap()
    }
}

pub fn token_of(message: &EmailMessage) -> String {
    let link = message.link.as_deref().expect("a link");
    assert!(message.text.contains(link), "the body carries the link");
    link.split("token=").nth(1).expect("a token in the link").to_string()
}
