//! A tiny JSON API, to show request routing, body parsing and error handling
//! in a Nimbus function:
//!
//! * `GET  /api/items`      → 200, the fixed list of items;
//! * `GET  /api/items/{id}` → 200 with that item, or 404;
//! * `POST /api/items`      → body `{"name": "..."}` → 201 with `{"id": .., "name": ..}`,
//!   400 `{"error": ..}` on malformed JSON or an empty name, 413 if the body
//!   is over 64 KiB;
//! * any other method on those paths → 405 (with `allow`), any other path → 404.
//!
//! Nimbus runs every request in a fresh instance, so nothing is stored: a
//! POST answers with the item it *would* create (the next free id).

use serde::{Deserialize, Serialize};
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

#[derive(Serialize)]
struct Item {
    id: u32,
    name: String,
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
}

const ITEMS: [(u32, &str); 3] = [(1, "apple"), (2, "banana"), (3, "cherry")];
const MAX_BODY: usize = 64 * 1024;

fn items() -> Vec<Item> {
    ITEMS.iter().map(|&(id, name)| Item { id, name: name.to_string() }).collect()
}

/// A response to send: status, extra headers, JSON body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Reply {
    fn json(status: u16, body: impl Serialize) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: serde_json::to_value(body).expect("serializable"),
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        Reply::json(status, serde_json::json!({ "error": message.into() }))
    }

    fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

enum BodyError {
    TooLarge,
    Io(String),
}

/// Reads the request body, refusing more than `MAX_BODY` bytes.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, BodyError> {
    let body = request.consume().map_err(|()| BodyError::Io("body already read".into()))?;
    let stream = body.stream().map_err(|()| BodyError::Io("body already read".into()))?;
    let mut buf = Vec::new();
    loop {
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > MAX_BODY {
                    return Err(BodyError::TooLarge);
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(BodyError::Io(e.to_debug_string()));
            }
        }
    }
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(buf)
}

fn create_item(request: &IncomingRequest) -> Reply {
    let body = match read_body(request) {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return Reply::error(413, format!("body larger than {MAX_BODY} bytes"));
        }
        Err(BodyError::Io(e)) => return Reply::error(400, format!("cannot read body: {e}")),
    };
    let new: NewItem = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => return Reply::error(400, format!("invalid JSON body: {e}")),
    };
    let name = new.name.trim();
    if name.is_empty() {
        return Reply::error(400, "name must not be empty");
    }
    let id = ITEMS.len() as u32 + 1;
    Reply::json(201, Item { id, name: name.to_string() })
        .with_header("location", format!("/api/items/{id}"))
}

fn route(request: &IncomingRequest) -> Reply {
    let path_with_query = request.path_with_query().unwrap_or_default();
    let path = path_with_query.split('?').next().unwrap_or("");
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let method = request.method();

    if path == "/api/items" {
        return match method {
            Method::Get => Reply::json(200, items()),
            Method::Post => create_item(request),
            _ => Reply::error(405, "method not allowed").with_header("allow", "GET, POST"),
        };
    }
    if let Some(id) = path.strip_prefix("/api/items/") {
        if !matches!(method, Method::Get) {
            return Reply::error(405, "method not allowed").with_header("allow", "GET");
        }
        return match items().into_iter().find(|item| id.parse() == Ok(item.id)) {
            Some(item) => Reply::json(200, item),
            None => Reply::error(404, format!("no item with id {id:?}")),
        };
    }
    Reply::error(404, format!("no route for {path:?}"))
}

fn send(reply: Reply, response_out: ResponseOutparam) {
    let body = serde_json::to_vec(&reply.body).expect("serializable");
    let mut headers = vec![
        ("content-type".to_string(), b"application/json".to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ];
    headers.extend(reply.headers.into_iter().map(|(k, v)| (k, v.into_bytes())));
    let response = OutgoingResponse::new(Fields::from_list(&headers).unwrap());
    response.set_status_code(reply.status).unwrap();
    let response_body = response.body().unwrap();
    ResponseOutparam::set(response_out, Ok(response));
    let stream = response_body.write().unwrap();
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).unwrap();
    }
    drop(stream);
    OutgoingBody::finish(response_body, None).unwrap();
}

struct JsonApi;

impl wasi::exports::http::incoming_handler::Guest for JsonApi {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let reply = route(&request);
        send(reply, response_out);
    }
}

wasi::http::proxy::export!(JsonApi);
