//! `nimbus.toml`: a function's name, component, routes, env, limits and build command, plus the
//! size (`64MiB`) and duration (`5s`) notations used by the manifest and by command-line flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use nimbus_model::{FunctionSpec, LimitsSpec, RouteSpec};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub const MANIFEST_FILE: &str = "nimbus.toml";

/// The contents of a `nimbus.toml`. Unknown keys are errors, so typos do not pass silently.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: Option<String>,
    /// The built component, relative to the manifest's directory.
    pub component: Option<PathBuf>,
    #[serde(default)]
    pub routes: Vec<ManifestRoute>,
    #[serde(default)]
    pub outbound_hosts: Vec<String>,
    /// Refuse unauthenticated callers with 401.
    #[serde(default)]
    pub require_auth: bool,
    pub build: Option<BuildSection>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: ManifestLimits,
    /// `[[triggers]]`: events that run the function (storage, documents, auth, schedule, queue).
    #[serde(default)]
    pub triggers: Vec<nimbus_model::TriggerSpec>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// Run with the platform shell in the manifest's directory.
    pub command: String,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub timeout: Option<HumanDuration>,
    pub memory: Option<ByteSize>,
    /// `max_instances` is the same limit under its autoscaling name.
    #[serde(alias = "max_instances")]
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    pub max_body: Option<ByteSize>,
    /// Keep the code resident (never scaled to zero) when above 0.
    pub min_warm: Option<u32>,
}

/// A route as written in the manifest: `"/x"` or `{ path = "/x", methods = ["GET"] }`.
/// Parsed by hand so that a misspelt key inside the table is reported by name.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestRoute(pub RouteSpec);

impl<'de> Deserialize<'de> for ManifestRoute {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RouteVisitor;
        impl<'de> Visitor<'de> for RouteVisitor {
            type Value = ManifestRoute;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a path like "/hello" or a table like { path = "/hello", methods = ["GET"] }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ManifestRoute, E> {
                Ok(ManifestRoute(RouteSpec::from(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ManifestRoute, A::Error> {
                let mut path: Option<String> = None;
                let mut methods: Vec<String> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "path" => path = Some(map.next_value()?),
                        "methods" => methods = map.next_value()?,
                        other => return Err(de::Error::unknown_field(other, &["path", "methods"])),
                    }
                }
                let path = path.ok_or_else(|| de::Error::missing_field("path"))?;
                let methods = methods.into_iter().map(|m| m.to_ascii_uppercase()).collect();
                Ok(ManifestRoute(RouteSpec { path, methods }))
            }
        }
        d.deserialize_any(RouteVisitor)
    }
}

/// A byte count written as `64MiB`, `10 MB`, `512` (bytes) or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a size like "64MiB" or a number of bytes"#)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// A duration in humantime notation (`5s`, `250ms`, `1m 30s`), kept in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub u64);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration_ms(&s).map(HumanDuration).map_err(de::Error::custom)
    }
}

/// Parse a size: a number (decimals allowed) and an optional unit. `KB`/`MB`/`GB` are powers of
/// 1000, `KiB`/`MiB`/`GiB` and the short `K`/`M`/`G` powers of 1024; units are case-insensitive.
pub fn parse_size(input: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {input:?}: write a number with an optional unit, like 512, 64KiB, 10MB or 1GiB"
        )
    };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if number.is_empty() {
        return Err(bad());
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = (value * multiplier as f64).round();
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(bad());
        }
        Ok(bytes as u64)
    } else {
        let value: u64 = number.parse().map_err(|_| bad())?;
        value.checked_mul(multiplier).ok_or_else(|| format!("size {input:?} is too large"))
    }
}

/// Parse a humantime duration (`5s`, `250ms`, `7d`) into whole milliseconds (at least 1 if non-zero).
pub fn parse_duration_ms(input: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(input.trim()).map_err(|e| {
        format!("invalid duration {input:?}: {e} (write it like 5s, 250ms or 1m 30s)")
    })?;
    let ms = u64::try_from(d.as_millis()).map_err(|_| format!("duration {input:?} is too long"))?;
    Ok(if ms == 0 && !d.is_zero() { 1 } else { ms })
}

/// Parse a humantime duration for flags that want a [`std::time::Duration`].
pub fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(input.trim())
        .map_err(|e| format!("invalid duration {input:?}: {e} (write it like 5s, 250ms or 7d)"))
}

/// Parse `KEY=VALUE` (for `--env`).
pub fn parse_key_value(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {input:?}")),
    }
}

/// What command-line flags say about a function; they win over the manifest.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub name: Option<String>,
    /// Added to the manifest's routes.
    pub routes: Vec<String>,
    /// Set (or replace) these env vars.
    pub env: Vec<(String, String)>,
    /// Added to the manifest's outbound hosts.
    pub allow_hosts: Vec<String>,
    /// Require authentication even if the manifest does not.
    pub require_auth: bool,
    pub timeout_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    pub max_body_bytes: Option<u64>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, toml::de::Error> {
        toml::from_str(text)
    }

    /// The function spec to deploy: the manifest with the flags applied, validated.
    pub fn to_spec(&self, o: &Overrides) -> Result<FunctionSpec> {
        let Some(name) = o.name.clone().or_else(|| self.name.clone()) else {
            bail!("the function needs a name: set `name` in {MANIFEST_FILE} or pass --name");
        };
        let mut routes: Vec<RouteSpec> = self.routes.iter().map(|r| r.0.clone()).collect();
        for r in &o.routes {
            let r = RouteSpec::from(r.as_str());
            if !routes.contains(&r) {
                routes.push(r);
            }
        }
        let mut env = self.env.clone();
        env.extend(o.env.iter().cloned());
        let mut outbound_hosts = self.outbound_hosts.clone();
        for h in &o.allow_hosts {
            if !outbound_hosts.contains(h) {
                outbound_hosts.push(h.clone());
            }
        }
        let l = &self.limits;
        let limits = LimitsSpec {
            timeout_ms: o.timeout_ms.or(l.timeout.map(|d| d.0)),
            memory_bytes: o.memory_bytes.or(l.memory.map(|s| s.0)),
            max_concurrency: o.max_concurrency.or(l.max_concurrency),
            max_queue: o.max_queue.or(l.max_queue),
            max_body_bytes: o.max_body_bytes.or(l.max_body.map(|s| s.0)),
            min_warm: l.min_warm,
        };
        let require_auth = self.require_auth || o.require_auth;
        let triggers = self.triggers.clone();
        let spec =
            FunctionSpec { name, routes, env, limits, outbound_hosts, require_auth, triggers };
        spec.validate()?;
        Ok(spec)
    }
}

/// A manifest read from disk, with the directory its relative paths start from.
#[derive(Debug)]
pub struct LoadedManifest {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl LoadedManifest {
    /// Load `path`: a `nimbus.toml` (any `.toml` file) or a directory containing one.
    pub fn load(path: &Path) -> Result<LoadedManifest> {
        let file = if path.is_dir() { path.join(MANIFEST_FILE) } else { path.to_path_buf() };
        if !file.exists() {
            if path.is_dir() {
                bail!(
                    "no {MANIFEST_FILE} in {}: create one with `nimbus new`, or deploy a .wasm file with --name",
                    path.display()
                );
            }
            bail!("{} does not exist", file.display());
        }
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let manifest =
            Manifest::parse(&text).with_context(|| format!("invalid {}", file.display()))?;
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(LoadedManifest { path: file, dir, manifest })
    }

    /// Where the built component is expected.
    pub fn component_path(&self) -> Result<PathBuf> {
        match &self.manifest.component {
            Some(c) => Ok(self.dir.join(c)),
            None => bail!(
                "{} has no `component`: set it to the built .wasm file, e.g. component = \"target/wasm32-wasip2/release/app.wasm\"",
                self.path.display()
            ),
        }
    }

    pub fn build_command(&self) -> Option<&str> {
        self.manifest.build.as_ref().map(|b| b.command.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "hello"
component = "target/wasm32-wasip2/release/hello.wasm"
routes = ["/hello", { path = "/api/...", methods = ["get", "POST"] }]
outbound_hosts = ["example.com"]

[build]
command = "cargo build --release --target wasm32-wasip2"

[env]
GREETING = "hi"

[limits]
timeout = "5s"
memory = "64MiB"
max_concurrency = 16
max_queue = 100
max_body = 1048576
"#;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(FULL).unwrap();
        assert_eq!(m.name.as_deref(), Some("hello"));
        assert_eq!(m.routes[0].0, RouteSpec::from("/hello"));
        assert_eq!(m.routes[1].0.methods, vec!["GET", "POST"]);
        assert_eq!(
            m.build.as_ref().unwrap().command,
            "cargo build --release --target wasm32-wasip2"
        );
        assert_eq!(m.limits.timeout, Some(HumanDuration(5000)));
        assert_eq!(m.limits.memory, Some(ByteSize(64 << 20)));
        assert_eq!(m.limits.max_body, Some(ByteSize(1 << 20)));
        let spec = m.to_spec(&Overrides::default()).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.env["GREETING"], "hi");
        assert_eq!(spec.limits.timeout_ms, Some(5000));
        assert_eq!(spec.limits.max_concurrency, Some(16));
        assert_eq!(spec.outbound_hosts, vec!["example.com"]);
    }

    #[test]
    fn minimal_manifest() {
        let m = Manifest::parse("name = \"a\"\ncomponent = \"a.wasm\"\n").unwrap();
        let spec = m.to_spec(&Overrides::default()).unwrap();
        assert!(spec.routes.is_empty());
        assert_eq!(spec.limits, LimitsSpec::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Manifest::parse("name = \"a\"\nrotues = [\"/a\"]\n").unwrap_err().to_string();
        assert!(err.contains("rotues"), "{err}");
        let err = Manifest::parse("[limits]\nmemroy = \"1MiB\"\n").unwrap_err().to_string();
        assert!(err.contains("memroy"), "{err}");
        let err = Manifest::parse("routes = [{ path = \"/a\", method = [\"GET\"] }]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("method"), "{err}");
        let err = Manifest::parse("[build]\ncmd = \"make\"\n").unwrap_err().to_string();
        assert!(err.contains("cmd"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Manifest::parse("[limits]\nmemory = \"64 parsecs\"\n").unwrap_err().to_string();
        assert!(err.contains("invalid size"), "{err}");
        let err = Manifest::parse("[limits]\ntimeout = \"5\"\n").unwrap_err().to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mib"), Ok(64 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        for bad in ["", "MiB", "ten", "5 XB", "-1", "1.2.3MB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1m 30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 24 * 3600 * 1000));
        assert_eq!(parse_duration_ms("10us"), Ok(1));
        assert!(parse_duration_ms("5").is_err());
        assert!(parse_duration_ms("soon").is_err());
        assert_eq!(parse_duration("7d"), Ok(std::time::Duration::from_secs(7 * 86400)));
    }

    #[test]
    fn key_values() {
        assert_eq!(parse_key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_key_value("A="), Ok(("A".into(), "".into())));
        assert!(parse_key_value("A").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn autoscaling_limits() {
        let m = Manifest::parse(
            "name = \"a\"\ncomponent = \"a.wasm\"\n[limits]\nmax_instances = 4\nmin_warm = 1\n",
        )
        .unwrap();
        let spec = m.to_spec(&Overrides::default()).unwrap();
        assert_eq!((spec.limits.max_concurrency, spec.limits.min_warm), (Some(4), Some(1)));
    }

    #[test]
    fn flags_override_the_manifest() {
        let m = Manifest::parse(FULL).unwrap();
        let o = Overrides {
            name: Some("other".into()),
            routes: vec!["/extra".into(), "/hello".into()],
            env: vec![("GREETING".into(), "yo".into()), ("NEW".into(), "1".into())],
            allow_hosts: vec!["api.example.org".into()],
            require_auth: false,
            timeout_ms: Some(1000),
            memory_bytes: Some(32 << 20),
            max_concurrency: None,
            max_queue: Some(0),
            max_body_bytes: None,
        };
        let spec = m.to_spec(&o).unwrap();
        assert_eq!(spec.name, "other");
        let paths: Vec<&str> = spec.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/hello", "/api/...", "/extra"]);
        assert_eq!(spec.env["GREETING"], "yo");
        assert_eq!(spec.env["NEW"], "1");
        assert_eq!(spec.outbound_hosts, vec!["example.com", "api.example.org"]);
        assert_eq!(spec.limits.timeout_ms, Some(1000));
        assert_eq!(spec.limits.memory_bytes, Some(32 << 20));
        assert_eq!(spec.limits.max_concurrency, Some(16));
        assert_eq!(spec.limits.max_queue, Some(0));
        assert_eq!(spec.limits.max_body_bytes, Some(1 << 20));
    }

    #[test]
    fn spec_is_validated() {
        let m = Manifest::default();
        let err = m.to_spec(&Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("--name"), "{err}");
        let o = Overrides { name: Some("Bad_Name".into()), ..Default::default() };
        assert!(m.to_spec(&o).unwrap_err().to_string().contains("invalid function name"));
        let o = Overrides {
            name: Some("ok".into()),
            routes: vec!["/v1/x".into()],
            ..Default::default()
        };
        assert!(m.to_spec(&o).unwrap_err().to_string().contains("/v1"));
        let o = Overrides {
            name: Some("ok".into()),
            routes: vec!["nope".into()],
            ..Default::default()
        };
        assert!(m.to_spec(&o).unwrap_err().to_string().contains("invalid route"));
    }

    #[test]
    fn loads_from_a_directory() {
        let dir = std::env::temp_dir().join(format!("nimbus-manifest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), FULL).unwrap();
        let loaded = LoadedManifest::load(&dir).unwrap();
        assert_eq!(loaded.dir, dir);
        assert_eq!(
            loaded.component_path().unwrap(),
            dir.join("target/wasm32-wasip2/release/hello.wasm")
        );
        let by_file = LoadedManifest::load(&dir.join(MANIFEST_FILE)).unwrap();
        assert_eq!(by_file.manifest, loaded.manifest);
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        let err = LoadedManifest::load(&dir).unwrap_err().to_string();
        assert!(err.contains("no nimbus.toml"), "{err}");
        std::fs::remove_dir(&dir).unwrap();
    }
}
