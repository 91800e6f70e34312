//! Courier on AWS: the ports of `courier-core` made real, the Lambda edge,
//! and the wiring from environment variables.
//!
//! - [`edge`]: what every handler shares — reading an API Gateway WebSocket
//!   event, answering it, telemetry.
//! - [`telemetry`]: logs and CloudWatch embedded-metric-format metrics,
//!   installed once in `main` and flushed once per invocation; the
//!   correlation span.
//! - [`wiring`]: from environment variables to a `courier_core::app::App`
//!   of real adapters ([`wiring::Needs`] says which ports a function asks
//!   for; the rest stay unwired).
//! - One module per adapter, each behind the feature of the same name so a
//!   function links only the clients it uses: [`dynamo`] (`dynamodb`),
//!   [`redis`] and [`rate_limit`] (`redis`), [`apigw`] (`apigw`),
//!   [`lambda`] (`lambda`), [`sns`] (`sns`).
//! - [`auth`] (`auth`): JWT verification for the `$connect` authorizer
//!   (HS256 secret, RS256 via a cached JWKS) and token minting.
//!
//! Adapters translate SDK and driver errors into the port's error types here,
//! at the boundary, so no service ever sees an SDK type.

pub mod edge;
pub mod telemetry;
pub mod wiring;

#[cfg(feature = "apigw")]
pub mod apigw;
#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "dynamodb")]
pub mod dynamo;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "redis")]
pub mod rate_limit;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
mod redis_link;
#[cfg(feature = "sns")]
pub mod sns;
