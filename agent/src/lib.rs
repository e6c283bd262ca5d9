//! The m87 device runtime (the agent): registration and staying enrolled, the tunnel to a relay
//! with reconnect, and the services behind each operation. How it reaches the server and the
//! relays (QUIC, frames, the REST client, the credentials file) comes from `m87-transport`.
//!
//! # Layout
//!
//! - [`sysinfo`]: what the device tells about itself.
//! - [`backoff`]: exponential backoff with jitter for every retry loop.
//! - [`live`]: the state-directory lock and the live state `m87 runtime status` reads.
//! - [`runtime`]: register, wait for approval, receive the key once, stay enrolled.
//! - [`services`]: what runs behind each channel (exec, shell, forward, files).
//! - [`tunnel`]: the device's tunnel to a relay and the sessions it serves.

/// Prints a line for the person running the runtime (stdout) and writes it to the runtime's
/// log too (an `info` event with target `m87_agent::console`), so `m87 <device> logs` shows it.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        tracing::info!(target: "m87_agent::console", "{line}");
    }};
}

/// As [`say!`], on stderr and as a `warn` event.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        eprintln!("{line}");
        tracing::warn!(target: "m87_agent::console", "{line}");
    }};
}

pub mod backoff;
pub mod live;
pub mod runtime;
pub mod services;
pub mod sysinfo;
pub mod tunnel;
