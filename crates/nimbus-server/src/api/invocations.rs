//! Invocation records: `/v1/invocations` and a function's logs, optionally followed live (SSE).
//!
//! Records are paged and followed by their commit position (`seq`), never by id: an id is made
//! when a request starts, and a slow invocation is stored after faster ones that started later.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt, stream};
use nimbus_functions::FunctionService;
use nimbus_model::{InvocationQuery, InvocationRecord, InvocationStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};

/// The most records a follower reads from the store at once while it catches up.
const FOLLOW_PAGE: u32 = 1000;

#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct InvocationList {
    pub invocations: Vec<InvocationRecord>,
}

/// Parse an `after` cursor: a commit position (`seq`). Parsed here rather than by the query
/// extractor so that a client still sending an id (the cursor before positions) is told why.
pub(crate) fn parse_position(after: Option<&str>) -> Result<Option<u64>, ApiError> {
    after
        .map(|a| {
            // Positions are SQLite integers: at most i64::MAX.
            a.parse::<u64>().ok().filter(|p| i64::try_from(*p).is_ok()).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "after is a position (the seq of the last item seen, a non-negative \
                         integer), not {a:?}"
                    ),
                )
            })
        })
        .transpose()
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct ListParams {
    /// Only this function's invocations.
    function: Option<String>,
    /// ok, trap, timeout, memory_limit, rejected or error.
    status: Option<String>,
    /// Only requests with this method (`GET`, `POST`...).
    method: Option<String>,
    /// Only requests whose path starts with this.
    path: Option<String>,
    /// Only invocations stored after this position: the `seq` of the last record seen.
    /// Positions follow the order in which records were stored, so paging with them misses none.
    #[param(value_type = Option<u64>)]
    after: Option<String>,
    /// 1-1000, default 100.
    limit: Option<u32>,
    /// `desc` (newest first, the default) or `asc`, by position.
    order: Option<String>,
}

/// List invocation records, in the order they were stored (by `seq`).
#[utoipa::path(get, path = "/v1/invocations", tag = "invocations", params(ListParams),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<ListParams>,
) -> Result<Json<InvocationList>, ApiError> {
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(InvocationStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown status {s:?}"))
        })?),
    };
    let ascending = match p.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("order is asc or desc, not {o:?}"),
            ));
        }
    };
    let query = InvocationQuery {
        function: p.function,
        after: parse_position(p.after.as_deref())?,
        status,
        method: p.method.map(|m| m.to_ascii_uppercase()),
        path_prefix: p.path,
        ascending,
        limit: p.limit,
    };
    Ok(Json(InvocationList {
        invocations: state.functions.invocations(&caller.project, query).await?,
    }))
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct LogParams {
    /// Only invocations stored after this position: the `seq` of the last record seen. With
    /// `follow=true`, every record stored after it is sent, then new ones as they are stored.
    #[param(value_type = Option<u64>)]
    after: Option<String>,
    /// 1-1000, default 100. With `follow=true` and no `after`: how many of the newest records
    /// to send before the live ones.
    limit: Option<u32>,
    /// Keep the connection open and stream new invocations as server-sent events.
    #[serde(default)]
    follow: bool,
}

/// One Server-Sent Event of a followed log: `data` is an invocation record as JSON, `id` its
/// position (`seq`) to resume after.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the stream; the handler writes it with axum's Sse
pub(crate) struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
}

/// A function's invocations with their captured stdout/stderr, newest first; with `follow=true`, a
/// `text/event-stream` of records in the order they were stored, each event's data one record as
/// JSON and its id the record's `seq` (reconnect with `after=<seq>`).
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "invocations",
    params(("name" = String, Path), LogParams),
    responses(
        (status = 200, description = "the records as JSON; with `follow=true`, a Server-Sent \
            Events stream of records as they are stored",
         content((InvocationList = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(p): Query<LogParams>,
) -> Result<Response, ApiError> {
    let after = parse_position(p.after.as_deref())?;
    // Logs of a deleted function stay readable by id, but following needs a function.
    if state.functions.active(&caller.project, &name).is_none() {
        state.functions.info(&caller.project, &name).await?;
    }
    if !p.follow {
        let query =
            InvocationQuery { function: Some(name), after, limit: p.limit, ..Default::default() };
        let invocations = state.functions.invocations(&caller.project, query).await?;
        return Ok(Json(InvocationList { invocations }).into_response());
    }
    // Subscribe before reading the store, so that nothing stored in between is missed; what
    // both deliver is dropped by position.
    let live = state.functions.follow();
    let mut follower = Follower {
        functions: state.functions.clone(),
        project: caller.project,
        function: name,
        last_seen: after.unwrap_or(0),
        live,
        pending: VecDeque::new(),
        catching_up: after.is_some(),
    };
    if after.is_none() {
        // From now, like `tail -f`: the newest few, then live.
        let query = InvocationQuery {
            function: Some(follower.function.clone()),
            limit: Some(p.limit.unwrap_or(100)),
            ..Default::default()
        };
        let mut newest = state.functions.invocations(&follower.project, query).await?;
        newest.reverse();
        follower.take(newest, u32::MAX);
    } else {
        // Read the first page now, so that a failing store is an error status, not an empty
        // stream.
        follower.catch_up().await?;
    }
    let stream = follower.into_stream().take_until(state.clone().shutdown_signal());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One `logs -f` connection: the store from a position, then the live broadcast; back to the
/// store whenever the broadcast ran ahead of it (a slow client), so no record is skipped.
struct Follower {
    functions: Arc<FunctionService>,
    project: String,
    function: String,
    /// The position of the last record queued or sent; only later ones are sent.
    last_seen: u64,
    live: broadcast::Receiver<Arc<InvocationRecord>>,
    /// Read from the store, not sent yet.
    pending: VecDeque<InvocationRecord>,
    /// Whether the store may hold records after `last_seen` that the broadcast will not bring.
    catching_up: bool,
}

impl Follower {
    /// Queue a page read from the store; a full page means there may be more.
    fn take(&mut self, page: Vec<InvocationRecord>, page_size: u32) {
        self.catching_up = page.len() >= page_size as usize;
        if let Some(last) = page.last() {
            self.last_seen = self.last_seen.max(last.seq);
        }
        self.pending.extend(page);
    }

    async fn catch_up(&mut self) -> Result<(), ApiError> {
        let query = InvocationQuery {
            function: Some(self.function.clone()),
            after: Some(self.last_seen),
            ascending: true,
            limit: Some(FOLLOW_PAGE),
            ..Default::default()
        };
        let page = self.functions.invocations(&self.project, query).await?;
        self.take(page, FOLLOW_PAGE);
        Ok(())
    }

    async fn next(&mut self) -> Option<InvocationRecord> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            if self.catching_up {
                if self.catch_up().await.is_err() {
                    // Logged where it was mapped. The head has been sent: end the stream; the
                    // client reconnects with `after=<last seq>` and loses nothing.
                    return None;
                }
                continue;
            }
            match self.live.recv().await {
                Ok(r)
                    if r.seq > self.last_seen
                        && r.project == self.project
                        && r.function == self.function =>
                {
                    self.last_seen = r.seq;
                    return Some(Arc::unwrap_or_clone(r));
                }
                Ok(_) => {}
                // Records went by while this client was slow: read them from the store.
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut f| async move {
            let r = f.next().await?;
            Some((event(&r), f))
        })
    }
}

fn event(r: &InvocationRecord) -> Result<Event, Infallible> {
    Ok(Event::default()
        .id(r.seq.to_string())
        .json_data(r)
        .unwrap_or_else(|_| Event::default().comment("unserializable record")))
}
