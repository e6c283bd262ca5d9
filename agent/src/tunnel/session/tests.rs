//! The session and channel checks of the device.

use super::grant::allowed;
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

#[test]
fn an_ssh_channel_must_ask_for_the_granted_login() {
    let ssh = claims(Operation::Ssh, serde_json::json!({"user": "pi"}));
    let channel = |u: Option<&str>| Channel::Ssh {
        user: u.map(str::to_owned),
    };
    assert!(allowed(&ssh, &channel(Some("pi"))).is_ok());
    let err = allowed(&ssh, &channel(Some("root"))).unwrap_err();
    assert!(err.contains("another SSH login"), "{err}");
    assert!(allowed(&ssh, &channel(None)).is_err());
    let any = claims(Operation::Ssh, serde_json::json!({"user": null}));
    assert!(allowed(&any, &channel(None)).is_ok());
    // An ssh grant opens no shell channel, and a shell grant no ssh channel.
    let tty = m87_events::tunnel::Tty {
        cols: 1,
        rows: 1,
        term: "x".into(),
    };
    assert!(allowed(&ssh, &Channel::Shell { tty }).is_err());
    let shell = claims(Operation::Shell, serde_json::Value::Null);
    assert!(allowed(&shell, &channel(Some("pi"))).is_err());
}
