//! The m87 transport: how a device, the CLI and a relay reach each other, written once for all
//! of them. It sits below `agent`, `relay-node` and `cli` (and lends `control-plane` its
//! fingerprint and private file writes) and depends only on `m87-events`.
//!
//! # Layout
//!
//! - [`tls`]: the certificate fingerprint, the pinned-certificate verifier, the *ring* crypto
//!   provider.
//! - [`quic`]: QUIC transport settings (client and server idle timeouts, ACK frequency), UDP
//!   socket tuning, and the client: pinned TLS, client configuration, connect.
//! - [`frames`]: tunnel frames over async byte streams; reading a stream's first control frame
//!   within a time limit.
//! - [`stream`]: boxed stream halves and the byte splice of forwards.
//! - [`forward`]: the forward parameters both ends share.
//! - [`http`]: the REST client of the device runtime and the CLI.
//! - [`credentials`]: the credentials file shared by the device runtime and the CLI.
//! - [`private_file`]: atomic 0600 file writes (keys, credentials).

pub mod credentials;
pub mod forward;
pub mod frames;
pub mod http;
pub mod private_file;
pub mod quic;
pub mod stream;
pub mod tls;
