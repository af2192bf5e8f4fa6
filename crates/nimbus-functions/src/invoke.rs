//! Admission, execution and recording of one invocation.

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use nimbus_model::InvocationStatus;
use nimbus_runtime::{BodyError, GuestBody, Invocation, Outcome, OutcomeStatus};

use crate::metrics::Metrics;
use crate::recorder::{Draft, Finished, RecordNames};
use crate::{ActiveVersion, FunctionService, Rejection};

/// Why an invocation produced no guest response. The API layer maps each to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    #[error("{}", busy_message(*.0))]
    Rejected(Rejection, Duration),
    #[error("request body is larger than the function's limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("the function timed out")]
    Timeout,
    #[error("the function exceeded its memory limit")]
    MemoryLimit,
    #[error("the function crashed")]
    Trap,
    #[error("the function failed to produce a response")]
    Failed,
    /// Invocation records are not being written fast enough (or the store is down): nothing new
    /// runs until they are, so that nothing runs unrecorded.
    #[error("the node is catching up on writing invocation records; try again shortly")]
    RecorderBacklog,
    /// A hard quota of the project is used up.
    #[error("project {}'s quota {} is used up", .0.project, .0.quota)]
    Quota(crate::QuotaExceeded),
    /// Its compiled code could not be loaded (the operator's log has why).
    #[error("the function's code could not be loaded")]
    Unavailable,
}

impl InvokeError {
    /// The HTTP status the caller gets, kept in the invocation record.
    pub fn http_status(&self) -> u16 {
        match self {
            InvokeError::Rejected(Rejection::QueueFull, _) => 429,
            InvokeError::Rejected(Rejection::QueueTimeout | Rejection::NodeFull, _) => 503,
            InvokeError::BodyTooLarge(_) => 413,
            InvokeError::Timeout => 504,
            InvokeError::MemoryLimit
            | InvokeError::Trap
            | InvokeError::Failed
            | InvokeError::Unavailable => 500,
            InvokeError::RecorderBacklog => 503,
            InvokeError::Quota(_) => 429,
        }
    }
}

fn busy_message(r: Rejection) -> &'static str {
    match r {
        Rejection::QueueFull => "the function is at its concurrency limit and its queue is full",
        Rejection::QueueTimeout => {
            "the function stayed at its concurrency limit for the whole queue timeout"
        }
        Rejection::NodeFull => "every instance slot of this node is in use",
    }
}

/// An invocation's id (sent to the client whatever happens) and its result.
pub struct Invoked {
    pub id: String,
    pub result: Result<http::Response<GuestBody>, InvokeError>,
}

impl FunctionService {
    /// Run one request through a fresh instance of `target`. The record is written off the
    /// request path, once the guest has finished.
    pub async fn invoke<B>(
        &self,
        target: Arc<ActiveVersion>,
        request: http::Request<B>,
        trigger: impl Into<Cow<'static, str>>,
    ) -> Invoked
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Display + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (uuid, started_at) = nimbus_model::new_invocation_uuid();
        let id = nimbus_model::invocation_id_string(&uuid);
        let start = Instant::now();
        let base = Draft {
            id: uuid,
            trigger: trigger.into(),
            method: request.method().clone(),
            path: request.uri().path().as_bytes().into(),
            started_at,
            duration_us: 0,
            queue_us: 0,
            fuel: 0,
            peak_memory_bytes: 0,
            outbound_bytes: 0,
            status: InvocationStatus::Rejected,
            http_status: None,
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            logs_truncated: false,
        };
        let limit = target.info.limits.max_body_bytes;

        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            let error = InvokeError::BodyTooLarge(limit);
            self.reject(&target, base, &error);
            return Invoked { id, result: Err(error) };
        }

        if !self.recorder.has_room() {
            // Not recorded either: the backlog is what is bounded (see `recorder.rs`).
            target.metrics.rejections.inc();
            return Invoked { id, result: Err(InvokeError::RecorderBacklog) };
        }
        let quota = match self.quotas.admit(&target.info.project, base.started_at) {
            Ok(q) => q,
            Err(exceeded) => {
                let error = InvokeError::Quota(exceeded);
                self.reject(&target, base, &error);
                return Invoked { id, result: Err(error) };
            }
        };
        let m = &target.metrics;
        let (permit, waited) = match target.admission.admit().await {
            Ok(p) => p,
            Err(rejection) => {
                m.rejections.inc();
                let retry = Duration::from_secs(1).max(target.admission.queue_timeout() / 10);
                let error = InvokeError::Rejected(rejection, retry);
                self.reject(&target, base, &error);
                return Invoked { id, result: Err(error) };
            }
        };
        // Then a slot of the node, shared fairly with the other functions.
        let (node_permit, node_waited) =
            match self.gate.acquire(target.admission.id, &m.queued).await {
                Ok(p) => p,
                Err(()) => {
                    m.rejections.inc();
                    let error = InvokeError::Rejected(Rejection::NodeFull, Duration::from_secs(1));
                    self.reject(&target, base, &error);
                    return Invoked { id, result: Err(error) };
                }
            };
        let queue = start.elapsed();
        if waited || node_waited {
            m.queue_wait.observe(queue.as_secs_f64());
        }
        // Scale from zero: the code is loaded by the first request that needs it.
        let component = match target.code.resident() {
            Some(c) => c,
            None => match self.load_code(&target.code).await {
                Ok((c, loaded)) => {
                    if loaded {
                        m.cold_starts.inc();
                        self.metrics
                            .cold_start
                            .observe(start.elapsed().as_secs_f64() - queue.as_secs_f64());
                    }
                    c
                }
                Err(e) => {
                    tracing::error!(project = %target.info.project, function = %target.info.function, error = %e, "loading the function's code");
                    let error = InvokeError::Unavailable;
                    self.reject(&target, base, &error);
                    return Invoked { id, result: Err(error) };
                }
            },
        };
        m.in_use.inc();

        // A body without Content-Length is cut at the limit as it streams.
        let too_large = Arc::new(AtomicBool::new(false));
        let flag = too_large.clone();
        let request = request.map(|body| {
            Limited::new(body, limit as usize).map_err(move |e| {
                if e.is::<LengthLimitError>() {
                    flag.store(true, Ordering::Relaxed);
                    BodyError::TooLarge { limit }
                } else {
                    BodyError::Broken(e.to_string())
                }
            })
        });

        // Runs on the guest's task when it ends: frees the slot and records, with no task of
        // its own.
        let finish = {
            let (target, recorder) = (target.clone(), self.recorder.clone());
            let too_large = too_large.clone();
            move |outcome: Outcome| {
                let metrics = &target.node_metrics;
                drop(permit);
                drop(node_permit);
                target.metrics.in_use.dec();
                let failure = failure(&outcome, too_large.load(Ordering::Relaxed), limit);
                let http_status =
                    outcome.response_status.or(failure.as_ref().map(InvokeError::http_status));
                if !outcome.instantiate.is_zero() {
                    metrics.instantiation.observe(outcome.instantiate.as_secs_f64());
                }
                let mut r = base;
                r.queue_us = queue.as_micros() as u64;
                r.duration_us = start.elapsed().as_micros() as u64;
                fill(&mut r, outcome, http_status);
                observe(metrics, &target, &r);
                // The record takes the closure's reference to the version: no count to bump.
                let r = Finished { names: target, draft: r };
                if let Some(q) = quota {
                    // Counted into the month now, from the record the store will count.
                    q.finish(r.usage());
                }
                recorder.record_now(r);
            }
        };

        match self.runtime.invoke(&component, request, &target.params, finish).await {
            Invocation::Responded(response) => Invoked { id, result: Ok(response) },
            Invocation::Failed(status) => {
                let error = failure_of(status, too_large.load(Ordering::Relaxed), limit);
                Invoked { id, result: Err(error) }
            }
        }
    }

    /// Record an invocation refused before it ran.
    fn reject(&self, target: &Arc<ActiveVersion>, mut r: Draft, error: &InvokeError) {
        r.error = Some(error.to_string());
        r.http_status = Some(error.http_status());
        observe(&self.metrics, target, &r);
        self.recorder.record_now(Finished { names: target.clone(), draft: r });
    }
}

impl RecordNames for ActiveVersion {
    fn project(&self) -> &str {
        &self.info.project
    }
    fn function(&self) -> &str {
        &self.info.function
    }
    fn version(&self) -> u32 {
        self.info.version
    }
    fn memory_limit_mb(&self) -> u64 {
        self.info.limits.memory_bytes.div_ceil(1 << 20)
    }
}

/// The error a caller sees for an outcome, if it is a failure.
fn failure(outcome: &Outcome, too_large: bool, limit: u64) -> Option<InvokeError> {
    match outcome.response_status {
        Some(_) => None,
        None => Some(failure_of(outcome.status, too_large, limit)),
    }
}

fn failure_of(status: OutcomeStatus, too_large: bool, limit: u64) -> InvokeError {
    match status {
        _ if too_large => InvokeError::BodyTooLarge(limit),
        OutcomeStatus::Timeout => InvokeError::Timeout,
        OutcomeStatus::MemoryLimit => InvokeError::MemoryLimit,
        OutcomeStatus::Trap => InvokeError::Trap,
        OutcomeStatus::Overloaded => {
            InvokeError::Rejected(Rejection::NodeFull, Duration::from_secs(1))
        }
        OutcomeStatus::Ok | OutcomeStatus::Error => InvokeError::Failed,
    }
}

fn fill(r: &mut Draft, o: Outcome, http_status: Option<u16>) {
    r.status = match o.status {
        OutcomeStatus::Ok => InvocationStatus::Ok,
        OutcomeStatus::Trap => InvocationStatus::Trap,
        OutcomeStatus::Timeout => InvocationStatus::Timeout,
        OutcomeStatus::MemoryLimit => InvocationStatus::MemoryLimit,
        OutcomeStatus::Error => InvocationStatus::Error,
        OutcomeStatus::Overloaded => InvocationStatus::Rejected,
    };
    r.fuel = o.fuel;
    r.peak_memory_bytes = o.peak_memory_bytes;
    r.outbound_bytes = o.outbound_bytes;
    r.http_status = http_status;
    r.error = o.error;
    r.stdout = o.stdout;
    r.stderr = o.stderr;
    r.logs_truncated = o.logs_truncated;
}

/// Metrics of a finished (or refused) invocation, through the version's cached handles; only
/// rare statuses pay for a label lookup.
fn observe(metrics: &Metrics, target: &ActiveVersion, r: &Draft) {
    let f = &target.metrics;
    match r.status {
        InvocationStatus::Ok => f.ok.inc(),
        other => metrics
            .status_counter(&target.info.project, &target.info.function, other.as_str())
            .inc(),
    };
    if r.status != InvocationStatus::Ok || r.http_status.is_some_and(|s| s >= 500) {
        f.errors.inc();
    }
    if r.status != InvocationStatus::Rejected {
        f.duration.observe(r.duration_us as f64 / 1e6);
    }
}
