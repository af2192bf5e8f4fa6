//! `spin`: burns CPU forever and never responds. Used to test that the host's
//! timeout (epoch interruption / fuel) stops a runaway guest. With
//! `?iterations=N` it loops N times, then answers 200 with N: a known amount of
//! CPU, to compare with what a loop stopped by its timeout is billed.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl wasi::exports::http::incoming_handler::Guest for Spin {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let limit = guest_common::query_param(&request, "iterations")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        let mut i: u64 = 0;
        while i < limit {
            // `black_box` keeps the optimiser from proving the loop side-effect free.
            i = std::hint::black_box(i.wrapping_add(1));
        }
        guest_common::respond_text(out, 200, &format!("{i}\n"));
    }
}

wasi::http::proxy::export!(Spin);
