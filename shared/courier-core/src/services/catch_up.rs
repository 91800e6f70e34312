//! Catch-up: everything a user missed, in one round of parallel reads.
//!
//! Over 700 lines with its tests (the code is ~490): the tests exercise
//! private steps (settling, paging, deadline) and stay beside them.
//!
//! The critical path is three sequential round trips whatever the number of
//! conversations (docs/architecture.md, the reconnect flow): the pending query, then every conversation's
//! range query at once, then every conversation's posts at once. Inside one
//! conversation frames go out strictly in seq order; across conversations
//! there is no order to keep, so they run concurrently, bounded twice: at
//! most `CatchUpConfig::concurrency` conversations at once (sockets), and at
//! most `CatchUpConfig::max_bytes_in_flight` bytes of messages held at once
//! (memory, [`Budget`]). Before a read, a conversation takes from that
//! budget the most the read can return: the messages it asks for (what its
//! pending row says it holds, at most the cap, plus one) at the worst
//! weight a stored message can have ([`worst_message_bytes`]: body raw and
//! encoded with every byte escaped). Once read and packed, it keeps only
//! what they actually weigh ([`held_bytes`]: the messages and their frames)
//! and gives the rest back; the rest goes back once they are posted. So a
//! user with 100 conversations of a few messages each is still served in
//! one round of reads and posts (courier-bench, N = 100 × 3 on the
//! parallel backend: 3.91 round trips measured as a paired slope, design
//! 4; 10.6 when a message count alone bounded it, at 32), while full
//! conversations queue: at the defaults (500 messages,
//! 16 KB bodies, 256 MiB) about four read at once, then each keeps what
//! its messages weigh.
//!
//! Safety properties, and where they come from:
//! - *Nothing lost.* In `PENDING_CLEAR=ack` catch-up never deletes anything;
//!   the client's ack does. In `post` it settles a row only on condition
//!   that the row holds nothing but what it posted (`settle_posted`: no newer
//!   `last_seq`, no older `first_undelivered_seq` recorded meanwhile; else
//!   it re-reads the row and delivers from its cursor), and advances the
//!   cursor only to what it posted.
//! - *Idempotent.* Running twice (Lambda may) posts the same frames twice; the
//!   client drops duplicates by `(conversation_id, seq)`.
//! - *Bounded.* At most `per_conversation_cap` messages per conversation (the
//!   rest announced by a `more` frame). Every store and gateway call runs
//!   under a timeout to the invocation's deadline minus
//!   `CatchUpConfig::deadline_margin` ([`within`]): a call cut off, or a
//!   conversation not started by then, is *not reached* — nothing is
//!   deleted or settled for it past its cursor, and `caught_up` counts it
//!   (`unreached`) so the client runs a full `sync`, which starts from those
//!   cursors. `caught_up` is one post in the margin (at least the open
//!   window plus one post) whatever the number not reached, bounded by the
//!   deadline itself.
//! - *410 is not gone too early.* Posting goes through
//!   [`delivery::post_frames`], which retries a 410 inside the open window.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::{info, instrument, warn};

use crate::app::App;
use crate::config::PendingClear;
use crate::domain::{
    Connection, ConversationId, DeviceId, Message, Millis, PendingDelivery, Seq, UserId, now_millis,
};
use crate::ports::{AckOutcome, CatchUpOrigin, CatchUpRequest, StoreError};
use crate::protocol::{ErrorCode, FrameError, ServerFrame, pack_messages};
use crate::services::ack::holding_devices;
use crate::services::delivery::{self, PostFailed, Posted};
use crate::services::{Answer, Reply};
use crate::telemetry;

/// Rounds of "post, then find the row grew meanwhile" one conversation may
/// take in `post` mode before leaving the rest to the next catch-up.
const MAX_POST_MODE_ROUNDS: usize = 4;

/// What a held message weighs besides its body, raw and encoded together:
/// the `Message` (~150 bytes), its ids (at most 128 + 128 + 64 bytes, plus
/// the message id) once raw and once in JSON, the field names, its share of
/// the frame's envelope.
const MESSAGE_OVERHEAD_BYTES: usize = 2048;

/// The most one stored message weighs while held, for a body of at most
/// `max_body_bytes`: the body raw, then encoded with every byte escaped
/// (`\u00XX`, 6 bytes), plus the overhead.
pub fn worst_message_bytes(max_body_bytes: usize) -> usize {
    max_body_bytes
        .saturating_mul(7)
        .saturating_add(MESSAGE_OVERHEAD_BYTES)
}

/// What `messages`, as read, and `frames`, packed from them, weigh.
pub fn held_bytes(messages: &[Message], frames: &[String]) -> usize {
    let raw: usize = messages
        .iter()
        .map(|m| {
            std::mem::size_of::<Message>()
                + m.body.len()
                + m.message_id.len()
                + m.client_msg_id.as_str().len()
                + m.sender_id.as_str().len()
                + m.conversation_id.as_str().len()
        })
        .sum();
    raw + frames.iter().map(String::len).sum::<usize>()
}

/// Bytes of messages one catch-up holds, across its conversations.
struct Budget {
    bytes: Semaphore,
    max: usize,
}

/// Bytes taken from a [`Budget`]; given back when dropped.
struct Taken<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Budget {
    fn new(max: usize) -> Self {
        let max = max.clamp(1, u32::MAX as usize);
        Self {
            bytes: Semaphore::new(max),
            max,
        }
    }

    /// Waits for `bytes` (at most the whole budget: a read larger than it
    /// runs alone).
    async fn take(&self, bytes: usize) -> Taken<'_> {
        let bytes = bytes.clamp(1, self.max);
        // Never closed, so this only waits.
        if let Ok(permit) = self
            .bytes
            .acquire_many(u32::try_from(bytes).unwrap_or(u32::MAX))
            .await
        {
            permit.forget();
        }
        Taken {
            budget: self,
            bytes,
        }
    }

    fn give(&self, bytes: usize) {
        self.bytes.add_permits(bytes);
    }
}

impl Taken<'_> {
    /// Keeps `bytes` (what was actually read) and gives the rest back.
    /// More than was taken can only come from bodies stored under a larger
    /// `MAX_BODY_BYTES`: kept as taken (never waited for again, which could
    /// deadlock two conversations), and logged.
    fn keep(&mut self, bytes: usize) {
        let bytes = bytes.max(1);
        if bytes < self.bytes {
            self.budget.give(self.bytes - bytes);
            self.bytes = bytes;
        } else if bytes > self.bytes {
            warn!(
                held = bytes,
                taken = self.bytes,
                "messages weigh more than MAX_BODY_BYTES allows"
            );
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// A catch-up that could not run to its end because of a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatchUpError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("gateway: {0}")]
    Post(#[from] PostFailed),
    /// The invocation's deadline came before this step answered.
    #[error("the invocation's deadline came before {0}")]
    Deadline(&'static str),
}

/// A port call cut off by the time left: what it was doing counts as not
/// reached.
#[derive(Debug)]
struct CutOff;

/// Runs `call` until `stop` at the latest (no limit without a deadline).
/// Every store and gateway call of a catch-up goes through this, so a hung
/// store or a post retrying a 410 never runs past the budget.
async fn within<T>(
    stop: Option<tokio::time::Instant>,
    call: impl Future<Output = T>,
) -> Result<T, CutOff> {
    match stop {
        None => Ok(call.await),
        Some(stop) => tokio::time::timeout_at(stop, call)
            .await
            .map_err(|_| CutOff),
    }
}

/// How a catch-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every pending conversation was delivered (or announced with `more`,
    /// or counted as unreached) and `caught_up` was posted.
    CaughtUp,
    /// The connection is gone; nothing was deleted, the rows wait for the
    /// next connection.
    Gone,
    /// The device is over `MAX_DEVICES`: told so (`too_many_devices`), its
    /// connection closed, nothing delivered.
    DeviceRefused,
}

/// What one catch-up did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ending: Ending,
    pub conversations: usize,
    pub messages: usize,
    pub frames: usize,
    /// Conversations that ended with a `more` frame (the cap).
    pub more: usize,
    /// Conversations not reached in time, told by count in `caught_up`.
    pub unreached: usize,
}

/// A catch-up's frames went out through the gateway: the route itself
/// responds with nothing.
impl Reply for Report {
    fn into_reply(self) -> Option<ServerFrame> {
        None
    }
}

/// Runs a catch-up for `request.user_id` on `request.connection_id`.
///
/// `deadline` is the invocation's (Lambda's) deadline; `request_id` is
/// echoed on `caught_up` and `more` when the client asked with `sync`.
/// Records what it did (`telemetry`: `CatchUps`, the per-catch-up counts,
/// and `CatchUpTimeMs` for the one `$connect` started).
#[instrument(skip_all, fields(user_id = %request.user_id, connection_id = %request.connection_id))]
pub async fn catch_up(
    app: &App,
    request: &CatchUpRequest,
    deadline: Option<Instant>,
    request_id: Option<String>,
) -> Result<Report, CatchUpError> {
    let result = run(app, request, deadline, request_id).await;
    record(request, result.as_ref().ok(), now_millis());
    result
}

/// The metrics of one catch-up that ended (`report`) or failed (`None`) at
/// `now`. The time since the connection opened is only `$connect`'s: a
/// `sync` can come at any point of a connection's life.
fn record(request: &CatchUpRequest, report: Option<&Report>, now: Millis) {
    let Some(report) = report else {
        telemetry::count_outcome(telemetry::CATCH_UPS, "failed");
        return;
    };
    let outcome = match report.ending {
        Ending::CaughtUp => "caught_up",
        Ending::Gone => "gone",
        Ending::DeviceRefused => "device_refused",
    };
    telemetry::count_outcome(telemetry::CATCH_UPS, outcome);
    if report.ending == Ending::DeviceRefused {
        return;
    }
    for (name, n) in [
        (telemetry::CATCH_UP_CONVERSATIONS, report.conversations),
        (telemetry::CATCH_UP_MESSAGES, report.messages),
        (telemetry::CATCH_UP_FRAMES, report.frames),
        (telemetry::CATCH_UP_MORE_FRAMES, report.more),
        (telemetry::CATCH_UP_UNREACHED, report.unreached),
    ] {
        telemetry::observe(name, n as f64);
    }
    if let (Ending::CaughtUp, CatchUpOrigin::Connect, Some(opened)) =
        (report.ending, request.origin, request.connected_at)
    {
        let since = u64::try_from(now - opened).unwrap_or(0);
        telemetry::observe_ms(telemetry::CATCH_UP_TIME_MS, Duration::from_millis(since));
    }
}

async fn run(
    app: &App,
    request: &CatchUpRequest,
    deadline: Option<Instant>,
    request_id: Option<String>,
) -> Result<Report, CatchUpError> {
    let started = Instant::now();
    let user = &request.user_id;
    let device = &request.device_id;
    let connection = Connection {
        device_id: device.clone(),
        connection_id: request.connection_id.clone(),
        connected_at: request.connected_at,
    };
    if let Some(max) = request.device_limit {
        return refuse_device(app, user, &connection, max, deadline).await;
    }
    // Work (reads, message posts, settles) stops at `stop_at`; the closing
    // `caught_up` uses the margin, up to the deadline itself.
    let end_at = deadline.map(tokio::time::Instant::from_std);
    let stop_at = deadline.map(|d| {
        tokio::time::Instant::from_std(
            d.checked_sub(app.settings.catch_up.deadline_margin)
                .unwrap_or(started),
        )
    });

    // Without the rows nothing can be announced: the one read bounded by the
    // deadline itself, not the margin (past `stop_at` every row is then
    // announced, not delivered).
    // The rows carry every device's cursor: where this device starts costs
    // no read of its own.
    let rows = within(end_at, app.ports.pending.list(user))
        .await
        .map_err(|CutOff| CatchUpError::Deadline("the pending rows were read"))??;
    // Rows this device is already past (another device is behind) hold
    // nothing for it.
    let mut rows: Vec<PendingDelivery> = rows
        .into_iter()
        .filter(|row| row.start_for(device) <= row.last_seq)
        .collect();
    let gone = Arc::new(AtomicBool::new(false));
    let conversations = rows.len();
    let budget = &Budget::new(app.settings.catch_up.max_bytes_in_flight);

    // The conversation the app was opened on goes first, alone, before any
    // other starts: its frames are the first the client gets.
    let first = request.open_conversation.as_ref().and_then(|open| {
        let at = rows.iter().position(|r| &r.conversation_id == open);
        if at.is_none() {
            info!(conversation_id = %open, "opened conversation has nothing pending for this device (or is not the user's); ignored");
        }
        at.map(|i| rows.remove(i))
    });
    let mut results: Vec<Result<Delivered, CatchUpError>> = Vec::new();
    if let Some(row) = first {
        let d = deliver_conversation(
            app,
            user,
            &connection,
            row,
            stop_at,
            budget,
            request_id.clone(),
        )
        .await;
        if matches!(&d, Ok(d) if d.gone) {
            gone.store(true, Ordering::SeqCst);
        }
        results.push(d);
    }

    let rest: Vec<Result<Delivered, CatchUpError>> = futures::stream::iter(rows)
        .map(|row| {
            let gone = Arc::clone(&gone);
            let connection = &connection;
            let request_id = request_id.clone();
            async move {
                if gone.load(Ordering::SeqCst) {
                    return Ok(Delivered::gone());
                }
                if stop_at.is_some_and(|s| tokio::time::Instant::now() >= s) {
                    // Out of time: counted in `caught_up`, not delivered.
                    return Ok(Delivered::unreached(
                        &row.conversation_id,
                        row.start_for(&connection.device_id),
                    ));
                }
                let d =
                    deliver_conversation(app, user, connection, row, stop_at, budget, request_id)
                        .await?;
                if d.gone {
                    gone.store(true, Ordering::SeqCst);
                }
                Ok(d)
            }
        })
        .buffer_unordered(app.settings.catch_up.concurrency)
        .collect()
        .await;
    results.extend(rest);

    let mut total = Delivered::default();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(d) => total.add(&d),
            Err(e) => {
                warn!(error = %e, "conversation catch-up failed");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // Nothing was deleted for the failed conversation; the client's `sync`
        // (sent when `caught_up` does not come) or the next connect retries it.
        return Err(e);
    }
    // Not reached in time (the deadline, or a call cut off): nothing was
    // settled past where each stopped, so the next catch-up starts there.
    // Told in `caught_up` as a count, not with a `more` frame each: one post
    // inside the margin whatever their number; the client answers with a
    // full `sync`.
    let unreached = total.unreached.len();
    if unreached > 0 {
        warn!(
            unreached,
            first = ?total.unreached.iter().take(5).collect::<Vec<_>>(),
            "catch-up ran out of time; the client is told to sync again"
        );
    }
    if total.gone {
        info!(
            messages = total.messages,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connection gone during catch-up"
        );
        return Ok(Report {
            ending: Ending::Gone,
            conversations,
            messages: total.messages,
            frames: total.frames,
            more: total.more,
            unreached,
        });
    }

    let done = ServerFrame::CaughtUp {
        conversations,
        messages: total.messages,
        unreached,
        request_id,
    }
    .to_json();
    let ending = match within(
        end_at,
        delivery::post_frames(
            &app.ports,
            &app.settings.delivery,
            user,
            &connection,
            &[done],
        ),
    )
    .await
    .map_err(|CutOff| CatchUpError::Deadline("`caught_up` was posted"))??
    {
        Posted::All => {
            total.frames += 1;
            Ending::CaughtUp
        }
        Posted::Gone { .. } => Ending::Gone,
    };
    info!(
        conversations,
        messages = total.messages,
        frames = total.frames,
        more = total.more,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "catch-up done"
    );
    Ok(Report {
        ending,
        conversations,
        messages: total.messages,
        frames: total.frames,
        more: total.more,
        unreached,
    })
}

#[derive(Debug, Default, Clone)]
struct Delivered {
    messages: usize,
    frames: usize,
    more: usize,
    gone: bool,
    /// Conversations not reached in time, with the seq they stopped at:
    /// nothing was deleted or settled past it; `caught_up` counts them.
    unreached: Vec<(ConversationId, Seq)>,
}

impl Delivered {
    fn gone() -> Self {
        Self {
            gone: true,
            ..Self::default()
        }
    }

    fn unreached(conversation: &ConversationId, next_seq: Seq) -> Self {
        Self {
            unreached: vec![(conversation.clone(), next_seq)],
            ..Self::default()
        }
    }

    /// `self` so far, plus `conversation` not reached from `next_seq`.
    fn cut_off(mut self, conversation: &ConversationId, next_seq: Seq) -> Self {
        self.unreached.push((conversation.clone(), next_seq));
        self
    }

    fn add(&mut self, other: &Delivered) {
        self.messages += other.messages;
        self.frames += other.frames;
        self.more += other.more;
        self.gone |= other.gone;
        self.unreached.extend(other.unreached.iter().cloned());
    }
}

async fn announce_more(
    app: &App,
    user: &UserId,
    connection: &Connection,
    conversation_id: &ConversationId,
    next_seq: Seq,
    request_id: Option<String>,
) -> Result<Delivered, CatchUpError> {
    let more = ServerFrame::More {
        conversation_id: conversation_id.clone(),
        next_seq,
        request_id,
    }
    .to_json();
    Ok(
        match delivery::post_frames(
            &app.ports,
            &app.settings.delivery,
            user,
            connection,
            &[more],
        )
        .await?
        {
            Posted::All => Delivered {
                frames: 1,
                more: 1,
                ..Delivered::default()
            },
            Posted::Gone { .. } => Delivered::gone(),
        },
    )
}

/// `post` mode: `device` was posted `from..=through`. The devices that hold
/// the row back are read now, after the post, not at the catch-up's start: a
/// device linked meanwhile may be owed what was just posted to this one
/// (anything posted was read after its append, so after that link), and a
/// list read earlier would let the settle delete the row under it.
async fn settle_posted(
    app: &App,
    user: &UserId,
    device: &DeviceId,
    conversation: &ConversationId,
    from: Seq,
    through: Seq,
) -> Result<AckOutcome, StoreError> {
    let linked = holding_devices(app, user).await?;
    app.ports
        .pending
        .settle_posted(user, device, conversation, from, through, &linked)
        .await
}

/// A device over `MAX_DEVICES`: tells the client which limit it hit, then
/// closes the connection (it is not registered, so it would get nothing
/// live). Nothing is read or delivered.
async fn refuse_device(
    app: &App,
    user: &UserId,
    connection: &Connection,
    max: usize,
    deadline: Option<Instant>,
) -> Result<Report, CatchUpError> {
    let end_at = deadline.map(tokio::time::Instant::from_std);
    let frame = FrameError::new(
        ErrorCode::TooManyDevices,
        format!(
            "{user} already has {max} linked devices (MAX_DEVICES = {max}); \
             unlink one from another device (unlinkDevice) to use this one"
        ),
    )
    .to_frame()
    .to_json();
    warn!(device_id = %connection.device_id, max, "device over MAX_DEVICES refused");
    let posted = within(
        end_at,
        delivery::post_frames(
            &app.ports,
            &app.settings.delivery,
            user,
            connection,
            &[frame],
        ),
    )
    .await
    .map_err(|CutOff| CatchUpError::Deadline("the device-limit error was posted"))??;
    if let Err(e) = app.ports.gateway.delete(&connection.connection_id).await {
        warn!(error = %e, "could not close the refused device's connection");
    }
    Ok(Report {
        ending: match posted {
            Posted::All => Ending::DeviceRefused,
            Posted::Gone { .. } => Ending::Gone,
        },
        conversations: 0,
        messages: 0,
        frames: usize::from(posted == Posted::All),
        more: 0,
        unreached: 0,
    })
}

/// Delivers one conversation's pending messages to the connection's device,
/// in seq order, from that device's cursor.
#[allow(clippy::too_many_arguments)]
async fn deliver_conversation(
    app: &App,
    user: &UserId,
    connection: &Connection,
    mut row: PendingDelivery,
    stop_at: Option<tokio::time::Instant>,
    budget: &Budget,
    request_id: Option<String>,
) -> Result<Delivered, CatchUpError> {
    let cap = app.settings.catch_up.per_conversation_cap;
    let worst = worst_message_bytes(app.settings.send.max_body_bytes);
    let conversation = row.conversation_id.clone();
    let device = &connection.device_id;
    let mut out = Delivered::default();
    let mut from = row.start_for(device);

    for _round in 0..MAX_POST_MODE_ROUNDS {
        // What the row says is pending from `from`, within the cap, so the
        // read's size is known before it is made. A message stored past the
        // row's `last_seq` since it was read is left to the next round in
        // `post` mode (which re-reads the row), to `more` in `ack` mode.
        let room = cap.saturating_sub(out.messages);
        let claimed = row
            .last_seq
            .get()
            .saturating_add(1)
            .saturating_sub(from.get());
        let want = usize::try_from(claimed).unwrap_or(usize::MAX).min(room);
        // The most the read can weigh, taken before it is made; waiting for
        // it counts against the deadline like any call.
        let Ok(mut taken) = within(stop_at, budget.take((want + 1).saturating_mul(worst))).await
        else {
            return Ok(out.cut_off(&conversation, from));
        };
        // One more than wanted tells whether a `more` frame is needed.
        let Ok(messages) = within(
            stop_at,
            app.ports.messages.range(&conversation, from, want + 1),
        )
        .await
        else {
            return Ok(out.cut_off(&conversation, from));
        };
        let mut messages = messages?;
        let history = history_starts(from, &messages, row.last_seq);
        let capped = messages.len() > want;
        // Cut short by a stale row, not by the cap: `post` mode settles what
        // it posted, finds the row grew and delivers the rest next round.
        let stale =
            capped && want < room && app.settings.delivery.pending_clear == PendingClear::Post;
        let next_seq = (capped && !stale).then(|| messages[want].seq);
        messages.truncate(want);

        let mut frames = pack_messages(
            &conversation,
            &messages,
            app.settings.delivery.max_frame_bytes,
        );
        if let Some(first) = history {
            frames.insert(0, history_frame(&conversation, first, request_id.clone()));
        }
        // Keep what was actually read; the rest of the worst case goes back.
        taken.keep(held_bytes(&messages, &frames));
        let Ok(posted) = within(
            stop_at,
            delivery::post_frames(
                &app.ports,
                &app.settings.delivery,
                user,
                connection,
                &frames,
            ),
        )
        .await
        else {
            // Some frames may have gone out: the client drops duplicates.
            return Ok(out.cut_off(&conversation, from));
        };
        match posted? {
            Posted::All => {}
            Posted::Gone { delivered } => {
                out.frames += delivered;
                out.gone = true;
                return Ok(out);
            }
        }
        out.frames += frames.len();
        out.messages += messages.len();
        let through = messages.last().map(|m| m.seq);
        // Posted: released before any further call.
        drop((messages, frames, taken));

        if let Some(next_seq) = next_seq {
            if let (PendingClear::Post, Some(through)) =
                (app.settings.delivery.pending_clear, through)
            {
                // Posted counts as delivered in this mode: move the cursor,
                // never past what was posted, never over an older seq
                // recorded meanwhile (that one waits for the next catch-up).
                let settle = settle_posted(app, user, device, &conversation, from, through);
                let Ok(settled) = within(stop_at, settle).await else {
                    return Ok(out.cut_off(&conversation, next_seq));
                };
                settled?;
            }
            let Ok(more) = within(
                stop_at,
                announce_more(app, user, connection, &conversation, next_seq, request_id),
            )
            .await
            else {
                return Ok(out.cut_off(&conversation, next_seq));
            };
            out.add(&more?);
            return Ok(out);
        }

        if app.settings.delivery.pending_clear == PendingClear::Ack {
            return Ok(out);
        }
        // Post mode: `from..=through` was posted. Delete the row if that is
        // all it holds; if it grew meanwhile (a newer message, or an older
        // one a retried send recorded again), deliver what it holds now.
        // Nothing posted (expired by retention): the range read is done.
        let through = through.unwrap_or(row.last_seq.max(from));
        let settle = settle_posted(app, user, device, &conversation, from, through);
        let Ok(settled) = within(stop_at, settle).await else {
            return Ok(out.cut_off(&conversation, from));
        };
        if settled? == AckOutcome::Cleared {
            return Ok(out);
        }
        // Settled for this device, the row may stay for the others: done
        // unless it grew below or above what was posted.
        let Ok(newer) = within(stop_at, app.ports.pending.get(user, &conversation)).await else {
            return Ok(out.cut_off(&conversation, from));
        };
        match newer? {
            None => return Ok(out),
            Some(newer) if newer.start_for(device) > newer.last_seq => return Ok(out),
            Some(newer) => {
                from = newer.start_for(device);
                row = newer;
            }
        }
        if stop_at.is_some_and(|s| tokio::time::Instant::now() >= s) {
            return Ok(out.cut_off(&conversation, from));
        }
        if out.messages >= cap {
            let Ok(more) = within(
                stop_at,
                announce_more(app, user, connection, &conversation, from, request_id),
            )
            .await
            else {
                return Ok(out.cut_off(&conversation, from));
            };
            out.add(&more?);
            return Ok(out);
        }
    }
    // Still growing after several rounds: a busy conversation. The row stays,
    // announced so the client pulls the rest.
    let Ok(more) = within(
        stop_at,
        announce_more(app, user, connection, &conversation, from, request_id),
    )
    .await
    else {
        return Ok(out.cut_off(&conversation, from));
    };
    out.add(&more?);
    Ok(out)
}

/// Where a conversation's history starts, when retention deleted the seqs
/// from `from` on: the first message read is above `from`, or nothing was
/// read although `known_last` (read before the range) is `from` or above.
/// Nothing else leaves a hole in stored seqs: a seq is taken and its message
/// stored in one transaction, and TTL deletes the oldest first.
fn history_starts(from: Seq, read: &[Message], known_last: Seq) -> Option<Seq> {
    match read.first() {
        Some(first) => (first.seq > from).then_some(first.seq),
        None => (known_last >= from).then(|| known_last.next()),
    }
}

/// The `history_starts` frame posted ahead of a conversation's messages.
fn history_frame(
    conversation: &ConversationId,
    first_available_seq: Seq,
    request_id: Option<String>,
) -> String {
    ServerFrame::HistoryStarts {
        conversation_id: conversation.clone(),
        first_available_seq,
        request_id,
    }
    .to_json()
}

/// Serves `{"action":"sync","conversation_id":…,"after_seq":…,"limit":…}`:
/// posts messages after `after_seq` (at most `limit`), then `more` if the
/// limit cut them short, else `synced`.
#[instrument(skip_all, fields(user_id = %user, conversation_id = %conversation))]
#[allow(clippy::too_many_arguments)]
pub async fn sync_range(
    app: &App,
    user: &UserId,
    connection: &Connection,
    conversation: &ConversationId,
    after_seq: Seq,
    limit: Option<u32>,
    request_id: Option<String>,
) -> Result<Answer<Report>, CatchUpError> {
    let Some(conv) = app.ports.conversations.get(conversation).await? else {
        return Ok(Answer::Refused(
            FrameError::new(
                ErrorCode::ConversationNotFound,
                format!("conversation {conversation} does not exist"),
            )
            .with_request_id(request_id),
        ));
    };
    if !conv.is_member(user) {
        return Ok(Answer::Refused(
            FrameError::new(
                ErrorCode::NotAMember,
                format!("not a member of {conversation}"),
            )
            .with_request_id(request_id),
        ));
    }
    let limit = limit.map_or(app.settings.catch_up.per_conversation_cap, |l| l as usize);
    let mut messages = app
        .ports
        .messages
        .range(conversation, after_seq.next(), limit + 1)
        .await?;
    let history = history_starts(after_seq.next(), &messages, conv.last_seq);
    let next_seq = (messages.len() > limit).then(|| messages[limit].seq);
    messages.truncate(limit);
    let mut frames = pack_messages(
        conversation,
        &messages,
        app.settings.delivery.max_frame_bytes,
    );
    if let Some(first) = history {
        frames.insert(0, history_frame(conversation, first, request_id.clone()));
    }
    // Everything through `through` was posted or is gone.
    let through = messages.last().map_or_else(
        || {
            history.map_or(after_seq.min(conv.last_seq), |first| {
                Seq(first.get().saturating_sub(1))
            })
        },
        |m| m.seq,
    );
    let last = match next_seq {
        Some(next_seq) => ServerFrame::More {
            conversation_id: conversation.clone(),
            next_seq,
            request_id,
        },
        None => ServerFrame::Synced {
            conversation_id: conversation.clone(),
            through_seq: through,
            request_id,
        },
    };
    frames.push(last.to_json());
    let ending = match delivery::post_frames(
        &app.ports,
        &app.settings.delivery,
        user,
        connection,
        &frames,
    )
    .await?
    {
        Posted::All => Ending::CaughtUp,
        Posted::Gone { .. } => Ending::Gone,
    };
    Ok(Answer::Done(Report {
        ending,
        conversations: 1,
        messages: messages.len(),
        frames: frames.len(),
        more: usize::from(next_seq.is_some()),
        unreached: 0,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::adapters::memory::MemoryStore;
    use crate::domain::{ClientMsgId, ConnectionId, Conversation, Message};
    use crate::ports::{AppendOutcome, ConversationStore, MessageStore, NewMessage, PendingStore};

    /// What a test watches of a memory store's range reads; [`Observed`]
    /// passes every other message-store call through untouched.
    #[async_trait]
    trait RangeObserver: Send + Sync {
        async fn range(
            &self,
            inner: &MemoryStore,
            c: &ConversationId,
            from: Seq,
            limit: usize,
        ) -> Result<Vec<Message>, StoreError>;
    }

    /// A memory store whose range reads go through `observer`.
    struct Observed<O> {
        inner: MemoryStore,
        observer: O,
    }

    #[async_trait]
    impl<O: RangeObserver> MessageStore for Observed<O> {
        async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
            self.inner.append(new).await
        }
        async fn find_sent(
            &self,
            c: &ConversationId,
            s: &UserId,
            k: &ClientMsgId,
        ) -> Result<Option<Message>, StoreError> {
            self.inner.find_sent(c, s, k).await
        }
        async fn range(
            &self,
            c: &ConversationId,
            from: Seq,
            limit: usize,
        ) -> Result<Vec<Message>, StoreError> {
            self.observer.range(&self.inner, c, from, limit).await
        }
    }

    /// Each range read held a little so that reads in flight together
    /// overlap; counts the most at once.
    #[derive(Default)]
    struct Overlap {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    #[async_trait]
    impl RangeObserver for Overlap {
        async fn range(
            &self,
            inner: &MemoryStore,
            c: &ConversationId,
            from: Seq,
            limit: usize,
        ) -> Result<Vec<Message>, StoreError> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            inner.range(c, from, limit).await
        }
    }

    /// `conversations` pending rows for `bob`, each claiming `claimed`
    /// messages, of which the first is stored.
    async fn most_reads_at_once(conversations: usize, claimed: u64) -> usize {
        let (mut app, handles) = App::in_memory();
        let store = handles.store.clone();
        let overlap = Arc::new(Observed {
            inner: store.clone(),
            observer: Overlap::default(),
        });
        app.ports.messages = overlap.clone();
        let bob = UserId::parse("bob").unwrap();
        let alice = UserId::parse("alice").unwrap();
        for i in 0..conversations {
            let c = ConversationId::parse(&format!("c{i}")).unwrap();
            let conversation = Conversation {
                conversation_id: c.clone(),
                members: vec![alice.clone(), bob.clone()],
                last_seq: Seq::ZERO,
                created_at: 1,
            };
            assert!(store.create(&conversation).await.unwrap());
            let message = Message {
                conversation_id: c.clone(),
                seq: Seq(1),
                message_id: format!("m{i}"),
                client_msg_id: ClientMsgId::parse(&format!("k{i}")).unwrap(),
                sender_id: alice.clone(),
                body: "hi".into(),
                sent_at: 1,
            };
            let stored = store
                .append(&NewMessage {
                    message,
                    pending_for: Vec::new(),
                    idempotency_expires_at: i64::MAX,
                    message_expires_at: None,
                })
                .await
                .unwrap();
            assert_eq!(stored, AppendOutcome::Stored);
            store.record(&bob, &c, Seq(claimed)).await.unwrap();
            store.record(&bob, &c, Seq(1)).await.unwrap();
        }
        let connection = ConnectionId::parse("conn").unwrap();
        handles.gateway.open(&connection);
        let request = CatchUpRequest {
            user_id: bob,
            connection_id: connection,
            connected_at: None,
            device_id: Default::default(),
            open_conversation: None,
            device_limit: None,
            origin: Default::default(),
            correlation_id: None,
        };
        let report = catch_up(&app, &request, None, None).await.unwrap();
        assert_eq!(report.ending, Ending::CaughtUp);
        assert_eq!(report.messages, conversations);
        overlap.observer.most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn many_small_conversations_are_read_in_one_round() {
        assert_eq!(most_reads_at_once(100, 3).await, 100);
    }

    /// The gateway of a memory `App`, which records `seq` for `user` in the
    /// pending store just before its first post goes out: a retried send
    /// re-delivering an older message while catch-up is posting.
    struct RecordsBeforeFirstPost {
        inner: Arc<dyn crate::ports::Gateway>,
        store: MemoryStore,
        row: (UserId, ConversationId, Seq),
        done: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl crate::ports::Gateway for RecordsBeforeFirstPost {
        async fn post(
            &self,
            connection: &ConnectionId,
            data: &[u8],
        ) -> Result<(), crate::ports::PostError> {
            if !self.done.swap(true, Ordering::SeqCst) {
                let (u, c, s) = &self.row;
                self.store.record(u, c, *s).await.unwrap();
            }
            self.inner.post(connection, data).await
        }
        async fn get(
            &self,
            connection: &ConnectionId,
        ) -> Result<Option<crate::ports::ConnectionInfo>, crate::ports::PostError> {
            self.inner.get(connection).await
        }
        async fn delete(&self, connection: &ConnectionId) -> Result<(), crate::ports::PostError> {
            self.inner.delete(connection).await
        }
    }

    /// The model test's finding, made deterministic: in `post` mode carol's
    /// row reads `2..=2`; while catch-up posts seq 2, a retried send records
    /// seq 1 (stored by a crashed attempt, never delivered). Settling what
    /// was posted must not delete the row over seq 1: catch-up re-reads it
    /// and delivers seq 1 too.
    #[tokio::test]
    async fn post_mode_never_settles_over_an_older_seq_recorded_meanwhile() {
        let (mut app, handles) = App::in_memory();
        app.settings.delivery.pending_clear = PendingClear::Post;
        let store = handles.store.clone();
        let (alice, carol) = (
            UserId::parse("alice").unwrap(),
            UserId::parse("carol").unwrap(),
        );
        let c = ConversationId::parse("c2").unwrap();
        assert!(
            store
                .create(&Conversation {
                    conversation_id: c.clone(),
                    members: vec![alice.clone(), carol.clone()],
                    last_seq: Seq::ZERO,
                    created_at: 1,
                })
                .await
                .unwrap()
        );
        for seq in 1..=2u64 {
            let message = Message {
                conversation_id: c.clone(),
                seq: Seq(seq),
                message_id: format!("m{seq}"),
                client_msg_id: ClientMsgId::parse(&format!("k{seq}")).unwrap(),
                sender_id: alice.clone(),
                body: format!("b{seq}"),
                sent_at: 1,
            };
            let new = NewMessage {
                message,
                pending_for: Vec::new(),
                idempotency_expires_at: i64::MAX,
                message_expires_at: None,
            };
            assert_eq!(store.append(&new).await.unwrap(), AppendOutcome::Stored);
        }
        store.record(&carol, &c, Seq(2)).await.unwrap();
        app.ports.gateway = Arc::new(RecordsBeforeFirstPost {
            inner: app.ports.gateway.clone(),
            store: store.clone(),
            row: (carol.clone(), c.clone(), Seq(1)),
            done: std::sync::atomic::AtomicBool::new(false),
        });
        let connection = ConnectionId::parse("carol-conn").unwrap();
        handles.gateway.open(&connection);
        let request = CatchUpRequest {
            user_id: carol.clone(),
            connection_id: connection.clone(),
            connected_at: None,
            device_id: Default::default(),
            open_conversation: None,
            device_limit: None,
            origin: Default::default(),
            correlation_id: None,
        };
        let report = catch_up(&app, &request, None, None).await.unwrap();
        assert_eq!(report.ending, Ending::CaughtUp);
        let got_seq_1 = handles.gateway.frames(&connection).iter().any(|f| {
            matches!(
                serde_json::from_str::<ServerFrame>(f),
                Ok(ServerFrame::Messages { ref messages, .. }) if messages.iter().any(|m| m.seq == Seq(1))
            )
        });
        let row = PendingStore::get(&store, &carol, &c).await.unwrap();
        assert!(
            got_seq_1 || row.is_some_and(|r| r.first_undelivered_seq <= Seq(1)),
            "seq 1 neither posted nor pending"
        );
        assert!(got_seq_1, "catch-up re-reads the row and delivers seq 1");
    }

    /// `conversations` conversations between alice and `user`, each with
    /// `messages` messages of `body`, all pending for `user`.
    async fn seed(
        store: &MemoryStore,
        user: &UserId,
        conversations: usize,
        messages: u64,
        body: &str,
    ) -> Vec<ConversationId> {
        let alice = UserId::parse("alice").unwrap();
        let mut ids = Vec::new();
        for i in 0..conversations {
            let c = ConversationId::parse(&format!("c{i}")).unwrap();
            let conversation = Conversation {
                conversation_id: c.clone(),
                members: vec![alice.clone(), user.clone()],
                last_seq: Seq::ZERO,
                created_at: 1,
            };
            assert!(store.create(&conversation).await.unwrap());
            for seq in 1..=messages {
                let message = Message {
                    conversation_id: c.clone(),
                    seq: Seq(seq),
                    message_id: format!("m{i}-{seq}"),
                    client_msg_id: ClientMsgId::parse(&format!("k{i}-{seq}")).unwrap(),
                    sender_id: alice.clone(),
                    body: body.to_owned(),
                    sent_at: 1,
                };
                let new = NewMessage {
                    message,
                    pending_for: Vec::new(),
                    idempotency_expires_at: i64::MAX,
                    message_expires_at: None,
                };
                assert_eq!(store.append(&new).await.unwrap(), AppendOutcome::Stored);
                store.record(user, &c, Seq(seq)).await.unwrap();
            }
            ids.push(c);
        }
        ids
    }

    /// A store whose message reads hang: every call is cut off at the
    /// deadline less the margin, `caught_up` closes counting every
    /// conversation as unreached, and nothing is settled.
    #[tokio::test]
    async fn a_hung_store_ends_before_the_deadline_with_caught_up_counting_the_rest() {
        for mode in [PendingClear::Ack, PendingClear::Post] {
            let (mut app, handles) = App::in_memory();
            app.settings.delivery.pending_clear = mode;
            app.settings.catch_up.deadline_margin = Duration::from_millis(300);
            let store = handles.store.clone();
            let bob = UserId::parse("bob").unwrap();
            let ids = seed(&store, &bob, 3, 2, "hi").await;
            store.set_messages_delay(Some(Duration::from_secs(3600)));
            let connection = ConnectionId::parse("conn").unwrap();
            handles.gateway.open(&connection);
            let request = CatchUpRequest {
                user_id: bob.clone(),
                connection_id: connection.clone(),
                connected_at: None,
                device_id: Default::default(),
                open_conversation: None,
                device_limit: None,
                origin: Default::default(),
                correlation_id: None,
            };
            let deadline = Instant::now() + Duration::from_millis(600);
            let report = tokio::time::timeout(
                Duration::from_secs(20),
                catch_up(&app, &request, Some(deadline), Some("r1".into())),
            )
            .await
            .expect("catch-up returns although the store hangs")
            .unwrap();
            assert_eq!(report.ending, Ending::CaughtUp, "{mode:?}");
            assert_eq!((report.messages, report.unreached), (0, 3), "{mode:?}");
            let frames: Vec<ServerFrame> = handles
                .gateway
                .frames(&connection)
                .iter()
                .map(|f| serde_json::from_str(f).unwrap())
                .collect();
            // One frame, whatever the number not reached: `caught_up` counts
            // them, so the client syncs again.
            assert_eq!(
                frames,
                [ServerFrame::CaughtUp {
                    conversations: 3,
                    messages: 0,
                    unreached: 3,
                    request_id: Some("r1".into()),
                }],
                "{mode:?}"
            );
            // Nothing settled or deleted for what was not reached.
            for c in &ids {
                let row = PendingStore::get(&store, &bob, c).await.unwrap().unwrap();
                assert_eq!((row.first_undelivered_seq, row.last_seq), (Seq(1), Seq(2)));
            }
        }
    }

    /// Bytes of messages between their read (the store) and their post
    /// (the gateway): each message weighs its body plus its JSON, counted
    /// when read, given back when a frame carrying it is posted.
    #[derive(Default)]
    struct Held {
        weights: std::sync::Mutex<std::collections::HashMap<(ConversationId, Seq), usize>>,
        now: AtomicUsize,
        most: AtomicUsize,
    }

    struct ReadsHeld {
        held: Arc<Held>,
    }

    #[async_trait]
    impl RangeObserver for ReadsHeld {
        async fn range(
            &self,
            inner: &MemoryStore,
            c: &ConversationId,
            from: Seq,
            limit: usize,
        ) -> Result<Vec<Message>, StoreError> {
            let read = inner.range(c, from, limit).await?;
            let mut weights = self.held.weights.lock().unwrap();
            for m in &read {
                let w = m.body.len() + serde_json::to_string(m).unwrap().len();
                if weights.insert((c.clone(), m.seq), w).is_none() {
                    let now = self.held.now.fetch_add(w, Ordering::SeqCst) + w;
                    self.held.most.fetch_max(now, Ordering::SeqCst);
                }
            }
            Ok(read)
        }
    }

    struct PostsHeld {
        inner: Arc<dyn crate::ports::Gateway>,
        held: Arc<Held>,
    }

    #[async_trait]
    impl crate::ports::Gateway for PostsHeld {
        async fn post(
            &self,
            connection: &ConnectionId,
            data: &[u8],
        ) -> Result<(), crate::ports::PostError> {
            // A post takes a while: what was read stays held meanwhile.
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.inner.post(connection, data).await?;
            if let Ok(ServerFrame::Messages {
                conversation_id,
                messages,
            }) = serde_json::from_slice::<ServerFrame>(data)
            {
                let mut weights = self.held.weights.lock().unwrap();
                for m in messages {
                    if let Some(w) = weights.remove(&(conversation_id.clone(), m.seq)) {
                        self.held.now.fetch_sub(w, Ordering::SeqCst);
                    }
                }
            }
            Ok(())
        }
        async fn get(
            &self,
            connection: &ConnectionId,
        ) -> Result<Option<crate::ports::ConnectionInfo>, crate::ports::PostError> {
            self.inner.get(connection).await
        }
        async fn delete(&self, connection: &ConnectionId) -> Result<(), crate::ports::PostError> {
            self.inner.delete(connection).await
        }
    }

    /// Large bodies that escape to six times their size, a byte bound of
    /// about two conversations' worth: never more held at once than the
    /// bound, and every message still delivered.
    #[tokio::test]
    async fn bytes_held_at_once_never_exceed_the_bound() {
        let (mut app, handles) = App::in_memory();
        app.settings.send.max_body_bytes = 4000;
        // A read of 3 (+1) messages takes 4 × worst: two fit, a third
        // only once the first ones keep what they read.
        let per_read = 4 * worst_message_bytes(4000);
        let bound = 2 * per_read + per_read / 10;
        app.settings.catch_up.max_bytes_in_flight = bound;
        let store = handles.store.clone();
        let bob = UserId::parse("bob").unwrap();
        let body = "\u{1}".repeat(4000);
        let ids = seed(&store, &bob, 12, 3, &body).await;
        let held = Arc::new(Held::default());
        app.ports.messages = Arc::new(Observed {
            inner: store.clone(),
            observer: ReadsHeld { held: held.clone() },
        });
        app.ports.gateway = Arc::new(PostsHeld {
            inner: app.ports.gateway.clone(),
            held: held.clone(),
        });
        let connection = ConnectionId::parse("conn").unwrap();
        handles.gateway.open(&connection);
        let request = CatchUpRequest {
            user_id: bob,
            connection_id: connection.clone(),
            connected_at: None,
            device_id: Default::default(),
            open_conversation: None,
            device_limit: None,
            origin: Default::default(),
            correlation_id: None,
        };
        let report = catch_up(&app, &request, None, None).await.unwrap();
        assert_eq!(report.ending, Ending::CaughtUp);
        assert_eq!((report.messages, report.more), (36, 0));
        let mut delivered: Vec<(ConversationId, Seq)> = Vec::new();
        for f in handles.gateway.frames(&connection) {
            if let Ok(ServerFrame::Messages {
                conversation_id,
                messages,
            }) = serde_json::from_str::<ServerFrame>(&f)
            {
                for m in messages {
                    assert_eq!(m.body, body);
                    delivered.push((conversation_id.clone(), m.seq));
                }
            }
        }
        delivered.sort();
        let mut expected: Vec<(ConversationId, Seq)> = ids
            .iter()
            .flat_map(|c| (1..=3).map(|s| (c.clone(), Seq(s))))
            .collect();
        expected.sort();
        assert_eq!(delivered, expected);
        assert_eq!(held.now.load(Ordering::SeqCst), 0);
        let most = held.most.load(Ordering::SeqCst);
        // More than one conversation at once (the bound is not a lock)…
        assert!(most > per_read, "{most}");
        // …and never more than the bound.
        assert!(most <= bound, "{most} bytes held at once, bound {bound}");
    }

    #[tokio::test]
    async fn full_conversations_queue_by_bytes_in_flight() {
        // 500 claimed each: each read takes 501 messages at the worst weight
        // of a 16 KB body, so the default 256 MiB admits four at a time.
        let d = crate::config::CatchUpConfig::default();
        let per_read =
            501 * worst_message_bytes(crate::config::SendConfig::default().max_body_bytes);
        assert_eq!(d.max_bytes_in_flight / per_read, 4);
        assert_eq!(most_reads_at_once(40, 500).await, 4);
    }

    mod devices {
        use super::*;
        use crate::domain::now_millis;
        use crate::protocol::AckItem;
        use crate::services::{ack, send};

        fn id(s: &str) -> UserId {
            UserId::parse(s).unwrap()
        }
        fn dev(s: &str) -> DeviceId {
            DeviceId::parse(s).unwrap()
        }

        /// `n` conversations of alice and bob, `per` messages from alice in
        /// each; bob's devices phone and laptop linked.
        async fn world(
            n: usize,
            per: usize,
        ) -> (App, crate::app::MemoryHandles, Vec<ConversationId>) {
            let (app, h) = App::in_memory();
            let mut ids = Vec::new();
            for i in 0..n {
                let c = ConversationId::parse(&format!("c{i:03}")).unwrap();
                app.ports
                    .conversations
                    .create(&Conversation {
                        conversation_id: c.clone(),
                        members: vec![id("alice"), id("bob")],
                        last_seq: Seq::ZERO,
                        created_at: 1,
                    })
                    .await
                    .unwrap();
                for k in 0..per {
                    let key = ClientMsgId::parse(&format!("k{i}-{k}")).unwrap();
                    send::send_message(&app, &id("alice"), &dev("web"), &c, &key, "hi", None)
                        .await
                        .unwrap();
                }
                ids.push(c);
            }
            for d in ["phone", "laptop"] {
                app.ports
                    .links
                    .touch(&id("bob"), &dev(d), now_millis(), 8, 0)
                    .await
                    .unwrap();
            }
            (app, h, ids)
        }

        async fn catch_up_for(
            app: &App,
            h: &crate::app::MemoryHandles,
            device: &str,
            open: Option<ConversationId>,
        ) -> (Report, Vec<serde_json::Value>) {
            let connection = ConnectionId::parse(&format!("conn-{device}")).unwrap();
            h.gateway.open(&connection);
            let request = CatchUpRequest {
                user_id: id("bob"),
                device_id: dev(device),
                connection_id: connection.clone(),
                connected_at: None,
                open_conversation: open,
                device_limit: None,
                origin: Default::default(),
                correlation_id: None,
            };
            let report = catch_up(app, &request, None, None).await.unwrap();
            let frames = h
                .gateway
                .frames(&connection)
                .iter()
                .map(|f| serde_json::from_str(f).unwrap())
                .collect();
            (report, frames)
        }

        #[tokio::test]
        async fn each_device_starts_after_what_it_acked() {
            let (app, h, ids) = world(2, 3).await;
            let acks = [AckItem {
                conversation_id: ids[0].clone(),
                seq: Seq(3),
            }];
            ack::ack(&app, &id("bob"), &dev("phone"), &acks)
                .await
                .unwrap();
            // The phone acked c000: only c001 is left for it.
            let (report, _) = catch_up_for(&app, &h, "phone", None).await;
            assert_eq!((report.conversations, report.messages), (1, 3));
            // The laptop acked nothing: both conversations.
            let (report, _) = catch_up_for(&app, &h, "laptop", None).await;
            assert_eq!((report.conversations, report.messages), (2, 6));
            // The row of c000 waits for the laptop; its ack clears it.
            assert!(
                app.ports
                    .pending
                    .get(&id("bob"), &ids[0])
                    .await
                    .unwrap()
                    .is_some()
            );
            ack::ack(&app, &id("bob"), &dev("laptop"), &acks)
                .await
                .unwrap();
            assert!(
                app.ports
                    .pending
                    .get(&id("bob"), &ids[0])
                    .await
                    .unwrap()
                    .is_none()
            );
        }

        #[tokio::test]
        async fn the_opened_conversation_goes_out_first() {
            let (app, h, ids) = world(20, 2).await;
            let opened = ids[17].clone();
            let (report, frames) = catch_up_for(&app, &h, "phone", Some(opened.clone())).await;
            assert_eq!(report.conversations, 20);
            assert_eq!(frames[0]["type"], "messages");
            assert_eq!(frames[0]["conversation_id"], opened.as_str());
            // Not pending (or not the user's): ignored, everything delivered.
            let stranger = ConversationId::parse("not-bobs").unwrap();
            let (report, _) = catch_up_for(&app, &h, "laptop", Some(stranger)).await;
            assert_eq!(
                (report.ending, report.conversations),
                (Ending::CaughtUp, 20)
            );
        }

        #[tokio::test]
        async fn a_device_over_the_limit_is_told_and_closed() {
            let (app, h, _) = world(1, 1).await;
            let connection = ConnectionId::parse("conn-tablet").unwrap();
            h.gateway.open(&connection);
            let request = CatchUpRequest {
                user_id: id("bob"),
                device_id: dev("tablet"),
                connection_id: connection.clone(),
                connected_at: None,
                open_conversation: None,
                device_limit: Some(2),
                origin: Default::default(),
                correlation_id: None,
            };
            let report = catch_up(&app, &request, None, None).await.unwrap();
            assert_eq!((report.ending, report.messages), (Ending::DeviceRefused, 0));
            let frames = h.gateway.frames(&connection);
            assert_eq!(frames.len(), 1);
            let error: serde_json::Value = serde_json::from_str(&frames[0]).unwrap();
            assert_eq!(error["code"], "too_many_devices");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains("MAX_DEVICES = 2")
            );
            // Closed: a further post finds it gone.
            assert!(app.ports.gateway.post(&connection, b"x").await.is_err());
        }

        /// Retention deleted c000's seqs 1–3 of 6 (what DynamoDB's TTL does):
        /// the device is told history starts at 4 before the messages, acks
        /// 6, and the row goes once both devices have.
        #[tokio::test]
        async fn catch_up_says_where_history_starts_after_retention() {
            let (app, h, ids) = world(1, 6).await;
            assert_eq!(h.store.expire_through(&ids[0], Seq(3)), 3);
            let (report, frames) = catch_up_for(&app, &h, "phone", None).await;
            assert_eq!(report.messages, 3);
            assert_eq!(frames[0]["type"], "history_starts");
            assert_eq!(frames[0]["conversation_id"], ids[0].as_str());
            assert_eq!(frames[0]["first_available_seq"], 4);
            assert_eq!(frames[1]["type"], "messages");
            let seqs: Vec<u64> = frames[1]["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, [4, 5, 6]);
            for d in ["phone", "laptop"] {
                let acks = [AckItem {
                    conversation_id: ids[0].clone(),
                    seq: Seq(6),
                }];
                ack::ack(&app, &id("bob"), &dev(d), &acks).await.unwrap();
            }
            let row = app.ports.pending.get(&id("bob"), &ids[0]).await.unwrap();
            assert!(row.is_none(), "row left: {row:?}");
        }

        /// Everything pending expired: no messages frame, only where history
        /// starts (past the row's last seq), so the client can ack it. In
        /// `post` mode that post settles the device.
        #[tokio::test]
        async fn catch_up_of_an_expired_backlog_posts_only_where_history_starts() {
            for mode in [PendingClear::Ack, PendingClear::Post] {
                let (mut app, h, ids) = world(1, 4).await;
                app.settings.delivery.pending_clear = mode;
                h.store.expire_through(&ids[0], Seq(4));
                let (report, frames) = catch_up_for(&app, &h, "phone", None).await;
                assert_eq!(report.messages, 0, "{mode:?}");
                let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
                assert_eq!(types, ["history_starts", "caught_up"], "{mode:?}");
                assert_eq!(frames[0]["first_available_seq"], 5, "{mode:?}");
                let row = app.ports.pending.get(&id("bob"), &ids[0]).await.unwrap();
                if mode == PendingClear::Post {
                    let row = row.expect("the laptop still holds the row back");
                    assert_eq!(row.held_by(&dev("phone")), Seq(4));
                    assert_eq!(row.held_by(&dev("laptop")), Seq::ZERO);
                }
            }
        }

        /// A range sync from below where history starts: told first, with the
        /// sync's request id; `synced` covers what is gone. From inside the
        /// kept history: no `history_starts`.
        #[tokio::test]
        async fn range_sync_says_where_history_starts() {
            let (app, h, ids) = world(1, 6).await;
            h.store.expire_through(&ids[0], Seq(2));
            let connection = Connection {
                device_id: dev("phone"),
                connection_id: ConnectionId::parse("conn-sync").unwrap(),
                connected_at: None,
            };
            h.gateway.open(&connection.connection_id);
            let sync = |after: u64, limit: Option<u32>, rid: &str| {
                let (app, connection, c) = (&app, &connection, ids[0].clone());
                let rid = rid.to_owned();
                async move {
                    sync_range(
                        app,
                        &id("bob"),
                        connection,
                        &c,
                        Seq(after),
                        limit,
                        Some(rid),
                    )
                    .await
                    .unwrap()
                }
            };
            let frames = |from: usize| -> Vec<serde_json::Value> {
                h.gateway.frames(&connection.connection_id)[from..]
                    .iter()
                    .map(|f| serde_json::from_str(f).unwrap())
                    .collect()
            };
            sync(0, None, "r1").await;
            let got = frames(0);
            assert_eq!(got[0]["type"], "history_starts");
            assert_eq!(got[0]["first_available_seq"], 3);
            assert_eq!(got[0]["request_id"], "r1");
            assert_eq!(got[1]["type"], "messages");
            assert_eq!(got[2]["type"], "synced");
            assert_eq!(got[2]["through_seq"], 6);
            // Cut by the limit: told as well, then `more` past the page.
            sync(1, Some(2), "r2").await;
            let got = frames(3);
            let types: Vec<&str> = got.iter().map(|f| f["type"].as_str().unwrap()).collect();
            assert_eq!(types, ["history_starts", "messages", "more"]);
            assert_eq!(got[2]["next_seq"], 5);
            // Inside what is kept: nothing to say.
            sync(3, None, "r3").await;
            let got = frames(6);
            let types: Vec<&str> = got.iter().map(|f| f["type"].as_str().unwrap()).collect();
            assert_eq!(types, ["messages", "synced"]);
            // All of it gone: where it starts, and `synced` through the end.
            h.store.expire_through(&ids[0], Seq(6));
            sync(2, None, "r4").await;
            let got = frames(8);
            let types: Vec<&str> = got.iter().map(|f| f["type"].as_str().unwrap()).collect();
            assert_eq!(types, ["history_starts", "synced"]);
            assert_eq!(got[0]["first_available_seq"], 7);
            assert_eq!(got[1]["through_seq"], 6);
        }
    }
}
