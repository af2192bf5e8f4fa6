//! One invocation: a fresh store and instance per request, limits applied, outcome reported.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use wasmtime::component::ResourceTable;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::host::{GuestLimiter, HostState, LogBuffer, LogPipe, OutboundHooks, Shared, Stream};
use crate::in_process::InProcessCtx;
use crate::{LoadedComponent, OutboundPolicy, Runtime};

/// Errors a request body can fail with on its way into a guest, and a response body on its way out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("body stream failed: {0}")]
    Broken(String),
    /// The guest failed (trapped, timed out) before finishing its response body.
    #[error("the function failed before finishing its response body")]
    Truncated,
}

/// Per-invocation settings, resolved from the function's version and secrets.
#[derive(Clone)]
pub struct InvocationParams {
    /// The function's project: what `wasi:keyvalue` and the in-process API are scoped to.
    pub project: Arc<str>,
    /// The function's name (the in-process API names its caller).
    pub function: Arc<str>,
    pub env: Arc<[(String, String)]>,
    /// What `wasi:config/store` answers (the same pairs as `env`, for guests that read runtime
    /// config the portable way, as on `wasmtime serve -S config` or Spin).
    pub config: ConfigVars,
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub outbound: Arc<OutboundPolicy>,
}

/// Values served through `wasi:config/store`, built once per version and shared by its
/// invocations.
#[derive(Clone, Default)]
pub struct ConfigVars(pub(crate) Arc<WasiConfigVariables>);

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ConfigVars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut vars = WasiConfigVariables::new();
        for (k, v) in pairs {
            vars.insert(k, v);
        }
        ConfigVars(Arc::new(vars))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    Ok,
    Trap,
    Timeout,
    MemoryLimit,
    /// It never ran: every instance slot of the node's pool is taken.
    Overloaded,
    /// The guest ended without a usable response, or the host failed around it.
    Error,
}

/// How an invocation went, known once the guest has finished (after its response body).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: OutcomeStatus,
    pub error: Option<String>,
    /// The HTTP status of the response the guest set, if it set one.
    pub response_status: Option<u16>,
    /// Fuel consumed: the CPU the guest used, about one unit per wasm instruction.
    pub fuel: u64,
    pub peak_memory_bytes: u64,
    /// Bytes the guest's outbound HTTP requests wrote to the network (request heads and bodies,
    /// TLS included; the in-process API is not the network and is not counted).
    pub outbound_bytes: u64,
    pub instantiate: Duration,
    pub stdout: String,
    pub stderr: String,
    pub logs_truncated: bool,
}

/// What [`Runtime::invoke`] gives back at once. The full [`Outcome`] goes to the `on_finish`
/// callback when the guest has ended, in both cases.
pub enum Invocation {
    /// The guest set a response; its body streams as the guest writes it.
    Responded(http::Response<GuestBody>),
    /// The guest ended (trapped, timed out, or returned) without setting a usable response.
    Failed(OutcomeStatus),
}

/// Fuel given to each invocation: far more than any timeout allows one to burn, so it only counts.
const FUEL_BUDGET: u64 = 1 << 62;

/// Fuel handed to compiled code at a time. Cranelift keeps the fuel counter in a register and
/// writes it back to the store only at calls, returns and when this slice runs out; the epoch
/// check that traps a guest at its deadline does not write it back. Without slices, a loop
/// stopped by its timeout was recorded with the fuel of its last call (~4,000 units for a second
/// of spinning). With them, what a trap loses is under one slice.
///
/// The slice also bounds how long a guest runs on its caller's task before it moves to the guest
/// pool (see `Runtime::invoke`): 2^20 units is ~125 µs of wasm. Each slice ends in one refuel and
/// yield (~1 µs), under 1% of a guest that computes for long. (It cannot be widened once the
/// guest has moved: the epoch callback would be the place, but compiled code does not reload
/// its fuel register after that callback, so changing fuel there would corrupt the count.)
const FUEL_SLICE: u64 = 1 << 20;

/// `responded` values besides an HTTP status: none yet, or the guest set an error code.
const NO_RESPONSE: u32 = 0;
const GUEST_ERROR: u32 = u32::MAX;

impl Runtime {
    /// Run `request` through a fresh instance of `component`. `on_finish` runs exactly once, on
    /// the guest's task (the caller's, if the guest never waited), when the guest has ended: it
    /// is how callers record the invocation without a task of their own per request.
    pub async fn invoke<B>(
        &self,
        component: &LoadedComponent,
        request: http::Request<B>,
        params: &InvocationParams,
        on_finish: impl FnOnce(Outcome) + Send + 'static,
    ) -> Invocation
    where
        B: http_body::Body<Data = Bytes, Error = BodyError> + Send + 'static,
    {
        // wasi:http needs an authority: HTTP/1.1 requests carry it in `Host`; give the others
        // (HTTP/1.0 without one, events and async invocations made in-process) a placeholder
        // rather than failing them.
        let mut request = request;
        if request.uri().authority().is_none()
            && !request.headers().contains_key(http::header::HOST)
        {
            let localhost = http::HeaderValue::from_static("localhost");
            request.headers_mut().insert(http::header::HOST, localhost);
        }
        let shared = Arc::new(Shared {
            logs: Mutex::new(LogBuffer {
                remaining: self.config.log_bytes_per_invocation,
                ..Default::default()
            }),
            egress: AtomicU64::new(0),
            // Noted synchronously while the guest runs, so the task knows at its end whether
            // (and what) the guest answered without waiting on the receiver.
            responded: AtomicU32::new(NO_RESPONSE),
            end: AtomicU8::new(RUNNING),
        });
        let in_process = self.in_process.as_ref().map(|api| {
            InProcessCtx::new(api.clone(), params.project.clone(), params.function.clone())
        });
        let mut wasi = WasiCtxBuilder::new();
        match &in_process {
            // The runtime's own variables win over a function's env of the same name.
            Some(api) => {
                let ours = api.env();
                wasi.envs(&ours);
                for (k, v) in params.env.iter() {
                    if !ours.iter().any(|(name, _)| name == k) {
                        wasi.env(k, v);
                    }
                }
            }
            None => {
                wasi.envs(&params.env);
            }
        }
        let wasi = wasi
            .stdout(LogPipe { shared: shared.clone(), stream: Stream::Stdout })
            .stderr(LogPipe { shared: shared.clone(), stream: Stream::Stderr })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks {
                shared: shared.clone(),
                policy: params.outbound.clone(),
                net: self.net.clone(),
                in_process,
            },
            limiter: GuestLimiter::new(params.memory_bytes),
            config: params.config.0.clone(),
            kv: crate::keyvalue::KvCtx::new(self.kv.clone(), params.project.clone()),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // At every epoch tick a guest running wasm gives its thread back (tokio's `yield_now`
        // puts it behind every other ready task), so spinning guests take turns with the rest
        // of the pool instead of holding a thread until their timeout; past the deadline the
        // tick traps instead.
        let deadline = Instant::now() + params.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });

        let fail_early = |error: String, on_finish: Box<dyn FnOnce(Outcome) + Send>| {
            on_finish(finish(
                OutcomeStatus::Error,
                Some(error),
                None,
                0,
                0,
                0,
                Duration::ZERO,
                &shared,
            ));
            Invocation::Failed(OutcomeStatus::Error)
        };
        if let Err(e) = store
            .set_fuel(FUEL_BUDGET)
            .and_then(|()| store.fuel_async_yield_interval(Some(FUEL_SLICE)))
        {
            return fail_early(format!("setting fuel: {e:#}"), Box::new(on_finish));
        }
        let (tx, rx) = oneshot::channel();
        let flag = shared.clone();
        let request = request.map(|body| body.map_err(to_wasi_error));
        let (req, out) = {
            let mut http = store.data_mut().http();
            let out = http.new_response_outparam_from_callback(move |result| {
                let mark = match &result {
                    Ok(r) => u32::from(r.status().as_u16()),
                    Err(_) => GUEST_ERROR,
                };
                flag.responded.store(mark, Ordering::Release);
                // The receiver is gone only if the caller stopped waiting; nothing to tell it.
                let _ = tx.send(result);
            });
            match (http.new_incoming_request(Scheme::Http, request), out) {
                (Ok(req), Ok(out)) => (req, out),
                (Err(e), _) | (_, Err(e)) => {
                    return fail_early(format!("bad request: {e:#}"), Box::new(on_finish));
                }
            }
        };

        let pre = component.pre.clone();
        let timeout = params.timeout;
        let task_shared = shared.clone();
        let guest = async move {
            // Holds the store so that how the guest ended is set before the store (and with it
            // the sending half of the response body) is dropped, even on a panic.
            let mut guard = EndGuard { store, shared: task_shared };
            let store = &mut guard.store;
            let mut instantiate = Duration::ZERO;
            let run = async {
                let start = Instant::now();
                let proxy = pre.instantiate_async(&mut *store).await?;
                instantiate = start.elapsed();
                proxy.wasi_http_incoming_handler().call_handle(&mut *store, req, out).await
            };
            // Epoch interruption stops a guest spinning in wasm; a timer also stops one that is
            // parked in a host call (a sleep, a slow outbound request). Only a guest that waits
            // needs that timer, so it is set, for the same deadline, when the first poll finds
            // the guest waiting: most requests answer in that poll and never touch the runtime's
            // timer wheel (a shared lock) or its handle (a shared reference count).
            let result = {
                let mut run = std::pin::pin!(run);
                match std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
                    Poll::Ready(done) => Ok(done),
                    Poll::Pending => tokio::time::timeout_at(deadline.into(), run).await,
                }
            };
            let fuel = FUEL_BUDGET.saturating_sub(store.get_fuel().unwrap_or(FUEL_BUDGET));
            let limiter = &store.data().limiter;
            let peak = limiter.peak as u64;
            let (mut status, mut error) = match result {
                Err(_elapsed) => (OutcomeStatus::Timeout, Some(timeout_message(timeout))),
                Ok(Ok(())) => (OutcomeStatus::Ok, None),
                Ok(Err(_)) if limiter.hit_limit => (
                    OutcomeStatus::MemoryLimit,
                    Some(format!("memory limit of {} bytes exceeded", limiter.limit)),
                ),
                Ok(Err(e)) if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                    (OutcomeStatus::Overloaded, Some(format!("{e:#}")))
                }
                Ok(Err(e)) => match e.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => {
                        (OutcomeStatus::Timeout, Some(timeout_message(timeout)))
                    }
                    Some(_) => (OutcomeStatus::Trap, Some(format!("{e:#}"))),
                    None => (OutcomeStatus::Error, Some(format!("{e:#}"))),
                },
            };
            let response_status = match guard.shared.responded.load(Ordering::Acquire) {
                NO_RESPONSE => {
                    if status == OutcomeStatus::Ok {
                        status = OutcomeStatus::Error;
                        error = Some("the guest returned without setting a response".into());
                    }
                    None
                }
                GUEST_ERROR => {
                    if status == OutcomeStatus::Ok {
                        status = OutcomeStatus::Error;
                        error = Some("the guest answered with an error code".into());
                    }
                    None
                }
                code => u16::try_from(code).ok(),
            };
            let ended = if status == OutcomeStatus::Ok { ENDED_OK } else { ENDED_BADLY };
            guard.shared.end.store(ended, Ordering::Release);
            let outbound = guard.shared.egress.load(Ordering::Relaxed);
            let task_shared = guard.shared.clone();
            // The instance goes back to the pool before `on_finish` frees the caller's slots:
            // otherwise a request admitted by a freed slot could find the pool still full
            // (503 `node_full` with the node at exactly its capacity).
            drop(guard);
            on_finish(finish(
                status,
                error,
                response_status,
                fuel,
                peak,
                outbound,
                instantiate,
                &task_shared,
            ));
            status
        };

        // The guest starts on the caller's task and moves to the guest pool the first time it
        // would wait: for I/O, a timer, the end of its fuel slice or an epoch tick. A guest that
        // answers without waiting (most requests) thus never crosses between runtimes, which
        // costs a spawn and a wake-up on each side (~10 µs of CPU per request on this machine's
        // 2 cores); a guest that computes or waits holds the caller's worker for at most one
        // fuel slice, so it cannot starve the I/O runtime (see `GuestPool`).
        let mut guest = Box::pin(guest);
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(std::panic::catch_unwind(AssertUnwindSafe(|| guest.as_mut().poll(cx))))
        })
        .await;
        let task = match first {
            Ok(Poll::Ready(status)) => GuestTask::Ended(status),
            // Moving a pending future is fine: it is pinned in its box, and the first poll on
            // the pool registers that task's waker wherever the guest waits.
            Ok(Poll::Pending) => GuestTask::Moved(self.guests.handle().spawn(guest)),
            Err(_panic) => {
                // As a panicking task on the pool: the guard marked the end as bad, and the
                // future goes now, as a panicked task's does, so that nothing it holds (the
                // response sender) outlives it while `rx` is awaited below.
                drop(guest);
                tracing::error!("invocation panicked");
                GuestTask::Ended(OutcomeStatus::Error)
            }
        };

        match rx.await {
            Ok(Ok(response)) => Invocation::Responded(response.map(|inner| GuestBody {
                inner,
                shared,
                done: false,
            })),
            // The guest set an error, or ended without answering: its task has the details.
            Ok(Err(_)) | Err(_) => {
                let status = match task {
                    GuestTask::Ended(status) => status,
                    GuestTask::Moved(task) => task.await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "invocation task failed");
                        OutcomeStatus::Error
                    }),
                };
                match status {
                    OutcomeStatus::Ok => Invocation::Failed(OutcomeStatus::Error),
                    status => Invocation::Failed(status),
                }
            }
        }
    }
}

/// Where a guest is after its first poll.
enum GuestTask {
    /// It ended on the caller's task.
    Ended(OutcomeStatus),
    /// It waited, and runs on in the guest pool.
    Moved(tokio::task::JoinHandle<OutcomeStatus>),
}

/// How the guest ended, shared by its task and its response body.
const RUNNING: u8 = 0;
const ENDED_OK: u8 = 1;
const ENDED_BADLY: u8 = 2;

struct EndGuard {
    store: Store<HostState>,
    shared: Arc<Shared>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        // A task that panicked or was cancelled never set an outcome: that is not a clean end.
        // (Runs before the fields drop, so before the store.)
        let _ = self.shared.end.compare_exchange(
            RUNNING,
            ENDED_BADLY,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// The body of a guest's response, streamed while the guest still runs; it ends cleanly only if
/// the guest finished it.
///
/// wasmtime-wasi-http 48 ends the body with an error when the guest drops its `outgoing-body`
/// without `finish`, but when the guest traps or times out its store is dropped with the body
/// unfinished, and the body then just ends, as if complete. Its end looks the same in both
/// cases, so this tells them apart by when it comes: an end while the guest still runs can only
/// be a `finish`; an end after the guest failed is a truncation (or, rarely, a finish shortly
/// before the failure: reported as truncated too, as the guest did fail), and becomes an error,
/// so hyper aborts the connection instead of sending the last chunk.
///
/// A type of its own rather than a boxed body: the server boxes it once more for its router,
/// and every frame would go through both boxes.
pub struct GuestBody {
    inner: UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>,
    shared: Arc<Shared>,
    done: bool,
}

impl http_body::Body for GuestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        Poll::Ready(match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(frame) => Some(frame.map_err(from_wasi_error)),
            None => {
                self.done = true;
                match self.shared.end.load(Ordering::Acquire) {
                    ENDED_BADLY => Some(Err(BodyError::Truncated)),
                    _ => None,
                }
            }
        })
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn timeout_message(timeout: Duration) -> String {
    format!("the function ran past its timeout of {} ms", timeout.as_millis())
}

// Two call sites, each naming every field of the outcome; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn finish(
    status: OutcomeStatus,
    error: Option<String>,
    response_status: Option<u16>,
    fuel: u64,
    peak_memory_bytes: u64,
    outbound_bytes: u64,
    instantiate: Duration,
    shared: &Shared,
) -> Outcome {
    let mut logs = shared.logs.lock();
    Outcome {
        status,
        error,
        response_status,
        fuel,
        peak_memory_bytes,
        outbound_bytes,
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
        BodyError::Broken(_) | BodyError::Truncated => {
            wasmtime_wasi_http::Error::ConnectionTerminated
        }
    }
}

fn from_wasi_error(e: wasmtime_wasi_http::Error) -> BodyError {
    BodyError::Broken(format!("{e:?}"))
}
