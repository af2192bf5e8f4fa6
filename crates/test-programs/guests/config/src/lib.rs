//! `config`: reads runtime config through `wasi:config/store` and answers JSON:
//! `{"value": <get(?key=...)>, "keys": [<get-all keys, sorted>]}`, with `null` for a missing key.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "guest", generate_all });
}

use bindings::wasi::config::store;

struct Config;

impl wasi::exports::http::incoming_handler::Guest for Config {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let key = path.split_once("?key=").map(|(_, k)| k).unwrap_or_default();
        let value = match store::get(key) {
            Ok(Some(v)) => guest_common::json_string(&v),
            Ok(None) => "null".to_string(),
            Err(e) => return guest_common::respond_text(out, 500, &format!("{e:?}")),
        };
        let mut keys: Vec<String> = match store::get_all() {
            Ok(all) => all.into_iter().map(|(k, _)| k).collect(),
            Err(e) => return guest_common::respond_text(out, 500, &format!("{e:?}")),
        };
        keys.sort();
        let keys: Vec<String> = keys.iter().map(|k| guest_common::json_string(k)).collect();
        let json = format!("{{\"value\":{value},\"keys\":[{}]}}", keys.join(","));
        guest_common::respond(out, 200, &[("content-type", "application/json")], json.as_bytes());
    }
}

wasi::http::proxy::export!(Config);
