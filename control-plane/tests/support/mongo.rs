//! The MongoDB test server harness, from the shared test-support crate (`m87_test_support::mongo`);
//! this file also serves the store conformance suite's unit tests, which include it by path.

pub use m87_test_support::mongo::*;
