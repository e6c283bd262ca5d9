//! The listing channel (`m87 <device> ls`): a directory's entries.
//!
//! The device answers `ChannelAccepted` (or `Refused` with code `unavailable` when the path
//! does not exist or cannot be read), sends `Data` frames whose bytes are entries as JSON, one
//! per line, and ends with `Exit` (0).

use serde::{Deserialize, Serialize};

/// What to list (also the session's grant arguments: the device checks they match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// The directory (or file) on the device, as `m87 cp` takes it.
    pub path: String,
    /// Include entries whose names start with a dot.
    #[serde(default)]
    pub all: bool,
}
