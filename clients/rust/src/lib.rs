//! `courier-client`: a Courier client that gets the delivery rules right.
//!
//! The server's half of the reconnect flow is only safe with a client that
//! keeps its half (docs/architecture.md: the reconnect flow, step 4, and the delivery rules): messages placed by seq with
//! duplicates dropped, acks only for the contiguous prefix, holes and `more`
//! pulled with a range `sync`, a full `sync` when `caught_up` is late, sends
//! retried with the same `client_msg_id` until `sent`, reconnects with
//! backoff and jitter, and a heartbeat inside the idle timeout.
//!
//! - [`timeline`]: one conversation in seq order (pure, unit-tested).
//! - [`session`]: the protocol rules as a state machine with no I/O.
//! - [`client`]: the socket task and the [`Client`] handle.
//! - [`demo`]: the seed's story, played against a running gateway.
//!
//! The end-to-end tests, the benchmarks and the `chat` CLI all use it.

pub mod client;
pub mod demo;
pub mod session;
pub mod timeline;

use std::sync::Arc;
use std::time::Duration;

pub use client::{
    Client, ClientConfig, ClientError, ConversationPage, TokenSource, connect_url, new_device_id,
};
pub use session::{
    Event, MAX_FRAME_BYTES, RequestError, Sent, Session, Tuning, device_limit_of, send_frame_bytes,
};
pub use timeline::Timeline;

use courier_core::domain::UserId;

/// The HS256 secret `courier-local` checks tokens with unless told
/// otherwise (kept equal to `courier_local::wiring::LOCAL_JWT_SECRET`; a
/// test there holds them together).
pub const LOCAL_JWT_SECRET: &str = "courier-local-dev-secret";

/// A token source that mints a fresh HS256 token for `user` on every
/// connect, as a local app would get one from its login.
pub fn minted_token(secret: &str, user: &UserId) -> TokenSource {
    let secret = secret.as_bytes().to_vec();
    let user = user.clone();
    Arc::new(move || {
        courier_aws::auth::mint_hs256(&secret, &user, Duration::from_secs(3600), None, None)
    })
}

/// A fixed token.
pub fn static_token(token: impl Into<String>) -> TokenSource {
    let token = token.into();
    Arc::new(move || token.clone())
}
