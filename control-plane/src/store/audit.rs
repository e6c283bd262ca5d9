//! The audit store seam: the chained entries with their listing records, each device's owner,
//! and the export cursors. One implementation per backend (`sqlite/audit.rs`,
//! `mongo/audit.rs`, `memory/audit.rs`); the trail that fills it is `crate::audit`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use m87_events::audit::{AuditRecord, Outcome};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Whether an entry shows in listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Listing {
    /// Folded into another record (a session's closing into its grant, an enrollment into
    /// its approval): chained and exported, not listed on its own.
    Hidden = 0,
    /// Listed.
    Listed = 1,
    /// A device's tunnel coming and going: listed only when asked for by action.
    Presence = 2,
}

impl Listing {
    /// The stored number.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// From the stored number.
    pub fn from_code(code: i64) -> Self {
        match code {
            1 => Listing::Listed,
            2 => Listing::Presence,
            _ => Listing::Hidden,
        }
    }
}

/// One entry of the trail as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// The event's global position.
    pub position: u64,
    /// The position of the last event that changed the record (a session's closing).
    pub seq: u64,
    /// Whether it is listed.
    pub listing: Listing,
    /// The device concerned.
    pub device_id: Option<String>,
    /// The scope whose admins (or which user) may read it.
    pub scope: Option<String>,
    /// The user who did it.
    pub user: Option<String>,
    /// The session, for session events.
    pub session_id: Option<String>,
    /// The event's canonical text (what the chain hashes).
    pub entry: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
    /// The listing record (for a session's grant: completed by its closing).
    pub record: AuditRecord,
}

/// A device as the trail knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its owner scope.
    pub scope: String,
    /// Its name.
    pub name: String,
}

/// Everything one catch-up step writes, atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditBatch {
    /// New entries, in position order, continuing the chain.
    pub rows: Vec<AuditRow>,
    /// Records of earlier grants completed by these events: (session id, record, seq).
    pub sessions: Vec<(String, AuditRecord, u64)>,
    /// Devices recorded or renamed.
    pub devices: Vec<(String, DeviceInfo)>,
}

/// Who may read which records.
#[derive(Debug, Clone, PartialEq)]
pub enum Visibility {
    /// Everything (platform admins).
    All,
    /// Records in these scopes (the caller's own, the organizations they administer) and the
    /// caller's own records.
    Scoped {
        /// Scopes whose records are all visible.
        scopes: Vec<String>,
        /// The caller's email: their own records.
        user: String,
    },
}

/// A listing query.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditQuery {
    /// Who asks.
    pub visibility: Visibility,
    /// One device.
    pub device: Option<String>,
    /// One user.
    pub user: Option<String>,
    /// Any of these actions (empty: any listed action; presence only when named).
    pub actions: Vec<String>,
    /// One outcome.
    pub outcome: Option<Outcome>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Newest first, older than this position (paging).
    pub before: Option<u64>,
    /// Oldest change first, changed after this sequence (following).
    pub changed_after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

impl AuditQuery {
    /// Whether presence records are asked for.
    pub fn wants_presence(&self) -> bool {
        self.actions
            .iter()
            .any(|a| a == "connect" || a == "disconnect")
    }

    /// Whether a row passes every filter but paging (the memory backend's matcher, and the
    /// reference the SQL backends are tested against).
    pub fn matches(&self, row: &AuditRow) -> bool {
        let listed = match row.listing {
            Listing::Listed => true,
            Listing::Presence => self.wants_presence(),
            Listing::Hidden => false,
        };
        let visible = match &self.visibility {
            Visibility::All => true,
            Visibility::Scoped { scopes, user } => {
                row.user.as_deref() == Some(user.as_str())
                    || row.scope.as_ref().is_some_and(|s| scopes.contains(s))
            }
        };
        let time_ms = row.record.time.timestamp_millis();
        listed
            && visible
            && self
                .device
                .as_ref()
                .is_none_or(|d| row.device_id.as_ref() == Some(d))
            && self
                .user
                .as_ref()
                .is_none_or(|u| row.user.as_ref() == Some(u))
            && (self.actions.is_empty() || self.actions.contains(&row.record.action))
            && self.outcome.is_none_or(|o| row.record.outcome == o)
            && self.since.is_none_or(|t| time_ms >= t.timestamp_millis())
            && self.until.is_none_or(|t| time_ms < t.timestamp_millis())
    }
}

/// A chained entry as stored, for verifying and exporting.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// Its position.
    pub position: u64,
    /// The event's canonical text.
    pub entry: String,
    /// The previous hash, as stored.
    pub prev_hash: String,
    /// Its hash, as stored.
    pub hash: String,
}

/// The audit store seam: SQLite on one machine, MongoDB in a fleet, memory in tests.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// The last entry's position and hash ((0, GENESIS) when empty).
    async fn head(&self) -> Result<(u64, String), StoreError>;
    /// A device as last recorded.
    async fn device(&self, device_id: &str) -> Result<Option<DeviceInfo>, StoreError>;
    /// The record of a session's grant.
    async fn session(&self, session_id: &str) -> Result<Option<AuditRecord>, StoreError>;
    /// Writes a batch atomically; entries at or below the head are skipped (applying a
    /// batch twice has the effect of applying it once).
    async fn commit(&self, batch: AuditBatch) -> Result<(), StoreError>;
    /// Listing records: newest first, or (with `changed_after`) oldest change first.
    async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Up to `limit` entries after `position`, in order.
    async fn entries(&self, after: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError>;
    /// The position of the first entry recorded at or after `time`, if any.
    async fn first_since(&self, time: DateTime<Utc>) -> Result<Option<u64>, StoreError>;
    /// An export sink's saved cursor (JSON).
    async fn cursor(&self, sink: &str) -> Result<Option<String>, StoreError>;
    /// Saves an export sink's cursor (JSON).
    async fn save_cursor(&self, sink: &str, cursor: &str) -> Result<(), StoreError>;
}
