//! Echo function: streams the request body straight back, chunk by chunk as
//! it arrives (the body is never buffered whole, so it works for uploads of
//! any size), and reflects the request head in response headers:
//!
//! * each request header `name` comes back as `x-echo-name`;
//! * `x-method`, `x-path-with-query` and `x-authority` describe the request.

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

struct Echo;

/// `blocking-write-and-flush` takes at most 4096 bytes per call.
fn write_all(out: &OutputStream, mut data: &[u8]) -> Result<(), StreamError> {
    while !data.is_empty() {
        let n = data.len().min(4096);
        out.blocking_write_and_flush(&data[..n])?;
        data = &data[n..];
    }
    Ok(())
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Response head: the request's headers, prefixed, plus a summary.
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        let mut content_type = b"application/octet-stream".to_vec();
        for (name, value) in request.headers().entries() {
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value.clone();
            }
            headers.push((format!("x-echo-{name}"), value));
        }
        headers.push(("content-type".into(), content_type));
        headers.push(("x-method".into(), method_name(&request.method()).into()));
        if let Some(path) = request.path_with_query() {
            headers.push(("x-path-with-query".into(), path.into_bytes()));
        }
        if let Some(authority) = request.authority() {
            headers.push(("x-authority".into(), authority.into_bytes()));
        }
        let response = OutgoingResponse::new(Fields::from_list(&headers).unwrap());
        let response_body = response.body().unwrap();
        ResponseOutparam::set(response_out, Ok(response));

        // Pump the body through, one chunk at a time.
        let request_body = request.consume().unwrap();
        let input = request_body.stream().unwrap();
        let output = response_body.write().unwrap();
        loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    if write_all(&output, &chunk).is_err() {
                        return; // the client went away
                    }
                }
                Err(StreamError::Closed) => break, // end of the request body
                Err(StreamError::LastOperationFailed(e)) => {
                    eprintln!("reading the request body failed: {}", e.to_debug_string());
                    return;
                }
            }
        }
        drop(input);
        drop(IncomingBody::finish(request_body));
        drop(output);
        OutgoingBody::finish(response_body, None).unwrap();
    }
}

wasi::http::proxy::export!(Echo);
