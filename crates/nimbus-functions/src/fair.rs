//! Fair share of the node's instance slots between functions.
//!
//! Each function's own admission (`admission.rs`) bounds it by its `max_concurrency`; this gate
//! bounds all functions together by the node's instance pool, so that one function at its limit
//! cannot starve the others:
//!
//! - no single function holds more than `capacity - reserve` slots (`reserve` = 1/16 of the
//!   pool, at least 1): a function that arrives while another is at its limit finds a slot at
//!   once instead of waiting for the busy one's requests to end;
//! - when the node is full, waiting requests queue per function and freed slots go to the
//!   functions with waiters in turn (round robin), FIFO within a function, skipping a function
//!   that is at its share; so a function with many waiters gets no more turns than one with one.
//!
//! A wait is bounded by the queue timeout (then `NodeFull`, 503). Hand-written rather than a
//! semaphore per function: the turn-taking between functions is the point, and no well-kept
//! crate offers weighted round robin over async waiters with this shape.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// Entries of functions holding no slot kept in the gate's map (see `release`).
const IDLE_ENTRIES: usize = 256;

pub(crate) struct NodeGate {
    capacity: u32,
    /// Slots one function may hold: `capacity - reserve`.
    share: u32,
    timeout: Duration,
    inner: Mutex<Inner>,
    gauges: GateMetrics,
}

#[derive(Clone, Default)]
pub(crate) struct GateMetrics {
    pub(crate) in_use: Gauge,
    pub(crate) queued: Gauge,
}

#[derive(Default)]
struct Inner {
    in_use: u32,
    functions: HashMap<u64, Function, foldhash::fast::RandomState>,
    /// Functions with waiters, in turn order.
    turns: VecDeque<u64>,
}

#[derive(Default)]
struct Function {
    held: u32,
    waiters: VecDeque<Arc<Waiter>>,
}

#[derive(Default)]
struct Waiter {
    notify: Notify,
    /// Set under the gate's lock when a slot is handed to this waiter.
    granted: AtomicBool,
}

/// One slot of the node, released on drop.
pub(crate) struct NodePermit {
    gate: Arc<NodeGate>,
    function: u64,
}

impl Drop for NodePermit {
    fn drop(&mut self) {
        self.gate.release(self.function);
    }
}

impl NodeGate {
    pub(crate) fn new(capacity: u32, timeout: Duration, gauges: GateMetrics) -> Arc<Self> {
        let reserve = if capacity >= 2 { (capacity / 16).max(1) } else { 0 };
        Arc::new(NodeGate {
            capacity,
            share: capacity - reserve,
            timeout,
            inner: Mutex::new(Inner::default()),
            gauges,
        })
    }

    /// A slot for `function` (any id stable for the function), or `Err` after the timeout.
    /// Returns whether the caller waited.
    /// `queued` is the function's queue-length gauge, raised while this request waits.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        function: u64,
        queued: &Gauge,
    ) -> Result<(NodePermit, bool), ()> {
        let waiter = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
            let in_use = inner.in_use;
            let f = inner.functions.entry(function).or_default();
            if in_use < self.capacity && f.held < self.share && f.waiters.is_empty() {
                f.held += 1;
                inner.in_use += 1;
                self.gauges.in_use.inc();
                return Ok((NodePermit { gate: self.clone(), function }, false));
            }
            let waiter = Arc::new(Waiter::default());
            if f.waiters.is_empty() {
                inner.turns.push_back(function);
            }
            f.waiters.push_back(waiter.clone());
            self.gauges.queued.inc();
            waiter
        };
        queued.inc();
        let mut guard = Waiting { gate: self, function, waiter, queued, done: false };
        let _ = tokio::time::timeout(self.timeout, guard.waiter.notify.notified()).await;
        guard.done = true;
        if guard.finish() {
            Ok((NodePermit { gate: self.clone(), function }, true))
        } else {
            Err(())
        }
    }

    fn release(&self, function: u64) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        inner.in_use -= 1;
        self.gauges.in_use.dec();
        if let Some(f) = inner.functions.get_mut(&function) {
            f.held -= 1;
            // An idle function keeps its entry while there are few: a busy one would otherwise
            // be removed and inserted again at nearly every request.
            if f.held == 0 && f.waiters.is_empty() && inner.functions.len() > IDLE_ENTRIES {
                inner.functions.remove(&function);
            }
        }
        self.dispatch(inner);
    }

    /// Hand free slots to waiting functions in turn.
    fn dispatch(&self, inner: &mut Inner) {
        let mut skipped = 0;
        while inner.in_use < self.capacity && skipped < inner.turns.len() {
            let Some(id) = inner.turns.pop_front() else { break };
            let f = inner.functions.get_mut(&id).expect("a function with waiters is known");
            if f.held >= self.share {
                inner.turns.push_back(id);
                skipped += 1;
                continue;
            }
            let waiter = f.waiters.pop_front().expect("a function in turns has waiters");
            f.held += 1;
            let more = !f.waiters.is_empty();
            inner.in_use += 1;
            self.gauges.in_use.inc();
            self.gauges.queued.dec();
            waiter.granted.store(true, Ordering::Relaxed);
            // Stores a permit if the waiter is not polling yet: no lost wake-up.
            waiter.notify.notify_one();
            if more {
                inner.turns.push_back(id);
            }
            skipped = 0;
        }
    }
}

/// A queued request; if its future is dropped (the client went away), it leaves the queue, or
/// gives back a slot it was handed meanwhile.
struct Waiting<'a> {
    gate: &'a Arc<NodeGate>,
    function: u64,
    waiter: Arc<Waiter>,
    queued: &'a Gauge,
    done: bool,
}

impl Waiting<'_> {
    /// True if the waiter holds a slot; otherwise it has left the queue.
    fn finish(&self) -> bool {
        let mut guard = self.gate.inner.lock();
        let inner = &mut *guard;
        if self.waiter.granted.load(Ordering::Relaxed) {
            return true;
        }
        let f = inner.functions.get_mut(&self.function).expect("a waiting function is known");
        f.waiters.retain(|w| !Arc::ptr_eq(w, &self.waiter));
        self.gate.gauges.queued.dec();
        if f.waiters.is_empty() {
            let remove = f.held == 0;
            inner.turns.retain(|id| *id != self.function);
            if remove {
                inner.functions.remove(&self.function);
            }
        }
        false
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queued.dec();
        if !self.done && self.finish() {
            self.gate.release(self.function);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(capacity: u32) -> Arc<NodeGate> {
        NodeGate::new(capacity, Duration::from_secs(5), GateMetrics::default())
    }

    #[tokio::test]
    async fn one_function_cannot_take_the_reserve() {
        let g = gate(4); // reserve 1: one function holds at most 3
        let held: Vec<_> = futures_take(&g, 1, 3).await;
        // A fourth request of the same function waits...
        let g2 = g.clone();
        let fourth =
            tokio::spawn(async move { g2.acquire(1, &Gauge::default()).await.map(|(_, w)| w) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fourth.is_finished());
        // ...while another function gets the free slot at once.
        let (_other, waited) = g.acquire(2, &Gauge::default()).await.unwrap();
        assert!(!waited);
        drop(held);
        assert_eq!(fourth.await.unwrap(), Ok(true));
    }

    async fn futures_take(g: &Arc<NodeGate>, f: u64, n: usize) -> Vec<NodePermit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(g.acquire(f, &Gauge::default()).await.unwrap().0);
        }
        v
    }

    #[tokio::test]
    async fn freed_slots_go_to_waiting_functions_in_turn() {
        let g = gate(2); // reserve 1: each function holds at most 1
        let a = g.acquire(1, &Gauge::default()).await.unwrap().0;
        let _b = g.acquire(2, &Gauge::default()).await.unwrap().0;
        // Function 3 queues several requests, then function 4 queues one.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for f in [3, 3, 3, 4] {
            let (g, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = g.acquire(f, &Gauge::default()).await.unwrap().0;
                order.lock().push(f);
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(p);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(a);
        for t in tasks {
            t.await.unwrap();
        }
        // Function 4 was served second, not after all of function 3's queue.
        assert_eq!(order.lock()[..2], [3, 4]);
    }

    #[tokio::test]
    async fn a_wait_times_out_and_a_dropped_waiter_leaves_no_trace() {
        let g = NodeGate::new(1, Duration::from_millis(50), GateMetrics::default());
        let held = g.acquire(1, &Gauge::default()).await.unwrap().0;
        assert!(g.acquire(2, &Gauge::default()).await.is_err());
        // A waiter whose future is dropped (the client left) leaves the queue.
        let g2 = g.clone();
        let t = tokio::spawn(async move { g2.acquire(3, &Gauge::default()).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        t.abort();
        let _ = t.await;
        drop(held);
        assert_eq!(g.gauges.queued.get(), 0);
        assert_eq!(g.gauges.in_use.get(), 0);
        assert!(g.acquire(4, &Gauge::default()).await.is_ok());
    }
}
