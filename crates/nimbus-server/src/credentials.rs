//! Reading the credentials a request presents, strictly, and removing them before a guest sees the
//! request.
//!
//! A malformed `Authorization` header is an error, never "no credentials": a client with a broken
//! token must learn it instead of being served as anonymous.

use axum::http::{HeaderMap, HeaderName, StatusCode, header};

use crate::error::ApiError;

/// Header carrying an API key, for clients that keep `Authorization` for a user's token.
pub const API_KEY_HEADER: &str = "x-api-key";
/// [`API_KEY_HEADER`] as a name checked at compile time: looked up by a string, it would be
/// parsed again on every gateway request.
pub(crate) const API_KEY: HeaderName = HeaderName::from_static(API_KEY_HEADER);

fn malformed(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// A credential token: visible ASCII, no spaces, not empty, of a sane length.
fn token(value: &str) -> Option<&str> {
    let ok = (1..=4096).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(value)
}

/// The bearer token of the `Authorization` header, if there is one. The scheme is matched
/// case-insensitively (RFC 9110 §11.1); anything but one well-formed `Bearer <token>` is a 401.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(malformed("send one Authorization header, not several"));
    }
    let bad = || malformed("malformed Authorization header: use `Authorization: Bearer <token>`");
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, rest) = value.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed("unsupported Authorization scheme: use `Bearer <token>`"));
    }
    token(rest.trim_start()).map(Some).ok_or_else(bad)
}

/// The API key of the `x-api-key` header, if there is one; a malformed one is a 401.
pub(crate) fn api_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(&API_KEY).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(malformed("send one x-api-key header, not several"));
    }
    let bad = || malformed("malformed x-api-key header");
    token(value.to_str().map_err(|_| bad())?.trim()).map(Some).ok_or_else(bad)
}

/// Remove every credential Nimbus itself consumes (the admin token or an API key in
/// `Authorization`, `x-api-key`, cookies) before a request reaches a guest. A tenant that logs its
/// headers must never learn the operator's token or a key it was not given.
pub(crate) fn strip_consumed(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(&API_KEY);
    headers.remove(header::COOKIE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&HeaderMap::new()).unwrap(), None);
        assert_eq!(bearer(&auth("Bearer abc")).unwrap(), Some("abc"));
        assert_eq!(bearer(&auth("bearer abc")).unwrap(), Some("abc"));
        assert_eq!(bearer(&auth("BEARER  abc ")).unwrap(), Some("abc"));
        for bad in ["Bearer", "Bearer ", "garbage", "Basic dXNlcjpwYXNz", "Bearer a b", "Token x"] {
            let e = bearer(&auth(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
        let mut two = auth("Bearer a");
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(bearer(&two).is_err());
    }

    #[test]
    fn api_key_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h).unwrap(), None);
        h.insert(API_KEY_HEADER, HeaderValue::from_static("nbk_a_b"));
        assert_eq!(api_key(&h).unwrap(), Some("nbk_a_b"));
        h.insert(API_KEY_HEADER, HeaderValue::from_static(""));
        assert!(api_key(&h).is_err());
    }
}
