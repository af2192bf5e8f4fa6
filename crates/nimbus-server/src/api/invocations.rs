//! Invocation records: `/v1/invocations` and a function's logs, optionally followed live (SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt, stream};
use nimbus_model::{InvocationQuery, InvocationRecord, InvocationStatus};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::BroadcastStream;
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};

#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct InvocationList {
    pub invocations: Vec<InvocationRecord>,
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct ListParams {
    /// Only this function's invocations.
    function: Option<String>,
    /// ok, trap, timeout, memory_limit, rejected or error.
    status: Option<String>,
    /// Only invocations after this id (ids are time-ordered).
    after: Option<String>,
    /// 1-1000, default 100.
    limit: Option<u32>,
    /// `desc` (newest first, the default) or `asc`.
    order: Option<String>,
}

/// List invocation records.
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
        after_id: p.after,
        status,
        ascending,
        limit: p.limit,
    };
    Ok(Json(InvocationList {
        invocations: state.functions.invocations(&caller.project, query).await?,
    }))
}

#[derive(Deserialize, IntoParams)]
pub(crate) struct LogParams {
    /// Only invocations after this id.
    after: Option<String>,
    /// 1-1000, default 100.
    limit: Option<u32>,
    /// Keep the connection open and stream new invocations as server-sent events.
    #[serde(default)]
    follow: bool,
}

/// A function's invocations with their captured stdout/stderr, newest first; with `follow=true`, a
/// `text/event-stream` of records (oldest first), each event's data one record as JSON.
/// One Server-Sent Event of a followed log: `data` is an invocation record as JSON, `id` the
/// position to resume after.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the stream; the handler writes it with axum's Sse
pub(crate) struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
}

#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "invocations",
    params(("name" = String, Path), LogParams),
    responses(
        (status = 200, description = "the records as JSON; with `follow=true`, a Server-Sent \
            Events stream of records as they are written",
         content((InvocationList = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(p): Query<LogParams>,
) -> Result<Response, ApiError> {
    // Logs of a deleted function stay readable by id, but following needs a function.
    if state.functions.active(&caller.project, &name).is_none() {
        state.functions.info(&caller.project, &name).await?;
    }
    if !p.follow {
        let query = InvocationQuery {
            function: Some(name),
            after_id: p.after,
            limit: p.limit,
            ..Default::default()
        };
        let invocations = state.functions.invocations(&caller.project, query).await?;
        return Ok(Json(InvocationList { invocations }).into_response());
    }
    // Subscribe before reading the backlog, so nothing falls between the two.
    let live = BroadcastStream::new(state.functions.follow());
    let backlog = state
        .functions
        .invocations(
            &caller.project,
            InvocationQuery {
                function: Some(name.clone()),
                after_id: p.after.clone(),
                ascending: true,
                limit: Some(p.limit.unwrap_or(100)),
                ..Default::default()
            },
        )
        .await?;
    let last_seen = backlog.last().map(|r| r.id.clone()).or(p.after);
    let stream = follow_stream(caller.project, name, backlog, live, last_seen)
        .take_until(state.clone().shutdown_signal());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn follow_stream(
    project: String,
    function: String,
    backlog: Vec<InvocationRecord>,
    live: BroadcastStream<std::sync::Arc<InvocationRecord>>,
    last_seen: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let backlog = stream::iter(backlog.into_iter().map(|r| event(&r)));
    let live = live.filter_map(move |item| {
        let keep = match &item {
            // A slow follower that lagged behind is told so, and carries on.
            Err(_) => Some(Ok(Event::default()
                .comment("lagged: some records were skipped; reconnect with after=<last id>"))),
            Ok(r)
                if r.project == project
                    && r.function == function
                    && last_seen.as_deref().is_none_or(|s| r.id.as_str() > s) =>
            {
                Some(event(r))
            }
            Ok(_) => None,
        };
        std::future::ready(keep)
    });
    backlog.chain(live)
}

fn event(r: &InvocationRecord) -> Result<Event, Infallible> {
    Ok(Event::default()
        .id(r.id.clone())
        .json_data(r)
        .unwrap_or_else(|_| Event::default().comment("unserializable record")))
}
