//! Signing in with OpenID Connect: the device authorization grant for `m87 login`, keeping the
//! session's tokens fresh, and revoking them at `m87 logout`.

pub mod http;
pub mod oidc;
pub mod session;
