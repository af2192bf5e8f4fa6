//! A hostile client for bench/slow-clients.sh: opens many connections to a server from several
//! loopback source addresses and holds them, either idle (connected, nothing sent) or as
//! slowloris (a request head that never completes, one more header line every few seconds). It
//! prints how many it opened and, every second, how many the server still holds open.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Idle,
    Slowloris,
}

#[derive(Parser)]
struct Args {
    /// The server to attack
    #[arg(long)]
    target: SocketAddr,
    /// Loopback source addresses to use: 127.0.1.1, 127.0.1.2, ...
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Connections per source address
    #[arg(long, default_value_t = 1000)]
    per_source: usize,
    #[arg(long, value_enum, default_value_t = Mode::Slowloris)]
    mode: Mode,
    /// How long to hold the connections
    #[arg(long, default_value = "20")]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let open = Arc::new(AtomicUsize::new(0));
    let mut failed = 0usize;
    let mut tasks = Vec::new();
    for source in 1..=args.sources {
        for _ in 0..args.per_source {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 1, source), 0)))?;
            let Ok(Ok(mut tcp)) =
                tokio::time::timeout(Duration::from_millis(200), socket.connect(args.target)).await
            else {
                failed += 1;
                continue;
            };
            open.fetch_add(1, Ordering::Relaxed);
            let open = open.clone();
            let mode = args.mode;
            tasks.push(tokio::spawn(async move {
                if let Mode::Slowloris = mode {
                    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
                }
                let mut buf = [0u8; 256];
                loop {
                    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf));
                    match read.await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(_)) => {}
                        Err(_) => {
                            if let Mode::Slowloris = mode
                                && tcp.write_all(b"X-a: b\r\n").await.is_err()
                            {
                                break;
                            }
                        }
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            }));
        }
    }
    println!(
        "opened {} connections ({failed} did not connect within 200 ms)",
        open.load(Ordering::Relaxed)
    );
    for s in 0..args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("t={}s still open: {}", s + 1, open.load(Ordering::Relaxed));
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}
