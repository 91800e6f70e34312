//! The protocol state of one user's client, without any I/O.
//!
//! Over 700 lines with its tests (the code is ~615): one state machine, with
//! the tests of every transition beside it.
//!
//! [`Session`] takes what happens (the socket opened, a frame arrived, time
//! passed) and answers with the frames to send; the socket task in
//! `client.rs` only moves bytes. Keeping the rules here makes them testable
//! without a server:
//!
//! - **sends** wait in an outbox keyed by `client_msg_id` and are sent again
//!   after `send_retry` and on every reconnect, until `sent` (or a permanent
//!   `error`) comes back; the server's idempotency makes the repeats
//!   harmless;
//! - **messages** go into per-conversation [`Timeline`]s (seq order,
//!   duplicates dropped);
//! - **acks** cover the contiguous prefix, and are repeated when the server
//!   redelivers what was already acked (the earlier ack was lost with its
//!   connection, so the pending row is still there); a message this device
//!   sent counts as held at its seq once `sent` comes, so the ack covers it
//!   (the server keeps a pending row for the sender too, for the user's other
//!   devices, and this device's ack clears its share);
//! - **`too_many_devices`** is fatal: requests fail, [`Event::TooManyDevices`]
//!   is reported, and [`Session::fatal`] tells the socket task to stop
//!   reconnecting;
//! - **holes** older than `hole_grace` and **`more`** frames are pulled with
//!   a range `sync`, one in flight per conversation;
//! - **catch-up**: no `caught_up` within `caught_up_timeout` of opening means
//!   the asynchronous catch-up was lost; a full `sync` runs it again;
//! - **backing off**: a send, range sync or full sync left unanswered is
//!   repeated after a wait that doubles with each attempt (equal jitter, up
//!   to `retry_max`), and starts over once the server answers — a server
//!   short of capacity is not answered with more of the same load.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use courier_core::config::SendConfig;
use courier_core::domain::{Body, BodyError, ClientMsgId, ConversationId, Seq, UserId};
use courier_core::protocol::{DEFAULT_FRAME_BYTES, ErrorCode, ServerFrame, WireMessage};
use courier_core::services::send::worst_frame_len;
use serde_json::json;
use tokio::sync::oneshot;

use crate::timeline::{Inserted, Timeline};

/// Timings and sizes of the protocol rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Send a full `sync` when no `caught_up` came this long after opening.
    pub caught_up_timeout: Duration,
    /// Resend an unanswered `sendMessage` after this long.
    pub send_retry: Duration,
    /// Ask for a hole once it has been open this long.
    pub hole_grace: Duration,
    /// `limit` of range syncs.
    pub sync_limit: u32,
    /// A range sync with no `synced`/`more` after this long may be resent.
    pub sync_timeout: Duration,
    /// Send a `ping` when nothing was sent for this long (API Gateway's
    /// idle timeout is 10 minutes).
    pub heartbeat: Duration,
    /// Reconnect backoff: first delay and cap (equal jitter in between).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Cap of the doubling wait between repeats of one unanswered send,
    /// range sync or full sync (`send_retry`, `sync_timeout` and
    /// `caught_up_timeout` are the first waits).
    pub retry_max: Duration,
    /// The largest text frame this client sends, in UTF-8 bytes of the
    /// encoded JSON (API Gateway closes the socket with 1009 on a client
    /// frame over 32 KB). A larger send fails at once with
    /// [`RequestError::FrameTooLarge`].
    pub max_frame_bytes: usize,
    /// The server's `MAX_BODY_BYTES` and `FRAME_BYTES`: a message whose
    /// decoded body, or whose `messages` frame as the server encodes it, is
    /// over these is refused here with `payload_too_large`, measured as the
    /// server measures it, so the client refuses exactly what the server
    /// would. Set them to the deployment's values when it changes them.
    pub max_body_bytes: usize,
    pub max_message_frame_bytes: usize,
    /// Ask for holes and follow `more` with range syncs. Off only to test
    /// the server alone (the race suite's variant): what live posts and
    /// catch-ups deliver by themselves, with no client pulling the rest.
    pub fill_gaps: bool,
}

/// API Gateway's limit on a client frame (docs/protocol.md, size limits).
pub const MAX_FRAME_BYTES: usize = 32 * 1024;

/// A socket closed this soon after a send went out, with nothing received
/// since, counts against that send; twice in a row fails it.
const QUICK_DROP: Duration = Duration::from_secs(1);

impl Default for Tuning {
    fn default() -> Self {
        Self {
            caught_up_timeout: Duration::from_secs(4),
            send_retry: Duration::from_secs(3),
            hole_grace: Duration::from_millis(500),
            sync_limit: 200,
            sync_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5 * 60),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            retry_max: Duration::from_secs(60),
            max_frame_bytes: MAX_FRAME_BYTES,
            max_body_bytes: SendConfig::default().max_body_bytes,
            max_message_frame_bytes: DEFAULT_FRAME_BYTES,
            fill_gaps: true,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The server refused it with an `error` frame.
    #[error("{code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("no answer in time")]
    Timeout,
    #[error("the client is closed")]
    Closed,
    /// The encoded frame is over the frame limit (or the socket closed with
    /// 1009, or twice at once, right after it was sent): it is never sent
    /// (again).
    #[error("frame of {bytes} bytes is over the {limit}-byte frame limit")]
    FrameTooLarge { bytes: usize, limit: usize },
}

/// A message accepted by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub conversation_id: ConversationId,
    pub client_msg_id: ClientMsgId,
    pub seq: Seq,
    pub sent_at: i64,
}

type SendWaiter = oneshot::Sender<Result<Sent, RequestError>>;
type RequestWaiter = oneshot::Sender<Result<ServerFrame, RequestError>>;

#[derive(Debug)]
struct Outgoing {
    conversation_id: ConversationId,
    body: String,
    /// When an unanswered attempt is repeated (`None`: not sent yet).
    due: Option<Instant>,
    attempts: u32,
    waiters: Vec<SendWaiter>,
    /// Encoded size of its frame.
    bytes: usize,
    /// Sockets that closed right after it was sent, in a row.
    quick_drops: u32,
}

/// What the application hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected,
    Disconnected,
    /// A message new to this client (duplicates are not reported).
    Message {
        conversation_id: ConversationId,
        message: WireMessage,
    },
    /// A catch-up ended. `unreached` conversations were cut short by its
    /// time limit: the client syncs again on its own, and a later
    /// `CaughtUp` follows.
    CaughtUp {
        conversations: usize,
        messages: usize,
        unreached: usize,
    },
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        through: Seq,
    },
    /// An `error` frame not tied to a pending request.
    ServerError {
        code: ErrorCode,
        message: String,
    },
    /// The server refused this device: the user already has `limit`
    /// (`MAX_DEVICES`, when the message names it) linked devices. The client
    /// stops reconnecting until [`crate::Client::go_online`].
    TooManyDevices {
        limit: Option<u32>,
        message: String,
    },
    /// Another device of the user unlinked this one; the server closes the
    /// socket. The client stops reconnecting (it would link again); the app
    /// should start over as a new device ([`crate::new_device_id`]).
    DeviceUnlinked {
        message: String,
    },
}

/// The device limit a `too_many_devices` message names (`MAX_DEVICES = 8`,
/// or `has 8 linked devices`).
pub fn device_limit_of(message: &str) -> Option<u32> {
    let number_after = |key: &str| {
        let rest = &message[message.find(key)? + key.len()..];
        let rest = rest.trim_start();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    number_after("MAX_DEVICES =").or_else(|| {
        let end = message.find(" linked devices")?;
        let head = &message[..end];
        let start = head
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        head[start..].parse().ok()
    })
}

/// Codes after which resending the same frame cannot succeed.
fn permanent(code: ErrorCode) -> bool {
    !matches!(code, ErrorCode::Internal | ErrorCode::RateLimited)
}

/// One user's protocol state.
#[derive(Debug)]
pub struct Session {
    me: UserId,
    tuning: Tuning,
    timelines: BTreeMap<ConversationId, Timeline>,
    outbox: BTreeMap<String, Outgoing>,
    requests: HashMap<String, RequestWaiter>,
    /// Range syncs unanswered: when to repeat, and how many were sent.
    syncs_in_flight: HashMap<ConversationId, (Instant, u32)>,
    caught_up_deadline: Option<Instant>,
    /// Full syncs sent since the last `caught_up` for want of one.
    full_syncs: u32,
    /// Range syncs sent so far (hole fills, `more` follow-ups, repeats).
    range_syncs: u64,
    caught_up: u64,
    /// `pong` frames received: heartbeats the server answered.
    pongs: u64,
    opens: u64,
    open: bool,
    receipts: BTreeMap<(ConversationId, UserId), Seq>,
    events: Vec<Event>,
    /// Sends that went out since the last frame received, and when.
    suspects: Vec<(String, Instant)>,
    /// `too_many_devices`: this device was refused; until the next open.
    fatal: Option<RequestError>,
}

impl Session {
    pub fn new(me: UserId, tuning: Tuning) -> Self {
        Self {
            me,
            tuning,
            timelines: BTreeMap::new(),
            outbox: BTreeMap::new(),
            requests: HashMap::new(),
            syncs_in_flight: HashMap::new(),
            caught_up_deadline: None,
            full_syncs: 0,
            range_syncs: 0,
            caught_up: 0,
            pongs: 0,
            opens: 0,
            open: false,
            receipts: BTreeMap::new(),
            events: Vec::new(),
            suspects: Vec::new(),
            fatal: None,
        }
    }

    /// The refusal that stopped this device (`too_many_devices`), until the
    /// next open: the socket task does not reconnect while it is set.
    pub fn fatal(&self) -> Option<&RequestError> {
        self.fatal.as_ref()
    }

    pub fn me(&self) -> &UserId {
        &self.me
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    // ------------------------------------------------------------ reads

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Times the socket opened.
    pub fn opens(&self) -> u64 {
        self.opens
    }

    /// `caught_up` frames received.
    pub fn caught_up_count(&self) -> u64 {
        self.caught_up
    }

    /// `pong` frames received (answered heartbeats).
    pub fn pongs(&self) -> u64 {
        self.pongs
    }

    pub fn conversations(&self) -> Vec<ConversationId> {
        self.timelines.keys().cloned().collect()
    }

    pub fn timeline(&self, conversation: &ConversationId) -> Option<&Timeline> {
        self.timelines.get(conversation)
    }

    /// Sends not yet answered with `sent`.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn receipt(&self, conversation: &ConversationId, user: &UserId) -> Option<Seq> {
        self.receipts
            .get(&(conversation.clone(), user.clone()))
            .copied()
    }

    /// Range syncs sent so far: none while [`Tuning::fill_gaps`] is off.
    pub fn range_syncs(&self) -> u64 {
        self.range_syncs
    }

    pub fn duplicates(&self) -> u64 {
        self.timelines.values().map(Timeline::duplicates).sum()
    }

    /// Events since the last call.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    // ---------------------------------------------------------- requests

    /// What the server would refuse with `payload_too_large`, by the
    /// server's own measure (`courier_core`'s `Body::parse` and
    /// `worst_frame_len`): sending it would only fetch that refusal.
    fn refused_size(&self, conversation: &ConversationId, body: &str) -> Option<RequestError> {
        let message = match Body::parse(body, self.tuning.max_body_bytes) {
            // The server's `bad_request`, not a size.
            Err(BodyError::Empty) => return None,
            Err(e) => e.to_string(),
            Ok(b) => {
                let len = worst_frame_len(conversation, &self.me, &b);
                if len <= self.tuning.max_message_frame_bytes {
                    return None;
                }
                format!(
                    "message is {len} bytes as encoded in its frame (JSON escaping included); \
                     the limit is {} bytes as encoded",
                    self.tuning.max_message_frame_bytes
                )
            }
        };
        Some(RequestError::Refused {
            code: ErrorCode::PayloadTooLarge,
            message,
        })
    }

    /// Queues a message; the frame to send now (if open).
    pub fn queue_send(
        &mut self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
        waiter: Option<SendWaiter>,
        now: Instant,
    ) -> Option<String> {
        let key = client_msg_id.as_str().to_owned();
        if !self.outbox.contains_key(&key) {
            let bytes = send_frame(&conversation_id, &key, &body).len();
            // The socket's limit first (the gateway would close on it), then
            // the server's measure of the message.
            let refused = (bytes > self.tuning.max_frame_bytes)
                .then_some(RequestError::FrameTooLarge {
                    bytes,
                    limit: self.tuning.max_frame_bytes,
                })
                .or_else(|| self.refused_size(&conversation_id, &body));
            if let Some(err) = refused {
                if let Some(w) = waiter {
                    let _ = w.send(Err(err));
                }
                return None;
            }
            self.outbox.insert(
                key.clone(),
                Outgoing {
                    conversation_id,
                    body,
                    due: None,
                    attempts: 0,
                    waiters: Vec::new(),
                    bytes,
                    quick_drops: 0,
                },
            );
        }
        let entry = self.outbox.get_mut(&key)?;
        entry.waiters.extend(waiter);
        if !self.open {
            return None;
        }
        entry.attempts += 1;
        entry.due = Some(now + retry_wait(self.tuning.send_retry, entry.attempts, &self.tuning));
        self.suspects.push((key.clone(), now));
        Some(send_frame(&entry.conversation_id, &key, &entry.body))
    }

    /// Remembers who waits for the reply to `request_id`.
    pub fn expect_reply(&mut self, request_id: String, waiter: RequestWaiter) {
        self.requests.insert(request_id, waiter);
    }

    /// A full `sync` frame; resets the wait for `caught_up`.
    pub fn full_sync(&mut self, now: Instant) -> String {
        self.caught_up_deadline = Some(now + self.tuning.caught_up_timeout);
        json!({"action": "sync"}).to_string()
    }

    // ------------------------------------------------------ socket events

    /// The socket opened: resend what is unanswered, start waiting for
    /// `caught_up`.
    pub fn on_open(&mut self, now: Instant) -> Vec<String> {
        self.open = true;
        self.opens += 1;
        self.fatal = None;
        self.syncs_in_flight.clear();
        self.caught_up_deadline = Some(now + self.tuning.caught_up_timeout);
        self.full_syncs = 0;
        self.events.push(Event::Connected);
        let mut out = Vec::new();
        self.suspects.clear();
        for (cmid, o) in &mut self.outbox {
            o.attempts += 1;
            o.due = Some(now + retry_wait(self.tuning.send_retry, o.attempts, &self.tuning));
            self.suspects.push((cmid.clone(), now));
            out.push(send_frame(&o.conversation_id, cmid, &o.body));
        }
        out
    }

    /// The socket closed with `code` (if it sent one) at `now`. A close
    /// with 1009 (message too big) fails the largest send that went out
    /// since the last frame received: resending it would close the socket
    /// again, forever. So does a second close in a row right after it was
    /// sent, with nothing received in between. Then as [`Session::on_close`].
    pub fn on_dropped(&mut self, code: Option<u16>, now: Instant) {
        let suspects = std::mem::take(&mut self.suspects);
        let largest = suspects
            .iter()
            .filter(|(cmid, _)| self.outbox.contains_key(cmid))
            .max_by_key(|(cmid, _)| self.outbox.get(cmid).map_or(0, |o| o.bytes))
            .cloned();
        if let Some((cmid, sent_at)) = largest {
            let quick = now.saturating_duration_since(sent_at) <= QUICK_DROP;
            let poisoned = code == Some(1009)
                || (quick
                    && self.outbox.get_mut(&cmid).is_some_and(|o| {
                        o.quick_drops += 1;
                        o.quick_drops >= 2
                    }));
            if poisoned && let Some(o) = self.outbox.remove(&cmid) {
                tracing::warn!(client_msg_id = %cmid, bytes = o.bytes, ?code, "the socket closed on this send: failing it");
                let err = RequestError::FrameTooLarge {
                    bytes: o.bytes,
                    limit: self.tuning.max_frame_bytes,
                };
                for w in o.waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
        self.on_close();
    }

    /// The socket closed; requests waiting for a reply on it will get none.
    pub fn on_close(&mut self) {
        if self.open {
            self.events.push(Event::Disconnected);
        }
        self.open = false;
        self.caught_up_deadline = None;
        for (_, w) in self.requests.drain() {
            let _ = w.send(Err(RequestError::Closed));
        }
    }

    /// Fails every waiter (the client is shutting down).
    pub fn close_all(&mut self) {
        self.on_close();
        for (_, o) in std::mem::take(&mut self.outbox) {
            for w in o.waiters {
                let _ = w.send(Err(RequestError::Closed));
            }
        }
    }

    /// One text frame from the server; the frames to send in answer.
    pub fn on_text(&mut self, raw: &str, now: Instant) -> Vec<String> {
        // Something came back: the connection works, so the sends that went
        // out before are not to blame for a later close.
        self.suspects.clear();
        for o in self.outbox.values_mut() {
            o.quick_drops = 0;
        }
        let frame: ServerFrame = match serde_json::from_str(raw) {
            Ok(f) => f,
            Err(_) => {
                // API Gateway's own frames (`{"message": "Internal server
                // error", ...}`) and anything newer than this client: the
                // retries cover whatever they were about.
                tracing::debug!(
                    len = raw.len(),
                    "ignoring a frame that is not a Courier frame"
                );
                return Vec::new();
            }
        };
        self.on_frame(frame, now)
    }

    pub fn on_frame(&mut self, frame: ServerFrame, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        match frame {
            // Replies to device and conversation-list requests.
            ServerFrame::Devices { ref request_id, .. }
            | ServerFrame::DeviceUnlinked { ref request_id, .. }
            | ServerFrame::Conversations { ref request_id, .. } => {
                let id = request_id.clone();
                self.answer(id, Ok(frame));
            }
            ServerFrame::Messages {
                conversation_id,
                messages,
            } => {
                let timeline = self.timelines.entry(conversation_id.clone()).or_default();
                let mut redelivered = false;
                for m in messages {
                    let seq = m.seq;
                    match timeline.insert(m.clone(), now) {
                        Inserted::New => self.events.push(Event::Message {
                            conversation_id: conversation_id.clone(),
                            message: m,
                        }),
                        Inserted::Duplicate => redelivered |= seq <= timeline.acked(),
                    }
                }
                let due = timeline.ack_due().or_else(|| {
                    // The server sent again what we acked: our ack was lost
                    // (its connection died), so the pending row is still
                    // there. Repeat it.
                    redelivered.then(|| timeline.contiguous_through())
                });
                self.settle_timeline(&conversation_id, due, &mut out);
            }
            ServerFrame::HistoryStarts {
                conversation_id,
                first_available_seq,
                ..
            } => {
                // Retention deleted what lies below: count it as held, so
                // the prefix closes and the ack moves on (without this, a
                // hole below the first kept message never fills).
                let timeline = self.timelines.entry(conversation_id.clone()).or_default();
                if timeline.history_starts(first_available_seq, now) {
                    let due = timeline.ack_due();
                    self.settle_timeline(&conversation_id, due, &mut out);
                }
            }
            ServerFrame::More {
                conversation_id,
                next_seq,
                ..
            } => {
                // Pull the rest now, from where the server stopped: the cap
                // cut this conversation short. Not from the contiguous end
                // (a hole below is the hole fill's to ask for, and asking
                // from below it again would get the same page back). An
                // answer, so the repeats of the last sync start over.
                self.syncs_in_flight.remove(&conversation_id);
                if self.tuning.fill_gaps {
                    let after = Seq(next_seq.get().saturating_sub(1));
                    out.push(self.range_sync_after(&conversation_id, after, now));
                }
            }
            ServerFrame::Synced {
                conversation_id, ..
            } => {
                self.syncs_in_flight.remove(&conversation_id);
            }
            ServerFrame::CaughtUp {
                conversations,
                messages,
                unreached,
                ..
            } => {
                self.caught_up += 1;
                if unreached == 0 {
                    self.caught_up_deadline = None;
                    self.full_syncs = 0;
                } else {
                    // The catch-up ran out of time: sync again, soon, and
                    // later each time in a row it is cut short (a backend
                    // slow enough to cut one short needs the air).
                    let wait =
                        retry_wait(self.tuning.hole_grace, self.full_syncs.max(1), &self.tuning);
                    self.caught_up_deadline = Some(now + wait);
                }
                self.events.push(Event::CaughtUp {
                    conversations,
                    messages,
                    unreached,
                });
            }
            ServerFrame::Sent {
                conversation_id,
                client_msg_id,
                seq,
                sent_at,
                ..
            } => {
                if let Some(ack) = self.on_sent(conversation_id, client_msg_id, seq, sent_at, now) {
                    out.push(ack);
                }
            }
            ServerFrame::Receipt {
                conversation_id,
                user_id,
                delivered_through_seq,
            } => {
                let slot = self
                    .receipts
                    .entry((conversation_id.clone(), user_id.clone()))
                    .or_default();
                *slot = (*slot).max(delivered_through_seq);
                self.events.push(Event::Receipt {
                    conversation_id,
                    user_id,
                    through: delivered_through_seq,
                });
            }
            ServerFrame::Conversation {
                ref conversation_id,
                ref request_id,
                ..
            } => {
                self.timelines.entry(conversation_id.clone()).or_default();
                let id = request_id.clone();
                self.answer(id, Ok(frame));
            }
            ServerFrame::DeviceRegistered { ref request_id, .. } => {
                let id = request_id.clone();
                self.answer(id, Ok(frame));
            }
            ServerFrame::Pong { ref request_id } => {
                self.pongs += 1;
                let id = request_id.clone();
                self.answer(id, Ok(frame));
            }
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
                request_id,
            } => self.on_error(code, message, client_msg_id, request_id),
        }
        out
    }

    fn answer(&mut self, request_id: Option<String>, result: Result<ServerFrame, RequestError>) {
        if let Some(w) = request_id.and_then(|id| self.requests.remove(&id)) {
            let _ = w.send(result);
        }
    }

    /// A send was stored: its waiters hear so, and it takes its place in the
    /// timeline. The ack frame, if the contiguous prefix grew through it.
    fn on_sent(
        &mut self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        seq: Seq,
        sent_at: i64,
        now: Instant,
    ) -> Option<String> {
        let Some(o) = self.outbox.remove(client_msg_id.as_str()) else {
            return None; // a repeat `sent` for a retry already answered
        };
        let sent = Sent {
            conversation_id: conversation_id.clone(),
            client_msg_id: client_msg_id.clone(),
            seq,
            sent_at,
        };
        for w in o.waiters {
            let _ = w.send(Ok(sent.clone()));
        }
        // Our own message takes its place at its seq. The server keeps a
        // pending row for the sender too (so the user's other devices get the
        // message), and only this device's ack clears this device's share: it
        // counts as held here and is acked like any other. (A copy that came
        // first, by catch-up, is the same seq: a duplicate.)
        let timeline = self.timelines.entry(conversation_id.clone()).or_default();
        let mine = WireMessage {
            seq,
            message_id: client_msg_id.as_str().to_owned(),
            sender_id: self.me.clone(),
            body: o.body,
            sent_at,
        };
        timeline.insert(mine, now);
        let due = timeline.ack_due().filter(|s| s.get() > 0)?;
        timeline.mark_acked(due);
        Some(
            json!({"action": "ack", "acks": [{"conversation_id": conversation_id, "seq": due}]})
                .to_string(),
        )
    }

    fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        client_msg_id: Option<String>,
        request_id: Option<String>,
    ) {
        let refused = RequestError::Refused {
            code,
            message: message.clone(),
        };
        if code == ErrorCode::DeviceUnlinked {
            tracing::warn!(%message, "this device was unlinked by another device");
            for (_, w) in self.requests.drain() {
                let _ = w.send(Err(refused.clone()));
            }
            self.fatal = Some(refused);
            self.events.push(Event::DeviceUnlinked { message });
            return;
        }
        if code == ErrorCode::TooManyDevices {
            // Right after connect, then the server closes the socket; every
            // reconnect would end the same way until a device is unlinked.
            // Sends stay in the outbox for a later go_online.
            tracing::warn!(%message, "this device was refused: too many devices");
            for (_, w) in self.requests.drain() {
                let _ = w.send(Err(refused.clone()));
            }
            self.fatal = Some(refused);
            self.events.push(Event::TooManyDevices {
                limit: device_limit_of(&message),
                message,
            });
            return;
        }
        if let Some(cmid) = client_msg_id
            && permanent(code)
            && let Some(o) = self.outbox.remove(&cmid)
        {
            for w in o.waiters {
                let _ = w.send(Err(refused.clone()));
            }
            return;
        }
        if let Some(id) = &request_id
            && self.requests.contains_key(id)
        {
            self.answer(request_id, Err(refused));
            return;
        }
        self.events.push(Event::ServerError { code, message });
    }

    /// After `conversation`'s timeline grew: acks `due` (its contiguous
    /// end), and a range sync in flight is answered once no hole is left.
    fn settle_timeline(
        &mut self,
        conversation: &ConversationId,
        due: Option<Seq>,
        out: &mut Vec<String>,
    ) {
        let Some(timeline) = self.timelines.get_mut(conversation) else {
            return;
        };
        if let Some(seq) = due.filter(|s| s.get() > 0) {
            timeline.mark_acked(seq);
            out.push(
                json!({"action": "ack", "acks": [{"conversation_id": conversation, "seq": seq}]})
                    .to_string(),
            );
        }
        if !timeline.has_hole() {
            self.syncs_in_flight.remove(conversation);
        }
    }

    fn range_sync(&mut self, conversation: &ConversationId, now: Instant) -> String {
        self.range_sync_after(conversation, Seq::ZERO, now)
    }

    /// A range sync from the contiguous end, or from `floor` when that is
    /// further on.
    fn range_sync_after(
        &mut self,
        conversation: &ConversationId,
        floor: Seq,
        now: Instant,
    ) -> String {
        self.range_syncs = self.range_syncs.saturating_add(1);
        let attempts = self
            .syncs_in_flight
            .get(conversation)
            .map_or(0, |(_, n)| *n)
            .saturating_add(1);
        let due = now + retry_wait(self.tuning.sync_timeout, attempts, &self.tuning);
        self.syncs_in_flight
            .insert(conversation.clone(), (due, attempts));
        let after = self
            .timelines
            .get(conversation)
            .map_or(Seq::ZERO, Timeline::contiguous_through)
            .max(floor);
        // Only a sync from the contiguous end asks for the hole; one from
        // further on leaves it to its own grace period.
        if let Some(t) = self
            .timelines
            .get_mut(conversation)
            .filter(|t| t.contiguous_through() == after)
        {
            t.hole_requested(now);
        }
        json!({
            "action": "sync",
            "conversation_id": conversation,
            "after_seq": after,
            "limit": self.tuning.sync_limit,
        })
        .to_string()
    }

    /// Time passed: retries, the `caught_up` fallback, hole fills.
    pub fn on_tick(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        if !self.open {
            return out;
        }
        for (cmid, o) in &mut self.outbox {
            if o.due.is_none_or(|due| now >= due) {
                o.attempts += 1;
                o.due = Some(now + retry_wait(self.tuning.send_retry, o.attempts, &self.tuning));
                self.suspects.push((cmid.clone(), now));
                out.push(send_frame(&o.conversation_id, cmid, &o.body));
            }
        }
        if self.caught_up_deadline.is_some_and(|d| now >= d) {
            tracing::info!("no complete caught_up in time: sending sync");
            out.push(json!({"action": "sync"}).to_string());
            self.full_syncs = self.full_syncs.saturating_add(1);
            self.caught_up_deadline = Some(
                now + retry_wait(self.tuning.caught_up_timeout, self.full_syncs, &self.tuning),
            );
        }
        let holes: Vec<ConversationId> = self
            .timelines
            .iter()
            .filter(|(c, t)| {
                self.tuning.fill_gaps
                    && t.hole_older_than(self.tuning.hole_grace, now)
                    && self
                        .syncs_in_flight
                        .get(*c)
                        .is_none_or(|(due, _)| now >= *due)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for c in holes {
            out.push(self.range_sync(&c, now));
        }
        out
    }
}

/// The wait after the `attempt`-th (1-based) unanswered try: `first` the
/// first time, doubling after, capped at `retry_max`; equal jitter from the
/// second attempt on (half fixed, half random), so clients refused together
/// do not come back together.
pub fn retry_wait(first: Duration, attempt: u32, tuning: &Tuning) -> Duration {
    if attempt <= 1 {
        return first;
    }
    equal_jitter(
        first
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(tuning.retry_max.max(first)),
    )
}

/// Equal jitter: half of `exp` fixed, plus a random part of the other half.
pub fn equal_jitter(exp: Duration) -> Duration {
    let half = exp / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::random_range(0..=spread))
}

/// The encoded size, in UTF-8 bytes, of the `sendMessage` frame this
/// client sends for `body`: exactly the bytes that go on the wire.
pub fn send_frame_bytes(conversation: &ConversationId, client_msg_id: &str, body: &str) -> usize {
    send_frame(conversation, client_msg_id, body).len()
}

fn send_frame(conversation: &ConversationId, client_msg_id: &str, body: &str) -> String {
    json!({
        "action": "sendMessage",
        "conversation_id": conversation,
        "client_msg_id": client_msg_id,
        "body": body,
    })
    .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn cid(s: &str) -> ConversationId {
        ConversationId::parse(s).unwrap()
    }

    fn session() -> Session {
        Session::new(UserId::parse("bob").unwrap(), Tuning::default())
    }

    fn messages(conv: &str, seqs: &[u64]) -> String {
        let msgs: Vec<Value> = seqs
            .iter()
            .map(|s| json!({"seq": s, "message_id": format!("m{s}"), "sender_id": "alice", "body": format!("b{s}"), "sent_at": 1}))
            .collect();
        json!({"type": "messages", "conversation_id": conv, "messages": msgs}).to_string()
    }

    fn parsed(frames: &[String]) -> Vec<Value> {
        frames
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect()
    }

    #[test]
    fn acks_cover_the_contiguous_prefix_only() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        let out = parsed(&s.on_text(&messages("c1", &[1, 2, 4]), now));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["action"], "ack");
        assert_eq!(out[0]["acks"][0]["seq"], 2);
        let out = parsed(&s.on_text(&messages("c1", &[3]), now));
        assert_eq!(out[0]["acks"][0]["seq"], 4);
    }

    #[test]
    fn a_redelivery_of_acked_messages_repeats_the_ack() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        s.on_text(&messages("c1", &[1, 2]), now);
        s.on_close();
        s.on_open(now);
        let out = parsed(&s.on_text(&messages("c1", &[1, 2]), now));
        assert_eq!(out.len(), 1, "the lost ack is sent again");
        assert_eq!(out[0]["acks"][0]["seq"], 2);
        assert_eq!(s.duplicates(), 2);
        assert!(
            s.drain_events()
                .iter()
                .filter(|e| matches!(e, Event::Message { .. }))
                .count()
                == 2
        );
    }

    #[test]
    fn holes_are_synced_after_their_grace_one_at_a_time() {
        let t0 = Instant::now();
        let mut s = session();
        s.on_open(t0);
        s.on_text(&messages("c1", &[1, 5]), t0);
        assert!(
            s.on_tick(t0 + Duration::from_millis(100))
                .iter()
                .all(|f| !f.contains("after_seq"))
        );
        let t1 = t0 + s.tuning.hole_grace;
        let out = parsed(&s.on_tick(t1));
        let sync = out.iter().find(|f| f["action"] == "sync").unwrap();
        assert_eq!(sync["conversation_id"], "c1");
        assert_eq!(sync["after_seq"], 1);
        assert_eq!(sync["limit"], 200);
        // In flight: not repeated before sync_timeout.
        assert!(
            parsed(&s.on_tick(t1 + s.tuning.hole_grace))
                .iter()
                .all(|f| f["action"] != "sync" || f.get("after_seq").is_none())
        );
        s.on_text(&messages("c1", &[2, 3, 4]), t1);
        assert!(s.timeline(&cid("c1")).unwrap().holes().is_empty());
    }

    #[test]
    fn more_pulls_the_rest_from_the_contiguous_end() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        s.on_text(&messages("c1", &[1, 2, 3]), now);
        let out = parsed(&s.on_text(
            r#"{"type":"more","conversation_id":"c1","next_seq":4}"#,
            now,
        ));
        assert_eq!(out[0]["action"], "sync");
        assert_eq!(out[0]["after_seq"], 3);
    }

    #[test]
    fn history_starts_closes_the_hole_and_acks_once() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        s.on_text(&messages("c1", &[1, 2]), now);
        // Retention deleted 3..=4 while catch-up was on its way.
        let told = r#"{"type":"history_starts","conversation_id":"c1","first_available_seq":5}"#;
        let out = parsed(&s.on_text(told, now));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["acks"][0]["seq"], 4, "held or gone through 4");
        let out = parsed(&s.on_text(&messages("c1", &[5, 6]), now));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["acks"][0]["seq"], 6);
        // Again, or below: nothing to say.
        assert!(s.on_text(told, now).is_empty());
        // Told after the messages: the hole closes then, and the ack follows.
        let mut s = session();
        s.on_open(now);
        s.on_text(&messages("c2", &[7, 8]), now);
        let out = parsed(&s.on_text(
            r#"{"type":"history_starts","conversation_id":"c2","first_available_seq":7}"#,
            now,
        ));
        assert_eq!(out[0]["acks"][0]["seq"], 8);
        assert!(s.timeline(&cid("c2")).unwrap().holes().is_empty());
        let t = now + s.tuning.hole_grace * 4;
        assert!(parsed(&s.on_tick(t)).iter().all(|f| f["action"] != "sync"));
    }

    /// The loop the retention issue names: seqs 1..=9 expired, the server
    /// answers a sync from below them with a page and `more`. The client must
    /// go on from `next_seq`, not ask for the same page again.
    #[test]
    fn more_continues_from_next_seq_past_a_hole_it_cannot_fill() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        s.on_text(&messages("c1", &[10, 11]), now);
        let out = parsed(&s.on_text(
            r#"{"type":"more","conversation_id":"c1","next_seq":12}"#,
            now,
        ));
        assert_eq!(out[0]["action"], "sync");
        assert_eq!(out[0]["after_seq"], 11);
        // A `more` behind what is contiguous never pulls from below it.
        s.on_text(
            r#"{"type":"history_starts","conversation_id":"c1","first_available_seq":10}"#,
            now,
        );
        let out = parsed(&s.on_text(
            r#"{"type":"more","conversation_id":"c1","next_seq":5}"#,
            now,
        ));
        assert_eq!(out[0]["after_seq"], 11);
    }

    #[test]
    fn without_gap_fill_no_range_sync_is_ever_sent() {
        let t0 = Instant::now();
        let mut s = Session::new(
            UserId::parse("bob").unwrap(),
            Tuning {
                fill_gaps: false,
                ..Tuning::default()
            },
        );
        s.on_open(t0);
        s.on_text(&messages("c1", &[1, 5]), t0);
        let more = r#"{"type":"more","conversation_id":"c1","next_seq":6}"#;
        assert!(s.on_text(more, t0).iter().all(|f| !f.contains("after_seq")));
        let at = sent_at(&mut s, t0, Duration::from_secs(30), |f| {
            f["action"] == "sync" && f.get("after_seq").is_some()
        });
        assert!(at.is_empty(), "range syncs at {at:?}");
        assert_eq!(s.range_syncs(), 0);
        // The same with gap fills on: the hole is asked for.
        let mut s = session();
        s.on_open(t0);
        s.on_text(&messages("c1", &[1, 5]), t0);
        assert!(!s.on_text(more, t0).is_empty());
        assert_eq!(s.range_syncs(), 1);
    }

    /// A catch-up cut short by its time limit says how many conversations
    /// it did not reach: the client syncs again after a short wait, waits
    /// longer each time in a row, and stops once one is complete.
    #[test]
    fn a_caught_up_with_unreached_conversations_is_followed_by_a_full_sync() {
        let t0 = Instant::now();
        let full_sync = |f: &Value| f["action"] == "sync" && f.get("conversation_id").is_none();
        let mut s = session();
        s.on_open(t0);
        let cut = r#"{"type":"caught_up","conversations":9,"messages":4,"unreached":5}"#;
        s.on_text(cut, t0);
        let events = s.drain_events();
        assert!(events.iter().any(|e| matches!(
            e,
            Event::CaughtUp {
                unreached: 5,
                messages: 4,
                ..
            }
        )));
        let at = sent_at(&mut s, t0, Duration::from_secs(2), full_sync);
        assert_eq!(at, [s.tuning.hole_grace], "one sync, after the grace");
        // Cut short again: the next one waits longer.
        let t1 = t0 + Duration::from_secs(2);
        s.on_text(cut, t1);
        let at = sent_at(&mut s, t1, Duration::from_secs(3), full_sync);
        assert_eq!(at.len(), 1, "{at:?}");
        assert!(at[0] >= s.tuning.hole_grace, "{at:?}");
        // Complete: nothing more.
        let t2 = t1 + Duration::from_secs(3);
        s.on_text(
            r#"{"type":"caught_up","conversations":5,"messages":30}"#,
            t2,
        );
        assert!(sent_at(&mut s, t2, Duration::from_secs(120), full_sync).is_empty());
    }

    /// Times at which `on_tick`, called every 100 ms from `t0` for `span`,
    /// sent a frame matching `pick`.
    fn sent_at(
        s: &mut Session,
        t0: Instant,
        span: Duration,
        pick: impl Fn(&Value) -> bool,
    ) -> Vec<Duration> {
        let mut at = Vec::new();
        let mut t = Duration::ZERO;
        while t <= span {
            if parsed(&s.on_tick(t0 + t)).iter().any(&pick) {
                at.push(t);
            }
            t += Duration::from_millis(100);
        }
        at
    }

    /// Each gap between repeats is within [half, all] of the doubled wait.
    fn assert_backs_off(at: &[Duration], first: Duration, tuning: &Tuning) {
        assert!(at.len() >= 4, "repeats: {at:?}");
        for (i, pair) in at.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            let attempt = u32::try_from(i + 1).unwrap();
            let full = first
                .saturating_mul(1 << (attempt - 1))
                .min(tuning.retry_max);
            let low = if attempt == 1 { full } else { full / 2 };
            assert!(
                gap >= low && gap <= full + Duration::from_millis(100),
                "gap {i} of {at:?} is {gap:?}, not within [{low:?}, {full:?}]"
            );
        }
    }

    #[test]
    fn unanswered_syncs_and_sends_back_off_and_start_over_on_an_answer() {
        let t0 = Instant::now();
        let span = Duration::from_secs(200);
        let full_sync = |f: &Value| f["action"] == "sync" && f.get("conversation_id").is_none();
        let range_sync = |f: &Value| f["action"] == "sync" && f.get("after_seq").is_some();

        // No caught_up, ever: 4 s, then 8, 16, 32, 60 (cap) — not every 4 s.
        let mut s = session();
        s.on_open(t0);
        let at = sent_at(&mut s, t0, span, full_sync);
        assert_eq!(at[0], s.tuning.caught_up_timeout);
        assert_backs_off(&at, s.tuning.caught_up_timeout, &s.tuning);
        assert!(at.len() < 10, "{} full syncs in 200 s", at.len());
        // caught_up resets it: the next fallback comes after the first wait.
        let later = t0 + span;
        s.on_text(
            r#"{"type":"caught_up","conversations":0,"messages":0}"#,
            later,
        );
        s.full_sync(later);
        let at = sent_at(&mut s, later, Duration::from_secs(5), full_sync);
        assert_eq!(at, vec![s.tuning.caught_up_timeout]);

        // A hole whose sync is never answered: 5 s, then doubling.
        let mut s = session();
        s.on_open(t0);
        s.on_text(&messages("c1", &[1, 5]), t0);
        s.on_text(r#"{"type":"caught_up","conversations":1,"messages":2}"#, t0);
        let at = sent_at(&mut s, t0, span, range_sync);
        assert_eq!(at[0], s.tuning.hole_grace);
        assert_backs_off(&at, s.tuning.sync_timeout, &s.tuning);
        // Answered (`synced`): the next repeat waits the first wait again.
        let later = t0 + span;
        s.on_text(
            r#"{"type":"synced","conversation_id":"c1","through_seq":5}"#,
            later,
        );
        let at = sent_at(&mut s, later, Duration::from_secs(6), range_sync);
        assert_eq!(at, vec![Duration::ZERO, s.tuning.sync_timeout]);

        // A send never answered: 3 s, then doubling.
        let mut s = session();
        s.on_open(t0);
        s.on_text(r#"{"type":"caught_up","conversations":0,"messages":0}"#, t0);
        let first = s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k1").unwrap(),
            "hi".into(),
            None,
            t0,
        );
        assert!(first.is_some());
        let at = sent_at(&mut s, t0, span, |f| f["action"] == "sendMessage");
        let mut all = vec![Duration::ZERO];
        all.extend(at);
        assert_backs_off(&all, s.tuning.send_retry, &s.tuning);
    }

    #[test]
    fn no_caught_up_in_time_sends_a_full_sync() {
        let t0 = Instant::now();
        let mut s = session();
        s.on_open(t0);
        assert!(s.on_tick(t0 + Duration::from_secs(1)).is_empty());
        let out = parsed(&s.on_tick(t0 + s.tuning.caught_up_timeout));
        assert_eq!(out, vec![json!({"action": "sync"})]);
        s.on_text(r#"{"type":"caught_up","conversations":0,"messages":0}"#, t0);
        assert!(s.on_tick(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(s.caught_up_count(), 1);
    }

    #[tokio::test]
    async fn sends_are_retried_until_sent_and_land_in_the_timeline() {
        let t0 = Instant::now();
        let mut s = session();
        let (tx, rx) = oneshot::channel();
        let cmid = ClientMsgId::parse("k1").unwrap();
        assert!(
            s.queue_send(cid("c1"), cmid.clone(), "hi".into(), Some(tx), t0)
                .is_none()
        );
        let out = parsed(&s.on_open(t0));
        assert_eq!(out[0]["client_msg_id"], "k1");
        assert!(s.on_tick(t0 + Duration::from_secs(1)).is_empty());
        let again = parsed(&s.on_tick(t0 + s.tuning.send_retry));
        assert_eq!(again[0]["action"], "sendMessage");
        let acks = s.on_text(
            r#"{"type":"sent","conversation_id":"c1","client_msg_id":"k1","seq":1,"sent_at":9}"#,
            t0,
        );
        assert_eq!(
            parsed(&acks),
            vec![json!({"action": "ack", "acks": [{"conversation_id": "c1", "seq": 1}]})],
            "our own message is acked like any other: the server keeps a pending row for the sending device too"
        );
        assert_eq!(rx.await.unwrap().unwrap().seq, Seq(1));
        assert_eq!(s.outbox_len(), 0);
        let t = s.timeline(&cid("c1")).unwrap();
        assert_eq!(t.get(Seq(1)).unwrap().body, "hi");
        assert_eq!(t.get(Seq(1)).unwrap().sender_id.as_str(), "bob");
    }

    #[tokio::test]
    async fn permanent_errors_fail_the_send_transient_ones_keep_it() {
        let t0 = Instant::now();
        let mut s = session();
        s.on_open(t0);
        let (tx, rx) = oneshot::channel();
        s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k1").unwrap(),
            "x".into(),
            Some(tx),
            t0,
        );
        s.on_text(
            r#"{"type":"error","code":"internal","message":"retry","client_msg_id":"k1"}"#,
            t0,
        );
        assert_eq!(s.outbox_len(), 1);
        s.on_text(
            r#"{"type":"error","code":"not_a_member","message":"no","client_msg_id":"k1"}"#,
            t0,
        );
        assert_eq!(s.outbox_len(), 0);
        assert!(matches!(
            rx.await.unwrap(),
            Err(RequestError::Refused {
                code: ErrorCode::NotAMember,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn replies_reach_their_request_and_close_fails_the_rest() {
        let mut s = session();
        s.on_open(Instant::now());
        let (tx, rx) = oneshot::channel();
        s.expect_reply("r1".into(), tx);
        s.on_text(r#"{"type":"conversation","conversation_id":"c9","members":["alice","bob"],"request_id":"r1"}"#, Instant::now());
        assert!(matches!(
            rx.await.unwrap(),
            Ok(ServerFrame::Conversation { .. })
        ));
        assert!(s.conversations().contains(&cid("c9")));
        let (tx, rx) = oneshot::channel();
        s.expect_reply("r2".into(), tx);
        s.on_close();
        assert_eq!(rx.await.unwrap(), Err(RequestError::Closed));
    }

    #[test]
    fn the_frame_size_is_its_utf8_bytes_with_json_escapes() {
        let c = cid("c1");
        let base = send_frame_bytes(&c, "k1", "");
        // `"` and `\` and `\n \t` are escaped to 2 bytes, other control
        // characters to `\u00XX` (6), an astral emoji is its 4 UTF-8 bytes,
        // é its 2.
        assert_eq!(send_frame_bytes(&c, "k1", "\""), base + 2);
        assert_eq!(send_frame_bytes(&c, "k1", "\\"), base + 2);
        assert_eq!(send_frame_bytes(&c, "k1", "\n\t"), base + 4);
        assert_eq!(send_frame_bytes(&c, "k1", "\u{1}\u{1f}"), base + 12);
        assert_eq!(send_frame_bytes(&c, "k1", "😀"), base + 4);
        assert_eq!(send_frame_bytes(&c, "k1", "é"), base + 2);
        assert_eq!(
            send_frame_bytes(&c, "k1", "a\"\\\u{0}😀"),
            base + 1 + 2 + 2 + 6 + 4
        );
        // The poison body: 16,384 characters, 32,768 bytes escaped.
        let poison = "\"".repeat(16_384);
        assert_eq!(send_frame_bytes(&c, "k1", &poison), base + 32_768);
        assert!(send_frame_bytes(&c, "k1", &poison) > MAX_FRAME_BYTES);
        // It is what goes on the wire.
        assert_eq!(
            send_frame_bytes(&c, "k1", &poison),
            send_frame(&c, "k1", &poison).len()
        );
    }

    #[tokio::test]
    async fn an_oversize_send_fails_at_once_and_never_enters_the_outbox() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        let (tx, rx) = oneshot::channel();
        let frame = s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k1").unwrap(),
            "\"".repeat(16_384),
            Some(tx),
            now,
        );
        assert!(frame.is_none());
        assert_eq!(s.outbox_len(), 0);
        assert!(matches!(
            rx.await.unwrap(),
            Err(RequestError::FrameTooLarge { limit: MAX_FRAME_BYTES, bytes }) if bytes > MAX_FRAME_BYTES
        ));
        // Just under the limit is sent (the server's own limits raised, so
        // only the frame's counts).
        let mut s = Session::new(
            UserId::parse("bob").unwrap(),
            Tuning {
                max_body_bytes: 1 << 20,
                max_message_frame_bytes: 1 << 20,
                ..Tuning::default()
            },
        );
        s.on_open(now);
        let c = cid("c1");
        let fits = "x".repeat(MAX_FRAME_BYTES - send_frame_bytes(&c, "k2", ""));
        let frame = s.queue_send(c, ClientMsgId::parse("k2").unwrap(), fits, None, now);
        assert_eq!(frame.unwrap().len(), MAX_FRAME_BYTES);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        /// Adversarial bodies padded to land around each limit: the session
        /// refuses exactly the bodies the server's send refuses with
        /// `payload_too_large` (by its decoded size or by its frame as
        /// encoded), and sends every other one.
        #[test]
        fn refuses_exactly_what_the_server_refuses(
            head in courier_core::strategies::adversarial_body(0..40),
            tail in courier_core::strategies::adversarial_body(1..3),
            off in -12i64..12,
            limits in proptest::sample::select(vec![(1024usize, 2048usize), (2048, 1024), (1500, 1500)]),
        ) {
            let (max_body, max_frame) = limits;
            let me = UserId::parse("alice").unwrap();
            let c = cid("c1");
            // Pad with `a`s towards one limit or the other, `off` either side.
            let measure = |b: &str| worst_frame_len(&c, &me, &Body::parse(b, usize::MAX).unwrap());
            let target = if off % 2 == 0 { max_frame } else { max_body };
            let base = if off % 2 == 0 { measure(&format!("{head}{tail}x")) - 1 } else { head.len() + tail.len() };
            let pad = (target as i64 - base as i64 + off / 2).max(0) as usize;
            let body = format!("{head}{}{tail}", "a".repeat(pad));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let server_refused = rt.block_on(async {
                let (mut app, _) = courier_core::app::App::in_memory();
                app.settings.send.max_body_bytes = max_body;
                app.settings.delivery.max_frame_bytes = max_frame;
                app.ports.conversations.create(&courier_core::domain::Conversation {
                    conversation_id: c.clone(),
                    members: vec![me.clone(), UserId::parse("bob").unwrap()],
                    last_seq: Seq::ZERO,
                    created_at: 1,
                }).await.unwrap();
                let answer = courier_core::services::send::send_message(
                    &app, &me, &Default::default(), &c, &ClientMsgId::parse("k").unwrap(), &body, None,
                ).await.unwrap();
                match answer {
                    courier_core::services::Answer::Done(_) => false,
                    courier_core::services::Answer::Refused(e) => {
                        assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{}", e.message);
                        true
                    }
                }
            });
            let mut s = Session::new(me.clone(), Tuning {
                max_body_bytes: max_body,
                max_message_frame_bytes: max_frame,
                max_frame_bytes: 1 << 20,
                ..Tuning::default()
            });
            s.on_open(Instant::now());
            let (tx, mut rx) = oneshot::channel();
            let frame = s.queue_send(c.clone(), ClientMsgId::parse("k").unwrap(), body.clone(), Some(tx), Instant::now());
            let client_refused = match rx.try_recv() {
                Ok(Err(RequestError::Refused { code: ErrorCode::PayloadTooLarge, .. })) => true,
                Ok(other) => panic!("unexpected answer {other:?}"),
                Err(_) => false,
            };
            proptest::prop_assert_eq!(client_refused, server_refused, "body of {} bytes, frame {}", body.len(), measure(&body));
            proptest::prop_assert_eq!(frame.is_none(), client_refused);
        }
    }

    /// Under the frame limit but over the server's measure of the message:
    /// refused here as the server would, with `payload_too_large`.
    #[tokio::test]
    async fn a_body_the_server_would_refuse_is_refused_before_sending() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        // 16,290 quotes: the send frame fits, but the `messages` frame is
        // over 32,768 as the server measures it.
        let quotes = "\"".repeat(16_290);
        assert!(send_frame_bytes(&cid("c1"), "k1", &quotes) <= MAX_FRAME_BYTES);
        let me = UserId::parse("bob").unwrap();
        let measured = worst_frame_len(&cid("c1"), &me, &Body::parse(&quotes, 1 << 20).unwrap());
        assert!(measured > DEFAULT_FRAME_BYTES, "{measured}");
        // And a body one byte over `MAX_BODY_BYTES`.
        for (key, body) in [("k1", quotes), ("k2", "a".repeat(16_385))] {
            let (tx, rx) = oneshot::channel();
            let frame = s.queue_send(
                cid("c1"),
                ClientMsgId::parse(key).unwrap(),
                body,
                Some(tx),
                now,
            );
            assert!(frame.is_none(), "{key}");
            assert!(matches!(
                rx.await.unwrap(),
                Err(RequestError::Refused {
                    code: ErrorCode::PayloadTooLarge,
                    ..
                })
            ));
        }
        assert_eq!(s.outbox_len(), 0);
    }

    fn big_tuning() -> Tuning {
        Tuning {
            max_frame_bytes: 1 << 20,
            max_body_bytes: 1 << 20,
            max_message_frame_bytes: 1 << 20,
            ..Tuning::default()
        }
    }

    #[tokio::test]
    async fn a_close_with_1009_fails_the_largest_send_since_the_last_frame() {
        let t0 = Instant::now();
        let mut s = Session::new(UserId::parse("bob").unwrap(), big_tuning());
        s.on_open(t0);
        let (small_tx, mut small_rx) = oneshot::channel();
        let (big_tx, big_rx) = oneshot::channel();
        s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k1").unwrap(),
            "hi".into(),
            Some(small_tx),
            t0,
        );
        s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k2").unwrap(),
            "\"".repeat(16_384),
            Some(big_tx),
            t0,
        );
        s.on_dropped(Some(1009), t0 + Duration::from_secs(5));
        assert!(matches!(
            big_rx.await.unwrap(),
            Err(RequestError::FrameTooLarge { .. })
        ));
        assert_eq!(s.outbox_len(), 1, "the small send stays");
        assert!(small_rx.try_recv().is_err());
        let again = parsed(&s.on_open(t0));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["client_msg_id"], "k1");
    }

    #[tokio::test]
    async fn two_closes_in_a_row_right_after_a_send_fail_it() {
        let t0 = Instant::now();
        let mut s = session();
        let (tx, rx) = oneshot::channel();
        s.on_open(t0);
        s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k1").unwrap(),
            "hi".into(),
            Some(tx),
            t0,
        );
        let soon = t0 + Duration::from_millis(100);
        s.on_dropped(None, soon);
        assert_eq!(s.outbox_len(), 1, "one quick close is not enough");
        // A connection that answered something clears the count.
        s.on_open(soon);
        s.on_text(
            r#"{"type":"caught_up","conversations":0,"messages":0}"#,
            soon,
        );
        s.on_dropped(None, soon);
        assert_eq!(s.outbox_len(), 1);
        // A close long after the send does not count.
        s.on_open(soon);
        s.on_dropped(None, soon + Duration::from_secs(30));
        assert_eq!(s.outbox_len(), 1);
        s.on_open(soon);
        s.on_dropped(None, soon);
        assert_eq!(s.outbox_len(), 1);
        s.on_open(soon);
        s.on_dropped(None, soon);
        assert_eq!(s.outbox_len(), 0, "two quick closes in a row");
        assert!(matches!(
            rx.await.unwrap(),
            Err(RequestError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn foreign_frames_are_ignored() {
        let mut s = session();
        s.on_open(Instant::now());
        assert!(
            s.on_text(
                r#"{"message":"Internal server error","connectionId":"x","requestId":"y"}"#,
                Instant::now()
            )
            .is_empty()
        );
        assert!(s.on_text("not json", Instant::now()).is_empty());
    }

    fn sent(conv: &str, cmid: &str, seq: u64) -> String {
        json!({"type": "sent", "conversation_id": conv, "client_msg_id": cmid, "seq": seq, "sent_at": 1})
            .to_string()
    }

    fn acks_in(frames: &[String]) -> Vec<(String, u64)> {
        parsed(frames)
            .iter()
            .filter(|f| f["action"] == "ack")
            .flat_map(|f| f["acks"].as_array().cloned().unwrap_or_default())
            .map(|a| {
                (
                    a["conversation_id"].as_str().unwrap().to_owned(),
                    a["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_sent_message_counts_as_held_so_the_ack_covers_it() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        assert_eq!(
            acks_in(&s.on_text(&messages("c1", &[1]), now)),
            vec![("c1".to_owned(), 1)]
        );
        // bob's own message at seq 2, sent from this device.
        s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k2").unwrap(),
            "mine".into(),
            None,
            now,
        );
        assert_eq!(
            acks_in(&s.on_text(&sent("c1", "k2", 2), now)),
            vec![("c1".to_owned(), 2)],
            "the ack moves over our own message"
        );
        // A fresh conversation of only our own messages: acked too.
        s.queue_send(
            cid("c2"),
            ClientMsgId::parse("k1").unwrap(),
            "first".into(),
            None,
            now,
        );
        assert_eq!(
            acks_in(&s.on_text(&sent("c2", "k1", 1), now)),
            vec![("c2".to_owned(), 1)]
        );
        // The catch-up copy came first (the pending row): one copy, one ack.
        s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k3").unwrap(),
            "again".into(),
            None,
            now,
        );
        let copy = json!({"type": "messages", "conversation_id": "c1", "messages": [
            {"seq": 3, "message_id": "m3", "sender_id": "bob", "body": "again", "sent_at": 1}
        ]})
        .to_string();
        assert_eq!(acks_in(&s.on_text(&copy, now)), vec![("c1".to_owned(), 3)]);
        assert!(acks_in(&s.on_text(&sent("c1", "k3", 3), now)).is_empty());
        let t = s.timeline(&cid("c1")).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.acked(), Seq(3));
        // A hole below our own message: nothing acked past it.
        s.queue_send(
            cid("c3"),
            ClientMsgId::parse("k5").unwrap(),
            "late".into(),
            None,
            now,
        );
        assert!(acks_in(&s.on_text(&sent("c3", "k5", 5), now)).is_empty());
    }

    #[tokio::test]
    async fn device_and_conversation_list_replies_reach_their_request() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        let (d_tx, d_rx) = oneshot::channel();
        let (u_tx, u_rx) = oneshot::channel();
        let (c_tx, c_rx) = oneshot::channel();
        s.expect_reply("r1".into(), d_tx);
        s.expect_reply("r2".into(), u_tx);
        s.expect_reply("r3".into(), c_tx);
        s.on_text(
            r#"{"type":"devices","devices":[],"request_id":"nobody"}"#,
            now,
        );
        s.on_text(
            r#"{"type":"devices","devices":[{"device_id":"phone","linked_at":1,"last_seen_at":2,"connected":true,"this_device":true}],"request_id":"r1"}"#,
            now,
        );
        s.on_text(
            r#"{"type":"device_unlinked","device_id":"laptop","request_id":"r2"}"#,
            now,
        );
        s.on_text(
            r#"{"type":"conversations","conversations":[{"conversation_id":"c1","members":["alice","bob"],"last_seq":9,"delivered_through_seq":4}],"next":"c1","request_id":"r3"}"#,
            now,
        );
        let Ok(ServerFrame::Devices { devices, .. }) = d_rx.await.unwrap() else {
            panic!("not devices")
        };
        assert_eq!(devices[0].device_id.as_str(), "phone");
        assert!(devices[0].this_device);
        assert!(matches!(
            u_rx.await.unwrap(),
            Ok(ServerFrame::DeviceUnlinked { ref device_id, .. }) if device_id.as_str() == "laptop"
        ));
        let Ok(ServerFrame::Conversations {
            conversations,
            next,
            ..
        }) = c_rx.await.unwrap()
        else {
            panic!("not conversations")
        };
        assert_eq!(conversations[0].last_seq, Seq(9));
        assert_eq!(next, Some(cid("c1")));
        // An error for a request rejects it: device_not_found.
        let (tx, rx) = oneshot::channel();
        s.expect_reply("r4".into(), tx);
        s.on_text(
            r#"{"type":"error","code":"device_not_found","message":"no","request_id":"r4"}"#,
            now,
        );
        assert!(matches!(
            rx.await.unwrap(),
            Err(RequestError::Refused {
                code: ErrorCode::DeviceNotFound,
                ..
            })
        ));
    }

    const REFUSAL: &str = r#"{"type":"error","code":"too_many_devices","message":"bob already has 8 linked devices (MAX_DEVICES = 8); unlink one from another device (unlinkDevice) to use this one"}"#;

    #[tokio::test]
    async fn device_unlinked_is_fatal_and_reported() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        let (tx, rx) = oneshot::channel();
        s.expect_reply("r1".into(), tx);
        s.drain_events();
        let unlinked = r#"{"type":"error","code":"device_unlinked","message":"device phone was unlinked by another of your devices"}"#;
        assert!(s.on_text(unlinked, now).is_empty());
        assert!(matches!(
            s.fatal(),
            Some(RequestError::Refused {
                code: ErrorCode::DeviceUnlinked,
                ..
            })
        ));
        assert!(rx.await.unwrap().is_err());
        let events = s.drain_events();
        assert!(
            matches!(events.as_slice(), [Event::DeviceUnlinked { message }] if message.contains("unlinked")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn too_many_devices_is_fatal_until_the_next_open() {
        let now = Instant::now();
        let mut s = session();
        s.on_open(now);
        let (tx, rx) = oneshot::channel();
        s.expect_reply("r1".into(), tx);
        s.queue_send(
            cid("c1"),
            ClientMsgId::parse("k1").unwrap(),
            "kept".into(),
            None,
            now,
        );
        s.drain_events();
        assert!(s.on_text(REFUSAL, now).is_empty());
        assert!(matches!(
            s.fatal(),
            Some(RequestError::Refused {
                code: ErrorCode::TooManyDevices,
                ..
            })
        ));
        assert!(matches!(
            rx.await.unwrap(),
            Err(RequestError::Refused {
                code: ErrorCode::TooManyDevices,
                ..
            })
        ));
        let events = s.drain_events();
        assert!(
            matches!(events.as_slice(), [Event::TooManyDevices { limit: Some(8), message }] if message.contains("MAX_DEVICES")),
            "{events:?}"
        );
        assert_eq!(s.outbox_len(), 1, "sends wait for a later go_online");
        s.on_close();
        s.on_open(now);
        assert!(s.fatal().is_none());
    }

    #[test]
    fn the_device_limit_is_read_from_the_message() {
        assert_eq!(
            device_limit_of("bob already has 8 linked devices (MAX_DEVICES = 8); unlink one"),
            Some(8)
        );
        assert_eq!(device_limit_of("bob already has 3 linked devices"), Some(3));
        assert_eq!(device_limit_of("MAX_DEVICES = 12"), Some(12));
        assert_eq!(device_limit_of("nothing here"), None);
    }
}
