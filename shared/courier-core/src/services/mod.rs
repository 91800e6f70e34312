//! The services: the flow and the delivery rules of `docs/architecture.md`,
//! written once over the ports.
//!
//! A service takes `&App` (or `&Ports`) and typed inputs and returns typed
//! outcomes; it never sees an API Gateway event or an SDK type. Handlers (in
//! `functions/`) and the local gateway call the same services.
//!
//! Every route's service answers a client frame the same way, with
//! `Result<Answer<T>, E>`:
//!
//! - `Ok(Answer::Done(t))`: served; `t` is the reply frame (`sent`,
//!   `conversation`, …) or a report of what was done (an ack, a range
//!   sync), and [`Reply`] says what the route responds with. An ack of
//!   several conversations is served for the valid ones and its reply names
//!   the refused ones.
//! - `Ok(Answer::Refused(e))`: the client's mistake (not a member, a body
//!   too large, rate limited, …), told in one `error` frame. Not a fault:
//!   Lambda does not count it.
//! - `Err(e)`: a server fault. The edge logs it, posts the typed `internal`
//!   frame naming the failed request (see [`fault`]) and returns it to Lambda,
//!   which counts it.

use crate::protocol::{FrameError, ServerFrame};

pub mod ack;
pub mod catch_up;
pub mod connect;
pub mod conversations;
pub mod delivery;
pub mod devices;
pub mod fault;
pub mod push;
pub mod send;

/// What a route's service answers one client frame with (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T = ServerFrame> {
    /// Served.
    Done(T),
    /// Refused: the client's mistake, told in this `error` frame.
    Refused(FrameError),
}

impl<T> Answer<T> {
    /// The served value; `None` when refused.
    pub fn done(self) -> Option<T> {
        match self {
            Answer::Done(t) => Some(t),
            Answer::Refused(_) => None,
        }
    }

    /// The refusal; `None` when served.
    pub fn refused(self) -> Option<FrameError> {
        match self {
            Answer::Done(_) => None,
            Answer::Refused(e) => Some(e),
        }
    }
}

impl<T: Reply> Answer<T> {
    /// What the route responds with: the served value's reply, or the
    /// `error` frame.
    pub fn into_reply(self) -> Option<ServerFrame> {
        match self {
            Answer::Done(t) => t.into_reply(),
            Answer::Refused(e) => Some(e.to_frame()),
        }
    }
}

impl Answer<ServerFrame> {
    /// The frame the client gets: the reply, or the `error` frame.
    pub fn into_frame(self) -> ServerFrame {
        match self {
            Answer::Done(frame) => frame,
            Answer::Refused(e) => e.to_frame(),
        }
    }
}

/// What a served frame's route responds with.
pub trait Reply {
    fn into_reply(self) -> Option<ServerFrame>;
}

impl Reply for ServerFrame {
    fn into_reply(self) -> Option<ServerFrame> {
        Some(self)
    }
}

/// Served with nothing to say (the frames went out through the gateway).
impl Reply for () {
    fn into_reply(self) -> Option<ServerFrame> {
        None
    }
}
