//! Test support shared by the integration tests that need outside services: the MongoDB
//! harness lives in the `m87-test-support` crate.

pub use m87_test_support::mongo;
