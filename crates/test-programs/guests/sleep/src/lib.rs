//! `sleep`: `?ms=N` (default 1000) blocks on a monotonic-clock pollable for N
//! milliseconds, then responds 200 "slept". The guest is idle in a host call
//! meanwhile (tests timeouts and concurrency without burning CPU).

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Sleep;

impl wasi::exports::http::incoming_handler::Guest for Sleep {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let ms = guest_common::query_u64(&request, "ms", 1000);
        wasi::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
        guest_common::respond_text(out, 200, "slept");
    }
}

wasi::http::proxy::export!(Sleep);
