//! The service's public data types: what the API layer serialises.

use nimbus_model::UnixMillis;
use nimbus_store::auth::{ApiKeyRecord, EventRecord, ProjectRecord, UserRecord};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: UnixMillis,
}

impl From<ProjectRecord> for Project {
    fn from(p: ProjectRecord) -> Self {
        Project { id: p.id, slug: p.slug, name: p.name, created_at: p.created_at }
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyScope {
    /// Full access to the project's APIs; bypasses access rules. Server-side only.
    Service,
    /// A client key: identifies the project for sign-up/sign-in and lets end users act under the
    /// access rules. Safe to ship in an app.
    Public,
}

impl ApiKeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyScope::Service => "service",
            ApiKeyScope::Public => "public",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(ApiKeyScope::Service),
            "public" => Some(ApiKeyScope::Public),
            _ => None,
        }
    }
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub project: String,
    /// The key's public part: `nbk_<prefix>_…`.
    pub prefix: String,
    pub scope: ApiKeyScope,
    pub name: String,
    pub created_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
    pub revoked_at: Option<UnixMillis>,
}

impl ApiKeyInfo {
    pub(crate) fn from_record(r: &ApiKeyRecord) -> Option<Self> {
        Some(ApiKeyInfo {
            id: r.id.clone(),
            project: r.project.clone(),
            prefix: r.prefix.clone(),
            scope: ApiKeyScope::parse(&r.scope)?,
            name: r.name.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        })
    }
}

/// A newly created API key: the only time its secret is seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewApiKey {
    pub info: ApiKeyInfo,
    /// `nbk_<prefix>_<secret>`: show once, store nowhere.
    pub key: String,
}

/// An end user of a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub project: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub disabled: bool,
    pub anon: bool,
    pub roles: Vec<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl From<UserRecord> for User {
    fn from(u: UserRecord) -> Self {
        User {
            id: u.id,
            project: u.project,
            email: u.email,
            email_verified: u.email_verified,
            disabled: u.disabled,
            anon: u.anon,
            roles: u.roles,
            claims: u.claims,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// What a successful sign-in (or refresh) returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// EdDSA-signed JWT; send as `Authorization: Bearer`.
    pub access_token: String,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use: exchange it with `refresh` for a new pair.
    pub refresh_token: String,
    pub session_id: String,
    pub user: User,
}

/// The answer to a sign-up. Deliberately the same whether or not the email was already registered
/// (see the crate documentation on enumeration): the client then signs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignUpOutcome {
    /// Always true: "check your inbox".
    pub confirmation_sent: bool,
}

/// A durable auth event (the `events` outbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Commit position: page with `after=<seq of the last event seen>`. Assigned in the
    /// transaction that wrote the event, so no event committed earlier has a greater one.
    pub seq: u64,
    /// Stable unique id (UUIDv7), for deduplication; not an order.
    pub id: String,
    pub project: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    pub data: serde_json::Value,
    pub created_at: UnixMillis,
    pub delivered_at: Option<UnixMillis>,
}

impl From<EventRecord> for Event {
    fn from(e: EventRecord) -> Self {
        Event {
            seq: e.seq,
            id: e.id,
            project: e.project,
            kind: e.kind,
            subject: e.subject,
            data: e.data,
            created_at: e.created_at,
            delivered_at: e.delivered_at,
        }
    }
}

/// A page of users.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserPage {
    pub users: Vec<User>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}
