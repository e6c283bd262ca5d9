//! Syslog into a real rsyslogd (Debian packages `rsyslog` and `rsyslog-gnutls`) over TCP and
//! TLS: every record arrives, parses as RFC 5424 and carries the m87 structured data; and an
//! rsyslogd stopped while records are appended gets them all once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::rsyslog::{Rsyslog, parse_5424};
use common::{Running, free_port, wait_until};
use m87_audit_export::{
    AlwaysHeld, AuditEntry, Exporter, MemoryCursors, MemorySource, SinksConfig,
};

fn start(config: &str, source: Arc<MemorySource>, cursors: Arc<MemoryCursors>) -> Running {
    let c = SinksConfig::from_str_at(config, Path::new("/test/sinks.toml")).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let handle = Exporter::new(&c, source, cursors, Arc::new(AlwaysHeld))
        .unwrap()
        .with_timing(common::fast_timing())
        .spawn(rx);
    Running { handle, stop }
}

/// Checks every line of rsyslog's output against the entries, in order.
fn assert_records(lines: &[String], entries: &[AuditEntry], cef: bool) {
    assert_eq!(lines.len(), entries.len(), "records in rsyslog's file");
    for (line, e) in lines.iter().zip(entries) {
        let m = parse_5424(line).unwrap_or_else(|err| panic!("not RFC 5424 ({err}): {line}"));
        assert_eq!(m.pri, 10 * 8 + 6, "authpriv.info");
        assert_eq!(m.app, "m87");
        assert_eq!(m.hostname, "m87-test");
        assert_eq!(m.msgid, "SessionOpened");
        let (id, params) = &m.sd[0];
        assert_eq!(id, "m87@32473");
        let p = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            p("event_id"),
            Some(e.envelope.event_id.to_string().as_str())
        );
        assert_eq!(p("hash"), Some(e.hash.as_str()));
        assert_eq!(p("prev_hash"), Some(e.prev_hash.as_str()));
        assert_eq!(
            p("position"),
            Some(e.envelope.global_position.to_string().as_str())
        );
        assert_eq!(p("device"), Some("edge-device-01"));
        assert_eq!(p("action"), Some("exec"));
        assert_eq!(p("outcome"), Some("open"));
        assert_eq!(p("user"), Some("alice@example.com"));
        if cef {
            assert!(m.msg.starts_with("CEF:0|m87|m87|"), "{}", m.msg);
            assert!(
                m.msg
                    .contains(&format!("externalId={}", e.envelope.event_id))
            );
        } else {
            let v: serde_json::Value = serde_json::from_str(&m.msg).unwrap();
            assert_eq!(v["metadata"]["uid"], e.envelope.event_id.to_string());
        }
    }
}

#[tokio::test]
async fn syslog_over_tcp_into_rsyslog() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rs = Rsyslog::start(dir.path(), port, None);
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 25);
    let cfg = format!(
        "[[sink]]\nname = \"rs\"\nkind = \"syslog\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nhostname = \"m87-test\"\nbatch_size = 10\n"
    );
    let run = start(&cfg, source, Arc::new(MemoryCursors::new()));
    wait_until(
        Duration::from_secs(15),
        "25 lines in rsyslog's file",
        || rs.lines().len() >= 25,
    )
    .await;
    assert_records(&rs.lines(), &entries, true);
    assert_eq!(run.status("rs").delivered, 25);
    run.shutdown().await;
}

#[tokio::test]
async fn syslog_over_tls_into_rsyslog() {
    let dir = tempfile::tempdir().unwrap();
    let tls = common::rsyslog::make_tls(dir.path());
    let port = free_port();
    let mut rs = Rsyslog::start(dir.path(), port, Some(&tls));
    let source = Arc::new(MemorySource::new());
    let mut entries = common::events::append_sessions(&source, 12);
    let cfg = format!(
        "[[sink]]\nname = \"rs-tls\"\nkind = \"syslog\"\ntransport = \"tls\"\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nca_file = \"{}\"\nhostname = \"m87-test\"\nformat = \"ocsf\"\nbatch_size = 3\n",
        tls.ca.display()
    );
    let run = start(&cfg, source.clone(), Arc::new(MemoryCursors::new()));
    wait_until(
        Duration::from_secs(15),
        "12 lines in rsyslog's file",
        || rs.lines().len() >= 12,
    )
    .await;
    assert_records(&rs.lines(), &entries, false);

    // rsyslogd stops (close_notify, then FIN) and comes back: nothing is written into the
    // closed session, everything arrives.
    rs.stop();
    entries.extend(common::events::append_sessions(&source, 30));
    run.handle.notify();
    wait_until(
        Duration::from_secs(10),
        "failed deliveries while rsyslogd is down",
        || run.status("rs-tls").retried >= 2,
    )
    .await;
    assert_eq!(run.status("rs-tls").cursor, 12);
    rs.restart();
    wait_until(Duration::from_secs(15), "all 42 lines", || {
        rs.lines().len() >= 42
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_records(&rs.lines(), &entries, false);
    run.shutdown().await;

    // A receiver whose certificate does not chain to ca_file is refused, never written to.
    let other = tempfile::tempdir().unwrap();
    let other_ca = common::rsyslog::make_tls(other.path());
    let source = Arc::new(MemorySource::new());
    common::events::append_sessions(&source, 2);
    let cfg = format!(
        "[[sink]]\nname = \"wrong-ca\"\nkind = \"syslog\"\ntransport = \"tls\"\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nca_file = \"{}\"\nhostname = \"m87-test\"\n",
        other_ca.ca.display()
    );
    let run = start(&cfg, source, Arc::new(MemoryCursors::new()));
    wait_until(Duration::from_secs(10), "a refused handshake", || {
        run.status("wrong-ca").retried > 0
    })
    .await;
    let st = run.status("wrong-ca");
    assert_eq!(st.delivered, 0);
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("TLS"),
        "{st:?}"
    );
    assert_eq!(rs.lines().len(), 42);
    run.shutdown().await;
}

#[tokio::test]
async fn rsyslog_down_for_a_while_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut rs = Rsyslog::start(dir.path(), port, None);
    let source = Arc::new(MemorySource::new());
    let mut entries = common::events::append_sessions(&source, 20);
    let cfg = format!(
        "[[sink]]\nname = \"rs\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nhostname = \"m87-test\"\nbatch_size = 50\ntimeout = \"1s\"\n"
    );
    let run = start(&cfg, source.clone(), Arc::new(MemoryCursors::new()));
    wait_until(Duration::from_secs(15), "the first 20", || {
        rs.lines().len() >= 20
    })
    .await;

    rs.stop();
    entries.extend(common::events::append_sessions(&source, 500));
    run.handle.notify();
    wait_until(
        Duration::from_secs(10),
        "failed deliveries while rsyslog is down",
        || run.status("rs").retried >= 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        run.status("rs").cursor,
        20,
        "nothing counted as delivered while the receiver is down"
    );

    rs.restart();
    wait_until(Duration::from_secs(20), "all 520 records", || {
        rs.lines().len() >= 520
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_records(&rs.lines(), &entries, true);
    let st = run.status("rs");
    assert_eq!(
        (st.cursor, st.delivered, st.lag_records),
        (520, 520, 0),
        "{st:?}"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn syslog_over_udp_sends_one_datagram_per_record() {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 5);
    let cfg = format!(
        "[[sink]]\nname = \"udp\"\nkind = \"syslog\"\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\nhostname = \"m87-test\"\nformat = \"json\"\n"
    );
    let run = start(&cfg, source, Arc::new(MemoryCursors::new()));
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 65536];
    while lines.len() < 5 {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("a datagram")
            .unwrap();
        lines.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    for (line, e) in lines.iter().zip(&entries) {
        let m = parse_5424(line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&m.msg).unwrap();
        assert_eq!(
            v["envelope"]["event_id"],
            e.envelope.event_id.to_string(),
            "format json is the entry"
        );
    }
    run.shutdown().await;
}

#[tokio::test]
async fn syslog_over_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = common::rsyslog::make_tls(dir.path());
    tls.require_client_cert = true;
    let port = free_port();
    let rs = Rsyslog::start(dir.path(), port, Some(&tls));
    // Without a client certificate rsyslogd takes nothing (so the check below means something).
    let anon_source = Arc::new(MemorySource::new());
    common::events::append_sessions(&anon_source, 2);
    let cfg = format!(
        "[[sink]]\nname = \"anon\"\nkind = \"syslog\"\ntransport = \"tls\"\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nca_file = \"{}\"\nhostname = \"m87-test\"\n",
        tls.ca.display()
    );
    let anon = start(&cfg, anon_source, Arc::new(MemoryCursors::new()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = anon.status("anon");
    anon.shutdown().await;
    assert!(
        rs.lines().is_empty(),
        "rsyslogd took records from a client without a certificate"
    );
    assert_eq!(
        st.delivered, 0,
        "a refused TLS session is no delivery: {st:?}"
    );
    assert!(st.retried > 0 && st.last_error.is_some(), "{st:?}");

    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 4);
    let cfg = format!(
        "[[sink]]\nname = \"mtls\"\nkind = \"syslog\"\ntransport = \"tls\"\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nhostname = \"m87-test\"\n",
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let run = start(&cfg, source, Arc::new(MemoryCursors::new()));
    wait_until(
        Duration::from_secs(15),
        "4 lines from a client rsyslogd had to verify",
        || rs.lines().len() >= 4,
    )
    .await;
    assert_records(&rs.lines(), &entries, true);
    run.shutdown().await;
}
