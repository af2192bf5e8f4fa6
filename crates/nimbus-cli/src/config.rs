//! The user-level CLI config: named profiles (server URL, token, default project) in
//! `$XDG_CONFIG_HOME/nimbus/config.toml` (`~/.config/nimbus/config.toml`; `%APPDATA%` on
//! Windows), or the file `NIMBUS_CONFIG` names. Written by `nimbus login` and by `nimbus serve`
//! on a data directory's first start; the file is mode 0600 because it holds tokens.
//!
//! Where each setting comes from, first match wins: the flag, its env variable, the profile
//! (`--profile`/`NIMBUS_PROFILE`, else the config's `default_profile`), then a fallback (the URL
//! `http://127.0.0.1:8080`; the token in `./nimbus-data/admin-token`). A profile's token is only
//! sent to its own URL, so `--url https://elsewhere` never leaks the local admin token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use serde::{Deserialize, Serialize};

/// The env variable naming another config file (tests, several setups side by side).
pub const CONFIG_ENV: &str = "NIMBUS_CONFIG";

/// The profile `nimbus serve` writes for the local server.
pub const LOCAL_PROFILE: &str = "local";

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The profile used when neither `--profile` nor `NIMBUS_PROFILE` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Where the config lives.
pub fn config_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    use etcetera::BaseStrategy as _;
    let base = etcetera::choose_base_strategy()
        .map_err(|e| anyhow!("cannot find your home directory for the CLI config: {e}"))?;
    Ok(base.config_dir().join("nimbus").join("config.toml"))
}

impl Config {
    /// Read the config; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("invalid CLI config {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(anyhow!(e).context(format!("cannot read {}", path.display()))),
        }
    }

    /// Write the config atomically, readable by its owner only (it holds tokens).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let text = toml::to_string_pretty(self).context("cannot serialise the CLI config")?;
        // tempfile creates the file with mode 0600 on Unix; rename makes the write atomic.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The profile to use: the one named, else the default one. Naming a missing one is an error.
    pub fn profile(&self, name: Option<&str>) -> Result<Option<(&str, &Profile)>> {
        match name {
            Some(n) => match self.profiles.get_key_value(n) {
                Some((k, p)) => Ok(Some((k.as_str(), p))),
                None => Err(anyhow!(
                    "no profile {n:?} in the CLI config{}; create it with `nimbus login --profile {n} --url URL`",
                    self.known()
                )),
            },
            None => Ok(self
                .default_profile
                .as_deref()
                .and_then(|d| self.profiles.get_key_value(d))
                .map(|(k, p)| (k.as_str(), p))),
        }
    }

    fn known(&self) -> String {
        if self.profiles.is_empty() {
            String::new()
        } else {
            format!(
                " (it has {})",
                self.profiles.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// A token for display: its first characters and its length, never the whole secret.
pub fn mask_token(token: &str) -> String {
    let n = token.chars().count();
    if n <= 12 {
        return format!("*** ({n} characters)");
    }
    let head: String = token.chars().take(8).collect();
    format!("{head}… ({n} characters)")
}

/// Compare server URLs loosely: trailing slashes do not matter.
pub fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        let mut c = Config { default_profile: Some("local".into()), ..Default::default() };
        c.profiles.insert(
            "local".into(),
            Profile {
                url: "http://127.0.0.1:8080".into(),
                token: Some("t".into()),
                project: Some("acme".into()),
            },
        );
        c.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(c.profile(None).unwrap().unwrap().0, "local");
        let err = c.profile(Some("prod")).unwrap_err().to_string();
        assert!(err.contains("prod") && err.contains("local"), "{err}");
    }

    #[test]
    fn tokens_are_masked() {
        let t = "0123456789abcdef0123456789abcdef";
        let m = mask_token(t);
        assert!(!m.contains(t) && m.starts_with("01234567…"), "{m}");
        assert_eq!(mask_token("short"), "*** (5 characters)");
    }
}
