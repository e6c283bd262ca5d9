//! The gate in front of authentication: how much a peer gets from the relay before its first
//! message proved who it is (a tunnel's device key checked, a session's token admitted, a relay
//! link's secret matched).
//!
//! - At most [`MAX_UNAUTHENTICATED`] connections are unauthenticated at once (in their QUIC
//!   handshake or waiting for their first message), and at most
//!   [`MAX_UNAUTHENTICATED_PER_ADDRESS`] from one IP address; a connection attempt over either
//!   cap is refused (QUIC `CONNECTION_REFUSED`), with a warning at most every
//!   [`REFUSAL_LOG_EVERY`].
//! - Once [`RETRY_THRESHOLD`] connections are unauthenticated, a new attempt from an address
//!   not yet validated gets a QUIC Retry first: a spoofed source never gets a slot, and the
//!   relay keeps no state for it.
//! - An unauthenticated connection runs with the small limits of
//!   [`m87_transport::quic::server_transport_config`] (2 streams, 64 KiB connection window),
//!   its datagrams are discarded, and it is closed [`AUTH_DEADLINE`] after its handshake if its
//!   first message has not authenticated it by then. [`Unauthenticated::authenticated`] raises
//!   the limits to the full ones and frees the slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::io::{CLOSE_UNAUTHENTICATED, HEADER_TIMEOUT};

/// Connections that may be unauthenticated at once, relay-wide.
pub const MAX_UNAUTHENTICATED: usize = 1024;
/// Connections that may be unauthenticated at once from one IP address.
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 128;
/// Unauthenticated connections from which on a new attempt must prove its address (QUIC Retry).
pub const RETRY_THRESHOLD: usize = 64;
/// How long after its handshake a connection has to authenticate. Two seconds longer than
/// each stage's own limit ([`HEADER_TIMEOUT`]: open the first stream, send the first frame), so
/// a silent peer is closed by that stage with its specific reason ("no relay hello", …), and
/// this deadline bounds a peer that dawdles through several stages.
pub const AUTH_DEADLINE: Duration = HEADER_TIMEOUT.saturating_add(Duration::from_secs(2));
/// The shortest time between two warnings about refused connections.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The relay's count of unauthenticated connections (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct Gate {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    counts: Mutex<Counts>,
    /// Attempts refused over a cap, and since the last warning.
    refused: AtomicU64,
    last_warning: Mutex<Option<(Instant, u64)>>,
    /// Attempts asked to validate their address.
    retried: AtomicU64,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// What to do with a connection attempt.
pub(crate) enum Admission {
    /// Accept it; it holds a slot until it authenticates or ends.
    Accept(Unauthenticated),
    /// Ask it to prove its address first (QUIC Retry).
    Retry,
    /// Refuse it: a cap is reached.
    Refuse,
}

impl Gate {
    /// Decides on a connection attempt from `remote`; `validated` tells whether its address is
    /// proven (it came back with a Retry token) and `may_retry` whether a Retry can be asked.
    pub(crate) fn admit(&self, remote: IpAddr, validated: bool, may_retry: bool) -> Admission {
        let mut counts = lock(&self.inner.counts);
        if counts.total >= RETRY_THRESHOLD && !validated && may_retry {
            drop(counts);
            self.inner.retried.fetch_add(1, Ordering::Relaxed);
            return Admission::Retry;
        }
        let from_remote = counts.by_address.get(&remote).copied().unwrap_or(0);
        if counts.total >= MAX_UNAUTHENTICATED || from_remote >= MAX_UNAUTHENTICATED_PER_ADDRESS {
            drop(counts);
            self.refused(remote);
            return Admission::Refuse;
        }
        counts.total += 1;
        *counts.by_address.entry(remote).or_insert(0) += 1;
        Admission::Accept(Unauthenticated {
            gate: self.clone(),
            remote,
            watch: None,
        })
    }

    /// Counts a refusal; warns at most every [`REFUSAL_LOG_EVERY`].
    fn refused(&self, remote: IpAddr) {
        let total = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = lock(&self.inner.last_warning);
        let due = last.is_none_or(|(at, _)| at.elapsed() >= REFUSAL_LOG_EVERY);
        if due {
            let since = total - last.map_or(0, |(_, n)| n);
            *last = Some((Instant::now(), total));
            let (now, from) = {
                let counts = lock(&self.inner.counts);
                (
                    counts.total,
                    counts.by_address.get(&remote).copied().unwrap_or(0),
                )
            };
            tracing::warn!(
                %remote,
                refused = since,
                refused_total = total,
                unauthenticated = now,
                from_address = from,
                max = MAX_UNAUTHENTICATED,
                max_per_address = MAX_UNAUTHENTICATED_PER_ADDRESS,
                "refusing connections: too many unauthenticated connections"
            );
        }
    }

    /// Attempts refused over a cap so far.
    pub(crate) fn refused_total(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Attempts asked to validate their address so far.
    pub(crate) fn retried_total(&self) -> u64 {
        self.inner.retried.load(Ordering::Relaxed)
    }

    /// Connections unauthenticated now.
    pub(crate) fn unauthenticated(&self) -> usize {
        lock(&self.inner.counts).total
    }

    fn release(&self, remote: IpAddr) {
        let mut counts = lock(&self.inner.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&remote) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_address.remove(&remote);
            }
        }
    }
}

/// A connection that has not authenticated yet: it holds its slot until it authenticates or is
/// dropped.
pub(crate) struct Unauthenticated {
    gate: Gate,
    remote: IpAddr,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Unauthenticated {
    /// The handshake is done: discards the connection's datagrams and closes it at
    /// [`AUTH_DEADLINE`], unless it authenticates first.
    pub(crate) fn watch(&mut self, conn: &quinn::Connection) {
        let conn = conn.clone();
        self.watch = Some(tokio::spawn(async move {
            let discard = async { while conn.read_datagram().await.is_ok() {} };
            if tokio::time::timeout(AUTH_DEADLINE, discard).await.is_err() {
                tracing::debug!(remote = %conn.remote_address(), "not authenticated in time");
                conn.close(CLOSE_UNAUTHENTICATED, b"not authenticated in time");
            }
        }));
    }

    /// The peer's first message authenticated it: full limits, and the slot is free.
    pub(crate) fn authenticated(self, conn: &quinn::Connection) {
        m87_transport::quic::grant_full_limits(conn);
        drop(self);
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
        self.gate.release(self.remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_is_capped_and_others_still_get_in() {
        let gate = Gate::default();
        let held: Vec<_> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS)
            .map(|_| match gate.admit(ip(1), true, true) {
                Admission::Accept(u) => u,
                _ => panic!("refused under the cap"),
            })
            .collect();
        assert!(matches!(gate.admit(ip(1), true, true), Admission::Refuse));
        assert!(matches!(
            gate.admit(ip(2), true, true),
            Admission::Accept(_)
        ));
        assert_eq!(gate.refused_total(), 1);
        drop(held);
        assert_eq!(gate.unauthenticated(), 0);
        assert!(matches!(
            gate.admit(ip(1), true, true),
            Admission::Accept(_)
        ));
    }

    #[test]
    fn over_the_threshold_unvalidated_addresses_are_retried() {
        let gate = Gate::default();
        let _held: Vec<_> = (0..RETRY_THRESHOLD)
            .map(|i| gate.admit(ip(i as u8), false, true))
            .collect();
        assert!(matches!(gate.admit(ip(200), false, true), Admission::Retry));
        assert!(matches!(
            gate.admit(ip(200), true, false),
            Admission::Accept(_)
        ));
        assert!(matches!(
            gate.admit(ip(201), false, false),
            Admission::Accept(_)
        ));
        assert_eq!(gate.retried_total(), 1);
    }

    #[test]
    fn the_global_cap_holds() {
        let gate = Gate::default();
        let _held: Vec<_> = (0..MAX_UNAUTHENTICATED)
            .map(|i| gate.admit(IpAddr::from((i as u32 + 1).to_be_bytes()), true, true))
            .collect();
        assert_eq!(gate.unauthenticated(), MAX_UNAUTHENTICATED);
        assert!(matches!(gate.admit(ip(1), true, true), Admission::Refuse));
    }
}
