//! Test support shared by the integration tests that need outside services.

pub mod mongo;
