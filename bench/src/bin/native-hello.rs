//! A plain hyper 1 hello world: the same bytes as the `examples/hello` component, no wasm.
//! The upper bound for an HTTP server on this machine (`bench/run.sh`).

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = b"Hello from Nimbus!\n";

#[derive(Parser)]
#[command(about = "Plain hyper hello world (benchmark upper bound)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

async fn hello(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = Response::builder()
        .status(200)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("static response");
    Ok(resp)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("native-hello listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            if let Err(e) =
                http1::Builder::new().keep_alive(true).serve_connection(io, service_fn(hello)).await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}
