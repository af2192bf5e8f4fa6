//! `hello`: answers every request with 200 `text/plain` "Hello from Nimbus!\n".

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        guest_common::respond_text(out, 200, "Hello from Nimbus!\n");
    }
}

wasi::http::proxy::export!(Hello);
