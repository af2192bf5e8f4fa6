//! How a segment's records are laid out in its `body`.
//!
//! - **Format 1**, JSON: an array of positional arrays ([`JsonV1`]). Migration 15 builds these in
//!   SQL from the rows of older builds, and builds before format 2 wrote them. Read, never
//!   written.
//! - **Format 2**, postcard ([`PostcardV2`]): what segments are written in now, and what a
//!   segment rewritten by pruning becomes. Every record is written, and its bytes are copied
//!   several times (into SQLite's pages, into the WAL, back into the database at a checkpoint),
//!   so their number is paid on every request: a hello-world record is ~135 bytes as JSON and ~60
//!   here (varints, the id as 16 bytes, positions and start times as offsets from the segment's
//!   first).
//!
//! postcard (a serde format, already in the build through wasmtime) rather than an encoding of our
//! own: it is compact and checked, and a corrupt body is an error, never a panic. Both formats are
//! positional: never reorder their fields; add fields under a new format.

use nimbus_model::{InvocationRecord, InvocationStatus, UnixMillis};
use nimbus_store::Result;
use serde::{Deserialize, Serialize};

use crate::error::backend;

pub(super) const FORMAT_JSON_V1: i64 = 1;
pub(super) const FORMAT_POSTCARD_V2: i64 = 2;

/// A segment's body and the names its row carries, not yet decoded.
pub(super) struct Body {
    pub(super) project: String,
    pub(super) function: String,
    pub(super) format: i64,
    pub(super) bytes: Vec<u8>,
}

/// Encode `records` (in position order) as a format 2 body into `out`.
pub(super) fn encode<'a>(
    records: impl Iterator<Item = &'a InvocationRecord> + Clone,
    out: &mut Vec<u8>,
) {
    let seq_base = records.clone().map(|r| r.seq).min().unwrap_or(0);
    let started_base = records.clone().map(|r| r.started_at).min().unwrap_or(0);
    let segment = PostcardV2 {
        seq_base,
        started_base,
        records: records.map(|r| StoredV2::of(r, seq_base, started_base)).collect(),
    };
    out.clear();
    // Writing into a Vec cannot fail, and every field serializes.
    *out = postcard::to_extend(&segment, std::mem::take(out)).expect("a record serializes");
}

/// A segment's records, in the order they were encoded (position order).
pub(super) fn decode(body: &Body) -> Result<Vec<InvocationRecord>> {
    match body.format {
        FORMAT_JSON_V1 => decode_json_v1(body),
        FORMAT_POSTCARD_V2 => decode_postcard_v2(body),
        other => Err(backend(
            "reading invocation records",
            format!("segment format {other} is newer than this build"),
        )),
    }
}

/// What `instr` looks for to find the record `id` in a format 2 body: its 16 bytes when it is a
/// UUID as Nimbus writes them, its text otherwise (see [`Id`]). In JSON it is the id's text.
pub(super) fn id_needle_v2(id: &str) -> Vec<u8> {
    match Id::of(id) {
        Id::Uuid(bytes) => bytes.to_vec(),
        Id::Text(text) => text.as_bytes().to_vec(),
    }
}

fn corrupt(e: impl std::fmt::Display) -> nimbus_store::StoreError {
    backend("reading invocation records", format!("a corrupt segment: {e}"))
}

fn status(s: &str) -> Result<InvocationStatus> {
    InvocationStatus::parse(s)
        .ok_or_else(|| backend("reading invocation records", format!("unknown status {s:?}")))
}

/// Format 2: the bases, then each record's fields as offsets from them.
#[derive(Serialize, Deserialize)]
struct PostcardV2<'a> {
    seq_base: u64,
    started_base: UnixMillis,
    #[serde(borrow)]
    records: Vec<StoredV2<'a>>,
}

/// An id as text is 36 bytes; Nimbus's ids are UUIDs, 16. Any other id (records are kept as
/// they came, and older builds made other ids) is kept as its text.
#[derive(Serialize, Deserialize)]
enum Id<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> Id<'a> {
    fn of(id: &'a str) -> Self {
        // Only the form `invocation_id_string` writes (hyphenated, lower case), so that reading
        // it back gives the same text.
        if id.len() == 36
            && !id.bytes().any(|b| b.is_ascii_uppercase())
            && let Ok(uuid) = uuid::Uuid::try_parse(id)
        {
            return Id::Uuid(uuid.into_bytes());
        }
        Id::Text(id)
    }

    fn into_string(self) -> String {
        match self {
            Id::Uuid(bytes) => nimbus_model::invocation_id_string(&uuid::Uuid::from_bytes(bytes)),
            Id::Text(text) => text.to_owned(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredV2<'a> {
    /// Position - the segment's `seq_base`.
    seq: u64,
    #[serde(borrow)]
    id: Id<'a>,
    version: u32,
    trigger: &'a str,
    method: &'a str,
    path: &'a str,
    /// `started_at` - the segment's `started_base`.
    started: u64,
    duration_us: u64,
    queue_us: u64,
    fuel: u64,
    peak_memory_bytes: u64,
    memory_limit_mb: u64,
    outbound_bytes: u64,
    status: &'a str,
    http_status: Option<u16>,
    error: Option<&'a str>,
    stdout: &'a str,
    stderr: &'a str,
    logs_truncated: bool,
}

impl<'a> StoredV2<'a> {
    fn of(r: &'a InvocationRecord, seq_base: u64, started_base: UnixMillis) -> Self {
        StoredV2 {
            seq: r.seq - seq_base,
            id: Id::of(&r.id),
            version: r.version,
            trigger: &r.trigger,
            method: &r.method,
            path: &r.path,
            started: r.started_at.abs_diff(started_base),
            duration_us: r.duration_us,
            queue_us: r.queue_us,
            fuel: r.fuel,
            peak_memory_bytes: r.peak_memory_bytes,
            memory_limit_mb: r.memory_limit_mb,
            outbound_bytes: r.outbound_bytes,
            status: r.status.as_str(),
            http_status: r.http_status,
            error: r.error.as_deref(),
            stdout: &r.stdout,
            stderr: &r.stderr,
            logs_truncated: r.logs_truncated,
        }
    }
}

fn decode_postcard_v2(body: &Body) -> Result<Vec<InvocationRecord>> {
    let segment: PostcardV2<'_> = postcard::from_bytes(&body.bytes).map_err(corrupt)?;
    let (seq_base, started_base) = (segment.seq_base, segment.started_base);
    segment
        .records
        .into_iter()
        .map(|s| {
            Ok(InvocationRecord {
                seq: seq_base
                    .checked_add(s.seq)
                    .ok_or_else(|| corrupt("a position out of range"))?,
                id: s.id.into_string(),
                project: body.project.clone(),
                function: body.function.clone(),
                version: s.version,
                trigger: s.trigger.to_owned(),
                method: s.method.to_owned(),
                path: s.path.to_owned(),
                started_at: started_base
                    .checked_add_unsigned(s.started)
                    .ok_or_else(|| corrupt("a start time out of range"))?,
                duration_us: s.duration_us,
                queue_us: s.queue_us,
                fuel: s.fuel,
                peak_memory_bytes: s.peak_memory_bytes,
                memory_limit_mb: s.memory_limit_mb,
                outbound_bytes: s.outbound_bytes,
                status: status(s.status)?,
                http_status: s.http_status,
                error: s.error.map(str::to_owned),
                stdout: s.stdout.to_owned(),
                stderr: s.stderr.to_owned(),
                logs_truncated: s.logs_truncated,
            })
        })
        .collect()
}

/// Format 1, as read: one positional array per record, without the project and function.
#[derive(Deserialize)]
struct JsonV1(
    u64,            // seq
    String,         // id
    u32,            // version
    String,         // trigger
    String,         // method
    String,         // path
    UnixMillis,     // started_at
    u64,            // duration_us
    u64,            // queue_us
    u64,            // fuel
    u64,            // peak_memory_bytes
    u64,            // memory_limit_mb
    u64,            // outbound_bytes
    String,         // status
    Option<u16>,    // http_status
    Option<String>, // error
    String,         // stdout
    String,         // stderr
    bool,           // logs_truncated
);

fn decode_json_v1(body: &Body) -> Result<Vec<InvocationRecord>> {
    let rows: Vec<JsonV1> = serde_json::from_slice(&body.bytes).map_err(corrupt)?;
    rows.into_iter()
        .map(|l| {
            Ok(InvocationRecord {
                seq: l.0,
                id: l.1,
                project: body.project.clone(),
                function: body.function.clone(),
                version: l.2,
                trigger: l.3,
                method: l.4,
                path: l.5,
                started_at: l.6,
                duration_us: l.7,
                queue_us: l.8,
                fuel: l.9,
                peak_memory_bytes: l.10,
                memory_limit_mb: l.11,
                outbound_bytes: l.12,
                status: status(&l.13)?,
                http_status: l.14,
                error: l.15,
                stdout: l.16,
                stderr: l.17,
                logs_truncated: l.18,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, id: &str, started_at: UnixMillis) -> InvocationRecord {
        InvocationRecord {
            seq,
            id: id.into(),
            project: "p".into(),
            function: "f".into(),
            version: 3,
            trigger: "kv:orders".into(),
            method: "POST".into(),
            path: "/a/ü".into(),
            started_at,
            duration_us: 1_234,
            queue_us: 5,
            fuel: u64::MAX,
            peak_memory_bytes: 1 << 20,
            memory_limit_mb: 128,
            outbound_bytes: 7,
            status: InvocationStatus::Trap,
            http_status: None,
            error: Some("boom \"quoted\"".into()),
            stdout: "out\n".into(),
            stderr: "err".into(),
            logs_truncated: true,
        }
    }

    fn body(format: i64, bytes: Vec<u8>) -> Body {
        Body { project: "p".into(), function: "f".into(), format, bytes }
    }

    /// Every field comes back, for ids of both kinds, positions with gaps (a rewritten segment)
    /// and start times out of order.
    #[test]
    fn format_2_round_trips() {
        let uuid = nimbus_model::new_invocation_id().0;
        let records = vec![
            record(10, &uuid, 1_700_000_000_500),
            record(13, "inv-from-an-old-build", 1_700_000_000_100),
            record(14, &uuid.to_uppercase(), -5),
        ];
        let mut bytes = Vec::new();
        encode(records.iter(), &mut bytes);
        assert_eq!(decode(&body(FORMAT_POSTCARD_V2, bytes.clone())).unwrap(), records);
        // The needle of each id is in the body.
        for r in &records {
            let needle = id_needle_v2(&r.id);
            assert!(bytes.windows(needle.len()).any(|w| w == needle), "{}", r.id);
        }
        assert_eq!(id_needle_v2(&uuid).len(), 16);
        assert_eq!(id_needle_v2(&uuid.to_uppercase()), uuid.to_uppercase().as_bytes());
    }

    /// A hello-world record is well under half its JSON size.
    #[test]
    fn format_2_is_compact() {
        let mut r = record(1, &nimbus_model::new_invocation_id().0, 1_700_000_000_000);
        (r.trigger, r.method, r.path, r.error) =
            ("http".into(), "GET".into(), "/hello".into(), None);
        (r.stdout, r.stderr, r.fuel, r.status) =
            (String::new(), String::new(), 48_211, InvocationStatus::Ok);
        let many: Vec<_> = (0..100).map(|i| InvocationRecord { seq: i + 1, ..r.clone() }).collect();
        let mut bytes = Vec::new();
        encode(many.iter(), &mut bytes);
        let per_record = bytes.len() / many.len();
        assert!(per_record <= 60, "{per_record} bytes a record");
    }

    /// Truncated or altered bodies are errors, not panics, and unknown formats are refused.
    #[test]
    fn corrupt_bodies_are_errors() {
        let records = [record(1, &nimbus_model::new_invocation_id().0, 0)];
        let mut bytes = Vec::new();
        encode(records.iter(), &mut bytes);
        for cut in 0..bytes.len() {
            assert!(decode(&body(FORMAT_POSTCARD_V2, bytes[..cut].to_vec())).is_err(), "{cut}");
        }
        let mut huge = vec![0u8, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        huge.extend_from_slice(&bytes);
        assert!(decode(&body(FORMAT_POSTCARD_V2, huge)).is_err());
        assert!(decode(&body(FORMAT_JSON_V1, b"[[1]]".to_vec())).is_err());
        assert!(decode(&body(3, bytes)).is_err());
    }
}
