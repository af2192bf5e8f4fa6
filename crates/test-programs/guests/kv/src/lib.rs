//! `kv`: reads and writes the project's key-value store through `wasi:keyvalue@0.2.0-draft`.
//!
//! Every path takes `?bucket=` (default: the empty identifier, the default bucket):
//! - `/get?key=k` → 200 with the value, 404 if absent
//! - `/set?key=k&value=v` → 204
//! - `/delete?key=k` → 204
//! - `/exists?key=k` → `true` / `false`
//! - `/incr?key=k&delta=n` → the new value (delta default 1)
//! - `/list` → every key, one per line, following `list-keys` cursors to the end
//! - `/many?keys=a,b,c` → `get-many`: one line per key, `key=value` or `key!` if absent
//! - `/set-many?pairs=a:1,b:2` → `set-many`, 204
//! - `/delete-many?keys=a,b` → `delete-many`, 204
//!
//! A `wasi:keyvalue` error answers 500 with its `Debug` text (e.g. `Error::NoSuchStore`).

use guest_common::{query_param, query_u64, respond, respond_text, wasi};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "guest", generate_all });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

struct Kv;

fn run(request: &IncomingRequest) -> Result<(u16, Vec<u8>), store::Error> {
    let path = request.path_with_query().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_string();
    let bucket = store::open(&query_param(request, "bucket").unwrap_or_default())?;
    let key = || query_param(request, "key").unwrap_or_default();
    let list = |name: &str| -> Vec<String> {
        query_param(request, name)
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    Ok(match path.as_str() {
        "/get" => match bucket.get(&key())? {
            Some(v) => (200, v),
            None => (404, b"absent".to_vec()),
        },
        "/set" => {
            let value = query_param(request, "value").unwrap_or_default();
            bucket.set(&key(), value.as_bytes())?;
            (204, Vec::new())
        }
        "/delete" => {
            bucket.delete(&key())?;
            (204, Vec::new())
        }
        "/exists" => (200, bucket.exists(&key())?.to_string().into_bytes()),
        "/incr" => {
            let n = atomics::increment(&bucket, &key(), query_u64(request, "delta", 1))?;
            (200, n.to_string().into_bytes())
        }
        "/list" => {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = bucket.list_keys(cursor)?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            (200, keys.join("\n").into_bytes())
        }
        "/many" => {
            let keys = list("keys");
            let values = batch::get_many(&bucket, &keys)?;
            let lines: Vec<String> = keys
                .iter()
                .zip(values)
                .map(|(k, v)| match v {
                    Some((_, v)) => format!("{k}={}", String::from_utf8_lossy(&v)),
                    None => format!("{k}!"),
                })
                .collect();
            (200, lines.join("\n").into_bytes())
        }
        "/set-many" => {
            let pairs: Vec<(String, Vec<u8>)> = list("pairs")
                .into_iter()
                .map(|p| {
                    let (k, v) = p.split_once(':').unwrap_or((&p, ""));
                    (k.to_string(), v.as_bytes().to_vec())
                })
                .collect();
            batch::set_many(&bucket, &pairs)?;
            (204, Vec::new())
        }
        "/delete-many" => {
            batch::delete_many(&bucket, &list("keys"))?;
            (204, Vec::new())
        }
        _ => (404, b"unknown path".to_vec()),
    })
}

impl wasi::exports::http::incoming_handler::Guest for Kv {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match run(&request) {
            Ok((status, body)) => {
                respond(out, status, &[("content-type", "application/octet-stream")], &body)
            }
            Err(e) => respond_text(out, 500, &format!("{e:?}")),
        }
    }
}

wasi::http::proxy::export!(Kv);
