//! ArcSight Common Event Format: `CEF:0|m87|m87|version|signature|name|severity|extensions`.
//!
//! Header fields escape `\` and `|`; extension values escape `\`, `=` and line breaks (as
//! `\n`, `\r`). Control characters that CEF has no escape for become spaces.

use m87_events::audit::{AuditEntry, Outcome};
use m87_events::domain::DomainEvent;

use super::Facts;

/// Escapes a header field.
pub fn escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an extension value.
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn severity(o: Outcome) -> u8 {
    match o {
        Outcome::Ok | Outcome::Open => 3,
        Outcome::Failed => 5,
        Outcome::Refused => 7,
    }
}

/// The CEF line of an entry (no trailing newline).
pub fn cef(entry: &AuditEntry) -> String {
    let f = Facts::of(entry);
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", f.time().timestamp_millis().to_string()),
        ("externalId", f.event_id()),
        ("act", f.action.to_owned()),
        ("outcome", f.outcome.as_str().to_owned()),
        ("msg", f.message.clone()),
        ("cs1Label", "m87Hash".to_owned()),
        ("cs1", entry.hash.clone()),
        ("cs2Label", "m87PrevHash".to_owned()),
        ("cs2", entry.prev_hash.clone()),
        ("cn1Label", "m87Position".to_owned()),
        ("cn1", f.position().to_string()),
    ];
    if let Some(email) = &f.user_email {
        ext.push(("suser", email.clone()));
    } else {
        ext.push(("suser", f.actor.clone()));
    }
    if let Some(k) = &f.key_id {
        ext.push(("cs5Label", "m87KeyId".to_owned()));
        ext.push(("cs5", k.clone()));
    }
    if let Some(ip) = &f.source_ip {
        ext.push(("src", ip.clone()));
    }
    if let Some(d) = &f.device {
        ext.push(("dhost", d.clone()));
        ext.push(("cs3Label", "m87Device".to_owned()));
        ext.push(("cs3", d.clone()));
    }
    if let Some(s) = &f.session {
        ext.push(("cs4Label", "m87Session".to_owned()));
        ext.push(("cs4", s.clone()));
    }
    extras(&entry.envelope.event, &mut ext);
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", escape_value(&v)))
        .collect();
    format!(
        "CEF:0|m87|m87|{}|{}|{}|{}|{}",
        escape_header(env!("CARGO_PKG_VERSION")),
        escape_header(f.event_type),
        escape_header(&name(&f)),
        severity(f.outcome),
        ext.join(" ")
    )
}

fn name(f: &Facts<'_>) -> String {
    match &f.device {
        Some(d) => format!("{} {} on {d}", f.action, f.outcome.as_str()),
        None => format!("{} {}", f.action, f.outcome.as_str()),
    }
}

fn extras(ev: &DomainEvent, ext: &mut Vec<(&'static str, String)>) {
    match ev {
        DomainEvent::SessionClosed(e) => {
            ext.push(("in", e.bytes_to_device.to_string()));
            ext.push(("out", e.bytes_from_device.to_string()));
            if let Some(r) = &e.reason {
                ext.push(("reason", r.clone()));
            }
        }
        DomainEvent::SessionRefused(e) => ext.push(("reason", format!("{}: {}", e.code, e.reason))),
        DomainEvent::AccessGranted(e) => ext.push(("duser", e.scope.to_string())),
        DomainEvent::AccessRevoked(e) => ext.push(("duser", e.scope.to_string())),
        DomainEvent::MemberAdded(e) => ext.push(("duser", e.email.to_string())),
        DomainEvent::MemberRemoved(e) => ext.push(("duser", e.email.to_string())),
        DomainEvent::MemberRoleChanged(e) => ext.push(("duser", e.email.to_string())),
        DomainEvent::ApiKeyCreated(e) => ext.push(("duser", e.email.to_string())),
        _ => {}
    }
}
