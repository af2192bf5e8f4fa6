//! The in-app channel: signed-in users connected over the realtime endpoints (SSE/WebSocket,
//! `channel=push`) receive the messages sent to them (`to: {user}`) as they are queued.
//!
//! Like the documents hub, an in-memory consumer of the event log: it tails the log from its
//! head and hands each `dev.nimbus.push.message.queued` event that names a user to that user's
//! connections. It keeps no durable cursor (a connection gets what is sent while it is open; the
//! Web Push deliveries are the durable path). Bounded: each connection has a queue of
//! `live_queue` notifications and is dropped (reason `slow_consumer`) when it is full.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nimbus_events::{EventLog, Tail};
use nimbus_store::push::EVENT_QUEUED;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{PushError, Result};

type Key = (String, String);

struct Conn {
    id: u64,
    tx: mpsc::Sender<Arc<str>>,
    reason: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct State {
    conns: HashMap<Key, Vec<Conn>>,
    next_id: u64,
}

/// The live fan-out of user-targeted notifications. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<LiveInner>,
}

struct LiveInner {
    queue: usize,
    state: Mutex<State>,
}

impl Live {
    pub(crate) async fn start(log: Arc<dyn EventLog>, queue: usize) -> Result<Live> {
        let l = log.clone();
        let bounds = tokio::task::spawn_blocking(move || l.bounds())
            .await
            .map_err(|e| PushError::Internal(e.to_string()))??;
        let inner = Arc::new(LiveInner { queue: queue.max(1), state: Mutex::default() });
        tokio::spawn(run(Arc::downgrade(&inner), Tail::from(log, bounds.last, 512)));
        Ok(Live { inner })
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.inner.state.lock().conns.values().map(Vec::len).sum()
    }

    /// Follow `user`'s notifications in `project`.
    pub fn subscribe(&self, project: &str, user: &str) -> LiveSubscription {
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let reason = Arc::new(Mutex::new(None));
        let key = (project.to_owned(), user.to_owned());
        let mut state = self.inner.state.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.conns.entry(key.clone()).or_default().push(Conn { id, tx, reason: reason.clone() });
        LiveSubscription { live: Arc::downgrade(&self.inner), key, id, rx, reason }
    }

    pub(crate) fn close_project(&self, project: &str) {
        let mut state = self.inner.state.lock();
        state.conns.retain(|k, conns| {
            if k.0 != project {
                return true;
            }
            for c in conns.iter() {
                *c.reason.lock() = Some("project_deleted".into());
            }
            false
        });
    }
}

/// The JSON a connection receives for one notification.
fn render(e: &nimbus_events::Event) -> String {
    let d = &e.data;
    json!({
        "event": "notification",
        "position": e.position,
        "type": e.kind,
        "time": e.time,
        "id": d["id"],
        "payload": d.get("payload").cloned().unwrap_or(Value::Null),
        "payload_base64": d.get("payload_base64").cloned().unwrap_or(Value::Null),
        "urgency": d["urgency"],
        "topic": d["topic"],
    })
    .to_string()
}

async fn run(live: Weak<LiveInner>, mut tail: Tail) {
    loop {
        let events = match tail.next().await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "push live channel: reading the event log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(inner) = live.upgrade() else { return };
        let mut state = inner.state.lock();
        for e in events {
            if e.kind != EVENT_QUEUED {
                continue;
            }
            let Some(user) = e.data.get("user").and_then(Value::as_str) else { continue };
            let key = (e.project.clone(), user.to_owned());
            let Some(conns) = state.conns.get_mut(&key) else { continue };
            let text: Arc<str> = render(&e).into();
            conns.retain(|c| match c.tx.try_send(text.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    *c.reason.lock() = Some("slow_consumer".into());
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if conns.is_empty() {
                state.conns.remove(&key);
            }
        }
    }
}

/// One connection's notifications. Dropping it unregisters it.
pub struct LiveSubscription {
    live: Weak<LiveInner>,
    key: Key,
    id: u64,
    rx: mpsc::Receiver<Arc<str>>,
    reason: Arc<Mutex<Option<String>>>,
}

impl LiveSubscription {
    /// The next notification (rendered JSON), or why the subscription ended.
    pub async fn next(&mut self) -> std::result::Result<Arc<str>, String> {
        match self.rx.recv().await {
            Some(text) => Ok(text),
            None => Err(self.reason.lock().clone().unwrap_or_else(|| "shutdown".into())),
        }
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        let Some(live) = self.live.upgrade() else { return };
        let mut state = live.state.lock();
        if let Some(conns) = state.conns.get_mut(&self.key) {
            conns.retain(|c| c.id != self.id);
            if conns.is_empty() {
                state.conns.remove(&self.key);
            }
        }
    }
}
