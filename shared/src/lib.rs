//! Courier: the library behind every Lambda function and the local gateway.
//!
//! Layout, from the inside out:
//!
//! - [`domain`]: ids, seqs, messages, pending rows — types that only hold
//!   valid values.
//! - [`protocol`]: the JSON frames of DESIGN §5, parsed and built in one place.
//! - [`ports`]: the traits the services need (registry, stores, gateway,
//!   catch-up trigger, notifier).
//! - [`services`]: the flow of DESIGN §1 and the rules of §4, written once
//!   over the ports.
//! - [`adapters`]: the ports made real (DynamoDB, Redis, API Gateway
//!   Management, Lambda, SNS) and in memory.
//! - [`app`]: wiring — the ports and config one function (or the local
//!   gateway) runs with, built once per execution environment.
//! - [`edge`]: what every handler shares: reading the API Gateway event,
//!   answering it, telemetry.
//! - [`config`]: typed configuration read once from the environment.
//! - [`auth`]: JWT verification for the `$connect` authorizer (HS256 secret,
//!   RS256 via a cached JWKS).

pub mod adapters;
pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod edge;
pub mod ports;
pub mod protocol;
pub mod services;
