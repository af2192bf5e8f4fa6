//! `events`: the subscriber of event-trigger tests. It prints what it received as one JSON line
//! on stdout (so the invocation record holds it: `{"method","path","headers":{...},"body"}`) and
//! answers with the request body, status 200, unless told otherwise by its env. The line also
//! carries `started_us`, the wall clock when the handler started (microseconds since the epoch),
//! from which `bench/triggers.py` measures the latency from a change to its function's start.
//! Its env:
//!
//! * `FAIL_ATTEMPTS=n`: answer 500 while `x-nimbus-delivery-attempt` is at most `n`;
//! * `STATUS=s`: answer `s` (after the failures above);
//! * `SLEEP_MS=ms`: wait this long (in the guest) before answering.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Events;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

impl wasi::exports::http::incoming_handler::Guest for Events {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let now = wasi::clocks::wall_clock::now();
        let started_us = now.seconds * 1_000_000 + u64::from(now.nanoseconds / 1_000);
        let mut headers = String::from("{");
        let mut attempt = 0;
        for (i, (name, value)) in request.headers().entries().into_iter().enumerate() {
            let value = String::from_utf8_lossy(&value).into_owned();
            if name == "x-nimbus-delivery-attempt" {
                attempt = value.parse().unwrap_or(0);
            }
            if i > 0 {
                headers.push(',');
            }
            headers.push_str(&guest_common::json_string(&name));
            headers.push(':');
            headers.push_str(&guest_common::json_string(&value));
        }
        headers.push('}');
        let method = guest_common::method_str(&request.method()).to_owned();
        let path = request.path_with_query().unwrap_or_default();
        let body = guest_common::read_body(&request).unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        println!(
            "{{\"started_us\":{started_us},\"method\":{},\"path\":{},\"headers\":{headers},\"body\":{}}}",
            guest_common::json_string(&method),
            guest_common::json_string(&path),
            guest_common::json_string(&text)
        );
        if let Some(ms) = env_u64("SLEEP_MS") {
            wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
        }
        let status = if env_u64("FAIL_ATTEMPTS").is_some_and(|n| attempt <= n) {
            500
        } else {
            env_u64("STATUS").unwrap_or(200) as u16
        };
        guest_common::respond(out, status, &[("content-type", "text/plain")], &body);
    }
}

wasi::http::proxy::export!(Events);
