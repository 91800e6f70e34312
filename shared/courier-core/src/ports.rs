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
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, CorrelationId, Device,
    DeviceId, LinkedDevice, Message, Millis, PendingDelivery, Platform, Seq, UserId,
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

/// A registry (Redis, or DynamoDB with `REGISTRY_BACKEND=dynamodb`) or
/// rate-limiter failure. The registry is a hint: callers log these and
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

/// What [`ConnectionRegistry::register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The entry now holds this connection (new, replaced an older one, or
    /// re-asserted the same one with a fresh expiry).
    Stored,
    /// The device's entry holds a connection opened later: left as it is (a
    /// slow `$connect` finishing after a newer one).
    KeptNewer,
}

/// `ws:{user_id}` → one entry per connected device of the user (Redis in
/// production; one DynamoDB item per device with `REGISTRY_BACKEND=dynamodb`).
#[async_trait]
pub trait ConnectionRegistry: Send + Sync {
    /// Records `connection` as its device's live one, atomically, unless the
    /// device's entry holds a *newer* connection: newer is a later
    /// `connected_at` (unknown counts as 0), ties broken by the larger
    /// connection id, so every replica agrees. Registering the connection the
    /// entry already holds re-asserts it (`ping`) and refreshes the expiry,
    /// a little over API Gateway's 2-hour connection limit.
    async fn register(
        &self,
        user: &UserId,
        connection: &Connection,
    ) -> Result<Registered, RegistryError>;
    /// Every connected device's entry, in device order.
    async fn lookup(&self, user: &UserId) -> Result<Vec<Connection>, RegistryError>;
    /// Deletes `device`'s entry only if it still holds `connection_id`, so a
    /// stale disconnect or 410 never removes a newer connection. True if
    /// deleted.
    async fn remove_if(
        &self,
        user: &UserId,
        device: &DeviceId,
        connection_id: &ConnectionId,
    ) -> Result<bool, RegistryError>;
}

/// A message about to be appended; the store assigns nothing but what the
/// caller computed (seq = expected last seq + 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub message: Message,
    /// Users who get a pending row for this message in the same atomic write
    /// (in `PENDING_CLEAR=ack`: every member, the sender included, so the
    /// sender's other devices get it too — one row per user whatever the
    /// number of devices; nobody in `post`).
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
    /// The conversations `user` is a member of, in conversation-id order,
    /// starting after `after`, at most `limit` (1..=100); the second value is
    /// where the next page starts (`None`: this was the last page).
    async fn list_for(
        &self,
        user: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<ConversationId>), StoreError>;
}

/// What an ack did to a pending row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Every linked device is past `last_seq`: the row is gone.
    Cleared,
    /// The acking device's cursor moved up to `seq` (another linked device
    /// is still behind, or newer messages remain).
    Advanced,
    /// Nothing changed: no row, or the device's cursor was already at `seq`
    /// or past it.
    Stale,
}

/// `pending_deliveries` (DynamoDB in production): one row per user and
/// conversation, with a cursor per device on it.
#[async_trait]
pub trait PendingStore: Send + Sync {
    /// Every row of `user`, strongly consistent, all pages, cursors included
    /// (one query: reading the cursors adds no round trip to a catch-up).
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError>;

    async fn get(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError>;

    /// Makes sure the user's row covers `seq`: creates it as `seq..=seq`, or
    /// widens it (`last_seq` up to `seq`, `first_undelivered_seq` down to
    /// `seq`). Widening downwards also drops every cursor (a cursor past a
    /// seq recorded late would skip it). Used by `PENDING_CLEAR=post`, where
    /// rows are written outside the append transaction.
    async fn record(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<(), StoreError>;

    /// `device` holds every message through `seq`: its cursor moves up to
    /// `seq` (never down); then, if every device of `linked` holds
    /// `last_seq`, the row is deleted. Both writes are conditional on what
    /// was read (`last_seq`, the cursors), so a message that arrives meanwhile
    /// is never wiped and a cursor never goes down. `linked` is the user's
    /// linked devices not yet past their TTL; the acking device counts
    /// whether or not it is listed.
    async fn ack(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        seq: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError>;

    /// `PENDING_CLEAR=post`: catch-up posted every message of
    /// `from..=through` to `device`, which counts as delivered in that mode:
    /// as [`PendingStore::ack`] of `through`, but only while `device`'s start
    /// ([`PendingDelivery::start_for`]) is still `from` or above. A lower
    /// start means an older seq was recorded after the row was read (a
    /// retried send re-delivering a message stored by a crashed attempt): it
    /// was not posted, so the row stays as it is (`Stale`).
    async fn settle_posted(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError>;
}

/// What [`LinkStore::touch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The device was not linked: it is now.
    Linked,
    /// The device was linked already; its `last_seen_at` is now.
    Seen,
    /// The device is new and the user already has `max` linked devices seen
    /// within the TTL: not linked.
    TooMany { max: usize },
}

/// The user's linked devices (DynamoDB in production: items in the user's
/// partition of `pending_deliveries`, beside the pending rows).
#[async_trait]
pub trait LinkStore: Send + Sync {
    /// Links `device` on its first connection, or records it as seen at
    /// `now`. A new device beyond `max` is refused, atomically (two new
    /// devices racing for the last place cannot both win); devices last seen
    /// before `stale_before` do not count and are unlinked to make room.
    async fn touch(
        &self,
        user: &UserId,
        device: &DeviceId,
        now: Millis,
        max: usize,
        stale_before: Millis,
    ) -> Result<LinkOutcome, StoreError>;
    /// Every linked device of `user`, in device order.
    async fn list(&self, user: &UserId) -> Result<Vec<LinkedDevice>, StoreError>;
    /// Unlinks `device`; false if it was not linked.
    async fn unlink(&self, user: &UserId, device: &DeviceId) -> Result<bool, StoreError>;
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
    /// The connecting device: its cursors decide where each conversation
    /// starts. Absent (an event from before devices): `default`.
    #[serde(default)]
    pub device_id: DeviceId,
    pub connection_id: ConnectionId,
    /// API Gateway's `connectedAt`; bounds the window in which 410 means
    /// "not open yet". Absent: taken as "just now".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<Millis>,
    /// The conversation the app was opened on (`conversation_id=` on the
    /// connect URL, a tapped notification): its frames go out first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_conversation: Option<ConversationId>,
    /// Set when connect could not link the device because the user already
    /// has this many (`MAX_DEVICES`): catch-up tells the client so and closes
    /// the connection instead of catching up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_limit: Option<usize>,
    /// Who asked: `$connect` (the default, so a payload without it is one)
    /// or the client's `sync`.
    #[serde(default)]
    pub origin: CatchUpOrigin,
    /// The `$connect`'s correlation id: the catch-up logs under it, so one
    /// id finds both functions' lines. Absent: the catch-up takes its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
}

/// Who asked for a catch-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpOrigin {
    /// `$connect`, through the trigger: the client has waited for its
    /// `caught_up` since the connection opened, which is what
    /// `CatchUpTimeMs` measures.
    #[default]
    Connect,
    /// The client's `sync` (a trigger that failed, or catching up again
    /// after `unreached`), at any time in the connection's life: not timed
    /// from its opening.
    Sync,
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
