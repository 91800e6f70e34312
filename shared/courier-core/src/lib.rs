//! Courier's core: everything the flow needs that is not a cloud service.
//!
//! Layers, from the inside out; each module uses only those above it in this
//! list (`tests/layering.rs` checks it, and a reviewer can: every `use
//! crate::…` line of a module names one of its elders):
//!
//! - [`domain`]: ids, seqs, messages, pending rows — types that only hold
//!   valid values.
//! - [`backoff`]: the doubling, capped, jittered wait of every retry loop
//!   (here and in `courier-aws`).
//! - [`telemetry`]: every metric's name, unit, dimensions and meaning, and
//!   the calls that record them through the `metrics` facade (the exporter
//!   is the edge's, in `courier-aws`).
//! - [`protocol`]: the JSON frames of `docs/protocol.md`, parsed and built in
//!   one place.
//! - [`config`]: typed configuration read once from the environment.
//! - [`ports`]: the traits the services need (registry, stores, gateway,
//!   catch-up trigger, notifier, rate limiter), each with the invariant its
//!   adapters keep.
//! - [`adapters`]: every port in memory (the embedded default, the unit
//!   tests' double, the conformance reference) and [`adapters::unwired`].
//! - [`app`]: what a handler borrows — [`app::Ports`] and
//!   [`app::Settings`] — and the in-memory wiring.
//! - [`services`]: the flow and the delivery rules of
//!   `docs/architecture.md`, written once over the ports.
//! - [`strategies`] (tests, and the `proptest` feature): property-test
//!   inputs shared with other crates' tests; uses no other module.
//!
//! The AWS and Redis adapters, the Lambda edge and the wiring from
//! environment variables are the `courier-aws` crate's: this crate's
//! dependency tree holds no AWS SDK, Redis driver, hyper or rustls
//! (`scripts/check-core-deps` fails the test command if one comes back).

pub mod adapters;
pub mod app;
pub mod backoff;
pub mod config;
pub mod domain;
pub mod ports;
pub mod protocol;
pub mod services;
#[cfg(any(test, feature = "proptest"))]
pub mod strategies;
pub mod telemetry;
