//! `panic`: panics with "guest panicked on purpose". On wasm the panic message
//! goes to stderr and then the guest aborts (traps).

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Panic;

impl wasi::exports::http::incoming_handler::Guest for Panic {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        panic!("guest panicked on purpose");
    }
}

wasi::http::proxy::export!(Panic);
