//! The m87 device runtime (the agent): registration and staying enrolled, the tunnel to a relay
//! with reconnect, and the services behind each operation. How it reaches the server and the
//! relays (QUIC, frames, the REST client, the credentials file) comes from `m87-transport`.
//!
//! # Layout
//!
//! - [`sysinfo`]: what the device tells about itself.
//! - [`runtime`]: register, wait for approval, receive the key once, stay enrolled.
//! - [`services`]: what runs behind each channel (exec, shell, forward, files).
//! - [`tunnel`]: the device's tunnel to a relay and the sessions it serves.
//! - [`credentials`], [`frames`], [`http`], [`quic`]: re-exports of the `m87-transport` modules
//!   of the same names, for callers that still reach them through the agent (the server
//!   crate); new code imports `m87_transport` directly.

pub mod runtime;
pub mod services;
pub mod sysinfo;
pub mod tunnel;

pub use m87_transport::{credentials, frames, http, quic};
