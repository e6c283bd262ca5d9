//! The streams the relay opens on the tunnel: a session's control stream (`SessionOpen`, the
//! token verified again here) or an operation within an accepted session (`OpenChannel`,
//! checked against what the token allows), with the reports to the control plane.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use m87_events::admission::{AdmissionState, RefusalCode, admit};
use m87_events::api::{
    ChannelSummary, MAX_CHANNEL_SUMMARIES, SessionClosedReport, SessionRefusedReport,
};
use m87_events::token::{SessionClaims, SessionVerifier, now_unix};
use m87_events::tunnel::{Channel, Control, ExitStatus, Frame};
use m87_events::{DeviceId, SessionId};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::services::shell::record::Recorder;
use crate::services::{self, BoxRead, BoxWrite, ServiceContext};
use m87_transport::frames::{FrameReader, write_control, write_refusal};
use m87_transport::http::ApiClient;

use super::io::{Counting, LeftoverThen};

/// An accepted session on this device.
pub(super) struct ActiveSession {
    claims: SessionClaims,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    last_exit: Mutex<Option<ExitStatus>>,
    last_error: Mutex<Option<String>>,
    /// The first [`MAX_CHANNEL_SUMMARIES`] channels, as they go.
    channels: Mutex<Vec<ChannelRecord>>,
    /// Channels past the first [`MAX_CHANNEL_SUMMARIES`].
    channels_dropped: AtomicU64,
    /// Records its terminal, when the grant asks for it.
    recorder: Option<Arc<Recorder>>,
}

/// One channel of a session, for its summary in the closing report.
struct ChannelRecord {
    kind: &'static str,
    target: String,
    started: Instant,
    to_device: Arc<AtomicU64>,
    from_device: Arc<AtomicU64>,
    ended: Option<(u64, Option<String>)>,
}

impl ChannelRecord {
    fn summary(&self) -> ChannelSummary {
        let (duration_ms, error) = match &self.ended {
            Some((d, e)) => (*d, e.clone()),
            None => (self.started.elapsed().as_millis() as u64, None),
        };
        ChannelSummary {
            kind: self.kind.to_owned(),
            target: self.target.clone(),
            bytes_to_device: self.to_device.load(Ordering::Relaxed),
            bytes_from_device: self.from_device.load(Ordering::Relaxed),
            duration_ms,
            error,
        }
    }
}

/// What a channel is, for its summary: a kind and a target.
fn describe(channel: &Channel) -> (&'static str, String) {
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

/// What the device remembers of the sessions it admitted (their ids, until their tokens
/// expire), shared by every tunnel connection of the runtime.
pub(super) type SeenSessions = Arc<Mutex<AdmissionState>>;

/// State of one tunnel connection (what it admitted is shared by the runtime's connections).
pub(super) struct TunnelState {
    pub(super) device_id: DeviceId,
    pub(super) verifier: SessionVerifier,
    pub(super) api: ApiClient,
    pub(super) sessions: Mutex<HashMap<SessionId, Arc<ActiveSession>>>,
    /// Session ids already used (replay protection), shared by every connection of the
    /// runtime.
    pub(super) admission: SeenSessions,
    pub(super) ctx: ServiceContext,
}

pub(super) async fn handle_stream(
    state: Arc<TunnelState>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut reader = FrameReader::new(Box::new(recv) as BoxRead);
    let header = match tokio::time::timeout(
        std::time::Duration::from_secs(m87_events::tunnel::HEADER_TIMEOUT_SECS),
        reader.control(),
    )
    .await
    {
        Ok(Ok(Some(h))) => h,
        _ => {
            let _ = send.reset(quinn::VarInt::from_u32(1));
            return;
        }
    };
    match header {
        Control::SessionOpen { token } => open_session(state, token, reader, send).await,
        Control::OpenChannel {
            session_id,
            channel,
        } => open_channel(state, session_id, channel, reader, send).await,
        _ => {
            let code = RefusalCode::Protocol.as_str();
            let _ = write_refusal(&mut send, code, "unexpected stream header").await;
            let _ = send.finish();
        }
    }
}

async fn refuse<W: AsyncWrite + Unpin>(
    state: &TunnelState,
    send: &mut W,
    session_id: Option<SessionId>,
    code: RefusalCode,
    reason: &str,
) {
    let code = code.as_str();
    let _ = write_refusal(send, code, reason).await;
    let _ = send.shutdown().await;
    tracing::warn!(code, reason, "session refused");
    let report = SessionRefusedReport {
        session_id,
        code: code.to_owned(),
        reason: reason.to_owned(),
    };
    let api = state.api.clone();
    tokio::spawn(async move {
        if let Err(e) = api
            .post_no_content("/v1/device/sessions/refused", &report)
            .await
        {
            tracing::warn!(error = %e, "cannot report a refused session");
        }
    });
}

async fn open_session<W: AsyncWrite + Unpin + Send + 'static>(
    state: Arc<TunnelState>,
    token: String,
    mut reader: FrameReader<BoxRead>,
    mut send: W,
) {
    // Decide...
    let decision = {
        let mut admission = state.admission.lock().unwrap_or_else(|p| p.into_inner());
        admit(
            &state.verifier,
            &mut admission,
            &token,
            Some(&state.device_id),
            now_unix(),
        )
    };
    // ...then act.
    let claims = match decision {
        Ok(c) => c,
        Err(r) => {
            refuse(&state, &mut send, r.session, r.code, &r.reason).await;
            return;
        }
    };
    let sid = claims.sid;
    let recorder = claims.rec.then(|| {
        Arc::new(Recorder::new(
            &std::env::temp_dir(),
            &sid.to_string(),
            format!("{} on {}: {}", claims.sub, claims.dev, claims.op.as_str()),
            crate::services::shell::record::max_bytes_from_env(),
        ))
    });
    let session = Arc::new(ActiveSession {
        claims,
        recorder,
        started: Instant::now(),
        bytes_in: Arc::default(),
        bytes_out: Arc::default(),
        last_exit: Mutex::new(None),
        last_error: Mutex::new(None),
        channels: Mutex::new(Vec::new()),
        channels_dropped: AtomicU64::new(0),
    });
    state
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(sid, Arc::clone(&session));
    tracing::info!(session = %sid, op = session.claims.op.as_str(), by = %session.claims.sub, recorded = session.claims.rec, "session accepted");
    let mut ended_by = "relay_lost".to_owned();
    if write_control(&mut send, &Control::SessionAccepted { session_id: sid })
        .await
        .is_ok()
    {
        ended_by = session_end(&mut reader).await;
    }
    let _ = send.shutdown().await;
    state
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&sid);
    let report = session.closed_report(ended_by);
    tracing::info!(session = %sid, bytes_in = report.bytes_to_device, bytes_out = report.bytes_from_device, "session closed");
    if let Err(e) = state
        .api
        .post_no_content(&format!("/v1/device/sessions/{sid}/closed"), &report)
        .await
    {
        tracing::warn!(error = %e, "cannot report a closed session");
    }
    if let Some(finished) = session.recorder.as_ref().and_then(|r| r.finish()) {
        super::upload::upload_recording(&state.api, sid, finished).await;
    }
}

/// Waits for the end of a session's control stream and says why it ended: the relay's code
/// when the relay ended it (a `Refused` frame: `access_revoked`, `credential_revoked`, …),
/// `client_closed` when the client's side finished, `relay_lost` when the stream broke.
async fn session_end(reader: &mut FrameReader<BoxRead>) -> String {
    loop {
        match reader.next().await {
            Ok(Some(Frame::Control(payload))) => {
                if let Ok(Control::Refused { code, .. }) = Frame::parse_control(&payload) {
                    return code.chars().take(64).collect();
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return "client_closed".into(),
            Err(_) => return "relay_lost".into(),
        }
    }
}

impl ActiveSession {
    /// Starts the record of a channel; returns its counters (to the device, from the device)
    /// and its index among the recorded channels (none past the first
    /// [`MAX_CHANNEL_SUMMARIES`]).
    fn channel_started(
        &self,
        channel: &Channel,
    ) -> (Arc<AtomicU64>, Arc<AtomicU64>, Option<usize>) {
        let (kind, target) = describe(channel);
        let to_device = Arc::new(AtomicU64::new(0));
        let from_device = Arc::new(AtomicU64::new(0));
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.len() >= MAX_CHANNEL_SUMMARIES {
            self.channels_dropped.fetch_add(1, Ordering::Relaxed);
            return (to_device, from_device, None);
        }
        channels.push(ChannelRecord {
            kind,
            target,
            started: Instant::now(),
            to_device: Arc::clone(&to_device),
            from_device: Arc::clone(&from_device),
            ended: None,
        });
        (to_device, from_device, Some(channels.len() - 1))
    }

    /// Ends the record of a channel.
    fn channel_ended(&self, index: Option<usize>, error: Option<String>) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = index.and_then(|i| channels.get_mut(i)) {
            record.ended = Some((record.started.elapsed().as_millis() as u64, error));
        }
    }

    /// What is reported to the control plane when the session closes; `ended_by` says why
    /// (`client_closed` becomes `exit` when the session ran a process that exited).
    fn closed_report(&self, ended_by: String) -> SessionClosedReport {
        let exit = *self.last_exit.lock().unwrap_or_else(|p| p.into_inner());
        let reason = match (ended_by.as_str(), exit) {
            ("client_closed", Some(_)) => "exit".to_owned(),
            _ => ended_by,
        };
        let channels = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(ChannelRecord::summary)
            .collect();
        SessionClosedReport {
            duration_ms: self.started.elapsed().as_millis() as u64,
            bytes_to_device: self.bytes_in.load(Ordering::Relaxed),
            bytes_from_device: self.bytes_out.load(Ordering::Relaxed),
            exit_code: match exit {
                Some(ExitStatus::Code(c)) => Some(c),
                _ => None,
            },
            signal: match exit {
                Some(ExitStatus::Signal(s)) => Some(s),
                _ => None,
            },
            error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            reason: Some(reason),
            channels,
            channels_dropped: self.channels_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Whether the session's token allows this channel.
fn allowed(claims: &SessionClaims, channel: &Channel) -> Result<(), String> {
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

async fn open_channel<W: AsyncWrite + Unpin + Send + 'static>(
    state: Arc<TunnelState>,
    session_id: SessionId,
    channel: Channel,
    reader: FrameReader<BoxRead>,
    mut send: W,
) {
    let session = state
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&session_id)
        .cloned();
    let Some(session) = session else {
        refuse(
            &state,
            &mut send,
            Some(session_id),
            RefusalCode::NoSession,
            "no such session on this device",
        )
        .await;
        return;
    };
    if let Err(reason) = allowed(&session.claims, &channel) {
        refuse(
            &state,
            &mut send,
            Some(session_id),
            RefusalCode::NotAllowed,
            &reason,
        )
        .await;
        return;
    }
    if !channel.answers_itself()
        && write_control(&mut send, &Control::ChannelAccepted { flow: None })
            .await
            .is_err()
    {
        return;
    }
    let (in_count, out_count, record) = session.channel_started(&channel);
    let (inner, leftover) = reader.into_parts();
    in_count.fetch_add(leftover.len() as u64, Ordering::Relaxed);
    session
        .bytes_in
        .fetch_add(leftover.len() as u64, Ordering::Relaxed);
    let reader = FrameReader::new(Box::new(LeftoverThen {
        leftover: Some(leftover.freeze()),
        inner: Counting {
            inner,
            count: in_count,
            total: Arc::clone(&session.bytes_in),
        },
    }) as BoxRead);
    let writer: BoxWrite = Box::new(Counting {
        inner: send,
        count: out_count,
        total: Arc::clone(&session.bytes_out),
    });
    let ctx = ServiceContext {
        recorder: session.recorder.clone(),
        ..state.ctx.clone()
    };
    let outcome = services::serve(channel, reader, writer, &ctx).await;
    session.channel_ended(record, outcome.error.clone());
    if outcome.exit.is_some() {
        *session.last_exit.lock().unwrap_or_else(|p| p.into_inner()) = outcome.exit;
    }
    if outcome.error.is_some() {
        *session.last_error.lock().unwrap_or_else(|p| p.into_inner()) = outcome.error;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use m87_events::token::Operation;
    use tokio::sync::mpsc;

    use crate::services::DatagramPort;

    fn claims(op: Operation, args: serde_json::Value) -> SessionClaims {
        SessionClaims {
            sid: SessionId::new(),
            sub: "user:a@example.com".into(),
            dev: "device-0001".parse().unwrap(),
            op,
            args,
            iat: 0,
            exp: 60,
            // A grant through an API key names it; the agent accepts the claim.
            cred: Some(m87_events::token::Credential::ApiKey(
                m87_events::KeyId::new(),
            )),
            rec: false,
        }
    }

    struct NoDatagrams;
    impl DatagramPort for NoDatagrams {
        fn open_flow(&self) -> (u32, mpsc::Receiver<Bytes>) {
            (0, mpsc::channel(1).1)
        }
        fn send(&self, _: u32, _: Bytes) -> Result<(), String> {
            Ok(())
        }
        fn close_flow(&self, _: u32) {}
    }

    fn state(verifier: SessionVerifier) -> Arc<TunnelState> {
        connection(verifier, Arc::default())
    }

    /// The state of one tunnel connection of a runtime that has seen `seen`.
    fn connection(verifier: SessionVerifier, seen: SeenSessions) -> Arc<TunnelState> {
        Arc::new(TunnelState {
            device_id: "device-0001".parse().unwrap(),
            verifier,
            // Reports go nowhere in this test.
            api: ApiClient::new("https://127.0.0.1:9", None, true).unwrap(),
            sessions: Mutex::new(HashMap::new()),
            admission: seen,
            ctx: ServiceContext::new(Arc::new(NoDatagrams), Default::default()),
        })
    }

    /// Opens a session on the agent with `token`; returns its answer.
    async fn answer(state: &Arc<TunnelState>, token: String) -> Control {
        let (client, agent) = tokio::io::duplex(64 * 1024);
        let (agent_r, agent_w) = tokio::io::split(agent);
        let reader = FrameReader::new(Box::new(agent_r) as BoxRead);
        tokio::spawn(open_session(Arc::clone(state), token, reader, agent_w));
        let (client_r, _client_w) = tokio::io::split(client);
        FrameReader::new(client_r).control().await.unwrap().unwrap()
    }

    fn code(c: Control) -> String {
        match c {
            Control::Refused { code, .. } => code,
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_agent_checks_every_token_itself() {
        let (signer, _) = m87_events::token::SessionSigner::generate().unwrap();
        let (other, _) = m87_events::token::SessionSigner::generate().unwrap();
        let st = state(signer.verifier());
        let now = now_unix();
        let mut c = claims(Operation::Shell, serde_json::Value::Null);
        c.iat = now;
        c.exp = now + 60;
        let good = signer.sign(&c);
        assert!(matches!(
            answer(&st, good.clone()).await,
            Control::SessionAccepted { .. }
        ));
        assert_eq!(code(answer(&st, good).await), "token_replayed");
        let mut expired = c.clone();
        expired.sid = SessionId::new();
        expired.iat = now - 120;
        expired.exp = now - 60;
        assert_eq!(
            code(answer(&st, signer.sign(&expired)).await),
            "token_expired"
        );
        let mut elsewhere = c.clone();
        elsewhere.sid = SessionId::new();
        elsewhere.dev = "device-0002".parse().unwrap();
        assert_eq!(
            code(answer(&st, signer.sign(&elsewhere)).await),
            "token_wrong_device"
        );
        let mut forged = c.clone();
        forged.sid = SessionId::new();
        assert_eq!(
            code(answer(&st, other.sign(&forged)).await),
            "token_invalid"
        );
        let tampered = signer.sign(&forged).replacen('e', "f", 1);
        assert!(code(answer(&st, tampered).await).starts_with("token_"));
        assert_eq!(code(answer(&st, "garbage".into()).await), "token_malformed");
    }

    #[test]
    fn channels_must_match_the_grant() {
        let exec = claims(Operation::Exec, serde_json::json!({"argv": ["ls", "-l"]}));
        assert!(
            allowed(
                &exec,
                &Channel::Exec {
                    argv: vec!["ls".into(), "-l".into()],
                    tty: None
                }
            )
            .is_ok()
        );
        assert!(
            allowed(
                &exec,
                &Channel::Exec {
                    argv: vec!["rm".into()],
                    tty: None
                }
            )
            .is_err()
        );
        assert!(
            allowed(
                &exec,
                &Channel::Shell {
                    tty: m87_events::tunnel::Tty {
                        cols: 1,
                        rows: 1,
                        term: "x".into()
                    }
                }
            )
            .is_err()
        );
        // A terminal only under a grant that asked for one (the recording policy applies).
        let tty = Some(m87_events::tunnel::Tty {
            cols: 80,
            rows: 24,
            term: "xterm".into(),
        });
        let ls = || vec!["ls".to_owned(), "-l".to_owned()];
        let err = allowed(
            &exec,
            &Channel::Exec {
                argv: ls(),
                tty: tty.clone(),
            },
        )
        .unwrap_err();
        assert!(err.contains("without a terminal"), "{err}");
        let exec_tty = claims(
            Operation::Exec,
            serde_json::json!({"argv": ["ls", "-l"], "tty": true}),
        );
        assert!(allowed(&exec_tty, &Channel::Exec { argv: ls(), tty }).is_ok());
        let fwd = claims(
            Operation::Forward,
            serde_json::json!({"targets": [{"host": "127.0.0.1", "port": 80, "proto": "tcp"}]}),
        );
        assert!(
            allowed(
                &fwd,
                &Channel::Forward {
                    host: "127.0.0.1".into(),
                    port: 80
                }
            )
            .is_ok()
        );
        assert!(
            allowed(
                &fwd,
                &Channel::Forward {
                    host: "127.0.0.1".into(),
                    port: 22
                }
            )
            .is_err()
        );
        assert!(
            allowed(
                &fwd,
                &Channel::UdpForward {
                    host: "127.0.0.1".into(),
                    port: 80
                }
            )
            .is_err()
        );
    }

    #[test]
    fn device_operations_must_match_the_grant_too() {
        use m87_events::tunnel::listing::ListRequest;
        use m87_events::tunnel::logs::{LogSource, LogsRequest};
        let unix = claims(
            Operation::Forward,
            serde_json::json!({"targets": [{"path": "/run/app.sock", "proto": "unix"}]}),
        );
        let sock = |p: &str| Channel::UnixForward { path: p.into() };
        assert!(allowed(&unix, &sock("/run/app.sock")).is_ok());
        assert!(allowed(&unix, &sock("/var/run/docker.sock")).is_err());
        // A unix target does not open a TCP port of the same name.
        let tcp = Channel::Forward {
            host: "/run/app.sock".into(),
            port: 0,
        };
        assert!(allowed(&unix, &tcp).is_err());

        let runtime_log = LogsRequest {
            source: LogSource::Runtime,
            lines: Some(10),
            since: None,
            until: None,
            follow: false,
        };
        let logs = claims(Operation::Logs, serde_json::to_value(&runtime_log).unwrap());
        assert!(allowed(&logs, &Channel::Logs(runtime_log.clone())).is_ok());
        let other_unit = LogsRequest {
            source: LogSource::Unit {
                name: "sshd".into(),
            },
            ..runtime_log
        };
        let err = allowed(&logs, &Channel::Logs(other_unit)).unwrap_err();
        assert!(err.contains("another log"), "{err}");

        let ls = claims(
            Operation::List,
            serde_json::json!({"path": "/tmp", "all": false}),
        );
        let list = |p: &str| {
            Channel::List(ListRequest {
                path: p.into(),
                all: false,
            })
        };
        assert!(allowed(&ls, &list("/tmp")).is_ok());
        assert!(allowed(&ls, &list("/etc")).is_err());

        let metrics = claims(Operation::Metrics, serde_json::json!({"interval_ms": 1000}));
        assert!(allowed(&metrics, &Channel::Metrics { interval_ms: 1000 }).is_ok());
        assert!(allowed(&metrics, &Channel::Metrics { interval_ms: 200 }).is_err());
        // One operation's token never opens another's channel.
        assert!(allowed(&metrics, &Channel::Status).is_err());
        assert!(allowed(&ls, &Channel::Docker).is_err());
    }

    #[tokio::test]
    async fn a_token_admitted_before_a_reconnect_is_refused_after_it() {
        let (signer, _) = m87_events::token::SessionSigner::generate().unwrap();
        let now = now_unix();
        let mut c = claims(Operation::Shell, serde_json::Value::Null);
        c.iat = now;
        c.exp = now + 60;
        let token = signer.sign(&c);
        // The runtime's seen-set, as `tunnel::run` keeps it across connections.
        let seen: SeenSessions = Arc::default();
        let first = connection(signer.verifier(), Arc::clone(&seen));
        assert!(matches!(
            answer(&first, token.clone()).await,
            Control::SessionAccepted { .. }
        ));
        // The tunnel drops and comes back (a relay restart): a new connection's state.
        drop(first);
        let second = connection(signer.verifier(), seen);
        assert_eq!(code(answer(&second, token).await), "token_replayed");
    }
}
