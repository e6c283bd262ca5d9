//! The m87 control plane: the REST API, authentication, the command handlers that turn requests
//! into events, the event store, the bus and the projections that feed the API.
//!
//! Imports run one way, down this list: `server` wires everything; `api` calls `service`;
//! `service` runs `domain` decisions and writes and reads through the `store` traits; the
//! `projections` follow the `bus` and write through the `store`'s read-store trait; the `bus` is
//! fed from the `store`; `domain`, `store` and `auth` import nothing else of this crate.
//!
//! # Layout
//!
//! - [`server`]: wiring: opens the stores, bus, projector and service for one machine, a fleet
//!   or tests (in memory); the session signing key; projection rebuilds.
//! - [`tls`]: the self-signed certificate and the HTTPS listener with its limits
//!   ([`tls::HttpLimits`]: timeouts, connection caps, header size).
//! - [`api`]: the axum router, the error mapping, authentication extractors, OpenAPI.
//! - [`auth`]: OpenID Connect sign-in: validating the provider's JWT access tokens.
//! - [`service`]: [`service::ControlPlane`]: one file per aggregate or concern
//!   (registrations, devices, API keys, organizations, sessions, authentication), each with its
//!   commands and queries.
//! - [`audit`]: the audit trail: every event chained by SHA-256 into the entries `m87 audit`
//!   lists and the exporter sends; verifying the chain.
//! - [`projections`]: the projector and the read models' documents (pure projection logic).
//! - [`bus`]: the event bus seam (in-process; NATS JetStream in a fleet) and the publisher that
//!   feeds it from the store.
//! - [`domain`]: the [`domain::Aggregate`]s and the business rules that decide, pure.
//! - [`store`]: the event-store and read-store seams, grouped by backend: `store/sqlite/`
//!   (single machine), `store/mongo/` (fleet), `store/memory/` (tests), each holding both stores.
//! - [`config`]: settings and defaults.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod config;
pub mod domain;
pub mod projections;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
