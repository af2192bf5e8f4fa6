//! End-user authentication for a project: `/v1/projects/{project}/auth/*`. These endpoints are
//! public (apps call them); the project is in the path, and a user's own calls carry their access
//! token as `Authorization: Bearer`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use nimbus_auth::{Claims, Session, SignUpOutcome, User};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::client_ip::ClientIp;
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, ToSchema)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct RefreshToken {
    refresh_token: String,
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct EmailOnly {
    email: String,
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct NewPassword {
    token: String,
    password: String,
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct TokenQuery {
    token: String,
}

/// The verified claims of the request's bearer access token.
async fn bearer(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
) -> Result<Arc<Claims>, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "sign in first: this needs `Authorization: Bearer <access token>`",
            )
        })?;
    Ok(state.auth.verify_access_token(project, token.trim()).await?)
}

/// Register with email and password. The answer is the same whether or not the address is
/// already registered; a verification email goes out; then sign in.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/signup", tag = "auth",
    params(("project" = String, Path)), request_body = Credentials, security(()),
    responses((status = 200, description = "{confirmation_sent: true}", body = Object),
              (status = 400, description = "weak password or bad email", body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
              (status = 503, description = "password hashing busy; see Retry-After", body = ErrorBody)))]
pub(crate) async fn signup(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
    Json(c): Json<Credentials>,
) -> Result<Json<SignUpOutcome>, ApiError> {
    Ok(Json(state.auth.sign_up(&project, &c.email, &c.password, Some(ip)).await?))
}

/// Sign in with email and password: an access token (JWT, EdDSA) and a rotating refresh token.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/signin", tag = "auth",
    params(("project" = String, Path)), request_body = Credentials, security(()),
    responses((status = 200, description = "a session", body = Object),
              (status = 401, body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
              (status = 503, description = "password hashing busy; see Retry-After", body = ErrorBody)))]
pub(crate) async fn signin(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
    Json(c): Json<Credentials>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth.sign_in(&project, &c.email, &c.password, Some(ip)).await?))
}

/// Sign in as a new anonymous user (upgradeable later with `upgrade`).
#[utoipa::path(post, path = "/v1/projects/{project}/auth/anonymous", tag = "auth",
    params(("project" = String, Path)), security(()),
    responses((status = 200, description = "a session", body = Object),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody)))]
pub(crate) async fn anonymous(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth.sign_in_anonymously(&project, Some(ip)).await?))
}

/// Exchange a refresh token for a new session pair. Each refresh token works once; presenting a
/// used one revokes the whole session.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/refresh", tag = "auth",
    params(("project" = String, Path)), request_body = RefreshToken, security(()),
    responses((status = 200, description = "a session", body = Object),
              (status = 401, body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody)))]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
    Json(r): Json<RefreshToken>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth.refresh(&project, &r.refresh_token, Some(ip)).await?))
}

/// Sign out of one session.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/signout", tag = "auth",
    params(("project" = String, Path)), request_body = RefreshToken, security(()),
    responses((status = 204),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody)))]
pub(crate) async fn signout(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
    Json(r): Json<RefreshToken>,
) -> Result<StatusCode, ApiError> {
    state.auth.sign_out(&project, &r.refresh_token, Some(ip)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sign out of every session of the signed-in user.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/signout-all", tag = "auth",
    params(("project" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody)))]
pub(crate) async fn signout_all(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let claims = bearer(&state, &project, &headers).await?;
    state.auth.sign_out_everywhere(&project, &claims.sub).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user.
#[utoipa::path(get, path = "/v1/projects/{project}/auth/user", tag = "auth",
    params(("project" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)))]
pub(crate) async fn user(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<Json<User>, ApiError> {
    let claims = bearer(&state, &project, &headers).await?;
    Ok(Json(state.auth.get_user(&project, &claims.sub).await?))
}

/// Turn the signed-in anonymous user into an email account, keeping its id.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/upgrade", tag = "auth",
    params(("project" = String, Path)), request_body = Credentials,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
              (status = 503, description = "password hashing busy; see Retry-After", body = ErrorBody)))]
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    ClientIp(ip): ClientIp,
    Json(c): Json<Credentials>,
) -> Result<Json<User>, ApiError> {
    let claims = bearer(&state, &project, &headers).await?;
    let user = state
        .auth
        .upgrade_anonymous(&project, &claims.sub, &c.email, &c.password, Some(ip))
        .await?;
    Ok(Json(user))
}

/// Send the signed-in user a new verification email.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/verify-email/request", tag = "auth",
    params(("project" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody)))]
pub(crate) async fn request_verification(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    ClientIp(ip): ClientIp,
) -> Result<StatusCode, ApiError> {
    let claims = bearer(&state, &project, &headers).await?;
    state.auth.request_email_verification(&project, &claims.sub, Some(ip)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirm an email address with the single-use token from the email (the emailed link).
#[utoipa::path(get, path = "/v1/projects/{project}/auth/verify-email", tag = "auth",
    params(("project" = String, Path), TokenQuery), security(()),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody)))]
pub(crate) async fn verify_email(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
    Query(q): Query<TokenQuery>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.auth.verify_email(&project, &q.token, Some(ip)).await?))
}

/// Ask for a password-reset email. Always answers 204, whether or not the address exists.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/reset-password/request", tag = "auth",
    params(("project" = String, Path)), request_body = EmailOnly, security(()),
    responses((status = 204), (status = 400, body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody)))]
pub(crate) async fn request_reset(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
    Json(e): Json<EmailOnly>,
) -> Result<StatusCode, ApiError> {
    state.auth.request_password_reset(&project, &e.email, Some(ip)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a new password with the single-use token from the reset email; signs out every session.
/// The token is checked before the password is hashed.
#[utoipa::path(post, path = "/v1/projects/{project}/auth/reset-password", tag = "auth",
    params(("project" = String, Path)), request_body = NewPassword, security(()),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
              (status = 503, description = "password hashing busy; see Retry-After", body = ErrorBody)))]
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ClientIp(ip): ClientIp,
    Json(p): Json<NewPassword>,
) -> Result<StatusCode, ApiError> {
    state.auth.reset_password(&project, &p.token, &p.password, Some(ip)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The project's token-signing public keys (JWKS): any JWT library can verify access tokens.
#[utoipa::path(get, path = "/v1/projects/{project}/auth/jwks.json", tag = "auth",
    params(("project" = String, Path)), security(()),
    responses((status = 200, description = "a JSON Web Key Set", body = Object), (status = 404, body = ErrorBody)))]
pub(crate) async fn jwks(
    State(state): State<AppState>,
    Path(project): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let set = state.auth.jwks(&project).await?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=300")], Json(set)))
}
