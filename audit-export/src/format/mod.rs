//! Pure functions from an audit entry to a record of each format: no I/O, no clock.
//!
//! Every record carries the event id (for dropping duplicates), the entry's position, its
//! chain hash and the previous entry's hash. The OCSF class of each event is chosen in
//! [`ocsf::class_of`]; `docs/audit-export.md` has the table.

pub mod cef;
pub mod ecs;
mod facts;
pub mod ocsf;

pub use cef::cef;
pub use ecs::ecs;
pub use facts::Facts;
pub use ocsf::ocsf;

use m87_events::audit::AuditEntry;
use serde_json::Value;

use crate::config::Format;

/// The entry itself as JSON: `{"envelope": …, "prev_hash": …, "hash": …}`.
pub fn json(entry: &AuditEntry) -> Value {
    serde_json::to_value(entry).unwrap_or(Value::Null)
}

/// The record as a JSON value: an object for OCSF, ECS and JSON, a string for CEF.
pub fn to_value(format: Format, entry: &AuditEntry) -> Value {
    match format {
        Format::Ocsf => ocsf(entry),
        Format::Ecs => ecs(entry),
        Format::Cef => Value::String(cef(entry)),
        Format::Json => json(entry),
    }
}

/// The record as one line of text without its newline: compact JSON, or the CEF line.
pub fn to_line(format: Format, entry: &AuditEntry) -> String {
    match format {
        Format::Cef => cef(entry),
        other => to_value(other, entry).to_string(),
    }
}
