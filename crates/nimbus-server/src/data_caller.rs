//! Who calls a project's data endpoints (documents, files), resolved once for every service:
//! the admin token or a service key (the service role), an end user's access token, a function
//! through the in-process API, or nobody. Each service maps the result to its own principal.
//! Present but invalid credentials are a 401, never a silent downgrade to anonymous.

use axum::http::{HeaderMap, StatusCode};
use nimbus_auth::{ApiKeyScope, Claims};
use nimbus_runtime::InProcessCaller;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;

pub(crate) enum DataCaller {
    Admin,
    ServiceKey {
        key_id: String,
    },
    /// A function of the project with its invocation's token (in-process only).
    Function {
        name: String,
    },
    /// A signed-in end user: the `auth` value rules see.
    User(Value),
    Anonymous,
}

impl DataCaller {
    /// Who the service role is, for records such as an uploader; `None` for end users and
    /// anonymous callers.
    pub(crate) fn service_identity(&self) -> Option<Value> {
        match self {
            DataCaller::Admin => Some(json!({"kind": "admin"})),
            DataCaller::ServiceKey { key_id } => Some(json!({"kind": "service-key", "id": key_id})),
            DataCaller::Function { name } => Some(json!({"kind": "function", "name": name})),
            DataCaller::User(_) | DataCaller::Anonymous => None,
        }
    }
}

/// The `auth` value rules see for a signed-in user.
pub(crate) fn user_auth(claims: &Claims) -> Value {
    json!({
        "id": claims.sub,
        "roles": claims.roles,
        "claims": claims.custom,
        "project": claims.aud,
        "anonymous": claims.anon,
        "email_verified": claims.email_verified,
    })
}

pub(crate) async fn data_caller(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
    in_process: Option<&InProcessCaller>,
) -> Result<DataCaller, ApiError> {
    // A project being deleted is found nowhere, whoever asks (the admin token and anonymous
    // readers of public data included); its data goes meanwhile.
    if state.auth.is_deleting(project) {
        return Err(ApiError::not_found(format!("project {project}")));
    }
    // A function's request through the in-process API: its own project only; the invocation's
    // token makes it the service role, otherwise the credentials it forwards decide.
    if let Some(caller) = in_process {
        if *caller.project != *project {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a function reaches only its own project's data",
            ));
        }
        if caller.service {
            return Ok(DataCaller::Function { name: caller.function.to_string() });
        }
    }
    let bearer = crate::credentials::bearer(headers)?;
    let key = crate::credentials::api_key(headers)?;
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    match (bearer, key) {
        // In-process, only the invocation's token grants the service role.
        (Some(token), _) if in_process.is_none() && state.is_admin_token(token) => {
            Ok(DataCaller::Admin)
        }
        (Some(token), _) if !token.starts_with("nbk_") => {
            let claims = state.auth.verify_access_token(project, token).await?;
            Ok(DataCaller::User(user_auth(&claims)))
        }
        (Some(key), _) | (None, Some(key)) => {
            let info = state
                .auth
                .verify_api_key(key)
                .await
                .map_err(|_| unauthorized("the API key is not valid for this project"))?;
            if info.project != project {
                return Err(unauthorized("the API key is not valid for this project"));
            }
            Ok(match info.scope {
                ApiKeyScope::Service => DataCaller::ServiceKey { key_id: info.id },
                _ => DataCaller::Anonymous,
            })
        }
        (None, None) => Ok(DataCaller::Anonymous),
    }
}
