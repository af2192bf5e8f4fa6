//! `trap`: executes the wasm `unreachable` instruction, i.e. traps immediately
//! without responding.
//!
//! With `?partial=N` it first sends a 200 head (no `content-length`, so the
//! body is chunked on HTTP/1.1) and N bytes of body, waits `wait_ms` (default
//! 0), then traps; with
//! `&then=spin` it loops instead of trapping, until the host's timeout stops
//! it. Either way the body is never finished: the client must be able to tell
//! the response is truncated.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl wasi::exports::http::incoming_handler::Guest for Trap {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if let Some(n) = guest_common::query_param(&request, "partial") {
            let n: usize = n.parse().unwrap_or(1024);
            let headers =
                guest_common::fields(&[("content-type", "application/octet-stream")]);
            let (_body, stream) = guest_common::start_response(out, 200, headers);
            let _ = guest_common::write_all(&stream, &vec![b'x'; n]);
            // `&wait_ms=M`: give the host time to send what was written before failing.
            let wait_ms = guest_common::query_u64(&request, "wait_ms", 0);
            if wait_ms > 0 {
                wasi::clocks::monotonic_clock::subscribe_duration(wait_ms * 1_000_000).block();
            }
            if guest_common::query_param(&request, "then").as_deref() == Some("spin") {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
        }
        core::arch::wasm32::unreachable()
    }
}

wasi::http::proxy::export!(Trap);
