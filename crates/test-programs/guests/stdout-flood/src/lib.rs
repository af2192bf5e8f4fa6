//! `stdout-flood`: writes lines to stdout.
//!
//! * without `?n=`: prints forever and never responds (log-volume limits,
//!   timeouts while the guest is busy in host calls);
//! * with `?n=N`: prints N lines, then responds 200 "done".

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct StdoutFlood;

const LINE: &str = "flooding stdout with a line of log output that is reasonably long";

impl wasi::exports::http::incoming_handler::Guest for StdoutFlood {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match guest_common::query_param(&request, "n").and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => {
                for i in 0..n {
                    println!("{LINE} {i}");
                }
                guest_common::respond_text(out, 200, "done");
            }
            None => {
                let mut i: u64 = 0;
                loop {
                    println!("{LINE} {i}");
                    i = i.wrapping_add(1);
                }
            }
        }
    }
}

wasi::http::proxy::export!(StdoutFlood);
