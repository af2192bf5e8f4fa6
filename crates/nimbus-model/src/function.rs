use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{RouteSpec, UnixMillis};

/// Why a function spec was refused. Messages name the offending field so the API can return them as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "invalid function name {0:?}: use 1-63 characters of a-z, 0-9 and '-', starting with a letter"
    )]
    Name(String),
    #[error(
        "invalid project slug {0:?}: use 1-{max} characters of a-z, 0-9 and '-', \
         not starting or ending with '-'",
        max = MAX_PROJECT_SLUG
    )]
    Project(String),
    #[error("invalid route {route:?}: {reason}")]
    Route { route: String, reason: String },
    #[error("invalid env var name {0:?}: use A-Z, a-z, 0-9 and '_', not starting with a digit")]
    EnvName(String),
    #[error("invalid outbound host {0:?}: give a host name or host:port, without scheme or path")]
    OutboundHost(String),
    #[error("{}", above_ceiling(name, *value, *ceiling))]
    AboveCeiling { name: &'static str, value: u64, ceiling: u64 },
    #[error("limit {} must be greater than zero", limit_label(name).0)]
    Zero { name: &'static str },
    #[error("too many {what}: at most {max}")]
    TooMany { what: &'static str, max: usize },
    #[error("{what} is too long: at most {max} bytes")]
    TooLong { what: String, max: usize },
    #[error("{0}")]
    Trigger(String),
    #[error(
        "min_warm {min_warm} is above the function's max_instances (max_concurrency) of \
         {max_instances}: capacity kept warm cannot exceed the instances allowed"
    )]
    MinWarmAboveMax { min_warm: u32, max_instances: u32 },
}

/// A limit as a developer writes it (`nimbus.toml` / `deploy` flag), how to print its values, and
/// the `nimbus serve` flag that sets its ceiling: errors speak in these terms, never in the
/// internal field names and units (`timeout_ms = 7200000`).
fn limit_label(name: &str) -> (&'static str, fn(u64) -> String, &'static str) {
    match name {
        "timeout_ms" => ("timeout", format_ms, "--max-timeout"),
        "memory_bytes" => ("memory", format_size, "--max-memory"),
        "max_concurrency" => ("max_concurrency", |n| n.to_string(), "--max-concurrency"),
        "max_queue" => ("max_queue", |n| n.to_string(), "--max-queue"),
        "min_warm" => ("min_warm", |n| n.to_string(), "--max-min-warm"),
        "max_body_bytes" => ("max_body", format_size, "--max-body-ceiling"),
        _ => ("limit", |n| n.to_string(), "its ceiling flags"),
    }
}

fn above_ceiling(name: &str, value: u64, ceiling: u64) -> String {
    let (label, fmt, flag) = limit_label(name);
    format!(
        "{label} {} is above this server's ceiling of {}; ask for at most {} (the operator raises \
         it with `nimbus serve {flag}`)",
        fmt(value),
        fmt(ceiling),
        fmt(ceiling)
    )
}

/// Milliseconds in the largest unit that divides them: `2h`, `90s`, `1500ms`.
pub fn format_ms(ms: u64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Bytes in the largest binary unit that divides them: `64MiB`, `1GiB`, `1500B`.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Bounds on what one function's spec may hold: it is stored with every version and loaded into
/// memory for every active one, so a tenant cannot make it arbitrarily large.
pub mod spec_bounds {
    pub const MAX_ROUTES: usize = 100;
    pub const MAX_ROUTE_BYTES: usize = 1024;
    pub const MAX_ENV_VARS: usize = 100;
    pub const MAX_ENV_NAME_BYTES: usize = 256;
    /// One env value or secret.
    pub const MAX_VALUE_BYTES: usize = 32 << 10;
    /// Every env value of a spec together.
    pub const MAX_ENV_TOTAL_BYTES: usize = 128 << 10;
    pub const MAX_SECRETS: usize = 100;
    pub const MAX_OUTBOUND_HOSTS: usize = 100;
    pub const MAX_HOST_BYTES: usize = 260;
}

/// What a developer sends with a deploy: the function's name, routes, env and limits.
///
/// This is the developer's side of configuration; the operator's defaults and ceilings
/// ([`LimitPolicy`]) turn `limits` into resolved [`Limits`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    /// HTTP routes: exact paths (`/hello`) or prefix wildcards (`/api/...`).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Plain environment variables, visible through the API.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Hosts (`example.com` or `example.com:8443`, `*.example.com`) the function may call with
    /// outbound HTTP. Empty: all outbound HTTP is denied.
    #[serde(default)]
    pub outbound_hosts: Vec<String>,
    /// Refuse unauthenticated callers with 401 before the function runs. Either way the function
    /// learns the verified caller from `x-nimbus-*` headers.
    #[serde(default)]
    pub require_auth: bool,
    /// Events that run the function besides HTTP requests (see [`TriggerSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<crate::TriggerSpec>,
}

/// Limits a developer asks for; `None` takes the operator's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub timeout_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Instances of the function running at once; `max_instances` is accepted as another name
    /// for it (one instance serves one request, so the two are the same number).
    #[serde(alias = "max_instances")]
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    pub max_body_bytes: Option<u64>,
    /// Keep the function's compiled code resident: loaded at start and never evicted by the
    /// node's code memory budget (0, the default, lets it scale to zero). At most
    /// `max_concurrency`.
    pub min_warm: Option<u32>,
}

/// Limits in force for one version of a function.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit of one invocation; past it the guest is stopped and the caller gets 504.
    pub timeout_ms: u64,
    /// Linear memory a single instance may grow to; past it the guest traps (500).
    pub memory_bytes: u64,
    /// Instances of this function running at once.
    pub max_concurrency: u32,
    /// Requests that may wait for a free instance; beyond it, 429 with `Retry-After`.
    pub max_queue: u32,
    /// Largest request body accepted; beyond it, 413.
    pub max_body_bytes: u64,
    /// Above zero the function's code stays resident (never evicted, loaded at start).
    /// Absent in versions written before it existed: 0.
    #[serde(default)]
    pub min_warm: u32,
}

/// The operator's defaults and ceilings for [`Limits`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LimitPolicy {
    pub defaults: Limits,
    pub ceilings: Limits,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            defaults: Limits {
                timeout_ms: 10_000,
                memory_bytes: 64 << 20,
                max_concurrency: 64,
                max_queue: 256,
                max_body_bytes: 10 << 20,
                min_warm: 0,
            },
            ceilings: Limits {
                timeout_ms: 300_000,
                memory_bytes: 512 << 20,
                max_concurrency: 1000,
                max_queue: 10_000,
                max_body_bytes: 100 << 20,
                min_warm: 1000,
            },
        }
    }
}

impl LimitPolicy {
    /// Resolve what a developer asked for against the defaults, refusing what passes a ceiling.
    pub fn resolve(&self, spec: &LimitsSpec) -> Result<Limits, SpecError> {
        fn pick(
            name: &'static str,
            asked: Option<u64>,
            default: u64,
            ceiling: u64,
        ) -> Result<u64, SpecError> {
            let value = asked.unwrap_or(default);
            if value == 0 && name != "max_queue" && name != "min_warm" {
                return Err(SpecError::Zero { name });
            }
            if value > ceiling {
                return Err(SpecError::AboveCeiling { name, value, ceiling });
            }
            Ok(value)
        }
        let (d, c) = (&self.defaults, &self.ceilings);
        let limits = Limits {
            timeout_ms: pick("timeout_ms", spec.timeout_ms, d.timeout_ms, c.timeout_ms)?,
            memory_bytes: pick("memory_bytes", spec.memory_bytes, d.memory_bytes, c.memory_bytes)?,
            max_concurrency: pick(
                "max_concurrency",
                spec.max_concurrency.map(u64::from),
                d.max_concurrency.into(),
                c.max_concurrency.into(),
            )? as u32,
            max_queue: pick(
                "max_queue",
                spec.max_queue.map(u64::from),
                d.max_queue.into(),
                c.max_queue.into(),
            )? as u32,
            max_body_bytes: pick(
                "max_body_bytes",
                spec.max_body_bytes,
                d.max_body_bytes,
                c.max_body_bytes,
            )?,
            min_warm: pick(
                "min_warm",
                spec.min_warm.map(u64::from),
                d.min_warm.into(),
                c.min_warm.into(),
            )? as u32,
        };
        if limits.min_warm > limits.max_concurrency {
            return Err(SpecError::MinWarmAboveMax {
                min_warm: limits.min_warm,
                max_instances: limits.max_concurrency,
            });
        }
        Ok(limits)
    }
}

impl FunctionSpec {
    /// Check everything that can be checked without looking at other functions.
    pub fn validate(&self) -> Result<(), SpecError> {
        use spec_bounds::*;
        validate_name(&self.name)?;
        if self.routes.len() > MAX_ROUTES {
            return Err(SpecError::TooMany { what: "routes", max: MAX_ROUTES });
        }
        for route in &self.routes {
            if route.path.len() > MAX_ROUTE_BYTES {
                return Err(SpecError::TooLong { what: "a route".into(), max: MAX_ROUTE_BYTES });
            }
            if route.methods.len() > 16 {
                return Err(SpecError::TooMany { what: "methods in a route", max: 16 });
            }
            route.parse()?;
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(SpecError::TooMany { what: "env vars", max: MAX_ENV_VARS });
        }
        let mut total = 0;
        for (key, value) in &self.env {
            validate_value(key, value)?;
            total += value.len();
        }
        if total > MAX_ENV_TOTAL_BYTES {
            return Err(SpecError::TooLong {
                what: "the env values together".into(),
                max: MAX_ENV_TOTAL_BYTES,
            });
        }
        if self.outbound_hosts.len() > MAX_OUTBOUND_HOSTS {
            return Err(SpecError::TooMany { what: "outbound hosts", max: MAX_OUTBOUND_HOSTS });
        }
        for key in self.env.keys() {
            let mut chars = key.chars();
            let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(SpecError::EnvName(key.clone()));
            }
        }
        for host in &self.outbound_hosts {
            let ok = !host.is_empty()
                && host.len() <= MAX_HOST_BYTES
                && !host.contains("://")
                && !host.contains('/')
                && host.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*' | '[' | ']')
                });
            if !ok {
                return Err(SpecError::OutboundHost(host.clone()));
            }
        }
        crate::trigger::validate_triggers(&self.triggers)
    }
}

/// Check one env var or secret: its name's length and its value's size (the name's characters are
/// checked by [`FunctionSpec::validate`]).
pub fn validate_value(name: &str, value: &str) -> Result<(), SpecError> {
    use spec_bounds::*;
    if name.len() > MAX_ENV_NAME_BYTES {
        return Err(SpecError::TooLong { what: "an env var name".into(), max: MAX_ENV_NAME_BYTES });
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(SpecError::TooLong {
            what: format!("the value of {name}"),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The project every installation has; single developers never need to name another.
pub const DEFAULT_PROJECT: &str = "default";

/// The longest project slug. A DNS label may have 63 bytes; 40 is what project creation has always
/// allowed (so every existing project keeps a valid slug) and leaves the base domain room within
/// a host name's 253.
pub const MAX_PROJECT_SLUG: usize = 40;

/// The one rule for project slugs, applied where projects are created (`nimbus-auth`) and where a
/// slug is read back (the `X-Nimbus-Project` header, `/@slug/` paths, `slug.<base domain>` hosts).
///
/// A slug is served as the host name label `<slug>.<base domain>`, so it is an RFC 1123 label:
/// lowercase letters, digits and `-`, not starting or ending with `-`. RFC 1123 allows a leading
/// digit, so `1app` is a valid slug (and was always creatable); lowercase only, because host
/// names are case-insensitive and the slug is an exact-match id everywhere else.
pub fn validate_project(slug: &str) -> Result<(), SpecError> {
    let ok = (1..=MAX_PROJECT_SLUG).contains(&slug.len())
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if ok { Ok(()) } else { Err(SpecError::Project(slug.to_string())) }
}

/// Function names appear in URLs, logs and metric labels: keep them DNS-label shaped.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(SpecError::Name(name.to_string())) }
}

/// One immutable deployed version of a function.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct VersionInfo {
    /// The project (tenant) the function belongs to.
    pub project: String,
    pub function: String,
    pub version: u32,
    /// SHA-256 of the uploaded component, hex.
    pub module_sha256: String,
    pub module_size: u64,
    pub spec: FunctionSpec,
    pub limits: Limits,
    pub created_at: UnixMillis,
}

/// A function as the API shows it: its active version's configuration, and secret names only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct FunctionInfo {
    pub project: String,
    pub name: String,
    pub active_version: u32,
    pub latest_version: u32,
    pub routes: Vec<RouteSpec>,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub outbound_hosts: Vec<String>,
    pub require_auth: bool,
    /// Names of the secrets set on this function; values are write-only.
    pub secrets: Vec<String>,
    pub module_sha256: String,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "hello", "hello-world2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Hello", "1abc", "a_b", "a-", "../x", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_slugs() {
        for good in ["default", "a", "1app", "42", "my-app-2", &"a".repeat(MAX_PROJECT_SLUG)] {
            assert!(validate_project(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(MAX_PROJECT_SLUG + 1);
        for bad in ["", "-a", "a-", "A", "App", "a_b", "a.b", "a b", "@a", "a/b", &too_long] {
            assert!(
                matches!(validate_project(bad), Err(SpecError::Project(s)) if s == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn min_warm_and_max_instances() {
        let policy = LimitPolicy::default();
        // Nothing asked: nothing pinned.
        assert_eq!(policy.resolve(&LimitsSpec::default()).unwrap().min_warm, 0);
        // `max_instances` is another name for `max_concurrency`.
        let spec: LimitsSpec =
            serde_json::from_str(r#"{"max_instances": 3, "min_warm": 2}"#).unwrap();
        let l = policy.resolve(&spec).unwrap();
        assert_eq!((l.max_concurrency, l.min_warm), (3, 2));
        // Warm capacity beyond the instances allowed is refused, naming both.
        let spec = LimitsSpec { max_concurrency: Some(2), min_warm: Some(3), ..Default::default() };
        let e = policy.resolve(&spec).unwrap_err();
        assert_eq!(e, SpecError::MinWarmAboveMax { min_warm: 3, max_instances: 2 });
        assert!(e.to_string().contains("max_instances"), "{e}");
        // The operator's ceiling applies (0 forbids pinning).
        let mut strict = policy;
        strict.ceilings.min_warm = 0;
        let e =
            strict.resolve(&LimitsSpec { min_warm: Some(1), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("--max-min-warm"), "{e}");
        // Versions stored before the field existed read as 0.
        let old = r#"{"timeout_ms":1,"memory_bytes":1,"max_concurrency":1,"max_queue":0,"max_body_bytes":1}"#;
        assert_eq!(serde_json::from_str::<Limits>(old).unwrap().min_warm, 0);
    }

    #[test]
    fn limits_resolve_against_policy() {
        let policy = LimitPolicy::default();
        let l = policy.resolve(&LimitsSpec::default()).unwrap();
        assert_eq!(l, policy.defaults);
        let l =
            policy.resolve(&LimitsSpec { timeout_ms: Some(500), ..Default::default() }).unwrap();
        assert_eq!(l.timeout_ms, 500);
        assert_eq!(
            policy.resolve(&LimitsSpec { memory_bytes: Some(1 << 40), ..Default::default() }),
            Err(SpecError::AboveCeiling {
                name: "memory_bytes",
                value: 1 << 40,
                ceiling: 512 << 20
            })
        );
        assert_eq!(
            policy.resolve(&LimitsSpec { timeout_ms: Some(0), ..Default::default() }),
            Err(SpecError::Zero { name: "timeout_ms" })
        );
    }

    #[test]
    fn limit_errors_speak_in_user_units_and_name_the_flag() {
        let policy = LimitPolicy::default();
        let msg = policy
            .resolve(&LimitsSpec { timeout_ms: Some(7_200_000), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(msg.contains("timeout 2h") && msg.contains("5m"), "{msg}");
        assert!(msg.contains("nimbus serve --max-timeout") && !msg.contains("7200000"), "{msg}");
        let msg = policy
            .resolve(&LimitsSpec { memory_bytes: Some(1 << 30), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(msg.contains("memory 1GiB") && msg.contains("512MiB"), "{msg}");
        assert!(msg.contains("--max-memory") && !msg.contains("1073741824"), "{msg}");
        let msg = policy
            .resolve(&LimitsSpec { max_body_bytes: Some(1_000_000_000), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--max-body-ceiling"), "{msg}");
        assert_eq!(format_ms(1500), "1500ms");
        assert_eq!(format_size(1500), "1500B");
    }

    #[test]
    fn spec_rejects_bad_env_and_hosts() {
        let mut spec = FunctionSpec { name: "f".into(), ..Default::default() };
        spec.env.insert("1BAD".into(), "x".into());
        assert!(matches!(spec.validate(), Err(SpecError::EnvName(_))));
        spec.env.clear();
        spec.outbound_hosts.push("https://example.com/".into());
        assert!(matches!(spec.validate(), Err(SpecError::OutboundHost(_))));
        spec.outbound_hosts = vec!["example.com".into(), "*.example.org:8443".into()];
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = serde_json::from_str::<FunctionSpec>(r#"{"name":"a","rotues":[]}"#).unwrap_err();
        assert!(err.to_string().contains("rotues"));
    }
}
