//! `env`: responds with a JSON object of all environment variables the guest
//! sees (`std::env::vars()`), keys sorted.
//!
//! Note: reading the environment imports `wasi:cli/environment`, which is not
//! part of the strict `wasi:http/proxy` world; the host must provide it.

use std::collections::BTreeMap;

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Env;

impl wasi::exports::http::incoming_handler::Guest for Env {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        let mut json = String::from("{");
        for (i, (k, v)) in vars.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&guest_common::json_string(k));
            json.push(':');
            json.push_str(&guest_common::json_string(v));
        }
        json.push('}');
        guest_common::respond(
            out,
            200,
            &[("content-type", "application/json")],
            json.as_bytes(),
        );
    }
}

wasi::http::proxy::export!(Env);
