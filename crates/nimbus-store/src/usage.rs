//! Usage counters: per (project, function, UTC hour), written by
//! [`InvocationStore::insert_batch`](crate::InvocationStore::insert_batch) in the transaction that
//! stores the records (so a record is counted exactly once, and pruning records never touches
//! usage), read here. Days and months are sums of hours.

use nimbus_model::UnixMillis;
use nimbus_model::usage::{DataGauges, Quotas, UsageCounters, UsageRow};

use crate::Result;

pub trait UsageStore: Send + Sync + 'static {
    /// Hourly rows with `from <= hour < to`, ordered by hour, project, function. `project: None`
    /// reads every project (the operator's view).
    fn usage_hours(
        &self,
        project: Option<&str>,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<UsageRow>>;

    /// What the project's data services hold now. Cheap enough for every write (the stored-bytes
    /// quota reads it): a backend keeps these as counters maintained in the transaction of each
    /// change (SQLite: triggers into `project_storage`), never a scan.
    fn data_gauges(&self, project: &str) -> Result<DataGauges>;

    /// Add `rows`' counters to the hourly usage (creating rows as needed). For usage metered
    /// outside invocation records, in batches: file egress, under the empty function name.
    fn add_usage(&self, rows: &[UsageRow]) -> Result<()>;

    /// Accrue what every project stores, as byte-seconds of hourly usage (empty function name),
    /// from the instant the last accrual reached (kept by the store, so concurrent callers and
    /// restarts never count an interval twice or lose one) to `now`, split at hour boundaries
    /// and counted at the size stored now. A project's first accrual only starts its clock.
    fn accrue_storage(&self, now: UnixMillis) -> Result<()>;

    /// Projects with any usage in `[from, to)` (for the operator's view of all projects).
    fn usage_projects(&self, from: UnixMillis, to: UnixMillis) -> Result<Vec<String>>;

    /// A project's usage summed over `[from, to)` (hours), e.g. its month so far.
    fn usage_total(&self, project: &str, from: UnixMillis, to: UnixMillis)
    -> Result<UsageCounters>;

    /// Set (replace) a project's quotas; `None` removes them. `insert_batch` reads them in its
    /// transaction to write one `dev.nimbus.quota.threshold_crossed` event per quota and month
    /// when a monthly quota's soft threshold is crossed.
    fn set_quotas(&self, project: &str, quotas: Option<&Quotas>) -> Result<()>;
    fn quotas(&self, project: &str) -> Result<Option<Quotas>>;
    /// The soft threshold of the stored-bytes quota (not monthly): compare what the project
    /// stores with `soft_threshold_percent` of `stored_bytes` and, the first time it is at or
    /// over, write one `dev.nimbus.quota.threshold_crossed` event (subject `stored_bytes`) in
    /// the same transaction; once back under, the next crossing writes another. Returns whether
    /// the project is at or over the threshold, `None` when it has no stored-bytes quota.
    fn check_storage_threshold(&self, project: &str) -> Result<Option<bool>>;
    /// Every project's quotas (start-up: the in-memory quota counters are seeded from these).
    fn all_quotas(&self) -> Result<Vec<(String, Quotas)>>;

    /// The usage part of deleting `project` (idempotent): its quotas, threshold marks and
    /// stored-bytes row go; its usage history stays, for the operator to bill, but moves to
    /// [`retired_project`](nimbus_model::usage::retired_project)`(project, deleted_at)` (a
    /// bounded number of rows per transaction), so a project created later under the slug
    /// starts with none of it. `deleted_at` is the project's deletion mark when the backend
    /// keeps projects (so every run of one deletion picks the same name), else `now`. Returns
    /// the name the history now has.
    fn retire_project_usage(&self, project: &str, now: UnixMillis) -> Result<String>;
}

/// Whether a project may add data: each data service (documents, KV, files) asks before a write
/// that adds data, with the project it writes to. Deletes and reads never ask. The usage side
/// provides the implementation (quotas + the store's counter); a service without one allows
/// everything ([`Unlimited`]).
pub trait StorageGuard: Send + Sync + 'static {
    fn may_store(&self, project: &str) -> std::result::Result<(), StorageFull>;
}

/// The guard of a service that enforces no stored-bytes quota (tests, tools).
pub struct Unlimited;

impl StorageGuard for Unlimited {
    fn may_store(&self, _project: &str) -> std::result::Result<(), StorageFull> {
        Ok(())
    }
}

pub use nimbus_model::usage::StorageFull;

/// The backend-independent tests every [`UsageStore`] must pass.
#[cfg(feature = "conformance")]
pub mod conformance {
    use nimbus_model::usage::{UsageCounters, UsageRow, hour_of};
    use nimbus_model::{InvocationRecord, InvocationStatus};

    use nimbus_model::usage::{Quotas, THRESHOLD_EVENT};

    use super::UsageStore;
    use crate::InvocationStore;
    use crate::events::EventLog;

    const H: i64 = 3_600_000;
    // 2024-01-01T00:00:00Z
    const T0: i64 = 1_704_067_200_000;

    fn record(id: &str, project: &str, function: &str, at: i64) -> InvocationRecord {
        InvocationRecord {
            seq: 0,
            id: id.into(),
            project: project.into(),
            function: function.into(),
            version: 1,
            trigger: "http".into(),
            method: "GET".into(),
            path: "/".into(),
            started_at: at,
            duration_us: 2_500 + 1_000,
            queue_us: 1_000,
            fuel: 1_000_000,
            peak_memory_bytes: 1 << 20,
            memory_limit_mb: 64,
            outbound_bytes: 10,
            status: InvocationStatus::Ok,
            http_status: Some(200),
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            logs_truncated: false,
        }
    }

    /// The stored-bytes soft threshold: one event per crossing, re-armed by going back under.
    pub fn storage_threshold_event_per_crossing<S: UsageStore + crate::kv::KvStore + EventLog>(
        store: &S,
    ) {
        use crate::kv::Expiry;
        let events = || -> Vec<serde_json::Value> {
            store
                .read(0, Some("sq"), 10_000)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == THRESHOLD_EVENT)
                .map(|e| e.data)
                .collect()
        };
        assert_eq!(store.check_storage_threshold("sq").unwrap(), None, "no quota");
        let quotas =
            Quotas { stored_bytes: Some(100), soft_threshold_percent: 50, ..Default::default() };
        store.set_quotas("sq", Some(&quotas)).unwrap();
        // 3 bytes of key + 40 of value: under 50.
        store.set("sq", "b", "one", &[0; 40], Expiry::Never, 1).unwrap();
        assert_eq!(store.check_storage_threshold("sq").unwrap(), Some(false));
        assert!(events().is_empty());
        store.set("sq", "b", "two", &[0; 10], Expiry::Never, 2).unwrap();
        assert_eq!(store.check_storage_threshold("sq").unwrap(), Some(true));
        assert_eq!(store.check_storage_threshold("sq").unwrap(), Some(true));
        let e = events();
        assert_eq!(e.len(), 1, "one event for one crossing: {e:?}");
        assert_eq!(e[0]["quota"], "stored_bytes");
        assert_eq!((e[0]["used"].as_u64(), e[0]["limit"].as_u64()), (Some(56), Some(100)));
        assert_eq!(e[0]["threshold_percent"], 50);
        // Back under re-arms it; the next crossing is a new event.
        assert!(store.delete("sq", "b", "two", 3).unwrap());
        assert_eq!(store.check_storage_threshold("sq").unwrap(), Some(false));
        store.set("sq", "b", "three", &[0; 20], Expiry::Never, 4).unwrap();
        assert_eq!(store.check_storage_threshold("sq").unwrap(), Some(true));
        assert_eq!(events().len(), 2);
        store.set_quotas("sq", None).unwrap();
        assert_eq!(store.check_storage_threshold("sq").unwrap(), None);
    }

    /// Storage accrues as byte-seconds per hour, from the last accrual, once.
    pub fn storage_accrues_by_the_hour<S: UsageStore + crate::kv::KvStore>(store: &S) {
        use crate::kv::Expiry;
        // The clock starts when the project's first data is written (now); accrue up to an
        // hour boundary ahead, then from there on.
        let written = nimbus_model::now_millis();
        store.set("acc", "b", "k", &[0; 99], Expiry::Never, 1).unwrap(); // 100 bytes
        let t = hour_of(written) + 2 * H;
        store.accrue_storage(t).unwrap();
        let before = store.usage_total("acc", 0, t).unwrap().stored_byte_seconds;
        let since_write = (t - written) as u64 / 1000;
        assert!(
            (100 * (since_write - 5)..=100 * (since_write + 5)).contains(&before),
            "{before} byte-seconds for {since_write} s"
        );
        // Half an hour in this hour, then across the next hour boundary.
        store.accrue_storage(t + H / 2).unwrap();
        store.accrue_storage(t + H / 2).unwrap(); // nothing more at the same instant
        store.accrue_storage(t + H + H / 4).unwrap();
        let hours = store.usage_hours(Some("acc"), t, t + 100 * H).unwrap();
        let got: Vec<(i64, &str, u64)> = hours
            .iter()
            .map(|r| ((r.hour - t) / (H / 4), r.function.as_str(), r.counters.stored_byte_seconds))
            .collect();
        // 100 bytes x 3600 s in the first hour, x 900 s in the second.
        assert_eq!(got, [(0, "", 360_000), (4, "", 90_000)]);
        // An earlier instant (another node's clock behind) accrues nothing and moves nothing back.
        store.accrue_storage(t).unwrap();
        store.accrue_storage(t + H + H / 2).unwrap();
        let total = store.usage_total("acc", t, t + 100 * H).unwrap();
        assert_eq!(total.stored_byte_seconds, 360_000 + 90_000 + 90_000);
        assert_eq!(total.requests, 0);
    }

    pub fn run_all<S: InvocationStore + UsageStore + EventLog>(store: &S) {
        counts_each_record_once_per_hour(store);
        survives_pruning_and_is_scoped(store);
        one_threshold_event_per_quota_and_month(store);
        added_usage_sums_into_hours(store);
        a_retired_project_leaves_its_slug_empty(store);
    }

    /// Retiring a project's usage (its deletion): quotas and threshold marks go, the history
    /// moves whole to the retired name (merged into what an earlier, interrupted run moved), the
    /// slug reads as new, and a second run changes nothing.
    fn a_retired_project_leaves_its_slug_empty<S: InvocationStore + UsageStore + EventLog>(
        store: &S,
    ) {
        let p = "gone";
        let quotas = Quotas { invocations_per_month: Some(2), ..Default::default() };
        store.set_quotas(p, Some(&quotas)).unwrap();
        // 2 of 2 in two hours: the threshold is marked; 2,500 rows: more than one step.
        store.insert_batch(&mut [record("g1", p, "f", T0), record("g2", p, "f", T0 + H)]).unwrap();
        let many: Vec<UsageRow> = (0..2_500)
            .map(|i| UsageRow {
                project: p.into(),
                function: format!("x{i}"),
                hour: T0,
                counters: UsageCounters { push_sent: 1, ..Default::default() },
            })
            .collect();
        store.add_usage(&many).unwrap();
        let before = store.usage_total(p, T0, T0 + 2 * H).unwrap();
        let name = store.retire_project_usage(p, T0 + 3 * H).unwrap();
        assert_eq!(nimbus_model::usage::parse_retired(&name).map(|(s, _)| s), Some(p));
        assert_eq!(store.quotas(p).unwrap(), None);
        assert!(store.all_quotas().unwrap().iter().all(|(q, _)| q != p));
        assert_eq!(store.usage_total(p, T0, T0 + 2 * H).unwrap(), UsageCounters::default());
        assert!(store.usage_hours(Some(p), T0, T0 + 2 * H).unwrap().is_empty());
        assert_eq!(store.usage_total(&name, T0, T0 + 2 * H).unwrap(), before);
        assert_eq!(before.requests, 2);
        assert_eq!(before.push_sent, 2_500);
        assert!(store.usage_projects(T0, T0 + 2 * H).unwrap().contains(&name));

        // A straggler counted under the slug after the first run (a late record): the second
        // run (the same deletion: the same time, here passed in as no project row marks it)
        // merges it into the same name's row for its hour.
        store.insert_batch(&mut [record("g3", p, "f", T0 + 1)]).unwrap();
        assert_eq!(store.retire_project_usage(p, T0 + 3 * H).unwrap(), name);
        assert_eq!(store.usage_total(&name, T0, T0 + 2 * H).unwrap().requests, 3);
        assert_eq!(store.retire_project_usage(p, T0 + 3 * H).unwrap(), name);
        assert_eq!(store.usage_total(&name, T0, T0 + 2 * H).unwrap().requests, 3);

        // The slug starts over: a new quota counts from zero, its threshold is marked afresh.
        store.set_quotas(p, Some(&quotas)).unwrap();
        let crossed = |store: &S| {
            store
                .read(0, Some(p), 10_000)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == THRESHOLD_EVENT)
                .count()
        };
        let seen = crossed(store);
        store.insert_batch(&mut [record("g4", p, "f", T0 + 2 * H)]).unwrap();
        assert_eq!(crossed(store), seen, "1 of 2 is under the 80% threshold");
        store.insert_batch(&mut [record("g5", p, "f", T0 + 2 * H)]).unwrap();
        assert_eq!(crossed(store), seen + 1, "the new project's own crossing");
        store.set_quotas(p, None).unwrap();
    }

    /// `add_usage` (file egress batches) sums into the hour's row of the empty function, beside
    /// the functions' rows, and into totals.
    fn added_usage_sums_into_hours<S: InvocationStore + UsageStore>(store: &S) {
        let row = |bytes| UsageRow {
            project: "eg".into(),
            function: String::new(),
            hour: T0,
            counters: UsageCounters { file_egress_bytes: bytes, ..Default::default() },
        };
        store.add_usage(&[row(100), row(20)]).unwrap();
        store.add_usage(&[row(3)]).unwrap();
        store.add_usage(&[]).unwrap();
        store.insert_batch(&mut [record("e1", "eg", "f", T0 + 1)]).unwrap();
        let rows = store.usage_hours(Some("eg"), T0, T0 + H).unwrap();
        let got: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|r| (r.function.as_str(), r.counters.file_egress_bytes, r.counters.requests))
            .collect();
        assert_eq!(got, [("", 123, 0), ("f", 0, 1)]);
        let total = store.usage_total("eg", T0, T0 + H).unwrap();
        assert_eq!((total.file_egress_bytes, total.requests, total.push_sent), (123, 1, 0));
    }

    /// The data gauges follow every write of the data services, in the write's own transaction:
    /// created, replaced, deleted, per project. (Objects have their own test beside the object
    /// store, which is a separate type.)
    pub fn gauges_follow_writes<
        S: UsageStore + crate::kv::KvStore + crate::documents::DocumentStore,
    >(
        store: &S,
    ) {
        use crate::documents::{CollectionSpec, Expect, WriteOp};
        use crate::kv::Expiry;
        let g = |p: &str| store.data_gauges(p).unwrap();
        assert_eq!(g("gw"), Default::default());
        store.set("gw", "b", "key", b"0123456789", Expiry::Never, 1).unwrap();
        store.set("other", "b", "k", b"xx", Expiry::Never, 1).unwrap();
        assert_eq!(g("gw").kv_bytes, 13);
        store.set("gw", "b", "key", b"01234", Expiry::Never, 2).unwrap();
        assert_eq!(g("gw").kv_bytes, 8, "a replaced value counts once");
        assert!(store.delete("gw", "b", "key", 3).unwrap());
        assert_eq!(g("gw").kv_bytes, 0);
        assert_eq!(g("other").kv_bytes, 3);

        store.create_collection("gw", "c", &CollectionSpec::default()).unwrap();
        let doc = |id: &str, v: Option<serde_json::Value>| WriteOp {
            collection: "c".into(),
            id: id.into(),
            data: v,
            expect: Expect::Any,
        };
        store
            .write(
                "gw",
                &[
                    doc("a", Some(serde_json::json!({"x": "hello"}))),
                    doc("b", Some(serde_json::json!({}))),
                ],
            )
            .unwrap()
            .unwrap();
        let two = g("gw");
        assert_eq!(two.documents, 2);
        assert!(two.document_bytes > 0);
        store
            .write("gw", &[doc("a", Some(serde_json::json!({"x": "hello, world"})))])
            .unwrap()
            .unwrap();
        let grown = g("gw");
        assert_eq!(grown.documents, 2, "an update is not a new document");
        assert!(grown.document_bytes > two.document_bytes, "{grown:?} after {two:?}");
        store.write("gw", &[doc("b", None)]).unwrap().unwrap();
        assert_eq!(g("gw").documents, 1);
        store.write("gw", &[doc("b", Some(serde_json::json!({})))]).unwrap().unwrap();
        store.delete_collection("gw", "c").unwrap();
        assert_eq!(g("gw"), Default::default(), "deleting a collection deletes its bytes");
        assert_eq!(g("gw").stored_bytes(), 0);
    }

    fn one_threshold_event_per_quota_and_month<S: InvocationStore + UsageStore + EventLog>(
        store: &S,
    ) {
        let quotas = Quotas { invocations_per_month: Some(10), ..Default::default() };
        store.set_quotas("q", Some(&quotas)).unwrap();
        assert_eq!(store.quotas("q").unwrap(), Some(quotas));
        assert!(store.all_quotas().unwrap().iter().any(|(p, q)| p == "q" && *q == quotas));
        let events = |store: &S| -> Vec<serde_json::Value> {
            store
                .read(0, Some("q"), 1000)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == THRESHOLD_EVENT)
                .map(|e| e.data)
                .collect()
        };
        // 7 of 10: under 80%.
        let mut batch: Vec<_> =
            (0..7).map(|i| record(&format!("q{i}"), "q", "f", T0 + i)).collect();
        store.insert_batch(&mut batch).unwrap();
        assert!(events(store).is_empty());
        // 8 and 9: one event, written with the batch that crossed.
        store.insert_batch(&mut [record("q7", "q", "f", T0 + 7)]).unwrap();
        store.insert_batch(&mut [record("q8", "q", "f", T0 + 8)]).unwrap();
        let seen = events(store);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["quota"], "invocations_per_month");
        assert_eq!(seen[0]["used"], 8);
        assert_eq!(seen[0]["limit"], 10);
        // The next month is another period.
        store
            .insert_batch(
                &mut (0..9)
                    .map(|i| record(&format!("r{i}"), "q", "f", T0 + 31 * 24 * H + i))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        assert_eq!(events(store).len(), 2);
        assert_eq!(
            store.usage_total("q", T0, T0 + 24 * H).unwrap().requests,
            9,
            "the first month's total"
        );
        store.set_quotas("q", None).unwrap();
        assert_eq!(store.quotas("q").unwrap(), None);
    }

    fn counts_each_record_once_per_hour<S: InvocationStore + UsageStore>(store: &S) {
        let mut batch = vec![
            record("a1", "u1", "f", T0 + 5),
            record("a2", "u1", "f", T0 + H - 1),
            record("a3", "u1", "f", T0 + H), // the next hour
            InvocationRecord { trigger: "queue:jobs".into(), ..record("a4", "u1", "g", T0 + 7) },
            // Refused: stored as a record, not billed.
            InvocationRecord {
                status: InvocationStatus::Rejected,
                ..record("a5", "u1", "f", T0 + 9)
            },
        ];
        store.insert_batch(&mut batch).unwrap();
        // A retried batch (the first write committed but its answer was lost) and a retry that
        // overlaps it are not counted again; the retry's new record is.
        store.retry_batch(&mut batch.clone()).unwrap();
        store.retry_batch(&mut [batch[0].clone(), record("a6", "u1", "f", T0 + 11)]).unwrap();

        let rows = store.usage_hours(Some("u1"), T0, T0 + 2 * H).unwrap();
        let got: Vec<(String, i64, u64)> =
            rows.iter().map(|r| (r.function.clone(), r.hour, r.counters.requests)).collect();
        assert_eq!(
            got,
            [("f".to_string(), T0, 3), ("g".to_string(), T0, 1), ("f".to_string(), T0 + H, 1)]
        );
        let f0 = &rows[0].counters;
        // 2.5 ms without the queue wait, rounded up: 3 ms each, at 64 MiB.
        assert_eq!(
            *f0,
            UsageCounters {
                requests: 3,
                exec_ms: 9,
                mb_ms: 9 * 64,
                fuel: 3_000_000,
                outbound_bytes: 30,
                events: 0,
                file_egress_bytes: 0,
                push_sent: 0,
                stored_byte_seconds: 0,
            }
        );
        assert_eq!(rows[1].counters.events, 1);
        assert_eq!(rows[0].hour, hour_of(T0 + 5));
        // The range is half-open on hours.
        assert_eq!(store.usage_hours(Some("u1"), T0 + H, T0 + 2 * H).unwrap().len(), 1);
        assert_eq!(store.usage_projects(T0, T0 + 2 * H).unwrap(), ["u1".to_string()]);
    }

    fn survives_pruning_and_is_scoped<S: InvocationStore + UsageStore>(store: &S) {
        let mut batch = vec![record("b1", "u2", "f", T0), record("b2", "u3", "f", T0)];
        store.insert_batch(&mut batch).unwrap();
        // Every record is pruned; usage stays.
        store.prune(T0 + 100 * H, 0).unwrap();
        assert_eq!(store.usage_hours(Some("u2"), T0, T0 + H).unwrap()[0].counters.requests, 1);
        assert_eq!(store.usage_hours(Some("u1"), T0, T0 + 2 * H).unwrap().len(), 3);
        // One project's view never shows another's.
        let all = store.usage_hours(None, T0, T0 + H).unwrap();
        assert!(all.iter().any(|r| r.project == "u3"));
        assert!(
            store.usage_hours(Some("u2"), T0, T0 + H).unwrap().iter().all(|r| r.project == "u2")
        );
        assert_eq!(store.data_gauges("u2").unwrap(), Default::default());
    }
}
