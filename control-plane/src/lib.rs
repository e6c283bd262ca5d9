//! The m87 control plane: the REST API, authentication, the command handlers that turn requests
//! into events, the event store, the bus and the projections that feed the API.
//!
//! # Layout
//!
//! - [`domain`]: aggregates and business rules, pure.
//! - [`store`]: the event store seam (SQLite, memory) and its conformance suite.
//! - [`bus`]: the event bus seam (in-process) and the publisher that feeds it from the store.
//! - [`projections`]: read models, their store seam and the projector.
//! - [`service`]: command handlers and queries.
//! - [`api`]: the axum router, the error mapping, authentication extractors, OpenAPI.
//! - [`auth`]: OpenID Connect sign-in: validating the provider's JWT access tokens.
//! - [`tls`]: the self-signed certificate and the HTTPS accept loop.
//! - [`server`]: wiring it all together: [`server::run`].
//! - [`config`]: settings and defaults.

pub mod api;
pub mod auth;
pub mod bus;
pub mod config;
pub mod domain;
pub mod projections;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
