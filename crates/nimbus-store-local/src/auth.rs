//! [`AuthStore`] on [`SqliteStore`]: the identity tables of migration 2.
//!
//! Every statement on a project's rows has `project = ?` in its `WHERE` clause (or inserts the
//! project it was given), so a project argument can never reach another project's rows.

use nimbus_model::UnixMillis;
use nimbus_store::auth::{
    ApiKeyRecord, AuthStore, ConsumeOutcome, EventRecord, IdentityRecord, NewEvent, NewMail,
    NewOneTimeToken, NewRefreshToken, ProjectRecord, QueuedMail, RefreshOutcome, SessionRecord,
    SigningKeyRecord, TokenCheck, UserQuery, UserRecord,
};
use nimbus_store::{Result, StoreError};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};

use crate::error::Context;
use crate::sqlite::{SqliteStore, json_column};

const MAX_PAGE: u32 = 1000;

/// A refresh token joined with its session: session, used_at, expires_at, revoked_at, user.
type TokenRow = (String, Option<UnixMillis>, UnixMillis, Option<UnixMillis>, String);

/// A uniqueness (or other constraint) violation becomes `Conflict`; anything else a backend error.
fn conflict_or(e: rusqlite::Error, what: &str) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(err, _) if err.code == ErrorCode::ConstraintViolation => {
            StoreError::Conflict(what.to_string())
        }
        _ => crate::error::backend(what, e),
    }
}

fn project_from_row(row: &Row<'_>) -> rusqlite::Result<ProjectRecord> {
    Ok(ProjectRecord {
        id: row.get(0)?,
        slug: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get(3)?,
    })
}

const API_KEY_COLUMNS: &str =
    "id, project, prefix, hash, scope, name, created_at, expires_at, revoked_at";

fn api_key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.get(0)?,
        project: row.get(1)?,
        prefix: row.get(2)?,
        hash: row.get(3)?,
        scope: row.get(4)?,
        name: row.get(5)?,
        created_at: row.get(6)?,
        expires_at: row.get(7)?,
        revoked_at: row.get(8)?,
    })
}

const USER_COLUMNS: &str = "u.id, u.project, u.email, u.email_verified, u.disabled, u.anon, \
     u.roles_json, u.claims_json, u.created_at, u.updated_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: row.get(0)?,
        project: row.get(1)?,
        email: row.get(2)?,
        email_verified: row.get(3)?,
        disabled: row.get(4)?,
        anon: row.get(5)?,
        roles: json_column(row, 6)?,
        claims: json_column(row, 7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
    })
}

fn get_user_on(conn: &Connection, project: &str, id: &str) -> Result<Option<UserRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users u WHERE u.project = ?1 AND u.id = ?2"
    ))
    .and_then(|mut stmt| stmt.query_row(params![project, id], user_from_row).optional())
    .with_context(|| format!("reading user {id}"))
}

/// The event-log type of an auth event kind (`user.created` → `dev.nimbus.auth.user.created`).
const AUTH_TYPE_PREFIX: &str = nimbus_model::event_types::AUTH_PREFIX;

/// Append auth events to the event log in the caller's transaction (the log assigns positions
/// in commit order). The caller rings the log's bell after its commit ([`notify_events`]).
fn insert_events(conn: &Connection, project: &str, events: &[NewEvent]) -> Result<()> {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let events: Vec<nimbus_store::events::NewEvent> = events
        .iter()
        .map(|e| nimbus_store::events::NewEvent {
            project: project.to_owned(),
            kind: format!("{AUTH_TYPE_PREFIX}{}", e.kind),
            source: format!("/v1/projects/{project}/auth"),
            subject: e.subject.clone(),
            data: e.data.clone(),
        })
        .collect();
    crate::events::append_with_ids(conn, &events, &ids)?;
    Ok(())
}

/// Events of a deleted project removed per transaction.
pub(crate) const EVENT_DELETE_STEP: usize = 2048;

/// Users of a deleted project removed per transaction, each with its identities, sessions and
/// tokens.
pub(crate) const USER_DELETE_STEP: usize = 256;

impl SqliteStore {
    /// [`SqliteStore::write`] for changes that append auth events: after the commit, wake the
    /// event log's consumers.
    fn write_events<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let out = self.write(what, f)?;
        if let Ok(last) = self.read(crate::events::last_position) {
            self.events_committed(last);
        }
        Ok(out)
    }
}

fn insert_token(tx: &Connection, project: &str, token: &NewOneTimeToken) -> Result<()> {
    let n = tx
        .prepare_cached(
            "INSERT INTO one_time_tokens (hash, project, user_id, purpose, created_at, \
                     expires_at) SELECT ?1, ?2, id, ?4, ?5, ?6 FROM users \
                     WHERE project = ?2 AND id = ?3",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                token.hash,
                project,
                token.user,
                token.purpose,
                token.created_at,
                token.expires_at
            ])
        })
        .map_err(|e| conflict_or(e, "one-time token collision"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {}", token.user)));
    }
    Ok(())
}

fn insert_mail(tx: &Connection, project: &str, mail: &NewMail) -> Result<()> {
    let message = serde_json::to_string(&mail.message).context("encoding mail")?;
    tx.prepare_cached(
        "INSERT INTO mail_outbox (project, message, next_at, expires_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?3)",
    )
    .and_then(|mut s| s.execute(params![project, message, mail.created_at, mail.expires_at]))
    .context("queueing mail")?;
    Ok(())
}

fn insert_identity(conn: &Connection, project: &str, identity: &IdentityRecord) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO identities (id, project, user_id, provider, provider_subject, secret_hash, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            identity.id,
            project,
            identity.user,
            identity.provider,
            identity.provider_subject,
            identity.secret_hash,
            identity.created_at
        ])
    })
    .map_err(|e| conflict_or(e, "identity already exists"))?;
    Ok(())
}

fn revoke_sessions_where(
    conn: &Connection,
    project: &str,
    user: &str,
    now: UnixMillis,
) -> Result<Vec<String>> {
    conn.prepare_cached(
        "UPDATE sessions SET revoked_at = ?3 \
         WHERE project = ?1 AND user_id = ?2 AND revoked_at IS NULL RETURNING id",
    )
    .and_then(|mut stmt| stmt.query_map(params![project, user, now], |r| r.get(0))?.collect())
    .with_context(|| format!("revoking sessions of user {user}"))
}

fn insert_refresh_token(
    conn: &Connection,
    project: &str,
    session: &str,
    token: &NewRefreshToken,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (hash, project, session, parent, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            token.hash,
            project,
            session,
            token.parent,
            token.created_at,
            token.expires_at
        ])
    })
    .map_err(|e| conflict_or(e, "refresh token collision"))?;
    Ok(())
}

impl AuthStore for SqliteStore {
    fn create_project(&self, project: &ProjectRecord) -> Result<()> {
        self.write("creating a project", |tx| {
            tx.prepare_cached(
                "INSERT INTO projects (id, slug, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![project.id, project.slug, project.name, project.created_at])
            })
            .map_err(|e| conflict_or(e, &format!("project {} already exists", project.slug)))?;
            Ok(())
        })
    }

    fn mark_project_deleting(&self, id: &str, now: UnixMillis) -> Result<Option<UnixMillis>> {
        self.write("marking a project deleting", |tx| {
            tx.prepare_cached(
                "UPDATE projects SET deleting_at = coalesce(deleting_at, ?2) WHERE id = ?1 \
                 RETURNING deleting_at",
            )
            .and_then(|mut stmt| stmt.query_row(params![id, now], |r| r.get(0)).optional())
            .with_context(|| format!("marking project {id} deleting"))
        })
    }

    fn deleting_projects(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id FROM projects WHERE deleting_at IS NOT NULL ORDER BY deleting_at, id",
            )
            .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
            .context("listing projects being deleted")
        })
    }

    fn delete_project(&self, id: &str) -> Result<bool> {
        // Its events first, a step at a time: a project's log is bounded only by retention, and
        // one statement over it would hold every other project's writes (the recorder's
        // included) for as long. None is appended meanwhile (the project is being deleted), and
        // the transaction below takes any that were.
        self.delete_in_steps(
            "deleting a project's events",
            "event_log",
            "position",
            "project = ?1",
            EVENT_DELETE_STEP,
            &[&id],
        )?;
        // Then its users, likewise: each takes its identities, sessions, refresh tokens and
        // one-time tokens with it (cascades found through migration 19's indexes). The project's
        // API stopped at the tombstone, so none signs up meanwhile; the cascade from the project
        // row below takes any that did.
        self.delete_in_steps(
            "deleting a project's users",
            "users",
            "id",
            "project = ?1",
            USER_DELETE_STEP,
            &[&id],
        )?;
        self.write("deleting a project", |tx| {
            // Tables without a foreign key to the project row; the rest cascade from it.
            for table in ["event_log", "refresh_tokens", "one_time_tokens", "mail_outbox"] {
                tx.execute(&format!("DELETE FROM {table} WHERE project = ?1"), [id])
                    .with_context(|| format!("deleting {table} of project {id}"))?;
            }
            let n = tx
                .execute("DELETE FROM projects WHERE id = ?1", [id])
                .with_context(|| format!("deleting project {id}"))?;
            Ok(n > 0)
        })
    }

    fn get_project(&self, id: &str) -> Result<Option<ProjectRecord>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, slug, name, created_at FROM projects \
                 WHERE id = ?1 AND deleting_at IS NULL",
            )
            .and_then(|mut stmt| stmt.query_row([id], project_from_row).optional())
            .with_context(|| format!("reading project {id}"))
        })
    }

    fn get_project_by_slug(&self, slug: &str) -> Result<Option<ProjectRecord>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, slug, name, created_at FROM projects \
                 WHERE slug = ?1 AND deleting_at IS NULL",
            )
            .and_then(|mut stmt| stmt.query_row([slug], project_from_row).optional())
            .with_context(|| format!("reading project {slug}"))
        })
    }

    fn list_projects(&self) -> Result<Vec<ProjectRecord>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, slug, name, created_at FROM projects \
                 WHERE deleting_at IS NULL ORDER BY slug",
            )
            .and_then(|mut stmt| stmt.query_map([], project_from_row)?.collect())
            .context("listing projects")
        })
    }

    fn insert_signing_key(&self, project: &str, key: &SigningKeyRecord) -> Result<()> {
        self.write("storing a signing key", |tx| {
            tx.prepare_cached(
                "INSERT INTO signing_keys (project, kid, private_pkcs8, public_key, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    project,
                    key.kid,
                    key.private_pkcs8,
                    key.public_key,
                    key.created_at
                ])
            })
            .map_err(|e| conflict_or(e, "signing key already exists"))?;
            Ok(())
        })
    }

    fn list_signing_keys(&self, project: &str) -> Result<Vec<SigningKeyRecord>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT kid, private_pkcs8, public_key, created_at FROM signing_keys \
                 WHERE project = ?1 ORDER BY created_at DESC, rowid DESC",
            )
            .and_then(|mut stmt| {
                stmt.query_map([project], |r| {
                    Ok(SigningKeyRecord {
                        kid: r.get(0)?,
                        private_pkcs8: r.get(1)?,
                        public_key: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                })?
                .collect()
            })
            .with_context(|| format!("listing signing keys of project {project}"))
        })
    }

    fn delete_signing_key(&self, project: &str, kid: &str) -> Result<bool> {
        self.write("deleting a signing key", |tx| {
            let n = tx
                .prepare_cached("DELETE FROM signing_keys WHERE project = ?1 AND kid = ?2")
                .and_then(|mut stmt| stmt.execute(params![project, kid]))
                .context("deleting a signing key")?;
            Ok(n > 0)
        })
    }

    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.write("creating an API key", |tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))
            .and_then(|mut stmt| {
                stmt.execute(params![
                    key.id,
                    key.project,
                    key.prefix,
                    key.hash,
                    key.scope,
                    key.name,
                    key.created_at,
                    key.expires_at,
                    key.revoked_at
                ])
            })
            .map_err(|e| conflict_or(e, "API key prefix taken"))?;
            Ok(())
        })
    }

    fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE prefix = ?1 \
                 AND project NOT IN (SELECT id FROM projects WHERE deleting_at IS NOT NULL)"
            ))
            .and_then(|mut stmt| stmt.query_row([prefix], api_key_from_row).optional())
            .context("looking up an API key")
        })
    }

    fn list_api_keys(&self, project: &str) -> Result<Vec<ApiKeyRecord>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE project = ?1 ORDER BY id"
            ))
            .and_then(|mut stmt| stmt.query_map([project], api_key_from_row)?.collect())
            .with_context(|| format!("listing API keys of project {project}"))
        })
    }

    fn revoke_api_key(
        &self,
        project: &str,
        id: &str,
        now: UnixMillis,
    ) -> Result<Option<ApiKeyRecord>> {
        self.write("revoking an API key", |tx| {
            tx.prepare_cached(&format!(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?3) \
                 WHERE project = ?1 AND id = ?2 RETURNING {API_KEY_COLUMNS}"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![project, id, now], api_key_from_row).optional()
            })
            .context("revoking an API key")
        })
    }

    fn create_user(
        &self,
        project: &str,
        user: &UserRecord,
        identities: &[IdentityRecord],
        events: &[NewEvent],
    ) -> Result<()> {
        let roles = serde_json::to_string(&user.roles).context("encoding roles")?;
        let claims = serde_json::to_string(&user.claims).context("encoding claims")?;
        self.write_events("creating a user", |tx| {
            tx.prepare_cached(
                "INSERT INTO users (id, project, email, email_verified, disabled, anon, roles_json, \
                 claims_json, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    user.id,
                    project,
                    user.email,
                    user.email_verified,
                    user.disabled,
                    user.anon,
                    roles,
                    claims,
                    user.created_at,
                    user.updated_at
                ])
            })
            .map_err(|e| conflict_or(e, "email already registered"))?;
            for identity in identities {
                insert_identity(tx, project, identity)?;
            }
            insert_events(tx, project, events)
        })
    }

    fn get_user(&self, project: &str, id: &str) -> Result<Option<UserRecord>> {
        self.read(|conn| get_user_on(conn, project, id))
    }

    fn get_user_by_email(&self, project: &str, email: &str) -> Result<Option<UserRecord>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.project = ?1 AND u.email = ?2"
            ))
            .and_then(|mut stmt| stmt.query_row(params![project, email], user_from_row).optional())
            .context("looking up a user by email")
        })
    }

    fn find_identity(
        &self,
        project: &str,
        provider: &str,
        subject: &str,
    ) -> Result<Option<(IdentityRecord, UserRecord)>> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, i.id, i.provider, i.provider_subject, i.secret_hash, \
                 i.created_at FROM identities i JOIN users u ON u.id = i.user_id \
                 WHERE i.project = ?1 AND i.provider = ?2 AND i.provider_subject = ?3 \
                 AND u.project = ?1"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![project, provider, subject], |r| {
                    let user = user_from_row(r)?;
                    let identity = IdentityRecord {
                        id: r.get(10)?,
                        user: user.id.clone(),
                        provider: r.get(11)?,
                        provider_subject: r.get(12)?,
                        secret_hash: r.get(13)?,
                        created_at: r.get(14)?,
                    };
                    Ok((identity, user))
                })
                .optional()
            })
            .context("looking up an identity")
        })
    }

    fn list_users(&self, project: &str, query: &UserQuery) -> Result<Vec<UserRecord>> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        // LIKE with an escaped prefix: `%`, `_` and `\` in the prefix match themselves.
        let pattern = query.email_prefix.as_ref().map(|p| {
            let escaped = p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("{escaped}%")
        });
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.project = ?1 \
                 AND (?2 IS NULL OR u.email LIKE ?2 ESCAPE '\\') \
                 AND (?3 IS NULL OR u.id > ?3) ORDER BY u.id LIMIT ?4"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![project, pattern, query.after, limit], user_from_row)?
                    .collect()
            })
            .context("listing users")
        })
    }

    fn upgrade_anonymous(
        &self,
        project: &str,
        user: &str,
        email: &str,
        identity: &IdentityRecord,
        events: &[NewEvent],
        now: UnixMillis,
    ) -> Result<UserRecord> {
        self.write_events("upgrading an anonymous user", |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE users SET email = ?3, anon = 0, email_verified = 0, updated_at = ?4 \
                     WHERE project = ?1 AND id = ?2 AND anon = 1",
                )
                .and_then(|mut stmt| stmt.execute(params![project, user, email, now]))
                .map_err(|e| conflict_or(e, "email already registered"))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("anonymous user {user}")));
            }
            insert_identity(tx, project, identity)?;
            insert_events(tx, project, events)?;
            get_user_on(tx, project, user)?
                .ok_or_else(|| StoreError::NotFound(format!("user {user}")))
        })
    }

    fn set_email_verified(&self, project: &str, user: &str, now: UnixMillis) -> Result<bool> {
        self.write_events("marking an email verified", |tx| {
            // Only a change is an event: verifying twice is not.
            let n = tx
                .prepare_cached(
                    "UPDATE users SET email_verified = 1, updated_at = ?3 \
                     WHERE project = ?1 AND id = ?2 AND email IS NOT NULL AND email_verified = 0",
                )
                .and_then(|mut stmt| stmt.execute(params![project, user, now]))
                .context("marking an email verified")?;
            if n > 0 {
                let event = NewEvent {
                    id: uuid::Uuid::now_v7().to_string(),
                    kind: "user.email_verified".into(),
                    subject: user.to_owned(),
                    data: serde_json::json!({}),
                    created_at: now,
                };
                insert_events(tx, project, &[event])?;
                return Ok(true);
            }
            // Already verified still counts as verified for the caller.
            let verified: Option<bool> = tx
                .query_row(
                    "SELECT email_verified FROM users WHERE project = ?1 AND id = ?2 \
                     AND email IS NOT NULL",
                    params![project, user],
                    |r| r.get(0),
                )
                .optional()
                .context("reading a user")?;
            Ok(verified.unwrap_or(false))
        })
    }

    fn set_password(
        &self,
        project: &str,
        user: &str,
        identity: &IdentityRecord,
        now: UnixMillis,
    ) -> Result<Vec<String>> {
        self.write("setting a password", |tx| {
            if get_user_on(tx, project, user)?.is_none() {
                return Err(StoreError::NotFound(format!("user {user}")));
            }
            let n = tx
                .prepare_cached(
                    "UPDATE identities SET secret_hash = ?4, provider_subject = ?5 \
                     WHERE project = ?1 AND user_id = ?2 AND provider = ?3",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        project,
                        user,
                        identity.provider,
                        identity.secret_hash,
                        identity.provider_subject
                    ])
                })
                .map_err(|e| conflict_or(e, "identity already exists"))?;
            if n == 0 {
                insert_identity(tx, project, identity)?;
            }
            tx.prepare_cached("UPDATE users SET updated_at = ?3 WHERE project = ?1 AND id = ?2")
                .and_then(|mut stmt| stmt.execute(params![project, user, now]))
                .context("touching a user")?;
            revoke_sessions_where(tx, project, user, now)
        })
    }

    fn set_user_disabled(
        &self,
        project: &str,
        user: &str,
        disabled: bool,
        now: UnixMillis,
    ) -> Result<Option<UserRecord>> {
        self.write("disabling a user", |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE users SET disabled = ?3, updated_at = ?4 WHERE project = ?1 AND id = ?2",
                )
                .and_then(|mut stmt| stmt.execute(params![project, user, disabled, now]))
                .context("disabling a user")?;
            if n == 0 {
                return Ok(None);
            }
            get_user_on(tx, project, user)
        })
    }

    fn set_user_claims(
        &self,
        project: &str,
        user: &str,
        roles: &[String],
        claims: &serde_json::Map<String, serde_json::Value>,
        now: UnixMillis,
    ) -> Result<Option<UserRecord>> {
        let roles = serde_json::to_string(roles).context("encoding roles")?;
        let claims = serde_json::to_string(claims).context("encoding claims")?;
        self.write("setting user claims", |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE users SET roles_json = ?3, claims_json = ?4, updated_at = ?5 \
                     WHERE project = ?1 AND id = ?2",
                )
                .and_then(|mut stmt| stmt.execute(params![project, user, roles, claims, now]))
                .context("setting user claims")?;
            if n == 0 {
                return Ok(None);
            }
            get_user_on(tx, project, user)
        })
    }

    fn delete_user(
        &self,
        project: &str,
        user: &str,
        events: &[NewEvent],
    ) -> Result<Option<Vec<String>>> {
        self.write_events("deleting a user", |tx| {
            let live: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM sessions WHERE project = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                )
                .and_then(|mut stmt| stmt.query_map(params![project, user], |r| r.get(0))?.collect())
                .context("listing sessions of a user")?;
            // Identities, sessions, refresh and one-time tokens go with it (ON DELETE CASCADE).
            let n = tx
                .prepare_cached("DELETE FROM users WHERE project = ?1 AND id = ?2")
                .and_then(|mut stmt| stmt.execute(params![project, user]))
                .context("deleting a user")?;
            if n == 0 {
                return Ok(None);
            }
            insert_events(tx, project, events)?;
            Ok(Some(live))
        })
    }

    fn create_session(
        &self,
        project: &str,
        session: &SessionRecord,
        token: &NewRefreshToken,
        events: &[NewEvent],
    ) -> Result<()> {
        self.write_events("creating a session", |tx| {
            // The user must exist in this project: the insert selects it from there.
            let n = tx
                .prepare_cached(
                    "INSERT INTO sessions (id, project, user_id, created_at, revoked_at) \
                     SELECT ?1, ?2, id, ?4, NULL FROM users WHERE project = ?2 AND id = ?3",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![session.id, project, session.user, session.created_at])
                })
                .context("creating a session")?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user {}", session.user)));
            }
            insert_refresh_token(tx, project, &session.id, token)?;
            insert_events(tx, project, events)
        })
    }

    fn rotate_refresh_token(
        &self,
        project: &str,
        presented: &[u8],
        replacement: &NewRefreshToken,
        now: UnixMillis,
        reuse_grace_ms: i64,
    ) -> Result<RefreshOutcome> {
        self.write("refreshing a session", |tx| {
            let row: Option<TokenRow> = tx
                .prepare_cached(
                    "SELECT t.session, t.used_at, t.expires_at, s.revoked_at, s.user_id \
                     FROM refresh_tokens t JOIN sessions s ON s.id = t.session \
                     WHERE t.project = ?1 AND t.hash = ?2 AND s.project = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![project, presented], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()
                })
                .context("looking up a refresh token")?;
            let Some((session, used_at, expires_at, revoked_at, user_id)) = row else {
                return Ok(RefreshOutcome::Unknown);
            };
            if revoked_at.is_some() {
                return Ok(RefreshOutcome::Revoked);
            }
            let used_at: Option<UnixMillis> = used_at;
            let concurrent = used_at.is_some_and(|at| now - at < reuse_grace_ms);
            if used_at.is_some() && !concurrent {
                // Reuse: someone holds a token that was already exchanged. Kill the family.
                tx.prepare_cached(
                    "UPDATE sessions SET revoked_at = ?3 WHERE project = ?1 AND id = ?2",
                )
                .and_then(|mut stmt| stmt.execute(params![project, session, now]))
                .context("revoking a session family")?;
                return Ok(RefreshOutcome::Reused { session });
            }
            if expires_at <= now {
                return Ok(RefreshOutcome::Expired);
            }
            let Some(user) = get_user_on(tx, project, &user_id)? else {
                return Ok(RefreshOutcome::Unknown);
            };
            if user.disabled {
                return Ok(RefreshOutcome::Disabled);
            }
            if !concurrent {
                let n = tx
                    .prepare_cached(
                        "UPDATE refresh_tokens SET used_at = ?3 \
                         WHERE project = ?1 AND hash = ?2 AND used_at IS NULL",
                    )
                    .and_then(|mut stmt| stmt.execute(params![project, presented, now]))
                    .context("marking a refresh token used")?;
                debug_assert_eq!(n, 1, "the immediate transaction holds the write lock");
            }
            insert_refresh_token(tx, project, &session, replacement)?;
            Ok(RefreshOutcome::Rotated { session, user })
        })
    }

    fn revoke_session_by_token(
        &self,
        project: &str,
        token: &[u8],
        now: UnixMillis,
    ) -> Result<Option<String>> {
        self.write("signing out", |tx| {
            tx.prepare_cached(
                "UPDATE sessions SET revoked_at = ?3 WHERE project = ?1 AND revoked_at IS NULL \
                 AND id = (SELECT session FROM refresh_tokens WHERE project = ?1 AND hash = ?2) \
                 RETURNING id",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![project, token, now], |r| r.get(0)).optional()
            })
            .context("revoking a session")
        })
    }

    fn revoke_user_sessions(
        &self,
        project: &str,
        user: &str,
        now: UnixMillis,
    ) -> Result<Vec<String>> {
        self.write("revoking sessions", |tx| revoke_sessions_where(tx, project, user, now))
    }

    fn revoked_sessions_since(&self, project: &str, since: UnixMillis) -> Result<Vec<String>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id FROM sessions WHERE project = ?1 AND revoked_at IS NOT NULL \
                 AND revoked_at >= ?2",
            )
            .and_then(|mut stmt| stmt.query_map(params![project, since], |r| r.get(0))?.collect())
            .context("listing revoked sessions")
        })
    }

    fn list_user_sessions(&self, project: &str, user: &str) -> Result<Vec<SessionRecord>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, user_id, created_at, revoked_at FROM sessions \
                 WHERE project = ?1 AND user_id = ?2 ORDER BY created_at, id",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![project, user], |r| {
                    Ok(SessionRecord {
                        id: r.get(0)?,
                        user: r.get(1)?,
                        created_at: r.get(2)?,
                        revoked_at: r.get(3)?,
                    })
                })?
                .collect()
            })
            .context("listing sessions")
        })
    }

    fn insert_one_time_token(&self, project: &str, token: &NewOneTimeToken) -> Result<()> {
        self.write("storing a one-time token", |tx| insert_token(tx, project, token))
    }

    fn insert_one_time_token_with_mail(
        &self,
        project: &str,
        token: &NewOneTimeToken,
        mail: &NewMail,
    ) -> Result<()> {
        self.write("storing a one-time token and its mail", |tx| {
            insert_token(tx, project, token)?;
            insert_mail(tx, project, mail)
        })
    }

    fn enqueue_mail(&self, project: &str, mail: &NewMail) -> Result<()> {
        self.write("queueing mail", |tx| insert_mail(tx, project, mail))
    }

    fn claim_mail(&self, now: UnixMillis, lease_ms: i64, limit: u32) -> Result<Vec<QueuedMail>> {
        self.write("claiming mail", |tx| {
            tx.prepare_cached(
                "UPDATE mail_outbox SET attempts = attempts + 1, leased_until = ?1 + ?2 \
                 WHERE id IN (SELECT id FROM mail_outbox WHERE next_at <= ?1 \
                 AND leased_until <= ?1 ORDER BY next_at LIMIT ?3) \
                 RETURNING id, project, message, attempts, expires_at",
            )
            .and_then(|mut s| {
                s.query_map(params![now, lease_ms, limit], |r| {
                    Ok(QueuedMail {
                        id: r.get(0)?,
                        project: r.get(1)?,
                        message: json_column(r, 2)?,
                        attempts: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                })?
                .collect()
            })
            .context("claiming mail")
        })
    }

    fn finish_mail(&self, id: i64, retry_at: Option<UnixMillis>) -> Result<()> {
        self.write("finishing mail", |tx| {
            match retry_at {
                None => tx.execute("DELETE FROM mail_outbox WHERE id = ?1", [id]),
                Some(at) => tx.execute(
                    "UPDATE mail_outbox SET next_at = ?2, leased_until = 0 WHERE id = ?1",
                    params![id, at],
                ),
            }
            .context("finishing mail")?;
            Ok(())
        })
    }

    fn consume_one_time_token(
        &self,
        project: &str,
        hash: &[u8],
        purpose: &str,
        now: UnixMillis,
    ) -> Result<ConsumeOutcome> {
        self.write("consuming a one-time token", |tx| {
            let row: Option<(String, UnixMillis, Option<UnixMillis>)> = tx
                .prepare_cached(
                    "SELECT user_id, expires_at, used_at FROM one_time_tokens \
                     WHERE project = ?1 AND hash = ?2 AND purpose = ?3",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![project, hash, purpose], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .context("looking up a one-time token")?;
            match row {
                None | Some((_, _, Some(_))) => Ok(ConsumeOutcome::Invalid),
                Some((_, expires_at, None)) if expires_at <= now => Ok(ConsumeOutcome::Expired),
                Some((user, _, None)) => {
                    tx.prepare_cached(
                        "UPDATE one_time_tokens SET used_at = ?3 WHERE project = ?1 AND hash = ?2",
                    )
                    .and_then(|mut stmt| stmt.execute(params![project, hash, now]))
                    .context("consuming a one-time token")?;
                    Ok(ConsumeOutcome::Consumed { user })
                }
            }
        })
    }

    fn check_one_time_token(
        &self,
        project: &str,
        hash: &[u8],
        purpose: &str,
        now: UnixMillis,
    ) -> Result<TokenCheck> {
        let row: Option<(String, UnixMillis, Option<UnixMillis>)> = self.read(|conn| {
            conn.prepare_cached(
                "SELECT user_id, expires_at, used_at FROM one_time_tokens \
                 WHERE project = ?1 AND hash = ?2 AND purpose = ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![project, hash, purpose], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .context("looking up a one-time token")
        })?;
        Ok(match row {
            None | Some((_, _, Some(_))) => TokenCheck::Invalid,
            Some((_, expires_at, None)) if expires_at <= now => TokenCheck::Expired,
            Some((user, _, None)) => TokenCheck::Valid { user },
        })
    }

    fn list_events(
        &self,
        project: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<EventRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        // By position (the rowid, assigned at commit), never by id: see the trait.
        let after = after.unwrap_or(0);
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT position, id, project, substr(type, 17), subject, data, time, NULL \
                 FROM event_log WHERE project = ?1 AND position > ?2 \
                 AND type LIKE 'dev.nimbus.auth.%' ORDER BY position LIMIT ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![project, after, limit], |r| {
                    Ok(EventRecord {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        project: r.get(2)?,
                        kind: r.get(3)?,
                        subject: r.get(4)?,
                        data: json_column(r, 5)?,
                        created_at: r.get(6)?,
                        delivered_at: r.get(7)?,
                    })
                })?
                .collect()
            })
            .context("listing events")
        })
    }

    fn prune_auth(&self, now: UnixMillis, revoked_before: UnixMillis) -> Result<u64> {
        let mut removed = prune_by_key(
            self,
            "one_time_tokens",
            "hash",
            Value::Blob(Vec::new()),
            "used_at IS NOT NULL OR expires_at <= ?2",
            &[&now],
        )?;
        // Sessions first: their refresh tokens go with them (ON DELETE CASCADE).
        removed += prune_by_key(
            self,
            "sessions",
            "id",
            Value::Text(String::new()),
            "revoked_at < ?3 OR (revoked_at IS NULL AND NOT EXISTS (SELECT 1 FROM refresh_tokens r \
             WHERE r.session = sessions.id AND r.expires_at > ?2))",
            &[&now, &revoked_before],
        )?;
        removed += prune_by_key(
            self,
            "refresh_tokens",
            "hash",
            Value::Blob(Vec::new()),
            "expires_at <= ?2",
            &[&now],
        )?;
        Ok(removed)
    }
}

/// Rows of auth housekeeping looked at and deleted per step.
const PRUNE_PAGE: usize = 1000;

/// Delete the rows of `table` that `due` selects (SQL on its columns, with `args` as `?2`,
/// `?3`, ...). These conditions have no index, so the rows are found on a reader, a page at a
/// time in `key` order (one pass over the table, not holding the writer), and each page is
/// deleted by key in a transaction of its own, with `due` checked again: a row may have changed
/// since it was read (a session that got a new refresh token is no longer due). Returns the
/// rows removed (not counting what a cascade removes with them).
fn prune_by_key(
    store: &SqliteStore,
    table: &str,
    key: &str,
    start: Value,
    due: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<u64> {
    let select = format!(
        "SELECT {key} FROM {table} WHERE {key} > ?1 AND ({due}) ORDER BY {key} LIMIT {PRUNE_PAGE}"
    );
    let delete = format!("DELETE FROM {table} WHERE {key} = ?1 AND ({due})");
    let what = || format!("pruning {table}");
    let mut after = start;
    let mut removed = 0;
    loop {
        let page: Vec<Value> = store.read(|conn| {
            let mut all: Vec<&dyn rusqlite::ToSql> = vec![&after];
            all.extend_from_slice(args);
            conn.prepare_cached(&select)
                .and_then(|mut stmt| {
                    stmt.query_map(&all[..], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()
                })
                .with_context(what)
        })?;
        let Some(last) = page.last().cloned() else { return Ok(removed) };
        removed += store.write_step(&what(), |tx| {
            let mut stmt = tx.prepare_cached(&delete).with_context(what)?;
            let mut n = 0;
            for k in &page {
                let mut all: Vec<&dyn rusqlite::ToSql> = vec![k];
                all.extend_from_slice(args);
                n += stmt.execute(&all[..]).with_context(what)?;
            }
            Ok(n as u64)
        })?;
        if page.len() < PRUNE_PAGE {
            return Ok(removed);
        }
        after = last;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nimbus_store::auth::{
        AuthStore, IdentityRecord, NewRefreshToken, ProjectRecord, SessionRecord, UserRecord,
    };

    use crate::SqliteStore;
    use crate::error::Context;

    fn user(project: &str, id: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            project: project.into(),
            email: Some(format!("{id}@example.com")),
            email_verified: false,
            disabled: false,
            anon: false,
            roles: vec![],
            claims: Default::default(),
            created_at: 1,
            updated_at: 1,
        }
    }

    /// A user with a password identity and a session holding one refresh token.
    fn sign_up(store: &SqliteStore, project: &str, id: &str) {
        let identity = IdentityRecord {
            id: format!("i-{id}"),
            user: id.into(),
            provider: "password".into(),
            provider_subject: format!("{id}@example.com"),
            secret_hash: None,
            created_at: 1,
        };
        store.create_user(project, &user(project, id), &[identity], &[]).unwrap();
        let session = SessionRecord {
            id: format!("s-{id}"),
            user: id.into(),
            created_at: 1,
            revoked_at: None,
        };
        let token = NewRefreshToken {
            hash: format!("t-{id}").into_bytes(),
            parent: None,
            created_at: 1,
            expires_at: i64::MAX,
        };
        store.create_session(project, &session, &token, &[]).unwrap();
    }

    fn rows(store: &SqliteStore, project: &str) -> Vec<i64> {
        store
            .read(|conn| {
                ["users", "identities", "sessions", "refresh_tokens"]
                    .iter()
                    .map(|t| {
                        conn.query_row(
                            &format!("SELECT count(*) FROM {t} WHERE project = ?1"),
                            [project],
                            |r| r.get(0),
                        )
                        .context("counting")
                    })
                    .collect()
            })
            .unwrap()
    }

    /// A deleted project's users go in steps, with their identities, sessions and tokens, other
    /// projects' sign-ups getting in between, and only its own.
    #[test]
    fn a_deleted_projects_users_go_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
        for id in ["p", "q"] {
            let project =
                ProjectRecord { id: id.into(), slug: id.into(), name: id.into(), created_at: 1 };
            store.create_project(&project).unwrap();
        }
        let n = 12 * super::USER_DELETE_STEP + 7;
        for i in 0..n {
            sign_up(&store, "p", &format!("p{i:05}"));
        }
        sign_up(&store, "q", "q-first");
        assert_eq!(rows(&store, "p"), [n as i64; 4]);
        let writer = store.clone();
        let (deleted, inside, writes) = crate::stepping_tests::writes_beside(
            move |i| sign_up(&writer, "q", &format!("q{i:05}")),
            || store.delete_project("p").unwrap(),
        );
        assert!(deleted);
        // Each step hands the writer over, 13 times here; without them the deletion is two
        // transactions (its events, then the rest), which let at most one in. A busy machine may
        // not schedule the writer at every step.
        assert!(inside >= 3, "{inside} sign-ups began and ended during the deletion");
        assert_eq!(rows(&store, "p"), [0; 4]);
        assert_eq!(rows(&store, "q"), [1 + writes as i64; 4]);
    }
}
