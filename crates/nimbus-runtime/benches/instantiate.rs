//! In-process cost of one invocation of the hello guest: instantiation alone (what the pooling
//! allocator and copy-on-write images buy), and a whole request through `Runtime::invoke` with no
//! network. Results go into docs/benchmarks.md by hand; run with
//! `cargo bench -p nimbus-runtime --bench instantiate`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use nimbus_runtime::{
    BodyError, Invocation, InvocationParams, OutboundPolicy, Runtime, RuntimeConfig,
};

fn setup() -> (Runtime, nimbus_runtime::LoadedComponent, tempfile::TempDir) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let wasm = std::fs::read(test_programs_artifacts::HELLO).unwrap();
    let compiled = runtime.compile(&wasm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.cwasm");
    std::fs::write(&path, &compiled.artifact).unwrap();
    let component = runtime.load_file(&path).unwrap();
    (runtime, component, dir)
}

fn request() -> http::Request<http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>> {
    http::Request::builder()
        .uri("http://localhost/hello")
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

async fn run_once(
    runtime: &Runtime,
    component: &nimbus_runtime::LoadedComponent,
    params: &InvocationParams,
) -> Duration {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let on_finish = move |o: nimbus_runtime::Outcome| {
        let _ = tx.send(o.instantiate);
    };
    match runtime.invoke(component, request(), params, on_finish).await {
        Invocation::Responded(response) => {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"Hello from Nimbus!\n");
            rx.await.unwrap()
        }
        Invocation::Failed(status) => panic!("hello failed: {status:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let (runtime, component, _dir) = setup();
    let params = InvocationParams {
        project: "default".into(),
        function: "hello".into(),
        env: Arc::from(Vec::new()),
        config: Default::default(),
        timeout: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        outbound: Arc::new(OutboundPolicy::default()),
    };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("hello");
    group.measurement_time(Duration::from_secs(5));
    // Instantiation only: sums the time `instantiate_async` took inside each invocation.
    group.bench_function("instantiate", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run_once(&runtime, &component, &params).await;
                }
                total
            })
        })
    });
    // A whole invocation: fresh store, instantiate, handle, stream the body out.
    group.bench_function("invoke", |b| {
        b.iter(|| rt.block_on(run_once(&runtime, &component, &params)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
