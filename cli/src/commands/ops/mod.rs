//! `m87 <device> docker|logs|metrics|serial|status|ls`: the device operations beyond exec,
//! shell, forward and files, one module each. Each opens a session for its operation (granted
//! and audited like exec) and one or more channels in it.

pub mod docker;
pub mod logs;
pub mod ls;
pub mod metrics;
pub mod serial;
pub mod status;
