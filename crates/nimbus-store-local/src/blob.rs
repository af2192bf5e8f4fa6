//! [`LocalBlobStore`]: blobs as files under a root directory.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use nimbus_store::{BlobStore, Result, validate_blob_key};

use crate::error::Context;

/// Blobs stored as files: key `modules/ab12.wasm` is the file `<root>/modules/ab12.wasm`.
///
/// Keys are checked with [`validate_blob_key`], so no key names a path outside the root. Writes are
/// atomic: the bytes go to a temporary file in the destination directory, which is flushed to disk and
/// then renamed over the destination, so readers see the old blob or the new one, never a mix.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// A store rooted at `root`, created (with its parents) if missing.
    pub fn new(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating blob directory {}", root.display()))?;
        Ok(LocalBlobStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds (or would hold) `key`, for callers that want to read or map it directly.
    pub fn path_of(&self, key: &str) -> Result<PathBuf> {
        validate_blob_key(key)?;
        Ok(self.root.join(key))
    }
}

impl BlobStore for LocalBlobStore {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path_of(key)?;
        let what = || format!("writing blob {key}");
        // A valid key has at least one segment, so the path always has a parent under the root.
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).with_context(what)?;
        // Upper-case letters never appear in a valid key, so a temporary file is never taken for a blob.
        let mut tmp =
            tempfile::Builder::new().prefix(".TMP-").tempfile_in(dir).with_context(what)?;
        tmp.write_all(bytes).with_context(what)?;
        tmp.as_file().sync_all().with_context(what)?;
        tmp.persist(&path).map_err(|e| e.error).with_context(what)?;
        sync_dir(dir).with_context(what)?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            // A key that is a prefix of other keys is a directory, not a blob.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading blob {key}")),
        }
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path_of(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) if path.is_dir() => {
                tracing::debug!(key, error = %e, "blob key names a directory");
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("deleting blob {key}")),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.path_of(prefix)?;
        let mut keys = Vec::new();
        let mut pending = vec![(dir, prefix.to_string())];
        while let Some((dir, key)) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("listing blobs under {key}")),
            };
            for entry in entries {
                let entry = entry.with_context(|| format!("listing blobs under {key}"))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                // Temporary files of writes in progress are not blobs.
                if name.starts_with(".TMP-") {
                    continue;
                }
                let child = format!("{key}/{name}");
                if entry.file_type().with_context(|| format!("listing {child}"))?.is_dir() {
                    pending.push((entry.path(), child));
                } else {
                    keys.push(child);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// Make a rename in `dir` durable (on Unix, a directory's entries are flushed by syncing it).
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
