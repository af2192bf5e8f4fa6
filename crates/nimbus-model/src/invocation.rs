use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// How an invocation ended, from the platform's point of view. A guest that answers 500 on its own
/// still `Ok`: the status here is about whether the guest ran to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvocationStatus {
    /// The guest ran to completion.
    Ok,
    /// The guest trapped (panic, abort, unreachable...).
    Trap,
    /// The wall-clock limit stopped it.
    Timeout,
    /// It tried to grow its memory past its limit.
    MemoryLimit,
    /// It never started: the concurrency queue was full or timed out, or the body was too large.
    Rejected,
    /// The host failed around the guest (the guest did not set a response, a body stream broke...).
    Error,
}

impl InvocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationStatus::Ok => "ok",
            InvocationStatus::Trap => "trap",
            InvocationStatus::Timeout => "timeout",
            InvocationStatus::MemoryLimit => "memory_limit",
            InvocationStatus::Rejected => "rejected",
            InvocationStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => InvocationStatus::Ok,
            "trap" => InvocationStatus::Trap,
            "timeout" => InvocationStatus::Timeout,
            "memory_limit" => InvocationStatus::MemoryLimit,
            "rejected" => InvocationStatus::Rejected,
            "error" => InvocationStatus::Error,
            _ => return None,
        })
    }
}

/// One execution of a function: what billing, quotas, autoscaling and logs are built on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct InvocationRecord {
    /// Commit position: assigned by the store when the record is written, in the write
    /// transaction, so that a reader that has seen position N has seen every record committed
    /// before it. What `after` cursors and `logs -f` page by. Positions only grow (gaps are
    /// possible); `0` until stored.
    #[serde(default)]
    pub seq: u64,
    /// Unique id (UUIDv7, made when the request starts), also sent to the client as
    /// `x-nimbus-invocation-id`. Not a cursor: a slow invocation is stored after faster ones that
    /// started later, so paging by id would skip it.
    pub id: String,
    pub project: String,
    pub function: String,
    pub version: u32,
    /// What caused it: `http`, `invoke` (the management API), `async`, or an event trigger as
    /// `kind:name` (`queue:jobs`, `schedule:schedule`...).
    pub trigger: String,
    /// The request's method and path as the function saw them (empty in records written before
    /// they were kept).
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub path: String,
    pub started_at: UnixMillis,
    /// Wall time from admission to the end of the response body, in microseconds.
    pub duration_us: u64,
    /// Time spent waiting for a free instance, in microseconds.
    pub queue_us: u64,
    /// CPU used, in Wasmtime fuel units (about one per wasm instruction).
    pub fuel: u64,
    /// Largest linear memory the instance reached, in bytes.
    pub peak_memory_bytes: u64,
    /// The function's configured memory limit in MiB (rounded up), what GB-seconds are billed
    /// on (0 in records written before usage was metered).
    #[serde(default)]
    pub memory_limit_mb: u64,
    /// Bytes the function's outbound HTTP requests wrote to the network.
    #[serde(default)]
    pub outbound_bytes: u64,
    pub status: InvocationStatus,
    /// HTTP status sent to the client, if a response started.
    pub http_status: Option<u16>,
    /// What went wrong, for the operator and developer (never shown to the function's callers).
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    /// Whether stdout/stderr were cut at the per-invocation log limit.
    pub logs_truncated: bool,
}

/// A filter over invocation records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct InvocationQuery {
    pub function: Option<String>,
    /// Only records with a commit position (`seq`) greater than this one: how `logs -f` follows.
    pub after: Option<u64>,
    pub status: Option<InvocationStatus>,
    /// Only requests with this method (`GET`...).
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose path starts with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// In commit order: newest first when false (the default); oldest first when true.
    #[serde(default)]
    pub ascending: bool,
    pub limit: Option<u32>,
}

/// A new invocation id and the record's `started_at`: a UUIDv7 and its own millisecond, so that
/// a store can find a record by id near that time ([`invocation_id_millis`]).
pub fn new_invocation_id() -> (String, UnixMillis) {
    let (uuid, millis) = new_invocation_uuid();
    (invocation_id_string(&uuid), millis)
}

/// [`new_invocation_id`], not yet made text: 16 bytes that a record can carry inline.
pub fn new_invocation_uuid() -> (uuid::Uuid, UnixMillis) {
    // Made from the clock and 74 bits of the thread's CSPRNG (no counter: nothing orders
    // invocations by id, the store's position does that). uuid's own v7 generators cost ~900
    // instructions, most of a request's routing budget: a context per thread with a counter and
    // 128-bit time arithmetic, or `Uuid::now_v7`'s process-wide mutex.
    let millis = crate::now_millis();
    let random: [u8; 10] = rand::random();
    (uuid::Builder::from_unix_timestamp_millis(millis as u64, &random).into_uuid(), millis)
}

/// An invocation id as text (lower-case, hyphenated), encoded into a buffer rather than through
/// `Display`'s formatting machinery.
pub fn invocation_id_string(uuid: &uuid::Uuid) -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid.hyphenated().encode_lower(&mut buf).to_owned()
}

/// The start time an invocation id made by [`new_invocation_id`] carries; `None` for any other
/// id (not a UUIDv7).
pub fn invocation_id_millis(id: &str) -> Option<UnixMillis> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    v7_millis(&uuid)
}

fn v7_millis(uuid: &uuid::Uuid) -> Option<UnixMillis> {
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_on_many_threads_at_once_are_unique() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..5_000).map(|_| new_invocation_id().0).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            let ids = t.join().unwrap();
            for id in ids {
                assert!(invocation_id_millis(&id).is_some(), "{id} is a UUIDv7");
                assert!(all.insert(id), "duplicate id");
            }
        }
        assert_eq!(all.len(), 20_000);
    }

    #[test]
    fn an_invocation_id_carries_its_start() {
        let before = crate::now_millis();
        let (id, started_at) = new_invocation_id();
        assert!(started_at >= before && started_at <= crate::now_millis());
        assert_eq!(invocation_id_millis(&id), Some(started_at));
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_700_000_000, 123_456_789);
        assert_eq!(
            invocation_id_millis(&uuid::Uuid::new_v7(ts).to_string()),
            Some(1_700_000_000_123)
        );
        // A UUID of another version: its bits are not a time.
        assert_eq!(invocation_id_millis("6ba7b810-9dad-41d1-80b4-00c04fd430c8"), None);
        assert_eq!(invocation_id_millis("00000000000000000001"), None);
    }
}
