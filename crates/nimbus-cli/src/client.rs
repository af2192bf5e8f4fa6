//! A typed client for the Nimbus management API (`/v1/*`).
//!
//! Every method returns the API's JSON as a [`serde_json::Value`] next to (or instead of) a typed
//! view, so `--json` can print exactly what the server said.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use nimbus_model::{FunctionInfo, InvocationRecord, VersionInfo};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The file in the data directory holding the admin token (the server's `ADMIN_TOKEN_FILE`).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Characters escaped in a path segment: everything but unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Escape user input for use as one path segment.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// An error answer from the API: `{"error": {"code": "...", "message": "..."}}` and its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, HTTP {})", self.message, self.code, self.status)
    }
}

impl StdError for ApiError {}

impl ApiError {
    /// Read an error body. Bodies that are not the API's error shape (a proxy's HTML page, say)
    /// still give a readable message.
    pub fn from_body(status: StatusCode, body: &[u8]) -> ApiError {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
            message: String,
        }
        if let Ok(Envelope { error }) = serde_json::from_slice::<Envelope>(body) {
            return ApiError { status: status.as_u16(), code: error.code, message: error.message };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("request failed").to_string()
        } else if text.chars().count() > 200 {
            format!("{}…", text.chars().take(200).collect::<String>())
        } else {
            text.to_string()
        };
        ApiError { status: status.as_u16(), code: "http_error".into(), message }
    }
}

/// Where the admin token comes from: `--token`/`NIMBUS_TOKEN`, else `<data>/admin-token`.
pub fn resolve_token(token: Option<&str>, data_dir: &Path) -> Result<String> {
    if let Some(t) = token {
        return Ok(t.trim().to_string());
    }
    let file = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(anyhow!(
            "the admin token file {} is empty; pass the token with --token or NIMBUS_TOKEN",
            file.display()
        )),
        Err(e) => Err(anyhow!(e).context(format!(
            "no admin token: cannot read {} (the server writes it there on first start); \
             point --data/NIMBUS_DATA at the server's data directory, or pass --token/NIMBUS_TOKEN",
            file.display()
        ))),
    }
}

#[derive(Debug, Deserialize)]
pub struct DeployResponse {
    pub function: FunctionInfo,
    pub version: VersionInfo,
    /// The active version was identical: nothing new was deployed (absent from older servers).
    #[serde(default)]
    pub unchanged: bool,
    pub compile_ms: f64,
    /// Absent from servers older than the compile cache.
    #[serde(default)]
    pub compile: Option<CompileReport>,
}

/// Which path a deploy's compile took.
#[derive(Debug, Deserialize)]
pub struct CompileReport {
    pub cached_functions: Option<u64>,
    pub compiled_functions: Option<u64>,
    /// Absent from servers older than the untranslated path.
    #[serde(default)]
    pub untranslated_functions: Option<u64>,
    pub ms: f64,
}

/// Filters for `GET /v1/invocations` and `GET /v1/functions/{name}/logs`.
#[derive(Debug, Default, Clone)]
pub struct InvocationFilter {
    pub function: Option<String>,
    pub status: Option<String>,
    pub method: Option<String>,
    /// A path prefix.
    pub path: Option<String>,
    /// A commit position (a record's `seq`).
    pub after: Option<u64>,
    pub limit: Option<u32>,
    pub order: Option<String>,
}

impl InvocationFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(f) = &self.function {
            q.push(("function", f.clone()));
        }
        if let Some(s) = &self.status {
            q.push(("status", s.clone()));
        }
        if let Some(m) = &self.method {
            q.push(("method", m.clone()));
        }
        if let Some(p) = &self.path {
            q.push(("path", p.clone()));
        }
        if let Some(a) = self.after {
            q.push(("after", a.to_string()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(o) = &self.order {
            q.push(("order", o.clone()));
        }
        q
    }
}

/// Parse one field of a JSON answer into a type, naming the field if the shape is unexpected.
pub fn field<T: DeserializeOwned>(value: &Value, name: &str) -> Result<T> {
    let v =
        value.get(name).ok_or_else(|| anyhow!("unexpected answer from the server: no `{name}`"))?;
    serde_json::from_value(v.clone())
        .with_context(|| format!("unexpected answer from the server: cannot read `{name}`"))
}

/// Parse a whole JSON answer into a type.
pub fn parse<T: DeserializeOwned>(value: &Value) -> Result<T> {
    serde_json::from_value(value.clone()).context("unexpected answer from the server")
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The project admin requests act on (`X-Nimbus-Project`); `None` = the server's default.
    project: Option<String>,
}

impl Client {
    pub fn new(base_url: &str, token: String) -> Result<Client> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!(
                "invalid server URL {base_url:?}: it should look like http://127.0.0.1:8080"
            );
        }
        if base.starts_with("https://") {
            anyhow::bail!(
                "this build of nimbus speaks plain HTTP only; reach {base_url} through http:// (e.g. a local TLS-terminating proxy)"
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("nimbus-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot create the HTTP client")?;
        Ok(Client { http, base, token, project: None })
    }

    /// Act on `project` instead of the default project.
    pub fn with_project(mut self, project: Option<String>) -> Client {
        self.project = project;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A request to `path` (starting with `/`), authenticated.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        match &self.project {
            Some(p) => req.header("x-nimbus-project", p),
            None => req,
        }
    }

    /// Send a request; map connection failures to something actionable. Does not look at the status.
    pub async fn send_raw(&self, req: RequestBuilder) -> Result<Response> {
        req.send().await.map_err(|e| self.transport_error(e))
    }

    /// Send a request; non-2xx answers become an [`ApiError`].
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = self.send_raw(req).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(api_error(ApiError::from_body(status, &body)))
    }

    /// Send a request and read a JSON answer.
    pub async fn json(&self, req: RequestBuilder) -> Result<Value> {
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes).context("the server's answer is not valid JSON")
    }

    /// Explain a transport-level failure (no HTTP answer at all).
    pub fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let root = root_cause(&e);
        if e.is_connect() {
            anyhow!("{root}").context(format!(
                "cannot reach Nimbus at {} (is `nimbus serve` running?)",
                self.base
            ))
        } else if e.is_timeout() {
            anyhow!("{root}").context(format!("Nimbus at {} did not answer in time", self.base))
        } else {
            anyhow!(e).context(format!("request to Nimbus at {} failed", self.base))
        }
    }

    pub async fn health(&self) -> Result<Value> {
        self.json(self.http.get(format!("{}/healthz", self.base))).await
    }

    /// `POST /v1/functions` with the spec and an already built module part.
    pub async fn deploy(
        &self,
        spec: &nimbus_model::FunctionSpec,
        module: reqwest::multipart::Part,
    ) -> Result<Value> {
        let spec_part = reqwest::multipart::Part::text(serde_json::to_string(spec)?)
            .mime_str("application/json")?;
        let form = reqwest::multipart::Form::new().part("spec", spec_part).part("module", module);
        self.json(self.request(Method::POST, "/v1/functions").multipart(form)).await
    }

    pub async fn list_functions(&self) -> Result<Value> {
        self.json(self.request(Method::GET, "/v1/functions")).await
    }

    pub async fn get_function(&self, name: &str) -> Result<Value> {
        self.json(self.request(Method::GET, &format!("/v1/functions/{}", segment(name)))).await
    }

    pub async fn delete_function(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/functions/{}", segment(name))))
            .await?;
        Ok(())
    }

    pub async fn versions(&self, name: &str) -> Result<Value> {
        self.json(self.request(Method::GET, &format!("/v1/functions/{}/versions", segment(name))))
            .await
    }

    pub async fn rollback(&self, name: &str, version: u32) -> Result<Value> {
        let req = self
            .request(Method::POST, &format!("/v1/functions/{}/rollback", segment(name)))
            .json(&json!({ "version": version }));
        self.json(req).await
    }

    pub async fn set_secret(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let req = self
            .request(
                Method::PUT,
                &format!("/v1/functions/{}/secrets/{}", segment(name), segment(key)),
            )
            .json(&json!({ "value": value }));
        self.send(req).await?;
        Ok(())
    }

    pub async fn delete_secret(&self, name: &str, key: &str) -> Result<()> {
        let req = self.request(
            Method::DELETE,
            &format!("/v1/functions/{}/secrets/{}", segment(name), segment(key)),
        );
        self.send(req).await?;
        Ok(())
    }

    /// The invoke URL path for a function and a request path (which may carry a query string).
    pub fn invoke_path(name: &str, path: &str) -> String {
        let rest = path.trim_start_matches('/');
        if rest.is_empty() {
            format!("/v1/functions/{}/invoke", segment(name))
        } else if rest.starts_with('?') {
            format!("/v1/functions/{}/invoke{rest}", segment(name))
        } else {
            format!("/v1/functions/{}/invoke/{rest}", segment(name))
        }
    }

    /// `GET /v1/functions/{name}/logs` (newest first).
    pub async fn logs(&self, name: &str, after: Option<u64>, limit: Option<u32>) -> Result<Value> {
        let filter = InvocationFilter { after, limit, ..Default::default() };
        let req = self
            .request(Method::GET, &format!("/v1/functions/{}/logs", segment(name)))
            .query(&filter.query());
        self.json(req).await
    }

    /// `GET /v1/functions/{name}/logs?follow=true`: the open SSE response, from after position
    /// `after` (a record's `seq`) if given, else from the newest few.
    pub async fn logs_follow(&self, name: &str, after: Option<u64>) -> Result<Response> {
        let mut query = vec![("follow", "true".to_string())];
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        let req = self
            .request(Method::GET, &format!("/v1/functions/{}/logs", segment(name)))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .query(&query);
        self.send(req).await
    }

    pub async fn invocations(&self, filter: &InvocationFilter) -> Result<Value> {
        self.json(self.request(Method::GET, "/v1/invocations").query(&filter.query())).await
    }

    // ---- Projects and API keys ----

    /// `POST /v1/projects` (admin token only).
    pub async fn create_project(&self, slug: &str, name: Option<&str>) -> Result<Value> {
        let req =
            self.request(Method::POST, "/v1/projects").json(&json!({ "slug": slug, "name": name }));
        self.json(req).await
    }

    pub async fn delete_project(&self, slug: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/projects/{}", segment(slug)))).await?;
        Ok(())
    }

    pub async fn list_projects(&self) -> Result<Value> {
        self.json(self.request(Method::GET, "/v1/projects")).await
    }

    /// `POST /v1/keys`: `{key, info}`; the key is in no other answer.
    pub async fn create_key(
        &self,
        scope: &str,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<Value> {
        let req = self
            .request(Method::POST, "/v1/keys")
            .json(&json!({ "scope": scope, "name": name, "expires_at": expires_at }));
        self.json(req).await
    }

    pub async fn list_keys(&self) -> Result<Value> {
        self.json(self.request(Method::GET, "/v1/keys")).await
    }

    pub async fn revoke_key(&self, id: &str) -> Result<Value> {
        self.json(self.request(Method::DELETE, &format!("/v1/keys/{}", segment(id)))).await
    }

    // ---- End users, events, outbox ----

    pub async fn list_users(
        &self,
        email: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Value> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(e) = email {
            q.push(("email", e.to_string()));
        }
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        self.json(self.request(Method::GET, "/v1/users").query(&q)).await
    }

    pub async fn get_user(&self, id: &str) -> Result<Value> {
        self.json(self.request(Method::GET, &format!("/v1/users/{}", segment(id)))).await
    }

    /// `PATCH /v1/users/{id}` with `{disabled?, roles?, claims?}`.
    pub async fn patch_user(&self, id: &str, patch: &Value) -> Result<Value> {
        let req = self.request(Method::PATCH, &format!("/v1/users/{}", segment(id))).json(patch);
        self.json(req).await
    }

    pub async fn delete_user(&self, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/users/{}", segment(id)))).await?;
        Ok(())
    }

    pub async fn revoke_user_sessions(&self, id: &str) -> Result<Value> {
        let path = format!("/v1/users/{}/revoke-sessions", segment(id));
        self.json(self.request(Method::POST, &path)).await
    }

    /// `GET /v1/events` after position `after` (an event's `seq`).
    pub async fn events(&self, after: Option<u64>, limit: Option<u32>) -> Result<Value> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        self.json(self.request(Method::GET, "/v1/events").query(&q)).await
    }

    pub async fn outbox(&self) -> Result<Value> {
        self.json(self.request(Method::GET, "/v1/outbox")).await
    }
}

/// Wrap an [`ApiError`], adding a hint where the fix is on the user's side.
fn api_error(err: ApiError) -> anyhow::Error {
    match err.status {
        401 | 403 => anyhow::Error::new(err).context(
            "the server refused the admin token or API key (log in with `nimbus login`, pass the admin token or a service key with --token/NIMBUS_TOKEN, or point --data-dir at the server's data directory)",
        ),
        _ => anyhow::Error::new(err),
    }
}

/// The innermost error's message (`Connection refused (os error 111)`), which says what happened
/// better than reqwest's wrappers.
pub fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Records from a `{"invocations": [...]}` answer.
pub fn invocations_of(value: &Value) -> Result<Vec<InvocationRecord>> {
    field(value, "invocations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_shapes() {
        let e = ApiError::from_body(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"not_found","message":"function nope not found"}}"#,
        );
        assert_eq!(e.to_string(), "function nope not found (not_found, HTTP 404)");
        let e = ApiError::from_body(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(e.to_string(), "<html>bad gateway</html> (http_error, HTTP 502)");
        let e = ApiError::from_body(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(e.to_string(), "Service Unavailable (http_error, HTTP 503)");
    }

    #[test]
    fn invoke_paths() {
        assert_eq!(Client::invoke_path("f", ""), "/v1/functions/f/invoke");
        assert_eq!(Client::invoke_path("f", "/"), "/v1/functions/f/invoke");
        assert_eq!(Client::invoke_path("f", "/a/b?x=1"), "/v1/functions/f/invoke/a/b?x=1");
        assert_eq!(Client::invoke_path("f", "?x=1"), "/v1/functions/f/invoke?x=1");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn token_resolution() {
        let dir = std::env::temp_dir().join(format!("nimbus-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(resolve_token(Some("abc\n"), &dir).unwrap(), "abc");
        let err = format!("{:#}", resolve_token(None, &dir).unwrap_err());
        assert!(err.contains("admin-token") && err.contains("--token"), "{err}");
        std::fs::write(dir.join(ADMIN_TOKEN_FILE), "secret\n").unwrap();
        assert_eq!(resolve_token(None, &dir).unwrap(), "secret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
