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

use crate::tunnel::io::{Counting, LeftoverThen};
use grant::{allowed, describe};

mod grant;
#[cfg(test)]
mod tests;

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

impl services::Activity for ActiveSession {
    fn note(&self, kind: &'static str, target: String) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.len() >= MAX_CHANNEL_SUMMARIES {
            self.channels_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        channels.push(ChannelRecord {
            kind,
            target,
            started: Instant::now(),
            to_device: Arc::default(),
            from_device: Arc::default(),
            ended: Some((0, None)),
        });
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
        activity: Some(Arc::clone(&session) as Arc<dyn services::Activity>),
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
