//! Event triggers: what a function subscribes to besides HTTP (issue 9). A trigger is part of the
//! function's spec, so it is versioned with the code that handles it: deploying a version that
//! drops a trigger ends the subscription, rolling back restores it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::SpecError;

/// The kinds of event a function can subscribe to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// Objects created or deleted in a file-storage bucket.
    Storage,
    /// Documents created, updated or deleted in a collection.
    Documents,
    /// End users created, deleted, signed in, or verifying their email.
    Auth,
    /// A cron schedule.
    Schedule,
    /// Messages published to a named queue of the project.
    Queue,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Storage => "storage",
            TriggerKind::Documents => "documents",
            TriggerKind::Auth => "auth",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Queue => "queue",
        }
    }

    /// The `events` a trigger of this kind may name (all of them when it names none).
    pub fn event_names(self) -> &'static [&'static str] {
        match self {
            TriggerKind::Storage => &["created", "deleted"],
            TriggerKind::Documents => &["created", "updated", "deleted"],
            TriggerKind::Auth => {
                &["user.created", "user.deleted", "user.signed_in", "user.email_verified"]
            }
            TriggerKind::Schedule | TriggerKind::Queue => &[],
        }
    }
}

/// Event type names (CloudEvents `type`, reverse-DNS; see `/shared/EVENTS.md`) of the producers
/// that triggers subscribe to. Producers use these constants, so the names are spelt once.
pub mod event_types {
    pub const OBJECT_PREFIX: &str = "dev.nimbus.storage.object.";
    pub const DOCUMENT_PREFIX: &str = "dev.nimbus.documents.document.";
    pub const AUTH_PREFIX: &str = "dev.nimbus.auth.";
    pub const SCHEDULE_TICK: &str = "dev.nimbus.scheduler.tick";
    pub const QUEUE_MESSAGE: &str = "dev.nimbus.queue.message.published";
    pub const INVOCATION_REQUESTED: &str = "dev.nimbus.functions.invocation.requested";
}

/// Bounds and defaults of a trigger's delivery settings.
pub mod trigger_bounds {
    pub const MAX_TRIGGERS: usize = 20;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
    pub const MAX_ATTEMPTS: u32 = 100;
    /// An event older than this is dead-lettered instead of retried (default one day).
    pub const DEFAULT_MAX_AGE_SECS: u64 = 24 * 3600;
    pub const MAX_AGE_SECS: u64 = 7 * 24 * 3600;
    pub const MAX_FILTER_BYTES: usize = 1024;
    pub const MAX_QUEUE_NAME: usize = 63;
}

/// One subscription of a function, as the developer declares it (`[[triggers]]` in
/// `nimbus.toml`). Fields that do not apply to the kind are refused, so a typo cannot silently
/// widen a subscription.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    pub kind: TriggerKind,
    /// Names the subscription within the function (dead letters and metrics carry it). Default:
    /// the kind, with `-2`, `-3`... for further triggers of the same kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which events of the kind (see [`TriggerKind::event_names`]); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// storage: the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// storage: only keys starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// storage: only keys ending with this (e.g. `.jpg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// documents: the collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// schedule: a cron expression (5 fields, or 6 with seconds first), e.g. `0 3 * * *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// schedule: an IANA time zone such as `Europe/Paris` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// schedule: run the ticks missed while the server was down (at most 100), instead of
    /// skipping them (the default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catch_up: bool,
    /// queue: the queue's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The path the event is POSTed to on the function (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Attempts before the event goes to the dead-letter queue (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Seconds after the event after which it is dead-lettered instead of retried (default one
    /// day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Deliver events with the same key one at a time, in order: the document id, the object
    /// key, the user id, or a queue message's `ordering_key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
}

impl TriggerSpec {
    /// An empty trigger of `kind`, for building specs in code.
    pub fn new(kind: TriggerKind) -> Self {
        TriggerSpec {
            kind,
            name: None,
            events: Vec::new(),
            bucket: None,
            prefix: None,
            suffix: None,
            collection: None,
            cron: None,
            timezone: None,
            catch_up: false,
            queue: None,
            path: None,
            max_attempts: None,
            max_age_secs: None,
            ordered: false,
        }
    }

    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(trigger_bounds::DEFAULT_MAX_ATTEMPTS)
    }

    pub fn max_age_secs(&self) -> u64 {
        self.max_age_secs.unwrap_or(trigger_bounds::DEFAULT_MAX_AGE_SECS)
    }

    /// Whether this trigger wants `event` (type and data as the log holds them).
    pub fn matches(
        &self,
        function: &str,
        name: &str,
        kind: &str,
        data: &serde_json::Value,
    ) -> bool {
        use event_types::*;
        let str_field = |f: &str| data.get(f).and_then(|v| v.as_str());
        let wanted = |event: &str| self.events.is_empty() || self.events.iter().any(|e| e == event);
        match self.kind {
            TriggerKind::Storage => {
                let Some(event) = kind.strip_prefix(OBJECT_PREFIX) else { return false };
                let key = str_field("key").unwrap_or("");
                wanted(event)
                    && str_field("bucket") == self.bucket.as_deref()
                    && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
                    && self.suffix.as_deref().is_none_or(|s| key.ends_with(s))
            }
            TriggerKind::Documents => {
                let Some(event) = kind.strip_prefix(DOCUMENT_PREFIX) else { return false };
                wanted(event) && str_field("collection") == self.collection.as_deref()
            }
            TriggerKind::Auth => kind.strip_prefix(AUTH_PREFIX).is_some_and(wanted),
            TriggerKind::Schedule => {
                kind == SCHEDULE_TICK
                    && str_field("function") == Some(function)
                    && str_field("trigger") == Some(name)
            }
            TriggerKind::Queue => {
                kind == QUEUE_MESSAGE && str_field("queue") == self.queue.as_deref()
            }
        }
    }

    /// The ordering key of an event for an `ordered` trigger.
    pub fn ordering_key(&self, subject: &str, data: &serde_json::Value) -> Option<String> {
        if !self.ordered {
            return None;
        }
        match self.kind {
            TriggerKind::Queue => {
                data.get("ordering_key").and_then(|v| v.as_str()).map(str::to_owned)
            }
            _ => Some(subject.to_owned()),
        }
    }
}

/// The names of a spec's triggers, defaults filled in, in order.
pub fn trigger_names(triggers: &[TriggerSpec]) -> Vec<String> {
    let mut seen: std::collections::HashMap<TriggerKind, u32> = Default::default();
    triggers
        .iter()
        .map(|t| {
            let n = seen.entry(t.kind).or_default();
            *n += 1;
            match (&t.name, *n) {
                (Some(name), _) => name.clone(),
                (None, 1) => t.kind.as_str().to_owned(),
                (None, n) => format!("{}-{n}", t.kind.as_str()),
            }
        })
        .collect()
}

/// A queue name: like a function name (1-63 of `a-z 0-9 - _ .`, starting with a letter or digit).
pub fn validate_queue_name(name: &str) -> Result<(), SpecError> {
    let ok = (1..=trigger_bounds::MAX_QUEUE_NAME).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::Trigger(format!(
            "invalid queue name {name:?}: use 1-63 characters of a-z, 0-9, '-', '_' and '.'"
        )))
    }
}

pub(crate) fn validate_triggers(triggers: &[TriggerSpec]) -> Result<(), SpecError> {
    use trigger_bounds::*;
    if triggers.len() > MAX_TRIGGERS {
        return Err(SpecError::TooMany { what: "triggers", max: MAX_TRIGGERS });
    }
    let names = trigger_names(triggers);
    for (i, (t, name)) in triggers.iter().zip(&names).enumerate() {
        let bad = |m: String| SpecError::Trigger(format!("trigger {name:?}: {m}"));
        crate::validate_name(name).map_err(|_| {
            bad("a trigger name uses 1-63 characters of a-z, 0-9 and '-', starting with a letter"
                .into())
        })?;
        if names[..i].contains(name) {
            return Err(bad("two triggers have this name; give them distinct `name`s".into()));
        }
        for event in &t.events {
            if !t.kind.event_names().contains(&event.as_str()) {
                let allowed = t.kind.event_names();
                return Err(bad(if allowed.is_empty() {
                    format!("{} triggers take no `events`", t.kind.as_str())
                } else {
                    format!("unknown event {event:?}; use one of {}", allowed.join(", "))
                }));
            }
        }
        // Which optional fields each kind takes: anything else is a mistake worth reporting.
        let given: [(&str, bool); 8] = [
            ("bucket", t.bucket.is_some()),
            ("prefix", t.prefix.is_some()),
            ("suffix", t.suffix.is_some()),
            ("collection", t.collection.is_some()),
            ("cron", t.cron.is_some()),
            ("timezone", t.timezone.is_some()),
            ("catch_up", t.catch_up),
            ("queue", t.queue.is_some()),
        ];
        let allowed: &[&str] = match t.kind {
            TriggerKind::Storage => &["bucket", "prefix", "suffix"],
            TriggerKind::Documents => &["collection"],
            TriggerKind::Auth => &[],
            TriggerKind::Schedule => &["cron", "timezone", "catch_up"],
            TriggerKind::Queue => &["queue"],
        };
        for (field, present) in given {
            if present && !allowed.contains(&field) {
                return Err(bad(format!(
                    "`{field}` does not apply to {} triggers",
                    t.kind.as_str()
                )));
            }
        }
        let required: &[(&str, bool)] = match t.kind {
            TriggerKind::Storage => &[("bucket", t.bucket.is_some())],
            TriggerKind::Documents => &[("collection", t.collection.is_some())],
            TriggerKind::Schedule => &[("cron", t.cron.is_some())],
            TriggerKind::Queue => &[("queue", t.queue.is_some())],
            TriggerKind::Auth => &[],
        };
        for (field, present) in required {
            if !present {
                return Err(bad(format!("{} triggers need `{field}`", t.kind.as_str())));
            }
        }
        for (field, value) in [
            ("bucket", &t.bucket),
            ("prefix", &t.prefix),
            ("suffix", &t.suffix),
            ("collection", &t.collection),
            ("cron", &t.cron),
            ("timezone", &t.timezone),
            ("path", &t.path),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_FILTER_BYTES) {
                return Err(bad(format!("`{field}` is longer than {MAX_FILTER_BYTES} bytes")));
            }
        }
        if let Some(q) = &t.queue {
            validate_queue_name(q).map_err(|e| bad(e.to_string()))?;
        }
        if let Some(path) = &t.path
            && (!path.starts_with('/') || path.parse::<http_path::Check>().is_err())
        {
            return Err(bad(format!("`path` {path:?} must be an absolute path like /events")));
        }
        if let Some(cron) = &t.cron {
            parse_cron(cron).map_err(|e| bad(format!("`cron` {cron:?}: {e}")))?;
        }
        if let Some(tz) = &t.timezone {
            tz.parse::<chrono_tz::Tz>()
                .map_err(|_| bad(format!("unknown time zone {tz:?} (use an IANA name)")))?;
        }
        match t.max_attempts {
            Some(0) => return Err(bad("`max_attempts` must be at least 1".into())),
            Some(n) if n > MAX_ATTEMPTS => {
                return Err(bad(format!("`max_attempts` is at most {MAX_ATTEMPTS}")));
            }
            _ => {}
        }
        match t.max_age_secs {
            Some(0) => return Err(bad("`max_age_secs` must be at least 1".into())),
            Some(n) if n > MAX_AGE_SECS => {
                return Err(bad(format!("`max_age_secs` is at most {MAX_AGE_SECS} (7 days)")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parse a cron expression: 5 fields, or 6 with seconds first (croner's syntax: ranges, steps,
/// lists, names, `L`, `#`).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!("expected 5 fields (or 6 with seconds first), found {fields}"));
    }
    croner::parser::CronParser::builder()
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// Paths are checked the way URIs are: the event is sent to it as a request target.
mod http_path {
    pub struct Check;
    impl std::str::FromStr for Check {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let ok = s.bytes().all(|b| b.is_ascii_graphic()) && !s.contains('#');
            if ok { Ok(Check) } else { Err(()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn storage() -> TriggerSpec {
        TriggerSpec { bucket: Some("uploads".into()), ..TriggerSpec::new(TriggerKind::Storage) }
    }

    #[test]
    fn names_default_by_kind_and_must_be_unique() {
        let specs = vec![storage(), storage(), TriggerSpec::new(TriggerKind::Auth)];
        assert_eq!(trigger_names(&specs), ["storage", "storage-2", "auth"]);
        assert!(validate_triggers(&specs).is_ok());
        let mut dup = specs.clone();
        dup[1].name = Some("storage".into());
        assert!(validate_triggers(&dup).unwrap_err().to_string().contains("two triggers"));
    }

    #[test]
    fn fields_are_checked_per_kind() {
        let mut t = storage();
        t.cron = Some("* * * * *".into());
        assert!(validate_triggers(&[t]).unwrap_err().to_string().contains("`cron` does not apply"));
        let t = TriggerSpec::new(TriggerKind::Storage);
        assert!(validate_triggers(&[t]).unwrap_err().to_string().contains("need `bucket`"));
        let mut t = storage();
        t.events = vec!["updated".into()];
        assert!(validate_triggers(&[t]).unwrap_err().to_string().contains("unknown event"));
        let mut t = TriggerSpec::new(TriggerKind::Schedule);
        t.cron = Some("61 * * * *".into());
        assert!(validate_triggers(&[t.clone()]).is_err());
        t.cron = Some("*/5 * * * *".into());
        t.timezone = Some("Mars/Olympus".into());
        assert!(validate_triggers(&[t.clone()]).unwrap_err().to_string().contains("time zone"));
        t.timezone = Some("Europe/Paris".into());
        assert!(validate_triggers(&[t]).is_ok());
        let mut q = TriggerSpec::new(TriggerKind::Queue);
        q.queue = Some("Bad Name".into());
        assert!(validate_triggers(&[q]).is_err());
    }

    #[test]
    fn matching() {
        let mut t = storage();
        t.suffix = Some(".txt".into());
        t.events = vec!["created".into()];
        let data = json!({"bucket": "uploads", "key": "a/b.txt"});
        assert!(t.matches("f", "storage", "dev.nimbus.storage.object.created", &data));
        assert!(!t.matches("f", "storage", "dev.nimbus.storage.object.deleted", &data));
        let other = json!({"bucket": "other", "key": "a/b.txt"});
        assert!(!t.matches("f", "storage", "dev.nimbus.storage.object.created", &other));
        let jpg = json!({"bucket": "uploads", "key": "a/b.jpg"});
        assert!(!t.matches("f", "storage", "dev.nimbus.storage.object.created", &jpg));

        let mut s = TriggerSpec::new(TriggerKind::Schedule);
        s.cron = Some("* * * * *".into());
        let tick = json!({"function": "f", "trigger": "schedule"});
        assert!(s.matches("f", "schedule", event_types::SCHEDULE_TICK, &tick));
        assert!(!s.matches("g", "schedule", event_types::SCHEDULE_TICK, &tick));

        let auth = TriggerSpec::new(TriggerKind::Auth);
        assert!(auth.matches("f", "auth", "dev.nimbus.auth.user.created", &json!({})));
        assert!(!auth.matches("f", "auth", "dev.nimbus.documents.document.created", &json!({})));
    }
}
