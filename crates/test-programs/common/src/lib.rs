//! Small helpers shared by the test guests.
//!
//! Everything here is a thin layer over the raw `wasi:http@0.2` bindings from
//! the `wasi` crate; the guests stay close to the WIT API on purpose so they
//! exercise exactly what a host sees from any other guest toolchain.

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

pub use wasi;

/// `wasi:io/streams` `blocking-write-and-flush` accepts at most this many bytes per call.
pub const MAX_BLOCKING_WRITE: usize = 4096;

/// Builds a `Fields` from `(name, value)` pairs. Panics on an invalid or
/// forbidden header, which is a bug in the guest.
pub fn fields(headers: &[(&str, &str)]) -> Fields {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    Fields::from_list(&entries).expect("invalid response header")
}

/// Sends a complete response with a fixed body. Sets `content-length`.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let len = body.len().to_string();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("content-length", &len));
    let (body_res, stream) = start_response(out, status, fields(&all));
    write_all(&stream, body).expect("writing response body");
    finish(body_res, stream);
}

/// Sends a `text/plain` response.
pub fn respond_text(out: ResponseOutparam, status: u16, body: &str) {
    respond(
        out,
        status,
        &[("content-type", "text/plain; charset=utf-8")],
        body.as_bytes(),
    );
}

/// Sets the response head (status + headers) and returns its body and the
/// body's output stream, so the caller can stream the body.
pub fn start_response(
    out: ResponseOutparam,
    status: u16,
    headers: Fields,
) -> (OutgoingBody, OutputStream) {
    let resp = OutgoingResponse::new(headers);
    resp.set_status_code(status).expect("invalid status code");
    let body = resp.body().expect("response body already taken");
    ResponseOutparam::set(out, Ok(resp));
    let stream = body.write().expect("response body stream already taken");
    (body, stream)
}

/// Closes a streamed body: drops the stream (a child resource of the body)
/// first, then finishes the body.
pub fn finish(body: OutgoingBody, stream: OutputStream) {
    drop(stream);
    OutgoingBody::finish(body, None).expect("finishing response body");
}

/// Writes all of `data`, at most [`MAX_BLOCKING_WRITE`] bytes per call,
/// flushing each piece.
pub fn write_all(stream: &OutputStream, data: &[u8]) -> Result<(), StreamError> {
    for piece in data.chunks(MAX_BLOCKING_WRITE) {
        stream.blocking_write_and_flush(piece)?;
    }
    Ok(())
}

/// Takes the request body and its input stream.
pub fn request_body(req: &IncomingRequest) -> (IncomingBody, InputStream) {
    let body = req.consume().expect("request body already consumed");
    let stream = body.stream().expect("request body stream already taken");
    (body, stream)
}

/// Reads the whole request body into memory.
pub fn read_body(req: &IncomingRequest) -> Result<Vec<u8>, String> {
    let (body, stream) = request_body(req);
    let mut buf = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => buf.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(buf)
}

/// The method as it appears on the wire (`GET`, `POST`, ...).
pub fn method_str(m: &Method) -> &str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(s) => s,
    }
}

/// The raw query string of a request (the part after `?`), if any.
pub fn query(req: &IncomingRequest) -> Option<String> {
    let pwq = req.path_with_query()?;
    pwq.split_once('?').map(|(_, q)| q.to_string())
}

/// Looks up `key` in a request's query string and percent-decodes its value.
/// (`+` is left as is, so URLs passed unencoded survive.)
pub fn query_param(req: &IncomingRequest, key: &str) -> Option<String> {
    let q = query(req)?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

/// Looks up a numeric query parameter, falling back to `default` when it is
/// missing or not a number.
pub fn query_u64(req: &IncomingRequest, key: &str, default: u64) -> u64 {
    query_param(req, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Decodes `%XX` escapes; invalid escapes are kept verbatim.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes a string as a JSON string literal (including the quotes).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
