//! The sinks file: the example parses and documents every key; mistakes name the line and the
//! key; secrets stay out of Debug and the status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use m87_audit_export::config::{ElasticAuth, SinkKind, all_keys};
use m87_audit_export::{ConfigError, SinksConfig};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/config/audit-sinks.example.toml")
}

fn parse(text: &str) -> Result<SinksConfig, ConfigError> {
    SinksConfig::from_str_at(text, Path::new("/etc/m87/audit-sinks.toml"))
}

fn invalid(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn the_example_file_parses() {
    let c = SinksConfig::from_file(&example()).unwrap();
    let kinds: Vec<&str> = c.sinks.iter().map(|s| s.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "syslog",
            "splunk_hec",
            "elasticsearch",
            "webhook",
            "otlp",
            "file"
        ]
    );
    assert!(c.sinks.iter().all(|s| s.batch_size == 500));
}

#[test]
fn the_example_documents_every_key() {
    let text = std::fs::read_to_string(example()).unwrap();
    for key in all_keys() {
        assert!(
            text.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))),
            "the example does not show `{key} = …`"
        );
    }
}

#[test]
fn an_unknown_key_names_its_line_and_key() {
    let text = "[[sink]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://x.example\"\nhmac_key = \"k\"\nbatchsize = 5\n";
    let (line, key, message) = invalid(text);
    assert_eq!((line, key.as_str()), (6, "batchsize"), "{message}");
    let text = "[[sink]]\nname = \"a\"\nkind = \"syslog\"\naddress = \"h:1\"\nindex = \"x\"\n";
    let (line, key, message) = invalid(text);
    assert_eq!((line, key.as_str()), (5, "index"));
    assert!(message.contains("elasticsearch"), "{message}");
    let (line, key, _) =
        invalid("[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"/tmp/x\"\n\n[other]\nx = 1\n");
    assert_eq!((line, key.as_str()), (6, "other"));
}

#[test]
fn a_bad_url_names_its_line_and_key() {
    let text =
        "[[sink]]\nname = \"s\"\nkind = \"splunk_hec\"\ntoken = \"t\"\nurl = \"splunk:8088\"\n";
    let (line, key, _) = invalid(text);
    assert_eq!((line, key.as_str()), (5, "url"));
    let text = "[[sink]]\nname = \"s\"\nkind = \"splunk_hec\"\ntoken = \"t\"\nurl = \"https://user:pw@splunk\"\n";
    let (line, key, message) = invalid(text);
    assert_eq!((line, key.as_str()), (5, "url"));
    assert!(
        !message.contains("pw"),
        "the error repeats the password: {message}"
    );
    let text = "[[sink]]\nname = \"o\"\nkind = \"otlp\"\nurl = \"http://collector:4318/\"\n";
    assert_eq!(invalid(text).1, "url");
    let text = "[[sink]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"no-port\"\n";
    assert_eq!(invalid(text).1, "address");
}

#[test]
fn a_missing_secret_names_the_sink_and_key() {
    let text =
        "# c\n[[sink]]\nname = \"s\"\nkind = \"splunk_hec\"\nurl = \"https://splunk:8088\"\n";
    let (line, key, message) = invalid(text);
    assert_eq!(key, "token");
    assert!((2..=3).contains(&line), "line {line}");
    assert!(message.contains("token_file"), "{message}");
    let text = "[[sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://h\"\nhmac_key_file = \"/nonexistent/key\"\n";
    let (line, key, _) = invalid(text);
    assert_eq!((line, key.as_str()), (5, "hmac_key_file"));
    let text = "[[sink]]\nname = \"e\"\nkind = \"elasticsearch\"\nurl = \"https://h\"\nindex = \"a\"\nusername = \"u\"\n";
    assert_eq!(invalid(text).1, "password");
}

#[test]
fn bad_values_and_duplicate_names_are_named() {
    let base = "[[sink]]\nname = \"f\"\nkind = \"file\"\npath = \"/tmp/a\"\n";
    assert_eq!(
        invalid(&format!("{base}timeout = \"ten\"\n")),
        (
            5,
            "timeout".into(),
            invalid(&format!("{base}timeout = \"ten\"\n")).2
        )
    );
    assert_eq!(invalid(&format!("{base}batch_size = 0\n")).1, "batch_size");
    assert_eq!(
        invalid(&format!("{base}batch_size = \"x\"\n")).1,
        "batch_size"
    );
    assert_eq!(invalid(&format!("{base}format = \"xml\"\n")).1, "format");
    assert_eq!(
        invalid("[[sink]]\nname = \"x\"\nkind = \"kafka\"\n").1,
        "kind"
    );
    let (line, key, _) = invalid(&format!("{base}{base}"));
    assert_eq!((line, key.as_str()), (6, "name"));
    let display = parse(&format!("{base}keep = -1\n"))
        .unwrap_err()
        .to_string();
    assert!(
        display.starts_with("/etc/m87/audit-sinks.toml, line 5, key `keep`:"),
        "{display}"
    );
}

#[test]
fn secrets_come_from_files_and_never_show_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "hec-token-value-123\n").unwrap();
    std::fs::write(dir.path().join("key"), "es-api-key-456").unwrap();
    let text = "[[sink]]\nname = \"s\"\nkind = \"splunk_hec\"\nurl = \"https://splunk:8088\"\ntoken_file = \"token\"\n\
                [[sink]]\nname = \"e\"\nkind = \"elasticsearch\"\nurl = \"https://es:9200\"\nindex = \"m87\"\napi_key_file = \"key\"\n\
                [[sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://h\"\nhmac_key = \"hmac-secret-789\"\n\
                [[sink]]\nname = \"o\"\nkind = \"otlp\"\nurl = \"https://o/v1/logs\"\nheaders = { \"x-api-key\" = \"otlp-secret-000\" }\n";
    let path = dir.path().join("sinks.toml");
    std::fs::write(&path, text).unwrap();
    let c = SinksConfig::from_file(&path).unwrap();
    match &c.sinks[0].kind {
        SinkKind::SplunkHec(h) => assert_eq!(h.token.expose(), "hec-token-value-123"),
        other => panic!("{other:?}"),
    }
    match &c.sinks[1].kind {
        SinkKind::Elasticsearch(e) => {
            assert!(matches!(&e.auth, ElasticAuth::ApiKey(k) if k.expose() == "es-api-key-456"))
        }
        other => panic!("{other:?}"),
    }
    let debug = format!("{c:?}");
    for secret in [
        "hec-token-value-123",
        "es-api-key-456",
        "hmac-secret-789",
        "otlp-secret-000",
    ] {
        assert!(!debug.contains(secret), "Debug shows {secret}");
    }
}

#[tokio::test]
async fn the_status_holds_no_secret() {
    let text = "[[sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nhmac_key = \"hmac-secret-789\"\ntimeout = \"200ms\"\n";
    let c = parse(text).unwrap();
    let source = std::sync::Arc::new(m87_audit_export::MemorySource::new());
    common::events::append_sessions(&source, 3);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let handle = m87_audit_export::Exporter::new(
        &c,
        source,
        std::sync::Arc::new(m87_audit_export::MemoryCursors::new()),
        std::sync::Arc::new(m87_audit_export::AlwaysHeld),
    )
    .unwrap()
    .with_timing(common::fast_timing())
    .spawn(rx);
    common::wait_until(
        std::time::Duration::from_secs(10),
        "a failed delivery",
        || handle.status()[0].retried > 0,
    )
    .await;
    let status = serde_json::to_string(&handle.status()).unwrap();
    assert!(status.contains("\"last_error\":\""), "{status}");
    assert!(!status.contains("hmac-secret-789"), "{status}");
    let _ = stop.send(true);
    handle.join().await;
}
