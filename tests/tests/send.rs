//! The send side (issue 3's "must show") on real Redis, DynamoDB and SNS
//! (moto): gap-free seqs under concurrency, idempotent sends across fresh
//! starts, crash recovery by the client's retry, live delivery versus
//! pending rows and pushes, the 410 rule, the connect race, client mistakes,
//! push previews, endpoint cleanup, conversations and devices.
//!
//! Over 700 lines: one suite, the send scenarios sharing one `World` on real
//! Redis, DynamoDB and SNS.
//!
//! Live delivery goes to the in-memory gateway (moto's `@connections` never
//! answers 410, and the in-memory one can open a connection late or lose
//! it); the API Gateway path itself is covered through the local gateway.
//! Everything else is real: a "fresh App" builds new DynamoDB, Redis and SNS
//! clients over the same tables, as a new Lambda execution environment does.
//! Pushes go to moto's SNS through the real notifier; the tests note which
//! ones SNS accepted (see `Accepted`).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::encodings::Body;
use courier_aws::dynamo::DynamoStore;
use courier_aws::redis::RedisRegistry;
use courier_aws::sns::{GENERIC_ALERT, PushPayload, SnsNotifier};
use courier_aws::wiring::AwsEndpoints;
use courier_core::adapters::memory::{MemoryGateway, MemoryTrigger};
use courier_core::app::{App, Ports, Settings};
use courier_core::config::{PendingClear, PushConfig, PushPreview, RegistryConfig, TableNames};
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, ConversationId, DeviceId, Message, PendingDelivery,
    Platform, Seq, UserId, now_millis,
};
use courier_core::ports::{
    AckOutcome, ConnectionInfo, ConnectionRegistry, Gateway, Notifier, PendingStore, PostError,
    PushError, PushMessage, StoreError,
};
use courier_core::protocol::{ErrorCode, ServerFrame};
use courier_core::services::send::{SendError, send_message};
use courier_core::services::{catch_up, connect, conversations, devices};
use courier_tests::crash::{CrashPlan, crashing_ports};
use serde_json::Value;

/// One test's world: fresh tables, unique users (Redis is shared), SNS
/// platform applications, and the in-memory gateway.
struct World {
    tables: TableNames,
    push: PushConfig,
    sns: aws_sdk_sns::Client,
    sns_endpoint: String,
    /// Every push tried, by endpoint, and whether SNS accepted it,
    /// whichever App sent it.
    accepted: PushLog,
    settings: Settings,
    gateway: MemoryGateway,
    trigger: MemoryTrigger,
    conv: ConversationId,
    alice: UserId,
    bob: UserId,
    carol: UserId,
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::parse(s).unwrap()
}

async fn platform_app(client: &aws_sdk_sns::Client, platform: &str) -> String {
    let mut req = client
        .create_platform_application()
        .name(unique("courier"))
        .platform(platform)
        .attributes("PlatformCredential", "not-a-real-credential");
    if platform.starts_with("APNS") {
        req = req.attributes("PlatformPrincipal", "not-a-real-certificate");
    }
    req.send()
        .await
        .unwrap()
        .platform_application_arn()
        .unwrap()
        .to_owned()
}

impl World {
    /// alice, bob and carol in one conversation (created through the
    /// service); no devices yet.
    async fn new(mode: PendingClear, preview: PushPreview) -> World {
        let sns_endpoint = courier_tests::sns_endpoint().await;
        let aws = support::aws_with(AwsEndpoints {
            sns: Some(sns_endpoint.clone()),
            ..AwsEndpoints::default()
        })
        .await;
        let sns = aws.sns();
        let push = PushConfig {
            preview,
            apns_app_arn: Some(platform_app(&sns, "APNS").await),
            apns_sandbox_app_arn: None,
            fcm_app_arn: Some(platform_app(&sns, "GCM").await),
        };
        let mut settings = Settings::default();
        settings.delivery.pending_clear = mode;
        settings.delivery.open_window = Duration::from_millis(1500);
        settings.delivery.open_retry_base = Duration::from_millis(10);
        settings.push = push.clone();
        let mut w = World {
            tables: courier_tests::fresh_tables().await,
            push,
            sns,
            sns_endpoint,
            accepted: Arc::default(),
            settings,
            gateway: MemoryGateway::new(),
            trigger: MemoryTrigger::new(),
            conv: ConversationId::parse("placeholder").unwrap(),
            alice: uid(&unique("alice")),
            bob: uid(&unique("bob")),
            carol: uid(&unique("carol")),
        };
        let app = w.app().await;
        let created = conversations::create_conversation(
            &app,
            &w.alice,
            &[w.bob.clone(), w.carol.clone()],
            None,
        )
        .await
        .unwrap()
        .into_frame();
        let ServerFrame::Conversation {
            conversation_id, ..
        } = created
        else {
            panic!("not created: {created:?}")
        };
        w.conv = conversation_id;
        w
    }

    /// Real adapters built anew over this world's tables, Redis and SNS —
    /// what a fresh Lambda execution environment would build.
    async fn ports(&self) -> Ports {
        let store = Arc::new(DynamoStore::new(
            courier_tests::dynamo_client().await,
            self.tables.clone(),
        ));
        let registry =
            RedisRegistry::new(RegistryConfig::new(courier_tests::redis_url().await)).unwrap();
        let aws = support::aws_with(AwsEndpoints {
            sns: Some(self.sns_endpoint.clone()),
            ..AwsEndpoints::default()
        })
        .await;
        Ports::unwired()
            .with_store(store)
            .with_registry(Arc::new(registry))
            .with_gateway(Arc::new(self.gateway.clone()))
            .with_trigger(Arc::new(self.trigger.clone()))
            .with_notifier(Arc::new(Accepted {
                sns: SnsNotifier::new(aws.sns(), self.push.clone()),
                log: Arc::clone(&self.accepted),
            }))
    }

    async fn app(&self) -> App {
        App::new(self.ports().await, self.settings.clone())
    }

    /// bob on FCM, carol on APNs, registered through the service.
    async fn register_devices(&self) {
        let app = self.app().await;
        for (user, platform) in [(&self.bob, Platform::Fcm), (&self.carol, Platform::Apns)] {
            let f = devices::register_device(
                &app,
                user,
                &Default::default(),
                platform,
                &unique("token"),
                None,
            )
            .await
            .unwrap()
            .into_frame();
            assert!(matches!(f, ServerFrame::DeviceRegistered { .. }), "{f:?}");
        }
    }

    async fn send(&self, app: &App, from: &UserId, key: &str, body: &str) -> ServerFrame {
        send_message(
            app,
            from,
            &Default::default(),
            &self.conv,
            &cmid(key),
            body,
            None,
        )
        .await
        .unwrap()
        .into_frame()
    }

    async fn stored(&self, app: &App) -> Vec<Message> {
        app.ports
            .messages
            .range(&self.conv, Seq(1), 10_000)
            .await
            .unwrap()
    }

    async fn pending(&self, app: &App, user: &UserId) -> Option<PendingDelivery> {
        app.ports.pending.get(user, &self.conv).await.unwrap()
    }

    /// The pushes SNS accepted for `endpoint_arn`, oldest first.
    fn accepted_by(&self, endpoint_arn: &str) -> Vec<PushMessage> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|(arn, _, ok)| arn == endpoint_arn && *ok)
            .map(|(_, m, _)| m.clone())
            .collect()
    }

    /// Publish calls to `endpoint_arn`, accepted or not.
    fn tried(&self, endpoint_arn: &str) -> usize {
        let log = self.accepted.lock().unwrap();
        log.iter().filter(|(arn, _, _)| arn == endpoint_arn).count()
    }

    /// The pushes SNS accepted for every device `user` has registered.
    async fn pushes(&self, app: &App, user: &UserId) -> Vec<PushMessage> {
        let mut out = Vec::new();
        for d in app.ports.devices.for_user(user).await.unwrap() {
            out.extend(self.accepted_by(&d.endpoint_arn));
        }
        out
    }

    /// A connection of `user`, open at the gateway and in Redis, accepted
    /// `age_ms` ago.
    async fn online(&self, app: &App, user: &UserId, age_ms: i64) -> ConnectionId {
        let c = ConnectionId::parse(&unique("conn")).unwrap();
        self.gateway.open(&c);
        app.ports
            .registry
            .register(
                user,
                &Connection {
                    connection_id: c.clone(),
                    connected_at: Some(now_millis() - age_ms),
                    device_id: Default::default(),
                },
            )
            .await
            .unwrap();
        c
    }

    /// bob's `$connect`: a new connection, accepted by API Gateway but
    /// answering 410 for `opens_after`; the registry is written and the
    /// catch-up triggered (not run).
    async fn bob_connects(&self, app: &App, opens_after: Duration) -> ConnectionId {
        let conn = ConnectionId::parse(&unique("conn")).unwrap();
        self.gateway.open_after(&conn, opens_after);
        let connected = connect::connect(
            app,
            &self.bob,
            &Connection {
                connection_id: conn.clone(),
                connected_at: Some(now_millis()),
                device_id: Default::default(),
            },
            None,
            courier_core::domain::CorrelationId::new(),
        )
        .await;
        assert!(connected.registered && connected.catch_up_triggered);
        conn
    }

    /// Runs bob's triggered catch-up, as Lambda's async invoke would.
    async fn bob_catches_up(&self, app: &App) {
        let requests = self.trigger.requests();
        let request = requests.iter().find(|r| r.user_id == self.bob).unwrap();
        catch_up::catch_up(app, request, None, None).await.unwrap();
    }

    /// Seqs of this conversation's messages posted to `connection`.
    fn seqs_at(&self, connection: &ConnectionId) -> Vec<u64> {
        let mut seqs = Vec::new();
        for f in self.gateway.frames(connection) {
            if let ServerFrame::Messages {
                conversation_id,
                messages,
            } = serde_json::from_str(&f).unwrap()
                && conversation_id == self.conv
            {
                seqs.extend(messages.iter().map(|m| m.seq.get()));
            }
        }
        seqs
    }
}

/// The real SNS notifier, observed: each push moto's SNS accepted (Publish
/// answered with a MessageId) is noted with its endpoint. How a
/// `PushMessage` becomes the APNs/FCM JSON handed to SNS is the adapter's
/// `PushPayload::build`, checked against moto in `sns_notifier.rs`; reading
/// moto's whole state back (`/moto-api/data.json`) here would stall the
/// shared, serialized moto for every other test.
struct Accepted {
    sns: SnsNotifier,
    log: PushLog,
}

type PushLog = Arc<Mutex<Vec<(String, PushMessage, bool)>>>;

#[async_trait]
impl Notifier for Accepted {
    async fn create_endpoint(
        &self,
        platform: Platform,
        token: &str,
        user: &UserId,
    ) -> Result<String, PushError> {
        self.sns.create_endpoint(platform, token, user).await
    }
    async fn publish(&self, endpoint_arn: &str, message: &PushMessage) -> Result<(), PushError> {
        let result = self.sns.publish(endpoint_arn, message).await;
        self.log
            .lock()
            .unwrap()
            .push((endpoint_arn.to_owned(), message.clone(), result.is_ok()));
        result
    }
    async fn delete_endpoint(&self, endpoint_arn: &str) -> Result<(), PushError> {
        self.sns.delete_endpoint(endpoint_arn).await
    }
}

fn seq_of(frame: &ServerFrame) -> u64 {
    match frame {
        ServerFrame::Sent { seq, .. } => seq.get(),
        other => panic!("expected sent, got {other:?}"),
    }
}

// ---------------------------------------------------------------- seqs

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_senders_by_fifty_messages_get_seqs_exactly_1_to_400() {
    let w = Arc::new(World::new(PendingClear::Ack, PushPreview::Full).await);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                // Each sender is its own execution environment.
                let app = w.app().await;
                let from = [&w.alice, &w.bob, &w.carol][t % 3].clone();
                let mut seqs = Vec::with_capacity(50);
                for i in 0..50 {
                    let f = w.send(&app, &from, &format!("s{t}-m{i}"), "x").await;
                    seqs.push(seq_of(&f));
                }
                seqs
            })
        })
        .collect();
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=400).collect::<Vec<_>>());

    let app = w.app().await;
    let stored = w.stored(&app).await;
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq.get()).collect();
    assert_eq!(
        seqs,
        (1..=400).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    let keys: BTreeSet<&str> = stored.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(keys.len(), 400, "every send stored exactly once");
    let conv = app.ports.conversations.get(&w.conv).await.unwrap().unwrap();
    assert_eq!(conv.last_seq, Seq(400));
}

// ---------------------------------------------------------- idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_client_msg_id_sequentially_concurrently_and_after_a_fresh_start_stores_one_message() {
    let w = Arc::new(World::new(PendingClear::Ack, PushPreview::Full).await);
    let app = w.app().await;
    // Something before it, so the seq to answer is not trivially 1.
    w.send(&app, &w.alice, "earlier", "first").await;

    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(seq_of(&w.send(&app, &w.alice, "dup", "hello").await));
    }
    let concurrent: Vec<_> = (0..5)
        .map(|_| {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                let app = w.app().await;
                seq_of(&w.send(&app, &w.alice, "dup", "hello").await)
            })
        })
        .collect();
    for t in concurrent {
        answers.push(t.await.unwrap());
    }
    let fresh = w.app().await;
    answers.push(seq_of(&w.send(&fresh, &w.alice, "dup", "hello").await));

    assert_eq!(answers, vec![2; 11]);
    let stored = w.stored(&fresh).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].client_msg_id.as_str(), "dup");
    assert_eq!(w.pending(&fresh, &w.bob).await.unwrap().last_seq, Seq(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_concurrent_first_sends_of_one_client_msg_id_store_it_once() {
    let w = Arc::new(World::new(PendingClear::Ack, PushPreview::Full).await);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                let app = w.app().await;
                seq_of(&w.send(&app, &w.alice, "race", "hello").await)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(w.stored(&w.app().await).await.len(), 1);
}

// ------------------------------------------------------ crash recovery

async fn crash_after_store_is_completed_by_the_retry(mode: PendingClear) {
    let w = World::new(mode, PushPreview::Full).await;
    w.register_devices().await;
    // DynamoDB commits the append, then the function dies before answering.
    let plan = CrashPlan::new(1, 0);
    let crashing = App::new(crashing_ports(&w.ports().await, &plan), w.settings.clone());
    plan.arm_on("messages.append", true);

    let first = plan
        .invocation(
            1,
            send_message(
                &crashing,
                &w.alice,
                &Default::default(),
                &w.conv,
                &cmid("m1"),
                "hello??",
                None,
            ),
        )
        .await;
    assert!(matches!(first, Err(SendError::Store(_))), "{first:?}");
    assert_eq!(plan.crashes(), 1, "the crash hit the append");
    let app = w.app().await;
    assert_eq!(w.stored(&app).await.len(), 1, "the message was stored");
    assert!(
        w.pushes(&app, &w.bob).await.is_empty(),
        "nothing delivered yet"
    );

    // The client got no `sent`, so it retries; a new environment answers.
    let retry = w.send(&app, &w.alice, "m1", "hello??").await;
    assert_eq!(seq_of(&retry), 1);
    assert_eq!(w.stored(&app).await.len(), 1);
    for user in [&w.bob, &w.carol] {
        let row = w.pending(&app, user).await;
        assert_eq!(row.map(|r| r.last_seq), Some(Seq(1)), "{mode:?} {user}");
        assert_eq!(w.pushes(&app, user).await.len(), 1, "{mode:?} {user}");
    }
    // The sender's own row (for her other devices) exists in `ack` mode
    // only; she is never pushed her own message.
    let own = w.pending(&app, &w.alice).await.map(|r| r.last_seq);
    let expected = (mode == PendingClear::Ack).then_some(Seq(1));
    assert_eq!(own, expected, "{mode:?}");
    assert!(w.pushes(&app, &w.alice).await.is_empty());
}

#[tokio::test]
async fn crash_after_store_is_completed_by_the_retry_ack_mode() {
    crash_after_store_is_completed_by_the_retry(PendingClear::Ack).await;
}

#[tokio::test]
async fn crash_after_store_is_completed_by_the_retry_post_mode() {
    crash_after_store_is_completed_by_the_retry(PendingClear::Post).await;
}

/// `post` mode's pending write fails (DynamoDB unreachable for that table):
/// the message is stored, the sender is not told `sent`.
struct RecordFails(Arc<dyn PendingStore>);

#[async_trait]
impl PendingStore for RecordFails {
    async fn list(&self, u: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        self.0.list(u).await
    }
    async fn get(
        &self,
        u: &UserId,
        c: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        self.0.get(u, c).await
    }
    async fn record(&self, _: &UserId, _: &ConversationId, _: Seq) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(
            "injected: pending write failed".into(),
        ))
    }
    async fn ack(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        s: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.0.ack(u, d, c, s, linked).await
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
        self.0.settle_posted(u, d, c, from, through, linked).await
    }
}

#[tokio::test]
async fn post_mode_pending_write_failure_withholds_sent_until_the_retry() {
    let w = World::new(PendingClear::Post, PushPreview::Full).await;
    let mut ports = w.ports().await;
    ports.pending = Arc::new(RecordFails(ports.pending.clone()));
    let failing = App::new(ports, w.settings.clone());
    let r = send_message(
        &failing,
        &w.alice,
        &Default::default(),
        &w.conv,
        &cmid("m1"),
        "hi",
        None,
    )
    .await;
    assert!(matches!(r, Err(SendError::Store(_))), "{r:?}");

    let app = w.app().await;
    assert!(w.pending(&app, &w.bob).await.is_none());
    assert_eq!(seq_of(&w.send(&app, &w.alice, "m1", "hi").await), 1);
    assert!(w.pending(&app, &w.bob).await.is_some());
    assert!(w.pending(&app, &w.carol).await.is_some());
}

// ------------------------------------------------ live, pending, push

#[tokio::test]
async fn offline_recipient_gets_a_pending_row_and_exactly_one_push_with_the_payload() {
    for mode in [PendingClear::Ack, PendingClear::Post] {
        let w = World::new(mode, PushPreview::Full).await;
        w.register_devices().await;
        let app = w.app().await;
        w.send(&app, &w.alice, "m1", "hello??").await;

        let row = w.pending(&app, &w.bob).await.unwrap();
        assert_eq!((row.first_undelivered_seq, row.last_seq), (Seq(1), Seq(1)));
        let expected = PushMessage {
            conversation_id: w.conv.clone(),
            sender_id: w.alice.clone(),
            seq: Seq(1),
            preview: Some(format!("{}: hello??", w.alice)),
        };
        // bob on FCM, carol on APNs: one accepted push each, nothing to
        // the sender.
        assert_eq!(
            w.pushes(&app, &w.bob).await,
            vec![expected.clone()],
            "{mode:?}"
        );
        assert_eq!(
            w.pushes(&app, &w.carol).await,
            vec![expected.clone()],
            "{mode:?}"
        );
        assert!(w.pushes(&app, &w.alice).await.is_empty());

        // What SNS was handed for it: both platforms' keys, collapsed per
        // conversation.
        let sent: Value = serde_json::from_str(&PushPayload::build(&expected).message).unwrap();
        let gcm: Value = serde_json::from_str(sent["GCM"].as_str().unwrap()).unwrap();
        let fcm = &gcm["fcmV1Message"]["message"];
        assert_eq!(fcm["data"]["seq"], "1");
        assert_eq!(fcm["data"]["preview"], expected.preview.as_deref().unwrap());
        assert_eq!(fcm["android"]["collapse_key"], w.conv.as_str());
        let apns: Value = serde_json::from_str(sent["APNS"].as_str().unwrap()).unwrap();
        assert_eq!(apns["aps"]["thread-id"], w.conv.as_str());
        assert_eq!(apns["sender_id"], w.alice.as_str());
    }
}

#[tokio::test]
async fn online_recipient_gets_one_messages_frame_and_no_push() {
    for mode in [PendingClear::Ack, PendingClear::Post] {
        let w = World::new(mode, PushPreview::Full).await;
        w.register_devices().await;
        let app = w.app().await;
        let bob = w.online(&app, &w.bob, 60_000).await;
        w.send(&app, &w.alice, "m1", "hello??").await;

        let frames = w.gateway.frames(&bob);
        assert_eq!(frames.len(), 1, "{mode:?}");
        let ServerFrame::Messages { messages, .. } = serde_json::from_str(&frames[0]).unwrap()
        else {
            panic!("not a messages frame: {}", frames[0])
        };
        assert_eq!(messages.len(), 1);
        assert_eq!(
            (messages[0].seq, messages[0].body.as_str()),
            (Seq(1), "hello??")
        );
        assert_eq!(messages[0].sender_id, w.alice);
        assert!(w.pushes(&app, &w.bob).await.is_empty(), "{mode:?}");
        // ack mode keeps bob's row until he acks; post mode never wrote one.
        assert_eq!(
            w.pending(&app, &w.bob).await.is_some(),
            mode == PendingClear::Ack
        );
        // carol is offline: her push went out.
        assert_eq!(w.pushes(&app, &w.carol).await.len(), 1);
    }
}

#[tokio::test]
async fn gone_connection_is_forgotten_pending_kept_push_sent() {
    let w = World::new(PendingClear::Ack, PushPreview::Full).await;
    w.register_devices().await;
    let app = w.app().await;
    let dead = w.online(&app, &w.bob, 60_000).await;
    w.gateway.close(&dead); // 410 from now on, and past the open window
    w.send(&app, &w.alice, "m1", "hello??").await;

    assert_eq!(app.ports.registry.lookup(&w.bob).await.unwrap(), vec![]);
    assert!(w.pending(&app, &w.bob).await.is_some());
    assert_eq!(w.pushes(&app, &w.bob).await.len(), 1);
}

/// A gateway through which bob reconnects while a post to his old
/// connection is in flight: the registry moves on before the 410 comes back.
struct ReconnectsDuringPost {
    inner: MemoryGateway,
    registry: Arc<dyn ConnectionRegistry>,
    user: UserId,
    newer: Connection,
    done: AtomicBool,
}

#[async_trait]
impl Gateway for ReconnectsDuringPost {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.registry
                .register(&self.user, &self.newer)
                .await
                .unwrap();
        }
        self.inner.post(connection, data).await
    }
    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        self.inner.get(connection).await
    }
    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError> {
        self.inner.delete(connection).await
    }
}

#[tokio::test]
async fn gone_connection_never_removes_a_newer_one() {
    let w = World::new(PendingClear::Ack, PushPreview::Full).await;
    w.register_devices().await;
    let mut ports = w.ports().await;
    let dead = w.online(&w.app().await, &w.bob, 60_000).await;
    w.gateway.close(&dead);
    let newer = Connection {
        connection_id: ConnectionId::parse(&unique("conn-new")).unwrap(),
        connected_at: Some(now_millis()),
        device_id: Default::default(),
    };
    ports.gateway = Arc::new(ReconnectsDuringPost {
        inner: w.gateway.clone(),
        registry: ports.registry.clone(),
        user: w.bob.clone(),
        newer: newer.clone(),
        done: AtomicBool::new(false),
    });
    let app = App::new(ports, w.settings.clone());
    w.send(&app, &w.alice, "m1", "hello??").await;

    assert_eq!(
        app.ports.registry.lookup(&w.bob).await.unwrap(),
        vec![newer]
    );
    assert!(w.pending(&app, &w.bob).await.is_some());
    assert_eq!(w.pushes(&app, &w.bob).await.len(), 1);
}

// ------------------------------------------------------ the connect race

async fn message_sent_while_the_recipient_connects_reaches_them(mode: PendingClear) {
    let w = World::new(mode, PushPreview::Full).await;
    w.register_devices().await;
    let app = w.app().await;

    // bob's $connect has written the registry and triggered catch-up, but
    // API Gateway still answers 410 (his $connect has not returned) and the
    // catch-up has not run yet.
    let conn = w.bob_connects(&app, Duration::from_millis(300)).await;
    w.send(&app, &w.alice, "m1", "hello??").await;
    // Live, once the connection opened inside the window: no push needed.
    assert_eq!(w.seqs_at(&conn), vec![1], "{mode:?}");
    assert!(w.pushes(&app, &w.bob).await.is_empty());

    // The catch-up may deliver it again (ack mode: the row waits for bob's
    // ack); the client drops the duplicate by seq.
    w.bob_catches_up(&app).await;
    let seqs: BTreeSet<u64> = w.seqs_at(&conn).into_iter().collect();
    assert_eq!(seqs, BTreeSet::from([1]), "{mode:?}");
}

#[tokio::test]
async fn message_sent_while_the_recipient_connects_reaches_them_ack_mode() {
    message_sent_while_the_recipient_connects_reaches_them(PendingClear::Ack).await;
}

#[tokio::test]
async fn message_sent_while_the_recipient_connects_reaches_them_post_mode() {
    message_sent_while_the_recipient_connects_reaches_them(PendingClear::Post).await;
}

/// The other interleaving: the send reads the registry before connect
/// writes it; the catch-up that follows finds the pending row.
async fn message_sent_just_before_the_registry_write_reaches_them_by_catch_up(mode: PendingClear) {
    let w = World::new(mode, PushPreview::Full).await;
    let app = w.app().await;
    w.send(&app, &w.alice, "m1", "hello??").await;
    let conn = w.bob_connects(&app, Duration::from_millis(100)).await;
    w.bob_catches_up(&app).await;
    assert_eq!(w.seqs_at(&conn), vec![1], "{mode:?}");
}

#[tokio::test]
async fn message_sent_just_before_the_registry_write_reaches_them_by_catch_up_ack_mode() {
    message_sent_just_before_the_registry_write_reaches_them_by_catch_up(PendingClear::Ack).await;
}

#[tokio::test]
async fn message_sent_just_before_the_registry_write_reaches_them_by_catch_up_post_mode() {
    message_sent_just_before_the_registry_write_reaches_them_by_catch_up(PendingClear::Post).await;
}

// ----------------------------------------------- through the handler

const SEND_EVENT: &str = include_str!("../../events/send-message.json");

/// The sample `sendMessage` event, from `user` (the authorizer context),
/// carrying `body` as the frame.
fn send_event(
    user: &UserId,
    body: &str,
) -> lambda_runtime::LambdaEvent<ApiGatewayWebsocketProxyRequest> {
    let mut e: ApiGatewayWebsocketProxyRequest = serde_json::from_str(SEND_EVENT).unwrap();
    e.body = Some(body.to_owned());
    e.request_context
        .authorizer
        .fields
        .insert("user_id".into(), Value::String(user.to_string()));
    lambda_runtime::LambdaEvent::new(e, lambda_runtime::Context::default())
}

fn reply_frame(r: &aws_lambda_events::apigw::ApiGatewayProxyResponse) -> ServerFrame {
    assert_eq!(r.status_code, 200);
    match &r.body {
        Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
        other => panic!("no text body: {other:?}"),
    }
}

#[tokio::test]
async fn client_mistakes_each_get_their_code_and_store_nothing() {
    let w = World::new(PendingClear::Ack, PushPreview::Full).await;
    w.register_devices().await;
    let app = w.app().await;
    let mallory = uid(&unique("mallory"));
    let frame = |conv: &str, body: &str| {
        serde_json::json!({
            "action": "sendMessage",
            "conversation_id": conv,
            "client_msg_id": uuid::Uuid::new_v4().to_string(),
            "body": body,
            "request_id": "r1",
        })
        .to_string()
    };
    let conv = w.conv.as_str();
    let too_large = "é".repeat(app.settings.send.max_body_bytes / 2 + 1);
    let cases: Vec<(&UserId, String, ErrorCode)> = vec![
        (&mallory, frame(conv, "hi"), ErrorCode::NotAMember),
        (
            &w.alice,
            frame("c_does_not_exist", "hi"),
            ErrorCode::ConversationNotFound,
        ),
        (
            &w.alice,
            frame(conv, &too_large),
            ErrorCode::PayloadTooLarge,
        ),
        (&w.alice, frame(conv, ""), ErrorCode::BadRequest),
        (&w.alice, frame(conv, " \n\t "), ErrorCode::BadRequest),
        (
            &w.alice,
            "{\"action\":\"sendMessage\",".into(),
            ErrorCode::BadRequest,
        ),
        (
            &w.alice,
            format!(r#"{{"action":"sendMessage","conversation_id":"{conv}","body":"no key"}}"#),
            ErrorCode::BadRequest,
        ),
        (
            &w.alice,
            format!(
                r#"{{"action":"sendMessage","conversation_id":"{conv}","client_msg_id":"k 1","body":"x"}}"#
            ),
            ErrorCode::BadRequest,
        ),
    ];
    for (user, body, code) in cases {
        let r = send_message::handle(&app, send_event(user, &body))
            .await
            .unwrap();
        match reply_frame(&r) {
            ServerFrame::Error { code: got, .. } => {
                assert_eq!(got, code, "{}", &body[..body.len().min(120)])
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    assert!(w.stored(&app).await.is_empty());
    let conv = app.ports.conversations.get(&w.conv).await.unwrap().unwrap();
    assert_eq!(conv.last_seq, Seq::ZERO);
    for user in [&w.bob, &w.carol] {
        assert!(w.pending(&app, user).await.is_none());
        assert!(w.pushes(&app, user).await.is_empty());
    }
}

#[tokio::test]
async fn a_spoofed_sender_in_the_body_is_ignored() {
    let w = World::new(PendingClear::Ack, PushPreview::Full).await;
    let app = w.app().await;
    let body = serde_json::json!({
        "action": "sendMessage",
        "conversation_id": w.conv.as_str(),
        "client_msg_id": "k1",
        "body": "hi",
        "sender_id": w.bob.as_str(),
        "user_id": w.bob.as_str(),
    })
    .to_string();
    let r = send_message::handle(&app, send_event(&w.alice, &body))
        .await
        .unwrap();
    assert!(matches!(
        reply_frame(&r),
        ServerFrame::Sent { seq: Seq(1), .. }
    ));
    assert_eq!(w.stored(&app).await[0].sender_id, w.alice);
    // Bob got the row of a recipient (1..=1, nothing held); alice's row is
    // the sender's, for her other devices.
    let bob = w.pending(&app, &w.bob).await.unwrap();
    assert_eq!((bob.first_undelivered_seq, bob.last_seq), (Seq(1), Seq(1)));
}

// ---------------------------------------------------------------- push

#[tokio::test]
async fn push_preview_none_sends_no_message_text() {
    let w = World::new(PendingClear::Ack, PushPreview::None).await;
    w.register_devices().await;
    let app = w.app().await;
    w.send(&app, &w.alice, "m1", "the secret plan").await;
    for user in [&w.bob, &w.carol] {
        let pushes = w.pushes(&app, user).await;
        assert_eq!(
            pushes,
            vec![PushMessage {
                conversation_id: w.conv.clone(),
                sender_id: w.alice.clone(),
                seq: Seq(1),
                preview: None,
            }]
        );
        // Nor anywhere in what SNS was handed.
        let sent = PushPayload::build(&pushes[0]).message;
        assert!(!sent.contains("secret"), "{sent}");
        assert!(sent.contains(GENERIC_ALERT));
    }
}

#[tokio::test]
async fn a_disabled_endpoint_is_cleaned_up_not_retried() {
    let w = World::new(PendingClear::Ack, PushPreview::Full).await;
    w.register_devices().await;
    let app = w.app().await;
    let device = app.ports.devices.for_user(&w.bob).await.unwrap().remove(0);
    // What SNS does when FCM reports the token invalid.
    w.sns
        .set_endpoint_attributes()
        .endpoint_arn(&device.endpoint_arn)
        .attributes("Enabled", "false")
        .send()
        .await
        .unwrap();

    assert_eq!(seq_of(&w.send(&app, &w.alice, "m1", "hi").await), 1);
    assert_eq!(
        app.ports.devices.by_token(&device.token).await.unwrap(),
        None
    );
    let gone = w
        .sns
        .get_endpoint_attributes()
        .endpoint_arn(&device.endpoint_arn)
        .send()
        .await;
    assert!(gone.is_err(), "endpoint still exists: {gone:?}");
    assert!(w.accepted_by(&device.endpoint_arn).is_empty());
    assert_eq!(w.tried(&device.endpoint_arn), 1);
    // carol's push was unaffected, and the next send does not retry bob's.
    assert_eq!(w.pushes(&app, &w.carol).await.len(), 1);
    assert_eq!(seq_of(&w.send(&app, &w.alice, "m2", "hi").await), 2);
    assert_eq!(w.pushes(&app, &w.carol).await.len(), 2);
    assert_eq!(w.tried(&device.endpoint_arn), 1);
}

// ---------------------------------------------- conversations, devices

#[tokio::test]
async fn create_conversation_validates_and_deduplicates() {
    let w = World::new(PendingClear::Ack, PushPreview::Full).await;
    let app = w.app().await;
    let f = conversations::create_conversation(
        &app,
        &w.alice,
        &[
            w.bob.clone(),
            w.alice.clone(),
            w.carol.clone(),
            w.bob.clone(),
        ],
        Some("r9".into()),
    )
    .await
    .unwrap()
    .into_frame();
    let ServerFrame::Conversation {
        conversation_id,
        members,
        request_id,
    } = f
    else {
        panic!("{f:?}")
    };
    assert_eq!(
        members,
        vec![w.alice.clone(), w.bob.clone(), w.carol.clone()]
    );
    assert_eq!(request_id.as_deref(), Some("r9"));
    let stored = app
        .ports
        .conversations
        .get(&conversation_id)
        .await
        .unwrap()
        .unwrap();
    let as_set = |v: &[UserId]| v.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(as_set(&stored.members), as_set(&members));

    let max = app.settings.send.max_members;
    let crowd: Vec<UserId> = (0..max).map(|i| uid(&format!("u{i}"))).collect();
    for list in [vec![], vec![w.alice.clone()], crowd] {
        let f = conversations::create_conversation(&app, &w.alice, &list, None)
            .await
            .unwrap()
            .into_frame();
        assert!(
            matches!(
                f,
                ServerFrame::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            ),
            "{} members accepted",
            list.len()
        );
    }
}

#[tokio::test]
async fn register_device_moves_a_token_between_users() {
    let w = World::new(PendingClear::Ack, PushPreview::Full).await;
    let app = w.app().await;
    let token = unique("fcm-token");
    devices::register_device(
        &app,
        &w.bob,
        &Default::default(),
        Platform::Fcm,
        &token,
        None,
    )
    .await
    .unwrap()
    .into_frame();
    let first = app.ports.devices.by_token(&token).await.unwrap().unwrap();
    devices::register_device(
        &app,
        &w.carol,
        &Default::default(),
        Platform::Fcm,
        &token,
        None,
    )
    .await
    .unwrap()
    .into_frame();

    assert!(app.ports.devices.for_user(&w.bob).await.unwrap().is_empty());
    let carol = app.ports.devices.for_user(&w.carol).await.unwrap();
    assert_eq!(carol.len(), 1);
    assert_eq!(
        carol[0].endpoint_arn, first.endpoint_arn,
        "same SNS endpoint"
    );
    let attrs: HashMap<String, String> = w
        .sns
        .get_endpoint_attributes()
        .endpoint_arn(&first.endpoint_arn)
        .send()
        .await
        .unwrap()
        .attributes()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attrs.get("CustomUserData"), Some(&w.carol.to_string()));

    // A message to the conversation now buzzes carol's phone, not bob's.
    w.send(&app, &w.alice, "m1", "hi").await;
    assert!(w.pushes(&app, &w.bob).await.is_empty());
    assert_eq!(w.pushes(&app, &w.carol).await.len(), 1);
}
