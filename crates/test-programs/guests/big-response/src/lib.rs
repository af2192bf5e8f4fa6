//! `big-response`: `?mib=N` (default 8) streams N MiB of `x` bytes in 64 KiB
//! chunks, with `content-length` set. Tests streaming/back-pressure of large
//! response bodies.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct BigResponse;

const CHUNK: usize = 64 * 1024;

impl wasi::exports::http::incoming_handler::Guest for BigResponse {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let mib = guest_common::query_u64(&request, "mib", 8);
        let total = mib * 1024 * 1024;
        let len = total.to_string();
        let headers = guest_common::fields(&[
            ("content-type", "application/octet-stream"),
            ("content-length", &len),
        ]);
        let (body, stream) = guest_common::start_response(out, 200, headers);
        let chunk = vec![b'x'; CHUNK];
        let mut sent: u64 = 0;
        while sent < total {
            let n = (total - sent).min(CHUNK as u64) as usize;
            if guest_common::write_all(&stream, &chunk[..n]).is_err() {
                return; // client went away
            }
            sent += n as u64;
        }
        guest_common::finish(body, stream);
    }
}

wasi::http::proxy::export!(BigResponse);
