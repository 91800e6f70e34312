//! `courier-bench`: Courier measured against its physical limits (issue 7).
//!
//! Every figure is taken on the real code and real services of this
//! machine: the function crates' handlers (or their release binaries),
//! `DynamoStore` on moto, `RedisRegistry` on redis-server, the
//! `ApiGatewayManagement` adapter against the local gateway's
//! `@connections`, and WebSocket clients through `courier-local`. Network
//! distance is made with the project's own fault proxy
//! (`courier_tests::proxy`), which delays every chunk one way, so each
//! sequential round trip on a path shows up as time.
//!
//! Layout, one module per figure of the issue:
//!
//! - [`catchup`]: the catch-up's depth in round trips (slopes over paired
//!   runs at two injected delays, on moto and on a parallel in-memory
//!   backend) against the design's, the fair baseline beside it, and frames
//!   against the packing bound.
//! - [`catch_up_memory`]: catch-up's peak heap and `VmHWM` at the worst
//!   case for memory (largest bodies, reads answered at once, posts
//!   slowed) against its byte bound, each run a process of its own (the
//!   `catch-up-memory` binary, with a counting allocator).
//! - [`send`]: round trips of `sendMessage` → `sent` and → the recipient's
//!   frame, and the throughput of 100 concurrent senders.
//! - [`devices`]: several devices per user — catch-up depth with other
//!   devices' cursors, live fan-out to 5 devices against a sequential loop,
//!   the tapped conversation's first frame.
//! - [`storm`]: 1,000 clients with a backlog reconnecting at once.
//! - [`functions`]: per-function binary size, start-up to the first handled
//!   invocation, peak RSS and CPU per delivered message, measured on child
//!   processes served by [`runtime_api`], a stand-in of the Lambda Runtime
//!   API.
//! - [`startup`]: start-up as Lambda counts it — the same binaries under
//!   the template's CPU share ([`quota`]), with TLS to the endpoints
//!   ([`tls`]), cold and warm page cache, beside the unthrottled spawn.
//! - [`profiles`]: the release profile variants (opt-level, LTO) built and
//!   measured with [`functions`].
//! - [`cost`]: cost per million messages, from the requests each workload
//!   made counted at the wire and priced with `bench/prices.toml`, beside
//!   the design of aws-samples' simple-websockets-chat-app.
//!
//! Support: [`backends`] (servers, clients, proxies), [`seed`] (backlogs
//! written straight into the tables), [`ws`] (a bare WebSocket client that
//! timestamps every frame), [`gateway`] (the local gateway wired to the
//! adapters a figure needs), [`report`] (the table) and [`stats`].
//!
//! Benchmarks assert nothing about wall-clock time: a figure that misses its
//! target is reported as missed. What the smoke run (`courier-bench smoke`,
//! a step of `scripts/test`) does assert are counts and bounds: every
//! message delivered, frames within the packing bound, catch-up's peak
//! heap within its byte bound, every storm client caught up.

pub mod backends;
pub mod catch_up_memory;
pub mod catchup;
pub mod cost;
pub mod devices;
pub mod functions;
pub mod gateway;
pub mod profiles;
pub mod quota;
pub mod report;
pub mod runtime_api;
pub mod seed;
pub mod send;
pub mod startup;
pub mod stats;
pub mod storm;
pub mod tls;
pub mod trace;
pub mod ws;
