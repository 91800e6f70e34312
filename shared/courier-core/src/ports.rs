//! The ports: what the services need from the outside world, as traits.
//!
//! Each port has an in-memory adapter (`adapters::memory`) and a real one
//! (DynamoDB, Redis, API Gateway Management, Lambda, SNS), and the
//! conformance suites in `tests/` run the same cases against both. The
//! services only ever see `Arc<dyn Port>`, so a Lambda binary, the local
//! gateway and a unit test wire the very same service code to different
//! adapters.
//!
//! The send path's atomic step spans four tables (conversation counter,
//! message, idempotency record, pending rows), so it is one method,
//! [`MessageStore::append`], rather than a sequence of calls a crash could cut
//! in half.

use async_trait::async_trait;

use crate::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, Device, Message, Millis,
    PendingDelivery, Platform, Seq, UserId,
};

/// A storage failure. Client mistakes never show up here; these are faults.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store asked us to slow down (DynamoDB throughput exceeded,
    /// transaction conflicts); the adapter already retried with backoff.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The store could not be reached or answered an error.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An item did not have the shape this code writes.
    #[error("corrupt item: {0}")]
    Corrupt(String),
}

/// A registry (Redis) failure. The registry is a hint: callers log these and
/// carry on as if the user were offline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry unavailable: {0}")]
pub struct RegistryError(pub String);

/// The outcome of posting to a connection that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// 410: the connection is unknown, closed, or (right after `$connect`)
    /// not open yet.
    #[error("connection gone (410)")]
    Gone,
    /// 413: the payload is over API Gateway's limit. Never retried.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 429 or 5xx, or the endpoint could not be reached.
    #[error("gateway unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not trigger catch-up: {0}")]
pub struct TriggerError(pub String);

/// What `GET @connections/{id}` tells about a live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub connected_at: Option<Millis>,
    pub last_active_at: Option<Millis>,
    pub source_ip: Option<String>,
}

/// `ws:{user_id}` → the user's live connection (Redis in production).
#[async_trait]
pub trait ConnectionRegistry: Send + Sync {
    /// Records `connection` as the user's live one, replacing any older one;
    /// expires a little after API Gateway's 2-hour connection limit.
    async fn register(&self, user: &UserId, connection: &Connection) -> Result<(), RegistryError>;
    async fn lookup(&self, user: &UserId) -> Result<Option<Connection>, RegistryError>;
    /// Deletes the entry only if it still holds `connection_id`, so a stale
    /// disconnect or 410 never removes a newer connection. True if deleted.
    async fn remove_if(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<bool, RegistryError>;
}

/// A message about to be appended; the store assigns nothing but what the
/// caller computed (seq = expected last seq + 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub message: Message,
    /// Users who get a pending row for this message in the same atomic write
    /// (every recipient in `PENDING_CLEAR=ack`; nobody in `post`).
    pub pending_for: Vec<UserId>,
    /// When the idempotency record may be forgotten (epoch seconds).
    pub idempotency_expires_at: i64,
    /// When DynamoDB's TTL may delete the message (epoch seconds); `None`
    /// keeps it for ever (`MESSAGE_RETENTION_DAYS` unset or 0).
    pub message_expires_at: Option<i64>,
}

/// The result of [`MessageStore::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored, counter advanced, idempotency record and pending rows written.
    Stored,
    /// Nothing written: the conversation's `last_seq` was no longer the
    /// expected one (a concurrent send won). Re-read and try again.
    SeqConflict,
    /// Nothing written: this sender already sent this `client_msg_id`; here is
    /// the message it produced.
    Duplicate(Message),
    /// Nothing written: the conversation does not exist or the sender is no
    /// longer a member.
    NotAMember,
}

/// Messages, conversations and idempotency records (DynamoDB in production).
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Atomically: advance the conversation's `last_seq` from
    /// `message.seq - 1` to `message.seq`, store the message, store the
    /// idempotency record of `(conversation, sender, client_msg_id)`, and
    /// upsert a pending row for each of `pending_for`. All or nothing.
    async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError>;

    /// The message an earlier send of this `client_msg_id` produced, if any.
    async fn find_sent(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError>;

    /// Messages with `seq >= from`, ascending, at most `limit`, read strongly
    /// consistently and following DynamoDB's pages.
    async fn range(
        &self,
        conversation: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;
}

#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// Creates the conversation; false if one with that id already exists.
    async fn create(&self, conversation: &Conversation) -> Result<bool, StoreError>;
    /// Strongly consistent read.
    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError>;
}

/// What an ack did to a pending row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The ack covered `last_seq`: the row is gone.
    Cleared,
    /// The ack was below `last_seq`: `first_undelivered_seq` moved up to
    /// `seq + 1`.
    Advanced,
    /// Nothing changed: no row, or the cursor was already past `seq`.
    Stale,
}

/// `pending_deliveries` (DynamoDB in production).
#[async_trait]
pub trait PendingStore: Send + Sync {
    /// Every row of `user`, strongly consistent, all pages.
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError>;

    async fn get(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError>;

    /// Makes sure the user's row covers `seq`: creates it as `seq..=seq`, or
    /// widens it (`last_seq` up to `seq`, `first_undelivered_seq` down to
    /// `seq`). Used by `PENDING_CLEAR=post`, where rows are written outside
    /// the append transaction.
    async fn record(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<(), StoreError>;

    /// The user has every message through `seq`: delete the row if
    /// `last_seq <= seq`, else raise `first_undelivered_seq` to `seq + 1`.
    /// Both conditional, so a newer message is never wiped and the cursor
    /// never goes down.
    async fn ack(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<AckOutcome, StoreError>;

    /// `PENDING_CLEAR=post`: catch-up posted every message of
    /// `from..=through`, which counts as delivered in that mode. Deletes the
    /// row if that covers it, else raises `first_undelivered_seq` to
    /// `through + 1` — both only while `first_undelivered_seq >= from`. A
    /// lower cursor means an older seq was recorded after the row was read
    /// (a retried send re-delivering a message stored by a crashed attempt):
    /// it was not posted, so the row stays as it is (`Stale`).
    async fn settle_posted(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        from: Seq,
        through: Seq,
    ) -> Result<AckOutcome, StoreError>;
}

/// Posting to live connections (API Gateway Management API in production).
#[async_trait]
pub trait Gateway: Send + Sync {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError>;
    /// `Ok(None)` when the connection is gone.
    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError>;
    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError>;
}

/// The payload of a catch-up invocation (connect → catch-up).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatchUpRequest {
    pub user_id: UserId,
    pub connection_id: ConnectionId,
    /// API Gateway's `connectedAt`; bounds the window in which 410 means
    /// "not open yet". Absent: taken as "just now".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<Millis>,
}

/// Starts a catch-up without waiting for it (Lambda `InvocationType=Event`).
#[async_trait]
pub trait CatchUpTrigger: Send + Sync {
    async fn trigger(&self, request: &CatchUpRequest) -> Result<(), TriggerError>;
}

/// A push notification as the platform should show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushMessage {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub seq: Seq,
    /// "alice: hello??" (truncated), or `None` under `PUSH_PREVIEW=none`.
    pub preview: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The platform endpoint is disabled or deleted (uninstalled app, expired
    /// token): forget the device, do not retry.
    #[error("endpoint disabled")]
    EndpointDisabled,
    /// No platform application is configured for this platform.
    #[error("platform {0} is not configured")]
    PlatformNotConfigured(&'static str),
    #[error("push service unavailable: {0}")]
    Unavailable(String),
}

/// SNS mobile push in production; a recorder in memory.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Creates (or finds) the platform endpoint for a device token.
    async fn create_endpoint(
        &self,
        platform: Platform,
        token: &str,
        user: &UserId,
    ) -> Result<String, PushError>;
    async fn publish(&self, endpoint_arn: &str, message: &PushMessage) -> Result<(), PushError>;
    async fn delete_endpoint(&self, endpoint_arn: &str) -> Result<(), PushError>;
}

/// Registered push devices, per user, findable by token.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Stores the device under its token, replacing whatever user held it.
    async fn put(&self, device: &Device) -> Result<(), StoreError>;
    async fn by_token(&self, token: &str) -> Result<Option<Device>, StoreError>;
    async fn for_user(&self, user: &UserId) -> Result<Vec<Device>, StoreError>;
    async fn delete(&self, token: &str) -> Result<(), StoreError>;
}

/// What the rate limiter said about one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// A token was taken: go ahead.
    Allowed,
    /// The bucket is empty; a token is back in about `retry_after`.
    Limited { retry_after: std::time::Duration },
}

/// Per-user rate limiting of sends: a token bucket per user (Redis in
/// production, so every execution environment shares it).
///
/// An `Err` means the limiter could not be asked (Redis down or slow); the
/// send path then lets the send through and logs it — the limiter protects
/// capacity, it must not take messaging down with it.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes one token from `user`'s bucket, atomically, if there is one.
    async fn acquire(&self, user: &UserId) -> Result<RateDecision, RegistryError>;
}
