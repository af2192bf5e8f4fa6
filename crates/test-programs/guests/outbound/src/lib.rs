//! `outbound`: `GET ?url=<percent-encoded absolute http(s) URL>` performs a GET
//! of that URL through `wasi:http/outgoing-handler` and answers
//!
//! * 200 `ok <status>` if a response came back (any status);
//! * 502 `error <ErrorCode debug>` if the outgoing call failed, e.g.
//!   `error ErrorCode::HttpRequestDenied` when the host denies the host name;
//! * 400 `bad url ...` if `url` is missing or not `http(s)://authority/...`.

use guest_common::wasi;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingRequest, ResponseOutparam, Scheme,
};

struct Outbound;

fn parse_url(url: &str) -> Option<(Scheme, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return None;
    }
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Some((scheme, authority.to_string(), path))
}

fn fetch(scheme: Scheme, authority: &str, path: &str) -> Result<u16, ErrorCode> {
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).expect("set method");
    req.set_scheme(Some(&scheme)).expect("set scheme");
    req.set_authority(Some(authority))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;
    req.set_path_with_query(Some(path))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;
    let future = outgoing_handler::handle(req, None)?;
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(resp))) => Ok(resp.status()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(())) => Err(ErrorCode::InternalError(Some(
            "response already taken".into(),
        ))),
        None => Err(ErrorCode::InternalError(Some("response not ready".into()))),
    }
}

impl wasi::exports::http::incoming_handler::Guest for Outbound {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let url = guest_common::query_param(&request, "url").unwrap_or_default();
        let Some((scheme, authority, path)) = parse_url(&url) else {
            guest_common::respond_text(out, 400, &format!("bad url {url:?}"));
            return;
        };
        match fetch(scheme, &authority, &path) {
            Ok(status) => guest_common::respond_text(out, 200, &format!("ok {status}")),
            Err(e) => guest_common::respond_text(out, 502, &format!("error {e:?}")),
        }
    }
}

wasi::http::proxy::export!(Outbound);
