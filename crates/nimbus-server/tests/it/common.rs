//! A real Nimbus server on 127.0.0.1:0 with a temporary data directory, and a client for it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nimbus_model::DEFAULT_PROJECT;
use nimbus_server::{ADMIN_TOKEN_FILE, Server, ServerConfig};
use serde_json::{Value, json};

/// A password that passes the policy.
pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestServer {
    pub addr: SocketAddr,
    /// The `--metrics-listen` address, when the config asked for one.
    pub metrics_addr: Option<SocketAddr>,
    /// The S3 endpoint's address, when the config asked for one (`test_config` does).
    pub s3_addr: Option<SocketAddr>,
    pub token: String,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(data: &Path) -> TestServer {
        Self::start_with(test_config(data)).await
    }

    pub async fn start_with(config: ServerConfig) -> TestServer {
        let data = config.data_dir.clone();
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let s3_addr = server.s3_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let token =
            std::fs::read_to_string(data.join(ADMIN_TOKEN_FILE)).unwrap().trim().to_string();
        TestServer {
            addr,
            metrics_addr,
            s3_addr,
            token,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// GET `path` until it answers 200, failing after 2 s. For slots freed by a request that just
    /// ended: the client can read the last byte a moment before the server drops the body that
    /// holds the permit.
    pub async fn get_until_ok(&self, path: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let status = self.get(path).await.status();
            if status == 200 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path} still answers {status}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Deploy `wasm` with `spec` (a JSON FunctionSpec); returns (status, body).
    pub async fn deploy_bytes(&self, spec: Value, wasm: Vec<u8>) -> (u16, Value) {
        self.deploy_bytes_in(DEFAULT_PROJECT, spec, wasm).await
    }

    /// Deploy into `project` (the admin token plus `X-Nimbus-Project`); returns (status, body).
    pub async fn deploy_bytes_in(&self, project: &str, spec: Value, wasm: Vec<u8>) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .part("spec", reqwest::multipart::Part::text(spec.to_string()))
            .part(
                "module",
                reqwest::multipart::Part::bytes(wasm).mime_str("application/wasm").unwrap(),
            );
        let r = self
            .api(reqwest::Method::POST, "/v1/functions")
            .header("x-nimbus-project", project)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Deploy a test guest; panics unless it succeeds.
    pub async fn deploy(&self, guest: &str, spec: Value) -> Value {
        let wasm =
            std::fs::read(test_programs_artifacts::get(guest).expect("known guest")).unwrap();
        let (status, body) = self.deploy_bytes(spec, wasm).await;
        assert_eq!(status, 201, "deploy {guest}: {body}");
        body
    }

    /// Wait until `n` invocation records of `function` are stored (the write is asynchronous).
    pub async fn records(&self, function: &str, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let r: Value = self
                .api(
                    reqwest::Method::GET,
                    &format!("/v1/invocations?function={function}&order=asc"),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let list = r["invocations"].as_array().unwrap().clone();
            if list.len() >= n {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fewer than {n} records of {function} after 5 s");
    }
}

/// A server config for tests: port 0, cheap Argon2 parameters, no rate limits (tests that check
/// rate limits set their own).
pub fn test_config(data: &Path) -> ServerConfig {
    let mut config = ServerConfig {
        data_dir: data.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        s3_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    config.auth.password_hash =
        nimbus_server::nimbus_auth::PasswordHashConfig::insecure_for_tests();
    config.auth.rate_limits = nimbus_server::nimbus_auth::RateLimits::unlimited();
    config
}

pub fn spec(name: &str, routes: &[&str]) -> Value {
    json!({ "name": name, "routes": routes })
}

pub async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("JSON error body");
    let code = body["error"]["code"].as_str().expect("error.code").to_string();
    assert!(body["error"]["message"].is_string(), "error.message in {body}");
    (status, code)
}

impl TestServer {
    /// Create a project through the admin API.
    pub async fn create_project(&self, slug: &str) {
        let r = self
            .api(reqwest::Method::POST, "/v1/projects")
            .json(&json!({ "slug": slug, "name": slug }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "creating project {slug}: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

pub async fn post(s: &TestServer, path: &str, body: Value) -> reqwest::Response {
    s.client.post(s.url(path)).json(&body).send().await.unwrap()
}

/// Sign up and sign in; returns the session JSON.
pub async fn user_session(s: &TestServer, project: &str, email: &str) -> Value {
    let r = post(
        s,
        &format!("/v1/projects/{project}/auth/signup"),
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = post(
        s,
        &format!("/v1/projects/{project}/auth/signin"),
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}
