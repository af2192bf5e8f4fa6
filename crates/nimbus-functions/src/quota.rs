//! Per-project quotas on the request path: O(1), no store read per request.
//!
//! Each project with quotas has in-memory counters of its current UTC month (requests, taken at
//! admission and given back if the invocation is refused later; MiB-ms, added when an invocation
//! ends, from the same record the store counts) and of its invocations running now. They are seeded from the store's usage at start and whenever the
//! operator sets the quotas (after the recorder has flushed, so the seed is exact), and reset at
//! the start of each UTC month. One node only: a second node would need the counters shared (see
//! ARCHITECTURE.md, "Usage and quotas").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use nimbus_model::UnixMillis;
use nimbus_model::usage::{
    QUOTA_CONCURRENCY, QUOTA_GB_SECONDS, QUOTA_INVOCATIONS, Quotas, UsageCounters, next_month,
};
use nimbus_store::usage::{StorageFull, StorageGuard, UsageStore};
use parking_lot::RwLock;

/// A hard quota is used up until `resets_at` (for the concurrency quota: until an invocation
/// ends, `resets_at` is then `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub project: String,
    pub quota: &'static str,
    pub resets_at: Option<UnixMillis>,
}

pub(crate) struct ProjectGate {
    quotas: ArcSwap<Quotas>,
    /// When the month counted below ends.
    resets_at: AtomicI64,
    /// Requests of the month, each counted when it is admitted (not when it ends: a client that
    /// has its response may send the next request before the guest's task has ended, and two
    /// admissions at once must not both take the last one).
    requests: AtomicU64,
    mb_ms: AtomicU64,
    in_flight: AtomicU32,
    /// Bumped when the counters are reseeded (`QuotaGate::set`) or reset (a new month), so that
    /// a permit taken before does not adjust counters that no longer include it.
    generation: AtomicU64,
}

impl ProjectGate {
    fn roll(&self, now: UnixMillis) {
        let end = self.resets_at.load(Ordering::Acquire);
        if now >= end
            && self
                .resets_at
                .compare_exchange(end, next_month(now), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.requests.store(0, Ordering::Release);
            self.mb_ms.store(0, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Taken when an invocation is admitted: its request is counted and it runs until dropped; its
/// MiB-ms are added to the month by [`QuotaPermit::finish`]. Dropped without a finished run (the
/// invocation was refused after all, so it is not billed), its request is given back.
pub(crate) struct QuotaPermit {
    gate: Arc<ProjectGate>,
    /// The gate's generation and month when the request was counted.
    generation: u64,
    month_end: UnixMillis,
    billed: bool,
}

impl QuotaPermit {
    pub(crate) fn finish(mut self, used: Option<UsageCounters>) {
        let Some(u) = used else { return };
        self.billed = true;
        let gate = &self.gate;
        gate.mb_ms.fetch_add(u.mb_ms, Ordering::Relaxed);
        // Reseeded since admission (same month): the seed, read after a flush, did not include
        // this still-running invocation.
        if gate.generation.load(Ordering::Acquire) != self.generation
            && gate.resets_at.load(Ordering::Acquire) == self.month_end
        {
            gate.requests.fetch_add(u.requests, Ordering::Relaxed);
        }
    }
}

impl Drop for QuotaPermit {
    fn drop(&mut self) {
        let gate = &self.gate;
        gate.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.billed && gate.generation.load(Ordering::Acquire) == self.generation {
            let _ = gate
                .requests
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
        }
    }
}

#[derive(Default)]
pub(crate) struct QuotaGate {
    /// False while no project has quotas: the request path then skips the map.
    any: AtomicBool,
    projects: RwLock<HashMap<String, Arc<ProjectGate>, foldhash::fast::RandomState>>,
}

impl QuotaGate {
    /// Set (or, with `None`, remove) a project's quotas, with its usage of the month of `now`.
    pub(crate) fn set(
        &self,
        project: &str,
        quotas: Option<Quotas>,
        month_used: UsageCounters,
        now: UnixMillis,
    ) {
        let mut map = self.projects.write();
        match quotas {
            None => {
                map.remove(project);
            }
            Some(q) => {
                let gate = map.entry(project.to_string()).or_insert_with(|| {
                    Arc::new(ProjectGate {
                        quotas: ArcSwap::from_pointee(q),
                        resets_at: AtomicI64::new(next_month(now)),
                        requests: AtomicU64::new(0),
                        mb_ms: AtomicU64::new(0),
                        in_flight: AtomicU32::new(0),
                        generation: AtomicU64::new(0),
                    })
                });
                gate.quotas.store(Arc::new(q));
                gate.resets_at.store(next_month(now), Ordering::Release);
                gate.requests.store(month_used.requests, Ordering::Release);
                gate.mb_ms.store(month_used.mb_ms, Ordering::Release);
                gate.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.any.store(!map.is_empty(), Ordering::Release);
    }

    /// Admit one invocation of `project` at `now`, or say which hard quota is used up.
    pub(crate) fn admit(
        &self,
        project: &str,
        now: UnixMillis,
    ) -> Result<Option<QuotaPermit>, QuotaExceeded> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(gate) = self.projects.read().get(project).cloned() else { return Ok(None) };
        gate.roll(now);
        let q = gate.quotas.load();
        let exceeded =
            |quota, resets_at| QuotaExceeded { project: project.to_string(), quota, resets_at };
        let resets_at = gate.resets_at.load(Ordering::Acquire);
        if q.mb_ms_per_month().is_some_and(|l| gate.mb_ms.load(Ordering::Acquire) >= l) {
            return Err(exceeded(QUOTA_GB_SECONDS, Some(resets_at)));
        }
        // The generation is read before the request is counted: a reseed in between makes the
        // permit treat its request as not in the seed, at worst counting it twice (never zero).
        let generation = gate.generation.load(Ordering::Acquire);
        let limit = q.invocations_per_month.unwrap_or(u64::MAX);
        if gate
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_err()
        {
            return Err(exceeded(QUOTA_INVOCATIONS, Some(resets_at)));
        }
        let running = gate.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let permit =
            QuotaPermit { gate: gate.clone(), generation, month_end: resets_at, billed: false };
        if q.concurrent_executions.is_some_and(|c| running > c) {
            drop(permit);
            return Err(exceeded(QUOTA_CONCURRENCY, None));
        }
        Ok(Some(permit))
    }
}

/// The stored-bytes quota, for the data services: each asks [`StorageGuard::may_store`] before a
/// write that adds data. The limits are in memory (set with the other quotas); what a project
/// stores is one row the store keeps exactly in every change's transaction, read per guarded
/// write (a primary-key read on a reader connection, only for projects with the quota).
///
/// "Already over" is checked before the write, so the write that crosses the limit finishes
/// (by at most its own size, and by what concurrent writes add): refusing a write that would
/// cross it would need its size before it runs, which a streamed upload does not have.
pub struct StorageQuota {
    /// False while no project has the quota: writes then skip the map.
    any: AtomicBool,
    /// Each project's limit and soft threshold percent.
    limits: RwLock<HashMap<String, (u64, u8)>>,
    /// Whether each project was at or over its soft threshold when last checked (see
    /// [`StorageQuota::check_thresholds`]).
    above: parking_lot::Mutex<HashMap<String, bool>>,
    store: Arc<dyn UsageStore>,
}

/// How often the stored-bytes soft thresholds are checked: the event of a crossing is written
/// within this long of the write that crossed it.
pub(crate) const THRESHOLD_CHECK: Duration = Duration::from_secs(2);

impl StorageQuota {
    pub fn new(store: Arc<dyn UsageStore>) -> Arc<StorageQuota> {
        Arc::new(StorageQuota {
            any: AtomicBool::new(false),
            limits: Default::default(),
            above: Default::default(),
            store,
        })
    }

    pub(crate) fn set(&self, project: &str, quotas: Option<&Quotas>) {
        let mut map = self.limits.write();
        match quotas.and_then(|q| Some((q.stored_bytes?, q.soft_threshold_percent))) {
            Some(l) => map.insert(project.to_string(), l),
            None => map.remove(project),
        };
        // Checked afresh by the next round, against the new limit.
        self.above.lock().remove(project);
        self.any.store(!map.is_empty(), Ordering::Release);
    }

    /// One round of the soft-threshold check of the stored-bytes quota (blocking). What a
    /// project stores changes in the data services' own transactions, so crossings are found by
    /// this check rather than by each write: a cheap read of every project with the quota, and
    /// a write transaction (the store's `check_storage_threshold`, which writes the event once)
    /// only when a project went over or back under since the last round. The store, not this
    /// memory, decides whether an event is due, so a restart or a second node writes no second
    /// event for the same crossing.
    pub(crate) fn check_thresholds(&self) {
        let projects: Vec<(String, (u64, u8))> =
            self.limits.read().iter().map(|(p, l)| (p.clone(), *l)).collect();
        for (project, (limit, percent)) in projects {
            let stored = match self.store.data_gauges(&project) {
                Ok(g) => g.stored_bytes(),
                Err(e) => {
                    tracing::warn!(project, error = %e, "reading stored bytes for the soft threshold");
                    continue;
                }
            };
            let above = u128::from(stored) * 100 >= u128::from(limit) * u128::from(percent);
            if self.above.lock().get(&project) == Some(&above) {
                continue;
            }
            match self.store.check_storage_threshold(&project) {
                Ok(Some(now)) => {
                    self.above.lock().insert(project, now);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(project, error = %e, "checking the stored-bytes soft threshold")
                }
            }
        }
    }
}

/// Runs [`StorageQuota::check_thresholds`] every [`THRESHOLD_CHECK`].
pub(crate) fn spawn_threshold_checks(quota: Arc<StorageQuota>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(THRESHOLD_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if !quota.any.load(Ordering::Acquire) {
                continue;
            }
            let q = quota.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || q.check_thresholds()).await {
                tracing::warn!(error = %e, "the stored-bytes threshold check failed");
            }
        }
    })
}

impl StorageGuard for StorageQuota {
    fn may_store(&self, project: &str) -> Result<(), StorageFull> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some((limit, _)) = self.limits.read().get(project).copied() else { return Ok(()) };
        match self.store.data_gauges(project) {
            Ok(g) if g.stored_bytes() >= limit => {
                Err(StorageFull { project: project.to_string(), stored: g.stored_bytes(), limit })
            }
            Ok(_) => Ok(()),
            // The write itself goes to the same store and reports its failure; refusing data
            // for a failed read would turn a store hiccup into a quota error.
            Err(e) => {
                tracing::warn!(project, error = %e, "reading stored bytes for the quota failed");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_704_067_200_000; // 2024-01-01

    #[test]
    fn a_monthly_quota_stops_at_its_limit_and_resets_next_month() {
        let gate = QuotaGate::default();
        assert!(gate.admit("p", T).unwrap().is_none(), "no quotas: nothing to count");
        let q = Quotas { invocations_per_month: Some(3), ..Default::default() };
        gate.set("p", Some(q), UsageCounters { requests: 1, ..Default::default() }, T);
        let one = UsageCounters { requests: 1, mb_ms: 10, ..Default::default() };
        for _ in 0..2 {
            gate.admit("p", T).unwrap().unwrap().finish(Some(one));
        }
        let e = gate.admit("p", T + 5).err().unwrap();
        assert_eq!(e.quota, QUOTA_INVOCATIONS);
        assert_eq!(e.resets_at, Some(1_706_745_600_000)); // 2024-02-01
        assert!(gate.admit("q", T).unwrap().is_none(), "another project is not limited");
        assert!(gate.admit("p", 1_706_745_600_000).unwrap().is_some(), "a new month");
    }

    /// Requests are counted at admission: one still running (its response already sent, its
    /// task not yet ended) holds its place, and one refused later gives it back.
    #[test]
    fn a_request_counts_from_its_admission() {
        let gate = QuotaGate::default();
        let q = Quotas { invocations_per_month: Some(2), ..Default::default() };
        gate.set("p", Some(q), UsageCounters::default(), T);
        let running = gate.admit("p", T).unwrap().unwrap();
        let refused_later = gate.admit("p", T).unwrap().unwrap();
        assert_eq!(gate.admit("p", T).err().unwrap().quota, QUOTA_INVOCATIONS);
        drop(refused_later); // never ran: not billed
        let third = gate.admit("p", T).unwrap().unwrap();
        let one = UsageCounters { requests: 1, mb_ms: 10, ..Default::default() };
        running.finish(Some(one));
        third.finish(Some(one));
        assert_eq!(gate.admit("p", T).err().unwrap().quota, QUOTA_INVOCATIONS);
        // A reseed while one runs: the seed (from the store) does not hold it yet; its end does.
        let q = Quotas { invocations_per_month: Some(3), ..Default::default() };
        gate.set("p", Some(q), UsageCounters { requests: 1, ..Default::default() }, T);
        let a = gate.admit("p", T).unwrap().unwrap();
        gate.set("p", Some(q), UsageCounters { requests: 1, ..Default::default() }, T);
        a.finish(Some(one));
        let _b = gate.admit("p", T).expect("1 seeded + 1 ended = 2 of 3").unwrap();
        assert_eq!(gate.admit("p", T).err().unwrap().quota, QUOTA_INVOCATIONS);
    }

    #[test]
    fn concurrency_counts_running_invocations() {
        let gate = QuotaGate::default();
        let q = Quotas { concurrent_executions: Some(2), ..Default::default() };
        gate.set("p", Some(q), UsageCounters::default(), T);
        let a = gate.admit("p", T).unwrap();
        let _b = gate.admit("p", T).unwrap();
        let e = gate.admit("p", T).err().unwrap();
        assert_eq!((e.quota, e.resets_at), (QUOTA_CONCURRENCY, None));
        drop(a);
        assert!(gate.admit("p", T).is_ok());
        gate.set("p", None, UsageCounters::default(), T);
        assert!(gate.admit("p", T).unwrap().is_none());
    }
}
