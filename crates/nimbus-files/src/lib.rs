//! The files service: per-project buckets of objects (issue 8).
//!
//! It owns what the store does not: bucket names, key rules, access (public read, signed-in
//! users, owner only, or rules in the project's rule language), the limits per bucket (largest
//! object, content types; the quota is checked by the store in the publishing transaction) and
//! per server, signed URLs (HMAC-SHA256), S3 access keys, the uploader identity that object
//! events carry, and housekeeping (the start-up and periodic sweep). Storage is the
//! [`ObjectStore`] trait; the REST API and the S3 endpoint (both in `nimbus-server`) call this.
//!
//! Architecture invariant: no HTTP and no SQL here. Methods block (the store is synchronous, and
//! bodies are `std::io::Read`): call them on blocking threads, e.g. through [`FilesService::call`].

pub mod body;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use nimbus_model::{UnixMillis, now_millis};
use nimbus_rules::{Caller, Env, Operation, RuleSet, RuleSources};
use nimbus_store::StoreError;
use nimbus_store::objects::{
    BucketInfo, BucketSettings, KeyError, ListPage, ListQuery, ObjectData, ObjectError, ObjectMeta,
    ObjectStore, ObjectWrite, PartInfo, RangeSpec, S3KeyInfo, S3KeyScope, S3KeyStore, SweepReport,
    UploadInfo, validate_key,
};
use nimbus_store::usage::{StorageFull, StorageGuard, Unlimited};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

/// Operator bounds of the files service.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Largest object on this server, whatever a bucket says (S3's single-object limit).
    pub max_object_bytes: u64,
    /// Entries per listing page when none is asked for, and the most one page returns.
    pub default_page: u32,
    pub max_page: u32,
    /// Most buckets per project.
    pub max_buckets: usize,
    /// Incomplete multipart uploads older than this are removed by the sweep.
    pub upload_expiry: Duration,
    /// How often the sweep runs after the start-up one, and how old an unreferenced file must be
    /// before a periodic sweep removes it (a write in flight has one for a moment).
    pub sweep_every: Duration,
    pub orphan_grace: Duration,
    /// Longest validity of a signed URL.
    pub max_signed_url: Duration,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            max_object_bytes: 5 << 40,
            default_page: 1000,
            max_page: 1000,
            max_buckets: 1000,
            upload_expiry: Duration::from_secs(7 * 24 * 3600),
            sweep_every: Duration::from_secs(3600),
            orphan_grace: Duration::from_secs(6 * 3600),
            max_signed_url: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Who may do what with a bucket's objects. Service callers (the admin token, a service key, an
/// S3 access key) may always; this governs end users (signed in or anonymous).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// End users may do nothing (signed URLs still work).
    #[default]
    Private,
    /// Anyone may read and list; only service callers write.
    PublicRead,
    /// Any signed-in (non-anonymous) user may read, list, write and delete.
    SignedIn,
    /// A signed-in user may do anything under the key prefix `<user id>/`, nothing else.
    OwnerOnly,
    /// Rules of the project's rule language per operation (`list`, `get`, `create`, `update`,
    /// `delete`), over `auth`, `file` (the stored object: `key`, `size`, `content_type`,
    /// `metadata`, `uploader`; null for list and create) and `request` (`key`, `prefix`,
    /// `content_type`, `size`).
    Rules(RuleSources),
}

/// A bucket's configuration as clients send and see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketConfig {
    pub access: Access,
    /// Largest object, in bytes (the server's limit applies too).
    pub max_object_bytes: Option<u64>,
    /// `image/png`, `image/*` or `*/*`; empty allows every type.
    pub allowed_content_types: Vec<String>,
    /// Most bytes the bucket's objects may take together.
    pub quota_bytes: Option<u64>,
}

/// A bucket as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub name: String,
    #[serde(flatten)]
    pub config: BucketConfig,
    pub created_at: UnixMillis,
    pub objects: u64,
    pub bytes: u64,
}

/// The caller of an object operation.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Admin token, service key, S3 access key: access settings do not apply. `identity` is
    /// what events record as the uploader.
    Service { identity: Value },
    /// An end user: the rules' `auth` value (`null` when anonymous).
    User(Value),
    /// The holder of a verified signed URL: allowed the one operation it was signed for.
    SignedUrl,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal::User(Value::Null)
    }

    /// What object events record as the uploader (or deleter).
    pub fn identity(&self) -> Value {
        match self {
            Principal::Service { identity } => identity.clone(),
            Principal::User(Value::Null) => json!({"kind": "anonymous"}),
            Principal::User(auth) => json!({"kind": "user", "id": auth.get("id")}),
            Principal::SignedUrl => json!({"kind": "signed-url"}),
        }
    }

    fn user_id(&self) -> Option<&str> {
        match self {
            Principal::User(auth) if auth.get("anonymous") != Some(&Value::Bool(true)) => {
                auth.get("id").and_then(Value::as_str)
            }
            _ => None,
        }
    }
}

/// What an access check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    List,
    Write,
    Delete,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(
        "invalid bucket name {0:?}: use 3 to 63 characters of a-z, 0-9, '-' and '.', starting and \
         ending with a letter or digit"
    )]
    InvalidBucket(String),
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
    #[error("{0}")]
    Invalid(String),
    #[error("content type {0:?} is not allowed in this bucket")]
    ContentType(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the signature is not valid")]
    BadSignature,
    #[error("the signed URL has expired")]
    Expired,
    #[error("a project may have at most {0} buckets")]
    TooManyBuckets(usize),
    /// The project's stored-bytes quota is used up: writes that add data are refused until
    /// it deletes some (deletes and reads still work).
    #[error(transparent)]
    StorageFull(#[from] StorageFull),
    #[error(transparent)]
    Object(ObjectError),
    #[error("{0}")]
    Internal(String),
}

impl From<ObjectError> for FilesError {
    fn from(e: ObjectError) -> Self {
        FilesError::Object(e)
    }
}

impl From<StoreError> for FilesError {
    fn from(e: StoreError) -> Self {
        FilesError::Object(ObjectError::Store(e))
    }
}

pub type Result<T, E = FilesError> = std::result::Result<T, E>;

/// Bucket names as S3 allows them (so that every bucket is reachable by every S3 client, and as a
/// virtual host label), without consecutive dots.
pub fn validate_bucket(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = (3..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'.')
        && !name.contains("..");
    if ok { Ok(()) } else { Err(FilesError::InvalidBucket(name.to_string())) }
}

/// Whether `content_type` matches one of `patterns` (`type/sub`, `type/*`, `*/*`), ignoring
/// parameters and case.
pub fn content_type_allowed(patterns: &[String], content_type: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (kind, _) = essence.split_once('/').unwrap_or((&essence, ""));
    patterns.iter().any(|p| {
        let p = p.trim().to_ascii_lowercase();
        p == "*/*" || p == essence || p.strip_suffix("/*").is_some_and(|k| k == kind)
    })
}

/// The service. Cheap to clone.
#[derive(Clone)]
pub struct FilesService {
    store: Arc<dyn ObjectStore>,
    keys: Arc<dyn S3KeyStore>,
    config: Arc<FilesConfig>,
    /// The server's signing secret; each project signs with a key derived from it.
    secret: Arc<[u8]>,
    env: Env,
    /// Asked before every write that adds data (the stored-bytes quota).
    guard: Arc<dyn StorageGuard>,
}

impl std::fmt::Debug for FilesService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesService").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A new multipart upload, or its parts, as the S3 endpoint needs them.
pub type Parts = Vec<PartInfo>;

impl FilesService {
    /// `secret` signs URLs (keep it stable across restarts, or signed URLs stop working).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        keys: Arc<dyn S3KeyStore>,
        config: FilesConfig,
        secret: &[u8],
    ) -> Self {
        FilesService {
            store,
            keys,
            config: Arc::new(config),
            secret: secret.into(),
            env: Env::files(),
            guard: Arc::new(Unlimited),
        }
    }

    /// Check `guard` (the stored-bytes quota) before every write that adds data.
    pub fn with_storage_guard(mut self, guard: Arc<dyn StorageGuard>) -> Self {
        self.guard = guard;
        self
    }

    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    /// Run blocking service calls on tokio's blocking pool.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FilesService) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| FilesError::Internal(format!("files task failed: {e}")))?
    }

    // ---- buckets ----

    fn settings(&self, config: &BucketConfig) -> Result<BucketSettings> {
        if let Access::Rules(sources) = &config.access {
            RuleSet::compile(&self.env, sources)
                .map_err(|e| FilesError::Invalid(format!("invalid access rules: {e}")))?;
        }
        if config.max_object_bytes == Some(0) {
            return Err(FilesError::Invalid("max_object_bytes must be at least 1".into()));
        }
        for p in &config.allowed_content_types {
            if !p.contains('/') || p.len() > 255 {
                return Err(FilesError::Invalid(format!(
                    "allowed content type {p:?} is not `type/subtype`, `type/*` or `*/*`"
                )));
            }
        }
        Ok(BucketSettings {
            access: serde_json::to_value(&config.access)
                .map_err(|e| FilesError::Internal(e.to_string()))?,
            max_object_bytes: config.max_object_bytes,
            allowed_content_types: config.allowed_content_types.clone(),
            quota_bytes: config.quota_bytes,
        })
    }

    fn bucket_view(info: BucketInfo) -> Bucket {
        let s = info.settings;
        Bucket {
            name: info.name,
            config: BucketConfig {
                access: serde_json::from_value(s.access).unwrap_or_default(),
                max_object_bytes: s.max_object_bytes,
                allowed_content_types: s.allowed_content_types,
                quota_bytes: s.quota_bytes,
            },
            created_at: info.created_at,
            objects: info.objects,
            bytes: info.bytes,
        }
    }

    pub fn create_bucket(
        &self,
        project: &str,
        name: &str,
        config: &BucketConfig,
    ) -> Result<Bucket> {
        validate_bucket(name)?;
        let settings = self.settings(config)?;
        if self.store.list_buckets(project)?.len() >= self.config.max_buckets {
            return Err(FilesError::TooManyBuckets(self.config.max_buckets));
        }
        Ok(Self::bucket_view(self.store.create_bucket(project, name, &settings)?))
    }

    pub fn update_bucket(
        &self,
        project: &str,
        name: &str,
        config: &BucketConfig,
    ) -> Result<Bucket> {
        validate_bucket(name)?;
        let settings = self.settings(config)?;
        Ok(Self::bucket_view(self.store.update_bucket(project, name, &settings)?))
    }

    pub fn get_bucket(&self, project: &str, name: &str) -> Result<Bucket> {
        Ok(Self::bucket_view(self.bucket_info(project, name)?))
    }

    fn bucket_info(&self, project: &str, name: &str) -> Result<BucketInfo> {
        validate_bucket(name)?;
        self.store
            .get_bucket(project, name)?
            .ok_or_else(|| ObjectError::NoSuchBucket(name.to_string()).into())
    }

    pub fn list_buckets(&self, project: &str) -> Result<Vec<Bucket>> {
        Ok(self.store.list_buckets(project)?.into_iter().map(Self::bucket_view).collect())
    }

    /// Delete a bucket; one with objects only if `force` (with a deleted event per object).
    pub fn delete_bucket(
        &self,
        project: &str,
        name: &str,
        force: bool,
        who: &Principal,
    ) -> Result<u64> {
        validate_bucket(name)?;
        self.require_service(who)?;
        Ok(self.store.delete_bucket(project, name, force, &who.identity())?)
    }

    fn require_service(&self, who: &Principal) -> Result<()> {
        match who {
            Principal::Service { .. } => Ok(()),
            _ => Err(FilesError::Forbidden("only service callers may manage buckets".into())),
        }
    }

    // ---- access ----

    /// May `who` do `op` on `key` (or list under `prefix`) of `bucket`? `file` is the stored
    /// object when there is one; `request` what the caller sends (content type, size).
    pub fn authorize(
        &self,
        bucket: &BucketInfo,
        op: Op,
        who: &Principal,
        key: &str,
        file: Option<&ObjectMeta>,
        request: &Value,
    ) -> Result<()> {
        let auth = match who {
            Principal::Service { .. } => return Ok(()),
            Principal::SignedUrl => {
                // The signature was checked for exactly this method and key by the caller.
                return Ok(());
            }
            Principal::User(auth) => auth,
        };
        let access: Access =
            serde_json::from_value(bucket.settings.access.clone()).unwrap_or_default();
        let allowed = match &access {
            Access::Private => false,
            Access::PublicRead => matches!(op, Op::Read | Op::List),
            Access::SignedIn => who.user_id().is_some(),
            Access::OwnerOnly => who.user_id().is_some_and(|id| {
                let mine = format!("{id}/");
                key.starts_with(&mine)
            }),
            Access::Rules(sources) => {
                let rules = RuleSet::compile(&self.env, sources)
                    .map_err(|e| FilesError::Internal(format!("stored rules: {e}")))?;
                let operation = match op {
                    Op::Read => Operation::Get,
                    Op::List => Operation::List,
                    Op::Write if file.is_some() => Operation::Update,
                    Op::Write => Operation::Create,
                    Op::Delete => Operation::Delete,
                };
                let file_value = file.map(|f| {
                    json!({"bucket": f.bucket, "key": f.key, "size": f.size,
                           "content_type": f.content_type, "metadata": f.metadata,
                           "uploader": f.uploader, "created_at": f.created_at})
                });
                let file_value = file_value.unwrap_or(Value::Null);
                let ctx = self
                    .env
                    .context()
                    .bind("file", &file_value)
                    .and_then(|c| c.bind("request", request))
                    .map_err(|e| FilesError::Internal(e.to_string()))?;
                rules.check(operation, Caller::User(auth), &ctx).is_allowed()
            }
        };
        if allowed {
            Ok(())
        } else if auth.is_null() {
            Err(FilesError::Unauthorized("sign in to access this bucket".into()))
        } else {
            Err(FilesError::Forbidden("the bucket's access settings deny this".into()))
        }
    }

    fn max_bytes(&self, bucket: &BucketInfo) -> u64 {
        bucket.settings.max_object_bytes.unwrap_or(u64::MAX).min(self.config.max_object_bytes)
    }

    /// May `who` do `op` on `key` (or under the prefix `key` for `List`) of `bucket`, judged
    /// without a stored object (bucket-level checks of the S3 endpoint).
    pub fn authorize_in(
        &self,
        project: &str,
        bucket: &str,
        op: Op,
        who: &Principal,
        key: &str,
    ) -> Result<()> {
        let info = self.bucket_info(project, bucket)?;
        self.authorize(&info, op, who, key, None, &json!({"key": key, "prefix": key}))
    }

    /// Check a declared body length against the limits before reading any of it.
    pub fn check_declared_size(&self, project: &str, bucket: &str, size: u64) -> Result<()> {
        let info = self.bucket_info(project, bucket)?;
        let limit = self.max_bytes(&info);
        if size > limit {
            return Err(ObjectError::TooLarge { limit }.into());
        }
        Ok(())
    }

    // ---- objects ----

    /// Store `data` as `key` (streaming; at most the bucket's and server's size limit).
    #[allow(clippy::too_many_arguments)]
    pub fn put_object(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
        who: &Principal,
        declared_size: Option<u64>,
        data: &mut dyn Read,
    ) -> Result<ObjectMeta> {
        validate_key(key)?;
        let info = self.bucket_info(project, bucket)?;
        let existing = self.store.head(project, bucket, key)?;
        let request = json!({"key": key, "content_type": content_type, "size": declared_size});
        self.authorize(&info, Op::Write, who, key, existing.as_ref(), &request)?;
        self.guard.may_store(project)?;
        if !content_type_allowed(&info.settings.allowed_content_types, content_type) {
            return Err(FilesError::ContentType(content_type.to_string()));
        }
        check_metadata(metadata)?;
        let limit = self.max_bytes(&info);
        if declared_size.is_some_and(|s| s > limit) {
            return Err(ObjectError::TooLarge { limit }.into());
        }
        let uploader = who.identity();
        let write =
            ObjectWrite { project, bucket, key, content_type, metadata, uploader: &uploader };
        Ok(self.store.put(&write, data, Some(limit))?)
    }

    pub fn head_object(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        who: &Principal,
    ) -> Result<ObjectMeta> {
        validate_key(key)?;
        let info = self.bucket_info(project, bucket)?;
        let meta = self.store.head(project, bucket, key)?;
        self.authorize(&info, Op::Read, who, key, meta.as_ref(), &json!({"key": key}))?;
        meta.ok_or_else(|| ObjectError::NoSuchKey(key.to_string()).into())
    }

    pub fn open_object(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        range: Option<RangeSpec>,
        who: &Principal,
    ) -> Result<ObjectData> {
        validate_key(key)?;
        let info = self.bucket_info(project, bucket)?;
        if let Principal::User(_) = who {
            // Rules may look at the stored object: check before reading any byte.
            let meta = self.store.head(project, bucket, key)?;
            self.authorize(&info, Op::Read, who, key, meta.as_ref(), &json!({"key": key}))?;
        }
        Ok(self.store.open(project, bucket, key, range)?)
    }

    /// List objects. `cursor` is a previous page's `next`; `start_after` an S3-style key.
    #[allow(clippy::too_many_arguments)]
    pub fn list_objects(
        &self,
        project: &str,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        cursor: Option<String>,
        limit: Option<u32>,
        who: &Principal,
    ) -> Result<ListPage> {
        let info = self.bucket_info(project, bucket)?;
        if prefix.len() > nimbus_store::objects::MAX_KEY_BYTES || prefix.contains('\0') {
            return Err(FilesError::Invalid("the prefix is not a valid key prefix".into()));
        }
        if delimiter.is_some_and(|d| d.len() > 64 || d.contains('\0')) {
            return Err(FilesError::Invalid("the delimiter is longer than 64 bytes".into()));
        }
        self.authorize(&info, Op::List, who, prefix, None, &json!({"prefix": prefix}))?;
        let limit = limit.unwrap_or(self.config.default_page).clamp(1, self.config.max_page);
        let query = ListQuery {
            prefix: prefix.to_string(),
            delimiter: delimiter.map(str::to_string),
            from: cursor,
            limit,
        };
        Ok(self.store.list(project, bucket, &query)?)
    }

    /// Copy an object, keeping its content type and metadata unless `replace` gives new ones.
    /// The caller must be allowed to read the source and write the destination, under the
    /// destination's limits. The store shares the bytes when it can (the local store links).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_object(
        &self,
        project: &str,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        replace: Option<(String, BTreeMap<String, String>)>,
        who: &Principal,
    ) -> Result<ObjectMeta> {
        validate_key(dst_key)?;
        let src = self.head_object(project, src_bucket, src_key, who)?;
        let (content_type, metadata) =
            replace.unwrap_or_else(|| (src.content_type.clone(), src.metadata.clone()));
        let info = self.bucket_info(project, dst_bucket)?;
        let existing = self.store.head(project, dst_bucket, dst_key)?;
        let request = json!({"key": dst_key, "content_type": content_type, "size": src.size});
        self.authorize(&info, Op::Write, who, dst_key, existing.as_ref(), &request)?;
        self.guard.may_store(project)?;
        if !content_type_allowed(&info.settings.allowed_content_types, &content_type) {
            return Err(FilesError::ContentType(content_type));
        }
        check_metadata(&metadata)?;
        let limit = self.max_bytes(&info);
        let uploader = who.identity();
        let write = ObjectWrite {
            project,
            bucket: dst_bucket,
            key: dst_key,
            content_type: &content_type,
            metadata: &metadata,
            uploader: &uploader,
        };
        Ok(self.store.copy(src_bucket, src_key, &write, Some(limit))?)
    }

    pub fn delete_object(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        who: &Principal,
    ) -> Result<Option<ObjectMeta>> {
        validate_key(key)?;
        let info = self.bucket_info(project, bucket)?;
        let meta = self.store.head(project, bucket, key)?;
        self.authorize(&info, Op::Delete, who, key, meta.as_ref(), &json!({"key": key}))?;
        Ok(self.store.delete(project, bucket, key, &who.identity())?)
    }

    // ---- multipart (service callers: the S3 endpoint) ----

    pub fn create_upload(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
        who: &Principal,
    ) -> Result<UploadInfo> {
        validate_key(key)?;
        let info = self.bucket_info(project, bucket)?;
        let request = json!({"key": key, "content_type": content_type});
        self.authorize(&info, Op::Write, who, key, None, &request)?;
        if !content_type_allowed(&info.settings.allowed_content_types, content_type) {
            return Err(FilesError::ContentType(content_type.to_string()));
        }
        check_metadata(metadata)?;
        let uploader = who.identity();
        let write =
            ObjectWrite { project, bucket, key, content_type, metadata, uploader: &uploader };
        Ok(self.store.create_upload(&write)?)
    }

    /// The upload, checked to be of `bucket` and `key`.
    pub fn get_upload(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        upload: &str,
    ) -> Result<UploadInfo> {
        let info = self.store.get_upload(project, bucket, upload)?;
        if info.key != key {
            return Err(ObjectError::NoSuchUpload(upload.to_string()).into());
        }
        Ok(info)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn put_part(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        upload: &str,
        number: u32,
        who: &Principal,
        data: &mut dyn Read,
    ) -> Result<PartInfo> {
        if !(1..=10_000).contains(&number) {
            return Err(FilesError::Invalid("part numbers are 1 to 10000".into()));
        }
        let info = self.bucket_info(project, bucket)?;
        self.get_upload(project, bucket, key, upload)?;
        self.authorize(&info, Op::Write, who, key, None, &json!({"key": key}))?;
        self.guard.may_store(project)?;
        let limit = self.max_bytes(&info);
        Ok(self.store.put_part(project, bucket, upload, number, data, Some(limit))?)
    }

    pub fn list_parts(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        upload: &str,
    ) -> Result<Parts> {
        self.get_upload(project, bucket, key, upload)?;
        Ok(self.store.list_parts(project, bucket, upload)?)
    }

    pub fn list_uploads(
        &self,
        project: &str,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>> {
        self.bucket_info(project, bucket)?;
        Ok(self.store.list_uploads(project, bucket, prefix)?)
    }

    pub fn complete_upload(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        upload: &str,
        parts: &[(u32, String)],
        who: &Principal,
    ) -> Result<ObjectMeta> {
        let info = self.bucket_info(project, bucket)?;
        self.get_upload(project, bucket, key, upload)?;
        let existing = self.store.head(project, bucket, key)?;
        self.authorize(&info, Op::Write, who, key, existing.as_ref(), &json!({"key": key}))?;
        self.guard.may_store(project)?;
        let limit = self.max_bytes(&info);
        Ok(self.store.complete_upload(project, bucket, upload, parts, Some(limit))?)
    }

    pub fn abort_upload(&self, project: &str, bucket: &str, key: &str, upload: &str) -> Result<()> {
        self.get_upload(project, bucket, key, upload)?;
        self.store.abort_upload(project, bucket, upload)?;
        Ok(())
    }

    // ---- signed URLs ----

    fn signing_key(&self, project: &str) -> Hmac<Sha256> {
        // Per-project key derived from the server secret: one project's signatures say nothing
        // about another's.
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        derive.update(b"nimbus-files-url\0");
        derive.update(project.as_bytes());
        let key = derive.finalize().into_bytes();
        <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes keys of any length")
    }

    fn signing_mac(
        &self,
        project: &str,
        method: &str,
        bucket: &str,
        key: &str,
        expires: i64,
    ) -> Hmac<Sha256> {
        let mut mac = self.signing_key(project);
        // Length-prefixed fields: no two (method, bucket, key, expiry) encode alike.
        for field in
            [method.as_bytes(), bucket.as_bytes(), key.as_bytes(), expires.to_string().as_bytes()]
        {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// Sign `method` (`GET` or `PUT`) on `key` until `expires` (unix seconds). Returns the hex
    /// signature.
    pub fn sign(
        &self,
        project: &str,
        method: &str,
        bucket: &str,
        key: &str,
        expires: i64,
    ) -> Result<String> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        if !matches!(method, "GET" | "PUT") {
            return Err(FilesError::Invalid("signed URLs are for GET or PUT".into()));
        }
        let now = now_millis() / 1000;
        let longest = self.config.max_signed_url.as_secs() as i64;
        if expires <= now || expires > now + longest {
            return Err(FilesError::Invalid(format!(
                "a signed URL expires between now and {longest} seconds from now"
            )));
        }
        Ok(hex::encode(
            self.signing_mac(project, method, bucket, key, expires).finalize().into_bytes(),
        ))
    }

    /// Check a signed URL's signature (constant time) and expiry.
    pub fn verify_signature(
        &self,
        project: &str,
        method: &str,
        bucket: &str,
        key: &str,
        expires: i64,
        signature: &str,
    ) -> Result<()> {
        let method = if method == "HEAD" { "GET" } else { method };
        let sig = hex::decode(signature).map_err(|_| FilesError::BadSignature)?;
        self.signing_mac(project, method, bucket, key, expires)
            .verify_slice(&sig)
            .map_err(|_| FilesError::BadSignature)?;
        if now_millis() / 1000 >= expires {
            return Err(FilesError::Expired);
        }
        Ok(())
    }

    // ---- S3 access keys ----

    /// Issue an S3 access key for `project`. Returns the key and its secret (shown once).
    pub fn create_s3_key(
        &self,
        project: &str,
        name: &str,
        scope: S3KeyScope,
    ) -> Result<(S3KeyInfo, String)> {
        if name.len() > 200 {
            return Err(FilesError::Invalid("the key name is longer than 200 bytes".into()));
        }
        let mut id = [0u8; 10];
        let mut secret = [0u8; 30];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        let info = S3KeyInfo {
            // "NB" + 20 hex: looks like AWS key ids (20 characters), and says whose it is.
            access_key: format!("NB{}", hex::encode_upper(&id[..9])),
            project: project.to_string(),
            name: name.to_string(),
            created_at: now_millis(),
            scope,
        };
        let secret = hex::encode(secret);
        self.keys.create_s3_key(&info, &secret)?;
        Ok((info, secret))
    }

    pub fn list_s3_keys(&self, project: &str) -> Result<Vec<S3KeyInfo>> {
        Ok(self.keys.list_s3_keys(project)?)
    }

    pub fn delete_s3_key(&self, project: &str, access_key: &str) -> Result<bool> {
        Ok(self.keys.delete_s3_key(project, access_key)?)
    }

    /// The key and its secret, for SigV4 verification.
    pub fn lookup_s3_key(&self, access_key: &str) -> Result<Option<(S3KeyInfo, String)>> {
        Ok(self.keys.get_s3_key(access_key)?)
    }

    // ---- lifecycle ----

    /// The files part of deleting a project: its buckets, objects, uploads and S3 keys.
    pub fn delete_project(&self, project: &str) -> Result<u64> {
        self.keys.delete_project_s3_keys(project)?;
        Ok(self.store.delete_project(project)?)
    }

    /// At start-up no write is in flight: every unreferenced file is an orphan.
    pub fn startup_sweep(&self) -> Result<SweepReport> {
        let now = now_millis();
        let report =
            self.store.sweep(now, 0, now - self.config.upload_expiry.as_millis() as i64)?;
        if report != SweepReport::default() {
            tracing::info!(?report, "swept file storage");
        }
        Ok(report)
    }

    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(this.config.sweep_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let result = this
                    .call(|s| {
                        let now = now_millis();
                        Ok(s.store.sweep(
                            now,
                            s.config.orphan_grace.as_millis() as i64,
                            now - s.config.upload_expiry.as_millis() as i64,
                        )?)
                    })
                    .await;
                match result {
                    Ok(r) if r == SweepReport::default() => {}
                    Ok(report) => tracing::info!(?report, "swept file storage"),
                    Err(e) => tracing::warn!(error = %e, "sweeping file storage"),
                }
            }
        })
    }
}

/// User metadata: S3's limit of 2 KiB in total, names of `[a-z0-9-_]`.
fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    let total: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > 2048 {
        return Err(FilesError::Invalid("user metadata is larger than 2 KiB".into()));
    }
    for k in metadata.keys() {
        let ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !ok {
            return Err(FilesError::Invalid(format!(
                "metadata name {k:?}: use lowercase letters, digits, '-', '_' and '.'"
            )));
        }
    }
    Ok(())
}

/// Buckets, objects, uploads and S3 access keys.
impl nimbus_model::lifecycle::ProjectLifecycle for FilesService {
    fn part(&self) -> &'static str {
        "files"
    }

    fn delete_project_data<'a>(
        &'a self,
        project: &'a str,
    ) -> nimbus_model::lifecycle::PartFuture<'a> {
        let p = project.to_owned();
        Box::pin(async move { Ok(self.call(move |f| f.delete_project(&p)).await.map(drop)?) })
    }
}

#[cfg(test)]
mod tests;
