//! Test harnesses shared by the integration tests of `m87-control-plane` and `m87-server`: the
//! real outside services the tests run against, each started on a free loopback port and
//! stopped when dropped. The binaries are found relative to the workspace root (the parent of
//! this crate): `.test-env/venv/bin` and `ops/oidc-provider`, both installed by
//! `scripts/setup-test-env`.
//!
//! # Layout
//!
//! - [`mongo`]: a MongoDB wire-compatible server (SecantusDB), or `MONGODB_URI`.
//! - [`nats`]: `nats-server` processes with JetStream.
//! - [`oidc`]: a real OpenID Connect provider (npm `oidc-provider`) run with Node.
//! - [`tokens`]: signing test JWTs and serving their keys (a local issuer).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod mongo;
pub mod nats;
pub mod oidc;
pub mod tokens;
