//! One invocation: a fresh store and instance per request, limits applied, outcome reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::host::{GuestLimiter, HostState, LogBuffer, LogPipe, OutboundHooks, Stream};
use crate::{LoadedComponent, OutboundPolicy, Runtime};

/// The body of a guest's response, streamed while the guest still runs.
pub type GuestBody = UnsyncBoxBody<Bytes, BodyError>;

/// Errors a request body can fail with on its way into a guest, and a response body on its way out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("body stream failed: {0}")]
    Broken(String),
}

/// Per-invocation settings, resolved from the function's version and secrets.
#[derive(Clone)]
pub struct InvocationParams {
    pub env: Arc<[(String, String)]>,
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub outbound: Arc<OutboundPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    Ok,
    Trap,
    Timeout,
    MemoryLimit,
    /// The guest ended without a usable response, or the host failed around it.
    Error,
}

/// How an invocation went, known once the guest has finished (after its response body).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: OutcomeStatus,
    pub error: Option<String>,
    /// Fuel consumed: the CPU the guest used, about one unit per wasm instruction.
    pub fuel: u64,
    pub peak_memory_bytes: u64,
    pub instantiate: Duration,
    pub stdout: String,
    pub stderr: String,
    pub logs_truncated: bool,
}

/// What [`Runtime::invoke`] gives back.
pub enum Invocation {
    /// The guest set a response; its body streams as the guest writes it. `finished` resolves
    /// once the guest has ended.
    Responded { response: http::Response<GuestBody>, finished: JoinHandle<Outcome> },
    /// The guest ended (trapped, timed out, or returned) without setting a response.
    Failed(Outcome),
}

/// Fuel given to each invocation: far more than any timeout allows one to burn, so it only counts.
const FUEL_BUDGET: u64 = 1 << 62;

impl Runtime {
    /// Run `request` through a fresh instance of `component`.
    pub async fn invoke<B>(
        &self,
        component: &LoadedComponent,
        request: http::Request<B>,
        params: &InvocationParams,
    ) -> Invocation
    where
        B: http_body::Body<Data = Bytes, Error = BodyError> + Send + 'static,
    {
        let logs = Arc::new(Mutex::new(LogBuffer {
            remaining: self.config.log_bytes_per_invocation,
            ..Default::default()
        }));
        let wasi = WasiCtxBuilder::new()
            .envs(&params.env)
            .stdout(LogPipe { buffer: logs.clone(), stream: Stream::Stdout })
            .stderr(LogPipe { buffer: logs.clone(), stream: Stream::Stderr })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks { policy: params.outbound.clone() },
            limiter: GuestLimiter::new(params.memory_bytes),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let tick = self.config.epoch_tick.as_nanos().max(1);
        store.set_epoch_deadline((params.timeout.as_nanos() / tick) as u64 + 1);
        store.epoch_deadline_trap();

        let failed = |error: String, logs: &Arc<Mutex<LogBuffer>>| {
            Invocation::Failed(finish(
                OutcomeStatus::Error,
                Some(error),
                0,
                0,
                Duration::ZERO,
                logs,
            ))
        };
        if let Err(e) = store.set_fuel(FUEL_BUDGET) {
            return failed(format!("setting fuel: {e:#}"), &logs);
        }
        let (tx, rx) = oneshot::channel();
        let request = request.map(|body| body.map_err(to_wasi_error));
        let (req, out) = {
            let mut http = store.data_mut().http();
            match (http.new_incoming_request(Scheme::Http, request), http.new_response_outparam(tx))
            {
                (Ok(req), Ok(out)) => (req, out),
                (Err(e), _) | (_, Err(e)) => return failed(format!("bad request: {e:#}"), &logs),
            }
        };

        let pre = component.pre.clone();
        let timeout = params.timeout;
        let task_logs = logs.clone();
        let task = tokio::spawn(async move {
            let mut instantiate = Duration::ZERO;
            let run = async {
                let start = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                instantiate = start.elapsed();
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            };
            // Epoch interruption stops a guest spinning in wasm; this timer also stops one that
            // is parked in a host call (a sleep, a slow outbound request).
            let result = tokio::time::timeout(timeout, run).await;
            let fuel = FUEL_BUDGET.saturating_sub(store.get_fuel().unwrap_or(FUEL_BUDGET));
            let limiter = &store.data().limiter;
            let peak = limiter.peak as u64;
            let (status, error) = match result {
                Err(_elapsed) => (OutcomeStatus::Timeout, Some(timeout_message(timeout))),
                Ok(Ok(())) => (OutcomeStatus::Ok, None),
                Ok(Err(_)) if limiter.hit_limit => (
                    OutcomeStatus::MemoryLimit,
                    Some(format!("memory limit of {} bytes exceeded", limiter.limit)),
                ),
                Ok(Err(e)) => match e.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => {
                        (OutcomeStatus::Timeout, Some(timeout_message(timeout)))
                    }
                    Some(_) => (OutcomeStatus::Trap, Some(format!("{e:#}"))),
                    None => (OutcomeStatus::Error, Some(format!("{e:#}"))),
                },
            };
            finish(status, error, fuel, peak, instantiate, &task_logs)
        });

        match rx.await {
            Ok(Ok(response)) => Invocation::Responded {
                response: response.map(|body| body.map_err(from_wasi_error).boxed_unsync()),
                finished: task,
            },
            Ok(Err(code)) => {
                let mut outcome = join(task, &logs).await;
                if outcome.status == OutcomeStatus::Ok {
                    outcome.status = OutcomeStatus::Error;
                }
                outcome
                    .error
                    .get_or_insert_with(|| format!("the guest answered with error {code:?}"));
                Invocation::Failed(outcome)
            }
            Err(_) => {
                let mut outcome = join(task, &logs).await;
                if outcome.status == OutcomeStatus::Ok {
                    outcome.status = OutcomeStatus::Error;
                    outcome.error = Some("the guest returned without setting a response".into());
                }
                Invocation::Failed(outcome)
            }
        }
    }
}

fn timeout_message(timeout: Duration) -> String {
    format!("the function ran past its timeout of {} ms", timeout.as_millis())
}

/// Wait for a guest task; a panic inside it (a host bug) becomes an `Error` outcome.
pub async fn join(task: JoinHandle<Outcome>, logs: &Arc<Mutex<LogBuffer>>) -> Outcome {
    match task.await {
        Ok(outcome) => outcome,
        Err(e) => finish(
            OutcomeStatus::Error,
            Some(format!("invocation task failed: {e}")),
            0,
            0,
            Duration::ZERO,
            logs,
        ),
    }
}

fn finish(
    status: OutcomeStatus,
    error: Option<String>,
    fuel: u64,
    peak_memory_bytes: u64,
    instantiate: Duration,
    logs: &Arc<Mutex<LogBuffer>>,
) -> Outcome {
    let mut logs = logs.lock();
    Outcome {
        status,
        error,
        fuel,
        peak_memory_bytes,
        instantiate,
        stdout: String::from_utf8_lossy(&std::mem::take(&mut logs.stdout)).into_owned(),
        stderr: String::from_utf8_lossy(&std::mem::take(&mut logs.stderr)).into_owned(),
        logs_truncated: logs.truncated,
    }
}

fn to_wasi_error(e: BodyError) -> wasmtime_wasi_http::Error {
    match e {
        BodyError::TooLarge { limit } => {
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
        }
        BodyError::Broken(_) => wasmtime_wasi_http::Error::ConnectionTerminated,
    }
}

fn from_wasi_error(e: wasmtime_wasi_http::Error) -> BodyError {
    BodyError::Broken(format!("{e:?}"))
}
