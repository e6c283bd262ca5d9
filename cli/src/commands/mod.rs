//! The CLI's commands, one module per noun.

pub mod api_keys;
pub mod devices;
pub mod login;
pub mod remote;
pub mod runtime;
