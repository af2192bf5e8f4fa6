//! [`AuthService`]: every operation of the identity service.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use nimbus_model::UnixMillis;
use nimbus_store::StoreError;
use nimbus_store::auth::{
    ApiKeyRecord, AuthStore, ConsumeOutcome, DEFAULT_PROJECT, IdentityRecord, NewEvent, NewMail,
    NewOneTimeToken, NewRefreshToken, PASSWORD_PROVIDER, ProjectRecord, RefreshOutcome,
    SessionRecord, TokenCheck, UserQuery, UserRecord,
};
use parking_lot::RwLock;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, RateLimit};
use crate::error::AuthError;
use crate::jwt::{Claims, ProjectKeys, generate_key};
use crate::mail::{EmailKind, EmailMessage, Mailer};
use crate::password::{BoundedHasher, PasswordHasherService, check_policy};
use crate::ratelimit::Limiter;
use crate::types::{
    ApiKeyInfo, ApiKeyScope, Event, NewApiKey, Project, Session, SignUpOutcome, User, UserPage,
};

const PURPOSE_VERIFY: &str = "verify_email";
const PURPOSE_RESET: &str = "reset_password";
/// Verified access tokens remembered per project (see [`AuthService::verify_access_token`]).
const VERIFIED_CACHE: usize = 8192;
const API_KEY_CACHE: usize = 16_384;
const MAX_CLAIMS_BYTES: usize = 4096;
const MAX_ROLES: usize = 32;
const MAX_ROLE_BYTES: usize = 64;
/// Refresh and one-time tokens we issue are 43 characters; anything much longer is not ours and
/// is refused before it is hashed or looked up.
const MAX_TOKEN_BYTES: usize = 256;

/// The identity service. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn AuthStore>,
    mailer: Arc<dyn Mailer>,
    config: AuthConfig,
    hasher: BoundedHasher,
    limits: Limits,
    /// Per-project keys, verified-token cache and deny list, loaded on first use.
    projects: RwLock<HashMap<String, Arc<ProjectState>>>,
    project_init: tokio::sync::Mutex<()>,
    /// API keys by prefix (positive lookups only); kept exact by `revoke_api_key`.
    api_keys: RwLock<HashMap<String, Arc<ApiKeyRecord>>>,
    /// Projects marked deleting (the store's tombstones, seeded at start): checked before the
    /// caches above, so that nothing cached lets a deleting project's keys or tokens through.
    deleting: RwLock<HashSet<String>>,
    /// Rung when mail is queued; the worker is started on first use (or by the server at start,
    /// for mail a previous run left).
    mail_wake: tokio::sync::Notify,
    mail_worker: std::sync::OnceLock<()>,
}

/// Attempts at sending one message before it is given up.
const MAIL_ATTEMPTS: u32 = 8;

struct ProjectState {
    keys: ProjectKeys,
    /// token → its claims, after a successful signature, issuer and audience check.
    verified: RwLock<HashMap<Box<str>, Arc<Claims>>>,
    /// Sessions revoked within the last access-token lifetime: session id → revoked at.
    revoked: RwLock<HashMap<String, UnixMillis>>,
}

struct Limits {
    sign_in_ip: Option<Limiter>,
    sign_in_account: Option<Limiter>,
    sign_up_ip: Option<Limiter>,
    sign_up_account: Option<Limiter>,
    reset_ip: Option<Limiter>,
    reset_account: Option<Limiter>,
    new_password_ip: Option<Limiter>,
    refresh_ip: Option<Limiter>,
    refresh_account: Option<Limiter>,
    anonymous_ip: Option<Limiter>,
    verification_request_ip: Option<Limiter>,
    verification_request_account: Option<Limiter>,
    verify_email_ip: Option<Limiter>,
}

fn limiter(limit: Option<RateLimit>) -> Option<Limiter> {
    limit.and_then(Limiter::new)
}

fn check_limit(limiter: &Option<Limiter>, project: &str, key: &str) -> Result<(), AuthError> {
    match limiter {
        Some(l) => l
            .check(format!("{project}\n{key}"))
            .map_err(|retry_after| AuthError::RateLimited { retry_after }),
        None => Ok(()),
    }
}

fn check_ip(limiter: &Option<Limiter>, project: &str, ip: Option<IpAddr>) -> Result<(), AuthError> {
    match ip {
        Some(ip) => check_limit(limiter, project, &ip.to_string()),
        None => Ok(()),
    }
}

/// 256 random bits, base64url: refresh and one-time tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// Tokens and API keys carry 256 random bits, so a single fast SHA-256 is the right hash: there is
/// nothing to brute-force that a slow hash would protect (unlike passwords), and lookups stay cheap.
fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Trim and lowercase; reject what is clearly not an address.
pub fn normalize_email(email: &str) -> Result<String, AuthError> {
    let email = email.trim().to_lowercase();
    let bad = || AuthError::InvalidInput("invalid email address".into());
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains('@')
        || email.len() > 254
        || email.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c))
    {
        return Err(bad());
    }
    Ok(email)
}

/// Whether `role` follows the role rule (see [`validate_roles`]). The gateway also drops roles that
/// do not, which only users given roles before the rule existed can have.
pub fn is_valid_role(role: &str) -> bool {
    (1..=MAX_ROLE_BYTES).contains(&role.len())
        && role.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Roles travel in access tokens and, joined with commas, in the `x-nimbus-user-roles` header that
/// functions read: a safe charset (no comma, space or control character) keeps one role one role.
fn validate_roles(roles: &[String]) -> Result<(), AuthError> {
    if roles.len() > MAX_ROLES {
        return Err(AuthError::InvalidInput(format!(
            "at most {MAX_ROLES} roles, got {}",
            roles.len()
        )));
    }
    match roles.iter().find(|r| !is_valid_role(r)) {
        Some(bad) => Err(AuthError::InvalidInput(format!(
            "invalid role {bad:?}: use 1-{MAX_ROLE_BYTES} characters of A-Z, a-z, 0-9, '_', '.', \
             ':' and '-'"
        ))),
        None => Ok(()),
    }
}

fn event(kind: &str, subject: &str, data: serde_json::Value, now: UnixMillis) -> NewEvent {
    NewEvent {
        id: new_id(),
        kind: kind.to_string(),
        subject: subject.to_string(),
        data,
        created_at: now,
    }
}

fn password_identity(user: &str, email: &str, hash: String, now: UnixMillis) -> IdentityRecord {
    IdentityRecord {
        id: new_id(),
        user: user.to_string(),
        provider: PASSWORD_PROVIDER.to_string(),
        provider_subject: email.to_string(),
        secret_hash: Some(hash),
        created_at: now,
    }
}

impl AuthService {
    /// Build the service. Computes one Argon2 hash (the dummy used for unknown emails), so this
    /// takes as long as one password hash.
    pub fn new(
        store: Arc<dyn AuthStore>,
        mailer: Arc<dyn Mailer>,
        config: AuthConfig,
    ) -> Result<Self, AuthError> {
        let hasher = BoundedHasher::new(
            PasswordHasherService::new(config.password_hash)?,
            config.max_concurrent_hashes,
            config.hash_wait,
        )?;
        let deleting = store.deleting_projects()?.into_iter().collect();
        let r = &config.rate_limits;
        let limits = Limits {
            sign_in_ip: limiter(r.sign_in_per_ip),
            sign_in_account: limiter(r.sign_in_per_account),
            sign_up_ip: limiter(r.sign_up_per_ip),
            sign_up_account: limiter(r.sign_up_per_account),
            reset_ip: limiter(r.password_reset_per_ip),
            reset_account: limiter(r.password_reset_per_account),
            new_password_ip: limiter(r.reset_password_per_ip),
            refresh_ip: limiter(r.refresh_per_ip),
            refresh_account: limiter(r.refresh_per_account),
            anonymous_ip: limiter(r.anonymous_per_ip),
            verification_request_ip: limiter(r.verification_request_per_ip),
            verification_request_account: limiter(r.verification_request_per_account),
            verify_email_ip: limiter(r.verify_email_per_ip),
        };
        Ok(AuthService {
            inner: Arc::new(Inner {
                store,
                mailer,
                config,
                hasher,
                limits,
                projects: RwLock::new(HashMap::new()),
                project_init: tokio::sync::Mutex::new(()),
                api_keys: RwLock::new(HashMap::new()),
                deleting: RwLock::new(deleting),
                mail_wake: tokio::sync::Notify::new(),
                mail_worker: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Start the mail worker (once): it sends what the outbox holds, with retries. Needs a tokio
    /// runtime. Returns the task the first time (the server aborts it when it stops).
    pub fn start_mail_worker(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut started = None;
        self.inner.mail_worker.get_or_init(|| {
            started = Some(tokio::spawn(mail_worker(self.clone())));
        });
        started
    }

    fn wake_mailer(&self) {
        let _ = self.start_mail_worker();
        self.inner.mail_wake.notify_one();
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Argon2 computations run so far (password hashes and verifications, the dummy ones for
    /// unknown emails included): a counter for metrics, and how tests prove that a path does not
    /// hash at all.
    pub fn password_hashes(&self) -> u64 {
        self.inner.hasher.computed()
    }

    fn now(&self) -> UnixMillis {
        self.inner.config.clock.now_millis()
    }

    /// Run store work on a blocking thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, AuthError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn AuthStore) -> Result<T, AuthError> + Send + 'static,
    {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&*store)).await.map_err(AuthError::internal)?
    }

    /// Queue an email in the durable outbox; the mail worker sends it off the request path, so
    /// the caller's latency never depends on whether (or how fast) a message is sent, which keeps
    /// sign-up and reset answers uniform. Queued off the request path too.
    fn send_later(&self, message: EmailMessage) {
        let this = self.clone();
        tokio::spawn(async move {
            let now = this.now();
            let mail = NewMail {
                message: serde_json::to_value(&message).unwrap_or_default(),
                created_at: now,
                expires_at: now + 24 * 3600 * 1000,
            };
            let p = message.project.clone();
            match this.blocking(move |s| Ok(s.enqueue_mail(&p, &mail)?)).await {
                Ok(()) => this.wake_mailer(),
                Err(e) => {
                    tracing::warn!(project = %message.project, error = %e, "queueing email failed")
                }
            }
        });
    }

    // ---------------------------------------------------------------------------------------------
    // Projects and keys

    /// The project's keys and caches, loading them (and creating its first signing key) on first
    /// use. `NotFound` if there is no such project.
    async fn project_state(&self, project: &str) -> Result<Arc<ProjectState>, AuthError> {
        if self.is_deleting(project) {
            return Err(AuthError::NotFound(format!("project {project}")));
        }
        if let Some(state) = self.inner.projects.read().get(project) {
            return Ok(state.clone());
        }
        let _guard = self.inner.project_init.lock().await;
        if let Some(state) = self.inner.projects.read().get(project) {
            return Ok(state.clone());
        }
        let now = self.now();
        let since = now - self.revocation_window_ms();
        let fresh_key = generate_key(now)?;
        let p = project.to_string();
        let (keys, revoked) = self
            .blocking(move |s| {
                if s.get_project(&p)?.is_none() {
                    return Err(AuthError::NotFound(format!("project {p}")));
                }
                let mut keys = s.list_signing_keys(&p)?;
                if keys.is_empty() {
                    s.insert_signing_key(&p, &fresh_key)?;
                    keys = vec![fresh_key];
                }
                Ok((keys, s.revoked_sessions_since(&p, since)?))
            })
            .await?;
        let state = Arc::new(ProjectState {
            keys: ProjectKeys::new(&keys)?,
            verified: RwLock::new(HashMap::new()),
            revoked: RwLock::new(revoked.into_iter().map(|sid| (sid, now)).collect()),
        });
        self.inner.projects.write().insert(project.to_string(), state.clone());
        Ok(state)
    }

    /// Forget a project's cached state (after a key change); the next use reloads it. The revoked
    /// set is reloaded from the store.
    fn drop_project_state(&self, project: &str) {
        self.inner.projects.write().remove(project);
    }

    /// How long a revoked session stays on the deny list: as long as its last access token lives.
    fn revocation_window_ms(&self) -> i64 {
        (self.inner.config.access_token_ttl + self.inner.config.leeway).as_millis() as i64
    }

    fn deny_sessions(&self, state: &ProjectState, sessions: &[String]) {
        if sessions.is_empty() {
            return;
        }
        let now = self.now();
        let window = self.revocation_window_ms();
        let mut revoked = state.revoked.write();
        revoked.retain(|_, at| *at + window > now);
        for sid in sessions {
            revoked.insert(sid.clone(), now);
        }
    }

    /// Create a project (operator action). Its first signing key is created with it.
    pub async fn create_project(&self, slug: &str, name: &str) -> Result<Project, AuthError> {
        // The one slug rule, shared with everything that reads a slug back (headers, `/@slug/`,
        // host names), so a project that can be created can be used.
        nimbus_model::validate_project(slug).map_err(|e| AuthError::InvalidInput(e.to_string()))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(AuthError::InvalidInput("project name must be 1-200 bytes".into()));
        }
        let now = self.now();
        // The slug is the project's id: immutable, unique, and what URLs, host names, function
        // records and token audiences all carry, so no layer needs a slug-to-id lookup.
        let record = ProjectRecord {
            id: slug.to_string(),
            slug: slug.to_string(),
            name: name.to_string(),
            created_at: now,
        };
        let key = generate_key(now)?;
        let r = record.clone();
        self.blocking(move |s| {
            match s.create_project(&r) {
                // The row of a project being deleted still holds the slug: say so, rather than
                // "exists" (it is found nowhere), so the operator knows to retry later.
                Err(StoreError::Conflict(_)) if s.deleting_projects()?.contains(&r.id) => {
                    return Err(AuthError::ProjectDeleting(r.id.clone()));
                }
                other => other?,
            }
            s.insert_signing_key(&r.id, &key)?;
            Ok(())
        })
        .await?;
        Ok(record.into())
    }

    /// The first step of deleting a project: its tombstone. From here on it is found nowhere,
    /// and its API keys and tokens stop working; its slug stays taken until
    /// [`Self::remove_project`]. Idempotent (a retry resumes). The default project cannot be
    /// deleted; `NotFound` if there is no such project, live or deleting.
    pub(crate) async fn mark_deleting(&self, slug: &str) -> Result<(), AuthError> {
        if slug == DEFAULT_PROJECT {
            return Err(AuthError::InvalidInput("the default project cannot be deleted".into()));
        }
        // In memory first, so no request slips through the caches between the two.
        self.inner.deleting.write().insert(slug.to_string());
        let (id, now) = (slug.to_string(), self.now());
        let marked = self.blocking(move |s| Ok(s.mark_project_deleting(&id, now)?)).await;
        if !matches!(marked, Ok(Some(_))) {
            self.inner.deleting.write().remove(slug);
        }
        marked?.ok_or_else(|| AuthError::NotFound(format!("project {slug}")))?;
        self.forget_project(slug);
        Ok(())
    }

    /// The last step of deleting a project: its row and everything identity holds for it.
    /// Idempotent.
    pub(crate) async fn remove_project(&self, slug: &str) -> Result<(), AuthError> {
        let id = slug.to_string();
        self.blocking(move |s| Ok(s.delete_project(&id)?)).await?;
        self.forget_project(slug);
        self.inner.deleting.write().remove(slug);
        Ok(())
    }

    /// Projects marked deleting whose deletion has not finished, oldest first.
    pub(crate) async fn deleting_projects(&self) -> Result<Vec<String>, AuthError> {
        self.blocking(|s| Ok(s.deleting_projects()?)).await
    }

    /// Whether the project is being deleted: every read path that resolves a project treats it
    /// as not existing (one in-memory lookup; the store's tombstone is the durable truth).
    pub fn is_deleting(&self, project: &str) -> bool {
        let deleting = self.inner.deleting.read();
        !deleting.is_empty() && deleting.contains(project)
    }

    fn forget_project(&self, slug: &str) {
        self.drop_project_state(slug);
        self.inner.api_keys.write().retain(|_, key| key.project != slug);
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>, AuthError> {
        let projects = self.blocking(|s| Ok(s.list_projects()?)).await?;
        Ok(projects.into_iter().map(Project::from).collect())
    }

    /// By id.
    pub async fn get_project(&self, id: &str) -> Result<Project, AuthError> {
        let id = id.to_string();
        self.blocking(move |s| {
            s.get_project(&id)?
                .map(Project::from)
                .ok_or(AuthError::NotFound(format!("project {id}")))
        })
        .await
    }

    /// By slug (what URLs carry); `default` is the default project.
    pub async fn get_project_by_slug(&self, slug: &str) -> Result<Project, AuthError> {
        let slug = slug.to_string();
        self.blocking(move |s| {
            s.get_project_by_slug(&slug)?
                .map(Project::from)
                .ok_or(AuthError::NotFound(format!("project {slug}")))
        })
        .await
    }

    /// The id of the default project.
    pub fn default_project(&self) -> &'static str {
        DEFAULT_PROJECT
    }

    /// The project's public keys: `{"keys":[{"kty":"OKP","crv":"Ed25519","x",…,"kid","alg":"EdDSA",
    /// "use":"sig"}]}`, serve at `/.well-known/jwks.json` (per project).
    pub async fn jwks(&self, project: &str) -> Result<serde_json::Value, AuthError> {
        Ok(self.project_state(project).await?.keys.jwks().clone())
    }

    /// Add a new signing key; it signs from now on, and the previous ones stay in the JWKS (and
    /// verify) until retired. Returns the new `kid`.
    pub async fn rotate_signing_key(&self, project: &str) -> Result<String, AuthError> {
        self.project_state(project).await?;
        let _guard = self.inner.project_init.lock().await;
        let p = project.to_string();
        let key = generate_key(self.now())?;
        let kid = key.kid.clone();
        self.blocking(move |s| Ok(s.insert_signing_key(&p, &key)?)).await?;
        self.drop_project_state(project);
        Ok(kid)
    }

    /// Remove an old key from the JWKS: tokens it signed stop verifying. The signing key cannot be
    /// retired (rotate first).
    pub async fn retire_signing_key(&self, project: &str, kid: &str) -> Result<(), AuthError> {
        let state = self.project_state(project).await?;
        if state.keys.signing_kid() == kid {
            return Err(AuthError::Conflict("the current signing key cannot be retired".into()));
        }
        let _guard = self.inner.project_init.lock().await;
        let (p, k) = (project.to_string(), kid.to_string());
        let found = self.blocking(move |s| Ok(s.delete_signing_key(&p, &k)?)).await?;
        self.drop_project_state(project);
        if found { Ok(()) } else { Err(AuthError::NotFound(format!("signing key {kid}"))) }
    }

    // ---------------------------------------------------------------------------------------------
    // API keys

    /// Create a key. The returned `key` is the only copy of the secret.
    pub async fn create_api_key(
        &self,
        project: &str,
        scope: ApiKeyScope,
        name: &str,
        expires_at: Option<UnixMillis>,
    ) -> Result<NewApiKey, AuthError> {
        self.project_state(project).await?;
        if name.len() > 200 {
            return Err(AuthError::InvalidInput("API key name must be at most 200 bytes".into()));
        }
        let now = self.now();
        if expires_at.is_some_and(|e| e <= now) {
            return Err(AuthError::InvalidInput("expiry must be in the future".into()));
        }
        // A prefix collision (1 in 2^40 per pair) only costs a retry.
        for _ in 0..4 {
            let prefix = {
                const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
                let mut rng = rand::rng();
                (0..8)
                    .map(|_| ALPHABET[(rng.next_u32() % ALPHABET.len() as u32) as usize] as char)
                    .collect::<String>()
            };
            let key = format!("nbk_{prefix}_{}", random_token());
            let record = ApiKeyRecord {
                id: new_id(),
                project: project.to_string(),
                prefix,
                hash: sha256(&key),
                scope: scope.as_str().to_string(),
                name: name.to_string(),
                created_at: now,
                expires_at,
                revoked_at: None,
            };
            let r = record.clone();
            match self.blocking(move |s| Ok(s.insert_api_key(&r)?)).await {
                Ok(()) => {
                    let info = ApiKeyInfo::from_record(&record)
                        .ok_or_else(|| AuthError::internal("bad scope"))?;
                    return Ok(NewApiKey { info, key });
                }
                Err(AuthError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(AuthError::internal("could not draw a unique API key prefix"))
    }

    pub async fn list_api_keys(&self, project: &str) -> Result<Vec<ApiKeyInfo>, AuthError> {
        let p = project.to_string();
        let keys = self.blocking(move |s| Ok(s.list_api_keys(&p)?)).await?;
        Ok(keys.iter().filter_map(ApiKeyInfo::from_record).collect())
    }

    /// Revoke a key of the project; takes effect for the very next `verify_api_key`.
    pub async fn revoke_api_key(&self, project: &str, id: &str) -> Result<ApiKeyInfo, AuthError> {
        let (p, i, now) = (project.to_string(), id.to_string(), self.now());
        let record = self
            .blocking(move |s| {
                s.revoke_api_key(&p, &i, now)?.ok_or(AuthError::NotFound(format!("API key {i}")))
            })
            .await?;
        self.inner.api_keys.write().remove(&record.prefix);
        ApiKeyInfo::from_record(&record).ok_or_else(|| AuthError::internal("bad scope"))
    }

    /// Check a presented key (`nbk_<prefix>_<secret>`): one lookup by prefix (memory, else one
    /// indexed query) and a constant-time comparison of SHA-256 hashes. Unknown, wrong, revoked
    /// and expired keys all answer `InvalidCredentials`.
    pub async fn verify_api_key(&self, presented: &str) -> Result<ApiKeyInfo, AuthError> {
        let prefix = presented
            .strip_prefix("nbk_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(prefix, _)| prefix)
            .filter(|p| p.len() == 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or(AuthError::InvalidCredentials)?;
        let cached = self.inner.api_keys.read().get(prefix).cloned();
        let record = match cached {
            Some(r) => r,
            None => {
                let p = prefix.to_string();
                let found = self.blocking(move |s| Ok(s.api_key_by_prefix(&p)?)).await?;
                let record = Arc::new(found.ok_or(AuthError::InvalidCredentials)?);
                if record.revoked_at.is_none() {
                    let mut cache = self.inner.api_keys.write();
                    if cache.len() >= API_KEY_CACHE {
                        cache.clear();
                    }
                    cache.insert(record.prefix.clone(), record.clone());
                }
                record
            }
        };
        let presented_hash = sha256(presented);
        let matches: bool = presented_hash.ct_eq(&record.hash).into();
        let now = self.now();
        if !matches
            || record.revoked_at.is_some()
            || record.expires_at.is_some_and(|e| e <= now)
            || self.is_deleting(&record.project)
        {
            return Err(AuthError::InvalidCredentials);
        }
        ApiKeyInfo::from_record(&record).ok_or(AuthError::InvalidCredentials)
    }

    // ---------------------------------------------------------------------------------------------
    // Sign-up, sign-in, sessions

    /// What registering `email` + `password` must pass, for sign-up and anonymous upgrade alike:
    /// a known project, a valid address, the sign-up rate limits and the password policy.
    /// Returns the normalised address.
    async fn check_new_credentials(
        &self,
        project: &str,
        email: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<String, AuthError> {
        self.project_state(project).await?;
        let email = normalize_email(email)?;
        let limits = &self.inner.limits;
        check_ip(&limits.sign_up_ip, project, ip)?;
        check_limit(&limits.sign_up_account, project, &email)?;
        check_policy(&self.inner.config.password_policy, password, Some(&email))?;
        Ok(email)
    }

    /// Register with email + password. The answer is the same whether the address is new or
    /// already registered: a new user gets a verification email, an existing one a "someone tried
    /// to sign up with your address" notice (both sent in the background), and the password is
    /// hashed either way so the timing matches. The client signs in next.
    pub async fn sign_up(
        &self,
        project: &str,
        email: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<SignUpOutcome, AuthError> {
        let email = self.check_new_credentials(project, email, password, ip).await?;

        let now = self.now();
        let user = UserRecord {
            id: new_id(),
            project: project.to_string(),
            email: Some(email.clone()),
            email_verified: false,
            disabled: false,
            anon: false,
            roles: Vec::new(),
            claims: Default::default(),
            created_at: now,
            updated_at: now,
        };
        // Every cheap check has passed (`check_new_credentials`); only now the bounded hash.
        let hash = self.inner.hasher.hash(password.to_string()).await?;
        let (p, u) = (project.to_string(), user.clone());
        let created = self
            .blocking(move |s| {
                let identity = password_identity(&u.id, u.email.as_deref().unwrap_or(""), hash, now);
                let created = event(
                    "user.created",
                    &u.id,
                    serde_json::json!({ "email": u.email, "provider": PASSWORD_PROVIDER, "anon": false }),
                    now,
                );
                match s.create_user(&p, &u, &[identity], &[created]) {
                    Ok(()) => Ok(true),
                    Err(nimbus_store::StoreError::Conflict(_)) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        if created {
            self.spawn_verification(project, &user.id, &email);
        } else {
            let config = &self.inner.config;
            self.send_later(EmailMessage {
                project: project.to_string(),
                to: email.clone(),
                subject: format!("{}: sign-up attempt with your address", config.app_name),
                text: "Someone tried to create an account with this email address, which already \
                       has one. If it was you, sign in instead, or reset your password. If not, \
                       you can ignore this message."
                    .into(),
                kind: EmailKind::SignUpAttempt,
                link: None,
                created_at: now,
            });
        }
        Ok(SignUpOutcome { confirmation_sent: true })
    }

    /// Create a verification token and send it, in the background.
    fn spawn_verification(&self, project: &str, user: &str, email: &str) {
        let this = self.clone();
        let (project, user, email) = (project.to_string(), user.to_string(), email.to_string());
        tokio::spawn(async move {
            if let Err(e) = this.send_verification(&project, &user, &email).await {
                tracing::warn!(%project, error = %e, "could not send the verification email");
            }
        });
    }

    async fn send_verification(
        &self,
        project: &str,
        user: &str,
        email: &str,
    ) -> Result<(), AuthError> {
        let ttl = self.inner.config.email_verification_ttl;
        let token = random_token();
        let config = &self.inner.config;
        let link = format!(
            "{}/v1/projects/{project}/auth/verify-email?token={token}",
            config.public_url.trim_end_matches('/')
        );
        let message = EmailMessage {
            project: project.to_string(),
            to: email.to_string(),
            subject: format!("{}: confirm your email address", config.app_name),
            text: format!(
                "Confirm your email address by opening this link:\n\n{link}\n\nThe link works once and \
                 expires in {}.",
                humanize(ttl)
            ),
            kind: EmailKind::VerifyEmail,
            link: Some(link),
            created_at: self.now(),
        };
        self.issue_token_with_mail(project, user, PURPOSE_VERIFY, ttl, token, message).await
    }

    /// Store a one-time token and queue the message that carries it, in one transaction (a
    /// restart loses neither), then wake the mail worker.
    async fn issue_token_with_mail(
        &self,
        project: &str,
        user: &str,
        purpose: &'static str,
        ttl: Duration,
        token: String,
        message: EmailMessage,
    ) -> Result<(), AuthError> {
        let now = self.now();
        let record = NewOneTimeToken {
            hash: sha256(&token),
            user: user.to_string(),
            purpose: purpose.to_string(),
            created_at: now,
            expires_at: now + ttl.as_millis() as i64,
        };
        let mail = NewMail {
            message: serde_json::to_value(&message).map_err(AuthError::internal)?,
            created_at: now,
            expires_at: record.expires_at,
        };
        let p = project.to_string();
        self.blocking(move |s| Ok(s.insert_one_time_token_with_mail(&p, &record, &mail)?)).await?;
        self.wake_mailer();
        Ok(())
    }

    /// Sign in with email + password. A wrong password and an unknown email give the same
    /// `InvalidCredentials` after the same work (an Argon2 verification against a dummy hash).
    /// A disabled user gets `Disabled`, but only with the right password.
    pub async fn sign_in(
        &self,
        project: &str,
        email: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<Session, AuthError> {
        let state = self.project_state(project).await?;
        let email = normalize_email(email).map_err(|_| AuthError::InvalidCredentials)?;
        let limits = &self.inner.limits;
        check_ip(&limits.sign_in_ip, project, ip)?;
        check_limit(&limits.sign_in_account, project, &email)?;
        if password.len() > self.inner.config.password_policy.max_bytes {
            return Err(AuthError::InvalidCredentials);
        }
        let p = project.to_string();
        let found =
            self.blocking(move |s| Ok(s.find_identity(&p, PASSWORD_PROVIDER, &email)?)).await?;
        let hash = found.as_ref().and_then(|(i, _)| i.secret_hash.clone());
        // An unknown email verifies against the dummy hash, through the same bounded hasher, so
        // its answer (and its chance of `Busy`) matches a wrong password's.
        let ok = self.inner.hasher.verify(password.to_string(), hash).await?;
        let user = match found {
            Some((_, user)) if ok => user,
            _ => return Err(AuthError::InvalidCredentials),
        };
        if user.disabled {
            return Err(AuthError::Disabled);
        }
        let now = self.now();
        let signed_in = event(
            "user.signed_in",
            &user.id,
            serde_json::json!({ "provider": PASSWORD_PROVIDER, "ip": ip.map(|i| i.to_string()) }),
            now,
        );
        self.start_session(project, &state, user, signed_in).await
    }

    /// Create an anonymous user (no email, `anon: true`) and a session for it.
    pub async fn sign_in_anonymously(
        &self,
        project: &str,
        ip: Option<IpAddr>,
    ) -> Result<Session, AuthError> {
        let state = self.project_state(project).await?;
        check_ip(&self.inner.limits.anonymous_ip, project, ip)?;
        let now = self.now();
        let user = UserRecord {
            id: new_id(),
            project: project.to_string(),
            email: None,
            email_verified: false,
            disabled: false,
            anon: true,
            roles: Vec::new(),
            claims: Default::default(),
            created_at: now,
            updated_at: now,
        };
        let (p, u) = (project.to_string(), user.clone());
        self.blocking(move |s| {
            let created = event("user.created", &u.id, serde_json::json!({ "anon": true }), now);
            Ok(s.create_user(&p, &u, &[], &[created])?)
        })
        .await?;
        let signed_in =
            event("user.signed_in", &user.id, serde_json::json!({ "provider": "anonymous" }), now);
        self.start_session(project, &state, user, signed_in).await
    }

    /// Give an anonymous user an email and password; the user id (and so everything it owns) stays.
    /// `Conflict` if the email is taken (the caller is already a signed-in user of the project; the
    /// sign-up rate limits apply). Sends a verification email.
    pub async fn upgrade_anonymous(
        &self,
        project: &str,
        user: &str,
        email: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<User, AuthError> {
        let email = self.check_new_credentials(project, email, password, ip).await?;
        let hash = self.inner.hasher.hash(password.to_string()).await?;
        let now = self.now();
        let (p, u, e) = (project.to_string(), user.to_string(), email.clone());
        let record = self
            .blocking(move |s| {
                let identity = password_identity(&u, &e, hash, now);
                let upgraded = event(
                    "user.upgraded",
                    &u,
                    serde_json::json!({ "email": e, "provider": PASSWORD_PROVIDER }),
                    now,
                );
                Ok(s.upgrade_anonymous(&p, &u, &e, &identity, &[upgraded], now)?)
            })
            .await?;
        self.spawn_verification(project, &record.id, &email);
        Ok(record.into())
    }

    async fn start_session(
        &self,
        project: &str,
        state: &ProjectState,
        user: UserRecord,
        signed_in: NewEvent,
    ) -> Result<Session, AuthError> {
        let now = self.now();
        let refresh = random_token();
        let session = SessionRecord {
            id: new_id(),
            user: user.id.clone(),
            created_at: now,
            revoked_at: None,
        };
        let token = NewRefreshToken {
            hash: sha256(&refresh),
            parent: None,
            created_at: now,
            expires_at: now + self.inner.config.refresh_token_ttl.as_millis() as i64,
        };
        let (p, s_) = (project.to_string(), session.clone());
        self.blocking(move |s| Ok(s.create_session(&p, &s_, &token, &[signed_in])?)).await?;
        self.issue(state, project, &session.id, user, refresh)
    }

    /// Sign an access token and wrap the pair.
    fn issue(
        &self,
        state: &ProjectState,
        project: &str,
        session: &str,
        user: UserRecord,
        refresh_token: String,
    ) -> Result<Session, AuthError> {
        let config = &self.inner.config;
        let now_s = self.now() / 1000;
        let ttl = config.access_token_ttl.as_secs().max(1);
        let claims = Claims {
            iss: config.issuer.clone(),
            sub: user.id.clone(),
            aud: project.to_string(),
            exp: now_s + ttl as i64,
            iat: now_s,
            nbf: now_s,
            jti: new_id(),
            sid: session.to_string(),
            roles: user.roles.clone(),
            custom: user.claims.clone(),
            anon: user.anon,
            email_verified: user.email_verified,
            email: user.email.clone(),
        };
        Ok(Session {
            access_token: state.keys.sign(&claims)?,
            token_type: "Bearer".into(),
            expires_in: ttl,
            refresh_token,
            session_id: session.to_string(),
            user: user.into(),
        })
    }

    /// Exchange a refresh token for a new pair. The presented token is spent; presenting a spent
    /// token again revokes its whole session (every descendant token, and the session's access
    /// tokens through the deny list) and answers `InvalidToken`.
    pub async fn refresh(
        &self,
        project: &str,
        refresh_token: &str,
        ip: Option<IpAddr>,
    ) -> Result<Session, AuthError> {
        let state = self.project_state(project).await?;
        let presented = sha256(refresh_token);
        let limits = &self.inner.limits;
        check_ip(&limits.refresh_ip, project, ip)?;
        check_limit(&limits.refresh_account, project, &hex::encode(&presented[..16]))?;
        let now = self.now();
        let next = random_token();
        let replacement = NewRefreshToken {
            hash: sha256(&next),
            parent: Some(presented.clone()),
            created_at: now,
            expires_at: now + self.inner.config.refresh_token_ttl.as_millis() as i64,
        };
        let p = project.to_string();
        let grace = self.inner.config.refresh_reuse_grace.as_millis() as i64;
        let outcome = self
            .blocking(move |s| {
                Ok(s.rotate_refresh_token(&p, &presented, &replacement, now, grace)?)
            })
            .await?;
        match outcome {
            RefreshOutcome::Rotated { session, user } => {
                self.issue(&state, project, &session, user, next)
            }
            RefreshOutcome::Reused { session } => {
                tracing::warn!(%project, %session, "refresh token reused: session revoked");
                self.deny_sessions(&state, &[session]);
                Err(AuthError::InvalidToken)
            }
            RefreshOutcome::Expired => Err(AuthError::TokenExpired),
            RefreshOutcome::Disabled => Err(AuthError::Disabled),
            RefreshOutcome::Revoked | RefreshOutcome::Unknown => Err(AuthError::InvalidToken),
        }
    }

    /// End the session a refresh token belongs to. Returns whether a live session was ended
    /// (false for an unknown or already ended one: signing out twice is not an error).
    /// Counted against the refresh limits: it is the other call that presents a refresh token, and
    /// each one is a write.
    pub async fn sign_out(
        &self,
        project: &str,
        refresh_token: &str,
        ip: Option<IpAddr>,
    ) -> Result<bool, AuthError> {
        let state = self.project_state(project).await?;
        let hash = sha256(refresh_token);
        let limits = &self.inner.limits;
        check_ip(&limits.refresh_ip, project, ip)?;
        check_limit(&limits.refresh_account, project, &hex::encode(&hash[..16]))?;
        let (p, now) = (project.to_string(), self.now());
        let revoked =
            self.blocking(move |s| Ok(s.revoke_session_by_token(&p, &hash, now)?)).await?;
        match revoked {
            Some(sid) => {
                self.deny_sessions(&state, &[sid]);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// End every session of a user (the user's "sign out everywhere", or an administrator's
    /// "revoke sessions"). Returns how many were live.
    pub async fn sign_out_everywhere(&self, project: &str, user: &str) -> Result<usize, AuthError> {
        let state = self.project_state(project).await?;
        let (p, u, now) = (project.to_string(), user.to_string(), self.now());
        let sids = self.blocking(move |s| Ok(s.revoke_user_sessions(&p, &u, now)?)).await?;
        self.deny_sessions(&state, &sids);
        Ok(sids.len())
    }

    /// Admin alias of [`AuthService::sign_out_everywhere`].
    pub async fn revoke_user_sessions(
        &self,
        project: &str,
        user: &str,
    ) -> Result<usize, AuthError> {
        self.sign_out_everywhere(project, user).await
    }

    /// Verify an access token for `project`: signature (the project's keys only), `alg`, issuer,
    /// audience (= project), `exp`/`nbf` with leeway, and the session deny list.
    ///
    /// Fast path: the project's decoded keys live in memory, and a token that verified once is
    /// remembered (by its exact text) until it expires, so repeated requests with the same token
    /// skip the signature check; time and deny-list checks run every time.
    pub async fn verify_access_token(
        &self,
        project: &str,
        token: &str,
    ) -> Result<Arc<Claims>, AuthError> {
        let state = self.project_state(project).await?;
        self.verify_with(&state, project, token)
    }

    fn verify_with(
        &self,
        state: &ProjectState,
        project: &str,
        token: &str,
    ) -> Result<Arc<Claims>, AuthError> {
        let config = &self.inner.config;
        let cached = state.verified.read().get(token).cloned();
        let claims = match cached {
            Some(c) => c,
            None => {
                if token.len() > 8192 {
                    return Err(AuthError::InvalidToken);
                }
                let claims = state.keys.verify(token)?;
                if claims.aud != project || claims.iss != config.issuer {
                    return Err(AuthError::InvalidToken);
                }
                let claims = Arc::new(claims);
                let mut cache = state.verified.write();
                if cache.len() >= VERIFIED_CACHE {
                    let now_s = self.now() / 1000;
                    cache.retain(|_, c| c.exp > now_s);
                    if cache.len() >= VERIFIED_CACHE {
                        cache.clear();
                    }
                }
                cache.insert(token.into(), claims.clone());
                claims
            }
        };
        let now = self.now();
        let leeway = config.leeway.as_millis() as i64;
        if claims.exp * 1000 + leeway <= now {
            return Err(AuthError::TokenExpired);
        }
        if claims.nbf * 1000 > now + leeway {
            return Err(AuthError::InvalidToken);
        }
        if state.revoked.read().contains_key(&claims.sid) {
            return Err(AuthError::InvalidToken);
        }
        Ok(claims)
    }

    // ---------------------------------------------------------------------------------------------
    // Email verification and password reset

    /// Send (again) a verification email to a signed-in user. A no-op for a verified or anonymous
    /// user.
    pub async fn request_email_verification(
        &self,
        project: &str,
        user: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        self.project_state(project).await?;
        let limits = &self.inner.limits;
        check_ip(&limits.verification_request_ip, project, ip)?;
        check_limit(&limits.verification_request_account, project, user)?;
        let record = self.get_user_record(project, user).await?;
        match record.email {
            Some(email) if !record.email_verified => {
                self.send_verification(project, &record.id, &email).await
            }
            _ => Ok(()),
        }
    }

    /// Spend a verification token. Returns the now verified user.
    pub async fn verify_email(
        &self,
        project: &str,
        token: &str,
        ip: Option<IpAddr>,
    ) -> Result<User, AuthError> {
        self.project_state(project).await?;
        check_ip(&self.inner.limits.verify_email_ip, project, ip)?;
        let user = self.consume(project, token, PURPOSE_VERIFY).await?;
        let (p, u, now) = (project.to_string(), user.clone(), self.now());
        self.blocking(move |s| {
            s.set_email_verified(&p, &u, now)?;
            s.get_user(&p, &u)?.map(User::from).ok_or(AuthError::InvalidToken)
        })
        .await
    }

    async fn consume(
        &self,
        project: &str,
        token: &str,
        purpose: &'static str,
    ) -> Result<String, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken);
        }
        let (p, hash, now) = (project.to_string(), sha256(token), self.now());
        match self.blocking(move |s| Ok(s.consume_one_time_token(&p, &hash, purpose, now)?)).await?
        {
            ConsumeOutcome::Consumed { user } => Ok(user),
            ConsumeOutcome::Expired => Err(AuthError::TokenExpired),
            ConsumeOutcome::Invalid => Err(AuthError::InvalidToken),
        }
    }

    /// Ask for a password-reset email. Always answers `Ok` (for a well-formed address within the
    /// rate limits), whether or not the address is registered; the lookup and sending happen in
    /// the background.
    pub async fn request_password_reset(
        &self,
        project: &str,
        email: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        self.project_state(project).await?;
        let email = normalize_email(email)?;
        let limits = &self.inner.limits;
        check_ip(&limits.reset_ip, project, ip)?;
        check_limit(&limits.reset_account, project, &email)?;
        let this = self.clone();
        let project = project.to_string();
        tokio::spawn(async move {
            if let Err(e) = this.send_reset(&project, &email).await {
                tracing::warn!(%project, error = %e, "could not send a password reset email");
            }
        });
        Ok(())
    }

    async fn send_reset(&self, project: &str, email: &str) -> Result<(), AuthError> {
        let (p, e) = (project.to_string(), email.to_string());
        let Some(user) = self.blocking(move |s| Ok(s.get_user_by_email(&p, &e)?)).await? else {
            return Ok(());
        };
        if user.disabled {
            return Ok(());
        }
        let ttl = self.inner.config.password_reset_ttl;
        let token = random_token();
        let config = &self.inner.config;
        let link = format!(
            "{}/v1/projects/{project}/auth/reset-password?token={token}",
            config.public_url.trim_end_matches('/')
        );
        let message = EmailMessage {
            project: project.to_string(),
            to: email.to_string(),
            subject: format!("{}: reset your password", config.app_name),
            text: format!(
                "Someone (hopefully you) asked to reset the password of this account. Choose a new \
                 one here:\n\n{link}\n\nThe link works once and expires in {}. If you did not ask, \
                 ignore this message: your password stays as it is.",
                humanize(ttl)
            ),
            kind: EmailKind::PasswordReset,
            link: Some(link),
            created_at: self.now(),
        };
        self.issue_token_with_mail(project, &user.id, PURPOSE_RESET, ttl, token, message).await
    }

    /// Spend a reset token and set a new password. Every session of the user is revoked (refresh
    /// tokens at once, access tokens through the deny list), and the email counts as verified.
    ///
    /// Cheap checks come first: the rate limit, then the token (a SHA-256 and one indexed read),
    /// then the password policy; only a valid token and an acceptable password reach Argon2. The
    /// token is spent after hashing, so a `Busy` answer leaves it usable for a retry.
    pub async fn reset_password(
        &self,
        project: &str,
        token: &str,
        new_password: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let state = self.project_state(project).await?;
        check_ip(&self.inner.limits.new_password_ip, project, ip)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken);
        }
        let (p, hash, now) = (project.to_string(), sha256(token), self.now());
        match self
            .blocking(move |s| Ok(s.check_one_time_token(&p, &hash, PURPOSE_RESET, now)?))
            .await?
        {
            TokenCheck::Valid { .. } => {}
            TokenCheck::Expired => return Err(AuthError::TokenExpired),
            TokenCheck::Invalid => return Err(AuthError::InvalidToken),
        }
        check_policy(&self.inner.config.password_policy, new_password, None)?;
        let hash = self.inner.hasher.hash(new_password.to_string()).await?;
        // Spent atomically: of two concurrent resets with one token, one wins.
        let user = self.consume(project, token, PURPOSE_RESET).await?;
        let (p, now) = (project.to_string(), self.now());
        let sids = self
            .blocking(move |s| {
                let record = s.get_user(&p, &user)?.ok_or(AuthError::InvalidToken)?;
                let email = record.email.ok_or(AuthError::InvalidToken)?;
                let identity = password_identity(&user, &email, hash, now);
                let sids = s.set_password(&p, &user, &identity, now)?;
                s.set_email_verified(&p, &user, now)?;
                Ok(sids)
            })
            .await?;
        self.deny_sessions(&state, &sids);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------------
    // Administration (service scope)

    async fn get_user_record(&self, project: &str, user: &str) -> Result<UserRecord, AuthError> {
        let (p, u) = (project.to_string(), user.to_string());
        self.blocking(move |s| s.get_user(&p, &u)?.ok_or(AuthError::NotFound(format!("user {u}"))))
            .await
    }

    pub async fn get_user(&self, project: &str, user: &str) -> Result<User, AuthError> {
        Ok(self.get_user_record(project, user).await?.into())
    }

    /// A page of users in creation order, optionally those whose email starts with a prefix.
    pub async fn list_users(
        &self,
        project: &str,
        email_prefix: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<UserPage, AuthError> {
        let limit = limit.clamp(1, 1000);
        let query = UserQuery {
            email_prefix: email_prefix.map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty()),
            after: after.map(str::to_string),
            limit: limit + 1,
        };
        let p = project.to_string();
        let mut users = self.blocking(move |s| Ok(s.list_users(&p, &query)?)).await?;
        let next = if users.len() > limit as usize {
            users.truncate(limit as usize);
            users.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok(UserPage { users: users.into_iter().map(User::from).collect(), next })
    }

    /// Disable (or re-enable) a user. Disabling also revokes every session: sign-in and refresh
    /// fail from now on, and existing access tokens through the deny list.
    pub async fn set_user_disabled(
        &self,
        project: &str,
        user: &str,
        disabled: bool,
    ) -> Result<User, AuthError> {
        let state = self.project_state(project).await?;
        let (p, u, now) = (project.to_string(), user.to_string(), self.now());
        let (record, sids) = self
            .blocking(move |s| {
                let record = s
                    .set_user_disabled(&p, &u, disabled, now)?
                    .ok_or(AuthError::NotFound(format!("user {u}")))?;
                let sids = if disabled { s.revoke_user_sessions(&p, &u, now)? } else { Vec::new() };
                Ok((record, sids))
            })
            .await?;
        self.deny_sessions(&state, &sids);
        Ok(record.into())
    }

    /// Delete a user with identities, sessions and tokens; records `user.deleted` with it.
    pub async fn delete_user(&self, project: &str, user: &str) -> Result<(), AuthError> {
        let state = self.project_state(project).await?;
        let (p, u, now) = (project.to_string(), user.to_string(), self.now());
        let sids = self
            .blocking(move |s| {
                let deleted = event("user.deleted", &u, serde_json::json!({}), now);
                s.delete_user(&p, &u, &[deleted])?.ok_or(AuthError::NotFound(format!("user {u}")))
            })
            .await?;
        self.deny_sessions(&state, &sids);
        Ok(())
    }

    /// Set the roles and custom claims that the user's next access tokens carry (existing tokens
    /// keep theirs until they expire or are refreshed).
    pub async fn set_user_claims(
        &self,
        project: &str,
        user: &str,
        roles: Vec<String>,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<User, AuthError> {
        validate_roles(&roles)?;
        let size = serde_json::to_string(&claims).map(|s| s.len()).unwrap_or(usize::MAX);
        if size > MAX_CLAIMS_BYTES {
            return Err(AuthError::InvalidInput(format!(
                "custom claims must encode to at most {MAX_CLAIMS_BYTES} bytes"
            )));
        }
        let (p, u, now) = (project.to_string(), user.to_string(), self.now());
        let record = self
            .blocking(move |s| {
                s.set_user_claims(&p, &u, &roles, &claims, now)?
                    .ok_or(AuthError::NotFound(format!("user {u}")))
            })
            .await?;
        Ok(record.into())
    }

    /// Messages held by the development outbox for this project; `None` when mail really goes out.
    pub fn outbox(&self, project: &str) -> Option<Vec<EmailMessage>> {
        self.inner.mailer.as_outbox().map(|o| o.messages(project))
    }

    /// Auth events of a project after position `after` (an event's `seq`), in commit order.
    pub async fn list_events(
        &self,
        project: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Event>, AuthError> {
        let p = project.to_string();
        let events = self.blocking(move |s| Ok(s.list_events(&p, after, limit)?)).await?;
        Ok(events.into_iter().map(Event::from).collect())
    }

    /// Delete tokens and sessions that can no longer be used (see
    /// [`AuthStore::prune_auth`]); the server runs this periodically. Returns the rows removed.
    pub async fn prune(&self) -> Result<u64, AuthError> {
        let now = self.now();
        let revoked_before = now - self.revocation_window_ms();
        self.blocking(move |s| Ok(s.prune_auth(now, revoked_before)?)).await
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} hour{}", s / 3600, if s == 3600 { "" } else { "s" })
    } else if s >= 60 {
        format!("{} minutes", s / 60)
    } else {
        format!("{s} seconds")
    }
}

/// Send what the mail outbox holds: claim (with a lease, so a crash mid-send retries), send,
/// delete; a failure retries with backoff until [`MAIL_ATTEMPTS`] or the message's expiry (its
/// link no longer works then).
async fn mail_worker(auth: AuthService) {
    const LEASE_MS: i64 = 60_000;
    loop {
        let now = auth.now();
        let claimed = auth.blocking(move |s| Ok(s.claim_mail(now, LEASE_MS, 16)?)).await;
        let batch = match claimed {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "claiming mail");
                Vec::new()
            }
        };
        if batch.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), auth.inner.mail_wake.notified()).await;
            continue;
        }
        for m in batch {
            let message: Result<EmailMessage, _> = serde_json::from_value(m.message.clone());
            let sent = match &message {
                Ok(msg) => {
                    tokio::time::timeout(Duration::from_secs(30), auth.inner.mailer.send(msg))
                        .await
                        .map_err(|_| "timed out".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                }
                Err(e) => Err(format!("unreadable message: {e}")),
            };
            let retry_at = match sent {
                Ok(()) => None,
                Err(e) => {
                    let now = auth.now();
                    if m.attempts >= MAIL_ATTEMPTS || now >= m.expires_at || message.is_err() {
                        tracing::warn!(project = %m.project, attempts = m.attempts, error = %e, "giving up on an email");
                        None
                    } else {
                        tracing::info!(project = %m.project, attempts = m.attempts, error = %e, "sending email failed; will retry");
                        let wait = nimbus_model::retry::backoff(
                            Duration::from_secs(1),
                            Duration::from_secs(300),
                            m.attempts,
                        );
                        Some(now + wait.as_millis() as i64)
                    }
                }
            };
            let id = m.id;
            if let Err(e) = auth.blocking(move |s| Ok(s.finish_mail(id, retry_at)?)).await {
                tracing::warn!(error = %e, "recording a sent email");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(normalize_email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in ["", "a", "a@b", "@x.io", "a b@x.io", "a@x.io@y.io", "a@.io", "a@io."] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles() {
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            validate_roles(&roles(&["admin", "org:acme.editor", "a_b-c", &"r".repeat(64)])).is_ok()
        );
        for bad in ["a,b", "", "a b", "é", "a\nb", "a;b", &"r".repeat(65)] {
            match validate_roles(&roles(&["ok", bad])) {
                Err(AuthError::InvalidInput(m)) => assert!(m.contains(&format!("{bad:?}")), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let many: Vec<String> = (0..=MAX_ROLES).map(|i| format!("r{i}")).collect();
        assert!(validate_roles(&many[..MAX_ROLES]).is_ok());
        assert!(validate_roles(&many).is_err());
    }
}
