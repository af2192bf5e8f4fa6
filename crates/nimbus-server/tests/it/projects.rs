//! Tenancy for functions: the same name in two projects is two functions; nothing of one project
//! can be read, listed, changed or invoked with another project's scope; routes never cross.

use crate::common::{TestServer, error_code, post, user_session};
use reqwest::Method;
use serde_json::{Value, json};

const HEADER: &str = "x-nimbus-project";

async fn deploy_in(s: &TestServer, project: &str, guest: &str, spec: Value) -> u16 {
    let wasm = std::fs::read(test_programs_artifacts::get(guest).unwrap()).unwrap();
    s.deploy_bytes_in(project, spec, wasm).await.0
}

#[tokio::test]
async fn functions_are_isolated_by_project() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("alpha").await;
    s.create_project("beta").await;
    // Same function name and route in three projects.
    assert_eq!(
        deploy_in(&s, "alpha", "hello", json!({"name": "svc", "routes": ["/svc"]})).await,
        201
    );
    assert_eq!(
        deploy_in(&s, "beta", "counter", json!({"name": "svc", "routes": ["/svc"]})).await,
        201
    );
    s.deploy("env", json!({"name": "svc", "routes": ["/svc"], "env": {"WHO": "default"}})).await;

    // Routing: default project at the root; others by /@project and by host name.
    assert!(s.get("/svc").await.text().await.unwrap().contains("\"WHO\":\"default\""));
    assert_eq!(s.get("/@alpha/svc").await.text().await.unwrap(), "Hello from Nimbus!\n");
    assert_eq!(s.get("/@beta/svc").await.text().await.unwrap(), "1");
    let r = s
        .client
        .get(s.url("/svc"))
        .header("host", format!("alpha.localhost:{}", s.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");
    assert_eq!(s.get("/@gamma/svc").await.status(), 404);

    // Management scope: beta's view never shows alpha's function or its details.
    let beta = |m: Method, path: &str| s.api(m, path).header(HEADER, "beta");
    let info: Value =
        beta(Method::GET, "/v1/functions/svc").send().await.unwrap().json().await.unwrap();
    assert_eq!(info["project"], "beta");
    assert_eq!(info["module_sha256"].as_str().unwrap().len(), 64);
    let alpha_info: Value = s
        .api(Method::GET, "/v1/functions/svc")
        .header(HEADER, "alpha")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(info["module_sha256"], alpha_info["module_sha256"]);
    let list: Value =
        beta(Method::GET, "/v1/functions").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["functions"].as_array().unwrap().len(), 1);

    // Changing beta's function leaves alpha's alone.
    let r = beta(Method::PUT, "/v1/functions/svc/secrets/K")
        .json(&json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(alpha_info["secrets"], json!([]));
    let r = beta(Method::DELETE, "/v1/functions/svc").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get("/@alpha/svc").await.status(), 200);
    assert_eq!(s.get("/@beta/svc").await.status(), 404);
    let r = beta(Method::GET, "/v1/functions/svc/versions").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    let r = beta(Method::POST, "/v1/functions/svc/invoke").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);

    // Invocation records are scoped too.
    s.records("svc", 1).await; // the default project's
    let recs: Value =
        beta(Method::GET, "/v1/invocations").send().await.unwrap().json().await.unwrap();
    assert!(
        recs["invocations"].as_array().unwrap().iter().all(|r| r["project"] == "beta"),
        "{recs}"
    );
    let recs: Value = s
        .api(Method::GET, "/v1/invocations")
        .header(HEADER, "alpha")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        recs["invocations"].as_array().unwrap().iter().all(|r| r["project"] == "alpha"),
        "{recs}"
    );

    // Bad project header.
    let r = s.api(Method::GET, "/v1/functions").header(HEADER, "Not A Slug").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 400);
    s.stop().await;
}

#[tokio::test]
async fn deleting_a_project_removes_all_it_held_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("acme").await;
    assert_eq!(deploy_in(&s, "acme", "hello", json!({"name": "hi", "routes": ["/hi"]})).await, 201);
    s.deploy("hello", json!({"name": "hi", "routes": ["/hi"]})).await;
    assert_eq!(s.get("/@acme/hi").await.status(), 200);
    let key = service_key(&s, "acme").await;
    let session = user_session(&s, "acme", "ann@example.com").await;
    let as_key = |m: Method, path: &str| s.client.request(m, s.url(path)).bearer_auth(&key);

    // Refused: the default project, a service key (operator only), an unknown project.
    let r = s.api(Method::DELETE, "/v1/projects/default").send().await.unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_input".to_string()));
    let r = as_key(Method::DELETE, "/v1/projects/acme").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = s.api(Method::DELETE, "/v1/projects/nope").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);

    let r = s.api(Method::DELETE, "/v1/projects/acme").send().await.unwrap();
    assert_eq!(r.status(), 204);
    // Its routes, key and sessions are gone at once; the default project's twin still serves.
    assert_eq!(s.get("/@acme/hi").await.status(), 404);
    assert_eq!(as_key(Method::GET, "/v1/functions").send().await.unwrap().status(), 401);
    let refresh = json!({"refresh_token": session["refresh_token"]});
    assert!(post(&s, "/v1/projects/acme/auth/refresh", refresh).await.status().is_client_error());
    assert_eq!(s.get("/hi").await.status(), 200);
    let projects: Value =
        s.api(Method::GET, "/v1/projects").send().await.unwrap().json().await.unwrap();
    assert!(!projects.to_string().contains("acme"), "{projects}");

    // A new project of the same name starts empty: no functions, users, keys or records.
    s.create_project("acme").await;
    let acme = |path: &str| s.api(Method::GET, path).header(HEADER, "acme");
    for (path, field) in [
        ("/v1/functions", "functions"),
        ("/v1/users", "users"),
        ("/v1/keys", "keys"),
        ("/v1/invocations", "invocations"),
        ("/v1/events", "events"),
    ] {
        let v: Value = acme(path).send().await.unwrap().json().await.unwrap();
        assert_eq!(v[field].as_array().map(Vec::len), Some(0), "{path}: {v}");
    }
    let r = post(
        &s,
        "/v1/projects/acme/auth/signin",
        json!({"email": "ann@example.com", "password": crate::common::PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 401, "the old user is gone");
    s.stop().await;
}

/// One slug rule (nimbus-model's `validate_project`, an RFC 1123 host name label) decides both
/// what can be created and what routes: `1app` was creatable and then unreachable.
#[tokio::test]
async fn a_project_that_can_be_created_can_be_used() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("1app").await;
    assert_eq!(
        deploy_in(&s, "1app", "hello", json!({"name": "one", "routes": ["/one"]})).await,
        201,
        "deploying with x-nimbus-project: 1app"
    );
    assert_eq!(s.get("/@1app/one").await.text().await.unwrap(), "Hello from Nimbus!\n");
    let r = s
        .client
        .get(s.url("/one"))
        .header("host", format!("1app.localhost:{}", s.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "Hello from Nimbus!\n");
    let list: Value = s
        .api(Method::GET, "/v1/functions")
        .header(HEADER, "1app")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["functions"][0]["name"], "one");
    // Its end users too.
    user_session(&s, "1app", "ivy@example.com").await;

    // What is not a valid host name label is refused at creation, with the rule in the message.
    for bad in ["-app", "app-", "App", "a_b", "a.b", &"a".repeat(41)] {
        let r =
            s.api(Method::POST, "/v1/projects").json(&json!({ "slug": bad })).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_input")), "{bad}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("slug") && message.contains("a-z, 0-9"), "{message}");
    }
    s.stop().await;
}

/// Some of everything a project holds: a function with its invocation record, a service key,
/// a user with a session, a collection with a document, a KV entry, a bucket with an object.
/// Returns the key.
async fn populate(s: &TestServer, p: &str) -> String {
    assert_eq!(deploy_in(s, p, "hello", json!({"name": "hi", "routes": ["/hi"]})).await, 201);
    assert_eq!(s.get(&format!("/@{p}/hi")).await.status(), 200);
    let key = service_key(s, p).await;
    user_session(s, p, "ann@example.com").await;
    crate::documents::collection(s, p, json!({"name": "c"})).await;
    let doc = s.api(Method::POST, &crate::documents::docs(p, "c")).json(&json!({"v": 1}));
    assert_eq!(doc.send().await.unwrap().status(), 201);
    let kv = s.api(Method::PUT, "/v1/kv/default/k").header(HEADER, p).body("v");
    assert_eq!(kv.send().await.unwrap().status(), 204);
    let bucket = s.api(Method::POST, "/v1/buckets").header(HEADER, p);
    assert_eq!(bucket.json(&json!({"name": "files"})).send().await.unwrap().status(), 201);
    let object = s.api(Method::PUT, &format!("/v1/projects/{p}/buckets/files/objects/a.txt"));
    assert_eq!(object.body("bytes").send().await.unwrap().status(), 201);
    key
}

/// A new service key of project `p`.
async fn service_key(s: &TestServer, p: &str) -> String {
    let r = s.api(Method::POST, "/v1/keys").header(HEADER, p).json(&json!({"scope": "service"}));
    let key: Value = r.send().await.unwrap().json().await.unwrap();
    key["key"].as_str().unwrap().to_string()
}

/// What the project still holds once deleted: nothing. Its usage history, the operator's
/// billing record, is kept under its retired name (`<slug>~deleted-<ms>`), not its slug.
fn rows_left(store: &nimbus_store_local::SqliteStore, p: &str) -> Vec<(String, u64)> {
    store.project_rows(p).unwrap()
}

/// The admin's usage report (`GET /v1/usage`) for `query`.
async fn usage_report(s: &TestServer, query: &str) -> Value {
    let since = nimbus_model::now_millis() - 86_400_000;
    let r = s.api(Method::GET, &format!("/v1/usage?from={since}&{query}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

/// The admin's usage report of the one retired history of `slug` (`<slug>~deleted-<ms>`).
async fn retired_usage(s: &TestServer, slug: &str) -> Vec<Value> {
    let all = usage_report(s, "").await;
    let retired: Vec<Value> = all["projects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["project"].as_str().unwrap().starts_with(&format!("{slug}~deleted-")))
        .cloned()
        .collect();
    assert_eq!(retired.len(), 1, "{all}");
    retired
}

/// A deleted project's quotas, threshold marks and stored-bytes row go, and its usage history
/// is kept under `acme~deleted-<ms>`: the slug, created again, has no quota and a month used at
/// zero (at once: the counters in memory went too) and serves past the old quota, while the
/// operator still reads and exports the old history with its totals.
#[tokio::test]
async fn a_deleted_projects_usage_is_retired_and_its_slug_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("acme").await;
    populate(&s, "acme").await; // one request, and data: a stored-bytes row
    let quotas = json!({"invocations_per_month": 3, "soft_threshold_percent": 50,
                        "stored_bytes": 1});
    let r = s.api(Method::PUT, "/v1/projects/acme/quotas").json(&quotas).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let put_kv =
        |k: &str| s.api(Method::PUT, &format!("/v1/kv/default/{k}")).header(HEADER, "acme");
    assert_eq!(put_kv("more").body("v").send().await.unwrap().status(), 429, "stored bytes");
    for _ in 0..2 {
        assert_eq!(s.get("/@acme/hi").await.status(), 200);
    }
    assert_eq!(s.get("/@acme/hi").await.status(), 429, "3 of 3 used");
    let store = store_of(dir.path());
    let tables =
        || -> Vec<String> { rows_left(&store, "acme").into_iter().map(|(t, _)| t).collect() };
    // The threshold is marked when the records are written (the recorder's batch).
    for _ in 0..200 {
        if tables().iter().any(|t| t == "quota_thresholds") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let tables = tables();
    for t in ["project_quotas", "quota_thresholds", "usage_hourly", "project_storage"] {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }

    let r = s.api(Method::DELETE, "/v1/projects/acme").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(rows_left(&store, "acme"), []);

    // The history, under the retired name, for the operator: listed, readable by name, exported.
    let retired = retired_usage(&s, "acme").await;
    let name = retired[0]["project"].as_str().unwrap().to_string();
    assert_eq!(retired[0]["requests"], 3);
    let one = usage_report(&s, &format!("project={name}")).await;
    assert_eq!(one["projects"][0]["requests"], 3, "{one}");
    assert_eq!(one["projects"][0]["data"]["kv_bytes"], 0);

    // The slug again: no quota, nothing used this month, and more requests than the old quota.
    s.create_project("acme").await;
    let got: Value =
        s.api(Method::GET, "/v1/projects/acme/quotas").send().await.unwrap().json().await.unwrap();
    assert_eq!(got["quotas"], Value::Null);
    let fresh = usage_report(&s, "project=acme").await;
    assert!(fresh["lines"].as_array().unwrap().is_empty(), "{fresh}");
    assert_eq!(deploy_in(&s, "acme", "hello", json!({"name": "hi", "routes": ["/hi"]})).await, 201);
    for i in 0..4 {
        assert_eq!(s.get("/@acme/hi").await.status(), 200, "request {i}");
    }
    for k in ["a", "b"] {
        assert_eq!(
            put_kv(k).body("v").send().await.unwrap().status(),
            204,
            "no stored-bytes limit"
        );
    }
    // A quota set now counts the new project's month only.
    let r = s.api(Method::PUT, "/v1/projects/acme/quotas").json(&quotas).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get("/@acme/hi").await.status(), 429, "4 of 3: its own requests");
    let fresh = usage_report(&s, "project=acme").await;
    assert_eq!(fresh["projects"][0]["requests"], 4, "{fresh}");
    let old = usage_report(&s, &format!("project={name}")).await;
    assert_eq!(old["projects"][0]["requests"], 3, "the history is untouched");
    s.stop().await;
}

/// An invocation under way when its project is deleted: the deletion waits for it to end, so
/// its usage is in the retired history and nothing is left under the slug. (Before, one that
/// ended after the usage part had run wrote its usage under the slug, where a project created
/// again would count it.)
#[tokio::test]
async fn a_deletion_waits_for_the_invocations_under_way() {
    deletion_across_a_nap(false).await;
}

/// The same when the function was deployed again while the invocation ran: the invocation holds
/// the version it started on, which is out of the routes, and the deletion waits for it too.
#[tokio::test]
async fn a_deletion_waits_for_invocations_of_a_replaced_version() {
    deletion_across_a_nap(true).await;
}

async fn deletion_across_a_nap(redeploy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("acme").await;
    assert_eq!(
        deploy_in(&s, "acme", "sleep", json!({"name": "nap", "routes": ["/nap"]})).await,
        201
    );
    let url = s.url("/@acme/nap?ms=1500");
    let client = reqwest::Client::new();
    let nap = tokio::spawn(async move { client.get(url).send().await.unwrap().status() });
    // Until it is running: the node reports one instance in use.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let m = s.api(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
        if m.lines().any(|l| {
            l.starts_with("nimbus_instances_in_use{") && l.contains("nap") && l.ends_with(" 1")
        }) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the invocation never started:\n{m}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    if redeploy {
        let spec = json!({"name": "nap", "routes": ["/nap"], "env": {"V": "2"}});
        let status = deploy_in(&s, "acme", "sleep", spec).await;
        assert!((200..300).contains(&status), "redeploy: {status}");
    }
    let r = s.api(Method::DELETE, "/v1/projects/acme").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(started.elapsed() >= std::time::Duration::from_millis(800), "it waited for the nap");
    assert_eq!(nap.await.unwrap(), 200, "the invocation under way ran to its end");
    let store = store_of(dir.path());
    assert_eq!(rows_left(&store, "acme"), [], "nothing counted under the slug");
    let retired = retired_usage(&s, "acme").await;
    assert_eq!(retired[0]["requests"], 1, "the nap is in the retired history");
}

fn store_of(dir: &std::path::Path) -> nimbus_store_local::SqliteStore {
    nimbus_store_local::SqliteStore::open(&dir.join("nimbus.db")).unwrap()
}

/// A crash right after the tombstone (the project marked deleting, no service's part done):
/// the next start keeps its routes and key dead and finishes the deletion in the background.
#[tokio::test]
async fn a_deletion_interrupted_after_the_tombstone_is_finished_at_the_next_start() {
    use nimbus_store::auth::AuthStore;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("acme").await;
    let key = populate(&s, "acme").await;
    s.stop().await;
    {
        let store = store_of(dir.path());
        assert!(rows_left(&store, "acme").len() >= 10, "{:?}", rows_left(&store, "acme"));
        store.mark_project_deleting("acme", nimbus_model::now_millis()).unwrap();
    }

    let s = TestServer::start(dir.path()).await;
    // Whether or not the resumed deletion got there yet: no route, no key, no project.
    assert_eq!(s.get("/@acme/hi").await.status(), 404);
    let with_key = s.client.get(s.url("/v1/functions")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(with_key.status(), 401);
    let r = s.api(Method::GET, "/v1/functions").header(HEADER, "acme").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    let store = store_of(dir.path());
    for _ in 0..500 {
        if store.deleting_projects().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(store.deleting_projects().unwrap().is_empty(), "the deletion finished");
    assert_eq!(rows_left(&store, "acme"), []);
    // The slug is free: a fresh, empty project.
    s.create_project("acme").await;
    let r = s.api(Method::GET, "/v1/collections").header(HEADER, "acme").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["collections"], json!([]));
    assert_eq!(s.get("/@acme/hi").await.status(), 404);
    s.stop().await;
}

/// A project whose deletion began and did not finish (marked here behind the server's back, as
/// a crashed run or another node leaves it): its slug answers 409 `project_deleting`, it is
/// found nowhere, and a retry of DELETE finishes the deletion instead of answering 404.
#[tokio::test]
async fn a_retry_of_delete_finishes_an_interrupted_deletion() {
    use nimbus_store::auth::AuthStore;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("acme").await;
    populate(&s, "acme").await;
    let store = store_of(dir.path());
    store.mark_project_deleting("acme", nimbus_model::now_millis()).unwrap();

    let r = s.api(Method::POST, "/v1/projects").json(&json!({"slug": "acme"})).send().await;
    assert_eq!(error_code(r.unwrap()).await, (409, "project_deleting".to_string()));
    let projects: Value =
        s.api(Method::GET, "/v1/projects").send().await.unwrap().json().await.unwrap();
    assert!(!projects.to_string().contains("acme"), "{projects}");
    let r = s.api(Method::GET, "/v1/kv").header(HEADER, "acme").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);

    let r = s.api(Method::DELETE, "/v1/projects/acme").send().await.unwrap();
    assert_eq!(r.status(), 204, "a retry finishes the deletion");
    assert_eq!(rows_left(&store, "acme"), []);
    assert!(store.deleting_projects().unwrap().is_empty());
    let r = s.api(Method::DELETE, "/v1/projects/acme").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404, "now it is gone");
    s.create_project("acme").await;
    s.stop().await;
}
