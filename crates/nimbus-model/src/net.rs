//! The operator's network policy for outbound connections to addresses users control: guests'
//! HTTP requests (`nimbus-runtime`) and push subscription endpoints (`nimbus-push`). Pure: it
//! classifies addresses; each sender resolves and connects to a checked address itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The operator's network policy for guests' outbound connections: internal ranges (see
/// [`internal_range`]) are denied unless the operator allows a network that contains them; any
/// other address is allowed (the function's host allow-list still applies first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    allowed: Vec<IpNet>,
}

impl NetPolicy {
    /// `allowed`: networks guests may reach even though they are internal (`127.0.0.0/8` for a
    /// test upstream on loopback, `10.1.2.0/24` for a service on the private network).
    pub fn new(allowed: Vec<IpNet>) -> Self {
        NetPolicy { allowed }
    }

    pub fn allowed_nets(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether a guest may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if internal_range(ip).is_none() {
            return true;
        }
        // An IPv4-mapped or -compatible form is allowed by the IPv4 network it stands for too.
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed.iter().any(|net| net.contains(&ip) || v4.is_some_and(|v4| net.contains(&v4)))
    }
}

/// The internal range `ip` falls in, by name, or `None` for a public address. Hand-written because
/// `std`'s `is_global`/`is_private` family is still unstable for most of these ranges.
pub fn internal_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            // `::a.b.c.d` (IPv4-compatible) is deprecated and unroutable: deny all of it.
            Some(v4) if is_v4_compatible(v6) => {
                Some(internal_v4(v4).unwrap_or("IPv4-compatible IPv6 (deprecated)"))
            }
            // Mapped and NAT64 forms reach the IPv4 host: classify that.
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (0, _) => "unspecified (0.0.0.0/8)",
        (127, _) => "loopback",
        (10, _) => "private (10.0.0.0/8)",
        (172, 16..=31) => "private (172.16.0.0/12)",
        (192, 168) => "private (192.168.0.0/16)",
        (169, 254) => "link-local (169.254.0.0/16, cloud metadata)",
        (100, 64..=127) => "shared address space (CGNAT, 100.64.0.0/10)",
        (224..=239, _) => "multicast",
        // 240.0.0.0/4 is reserved and includes the broadcast address 255.255.255.255.
        (240..=255, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if first & 0xfe00 == 0xfc00 {
        "unique local (fc00::/7)"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if first & 0xffc0 == 0xfec0 {
        "site-local (fec0::/10, deprecated)"
    } else if first & 0xff00 == 0xff00 {
        "multicast"
    } else {
        return None;
    })
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) or
/// NAT64 (`64:ff9b::a.b.c.d`) IPv6 address: each reaches that IPv4 host.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        // `::` and `::1` are the unspecified and loopback addresses, not IPv4-compatible ones.
        [0, 0, 0, 0, 0, 0, ..] if !ip.is_loopback() && !ip.is_unspecified() => Some(tail),
        _ => None,
    }
}

fn is_v4_compatible(ip: Ipv6Addr) -> bool {
    matches!(ip.segments(), [0, 0, 0, 0, 0, 0, ..])
}
