//! The client's address: the TCP peer, or — only when the peer is a configured trusted proxy —
//! the address that proxy recorded in `X-Forwarded-For`.
//!
//! Off by default: with no trusted proxies the header is never read, so a client cannot choose
//! the address it is limited and recorded under. When the peer is trusted, the header is read
//! from the right (the hop nearest to us) and the first address that is not itself a trusted
//! proxy is the client: whatever a client writes to the left of that is ignored.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// The header a trusted proxy appends the client's address to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a trusted-proxy entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8 or ::1)")]
    Address(String),
    /// The prefix length is not a number within the address family's width.
    #[error("{0:?} has an invalid prefix length")]
    PrefixLength(String),
}

impl IpCidr {
    /// The block of `prefix_len` leading bits of `addr`.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let addr = addr.to_canonical();
        (prefix_len <= width(addr)).then(|| Self {
            network: mask(addr, prefix_len),
            prefix_len,
        })
    }

    /// Whether `ip` is inside this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        width(ip) == width(self.network) && mask(ip, self.prefix_len) == self.network
    }
}

impl FromStr for IpCidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address(s.into()))?;
        let len = match len {
            Some(l) => l.parse().map_err(|_| CidrError::PrefixLength(s.into()))?,
            None => width(addr.to_canonical()),
        };
        Self::new(addr, len).ok_or_else(|| CidrError::PrefixLength(s.into()))
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn width(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & kept))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & kept))
        }
    }
}

/// The prefix an address is limited with besides itself: its IPv4 /24 or its IPv6 /64.
pub fn prefix_of(ip: IpAddr) -> IpAddr {
    let ip = ip.to_canonical();
    match ip {
        IpAddr::V4(_) => mask(ip, 24),
        IpAddr::V6(_) => mask(ip, 64),
    }
}

/// The proxies whose `X-Forwarded-For` is believed (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpCidr>);

impl TrustedProxies {
    /// Trusts the proxies in `blocks`.
    pub fn new(blocks: Vec<IpCidr>) -> Self {
        Self(blocks)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|b| b.contains(ip))
    }

    /// The trusted blocks.
    pub fn blocks(&self) -> &[IpCidr] {
        &self.0
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client's address for a request from `peer` with `headers`: `peer` itself unless it
    /// is a trusted proxy; then the right-most `X-Forwarded-For` address that is not a trusted
    /// proxy (the left-most one when every hop is trusted; the nearest one read when the next
    /// entry is not an address).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

impl FromStr for TrustedProxies {
    type Err = CidrError;

    /// A comma-separated list of addresses and CIDR blocks; empty for none.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<IpCidr>, _>>()
            .map(Self)
    }
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or
/// `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cidr_parses_blocks_and_single_addresses() {
        let b: IpCidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(b.to_string(), "10.0.0.0/8");
        assert!(b.contains(ip("10.200.0.1")));
        assert!(b.contains(ip("::ffff:10.9.9.9")));
        assert!(!b.contains(ip("11.0.0.1")));
        let one: IpCidr = "::1".parse().unwrap();
        assert_eq!(one.to_string(), "::1/128");
        assert!(one.contains(ip("::1")) && !one.contains(ip("127.0.0.1")));
        assert!(
            "0.0.0.0/0"
                .parse::<IpCidr>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<IpCidr>(),
            Err(CidrError::PrefixLength(_))
        ));
        assert!(matches!(
            "proxy".parse::<IpCidr>(),
            Err(CidrError::Address(_))
        ));
    }

    #[test]
    fn trusted_proxies_parse_from_a_list() {
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        let t: TrustedProxies = "10.0.0.0/8, ::1".parse().unwrap();
        assert!(t.trusts(ip("10.1.1.1")) && t.trusts(ip("::1")) && !t.trusts(ip("11.0.0.1")));
        assert!("10.0.0.0/8,nope".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn prefixes_are_v4_24_and_v6_64() {
        assert_eq!(prefix_of(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(prefix_of(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(prefix_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn header_of_an_untrusted_peer_is_ignored() {
        let t = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            t.client_ip(ip("192.0.2.1"), &xff(&["203.0.113.9"])),
            ip("192.0.2.1")
        );
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("10.0.0.1"), &xff(&["203.0.113.9"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        let t = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        // The client forged the left entry; the proxy appended what it saw.
        let h = xff(&["6.6.6.6, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(t.client_ip(peer, &h), ip("203.0.113.9"));
        // Several header lines are one list, in order.
        let h = xff(&["6.6.6.6", "[2001:db8::5]:4711", "10.0.0.2:80"]);
        assert_eq!(t.client_ip(peer, &h), ip("2001:db8::5"));
        // No header: the proxy itself.
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        // Garbage next to us: the nearest address read.
        assert_eq!(t.client_ip(peer, &xff(&["unknown"])), peer);
        assert_eq!(
            t.client_ip(peer, &xff(&["unknown, 10.0.0.3"])),
            ip("10.0.0.3")
        );
        // Every hop trusted: the left-most.
        assert_eq!(
            t.client_ip(peer, &xff(&["10.0.0.4, 10.0.0.3"])),
            ip("10.0.0.4")
        );
    }
}
