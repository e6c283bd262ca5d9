//! The status channel: the device's health report.
//!
//! The device answers `ChannelAccepted`, sends one `Data` frame with its JSON-encoded report,
//! and finishes the stream.
