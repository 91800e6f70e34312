//! The wire protocol: JSON text frames between a client and Courier.
//!
//! Over 700 lines with its tests (the code is ~550): the parser and every
//! frame it checks stay in one file so a change to a frame and its tests is
//! one diff.
//!
//! Inbound, a frame is parsed in two steps: first the envelope (`action` and
//! `request_id`), so that even a frame whose fields are wrong gets an error
//! that echoes its `request_id`; then the action's own fields, into
//! [`ClientFrame`], whose ids are already domain types. Nothing here panics on
//! any input: every failure is a [`FrameError`] that maps to an error frame.
//!
//! Outbound, [`ServerFrame`] is the only way a frame is built, and
//! [`pack_messages`] is the only way messages are put into frames, so the
//! 32 KB billing unit is respected in one place.

use serde::{Deserialize, Serialize};

use crate::domain::{
    ClientMsgId, ConversationId, DeviceId, InvalidValue, Message, Millis, Platform, Seq, UserId,
};

/// Longest `request_id` echoed back (docs/protocol.md).
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Error codes of docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownAction,
    Unauthorized,
    NotAMember,
    ConversationNotFound,
    PayloadTooLarge,
    RateLimited,
    Internal,
    /// The user already has `MAX_DEVICES` linked devices.
    TooManyDevices,
    /// `unlinkDevice` named a device the user has not linked.
    DeviceNotFound,
    /// Sent to a device just before its connection is closed because
    /// another device of the user unlinked it.
    DeviceUnlinked,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::ConversationNotFound => "conversation_not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::TooManyDevices => "too_many_devices",
            ErrorCode::DeviceNotFound => "device_not_found",
            ErrorCode::DeviceUnlinked => "device_unlinked",
        }
    }
}

/// A client frame that could not be accepted, with what it takes to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: Option<String>,
    pub client_msg_id: Option<String>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            request_id: None,
            client_msg_id: None,
        }
    }

    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }

    pub fn with_client_msg_id(mut self, client_msg_id: Option<String>) -> Self {
        self.client_msg_id = client_msg_id;
        self
    }

    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
            client_msg_id: self.client_msg_id.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl From<InvalidValue> for FrameError {
    fn from(e: InvalidValue) -> Self {
        FrameError::new(ErrorCode::BadRequest, e.to_string())
    }
}

/// One entry of an `ack` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AckItem {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

/// Most entries one `ack` frame may carry; bounds the work of one invocation.
pub const MAX_ACKS_PER_FRAME: usize = 100;

/// Largest `limit` a range `sync` may ask for.
pub const MAX_SYNC_LIMIT: u32 = 1000;

/// What a `sync` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// Everything pending for the user (the catch-up).
    Full,
    /// Messages of one conversation after `after_seq`, at most `limit`.
    Range {
        conversation_id: ConversationId,
        after_seq: Seq,
        limit: Option<u32>,
    },
}

/// A parsed client frame; identity is never part of it (it comes from the
/// authorizer context), so a `sender_id` or `user_id` in the JSON is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    SendMessage {
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        /// Validated against the configured size limit by the send service.
        body: String,
    },
    Ack {
        acks: Vec<AckItem>,
    },
    Sync(SyncRequest),
    CreateConversation {
        members: Vec<UserId>,
    },
    RegisterDevice {
        platform: Platform,
        token: String,
    },
    /// Heartbeat inside API Gateway's 10-minute idle timeout; it also
    /// re-asserts the connection's registry entry.
    Ping,
    /// The user's linked devices.
    ListDevices,
    /// Unlinks another device of the user and closes its connection.
    UnlinkDevice {
        device_id: DeviceId,
    },
    /// One page of the user's conversations, after `after`.
    ListConversations {
        after: Option<ConversationId>,
        limit: Option<u32>,
    },
}

impl ClientFrame {
    /// The `client_msg_id` a fault frame names, for the frames that carry one.
    pub fn client_msg_id(&self) -> Option<String> {
        match self {
            ClientFrame::SendMessage { client_msg_id, .. } => Some(client_msg_id.to_string()),
            _ => None,
        }
    }
}

/// A client frame with its optional `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: Option<String>,
    pub frame: ClientFrame,
}

#[derive(Deserialize)]
struct Envelope {
    action: Option<serde_json::Value>,
    request_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct SendMessageFields {
    conversation_id: ConversationId,
    client_msg_id: ClientMsgId,
    body: String,
}

#[derive(Deserialize)]
struct AckFields {
    acks: Vec<AckItem>,
}

#[derive(Deserialize)]
struct SyncFields {
    conversation_id: Option<ConversationId>,
    after_seq: Option<Seq>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct CreateConversationFields {
    members: Vec<UserId>,
}

#[derive(Deserialize)]
struct RegisterDeviceFields {
    platform: String,
    token: String,
}

#[derive(Deserialize)]
struct UnlinkDeviceFields {
    device_id: DeviceId,
}

#[derive(Deserialize)]
struct ListConversationsFields {
    after: Option<ConversationId>,
    limit: Option<u32>,
}

/// Largest page `listConversations` may ask for; 50 when it names none.
pub const MAX_LIST_LIMIT: u32 = 100;
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// Longest device token accepted (APNs tokens are 64 hex chars, FCM ~160).
pub const MAX_DEVICE_TOKEN_LEN: usize = 4096;

/// The `action` of a frame, if it has a string one. API Gateway routes on it.
pub fn action_of(raw: &str) -> Option<String> {
    let env: Envelope = serde_json::from_str(raw).ok()?;
    match env.action {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

fn request_id_of(env: &Envelope) -> Result<Option<String>, FrameError> {
    match &env.request_id {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.len() <= MAX_REQUEST_ID_LEN => Ok(Some(s.clone())),
        Some(serde_json::Value::String(_)) => Err(FrameError::new(
            ErrorCode::BadRequest,
            format!("request_id is longer than {MAX_REQUEST_ID_LEN} characters"),
        )),
        Some(_) => Err(FrameError::new(
            ErrorCode::BadRequest,
            "request_id must be a string",
        )),
    }
}

fn fields<T: for<'de> Deserialize<'de>>(raw: &str) -> Result<T, FrameError> {
    serde_json::from_str(raw).map_err(|e| {
        // serde's message names the field and what was wrong, but quotes an
        // unexpected string value in full (`invalid type: string "…"`): elide
        // quoted values, so no client text is reflected back or logged, and
        // bound what is left.
        let msg = e.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => &msg[..i],
            None => msg.as_str(),
        };
        let msg = elide_quoted(msg, MAX_QUOTED_CHARS);
        FrameError::new(ErrorCode::BadRequest, truncate(&msg, MAX_FIELD_ERROR_CHARS))
    })
}

/// Longest quoted value kept in a field error (type and field names are
/// shorter).
const MAX_QUOTED_CHARS: usize = 24;
/// Longest field error message.
const MAX_FIELD_ERROR_CHARS: usize = 160;

/// `text` with every `"…"` or `` `…` `` span longer than `max` characters
/// replaced by `"…"`.
fn elide_quoted(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(256));
    let mut rest = text;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = &rest[start..=start];
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find(quote) else {
            // Unclosed: keep a bounded head of it.
            out.push_str(truncate(after, max));
            return out;
        };
        let inner = &after[..end];
        if inner.chars().count() > max {
            out.push('…');
        } else {
            out.push_str(inner);
        }
        out.push_str(quote);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

impl Request {
    /// Parses one client frame. `raw` is the WebSocket text as API Gateway
    /// passed it (the event's `body`).
    pub fn parse(raw: &str) -> Result<Request, FrameError> {
        match Self::parse_exact(raw) {
            // A lone UTF-16 surrogate escaped in a string (`"\ud83d"`:
            // JavaScript's JSON.stringify writes one for half an emoji) is
            // not JSON serde accepts, and the whole frame would be refused
            // without its `client_msg_id`, so a client could not tell which
            // send failed and would resend it for ever. Read it as U+FFFD,
            // as a WebSocket does with an unpaired surrogate in a text frame.
            Err(e) => match lone_surrogates_replaced(raw) {
                Some(repaired) => Self::parse_exact(&repaired),
                None => Err(e),
            },
            parsed => parsed,
        }
    }

    fn parse_exact(raw: &str) -> Result<Request, FrameError> {
        let env: Envelope = serde_json::from_str(raw)
            .map_err(|_| FrameError::new(ErrorCode::BadRequest, "frame is not a JSON object"))?;
        let request_id = request_id_of(&env)?;
        let action = match &env.action {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(
                    FrameError::new(ErrorCode::BadRequest, "action must be a string")
                        .with_request_id(request_id),
                );
            }
            None => {
                return Err(
                    FrameError::new(ErrorCode::BadRequest, "frame has no action")
                        .with_request_id(request_id),
                );
            }
        };
        let frame = Self::parse_action(action, raw).map_err(|e| {
            let e = e.with_request_id(request_id.clone());
            if action == "sendMessage" {
                let cmid = serde_json::from_str::<serde_json::Value>(raw)
                    .ok()
                    .and_then(|v| v.get("client_msg_id")?.as_str().map(str::to_owned))
                    .filter(|s| s.len() <= ClientMsgId::MAX_LEN);
                e.with_client_msg_id(cmid)
            } else {
                e
            }
        })?;
        Ok(Request { request_id, frame })
    }

    fn parse_action(action: &str, raw: &str) -> Result<ClientFrame, FrameError> {
        match action {
            "sendMessage" => {
                let f: SendMessageFields = fields(raw)?;
                Ok(ClientFrame::SendMessage {
                    conversation_id: f.conversation_id,
                    client_msg_id: f.client_msg_id,
                    body: f.body,
                })
            }
            "ack" => {
                let f: AckFields = fields(raw)?;
                if f.acks.is_empty() {
                    return Err(FrameError::new(
                        ErrorCode::BadRequest,
                        "acks must not be empty",
                    ));
                }
                if f.acks.len() > MAX_ACKS_PER_FRAME {
                    return Err(FrameError::new(
                        ErrorCode::BadRequest,
                        format!("at most {MAX_ACKS_PER_FRAME} acks per frame"),
                    ));
                }
                Ok(ClientFrame::Ack { acks: f.acks })
            }
            "sync" => {
                let f: SyncFields = fields(raw)?;
                match (f.conversation_id, f.after_seq, f.limit) {
                    (None, None, None) => Ok(ClientFrame::Sync(SyncRequest::Full)),
                    (Some(conversation_id), after_seq, limit) => {
                        if limit.is_some_and(|l| l == 0 || l > MAX_SYNC_LIMIT) {
                            return Err(FrameError::new(
                                ErrorCode::BadRequest,
                                format!("limit must be between 1 and {MAX_SYNC_LIMIT}"),
                            ));
                        }
                        Ok(ClientFrame::Sync(SyncRequest::Range {
                            conversation_id,
                            after_seq: after_seq.unwrap_or(Seq::ZERO),
                            limit,
                        }))
                    }
                    (None, _, _) => Err(FrameError::new(
                        ErrorCode::BadRequest,
                        "after_seq and limit need a conversation_id",
                    )),
                }
            }
            "createConversation" => {
                let f: CreateConversationFields = fields(raw)?;
                Ok(ClientFrame::CreateConversation { members: f.members })
            }
            "registerDevice" => {
                let f: RegisterDeviceFields = fields(raw)?;
                let platform = Platform::parse(&f.platform)?;
                if f.token.is_empty() || f.token.len() > MAX_DEVICE_TOKEN_LEN {
                    return Err(FrameError::new(
                        ErrorCode::BadRequest,
                        "token must be between 1 and 4096 characters",
                    ));
                }
                if f.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(FrameError::new(
                        ErrorCode::BadRequest,
                        "token must not contain whitespace",
                    ));
                }
                Ok(ClientFrame::RegisterDevice {
                    platform,
                    token: f.token,
                })
            }
            "ping" => Ok(ClientFrame::Ping),
            "listDevices" => Ok(ClientFrame::ListDevices),
            "unlinkDevice" => {
                let f: UnlinkDeviceFields = fields(raw)?;
                Ok(ClientFrame::UnlinkDevice {
                    device_id: f.device_id,
                })
            }
            "listConversations" => {
                let f: ListConversationsFields = fields(raw)?;
                if f.limit.is_some_and(|l| l == 0 || l > MAX_LIST_LIMIT) {
                    return Err(FrameError::new(
                        ErrorCode::BadRequest,
                        format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
                    ));
                }
                Ok(ClientFrame::ListConversations {
                    after: f.after,
                    limit: f.limit,
                })
            }
            other => Err(FrameError::new(
                ErrorCode::UnknownAction,
                format!("unknown action {:?}", truncate(other, 64)),
            )),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A message as it travels to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    pub seq: Seq,
    pub message_id: String,
    pub sender_id: UserId,
    pub body: String,
    pub sent_at: Millis,
}

impl From<&Message> for WireMessage {
    fn from(m: &Message) -> Self {
        WireMessage {
            seq: m.seq,
            message_id: m.message_id.clone(),
            sender_id: m.sender_id.clone(),
            body: m.body.clone(),
            sent_at: m.sent_at,
        }
    }
}

/// A linked device as `listDevices` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub device_id: DeviceId,
    pub linked_at: Millis,
    pub last_seen_at: Millis,
    /// It has a live connection in the registry.
    pub connected: bool,
    /// It is the device that asked.
    pub this_device: bool,
}

/// A conversation as `listConversations` shows it to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationView {
    pub conversation_id: ConversationId,
    pub members: Vec<UserId>,
    pub last_seq: Seq,
    /// The asking device's cursor: it holds every message through this seq
    /// (unread = `last_seq - delivered_through_seq`). A device with nothing
    /// pending is at `last_seq`.
    pub delivered_through_seq: Seq,
}

/// `raw` with every `\uXXXX` escape of an unpaired UTF-16 surrogate
/// replaced by `\ufffd`; `None` when it has none. Escapes are read in
/// order, so `\\ud83d` (an escaped backslash, then text) is left alone.
fn lone_surrogates_replaced(raw: &str) -> Option<String> {
    fn unit_at(b: &[u8], i: usize) -> Option<u16> {
        let hex = b.get(i..i + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    let b = raw.as_bytes();
    let mut out: Option<String> = None;
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = unit_at(b, i) else {
            // Any other escape: its two bytes (`\\`, `\"`, …).
            i += 2;
            continue;
        };
        let paired = (0xD800..0xDC00).contains(&unit)
            && unit_at(b, i + 6).is_some_and(|low| (0xDC00..0xE000).contains(&low));
        if paired {
            i += 12;
        } else if (0xD800..0xE000).contains(&unit) {
            let o = out.get_or_insert_with(|| String::with_capacity(raw.len()));
            o.push_str(&raw[copied..i]);
            o.push_str("\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    out.map(|mut o| {
        o.push_str(&raw[copied..]);
        o
    })
}

/// Every frame Courier sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Messages {
        conversation_id: ConversationId,
        messages: Vec<WireMessage>,
    },
    More {
        conversation_id: ConversationId,
        next_seq: Seq,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Retention deleted a conversation's seqs from where a read started up
    /// to `first_available_seq - 1`: none of them will ever be delivered, so
    /// the client counts every seq below it as held. Posted before the
    /// conversation's `messages` frames of that read.
    HistoryStarts {
        conversation_id: ConversationId,
        first_available_seq: Seq,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    CaughtUp {
        conversations: usize,
        messages: usize,
        /// Conversations the catch-up ran out of time for (nothing settled
        /// for them): sync again. Left out when 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        unreached: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Synced {
        conversation_id: ConversationId,
        through_seq: Seq,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Sent {
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        seq: Seq,
        sent_at: Millis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        delivered_through_seq: Seq,
    },
    Conversation {
        conversation_id: ConversationId,
        members: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    DeviceRegistered {
        platform: Platform,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Devices {
        devices: Vec<DeviceView>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    DeviceUnlinked {
        device_id: DeviceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Conversations {
        conversations: Vec<ConversationView>,
        /// Where the next page starts (`after`); absent on the last page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<ConversationId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, an
        // integer or a Vec of them.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned()
        })
    }
}

/// Default largest frame: API Gateway bills messages per 32 KB.
pub const DEFAULT_FRAME_BYTES: usize = 32 * 1024;
/// API Gateway's hard limit for a post to a connection.
pub const MAX_POST_BYTES: usize = 128 * 1024;

/// The literals of a `messages` frame, in the order [`finish_frame`] writes
/// them around the JSON of the conversation id and the messages: the frame
/// is `HEAD cid MID m1,m2,… TAIL`.
const FRAME_HEAD: &str = r#"{"type":"messages","conversation_id":"#;
const FRAME_MID: &str = r#","messages":["#;
const FRAME_TAIL: &str = "]}";

/// One message's JSON as it appears inside a `messages` frame.
fn encode_message(message: &WireMessage) -> String {
    // Cannot fail: every field is a string or an integer.
    serde_json::to_string(message).unwrap_or_default()
}

/// The JSON of a conversation id as it appears inside a `messages` frame.
fn encode_conversation_id(conversation_id: &ConversationId) -> String {
    serde_json::to_string(conversation_id).unwrap_or_default()
}

/// Bytes of a `messages` frame of this conversation that are not messages
/// or the commas between them.
fn envelope_len(cid_json: &str) -> usize {
    FRAME_HEAD.len() + cid_json.len() + FRAME_MID.len() + FRAME_TAIL.len()
}

/// The exact length in bytes of the `messages` frame that carries `message`
/// alone in `conversation_id`, encoded as [`pack_messages`] encodes it. The
/// send service refuses a message whose frame (with the fields it does not
/// know before storing at their widest) would be over `FRAME_BYTES`.
pub fn one_message_frame_len(conversation_id: &ConversationId, message: &WireMessage) -> usize {
    envelope_len(&encode_conversation_id(conversation_id)) + encode_message(message).len()
}

/// Packs one conversation's messages, already in seq order, into `messages`
/// frames of at most `max_frame_bytes` each, keeping seq order across frames.
///
/// Every frame is at most `max_frame_bytes` as long as each message fits in a
/// frame alone ([`one_message_frame_len`]), which the send service guarantees
/// for every message it accepts. Defensive fallback, for messages stored
/// before that check existed: a message too large for `max_frame_bytes`
/// still travels alone, in a frame of its own over the limit (the body limit
/// keeps it under API Gateway's 128 KB), rather than blocking the messages
/// after it.
pub fn pack_messages(
    conversation_id: &ConversationId,
    messages: &[Message],
    max_frame_bytes: usize,
) -> Vec<String> {
    let cid = encode_conversation_id(conversation_id);
    let overhead = envelope_len(&cid);
    let mut frames = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut size = overhead;
    for m in messages {
        let one = encode_message(&WireMessage::from(m));
        let extra = one.len() + usize::from(!batch.is_empty());
        if !batch.is_empty() && size + extra > max_frame_bytes {
            frames.push(finish_frame(&cid, &batch));
            batch.clear();
            size = overhead;
        }
        size += one.len() + usize::from(!batch.is_empty());
        batch.push(one);
    }
    if !batch.is_empty() {
        frames.push(finish_frame(&cid, &batch));
    }
    frames
}

/// `cid_json` is the conversation id's JSON ([`encode_conversation_id`]),
/// `batch` the messages' ([`encode_message`]).
fn finish_frame(cid_json: &str, batch: &[String]) -> String {
    let mut out = String::with_capacity(
        envelope_len(cid_json) + batch.iter().map(|s| s.len() + 1).sum::<usize>(),
    );
    out.push_str(FRAME_HEAD);
    out.push_str(cid_json);
    out.push_str(FRAME_MID);
    out.push_str(&batch.join(","));
    out.push_str(FRAME_TAIL);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn msg(seq: u64, body: &str) -> Message {
        Message {
            conversation_id: ConversationId::parse("c1").unwrap(),
            seq: Seq(seq),
            message_id: format!("m{seq}"),
            client_msg_id: ClientMsgId::parse(&format!("k{seq}")).unwrap(),
            sender_id: UserId::parse("alice").unwrap(),
            body: body.to_owned(),
            sent_at: 1_795_000_000_000,
        }
    }

    #[test]
    fn parses_every_action_of_the_protocol() {
        let send = Request::parse(
            r#"{"action":"sendMessage","conversation_id":"c1","client_msg_id":"u1","body":"hello??","sender_id":"mallory"}"#,
        )
        .unwrap();
        assert!(
            matches!(send.frame, ClientFrame::SendMessage { ref body, .. } if body == "hello??")
        );
        let ack = Request::parse(r#"{"action":"ack","acks":[{"conversation_id":"c1","seq":44}]}"#)
            .unwrap();
        assert_eq!(
            ack.frame,
            ClientFrame::Ack {
                acks: vec![AckItem {
                    conversation_id: ConversationId::parse("c1").unwrap(),
                    seq: Seq(44)
                }]
            }
        );
        assert_eq!(
            Request::parse(r#"{"action":"sync"}"#).unwrap().frame,
            ClientFrame::Sync(SyncRequest::Full)
        );
        assert_eq!(
            Request::parse(r#"{"action":"sync","conversation_id":"c1","after_seq":41,"limit":200,"request_id":"r1"}"#)
                .unwrap(),
            Request {
                request_id: Some("r1".into()),
                frame: ClientFrame::Sync(SyncRequest::Range {
                    conversation_id: ConversationId::parse("c1").unwrap(),
                    after_seq: Seq(41),
                    limit: Some(200)
                })
            }
        );
        assert!(matches!(
            Request::parse(r#"{"action":"createConversation","members":["alice","bob"]}"#).unwrap().frame,
            ClientFrame::CreateConversation { ref members } if members.len() == 2
        ));
        assert!(matches!(
            Request::parse(r#"{"action":"registerDevice","platform":"fcm","token":"abc"}"#)
                .unwrap()
                .frame,
            ClientFrame::RegisterDevice {
                platform: Platform::Fcm,
                ..
            }
        ));
    }

    #[test]
    fn bad_frames_are_errors_that_echo_request_id() {
        let e = Request::parse("not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = Request::parse(r#"{"action":"fly","request_id":"r9"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownAction);
        assert_eq!(e.request_id.as_deref(), Some("r9"));
        let e = Request::parse(
            r#"{"action":"sendMessage","conversation_id":"c 1","client_msg_id":"u1","body":"x","request_id":"r2"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.request_id.as_deref(), Some("r2"));
        assert_eq!(e.client_msg_id.as_deref(), Some("u1"));
        let long = "x".repeat(65);
        let e =
            Request::parse(&format!(r#"{{"action":"sync","request_id":"{long}"}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = Request::parse(r#"{"action":"ack","acks":[]}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = Request::parse(r#"{"action":"sync","after_seq":3}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = Request::parse(r#"{"action":"ack","acks":[{"conversation_id":"c1","seq":-1}]}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(Request::parse("[]").is_err());
        assert!(Request::parse("null").is_err());
    }

    #[test]
    fn a_wrongly_typed_field_is_refused_without_echoing_its_value() {
        // serde quotes a string it did not expect in full; the reply must not
        // carry the client's text back (nor grow with it).
        let long = "s".repeat(20_000);
        for raw in [
            format!(r#"{{"action":"ack","acks":["{long}"]}}"#),
            format!(r#"{{"action":"sync","conversation_id":"c1","after_seq":"{long}"}}"#),
            format!(r#"{{"action":"registerDevice","platform":"fcm","token":["{long}"]}}"#),
        ] {
            let e = Request::parse(&raw).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.len() <= 200, "{} bytes", e.message.len());
            assert!(!e.message.contains(&"s".repeat(50)), "{}", e.message);
        }
    }

    #[test]
    fn a_lone_surrogate_escape_reads_as_the_replacement_character() {
        let send = |body: &str| {
            Request::parse(&format!(
                r#"{{"action":"sendMessage","conversation_id":"c1","client_msg_id":"u1","body":"{body}"}}"#
            ))
        };
        for (escaped, want) in [
            (r"a\ud83db", "a\u{fffd}b"),
            (r"\udc00", "\u{fffd}"),
            (r"x\ud83d", "x\u{fffd}"),
            (r"\ud83d\ud83d\ude00", "\u{fffd}😀"),
            // A pair, an escaped backslash before text, plain text: as is.
            (r"\ud83d\ude00", "😀"),
            (r"\\ud83d", r"\ud83d"),
        ] {
            let parsed = send(escaped).unwrap_or_else(|e| panic!("{escaped}: {e:?}"));
            let ClientFrame::SendMessage {
                body,
                client_msg_id,
                ..
            } = parsed.frame
            else {
                panic!("not a send")
            };
            assert_eq!(body, want, "{escaped}");
            assert_eq!(client_msg_id.as_str(), "u1");
        }
        assert_eq!(lone_surrogates_replaced(r#"{"body":"\ud83d\ude00"}"#), None);
        // Still not JSON for another reason: refused as before.
        assert!(Request::parse(r#"{"action":"ping","x":"\ud83d"#).is_err());
    }

    #[test]
    fn frames_serialize_as_the_design_shows() {
        let f = ServerFrame::CaughtUp {
            conversations: 2,
            messages: 6,
            unreached: 0,
            request_id: None,
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"caught_up","conversations":2,"messages":6}"#
        );
        let cut = ServerFrame::CaughtUp {
            conversations: 9,
            messages: 6,
            unreached: 7,
            request_id: Some("r1".into()),
        };
        let json = cut.to_json();
        assert_eq!(
            json,
            r#"{"type":"caught_up","conversations":9,"messages":6,"unreached":7,"request_id":"r1"}"#
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&json).unwrap(), cut);
        let e = FrameError::new(ErrorCode::NotAMember, "no")
            .to_frame()
            .to_json();
        assert_eq!(
            e,
            r#"{"type":"error","code":"not_a_member","message":"no"}"#
        );
    }

    #[test]
    fn packing_keeps_order_and_frame_bound() {
        let cid = ConversationId::parse("c1").unwrap();
        let msgs: Vec<Message> = (1..=300).map(|s| msg(s, &"x".repeat(300))).collect();
        let frames = pack_messages(&cid, &msgs, DEFAULT_FRAME_BYTES);
        assert!(frames.len() > 1);
        let mut seqs = Vec::new();
        for f in &frames {
            assert!(f.len() <= DEFAULT_FRAME_BYTES, "frame of {} bytes", f.len());
            let parsed: ServerFrame = serde_json::from_str(f).unwrap();
            let ServerFrame::Messages { messages, .. } = parsed else {
                panic!("not a messages frame")
            };
            seqs.extend(messages.iter().map(|m| m.seq.get()));
        }
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
        let total: usize = frames.iter().map(String::len).sum();
        assert!(frames.len() <= 1 + total.div_ceil(DEFAULT_FRAME_BYTES));
    }

    fn wire(m: &Message) -> WireMessage {
        WireMessage::from(m)
    }

    fn parse_messages(frame: &str) -> (ConversationId, Vec<WireMessage>) {
        match serde_json::from_str(frame) {
            Ok(ServerFrame::Messages {
                conversation_id,
                messages,
            }) => (conversation_id, messages),
            other => panic!("not a messages frame: {other:?}"),
        }
    }

    #[test]
    fn envelope_is_the_literals_finish_frame_writes() {
        let cid = ConversationId::parse("c1").unwrap();
        let cid_json = encode_conversation_id(&cid);
        assert_eq!(
            envelope_len(&cid_json),
            finish_frame(&cid_json, &[]).len(),
            "an empty frame is all envelope"
        );
        let m = msg(7, "x");
        assert_eq!(
            one_message_frame_len(&cid, &wire(&m)),
            pack_messages(&cid, &[m], DEFAULT_FRAME_BYTES)[0].len()
        );
    }

    /// The bound is exact: two messages whose frame is exactly the limit
    /// share it; one byte less and they are split.
    #[test]
    fn two_messages_at_exactly_the_limit_share_a_frame_one_byte_less_splits() {
        let cid = ConversationId::parse("c1").unwrap();
        for body in ["x", "\"\u{1}😀</script>\\", "\u{0}".repeat(40).as_str()] {
            let msgs = vec![msg(1, body), msg(2, body)];
            let both = pack_messages(&cid, &msgs, usize::MAX);
            assert_eq!(both.len(), 1);
            let exact = both[0].len();
            assert_eq!(pack_messages(&cid, &msgs, exact), both, "{body:?}");
            let split = pack_messages(&cid, &msgs, exact - 1);
            assert_eq!(split.len(), 2, "{body:?}");
            for f in &split {
                assert!(
                    f.len() < exact,
                    "frame of {} bytes over {}",
                    f.len(),
                    exact - 1
                );
            }
        }
    }

    proptest::proptest! {
        /// `one_message_frame_len` is exactly the length of the frame
        /// `pack_messages` makes of that message alone, whatever the body.
        #[test]
        fn one_message_frame_len_is_exact(
            body in crate::strategies::adversarial_body(0..200),
            seq in proptest::prelude::any::<u64>(),
            sent_at in proptest::prelude::any::<i64>(),
        ) {
            let cid = ConversationId::parse("c1").unwrap();
            let mut m = msg(1, &body);
            m.seq = Seq(seq);
            m.sent_at = sent_at;
            let frames = pack_messages(&cid, std::slice::from_ref(&m), usize::MAX);
            proptest::prop_assert_eq!(frames.len(), 1);
            proptest::prop_assert_eq!(frames[0].len(), one_message_frame_len(&cid, &wire(&m)));
            let (_, back) = parse_messages(&frames[0]);
            proptest::prop_assert_eq!(&back[0].body, &body);
        }

        /// Over random batches of adversarial messages: every message exactly
        /// once, in seq order; no frame over the limit unless it is a single
        /// message too large for any frame (the fallback); and no frame
        /// closed early (the next frame's first message would not have fit).
        #[test]
        fn packed_frames_stay_within_the_limit_in_order_exactly_once(
            bodies in proptest::collection::vec(crate::strategies::adversarial_body(0..60), 1..40),
            first_seq in 1u64..1_000_000,
            max_frame_bytes in 200usize..1500,
        ) {
            let cid = ConversationId::parse("c1").unwrap();
            let msgs: Vec<Message> = bodies
                .iter()
                .zip(first_seq..)
                .map(|(b, s)| msg(s, b))
                .collect();
            let frames = pack_messages(&cid, &msgs, max_frame_bytes);
            let mut seen: Vec<WireMessage> = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let (c, messages) = parse_messages(f);
                proptest::prop_assert_eq!(&c, &cid);
                proptest::prop_assert!(!messages.is_empty());
                if f.len() > max_frame_bytes {
                    proptest::prop_assert_eq!(messages.len(), 1, "an over-limit frame of several messages");
                    proptest::prop_assert!(one_message_frame_len(&cid, &messages[0]) > max_frame_bytes);
                }
                if let Some(next) = frames.get(i + 1) {
                    let (_, after) = parse_messages(next);
                    let first = encode_message(&after[0]);
                    proptest::prop_assert!(f.len() + 1 + first.len() > max_frame_bytes, "frame {} closed early", i);
                }
                seen.extend(messages);
            }
            let sent: Vec<WireMessage> = msgs.iter().map(wire).collect();
            proptest::prop_assert_eq!(seen, sent);
        }
    }

    /// The defensive fallback for messages stored before the send service
    /// measured frames: too large for any frame, it still goes, alone.
    #[test]
    fn oversized_message_travels_alone() {
        let cid = ConversationId::parse("c1").unwrap();
        let msgs = vec![msg(1, "a"), msg(2, &"b".repeat(40_000)), msg(3, "c")];
        let frames = pack_messages(&cid, &msgs, DEFAULT_FRAME_BYTES);
        assert_eq!(frames.len(), 3);
    }
}
