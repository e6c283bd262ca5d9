//! Forward specs as users write them: `8080`, `8080:80`, `8080:10.0.0.5:80`, `8080:[::1]:80`,
//! ranges `8000-8010` and `8000-8010:9000-9010`, each optionally with `/tcp` or `/udp`.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv6Addr;

use m87_events::tunnel::Channel;

/// The remote host of a spec without one: the device itself.
pub const DEVICE_HOST: &str = "127.0.0.1";

/// The transport of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP connections (the default).
    Tcp,
    /// UDP datagrams.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One forwarded port: a local port, and the host and port the device connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    /// The port to listen on locally.
    pub local_port: u16,
    /// The host as the device resolves it (IPv6 addresses without brackets);
    /// [`DEVICE_HOST`] for the device itself.
    pub remote_host: String,
    /// The port on that host.
    pub remote_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

impl ForwardSpec {
    /// The device's end as shown to users: `80/tcp` on the device itself, else
    /// `10.0.0.5:80/tcp` or `[::1]:80/udp`.
    pub fn remote_display(&self) -> String {
        if self.remote_host == DEVICE_HOST {
            format!("{}/{}", self.remote_port, self.proto)
        } else {
            format!("{}/{}", self.remote_target(), self.proto)
        }
    }

    /// `host:port` of the device's end (IPv6 in brackets).
    pub fn remote_target(&self) -> String {
        m87_transport::forward::display_target(&self.remote_host, self.remote_port)
    }

    /// The channel that opens one connection (TCP) or one flow (UDP) of this forward.
    pub fn channel(&self) -> Channel {
        let (host, port) = (self.remote_host.clone(), self.remote_port);
        match self.proto {
            Proto::Tcp => Channel::Forward { host, port },
            Proto::Udp => Channel::UdpForward { host, port },
        }
    }
}

/// The spec in the form [`parse_specs`] reads: `8080:10.0.0.5:80/tcp`.
impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.local_port,
            self.remote_target(),
            self.proto
        )
    }
}

/// Parses forward specs, expanding ranges. Each error is one line naming the bad spec.
pub fn parse_specs(specs: &[String]) -> anyhow::Result<Vec<ForwardSpec>> {
    let mut out: Vec<ForwardSpec> = vec![];
    let mut seen: HashMap<(u16, Proto), &str> = HashMap::new();
    for spec in specs {
        let parsed =
            parse_spec(spec).map_err(|why| anyhow::anyhow!("invalid forward {spec:?}: {why}"))?;
        for p in &parsed {
            if let Some(first) = seen.insert((p.local_port, p.proto), spec.as_str()) {
                let why = if first == spec.as_str() {
                    "it is given twice".to_owned()
                } else {
                    format!("{first:?} already uses it")
                };
                anyhow::bail!(
                    "invalid forward {spec:?}: local port {}/{} is forwarded twice ({why})",
                    p.local_port,
                    p.proto
                );
            }
        }
        out.extend(parsed);
    }
    Ok(out)
}

const EXAMPLES: &str = "expected e.g. 8080, 8080:80, 8080:10.0.0.5:80, 8000-8010 or 53:53/udp";

/// One spec, expanded; the error says what is wrong with it.
fn parse_spec(spec: &str) -> Result<Vec<ForwardSpec>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(format!("it is empty; {EXAMPLES}"));
    }
    let (body, proto) = match spec.rsplit_once('/') {
        Some((body, p)) if p.eq_ignore_ascii_case("tcp") => (body, Proto::Tcp),
        Some((body, p)) if p.eq_ignore_ascii_case("udp") => (body, Proto::Udp),
        Some((_, p)) => return Err(format!("unknown protocol {p:?} (use /tcp or /udp)")),
        None => (spec, Proto::Tcp),
    };
    let (local, host, remote) = split_body(body)?;
    let local = PortRange::parse(local)?;
    let remote = match remote {
        Some(r) => PortRange::parse(r)?,
        None => local,
    };
    if local.len() != remote.len() {
        return Err(format!(
            "local ports {local} ({} in all) and remote ports {remote} ({}) must be as many",
            local.len(),
            remote.len()
        ));
    }
    let host = match host {
        None => DEVICE_HOST.to_owned(),
        Some(h) => h.to_owned(),
    };
    Ok((0..local.len())
        .map(|i| ForwardSpec {
            local_port: local.nth(i),
            remote_host: host.clone(),
            remote_port: remote.nth(i),
            proto,
        })
        .collect())
}

/// `LOCAL`, `LOCAL:REMOTE`, `LOCAL:HOST:REMOTE` or `LOCAL:[IPV6]:REMOTE`.
fn split_body(body: &str) -> Result<(&str, Option<&str>, Option<&str>), String> {
    if let Some(open) = body.find('[') {
        let (local, rest) = body.split_at(open);
        let Some(local) = local.strip_suffix(':') else {
            return Err(format!(
                "a bracketed host comes after the local port, as in 8080:[::1]:80; {EXAMPLES}"
            ));
        };
        let Some((host, after)) = rest[1..].split_once(']') else {
            return Err("missing ']' after the IPv6 address".to_owned());
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("[{host}] is not an IPv6 address"));
        }
        let Some(remote) = after.strip_prefix(':') else {
            return Err(format!(
                "missing the remote port after [{host}], as in 8080:[{host}]:80"
            ));
        };
        return Ok((local, Some(host), Some(remote)));
    }
    let parts: Vec<&str> = body.split(':').collect();
    match parts.as_slice() {
        [local] => Ok((local, None, None)),
        [local, remote] => Ok((local, None, Some(remote))),
        [local, host, remote] => {
            check_host(host)?;
            Ok((local, Some(host), Some(remote)))
        }
        _ => Err(format!(
            "too many ':' (write IPv6 addresses in brackets, as in 8080:[::1]:80); {EXAMPLES}"
        )),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the remote host is empty".to_owned());
    }
    let ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok || host.starts_with(['.', '-']) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(())
}

/// A port or an inclusive range of ports.
#[derive(Debug, Clone, Copy)]
struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    fn parse(s: &str) -> Result<Self, String> {
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (parse_port(a)?, parse_port(b)?),
            None => {
                let p = parse_port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!(
                "port range {first}-{last} runs backwards (write {last}-{first})"
            ));
        }
        Ok(Self { first, last })
    }

    fn len(self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    fn nth(self, i: usize) -> u16 {
        // `i < len()`, so this stays within `first..=last`.
        self.first
            .saturating_add(u16::try_from(i).unwrap_or(u16::MAX))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("a port is missing".to_owned());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a port number"));
    }
    match s.parse::<u64>() {
        Ok(0) => Err("port 0 is not allowed (ports are 1-65535)".to_owned()),
        Ok(n) => u16::try_from(n).map_err(|_| format!("port {n} is out of range (1-65535)")),
        Err(_) => Err(format!("port {s} is out of range (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(specs: &[&str]) -> anyhow::Result<Vec<ForwardSpec>> {
        parse_specs(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn spec(local_port: u16, host: &str, remote_port: u16, proto: Proto) -> ForwardSpec {
        ForwardSpec {
            local_port,
            remote_host: host.into(),
            remote_port,
            proto,
        }
    }

    fn error(specs: &[&str]) -> String {
        parse(specs).unwrap_err().to_string()
    }

    #[test]
    fn one_port_forwards_the_same_port_on_the_device() {
        assert_eq!(
            parse(&["8080"]).unwrap(),
            vec![spec(8080, "127.0.0.1", 8080, Proto::Tcp)]
        );
    }

    #[test]
    fn local_and_remote_ports() {
        assert_eq!(
            parse(&["8080:80"]).unwrap(),
            vec![spec(8080, "127.0.0.1", 80, Proto::Tcp)]
        );
    }

    #[test]
    fn hosts_the_device_can_reach() {
        assert_eq!(
            parse(&["8080:10.0.0.5:80", "5432:db.local:5432", "9000:my_host-1:9"]).unwrap(),
            vec![
                spec(8080, "10.0.0.5", 80, Proto::Tcp),
                spec(5432, "db.local", 5432, Proto::Tcp),
                spec(9000, "my_host-1", 9, Proto::Tcp),
            ]
        );
    }

    #[test]
    fn ipv6_hosts_in_brackets() {
        assert_eq!(
            parse(&["8080:[::1]:80", "8081:[fd00::5]:443/udp"]).unwrap(),
            vec![
                spec(8080, "::1", 80, Proto::Tcp),
                spec(8081, "fd00::5", 443, Proto::Udp),
            ]
        );
    }

    #[test]
    fn protocol_suffixes() {
        assert_eq!(
            parse(&["53/udp", "53/tcp", "8053:53/UDP"]).unwrap(),
            vec![
                spec(53, "127.0.0.1", 53, Proto::Udp),
                spec(53, "127.0.0.1", 53, Proto::Tcp),
                spec(8053, "127.0.0.1", 53, Proto::Udp),
            ]
        );
    }

    #[test]
    fn ranges_expand_pairwise() {
        assert_eq!(
            parse(&["8000-8002"]).unwrap(),
            vec![
                spec(8000, "127.0.0.1", 8000, Proto::Tcp),
                spec(8001, "127.0.0.1", 8001, Proto::Tcp),
                spec(8002, "127.0.0.1", 8002, Proto::Tcp),
            ]
        );
        assert_eq!(
            parse(&["8000-8001:9000-9001/udp"]).unwrap(),
            vec![
                spec(8000, "127.0.0.1", 9000, Proto::Udp),
                spec(8001, "127.0.0.1", 9001, Proto::Udp),
            ]
        );
        assert_eq!(
            parse(&["7000-7001:10.0.0.5:80-81", "65535-65535:1"]).unwrap(),
            vec![
                spec(7000, "10.0.0.5", 80, Proto::Tcp),
                spec(7001, "10.0.0.5", 81, Proto::Tcp),
                spec(65535, "127.0.0.1", 1, Proto::Tcp),
            ]
        );
    }

    #[test]
    fn specs_print_in_the_form_they_are_read() {
        for s in [
            "8080:127.0.0.1:80/tcp",
            "8080:[::1]:80/udp",
            "1:db.local:2/tcp",
        ] {
            let parsed = parse(&[s]).unwrap();
            assert_eq!(parsed[0].to_string(), s);
        }
        let p = parse(&["8080:80", "8080:[::1]:80/udp", "9000:10.0.0.5:90"]).unwrap();
        assert_eq!(p[0].remote_display(), "80/tcp");
        assert_eq!(p[1].remote_display(), "[::1]:80/udp");
        assert_eq!(p[2].remote_display(), "10.0.0.5:90/tcp");
    }

    #[test]
    fn port_zero_is_refused() {
        assert_eq!(
            error(&["0"]),
            "invalid forward \"0\": port 0 is not allowed (ports are 1-65535)"
        );
        assert!(error(&["8080:0"]).starts_with("invalid forward \"8080:0\": port 0"));
        assert!(error(&["0-5"]).starts_with("invalid forward \"0-5\": port 0"));
    }

    #[test]
    fn ports_over_65535_are_refused() {
        assert_eq!(
            error(&["8080:70000"]),
            "invalid forward \"8080:70000\": port 70000 is out of range (1-65535)"
        );
        assert_eq!(
            error(&["99999999999999999999999"]),
            "invalid forward \"99999999999999999999999\": port 99999999999999999999999 is out of range (1-65535)"
        );
    }

    #[test]
    fn ranges_of_different_lengths_are_refused() {
        assert_eq!(
            error(&["8000-8010:9000-9005"]),
            "invalid forward \"8000-8010:9000-9005\": local ports 8000-8010 (11 in all) and remote ports 9000-9005 (6) must be as many"
        );
        assert!(error(&["8000-8010:80"]).contains("(11 in all) and remote ports 80 (1)"));
        assert!(error(&["80:8000-8001"]).contains("local ports 80 (1 in all)"));
        assert_eq!(
            error(&["8010-8000"]),
            "invalid forward \"8010-8000\": port range 8010-8000 runs backwards (write 8000-8010)"
        );
    }

    #[test]
    fn empty_specs_are_refused() {
        assert!(error(&[""]).starts_with("invalid forward \"\": it is empty; expected e.g."));
        assert!(error(&["  "]).contains("it is empty"));
        assert_eq!(
            error(&["8080:"]),
            "invalid forward \"8080:\": a port is missing"
        );
        assert_eq!(
            error(&[":80"]),
            "invalid forward \":80\": a port is missing"
        );
        assert_eq!(
            error(&["8080::80"]),
            "invalid forward \"8080::80\": the remote host is empty"
        );
        assert!(error(&["/udp"]).contains("a port is missing"));
        assert!(error(&["8000-"]).contains("a port is missing"));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            error(&["http"]),
            "invalid forward \"http\": \"http\" is not a port number"
        );
        assert_eq!(
            error(&["8080/sctp"]),
            "invalid forward \"8080/sctp\": unknown protocol \"sctp\" (use /tcp or /udp)"
        );
        assert_eq!(
            error(&["8080:some host:80"]),
            "invalid forward \"8080:some host:80\": \"some host\" is not a host name or IP address"
        );
        assert!(error(&["8080:::1:80"]).contains("write IPv6 addresses in brackets"));
        assert!(error(&["1:2:3:4"]).contains("too many ':'"));
        assert!(error(&["8080:[::1:80"]).contains("missing ']'"));
        assert!(error(&["8080:[nope]:80"]).contains("[nope] is not an IPv6 address"));
        assert!(error(&["8080:[::1]"]).contains("missing the remote port after [::1]"));
        assert!(error(&["[::1]:80"]).contains("a bracketed host comes after the local port"));
        assert!(error(&["-5"]).contains("a port is missing"));
        assert!(error(&["+80"]).contains("\"+80\" is not a port number"));
    }

    #[test]
    fn a_local_port_used_twice_is_refused() {
        assert_eq!(
            error(&["8080", "8080:81"]),
            "invalid forward \"8080:81\": local port 8080/tcp is forwarded twice (\"8080\" already uses it)"
        );
        assert!(error(&["8000-8010", "8005"]).contains("local port 8005/tcp is forwarded twice"));
        assert!(error(&["8080", "8080"]).ends_with("(it is given twice)"));
        // The same port over TCP and UDP is two different listeners.
        assert_eq!(parse(&["53/tcp", "53/udp"]).unwrap().len(), 2);
    }

    #[test]
    fn every_error_is_one_line() {
        for bad in [
            "",
            "0",
            "70000",
            "8000-8010:80",
            "x",
            "8080/x",
            "1:2:3:4",
            "8080:[x]:1",
            "a b",
        ] {
            let e = error(&[bad]);
            assert!(!e.contains('\n'), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
