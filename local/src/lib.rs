//! `courier-local`: all of Courier on one machine, with one command.
//!
//! AWS SAM cannot serve WebSocket APIs, so this crate emulates the three AWS
//! APIs Courier's functions and clients talk to, on one port, and runs the
//! very same handler code as the Lambda binaries behind them:
//!
//! - [`server`]: the WebSocket API (authorizer and `$connect` at the
//!   handshake, route selection on `action`, route responses,
//!   `$disconnect`, API Gateway's limits and timeouts), the `@connections`
//!   Management API and the Lambda Invoke API, plus `/_local/...`
//!   inspection endpoints for tests and the demo.
//! - [`routes`]: the route table, handlers as closures over the Lambda
//!   event types, so the gateway knows no handler crate.
//! - [`events`]: the events API Gateway would send, field for field.
//! - [`connections`]: opening/open connections, and the in-process
//!   `Gateway` port over them.
//! - [`invoke`]: running a function like Lambda (context, deadline,
//!   timeout, panics), and the in-process `CatchUpTrigger` port.
//! - [`pushes`]: the notifier that records pushes instead of sending them.
//! - [`page`]: the story page at `GET /`, the JavaScript client, and local
//!   tokens for it.
//! - [`wiring`]: backends (embedded memory, or Redis and DynamoDB) and the
//!   real Courier handlers on their routes.

pub mod connections;
pub mod events;
pub mod invoke;
pub mod page;
pub mod pushes;
pub mod routes;
pub mod server;
pub mod wiring;

pub use server::{Core, GatewayConfig, Inspect, RunningGateway, serve};
