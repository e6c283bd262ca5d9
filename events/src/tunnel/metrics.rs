//! The metrics channel: live samples of the device's load.
//!
//! The device answers `ChannelAccepted`, then sends one `Data` frame per sample, each a
//! JSON-encoded sample, every `interval_ms`, until the client closes the stream. Viewers of one
//! device share one sampler on it.

/// Shortest sampling interval a client may ask for (milliseconds).
pub const MIN_INTERVAL_MS: u32 = 200;
/// Longest sampling interval (milliseconds).
pub const MAX_INTERVAL_MS: u32 = 3_600_000;
