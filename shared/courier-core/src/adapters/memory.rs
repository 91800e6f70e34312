//! In-memory adapters for every port.
//!
//! They are the embedded default of the local gateway (no setup at all) and
//! the fast double of unit tests, and they pass the same conformance suites as
//! the DynamoDB, Redis and API Gateway adapters: same conditions, same
//! outcomes. All of a store's tables sit behind one mutex, which makes
//! [`MessageStore::append`] trivially atomic, the way a DynamoDB transaction
//! is.
//!
//! Each adapter also has a switch to make it fail (`set_down`), so tests can
//! inject the faults the delivery rules (docs/architecture.md) name without a network in between.
//! The store can also hang its message reads (`set_messages_delay`), like a
//! DynamoDB query stuck in its retries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, Device, DeviceId,
    LinkedDevice, Message, Millis, PendingDelivery, Platform, Seq, UserId, now_millis,
};
use crate::ports::{
    AckOutcome, AppendOutcome, CatchUpRequest, CatchUpTrigger, ConnectionInfo, ConnectionRegistry,
    ConversationStore, DeviceStore, Gateway, LinkOutcome, LinkStore, MessageStore, NewMessage,
    Notifier, PendingStore, PostError, PushError, PushMessage, Registered, RegistryError,
    StoreError, TriggerError,
};

/// Locks a mutex, recovering the data if a panicking test poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Tables {
    conversations: HashMap<ConversationId, Conversation>,
    messages: HashMap<ConversationId, BTreeMap<u64, Message>>,
    /// `(conversation, sender, client_msg_id)` → seq.
    sent: HashMap<(ConversationId, UserId, ClientMsgId), u64>,
    pending: BTreeMap<(UserId, ConversationId), PendingDelivery>,
    devices: HashMap<String, Device>,
    links: BTreeMap<(UserId, DeviceId), LinkedDevice>,
    /// The memberships index: user → their conversations.
    memberships: BTreeSet<(UserId, ConversationId)>,
}

/// Messages, conversations, pending rows, idempotency records and devices.
#[derive(Default, Clone)]
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
    down: Arc<AtomicBool>,
    /// How long every `MessageStore` call waits before it runs.
    messages_delay: Arc<Mutex<Option<Duration>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// While down, every call answers `StoreError::Unavailable`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// While set, every `MessageStore` call (append, find_sent, range) waits
    /// this long before it runs: a hung or slow DynamoDB. The other tables
    /// answer at once, so a test can hang just the reads of catch-up.
    pub fn set_messages_delay(&self, delay: Option<Duration>) {
        *lock(&self.messages_delay) = delay;
    }

    /// What DynamoDB's TTL does under `MESSAGE_RETENTION_DAYS`: deletes the
    /// messages of `conversation` through `through` (the oldest ones; a
    /// conversation's messages expire in seq order). Returns how many went.
    pub fn expire_through(&self, conversation: &ConversationId, through: Seq) -> usize {
        let mut tables = lock(&self.tables);
        let Some(messages) = tables.messages.get_mut(conversation) else {
            return 0;
        };
        let kept = messages.split_off(&through.get().saturating_add(1));
        let gone = messages.len();
        *messages = kept;
        gone
    }

    async fn messages_delay(&self) {
        let delay = *lock(&self.messages_delay);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable(
                "memory store is down (injected)".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn tables(&self) -> Result<MutexGuard<'_, Tables>, StoreError> {
        self.check()?;
        Ok(lock(&self.tables))
    }
}

fn upsert_pending(
    pending: &mut BTreeMap<(UserId, ConversationId), PendingDelivery>,
    user: &UserId,
    conversation: &ConversationId,
    seq: Seq,
) {
    let now = now_millis();
    pending
        .entry((user.clone(), conversation.clone()))
        .and_modify(|row| {
            if seq < row.first_undelivered_seq {
                row.first_undelivered_seq = seq;
                row.cursors.clear();
            }
            row.last_seq = row.last_seq.max(seq);
            row.updated_at = now;
        })
        .or_insert_with(|| PendingDelivery {
            user_id: user.clone(),
            conversation_id: conversation.clone(),
            first_undelivered_seq: seq,
            last_seq: seq,
            updated_at: now,
            cursors: BTreeMap::new(),
        });
}

/// `device` holds `from..=through`: its cursor moves up to `through`, only
/// while its start is at `from` or above (`ack` passes `Seq::ZERO`: a
/// client's ack is contiguous); then the row goes if every device of
/// `linked` (and `device`) is past `last_seq`.
fn advance_pending(
    pending: &mut BTreeMap<(UserId, ConversationId), PendingDelivery>,
    user: &UserId,
    device: &DeviceId,
    conversation: &ConversationId,
    from: Seq,
    through: Seq,
    linked: &[DeviceId],
) -> AckOutcome {
    let key = (user.clone(), conversation.clone());
    let Some(row) = pending.get_mut(&key) else {
        return AckOutcome::Stale;
    };
    let start = row.start_for(device);
    if start < from || through < start {
        return AckOutcome::Stale;
    }
    row.cursors.insert(device.clone(), through);
    row.updated_at = now_millis();
    let mut holders: Vec<DeviceId> = linked.to_vec();
    holders.push(device.clone());
    if row.all_past(&holders) {
        pending.remove(&key);
        return AckOutcome::Cleared;
    }
    AckOutcome::Advanced
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
        self.messages_delay().await;
        let mut t = self.tables()?;
        let m = &new.message;
        let key = (
            m.conversation_id.clone(),
            m.sender_id.clone(),
            m.client_msg_id.clone(),
        );
        if let Some(seq) = t.sent.get(&key) {
            let original = t
                .messages
                .get(&m.conversation_id)
                .and_then(|msgs| msgs.get(seq))
                .cloned()
                .ok_or_else(|| StoreError::Corrupt("idempotency record without message".into()))?;
            return Ok(AppendOutcome::Duplicate(original));
        }
        let Some(conv) = t.conversations.get_mut(&m.conversation_id) else {
            return Ok(AppendOutcome::NotAMember);
        };
        if !conv.is_member(&m.sender_id) {
            return Ok(AppendOutcome::NotAMember);
        }
        if conv.last_seq.next() != m.seq {
            return Ok(AppendOutcome::SeqConflict);
        }
        conv.last_seq = m.seq;
        t.messages
            .entry(m.conversation_id.clone())
            .or_default()
            .insert(m.seq.get(), m.clone());
        t.sent.insert(key, m.seq.get());
        for user in &new.pending_for {
            upsert_pending(&mut t.pending, user, &m.conversation_id, m.seq);
        }
        Ok(AppendOutcome::Stored)
    }

    async fn find_sent(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        self.messages_delay().await;
        let t = self.tables()?;
        let key = (conversation.clone(), sender.clone(), client_msg_id.clone());
        Ok(t.sent
            .get(&key)
            .and_then(|seq| t.messages.get(conversation)?.get(seq).cloned()))
    }

    async fn range(
        &self,
        conversation: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.messages_delay().await;
        let t = self.tables()?;
        Ok(t.messages
            .get(conversation)
            .map(|msgs| {
                msgs.range(from.get()..)
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn create(&self, conversation: &Conversation) -> Result<bool, StoreError> {
        let mut t = self.tables()?;
        if t.conversations.contains_key(&conversation.conversation_id) {
            return Ok(false);
        }
        t.conversations
            .insert(conversation.conversation_id.clone(), conversation.clone());
        for member in &conversation.members {
            t.memberships
                .insert((member.clone(), conversation.conversation_id.clone()));
        }
        Ok(true)
    }

    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        Ok(self.tables()?.conversations.get(id).cloned())
    }

    async fn list_for(
        &self,
        user: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<ConversationId>), StoreError> {
        let t = self.tables()?;
        let limit = limit.clamp(1, 100);
        let mut ids: Vec<ConversationId> = t
            .memberships
            .iter()
            .filter(|(u, c)| u == user && after.is_none_or(|a| c > a))
            .map(|(_, c)| c.clone())
            .take(limit + 1)
            .collect();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let page = ids
            .iter()
            .filter_map(|id| t.conversations.get(id).cloned())
            .collect();
        let next = if more { ids.last().cloned() } else { None };
        Ok((page, next))
    }
}

#[async_trait]
impl PendingStore for MemoryStore {
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        let t = self.tables()?;
        Ok(t.pending
            .values()
            .filter(|row| &row.user_id == user)
            .cloned()
            .collect())
    }

    async fn get(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        let t = self.tables()?;
        Ok(t.pending
            .get(&(user.clone(), conversation.clone()))
            .cloned())
    }

    async fn record(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        let mut t = self.tables()?;
        upsert_pending(&mut t.pending, user, conversation, seq);
        Ok(())
    }

    async fn ack(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        seq: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        let mut t = self.tables()?;
        Ok(advance_pending(
            &mut t.pending,
            user,
            device,
            conversation,
            Seq::ZERO,
            seq,
            linked,
        ))
    }

    async fn settle_posted(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        let mut t = self.tables()?;
        Ok(advance_pending(
            &mut t.pending,
            user,
            device,
            conversation,
            from,
            through,
            linked,
        ))
    }
}

#[async_trait]
impl LinkStore for MemoryStore {
    async fn touch(
        &self,
        user: &UserId,
        device: &DeviceId,
        now: Millis,
        max: usize,
        stale_before: Millis,
    ) -> Result<LinkOutcome, StoreError> {
        let mut t = self.tables()?;
        let key = (user.clone(), device.clone());
        if let Some(link) = t.links.get_mut(&key) {
            link.last_seen_at = link.last_seen_at.max(now);
            return Ok(LinkOutcome::Seen);
        }
        let stale: Vec<_> = t
            .links
            .iter()
            .filter(|((u, _), l)| u == user && l.last_seen_at < stale_before)
            .map(|(k, _)| k.clone())
            .collect();
        let live = t.links.keys().filter(|(u, _)| u == user).count() - stale.len();
        if live >= max {
            return Ok(LinkOutcome::TooMany { max });
        }
        for k in stale {
            t.links.remove(&k);
        }
        t.links.insert(
            key,
            LinkedDevice {
                device_id: device.clone(),
                linked_at: now,
                last_seen_at: now,
            },
        );
        Ok(LinkOutcome::Linked)
    }

    async fn list(&self, user: &UserId) -> Result<Vec<LinkedDevice>, StoreError> {
        let t = self.tables()?;
        Ok(t.links
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, l)| l.clone())
            .collect())
    }

    async fn unlink(&self, user: &UserId, device: &DeviceId) -> Result<bool, StoreError> {
        let mut t = self.tables()?;
        Ok(t.links.remove(&(user.clone(), device.clone())).is_some())
    }
}

#[async_trait]
impl DeviceStore for MemoryStore {
    async fn put(&self, device: &Device) -> Result<(), StoreError> {
        self.tables()?
            .devices
            .insert(device.token.clone(), device.clone());
        Ok(())
    }

    async fn by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        Ok(self.tables()?.devices.get(token).cloned())
    }

    async fn for_user(&self, user: &UserId) -> Result<Vec<Device>, StoreError> {
        let t = self.tables()?;
        let mut out: Vec<Device> = t
            .devices
            .values()
            .filter(|d| &d.user_id == user)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.token.cmp(&b.token));
        Ok(out)
    }

    async fn delete(&self, token: &str) -> Result<(), StoreError> {
        self.tables()?.devices.remove(token);
        Ok(())
    }
}

/// One user's registry entries: per device, its connection and when it was
/// written.
type DeviceEntries = BTreeMap<DeviceId, (Connection, Instant)>;

/// The connection registry, without Redis: per user, one entry per device.
#[derive(Default, Clone)]
pub struct MemoryRegistry {
    entries: Arc<Mutex<HashMap<UserId, DeviceEntries>>>,
    ttl: Option<Duration>,
    down: Arc<AtomicBool>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries expire after `ttl`, like the Redis keys.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// While down, every call fails, like an unreachable Redis.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), RegistryError> {
        if self.down.load(Ordering::SeqCst) {
            Err(RegistryError("memory registry is down (injected)".into()))
        } else {
            Ok(())
        }
    }
}

/// Whether `candidate` may replace `held` in a device's entry: the same
/// connection (a re-assertion), or one opened later; equal opening times are
/// ordered by connection id, so every replica agrees.
pub fn replaces(candidate: &Connection, held: &Connection) -> bool {
    if candidate.connection_id == held.connection_id {
        return true;
    }
    let at = |c: &Connection| c.connected_at.unwrap_or(0);
    (at(candidate), &candidate.connection_id) > (at(held), &held.connection_id)
}

#[async_trait]
impl ConnectionRegistry for MemoryRegistry {
    async fn register(
        &self,
        user: &UserId,
        connection: &Connection,
    ) -> Result<Registered, RegistryError> {
        self.check()?;
        let mut entries = lock(&self.entries);
        let devices = entries.entry(user.clone()).or_default();
        let expired = |at: &Instant| self.ttl.is_some_and(|ttl| at.elapsed() >= ttl);
        if let Some((held, at)) = devices.get(&connection.device_id)
            && !expired(at)
            && !replaces(connection, held)
        {
            return Ok(Registered::KeptNewer);
        }
        devices.insert(
            connection.device_id.clone(),
            (connection.clone(), Instant::now()),
        );
        Ok(Registered::Stored)
    }

    async fn lookup(&self, user: &UserId) -> Result<Vec<Connection>, RegistryError> {
        self.check()?;
        let mut entries = lock(&self.entries);
        let Some(devices) = entries.get_mut(user) else {
            return Ok(Vec::new());
        };
        if let Some(ttl) = self.ttl {
            devices.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        Ok(devices.values().map(|(c, _)| c.clone()).collect())
    }

    async fn remove_if(
        &self,
        user: &UserId,
        device: &DeviceId,
        connection_id: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        self.check()?;
        let mut entries = lock(&self.entries);
        let Some(devices) = entries.get_mut(user) else {
            return Ok(false);
        };
        if devices
            .get(device)
            .is_some_and(|(c, _)| &c.connection_id == connection_id)
        {
            devices.remove(device);
            return Ok(true);
        }
        Ok(false)
    }
}

#[derive(Default)]
struct GatewayState {
    /// Open (or opening) connections: when they start accepting posts.
    connections: HashMap<ConnectionId, Instant>,
    /// Every successful post, per connection, in order.
    posted: HashMap<ConnectionId, Vec<String>>,
    /// Connections that swallow posts: 200, but nothing reaches the client
    /// (a half-open mobile connection).
    swallowing: HashSet<ConnectionId>,
    /// Connections that die after this many more successful posts.
    die_after: HashMap<ConnectionId, usize>,
}

/// A stand-in for the API Gateway Management API: records what is posted,
/// answers 410 for unknown connections and for ones not open yet.
#[derive(Default, Clone)]
pub struct MemoryGateway {
    state: Arc<Mutex<GatewayState>>,
    posts: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

impl MemoryGateway {
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection that accepts posts from now on.
    pub fn open(&self, connection: &ConnectionId) {
        self.open_after(connection, Duration::ZERO);
    }

    /// A connection whose `$connect` returns after `delay`: posts before then
    /// get 410, as on API Gateway.
    pub fn open_after(&self, connection: &ConnectionId, delay: Duration) {
        lock(&self.state)
            .connections
            .insert(connection.clone(), Instant::now() + delay);
    }

    pub fn close(&self, connection: &ConnectionId) {
        lock(&self.state).connections.remove(connection);
    }

    /// Posts to this connection succeed but reach nobody.
    pub fn swallow(&self, connection: &ConnectionId) {
        lock(&self.state).swallowing.insert(connection.clone());
    }

    /// The connection closes after `n` more successful posts.
    pub fn die_after(&self, connection: &ConnectionId, n: usize) {
        lock(&self.state).die_after.insert(connection.clone(), n);
    }

    /// While down, posts answer `Unavailable` (a 5xx).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Frames that reached the client of `connection`, in order.
    pub fn frames(&self, connection: &ConnectionId) -> Vec<String> {
        lock(&self.state)
            .posted
            .get(connection)
            .cloned()
            .unwrap_or_default()
    }

    /// Calls to `post`, successful or not.
    pub fn post_count(&self) -> u64 {
        self.posts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Gateway for MemoryGateway {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        self.posts.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(PostError::Unavailable(
                "memory gateway is down (injected)".into(),
            ));
        }
        if data.len() > crate::protocol::MAX_POST_BYTES {
            return Err(PostError::PayloadTooLarge);
        }
        let mut s = lock(&self.state);
        match s.connections.get(connection) {
            Some(opens_at) if Instant::now() >= *opens_at => {}
            _ => return Err(PostError::Gone),
        }
        if let Some(left) = s.die_after.get_mut(connection) {
            if *left == 0 {
                s.connections.remove(connection);
                s.die_after.remove(connection);
                return Err(PostError::Gone);
            }
            *left -= 1;
        }
        if !s.swallowing.contains(connection) {
            let text = String::from_utf8_lossy(data).into_owned();
            s.posted.entry(connection.clone()).or_default().push(text);
        }
        Ok(())
    }

    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        let s = lock(&self.state);
        Ok(match s.connections.get(connection) {
            Some(opens_at) if Instant::now() >= *opens_at => Some(ConnectionInfo {
                connected_at: None,
                last_active_at: None,
                source_ip: None,
            }),
            _ => None,
        })
    }

    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError> {
        match lock(&self.state).connections.remove(connection) {
            Some(_) => Ok(()),
            None => Err(PostError::Gone),
        }
    }
}

/// A catch-up trigger that records its requests and, if given a runner,
/// runs each one in the background (as Lambda's `Event` invoke would).
#[derive(Clone, Default)]
pub struct MemoryTrigger {
    requests: Arc<Mutex<Vec<CatchUpRequest>>>,
    runner: Arc<Mutex<Option<Runner>>>,
    down: Arc<AtomicBool>,
}

type Runner = Arc<dyn Fn(CatchUpRequest) + Send + Sync>;

impl MemoryTrigger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` for every triggered request (it should spawn, not block).
    pub fn set_runner(&self, f: impl Fn(CatchUpRequest) + Send + Sync + 'static) {
        *lock(&self.runner) = Some(Arc::new(f));
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<CatchUpRequest> {
        lock(&self.requests).clone()
    }
}

#[async_trait]
impl CatchUpTrigger for MemoryTrigger {
    async fn trigger(&self, request: &CatchUpRequest) -> Result<(), TriggerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TriggerError("memory trigger is down (injected)".into()));
        }
        lock(&self.requests).push(request.clone());
        let runner = lock(&self.runner).clone();
        if let Some(run) = runner {
            run(request.clone());
        }
        Ok(())
    }
}

/// A push notification the in-memory notifier would have sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordedPush {
    pub endpoint_arn: String,
    pub platform: Platform,
    pub token: String,
    pub message: PushMessage,
    pub at: i64,
}

#[derive(Default)]
struct NotifierState {
    /// endpoint arn → (platform, token, enabled)
    endpoints: HashMap<String, (Platform, String, bool)>,
    sent: Vec<RecordedPush>,
}

/// Records what SNS would have been asked to push.
#[derive(Clone, Default)]
pub struct MemoryNotifier {
    state: Arc<Mutex<NotifierState>>,
    down: Arc<AtomicBool>,
}

impl MemoryNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Marks an endpoint disabled, as SNS does when APNs/FCM reject its token.
    pub fn disable(&self, endpoint_arn: &str) {
        if let Some(e) = lock(&self.state).endpoints.get_mut(endpoint_arn) {
            e.2 = false;
        }
    }

    pub fn sent(&self) -> Vec<RecordedPush> {
        lock(&self.state).sent.clone()
    }

    pub fn endpoint_exists(&self, endpoint_arn: &str) -> bool {
        lock(&self.state).endpoints.contains_key(endpoint_arn)
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    async fn create_endpoint(
        &self,
        platform: Platform,
        token: &str,
        _user: &UserId,
    ) -> Result<String, PushError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PushError::Unavailable(
                "memory notifier is down (injected)".into(),
            ));
        }
        let mut s = lock(&self.state);
        // Same token, same endpoint, as SNS CreatePlatformEndpoint is idempotent.
        let arn = format!("arn:memory:sns:endpoint/{}/{}", platform.as_str(), token);
        s.endpoints
            .insert(arn.clone(), (platform, token.to_owned(), true));
        Ok(arn)
    }

    async fn publish(&self, endpoint_arn: &str, message: &PushMessage) -> Result<(), PushError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PushError::Unavailable(
                "memory notifier is down (injected)".into(),
            ));
        }
        let mut s = lock(&self.state);
        let Some((platform, token, enabled)) = s.endpoints.get(endpoint_arn).cloned() else {
            return Err(PushError::EndpointDisabled);
        };
        if !enabled {
            return Err(PushError::EndpointDisabled);
        }
        s.sent.push(RecordedPush {
            endpoint_arn: endpoint_arn.to_owned(),
            platform,
            token,
            message: message.clone(),
            at: now_millis(),
        });
        Ok(())
    }

    async fn delete_endpoint(&self, endpoint_arn: &str) -> Result<(), PushError> {
        lock(&self.state).endpoints.remove(endpoint_arn);
        Ok(())
    }
}
