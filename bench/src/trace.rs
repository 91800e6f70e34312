//! A tape of every port call a service makes, to find its critical path.
//!
//! [`traced`] wraps each port of a `Ports` bundle in a decorator that
//! records the call's name, start and end on a shared [`Tape`]. From the
//! tape, [`Tape::depth`] is the longest chain of calls each of which
//! started after the previous one ended: the number of sequential backend
//! round trips the service paid (a port call is one round trip unless it
//! paginates or retries, which the adapters do only past a page or on a
//! fault). That is the count the injected latency multiplies, so a figure
//! that pays more RTTs than expected can be read off the tape call by call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use courier_core::app::Ports;
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, Device, DeviceId,
    LinkedDevice, Message, Millis, PendingDelivery, Platform, Seq, UserId,
};
use courier_core::ports::{
    AckOutcome, AppendOutcome, CatchUpRequest, CatchUpTrigger, ConnectionInfo, ConnectionRegistry,
    ConversationStore, DeviceStore, Gateway, LinkOutcome, LinkStore, MessageStore, NewMessage,
    Notifier, PendingStore, PostError, PushError, PushMessage, RateDecision, RateLimiter,
    Registered, RegistryError, StoreError, TriggerError,
};

/// One port call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub what: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// Calls in the order they ended.
#[derive(Debug, Default)]
pub struct Tape {
    calls: Mutex<Vec<Call>>,
}

impl Tape {
    pub fn new() -> Arc<Tape> {
        Arc::new(Tape::default())
    }

    fn record(&self, what: &'static str, start: Instant) {
        let call = Call {
            what,
            start,
            end: Instant::now(),
        };
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    /// Every call so far, and clears the tape.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The longest chain of strictly sequential calls, and its calls in order.
pub fn depth(calls: &[Call]) -> (usize, Vec<&'static str>) {
    let mut sorted: Vec<&Call> = calls.iter().collect();
    sorted.sort_by_key(|c| c.end);
    // best[i]: length of the longest chain ending with sorted[i], and the
    // index of its predecessor.
    let mut best: Vec<(usize, Option<usize>)> = Vec::with_capacity(sorted.len());
    for (i, c) in sorted.iter().enumerate() {
        let prev = (0..i)
            .filter(|&j| sorted[j].end <= c.start)
            .max_by_key(|&j| best[j].0);
        best.push((prev.map_or(1, |j| best[j].0 + 1), prev));
    }
    let Some(mut at) = (0..best.len()).max_by_key(|&i| best[i].0) else {
        return (0, Vec::new());
    };
    let mut chain = vec![sorted[at].what];
    while let Some(p) = best[at].1 {
        chain.push(sorted[p].what);
        at = p;
    }
    chain.reverse();
    (chain.len(), chain)
}

/// Total time spent inside calls named `what`.
pub fn time_in(calls: &[Call], what: &str) -> Duration {
    calls
        .iter()
        .filter(|c| c.what == what)
        .map(|c| c.end.saturating_duration_since(c.start))
        .sum()
}

/// `ports` with every port recording on `tape`.
pub fn traced(ports: Ports, tape: &Arc<Tape>) -> Ports {
    traced_delayed(ports, tape, Duration::ZERO)
}

/// `ports` with every port recording on `tape` and every call held for
/// `delay` before it runs.
pub fn traced_delayed(ports: Ports, tape: &Arc<Tape>, delay: Duration) -> Ports {
    let w = || Wrap {
        tape: tape.clone(),
        delay,
    };
    Ports {
        registry: w().around(ports.registry),
        messages: w().around(ports.messages),
        conversations: w().around(ports.conversations),
        pending: w().around(ports.pending),
        devices: w().around(ports.devices),
        links: w().around(ports.links),
        gateway: w().around(ports.gateway),
        trigger: w().around(ports.trigger),
        notifier: w().around(ports.notifier),
    }
}

struct Wrap {
    tape: Arc<Tape>,
    delay: Duration,
}

impl Wrap {
    fn around<T: ?Sized>(self, inner: Arc<T>) -> Arc<Traced<T>> {
        Arc::new(Traced {
            inner,
            tape: self.tape,
            delay: self.delay,
        })
    }
}

/// `limiter` recording on `tape` (the send path's rate limiter is not in
/// `Ports`).
pub fn traced_limiter(limiter: Arc<dyn RateLimiter>, tape: &Arc<Tape>) -> Arc<dyn RateLimiter> {
    Wrap {
        tape: tape.clone(),
        delay: Duration::ZERO,
    }
    .around(limiter)
}

/// One port, recording its calls.
struct Traced<T: ?Sized> {
    inner: Arc<T>,
    tape: Arc<Tape>,
    delay: Duration,
}

/// Runs `$call` on the wrapped port, recording it as `$name`.
macro_rules! on {
    ($self:ident, $name:literal, |$p:ident| $call:expr) => {{
        let $p = &$self.inner;
        let start = Instant::now();
        if !$self.delay.is_zero() {
            tokio::time::sleep($self.delay).await;
        }
        let out = $call.await;
        $self.tape.record($name, start);
        out
    }};
}

/// A chain for humans: runs of the same call folded (`post ×12`).
pub fn fold(chain: &[&'static str]) -> String {
    let mut parts: Vec<(&str, usize)> = Vec::new();
    for c in chain {
        match parts.last_mut() {
            Some((last, n)) if last == c => *n += 1,
            _ => parts.push((c, 1)),
        }
    }
    parts
        .iter()
        .map(|(c, n)| {
            if *n == 1 {
                (*c).to_owned()
            } else {
                format!("{c} ×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

#[async_trait]
impl ConnectionRegistry for Traced<dyn ConnectionRegistry> {
    async fn register(
        &self,
        user: &UserId,
        connection: &Connection,
    ) -> Result<Registered, RegistryError> {
        on!(self, "redis SET", |p| p.register(user, connection))
    }
    async fn lookup(&self, user: &UserId) -> Result<Vec<Connection>, RegistryError> {
        on!(self, "redis GET", |p| p.lookup(user))
    }
    async fn remove_if(
        &self,
        user: &UserId,
        device: &DeviceId,
        id: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        on!(self, "redis DEL-if", |p| p.remove_if(user, device, id))
    }
}

#[async_trait]
impl MessageStore for Traced<dyn MessageStore> {
    async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
        on!(self, "ddb append", |p| p.append(new))
    }
    async fn find_sent(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        on!(self, "ddb find_sent", |p| p.find_sent(
            conversation,
            sender,
            client_msg_id
        ))
    }
    async fn range(
        &self,
        conversation: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        on!(self, "ddb range", |p| p.range(conversation, from, limit))
    }
}

#[async_trait]
impl ConversationStore for Traced<dyn ConversationStore> {
    async fn create(&self, conversation: &Conversation) -> Result<bool, StoreError> {
        on!(self, "ddb create conversation", |p| p.create(conversation))
    }
    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        on!(self, "ddb get conversation", |p| p.get(id))
    }
    async fn list_for(
        &self,
        user: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<ConversationId>), StoreError> {
        on!(self, "ddb list conversations", |p| p
            .list_for(user, after, limit))
    }
}

#[async_trait]
impl LinkStore for Traced<dyn LinkStore> {
    async fn touch(
        &self,
        user: &UserId,
        device: &DeviceId,
        now: Millis,
        max: usize,
        stale_before: Millis,
    ) -> Result<LinkOutcome, StoreError> {
        on!(self, "ddb link touch", |p| p.touch(
            user,
            device,
            now,
            max,
            stale_before
        ))
    }
    async fn list(&self, user: &UserId) -> Result<Vec<LinkedDevice>, StoreError> {
        on!(self, "ddb link list", |p| p.list(user))
    }
    async fn unlink(&self, user: &UserId, device: &DeviceId) -> Result<bool, StoreError> {
        on!(self, "ddb unlink", |p| p.unlink(user, device))
    }
}

#[async_trait]
impl PendingStore for Traced<dyn PendingStore> {
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        on!(self, "ddb pending list", |p| p.list(user))
    }
    async fn get(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        on!(self, "ddb pending get", |p| p.get(user, conversation))
    }
    async fn record(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        on!(self, "ddb pending record", |p| p.record(
            user,
            conversation,
            seq
        ))
    }
    async fn ack(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        seq: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        on!(self, "ddb pending ack", |p| p.ack(
            user,
            device,
            conversation,
            seq,
            linked
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
        on!(self, "ddb pending settle", |p| p.settle_posted(
            user,
            device,
            conversation,
            from,
            through,
            linked
        ))
    }
}

#[async_trait]
impl DeviceStore for Traced<dyn DeviceStore> {
    async fn put(&self, device: &Device) -> Result<(), StoreError> {
        on!(self, "ddb device put", |p| p.put(device))
    }
    async fn by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        on!(self, "ddb device get", |p| p.by_token(token))
    }
    async fn for_user(&self, user: &UserId) -> Result<Vec<Device>, StoreError> {
        on!(self, "ddb devices of user", |p| p.for_user(user))
    }
    async fn delete(&self, token: &str) -> Result<(), StoreError> {
        on!(self, "ddb device delete", |p| p.delete(token))
    }
}

#[async_trait]
impl Gateway for Traced<dyn Gateway> {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        on!(self, "post", |p| p.post(connection, data))
    }
    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        on!(self, "get connection", |p| p.get(connection))
    }
    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError> {
        on!(self, "delete connection", |p| p.delete(connection))
    }
}

#[async_trait]
impl RateLimiter for Traced<dyn RateLimiter> {
    async fn acquire(&self, user: &UserId) -> Result<RateDecision, RegistryError> {
        on!(self, "redis rate limit", |p| p.acquire(user))
    }
}

#[async_trait]
impl CatchUpTrigger for Traced<dyn CatchUpTrigger> {
    async fn trigger(&self, request: &CatchUpRequest) -> Result<(), TriggerError> {
        on!(self, "invoke catch-up", |p| p.trigger(request))
    }
}

#[async_trait]
impl Notifier for Traced<dyn Notifier> {
    async fn create_endpoint(
        &self,
        platform: Platform,
        token: &str,
        user: &UserId,
    ) -> Result<String, PushError> {
        on!(self, "sns create endpoint", |p| p
            .create_endpoint(platform, token, user))
    }
    async fn publish(&self, endpoint_arn: &str, message: &PushMessage) -> Result<(), PushError> {
        on!(self, "sns publish", |p| p.publish(endpoint_arn, message))
    }
    async fn delete_endpoint(&self, endpoint_arn: &str) -> Result<(), PushError> {
        on!(self, "sns delete endpoint", |p| p
            .delete_endpoint(endpoint_arn))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(what: &'static str, base: Instant, start: u64, end: u64) -> Call {
        Call {
            what,
            start: base + Duration::from_millis(start),
            end: base + Duration::from_millis(end),
        }
    }

    #[test]
    fn depth_counts_sequential_calls_not_parallel_ones() {
        let b = Instant::now();
        // list, then three range queries at once, then three posts at once,
        // then caught_up.
        let calls = vec![
            call("list", b, 0, 10),
            call("range", b, 10, 20),
            call("range", b, 11, 21),
            call("range", b, 12, 22),
            call("post", b, 20, 30),
            call("post", b, 21, 31),
            call("post", b, 22, 32),
            call("caught_up", b, 32, 42),
        ];
        let (n, chain) = depth(&calls);
        assert_eq!(n, 4);
        assert_eq!(chain, ["list", "range", "post", "caught_up"]);
        assert_eq!(depth(&[]).0, 0);
        assert_eq!(fold(&["a", "b", "b", "b", "a"]), "a → b ×3 → a");
        assert_eq!(time_in(&calls, "range"), Duration::from_millis(30));
    }

    #[tokio::test]
    async fn traced_ports_record_each_call() {
        let (ports, _h) = Ports::in_memory();
        let tape = Tape::new();
        let ports = traced(ports, &tape);
        let user = UserId::parse("u").unwrap();
        ports.pending.list(&user).await.unwrap();
        ports.registry.lookup(&user).await.unwrap();
        let calls = tape.take();
        let names: Vec<_> = calls.iter().map(|c| c.what).collect();
        assert_eq!(names, ["ddb pending list", "redis GET"]);
        assert_eq!(depth(&calls).0, 2);
    }
}
