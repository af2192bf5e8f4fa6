//! `spin`: burns CPU forever and never responds. Used to test that the host's
//! timeout (epoch interruption / fuel) stops a runaway guest.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl wasi::exports::http::incoming_handler::Guest for Spin {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        let mut i: u64 = 0;
        loop {
            // `black_box` keeps the optimiser from proving the loop side-effect free.
            i = std::hint::black_box(i.wrapping_add(1));
        }
    }
}

wasi::http::proxy::export!(Spin);
