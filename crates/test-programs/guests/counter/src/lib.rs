//! `counter`: increments a global counter on every request and answers with
//! its new value. A host that gives every request a fresh instance makes this
//! answer "1" every time; a host that reuses instances would count up.

use core::sync::atomic::{AtomicU32, Ordering};

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

static COUNT: AtomicU32 = AtomicU32::new(0);

struct Counter;

impl wasi::exports::http::incoming_handler::Guest for Counter {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        guest_common::respond_text(out, 200, &n.to_string());
    }
}

wasi::http::proxy::export!(Counter);
