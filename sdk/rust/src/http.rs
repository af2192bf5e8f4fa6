//! A small blocking HTTP client over `wasi:http/outgoing-handler`, enough for JSON APIs.

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

use crate::Error;

/// `blocking-write-and-flush` takes at most this many bytes per call.
const MAX_BLOCKING_WRITE: usize = 4096;
/// Answers larger than this are refused rather than held in the guest's memory.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lowercase), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// `Ok` for a 2xx; otherwise the API's error body as [`Error::Api`].
    pub fn error_for_status(&self) -> Result<(), Error> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let field =
            |k: &str| parsed.as_ref().and_then(|v| v["error"][k].as_str()).map(str::to_string);
        Err(Error::Api {
            status: self.status,
            code: field("code").unwrap_or_else(|| "http_error".into()),
            message: field("message")
                .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned()),
        })
    }
}

fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let bad = || Error::Transport(format!("not an absolute http(s) URL: {url}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad()),
    };
    let at = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    if authority.is_empty() {
        return Err(bad());
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    }
}

/// Send one request and read the whole answer.
pub fn fetch(
    method_name: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, Error> {
    let (scheme, authority, path) = split_url(url)?;
    let entries: Vec<(String, Vec<u8>)> =
        headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    let fields = Fields::from_list(&entries).map_err(|e| Error::Transport(format!("{e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let invalid = |what: &str| Error::Transport(format!("invalid {what}"));
    request.set_method(&method(method_name)).map_err(|()| invalid("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    request.set_authority(Some(authority)).map_err(|()| invalid("authority"))?;
    request.set_path_with_query(Some(path)).map_err(|()| invalid("path"))?;
    let outgoing = request.body().map_err(|()| invalid("body"))?;
    let future =
        outgoing_handler::handle(request, None).map_err(|e| Error::Transport(format!("{e:?}")))?;
    {
        let stream = outgoing.write().map_err(|()| invalid("body stream"))?;
        for piece in body.unwrap_or_default().chunks(MAX_BLOCKING_WRITE) {
            stream
                .blocking_write_and_flush(piece)
                .map_err(|e| Error::Transport(format!("writing the body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| Error::Transport(format!("{e:?}")))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(Error::Transport(format!("{e:?}"))),
        Some(Err(())) | None => return Err(Error::Transport("no response".into())),
    };
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response.consume().map_err(|()| invalid("response body"))?;
    let body = read_all(incoming, MAX_RESPONSE_BYTES, "response")?;
    Ok(Response { status, headers, body })
}

/// Reads a whole incoming body, refusing more than `max` bytes.
fn read_all(body: IncomingBody, max: usize, what: &str) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    {
        let stream =
            body.stream().map_err(|()| Error::Transport(format!("{what} body stream taken")))?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => buf.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(Error::Transport(e.to_debug_string()));
                }
            }
            if buf.len() > max {
                return Err(Error::Transport(format!("{what} body over {max} bytes")));
            }
        }
    }
    drop(IncomingBody::finish(body));
    Ok(buf)
}

/// Reads the body of the request being handled, refusing more than `max` bytes.
pub fn read_request_body(
    request: &wasi::http::types::IncomingRequest,
    max: usize,
) -> Result<Vec<u8>, Error> {
    let body = request.consume().map_err(|()| Error::Transport("body already read".into()))?;
    read_all(body, max, "request")
}

/// Answers the request being handled with a complete body.
pub fn respond(
    out: wasi::http::types::ResponseOutparam,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    use wasi::http::types::{OutgoingResponse, ResponseOutparam};
    let len = body.len().to_string();
    let mut entries: Vec<(String, Vec<u8>)> =
        headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    entries.push(("content-length".into(), len.into_bytes()));
    let Ok(fields) = Fields::from_list(&entries) else {
        return ResponseOutparam::set(
            out,
            Err(wasi::http::types::ErrorCode::InternalError(Some("invalid header".into()))),
        );
    };
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        for piece in body.chunks(MAX_BLOCKING_WRITE) {
            if stream.blocking_write_and_flush(piece).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Answers with a JSON body.
pub fn respond_json(
    out: wasi::http::types::ResponseOutparam,
    status: u16,
    body: &serde_json::Value,
) {
    respond(out, status, &[("content-type", "application/json")], body.to_string().as_bytes());
}
