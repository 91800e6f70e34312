//! The in-memory adapters: every port in one process.
//!
//! They are the embedded default of the local gateway, the unit tests'
//! double, and the reference the conformance suites hold the real adapters
//! (DynamoDB, Redis, API Gateway, SNS in `courier-aws`) to. [`unwired`] is the
//! stand-in for a port a function did not ask for.

pub mod memory;
pub mod rate_limit;
pub mod unwired;
