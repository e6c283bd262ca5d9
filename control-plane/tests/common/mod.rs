//! Helpers shared by the control plane's integration tests: the OIDC provider and the token
//! helpers, from the shared test-support crate.

pub use m87_test_support::{oidc, tokens};
