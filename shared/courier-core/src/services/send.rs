//! Sending a message: validate, assign the next seq, store, deliver or push.
//!
//! Over 700 lines with its tests (the code is ~350): the unit tests drive
//! private steps of the send with injected port faults.
//!
//! The order of steps is the contract of the delivery rules (docs/architecture.md), and each one is here for
//! a failure it prevents:
//!
//! 1. **Idempotency first.** A `client_msg_id` this sender already used in
//!    this conversation answers the original seq and *re-runs delivery*. That
//!    is what makes a crash anywhere after the store harmless: the client
//!    retries (it has no `sent` yet) and the retry finishes the job — live
//!    frame, pending rows in `post` mode, push.
//! 2. **Strongly consistent conversation read**: membership, and the
//!    `last_seq` the next seq is computed from. It runs at the same time as
//!    the idempotency read (neither depends on the other; a retry needs the
//!    members too), so steps 1 and 2 cost one round trip.
//! 3. **One atomic append** ([`MessageStore::append`]): counter
//!    `last_seq → last_seq+1` on condition, message, idempotency record and,
//!    in `PENDING_CLEAR=ack`, a pending row for every other member. A lost
//!    race (`SeqConflict`) re-reads and retries with jittered backoff, a
//!    bounded number of times, so seqs stay gap-free under any concurrency.
//! 4. **Delivery, every recipient at once**: a `messages` frame of one
//!    message through [`delivery::deliver_live`] (which owns the 410 rule)
//!    to every connected device of every recipient and to the sender's
//!    other devices, all posts in parallel. In `post` mode a user with a
//!    linked device not reached gets a pending row, and *after*
//!    that row is durable the registry is read again: a recipient whose
//!    connect landed in between either shows up there (delivered live now) or
//!    their catch-up, which reads pending after connect wrote the registry,
//!    finds the row. Either way nothing is lost.
//! 5. **Push** to every push-registered device of a recipient that was not
//!    reached live. A push failure never fails a send.
//! 6. Only then `sent`: the sender is never told "sent" before the message
//!    and every pending row it needs are durable.
//!
//! Client mistakes (bad body, not a member, no such conversation) are
//! `Ok(error frame)`; only server faults are `Err`.

use std::time::Duration;

use futures::future::join_all;
use tracing::{debug, info, instrument, warn};

use crate::app::App;
use crate::backoff::Backoff;
use crate::config::PendingClear;
use crate::domain::{
    Body, BodyError, ClientMsgId, Conversation, ConversationId, DeviceId, Message, Millis, Seq,
    UserId, now_millis,
};
use crate::ports::{AppendOutcome, NewMessage, PushMessage, RateDecision, StoreError};
use crate::protocol::{
    ErrorCode, FrameError, ServerFrame, WireMessage, one_message_frame_len, pack_messages,
};
use crate::services::Answer;
use crate::services::ack::holding_devices;
use crate::services::delivery::{self, Live, LiveReport};
use crate::services::push::{self, PushReport};
use crate::telemetry;

/// Appends tried before a send gives up on a hot conversation. Each conflict
/// means another send won, so 8 senders hammering one conversation finish
/// well inside this; the bound keeps a pathological pile-up inside API
/// Gateway's 29 s integration timeout (64 × at most 100 ms of backoff).
pub const MAX_APPEND_ATTEMPTS: u32 = 64;
/// The wait after the n-th conflict: up to 2 ms doubling per conflict, at
/// most 100 ms. Full jitter: concurrent losers spread out instead of
/// colliding again on the next seq.
const CONFLICT_BACKOFF: Backoff =
    Backoff::full(Duration::from_millis(2), Duration::from_millis(100));

/// A server fault: the send may or may not have been stored, and the client
/// should retry with the same `client_msg_id` (which is safe).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("gave up after {attempts} seq conflicts")]
    Contention { attempts: u32 },
}

/// Sends `body` from `sender` to the conversation; answers `sent` or an
/// `error` frame (client mistakes). See the module doc for the steps.
#[instrument(skip_all, fields(user_id = %sender, conversation_id = %conversation_id, client_msg_id = %client_msg_id))]
pub async fn send_message(
    app: &App,
    sender: &UserId,
    device: &DeviceId,
    conversation_id: &ConversationId,
    client_msg_id: &ClientMsgId,
    body: &str,
    request_id: Option<String>,
) -> Result<Answer, SendError> {
    let reject = |code: ErrorCode, message: &str| {
        Ok(Answer::Refused(
            FrameError::new(code, message)
                .with_client_msg_id(Some(client_msg_id.to_string()))
                .with_request_id(request_id.clone()),
        ))
    };
    let body = match Body::parse(body, app.settings.send.max_body_bytes) {
        Ok(b) => b,
        Err(e @ BodyError::Empty) => return reject(ErrorCode::BadRequest, &e.to_string()),
        Err(e @ BodyError::TooLarge { .. }) => {
            return reject(ErrorCode::PayloadTooLarge, &e.to_string());
        }
    };
    // The body as it travels: JSON-escaped inside a `messages` frame, which
    // live delivery and catch-up both post and API Gateway closes the socket
    // over. A message that cannot fit one frame would be stored and then
    // never delivered, so it is refused here.
    let max_frame = app.settings.delivery.max_frame_bytes;
    let frame_len = worst_frame_len(conversation_id, sender, &body);
    if frame_len > max_frame {
        let message = format!(
            "message is {frame_len} bytes as encoded in its frame (JSON escaping included); \
             the limit is {max_frame} bytes as encoded"
        );
        return reject(ErrorCode::PayloadTooLarge, &message);
    }
    let ports = &app.ports;

    // Before any store call: a flood costs a Redis round trip per frame, not
    // DynamoDB capacity. A limiter that cannot be asked lets the send through.
    match app.limiter.acquire(sender).await {
        Ok(RateDecision::Allowed) => {}
        Ok(RateDecision::Limited { retry_after }) => {
            debug!(
                retry_after_ms = retry_after.as_millis() as u64,
                "rate limited"
            );
            let message = format!(
                "too many messages; retry in {} ms",
                retry_after.as_millis().max(1)
            );
            telemetry::count(telemetry::RATE_LIMITED, 1);
            return reject(ErrorCode::RateLimited, &message);
        }
        Err(e) => {
            telemetry::count(telemetry::RATE_LIMITER_FALLBACKS, 1);
            warn!(error = %e, "rate limiter unavailable; letting the send through");
        }
    }

    // The idempotency read and the conversation read do not depend on each
    // other: one round trip for both. A retry needs the conversation too
    // (its recipients), and a new send needs it for the seq.
    let (original, read) = futures::try_join!(
        ports
            .messages
            .find_sent(conversation_id, sender, client_msg_id),
        ports.conversations.get(conversation_id),
    )?;
    if let Some(original) = original {
        return replay(app, read, original, device, request_id).await;
    }

    let mut conflicts = 0u32;
    let mut read = Some(read);
    let (conversation, message) = loop {
        // A seq conflict means the conversation moved on: read it again.
        let fresh = match read.take() {
            Some(r) => r,
            None => ports.conversations.get(conversation_id).await?,
        };
        let conversation = match fresh {
            None => {
                return reject(
                    ErrorCode::ConversationNotFound,
                    "conversation does not exist",
                );
            }
            Some(c) if !c.is_member(sender) => {
                return reject(
                    ErrorCode::NotAMember,
                    "you are not a member of this conversation",
                );
            }
            Some(c) => c,
        };
        let new = new_message(app, &conversation, sender, client_msg_id, &body);
        match ports.messages.append(&new).await? {
            AppendOutcome::Stored => break (conversation, new.message),
            // A concurrent send of the same client_msg_id won the race.
            AppendOutcome::Duplicate(original) => {
                return replay(app, Some(conversation), original, device, request_id).await;
            }
            AppendOutcome::NotAMember => {
                return reject(
                    ErrorCode::NotAMember,
                    "you are not a member of this conversation",
                );
            }
            AppendOutcome::SeqConflict => {
                conflicts += 1;
                telemetry::count(telemetry::SEQ_CONFLICTS, 1);
                if conflicts >= MAX_APPEND_ATTEMPTS {
                    telemetry::count(telemetry::SEND_CONTENTION, 1);
                    warn!(conflicts, "giving up on a contended conversation");
                    return Err(SendError::Contention {
                        attempts: conflicts,
                    });
                }
                telemetry::count(telemetry::SEND_RETRIES, 1);
                tokio::time::sleep(CONFLICT_BACKOFF.delay(conflicts)).await;
            }
        }
    };
    debug!(seq = %message.seq, conflicts, "stored");
    deliver(app, &conversation, &message, Some(device)).await?;
    Ok(Answer::Done(sent(&message, request_id)))
}

/// A new message's id; all have the same length (a hyphenated UUID).
fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The length of the `messages` frame that will carry `body` from `sender`
/// alone in `conversation_id`, at its largest: the fields not known before
/// storing at their widest (`seq` and `sent_at` with the most digits the
/// types allow, an id as [`new_message_id`] makes them).
pub fn worst_frame_len(conversation_id: &ConversationId, sender: &UserId, body: &Body) -> usize {
    one_message_frame_len(
        conversation_id,
        &WireMessage {
            seq: Seq(u64::MAX),
            message_id: new_message_id(),
            sender_id: sender.clone(),
            body: body.as_str().to_owned(),
            sent_at: Millis::MIN,
        },
    )
}

fn new_message(
    app: &App,
    conversation: &Conversation,
    sender: &UserId,
    client_msg_id: &ClientMsgId,
    body: &Body,
) -> NewMessage {
    let sent_at = now_millis();
    let ttl = i64::try_from(app.settings.send.idempotency_ttl.as_secs()).unwrap_or(i64::MAX);
    NewMessage {
        message: Message {
            conversation_id: conversation.conversation_id.clone(),
            seq: conversation.last_seq.next(),
            message_id: new_message_id(),
            client_msg_id: client_msg_id.clone(),
            sender_id: sender.clone(),
            body: body.as_str().to_owned(),
            sent_at,
        },
        pending_for: match app.settings.delivery.pending_clear {
            // The sender too: their other devices get it at their next
            // catch-up (the sending device acks it with the rest).
            PendingClear::Ack => conversation.members.clone(),
            PendingClear::Post => Vec::new(),
        },
        idempotency_expires_at: (sent_at / 1000).saturating_add(ttl),
        message_expires_at: app.settings.send.message_retention.map(|keep| {
            (sent_at / 1000).saturating_add(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX))
        }),
    }
}

fn sent(message: &Message, request_id: Option<String>) -> ServerFrame {
    ServerFrame::Sent {
        conversation_id: message.conversation_id.clone(),
        client_msg_id: message.client_msg_id.clone(),
        seq: message.seq,
        sent_at: message.sent_at,
        request_id,
    }
}

/// A send of an already stored message: answer the original seq, and
/// deliver again, because the first attempt may have died before (or while)
/// delivering. Extra live frames are dropped by the client by seq; an extra
/// push collapses into the same banner (collapse id = conversation).
/// `conversation` is the one the send read (`find_sent` is keyed by it).
async fn replay(
    app: &App,
    conversation: Option<Conversation>,
    original: Message,
    device: &DeviceId,
    request_id: Option<String>,
) -> Result<Answer, SendError> {
    info!(seq = %original.seq, "duplicate send; answering the original seq");
    telemetry::count(telemetry::IDEMPOTENT_REPLAYS, 1);
    match conversation {
        Some(conversation) => {
            deliver(app, &conversation, &original, Some(device)).await?;
        }
        None => {
            warn!(seq = %original.seq, "message stored for a conversation that no longer exists")
        }
    }
    Ok(Answer::Done(sent(&original, request_id)))
}

/// What delivering a message did for one user (a recipient, or the sender
/// for their other devices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub user_id: UserId,
    /// The live attempt that counts, summed up over the user's devices: the
    /// re-check's if it delivered, else the first one.
    pub live: Live,
    /// The devices that got the message live.
    pub reached: Vec<DeviceId>,
    /// `post` mode only: a pending row was written for this user.
    pub pending_recorded: bool,
    /// The push, when some push-registered device was not reached live
    /// (never for the sender).
    pub push: Option<PushReport>,
}

/// Delivers `message` to every member's connected devices but the sending
/// one, concurrently: live, pending rows in `post` mode, pushes to the
/// recipients' devices not reached. `Err` only when a `post`-mode pending
/// row could not be written — then the sender must not be told `sent`.
/// `sender_device` is the device that sent it (`None`: unknown, so every
/// device of the sender counts as another one).
#[instrument(skip_all, fields(conversation_id = %conversation.conversation_id, seq = %message.seq))]
pub async fn deliver(
    app: &App,
    conversation: &Conversation,
    message: &Message,
    sender_device: Option<&DeviceId>,
) -> Result<Vec<RecipientOutcome>, StoreError> {
    let frames = pack_messages(
        &message.conversation_id,
        std::slice::from_ref(message),
        app.settings.delivery.max_frame_bytes,
    );
    let push = push::push_message(&app.settings.push, message);
    let sender = &message.sender_id;
    let results = join_all(conversation.members.iter().map(|user| {
        let except = if user == sender { sender_device } else { None };
        deliver_to(app, user, user == sender, except, message, &frames, &push)
    }))
    .await;

    let mut outcomes = Vec::with_capacity(results.len());
    let mut fault = None;
    for (outcome, error) in results {
        outcomes.push(outcome);
        if let Some(e) = error {
            fault.get_or_insert(e);
        }
    }
    let live = outcomes.iter().filter(|o| o.live.delivered()).count();
    let pushed = outcomes.iter().filter(|o| o.push.is_some()).count();
    info!(users = outcomes.len(), live, pushed, "delivered");
    match fault {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

/// Whether every device that holds rows back was reached (`except`, the
/// sending device, holds the message already). No linked device (data from
/// before devices): reached if any connection was, as with one device.
/// Devices unknown (the read failed): not all.
async fn all_reached(
    app: &App,
    user: &UserId,
    live: &LiveReport,
    except: Option<&DeviceId>,
) -> bool {
    match holding_devices(app, user).await {
        Ok(linked) if linked.is_empty() => except.is_some() || live.delivered(),
        Ok(linked) => linked.iter().all(|d| Some(d) == except || live.reached(d)),
        Err(e) => {
            warn!(user_id = %user, error = %e, "could not list linked devices; recording pending");
            false
        }
    }
}

async fn deliver_to(
    app: &App,
    user: &UserId,
    is_sender: bool,
    except: Option<&DeviceId>,
    message: &Message,
    frames: &[String],
    push: &PushMessage,
) -> (RecipientOutcome, Option<StoreError>) {
    let ports = &app.ports;
    let config = &app.settings.delivery;
    let mut live = delivery::deliver_live(ports, config, user, frames, except).await;
    let mut pending_recorded = false;
    let mut fault = None;
    if config.pending_clear == PendingClear::Post && !all_reached(app, user, &live, except).await {
        match ports
            .pending
            .record(user, &message.conversation_id, message.seq)
            .await
        {
            Ok(()) => {
                pending_recorded = true;
                // The no-lost-race re-check: only now that the row is durable
                // may the registry be trusted to be read a second time.
                let again = delivery::deliver_live(ports, config, user, frames, except).await;
                for (device, outcome) in again.devices {
                    if outcome.delivered() && !live.reached(&device) {
                        live.devices.push((device, outcome));
                    }
                }
            }
            Err(e) => {
                warn!(user_id = %user, error = %e, "could not record pending row");
                fault = Some(e);
            }
        }
    }
    let reached = live.reached_devices();
    let push = if is_sender {
        None
    } else {
        push::push_to_user(ports, user, push, &reached).await
    };
    (
        RecipientOutcome {
            user_id: user.clone(),
            live: live.summary(),
            reached,
            pending_recorded,
            push,
        },
        fault,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::app::{MemoryHandles, Ports, Settings};
    use crate::domain::{Connection, ConnectionId, Device, Platform};
    use crate::ports::{ConnectionRegistry, MessageStore, Notifier, Registered, RegistryError};

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }
    fn cid(s: &str) -> ConversationId {
        ConversationId::parse(s).unwrap()
    }
    fn cmid(s: &str) -> ClientMsgId {
        ClientMsgId::parse(s).unwrap()
    }

    fn settings(mode: PendingClear) -> Settings {
        let mut s = Settings::default();
        s.delivery.pending_clear = mode;
        s.delivery.open_window = Duration::from_millis(600);
        s.delivery.open_retry_base = Duration::from_millis(10);
        s
    }

    /// alice, bob and carol in `c1`; bob and carol each have one device.
    async fn setup(mode: PendingClear) -> (App, MemoryHandles) {
        let h = MemoryHandles::new();
        let app = App::new(h.ports(), settings(mode));
        seed(&app.ports, &h).await;
        (app, h)
    }

    async fn seed(ports: &Ports, h: &MemoryHandles) {
        ports
            .conversations
            .create(&Conversation {
                conversation_id: cid("c1"),
                members: vec![user("alice"), user("bob"), user("carol")],
                last_seq: Seq::ZERO,
                created_at: now_millis(),
            })
            .await
            .unwrap();
        for u in ["bob", "carol"] {
            let token = format!("tok-{u}");
            let arn = h
                .notifier
                .create_endpoint(Platform::Fcm, &token, &user(u))
                .await
                .unwrap();
            ports
                .devices
                .put(&Device {
                    user_id: user(u),
                    platform: Platform::Fcm,
                    token,
                    endpoint_arn: arn,
                    updated_at: now_millis(),
                    device_id: Default::default(),
                })
                .await
                .unwrap();
        }
    }

    async fn online(h: &MemoryHandles, u: &str, conn: &str) -> ConnectionId {
        let c = ConnectionId::parse(conn).unwrap();
        h.gateway.open(&c);
        h.registry
            .register(
                &user(u),
                &Connection {
                    connection_id: c.clone(),
                    connected_at: Some(now_millis() - 60_000),
                    device_id: Default::default(),
                },
            )
            .await
            .unwrap();
        c
    }

    async fn send(app: &App, from: &str, key: &str, body: &str) -> ServerFrame {
        send_message(
            app,
            &user(from),
            &Default::default(),
            &cid("c1"),
            &cmid(key),
            body,
            Some("r1".into()),
        )
        .await
        .unwrap()
        .into_frame()
    }

    fn seq_of(frame: &ServerFrame) -> u64 {
        match frame {
            ServerFrame::Sent { seq, .. } => seq.get(),
            other => panic!("expected sent, got {other:?}"),
        }
    }

    fn error_code(frame: &ServerFrame) -> ErrorCode {
        match frame {
            ServerFrame::Error { code, .. } => *code,
            other => panic!("expected error, got {other:?}"),
        }
    }

    async fn row(app: &App, u: &str) -> Option<crate::domain::PendingDelivery> {
        app.ports.pending.get(&user(u), &cid("c1")).await.unwrap()
    }

    /// Pushes the notifier recorded for the device `tok-{u}`.
    fn pushes_to(h: &MemoryHandles, u: &str) -> usize {
        let token = format!("tok-{u}");
        h.notifier
            .sent()
            .iter()
            .filter(|p| p.token == token)
            .count()
    }

    async fn stored(app: &App) -> Vec<Message> {
        app.ports
            .messages
            .range(&cid("c1"), Seq(1), 10_000)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sent_echoes_ids_and_request_id() {
        let (app, _h) = setup(PendingClear::Ack).await;
        let f = send(&app, "alice", "m1", "hello??").await;
        let ServerFrame::Sent {
            conversation_id,
            client_msg_id,
            seq,
            sent_at,
            request_id,
        } = f
        else {
            panic!("not sent")
        };
        assert_eq!(conversation_id, cid("c1"));
        assert_eq!(client_msg_id, cmid("m1"));
        assert_eq!(seq, Seq(1));
        assert_eq!(request_id.as_deref(), Some("r1"));
        let m = &stored(&app).await[0];
        assert_eq!(m.sent_at, sent_at);
        assert_eq!(m.body, "hello??");
        assert!(uuid::Uuid::parse_str(&m.message_id).is_ok());
    }

    #[tokio::test]
    async fn concurrent_senders_get_gap_free_seqs() {
        let (app, _h) = setup(PendingClear::Ack).await;
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let app = app.clone();
                tokio::spawn(async move {
                    let from = ["alice", "bob", "carol"][t % 3];
                    let mut seqs = Vec::new();
                    for i in 0..50 {
                        let f = send(&app, from, &format!("t{t}-m{i}"), "x").await;
                        seqs.push(seq_of(&f));
                    }
                    seqs
                })
            })
            .collect();
        let mut all: Vec<u64> = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=400).collect::<Vec<_>>());
        let seqs: Vec<u64> = stored(&app).await.iter().map(|m| m.seq.get()).collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn same_client_msg_id_stores_once_and_answers_its_seq() {
        let (app, h) = setup(PendingClear::Ack).await;
        send(&app, "alice", "other", "first").await;
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(seq_of(&send(&app, "alice", "dup", "hello").await));
        }
        let concurrent = join_all((0..5).map(|_| send(&app, "alice", "dup", "hello"))).await;
        answers.extend(concurrent.iter().map(seq_of));
        // A fresh App over the same stores: a new execution environment.
        let fresh = App::new(h.ports(), settings(PendingClear::Ack));
        answers.push(seq_of(&send(&fresh, "alice", "dup", "hello").await));
        assert!(answers.iter().all(|s| *s == 2), "{answers:?}");
        assert_eq!(stored(&app).await.len(), 2);
    }

    #[tokio::test]
    async fn concurrent_duplicates_all_answer_the_one_stored_seq() {
        let (app, _h) = setup(PendingClear::Ack).await;
        let answers = join_all((0..5).map(|_| send(&app, "alice", "dup", "hello"))).await;
        assert!(answers.iter().all(|f| seq_of(f) == 1));
        assert_eq!(stored(&app).await.len(), 1);
    }

    #[tokio::test]
    async fn offline_recipient_gets_pending_row_and_one_push() {
        let (app, h) = setup(PendingClear::Ack).await;
        send(&app, "alice", "m1", "hello??").await;
        let bob = row(&app, "bob").await.unwrap();
        assert_eq!((bob.first_undelivered_seq, bob.last_seq), (Seq(1), Seq(1)));
        // The sender's row is for her other devices.
        let alice = row(&app, "alice").await.unwrap();
        assert_eq!(
            (alice.first_undelivered_seq, alice.last_seq),
            (Seq(1), Seq(1))
        );
        let to_bob: Vec<_> = h
            .notifier
            .sent()
            .into_iter()
            .filter(|p| p.token == "tok-bob")
            .collect();
        assert_eq!(to_bob.len(), 1);
        assert_eq!(
            to_bob[0].message,
            PushMessage {
                conversation_id: cid("c1"),
                sender_id: user("alice"),
                seq: Seq(1),
                preview: Some("alice: hello??".into()),
            }
        );
    }

    #[tokio::test]
    async fn online_recipient_gets_one_frame_and_no_push() {
        let (app, h) = setup(PendingClear::Ack).await;
        let bob = online(&h, "bob", "conn-bob").await;
        send(&app, "alice", "m1", "hello??").await;
        let frames = h.gateway.frames(&bob);
        assert_eq!(frames.len(), 1);
        let ServerFrame::Messages {
            conversation_id,
            messages,
        } = serde_json::from_str(&frames[0]).unwrap()
        else {
            panic!("not a messages frame")
        };
        assert_eq!(conversation_id, cid("c1"));
        assert_eq!(messages.len(), 1);
        let WireMessage {
            seq,
            sender_id,
            body,
            ..
        } = &messages[0];
        assert_eq!(
            (*seq, sender_id.as_str(), body.as_str()),
            (Seq(1), "alice", "hello??")
        );
        assert!(pushes_to(&h, "bob") == 0);
        // ack mode: the row stays until bob acks (a 200 proves nothing).
        assert!(row(&app, "bob").await.is_some());
    }

    #[tokio::test]
    async fn gone_connection_is_forgotten_pending_kept_push_sent() {
        let (app, h) = setup(PendingClear::Ack).await;
        let bob = online(&h, "bob", "conn-bob").await;
        h.gateway.close(&bob);
        send(&app, "alice", "m1", "hello??").await;
        assert_eq!(
            app.ports.registry.lookup(&user("bob")).await.unwrap(),
            vec![]
        );
        assert!(row(&app, "bob").await.is_some());
        assert_eq!(pushes_to(&h, "bob"), 1);
    }

    #[tokio::test]
    async fn recipient_still_connecting_gets_the_frame_inside_the_open_window() {
        let (app, h) = setup(PendingClear::Ack).await;
        let c = ConnectionId::parse("conn-new").unwrap();
        // Registry written, $connect not returned yet: 410 for 200 ms.
        h.registry
            .register(
                &user("bob"),
                &Connection {
                    connection_id: c.clone(),
                    connected_at: Some(now_millis()),
                    device_id: Default::default(),
                },
            )
            .await
            .unwrap();
        h.gateway.open_after(&c, Duration::from_millis(200));
        send(&app, "alice", "m1", "hello??").await;
        assert_eq!(h.gateway.frames(&c).len(), 1);
        assert!(row(&app, "bob").await.is_some());
        assert!(pushes_to(&h, "bob") == 0);
    }

    #[tokio::test]
    async fn registry_down_still_stores_records_and_pushes() {
        for mode in [PendingClear::Ack, PendingClear::Post] {
            let (app, h) = setup(mode).await;
            h.registry.set_down(true);
            assert_eq!(seq_of(&send(&app, "alice", "m1", "hi").await), 1);
            for u in ["bob", "carol"] {
                assert!(row(&app, u).await.is_some());
            }
            assert_eq!(h.notifier.sent().len(), 2, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn push_failure_never_fails_the_send() {
        let (app, h) = setup(PendingClear::Ack).await;
        h.notifier.set_down(true);
        assert_eq!(seq_of(&send(&app, "alice", "m1", "hi").await), 1);
    }

    #[tokio::test]
    async fn post_mode_records_only_recipients_not_reached() {
        let (app, h) = setup(PendingClear::Post).await;
        let bob = online(&h, "bob", "conn-bob").await;
        send(&app, "alice", "m1", "hi").await;
        assert_eq!(h.gateway.frames(&bob).len(), 1);
        assert!(row(&app, "bob").await.is_none());
        assert!(row(&app, "carol").await.is_some());
        let pushed: Vec<String> = h.notifier.sent().into_iter().map(|p| p.token).collect();
        assert_eq!(pushed, vec!["tok-carol"]);
    }

    /// A registry whose first lookup misses and then lets `connect` land:
    /// the recipient comes online between the first read and the row write.
    struct ConnectsDuringSend {
        inner: crate::adapters::memory::MemoryRegistry,
        gateway: crate::adapters::memory::MemoryGateway,
        connected: AtomicBool,
    }

    #[async_trait]
    impl ConnectionRegistry for ConnectsDuringSend {
        async fn register(&self, u: &UserId, c: &Connection) -> Result<Registered, RegistryError> {
            self.inner.register(u, c).await
        }
        async fn lookup(&self, u: &UserId) -> Result<Vec<Connection>, RegistryError> {
            let first = self.inner.lookup(u).await;
            if u.as_str() == "bob" && !self.connected.swap(true, Ordering::SeqCst) {
                let c = ConnectionId::parse("conn-late").unwrap();
                self.gateway.open(&c);
                self.inner
                    .register(
                        u,
                        &Connection {
                            connection_id: c,
                            connected_at: Some(now_millis()),
                            device_id: Default::default(),
                        },
                    )
                    .await?;
            }
            first
        }
        async fn remove_if(
            &self,
            u: &UserId,
            d: &DeviceId,
            c: &ConnectionId,
        ) -> Result<bool, RegistryError> {
            self.inner.remove_if(u, d, c).await
        }
    }

    #[tokio::test]
    async fn post_mode_rechecks_the_registry_after_writing_the_row() {
        let h = MemoryHandles::new();
        let mut ports = h.ports();
        ports.registry = Arc::new(ConnectsDuringSend {
            inner: h.registry.clone(),
            gateway: h.gateway.clone(),
            connected: AtomicBool::new(false),
        });
        let app = App::new(ports, settings(PendingClear::Post));
        seed(&app.ports, &h).await;
        send(&app, "alice", "m1", "hi").await;
        let late = ConnectionId::parse("conn-late").unwrap();
        assert_eq!(
            h.gateway.frames(&late).len(),
            1,
            "delivered live on the re-check"
        );
        assert!(row(&app, "bob").await.is_some());
        assert!(pushes_to(&h, "bob") == 0);
    }

    /// A store whose append commits and then reports a fault: the crash
    /// between storing and answering.
    struct CrashAfterStore(crate::adapters::memory::MemoryStore);

    #[async_trait]
    impl MessageStore for CrashAfterStore {
        async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
            self.0.append(new).await?;
            Err(StoreError::Unavailable(
                "crashed after commit (injected)".into(),
            ))
        }
        async fn find_sent(
            &self,
            c: &ConversationId,
            s: &UserId,
            k: &ClientMsgId,
        ) -> Result<Option<Message>, StoreError> {
            self.0.find_sent(c, s, k).await
        }
        async fn range(
            &self,
            c: &ConversationId,
            from: Seq,
            limit: usize,
        ) -> Result<Vec<Message>, StoreError> {
            self.0.range(c, from, limit).await
        }
    }

    #[tokio::test]
    async fn retry_after_crash_between_store_and_answer_completes_delivery() {
        for mode in [PendingClear::Ack, PendingClear::Post] {
            let h = MemoryHandles::new();
            let mut crashing = h.ports();
            crashing.messages = Arc::new(CrashAfterStore(h.store.clone()));
            let app = App::new(crashing, settings(mode));
            seed(&app.ports, &h).await;
            let first = send_message(
                &app,
                &user("alice"),
                &Default::default(),
                &cid("c1"),
                &cmid("m1"),
                "hi",
                None,
            )
            .await;
            assert!(matches!(first, Err(SendError::Store(_))), "{mode:?}");
            assert!(h.notifier.sent().is_empty(), "crashed before delivering");

            let retry_app = App::new(h.ports(), settings(mode));
            assert_eq!(seq_of(&send(&retry_app, "alice", "m1", "hi").await), 1);
            assert_eq!(stored(&retry_app).await.len(), 1);
            for u in ["bob", "carol"] {
                let row = row(&retry_app, u).await;
                assert_eq!(row.map(|r| r.last_seq), Some(Seq(1)), "{mode:?} {u}");
            }
            assert_eq!(h.notifier.sent().len(), 2, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn post_mode_pending_write_failure_is_a_fault_not_sent() {
        let (app, h) = setup(PendingClear::Post).await;
        let mut broken = app.ports.clone();
        // Pending writes fail while the message store still works.
        let down = crate::adapters::memory::MemoryStore::new();
        down.set_down(true);
        broken.pending = Arc::new(down);
        let broken = App::new(broken, settings(PendingClear::Post));
        let r = send_message(
            &broken,
            &user("alice"),
            &Default::default(),
            &cid("c1"),
            &cmid("m1"),
            "hi",
            None,
        )
        .await;
        assert!(matches!(r, Err(SendError::Store(_))));
        // Offline recipients are still pushed; the retry writes the rows.
        assert_eq!(h.notifier.sent().len(), 2);
        assert_eq!(seq_of(&send(&app, "alice", "m1", "hi").await), 1);
        assert!(row(&app, "bob").await.is_some());
    }

    #[tokio::test]
    async fn client_mistakes_are_error_frames_and_store_nothing() {
        let (app, h) = setup(PendingClear::Ack).await;
        let big = "x".repeat(app.settings.send.max_body_bytes + 1);
        let cases = [
            ("mallory", "c1", "   ", ErrorCode::BadRequest),
            ("alice", "c1", "", ErrorCode::BadRequest),
            ("alice", "c1", big.as_str(), ErrorCode::PayloadTooLarge),
            ("mallory", "c1", "hi", ErrorCode::NotAMember),
            ("alice", "nope", "hi", ErrorCode::ConversationNotFound),
        ];
        for (from, conv, body, code) in cases {
            let f = send_message(
                &app,
                &user(from),
                &Default::default(),
                &cid(conv),
                &cmid("k"),
                body,
                Some("r".into()),
            )
            .await
            .unwrap()
            .into_frame();
            assert_eq!(error_code(&f), code, "{from} {conv}");
            let ServerFrame::Error {
                client_msg_id,
                request_id,
                ..
            } = f
            else {
                unreachable!()
            };
            assert_eq!(
                (client_msg_id.as_deref(), request_id.as_deref()),
                (Some("k"), Some("r"))
            );
        }
        assert!(stored(&app).await.is_empty());
        assert!(
            app.ports
                .pending
                .list(&user("bob"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(h.notifier.sent().is_empty());
    }

    /// The one `messages` frame `conn` got, parsed.
    fn only_messages_frame(h: &MemoryHandles, conn: &ConnectionId) -> (String, WireMessage) {
        let frames = h.gateway.frames(conn);
        assert_eq!(frames.len(), 1, "{frames:?}");
        let ServerFrame::Messages { mut messages, .. } = serde_json::from_str(&frames[0]).unwrap()
        else {
            panic!("not a messages frame")
        };
        assert_eq!(messages.len(), 1);
        (frames[0].clone(), messages.remove(0))
    }

    fn limited(max_frame_bytes: usize, max_body_bytes: usize) -> Settings {
        let mut s = settings(PendingClear::Ack);
        s.delivery.max_frame_bytes = max_frame_bytes;
        s.send.max_body_bytes = max_body_bytes;
        s
    }

    async fn limited_setup(max_frame_bytes: usize, max_body_bytes: usize) -> (App, MemoryHandles) {
        let h = MemoryHandles::new();
        let app = App::new(h.ports(), limited(max_frame_bytes, max_body_bytes));
        seed(&app.ports, &h).await;
        (app, h)
    }

    fn frame_len_of(body: &str) -> usize {
        worst_frame_len(
            &cid("c1"),
            &user("alice"),
            &Body::from_stored(body.to_owned()),
        )
    }

    /// The headline case: with the defaults, a body within `MAX_BODY_BYTES`
    /// whose escaping doubles it past `FRAME_BYTES` is refused, and stored
    /// nowhere, instead of being stored and then undeliverable.
    #[tokio::test]
    async fn body_within_max_body_bytes_but_over_the_frame_as_encoded_is_refused() {
        let (app, h) = setup(PendingClear::Ack).await;
        let bob = online(&h, "bob", "conn-bob").await;
        let max_body = app.settings.send.max_body_bytes;
        let max_frame = app.settings.delivery.max_frame_bytes;
        for body in ["\"".repeat(max_body), "\u{1}".repeat(max_body / 2)] {
            assert!(body.len() <= max_body);
            let f = send(&app, "alice", "big", &body).await;
            let ServerFrame::Error { code, message, .. } = f else {
                panic!(
                    "accepted a body of {} bytes as encoded",
                    frame_len_of(&body)
                )
            };
            assert_eq!(code, ErrorCode::PayloadTooLarge);
            assert!(
                message.contains(&format!("{max_frame} bytes as encoded")),
                "{message}"
            );
        }
        assert!(stored(&app).await.is_empty());
        assert!(h.gateway.frames(&bob).is_empty());
        assert!(row(&app, "bob").await.is_none());
    }

    /// A body whose frame (at its widest) is exactly `FRAME_BYTES` is
    /// accepted and delivered; one byte more as encoded — one more
    /// character, or one character that escapes longer — is refused.
    #[tokio::test]
    async fn body_at_exactly_the_frame_limit_is_accepted_one_byte_more_refused() {
        for max_frame in [1024, 4096, crate::protocol::DEFAULT_FRAME_BYTES] {
            let (app, h) = limited_setup(max_frame, max_frame).await;
            let bob = online(&h, "bob", "conn-bob").await;
            let envelope = frame_len_of("");
            // The figure docs/protocol.md gives (section 12).
            assert_eq!(envelope, 190 + "c1".len() + "alice".len());
            // Quotes (2 bytes each as encoded) and one `a` to make up the
            // exact length, whatever the parity of the room left.
            let room = max_frame - envelope;
            let quotes = (room - 1) / 2;
            let fill = room - 2 * quotes;
            let exact = format!("{}{}", "\"".repeat(quotes), "a".repeat(fill));
            assert_eq!(frame_len_of(&exact), max_frame);
            let f = send(&app, "alice", "exact", &exact).await;
            assert!(matches!(f, ServerFrame::Sent { .. }), "{max_frame}: {f:?}");
            let (frame, m) = only_messages_frame(&h, &bob);
            assert!(frame.len() <= max_frame, "{} > {max_frame}", frame.len());
            assert_eq!(m.body, exact);

            let longer = format!("{exact}a");
            let escapes_longer = format!("{}\"", &exact[..exact.len() - 1]);
            for (key, body) in [("longer", longer), ("escapes", escapes_longer)] {
                assert_eq!(frame_len_of(&body), max_frame + 1);
                let f = send(&app, "alice", key, &body).await;
                assert_eq!(
                    error_code(&f),
                    ErrorCode::PayloadTooLarge,
                    "{max_frame} {key}"
                );
            }
            assert_eq!(stored(&app).await.len(), 1);
            assert_eq!(h.gateway.frames(&bob).len(), 1);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Adversarial bodies sized around the point where their frame
        /// reaches `FRAME_BYTES` (an adversarial piece straddles it): every
        /// accepted message reaches the online recipient in one frame within
        /// the limit, with its body intact; every refused one is
        /// `payload_too_large` and stored nowhere; and the line between them
        /// is exactly the frame measure (or the decoded `MAX_BODY_BYTES`).
        #[test]
        fn accepted_bodies_are_delivered_within_the_frame_refused_ones_are_payload_too_large(
            head in crate::strategies::adversarial_body(0..400),
            tail in crate::strategies::adversarial_body(1..3),
            short_by in 0usize..12,
            max_frame in proptest::sample::select(vec![1024usize, 1500, 2048]),
            body_factor in proptest::sample::select(vec![1usize, 2, 4]),
        ) {
            // A decoded limit below, at or above the frame's.
            let max_body = max_frame * body_factor / 2;
            // `a`s so that the frame of head + padding is `short_by` below
            // the limit (when head alone is not already past it); the tail
            // then lands on either side.
            let padding = max_frame.saturating_sub(short_by + frame_len_of(&head));
            let body = format!("{head}{}{tail}", "a".repeat(padding));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (app, h) = limited_setup(max_frame, max_body).await;
                let bob = online(&h, "bob", "conn-bob").await;
                let f = send(&app, "alice", "p", &body).await;
                let fits = body.len() <= max_body && frame_len_of(&body) <= max_frame;
                match f {
                    ServerFrame::Sent { .. } => {
                        assert!(fits, "accepted a body whose frame is {} bytes", frame_len_of(&body));
                        let (frame, m) = only_messages_frame(&h, &bob);
                        assert!(frame.len() <= max_frame, "delivered a frame of {} > {max_frame}", frame.len());
                        assert_eq!(m.body, body);
                    }
                    other => {
                        assert_eq!(error_code(&other), ErrorCode::PayloadTooLarge);
                        assert!(!fits, "refused a body that fits: {}", frame_len_of(&body));
                        assert!(stored(&app).await.is_empty());
                        assert!(h.gateway.frames(&bob).is_empty());
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn store_down_is_a_fault() {
        let (app, h) = setup(PendingClear::Ack).await;
        h.store.set_down(true);
        let r = send_message(
            &app,
            &user("alice"),
            &Default::default(),
            &cid("c1"),
            &cmid("k"),
            "hi",
            None,
        )
        .await;
        assert!(matches!(
            r,
            Err(SendError::Store(StoreError::Unavailable(_)))
        ));
    }

    #[test]
    fn conflict_backoff_stays_under_its_cap() {
        assert_eq!(CONFLICT_BACKOFF.cap, Duration::from_millis(100));
        for n in 0..100 {
            assert!(CONFLICT_BACKOFF.delay(n) <= CONFLICT_BACKOFF.cap);
        }
    }

    /// `MAX_APPEND_ATTEMPTS` conflicts must fit API Gateway's 29 s.
    #[test]
    fn conflict_backoff_budget_fits_the_integration_timeout() {
        let worst: Duration = (1..MAX_APPEND_ATTEMPTS)
            .map(|n| CONFLICT_BACKOFF.window(n))
            .sum();
        assert!(worst < Duration::from_secs(29), "{worst:?}");
    }

    /// `u`'s device `device` online on connection `conn`.
    async fn online_device(h: &MemoryHandles, u: &str, device: &str, conn: &str) -> ConnectionId {
        let c = ConnectionId::parse(conn).unwrap();
        h.gateway.open(&c);
        h.registry
            .register(
                &user(u),
                &Connection {
                    connection_id: c.clone(),
                    connected_at: Some(now_millis() - 60_000),
                    device_id: DeviceId::parse(device).unwrap(),
                },
            )
            .await
            .unwrap();
        c
    }

    #[tokio::test]
    async fn every_device_of_every_member_gets_it_live_but_the_sending_one() {
        let (app, h) = setup(PendingClear::Ack).await;
        let bob_phone = online_device(&h, "bob", "phone", "bob-phone").await;
        let bob_laptop = online_device(&h, "bob", "laptop", "bob-laptop").await;
        let alice_phone = online_device(&h, "alice", "phone", "alice-phone").await;
        let alice_laptop = online_device(&h, "alice", "laptop", "alice-laptop").await;
        let sent = send_message(
            &app,
            &user("alice"),
            &DeviceId::parse("phone").unwrap(),
            &cid("c1"),
            &cmid("m1"),
            "hi",
            None,
        )
        .await
        .unwrap()
        .into_frame();
        assert_eq!(seq_of(&sent), 1);
        for c in [&bob_phone, &bob_laptop, &alice_laptop] {
            assert_eq!(h.gateway.frames(c).len(), 1, "{c}");
        }
        // The sending device has `sent`; it gets no copy.
        assert!(h.gateway.frames(&alice_phone).is_empty());
        // Pushes go per device: bob's token was registered by his device
        // `default`, which is not connected, so it gets one; alice (the
        // sender) gets none.
        assert_eq!(pushes_to(&h, "bob"), 1);
        assert_eq!(pushes_to(&h, "carol"), 1);
        assert_eq!(pushes_to(&h, "alice"), 0);
    }

    #[tokio::test]
    async fn pushes_go_only_to_the_devices_not_reached_live() {
        let (app, h) = setup(PendingClear::Ack).await;
        // Bob's phone (token tok-bob, device default) is offline; his laptop
        // registered its own token and is online.
        let arn = h
            .notifier
            .create_endpoint(Platform::Fcm, "tok-bob-laptop", &user("bob"))
            .await
            .unwrap();
        app.ports
            .devices
            .put(&Device {
                user_id: user("bob"),
                device_id: DeviceId::parse("laptop").unwrap(),
                platform: Platform::Fcm,
                token: "tok-bob-laptop".into(),
                endpoint_arn: arn,
                updated_at: now_millis(),
            })
            .await
            .unwrap();
        online_device(&h, "bob", "laptop", "bob-laptop").await;
        send(&app, "alice", "m1", "hi").await;
        let to_bob: Vec<String> = h
            .notifier
            .sent()
            .into_iter()
            .map(|p| p.token)
            .filter(|t| t.starts_with("tok-bob"))
            .collect();
        assert_eq!(to_bob, vec!["tok-bob"]);
    }

    #[tokio::test]
    async fn post_mode_records_a_row_while_a_linked_device_was_not_reached() {
        let (app, h) = setup(PendingClear::Post).await;
        let now = now_millis();
        for d in ["phone", "laptop"] {
            app.ports
                .links
                .touch(&user("bob"), &DeviceId::parse(d).unwrap(), now, 8, 0)
                .await
                .unwrap();
        }
        online_device(&h, "bob", "laptop", "bob-laptop").await;
        send(&app, "alice", "m1", "hi").await;
        // The laptop got it live, the phone did not: the row stays for it.
        assert!(row(&app, "bob").await.is_some());
        online_device(&h, "bob", "phone", "bob-phone").await;
        send(&app, "alice", "m2", "again").await;
        // Both reached this time; the row holds only what the phone missed.
        assert_eq!(row(&app, "bob").await.unwrap().last_seq, Seq(1));
    }
}
