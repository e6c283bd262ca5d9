//! The m87 device runtime (the agent): registration and staying enrolled, the tunnel to a relay
//! with reconnect, and the services behind each operation. How it reaches the server and the
//! relays (QUIC, frames, the REST client, the credentials file) comes from `m87-transport`.
//!
//! # Layout
//!
//! - [`sysinfo`]: what the device tells about itself.
//! - [`backoff`]: exponential backoff with jitter for every retry loop.
//! - [`runtime`]: register, wait for approval, receive the key once, stay enrolled.
//! - [`services`]: what runs behind each channel (exec, shell, forward, files).
//! - [`tunnel`]: the device's tunnel to a relay and the sessions it serves.

pub mod backoff;
pub mod runtime;
pub mod services;
pub mod sysinfo;
pub mod tunnel;
