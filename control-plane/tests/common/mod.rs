//! Helpers shared by the control plane's integration tests.

#![allow(dead_code)]

pub mod oidc;
pub mod tokens;
