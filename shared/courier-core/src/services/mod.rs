//! The services: DESIGN §1's flow and §4's rules, written once over the ports.
//!
//! A service takes `&Ports` and typed inputs and returns typed outcomes; it
//! never sees an API Gateway event or an SDK type. Handlers (in `functions/`)
//! and the local gateway call the same services.

pub mod ack;
pub mod catch_up;
pub mod connect;
pub mod conversations;
pub mod delivery;
pub mod devices;
pub mod fault;
pub mod push;
pub mod send;
