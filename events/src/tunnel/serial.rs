//! The serial channel: a serial port on the device, opened with these settings.
//!
//! The device opens the port and answers `ChannelAccepted` (or `Refused` with code
//! `unavailable`, naming the port and why); after that the stream carries the port's raw bytes
//! both ways until either side closes it.

use serde::{Deserialize, Serialize};

/// Parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// None.
    None,
    /// Odd.
    Odd,
    /// Even.
    Even,
}

/// The port and its line settings (also the session's grant arguments: the device checks they
/// match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSettings {
    /// The device's port (`/dev/ttyUSB0`).
    pub path: String,
    /// Baud rate.
    pub baud: u32,
    /// Data bits: 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits: 1 or 2.
    pub stop_bits: u8,
}

impl SerialSettings {
    /// Checks the settings are ones a port can have; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!(
                "serial port {:?} must be an absolute path on the device (/dev/ttyUSB0)",
                self.path
            ));
        }
        if self.baud == 0 || self.baud > 4_000_000 {
            return Err(format!(
                "baud rate {} is out of range (1 to 4000000; common: 9600, 115200)",
                self.baud
            ));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(format!("data bits must be 5 to 8, not {}", self.data_bits));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(format!("stop bits must be 1 or 2, not {}", self.stop_bits));
        }
        Ok(())
    }
}
