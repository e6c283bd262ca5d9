//! The parameters of a forward that both ends share (the device connecting to the target, the
//! CLI listening locally), and how a target is shown. The protocol itself is documented with
//! the device's service (`m87_agent::services::forward`).

use std::time::Duration;

/// How long the device may take to connect to (or resolve) the target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP payload relayed; larger datagrams are dropped.
pub const MAX_DATAGRAM: usize = 65_507;
/// A UDP flow without a datagram either way for this long is closed.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// `host:port` as a user writes it (IPv6 addresses in brackets).
pub fn display_target(host: &str, port: u16) -> String {
    let host = bare_host(host);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host without IPv6 brackets, if a client sent them.
pub fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_targets_are_shown_in_brackets() {
        assert_eq!(display_target("::1", 80), "[::1]:80");
        assert_eq!(display_target("[::1]", 80), "[::1]:80");
        assert_eq!(display_target("db.local", 5432), "db.local:5432");
        assert_eq!(bare_host("[fe80::1]"), "fe80::1");
    }
}
