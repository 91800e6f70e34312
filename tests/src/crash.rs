//! Crash injection at any port call, and scheduling noise between them.
//!
//! [`crashing_ports`] wraps every port of a [`Ports`] so that the k-th call
//! made through any of them, counted from [`CrashPlan::arm`], "crashes" the
//! invocation that made it: that call fails (before or after its effect, as
//! armed), and so does every later call of the same invocation, as if the
//! Lambda function had died at that instruction. Other invocations running
//! at the same time are untouched. [`CrashPlan::arm_on`] aims the crash at
//! the next call of one port method instead, named as the wrappers name it
//! (`"messages.append"`, `"pending.record"`, `"gateway.post"`, ...).
//!
//! An invocation is a future run through [`CrashPlan::invocation`]; its id
//! rides in a task-local, so futures the service polls inside it (the
//! `join_all`/`buffer_unordered` of catch-up and send) belong to it too.
//!
//! "After its effect" is the crash that matters most: DynamoDB committed the
//! transaction, API Gateway accepted the post, and the function died before
//! it could act on the answer.
//!
//! Before every call the wrapper also yields to the scheduler a random number
//! of times (seeded, so a failing case replays): invocations run with
//! `join_all` then interleave at port-call granularity, which is where the
//! races of the delivery rules (docs/architecture.md) live.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use courier_core::app::Ports;
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, Device, DeviceId,
    LinkedDevice, Message, Millis, PendingDelivery, Platform, Seq, UserId,
};
use courier_core::ports::{
    AckOutcome, AppendOutcome, CatchUpRequest, CatchUpTrigger, ConnectionInfo, ConnectionRegistry,
    ConversationStore, DeviceStore, Gateway, LinkOutcome, LinkStore, MessageStore, NewMessage,
    Notifier, PendingStore, PostError, PushError, PushMessage, Registered, RegistryError,
    StoreError, TriggerError,
};

tokio::task_local! {
    static INVOCATION: u64;
}

/// What the plan decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Run,
    FailBefore,
    FailAfter,
}

#[derive(Default)]
struct PlanState {
    /// Calls left before the crash; `Some(0)` crashes the next call.
    countdown: Option<u64>,
    /// The port method whose next call crashes (`arm_on`).
    target: Option<&'static str>,
    after_effect: bool,
    crashed: HashSet<u64>,
    calls: u64,
    crashes: u64,
    rng: u64,
    max_yields: u32,
}

/// Decides which call crashes; shared by every wrapped port.
#[derive(Default)]
pub struct CrashPlan {
    state: Mutex<PlanState>,
}

impl CrashPlan {
    /// `seed` drives the yields; `max_yields` bounds them per call (0: none).
    pub fn new(seed: u64, max_yields: u32) -> Arc<CrashPlan> {
        Arc::new(CrashPlan {
            state: Mutex::new(PlanState {
                rng: seed | 1,
                max_yields,
                ..PlanState::default()
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `k`-th port call from now (1-based) crashes its invocation;
    /// `after_effect`: the call itself takes effect, then fails.
    pub fn arm(&self, k: u64, after_effect: bool) {
        let mut s = self.state();
        s.countdown = Some(k.saturating_sub(1));
        s.target = None;
        s.after_effect = after_effect;
    }

    /// The next call of `port` (a port method as the wrappers name it:
    /// `"messages.append"`, `"pending.record"`, `"gateway.post"`, ...)
    /// crashes its invocation, however many calls of other ports come
    /// first; `after_effect`: that call takes effect, then fails. Replaces
    /// an [`arm`](Self::arm) countdown, and is replaced by one.
    pub fn arm_on(&self, port: &'static str, after_effect: bool) {
        let mut s = self.state();
        s.countdown = None;
        s.target = Some(port);
        s.after_effect = after_effect;
    }

    pub fn disarm(&self) {
        let mut s = self.state();
        s.countdown = None;
        s.target = None;
    }

    /// Port calls made through the wrappers so far.
    pub fn calls(&self) -> u64 {
        self.state().calls
    }

    /// Crashes injected so far.
    pub fn crashes(&self) -> u64 {
        self.state().crashes
    }

    /// Runs `fut` as invocation `id`. A crash inside it stays inside it; the
    /// id can be reused afterwards (a fresh execution).
    pub async fn invocation<F: Future>(&self, id: u64, fut: F) -> F::Output {
        self.state().crashed.remove(&id);
        let out = INVOCATION.scope(id, fut).await;
        self.state().crashed.remove(&id);
        out
    }

    fn next_rand(s: &mut PlanState) -> u64 {
        // xorshift64: tiny, seeded, good enough to shuffle schedules.
        s.rng ^= s.rng << 13;
        s.rng ^= s.rng >> 7;
        s.rng ^= s.rng << 17;
        s.rng
    }

    async fn verdict(&self, port: &'static str) -> Verdict {
        let yields = {
            let mut s = self.state();
            if s.max_yields == 0 {
                0
            } else {
                Self::next_rand(&mut s) % u64::from(s.max_yields + 1)
            }
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        let id = INVOCATION.try_with(|id| *id).unwrap_or(0);
        let mut s = self.state();
        s.calls += 1;
        if s.crashed.contains(&id) {
            return Verdict::FailBefore;
        }
        let crash = if s.target == Some(port) {
            s.target = None;
            true
        } else {
            match s.countdown {
                Some(0) => {
                    s.countdown = None;
                    true
                }
                Some(n) => {
                    s.countdown = Some(n - 1);
                    false
                }
                None => false,
            }
        };
        if !crash {
            return Verdict::Run;
        }
        s.crashed.insert(id);
        s.crashes += 1;
        if s.after_effect {
            Verdict::FailAfter
        } else {
            Verdict::FailBefore
        }
    }

    async fn guard<T, E, Fut>(
        &self,
        port: &'static str,
        call: impl FnOnce() -> Fut,
        error: impl FnOnce(String) -> E,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let verdict = self.verdict(port).await;
        if trace_enabled() {
            let id = INVOCATION.try_with(|id| *id).unwrap_or(0);
            eprintln!("  [invocation {id}] {port}: {verdict:?}");
        }
        match verdict {
            Verdict::Run => call().await,
            Verdict::FailBefore => Err(error(format!("{port}: crashed before the call"))),
            Verdict::FailAfter => {
                let _ = call().await;
                Err(error(format!("{port}: crashed after the call took effect")))
            }
        }
    }
}

/// `CRASH_TRACE=1` prints every port call with its invocation and verdict:
/// the interleaving of a failing case, read beside its history.
fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CRASH_TRACE").is_some_and(|v| v != "0"))
}

/// A port wrapped by a [`CrashPlan`].
pub struct Crashing<P: ?Sized> {
    inner: Arc<P>,
    plan: Arc<CrashPlan>,
}

impl<P: ?Sized> Crashing<P> {
    pub fn new(inner: Arc<P>, plan: Arc<CrashPlan>) -> Arc<Self> {
        Arc::new(Self { inner, plan })
    }
}

/// Every port of `ports`, wrapped by `plan`.
pub fn crashing_ports(ports: &Ports, plan: &Arc<CrashPlan>) -> Ports {
    let p = || Arc::clone(plan);
    Ports {
        registry: Crashing::new(ports.registry.clone(), p()),
        messages: Crashing::new(ports.messages.clone(), p()),
        conversations: Crashing::new(ports.conversations.clone(), p()),
        pending: Crashing::new(ports.pending.clone(), p()),
        devices: Crashing::new(ports.devices.clone(), p()),
        links: Crashing::new(ports.links.clone(), p()),
        gateway: Crashing::new(ports.gateway.clone(), p()),
        trigger: Crashing::new(ports.trigger.clone(), p()),
        notifier: Crashing::new(ports.notifier.clone(), p()),
    }
}

fn store_err(m: String) -> StoreError {
    StoreError::Unavailable(m)
}

#[async_trait]
impl ConnectionRegistry for Crashing<dyn ConnectionRegistry> {
    async fn register(
        &self,
        user: &UserId,
        connection: &Connection,
    ) -> Result<Registered, RegistryError> {
        self.plan
            .guard(
                "registry.register",
                || self.inner.register(user, connection),
                RegistryError,
            )
            .await
    }
    async fn lookup(&self, user: &UserId) -> Result<Vec<Connection>, RegistryError> {
        self.plan
            .guard("registry.lookup", || self.inner.lookup(user), RegistryError)
            .await
    }
    async fn remove_if(
        &self,
        user: &UserId,
        device: &DeviceId,
        id: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        self.plan
            .guard(
                "registry.remove_if",
                || self.inner.remove_if(user, device, id),
                RegistryError,
            )
            .await
    }
}

#[async_trait]
impl MessageStore for Crashing<dyn MessageStore> {
    async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
        self.plan
            .guard("messages.append", || self.inner.append(new), store_err)
            .await
    }
    async fn find_sent(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        self.plan
            .guard(
                "messages.find_sent",
                || self.inner.find_sent(conversation, sender, client_msg_id),
                store_err,
            )
            .await
    }
    async fn range(
        &self,
        conversation: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.plan
            .guard(
                "messages.range",
                || self.inner.range(conversation, from, limit),
                store_err,
            )
            .await
    }
}

#[async_trait]
impl ConversationStore for Crashing<dyn ConversationStore> {
    async fn create(&self, conversation: &Conversation) -> Result<bool, StoreError> {
        self.plan
            .guard(
                "conversations.create",
                || self.inner.create(conversation),
                store_err,
            )
            .await
    }
    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.plan
            .guard("conversations.get", || self.inner.get(id), store_err)
            .await
    }
    async fn list_for(
        &self,
        user: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<ConversationId>), StoreError> {
        self.plan
            .guard(
                "conversations.list_for",
                || self.inner.list_for(user, after, limit),
                store_err,
            )
            .await
    }
}

#[async_trait]
impl PendingStore for Crashing<dyn PendingStore> {
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        self.plan
            .guard("pending.list", || self.inner.list(user), store_err)
            .await
    }
    async fn get(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        self.plan
            .guard(
                "pending.get",
                || self.inner.get(user, conversation),
                store_err,
            )
            .await
    }
    async fn record(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        self.plan
            .guard(
                "pending.record",
                || self.inner.record(user, conversation, seq),
                store_err,
            )
            .await
    }
    async fn ack(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        seq: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.plan
            .guard(
                "pending.ack",
                || self.inner.ack(user, device, conversation, seq, linked),
                store_err,
            )
            .await
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
        self.plan
            .guard(
                "pending.settle_posted",
                || {
                    self.inner
                        .settle_posted(user, device, conversation, from, through, linked)
                },
                store_err,
            )
            .await
    }
}

#[async_trait]
impl DeviceStore for Crashing<dyn DeviceStore> {
    async fn put(&self, device: &Device) -> Result<(), StoreError> {
        self.plan
            .guard("devices.put", || self.inner.put(device), store_err)
            .await
    }
    async fn by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        self.plan
            .guard("devices.by_token", || self.inner.by_token(token), store_err)
            .await
    }
    async fn for_user(&self, user: &UserId) -> Result<Vec<Device>, StoreError> {
        self.plan
            .guard("devices.for_user", || self.inner.for_user(user), store_err)
            .await
    }
    async fn delete(&self, token: &str) -> Result<(), StoreError> {
        self.plan
            .guard("devices.delete", || self.inner.delete(token), store_err)
            .await
    }
}

#[async_trait]
impl LinkStore for Crashing<dyn LinkStore> {
    async fn touch(
        &self,
        user: &UserId,
        device: &DeviceId,
        now: Millis,
        max: usize,
        stale_before: Millis,
    ) -> Result<LinkOutcome, StoreError> {
        self.plan
            .guard(
                "links.touch",
                || self.inner.touch(user, device, now, max, stale_before),
                store_err,
            )
            .await
    }
    async fn list(&self, user: &UserId) -> Result<Vec<LinkedDevice>, StoreError> {
        self.plan
            .guard("links.list", || self.inner.list(user), store_err)
            .await
    }
    async fn unlink(&self, user: &UserId, device: &DeviceId) -> Result<bool, StoreError> {
        self.plan
            .guard(
                "links.unlink",
                || self.inner.unlink(user, device),
                store_err,
            )
            .await
    }
}

#[async_trait]
impl Gateway for Crashing<dyn Gateway> {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        self.plan
            .guard(
                "gateway.post",
                || self.inner.post(connection, data),
                PostError::Unavailable,
            )
            .await
    }
    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        self.plan
            .guard(
                "gateway.get",
                || self.inner.get(connection),
                PostError::Unavailable,
            )
            .await
    }
    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError> {
        self.plan
            .guard(
                "gateway.delete",
                || self.inner.delete(connection),
                PostError::Unavailable,
            )
            .await
    }
}

#[async_trait]
impl CatchUpTrigger for Crashing<dyn CatchUpTrigger> {
    async fn trigger(&self, request: &CatchUpRequest) -> Result<(), TriggerError> {
        self.plan
            .guard(
                "trigger.trigger",
                || self.inner.trigger(request),
                TriggerError,
            )
            .await
    }
}

#[async_trait]
impl Notifier for Crashing<dyn Notifier> {
    async fn create_endpoint(
        &self,
        platform: Platform,
        token: &str,
        user: &UserId,
    ) -> Result<String, PushError> {
        self.plan
            .guard(
                "notifier.create_endpoint",
                || self.inner.create_endpoint(platform, token, user),
                PushError::Unavailable,
            )
            .await
    }
    async fn publish(&self, endpoint_arn: &str, message: &PushMessage) -> Result<(), PushError> {
        self.plan
            .guard(
                "notifier.publish",
                || self.inner.publish(endpoint_arn, message),
                PushError::Unavailable,
            )
            .await
    }
    async fn delete_endpoint(&self, endpoint_arn: &str) -> Result<(), PushError> {
        self.plan
            .guard(
                "notifier.delete_endpoint",
                || self.inner.delete_endpoint(endpoint_arn),
                PushError::Unavailable,
            )
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use courier_core::domain::now_millis;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn conn(s: &str) -> Connection {
        Connection {
            connection_id: ConnectionId::parse(s).unwrap(),
            connected_at: Some(now_millis()),
            device_id: Default::default(),
        }
    }

    #[tokio::test]
    async fn the_kth_call_crashes_its_invocation_and_every_later_call_of_it() {
        let (ports, h) = Ports::in_memory();
        let plan = CrashPlan::new(1, 0);
        let p = crashing_ports(&ports, &plan);
        plan.arm(2, false);
        let bob = user("bob");
        let r = plan
            .invocation(1, async {
                let a = p.registry.register(&bob, &conn("c1")).await;
                let b = p.registry.register(&bob, &conn("c2")).await;
                let c = p.registry.lookup(&bob).await;
                (a, b, c)
            })
            .await;
        assert!(r.0.is_ok());
        assert!(r.1.is_err(), "the 2nd call crashes");
        assert!(r.2.is_err(), "calls after the crash fail too");
        let held = h.registry.lookup(&bob).await.unwrap().pop().unwrap();
        assert_eq!(
            held.connection_id.as_str(),
            "c1",
            "the crashed write did nothing"
        );
        // A new invocation runs normally.
        let again = plan.invocation(1, p.registry.lookup(&bob)).await;
        assert!(again.is_ok());
        assert_eq!((plan.calls(), plan.crashes()), (4, 1));
    }

    #[tokio::test]
    async fn after_effect_crash_applies_the_call_then_fails() {
        let (ports, h) = Ports::in_memory();
        let plan = CrashPlan::new(1, 0);
        let p = crashing_ports(&ports, &plan);
        plan.arm(1, true);
        let bob = user("bob");
        let r = plan
            .invocation(7, p.registry.register(&bob, &conn("c1")))
            .await;
        assert!(r.is_err());
        assert!(!h.registry.lookup(&bob).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn arm_on_crashes_the_next_call_of_that_port_only() {
        let (ports, h) = Ports::in_memory();
        let plan = CrashPlan::new(1, 0);
        let p = crashing_ports(&ports, &plan);
        let bob = user("bob");

        // After its effect: calls of other ports pass, the named one takes
        // effect then fails, and the rest of the invocation fails.
        plan.arm_on("registry.register", true);
        let r = plan
            .invocation(1, async {
                let a = p.registry.lookup(&bob).await;
                let b = p.registry.register(&bob, &conn("c1")).await;
                let c = p.registry.lookup(&bob).await;
                (a, b, c)
            })
            .await;
        assert!(r.0.is_ok(), "another port method runs");
        assert!(r.1.is_err(), "the named call crashes");
        assert!(r.2.is_err(), "calls after the crash fail too");
        let held = h.registry.lookup(&bob).await.unwrap().pop().unwrap();
        assert_eq!(held.connection_id.as_str(), "c1", "it took effect");
        assert_eq!(plan.crashes(), 1);

        // Spent: the next invocation's call of that port runs.
        let again = plan
            .invocation(1, p.registry.register(&bob, &conn("c2")))
            .await;
        assert!(again.is_ok());
        assert_eq!(plan.crashes(), 1);

        // Before its effect: the named call does nothing.
        plan.arm_on("registry.register", false);
        let r = plan
            .invocation(2, p.registry.register(&bob, &conn("c3")))
            .await;
        assert!(r.is_err());
        let held = h.registry.lookup(&bob).await.unwrap().pop().unwrap();
        assert_eq!(
            held.connection_id.as_str(),
            "c2",
            "the crashed write did nothing"
        );
        assert_eq!(plan.crashes(), 2);
    }

    #[tokio::test]
    async fn a_crash_stays_inside_its_invocation() {
        let (ports, _h) = Ports::in_memory();
        let plan = CrashPlan::new(42, 3);
        let p = crashing_ports(&ports, &plan);
        plan.arm(1, false);
        let bob = user("bob");
        let (a, b) = futures::join!(
            plan.invocation(1, async {
                (
                    p.registry.lookup(&bob).await.is_ok(),
                    p.registry.lookup(&bob).await.is_ok(),
                )
            }),
            plan.invocation(2, async {
                // Yields long enough for invocation 1 to take the crash.
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                (
                    p.registry.lookup(&bob).await.is_ok(),
                    p.registry.lookup(&bob).await.is_ok(),
                )
            }),
        );
        assert_eq!(a, (false, false));
        assert_eq!(b, (true, true));
    }
}
