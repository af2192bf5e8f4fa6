//! The data directory: `nimbus.db` (SQLite), `blobs/` (uploaded components), `artifacts/` (the
//! compiled-code cache), `compile-cache/` (compiled functions shared by every compile),
//! `objects/` (file storage), `admin-token` and `files-secret`.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file holding the admin token, created on first start with mode 0600.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

pub(crate) struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub(crate) fn open(root: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        restrict(root, 0o700)?;
        Ok(DataDir { root: root.to_path_buf() })
    }

    pub(crate) fn database(&self) -> PathBuf {
        self.root.join("nimbus.db")
    }

    pub(crate) fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub(crate) fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    pub(crate) fn compile_cache(&self) -> PathBuf {
        self.root.join("compile-cache")
    }

    /// File storage: `objects/data/<xx>/<id>` and `objects/tmp/` (see `LocalObjectStore`).
    pub(crate) fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// The secret that signs file URLs, created (256 bits, mode 0600) on first start.
    pub(crate) fn files_secret(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.root.join("files-secret");
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().as_bytes().to_vec()),
            Ok(_) => anyhow::bail!("{} is empty; delete it to get a new one", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let secret = hex::encode(rand::random::<[u8; 32]>());
        write_private(&path, secret.as_bytes())?;
        Ok(secret.into_bytes())
    }

    /// Read the admin token, creating a random one (256 bits, hex) on first start.
    pub(crate) fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.root.join(ADMIN_TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
            Ok(_) => anyhow::bail!("{} is empty; delete it to get a new token", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let token = format!("nbs_{}", hex::encode(rand::random::<[u8; 32]>()));
        write_private(&path, token.as_bytes())?;
        tracing::info!(path = %path.display(), "created the admin token");
        Ok(token)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let t1 = d.admin_token().unwrap();
        let t2 = d.admin_token().unwrap();
        assert_eq!(t1, t2);
        assert!(t1.len() > 60);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
