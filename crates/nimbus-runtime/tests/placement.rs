//! Where a guest runs: it starts on its caller's task, and moves to the guest pool (the
//! `nimbus-guest` threads) the first time it would wait. `on_finish` runs where the guest ended,
//! so its thread tells where the guest was at its end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use nimbus_runtime::{
    BodyError, Invocation, InvocationParams, LoadedComponent, OutboundPolicy, OutcomeStatus,
    Runtime, RuntimeConfig,
};
use tokio::sync::oneshot;

fn load(rt: &Runtime, dir: &std::path::Path, wasm: &str) -> LoadedComponent {
    let compiled = rt.compile(&std::fs::read(wasm).unwrap()).unwrap();
    let path = dir.join("artifact.cwasm");
    std::fs::write(&path, &compiled.artifact).unwrap();
    rt.load_file(&path).unwrap()
}

fn params(timeout: Duration) -> InvocationParams {
    InvocationParams {
        project: "p".into(),
        function: "f".into(),
        env: Arc::new([]),
        config: Default::default(),
        timeout,
        memory_bytes: 64 << 20,
        outbound: Arc::new(OutboundPolicy::new(vec![])),
    }
}

/// Runs one request; returns the outcome's status, the body, and the thread `on_finish` ran on.
async fn invoke(
    rt: &Runtime,
    component: &LoadedComponent,
    uri: &str,
    timeout: Duration,
) -> (OutcomeStatus, Bytes, String) {
    let (tx, rx) = oneshot::channel();
    let request = http::Request::get(uri)
        .body(Empty::<Bytes>::new().map_err(|e: Infallible| -> BodyError { match e {} }))
        .unwrap();
    let on_finish = move |outcome: nimbus_runtime::Outcome| {
        let thread = std::thread::current().name().unwrap_or_default().to_owned();
        let _ = tx.send((outcome.status, thread));
    };
    let body = match rt.invoke(component, request, &params(timeout), on_finish).await {
        Invocation::Responded(response) => response.into_body().collect().await.unwrap().to_bytes(),
        Invocation::Failed(_) => Bytes::new(),
    };
    let (status, thread) = rx.await.unwrap();
    (status, body, thread)
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig { max_instances: 8, guest_threads: 1, ..RuntimeConfig::default() })
        .unwrap()
}

/// The common case: a guest that answers without waiting never crosses to the pool.
#[tokio::test]
async fn a_guest_that_answers_at_once_ends_on_the_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let hello = load(&rt, dir.path(), test_programs_artifacts::HELLO);
    let caller = std::thread::current().name().unwrap().to_owned();
    for _ in 0..3 {
        let (status, body, thread) =
            invoke(&rt, &hello, "http://localhost/", Duration::from_secs(5)).await;
        assert_eq!(status, OutcomeStatus::Ok);
        assert!(!body.is_empty());
        assert_eq!(thread, caller, "hello ran to its end on the caller's thread");
    }
}

/// A guest that waits on a timer moves to the pool, and still answers.
#[tokio::test]
async fn a_guest_that_waits_moves_to_the_guest_pool() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let sleep = load(&rt, dir.path(), test_programs_artifacts::SLEEP);
    let (status, body, thread) =
        invoke(&rt, &sleep, "http://localhost/?ms=20", Duration::from_secs(5)).await;
    assert_eq!(status, OutcomeStatus::Ok);
    assert_eq!(&body[..], b"slept");
    assert_eq!(thread, "nimbus-guest");
}

/// A guest that computes leaves the caller's thread after one fuel slice: on a single-threaded
/// caller, another task keeps ticking while the guest spins until its timeout, and the guest
/// ends on the pool. Were it left on the caller's thread, it would give the ticker a turn only
/// at epoch ticks and end there.
#[tokio::test]
async fn a_spinning_guest_moves_to_the_guest_pool() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(runtime());
    let spin = load(&rt, dir.path(), test_programs_artifacts::SPIN);
    let timeout = Duration::from_millis(600);
    let guest = {
        let rt = rt.clone();
        tokio::spawn(async move { invoke(&rt, &spin, "http://localhost/", timeout).await })
    };
    let start = Instant::now();
    let mut ticks = 0u32;
    while !guest.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        ticks += 1;
    }
    let (status, _, thread) = guest.await.unwrap();
    assert_eq!(status, OutcomeStatus::Timeout);
    assert_eq!(thread, "nimbus-guest");
    let took = start.elapsed();
    assert!(took >= timeout, "took {took:?}");
    // A 1 ms sleep takes 1-2 ms here; a caller held by the guest would tick once per epoch
    // tick (10 ms) at best.
    assert!(ticks as u128 * 4 >= took.as_millis(), "{ticks} ticks in {took:?}");
}
