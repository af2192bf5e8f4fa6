//! `trap`: executes the wasm `unreachable` instruction, i.e. traps immediately
//! without responding.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl wasi::exports::http::incoming_handler::Guest for Trap {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        core::arch::wasm32::unreachable()
    }
}

wasi::http::proxy::export!(Trap);
