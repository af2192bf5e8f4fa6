//! Scale to zero: which versions' compiled code is resident, loaded on first use and evicted,
//! least recently used first, beyond the operator's code memory budget.
//!
//! A version's code lives in a [`CodeSlot`]. An empty slot costs a few hundred bytes; loading it
//! memory-maps the serialized artifact and pre-instantiates it (see `FunctionService::
//! load_component`). Concurrent first requests share one load (the slot's `loading` lock: the
//! first loads, the others wait and find the code). What counts against the budget is each
//! artifact's size, which is what the mapping can make resident. Slots of functions with
//! `min_warm > 0` are pinned: loaded at start and never evicted (they still count).
//!
//! Eviction only drops the slot's reference: requests already running keep theirs, so the
//! mapping goes away when the last of them ends. LRU order is a global counter stamped on a use
//! whose slot does not hold the newest stamp already: a busy function whose stamp is the newest
//! is the most recently used without writing anything, so its requests only read the counter
//! and the stamp (no cache line bouncing between cores on each request). An eviction scans the
//! resident slots for the oldest stamp, which is cheap next to the load that caused it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use nimbus_runtime::LoadedComponent;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

type Code = ArcSwapOption<LoadedComponent>;

/// The node's resident code and its budget.
pub(crate) struct Residency {
    /// Bytes of resident artifacts allowed before evicting; 0: no budget.
    budget: u64,
    clock: AtomicU64,
    next_id: AtomicU64,
    inner: Mutex<Inner>,
    gauges: ResidencyMetrics,
}

#[derive(Clone, Default)]
pub(crate) struct ResidencyMetrics {
    pub(crate) resident_functions: Gauge,
    pub(crate) resident_bytes: Gauge,
    pub(crate) evictions: Counter,
}

#[derive(Default)]
struct Inner {
    bytes: u64,
    resident: HashMap<u64, Entry>,
}

/// What eviction needs of a slot, shared with it, so that eviction never has to upgrade a
/// reference to the slot itself (and never runs a slot's `Drop` under the lock).
struct Entry {
    code: Arc<Code>,
    last_used: Arc<AtomicU64>,
    size: u64,
    pinned: bool,
}

impl Residency {
    pub(crate) fn new(budget: u64, gauges: ResidencyMetrics) -> Arc<Self> {
        Arc::new(Residency {
            budget,
            clock: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            inner: Mutex::new(Inner::default()),
            gauges,
        })
    }

    /// An empty slot for a version's code.
    pub(crate) fn slot(self: &Arc<Self>, sha: &str, pinned: bool) -> Arc<CodeSlot> {
        Arc::new(CodeSlot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            sha: sha.to_string(),
            pinned,
            residency: self.clone(),
            code: Arc::new(ArcSwapOption::empty()),
            last_used: Arc::new(AtomicU64::new(0)),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// Bytes of code resident now.
    #[cfg(test)]
    pub(crate) fn resident_bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// A new stamp, newer than every one given before.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Mark a use: a new stamp unless the slot holds the newest one already (then it is the
    /// most recently used, and stays so without a write).
    fn touch(&self, last_used: &AtomicU64) {
        if last_used.load(Ordering::Relaxed) != self.clock.load(Ordering::Relaxed) {
            last_used.store(self.tick(), Ordering::Relaxed);
        }
    }

    /// Make `slot`'s freshly loaded code resident, then evict the least recently used others
    /// while the total is over the budget.
    fn admit(&self, slot: &CodeSlot, code: Arc<LoadedComponent>, size: u64) {
        let mut evicted = Vec::new();
        {
            let mut inner = self.inner.lock();
            slot.code.store(Some(code));
            slot.last_used.store(self.tick(), Ordering::Relaxed);
            let entry = Entry {
                code: slot.code.clone(),
                last_used: slot.last_used.clone(),
                size,
                pinned: slot.pinned,
            };
            if let Some(old) = inner.resident.insert(slot.id, entry) {
                inner.bytes -= old.size;
            }
            inner.bytes += size;
            while self.budget > 0 && inner.bytes > self.budget {
                let victim = inner
                    .resident
                    .iter()
                    .filter(|(id, e)| **id != slot.id && !e.pinned)
                    .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                    .map(|(id, _)| *id);
                let Some(victim) = victim else { break };
                let e = inner.resident.remove(&victim).expect("found above");
                inner.bytes -= e.size;
                // Dropped after the lock: unmapping is not free.
                evicted.push(e.code.swap(None));
                self.gauges.evictions.inc();
            }
            self.publish(&inner);
        }
        drop(evicted);
    }

    fn forget(&self, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.resident.remove(&id) {
            inner.bytes -= e.size;
            self.publish(&inner);
        }
    }

    fn publish(&self, inner: &Inner) {
        self.gauges.resident_functions.set(inner.resident.len() as i64);
        self.gauges.resident_bytes.set(i64::try_from(inner.bytes).unwrap_or(i64::MAX));
    }
}

/// One version's compiled code: resident or not.
pub(crate) struct CodeSlot {
    id: u64,
    pub(crate) sha: String,
    pub(crate) pinned: bool,
    residency: Arc<Residency>,
    code: Arc<Code>,
    last_used: Arc<AtomicU64>,
    /// Held while loading, so concurrent first requests share one load.
    loading: tokio::sync::Mutex<()>,
}

impl CodeSlot {
    /// The code if it is resident (marking it used). The request path's fast case.
    pub(crate) fn resident(&self) -> Option<Arc<LoadedComponent>> {
        let code = self.code.load_full()?;
        self.residency.touch(&self.last_used);
        Some(code)
    }

    /// The code, loading it with `load` (which returns it and its size in bytes) unless it is
    /// resident or another caller is loading it already. The flag says whether this call loaded.
    pub(crate) async fn get_or_load<E, F, Fut>(
        &self,
        load: F,
    ) -> Result<(Arc<LoadedComponent>, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(LoadedComponent, u64), E>>,
    {
        if let Some(code) = self.resident() {
            return Ok((code, false));
        }
        let _loading = self.loading.lock().await;
        if let Some(code) = self.resident() {
            return Ok((code, false));
        }
        let (component, size) = load().await?;
        let code = Arc::new(component);
        self.residency.admit(self, code.clone(), size);
        Ok((code, true))
    }
}

impl Drop for CodeSlot {
    fn drop(&mut self) {
        self.residency.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real loaded component (the hello guest), compiled once for the whole test binary.
    fn component() -> LoadedComponent {
        static RT: std::sync::OnceLock<(
            tempfile::TempDir,
            nimbus_runtime::Runtime,
            std::path::PathBuf,
        )> = std::sync::OnceLock::new();
        let (_, rt, path) = RT.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let rt = nimbus_runtime::Runtime::new(nimbus_runtime::RuntimeConfig {
                max_instances: 4,
                guest_threads: 1,
                ..Default::default()
            })
            .unwrap();
            let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
            let path = dir.path().join("hello.cwasm");
            std::fs::write(&path, rt.compile(&wasm).unwrap().artifact).unwrap();
            (dir, rt, path)
        });
        rt.load_file(path).unwrap()
    }

    async fn load(slot: &CodeSlot, size: u64, loads: &AtomicU64) -> (Arc<LoadedComponent>, bool) {
        slot.get_or_load(|| async {
            loads.fetch_add(1, Ordering::Relaxed);
            Ok::<_, ()>((component(), size))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn least_recently_used_code_is_evicted_beyond_the_budget_and_reloads() {
        let metrics = ResidencyMetrics::default();
        let r = Residency::new(250, metrics.clone());
        let (a, b, c) = (r.slot("a", false), r.slot("b", false), r.slot("c", false));
        let loads = AtomicU64::new(0);
        assert!(load(&a, 100, &loads).await.1);
        assert!(load(&b, 100, &loads).await.1);
        // `a` is used again, so `b` is now the least recently used.
        assert!(!load(&a, 100, &loads).await.1);
        // Further uses of the most recently used slot write nothing shared.
        let clock = r.clock.load(Ordering::Relaxed);
        for _ in 0..100 {
            assert!(a.resident().is_some());
        }
        assert_eq!(r.clock.load(Ordering::Relaxed), clock);
        assert!(load(&c, 100, &loads).await.1);
        assert!(a.resident().is_some() && c.resident().is_some());
        assert!(b.code.load().is_none(), "b was evicted");
        assert_eq!((r.resident_bytes(), metrics.evictions.get()), (200, 1));
        assert_eq!(metrics.resident_functions.get(), 2);
        // An evicted slot reloads on its next use.
        assert!(load(&b, 100, &loads).await.1);
        assert_eq!(loads.load(Ordering::Relaxed), 4);
        // Dropping a slot gives its bytes back.
        drop(b);
        assert_eq!(r.resident_bytes(), 100);
    }

    #[tokio::test]
    async fn pinned_code_is_never_evicted() {
        let r = Residency::new(150, ResidencyMetrics::default());
        let pinned = r.slot("p", true);
        let loads = AtomicU64::new(0);
        load(&pinned, 100, &loads).await;
        for name in ["x", "y", "z"] {
            let s = r.slot(name, false);
            load(&s, 100, &loads).await;
            // The pinned slot is older, but only unpinned ones go.
            assert!(pinned.code.load().is_some());
        }
        // Over budget with only pinned code and the newcomer left: nothing else to evict.
        let last = r.slot("w", false);
        load(&last, 100, &loads).await;
        assert!(pinned.code.load().is_some() && last.code.load().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_share_one_load() {
        let r = Residency::new(0, ResidencyMetrics::default());
        let slot = r.slot("s", false);
        let loads = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (slot, loads) = (slot.clone(), loads.clone());
                tokio::spawn(async move {
                    slot.get_or_load(|| async {
                        loads.fetch_add(1, Ordering::Relaxed);
                        // Long enough that every caller arrives while it loads.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        Ok::<_, ()>((component(), 10))
                    })
                    .await
                    .unwrap()
                    .1
                })
            })
            .collect();
        let mut loaded = 0;
        for t in tasks {
            loaded += t.await.unwrap() as u32;
        }
        assert_eq!((loads.load(Ordering::Relaxed), loaded), (1, 1));
    }
}
