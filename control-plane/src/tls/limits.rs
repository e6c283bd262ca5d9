//! The limits of the HTTPS listener, in one place, and the connection caps (global and per
//! source address) that enforce two of them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the HTTPS listener allows a client. Every HTTPS listener of the control plane (the
/// public REST API and the internal relay API it also serves) uses these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// HTTP/1: how long a client may take to send a request's line and headers.
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive, counted from when its headers were read;
    /// a body still incomplete then is answered 408 (`request_timeout`).
    pub request_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed (HTTP/1 keep-alive and
    /// HTTP/2 alike, and a connection that never sends a request).
    pub idle_timeout: Duration,
    /// HTTP/2: the server pings a connection this often…
    pub h2_keep_alive_interval: Duration,
    /// …and closes it when a ping is not answered within this long.
    pub h2_keep_alive_timeout: Duration,
    /// HTTP/2: streams (requests) a connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Largest request head (request line and headers, HTTP/1; the decoded header list,
    /// HTTP/2); a larger one is answered 431. HTTP/1 cannot go below 8 KiB.
    pub max_header_bytes: usize,
    /// Connections open at once, from everyone; over it, new connections are closed at once.
    pub max_connections: usize,
    /// Connections open at once from one source address (an IPv6 address counts with its /64);
    /// over it, new connections from there are closed at once.
    pub max_connections_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(15),
            request_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            h2_keep_alive_interval: Duration::from_secs(20),
            h2_keep_alive_timeout: Duration::from_secs(20),
            h2_max_concurrent_streams: 100,
            max_header_bytes: 16 * 1024,
            max_connections: 4096,
            max_connections_per_address: 128,
        }
    }
}

/// Which connection cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// [`HttpLimits::max_connections`].
    Global,
    /// [`HttpLimits::max_connections_per_address`].
    PerAddress,
}

/// At most one refusal log line per cap in this period; the next line says how many it
/// left out.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts open connections, globally and per source address, and refuses those over a cap.
#[derive(Debug)]
pub(super) struct ConnectionCaps {
    global: Arc<Semaphore>,
    max_connections: u32,
    per_address: Arc<PerAddress>,
    refusals: [RefusalLog; 2],
}

#[derive(Debug)]
struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A place among the open connections; given back when dropped.
#[derive(Debug)]
pub(super) struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    per_address: Arc<PerAddress>,
    key: IpAddr,
}

impl ConnectionCaps {
    /// Caps from `limits`.
    pub(super) fn new(limits: &HttpLimits) -> Self {
        let max_connections =
            u32::try_from(limits.max_connections.clamp(1, 1 << 24)).unwrap_or(1 << 24);
        Self {
            global: Arc::new(Semaphore::new(max_connections as usize)),
            max_connections,
            per_address: Arc::new(PerAddress {
                max: limits.max_connections_per_address.max(1),
                open: Mutex::new(HashMap::new()),
            }),
            refusals: [RefusalLog::default(), RefusalLog::default()],
        }
    }

    /// A place for a connection from `peer`, or the cap that is reached (logged, at most once
    /// per cap every 10 s).
    pub(super) fn admit(&self, peer: SocketAddr) -> Result<ConnectionPermit, Cap> {
        let cap = match self.try_admit(peer.ip()) {
            Ok(permit) => return Ok(permit),
            Err(cap) => cap,
        };
        let (index, limit) = match cap {
            Cap::Global => (0, self.max_connections as usize),
            Cap::PerAddress => (1, self.per_address.max),
        };
        if let Some(left_out) = self.refusals[index].should_log() {
            let which = match cap {
                Cap::Global => "global",
                Cap::PerAddress => "per-address",
            };
            tracing::warn!(
                cap = which,
                limit,
                %peer,
                refusals_not_logged = left_out,
                "connection cap reached: closing new connections at once"
            );
        }
        Err(cap)
    }

    fn try_admit(&self, ip: IpAddr) -> Result<ConnectionPermit, Cap> {
        let global = Arc::clone(&self.global)
            .try_acquire_owned()
            .map_err(|_| Cap::Global)?;
        let key = address_key(ip);
        let mut open = self.per_address.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= self.per_address.max {
            return Err(Cap::PerAddress);
        }
        *count += 1;
        Ok(ConnectionPermit {
            _global: global,
            per_address: Arc::clone(&self.per_address),
            key,
        })
    }

    /// Waits until every connection admitted so far has closed.
    pub(super) async fn all_closed(&self) {
        let _all = self.global.acquire_many(self.max_connections).await;
    }
}

impl PerAddress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.per_address.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The address a connection counts against: IPv4 as it is (also when IPv4-mapped), IPv6 by
/// its /64, which one subscriber usually holds whole.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// When a cap's refusal was last logged, and how many refusals went unlogged since.
#[derive(Debug, Default)]
struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// `Some(refusals left out since the last line)` when this refusal is to be logged.
    fn should_log(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, left_out) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY) {
            *left_out += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_connections_per_address: usize) -> HttpLimits {
        HttpLimits {
            max_connections,
            max_connections_per_address,
            ..HttpLimits::default()
        }
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(
            s.parse()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            1,
        )
    }

    #[test]
    fn a_cap_refuses_until_a_place_is_given_back() {
        let caps = ConnectionCaps::new(&limits(3, 2));
        let a1 = caps.admit(peer("192.0.2.1")).ok();
        let a2 = caps.admit(peer("192.0.2.1")).ok();
        assert!(a1.is_some() && a2.is_some());
        assert_eq!(caps.admit(peer("192.0.2.1")).err(), Some(Cap::PerAddress));
        let b1 = caps.admit(peer("192.0.2.2")).ok();
        assert!(b1.is_some());
        assert_eq!(caps.admit(peer("192.0.2.3")).err(), Some(Cap::Global));
        drop(a1);
        assert!(caps.admit(peer("192.0.2.1")).is_ok());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let caps = ConnectionCaps::new(&limits(10, 1));
        let _a = caps.admit(peer("2001:db8:1:2::1")).ok();
        assert_eq!(
            caps.admit(peer("2001:db8:1:2:ffff::9")).err(),
            Some(Cap::PerAddress)
        );
        assert!(caps.admit(peer("2001:db8:1:3::1")).is_ok());
        let _v4 = caps.admit(peer("192.0.2.7")).ok();
        assert_eq!(
            caps.admit(peer("::ffff:192.0.2.7")).err(),
            Some(Cap::PerAddress)
        );
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_period() {
        let log = RefusalLog::default();
        assert_eq!(log.should_log(), Some(0));
        assert_eq!(log.should_log(), None);
        assert_eq!(log.should_log(), None);
    }
}
