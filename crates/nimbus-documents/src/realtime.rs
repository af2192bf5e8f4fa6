//! Realtime subscriptions: one hub per server tails the event log from the head and fans
//! document events out to subscribers, in commit order.
//!
//! - **Rules without reads.** Each document event carries the document (for a delete, as it
//!   was; for an update, also the data it replaced), so the hub checks the collection's `get` (document subscriptions) or `list` rule
//!   (collection and query subscriptions) and the query's filter in memory, with the rule engine;
//!   no subscriber costs a database read per event. An update that takes a document out of a
//!   subscriber's view (its rule or filter no longer lets it through) reaches that subscriber as
//!   a `left` event with the id only.
//! - **Resume.** Events are numbered by their log position (SSE `id:`). A subscriber that comes
//!   back with `since` = the last position it saw first gets the events after it from the log,
//!   then the live ones, with no gap and no duplicate: it is registered, under the hub's lock,
//!   at the hub's dispatch position H; the log supplies (since, H], the hub everything after H.
//!   When `since` is older than what pruning kept, it gets a `resync` instead.
//! - **Bounded.** Each subscriber has a queue of `subscriber_queue` events (shared `Arc`s). The
//!   hub never waits on a subscriber: when a queue is full the subscriber is dropped, and its
//!   stream ends with the reason after the events already queued.
//!
//! The hub is an in-memory consumer: after a restart it starts at the head of the log, since
//! subscribers reconnect and resume from their own positions. It keeps no durable cursor, and so
//! does not hold back pruning.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use nimbus_events::{Event, EventLog, Tail};
use nimbus_rules::{Operation, Rule};
use nimbus_store::documents::{EVENT_PREFIX, EVENT_UPDATED};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{DocError, Result};
use crate::{Compiled, DocumentService, Principal};

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One document, by id.
    Document(String),
    /// Every document of the collection (that the `list` rule and the filter let through).
    Collection,
}

pub struct SubscribeRequest {
    pub project: String,
    pub collection: String,
    pub target: Target,
    /// A filter in the rule language (a query subscription).
    pub filter: Option<String>,
    /// The last position the client saw: resume after it.
    pub since: Option<u64>,
    pub who: Principal,
}

struct Spec {
    project: String,
    collection: String,
    target: Target,
    filter: Option<Rule>,
    who: Principal,
}

/// What one change means to one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Skip,
    Deliver,
    /// An update took a document the subscriber could see (rule and filter) out of its view.
    Left,
}

/// The event type a subscriber gets when an update moves a document out of its view. Realtime
/// only: the log holds the `updated` event it comes from.
pub const EVENT_LEFT: &str = "dev.nimbus.documents.document.left";

impl Spec {
    fn delivery(&self, e: &Event, compiled: Option<&Compiled>) -> Delivery {
        if e.project != self.project || !e.kind.starts_with(EVENT_PREFIX) {
            return Delivery::Skip;
        }
        if e.data.get("collection").and_then(Value::as_str) != Some(self.collection.as_str()) {
            return Delivery::Skip;
        }
        // A collection deleted (and not yet re-created) has no rules: deny.
        let Some(compiled) = compiled else { return Delivery::Skip };
        let visible = |doc: &Value| match &self.target {
            Target::Document(id) => {
                e.data.get("id").and_then(Value::as_str) == Some(id.as_str())
                    && compiled.allows(Operation::Get, &self.who, Some(doc), None)
            }
            Target::Collection => {
                compiled.allows(Operation::List, &self.who, Some(doc), None)
                    && self.filter.as_ref().is_none_or(|f| {
                        let env = f.env();
                        let mut ctx = env.context();
                        let _ = ctx.set("doc", doc);
                        let _ = ctx.set("auth", self.who.auth());
                        f.allows(&ctx)
                    })
            }
        };
        if visible(&e.data["document"]["data"]) {
            Delivery::Deliver
        } else if e.kind == EVENT_UPDATED && e.data.get("previous").is_some_and(visible) {
            Delivery::Left
        } else {
            Delivery::Skip
        }
    }

    /// The event as this subscriber receives it, if at all.
    fn view(&self, e: &Arc<Shared>, compiled: Option<&Compiled>) -> Option<Arc<Shared>> {
        match self.delivery(e, compiled) {
            Delivery::Skip => None,
            Delivery::Deliver => Some(e.clone()),
            Delivery::Left => Some(Shared::new(left(e))),
        }
    }
}

/// A `left` event: the position and id of the update, and which document left; not its new
/// data, which the subscriber may no longer be allowed to see.
fn left(e: &Event) -> Event {
    Event {
        kind: EVENT_LEFT.to_owned(),
        data: serde_json::json!({
            "collection": e.data["collection"],
            "id": e.data["id"],
            "revision": e.data["revision"],
            "document": {"id": e.data["id"]},
        }),
        ..e.clone()
    }
}

struct Sub {
    id: u64,
    spec: Arc<Spec>,
    tx: mpsc::Sender<Arc<Shared>>,
    reason: Arc<Mutex<Option<String>>>,
}

type Key = (String, String);

#[derive(Default)]
struct State {
    /// Every event up to here has been offered to the subscribers registered at the time.
    dispatched: u64,
    subs: HashMap<Key, Vec<Sub>>,
    next_id: u64,
}

struct HubInner {
    log: Arc<dyn EventLog>,
    queue: usize,
    state: Mutex<State>,
    service: Mutex<Option<Weak<crate::Inner>>>,
}

/// The fan-out of document events to subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// Events the hub reads from the log at a time.
const BATCH: u32 = 512;

impl Hub {
    pub(crate) async fn start(log: Arc<dyn EventLog>, queue: usize) -> Result<Hub> {
        let l = log.clone();
        let bounds = tokio::task::spawn_blocking(move || l.bounds())
            .await
            .map_err(|e| DocError::Internal(e.to_string()))??;
        let inner = Arc::new(HubInner {
            log: log.clone(),
            queue: queue.max(1),
            state: Mutex::new(State { dispatched: bounds.last, ..State::default() }),
            service: Mutex::new(None),
        });
        let tail = Tail::from(log, bounds.last, BATCH);
        tokio::spawn(run(Arc::downgrade(&inner), tail));
        Ok(Hub { inner })
    }

    pub(crate) fn attach(&self, service: DocumentService) {
        *self.inner.service.lock() = Some(Arc::downgrade(&service.inner));
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.inner.state.lock().subs.values().map(Vec::len).sum()
    }

    fn close_where(&self, reason: &str, f: impl Fn(&Key) -> bool) {
        let mut state = self.inner.state.lock();
        state.subs.retain(|k, subs| {
            if f(k) {
                for s in subs.iter() {
                    *s.reason.lock() = Some(reason.to_owned());
                }
                false
            } else {
                true
            }
        });
    }

    pub(crate) fn close_collection(&self, project: &str, collection: &str) {
        self.close_where("collection_deleted", |k| k.0 == project && k.1 == collection);
    }

    pub(crate) fn close_project(&self, project: &str) {
        self.close_where("project_deleted", |k| k.0 == project);
    }

    /// Register a subscriber. Unknown collections are `NotFound`; an end user needs a `list`
    /// rule (collection and query subscriptions) or a `get` rule (document subscriptions).
    pub async fn subscribe(
        &self,
        service: &DocumentService,
        req: SubscribeRequest,
    ) -> Result<Subscription> {
        let compiled = service.compiled(&req.project, &req.collection).await?;
        let op = match req.target {
            Target::Document(ref id) => {
                crate::validate::validate_id(id)?;
                Operation::Get
            }
            Target::Collection => Operation::List,
        };
        if matches!(req.who, Principal::User(_)) && compiled.rules.rule(op).is_none() {
            return Err(crate::deny(op, &req.collection));
        }
        let filter = match (&req.target, req.filter.as_deref().filter(|f| !f.trim().is_empty())) {
            (Target::Collection, Some(text)) => {
                Some(crate::filter::parse_filter(text, compiled.rules.env())?.rule)
            }
            (Target::Document(_), Some(_)) => {
                return Err(DocError::invalid(
                    "invalid_filter",
                    "a document subscription takes no filter",
                ));
            }
            (_, None) => None,
        };
        let l = self.inner.log.clone();
        let bounds = tokio::task::spawn_blocking(move || l.bounds())
            .await
            .map_err(|e| DocError::Internal(e.to_string()))??;
        let spec = Arc::new(Spec {
            project: req.project.clone(),
            collection: req.collection.clone(),
            target: req.target,
            filter,
            who: req.who,
        });
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let reason = Arc::new(Mutex::new(None));
        let key = (req.project, req.collection);
        let (id, dispatched) = {
            let mut state = self.inner.state.lock();
            state.next_id += 1;
            let id = state.next_id;
            state.subs.entry(key.clone()).or_default().push(Sub {
                id,
                spec: spec.clone(),
                tx,
                reason: reason.clone(),
            });
            (id, state.dispatched)
        };
        let mut sub = Subscription {
            hub: Arc::downgrade(&self.inner),
            key,
            id,
            spec,
            rx,
            reason,
            service: service.clone(),
            backlog: VecDeque::new(),
            backlog_after: dispatched,
            backlog_through: dispatched,
            skip_through: dispatched,
            resync: None,
            position: dispatched,
        };
        // Without `since`, the subscription starts at the log's head as read above, not at the
        // hub's dispatch position: events committed before the subscribe call but not yet
        // dispatched by the hub are not the new subscriber's.
        match req.since.or(Some(bounds.last)) {
            None => {}
            Some(since) if since < bounds.pruned_through => sub.resync = Some(dispatched),
            Some(since) if since >= dispatched => {
                sub.skip_through = since;
                sub.position = since;
            }
            Some(since) => {
                sub.backlog_after = since;
                sub.position = since;
            }
        }
        Ok(sub)
    }
}

async fn run(hub: Weak<HubInner>, mut tail: Tail) {
    loop {
        let events = match tail.next().await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "realtime hub: reading the event log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(inner) = hub.upgrade() else { return };
        let service =
            inner.service.lock().as_ref().and_then(Weak::upgrade).map(|i| DocumentService {
                inner: i,
                // The hub only reads.
                guard: Arc::new(nimbus_store::usage::Unlimited),
            });
        // The collections' compiled rules, looked up (and cached) outside the lock.
        let mut compiled: HashMap<Key, Option<Arc<Compiled>>> = HashMap::new();
        if let Some(service) = &service {
            for e in &events {
                if !e.kind.starts_with(EVENT_PREFIX) {
                    continue;
                }
                let Some(coll) = e.data.get("collection").and_then(Value::as_str) else { continue };
                let key = (e.project.clone(), coll.to_owned());
                if let std::collections::hash_map::Entry::Vacant(slot) = compiled.entry(key) {
                    let (p, c) = slot.key();
                    let found = service.compiled(p, c).await.ok();
                    slot.insert(found);
                }
            }
        }
        let mut state = inner.state.lock();
        for e in events {
            let position = e.position;
            let coll = e.data.get("collection").and_then(Value::as_str).map(str::to_owned);
            if let Some(coll) = coll {
                let key = (e.project.clone(), coll);
                if let Some(subs) = state.subs.get_mut(&key) {
                    let c = compiled.get(&key).cloned().flatten();
                    let e = Shared::new(e);
                    subs.retain(|s| offer(s, &e, c.as_deref()));
                    if subs.is_empty() {
                        state.subs.remove(&key);
                    }
                }
            }
            state.dispatched = position;
        }
    }
}

/// Offer an event to a subscriber; false drops the subscriber.
fn offer(s: &Sub, e: &Arc<Shared>, compiled: Option<&Compiled>) -> bool {
    let Some(e) = s.spec.view(e, compiled) else { return true };
    match s.tx.try_send(e) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            *s.reason.lock() = Some("slow_consumer".into());
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// An event as its subscribers share it: the first one to send it renders it, the others reuse
/// the text, so an event costs one serialization, not one per subscriber.
#[derive(Debug)]
pub struct Shared {
    event: Event,
    rendered: OnceLock<Arc<str>>,
}

impl Shared {
    fn new(event: Event) -> Arc<Shared> {
        Arc::new(Shared { event, rendered: OnceLock::new() })
    }

    /// The event rendered by `render`, computed once. Every caller must render the same way.
    pub fn rendered(&self, render: impl FnOnce(&Event) -> String) -> Arc<str> {
        self.rendered.get_or_init(|| render(&self.event).into()).clone()
    }
}

impl std::ops::Deref for Shared {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

/// What a subscriber receives next.
#[derive(Debug)]
pub enum Next {
    Event(Arc<Shared>),
    /// Events were pruned past the client's position: reload, then follow from `position`.
    Resync {
        position: u64,
    },
    /// The subscription ended: `slow_consumer`, `collection_deleted`, `project_deleted`,
    /// `shutdown`.
    Closed(String),
}

/// One subscriber's stream. Dropping it unregisters it.
pub struct Subscription {
    hub: Weak<HubInner>,
    key: Key,
    id: u64,
    spec: Arc<Spec>,
    rx: mpsc::Receiver<Arc<Shared>>,
    reason: Arc<Mutex<Option<String>>>,
    service: DocumentService,
    backlog: VecDeque<Arc<Shared>>,
    /// Backlog still to read from the log: positions in (after, through].
    backlog_after: u64,
    backlog_through: u64,
    /// Live events at or before this were (or will be) delivered from the log.
    skip_through: u64,
    resync: Option<u64>,
    position: u64,
}

impl Subscription {
    /// The position the subscriber has reached (for `resync` and diagnostics).
    pub fn position(&self) -> u64 {
        self.position
    }

    pub async fn next(&mut self) -> Next {
        if let Some(position) = self.resync.take() {
            return Next::Resync { position };
        }
        loop {
            if let Some(e) = self.backlog.pop_front() {
                self.position = e.position;
                return Next::Event(e);
            }
            if self.backlog_after < self.backlog_through {
                if let Err(e) = self.fill_backlog().await {
                    tracing::warn!(error = %e, "realtime: reading the backlog");
                    return Next::Closed("internal_error".into());
                }
                continue;
            }
            match self.rx.recv().await {
                Some(e) if e.position <= self.skip_through => continue,
                Some(e) => {
                    self.position = e.position;
                    return Next::Event(e);
                }
                None => {
                    let reason = self.reason.lock().clone().unwrap_or_else(|| "shutdown".into());
                    return Next::Closed(reason);
                }
            }
        }
    }

    async fn fill_backlog(&mut self) -> Result<()> {
        let (log, project, after) =
            (self.service.log().clone(), self.spec.project.clone(), self.backlog_after);
        let events = tokio::task::spawn_blocking(move || log.read(after, Some(&project), BATCH))
            .await
            .map_err(|e| DocError::Internal(e.to_string()))??;
        let compiled = self.service.compiled(&self.spec.project, &self.spec.collection).await.ok();
        let mut last = self.backlog_through;
        for e in events {
            if e.position > self.backlog_through {
                break;
            }
            last = e.position;
            if let Some(e) = self.spec.view(&Shared::new(e), compiled.as_deref()) {
                self.backlog.push_back(e);
            }
        }
        self.backlog_after = last;
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else { return };
        let mut state = hub.state.lock();
        if let Some(subs) = state.subs.get_mut(&self.key) {
            subs.retain(|s| s.id != self.id);
            if subs.is_empty() {
                state.subs.remove(&self.key);
            }
        }
    }
}
