//! The CLI's commands, one module per noun.

pub mod api_keys;
pub mod audit;
pub mod devices;
pub mod files;
pub mod login;
pub mod mcp;
pub mod ops;
pub mod orgs;
pub mod policy;
pub mod profile;
pub mod recording;
pub mod remote;
pub mod runtime;
pub mod ssh;
pub mod suggest;
pub mod update;
pub mod version;
