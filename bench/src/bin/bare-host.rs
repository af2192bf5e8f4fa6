//! A minimal `wasmtime-wasi-http` host, modelled on wasmtime's `src/commands/serve.rs`: a hyper 1
//! server that runs every request in a fresh `Store` + instance of one component, via `ProxyPre`.
//!
//! It uses exactly the pooling-allocator settings of Nimbus (`crates/nimbus-runtime/src/engine.rs`)
//! but, on purpose, neither fuel nor epoch interruption: the cost of those, like everything else
//! Nimbus adds (routing, limits, logs, metrics, usage), is part of the platform overhead that
//! `bench/run.sh` measures against this baseline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Parser;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Same value as `nimbus_runtime::engine::KEEP_RESIDENT_BYTES`.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

#[derive(Parser)]
#[command(about = "Bare wasmtime-wasi-http host (benchmark baseline)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
    /// The `wasi:http/proxy` component to serve.
    #[arg(long)]
    component: PathBuf,
    /// Size of the instance pool (Nimbus: `instance_pool_size`, default 1000).
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Linear-memory ceiling per instance (Nimbus: `limits.ceilings.memory_bytes`, default 512 MiB).
    #[arg(long, default_value_t = 512 << 20)]
    max_memory_bytes: u64,
    /// Diagnostic, off by default: also turn on fuel metering and epoch interruption as Nimbus
    /// does (fuel budget 2^62, a 10 ms epoch ticker, a 10 s deadline), to split the platform
    /// overhead into "cost of these two checks" and "everything else".
    #[arg(long)]
    fuel_and_epochs: bool,
    /// Diagnostic, off by default: run guests on a runtime of their own, as Nimbus's guest pool
    /// does (so that guests cannot starve the node's HTTP and API work), instead of on the
    /// runtime that serves the connections: the cost of that hand-off.
    #[arg(long)]
    guest_runtime: bool,
    /// Diagnostic, off by default: do one or more things the way Nimbus does them, to price
    /// each part of the platform on its own (comma-separated): `env` (three environment
    /// variables, as the in-process API gives every guest), `pipes` (captured stdout and
    /// stderr), `deny` (sockets and name lookup denied), `limiter` (a memory limiter on the
    /// store), `bt` (`wasm_backtrace_details`), `cwasm` (the component deserialized from a
    /// file, memory-mapped), `auto` (hyper-util's HTTP/1 + HTTP/2 builder with upgrades),
    /// `inline` (the guest's first poll on the connection's task, spawned only if it waits).
    #[arg(long, value_delimiter = ',')]
    like: Vec<String>,
}

/// Nimbus' fuel budget per invocation (`crates/nimbus-runtime/src/invoke.rs`).
const FUEL_BUDGET: u64 = 1 << 62;
/// Nimbus' default epoch tick.
const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    /// `--like limiter` only.
    limits: Option<wasmtime::StoreLimits>,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: Default::default() }
    }
}

/// The `--like` parts, read once at start (no name compared per request).
#[derive(Clone, Copy, Default)]
struct Like {
    env: bool,
    pipes: bool,
    deny: bool,
    limiter: bool,
    bt: bool,
    cwasm: bool,
    auto: bool,
    inline: bool,
}

impl Like {
    fn parse(parts: &[String]) -> anyhow::Result<Like> {
        let mut like = Like::default();
        for part in parts {
            let flag = match part.as_str() {
                "env" => &mut like.env,
                "pipes" => &mut like.pipes,
                "deny" => &mut like.deny,
                "limiter" => &mut like.limiter,
                "bt" => &mut like.bt,
                "cwasm" => &mut like.cwasm,
                "auto" => &mut like.auto,
                "inline" => &mut like.inline,
                "none" => continue,
                other => return Err(anyhow!("unknown --like part {other:?}")),
            };
            *flag = true;
        }
        Ok(like)
    }
}

/// The Nimbus engine configuration (`crates/nimbus-runtime/src/engine.rs`) without fuel and epochs.
fn engine(args: &Args, like: Like) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    if like.bt {
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
    }
    if args.fuel_and_epochs {
        config.consume_fuel(true);
        config.epoch_interruption(true);
    }
    let n = args.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .table_elements(100_000)
        .max_memory_size(usize::try_from(args.max_memory_bytes).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config.memory_init_cow(true);
    Ok(Engine::new(&config)?)
}

struct Server {
    engine: Engine,
    pre: ProxyPre<Host>,
    fuel_and_epochs: bool,
    /// Where guests run (`--guest-runtime`); `None`: on the connections' runtime.
    guests: Option<tokio::runtime::Handle>,
    like: Like,
}

impl Server {
    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let this = self.clone();
        // The guest may keep streaming the body after it has handed over the response head, so it
        // runs in its own task (as in `wasmtime serve`).
        let guest = async move {
            let wasi = {
                let mut b = WasiCtx::builder();
                if this.like.env {
                    b.envs(&[
                        ("NIMBUS_API_URL", "http://nimbus.internal"),
                        ("NIMBUS_TOKEN", "nbi_0123456789abcdef0123456789abcdef"),
                        ("NIMBUS_PROJECT", "default"),
                    ]);
                }
                if this.like.pipes {
                    b.stdout(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(64 << 10));
                    b.stderr(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(64 << 10));
                }
                if this.like.deny {
                    b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
                }
                b.build()
            };
            let host = Host {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                limits: this
                    .like
                    .limiter
                    .then(|| wasmtime::StoreLimitsBuilder::new().memory_size(128 << 20).build()),
            };
            let mut store = Store::new(&this.engine, host);
            if store.data().limits.is_some() {
                store.limiter(|h| h.limits.as_mut().expect("set with the limiter"));
            }
            if this.fuel_and_epochs {
                store.set_fuel(FUEL_BUDGET)?;
                store.set_epoch_deadline(1_000); // 10 s at 10 ms per tick
                store.epoch_deadline_trap();
            }
            let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            let proxy = this.pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await?;
            anyhow::Ok(())
        };
        // `inline`: as Nimbus does, the guest's first poll runs here, and it gets a task of its
        // own only if it waits (hello never does).
        let task = if self.like.inline {
            let mut guest = Box::pin(guest);
            match futures::poll!(guest.as_mut()) {
                std::task::Poll::Ready(r) => Err(r),
                std::task::Poll::Pending => Ok(tokio::task::spawn(guest)),
            }
        } else {
            Ok(match &self.guests {
                Some(guests) => guests.spawn(guest),
                None => tokio::task::spawn(guest),
            })
        };
        match receiver.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(anyhow!("guest returned an error: {code:?}")),
            Err(_) => {
                let ended = match task {
                    Err(ended) => ended,
                    Ok(task) => task.await.unwrap_or_else(|e| Err(e.into())),
                };
                Err(match ended {
                    Ok(()) => anyhow!("guest never invoked `response-outparam::set`"),
                    Err(e) => e,
                })
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let like = Like::parse(&args.like)?;
    let engine = engine(&args, like)?;
    let mut component = Component::from_file(&engine, &args.component)
        .map_err(|e| anyhow!("compiling {}: {e:?}", args.component.display()))?;
    if like.cwasm {
        let path = std::env::temp_dir().join(format!("bare-{}.cwasm", std::process::id()));
        std::fs::write(&path, component.serialize().map_err(|e| anyhow!("{e:?}"))?)?;
        // SAFETY: the file was just serialized by this engine (what `deserialize_file` requires).
        component =
            unsafe { Component::deserialize_file(&engine, &path) }.map_err(|e| anyhow!("{e:?}"))?;
        // The mapping outlives the name.
        let _ = std::fs::remove_file(&path);
    }
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    if args.fuel_and_epochs {
        let weak = engine.weak();
        std::thread::spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    }
    // Like Nimbus's `GuestPool`: a multi-thread runtime with a worker per core, kept alive for
    // the process.
    let guests = args.guest_runtime.then(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("bare-guest")
            .enable_all()
            .build()
            .expect("building the guest runtime");
        let handle = rt.handle().clone();
        std::mem::forget(rt);
        handle
    });
    let server =
        Arc::new(Server { engine, pre, fuel_and_epochs: args.fuel_and_epochs, guests, like });

    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("bare-host listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let svc = service_fn(move |req| server.clone().handle(req));
            if like.auto {
                let b = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                if let Err(e) = b.serve_connection_with_upgrades(io, svc).await {
                    eprintln!("connection error: {e}");
                }
            } else if let Err(e) =
                http1::Builder::new().keep_alive(true).serve_connection(io, svc).await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}
