//! [`ObjectStore`] on SQLite (metadata, events; migration 6) + a local directory (bytes).
//!
//! Layout under the root: `tmp/` (writes in progress), `data/<xx>/<id>` (published or staged
//! bytes; `id` is a UUIDv7 in hex, `xx` its last two digits to spread files over directories).
//! User keys never reach the file system.
//!
//! A write streams into a temporary file while computing its MD5, `fsync`s it, renames it to its
//! id under `data/` (and `fsync`s the directory), and only then commits the metadata and the
//! event in one transaction. A kill at any instant therefore leaves either the previous state or
//! the complete new one; at worst an unreferenced file under `data/` or `tmp/`, which
//! [`ObjectStore::sweep`] removes. Files a commit stopped referencing are unlinked after the
//! commit (a reader that opened one keeps reading it: unlinking does not affect open files).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};
use nimbus_model::{UnixMillis, now_millis};
use nimbus_store::StoreError;
use nimbus_store::events::NewEvent;
use nimbus_store::objects::{
    BucketInfo, BucketSettings, EVENT_CREATED, EVENT_DELETED, ListPage, ListQuery, ObjectData,
    ObjectError, ObjectMeta, ObjectResult, ObjectStore, ObjectWrite, PartInfo, RangeSpec,
    S3KeyInfo, S3KeyScope, S3KeyStore, SweepReport, UploadInfo, object_event, prefix_upper_bound,
};
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde_json::Value;

use crate::error::{Context, backend};
use crate::sqlite::SqliteStore;

/// Copy buffer of uploads (big enough that per-chunk costs vanish next to hashing and writing,
/// small per request; the size of the batches `nimbus_files::body` hands over).
const CHUNK: usize = 1 << 20;

/// The first read of an upload (most objects are small: no 1 MiB buffer for them).
const FIRST_CHUNK: usize = 64 << 10;

/// Files and metadata of the objects of every project.
pub struct LocalObjectStore {
    db: Arc<SqliteStore>,
    root: PathBuf,
}

impl std::fmt::Debug for LocalObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalObjectStore").field("root", &self.root).finish_non_exhaustive()
    }
}

/// Bytes written under `data/` but not (yet) referenced by a commit: removed on drop unless
/// [`Staged::keep`] was called, so that every failed publish cleans up after itself.
struct Staged {
    path: PathBuf,
    id: String,
    size: u64,
    md5: [u8; 16],
    keep: bool,
}

impl Staged {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ObjectError + '_ {
    move |e| ObjectError::Store(backend(what, e))
}

/// Read into `buf` until it is full or `data` ends; the number of bytes read.
fn fill(data: &mut dyn Read, buf: &mut [u8]) -> ObjectResult<usize> {
    let mut n = 0;
    while n < buf.len() {
        match data.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ObjectError::Body(e)),
        }
    }
    Ok(n)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Run `f` in a write transaction where it may fail with an [`ObjectError`] (then nothing is
/// committed) and return the positions of the events it appended.
fn write_tx<T>(
    db: &SqliteStore,
    what: &str,
    f: impl FnOnce(&Transaction<'_>) -> ObjectResult<(T, Vec<NewEvent>)>,
) -> ObjectResult<T> {
    let mut conn = db.writer_lock();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .with_context(|| format!("{what}: starting a transaction"))?;
    // An error drops `tx`, which rolls back.
    let (out, events) = f(&tx)?;
    let positions = crate::events::append_in(&tx, &events)?;
    tx.commit().with_context(|| format!("{what}: committing"))?;
    drop(conn);
    if let Some(last) = positions.last() {
        db.events_committed(*last);
    }
    Ok(out)
}

fn json_text(v: &impl serde::Serialize) -> ObjectResult<String> {
    serde_json::to_string(v).context("encoding JSON").map_err(ObjectError::from)
}

const META_COLUMNS: &str = "bucket, key, size, content_type, etag, metadata, uploader, created_at";

fn meta_from_row(row: &Row<'_>) -> rusqlite::Result<ObjectMeta> {
    let metadata: String = row.get(5)?;
    let uploader: String = row.get(6)?;
    Ok(ObjectMeta {
        bucket: row.get(0)?,
        key: row.get(1)?,
        size: row.get::<_, i64>(2)? as u64,
        content_type: row.get(3)?,
        etag: row.get(4)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        uploader: serde_json::from_str(&uploader).unwrap_or(Value::Null),
        created_at: row.get(7)?,
    })
}

fn bucket_from_row(row: &Row<'_>) -> rusqlite::Result<BucketInfo> {
    let settings: String = row.get(1)?;
    Ok(BucketInfo {
        name: row.get(0)?,
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        created_at: row.get(2)?,
        objects: row.get::<_, i64>(3)? as u64,
        bytes: row.get::<_, i64>(4)? as u64,
    })
}

const BUCKET_COLUMNS: &str = "name, settings, created_at, objects, bytes";

fn upload_from_row(row: &Row<'_>) -> rusqlite::Result<UploadInfo> {
    let metadata: String = row.get(4)?;
    let uploader: String = row.get(5)?;
    Ok(UploadInfo {
        id: row.get(0)?,
        bucket: row.get(1)?,
        key: row.get(2)?,
        content_type: row.get(3)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        uploader: serde_json::from_str(&uploader).unwrap_or(Value::Null),
        created_at: row.get(6)?,
    })
}

const UPLOAD_COLUMNS: &str = "id, bucket, key, content_type, metadata, uploader, created_at";

/// The bucket's quota and current bytes, or `NoSuchBucket`.
fn bucket_usage(
    tx: &Transaction<'_>,
    project: &str,
    bucket: &str,
) -> ObjectResult<(Option<u64>, u64)> {
    let row: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT settings, bytes FROM object_buckets WHERE project = ?1 AND name = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![project, bucket], |r| Ok((r.get(0)?, r.get(1)?))).optional()
        })
        .context("reading a bucket")?;
    let (settings, bytes) = row.ok_or_else(|| ObjectError::NoSuchBucket(bucket.to_string()))?;
    let settings: BucketSettings = serde_json::from_str(&settings).unwrap_or_default();
    Ok((settings.quota_bytes, bytes as u64))
}

/// Insert or replace an object row, keeping the bucket's counters and checking its quota.
/// Returns the data id the row replaced, if any.
fn publish(
    tx: &Transaction<'_>,
    project: &str,
    meta: &ObjectMeta,
    data_id: &str,
) -> ObjectResult<Option<String>> {
    let (quota, bytes) = bucket_usage(tx, project, &meta.bucket)?;
    let old: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT data_id, size FROM objects WHERE project = ?1 AND bucket = ?2 AND key = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![project, meta.bucket, meta.key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .context("reading an object")?;
    let old_size = old.as_ref().map_or(0, |(_, s)| *s as u64);
    let new_bytes = bytes - old_size.min(bytes) + meta.size;
    if let Some(quota) = quota
        && new_bytes > quota
    {
        return Err(ObjectError::QuotaExceeded { quota });
    }
    tx.prepare_cached(
        // An upsert, not `INSERT OR REPLACE`: a replaced row is then an UPDATE, which the
        // stored-bytes trigger (migration 13) sees; REPLACE's delete fires no trigger.
        "INSERT INTO objects (project, bucket, key, data_id, size, content_type, etag,
             metadata, uploader, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (project, bucket, key) DO UPDATE SET data_id = excluded.data_id,
             size = excluded.size, content_type = excluded.content_type, etag = excluded.etag,
             metadata = excluded.metadata, uploader = excluded.uploader,
             created_at = excluded.created_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            project,
            meta.bucket,
            meta.key,
            data_id,
            meta.size as i64,
            meta.content_type,
            meta.etag,
            serde_json::to_string(&meta.metadata).unwrap_or_else(|_| "{}".into()),
            serde_json::to_string(&meta.uploader).unwrap_or_else(|_| "null".into()),
            meta.created_at
        ])
    })
    .context("publishing an object")?;
    tx.prepare_cached(
        "UPDATE object_buckets SET objects = objects + ?3, bytes = ?4 WHERE project = ?1 AND name = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![project, meta.bucket, i64::from(old.is_none()), new_bytes as i64])
    })
    .context("counting a bucket's usage")?;
    Ok(old.map(|(id, _)| id))
}

impl LocalObjectStore {
    /// Use `db` for metadata and `root` (created, mode 0700) for bytes.
    pub fn open(db: Arc<SqliteStore>, root: &Path) -> Result<Self, StoreError> {
        for dir in [root.join("tmp"), root.join("data")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", root.display()))?;
        }
        Ok(LocalObjectStore { db, root: root.to_path_buf() })
    }

    fn data_path(&self, id: &str) -> PathBuf {
        let shard = &id[id.len().saturating_sub(2)..];
        self.root.join("data").join(shard).join(id)
    }

    fn remove_data(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if let Err(e) = std::fs::remove_file(self.data_path(&id))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                // The sweep will retry: an unreferenced file is only wasted space.
                tracing::warn!(id, error = %e, "removing an object file");
            }
        }
    }

    /// Stream `data` into a new file under `data/` (via `tmp/`, fsync, rename, fsync of the
    /// directory) and return it unreferenced.
    ///
    /// Bodies over one [`CHUNK`] are hashed on this thread and written by a second one, fed
    /// through a channel of one chunk: MD5 (the slowest step, serial by nature) and the writes
    /// overlap instead of adding up. Three chunk buffers at most are alive per upload. A body
    /// that fits in one chunk is written inline (no thread for small objects).
    fn stage(&self, data: &mut dyn Read, max_bytes: Option<u64>) -> ObjectResult<Staged> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(io("creating a temporary file"))?;
        let mut md5 = Md5::new();
        let mut size: u64 = 0;
        let mut take = |n: usize| {
            size += n as u64;
            match max_bytes {
                Some(limit) if size > limit => Err(ObjectError::TooLarge { limit }),
                _ => Ok(()),
            }
        };
        // Small objects are common: read the first bytes into a small buffer, grown if more come.
        let mut buf = vec![0u8; FIRST_CHUNK];
        let mut n = fill(data, &mut buf)?;
        if n == FIRST_CHUNK {
            buf.resize(CHUNK, 0);
            n += fill(data, &mut buf[FIRST_CHUNK..])?;
        }
        take(n)?;
        md5.update(&buf[..n]);
        if n < CHUNK {
            tmp.write_all(&buf[..n]).map_err(io("writing an object"))?;
        } else {
            let file = tmp.as_file();
            std::thread::scope(|scope| -> ObjectResult<()> {
                let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(1);
                let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
                let writer = std::thread::Builder::new()
                    .name("nimbus-obj-write".into())
                    .spawn_scoped(scope, move || -> std::io::Result<()> {
                        let mut file = file;
                        for (buf, n) in full_rx {
                            file.write_all(&buf[..n])?;
                            let _ = free_tx.send(buf);
                        }
                        Ok(())
                    })
                    .map_err(io("starting an object writer"))?;
                let mut chunk = (buf, n);
                let read = loop {
                    let last = chunk.1 < CHUNK;
                    if full_tx.send(chunk).is_err() {
                        break Ok(()); // the writer failed: its error is reported below
                    }
                    if last {
                        break Ok(());
                    }
                    // At most 3 buffers exist: one queued, one being written, this one.
                    let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
                    let n = match fill(data, &mut buf) {
                        Ok(n) => n,
                        Err(e) => break Err(e),
                    };
                    if let Err(e) = take(n) {
                        break Err(e);
                    }
                    md5.update(&buf[..n]);
                    chunk = (buf, n);
                };
                drop(full_tx);
                let written =
                    writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                read?;
                written.map_err(io("writing an object"))
            })?;
        }
        self.finish_stage(tmp, size, md5.finalize().into())
    }

    fn finish_stage(
        &self,
        tmp: tempfile::NamedTempFile,
        size: u64,
        md5: [u8; 16],
    ) -> ObjectResult<Staged> {
        tmp.as_file().sync_all().map_err(io("syncing an object"))?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let path = self.data_path(&id);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        std::fs::create_dir_all(&dir).map_err(io("creating a data directory"))?;
        tmp.persist(&path)
            .map_err(|e| ObjectError::Store(backend("publishing a file", e.error)))?;
        let staged = Staged { path, id, size, md5, keep: false };
        sync_dir(&dir).map_err(io("syncing a data directory"))?;
        Ok(staged)
    }

    fn read_meta(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
    ) -> ObjectResult<Option<(ObjectMeta, String)>> {
        Ok(self.db.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {META_COLUMNS}, data_id FROM objects
                 WHERE project = ?1 AND bucket = ?2 AND key = ?3"
            ))
            .and_then(|mut s| {
                s.query_row(params![project, bucket, key], |r| Ok((meta_from_row(r)?, r.get(8)?)))
                    .optional()
            })
            .context("reading an object")
        })?)
    }

    fn require_bucket(&self, project: &str, bucket: &str) -> ObjectResult<()> {
        match self.get_bucket(project, bucket)? {
            Some(_) => Ok(()),
            None => Err(ObjectError::NoSuchBucket(bucket.to_string())),
        }
    }

    /// Delete uploads (with their parts) matching `condition`, returning the parts' data ids.
    fn delete_uploads_in(
        tx: &Transaction<'_>,
        condition: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> ObjectResult<(u64, Vec<String>)> {
        let ids: Vec<String> = tx
            .prepare(&format!(
                "SELECT p.data_id FROM object_parts p JOIN object_uploads u ON u.id = p.upload_id
                 WHERE {condition}"
            ))
            .and_then(|mut s| s.query_map(args, |r| r.get(0))?.collect())
            .context("listing upload parts")?;
        let n = tx
            .execute(&format!("DELETE FROM object_uploads AS u WHERE {condition}"), args)
            .context("deleting uploads")?;
        Ok((n as u64, ids))
    }
}

impl ObjectStore for LocalObjectStore {
    fn create_bucket(
        &self,
        project: &str,
        name: &str,
        settings: &BucketSettings,
    ) -> ObjectResult<BucketInfo> {
        let text = json_text(settings)?;
        let now = now_millis();
        write_tx(&self.db, "creating a bucket", |tx| {
            let n = tx
                .execute(
                    "INSERT INTO object_buckets (project, name, settings, created_at)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                    params![project, name, text, now],
                )
                .context("creating a bucket")?;
            if n == 0 {
                return Err(ObjectError::BucketExists(name.to_string()));
            }
            let info = BucketInfo {
                name: name.to_string(),
                settings: settings.clone(),
                created_at: now,
                objects: 0,
                bytes: 0,
            };
            Ok((info, Vec::new()))
        })
    }

    fn update_bucket(
        &self,
        project: &str,
        name: &str,
        settings: &BucketSettings,
    ) -> ObjectResult<BucketInfo> {
        let text = json_text(settings)?;
        write_tx(&self.db, "updating a bucket", |tx| {
            let info = tx
                .query_row(
                    &format!(
                        "UPDATE object_buckets SET settings = ?3 WHERE project = ?1 AND name = ?2
                         RETURNING {BUCKET_COLUMNS}"
                    ),
                    params![project, name, text],
                    bucket_from_row,
                )
                .optional()
                .context("updating a bucket")?;
            let info = info.ok_or_else(|| ObjectError::NoSuchBucket(name.to_string()))?;
            Ok((info, Vec::new()))
        })
    }

    fn get_bucket(&self, project: &str, name: &str) -> ObjectResult<Option<BucketInfo>> {
        Ok(self.db.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {BUCKET_COLUMNS} FROM object_buckets WHERE project = ?1 AND name = ?2"
            ))
            .and_then(|mut s| s.query_row(params![project, name], bucket_from_row).optional())
            .context("reading a bucket")
        })?)
    }

    fn list_buckets(&self, project: &str) -> ObjectResult<Vec<BucketInfo>> {
        Ok(self.db.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {BUCKET_COLUMNS} FROM object_buckets WHERE project = ?1 ORDER BY name"
            ))
            .and_then(|mut s| s.query_map([project], bucket_from_row)?.collect())
            .context("listing buckets")
        })?)
    }

    fn delete_bucket(
        &self,
        project: &str,
        name: &str,
        force: bool,
        actor: &Value,
    ) -> ObjectResult<u64> {
        let (count, files) = write_tx(&self.db, "deleting a bucket", |tx| {
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM object_buckets WHERE project = ?1 AND name = ?2)",
                    params![project, name],
                    |r| r.get(0),
                )
                .context("reading a bucket")?;
            if !exists {
                return Err(ObjectError::NoSuchBucket(name.to_string()));
            }
            let metas: Vec<(ObjectMeta, String)> = tx
                .prepare(&format!(
                    "SELECT {META_COLUMNS}, data_id FROM objects WHERE project = ?1 AND bucket = ?2"
                ))
                .and_then(|mut s| {
                    s.query_map(params![project, name], |r| Ok((meta_from_row(r)?, r.get(8)?)))?
                        .collect()
                })
                .context("listing a bucket's objects")?;
            let uploads: i64 = tx
                .query_row(
                    "SELECT count(*) FROM object_uploads WHERE project = ?1 AND bucket = ?2",
                    params![project, name],
                    |r| r.get(0),
                )
                .context("counting uploads")?;
            if !force && (!metas.is_empty() || uploads > 0) {
                return Err(ObjectError::BucketNotEmpty(name.to_string()));
            }
            tx.execute(
                "DELETE FROM objects WHERE project = ?1 AND bucket = ?2",
                params![project, name],
            )
            .context("deleting a bucket's objects")?;
            let (_, mut files) = Self::delete_uploads_in(
                tx,
                "u.project = ?1 AND u.bucket = ?2",
                &[&project, &name],
            )?;
            tx.execute(
                "DELETE FROM object_buckets WHERE project = ?1 AND name = ?2",
                params![project, name],
            )
            .context("deleting a bucket")?;
            let events =
                metas.iter().map(|(m, _)| object_event(project, EVENT_DELETED, m, actor)).collect();
            files.extend(metas.iter().map(|(_, id)| id.clone()));
            Ok(((metas.len() as u64, files), events))
        })?;
        self.remove_data(files);
        Ok(count)
    }

    fn put(
        &self,
        write: &ObjectWrite<'_>,
        data: &mut dyn Read,
        max_bytes: Option<u64>,
    ) -> ObjectResult<ObjectMeta> {
        // Fail fast without reading the body when the bucket is missing (checked again at commit).
        self.require_bucket(write.project, write.bucket)?;
        let staged = self.stage(data, max_bytes)?;
        let meta = ObjectMeta {
            bucket: write.bucket.to_string(),
            key: write.key.to_string(),
            size: staged.size,
            content_type: write.content_type.to_string(),
            etag: hex::encode(staged.md5),
            metadata: write.metadata.clone(),
            created_at: now_millis(),
            uploader: write.uploader.clone(),
        };
        let replaced = write_tx(&self.db, "publishing an object", |tx| {
            let replaced = publish(tx, write.project, &meta, &staged.id)?;
            let event = object_event(write.project, EVENT_CREATED, &meta, write.uploader);
            Ok((replaced, vec![event]))
        })?;
        staged.keep();
        self.remove_data(replaced);
        Ok(meta)
    }

    /// A copy shares the source's bytes: data files never change once written (a write makes a
    /// new file under a new id), so the copy is a hard link under a fresh id, published like a
    /// put. Every name is still referenced by exactly one row, so deletes and the sweep need no
    /// reference counts: unlinking one name leaves the other's bytes. A kill -9 between the link
    /// and the commit leaves an unreferenced name, which the sweep removes (it judges a file's
    /// age by its ctime too, which the link sets, so the hourly sweep never takes a fresh link of
    /// old bytes). On a file system without hard links it streams, as the trait's default.
    fn copy(
        &self,
        src_bucket: &str,
        src_key: &str,
        write: &ObjectWrite<'_>,
        max_bytes: Option<u64>,
    ) -> ObjectResult<ObjectMeta> {
        self.require_bucket(write.project, write.bucket)?;
        // The source's file goes away if the source is replaced or deleted between reading its
        // row and linking: read the row again then, as `open` does.
        for _ in 0..5 {
            let Some((src, src_id)) = self.read_meta(write.project, src_bucket, src_key)? else {
                self.require_bucket(write.project, src_bucket)?;
                return Err(ObjectError::NoSuchKey(src_key.to_string()));
            };
            if let Some(limit) = max_bytes
                && src.size > limit
            {
                return Err(ObjectError::TooLarge { limit });
            }
            let id = uuid::Uuid::now_v7().simple().to_string();
            let path = self.data_path(&id);
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
            std::fs::create_dir_all(&dir).map_err(io("creating a data directory"))?;
            match std::fs::hard_link(self.data_path(&src_id), &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "hard links unavailable; copying the bytes");
                    let mut data = self.open(write.project, src_bucket, src_key, None)?;
                    return self.put(write, &mut data.reader, max_bytes);
                }
            }
            let staged = Staged { path, id, size: src.size, md5: [0; 16], keep: false };
            sync_dir(&dir).map_err(io("syncing a data directory"))?;
            let meta = ObjectMeta {
                bucket: write.bucket.to_string(),
                key: write.key.to_string(),
                size: src.size,
                content_type: write.content_type.to_string(),
                etag: src.etag,
                metadata: write.metadata.clone(),
                created_at: now_millis(),
                uploader: write.uploader.clone(),
            };
            let replaced = write_tx(&self.db, "publishing a copy", |tx| {
                let replaced = publish(tx, write.project, &meta, &staged.id)?;
                let event = object_event(write.project, EVENT_CREATED, &meta, write.uploader);
                Ok((replaced, vec![event]))
            })?;
            staged.keep();
            self.remove_data(replaced);
            return Ok(meta);
        }
        Err(ObjectError::Store(backend(
            "copying an object",
            format!("{src_key:?} kept changing while being copied"),
        )))
    }

    fn head(&self, project: &str, bucket: &str, key: &str) -> ObjectResult<Option<ObjectMeta>> {
        Ok(self.read_meta(project, bucket, key)?.map(|(m, _)| m))
    }

    fn open(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        range: Option<RangeSpec>,
    ) -> ObjectResult<ObjectData> {
        // The file can be unlinked between reading the row and opening it (a concurrent
        // overwrite or delete): read the row again then; a few attempts always suffice unless
        // the object is being rewritten in a tight loop.
        for _ in 0..5 {
            let Some((meta, id)) = self.read_meta(project, bucket, key)? else {
                self.require_bucket(project, bucket)?;
                return Err(ObjectError::NoSuchKey(key.to_string()));
            };
            let mut file = match File::open(self.data_path(&id)) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("opening an object")(e)),
            };
            let range = match range {
                None => 0..meta.size,
                Some(spec) => spec
                    .resolve(meta.size)
                    .ok_or(ObjectError::RangeNotSatisfiable { size: meta.size })?,
            };
            if range.start > 0 {
                file.seek(SeekFrom::Start(range.start)).map_err(io("seeking in an object"))?;
            }
            let reader = Box::new(file.take(range.end - range.start));
            return Ok(ObjectData { meta, range, reader });
        }
        Err(ObjectError::Store(backend(
            "opening an object",
            format!("{key:?} kept changing while being opened"),
        )))
    }

    fn list(&self, project: &str, bucket: &str, query: &ListQuery) -> ObjectResult<ListPage> {
        self.require_bucket(project, bucket)?;
        let limit = query.limit.max(1) as usize;
        let upper = prefix_upper_bound(&query.prefix);
        let mut lo = match &query.from {
            Some(from) if from.as_str() > query.prefix.as_str() => from.clone(),
            _ => query.prefix.clone(),
        };
        let mut page = ListPage::default();
        let delimiter = query.delimiter.as_deref().filter(|d| !d.is_empty());
        let mut sql = format!(
            "SELECT {META_COLUMNS} FROM objects
             WHERE project = :project AND bucket = :bucket AND key >= :lo"
        );
        if upper.is_some() {
            sql.push_str(" AND key < :upper");
        }
        sql.push_str(" ORDER BY key LIMIT :limit");
        // Each round reads keys from `lo` on; meeting a key under a common prefix ends the round
        // and seeks past that whole prefix, so a listing costs one range scan per common prefix,
        // never a scan of the keys inside it.
        'rounds: loop {
            let want = (limit - page.objects.len() - page.common_prefixes.len() + 1) as i64;
            let rows: Vec<ObjectMeta> = self.db.read(|conn| {
                let mut stmt = conn.prepare_cached(&sql).context("listing objects")?;
                let mut args: Vec<(&str, &dyn rusqlite::ToSql)> = vec![
                    (":project", &project),
                    (":bucket", &bucket),
                    (":lo", &lo),
                    (":limit", &want),
                ];
                if let Some(upper) = &upper {
                    args.push((":upper", upper));
                }
                stmt.query_map(args.as_slice(), meta_from_row)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .context("listing objects")
            })?;
            let exhausted = (rows.len() as i64) < want;
            for meta in rows {
                if page.objects.len() + page.common_prefixes.len() == limit {
                    // One more entry exists: this page is full, the next starts here.
                    page.next = Some(meta.key);
                    break 'rounds;
                }
                let rest = &meta.key[query.prefix.len()..];
                if let Some(d) = delimiter
                    && let Some(i) = rest.find(d)
                {
                    let common = format!("{}{}", query.prefix, &rest[..i + d.len()]);
                    match prefix_upper_bound(&common) {
                        Some(next) => lo = next,
                        None => {
                            page.common_prefixes.push(common);
                            break 'rounds;
                        }
                    }
                    page.common_prefixes.push(common);
                    continue 'rounds;
                }
                lo = format!("{}\0", meta.key);
                page.objects.push(meta);
            }
            if exhausted {
                break;
            }
        }
        Ok(page)
    }

    fn delete(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        actor: &Value,
    ) -> ObjectResult<Option<ObjectMeta>> {
        let deleted = write_tx(&self.db, "deleting an object", |tx| {
            let row: Option<(ObjectMeta, String)> = tx
                .prepare_cached(&format!(
                    "DELETE FROM objects WHERE project = ?1 AND bucket = ?2 AND key = ?3
                     RETURNING {META_COLUMNS}, data_id"
                ))
                .and_then(|mut s| {
                    s.query_row(params![project, bucket, key], |r| {
                        Ok((meta_from_row(r)?, r.get(8)?))
                    })
                    .optional()
                })
                .context("deleting an object")?;
            let Some((meta, id)) = row else {
                let exists: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM object_buckets
                         WHERE project = ?1 AND name = ?2)",
                        params![project, bucket],
                        |r| r.get(0),
                    )
                    .context("reading a bucket")?;
                if !exists {
                    return Err(ObjectError::NoSuchBucket(bucket.to_string()));
                }
                return Ok((None, Vec::new()));
            };
            tx.execute(
                "UPDATE object_buckets SET objects = objects - 1, bytes = max(bytes - ?3, 0)
                 WHERE project = ?1 AND name = ?2",
                params![project, bucket, meta.size as i64],
            )
            .context("counting a bucket's usage")?;
            let event = object_event(project, EVENT_DELETED, &meta, actor);
            Ok((Some((meta, id)), vec![event]))
        })?;
        Ok(deleted.map(|(meta, id)| {
            self.remove_data([id]);
            meta
        }))
    }

    fn create_upload(&self, write: &ObjectWrite<'_>) -> ObjectResult<UploadInfo> {
        let info = UploadInfo {
            id: uuid::Uuid::now_v7().simple().to_string(),
            bucket: write.bucket.to_string(),
            key: write.key.to_string(),
            content_type: write.content_type.to_string(),
            metadata: write.metadata.clone(),
            uploader: write.uploader.clone(),
            created_at: now_millis(),
        };
        let (metadata, uploader) = (json_text(&info.metadata)?, json_text(&info.uploader)?);
        write_tx(&self.db, "starting an upload", |tx| {
            bucket_usage(tx, write.project, write.bucket)?;
            tx.execute(
                "INSERT INTO object_uploads (id, project, bucket, key, content_type, metadata,
                     uploader, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    info.id,
                    write.project,
                    info.bucket,
                    info.key,
                    info.content_type,
                    metadata,
                    uploader,
                    info.created_at
                ],
            )
            .context("starting an upload")?;
            Ok((info, Vec::new()))
        })
    }

    fn get_upload(&self, project: &str, bucket: &str, id: &str) -> ObjectResult<UploadInfo> {
        let found = self.db.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM object_uploads
                 WHERE id = ?1 AND project = ?2 AND bucket = ?3"
            ))
            .and_then(|mut s| s.query_row(params![id, project, bucket], upload_from_row).optional())
            .context("reading an upload")
        })?;
        found.ok_or_else(|| ObjectError::NoSuchUpload(id.to_string()))
    }

    fn put_part(
        &self,
        project: &str,
        bucket: &str,
        upload: &str,
        number: u32,
        data: &mut dyn Read,
        max_bytes: Option<u64>,
    ) -> ObjectResult<PartInfo> {
        self.get_upload(project, bucket, upload)?;
        let staged = self.stage(data, max_bytes)?;
        let part = PartInfo {
            number,
            size: staged.size,
            etag: hex::encode(staged.md5),
            created_at: now_millis(),
        };
        let replaced = write_tx(&self.db, "storing a part", |tx| {
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM object_uploads
                     WHERE id = ?1 AND project = ?2 AND bucket = ?3)",
                    params![upload, project, bucket],
                    |r| r.get(0),
                )
                .context("reading an upload")?;
            if !exists {
                return Err(ObjectError::NoSuchUpload(upload.to_string()));
            }
            let old: Option<String> = tx
                .query_row(
                    "SELECT data_id FROM object_parts WHERE upload_id = ?1 AND number = ?2",
                    params![upload, number],
                    |r| r.get(0),
                )
                .optional()
                .context("reading a part")?;
            tx.execute(
                "INSERT OR REPLACE INTO object_parts (upload_id, number, data_id, size, etag,
                     created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![upload, number, staged.id, part.size as i64, part.etag, part.created_at],
            )
            .context("storing a part")?;
            Ok((old, Vec::new()))
        })?;
        staged.keep();
        self.remove_data(replaced);
        Ok(part)
    }

    fn list_parts(&self, project: &str, bucket: &str, upload: &str) -> ObjectResult<Vec<PartInfo>> {
        self.get_upload(project, bucket, upload)?;
        Ok(self.db.read(|conn| {
            conn.prepare_cached(
                "SELECT number, size, etag, created_at FROM object_parts WHERE upload_id = ?1
                 ORDER BY number",
            )
            .and_then(|mut s| {
                s.query_map([upload], |r| {
                    Ok(PartInfo {
                        number: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        etag: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                })?
                .collect()
            })
            .context("listing parts")
        })?)
    }

    fn list_uploads(
        &self,
        project: &str,
        bucket: &str,
        prefix: &str,
    ) -> ObjectResult<Vec<UploadInfo>> {
        self.require_bucket(project, bucket)?;
        let rows: Vec<UploadInfo> = self.db.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM object_uploads WHERE project = ?1 AND bucket = ?2
                 ORDER BY key, created_at, id LIMIT 10000"
            ))
            .and_then(|mut s| s.query_map(params![project, bucket], upload_from_row)?.collect())
            .context("listing uploads")
        })?;
        Ok(rows.into_iter().filter(|u| u.key.starts_with(prefix)).collect())
    }

    fn complete_upload(
        &self,
        project: &str,
        bucket: &str,
        upload: &str,
        parts: &[(u32, String)],
        max_bytes: Option<u64>,
    ) -> ObjectResult<ObjectMeta> {
        let info = self.get_upload(project, bucket, upload)?;
        if parts.is_empty() {
            return Err(ObjectError::InvalidPart("at least one part is needed".into()));
        }
        let stored: BTreeMap<u32, (String, String)> = self.db.read(|conn| {
            conn.prepare_cached(
                "SELECT number, etag, data_id FROM object_parts WHERE upload_id = ?1",
            )
            .and_then(|mut s| {
                s.query_map([upload], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?.collect()
            })
            .context("reading parts")
        })?;
        let mut previous = 0;
        let mut files = Vec::with_capacity(parts.len());
        let mut md5s = Md5::new();
        for (number, etag) in parts {
            if *number <= previous {
                return Err(ObjectError::InvalidPart("part numbers must ascend".into()));
            }
            previous = *number;
            let etag = etag.trim().trim_matches('"');
            match stored.get(number) {
                Some((stored_etag, id)) if stored_etag == etag => {
                    let raw = hex::decode(stored_etag).unwrap_or_default();
                    md5s.update(&raw);
                    files.push(id.clone());
                }
                _ => {
                    return Err(ObjectError::InvalidPart(format!(
                        "part {number} with ETag {etag:?} was not uploaded"
                    )));
                }
            }
        }
        // Assemble into one file: reads are then plain file reads, and the parts can go.
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(io("creating a temporary file"))?;
        let mut size = 0u64;
        for id in &files {
            let mut part = File::open(self.data_path(id)).map_err(io("opening a part"))?;
            size += std::io::copy(&mut part, tmp.as_file_mut()).map_err(io("assembling parts"))?;
            if let Some(limit) = max_bytes
                && size > limit
            {
                return Err(ObjectError::TooLarge { limit });
            }
        }
        let staged = self.finish_stage(tmp, size, [0; 16])?;
        let meta = ObjectMeta {
            bucket: bucket.to_string(),
            key: info.key.clone(),
            size,
            content_type: info.content_type.clone(),
            etag: format!("{}-{}", hex::encode(md5s.finalize()), parts.len()),
            metadata: info.metadata.clone(),
            created_at: now_millis(),
            uploader: info.uploader.clone(),
        };
        let (replaced, part_files) = write_tx(&self.db, "completing an upload", |tx| {
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM object_uploads WHERE id = ?1)",
                    [upload],
                    |r| r.get(0),
                )
                .context("reading an upload")?;
            if !exists {
                return Err(ObjectError::NoSuchUpload(upload.to_string()));
            }
            let replaced = publish(tx, project, &meta, &staged.id)?;
            let (_, part_files) = Self::delete_uploads_in(tx, "u.id = ?1", &[&upload])?;
            let event = object_event(project, EVENT_CREATED, &meta, &info.uploader);
            Ok(((replaced, part_files), vec![event]))
        })?;
        staged.keep();
        self.remove_data(replaced.into_iter().chain(part_files));
        Ok(meta)
    }

    fn abort_upload(&self, project: &str, bucket: &str, upload: &str) -> ObjectResult<bool> {
        let (n, files) = write_tx(&self.db, "aborting an upload", |tx| {
            let out = Self::delete_uploads_in(
                tx,
                "u.id = ?1 AND u.project = ?2 AND u.bucket = ?3",
                &[&upload, &project, &bucket],
            )?;
            Ok((out, Vec::new()))
        })?;
        self.remove_data(files);
        Ok(n > 0)
    }

    fn delete_project(&self, project: &str) -> ObjectResult<u64> {
        let (n, files) = write_tx(&self.db, "deleting a project's objects", |tx| {
            let mut files: Vec<String> = tx
                .prepare("DELETE FROM objects WHERE project = ?1 RETURNING data_id")
                .and_then(|mut s| s.query_map([project], |r| r.get(0))?.collect())
                .context("deleting a project's objects")?;
            let n = files.len() as u64;
            let (_, parts) = Self::delete_uploads_in(tx, "u.project = ?1", &[&project])?;
            files.extend(parts);
            tx.execute("DELETE FROM object_buckets WHERE project = ?1", [project])
                .context("deleting a project's buckets")?;
            Ok(((n, files), Vec::new()))
        })?;
        self.remove_data(files);
        Ok(n)
    }

    fn sweep(
        &self,
        now: UnixMillis,
        orphan_grace_ms: i64,
        uploads_before: UnixMillis,
    ) -> ObjectResult<SweepReport> {
        let mut report = SweepReport::default();
        let (expired, files) = write_tx(&self.db, "expiring uploads", |tx| {
            let out = Self::delete_uploads_in(tx, "u.created_at < ?1", &[&uploads_before])?;
            Ok((out, Vec::new()))
        })?;
        report.expired_uploads = expired;
        self.remove_data(files);

        let cutoff = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_millis((now - orphan_grace_ms).max(0) as u64);
        // A file's age: its last change, including a new hard link to it (a copy), which moves
        // the ctime, not the mtime.
        let old = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| {
                    let mut t = m.modified()?;
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::MetadataExt;
                        let ctime = std::time::UNIX_EPOCH
                            + std::time::Duration::new(
                                m.ctime().max(0) as u64,
                                m.ctime_nsec() as u32,
                            );
                        t = t.max(ctime);
                    }
                    Ok(t <= cutoff)
                })
                .unwrap_or(false)
        };
        for entry in std::fs::read_dir(self.root.join("tmp")).map_err(io("listing tmp"))? {
            let path = entry.map_err(io("listing tmp"))?.path();
            if old(&path) && std::fs::remove_file(&path).is_ok() {
                report.temporaries += 1;
            }
        }
        for shard in std::fs::read_dir(self.root.join("data")).map_err(io("listing data"))? {
            let shard = shard.map_err(io("listing data"))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&shard).map_err(io("listing data"))? {
                let path = entry.map_err(io("listing data"))?.path();
                let Some(id) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                    continue;
                };
                if !old(&path) {
                    continue;
                }
                let referenced: bool = self.db.read(|conn| {
                    conn.prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM objects WHERE data_id = ?1)
                             OR EXISTS (SELECT 1 FROM object_parts WHERE data_id = ?1)",
                    )
                    .and_then(|mut s| s.query_row([&id], |r| r.get(0)))
                    .context("checking a data file")
                })?;
                if !referenced && std::fs::remove_file(&path).is_ok() {
                    report.orphans += 1;
                }
            }
        }
        Ok(report)
    }
}

fn s3_key_from_row(row: &Row<'_>) -> rusqlite::Result<S3KeyInfo> {
    Ok(S3KeyInfo {
        access_key: row.get(0)?,
        project: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get(3)?,
        scope: {
            let s: String = row.get(4)?;
            S3KeyScope::parse(&s).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    4,
                    rusqlite::types::Type::Text,
                    format!("unknown S3 key scope {s:?}").into(),
                )
            })?
        },
    })
}

impl S3KeyStore for SqliteStore {
    fn create_s3_key(&self, info: &S3KeyInfo, secret: &str) -> nimbus_store::Result<()> {
        self.write("creating an S3 access key", |tx| {
            tx.execute(
                "INSERT INTO s3_access_keys (access_key, project, secret, name, created_at, scope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    info.access_key,
                    info.project,
                    secret,
                    info.name,
                    info.created_at,
                    info.scope.as_str()
                ],
            )
            .context("creating an S3 access key")?;
            Ok(())
        })
    }

    fn list_s3_keys(&self, project: &str) -> nimbus_store::Result<Vec<S3KeyInfo>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT access_key, project, name, created_at, scope FROM s3_access_keys
                 WHERE project = ?1 ORDER BY created_at, access_key",
            )
            .and_then(|mut s| s.query_map([project], s3_key_from_row)?.collect())
            .context("listing S3 access keys")
        })
    }

    fn get_s3_key(&self, access_key: &str) -> nimbus_store::Result<Option<(S3KeyInfo, String)>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT access_key, project, name, created_at, scope, secret FROM s3_access_keys
                 WHERE access_key = ?1
                 AND project NOT IN (SELECT id FROM projects WHERE deleting_at IS NOT NULL)",
            )
            .and_then(|mut s| {
                s.query_row([access_key], |r| Ok((s3_key_from_row(r)?, r.get(5)?))).optional()
            })
            .context("reading an S3 access key")
        })
    }

    fn delete_s3_key(&self, project: &str, access_key: &str) -> nimbus_store::Result<bool> {
        self.write("deleting an S3 access key", |tx| {
            let n = tx
                .execute(
                    "DELETE FROM s3_access_keys WHERE project = ?1 AND access_key = ?2",
                    params![project, access_key],
                )
                .context("deleting an S3 access key")?;
            Ok(n > 0)
        })
    }

    fn delete_project_s3_keys(&self, project: &str) -> nimbus_store::Result<u64> {
        self.write("deleting a project's S3 access keys", |tx| {
            let n = tx
                .execute("DELETE FROM s3_access_keys WHERE project = ?1", [project])
                .context("deleting a project's S3 access keys")?;
            Ok(n as u64)
        })
    }
}
