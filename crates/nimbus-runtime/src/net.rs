//! Which networks guests may reach, checked on the address actually connected to.
//!
//! A function's allow-list names hosts; a host name can resolve to anything (`localhost`, a
//! rebinding DNS name, `169.254.169.254`). So outbound requests are sent here rather than through
//! `wasmtime_wasi_http::default_send_request`: the host name is resolved once, every resolved
//! address is checked against the operator's [`NetPolicy`], and the connection goes to a checked
//! address itself. Nothing resolves the name a second time, so there is no window between check
//! and use. The rest (TLS with webpki roots, the hyper handshake, the request options' timeouts)
//! follows wasmtime-wasi-http 48's `default_send_request`.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

pub use nimbus_model::net::{NetPolicy, internal_range};

trait TokioStream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> TokioStream for T where T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

/// A connection that counts the bytes written to it (an invocation's egress, for usage). Bytes
/// the connection writes after the guest has ended (hyper finishing a body) are not seen by the
/// record, which is read when the guest ends.
struct Counted<S> {
    inner: S,
    written: Arc<crate::host::Shared>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written.egress.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.written.egress.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Rustls' client configuration with the webpki roots, built once per process (as cheap to share
/// as an `Arc`).
fn tls_config() -> Arc<tokio_rustls::rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = tokio_rustls::rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                tokio_rustls::rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// Resolve `authority` (`host:port`) and connect to the first resolved address the policy
/// permits, never to a denied one. All addresses denied: `DestinationIpProhibited`.
async fn connect_checked(policy: &NetPolicy, authority: &str) -> Result<TcpStream, Error> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| Error::DnsError { rcode: Some(e.to_string()), info_code: None })?
        .collect();
    let mut last_error = None;
    let mut denied = false;
    for addr in addrs {
        if !policy.permits(addr.ip()) {
            tracing::debug!(
                %authority, ip = %addr.ip(), range = internal_range(addr.ip()),
                "outbound connection denied by the operator's network policy"
            );
            denied = true;
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(Error::Connect(e)),
        None if denied => Err(Error::DestinationIpProhibited),
        None => Err(Error::DestinationNotFound),
    }
}

/// `wasmtime_wasi_http::default_send_request` with the connect step replaced by
/// [`connect_checked`].
pub(crate) async fn send_request(
    policy: Arc<NetPolicy>,
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    egress: Arc<crate::host::Shared>,
) -> Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error> {
    let uri = req.uri();
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
    let use_tls = uri.scheme() == Some(&Scheme::HTTPS);
    let authority = if authority.port().is_some() {
        authority.to_string()
    } else {
        format!("{authority}:{}", if use_tls { 443 } else { 80 })
    };
    let default = Duration::from_secs(600);
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(default);
    let first_byte_timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(default);
    let between_bytes_timeout = options.and_then(|o| o.between_bytes_timeout).unwrap_or(default);

    let stream = tokio::time::timeout(connect_timeout, connect_checked(&policy, &authority))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    // Counted below TLS: what leaves the node, as a network bill would count it.
    let stream = Counted { inner: stream, written: egress };
    let stream: Box<dyn TokioStream> = if use_tls {
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        let domain = tls_server_name(&authority)?;
        Box::new(connector.connect(domain, stream).await.map_err(Error::Tls)?)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request carries scheme and authority; on the wire (not to a proxy) only the path goes.
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .build()
        .expect("comes from a valid request");

    let send = async move {
        let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(Error::from)?;
        // Tokio panics on a zero interval.
        let between = between_bytes_timeout.max(Duration::from_nanos(1));
        let mut timeout = tokio::time::interval(between);
        timeout.reset();
        Ok(res.map(|incoming| IncomingResponseBody { incoming, timeout }.boxed_unsync()))
    };
    let mut send = pin!(send);
    let mut conn = Some(conn);
    // Wait for the response while driving the connection's I/O.
    let res = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let Some(fut) = conn.as_mut() else { return Poll::Pending };
            let res = ready!(Pin::new(fut).poll(cx));
            conn = None;
            match res {
                Ok(()) => send.as_mut().poll(cx),
                Err(err) => Poll::Ready(Err(Error::from(err))),
            }
        }
    })
    .await?;
    let io = async move {
        let Some(conn) = conn.take() else { return Ok(()) };
        match conn.await {
            Err(err) if err.is_timeout() => Err(Error::HttpResponseTimeout),
            Err(err) => Err(err.into()),
            Ok(()) => Ok(()),
        }
    };
    Ok((res, Box::new(io)))
}

/// The response body with the request options' between-bytes timeout.
struct IncomingResponseBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl Body for IncomingResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(err))) if err.is_timeout() => {
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

/// The TLS server name of `host:port` (an IP literal, bracketed for IPv6, or a DNS name).
fn tls_server_name(
    authority: &str,
) -> Result<tokio_rustls::rustls::pki_types::ServerName<'static>, Error> {
    use tokio_rustls::rustls::pki_types::ServerName;
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(ServerName::from(addr.ip()));
    }
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
    Ok(ServerName::try_from(host)?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn internal_ranges_are_denied_by_default() {
        let policy = NetPolicy::default();
        let denied = [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::7f00:1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
        ];
        for ip in denied {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(internal_range(ip).is_some(), "{ip} should be internal");
            assert!(!policy.permits(ip), "{ip} should be denied");
        }
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        for ip in public {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(internal_range(ip), None, "{ip} is public");
            assert!(policy.permits(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn the_operator_allows_networks_explicitly() {
        let policy =
            NetPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        for ip in ["127.0.0.1", "::ffff:127.0.0.1", "fd00::1", "8.8.8.8"] {
            assert!(policy.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["::1", "10.0.0.1", "169.254.169.254", "fe80::1"] {
            assert!(!policy.permits(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn connect_checks_the_resolved_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let deny = NetPolicy::default();
        let allow = NetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        // `localhost` is a name: only its resolved addresses say where it goes.
        for authority in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let err = connect_checked(&deny, &authority).await.unwrap_err();
            assert!(matches!(err, Error::DestinationIpProhibited), "{authority}: {err:?}");
        }
        let stream = connect_checked(&allow, &format!("localhost:{port}")).await.unwrap();
        assert!(stream.peer_addr().unwrap().ip().is_loopback());
    }
}
