//! Functions use the project's data services through the in-process API (`http://nimbus.internal`
//! with the invocation's token), with the Rust SDK, under the same auth and rules as clients.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, test_config, user_session};
use crate::documents::{admin, collection, docs};

/// Deploy the `data` guest (no outbound allow-list at all) and return the server.
async fn server_with_data_guest(dir: &std::path::Path) -> TestServer {
    let s = TestServer::start_with(test_config(dir)).await;
    s.deploy("data", json!({"name": "data", "routes": ["/typed", "/raw", "/env", "/files"]})).await;
    s
}

/// One request from inside the function: `{"status", "body"}` of what the API answered.
async fn raw(s: &TestServer, op: Value, user_token: Option<&str>) -> (u16, Value) {
    let mut req = s.client.post(s.url("/raw")).json(&op);
    if let Some(t) = user_token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "the guest itself failed: {}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    (v["status"].as_u64().unwrap() as u16, v["body"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_reads_and_writes_documents_and_kv_with_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with_data_guest(dir.path()).await;
    collection(&s, "default", json!({"name": "notes"})).await;

    let env: Value = s.get("/env").await.json().await.unwrap();
    assert_eq!(env["url"], "http://nimbus.internal");
    assert_eq!(env["project"], "default");
    assert!(env["token_len"].as_u64().unwrap() >= 32, "{env}");

    for calls in 1..=2 {
        let r = s.get("/typed?coll=notes&bucket=counters").await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v.get("error").is_none(), "{v}");
        assert_eq!(v["project"], "default");
        assert_eq!(v["got"], json!({"title": "from a function", "n": 1}));
        assert_eq!(v["created"]["revision"], 1);
        assert_eq!(v["patched"]["revision"], 2);
        assert_eq!(
            v["patched"]["data"],
            json!({"title": "from a function", "n": 2, "tag": "patched"})
        );
        assert!(v["listed"].as_array().unwrap().contains(&v["created"]["id"]), "{v}");
        assert_eq!(v["greeting"], "hello");
        assert_eq!(v["calls"], calls, "KV keeps its value between invocations");
        assert_eq!(v["deleted_key"], true);
        assert_eq!(v["missing"], true);
        assert_eq!(v["deleted"], true);
        assert_eq!(v["gone"], true);
    }
    // What the function wrote is what clients see.
    let r = s.api(Method::GET, "/v1/kv/counters/calls").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "2");
    let r = admin(&s, Method::GET, &docs("default", "notes")).send().await.unwrap();
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed["documents"], json!([]), "the function deleted what it created");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_calls_keep_to_their_project_and_the_callers_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with_data_guest(dir.path()).await;
    s.create_project("other").await;
    collection(&s, "other", json!({"name": "secrets", "rules": {"list": "true", "get": "true"}}))
        .await;
    let r = admin(&s, Method::POST, &docs("other", "secrets"))
        .json(&json!({"secret": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    collection(
        &s,
        "default",
        json!({"name": "posts", "rules": {
            "list": "auth.id != null && doc.owner == auth.id",
            "create": "auth.id != null && request.body.owner == auth.id",
        }}),
    )
    .await;

    // Another project's data, even with rules open to everyone: never.
    let (status, body) =
        raw(&s, json!({"method": "GET", "path": docs("other", "secrets")}), None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    // Only the data services: not functions, projects, users, invocations or realtime.
    for (method, path) in [
        ("GET", "/v1/functions"),
        ("POST", "/v1/functions/data/invoke"),
        ("GET", "/v1/projects"),
        ("GET", "/v1/invocations"),
        ("GET", "/v1/users"),
        ("POST", "/v1/projects/default/realtime/tickets"),
        ("GET", "/typed"),
    ] {
        let (status, body) = raw(&s, json!({"method": method, "path": path}), None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    // KV management needs the service token; an anonymous in-process call gets 403.
    let (status, _) = raw(&s, json!({"method": "GET", "path": "/v1/kv"}), None).await;
    assert_eq!(status, 200);
    let (status, _) =
        raw(&s, json!({"method": "GET", "path": "/v1/kv", "auth": "none"}), None).await;
    assert_eq!(status, 403);

    // Acting as the calling end user: that user's rules apply.
    let alice = user_session(&s, "default", "alice@example.com").await;
    let (a_tok, a_id) =
        (alice["access_token"].as_str().unwrap(), alice["user"]["id"].as_str().unwrap());
    let create = |owner: &str| {
        json!({"method": "POST", "path": docs("default", "posts"), "auth": "forward",
               "body": {"owner": owner}})
    };
    let (status, body) = raw(&s, create(a_id), Some(a_tok)).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = raw(&s, create("somebody-else"), Some(a_tok)).await;
    assert_eq!(status, 403, "the create rule holds for a forwarded token");
    let (status, _) = raw(&s, create(a_id), None).await.clone();
    assert_eq!(status, 403, "forwarding no token is anonymous");
    // The service role (the invocation's token) bypasses rules, as a service key does.
    let (status, body) = raw(
        &s,
        json!({"method": "POST", "path": docs("default", "posts"), "body": {"owner": "x"}}),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let list = json!({"method": "GET", "path": docs("default", "posts"), "auth": "forward"});
    let (status, body) = raw(&s, list, Some(a_tok)).await;
    assert_eq!(status, 200);
    let owners: Vec<&str> = body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["data"]["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, [a_id], "the list rule filters the forwarded user's view");

    // Credentials that work outside are not the service role inside: the admin token in-process
    // is just an invalid user token.
    let op = json!({"method": "GET", "path": "/v1/kv", "auth": format!("token:{}", s.token)});
    let (status, _) = raw(&s, op, None).await;
    assert_eq!(status, 403);
    let op = json!({"method": "GET", "path": docs("default", "posts"),
                    "auth": format!("token:{}", s.token)});
    let (status, _) = raw(&s, op, None).await;
    assert_eq!(status, 401);
    // An invocation's token is worth nothing after it, in-process or outside.
    let old: Value = s.get("/env").await.json().await.unwrap();
    let old = old["token"].as_str().unwrap();
    let op = json!({"method": "GET", "path": "/v1/kv", "auth": format!("token:{old}")});
    let (status, _) = raw(&s, op, None).await;
    assert_eq!(status, 403, "a previous invocation's token is not the service role");
    let r = s.client.get(s.url("/v1/kv")).bearer_auth(old).send().await.unwrap();
    assert_eq!(r.status(), 401, "the token is never accepted from outside");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_stores_files_in_its_own_project_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with_data_guest(dir.path()).await;

    // The SDK's file helpers: create a bucket (service role), put, get, list, delete.
    let r = s.get("/files?bucket=fn-files").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v.get("error").is_none(), "{v}");
    assert_eq!(v["bucket_status"], 201, "{v}");
    let etag = hex::encode(<md5::Md5 as md5::Digest>::digest(b"hello from a function"));
    assert_eq!(v["put"], json!({"key": "dir/hello.txt", "size": 21, "etag": etag}));
    assert_eq!(
        v["got"],
        json!({"body": "hello from a function", "content_type": "text/plain", "etag": etag})
    );
    assert_eq!(v["listed"], json!(["dir/hello.txt"]));
    assert_eq!(v["deleted"], true);
    assert_eq!(v["gone"], true);

    // What a function stores is what clients read.
    let own = "/v1/projects/default/buckets/fn-files/objects/kept.json";
    let (status, body) =
        raw(&s, json!({"method": "PUT", "path": own, "body": {"from": "function"}}), None).await;
    assert_eq!(status, 201, "{body}");
    let r = admin(&s, Method::GET, own).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"from":"function"}"#);
    // Without the service token the bucket's access settings apply (private: sign in first).
    let (status, body) = raw(&s, json!({"method": "GET", "path": own, "auth": "none"}), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) =
        raw(&s, json!({"method": "GET", "path": "/v1/buckets", "auth": "none"}), None).await;
    assert_eq!(status, 403, "bucket management needs the service token");

    // Another project's bucket, even public-read: never.
    s.create_project("other").await;
    let r = admin(&s, Method::POST, "/v1/buckets")
        .header("x-nimbus-project", "other")
        .json(&json!({"name": "shared", "access": "public-read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let theirs = "/v1/projects/other/buckets/shared/objects/secret.txt";
    let r = admin(&s, Method::PUT, theirs).body("theirs").send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(s.client.get(s.url(theirs)).send().await.unwrap().status(), 200, "public outside");
    for (method, path) in [
        ("GET", theirs),
        ("PUT", theirs),
        ("DELETE", theirs),
        ("GET", "/v1/projects/other/buckets/shared/objects"),
    ] {
        let (status, body) = raw(&s, json!({"method": method, "path": path}), None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    // And the S3 access keys (credentials) are not for functions.
    let (status, _) = raw(&s, json!({"method": "GET", "path": "/v1/s3-keys"}), None).await;
    assert_eq!(status, 403);
    let r = admin(&s, Method::GET, theirs).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "theirs");
    s.stop().await;
}

/// The stored-bytes quota holds for functions too: over it, a document write and a KV put
/// through the in-process API get 429 `quota_exceeded`; reads and deletes still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_writes_through_the_in_process_api_obey_the_stored_bytes_quota() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with_data_guest(dir.path()).await;
    collection(&s, "default", json!({"name": "notes"})).await;
    let r = s
        .api(Method::PUT, "/v1/projects/default/quotas")
        .json(&json!({"stored_bytes": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let own = format!("{}/mine", docs("default", "notes"));
    let (status, body) =
        raw(&s, json!({"method": "PUT", "path": own, "body": {"text": "x".repeat(200)}}), None)
            .await;
    assert!(status == 200 || status == 201, "under the quota: {status} {body}");
    let (status, body) =
        raw(&s, json!({"method": "POST", "path": docs("default", "notes"), "body": {}}), None)
            .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["quota"], "stored_bytes");
    let (status, body) =
        raw(&s, json!({"method": "PUT", "path": "/v1/kv/b/k", "body": "v"}), None).await;
    assert_eq!((status, &body["error"]["quota"]), (429, &json!("stored_bytes")), "{body}");
    let (status, _) = raw(&s, json!({"method": "GET", "path": own}), None).await;
    assert_eq!(status, 200, "reads work");
    let (status, _) = raw(&s, json!({"method": "DELETE", "path": own}), None).await;
    assert!(status == 200 || status == 204, "deletes work: {status}");
    let (status, body) =
        raw(&s, json!({"method": "PUT", "path": "/v1/kv/b/k", "body": "v"}), None).await;
    assert!(status < 300, "room again: {status} {body}");
    s.stop().await;
}
