//! `m87-server audit verify`: walks the hash chain and the event log side by side and names
//! the first entry that was changed, removed or inserted.

use m87_events::audit::{GENESIS, canonical, chain_hash};
use serde::Serialize;

use crate::store::audit::{AuditStore, StoredEntry};
use crate::store::{EventStore, StoreError};

/// What is wrong at one place of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// The entry's text no longer hashes to its stored hash.
    Changed,
    /// The entry does not link to the one before it: an entry before it was removed.
    Removed,
    /// An entry is in the chain or the log that the other does not have, or that does not
    /// link: it was inserted.
    Inserted,
    /// The log's event at this position differs from the chain's entry.
    LogChanged,
    /// The chain has an entry whose event is missing from the log.
    LogRemoved,
    /// The log has an event the chain does not.
    LogInserted,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What.
    pub kind: Tamper,
    /// The position of the entry (or event) named.
    pub position: u64,
    /// In words, for people.
    pub message: String,
}

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub checked: u64,
    /// The last position checked.
    pub head: u64,
    /// The first problem, if any.
    pub finding: Option<Finding>,
}

const PAGE: usize = 1000;

fn finding(kind: Tamper, position: u64, message: String) -> Option<Finding> {
    Some(Finding {
        kind,
        position,
        message,
    })
}

/// Checks one entry against the previous entry's hash.
fn check_link(entry: &StoredEntry, prev: &(u64, String)) -> Option<Finding> {
    let (prev_pos, prev_hash) = prev;
    if chain_hash(&entry.prev_hash, &entry.entry) != entry.hash {
        return finding(
            Tamper::Changed,
            entry.position,
            format!(
                "entry {} was changed: its content does not hash to its stored hash",
                entry.position
            ),
        );
    }
    if &entry.prev_hash != prev_hash {
        // A broken link after a gap in positions is a removal; with no gap, an insertion.
        return if entry.position > prev_pos + 1 {
            finding(
                Tamper::Removed,
                prev_pos + 1,
                format!(
                    "entry {} was removed: entry {} does not link to entry {prev_pos}",
                    prev_pos + 1,
                    entry.position
                ),
            )
        } else {
            // The entry before verified against its own stored hash, but this one was chained
            // to another: the one before was put in its place.
            finding(
                Tamper::Inserted,
                *prev_pos,
                format!(
                    "entry {prev_pos} was inserted in place of the original: entry {} does not \
                     link to it",
                    entry.position
                ),
            )
        };
    }
    None
}

/// Walks the whole chain and the log.
pub async fn verify(
    trail: &dyn AuditStore,
    log: &dyn EventStore,
) -> Result<VerifyReport, StoreError> {
    let mut prev = (0u64, GENESIS.to_owned());
    let mut checked = 0u64;
    loop {
        let entries = trail.entries(prev.0, PAGE).await?;
        let Some(last) = entries.last().map(|e| e.position) else {
            break;
        };
        let events = log.read_all(prev.0, PAGE).await?;
        let mut events = events.into_iter().peekable();
        for entry in &entries {
            if let Some(f) = check_link(entry, &prev) {
                return Ok(report(checked, prev.0, Some(f)));
            }
            // The log, position by position up to this entry.
            if let Some(ev) = events.next_if(|e| e.global_position < entry.position) {
                let f = finding(
                    Tamper::LogInserted,
                    ev.global_position,
                    format!(
                        "event {} ({}) is in the log but not in the chain: it was inserted",
                        ev.global_position,
                        ev.event.event_type()
                    ),
                );
                return Ok(report(checked, prev.0, f));
            }
            match events.next_if(|e| e.global_position == entry.position) {
                Some(ev) if canonical(&ev) == entry.entry => {}
                Some(ev) => {
                    let f = finding(
                        Tamper::LogChanged,
                        entry.position,
                        format!(
                            "event {} ({}) in the log differs from its chained entry: it was changed",
                            entry.position,
                            ev.event.event_type()
                        ),
                    );
                    return Ok(report(checked, prev.0, f));
                }
                None => {
                    let f = finding(
                        Tamper::LogRemoved,
                        entry.position,
                        format!(
                            "entry {} is in the chain but its event is not in the log: the event \
                             was removed, or the entry inserted",
                            entry.position
                        ),
                    );
                    return Ok(report(checked, prev.0, f));
                }
            }
            prev = (entry.position, entry.hash.clone());
            checked += 1;
        }
        if last != prev.0 {
            break;
        }
    }
    Ok(report(checked, prev.0, None))
}

fn report(checked: u64, head: u64, finding: Option<Finding>) -> VerifyReport {
    VerifyReport {
        checked,
        head,
        finding,
    }
}
