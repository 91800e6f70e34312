//! The reconnect flow (issue 2's "must show"), each scenario run twice: on
//! the in-memory adapters and on real Redis + DynamoDB (moto).
//!
//! Over 700 lines: one suite, the reconnect scenarios sharing one fixture and
//! one table of cases.
//!
//! The gateway is the in-memory one in both runs: it can open a connection
//! late (410 until `$connect` returns), swallow posts or never open, which is
//! what these scenarios need; the real API Gateway path is exercised through
//! the local gateway's end-to-end tests.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use courier_aws::dynamo::DynamoStore;
use courier_aws::redis::RedisRegistry;
use courier_core::adapters::memory::{MemoryGateway, MemoryNotifier, MemoryStore, MemoryTrigger};
use courier_core::app::{App, Ports, Settings};
use courier_core::config::{PendingClear, RegistryConfig};
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, DeviceId, Message,
    PendingDelivery, Seq, UserId, now_millis,
};
use courier_core::ports::{
    AckOutcome, AppendOutcome, CatchUpRequest, NewMessage, PendingStore, StoreError,
};
use courier_core::protocol::{AckItem, ErrorCode, ServerFrame};
use courier_core::services::catch_up::{self, Ending};
use courier_core::services::{ack, connect};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    Real,
}

struct Fixture {
    app: App,
    gateway: MemoryGateway,
    trigger: MemoryTrigger,
    expire: Expire,
}

/// How a scenario plays DynamoDB's TTL under `MESSAGE_RETENTION_DAYS`.
enum Expire {
    Memory(MemoryStore),
    Dynamo(aws_sdk_dynamodb::Client, String),
}

impl Fixture {
    /// Deletes `conversation`'s messages through `through`, as the TTL does
    /// (oldest first).
    async fn expire_through(&self, conversation: &ConversationId, through: u64) {
        match &self.expire {
            Expire::Memory(store) => {
                store.expire_through(conversation, Seq(through));
            }
            Expire::Dynamo(client, table) => {
                for seq in 1..=through {
                    client
                        .delete_item()
                        .table_name(table)
                        .key(
                            "conversation_id",
                            AttributeValue::S(conversation.to_string()),
                        )
                        .key("seq", AttributeValue::N(seq.to_string()))
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    }
}

fn settings(mode: PendingClear) -> Settings {
    let mut s = Settings::default();
    s.delivery.pending_clear = mode;
    s.delivery.open_window = Duration::from_millis(1500);
    s.delivery.open_retry_base = Duration::from_millis(10);
    s
}

async fn fixture(backend: Backend, settings: Settings) -> Fixture {
    let gateway = MemoryGateway::new();
    let trigger = MemoryTrigger::new();
    let notifier = MemoryNotifier::new();
    let (ports, expire) = match backend {
        Backend::Memory => {
            let (mut ports, handles) = Ports::in_memory();
            ports.gateway = Arc::new(gateway.clone());
            ports.trigger = Arc::new(trigger.clone());
            (ports, Expire::Memory(handles.store))
        }
        Backend::Real => {
            let tables = courier_tests::fresh_tables().await;
            let client = courier_tests::dynamo_client().await;
            let expire = Expire::Dynamo(client.clone(), tables.messages.clone());
            let store = Arc::new(DynamoStore::new(client, tables));
            let registry =
                RedisRegistry::new(RegistryConfig::new(courier_tests::redis_url().await)).unwrap();
            let ports = Ports::unwired()
                .with_store(store)
                .with_registry(Arc::new(registry))
                .with_gateway(Arc::new(gateway.clone()))
                .with_trigger(Arc::new(trigger.clone()))
                .with_notifier(Arc::new(notifier));
            (ports, expire)
        }
    };
    Fixture {
        app: App::new(ports, settings),
        gateway,
        trigger,
        expire,
    }
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn cid(s: &str) -> ConversationId {
    ConversationId::parse(s).unwrap()
}

/// A user id unique to this test run, so scenarios sharing one Redis never
/// see each other's registry entries.
fn unique(name: &str) -> UserId {
    uid(&format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
}

async fn create(app: &App, id: &ConversationId, members: &[&UserId]) {
    let conv = Conversation {
        conversation_id: id.clone(),
        members: members.iter().map(|m| (*m).clone()).collect(),
        last_seq: Seq::ZERO,
        created_at: now_millis(),
    };
    assert!(app.ports.conversations.create(&conv).await.unwrap());
}

/// Appends one message at the conversation's next seq, as the send path's
/// transaction does.
async fn append(
    app: &App,
    id: &ConversationId,
    sender: &UserId,
    body: &str,
    pending_for: &[&UserId],
) -> Seq {
    loop {
        let conv = app.ports.conversations.get(id).await.unwrap().unwrap();
        let seq = conv.last_seq.next();
        let new = NewMessage {
            message: Message {
                conversation_id: id.clone(),
                seq,
                message_id: uuid::Uuid::new_v4().to_string(),
                client_msg_id: ClientMsgId::parse(&uuid::Uuid::new_v4().simple().to_string())
                    .unwrap(),
                sender_id: sender.clone(),
                body: body.to_owned(),
                sent_at: now_millis(),
            },
            pending_for: pending_for.iter().map(|u| (*u).clone()).collect(),
            idempotency_expires_at: now_millis() / 1000 + 3600,
            message_expires_at: None,
        };
        match app.ports.messages.append(&new).await.unwrap() {
            AppendOutcome::Stored => return seq,
            AppendOutcome::SeqConflict => continue,
            // This very attempt landed, but its answer was lost and the
            // SDK's retry found the message (moto under the full suite's
            // load): as the send path does, take the stored message.
            AppendOutcome::Duplicate(stored) => return stored.seq,
            other => panic!("append refused: {other:?}"),
        }
    }
}

/// The seed's story: alice wrote 42..44 in `abc` and carol 17..19 in `def`
/// while bob was away; bob's pending rows say 42 and 17.
struct Story {
    bob: UserId,
    abc: ConversationId,
    def: ConversationId,
}

async fn seed_story(app: &App) -> Story {
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let abc = cid(&format!("conv_abc123-{suffix}"));
    let def = cid(&format!("conv_def456-{suffix}"));
    create(app, &abc, &[&alice, &bob]).await;
    create(app, &def, &[&carol, &bob]).await;
    // Earlier history bob already has: no pending rows.
    for i in 1..=41 {
        append(app, &abc, &alice, &format!("old {i}"), &[]).await;
    }
    for i in 1..=16 {
        append(app, &def, &carol, &format!("old {i}"), &[]).await;
    }
    for body in ["hey", "where are you?", "hello??"] {
        append(app, &abc, &alice, body, &[&bob]).await;
    }
    for body in ["lunch?", "at noon", "ok?"] {
        append(app, &def, &carol, body, &[&bob]).await;
    }
    Story { bob, abc, def }
}

/// Bob acks the story's last seqs: 44 in abc, 19 in def.
async fn ack_story(app: &App, s: &Story) -> ack::AckReport {
    let acks = [
        AckItem {
            conversation_id: s.abc.clone(),
            seq: Seq(44),
        },
        AckItem {
            conversation_id: s.def.clone(),
            seq: Seq(19),
        },
    ];
    ack::ack(app, &s.bob, &Default::default(), &acks)
        .await
        .unwrap()
        .done()
        .unwrap()
}

fn conn(id: &str, connected_at: i64) -> Connection {
    Connection {
        connection_id: ConnectionId::parse(&format!(
            "{id}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))
        .unwrap(),
        connected_at: Some(connected_at),
        device_id: DeviceId::default(),
    }
}

fn request(user: &UserId, c: &Connection) -> CatchUpRequest {
    CatchUpRequest {
        user_id: user.clone(),
        connection_id: c.connection_id.clone(),
        connected_at: c.connected_at,
        device_id: Default::default(),
        open_conversation: None,
        device_limit: None,
        origin: Default::default(),
        correlation_id: None,
    }
}

fn parse(frames: &[String]) -> Vec<ServerFrame> {
    frames
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect()
}

/// Per conversation, the seqs in the order they arrived.
fn seqs_by_conversation(frames: &[ServerFrame]) -> BTreeMap<ConversationId, Vec<u64>> {
    let mut out: BTreeMap<ConversationId, Vec<u64>> = BTreeMap::new();
    for f in frames {
        if let ServerFrame::Messages {
            conversation_id,
            messages,
        } = f
        {
            out.entry(conversation_id.clone())
                .or_default()
                .extend(messages.iter().map(|m| m.seq.get()));
        }
    }
    out
}

async fn rows(app: &App, user: &UserId) -> Vec<PendingDelivery> {
    app.ports.pending.list(user).await.unwrap()
}

async fn story_delivers_everything_in_order(backend: Backend, mode: PendingClear) {
    let f = fixture(backend, settings(mode)).await;
    let s = seed_story(&f.app).await;
    let c = conn("bob-conn", now_millis());
    let correlation_id = courier_core::domain::CorrelationId::new();
    connect::connect(&f.app, &s.bob, &c, None, correlation_id.clone()).await;
    assert_eq!(
        f.app.ports.registry.lookup(&s.bob).await.unwrap(),
        vec![c.clone()]
    );
    let triggered = f.trigger.requests();
    let expected = CatchUpRequest {
        correlation_id: Some(correlation_id),
        ..request(&s.bob, &c)
    };
    assert_eq!(triggered, vec![expected]);

    f.gateway.open(&c.connection_id);
    let report = catch_up::catch_up(&f.app, &triggered[0], None, None)
        .await
        .unwrap();
    assert_eq!(report.ending, Ending::CaughtUp);
    assert_eq!((report.conversations, report.messages), (2, 6));

    let frames = parse(&f.gateway.frames(&c.connection_id));
    let by_conv = seqs_by_conversation(&frames);
    assert_eq!(by_conv[&s.abc], vec![42, 43, 44]);
    assert_eq!(by_conv[&s.def], vec![17, 18, 19]);
    assert_eq!(
        frames.last().unwrap(),
        &ServerFrame::CaughtUp {
            conversations: 2,
            messages: 6,
            unreached: 0,
            request_id: None
        }
    );
    let bodies: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Messages {
                conversation_id,
                messages,
            } if conversation_id == &s.abc => {
                Some(messages.iter().map(|m| m.body.clone()).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(bodies, ["hey", "where are you?", "hello??"]);

    match mode {
        PendingClear::Ack => {
            assert_eq!(
                rows(&f.app, &s.bob).await.len(),
                2,
                "ack mode keeps rows until acked"
            );
            let r = ack_story(&f.app, &s).await;
            assert!(r.refused.is_empty());
            assert!(r.outcomes.iter().all(|(_, o)| *o == AckOutcome::Cleared));
            assert!(rows(&f.app, &s.bob).await.is_empty());
        }
        PendingClear::Post => {
            assert!(
                rows(&f.app, &s.bob).await.is_empty(),
                "post mode clears rows after posting"
            );
        }
    }
}

/// Retention deleted abc's seqs 1–42 while bob was away (his row says 42):
/// catch-up tells him history starts at 43, before abc's messages; his ack
/// of 44 clears the row, and a range sync from the start says the same.
async fn retention_says_where_history_starts(backend: Backend, mode: PendingClear) {
    let f = fixture(backend, settings(mode)).await;
    let s = seed_story(&f.app).await;
    f.expire_through(&s.abc, 42).await;
    let c = conn("bob-conn", now_millis());
    f.gateway.open(&c.connection_id);
    let report = catch_up::catch_up(&f.app, &request(&s.bob, &c), None, None)
        .await
        .unwrap();
    assert_eq!((report.ending, report.messages), (Ending::CaughtUp, 5));
    let frames = parse(&f.gateway.frames(&c.connection_id));
    let abc: Vec<&ServerFrame> = frames
        .iter()
        .filter(|f| {
            matches!(f, ServerFrame::HistoryStarts { conversation_id, .. }
                | ServerFrame::Messages { conversation_id, .. } if conversation_id == &s.abc)
        })
        .collect();
    assert_eq!(
        abc[0],
        &ServerFrame::HistoryStarts {
            conversation_id: s.abc.clone(),
            first_available_seq: Seq(43),
            request_id: None,
        }
    );
    let by_conv = seqs_by_conversation(&frames);
    assert_eq!(by_conv[&s.abc], vec![43, 44]);
    assert_eq!(by_conv[&s.def], vec![17, 18, 19]);
    let told = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::HistoryStarts { .. }))
        .count();
    assert_eq!(told, 1, "def lost nothing: {frames:?}");
    if mode == PendingClear::Ack {
        ack_story(&f.app, &s).await;
    }
    assert!(rows(&f.app, &s.bob).await.is_empty());

    let before = f.gateway.frames(&c.connection_id).len();
    catch_up::sync_range(
        &f.app,
        &s.bob,
        &c,
        &s.abc,
        Seq::ZERO,
        None,
        Some("r1".into()),
    )
    .await
    .unwrap();
    let frames = parse(&f.gateway.frames(&c.connection_id)[before..]);
    assert_eq!(
        frames[0],
        ServerFrame::HistoryStarts {
            conversation_id: s.abc.clone(),
            first_available_seq: Seq(43),
            request_id: Some("r1".into()),
        }
    );
    assert_eq!(seqs_by_conversation(&frames)[&s.abc], vec![43, 44]);
    assert!(matches!(
        frames.last().unwrap(),
        ServerFrame::Synced {
            through_seq: Seq(44),
            ..
        }
    ));
}

/// A pending store that lets a send land right after catch-up read the rows:
/// the message the race is about.
struct SendAfterList {
    inner: Arc<dyn PendingStore>,
    app: std::sync::Mutex<Option<(App, ConversationId, UserId, UserId)>>,
}

#[async_trait]
impl PendingStore for SendAfterList {
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        let rows = self.inner.list(user).await?;
        let once = self.app.lock().unwrap().take();
        if let Some((app, conv, sender, recipient)) = once {
            append(&app, &conv, &sender, "sent during catch-up", &[&recipient]).await;
        }
        Ok(rows)
    }
    async fn get(
        &self,
        u: &UserId,
        c: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        self.inner.get(u, c).await
    }
    async fn record(&self, u: &UserId, c: &ConversationId, s: Seq) -> Result<(), StoreError> {
        self.inner.record(u, c, s).await
    }
    async fn ack(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        s: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.inner.ack(u, d, c, s, linked).await
    }
    async fn settle_posted(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.inner
            .settle_posted(u, d, c, from, through, linked)
            .await
    }
}

async fn message_after_pending_read_is_not_wiped(backend: Backend, mode: PendingClear) {
    let f = fixture(backend, settings(mode)).await;
    let s = seed_story(&f.app).await;
    let alice = f
        .app
        .ports
        .conversations
        .get(&s.abc)
        .await
        .unwrap()
        .unwrap()
        .members[0]
        .clone();
    let racing = Arc::new(SendAfterList {
        inner: f.app.ports.pending.clone(),
        app: std::sync::Mutex::new(Some((f.app.clone(), s.abc.clone(), alice, s.bob.clone()))),
    });
    let mut app = f.app.clone();
    app.ports.pending = racing;

    let c = conn("bob-conn", now_millis());
    f.gateway.open(&c.connection_id);
    let report = catch_up::catch_up(&app, &request(&s.bob, &c), None, None)
        .await
        .unwrap();
    assert_eq!(report.ending, Ending::CaughtUp);
    let delivered = seqs_by_conversation(&parse(&f.gateway.frames(&c.connection_id)));
    let row = f.app.ports.pending.get(&s.bob, &s.abc).await.unwrap();
    match mode {
        PendingClear::Ack => {
            // Catch-up never deletes in ack mode: the row now covers 45.
            let row = row.expect("row survives");
            assert_eq!(row.last_seq, Seq(45));
            // bob acks what he saw of the story; 45 stays pending unless he saw it.
            let seen = *delivered[&s.abc].last().unwrap();
            ack::ack(
                &f.app,
                &s.bob,
                &Default::default(),
                &[AckItem {
                    conversation_id: s.abc.clone(),
                    seq: Seq(44),
                }],
            )
            .await
            .unwrap()
            .done()
            .unwrap();
            let row = f
                .app
                .ports
                .pending
                .get(&s.bob, &s.abc)
                .await
                .unwrap()
                .expect("45 still pending");
            assert_eq!(
                (row.start_for(&DeviceId::default()), row.last_seq),
                (Seq(45), Seq(45))
            );
            assert!(seen >= 44);
        }
        PendingClear::Post => {
            // The conditional delete saw last_seq move: 45 was delivered
            // before the row went, never wiped undelivered.
            assert_eq!(delivered[&s.abc], vec![42, 43, 44, 45]);
            assert_eq!(row, None);
        }
    }
}

async fn ack_moves_cursor_up_only(backend: Backend) {
    let f = fixture(backend, settings(PendingClear::Ack)).await;
    let s = seed_story(&f.app).await;
    let a = |seq| {
        [AckItem {
            conversation_id: s.abc.clone(),
            seq: Seq(seq),
        }]
    };

    let r = ack::ack(&f.app, &s.bob, &Default::default(), &a(42))
        .await
        .unwrap()
        .done()
        .unwrap();
    assert_eq!(r.outcomes, vec![(s.abc.clone(), AckOutcome::Advanced)]);
    let row = f
        .app
        .ports
        .pending
        .get(&s.bob, &s.abc)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.start_for(&DeviceId::default()), row.last_seq),
        (Seq(43), Seq(44))
    );

    // A stale (lower) ack never moves the cursor down.
    let r = ack::ack(&f.app, &s.bob, &Default::default(), &a(41))
        .await
        .unwrap()
        .done()
        .unwrap();
    assert_eq!(r.outcomes, vec![(s.abc.clone(), AckOutcome::Stale)]);
    let row = f
        .app
        .ports
        .pending
        .get(&s.bob, &s.abc)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.start_for(&DeviceId::default()), Seq(43));

    let r = ack::ack(&f.app, &s.bob, &Default::default(), &a(44))
        .await
        .unwrap()
        .done()
        .unwrap();
    assert_eq!(r.outcomes, vec![(s.abc.clone(), AckOutcome::Cleared)]);
    // Acking again, after the row is gone, is harmless.
    let r = ack::ack(&f.app, &s.bob, &Default::default(), &a(44))
        .await
        .unwrap()
        .done()
        .unwrap();
    assert_eq!(r.outcomes, vec![(s.abc.clone(), AckOutcome::Stale)]);
    assert!(r.reply(None).is_none());
    // The other conversation was not touched.
    assert!(
        f.app
            .ports
            .pending
            .get(&s.bob, &s.def)
            .await
            .unwrap()
            .is_some()
    );

    // Beyond the end, or where bob is not a member: refused with an error frame.
    let r = ack::ack(&f.app, &s.bob, &Default::default(), &a(99))
        .await
        .unwrap()
        .done()
        .unwrap();
    assert_eq!(r.refused.len(), 1);
    let mallory = unique("mallory");
    let r = ack::ack(&f.app, &mallory, &Default::default(), &a(44))
        .await
        .unwrap()
        .done()
        .unwrap();
    assert!(matches!(
        r.reply(Some("r1".into())),
        Some(ServerFrame::Error {
            code: courier_core::protocol::ErrorCode::NotAMember,
            request_id: Some(_),
            ..
        })
    ));
}

async fn ack_sends_receipts_to_online_members(backend: Backend) {
    let f = fixture(backend, settings(PendingClear::Ack)).await;
    let s = seed_story(&f.app).await;
    let alice = f
        .app
        .ports
        .conversations
        .get(&s.abc)
        .await
        .unwrap()
        .unwrap()
        .members[0]
        .clone();
    let alice_conn = conn("alice-conn", now_millis());
    f.app
        .ports
        .registry
        .register(&alice, &alice_conn)
        .await
        .unwrap();
    f.gateway.open(&alice_conn.connection_id);

    ack::ack(
        &f.app,
        &s.bob,
        &Default::default(),
        &[AckItem {
            conversation_id: s.abc.clone(),
            seq: Seq(44),
        }],
    )
    .await
    .unwrap()
    .done()
    .unwrap();
    assert_eq!(
        parse(&f.gateway.frames(&alice_conn.connection_id)),
        vec![ServerFrame::Receipt {
            conversation_id: s.abc.clone(),
            user_id: s.bob.clone(),
            delivered_through_seq: Seq(44),
        }]
    );
    // A stale ack moves nothing, so it sends no receipt.
    ack::ack(
        &f.app,
        &s.bob,
        &Default::default(),
        &[AckItem {
            conversation_id: s.abc.clone(),
            seq: Seq(43),
        }],
    )
    .await
    .unwrap()
    .done()
    .unwrap();
    assert_eq!(f.gateway.frames(&alice_conn.connection_id).len(), 1);
}

async fn gone_for_a_while_after_connect_then_delivered(backend: Backend) {
    let f = fixture(backend, settings(PendingClear::Ack)).await;
    let s = seed_story(&f.app).await;
    let c = conn("bob-conn", now_millis());
    connect::connect(
        &f.app,
        &s.bob,
        &c,
        None,
        courier_core::domain::CorrelationId::new(),
    )
    .await;
    // `$connect` has not returned yet: 410 for the next 300 ms.
    f.gateway
        .open_after(&c.connection_id, Duration::from_millis(300));
    let report = catch_up::catch_up(&f.app, &request(&s.bob, &c), None, None)
        .await
        .unwrap();
    assert_eq!(report.ending, Ending::CaughtUp);
    let by_conv = seqs_by_conversation(&parse(&f.gateway.frames(&c.connection_id)));
    assert_eq!(by_conv[&s.abc], vec![42, 43, 44]);
    assert_eq!(by_conv[&s.def], vec![17, 18, 19]);
    assert_eq!(f.app.ports.registry.lookup(&s.bob).await.unwrap(), vec![c]);
}

async fn gone_past_window_keeps_pending_and_newer_connection(backend: Backend, mode: PendingClear) {
    let f = fixture(backend, settings(mode)).await;
    let s = seed_story(&f.app).await;
    // Opened long ago and never reachable: 410 means gone.
    let dead = conn("dead", now_millis() - 60_000);
    connect::connect(
        &f.app,
        &s.bob,
        &dead,
        None,
        courier_core::domain::CorrelationId::new(),
    )
    .await;
    let started = Instant::now();
    let report = catch_up::catch_up(&f.app, &request(&s.bob, &dead), None, None)
        .await
        .unwrap();
    assert_eq!(report.ending, Ending::Gone);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no retries past the window"
    );
    assert_eq!(rows(&f.app, &s.bob).await.len(), 2, "nothing deleted");
    assert_eq!(
        f.app.ports.registry.lookup(&s.bob).await.unwrap(),
        vec![],
        "dead entry removed"
    );

    // A late catch-up for the dead connection must not remove a newer one.
    let newer = conn("newer", now_millis());
    f.app.ports.registry.register(&s.bob, &newer).await.unwrap();
    let report = catch_up::catch_up(&f.app, &request(&s.bob, &dead), None, None)
        .await
        .unwrap();
    assert_eq!(report.ending, Ending::Gone);
    assert_eq!(
        f.app.ports.registry.lookup(&s.bob).await.unwrap(),
        vec![newer]
    );
    assert_eq!(rows(&f.app, &s.bob).await.len(), 2);
}

async fn two_catch_ups_at_once(backend: Backend, mode: PendingClear) {
    let f = fixture(backend, settings(mode)).await;
    let s = seed_story(&f.app).await;
    let c = conn("bob-conn", now_millis());
    f.gateway.open(&c.connection_id);
    let req = request(&s.bob, &c);
    let (a, b) = tokio::join!(
        catch_up::catch_up(&f.app, &req, None, None),
        catch_up::catch_up(&f.app, &req, None, None)
    );
    assert_eq!(a.unwrap().ending, Ending::CaughtUp);
    assert_eq!(b.unwrap().ending, Ending::CaughtUp);
    // Every message arrived; duplicates only as seq-droppable repeats, and
    // each repeat in order: dedup by seq leaves exactly the story.
    let by_conv = seqs_by_conversation(&parse(&f.gateway.frames(&c.connection_id)));
    for (conv, want) in [(&s.abc, vec![42, 43, 44]), (&s.def, vec![17, 18, 19])] {
        let mut got = by_conv[conv].clone();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, want);
    }
    match mode {
        PendingClear::Ack => assert_eq!(rows(&f.app, &s.bob).await.len(), 2, "no row lost"),
        PendingClear::Post => assert!(rows(&f.app, &s.bob).await.is_empty()),
    }
}

/// 300 messages of ~8 KB: 2.4 MB, more than two DynamoDB query pages, and
/// more than the per-conversation cap of 120.
async fn large_backlog_is_paged_capped_and_complete(backend: Backend) {
    let mut st = settings(PendingClear::Ack);
    st.catch_up.per_conversation_cap = 120;
    let f = fixture(backend, st).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let conv = cid(&format!(
        "big-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    create(&f.app, &conv, &[&alice, &bob]).await;
    let body = "x".repeat(8 * 1024);
    for _ in 0..300 {
        append(&f.app, &conv, &alice, &body, &[&bob]).await;
    }
    let c = conn("bob-conn", now_millis());
    f.gateway.open(&c.connection_id);
    let report = catch_up::catch_up(&f.app, &request(&bob, &c), None, None)
        .await
        .unwrap();
    assert_eq!((report.messages, report.more), (120, 1));
    let frames = f.gateway.frames(&c.connection_id);
    assert!(
        frames.iter().all(|fr| fr.len() <= 32 * 1024),
        "frames stay within 32 KB"
    );
    let parsed = parse(&frames);
    let mut got = seqs_by_conversation(&parsed)[&conv].clone();
    assert_eq!(got, (1..=120).collect::<Vec<_>>());
    let next = parsed
        .iter()
        .find_map(|f| match f {
            ServerFrame::More { next_seq, .. } => Some(*next_seq),
            _ => None,
        })
        .expect("a more frame");
    assert_eq!(next, Seq(121));
    assert!(matches!(
        parsed.last(),
        Some(ServerFrame::CaughtUp { messages: 120, .. })
    ));

    // The client follows `more` with range syncs until `synced`.
    let mut after = Seq(120);
    loop {
        let before = f.gateway.frames(&c.connection_id).len();
        let r = catch_up::sync_range(&f.app, &bob, &c, &conv, after, Some(100), Some("r".into()))
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(r.ending, Ending::CaughtUp);
        let new = parse(&f.gateway.frames(&c.connection_id)[before..]);
        got.extend(
            seqs_by_conversation(&new)
                .get(&conv)
                .cloned()
                .unwrap_or_default(),
        );
        match new.last().unwrap() {
            ServerFrame::More {
                next_seq,
                request_id,
                ..
            } => {
                assert_eq!(request_id.as_deref(), Some("r"));
                after = Seq(next_seq.get() - 1);
            }
            ServerFrame::Synced { through_seq, .. } => {
                assert_eq!(*through_seq, Seq(300));
                break;
            }
            other => panic!("unexpected last frame {other:?}"),
        }
    }
    assert_eq!(
        got,
        (1..=300).collect::<Vec<_>>(),
        "nothing skipped, nothing repeated"
    );
}

#[tokio::test]
async fn range_sync_refuses_non_members_and_unknown_conversations() {
    let f = fixture(Backend::Real, settings(PendingClear::Ack)).await;
    let s = seed_story(&f.app).await;
    let c = conn("m", now_millis());
    f.gateway.open(&c.connection_id);
    let mallory = unique("mallory");
    let r = catch_up::sync_range(&f.app, &mallory, &c, &s.abc, Seq(0), None, None)
        .await
        .unwrap();
    assert_eq!(r.refused().unwrap().code, ErrorCode::NotAMember);
    let r = catch_up::sync_range(&f.app, &s.bob, &c, &cid("nope-nope"), Seq(0), None, None)
        .await
        .unwrap();
    assert_eq!(r.refused().unwrap().code, ErrorCode::ConversationNotFound);
    assert!(
        f.gateway.frames(&c.connection_id).is_empty(),
        "nothing leaked"
    );
}

async fn deadline_counts_remaining_work_in_caught_up(backend: Backend) {
    let f = fixture(backend, settings(PendingClear::Ack)).await;
    let s = seed_story(&f.app).await;
    let c = conn("bob-conn", now_millis());
    f.gateway.open(&c.connection_id);
    // The invocation is already within its margin of the deadline.
    let deadline = Instant::now() + Duration::from_millis(100);
    let report = catch_up::catch_up(&f.app, &request(&s.bob, &c), Some(deadline), None)
        .await
        .unwrap();
    assert_eq!((report.messages, report.unreached), (0, 2));
    // One frame whatever the number not reached: `caught_up`, counting
    // them, so the client syncs again; the rows wait for that catch-up.
    let frames = parse(&f.gateway.frames(&c.connection_id));
    assert_eq!(
        frames,
        [ServerFrame::CaughtUp {
            conversations: 2,
            messages: 0,
            unreached: 2,
            request_id: None,
        }]
    );
    assert_eq!(rows(&f.app, &s.bob).await.len(), 2);
    let again = catch_up::catch_up(&f.app, &request(&s.bob, &c), None, None)
        .await
        .unwrap();
    assert_eq!((again.messages, again.unreached), (6, 0));
}

/// Redis unreachable: connect still answers, catch-up still runs.
#[tokio::test]
async fn redis_unreachable_connect_succeeds_and_catch_up_runs() {
    let mut f = fixture(Backend::Real, settings(PendingClear::Ack)).await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = RegistryConfig::new(format!("redis://127.0.0.1:{port}"));
    cfg.timeout = Duration::from_millis(200);
    f.app.ports.registry = Arc::new(RedisRegistry::new(cfg).unwrap());
    let s = seed_story(&f.app).await;
    let c = conn("bob-conn", now_millis());
    let started = Instant::now();
    let r = connect::connect(
        &f.app,
        &s.bob,
        &c,
        None,
        courier_core::domain::CorrelationId::new(),
    )
    .await;
    assert!(!r.registered);
    assert!(r.catch_up_triggered);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connect does not stall on Redis"
    );

    f.gateway.open(&c.connection_id);
    let report = catch_up::catch_up(&f.app, &f.trigger.requests()[0], None, None)
        .await
        .unwrap();
    assert_eq!((report.ending, report.messages), (Ending::CaughtUp, 6));
    // Live delivery falls back to "offline" rather than failing.
    let live = courier_core::services::delivery::deliver_live(
        &f.app.ports,
        &f.app.settings.delivery,
        &s.bob,
        &["x".into()],
        None,
    )
    .await;
    assert_eq!(
        live.summary(),
        courier_core::services::delivery::Live::RegistryUnavailable
    );
}

// ---- the matrix ------------------------------------------------------------

macro_rules! backend {
    (memory) => {
        crate::Backend::Memory
    };
    (real) => {
        crate::Backend::Real
    };
}

macro_rules! mode {
    (ack_mode) => {
        crate::PendingClear::Ack
    };
    (post_mode) => {
        crate::PendingClear::Post
    };
}

/// One line per scenario, listing the cases it runs: `scenario [backends]`
/// for a scenario of `(backend)`, `scenario { mode: [backends], .. }` for one
/// of `(backend, mode)`. Each case is a `#[tokio::test]` named
/// `scenario::backend` or `scenario::mode::backend`.
macro_rules! matrix {
    ($($scenario:ident $cases:tt;)*) => {
        $(matrix!(@scenario $scenario $cases);)*
    };
    (@scenario $scenario:ident [$($backend:ident),+ $(,)?]) => {
        mod $scenario {
            $(
                #[tokio::test]
                async fn $backend() {
                    crate::$scenario(backend!($backend)).await;
                }
            )+
        }
    };
    (@scenario $scenario:ident { $($mode:ident: [$($backend:ident),+ $(,)?]),+ $(,)? }) => {
        mod $scenario {
            $(
                mod $mode {
                    $(
                        #[tokio::test]
                        async fn $backend() {
                            crate::$scenario(backend!($backend), mode!($mode)).await;
                        }
                    )+
                }
            )+
        }
    };
}

matrix! {
    story_delivers_everything_in_order { ack_mode: [memory, real], post_mode: [memory, real] };
    message_after_pending_read_is_not_wiped { ack_mode: [memory, real], post_mode: [memory, real] };
    ack_moves_cursor_up_only [memory, real];
    ack_sends_receipts_to_online_members [memory, real];
    gone_for_a_while_after_connect_then_delivered [memory, real];
    gone_past_window_keeps_pending_and_newer_connection { ack_mode: [memory, real], post_mode: [real] };
    two_catch_ups_at_once { ack_mode: [memory, real], post_mode: [real] };
    large_backlog_is_paged_capped_and_complete [memory, real];
    deadline_counts_remaining_work_in_caught_up [memory, real];
    retention_says_where_history_starts { ack_mode: [memory, real], post_mode: [memory, real] };
}
