//! `data`: uses the project's data services through the in-process API and the Rust SDK.
//!
//! * `POST /raw` with `{"method","path","body"?,"auth":"service"|"forward"|"none"|"token:<t>"}`:
//!   one request to `$NIMBUS_API_URL` + path; answers `{"status": N, "body": <JSON or text>}`.
//!   `forward` passes on this request's own `Authorization` header (an end user's token).
//! * `GET /typed?coll=C&bucket=B`: a round trip with the SDK's typed helpers (create, get,
//!   patch, list, delete a document; set, get, increment, delete a KV key); answers what each
//!   step returned, as JSON.
//! * `GET /files?bucket=B`: creates bucket B (service role), then puts, gets, lists, deletes and
//!   gets again the file `dir/hello.txt` with the SDK's file helpers; answers what each returned.
//! * `GET /env`: the in-process variables this invocation got (the token only as its length).

use guest_common::wasi;
use nimbus_sdk::{Client, Query};
use serde_json::{Value, json};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Data;

fn reply(out: ResponseOutparam, status: u16, v: &Value) {
    guest_common::respond(
        out,
        status,
        &[("content-type", "application/json")],
        v.to_string().as_bytes(),
    );
}

fn header(req: &IncomingRequest, name: &str) -> Option<String> {
    req.headers()
        .get(&name.to_string())
        .first()
        .and_then(|v| String::from_utf8(v.clone()).ok())
}

fn raw(req: &IncomingRequest) -> Result<Value, String> {
    let body = guest_common::read_body(req)?;
    let op: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let client = Client::from_env().map_err(|e| e.to_string())?;
    let client = match op["auth"].as_str().unwrap_or("service") {
        "service" => client,
        "none" => client.as_user(None),
        "forward" => {
            let auth = header(req, "authorization");
            client.as_user(auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")))
        }
        other => match other.strip_prefix("token:") {
            Some(t) => client.as_user(Some(t)),
            None => return Err(format!("unknown auth {other}")),
        },
    };
    let payload = match &op["body"] {
        Value::Null => None,
        b => Some(b.to_string().into_bytes()),
    };
    let r = client
        .request(
            op["method"].as_str().unwrap_or("GET"),
            op["path"].as_str().ok_or("path missing")?,
            &[("content-type", "application/json")],
            payload.as_deref(),
        )
        .map_err(|e| e.to_string())?;
    let body = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()));
    Ok(json!({ "status": r.status, "body": body }))
}

fn typed(req: &IncomingRequest) -> Result<Value, nimbus_sdk::Error> {
    let coll = guest_common::query_param(req, "coll").unwrap_or_else(|| "notes".into());
    let bucket = guest_common::query_param(req, "bucket").unwrap_or_else(|| "counters".into());
    let nimbus = Client::from_env()?;
    let notes = nimbus.collection(&coll);
    let created = notes.create(&json!({"title": "from a function", "n": 1}))?;
    let got = notes.get(&created.id)?.expect("just created");
    let patched = notes.patch(&created.id, &json!({"n": 2, "tag": "patched"}))?;
    let page = notes.list(&Query::default().filter("doc.n >= 2").sort("-n").limit(10))?;
    let kv = nimbus.kv(&bucket);
    kv.set("greeting", b"hello", None)?;
    let greeting = kv.get("greeting")?;
    let count = kv.increment("calls", 1)?;
    let deleted_key = kv.delete("greeting")?;
    let missing = kv.get("greeting")?;
    let deleted = notes.delete(&created.id)?;
    let gone = notes.get(&created.id)?;
    Ok(json!({
        "project": nimbus.project(),
        "created": {"id": created.id, "revision": created.revision},
        "got": got.data,
        "patched": {"revision": patched.revision, "data": patched.data},
        "listed": page.documents.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        "greeting": greeting.map(|g| String::from_utf8_lossy(&g).into_owned()),
        "calls": count,
        "deleted_key": deleted_key,
        "missing": missing.is_none(),
        "deleted": deleted,
        "gone": gone.is_none(),
    }))
}

fn files(req: &IncomingRequest) -> Result<Value, nimbus_sdk::Error> {
    let name = guest_common::query_param(req, "bucket").unwrap_or_else(|| "uploads".into());
    let nimbus = Client::from_env()?;
    let created = nimbus.request(
        "POST",
        "/v1/buckets",
        &[("content-type", "application/json")],
        Some(json!({ "name": name }).to_string().as_bytes()),
    )?;
    let bucket = nimbus.bucket(&name);
    let put = bucket.put("dir/hello.txt", b"hello from a function", "text/plain")?;
    let got = bucket.get("dir/hello.txt")?.expect("just stored");
    let page = bucket.list("dir/", None)?;
    let deleted = bucket.delete("dir/hello.txt")?;
    let gone = bucket.get("dir/hello.txt")?;
    Ok(json!({
        "bucket_status": created.status,
        "put": {"key": put.key, "size": put.size, "etag": put.etag},
        "got": {"body": String::from_utf8_lossy(&got.body), "content_type": got.content_type,
                "etag": got.etag},
        "listed": page.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
        "deleted": deleted,
        "gone": gone.is_none(),
    }))
}

impl wasi::exports::http::incoming_handler::Guest for Data {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let path = path.split('?').next().unwrap_or("").to_string();
        match path.as_str() {
            "/raw" => match raw(&request) {
                Ok(v) => reply(out, 200, &v),
                Err(e) => reply(out, 500, &json!({ "error": e })),
            },
            "/typed" => match typed(&request) {
                Ok(v) => reply(out, 200, &v),
                Err(e) => reply(out, 500, &json!({ "error": e.to_string() })),
            },
            "/files" => match files(&request) {
                Ok(v) => reply(out, 200, &v),
                Err(e) => reply(out, 500, &json!({ "error": e.to_string() })),
            },
            "/env" => {
                let var = |k: &str| std::env::var(k).ok();
                reply(
                    out,
                    200,
                    &json!({
                        "url": var("NIMBUS_API_URL"),
                        "project": var("NIMBUS_PROJECT"),
                        "token_len": var("NIMBUS_API_TOKEN").map(|t| t.len()),
                        "token": var("NIMBUS_API_TOKEN"),
                    }),
                );
            }
            _ => guest_common::respond_text(out, 404, "no such path"),
        }
    }
}

wasi::http::proxy::export!(Data);
