//! Helpers for Nimbus functions.
//!
//! A Nimbus function is a plain `wasi:http/proxy` component; nothing here is required to write
//! one. This crate wraps the one thing that is Nimbus-specific: the **in-process API**. Each
//! invocation gets `NIMBUS_API_URL` (`http://nimbus.internal`) and a short-lived token
//! `NIMBUS_API_TOKEN` in its environment; requests to that URL reach the project's REST API
//! (documents, key-value store, files) inside the host, without a socket and without an outbound
//! allow-list entry. With the token a function acts as its project's service role (rules do not
//! apply); [`Client::as_user`] forwards an end user's access token instead, so that user's rules
//! apply.
//!
//! ```ignore
//! let nimbus = nimbus_sdk::Client::from_env()?;
//! let todo = nimbus.collection("todos").create(&serde_json::json!({"title": "write docs"}))?;
//! let n = nimbus.kv("counters").increment("todos-created", 1)?;
//! ```
//!
//! Everything blocks the guest until the answer is there (`wasi:http` through `wasi:io` pollables),
//! which is what a function that runs one request per instance wants.

pub mod events;
pub mod http;

use std::fmt;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Characters left as they are in a path segment or query value: RFC 3986's unreserved set.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// What a call can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The environment lacks the in-process API (not running on Nimbus, or an old host).
    NotConfigured(&'static str),
    /// The request did not get an answer (the host refused it, or the body broke).
    Transport(String),
    /// The API answered with an error: its status and the `{"error":{code,message}}` body.
    Api { status: u16, code: String, message: String },
    /// The answer was not what the API documents.
    Decode(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotConfigured(var) => write!(f, "{var} is not set: not running on Nimbus?"),
            Error::Transport(e) => write!(f, "request failed: {e}"),
            Error::Api { status, code, message } => write!(f, "{status} {code}: {message}"),
            Error::Decode(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The project's API, as seen from inside a function.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    project: String,
    /// The `Authorization` header value: the invocation's service token, or a user's token.
    authorization: Option<String>,
}

impl Client {
    /// The client for this invocation, from `NIMBUS_API_URL`, `NIMBUS_API_TOKEN` and
    /// `NIMBUS_PROJECT`. Acts as the project's service role.
    pub fn from_env() -> Result<Client, Error> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| Error::NotConfigured(name));
        Ok(Client {
            base: var("NIMBUS_API_URL")?.trim_end_matches('/').to_string(),
            project: var("NIMBUS_PROJECT")?,
            authorization: Some(format!("Bearer {}", var("NIMBUS_API_TOKEN")?)),
        })
    }

    /// The same client acting as the end user whose access token this is (for example the
    /// `Authorization: Bearer ...` of the request being handled): that user's rules apply.
    /// `None` acts as an anonymous caller.
    pub fn as_user(&self, access_token: Option<&str>) -> Client {
        Client { authorization: access_token.map(|t| format!("Bearer {t}")), ..self.clone() }
    }

    /// The project this function belongs to.
    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn collection(&self, name: &str) -> Collection<'_> {
        Collection { client: self, name: name.to_string() }
    }

    pub fn kv(&self, bucket: &str) -> Kv<'_> {
        Kv { client: self, bucket: bucket.to_string() }
    }

    /// A bucket of the project's file storage (created with the management API, or
    /// `POST /v1/buckets` through [`Client::request`]).
    pub fn bucket(&self, name: &str) -> Bucket<'_> {
        Bucket { client: self, name: name.to_string() }
    }

    /// Any request to the API (`path` starts with `/v1/`): for what the typed helpers lack.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<http::Response, Error> {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &self.authorization {
            all.push(("authorization", a));
        }
        http::fetch(method, &format!("{}{path}", self.base), &all, body)
    }

    /// A request whose 2xx answer is JSON; any other status becomes [`Error::Api`].
    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, Error> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("a Value always serializes"));
        let headers: &[(&str, &str)] =
            if bytes.is_some() { &[("content-type", "application/json")] } else { &[] };
        let r = self.request(method, path, headers, bytes.as_deref())?;
        r.error_for_status()?;
        serde_json::from_slice(&r.body).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Document {
    pub id: String,
    /// Increases with every write; the ETag of the document.
    pub revision: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    pub data: Value,
}

/// One page of a list.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    pub documents: Vec<Document>,
    /// Pass to [`Query::cursor`] for the next page; `None` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    #[serde(default)]
    pub count: Option<u64>,
}

/// A list query: a filter in the rule language (`doc.status == "open"`), a sort
/// (`-created_at,title`), a page size and a cursor.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Option<String>,
    pub sort: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl Query {
    pub fn filter(mut self, f: &str) -> Self {
        self.filter = Some(f.to_string());
        self
    }
    pub fn sort(mut self, s: &str) -> Self {
        self.sort = Some(s.to_string());
        self
    }
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }
    pub fn cursor(mut self, c: &str) -> Self {
        self.cursor = Some(c.to_string());
        self
    }

    fn to_query_string(&self) -> String {
        let mut q = Vec::new();
        if let Some(f) = &self.filter {
            q.push(format!("filter={}", enc(f)));
        }
        if let Some(s) = &self.sort {
            q.push(format!("sort={}", enc(s)));
        }
        if let Some(n) = self.limit {
            q.push(format!("limit={n}"));
        }
        if let Some(c) = &self.cursor {
            q.push(format!("cursor={}", enc(c)));
        }
        if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
    }
}

/// A collection of the project's document database.
pub struct Collection<'a> {
    client: &'a Client,
    name: String,
}

impl Collection<'_> {
    fn path(&self, id: Option<&str>) -> String {
        let base = format!(
            "/v1/projects/{}/collections/{}/documents",
            enc(&self.client.project),
            enc(&self.name)
        );
        match id {
            Some(id) => format!("{base}/{}", enc(id)),
            None => base,
        }
    }

    /// Create a document with a server-assigned id.
    pub fn create(&self, data: &Value) -> Result<Document, Error> {
        self.client.json("POST", &self.path(None), Some(data))
    }

    /// Create or replace the document `id`.
    pub fn put(&self, id: &str, data: &Value) -> Result<Document, Error> {
        self.client.json("PUT", &self.path(Some(id)), Some(data))
    }

    /// Apply a JSON merge patch (RFC 7386) to the document `id`.
    pub fn patch(&self, id: &str, patch: &Value) -> Result<Document, Error> {
        self.client.json("PATCH", &self.path(Some(id)), Some(patch))
    }

    /// The document `id`, or `None` if there is none (or the rules hide it).
    pub fn get(&self, id: &str) -> Result<Option<Document>, Error> {
        match self.client.json("GET", &self.path(Some(id)), None) {
            Ok(d) => Ok(Some(d)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the document `id`; false if there was none.
    pub fn delete(&self, id: &str) -> Result<bool, Error> {
        let r = self.client.request("DELETE", &self.path(Some(id)), &[], None)?;
        if r.status == 404 {
            return Ok(false);
        }
        r.error_for_status().map(|()| true)
    }

    /// One page of documents matching `query`.
    pub fn list(&self, query: &Query) -> Result<Page, Error> {
        self.client.json("GET", &format!("{}{}", self.path(None), query.to_query_string()), None)
    }
}

/// A bucket of the project's key-value store.
pub struct Kv<'a> {
    client: &'a Client,
    bucket: String,
}

impl Kv<'_> {
    fn path(&self, key: &str) -> String {
        format!("/v1/kv/{}/{}", enc(&self.bucket), enc(key))
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let r = self.client.request("GET", &self.path(key), &[], None)?;
        if r.status == 404 {
            return Ok(None);
        }
        r.error_for_status()?;
        Ok(Some(r.body))
    }

    /// Store `value` under `key`, expiring after `ttl` if given (whole seconds).
    pub fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        let path = match ttl {
            Some(t) => format!("{}?ttl={}", self.path(key), t.as_secs().max(1)),
            None => self.path(key),
        };
        self.client.request("PUT", &path, &[], Some(value))?.error_for_status()
    }

    /// Delete `key`; false if it did not exist.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        let r = self.client.request("DELETE", &self.path(key), &[], None)?;
        if r.status == 404 {
            return Ok(false);
        }
        r.error_for_status().map(|()| true)
    }

    /// Add `delta` to the decimal integer at `key` (0 if absent), atomically; the new value.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, Error> {
        #[derive(Deserialize)]
        struct Incremented {
            value: i64,
        }
        let path = format!("{}/incr?delta={delta}", self.path(key));
        let r: Incremented = self.client.json("POST", &path, None)?;
        Ok(r.value)
    }
}

/// A stored file's metadata.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FileInfo {
    pub key: String,
    pub size: u64,
    pub content_type: String,
    /// MD5 of the bytes (hex) for single-part uploads, as S3.
    pub etag: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// One page of a file listing.
#[derive(Debug, Clone, Deserialize)]
pub struct FilePage {
    pub objects: Vec<FileInfo>,
    /// With a delimiter: the key prefixes that group further keys ("folders").
    #[serde(default)]
    pub common_prefixes: Vec<String>,
    /// Pass to [`Bucket::list`] for the next page; `None` on the last page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// A file as read: its bytes and content type.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub body: Vec<u8>,
    pub content_type: String,
    pub etag: String,
}

/// A bucket of the project's file storage. Bodies are held whole in the guest's memory (answers
/// up to 16 MiB); larger files are for the S3 endpoint or signed URLs.
pub struct Bucket<'a> {
    client: &'a Client,
    name: String,
}

impl Bucket<'_> {
    fn base(&self) -> String {
        format!("/v1/projects/{}/buckets/{}", enc(&self.client.project), enc(&self.name))
    }

    fn path(&self, key: &str) -> String {
        // `/` stays as it is: keys are paths, and the API takes the rest of the URL as the key.
        let segments: Vec<String> = key.split('/').map(enc).collect();
        format!("{}/objects/{}", self.base(), segments.join("/"))
    }

    /// Store `body` under `key` (replacing what was there).
    pub fn put(&self, key: &str, body: &[u8], content_type: &str) -> Result<FileInfo, Error> {
        let r = self.client.request(
            "PUT",
            &self.path(key),
            &[("content-type", content_type)],
            Some(body),
        )?;
        r.error_for_status()?;
        serde_json::from_slice(&r.body).map_err(|e| Error::Decode(e.to_string()))
    }

    /// The file `key`, or `None` if there is none.
    pub fn get(&self, key: &str) -> Result<Option<File>, Error> {
        let r = self.client.request("GET", &self.path(key), &[], None)?;
        if r.status == 404 {
            return Ok(None);
        }
        r.error_for_status()?;
        let header = |n: &str| r.header(n).unwrap_or_default().to_string();
        Ok(Some(File {
            content_type: header("content-type"),
            etag: header("etag").trim_matches('"').to_string(),
            body: r.body,
        }))
    }

    /// Delete `key`; false if there was none.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        let r = self.client.request("DELETE", &self.path(key), &[], None)?;
        if r.status == 404 {
            return Ok(false);
        }
        r.error_for_status().map(|()| true)
    }

    /// One page of the files whose keys start with `prefix`, in key order; `cursor` from the
    /// previous page's [`FilePage::cursor`].
    pub fn list(&self, prefix: &str, cursor: Option<&str>) -> Result<FilePage, Error> {
        let mut path = format!("{}/objects?prefix={}", self.base(), enc(prefix));
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        self.client.json("GET", &path, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_paths_are_encoded() {
        let q = Query::default().filter("doc.owner == \"a b\" && doc.n > 1").sort("-n").limit(5);
        assert_eq!(
            q.to_query_string(),
            "?filter=doc.owner%20%3D%3D%20%22a%20b%22%20%26%26%20doc.n%20%3E%201&sort=-n&limit=5"
        );
        let c = Client {
            base: "http://nimbus.internal".into(),
            project: "p".into(),
            authorization: None,
        };
        assert_eq!(c.kv("b").path("a/b c"), "/v1/kv/b/a%2Fb%20c");
        assert_eq!(
            c.collection("posts").path(Some("x/y")),
            "/v1/projects/p/collections/posts/documents/x%2Fy"
        );
        assert_eq!(
            c.bucket("media").path("a b/c?.txt"),
            "/v1/projects/p/buckets/media/objects/a%20b/c%3F.txt"
        );
    }
}
