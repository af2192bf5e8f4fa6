//! A todo list kept in the project's document database, with a counter in its key-value store.
//!
//! * `GET    /todos`           → 200 `{"todos": [...]}`, newest first (`?done=true|false` filters);
//! * `POST   /todos`           → body `{"title": "..."}` → 201 with the new todo;
//! * `PATCH  /todos/{id}`      → body a JSON merge patch (`{"done": true}`) → 200, or 404;
//! * `DELETE /todos/{id}`      → 204, or 404;
//! * `GET    /todos/stats`     → 200 `{"created": N}`, todos ever created (a KV counter).
//!
//! The function creates its collection (with an index for the list query) on first use. It acts
//! as its project's service role through `nimbus_sdk::Client::from_env()`.

use nimbus_sdk::http::{read_request_body, respond, respond_json};
use nimbus_sdk::{Client, Error, Query};
use serde_json::{Value, json};
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

const COLLECTION: &str = "todos";

struct Todos;

fn todo(d: &nimbus_sdk::Document) -> Value {
    json!({"id": d.id, "title": d.data["title"], "done": d.data["done"], "created_at": d.created_at})
}

/// Create the collection with its index unless it exists (409 means another request did).
fn ensure_collection(nimbus: &Client) -> Result<(), Error> {
    let body = json!({"name": COLLECTION, "indexes": [{"name": "by_done", "fields": ["done"]}]});
    let r = nimbus.request(
        "POST",
        "/v1/collections",
        &[("content-type", "application/json")],
        Some(body.to_string().as_bytes()),
    )?;
    match r.status {
        201 | 409 => Ok(()),
        _ => r.error_for_status(),
    }
}

fn route(request: &IncomingRequest) -> Result<(u16, Value), Error> {
    let nimbus = Client::from_env()?;
    let path_q = request.path_with_query().unwrap_or_default();
    let (path, query) = path_q.split_once('?').unwrap_or((&path_q, ""));
    let todos = nimbus.collection(COLLECTION);
    let id = path.strip_prefix("/todos/").filter(|s| !s.is_empty() && *s != "stats");
    let method = request.method();
    match (&method, path, id) {
        (Method::Get, "/todos", _) => {
            ensure_collection(&nimbus)?;
            let mut q = Query::default().sort("-$created").limit(100);
            for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                if k == "done" && (v == "true" || v == "false") {
                    q = q.filter(&format!("doc.done == {v}"));
                }
            }
            let page = todos.list(&q)?;
            Ok((200, json!({"todos": page.documents.iter().map(todo).collect::<Vec<_>>()})))
        }
        (Method::Post, "/todos", _) => {
            let body = read_request_body(request, 16 << 10)?;
            let title = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["title"].as_str().map(str::to_string))
                .filter(|t| !t.trim().is_empty());
            let Some(title) = title else {
                return Ok((400, json!({"error": "send {\"title\": \"...\"}"})));
            };
            ensure_collection(&nimbus)?;
            let created = todos.create(&json!({"title": title, "done": false}))?;
            nimbus.kv("stats").increment("created", 1)?;
            Ok((201, todo(&created)))
        }
        (Method::Get, "/todos/stats", _) => {
            let created = nimbus.kv("stats").get("created")?;
            let n: i64 = created
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Ok((200, json!({"created": n})))
        }
        (Method::Patch, _, Some(id)) => {
            let body = read_request_body(request, 16 << 10)?;
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return Ok((400, json!({"error": "the body must be a JSON merge patch"})));
            };
            match todos.patch(id, &patch) {
                Ok(d) => Ok((200, todo(&d))),
                Err(Error::Api { status: 404, .. }) => Ok((404, json!({"error": "no such todo"}))),
                Err(Error::Api { status: 400, message, .. }) => {
                    Ok((400, json!({"error": message})))
                }
                Err(e) => Err(e),
            }
        }
        (Method::Delete, _, Some(id)) => match todos.delete(id)? {
            true => Ok((204, Value::Null)),
            false => Ok((404, json!({"error": "no such todo"}))),
        },
        _ => Ok((404, json!({"error": "no such route"}))),
    }
}

impl wasi::exports::http::incoming_handler::Guest for Todos {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match route(&request) {
            Ok((204, _)) => respond(out, 204, &[], b""),
            Ok((status, body)) => respond_json(out, status, &body),
            Err(e) => respond_json(out, 502, &json!({"error": e.to_string()})),
        }
    }
}

wasi::http::proxy::export!(Todos);
