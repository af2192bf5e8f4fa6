//! The client address that per-IP rate limits count against.
//!
//! Behind a reverse proxy every request comes from the proxy, so one abusive client would
//! exhaust everybody's budget. Operators list their proxies (`--trusted-proxy`); only then is
//! `X-Forwarded-For` believed, and only the hops those proxies appended: a client can prepend
//! anything it likes to the header, so it is read from the right.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use http::HeaderMap;
use http::request::Parts;
use ipnet::IpNet;

use crate::app::AppState;
use crate::error::ApiError;

/// Extracts the client's address (see [`client_ip`]).
pub(crate) struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or_else(|| ApiError::internal(&"the connection's peer address is unknown"))?;
        Ok(ClientIp(client_ip(&state.trusted_proxies, peer, &parts.headers)))
    }
}

pub(crate) fn client_ip(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Hops in the order they were appended, across repeated headers; walk back from the last.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // An unparsable hop was written by someone we cannot vouch for: stop at the last
        // address a trusted proxy gave us.
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peers_are_taken_at_their_word_only_for_themselves() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(&trusted, ip("203.0.113.9"), &xff(&["1.2.3.4"])), ip("203.0.113.9"));
        assert_eq!(client_ip(&[], ip("10.0.0.1"), &xff(&["1.2.3.4"])), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_proxies_are_peeled_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let peer = ip("10.0.0.1");
        // The client forged the first entry; the proxy appended the real address.
        assert_eq!(client_ip(&trusted, peer, &xff(&["6.6.6.6, 198.51.100.7"])), ip("198.51.100.7"));
        // Two proxies in a chain, over two header lines.
        assert_eq!(
            client_ip(&trusted, peer, &xff(&["198.51.100.7", "10.1.2.3"])),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(&trusted, ip("::1"), &xff(&["2001:db8::5"])), ip("2001:db8::5"));
        // No header: the proxy itself.
        assert_eq!(client_ip(&trusted, peer, &HeaderMap::new()), peer);
        // Garbage after a good hop: stop at the good hop.
        assert_eq!(client_ip(&trusted, peer, &xff(&["198.51.100.7, 10.9.9.9, junk"])), peer);
        assert_eq!(client_ip(&trusted, peer, &xff(&["junk, 198.51.100.7"])), ip("198.51.100.7"));
    }
}
