//! End-user authentication over HTTP, API keys, the caller's identity reaching functions, and
//! isolation between projects through every API.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{PASSWORD, TestServer, error_code, post, test_config, user_session};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use nimbus_server::nimbus_auth::{ManualClock, RateLimit};
use reqwest::Method;
use serde_json::{Value, json};

fn decode(jwks: &JwkSet, token: &str, audience: &str) -> jsonwebtoken::errors::Result<Value> {
    let header = jsonwebtoken::decode_header(token)?;
    let jwk = jwks.find(header.kid.as_deref().unwrap_or_default()).expect("kid in JWKS");
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|d| d.claims)
}

#[tokio::test]
async fn tokens_verify_with_a_jwt_library_through_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(nimbus_model::now_millis()));
    let mut config = test_config(dir.path());
    config.auth.clock = clock.clone();
    let s = TestServer::start_with(config).await;
    let session = user_session(&s, "default", "ada@example.com").await;
    let token = session["access_token"].as_str().unwrap();
    let user_id = session["user"]["id"].as_str().unwrap();

    let jwks: JwkSet = s.get("/v1/projects/default/auth/jwks.json").await.json().await.unwrap();
    let claims = decode(&jwks, token, "default").expect("a JWT library verifies our token");
    assert_eq!(claims["sub"], user_id);
    assert!(decode(&jwks, token, "other-project").is_err(), "wrong audience accepted");

    let me =
        |t: String| s.client.get(s.url("/v1/projects/default/auth/user")).bearer_auth(t).send();
    assert_eq!(me(token.to_string()).await.unwrap().status(), 200);
    // Tampered payload (claims changed, signature kept) and signature.
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["admin"]);
    let forged = format!("{}.{}.{}", parts[0], b64.encode(payload.to_string()), parts[2]);
    assert!(decode(&jwks, &forged, "default").is_err());
    assert_eq!(error_code(me(forged).await.unwrap()).await, (401, "invalid_token".to_string()));
    let mut sig = b64.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], b64.encode(sig));
    assert_eq!(error_code(me(bad_sig).await.unwrap()).await.0, 401);
    // alg: none.
    let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert_eq!(error_code(me(none).await.unwrap()).await.0, 401);
    // Expired: 16 minutes later.
    clock.advance(Duration::from_secs(16 * 60));
    assert_eq!(
        error_code(me(token.to_string()).await.unwrap()).await,
        (401, "token_expired".to_string())
    );
    s.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Replay at once rather than wait out the window for concurrent refreshes (tested with a
    // manual clock in nimbus-auth).
    config.auth.refresh_reuse_grace = Duration::ZERO;
    let s = TestServer::start_with(config).await;
    let session = user_session(&s, "default", "bo@example.com").await;
    let first = session["refresh_token"].as_str().unwrap().to_string();
    let r = post(&s, "/v1/projects/default/auth/refresh", json!({"refresh_token": first})).await;
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    let second_refresh = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second_refresh);
    let access = second["access_token"].as_str().unwrap().to_string();
    // Reusing the first token: refused, and the whole family dies.
    let r = post(&s, "/v1/projects/default/auth/refresh", json!({"refresh_token": first})).await;
    assert_eq!(error_code(r).await.0, 401);
    let r = post(&s, "/v1/projects/default/auth/refresh", json!({"refresh_token": second_refresh}))
        .await;
    assert_eq!(error_code(r).await.0, 401, "the newest token of a reused family must fail too");
    let r = s
        .client
        .get(s.url("/v1/projects/default/auth/user"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the family's access token is revoked at once");

    // Sign-out everywhere.
    let a = post(
        &s,
        "/v1/projects/default/auth/signin",
        json!({"email": "bo@example.com", "password": PASSWORD}),
    )
    .await
    .json::<Value>()
    .await
    .unwrap();
    let b = post(
        &s,
        "/v1/projects/default/auth/signin",
        json!({"email": "bo@example.com", "password": PASSWORD}),
    )
    .await
    .json::<Value>()
    .await
    .unwrap();
    let r = s
        .client
        .post(s.url("/v1/projects/default/auth/signout-all"))
        .bearer_auth(a["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r =
        post(&s, "/v1/projects/default/auth/refresh", json!({"refresh_token": b["refresh_token"]}))
            .await;
    assert_eq!(r.status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn sign_in_is_rate_limited_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.rate_limits.sign_in_per_account = Some(RateLimit::new(3, Duration::from_secs(60)));
    let s = TestServer::start_with(config).await;
    user_session(&s, "default", "cy@example.com").await; // one sign-in used
    let wrong = json!({"email": "cy@example.com", "password": "not the password at all"});
    for _ in 0..2 {
        let r = post(&s, "/v1/projects/default/auth/signin", wrong.clone()).await;
        assert_eq!(error_code(r).await, (401, "invalid_credentials".to_string()));
    }
    let r = post(&s, "/v1/projects/default/auth/signin", wrong.clone()).await;
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(error_code(r).await, (429, "rate_limited".to_string()));
    // Unknown accounts get the same answer as wrong passwords (no enumeration).
    let r = post(
        &s,
        "/v1/projects/default/auth/signin",
        json!({"email": "nobody@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(error_code(r).await, (401, "invalid_credentials".to_string()));
    // Weak and common passwords are refused at sign-up.
    for pw in ["short", "qwertyuiop"] {
        let r = post(
            &s,
            "/v1/projects/default/auth/signup",
            json!({"email": "dee@example.com", "password": pw}),
        )
        .await;
        assert_eq!(error_code(r).await, (400, "weak_password".to_string()), "{pw}");
    }
    s.stop().await;
}

/// Sign-in attempts from the client at `xff` (as a proxy would report it); their statuses.
async fn sign_ins_from(s: &TestServer, xff: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let r = s
            .client
            .post(s.url("/v1/projects/default/auth/signin"))
            .header("x-forwarded-for", xff)
            .json(&json!({"email": "nobody@example.com", "password": "not the password at all"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn per_ip_limits_believe_x_forwarded_for_only_from_trusted_proxies() {
    let limited = |dir: &std::path::Path, trusted: &[&str]| {
        let mut config = test_config(dir);
        config.auth.rate_limits.sign_in_per_ip = Some(RateLimit::new(2, Duration::from_secs(60)));
        config.trusted_proxies = trusted.iter().map(|n| n.parse().unwrap()).collect();
        config
    };
    // The test client is the proxy: trusted, each forwarded client has its own budget.
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(limited(dir.path(), &["127.0.0.1/32"])).await;
    assert_eq!(sign_ins_from(&s, "198.51.100.1", 3).await, [401, 401, 429]);
    assert_eq!(sign_ins_from(&s, "198.51.100.2", 1).await, [401], "another client");
    // A client cannot escape by prepending a fake hop: the proxy's entry is the last one.
    assert_eq!(sign_ins_from(&s, "203.0.113.50, 198.51.100.1", 1).await, [429]);
    s.stop().await;

    // Not trusted: the header is ignored and every request counts against the peer.
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(limited(dir.path(), &[])).await;
    assert_eq!(sign_ins_from(&s, "198.51.100.1", 2).await, [401, 401]);
    assert_eq!(sign_ins_from(&s, "198.51.100.2", 1).await, [429]);
    s.stop().await;
}

#[tokio::test]
async fn email_verification_and_password_reset_through_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let session = user_session(&s, "default", "eve@example.com").await;
    assert_eq!(session["user"]["email_verified"], false);
    let outbox = || async {
        let v: Value = s.api(Method::GET, "/v1/outbox").send().await.unwrap().json().await.unwrap();
        v["messages"].as_array().unwrap().clone()
    };
    let mut link = None;
    for _ in 0..100 {
        link = outbox()
            .await
            .iter()
            .find(|m| m["kind"] == "verify_email")
            .and_then(|m| m["link"].as_str().map(String::from));
        if link.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let link = link.expect("a verification email");
    let path = link.split_once("/v1/").map(|(_, p)| format!("/v1/{p}")).unwrap();
    let r = s.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["email_verified"], true);
    assert_eq!(s.get(&path).await.status(), 401, "verification tokens are single-use");

    let r = post(
        &s,
        "/v1/projects/default/auth/reset-password/request",
        json!({"email": "eve@example.com"}),
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = post(
        &s,
        "/v1/projects/default/auth/reset-password/request",
        json!({"email": "ghost@example.com"}),
    )
    .await;
    assert_eq!(r.status(), 204, "same answer for unknown addresses");
    let mut token = None;
    for _ in 0..100 {
        token = outbox().await.iter().find(|m| m["kind"] == "password_reset").and_then(|m| {
            m["link"].as_str().and_then(|l| l.split_once("token=")).map(|(_, t)| t.to_string())
        });
        if token.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = token.expect("a reset email");
    let new = "a brand new passphrase 42";
    let r = post(
        &s,
        "/v1/projects/default/auth/reset-password",
        json!({"token": token, "password": new}),
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = post(
        &s,
        "/v1/projects/default/auth/reset-password",
        json!({"token": token, "password": new}),
    )
    .await;
    assert_eq!(r.status(), 401, "reset tokens are single-use");
    let r = post(
        &s,
        "/v1/projects/default/auth/refresh",
        json!({"refresh_token": session["refresh_token"]}),
    )
    .await;
    assert_eq!(r.status(), 401, "a reset signs out every session");
    let r = post(
        &s,
        "/v1/projects/default/auth/signin",
        json!({"email": "eve@example.com", "password": new}),
    )
    .await;
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn anonymous_users_upgrade_and_admins_manage_users() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let anon: Value =
        post(&s, "/v1/projects/default/auth/anonymous", json!({})).await.json().await.unwrap();
    let id = anon["user"]["id"].as_str().unwrap().to_string();
    assert_eq!(anon["user"]["anon"], true);
    let r = s
        .client
        .post(s.url("/v1/projects/default/auth/upgrade"))
        .bearer_auth(anon["access_token"].as_str().unwrap())
        .json(&json!({"email": "fay@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let upgraded: Value = r.json().await.unwrap();
    assert_eq!(upgraded["id"], id.as_str());
    assert_eq!(upgraded["anon"], false);

    // Roles and custom claims set by the admin appear in new access tokens.
    let r = s
        .api(Method::PATCH, &format!("/v1/users/{id}"))
        .json(&json!({"roles": ["editor"], "claims": {"plan": "pro"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session: Value = post(
        &s,
        "/v1/projects/default/auth/signin",
        json!({"email": "fay@example.com", "password": PASSWORD}),
    )
    .await
    .json()
    .await
    .unwrap();
    let jwks: JwkSet = s.get("/v1/projects/default/auth/jwks.json").await.json().await.unwrap();
    let claims = decode(&jwks, session["access_token"].as_str().unwrap(), "default").unwrap();
    assert_eq!(claims["roles"], json!(["editor"]));
    assert_eq!(claims["custom"]["plan"], "pro");

    let list: Value =
        s.api(Method::GET, "/v1/users?email=fay").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["users"].as_array().unwrap().len(), 1);
    // Disable: sign-in refused, refresh refused.
    s.api(Method::PATCH, &format!("/v1/users/{id}"))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    let r = post(
        &s,
        "/v1/projects/default/auth/signin",
        json!({"email": "fay@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(error_code(r).await, (403, "user_disabled".to_string()));
    let r = post(
        &s,
        "/v1/projects/default/auth/refresh",
        json!({"refresh_token": session["refresh_token"]}),
    )
    .await;
    assert_eq!(r.status(), 401);
    // Delete; events record creation, sign-ins and deletion.
    assert_eq!(
        s.api(Method::DELETE, &format!("/v1/users/{id}")).send().await.unwrap().status(),
        204
    );
    assert_eq!(s.api(Method::GET, &format!("/v1/users/{id}")).send().await.unwrap().status(), 404);
    let events: Value =
        s.api(Method::GET, "/v1/events").send().await.unwrap().json().await.unwrap();
    let types: Vec<&str> =
        events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"user.created")
            && types.contains(&"user.signed_in")
            && types.contains(&"user.deleted"),
        "{types:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn functions_learn_the_verified_caller_and_cannot_be_fooled() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.deploy("echo", json!({"name": "whoami", "routes": ["/whoami"]})).await;
    s.deploy("echo", json!({"name": "private", "routes": ["/private"], "require_auth": true}))
        .await;
    let session = user_session(&s, "default", "gus@example.com").await;
    let token = session["access_token"].as_str().unwrap();
    let user_id = session["user"]["id"].as_str().unwrap();

    let r = s
        .client
        .get(s.url("/whoami"))
        .bearer_auth(token)
        .header("x-nimbus-user-id", "someone-else")
        .header("x-nimbus-user-roles", "admin")
        .send()
        .await
        .unwrap();
    let h = r.headers();
    assert_eq!(h["x-echo-x-nimbus-auth"], "user");
    assert_eq!(h["x-echo-x-nimbus-user-id"], user_id);
    assert_eq!(h["x-echo-x-nimbus-user-roles"], "");
    assert_eq!(h["x-echo-x-nimbus-project"], "default");

    // No credentials: still served, marked anonymous, spoofed identity dropped.
    let r = s
        .client
        .get(s.url("/whoami"))
        .header("x-nimbus-user-id", "admin")
        .header("x-nimbus-auth", "user")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-echo-x-nimbus-auth"], "anonymous");
    assert!(r.headers().get("x-echo-x-nimbus-user-id").is_none());
    // A bad token is refused, not downgraded.
    let r = s.client.get(s.url("/whoami")).bearer_auth("not.a.token").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 401);

    // require_auth: 401 before the function runs, 200 with a user.
    let r = s.get("/private").await;
    assert_eq!(error_code(r).await, (401, "unauthorized".to_string()));
    let r = s.client.get(s.url("/private")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn api_keys_and_project_isolation_across_every_api() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("alpha").await;
    s.create_project("beta").await;
    let key = |project: &str, scope: &str| {
        let r = s
            .api(Method::POST, "/v1/keys")
            .header("x-nimbus-project", project)
            .json(&json!({"scope": scope, "name": "k"}));
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let alpha_service = key("alpha", "service").await;
    let alpha_key = alpha_service["key"].as_str().unwrap().to_string();
    let alpha_public = key("alpha", "public").await["key"].as_str().unwrap().to_string();
    assert!(alpha_key.starts_with("nbk_"));
    // Listing shows prefixes, never secrets.
    let keys = s
        .api(Method::GET, "/v1/keys")
        .header("x-nimbus-project", "alpha")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !keys.contains(&alpha_key)
            && keys.contains(alpha_service["info"]["prefix"].as_str().unwrap())
    );

    // Beta has a function and a user.
    let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
    let spec = json!({"name": "secret-fn", "routes": ["/fn"], "require_auth": true});
    let (status, body) = s.deploy_bytes_in("beta", spec, wasm).await;
    assert_eq!(status, 201, "{body}");
    let beta_user = user_session(&s, "beta", "hal@example.com").await;
    let beta_user_id = beta_user["user"]["id"].as_str().unwrap();
    let alpha_user = user_session(&s, "alpha", "ivy@example.com").await;

    // With alpha's service key, nothing of beta is reachable.
    let alpha = |m: Method, path: &str| s.client.request(m, s.url(path)).bearer_auth(&alpha_key);
    let list: Value =
        alpha(Method::GET, "/v1/functions").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["functions"], json!([]));
    for (m, path) in [
        (Method::GET, "/v1/functions/secret-fn".to_string()),
        (Method::GET, "/v1/functions/secret-fn/versions".to_string()),
        (Method::DELETE, "/v1/functions/secret-fn".to_string()),
        (Method::POST, "/v1/functions/secret-fn/invoke".to_string()),
        (Method::GET, "/v1/functions/secret-fn/logs".to_string()),
        (Method::GET, format!("/v1/users/{beta_user_id}")),
        (Method::DELETE, format!("/v1/users/{beta_user_id}")),
    ] {
        let r = alpha(m.clone(), &path).send().await.unwrap();
        assert_eq!(r.status(), 404, "{m} {path} with alpha's key");
    }
    let r = alpha(Method::PUT, "/v1/functions/secret-fn/secrets/K")
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = alpha(Method::POST, "/v1/functions/secret-fn/rollback")
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let users: Value = alpha(Method::GET, "/v1/users").send().await.unwrap().json().await.unwrap();
    assert!(users["users"].as_array().unwrap().iter().all(|u| u["project"] == "alpha"));
    let events: Value =
        alpha(Method::GET, "/v1/events").send().await.unwrap().json().await.unwrap();
    assert!(events["events"].as_array().unwrap().iter().all(|e| e["project"] == "alpha"));
    let keys: Value = alpha(Method::GET, "/v1/keys").send().await.unwrap().json().await.unwrap();
    assert!(keys["keys"].as_array().unwrap().iter().all(|k| k["project"] == "alpha"));
    // Asking for beta explicitly is forbidden; projects are the operator's.
    let r = alpha(Method::GET, "/v1/functions")
        .header("x-nimbus-project", "beta")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 403);
    let r = alpha(Method::GET, "/v1/projects").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 403);
    // A public key never reaches the management API.
    let r = s.client.get(s.url("/v1/functions")).bearer_auth(&alpha_public).send().await.unwrap();
    assert_eq!(error_code(r).await.0, 403);
    // Alpha's user token and keys do not open beta's function.
    let r = s
        .client
        .get(s.url("/@beta/fn"))
        .bearer_auth(alpha_user["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s.client.get(s.url("/@beta/fn")).header("x-api-key", &alpha_key).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .client
        .get(s.url("/@beta/fn"))
        .bearer_auth(beta_user["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Alpha's refresh token is no good in beta.
    let r = post(
        &s,
        "/v1/projects/beta/auth/refresh",
        json!({"refresh_token": alpha_user["refresh_token"]}),
    )
    .await;
    assert_eq!(r.status(), 401);

    // Revocation takes effect at once.
    let id = alpha_service["info"]["id"].as_str().unwrap();
    let r = s
        .api(Method::DELETE, &format!("/v1/keys/{id}"))
        .header("x-nimbus-project", "alpha")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = alpha(Method::GET, "/v1/functions").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 401);
    s.stop().await;
}

/// A server whose `AuthService` the test keeps, to read its password-hash counter.
struct Counted {
    base: String,
    client: reqwest::Client,
    auth: nimbus_server::nimbus_auth::AuthService,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Counted {
    async fn start(config: nimbus_server::ServerConfig) -> Counted {
        let server = nimbus_server::Server::bind(config).await.unwrap();
        let auth = server.auth().clone();
        let base = format!("http://{}", server.local_addr());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Counted { base, client: reqwest::Client::new(), auth, stop, task }
    }

    fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base)).json(&body)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// `(status, error code, Retry-After)` of an error answer.
async fn refusal(r: reqwest::Response) -> (u16, String, Option<u64>) {
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("a JSON error body");
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string(), retry)
}

#[tokio::test]
async fn reset_password_checks_the_token_before_hashing_and_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let limit = Some(RateLimit::new(3, Duration::from_secs(3600)));
    config.auth.rate_limits.reset_password_per_ip = limit;
    config.auth.rate_limits.verify_email_per_ip = limit;
    config.auth.rate_limits.anonymous_per_ip = limit;
    let s = Counted::start(config).await;
    let before = s.auth.password_hashes();

    let reset = json!({"token": "garbage", "password": "a perfectly fine passphrase"});
    for _ in 0..3 {
        let r = s.post("/v1/projects/default/auth/reset-password", reset.clone()).send().await;
        assert_eq!(refusal(r.unwrap()).await, (401, "invalid_token".into(), None));
    }
    assert_eq!(s.auth.password_hashes(), before, "a bad token never reaches Argon2");
    let r = s.post("/v1/projects/default/auth/reset-password", reset).send().await.unwrap();
    let (status, code, retry) = refusal(r).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert!(retry.unwrap() >= 1);

    let verify = |t: &str| {
        s.client.get(format!("{}/v1/projects/default/auth/verify-email?token={t}", s.base)).send()
    };
    for _ in 0..3 {
        assert_eq!(refusal(verify("garbage").await.unwrap()).await.0, 401);
    }
    assert_eq!(refusal(verify("garbage").await.unwrap()).await.0, 429);

    for _ in 0..3 {
        let r = s.post("/v1/projects/default/auth/anonymous", json!({})).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = s.post("/v1/projects/default/auth/anonymous", json!({})).send().await.unwrap();
    let (status, code, retry) = refusal(r).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert!(retry.unwrap() >= 1);
    assert_eq!(s.auth.password_hashes(), before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_beyond_the_hash_bound_get_503_busy_and_the_node_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Hashes that take hundreds of milliseconds here, one at a time, 20 ms of patience.
    config.auth.password_hash = nimbus_server::nimbus_auth::PasswordHashConfig {
        memory_kib: 32 * 1024,
        iterations: 10,
        parallelism: 1,
    };
    config.auth.max_concurrent_hashes = 1;
    config.auth.hash_wait = Duration::from_millis(20);
    let s = Arc::new(Counted::start(config).await);
    let before = s.auth.password_hashes();

    let sign_ups: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let body = json!({"email": format!("u{i}@example.com"), "password": PASSWORD});
                s.post("/v1/projects/default/auth/signup", body).send().await.unwrap()
            })
        })
        .collect();
    // While a hash runs, the node answers at once: hashing is off the async workers.
    while s.auth.password_hashes() == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let health = tokio::time::timeout(
        Duration::from_secs(2),
        s.client.get(format!("{}/healthz", s.base)).send(),
    )
    .await
    .expect("/healthz within 2 s while passwords hash")
    .unwrap();
    assert_eq!(health.status(), 200);

    let (mut ok, mut busy) = (0u64, 0u64);
    for task in sign_ups {
        let r = task.await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                let (_, code, retry) = refusal(r).await;
                assert_eq!(code, "busy");
                assert!(retry.unwrap() >= 1, "Retry-After on 503");
                busy += 1;
            }
            other => panic!("sign-up answered {other}: {}", r.text().await.unwrap()),
        }
    }
    assert!(ok >= 1 && busy >= 1, "{ok} signed up, {busy} told busy");
    // Every 200 was one hash; every 503 none.
    assert_eq!(s.auth.password_hashes() - before, ok);
    let s = Arc::into_inner(s).expect("every request finished");
    s.stop().await;
}

#[tokio::test]
async fn roles_with_commas_or_other_separators_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let session = user_session(&s, "default", "gil@example.com").await;
    let id = session["user"]["id"].as_str().unwrap();
    let patch = |body: Value| s.api(Method::PATCH, &format!("/v1/users/{id}")).json(&body).send();

    for bad in ["admin,owner", "a b", "x\ny", "", "é", &"r".repeat(65)] {
        // `disabled` rides along: a refused patch changes nothing.
        let r = patch(json!({"roles": ["editor", bad], "disabled": true})).await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_input")),
            "{bad:?}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&serde_json::to_string(bad).unwrap()), "{message}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("r{i}")).collect();
    assert_eq!(error_code(patch(json!({"roles": many})).await.unwrap()).await.0, 400);
    let user: Value =
        s.api(Method::GET, &format!("/v1/users/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!((user["roles"].clone(), user["disabled"].clone()), (json!([]), json!(false)));

    let r = patch(json!({"roles": ["org:acme.admin", "beta_tester-2"]})).await.unwrap();
    assert_eq!(r.status(), 200);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["roles"], json!(["org:acme.admin", "beta_tester-2"]));
    s.stop().await;
}

/// Verification mail is queued durably with its token: while the SMTP server is down nothing is
/// lost, and a restart (here with the development outbox instead) sends what was queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_verification_mail_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // An SMTP "server" that refuses every connection: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = test_config(dir.path());
    config.smtp = Some(nimbus_server::nimbus_auth::SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: nimbus_server::nimbus_auth::SmtpSecurity::None,
        username: None,
        password: None,
        from: "Nimbus <no-reply@example.com>".into(),
        timeout: std::time::Duration::from_secs(2),
    });
    let s = TestServer::start_with(config).await;
    let r = crate::common::post(
        &s,
        "/v1/projects/default/auth/signup",
        json!({"email": "durable@example.com", "password": crate::common::PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Let the first attempt fail against the closed port.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    s.stop().await;

    let s = TestServer::start(dir.path()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let v: Value = s.api(Method::GET, "/v1/outbox").send().await.unwrap().json().await.unwrap();
        let found = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["to"] == "durable@example.com" && m["kind"] == "verify_email");
        if found {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the queued mail was lost: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s.stop().await;
}
