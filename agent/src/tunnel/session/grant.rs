//! What a session's grant lets its channels do, and how a channel is told in the session's
//! closing report: the device's own check of every channel against the signed token.

use m87_events::token::SessionClaims;
use m87_events::tunnel::Channel;

/// What a channel is, for its summary: a kind and a target.
pub(super) fn describe(channel: &Channel) -> (&'static str, String) {
    match channel {
        Channel::Exec { argv, .. } => ("exec", argv.join(" ")),
        Channel::Shell { .. } => ("shell", String::new()),
        Channel::Forward { host, port } => ("forward", format!("{host}:{port}")),
        Channel::UdpForward { host, port } => ("udp_forward", format!("{host}:{port}")),
        Channel::Files(f) => {
            let kind = match f {
                m87_events::tunnel::files::FileChannel::Push { .. } => "upload",
                m87_events::tunnel::files::FileChannel::Pull { .. } => "download",
                m87_events::tunnel::files::FileChannel::Sync { .. } => "sync",
            };
            (kind, f.path().to_owned())
        }
        Channel::UnixForward { path } => ("unix_forward", path.clone()),
        Channel::Docker => ("docker", String::new()),
        Channel::Logs(r) => ("logs", log_target(&r.source)),
        Channel::Metrics { interval_ms } => ("metrics", format!("every {interval_ms} ms")),
        Channel::Serial(s) => ("serial", format!("{} at {} baud", s.path, s.baud)),
        Channel::Status => ("status", String::new()),
        Channel::List(r) => ("ls", r.path.clone()),
        Channel::Ssh { user } => ("ssh", user.clone().unwrap_or_default()),
    }
}

fn log_target(source: &m87_events::tunnel::logs::LogSource) -> String {
    use m87_events::tunnel::logs::LogSource;
    match source {
        LogSource::Runtime => "runtime".into(),
        LogSource::Unit { name } => format!("unit {name}"),
        LogSource::Container { name } => format!("container {name}"),
    }
}

/// Whether the grant's arguments are exactly this channel's request.
fn same_request<T: serde::de::DeserializeOwned + PartialEq>(
    args: &serde_json::Value,
    asked: &T,
) -> bool {
    serde_json::from_value::<T>(args.clone()).ok().as_ref() == Some(asked)
}

/// Whether the session's token allows this channel.
pub(super) fn allowed(claims: &SessionClaims, channel: &Channel) -> Result<(), String> {
    if channel.operation() != claims.op {
        return Err(format!(
            "this session allows {}, not {}",
            claims.op.as_str(),
            channel.operation().as_str()
        ));
    }
    let args = &claims.args;
    match channel {
        Channel::Exec { argv, tty } => {
            let granted: Option<Vec<String>> = args
                .get("argv")
                .and_then(|a| serde_json::from_value(a.clone()).ok());
            if granted.as_ref() != Some(argv) {
                return Err("this session was granted for another command".into());
            }
            // A terminal must be asked for in the grant: the recording policy applies to it.
            if tty.is_some() && args.get("tty").and_then(|t| t.as_bool()) != Some(true) {
                return Err(
                    "this session was granted without a terminal (update m87 to use exec -t)"
                        .into(),
                );
            }
        }
        Channel::Forward { .. } | Channel::UdpForward { .. } | Channel::UnixForward { .. } => {
            return forward_allowed(args, channel);
        }
        Channel::Files(f) => {
            if args.get("path").and_then(|p| p.as_str()) != Some(f.path()) {
                return Err("this session was granted for another path".into());
            }
        }
        Channel::Shell { .. } | Channel::Docker | Channel::Status => {}
        Channel::Ssh { user } => {
            let granted = args.get("user").and_then(|u| u.as_str());
            if granted != user.as_deref() {
                return Err("this session was granted for another SSH login".into());
            }
        }
        Channel::Logs(_) | Channel::Serial(_) | Channel::List(_) | Channel::Metrics { .. } => {
            return request_allowed(args, channel);
        }
    }
    Ok(())
}

/// Whether a granted forward target is the one a channel asks for.
type TargetMatch<'a> = dyn Fn(&serde_json::Value) -> bool + 'a;

/// Whether a forward's target is among the granted ones (host, port and protocol; or a unix
/// socket's path).
fn forward_allowed(args: &serde_json::Value, channel: &Channel) -> Result<(), String> {
    let str_of =
        |t: &serde_json::Value, k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (wanted, shown): (Box<TargetMatch<'_>>, String) = match channel {
        Channel::UnixForward { path } => (
            Box::new(move |t| {
                str_of(t, "proto").as_deref() == Some("unix")
                    && str_of(t, "path").as_ref() == Some(path)
            }),
            path.clone(),
        ),
        Channel::Forward { host, port } | Channel::UdpForward { host, port } => {
            let proto = if matches!(channel, Channel::UdpForward { .. }) {
                "udp"
            } else {
                "tcp"
            };
            (
                Box::new(move |t| {
                    str_of(t, "host").as_ref() == Some(host)
                        && t.get("port").and_then(|p| p.as_u64()) == Some(u64::from(*port))
                        && str_of(t, "proto").as_deref().unwrap_or("tcp") == proto
                }),
                format!("{host}:{port}/{proto}"),
            )
        }
        _ => return Err("not a forward".into()),
    };
    let ok = args
        .get("targets")
        .and_then(|t| t.as_array())
        .is_some_and(|targets| targets.iter().any(&*wanted));
    if ok {
        Ok(())
    } else {
        Err(format!("this session does not allow forwarding to {shown}"))
    }
}

/// Whether a logs, serial, ls or metrics channel asks for exactly what was granted.
fn request_allowed(args: &serde_json::Value, channel: &Channel) -> Result<(), String> {
    let (same, what) = match channel {
        Channel::Logs(r) => (same_request(args, r), "another log"),
        Channel::Serial(s) => (same_request(args, s), "another serial port or settings"),
        Channel::List(r) => (same_request(args, r), "another path"),
        Channel::Metrics { interval_ms } => (
            args.get("interval_ms").and_then(|i| i.as_u64()) == Some(u64::from(*interval_ms)),
            "another sampling interval",
        ),
        _ => (false, "another operation"),
    };
    if same {
        Ok(())
    } else {
        Err(format!("this session was granted for {what}"))
    }
}
