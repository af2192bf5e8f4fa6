//! `echo`: streams the request body back chunk by chunk as it is read (never
//! buffering the whole body), and reflects the request head:
//!
//! * every request header `name: value` comes back as `x-echo-name: value`;
//! * `x-method`: the request method;
//! * `x-path-with-query`: the request's `path_with_query`, exactly as received;
//! * `x-authority`: the request's authority (omitted when there is none).
//!
//! `content-type` is copied from the request (default `application/octet-stream`).

use guest_common::wasi;
use wasi::http::types::{Fields, IncomingBody, IncomingRequest, ResponseOutparam};
use wasi::io::streams::StreamError;

struct Echo;

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        let mut content_type = b"application/octet-stream".to_vec();
        for (name, value) in request.headers().entries() {
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value.clone();
            }
            headers.push((format!("x-echo-{name}"), value));
        }
        headers.push(("content-type".into(), content_type));
        headers.push((
            "x-method".into(),
            guest_common::method_str(&request.method())
                .as_bytes()
                .to_vec(),
        ));
        if let Some(pwq) = request.path_with_query() {
            headers.push(("x-path-with-query".into(), pwq.into_bytes()));
        }
        if let Some(authority) = request.authority() {
            headers.push(("x-authority".into(), authority.into_bytes()));
        }
        let headers = Fields::from_list(&headers).expect("invalid echoed header");

        // Send the head first, then pump the body through.
        let (in_body, input) = guest_common::request_body(&request);
        let (out_body, output) = guest_common::start_response(out, 200, headers);
        loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    if guest_common::write_all(&output, &chunk).is_err() {
                        // The client went away; nothing more to do.
                        return;
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    eprintln!("echo: reading request body failed: {}", e.to_debug_string());
                    return;
                }
            }
        }
        drop(input);
        drop(IncomingBody::finish(in_body));
        guest_common::finish(out_body, output);
    }
}

wasi::http::proxy::export!(Echo);
