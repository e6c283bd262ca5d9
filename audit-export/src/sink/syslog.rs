//! Syslog (RFC 5424) over UDP (RFC 5426), TCP with octet counting (RFC 6587) and TLS
//! (RFC 5425).
//!
//! Each record is one message: `<PRI>1 TIMESTAMP HOSTNAME m87 - EVENTTYPE [m87@32473 …] MSG`,
//! the structured data carrying the event id, position, hash, previous hash, action, outcome,
//! device and user, the MSG the record in CEF or JSON. TCP and TLS keep their connection
//! between batches, check before each batch that the receiver has not closed it, and connect
//! again after any failure. Syslog has no acknowledgement: a batch counts as delivered once it
//! is written to the connection (UDP: once sent).

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use m87_events::audit::{AuditEntry, Outcome};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Delivered, Sink, SinkError, tls};
use crate::config::{Format, SyslogConfig, SyslogTransport};
use crate::format::{self, Facts};

/// The SD-ID of the m87 element. 32473 is the private enterprise number RFC 5612 reserves for
/// documentation; a receiver matches on the whole `m87@32473`.
pub const SD_ID: &str = "m87@32473";

/// An open connection to the receiver.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    /// Whether the receiver closed the connection: asks the socket itself, without waiting,
    /// so a receiver that stopped between two batches is noticed before a batch is written
    /// into a dead connection. A syslog receiver sends nothing; over TLS the bytes it may send
    /// (a late session ticket, a close_notify, an alert) are read through rustls to tell them
    /// apart.
    async fn peer_closed(&mut self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        let peeked = socket2::SockRef::from(self.tcp()).peek(&mut probe);
        match (peeked, self) {
            (Err(e), _) => e.kind() != std::io::ErrorKind::WouldBlock,
            (Ok(0), _) | (Ok(_), Conn::Tcp(_)) => true,
            (Ok(_), Conn::Tls(tls)) => {
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(50), tls.read(&mut buf)).await {
                    Err(_) | Ok(Ok(1..)) => false,
                    Ok(Ok(0)) | Ok(Err(_)) => true,
                }
            }
        }
    }
}

/// A syslog sink.
pub struct SyslogSink {
    config: SyslogConfig,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
    udp: Option<UdpSocket>,
    timeout: Duration,
}

impl SyslogSink {
    /// A sink for `config`; it connects at the first batch.
    pub fn new(config: &SyslogConfig, timeout: Duration) -> Result<Self, SinkError> {
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let cc = tls::client_config(Some(&t.ca_certs), t.client_identity.as_ref())?;
                let name = ServerName::try_from(t.server_name.clone()).map_err(|e| {
                    SinkError::Setup(format!("server name {:?}: {e}", t.server_name))
                })?;
                Some((TlsConnector::from(Arc::new(cc)), name))
            }
        };
        Ok(Self {
            config: config.clone(),
            tls,
            conn: None,
            udp: None,
            timeout,
        })
    }

    async fn connect(&mut self) -> Result<&mut Conn, SinkError> {
        if let Some(c) = self.conn.as_mut()
            && c.peer_closed().await
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let addr = &self.config.address;
            let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    SinkError::Retry(format!(
                        "cannot connect to syslog receiver {addr}: no answer within {:?}",
                        self.timeout
                    ))
                })?
                .map_err(|e| {
                    SinkError::Retry(format!("cannot connect to syslog receiver {addr}: {e}"))
                })?;
            let _ = tcp.set_nodelay(true);
            let mut stream = match &self.tls {
                None => Conn::Tcp(tcp),
                Some((connector, name)) => Conn::Tls(Box::new(
                    tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| {
                            SinkError::Retry(format!(
                                "TLS handshake with {addr}: no answer within {:?}",
                                self.timeout
                            ))
                        })?
                        .map_err(|e| SinkError::Retry(format!("TLS handshake with {addr}: {e}")))?,
                )),
            };
            if let Conn::Tls(tls) = &mut stream {
                await_verdict(tls, addr).await?;
            }
            self.conn = Some(stream);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| SinkError::Retry("no connection".to_owned()))
    }

    async fn send_udp(&mut self, messages: &[String]) -> Result<(), SinkError> {
        let addr = self.config.address.clone();
        if self.udp.is_none() {
            let local = if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let sock = UdpSocket::bind(local)
                .await
                .map_err(|e| SinkError::Retry(format!("cannot open a UDP socket: {e}")))?;
            sock.connect(&addr).await.map_err(|e| {
                SinkError::Retry(format!("cannot reach syslog receiver {addr}: {e}"))
            })?;
            self.udp = Some(sock);
        }
        let Some(sock) = self.udp.as_ref() else {
            return Err(SinkError::Retry("no UDP socket".to_owned()));
        };
        for m in messages {
            if let Err(e) = sock.send(m.as_bytes()).await {
                self.udp = None;
                return Err(SinkError::Retry(format!("UDP send to {addr}: {e}")));
            }
        }
        Ok(())
    }
}

/// How long a new TLS connection is watched for the receiver's verdict before the first write.
const VERDICT_WAIT: Duration = Duration::from_millis(300);

/// With TLS 1.3 the client's handshake ends before the receiver has checked the client's
/// certificate (or its absence); a receiver that refuses it answers with an alert just after.
/// Writing at once would put a batch into a connection that is already refused, and syslog has
/// no acknowledgement to tell. So a new connection is watched briefly: an alert or a close is a
/// failed connection (the batch is retried), silence is acceptance.
async fn await_verdict(tls: &mut TlsStream<TcpStream>, addr: &str) -> Result<(), SinkError> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(VERDICT_WAIT, tls.read(&mut buf)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err(SinkError::Retry(format!(
            "syslog receiver {addr} closed the TLS connection after the handshake (does it require a client certificate?)"
        ))),
        Ok(Err(e)) => Err(SinkError::Retry(format!(
            "syslog receiver {addr} refused the TLS session: {e}"
        ))),
    }
}

#[async_trait]
impl Sink for SyslogSink {
    fn kind(&self) -> &'static str {
        "syslog"
    }

    async fn deliver(&mut self, batch: &[AuditEntry]) -> Result<Delivered, SinkError> {
        let c = &self.config;
        let messages: Vec<String> = batch
            .iter()
            .map(|e| rfc5424(e, c.facility, &c.hostname, c.format))
            .collect();
        if c.transport == SyslogTransport::Udp {
            self.send_udp(&messages).await?;
            return Ok(Delivered::all());
        }
        let mut frames = Vec::with_capacity(messages.iter().map(|m| m.len() + 8).sum());
        for m in &messages {
            frames.extend_from_slice(format!("{} ", m.len()).as_bytes());
            frames.extend_from_slice(m.as_bytes());
        }
        let addr = self.config.address.clone();
        let limit = self.timeout;
        let conn = self.connect().await?;
        let written = tokio::time::timeout(limit, conn.send(&frames))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other(format!("stalled for {limit:?}"))));
        if let Err(e) = written {
            self.conn = None;
            return Err(SinkError::Retry(format!(
                "writing to syslog receiver {addr}: {e}"
            )));
        }
        Ok(Delivered::all())
    }

    fn reset(&mut self) {
        self.conn = None;
        self.udp = None;
    }
}

/// Escapes an SD-PARAM value (RFC 5424 §6.3.3: `"`, `\` and `]`).
pub fn escape_sd(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 message of an entry (without framing).
pub fn rfc5424(entry: &AuditEntry, facility: u8, hostname: &str, fmt: Format) -> String {
    let f = Facts::of(entry);
    let severity = match f.outcome {
        Outcome::Ok | Outcome::Open => 6,
        Outcome::Failed => 5,
        Outcome::Refused => 4,
    };
    let pri = u16::from(facility) * 8 + severity;
    let mut sd = format!(
        "[{SD_ID} event_id=\"{}\" position=\"{}\" hash=\"{}\" prev_hash=\"{}\" type=\"{}\" action=\"{}\" outcome=\"{}\"",
        f.event_id(),
        f.position(),
        escape_sd(&entry.hash),
        escape_sd(&entry.prev_hash),
        f.event_type,
        f.action,
        f.outcome.as_str(),
    );
    if let Some(d) = &f.device {
        sd.push_str(&format!(" device=\"{}\"", escape_sd(d)));
    }
    if let Some(u) = &f.user_email {
        sd.push_str(&format!(" user=\"{}\"", escape_sd(u)));
    }
    if let Some(ip) = &f.source_ip {
        sd.push_str(&format!(" src=\"{}\"", escape_sd(ip)));
    }
    sd.push(']');
    let msg = format::to_line(fmt, entry).replace(['\n', '\r'], " ");
    format!(
        "<{pri}>1 {} {hostname} m87 - {} {sd} {msg}",
        f.time_rfc3339(),
        f.event_type
    )
}
