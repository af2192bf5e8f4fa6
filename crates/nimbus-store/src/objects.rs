//! File storage: the persistence interface of the files service (`nimbus-files`). Per project,
//! named buckets (with their settings) hold objects: bytes plus metadata (size, content type,
//! ETag, user metadata, uploader, creation time). Bodies stream both ways (`std::io::Read`), so
//! no caller holds a whole object in memory.
//!
//! # Durability contract
//!
//! A write is visible only when complete: a backend stores the bytes first (for the local disk: a
//! temporary file, `fsync`, then a rename under an internal id) and then publishes the metadata
//! **and the change's event** (`dev.nimbus.storage.object.created` / `.deleted`, see
//! [`object_event`]) in one transaction. A crash before the commit leaves at most unreferenced
//! bytes, which [`ObjectStore::sweep`] removes; never metadata without bytes. Bytes that a commit
//! stopped referencing (an overwritten or deleted object) are removed after the commit.
//!
//! User keys are data, never paths: a backend must store bytes under ids of its own.
//!
//! # Backends
//!
//! `nimbus-store-local` implements this on SQLite (metadata, events) + a local directory (bytes).
//! A clustered deployment can implement the same trait with the `object_store` crate (S3, GCS,
//! Azure) for the bytes and PostgreSQL for metadata and events: put the bytes under an internal
//! id, then commit metadata + event; the sweep lists the bucket's ids against the metadata.
//!
//! The generic conformance suite is in [`conformance`] (feature `conformance`).

use std::collections::BTreeMap;
use std::io::Read;

use nimbus_model::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::StoreError;
use crate::events::NewEvent;

#[cfg(feature = "conformance")]
pub mod conformance;

/// Event types of object changes (see /shared/EVENTS.md for the naming).
pub const EVENT_CREATED: &str = "dev.nimbus.storage.object.created";
pub const EVENT_DELETED: &str = "dev.nimbus.storage.object.deleted";

/// Longest object key, in UTF-8 bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is {0} bytes long; the limit is {MAX_KEY_BYTES} bytes of UTF-8")]
    TooLong(usize),
    #[error("the key contains a NUL character")]
    Nul,
    #[error("the key has a `.` or `..` segment, which HTTP clients rewrite before sending")]
    DotSegment,
}

/// The one rule for object keys, in every API: 1 to 1024 bytes of UTF-8 (a `&str` is UTF-8 by
/// construction; callers reject invalid bytes when decoding), without NUL, and without `.` or
/// `..` segments between slashes: not because of paths (keys never become paths), but because
/// URL normalisation in HTTP clients rewrites them, so such a key could not be addressed
/// reliably. Anything else (`/` at either end, `//`, spaces) is allowed.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        Err(KeyError::Empty)
    } else if key.len() > MAX_KEY_BYTES {
        Err(KeyError::TooLong(key.len()))
    } else if key.contains('\0') {
        Err(KeyError::Nul)
    } else if key.split('/').any(|seg| seg == "." || seg == "..") {
        Err(KeyError::DotSegment)
    } else {
        Ok(())
    }
}

/// Settings of a bucket. `access` is the service's (opaque here); the limits are enforced by the
/// backend while storing (size) and at publish (quota, in the publishing transaction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BucketSettings {
    /// Who may read and write (interpreted by `nimbus-files`).
    pub access: Value,
    /// Largest object, in bytes.
    pub max_object_bytes: Option<u64>,
    /// Content types objects may have (`image/*` style wildcards are the service's); empty: any.
    pub allowed_content_types: Vec<String>,
    /// Most bytes all objects of the bucket may take together.
    pub quota_bytes: Option<u64>,
}

/// A bucket with its usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub name: String,
    pub settings: BucketSettings,
    pub created_at: UnixMillis,
    pub objects: u64,
    pub bytes: u64,
}

/// A stored object's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub content_type: String,
    /// Without quotes: MD5 hex of the bytes, or for a multipart upload MD5 of the parts' MD5s
    /// followed by `-<parts>`, as S3 computes it.
    pub etag: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: UnixMillis,
    /// Who stored it (the service's JSON identity), copied into the events.
    pub uploader: Value,
}

/// What a put (or a multipart upload) will store.
#[derive(Debug, Clone)]
pub struct ObjectWrite<'a> {
    pub project: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub content_type: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    pub uploader: &'a Value,
}

/// A byte range as HTTP and S3 name it, resolved by the backend against the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-`: from `a` to the end.
    From(u64),
    /// `bytes=a-b`: inclusive; `b` beyond the end is clamped.
    FromTo(u64, u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// The half-open byte range of an object of `size` bytes, or `None` if not satisfiable.
    pub fn resolve(self, size: u64) -> Option<std::ops::Range<u64>> {
        match self {
            RangeSpec::From(a) if a < size => Some(a..size),
            RangeSpec::FromTo(a, b) if a <= b && a < size => {
                Some(a..(b.saturating_add(1)).min(size))
            }
            RangeSpec::Suffix(n) if n > 0 && size > 0 => Some(size.saturating_sub(n)..size),
            _ => None,
        }
    }
}

/// An open object: its metadata, the bytes served (`range`, half-open) and a reader of them.
pub struct ObjectData {
    pub meta: ObjectMeta,
    pub range: std::ops::Range<u64>,
    pub reader: Box<dyn Read + Send>,
}

impl std::fmt::Debug for ObjectData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectData").field("meta", &self.meta).field("range", &self.range).finish()
    }
}

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only keys starting with this (literal) prefix.
    pub prefix: String,
    /// Group keys that contain this after the prefix into one common prefix each.
    pub delimiter: Option<String>,
    /// Inclusive lower bound: a previous page's `next`, or (for "start after k") `k` + `"\0"`,
    /// which is the smallest key after `k` since keys have no NUL.
    pub from: Option<String>,
    /// Most entries (objects + common prefixes) returned.
    pub limit: u32,
}

/// One page of a listing, in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    pub common_prefixes: Vec<String>,
    /// Pass as [`ListQuery::from`] for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// An incomplete multipart upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadInfo {
    pub id: String,
    pub bucket: String,
    pub key: String,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
    pub uploader: Value,
    pub created_at: UnixMillis,
}

/// A stored part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    /// MD5 hex of the part, without quotes.
    pub etag: String,
    pub created_at: UnixMillis,
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Stored bytes no metadata referenced (a crash between storing and publishing).
    pub orphans: u64,
    /// Temporary files of interrupted writes.
    pub temporaries: u64,
    /// Incomplete multipart uploads older than their expiry.
    pub expired_uploads: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("object {0:?} does not exist")]
    NoSuchKey(String),
    #[error("multipart upload {0:?} does not exist")]
    NoSuchUpload(String),
    #[error("bucket {0:?} already exists")]
    BucketExists(String),
    #[error("bucket {0:?} is not empty")]
    BucketNotEmpty(String),
    #[error("the object is larger than the bucket's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the bucket's quota of {quota} bytes would be exceeded")]
    QuotaExceeded { quota: u64 },
    #[error("the range is not satisfiable: the object has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("invalid part list: {0}")]
    InvalidPart(String),
    /// The caller's reader failed (a client went away mid-upload): nothing was published.
    #[error("reading the upload failed: {0}")]
    Body(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type ObjectResult<T> = std::result::Result<T, ObjectError>;

/// Per-project buckets of objects. Every method names its project. Synchronous like every store
/// trait (see the crate doc): streaming methods block on their readers, so call them from
/// blocking threads.
pub trait ObjectStore: Send + Sync + 'static {
    fn create_bucket(
        &self,
        project: &str,
        name: &str,
        settings: &BucketSettings,
    ) -> ObjectResult<BucketInfo>;
    fn update_bucket(
        &self,
        project: &str,
        name: &str,
        settings: &BucketSettings,
    ) -> ObjectResult<BucketInfo>;
    fn get_bucket(&self, project: &str, name: &str) -> ObjectResult<Option<BucketInfo>>;
    fn list_buckets(&self, project: &str) -> ObjectResult<Vec<BucketInfo>>;
    /// Delete a bucket. With objects (or incomplete uploads) in it: `BucketNotEmpty` unless
    /// `force`, which deletes them, with a deleted event per object (by `actor`), in the same
    /// transaction. Returns how many objects went.
    fn delete_bucket(
        &self,
        project: &str,
        name: &str,
        force: bool,
        actor: &Value,
    ) -> ObjectResult<u64>;

    /// Store `data` as the object, replacing any previous one: bytes first (at most
    /// `max_bytes`, else `TooLarge` and nothing published), then metadata + created event in one
    /// transaction (which checks the bucket's quota).
    fn put(
        &self,
        write: &ObjectWrite<'_>,
        data: &mut dyn Read,
        max_bytes: Option<u64>,
    ) -> ObjectResult<ObjectMeta>;
    fn head(&self, project: &str, bucket: &str, key: &str) -> ObjectResult<Option<ObjectMeta>>;
    /// Open the object (a range of it) for reading. The reader sees the version that was
    /// current when it was opened, even if the object is replaced or deleted meanwhile.
    fn open(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        range: Option<RangeSpec>,
    ) -> ObjectResult<ObjectData>;
    fn list(&self, project: &str, bucket: &str, query: &ListQuery) -> ObjectResult<ListPage>;
    /// Copy the current version of `src_key` in `src_bucket` (of `write.project`) to `write`'s
    /// bucket and key, with `write`'s content type, metadata and uploader, and a created event,
    /// keeping the source's ETag. `TooLarge` if the source exceeds `max_bytes`. The default
    /// streams the bytes through [`ObjectStore::put`]; a backend whose stored bytes never change
    /// may share them instead (the local store hard-links).
    fn copy(
        &self,
        src_bucket: &str,
        src_key: &str,
        write: &ObjectWrite<'_>,
        max_bytes: Option<u64>,
    ) -> ObjectResult<ObjectMeta> {
        let mut src = self.open(write.project, src_bucket, src_key, None)?;
        if let Some(limit) = max_bytes
            && src.meta.size > limit
        {
            return Err(ObjectError::TooLarge { limit });
        }
        self.put(write, &mut src.reader, max_bytes)
    }
    /// Delete the object with a deleted event (by `actor`) in one transaction. Returns the
    /// deleted object's metadata, `None` if there was none.
    fn delete(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        actor: &Value,
    ) -> ObjectResult<Option<ObjectMeta>>;

    /// Start a multipart upload.
    fn create_upload(&self, write: &ObjectWrite<'_>) -> ObjectResult<UploadInfo>;
    fn get_upload(&self, project: &str, bucket: &str, id: &str) -> ObjectResult<UploadInfo>;
    /// Store part `number` (1..=10000) of an upload, replacing a previous part of that number.
    fn put_part(
        &self,
        project: &str,
        bucket: &str,
        upload: &str,
        number: u32,
        data: &mut dyn Read,
        max_bytes: Option<u64>,
    ) -> ObjectResult<PartInfo>;
    /// Parts of an upload, by number.
    fn list_parts(&self, project: &str, bucket: &str, upload: &str) -> ObjectResult<Vec<PartInfo>>;
    /// Incomplete uploads of a bucket whose key starts with `prefix`, by key then start time.
    fn list_uploads(
        &self,
        project: &str,
        bucket: &str,
        prefix: &str,
    ) -> ObjectResult<Vec<UploadInfo>>;
    /// Assemble the listed parts (ascending numbers, each with its ETag) into the object and
    /// publish it with its event; the upload ends. ETag: MD5 of the parts' MD5s, `-<count>`.
    fn complete_upload(
        &self,
        project: &str,
        bucket: &str,
        upload: &str,
        parts: &[(u32, String)],
        max_bytes: Option<u64>,
    ) -> ObjectResult<ObjectMeta>;
    /// Returns whether the upload existed.
    fn abort_upload(&self, project: &str, bucket: &str, upload: &str) -> ObjectResult<bool>;

    /// Delete every bucket, object and upload of a project (without events: the project's log
    /// goes with it). Returns how many objects.
    fn delete_project(&self, project: &str) -> ObjectResult<u64>;
    /// Housekeeping: remove stored bytes that no metadata references and that are older than
    /// `orphan_grace_ms` (0 at start-up, when no write is in flight), and incomplete uploads
    /// started before `uploads_before`.
    fn sweep(
        &self,
        now: UnixMillis,
        orphan_grace_ms: i64,
        uploads_before: UnixMillis,
    ) -> ObjectResult<SweepReport>;
}

/// The event of an object change, defined once for every backend: `created` (a put, a copy, a
/// completed multipart upload) or `deleted`; `actor` is who did it (the uploader for created).
pub fn object_event(project: &str, kind: &str, meta: &ObjectMeta, actor: &Value) -> NewEvent {
    NewEvent {
        project: project.to_owned(),
        kind: kind.to_owned(),
        source: format!("/v1/projects/{project}/buckets/{}", meta.bucket),
        subject: meta.key.clone(),
        data: serde_json::json!({
            "bucket": meta.bucket,
            "key": meta.key,
            "size": meta.size,
            "content_type": meta.content_type,
            "etag": meta.etag,
            "metadata": meta.metadata,
            "uploader": actor,
        }),
    }
}

/// The smallest string greater than every string that starts with `prefix`, if there is one:
/// the exclusive upper bound of a prefix range in byte (= code point) order.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("a").is_ok());
        assert_eq!(validate_key("../../etc/passwd"), Err(KeyError::DotSegment));
        assert_eq!(validate_key("a/./b"), Err(KeyError::DotSegment));
        assert_eq!(validate_key("a/.."), Err(KeyError::DotSegment));
        assert!(validate_key("a..b/.hidden/..x").is_ok());
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(validate_key("a\0b"), Err(KeyError::Nul));
        assert!(validate_key(&"k".repeat(1024)).is_ok());
        assert_eq!(validate_key(&"k".repeat(1025)), Err(KeyError::TooLong(1025)));
        assert_eq!(validate_key(&"é".repeat(513)), Err(KeyError::TooLong(1026)));
    }

    #[test]
    fn ranges() {
        assert_eq!(RangeSpec::From(2).resolve(10), Some(2..10));
        assert_eq!(RangeSpec::From(10).resolve(10), None);
        assert_eq!(RangeSpec::FromTo(0, 0).resolve(10), Some(0..1));
        assert_eq!(RangeSpec::FromTo(5, 100).resolve(10), Some(5..10));
        assert_eq!(RangeSpec::FromTo(5, 4).resolve(10), None);
        assert_eq!(RangeSpec::Suffix(3).resolve(10), Some(7..10));
        assert_eq!(RangeSpec::Suffix(30).resolve(10), Some(0..10));
        assert_eq!(RangeSpec::Suffix(0).resolve(10), None);
        assert_eq!(RangeSpec::From(0).resolve(0), None);
    }
}

/// An access key of the S3-compatible endpoint, as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S3KeyInfo {
    pub access_key: String,
    pub project: String,
    pub name: String,
    pub created_at: UnixMillis,
    /// Like an API key's: `service` acts as the project's service role, `public` is held to
    /// each bucket's access settings as an anonymous caller.
    #[serde(default)]
    pub scope: S3KeyScope,
}

/// What an S3 access key may do (see [`S3KeyInfo::scope`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum S3KeyScope {
    #[default]
    Service,
    Public,
}

impl S3KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            S3KeyScope::Service => "service",
            S3KeyScope::Public => "public",
        }
    }

    pub fn parse(s: &str) -> Option<S3KeyScope> {
        match s {
            "service" => Some(S3KeyScope::Service),
            "public" => Some(S3KeyScope::Public),
            _ => None,
        }
    }
}

/// Access keys of the S3-compatible endpoint. SigV4 needs the secret itself to verify a
/// signature, so a backend stores it retrievably (protect it like other key material).
pub trait S3KeyStore: Send + Sync + 'static {
    fn create_s3_key(&self, info: &S3KeyInfo, secret: &str) -> crate::Result<()>;
    fn list_s3_keys(&self, project: &str) -> crate::Result<Vec<S3KeyInfo>>;
    /// The key and its secret, for verifying a request (any project: the key names it).
    fn get_s3_key(&self, access_key: &str) -> crate::Result<Option<(S3KeyInfo, String)>>;
    /// Returns whether it existed.
    fn delete_s3_key(&self, project: &str, access_key: &str) -> crate::Result<bool>;
    fn delete_project_s3_keys(&self, project: &str) -> crate::Result<u64>;
}
