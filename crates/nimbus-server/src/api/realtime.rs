//! Realtime subscriptions over Server-Sent Events and WebSocket:
//! `/v1/projects/{project}/realtime/{sse,ws}?collection=c[&doc=id][&filter=...][&since=N]`.
//!
//! Browsers cannot set headers on `EventSource` or `WebSocket`, and access tokens must not sit in
//! URLs (they end up in logs), so a browser first trades its token for a single-use ticket that
//! lives 30 s (`POST /v1/projects/{project}/realtime/tickets` with `Authorization: Bearer`) and
//! opens the stream with `?ticket=`. Other clients may send `Authorization` as usual; a WebSocket
//! client may instead send `{"type":"auth","token":"..."}` as its first message.
//!
//! `?channel=push` (instead of `collection`) follows the signed-in user's push notifications
//! (the in-app channel, docs/push.md): each message sent to the user arrives as a
//! `notification` event while the connection is open.
//!
//! Each event carries its log position (SSE `id:`); reconnecting with `Last-Event-ID` (SSE) or
//! `since` resumes without gap or duplicate, or starts with a `resync` event when the position is
//! older than the log keeps.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, stream};
use nimbus_documents::Principal;
use nimbus_documents::realtime::{Next, SubscribeRequest, Subscription, Target};
use nimbus_store::events::Event;
use serde::Deserialize;
use serde_json::json;

use crate::api::documents::{principal, user_principal};
use crate::app::AppState;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamParams {
    /// Required unless `channel=push`.
    #[serde(default)]
    collection: String,
    /// `push`: the signed-in user's notifications instead of document events.
    channel: Option<String>,
    doc: Option<String>,
    filter: Option<String>,
    since: Option<u64>,
    ticket: Option<String>,
}

/// Trade a bearer credential for a single-use ticket.
pub(crate) async fn ticket(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = principal(&state, &project, &headers, &None).await?;
    let ticket = state.documents.tickets().issue(&project, who)?;
    Ok(Json(json!({
        "ticket": ticket,
        "expires_in": nimbus_documents::tickets::TICKET_TTL.as_secs(),
    }))
    .into_response())
}

async fn who(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Principal, ApiError> {
    match ticket {
        Some(t) => Ok(state.documents.tickets().redeem(project, t)?),
        None => principal(state, project, headers, &None).await,
    }
}

fn request(
    project: &str,
    p: &StreamParams,
    since: Option<u64>,
    who: Principal,
) -> SubscribeRequest {
    SubscribeRequest {
        project: project.to_owned(),
        collection: p.collection.clone(),
        target: match &p.doc {
            Some(id) => Target::Document(id.clone()),
            None => Target::Collection,
        },
        filter: p.filter.clone(),
        since,
        who,
    }
}

/// The JSON text of one document event, the same on SSE and WebSocket (where `event` names the
/// message; on SSE it repeats the event's name). Rendered once per event and shared by every
/// subscriber that receives it.
fn render_event(e: &Event) -> String {
    json!({
        "event": short_kind(e),
        "position": e.position,
        "id": e.id,
        "type": e.kind,
        "time": e.time,
        "collection": e.data["collection"],
        "document": e.data["document"],
    })
    .to_string()
}

fn short_kind(e: &Event) -> &str {
    e.kind.rsplit('.').next().unwrap_or("event")
}

pub(crate) async fn sse(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    q: Result<Query<StreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p =
        q.map(|Query(p)| p).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let who = who(&state, &project, &headers, p.ticket.as_deref()).await?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => {
            Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                ApiError::bad_request("invalid_query", "Last-Event-ID is an event position")
            })?)
        }
    };
    if is_push(&p)? {
        return push_sse(&state, &project, who);
    }
    let since = last_event_id.or(p.since);
    let sub = state
        .documents
        .hub()
        .subscribe(&state.documents, request(&project, &p, since, who))
        .await?;
    // Each step yields one SSE event; after a `Closed` it yields the reason, then ends.
    let events = stream::unfold(Some(sub), |sub| async move {
        let mut sub = sub?;
        let ev = match sub.next().await {
            Next::Event(e) => SseEvent::default()
                .id(e.position.to_string())
                .event(short_kind(&e))
                .data(&*e.rendered(render_event)),
            Next::Resync { position } => SseEvent::default()
                .id(position.to_string())
                .event("resync")
                .data(json!({ "position": position }).to_string()),
            Next::Closed(reason) => {
                let ev = SseEvent::default()
                    .event("error")
                    .data(json!({ "reason": reason }).to_string());
                return Some((Ok::<_, Infallible>(ev), None));
            }
        };
        Some((Ok(ev), Some(sub)))
    })
    .take_until(state.clone().shutdown_signal());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// How long a WebSocket client has to send its auth message.
const WS_AUTH_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn ws(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    q: Result<Query<StreamParams>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let p =
        q.map(|Query(p)| p).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    // A ticket or a header authenticates before the upgrade (so failures are plain 401s); without
    // either, the first message must.
    let has_header = headers.contains_key(axum::http::header::AUTHORIZATION)
        || headers.contains_key(crate::app::API_KEY_HEADER);
    let who = if p.ticket.is_some() || has_header {
        Some(who(&state, &project, &headers, p.ticket.as_deref()).await?)
    } else {
        None
    };
    let push = is_push(&p)?;
    if let (true, Some(who)) = (push, &who) {
        push_user(who)?;
    }
    // Unknown collections and denied subscriptions answer before the upgrade too, when we can.
    if who.is_some() && !push {
        state.documents.compiled(&project, &p.collection).await?;
    }
    Ok(upgrade
        .max_message_size(64 << 10)
        .on_upgrade(move |socket| serve_ws(state, project, p, who, socket)))
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame { code, reason: reason.to_owned().into() })))
        .await;
}

async fn serve_ws(
    state: AppState,
    project: String,
    p: StreamParams,
    who: Option<Principal>,
    mut socket: WebSocket,
) {
    let who = match who {
        Some(w) => w,
        None => match ws_auth(&state, &project, &mut socket).await {
            Ok(w) => w,
            Err(reason) => return close(socket, 4401, &reason).await,
        },
    };
    if p.channel.is_some() {
        return serve_push_ws(state, project, Some(who), socket).await;
    }
    let mut sub: Subscription = match state
        .documents
        .hub()
        .subscribe(&state.documents, request(&project, &p, p.since, who))
        .await
    {
        Ok(s) => s,
        Err(e) => return close(socket, 4400, &ApiError::from(e).message).await,
    };
    let mut shutdown = std::pin::pin!(state.clone().shutdown_signal());
    loop {
        tokio::select! {
            next = sub.next() => {
                let msg = match next {
                    Next::Event(e) => e.rendered(render_event).to_string(),
                    Next::Resync { position } => {
                        json!({ "event": "resync", "position": position }).to_string()
                    }
                    Next::Closed(reason) => return close(socket, 4408, &reason).await,
                };
                if socket.send(Message::Text(msg.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = &mut shutdown => return close(socket, 1001, "shutdown").await,
        }
    }
}

async fn ws_auth(
    state: &AppState,
    project: &str,
    socket: &mut WebSocket,
) -> Result<Principal, String> {
    #[derive(Deserialize)]
    struct Auth {
        #[serde(rename = "type")]
        kind: String,
        token: String,
    }
    let first = tokio::time::timeout(WS_AUTH_TIMEOUT, socket.recv())
        .await
        .map_err(|_| "no auth message".to_string())?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err("the first message must be {\"type\":\"auth\",\"token\":...}".into());
    };
    let auth: Auth = serde_json::from_str(&text)
        .map_err(|_| "the first message must be {\"type\":\"auth\",\"token\":...}".to_string())?;
    if auth.kind != "auth" {
        return Err("the first message must be {\"type\":\"auth\",\"token\":...}".into());
    }
    if state.is_admin_token(&auth.token) {
        return Ok(Principal::Service);
    }
    let claims = state
        .auth
        .verify_access_token(project, &auth.token)
        .await
        .map_err(|_| "the token is not valid".to_string())?;
    Ok(user_principal(&claims))
}

/// Whether the stream is the push channel (and the parameters make sense for what it is).
fn is_push(p: &StreamParams) -> Result<bool, ApiError> {
    match p.channel.as_deref() {
        None if p.collection.is_empty() => {
            Err(ApiError::bad_request("invalid_query", "collection (or channel=push) is required"))
        }
        None => Ok(false),
        Some("push") if p.collection.is_empty() && p.doc.is_none() && p.filter.is_none() => {
            Ok(true)
        }
        Some("push") => Err(ApiError::bad_request(
            "invalid_query",
            "channel=push takes no collection, doc or filter",
        )),
        Some(_) => Err(ApiError::bad_request("invalid_query", "the only channel is push")),
    }
}

/// The user whose notifications a push-channel connection receives.
fn push_user(who: &Principal) -> Result<String, ApiError> {
    match who {
        Principal::User(auth) => auth.get("id").and_then(|v| v.as_str()).map(str::to_owned),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "the push channel is for signed-in users",
        )
    })
}

fn push_sse(state: &AppState, project: &str, who: Principal) -> Result<Response, ApiError> {
    let user = push_user(&who)?;
    let sub = state.push.live().subscribe(project, &user);
    let events = stream::unfold(Some(sub), |sub| async move {
        let mut sub = sub?;
        match sub.next().await {
            Ok(text) => Some((
                Ok::<_, Infallible>(SseEvent::default().event("notification").data(&*text)),
                Some(sub),
            )),
            Err(reason) => {
                let ev = SseEvent::default()
                    .event("error")
                    .data(json!({ "reason": reason }).to_string());
                Some((Ok(ev), None))
            }
        }
    })
    .take_until(state.clone().shutdown_signal());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn serve_push_ws(
    state: AppState,
    project: String,
    who: Option<Principal>,
    mut socket: WebSocket,
) {
    let who = match who {
        Some(w) => w,
        None => match ws_auth(&state, &project, &mut socket).await {
            Ok(w) => w,
            Err(reason) => return close(socket, 4401, &reason).await,
        },
    };
    let user = match push_user(&who) {
        Ok(u) => u,
        Err(e) => return close(socket, 4403, &e.message).await,
    };
    let mut sub = state.push.live().subscribe(&project, &user);
    let mut shutdown = std::pin::pin!(state.clone().shutdown_signal());
    loop {
        tokio::select! {
            next = sub.next() => match next {
                Ok(text) => {
                    if socket.send(Message::Text(text.to_string().into())).await.is_err() {
                        return;
                    }
                }
                Err(reason) => return close(socket, 4408, &reason).await,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = &mut shutdown => return close(socket, 1001, "shutdown").await,
        }
    }
}
