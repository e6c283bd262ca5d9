//! The m87 device runtime (the agent): registration, credentials, and staying enrolled. Later
//! issues add the tunnel and the services behind each operation.
//!
//! # Layout
//!
//! - [`credentials`]: the shared credentials file (`credentials.json`, 0600, atomic writes).
//! - [`http`]: the REST client the runtime and the CLI share.
//! - [`sysinfo`]: what the device tells about itself.
//! - [`backoff`]: exponential backoff with jitter for every retry loop.
//! - [`runtime`]: register, wait for approval, receive the key once, stay enrolled.
//! - [`frames`]: tunnel frames over async byte streams.
//! - [`services`]: what runs behind each channel (exec, shell, forward, files).
//! - [`quic`]: QUIC client settings with relay certificate pinning.
//! - [`tunnel`]: the device's tunnel to a relay and the sessions it serves.

pub mod backoff;
pub mod credentials;
pub mod frames;
pub mod http;
pub mod quic;
pub mod runtime;
pub mod services;
pub mod sysinfo;
pub mod tunnel;
