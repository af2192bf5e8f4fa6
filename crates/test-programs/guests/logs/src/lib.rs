//! `logs`: prints "hello stdout" to stdout and "hello stderr" to stderr, then
//! responds 200 "logged\n".

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Logs;

impl wasi::exports::http::incoming_handler::Guest for Logs {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        println!("hello stdout");
        eprintln!("hello stderr");
        guest_common::respond_text(out, 200, "logged\n");
    }
}

wasi::http::proxy::export!(Logs);
