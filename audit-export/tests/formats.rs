//! The formats: OCSF classes and `type_uid`, ECS fields, CEF escaping, and the fields every
//! record carries (event id, position, hash, previous hash).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::events::{alice, envelope, every_kind, refused};
use m87_audit_export::MemorySource;
use m87_audit_export::format::{cef, ecs, json, ocsf};
use m87_events::audit::GENESIS;
use proptest::prelude::*;

#[test]
fn ocsf_class_activity_and_type_uid_for_every_event_kind() {
    let source = MemorySource::new();
    for (event, class_uid, activity_id) in every_kind() {
        let ty = event.event_type();
        let e = source.append(envelope(event, alice()));
        let v = ocsf(&e);
        assert_eq!(v["class_uid"], class_uid, "{ty}: class");
        assert_eq!(v["activity_id"], activity_id, "{ty}: activity");
        assert_eq!(
            v["type_uid"],
            u64::from(class_uid) * 100 + u64::from(activity_id),
            "{ty}: type_uid"
        );
        assert_eq!(v["category_uid"], class_uid / 1000, "{ty}: category");
        assert!(
            v["class_name"].as_str().is_some_and(|s| !s.is_empty()),
            "{ty}: class_name"
        );
        assert!(
            v["type_name"]
                .as_str()
                .unwrap()
                .starts_with(v["class_name"].as_str().unwrap())
        );
        assert_eq!(
            v["time"],
            e.envelope.recorded_at.timestamp_millis(),
            "{ty}: time in ms"
        );
        assert_eq!(
            v["metadata"]["uid"],
            e.envelope.event_id.to_string(),
            "{ty}: event id"
        );
        assert_eq!(v["metadata"]["product"]["name"], "m87");
        assert_eq!(v["metadata"]["product"]["vendor_name"], "m87");
        assert!(
            v["metadata"]["version"].as_str().unwrap().starts_with("1."),
            "{ty}: OCSF 1.x"
        );
        assert_eq!(v["metadata"]["log_name"], "audit");
        assert_eq!(v["unmapped"]["m87"]["hash"], e.hash.as_str());
        assert_eq!(v["unmapped"]["m87"]["prev_hash"], e.prev_hash.as_str());
        assert_eq!(v["unmapped"]["m87"]["position"], e.envelope.global_position);
        assert_eq!(v["unmapped"]["m87"]["event_type"], ty);
        assert_eq!(
            v["actor"]["user"]["email_addr"], "alice@example.com",
            "{ty}: actor"
        );
        assert_eq!(v["src_endpoint"]["ip"], "192.0.2.7", "{ty}: source ip");
        assert!(
            matches!(v["status_id"].as_u64(), Some(1 | 2)),
            "{ty}: status_id"
        );
    }
}

#[test]
fn ocsf_refusals_fail_and_sessions_carry_device_and_traffic() {
    let source = MemorySource::new();
    let e = source.append(envelope(refused("no access"), alice()));
    let v = ocsf(&e);
    assert_eq!(v["status_id"], 2);
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["status_code"], "access_revoked");
    assert_eq!(v["device"]["uid"], "edge-device-01");
    assert!(v["session"]["uid"].is_string());
    let closed = common::events::closed(m87_events::token::Operation::Exec, Some(3));
    let v = ocsf(&source.append(envelope(closed, alice())));
    assert_eq!(v["status_id"], 2, "a non-zero exit is a failure");
    assert_eq!(v["traffic"]["bytes_in"], 10);
    assert_eq!(v["traffic"]["bytes_out"], 20);
    assert_eq!(v["dst_endpoint"]["uid"], "edge-device-01");
    assert_eq!(e.prev_hash, GENESIS);
}

#[test]
fn ecs_documents_use_ecs_field_names() {
    let source = MemorySource::new();
    for (event, _, _) in every_kind() {
        let ty = event.event_type();
        let e = source.append(envelope(event, alice()));
        let v = ecs(&e);
        let ts = v["@timestamp"].as_str().unwrap();
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(ts)
                .unwrap()
                .timestamp_micros(),
            e.envelope.recorded_at.timestamp_micros(),
            "{ty}"
        );
        assert_eq!(v["event"]["id"], e.envelope.event_id.to_string());
        assert_eq!(v["event"]["kind"], "event");
        assert_eq!(v["event"]["dataset"], "m87.audit");
        assert!(
            v["event"]["action"]
                .as_str()
                .is_some_and(|a| m87_events::audit::ACTIONS.contains(&a)),
            "{ty}: action"
        );
        assert!(
            matches!(
                v["event"]["outcome"].as_str(),
                Some("success" | "failure" | "unknown")
            ),
            "{ty}: outcome"
        );
        assert!(
            v["event"]["category"]
                .as_array()
                .is_some_and(|c| !c.is_empty()),
            "{ty}: category"
        );
        assert!(
            v["event"]["type"].as_array().is_some_and(|c| !c.is_empty()),
            "{ty}: type"
        );
        assert_eq!(v["user"]["email"], "alice@example.com");
        assert_eq!(v["source"]["ip"], "192.0.2.7");
        assert_eq!(v["m87"]["hash"], e.hash.as_str());
        assert_eq!(v["m87"]["prev_hash"], e.prev_hash.as_str());
        assert_eq!(v["labels"]["m87_hash"], e.hash.as_str());
        assert_eq!(v["event"]["sequence"], e.envelope.global_position);
    }
    let v = ecs(&source.append(envelope(refused("nope"), alice())));
    assert_eq!(v["event"]["outcome"], "failure");
    assert_eq!(v["host"]["id"], "edge-device-01");
    assert_eq!(v["event"]["category"][0], "session");
}

#[test]
fn json_is_the_entry_itself() {
    let source = MemorySource::new();
    let e = source.append(envelope(refused("x"), alice()));
    let back: m87_audit_export::AuditEntry = serde_json::from_value(json(&e)).unwrap();
    assert_eq!(back, e);
}

/// Splits a CEF line into its 7 header fields (unescaped) and its extensions (unescaped).
fn parse_cef(line: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut header = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while header.len() < 7 {
        match chars.next().expect("the header has 7 fields ending in |") {
            '\\' => cur.push(chars.next().unwrap()),
            '|' => header.push(std::mem::take(&mut cur)),
            '\n' | '\r' => panic!("raw line break in the header"),
            c => cur.push(c),
        }
    }
    let ext: String = chars.collect();
    assert!(
        !ext.contains('\n') && !ext.contains('\r'),
        "raw line break in the extensions: {ext:?}"
    );
    // Positions of unescaped '='; each key is the word before it.
    let b: Vec<char> = ext.chars().collect();
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '\\' => i += 2,
            '=' => {
                eqs.push(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let mut pairs = Vec::new();
    for (n, &eq) in eqs.iter().enumerate() {
        let key_start = b[..eq].iter().rposition(|c| *c == ' ').map_or(0, |p| p + 1);
        let key: String = b[key_start..eq].iter().collect();
        let end = eqs.get(n + 1).map_or(b.len(), |&next| {
            b[..next].iter().rposition(|c| *c == ' ').unwrap()
        });
        let raw: String = b[eq + 1..end].iter().collect();
        pairs.push((key, unescape(&raw)));
    }
    (header, pairs)
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next().unwrap() {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                o => out.push(o),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn cef_escapes_a_hostile_value() {
    let hostile = "evil|dev=1 \\ cs1=forged\nsecond line";
    let source = MemorySource::new();
    let e = source.append(envelope(refused(hostile), alice()));
    let line = cef(&e);
    assert!(line.starts_with("CEF:0|m87|m87|"), "{line}");
    let (header, ext) = parse_cef(&line);
    assert_eq!(header[0], "CEF:0");
    assert_eq!(header[4], "SessionRefused");
    assert_eq!(header[6], "7", "refusals have severity 7");
    let get = |k: &str| {
        ext.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        get("reason"),
        vec![format!("access_revoked: {hostile}")],
        "{line}"
    );
    assert_eq!(
        get("cs1"),
        vec![e.hash.clone()],
        "the hostile text cannot forge cs1: {line}"
    );
    assert_eq!(get("externalId"), vec![e.envelope.event_id.to_string()]);
    assert_eq!(get("cs2"), vec![e.prev_hash.clone()]);
    assert_eq!(get("cn1"), vec![e.envelope.global_position.to_string()]);
    assert_eq!(get("suser"), vec!["alice@example.com".to_owned()]);
    assert_eq!(get("src"), vec!["192.0.2.7".to_owned()]);
    assert_eq!(get("dhost"), vec!["edge-device-01".to_owned()]);
}

#[test]
fn cef_header_escapes_pipes_and_backslashes() {
    assert_eq!(
        m87_audit_export::format::cef::escape_header("a|b\\c\nd"),
        "a\\|b\\\\c d"
    );
}

proptest! {
    #[test]
    fn cef_values_round_trip_and_never_break_the_line(s in "[ -~\\n\\r|=\\\\é]{0,40}") {
        let escaped = m87_audit_export::format::cef::escape_value(&s);
        prop_assert!(!escaped.contains('\n') && !escaped.contains('\r'));
        prop_assert_eq!(unescape(&escaped), s);
    }

    #[test]
    fn syslog_sd_values_round_trip(s in "[ -~\\]\"\\\\]{0,40}") {
        let escaped = m87_audit_export::sink::syslog_escape_sd(&s);
        let mut out = String::new();
        let mut it = escaped.chars();
        while let Some(c) = it.next() {
            if c == '\\' { out.push(it.next().unwrap()); } else {
                prop_assert!(c != '"' && c != ']', "unescaped {} in {}", c, escaped);
                out.push(c);
            }
        }
        prop_assert_eq!(out, s);
    }
}
