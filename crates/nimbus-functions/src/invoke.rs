//! Admission, execution and recording of one invocation.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use nimbus_model::{InvocationRecord, InvocationStatus, now_millis};
use nimbus_runtime::{BodyError, GuestBody, Invocation, Outcome, OutcomeStatus};

use crate::{ActiveVersion, FunctionService, Rejection};

/// Why an invocation produced no guest response. The API layer maps each to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    #[error("the function is busy: {0:?}")]
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
        trigger: &'static str,
    ) -> Invoked
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Display + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = uuid::Uuid::now_v7().to_string();
        let started_at = now_millis();
        let start = Instant::now();
        let limit = target.info.limits.max_body_bytes;
        let mut record = Pending { service: self, target: &target, id: &id, trigger, started_at };

        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            record.rejected("request body too large").await;
            return Invoked { id, result: Err(InvokeError::BodyTooLarge(limit)) };
        }

        let (permit, waited) = match target.admission.admit().await {
            Ok(p) => p,
            Err(rejection) => {
                self.metrics.rejections.get_or_create(&target.label).inc();
                record.rejected(&format!("{rejection:?}")).await;
                let retry = Duration::from_secs(1).max(target.admission.queue_timeout() / 10);
                return Invoked { id, result: Err(InvokeError::Rejected(rejection, retry)) };
            }
        };
        let queue = start.elapsed();
        if waited {
            self.metrics.queue_wait.get_or_create(&target.label).observe(queue.as_secs_f64());
        }
        if !target.warm.swap(true, Ordering::Relaxed) {
            self.metrics.cold_starts.get_or_create(&target.label).inc();
        }
        let in_use = self.metrics.instances_in_use.get_or_create(&target.label).clone();
        in_use.inc();

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

        let invocation = self.runtime.invoke(&target.component, request, &target.params).await;
        match invocation {
            Invocation::Responded { response, finished } => {
                let status = response.status().as_u16();
                let service_metrics = self.metrics.clone();
                let recorder = self.recorder.clone();
                let base = record.base(queue);
                tokio::spawn(async move {
                    let outcome = match finished.await {
                        Ok(o) => o,
                        Err(e) => failed_outcome(format!("invocation task failed: {e}")),
                    };
                    drop(permit);
                    in_use.dec();
                    let r =
                        complete(&service_metrics, base, outcome, Some(status), start.elapsed());
                    observe(&service_metrics, &r);
                    recorder.record(r).await;
                });
                Invoked { id, result: Ok(response) }
            }
            Invocation::Failed(outcome) => {
                drop(permit);
                in_use.dec();
                let error = match outcome.status {
                    _ if too_large.load(Ordering::Relaxed) => InvokeError::BodyTooLarge(limit),
                    OutcomeStatus::Timeout => InvokeError::Timeout,
                    OutcomeStatus::MemoryLimit => InvokeError::MemoryLimit,
                    OutcomeStatus::Trap => InvokeError::Trap,
                    OutcomeStatus::Ok | OutcomeStatus::Error => InvokeError::Failed,
                };
                let http_status = match error {
                    InvokeError::BodyTooLarge(_) => 413,
                    InvokeError::Timeout => 504,
                    _ => 500,
                };
                let r = complete(
                    &self.metrics,
                    record.base(queue),
                    outcome,
                    Some(http_status),
                    start.elapsed(),
                );
                observe(&self.metrics, &r);
                self.recorder.record(r).await;
                Invoked { id, result: Err(error) }
            }
        }
    }
}

struct Pending<'a> {
    service: &'a FunctionService,
    target: &'a ActiveVersion,
    id: &'a str,
    trigger: &'static str,
    started_at: i64,
}

impl Pending<'_> {
    fn base(&self, queue: Duration) -> InvocationRecord {
        InvocationRecord {
            id: self.id.to_string(),
            project: self.target.info.project.clone(),
            function: self.target.info.function.clone(),
            version: self.target.info.version,
            trigger: self.trigger.to_string(),
            started_at: self.started_at,
            duration_us: 0,
            queue_us: queue.as_micros() as u64,
            fuel: 0,
            peak_memory_bytes: 0,
            status: InvocationStatus::Rejected,
            http_status: None,
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            logs_truncated: false,
        }
    }

    async fn rejected(&mut self, why: &str) {
        let mut r = self.base(Duration::ZERO);
        r.error = Some(why.to_string());
        observe(&self.service.metrics, &r);
        self.service.recorder.record(r).await;
    }
}

fn failed_outcome(error: String) -> Outcome {
    Outcome {
        status: OutcomeStatus::Error,
        error: Some(error),
        fuel: 0,
        peak_memory_bytes: 0,
        instantiate: Duration::ZERO,
        stdout: String::new(),
        stderr: String::new(),
        logs_truncated: false,
    }
}

/// Fill a record from the guest's outcome, and observe instantiation time (the runtime keeps no
/// metrics of its own).
fn complete(
    metrics: &crate::Metrics,
    mut r: InvocationRecord,
    o: Outcome,
    http_status: Option<u16>,
    elapsed: Duration,
) -> InvocationRecord {
    if !o.instantiate.is_zero() {
        metrics.instantiation.observe(o.instantiate.as_secs_f64());
    }
    r.status = match o.status {
        OutcomeStatus::Ok => InvocationStatus::Ok,
        OutcomeStatus::Trap => InvocationStatus::Trap,
        OutcomeStatus::Timeout => InvocationStatus::Timeout,
        OutcomeStatus::MemoryLimit => InvocationStatus::MemoryLimit,
        OutcomeStatus::Error => InvocationStatus::Error,
    };
    r.duration_us = elapsed.as_micros() as u64;
    r.fuel = o.fuel;
    r.peak_memory_bytes = o.peak_memory_bytes;
    r.http_status = http_status;
    r.error = o.error;
    r.stdout = o.stdout;
    r.stderr = o.stderr;
    r.logs_truncated = o.logs_truncated;
    r
}

fn observe(metrics: &crate::Metrics, r: &InvocationRecord) {
    let label = crate::Metrics::label(&r.project, &r.function);
    metrics
        .invocations
        .get_or_create(&crate::metrics::StatusLabels {
            project: r.project.clone(),
            function: r.function.clone(),
            status: r.status.as_str().to_string(),
        })
        .inc();
    if r.status != InvocationStatus::Ok || r.http_status.is_some_and(|s| s >= 500) {
        metrics.errors.get_or_create(&label).inc();
    }
    if r.status != InvocationStatus::Rejected {
        metrics.duration.get_or_create(&label).observe(r.duration_us as f64 / 1e6);
    }
}
