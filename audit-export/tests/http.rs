//! The HTTP sinks against receivers that check the wire format: Splunk HEC, `_bulk`, the
//! webhook's signature, and OTLP decoded from protobuf.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::receiver::Receiver;
use common::{Running, wait_until};
use m87_audit_export::{
    AlwaysHeld, AuditEntry, Exporter, MemoryCursors, MemorySource, SinksConfig,
};
use serde_json::Value;

fn start(config: &str, source: Arc<MemorySource>) -> Running {
    let c = SinksConfig::from_str_at(config, Path::new("/test/sinks.toml")).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let handle = Exporter::new(
        &c,
        source,
        Arc::new(MemoryCursors::new()),
        Arc::new(AlwaysHeld),
    )
    .unwrap()
    .with_timing(common::fast_timing())
    .spawn(rx);
    Running { handle, stop }
}

fn ids(entries: &[AuditEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.envelope.event_id.to_string())
        .collect()
}

#[tokio::test]
async fn splunk_hec_posts_envelopes_with_the_token_header() {
    let rx = Receiver::ok(r#"{"text":"Success","code":0}"#).await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 7);
    let cfg = format!(
        "[[sink]]\nname = \"hec\"\nkind = \"splunk_hec\"\nurl = \"{}\"\ntoken = \"hec-token-1\"\nbatch_size = 5\n",
        rx.url("/splunk")
    );
    let run = start(&cfg, source);
    wait_until(Duration::from_secs(10), "7 records at HEC", || {
        run.status("hec").delivered == 7
    })
    .await;
    let reqs = rx.accepted();
    assert_eq!(reqs.len(), 2, "one POST per batch of 5");
    let mut got = Vec::new();
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/splunk/services/collector/event");
        assert_eq!(
            r.header("authorization").as_deref(),
            Some("Splunk hec-token-1")
        );
        for v in serde_json::Deserializer::from_slice(&r.body).into_iter::<Value>() {
            let v = v.unwrap();
            assert!(
                v["time"].is_f64() || v["time"].is_u64(),
                "time is epoch seconds: {v}"
            );
            assert_eq!(v["source"], "m87");
            assert_eq!(v["sourcetype"], "m87:audit");
            assert_eq!(v["host"], "edge-device-01");
            assert_eq!(v["event"]["class_uid"], 4007, "OCSF by default");
            got.push(v["event"]["metadata"]["uid"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(got, ids(&entries), "every record once, in order");
    assert_eq!(run.status("hec").cursor, 7);
    run.shutdown().await;
}

/// Answers a `_bulk` body item by item with `status_of(event id, index)`.
fn bulk_answer(body: &[u8], status_of: &dyn Fn(&str, usize) -> u16) -> Vec<u8> {
    let text = std::str::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let items: Vec<Value> = lines
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let action: Value = serde_json::from_str(pair[0]).unwrap();
            let id = action["create"]["_id"].as_str().unwrap().to_owned();
            let status = status_of(&id, i);
            let mut item = serde_json::json!({ "create": { "_index": "m87-audit", "_id": id, "status": status } });
            if status >= 300 {
                item["create"]["error"] = serde_json::json!({ "type": "mapper_parsing_exception", "reason": "test" });
            }
            item
        })
        .collect();
    let errors = items
        .iter()
        .any(|i| i["create"]["status"].as_u64().unwrap() >= 300);
    serde_json::json!({ "took": 1, "errors": errors, "items": items })
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn bulk_sends_create_actions_with_the_event_id_and_reads_each_item() {
    let rx = Receiver::start(|r| (200, bulk_answer(&r.body, &|_, _| 201))).await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 6);
    let bad = entries[2].envelope.event_id.to_string();
    let dup = entries[3].envelope.event_id.to_string();
    let throttled_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b, d, t) = (bad.clone(), dup.clone(), throttled_once.clone());
    rx.set(move |r| {
        (
            200,
            bulk_answer(&r.body, &|id, _| {
                if id == b {
                    400
                } else if id == d {
                    409
                } else if !t.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    429
                } else {
                    201
                }
            }),
        )
    });
    let cfg = format!(
        "[[sink]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"{}\"\nindex = \"m87-audit\"\nusername = \"w\"\npassword = \"pw\"\n",
        rx.url("/")
    );
    let run = start(&cfg, source);
    wait_until(Duration::from_secs(10), "the batch acknowledged", || {
        run.status("es").cursor == 6
    })
    .await;
    let st = run.status("es");
    assert_eq!(
        (st.delivered, st.rejected),
        (5, 1),
        "409 counts as delivered, 400 as rejected: {st:?}"
    );
    assert!(st.retried >= 1, "the 429 made the batch go again: {st:?}");
    let reqs = rx.requests();
    for r in &reqs {
        assert_eq!(r.path, "/_bulk");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-ndjson")
        );
        assert_eq!(
            r.header("authorization").as_deref(),
            Some("Basic dzpwdw=="),
            "basic auth w:pw"
        );
        assert!(r.body.ends_with(b"\n"), "the body ends with a newline");
        let lines: Vec<&str> = std::str::from_utf8(&r.body).unwrap().lines().collect();
        assert_eq!(lines.len(), 12, "an action and a document per record");
        for (pair, e) in lines.chunks(2).zip(&entries) {
            let action: Value = serde_json::from_str(pair[0]).unwrap();
            let doc: Value = serde_json::from_str(pair[1]).unwrap();
            assert_eq!(action["create"]["_index"], "m87-audit");
            assert_eq!(action["create"]["_id"], e.envelope.event_id.to_string());
            assert_eq!(doc["event"]["id"], e.envelope.event_id.to_string());
            assert_eq!(doc["m87"]["hash"], e.hash.as_str());
            assert!(doc["@timestamp"].is_string());
        }
    }
    assert!(st.last_error.unwrap().contains("400"));
    run.shutdown().await;
}

#[tokio::test]
async fn webhook_signs_the_raw_body_with_hmac_sha256() {
    let rx = Receiver::ok("").await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 4);
    let cfg = format!(
        "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nhmac_key = \"shared-key\"\nformat = \"json\"\n",
        rx.url("/hook")
    );
    let run = start(&cfg, source);
    wait_until(Duration::from_secs(10), "4 records at the webhook", || {
        run.status("hook").delivered == 4
    })
    .await;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"shared-key");
    for r in rx.accepted() {
        assert_eq!(r.path, "/hook");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-ndjson")
        );
        let sig = r.header("x-m87-signature").expect("X-M87-Signature header");
        let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
        let raw = hex::decode(hex_sig).unwrap();
        ring::hmac::verify(&key, &r.body, &raw)
            .expect("the signature is the HMAC-SHA256 of the raw body");
        let mut tampered = r.body.to_vec();
        tampered[0] ^= 1;
        assert!(ring::hmac::verify(&key, &tampered, &raw).is_err());
    }
    assert_eq!(common::receiver::webhook_event_ids(&rx), ids(&entries));
    run.shutdown().await;
}

#[tokio::test]
async fn otlp_sends_log_records_a_collector_can_decode() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let rx = Receiver::ok("").await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 3);
    let cfg = format!(
        "[[sink]]\nname = \"otel\"\nkind = \"otlp\"\nurl = \"{}\"\nheaders = {{ \"x-api-key\" = \"k1\" }}\n",
        rx.url("/v1/logs")
    );
    let run = start(&cfg, source);
    wait_until(Duration::from_secs(10), "3 records at OTLP", || {
        run.status("otel").delivered == 3
    })
    .await;
    let reqs = rx.accepted();
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/logs");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(r.header("x-api-key").as_deref(), Some("k1"));
    let req = ExportLogsServiceRequest::decode(r.body.as_ref())
        .expect("a protobuf ExportLogsServiceRequest");
    let rl = &req.resource_logs[0];
    let records = &rl.scope_logs[0].log_records;
    assert_eq!(records.len(), 3);
    for (rec, e) in records.iter().zip(&entries) {
        let attr = |k: &str| {
            rec.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr("m87.event_id"),
            Some(Any::StringValue(e.envelope.event_id.to_string()))
        );
        assert_eq!(attr("m87.hash"), Some(Any::StringValue(e.hash.clone())));
        assert_eq!(
            attr("m87.prev_hash"),
            Some(Any::StringValue(e.prev_hash.clone()))
        );
        assert_eq!(
            attr("m87.position"),
            Some(Any::IntValue(e.envelope.global_position as i64))
        );
        assert_eq!(
            attr("m87.device"),
            Some(Any::StringValue("edge-device-01".into()))
        );
        assert_eq!(
            attr("user.email"),
            Some(Any::StringValue("alice@example.com".into()))
        );
        assert_eq!(
            rec.time_unix_nano,
            e.envelope.recorded_at.timestamp_nanos_opt().unwrap() as u64
        );
        assert_eq!(rec.severity_text, "INFO");
        let Some(Any::StringValue(body)) = rec.body.clone().and_then(|b| b.value) else {
            panic!("string body")
        };
        let ocsf: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ocsf["metadata"]["uid"], e.envelope.event_id.to_string());
    }
    run.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_is_retried_and_skips_nothing() {
    let rx = Receiver::start(|_| (403, br#"{"text":"Invalid token","code":4}"#.to_vec())).await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 3);
    let cfg = format!(
        "[[sink]]\nname = \"hec\"\nkind = \"splunk_hec\"\nurl = \"{}\"\ntoken = \"wrong\"\n",
        rx.url("")
    );
    let run = start(&cfg, source);
    wait_until(Duration::from_secs(10), "retries", || {
        run.status("hec").retried >= 2
    })
    .await;
    let st = run.status("hec");
    assert_eq!((st.cursor, st.rejected), (0, 0), "nothing skipped: {st:?}");
    assert!(
        st.last_error.as_deref().unwrap().contains("credentials"),
        "{st:?}"
    );
    rx.set(|_| (200, br#"{"text":"Success","code":0}"#.to_vec()));
    wait_until(
        Duration::from_secs(10),
        "delivery once the token is accepted",
        || run.status("hec").cursor == 3,
    )
    .await;
    let got: Vec<String> = rx
        .accepted()
        .iter()
        .flat_map(|r| {
            serde_json::Deserializer::from_slice(&r.body)
                .into_iter::<Value>()
                .map(|v| {
                    v.unwrap()["event"]["metadata"]["uid"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, ids(&entries));
    run.shutdown().await;
}

/// An HTTPS receiver with a certificate from a private CA: answers 200 to every request and
/// counts the body lines it got.
async fn https_receiver(
    tls: &common::rsyslog::TlsFiles,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&tls.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = lines.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request: head, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    counted.fetch_add(
                        body.iter().filter(|b| **b == b'\n').count(),
                        std::sync::atomic::Ordering::SeqCst,
                    );
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    (addr, lines)
}

#[tokio::test]
async fn https_receivers_are_checked_against_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let tls = common::rsyslog::make_tls(dir.path());
    let (addr, lines) = https_receiver(&tls).await;
    let url = format!("https://localhost:{}/hook", addr.port());
    let source = Arc::new(MemorySource::new());
    common::events::append_sessions(&source, 3);
    let cfg = format!(
        "[[sink]]\nname = \"private-ca\"\nkind = \"webhook\"\nurl = \"{url}\"\nhmac_key = \"k\"\nca_file = \"{}\"\n\n\
         [[sink]]\nname = \"public-roots\"\nkind = \"webhook\"\nurl = \"{url}\"\nhmac_key = \"k\"\n",
        tls.ca.display()
    );
    let run = start(&cfg, source);
    wait_until(Duration::from_secs(10), "delivery over HTTPS", || {
        run.status("private-ca").cursor == 3
    })
    .await;
    wait_until(Duration::from_secs(10), "the refused certificate", || {
        run.status("public-roots").retried > 0
    })
    .await;
    assert_eq!(
        lines.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "only the sink that trusts the CA got through"
    );
    let st = run.status("public-roots");
    assert_eq!(st.cursor, 0);
    assert!(
        st.last_error
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{st:?}"
    );
    run.shutdown().await;
}
