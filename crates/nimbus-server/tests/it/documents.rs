//! The document database over real HTTP: CRUD with ETags, merge patch, batches, queries across
//! pages with declared indexes, access rules, and hostile input.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{TestServer, error_code, test_config, user_session};

/// Create a collection with the admin token (in the default project unless `project`).
pub async fn collection(s: &TestServer, project: &str, body: Value) {
    let r = s
        .api(Method::POST, "/v1/collections")
        .header("x-nimbus-project", project)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "creating collection: {}", r.text().await.unwrap());
}

pub fn docs(project: &str, coll: &str) -> String {
    format!("/v1/projects/{project}/collections/{coll}/documents")
}

/// A request to a data endpoint as the project's service role (the admin token).
pub fn admin(s: &TestServer, method: Method, path: &str) -> reqwest::RequestBuilder {
    s.client.request(method, s.url(path)).bearer_auth(&s.token)
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()[reqwest::header::ETAG].to_str().unwrap().to_string()
}

#[tokio::test]
async fn crud_with_etags_and_merge_patch() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    collection(&s, "default", json!({"name": "notes"})).await;
    let base = docs("default", "notes");

    let r = admin(&s, Method::POST, &base)
        .json(&json!({"title": "a", "tags": ["x"], "meta": {"k": 1, "j": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(etag(&r), "\"1\"");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("{base}/{id}"));
    assert_eq!(created["revision"], 1);
    assert_eq!(created["data"]["title"], "a");

    let r = admin(&s, Method::GET, &location).send().await.unwrap();
    assert_eq!((r.status(), etag(&r)), (StatusCode::OK, "\"1\"".into()));
    let r =
        admin(&s, Method::GET, &location).header("if-none-match", "\"1\"").send().await.unwrap();
    assert_eq!(r.status(), 304);

    // Replace under If-Match; a stale ETag is a 412 and changes nothing.
    let r = admin(&s, Method::PUT, &location)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "b", "meta": {"k": 1, "j": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status(), etag(&r)), (StatusCode::OK, "\"2\"".into()));
    let r = admin(&s, Method::PUT, &location)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "lost"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (412, "precondition_failed".into()));
    let r = admin(&s, Method::GET, &location).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["data"]["title"], "b");

    // Merge patch (RFC 7386): null removes, objects merge.
    let r = admin(&s, Method::PATCH, &location)
        .header("content-type", "application/merge-patch+json")
        .header("if-match", "\"2\"")
        .body(r#"{"title": null, "meta": {"j": null, "n": 3}, "new": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["revision"], 3);
    assert_eq!(patched["data"], json!({"meta": {"k": 1, "n": 3}, "new": true}));
    let r = admin(&s, Method::PATCH, &location)
        .header("if-match", "\"2\"")
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 412);

    // Client-chosen ids: If-None-Match: * creates only if absent.
    let mine = format!("{base}/my-id_1");
    let r = admin(&s, Method::PUT, &mine)
        .header("if-none-match", "*")
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = admin(&s, Method::PUT, &mine)
        .header("if-none-match", "*")
        .json(&json!({"v": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 412);
    let r = admin(&s, Method::PUT, &mine).json(&json!({"v": 3})).send().await.unwrap();
    assert_eq!((r.status(), etag(&r)), (StatusCode::OK, "\"2\"".into()));

    // Delete: conditional, then gone.
    let r = admin(&s, Method::DELETE, &location).header("if-match", "\"1\"").send().await.unwrap();
    assert_eq!(error_code(r).await.0, 412);
    let r = admin(&s, Method::DELETE, &location).header("if-match", "\"3\"").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(error_code(admin(&s, Method::GET, &location).send().await.unwrap()).await.0, 404);
    assert_eq!(error_code(admin(&s, Method::DELETE, &location).send().await.unwrap()).await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn batches_commit_or_fail_together() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    collection(&s, "default", json!({"name": "a"})).await;
    collection(&s, "default", json!({"name": "b"})).await;
    let batch = "/v1/projects/default/documents/batch";
    let r = admin(&s, Method::POST, batch)
        .json(&json!({"writes": [
            {"op": "create", "collection": "a", "id": "one", "data": {"n": 1}},
            {"op": "create", "collection": "b", "id": "two", "data": {"n": 2}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][1]["result"], "created");

    // The third write's condition fails: neither the first nor the second happens.
    let r = admin(&s, Method::POST, batch)
        .json(&json!({"writes": [
            {"op": "create", "collection": "a", "id": "three", "data": {"n": 3}},
            {"op": "patch", "collection": "b", "id": "two", "patch": {"n": 20}},
            {"op": "delete", "collection": "a", "id": "one", "if_match": 7},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (412, "precondition_failed".into()));
    assert_eq!(
        error_code(
            admin(&s, Method::GET, &format!("{}/three", docs("default", "a")))
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        404
    );
    let two: Value = admin(&s, Method::GET, &format!("{}/two", docs("default", "b")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((two["revision"].clone(), two["data"]["n"].clone()), (json!(1), json!(2)));

    // A duplicate create inside one batch fails it whole.
    let r = admin(&s, Method::POST, batch)
        .json(&json!({"writes": [
            {"op": "create", "collection": "a", "id": "four", "data": {}},
            {"op": "create", "collection": "a", "id": "four", "data": {}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 409);
    assert_eq!(
        error_code(
            admin(&s, Method::GET, &format!("{}/four", docs("default", "a"))).send().await.unwrap()
        )
        .await
        .0,
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn queries_page_in_order_and_use_the_declared_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    collection(&s, "default", json!({"name": "people", "indexes": [{"name": "by_status_age", "fields": ["status", "age"]}]})).await;
    let mut writes = Vec::new();
    for i in 0..120 {
        let status = ["open", "closed", "open"][i % 3];
        writes.push(json!({"op": "create", "collection": "people", "id": format!("p{i:03}"),
            "data": {"status": status, "age": (i * 7) % 50, "name": format!("n{i}"), "address": {"city": if i % 2 == 0 {"Oslo"} else {"Rome"}}}}));
    }
    let r = admin(&s, Method::POST, "/v1/projects/default/documents/batch")
        .json(&json!({"writes": writes}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Expected: status == open, sorted by age descending, then id descending (the tie-breaker
    // follows the last key's direction).
    let mut expected: Vec<(i64, String)> = (0..120)
        .filter(|i| i % 3 != 1)
        .map(|i| (((i * 7) % 50) as i64, format!("p{i:03}")))
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|e| e.1).collect();

    let list = docs("default", "people");
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = vec![
            ("filter", "doc.status == \"open\"".to_string()),
            ("sort", "-age".into()),
            ("limit", "7".into()),
            ("fields", "age,address.city".into()),
            ("count", "true".into()),
        ];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let r = admin(&s, Method::GET, &list).query(&q).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["index"], "by_status_age", "{page}");
        assert_eq!(page["scan"], false);
        assert_eq!(page["count"], 80);
        for d in page["documents"].as_array().unwrap() {
            assert!(d["data"].get("name").is_none(), "projection kept a field");
            assert!(d["data"]["address"]["city"].is_string());
            got.push(d["id"].as_str().unwrap().to_string());
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(got, expected);
    assert_eq!(pages, 12);

    // Nested fields, and/or/not, in, contains.
    let ids = |filter: &'static str| {
        let r =
            admin(&s, Method::GET, &list).query(&[("filter", filter), ("limit", "1000")]).send();
        async move {
            let page: Value = r.await.unwrap().json().await.unwrap();
            page["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ids("doc.address.city == \"Oslo\" && doc.age < 5").await,
        ["p000", "p022", "p036", "p050", "p072", "p086", "p100"]
    );
    assert_eq!(ids("doc.age in [0, 1] && !(doc.status == \"open\")").await, ["p043", "p100"]);
    assert_eq!(ids("\"Ro\" in doc.address.city && doc.age == 49").await, ["p007", "p057", "p107"]);
    assert_eq!(ids("exists(doc.nope) || doc.name == \"n3\"").await, ["p003"]);

    // The explain endpoint shows the plan; a query on an unindexed field scans and says so.
    let plan: Value = s
        .api(Method::GET, "/v1/collections/people/explain")
        .query(&[("filter", "doc.status == \"closed\""), ("sort", "-age")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["index"], "by_status_age", "{plan}");
    assert!(
        plan["detail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("USING INDEX"))
    );
    let page: Value = admin(&s, Method::GET, &list)
        .query(&[("filter", "doc.name == \"n5\"")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["scan"], true);
    assert!(page["warning"].as_str().unwrap().contains("index"));
    assert_eq!(page["documents"][0]["id"], "p005");
    s.stop().await;
}

#[tokio::test]
async fn rules_hold_for_lists_gets_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(test_config(dir.path())).await;
    collection(
        &s,
        "default",
        json!({"name": "posts", "rules": {
            "list": "auth.id != null && doc.owner == auth.id",
            "get": "doc.public == true || (auth.id != null && doc.owner == auth.id)",
            "create": "auth.id != null && request.body.owner == auth.id",
            "update": "auth.id != null && doc.owner == auth.id && request.body.owner == auth.id",
        }}),
    )
    .await;
    // A list rule that cannot become SQL (`size`): checked in Rust while paging.
    collection(
        &s,
        "default",
        json!({"name": "notes", "rules": {"list": "size(doc.title) <= 3", "create": "true"}}),
    )
    .await;
    let alice = user_session(&s, "default", "alice@example.com").await;
    let bob = user_session(&s, "default", "bob@example.com").await;
    let (a_tok, a_id) =
        (alice["access_token"].as_str().unwrap(), alice["user"]["id"].as_str().unwrap());
    let (b_tok, b_id) =
        (bob["access_token"].as_str().unwrap(), bob["user"]["id"].as_str().unwrap());
    let base = docs("default", "posts");
    let as_user =
        |m: Method, path: String, tok: &str| s.client.request(m, s.url(&path)).bearer_auth(tok);

    let mut alices = Vec::new();
    for i in 0..5 {
        let r = as_user(Method::POST, base.clone(), a_tok)
            .json(&json!({"owner": a_id, "n": i, "public": i == 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        alices.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
        let r = as_user(Method::POST, base.clone(), b_tok)
            .json(&json!({"owner": b_id, "n": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Creating for someone else, anonymously, or updating another's document is denied.
    let r = as_user(Method::POST, base.clone(), b_tok)
        .json(&json!({"owner": a_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
    assert_eq!(
        error_code(s.client.post(s.url(&base)).json(&json!({"owner": null})).send().await.unwrap())
            .await
            .0,
        403
    );
    let r = as_user(Method::PATCH, format!("{base}/{}", alices[1]), b_tok)
        .json(&json!({"owner": b_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 403);
    // No delete rule: end users may not delete.
    let r = as_user(Method::DELETE, format!("{base}/{}", alices[1]), a_tok).send().await.unwrap();
    assert_eq!(error_code(r).await.0, 403);

    // Lists: each sees only their own, across pages (the rule runs inside the query).
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "2".to_string())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Value = as_user(Method::GET, base.clone(), a_tok)
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for d in page["documents"].as_array().unwrap() {
            assert_eq!(d["data"]["owner"], a_id);
            seen.push(d["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, alices);
    let page: Value = s.client.get(s.url(&base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["documents"].as_array().unwrap().len(), 0, "anonymous saw documents");
    let page: Value = as_user(Method::GET, base.clone(), b_tok)
        .query(&[("filter", "doc.n >= 3"), ("count", "true")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["count"], 2);
    // The service role bypasses rules.
    let page: Value = admin(&s, Method::GET, &base)
        .query(&[("count", "true")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["count"], 10);

    // Gets: a public document for anyone, a private one only for its owner.
    assert_eq!(
        s.client.get(s.url(&format!("{base}/{}", alices[0]))).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        as_user(Method::GET, format!("{base}/{}", alices[1]), b_tok).send().await.unwrap().status(),
        403
    );
    assert_eq!(
        as_user(Method::GET, format!("{base}/{}", alices[1]), a_tok).send().await.unwrap().status(),
        200
    );

    // A rule checked in Rust: pages stay correct and complete.
    let notes = docs("default", "notes");
    let titles = ["a", "long title", "bb", "also long", "ccc", "xxxxx", "d", "eeee", "f"];
    for (i, t) in titles.iter().enumerate() {
        let r = admin(&s, Method::PUT, &format!("{notes}/n{i}"))
            .json(&json!({"title": t}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "2".to_string())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Value = as_user(Method::GET, notes.clone(), a_tok)
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        got.extend(
            page["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["data"]["title"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(got, ["a", "bb", "ccc", "d", "f"]);
    s.stop().await;
}

#[tokio::test]
async fn hostile_filters_and_documents_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.documents.max_document_bytes = 4096;
    let s = TestServer::start_with(config).await;
    collection(&s, "default", json!({"name": "t", "schema": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 20}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["title"]
    }})).await;
    let base = docs("default", "t");
    let ok = admin(&s, Method::POST, &base)
        .json(&json!({"title": "fine", "tags": ["a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);

    let mut deep = json!({"title": "deep"});
    for _ in 0..40 {
        deep = json!({"title": "x", "a": deep});
    }
    let bodies: Vec<(&str, String, u16, &str)> = vec![
        ("malformed", "{\"title\": ".into(), 400, "invalid_json"),
        ("not an object", "[1, 2]".into(), 400, "invalid_document"),
        ("too deep", deep.to_string(), 400, "too_deep"),
        (
            "too large",
            json!({"title": "x", "pad": "y".repeat(5000)}).to_string(),
            413,
            "payload_too_large",
        ),
        (
            "schema: wrong type",
            json!({"title": "ok", "tags": ["a", 5]}).to_string(),
            400,
            "schema_violation",
        ),
        ("schema: missing", json!({"tags": []}).to_string(), 400, "schema_violation"),
    ];
    for (what, body, status, code) in bodies {
        let r = admin(&s, Method::POST, &base)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!((got, v["error"]["code"].as_str().unwrap()), (status, code), "{what}: {v}");
        if what == "schema: wrong type" {
            assert!(v["error"]["message"].as_str().unwrap().contains("/tags/1"), "{v}");
        }
    }

    // (what, query parameters, status, error code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let queries: Vec<Case> = vec![
        ("syntax", vec![("filter", "doc.title ==")], 400, "invalid_filter"),
        ("unknown operator", vec![("filter", "doc.title === \"a\"")], 400, "invalid_filter"),
        ("unknown variable", vec![("filter", "users.title == 1")], 400, "invalid_filter"),
        ("unknown function", vec![("filter", "drop(doc.title)")], 400, "invalid_filter"),
        ("ordering a bool", vec![("filter", "doc.title < true")], 400, "invalid_filter"),
        ("two fields", vec![("filter", "doc.a == doc.b")], 400, "invalid_filter"),
        ("bad path", vec![("filter", "doc[\"a'b\"] == 1")], 400, "invalid_filter"),
        ("bad sort", vec![("sort", "title; DROP TABLE documents")], 400, "invalid_sort"),
        ("bad cursor", vec![("cursor", "bm9wZQ")], 400, "invalid_cursor"),
        ("limit 0", vec![("limit", "0")], 400, "invalid_limit"),
        ("limit huge", vec![("limit", "100000")], 400, "invalid_limit"),
        ("limit text", vec![("limit", "ten")], 400, "invalid_query"),
    ];
    for (what, q, status, code) in queries {
        let r = admin(&s, Method::GET, &base).query(&q).send().await.unwrap();
        assert_eq!(error_code(r).await, (status, code.to_string()), "{what}");
    }
    // Quotes in values are values: nothing breaks out of its parameter.
    let r = admin(&s, Method::GET, &base)
        .query(&[("filter", "doc.title == \"x'); DROP TABLE documents; --\"")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["documents"].as_array().unwrap().len(), 0);
    let r = admin(&s, Method::GET, &base).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["documents"].as_array().unwrap().len(), 1);

    assert_eq!(
        error_code(admin(&s, Method::GET, &docs("default", "nope")).send().await.unwrap()).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(admin(&s, Method::GET, &format!("{base}/a.b")).send().await.unwrap()).await,
        (400, "invalid_id".into())
    );
    assert_eq!(
        error_code(
            admin(&s, Method::PUT, &format!("{base}/x"))
                .header("if-match", "soon")
                .json(&json!({"title": "t"}))
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        400
    );
    // Collection definitions are checked when saved.
    for bad in [
        json!({"name": "Bad Name"}),
        json!({"name": "r", "rules": {"list": "doc.owner =="}}),
        json!({"name": "r", "rules": {"lsit": "true"}}),
        json!({"name": "r", "schema": {"type": 12}}),
        json!({"name": "r", "indexes": [{"name": "i", "fields": ["a;b"]}]}),
    ] {
        let r = s.api(Method::POST, "/v1/collections").json(&bad).send().await.unwrap();
        assert_eq!(error_code(r).await.0, 400, "{bad}");
    }
    // Management needs the admin token or a service key.
    let r =
        s.client.post(s.url("/v1/collections")).json(&json!({"name": "x"})).send().await.unwrap();
    assert_eq!(error_code(r).await.0, 401);
    s.stop().await;
}

#[tokio::test]
async fn deleting_a_project_deletes_its_collections() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    s.create_project("acme").await;
    collection(&s, "acme", json!({"name": "c"})).await;
    collection(&s, "default", json!({"name": "c"})).await;
    let r =
        admin(&s, Method::POST, &docs("acme", "c")).json(&json!({"v": 1})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = s.api(Method::DELETE, "/v1/projects/acme").send().await.unwrap();
    assert_eq!(r.status(), 204);
    s.create_project("acme").await;
    let r = s
        .api(Method::GET, "/v1/collections")
        .header("x-nimbus-project", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["collections"], json!([]));
    let r = s.api(Method::GET, "/v1/collections").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["collections"].as_array().unwrap().len(), 1);
    s.stop().await;
}
