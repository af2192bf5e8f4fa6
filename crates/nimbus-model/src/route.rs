//! HTTP routes a function claims, and the path normalisation both deploy and the gateway use.
//!
//! Matching rules, chosen to behave as users of other HTTP platforms expect:
//! - `/hello` and `/hello/` are the same route (a trailing slash never matters for matching);
//! - percent-encoded unreserved characters match their decoded form (`/h%65llo` is `/hello`), but an
//!   encoded slash `%2F` stays data and never splits a segment;
//! - `.` and `..` segments are resolved before matching, and can never climb above `/`;
//! - `/api/...` claims `/api` and everything below it; the longest prefix wins; exact beats prefix.
//!
//! The guest always sees the request path exactly as the client sent it.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use utoipa::ToSchema;

use crate::SpecError;

/// Paths under these prefixes belong to Nimbus itself and cannot be claimed by a function.
pub const RESERVED_PREFIXES: &[&str] = &["/v1", "/healthz", "/metrics", "/_nimbus"];

/// A route in a function's spec: `"/path"` or `{"path": "/path", "methods": ["GET"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RouteSpecRepr", into = "RouteSpecRepr")]
pub struct RouteSpec {
    pub path: String,
    /// Upper-case HTTP methods; empty means every method.
    pub methods: Vec<String>,
}

/// A route as it is written and returned: a path string, or a path with methods.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
enum RouteSpecRepr {
    Path(String),
    Full {
        path: String,
        #[serde(default)]
        methods: Vec<String>,
    },
}

// The schema is the wire form's (a string or an object), not the struct's: the API returns
// `"/hello"` for a route without methods.
impl utoipa::PartialSchema for RouteSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <RouteSpecRepr as utoipa::PartialSchema>::schema()
    }
}

impl ToSchema for RouteSpec {}

impl From<RouteSpecRepr> for RouteSpec {
    fn from(r: RouteSpecRepr) -> Self {
        match r {
            RouteSpecRepr::Path(path) => RouteSpec { path, methods: vec![] },
            RouteSpecRepr::Full { path, methods } => RouteSpec {
                path,
                methods: methods.into_iter().map(|m| m.to_ascii_uppercase()).collect(),
            },
        }
    }
}

impl From<RouteSpec> for RouteSpecRepr {
    fn from(r: RouteSpec) -> Self {
        if r.methods.is_empty() {
            RouteSpecRepr::Path(r.path)
        } else {
            RouteSpecRepr::Full { path: r.path, methods: r.methods }
        }
    }
}

impl From<&str> for RouteSpec {
    fn from(path: &str) -> Self {
        RouteSpec { path: path.to_string(), methods: vec![] }
    }
}

/// A parsed route pattern over normalised paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutePattern {
    /// Matches one normalised path (without trailing slash, except the root `/`).
    Exact(String),
    /// Matches the normalised prefix itself and every path below it. The root prefix is `/`.
    Prefix(String),
}

impl RoutePattern {
    pub fn matches(&self, normalized_path: &str) -> bool {
        match self {
            RoutePattern::Exact(p) => p == normalized_path,
            RoutePattern::Prefix(p) => prefix_matches(p, normalized_path),
        }
    }

    /// Whether two patterns could ever match the same path. Only identical claims conflict: a
    /// more specific route under another function's prefix is allowed and wins (longest match).
    pub fn same_claim(&self, other: &RoutePattern) -> bool {
        self == other
    }
}

impl std::fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePattern::Exact(p) => f.write_str(p),
            RoutePattern::Prefix(p) if p == "/" => f.write_str("/..."),
            RoutePattern::Prefix(p) => write!(f, "{p}/..."),
        }
    }
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

impl RouteSpec {
    pub fn parse(&self) -> Result<RoutePattern, SpecError> {
        let err =
            |reason: &str| SpecError::Route { route: self.path.clone(), reason: reason.into() };
        let raw = self.path.as_str();
        if !raw.starts_with('/') {
            return Err(err("a route starts with '/'"));
        }
        if raw.contains(['?', '#', ' ']) || raw.chars().any(|c| c.is_control()) {
            return Err(err("a route is a path: no query, fragment, spaces or control characters"));
        }
        for m in &self.methods {
            if !METHODS.contains(&m.as_str()) {
                return Err(err(&format!("unknown method {m:?}")));
            }
        }
        let (base, prefix) = match raw.strip_suffix("...") {
            Some(b) => (b, true),
            None => (raw, false),
        };
        if base.contains("...") || base.contains('*') {
            return Err(err("'...' may only end a route, as in /api/..."));
        }
        if prefix && !base.ends_with('/') {
            return Err(err("a wildcard route ends with '/...'"));
        }
        let normalized = normalize_path(base)
            .ok_or_else(|| err("the path is not valid percent-encoded UTF-8"))?;
        if normalized != base.trim_end_matches('/') && !(normalized == "/" && base == "/") {
            return Err(err(&format!("write it in its normal form, {normalized}")));
        }
        if normalized.starts_with("/@") {
            return Err(err("paths starting with /@ address other projects (/@project/...)"));
        }
        for reserved in RESERVED_PREFIXES {
            if normalized == *reserved || normalized.starts_with(&format!("{reserved}/")) {
                return Err(err(&format!("paths under {reserved} belong to Nimbus")));
            }
        }
        Ok(if prefix {
            RoutePattern::Prefix(normalized.into_owned())
        } else {
            RoutePattern::Exact(normalized.into_owned())
        })
    }

    /// Whether this route admits `method` (HEAD is admitted wherever GET is).
    pub fn allows(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self.methods.iter().any(|m| m == method || (method == "HEAD" && m == "GET"))
    }
}

/// Whether the normalised `prefix` (as in [`RoutePattern::Prefix`]) covers `normalized_path`: the
/// prefix itself or anything below it, on segment boundaries.
pub fn prefix_matches(prefix: &str, normalized_path: &str) -> bool {
    prefix == "/"
        || normalized_path == prefix
        || (normalized_path.starts_with(prefix)
            && normalized_path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Normalise a request path for routing: percent-decode (keeping `%2F` as data), resolve `.` and
/// `..`, collapse empty segments, drop any trailing slash. Returns `None` for invalid encodings.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    if is_normal(path) {
        // Every request is routed: the usual path is borrowed as it is, not copied.
        return Some(Cow::Borrowed(path));
    }
    normalize_segments(path).map(Cow::Owned)
}

/// [`normalize_path`] the long way: segment by segment.
fn normalize_segments(path: &str) -> Option<String> {
    let mut segments: Vec<String> = Vec::new();
    for raw_segment in path.split('/') {
        let seg = decode_segment(raw_segment)?;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Whether `path` is already in normal form: absolute, no escapes or backslashes, no empty, `.`
/// or `..` segment, no trailing slash. One pass over the bytes (the substring searches it
/// replaces were most of the cost of routing a request).
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    if b.len() > 1 && b[b.len() - 1] == b'/' {
        return false;
    }
    let mut prev = 0u8;
    for &c in b {
        match c {
            b'%' | b'\\' => return false,
            b'/' | b'.' if prev == b'/' => return false,
            _ => {}
        }
        prev = c;
    }
    true
}

/// Decode `%XX` escapes except `%2F`, which stays encoded (upper-cased) so it cannot act as a separator.
fn decode_segment(seg: &str) -> Option<String> {
    if !seg.contains('%') {
        return Some(seg.to_string());
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v == b'/' {
                out.extend_from_slice(b"%2F");
            } else {
                out.push(v);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(p: &str) -> Result<RoutePattern, SpecError> {
        RouteSpec::from(p).parse()
    }

    #[test]
    fn normalisation_table() {
        let cases = [
            ("/", "/"),
            ("/hello", "/hello"),
            ("/hello/", "/hello"),
            ("//hello//world/", "/hello/world"),
            ("/h%65llo", "/hello"),
            ("/a/./b/../c", "/a/c"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb", "/a%2Fb"),
            ("/caf%C3%A9", "/café"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref(), Some(want), "{input}");
        }
        // The borrowed fast path takes only what the long way leaves as it is (it may send more
        // the long way, as `/.a`).
        for p in [
            "/",
            "/a",
            "/a.b/c",
            "/.a",
            "/a/.",
            "/a/..",
            "//a",
            "/a//b",
            "/a/",
            "a",
            "",
            "/%41",
            "/a\\b",
            "/a/b.c/d-e_f",
        ] {
            if is_normal(p) {
                assert_eq!(normalize_segments(p).as_deref(), Some(p), "{p}");
            }
        }
        assert_eq!(normalize_path("/bad%zz"), None);
        assert_eq!(normalize_path("/bad%ff"), None);
        assert_eq!(normalize_path("/trunc%4"), None);
    }

    #[test]
    fn patterns() {
        assert_eq!(pat("/hello").unwrap(), RoutePattern::Exact("/hello".into()));
        assert_eq!(pat("/api/...").unwrap(), RoutePattern::Prefix("/api".into()));
        assert_eq!(pat("/...").unwrap(), RoutePattern::Prefix("/".into()));
        assert!(pat("hello").is_err());
        assert!(pat("/api...").is_err());
        assert!(pat("/a/.../b").is_err());
        assert!(pat("/a/../b").is_err());
        assert!(pat("/v1/functions").is_err());
        assert!(pat("/healthz").is_err());
        assert!(pat("/metrics/...").is_err());
        assert!(pat("/x?y=1").is_err());
        assert!(pat("/@proj/x").is_err());
        let bad_method = RouteSpec { path: "/a".into(), methods: vec!["FETCH".into()] };
        assert!(bad_method.parse().is_err());
    }

    #[test]
    fn matching() {
        let p = RoutePattern::Prefix("/api".into());
        assert!(p.matches("/api"));
        assert!(p.matches("/api/users/1"));
        assert!(!p.matches("/apis"));
        assert!(RoutePattern::Prefix("/".into()).matches("/anything"));
        assert!(RoutePattern::Exact("/hello".into()).matches("/hello"));
        assert!(!RoutePattern::Exact("/hello".into()).matches("/hello/x"));
    }

    #[test]
    fn route_spec_serde_accepts_both_forms() {
        let r: Vec<RouteSpec> =
            serde_json::from_str(r#"["/a", {"path": "/b", "methods": ["get"]}]"#).unwrap();
        assert_eq!(r[0], RouteSpec::from("/a"));
        assert_eq!(r[1].methods, vec!["GET"]);
        assert!(r[1].allows("HEAD"));
        assert!(!r[1].allows("POST"));
    }
}
