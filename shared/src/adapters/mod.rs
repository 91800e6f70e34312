//! Adapters: each port made real, plus in-memory versions of all of them.
//!
//! Real adapters translate SDK and driver errors into the port's error types
//! here, at the boundary, so no service ever sees an SDK type.

pub mod apigw;
pub mod aws;
pub mod dynamo;
pub mod lambda;
pub mod memory;
pub mod rate_limit;
pub mod redis;
pub mod sns;
