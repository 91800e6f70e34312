//! Fault injection on real services: redis-server and moto's DynamoDB, each
//! reached through the project's TCP fault proxy (`courier_tests::proxy`) or
//! a throttling stub, with the real Redis and DynamoDB adapters and the real
//! services on top. The gateway is the in-memory one (moto never answers
//! 410, and these faults need a connection that dies after k posts or
//! swallows them); the end-to-end path through the local gateway is the race
//! suite's (`tests/tests/race.rs`).
//!
//! Over 700 lines: one suite, each injected fault sharing one harness of real
//! services and proxies.
//!
//! Each test prints one `outcome:` line (messages sent, delivered, lost,
//! duplicated, requests refused) that RELIABILITY.md quotes; see it with
//! `--nocapture`.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_aws::auth::testing::http::{Recorded, Reply, StubServer};
use courier_aws::dynamo::{DynamoRegistry, DynamoStore, RetryPolicy};
use courier_aws::redis::RedisRegistry;
use courier_aws::wiring::AwsEndpoints;
use courier_core::adapters::memory::{MemoryGateway, MemoryNotifier, MemoryTrigger};
use courier_core::app::{App, Ports, Settings};
use courier_core::config::{DynamoRegistryConfig, RegistryConfig, TableNames};
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, Device, Platform, Seq,
    UserId, now_millis,
};
use courier_core::ports::{CatchUpRequest, ConversationStore, MessageStore, Notifier, StoreError};
use courier_core::protocol::{AckItem, ServerFrame};
use courier_core::services::catch_up::{self, Ending};
use courier_core::services::{ack, connect, send};
use courier_tests::crash::{CrashPlan, crashing_ports};
use courier_tests::proxy::{FaultProxy, Mode};

/// Registry timeout in these tests: short, so a dead Redis costs little.
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

fn settings() -> Settings {
    let mut s = Settings::default();
    s.delivery.open_window = Duration::from_millis(300);
    s.delivery.open_retry_base = Duration::from_millis(10);
    // Several frames per conversation, so a connection can die between them.
    s.delivery.max_frame_bytes = 1024;
    s
}

fn unique(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// Courier on real Redis and DynamoDB, each behind its own fault proxy.
struct Real {
    app: App,
    gateway: MemoryGateway,
    trigger: MemoryTrigger,
    notifier: MemoryNotifier,
    redis: FaultProxy,
    dynamo: FaultProxy,
    /// The tables, read directly (not through the proxy) to check them.
    store: DynamoStore,
    alice: UserId,
    bob: UserId,
    carol: UserId,
}

/// The DynamoDB client exactly as a function builds it (SDK retry and
/// timeout settings included), pointed at `endpoint`.
async fn production_dynamo(endpoint: &str, tables: TableNames) -> DynamoStore {
    let aws = support::aws_with(AwsEndpoints {
        dynamodb: Some(endpoint.to_owned()),
        ..AwsEndpoints::default()
    })
    .await;
    DynamoStore::new(aws.dynamodb(), tables)
}

async fn real() -> Real {
    let (redis, redis_url) = FaultProxy::in_front_of(&courier_tests::redis_url().await)
        .await
        .unwrap();
    let (dynamo, dynamo_url) = FaultProxy::in_front_of(&courier_tests::dynamodb_endpoint().await)
        .await
        .unwrap();
    let tables = courier_tests::fresh_tables().await;
    let store = DynamoStore::new(courier_tests::dynamo_client().await, tables.clone());
    let proxied = Arc::new(production_dynamo(&dynamo_url, tables).await);
    let mut config = RegistryConfig::new(redis_url);
    config.timeout = REDIS_TIMEOUT;
    let gateway = MemoryGateway::new();
    let trigger = MemoryTrigger::new();
    let notifier = MemoryNotifier::new();
    let ports = Ports::unwired()
        .with_store(proxied)
        .with_registry(Arc::new(RedisRegistry::new(config).unwrap()))
        .with_gateway(Arc::new(gateway.clone()))
        .with_trigger(Arc::new(trigger.clone()))
        .with_notifier(Arc::new(notifier.clone()));
    let r = Real {
        app: App::new(ports, settings()),
        gateway,
        trigger,
        notifier,
        redis,
        dynamo,
        store,
        alice: uid(&unique("alice")),
        bob: uid(&unique("bob")),
        carol: uid(&unique("carol")),
    };
    // bob has a phone: pushes for him are recorded.
    let token = unique("tok-bob");
    let arn = r
        .notifier
        .create_endpoint(Platform::Fcm, &token, &r.bob)
        .await
        .unwrap();
    r.app
        .ports
        .devices
        .put(&Device {
            user_id: r.bob.clone(),
            platform: Platform::Fcm,
            token,
            endpoint_arn: arn,
            updated_at: now_millis(),
            device_id: Default::default(),
        })
        .await
        .unwrap();
    r
}

impl Real {
    async fn conversation(&self, members: &[&UserId]) -> ConversationId {
        let id = ConversationId::parse(&unique("conv")).unwrap();
        self.store
            .create(&Conversation {
                conversation_id: id.clone(),
                members: members.iter().map(|m| (*m).clone()).collect(),
                last_seq: Seq::ZERO,
                created_at: now_millis(),
            })
            .await
            .unwrap();
        id
    }

    async fn send(&self, from: &UserId, conv: &ConversationId, key: &str) -> Seq {
        self.try_send(from, conv, key).await.unwrap()
    }

    async fn try_send(
        &self,
        from: &UserId,
        conv: &ConversationId,
        key: &str,
    ) -> Result<Seq, send::SendError> {
        send_with(&self.app, from, conv, key).await
    }

    /// Opens a connection for `user` (past its open window) and runs
    /// `$connect`.
    async fn connect(&self, user: &UserId) -> (Connection, connect::Connected) {
        let c = Connection {
            connection_id: ConnectionId::parse(&unique("conn")).unwrap(),
            connected_at: Some(now_millis() - 10_000),
            device_id: Default::default(),
        };
        self.gateway.open(&c.connection_id);
        let connected = connect::connect(
            &self.app,
            user,
            &c,
            None,
            courier_core::domain::CorrelationId::new(),
        )
        .await;
        (c, connected)
    }

    fn request(&self, user: &UserId, c: &Connection) -> CatchUpRequest {
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

    async fn stored_seqs(&self, conv: &ConversationId) -> Vec<u64> {
        self.store
            .range(conv, Seq(1), 100_000)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq.get())
            .collect()
    }

    /// Only bob has a device, so every recorded push is his.
    fn pushes_to_bob(&self) -> usize {
        self.notifier.sent().len()
    }
}

async fn send_with(
    app: &App,
    from: &UserId,
    conv: &ConversationId,
    key: &str,
) -> Result<Seq, send::SendError> {
    let key = ClientMsgId::parse(key).unwrap();
    match send::send_message(
        app,
        from,
        &Default::default(),
        conv,
        &key,
        &format!("body of {key}"),
        None,
    )
    .await?
    .into_frame()
    {
        ServerFrame::Sent { seq, .. } => Ok(seq),
        other => panic!("send answered {other:?}"),
    }
}

/// What a client holding the frames of `connections` has: per
/// conversation, the seqs (duplicates dropped) and how many were duplicates.
#[derive(Debug, Default)]
struct Received {
    seqs: BTreeMap<ConversationId, BTreeSet<u64>>,
    duplicates: usize,
    caught_up: usize,
}

fn received(gateway: &MemoryGateway, connections: &[&Connection]) -> Received {
    let mut r = Received::default();
    for c in connections {
        for raw in gateway.frames(&c.connection_id) {
            match serde_json::from_str::<ServerFrame>(&raw).unwrap() {
                ServerFrame::Messages {
                    conversation_id,
                    messages,
                } => {
                    let set = r.seqs.entry(conversation_id).or_default();
                    for m in messages {
                        if !set.insert(m.seq.get()) {
                            r.duplicates += 1;
                        }
                    }
                }
                ServerFrame::CaughtUp { .. } => r.caught_up += 1,
                _ => {}
            }
        }
    }
    r
}

fn all(n: u64) -> BTreeSet<u64> {
    (1..=n).collect()
}

fn outcome(name: &str, sent: usize, delivered: usize, lost: usize, duplicated: usize, extra: &str) {
    eprintln!(
        "outcome: {name}: sent={sent} delivered={delivered} lost={lost} duplicated={duplicated} {extra}"
    );
}

// ---- Redis down, slow, hung --------------------------------------------------

#[tokio::test]
async fn redis_down_during_sends_still_stores_records_pending_and_pushes() {
    let r = real().await;
    let conv = r.conversation(&[&r.alice, &r.bob]).await;
    let (bob_conn, _) = r.connect(&r.bob).await;
    r.redis.set_mode(Mode::Reset);

    let started = Instant::now();
    for i in 1..=5u64 {
        let t = Instant::now();
        assert_eq!(r.send(&r.alice, &conv, &format!("k{i}")).await, Seq(i));
        assert!(
            t.elapsed() < REDIS_TIMEOUT * 3,
            "a send with Redis down took {:?}",
            t.elapsed()
        );
    }
    let during = started.elapsed();
    assert_eq!(r.stored_seqs(&conv).await, vec![1, 2, 3, 4, 5]);
    let row = r.store_pending(&r.bob, &conv).await;
    assert_eq!((row.0, row.1), (1, 5), "bob's row covers every message");
    assert_eq!(r.pushes_to_bob(), 5, "bob was unreachable: one push each");
    assert!(r.gateway.frames(&bob_conn.connection_id).is_empty());
    let st = r.redis.stats();
    let refused = st.refused + st.reset;
    assert!(
        refused >= 5,
        "every registry call hit the dead Redis: {st:?}"
    );

    // Healed: live delivery comes back on its own, and bob's next connect
    // catches up on everything.
    r.redis.set_mode(Mode::Pass);
    assert_eq!(r.send(&r.alice, &conv, "k6").await, Seq(6));
    assert_eq!(
        r.gateway.frames(&bob_conn.connection_id).len(),
        1,
        "live again"
    );
    let (c2, connected) = r.connect(&r.bob).await;
    assert!(connected.registered);
    catch_up::catch_up(&r.app, &r.request(&r.bob, &c2), None, None)
        .await
        .unwrap();
    let got = received(&r.gateway, &[&bob_conn, &c2]);
    assert_eq!(got.seqs[&conv], all(6));
    outcome(
        "redis down during sends",
        6,
        got.seqs[&conv].len(),
        0,
        got.duplicates,
        &format!(
            "pushes=5 registry_connections_refused={refused} sends_with_redis_down_ms={}",
            during.as_millis()
        ),
    );
}

/// The registry on DynamoDB (`REGISTRY_BACKEND=dynamodb`) behind a fault
/// proxy of its own, built as a function builds it: the harness's stores
/// stay healthy.
async fn with_dynamo_registry(r: &mut Real) -> FaultProxy {
    let (proxy, url) = FaultProxy::in_front_of(&courier_tests::dynamodb_endpoint().await)
        .await
        .unwrap();
    let aws = support::aws_with(AwsEndpoints {
        dynamodb: Some(url),
        ..AwsEndpoints::default()
    })
    .await;
    let mut config = DynamoRegistryConfig::new(courier_tests::fresh_registry_table().await);
    config.timeout = REDIS_TIMEOUT;
    r.app.ports.registry = Arc::new(DynamoRegistry::new(aws.dynamodb(), config));
    proxy
}

#[tokio::test]
async fn dynamodb_registry_down_or_hung_during_sends_costs_its_bound_and_loses_nothing() {
    let mut r = real().await;
    let registry = with_dynamo_registry(&mut r).await;
    let conv = r.conversation(&[&r.alice, &r.bob]).await;
    let (bob_conn, connected) = r.connect(&r.bob).await;
    assert!(connected.registered);

    let mut seq = 0;
    for mode in [Mode::Reset, Mode::BlackHole] {
        registry.set_mode(mode);
        for _ in 0..2 {
            seq += 1;
            let t = Instant::now();
            assert_eq!(r.send(&r.alice, &conv, &format!("k{seq}")).await, Seq(seq));
            assert!(
                t.elapsed() < REDIS_TIMEOUT * 3,
                "a send with the registry {mode:?} took {:?}",
                t.elapsed()
            );
        }
    }
    assert_eq!(r.stored_seqs(&conv).await, vec![1, 2, 3, 4]);
    let row = r.store_pending(&r.bob, &conv).await;
    assert_eq!((row.0, row.1), (1, 4), "bob's row covers every message");
    assert_eq!(r.pushes_to_bob(), 4, "bob was unreachable: one push each");
    assert!(r.gateway.frames(&bob_conn.connection_id).is_empty());
    let st = registry.stats();
    assert!(
        st.refused + st.reset >= 1 && st.accepted > st.refused,
        "the registry calls went through the broken proxy: {st:?}"
    );

    // Healed: live delivery comes back on its own, and bob's next connect
    // catches up on everything.
    registry.set_mode(Mode::Pass);
    assert_eq!(r.send(&r.alice, &conv, "k5").await, Seq(5));
    assert_eq!(
        r.gateway.frames(&bob_conn.connection_id).len(),
        1,
        "live again"
    );
    let (c2, connected) = r.connect(&r.bob).await;
    assert!(connected.registered);
    catch_up::catch_up(&r.app, &r.request(&r.bob, &c2), None, None)
        .await
        .unwrap();
    let got = received(&r.gateway, &[&bob_conn, &c2]);
    assert_eq!(got.seqs[&conv], all(5));
}

#[tokio::test]
async fn redis_slow_during_sends_costs_at_most_its_timeout_and_loses_nothing() {
    let r = real().await;
    let conv = r.conversation(&[&r.alice, &r.bob]).await;
    let (bob_conn, _) = r.connect(&r.bob).await;

    // Slower than the registry timeout: treated as offline, pushed.
    r.redis.set_mode(Mode::delay(REDIS_TIMEOUT * 2));
    let t = Instant::now();
    assert_eq!(r.send(&r.alice, &conv, "slow1").await, Seq(1));
    let slow = t.elapsed();
    assert!(slow < REDIS_TIMEOUT * 4, "send took {slow:?}");
    assert_eq!(r.pushes_to_bob(), 1);
    assert!(r.gateway.frames(&bob_conn.connection_id).is_empty());

    // Slow but inside the timeout: delivered live, no push.
    r.redis.set_mode(Mode::delay(Duration::from_millis(40)));
    assert_eq!(r.send(&r.alice, &conv, "slow2").await, Seq(2));
    assert_eq!(r.gateway.frames(&bob_conn.connection_id).len(), 1);
    assert_eq!(r.pushes_to_bob(), 1);

    let row = r.store_pending(&r.bob, &conv).await;
    assert_eq!((row.0, row.1), (1, 2), "both wait for bob's ack");
    outcome(
        "redis slow during sends",
        2,
        1,
        0,
        0,
        &format!(
            "pushed=1 pending=2 slow_send_ms={} (timeout {} ms)",
            slow.as_millis(),
            REDIS_TIMEOUT.as_millis()
        ),
    );
}

#[tokio::test]
async fn redis_down_or_hung_during_connect_still_connects_and_catches_up() {
    for mode in [Mode::Reset, Mode::BlackHole, Mode::delay(REDIS_TIMEOUT * 3)] {
        let r = real().await;
        let conv = r.conversation(&[&r.alice, &r.bob]).await;
        for i in 1..=3 {
            r.send(&r.alice, &conv, &format!("k{i}")).await;
        }
        r.redis.set_mode(mode);
        let t = Instant::now();
        let (c, connected) = r.connect(&r.bob).await;
        let took = t.elapsed();
        assert!(!connected.registered, "{mode:?}");
        assert!(connected.catch_up_triggered, "{mode:?}");
        assert!(took < REDIS_TIMEOUT * 3, "{mode:?}: connect took {took:?}");
        let report = catch_up::catch_up(&r.app, &r.trigger.requests()[0], None, None)
            .await
            .unwrap();
        assert_eq!(report.ending, Ending::CaughtUp);
        let got = received(&r.gateway, &[&c]);
        assert_eq!(got.seqs[&conv], all(3), "{mode:?}");
        outcome(
            &format!("redis {mode:?} during connect"),
            3,
            3,
            0,
            got.duplicates,
            &format!("connect_ms={}", took.as_millis()),
        );
        r.redis.set_mode(Mode::Pass);
    }
}

impl Real {
    /// bob's (or anyone's) pending row as `(first_undelivered_seq, last_seq)`.
    async fn store_pending(&self, user: &UserId, conv: &ConversationId) -> (u64, u64) {
        use courier_core::ports::PendingStore;
        let row = PendingStore::get(&self.store, user, conv)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no pending row for {user} in {conv}"));
        (row.first_undelivered_seq.get(), row.last_seq.get())
    }

    async fn has_pending(&self, user: &UserId) -> usize {
        use courier_core::ports::PendingStore;
        self.store.list(user).await.unwrap().len()
    }
}

// ---- DynamoDB down, slow, throttled ----------------------------------------

#[tokio::test]
async fn dynamodb_down_fails_the_send_fast_and_the_retry_stores_it_once() {
    let r = real().await;
    let conv = r.conversation(&[&r.alice, &r.bob]).await;
    r.dynamo.set_mode(Mode::Reset);
    let t = Instant::now();
    let failed = r.try_send(&r.alice, &conv, "k1").await;
    let took = t.elapsed();
    assert!(
        matches!(
            failed,
            Err(send::SendError::Store(StoreError::Unavailable(_)))
        ),
        "{failed:?}"
    );
    // Five attempts with full-jitter backoff: at most 25+50+100+200 ms of
    // sleeping, plus refused connects.
    assert!(took < Duration::from_secs(3), "gave up after {took:?}");
    let refused = r.dynamo.stats().refused;
    assert!(
        refused >= 5,
        "every attempt hit the dead endpoint: {refused}"
    );
    assert!(r.stored_seqs(&conv).await.is_empty());
    assert_eq!(r.has_pending(&r.bob).await, 0);

    // Slow but up: works, just slower.
    r.dynamo.set_mode(Mode::delay(Duration::from_millis(30)));
    assert_eq!(r.send(&r.alice, &conv, "k1").await, Seq(1));
    r.dynamo.set_mode(Mode::Pass);
    assert_eq!(r.send(&r.alice, &conv, "k1").await, Seq(1), "idempotent");
    assert_eq!(r.stored_seqs(&conv).await, vec![1]);
    outcome(
        "dynamodb down during a send",
        1,
        0,
        0,
        0,
        &format!(
            "refused_while_down=1 attempts_refused={refused} gave_up_ms={} stored_after_retry=1",
            took.as_millis()
        ),
    );
}

/// A DynamoDB endpoint that answers `ProvisionedThroughputExceededException`
/// to the first `throttles` requests of one operation and passes everything
/// else to moto.
struct Throttler {
    stub: StubServer,
    target_op: &'static str,
    left: Arc<AtomicU32>,
    /// When each request of `target_op` arrived.
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Throttler {
    async fn start(target_op: &'static str, throttles: u32) -> Throttler {
        let moto = courier_tests::dynamodb_endpoint().await;
        let moto = moto.strip_prefix("http://").unwrap().to_owned();
        let left = Arc::new(AtomicU32::new(throttles));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (l, a) = (left.clone(), arrivals.clone());
        let stub = StubServer::start(move |req: &Recorded| {
            let op = req.header("x-amz-target").unwrap_or_default().to_owned();
            if op.ends_with(target_op) {
                a.lock().unwrap().push(Instant::now());
                if l.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Reply::json(
                        400,
                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#,
                    )
                    .header("x-amzn-requestid", "throttled");
                }
            }
            tokio::task::block_in_place(|| forward(&moto, req))
        })
        .await;
        Throttler {
            stub,
            target_op,
            left,
            arrivals,
        }
    }

    fn attempts(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let a = self.arrivals.lock().unwrap();
        a.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// Replays one recorded request to moto over plain HTTP/1.0 and returns its
/// answer. Blocking: runs under `block_in_place`.
fn forward(moto: &str, req: &Recorded) -> Reply {
    let mut s = std::net::TcpStream::connect(moto).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{} {} HTTP/1.0\r\n", req.method, req.raw_path);
    for (n, v) in &req.headers {
        if n != "connection" && n != "content-length" {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", req.body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&req.body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut reply = Reply::status(status).body(&raw[split + 4..]);
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            let n = n.trim().to_ascii_lowercase();
            if n != "content-length" && n != "connection" && n != "transfer-encoding" {
                reply = reply.header(&n, v.trim());
            }
        }
    }
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_throttling_is_retried_a_bounded_number_of_times_with_jitter() {
    let policy = RetryPolicy::default();
    let tables = courier_tests::fresh_tables().await;
    let direct = DynamoStore::new(courier_tests::dynamo_client().await, tables.clone());
    let (alice, bob) = (uid(&unique("alice")), uid(&unique("bob")));
    let conv = ConversationId::parse(&unique("conv")).unwrap();
    direct
        .create(&Conversation {
            conversation_id: conv.clone(),
            members: vec![alice.clone(), bob.clone()],
            last_seq: Seq::ZERO,
            created_at: now_millis(),
        })
        .await
        .unwrap();
    let app_on = |store: DynamoStore| {
        let (mut ports, _) = Ports::in_memory();
        let store = Arc::new(store);
        ports.messages = store.clone();
        ports.conversations = store.clone();
        ports.pending = store;
        App::new(ports, settings())
    };

    // Throttled twice, then through: invisible to the sender.
    let two = Throttler::start("TransactWriteItems", 2).await;
    let app = app_on(production_dynamo(&two.stub.url(), tables.clone()).await);
    assert_eq!(send_with(&app, &alice, &conv, "k1").await.unwrap(), Seq(1));
    assert_eq!(
        two.attempts(),
        3,
        "2 throttled + 1 accepted, no retries on top of the adapter's"
    );

    // Throttled for good: exactly max_attempts tries, then a fault the
    // handler turns into an `internal` frame, within the backoff bound.
    let always = Throttler::start("TransactWriteItems", u32::MAX).await;
    let app = app_on(production_dynamo(&always.stub.url(), tables.clone()).await);
    let t = Instant::now();
    let r = send_with(&app, &alice, &conv, "k2").await;
    let took = t.elapsed();
    assert!(
        matches!(r, Err(send::SendError::Store(StoreError::Throttled(_)))),
        "{r:?}"
    );
    assert_eq!(always.attempts(), policy.max_attempts as usize);
    let bound: Duration = (0..policy.max_attempts - 1)
        .map(|n| (policy.base_delay * 2u32.pow(n)).min(policy.max_delay))
        .sum();
    let gaps = always.gaps();
    let slept: Duration = gaps.iter().sum();
    assert!(
        slept < bound + Duration::from_millis(400),
        "backoff {slept:?} over its bound {bound:?}: {gaps:?}"
    );
    for (n, g) in gaps.iter().enumerate() {
        let cap = (policy.base_delay * 2u32.pow(n as u32)).min(policy.max_delay);
        assert!(
            *g < cap + Duration::from_millis(150),
            "gap {n} {g:?} over {cap:?}"
        );
    }
    assert_eq!(direct.range(&conv, Seq(2), 10).await.unwrap().len(), 0);

    // Full jitter: the same throttled call, repeated, never sleeps the same
    // schedule twice.
    let mut schedules = BTreeSet::new();
    for i in 0..3 {
        let again = Throttler::start("TransactWriteItems", u32::MAX).await;
        let app = app_on(production_dynamo(&again.stub.url(), tables.clone()).await);
        let _ = send_with(&app, &alice, &conv, &format!("j{i}")).await;
        schedules.insert(
            again
                .gaps()
                .iter()
                .map(|g| g.as_millis() / 5)
                .collect::<Vec<_>>(),
        );
        assert_eq!(again.target_op, "TransactWriteItems");
        assert!(again.left.load(Ordering::SeqCst) > 0);
    }
    assert!(schedules.len() > 1, "no jitter: {schedules:?}");

    // After the storm the client's retry goes through, once.
    let app = app_on(production_dynamo(&courier_tests::dynamodb_endpoint().await, tables).await);
    assert_eq!(send_with(&app, &alice, &conv, "k2").await.unwrap(), Seq(2));
    assert_eq!(send_with(&app, &alice, &conv, "k2").await.unwrap(), Seq(2));
    outcome(
        "dynamodb throttling",
        2,
        0,
        0,
        0,
        &format!(
            "attempts_when_throttled_twice=3 attempts_when_always_throttled={} gave_up_ms={} backoff_ms={} bound_ms={}",
            always.attempts(),
            took.as_millis(),
            slept.as_millis(),
            bound.as_millis()
        ),
    );
}

// ---- catch-up against dying connections --------------------------------------

/// alice wrote `n` messages in each of two conversations while bob was away.
async fn backlog(r: &Real, n: u64) -> (ConversationId, ConversationId) {
    let c1 = r.conversation(&[&r.alice, &r.bob]).await;
    let c2 = r.conversation(&[&r.carol, &r.bob]).await;
    for i in 1..=n {
        r.send(&r.alice, &c1, &format!("a{i}")).await;
        r.send(&r.carol, &c2, &format!("c{i}")).await;
    }
    (c1, c2)
}

async fn ack_all(r: &Real, user: &UserId, got: &Received) {
    let acks: Vec<AckItem> = got
        .seqs
        .iter()
        .map(|(c, s)| AckItem {
            conversation_id: c.clone(),
            seq: Seq(*s.iter().next_back().unwrap()),
        })
        .collect();
    let report = ack::ack(&r.app, user, &Default::default(), &acks)
        .await
        .unwrap()
        .done()
        .unwrap();
    assert!(report.refused.is_empty());
}

#[tokio::test]
async fn catch_up_killed_after_k_posts_is_completed_by_the_next_connect() {
    // Two conversations of 12 make five posts (two frames each, then
    // `caught_up`): every k below cuts the catch-up short.
    for k in [0usize, 1, 2, 4] {
        let r = real().await;
        let (c1, c2) = backlog(&r, 12).await;
        let (first, _) = r.connect(&r.bob).await;
        r.gateway.die_after(&first.connection_id, k);
        let report = catch_up::catch_up(&r.app, &r.request(&r.bob, &first), None, None)
            .await
            .unwrap();
        assert_eq!(report.ending, Ending::Gone, "k={k}");
        assert_eq!(r.has_pending(&r.bob).await, 2, "nothing deleted, k={k}");
        assert!(
            r.app
                .ports
                .registry
                .lookup(&r.bob)
                .await
                .unwrap()
                .is_empty(),
            "the gone connection left the registry"
        );
        let partial = received(&r.gateway, &[&first]);

        let (second, _) = r.connect(&r.bob).await;
        let report = catch_up::catch_up(&r.app, &r.request(&r.bob, &second), None, None)
            .await
            .unwrap();
        assert_eq!(report.ending, Ending::CaughtUp);
        let got = received(&r.gateway, &[&first, &second]);
        assert_eq!(got.seqs[&c1], all(12), "k={k}");
        assert_eq!(got.seqs[&c2], all(12), "k={k}");
        ack_all(&r, &r.bob, &got).await;
        assert_eq!(r.has_pending(&r.bob).await, 0);
        outcome(
            &format!("catch-up killed after {k} posts"),
            24,
            24,
            0,
            got.duplicates,
            &format!(
                "before_kill={}",
                partial.seqs.values().map(BTreeSet::len).sum::<usize>()
            ),
        );
    }
}

#[tokio::test]
async fn a_410_mid_catch_up_leaves_a_newer_connection_alone() {
    let r = real().await;
    let (c1, c2) = backlog(&r, 10).await;
    let (old, _) = r.connect(&r.bob).await;
    let (newer, _) = r.connect(&r.bob).await;
    r.gateway.die_after(&old.connection_id, 2);
    let report = catch_up::catch_up(&r.app, &r.request(&r.bob, &old), None, None)
        .await
        .unwrap();
    assert_eq!(report.ending, Ending::Gone);
    assert_eq!(
        r.app
            .ports
            .registry
            .lookup(&r.bob)
            .await
            .unwrap()
            .into_iter()
            .next()
            .map(|c| c.connection_id),
        Some(newer.connection_id.clone()),
        "compare-and-delete kept the newer connection"
    );
    assert_eq!(r.has_pending(&r.bob).await, 2);
    catch_up::catch_up(&r.app, &r.request(&r.bob, &newer), None, None)
        .await
        .unwrap();
    let got = received(&r.gateway, &[&old, &newer]);
    assert_eq!((got.seqs[&c1].len(), got.seqs[&c2].len()), (10, 10));
    outcome("410 mid catch-up", 20, 20, 0, got.duplicates, "");
}

#[tokio::test]
async fn a_post_swallowed_before_the_ack_is_redelivered_on_the_next_connect() {
    let r = real().await;
    let conv = r.conversation(&[&r.alice, &r.bob]).await;
    let (half_open, _) = r.connect(&r.bob).await;
    r.gateway.swallow(&half_open.connection_id);
    for i in 1..=3 {
        r.send(&r.alice, &conv, &format!("k{i}")).await;
    }
    assert_eq!(r.pushes_to_bob(), 0, "the posts 'succeeded', so no push");
    assert!(r.gateway.frames(&half_open.connection_id).is_empty());
    assert_eq!(r.store_pending(&r.bob, &conv).await, (1, 3));

    let (fresh, _) = r.connect(&r.bob).await;
    catch_up::catch_up(&r.app, &r.request(&r.bob, &fresh), None, None)
        .await
        .unwrap();
    let got = received(&r.gateway, &[&fresh]);
    assert_eq!(got.seqs[&conv], all(3));
    ack_all(&r, &r.bob, &got).await;
    assert_eq!(r.has_pending(&r.bob).await, 0);
    outcome("post swallowed by a half-open connection", 3, 3, 0, 0, "");
}

#[tokio::test]
async fn catch_up_invoked_three_times_at_once_delivers_everything_and_loses_no_row() {
    let r = real().await;
    let (c1, c2) = backlog(&r, 15).await;
    let (c, _) = r.connect(&r.bob).await;
    let req = r.request(&r.bob, &c);
    // A send lands while the three run.
    let (a, b, d, late) = tokio::join!(
        catch_up::catch_up(&r.app, &req, None, None),
        catch_up::catch_up(&r.app, &req, None, None),
        catch_up::catch_up(&r.app, &req, None, None),
        r.send(&r.alice, &c1, "late"),
    );
    for report in [a, b, d] {
        assert_eq!(report.unwrap().ending, Ending::CaughtUp);
    }
    assert_eq!(late, Seq(16));
    let got = received(&r.gateway, &[&c]);
    assert_eq!(got.caught_up, 3);
    assert_eq!(got.seqs[&c2], all(15));
    // 16 arrived live or by one of the catch-ups; 1..=15 by all three.
    assert_eq!(got.seqs[&c1], all(16));
    assert_eq!(r.store_pending(&r.bob, &c1).await, (1, 16), "no row lost");
    ack_all(&r, &r.bob, &got).await;
    assert_eq!(r.has_pending(&r.bob).await, 0);
    outcome(
        "catch-up invoked three times at once",
        31,
        31,
        0,
        got.duplicates,
        "caught_up_frames=3",
    );
}

// ---- crashes ------------------------------------------------------------------

#[tokio::test]
async fn the_same_client_msg_id_retried_after_a_crash_at_any_port_call_is_stored_once() {
    let r = real().await;
    let probe = r.conversation(&[&r.alice, &r.bob]).await;
    let (_bob_conn, _) = r.connect(&r.bob).await;
    // How many port calls one send makes here (bob online, pushes on).
    let plan = CrashPlan::new(7, 0);
    let app = App::new(crashing_ports(&r.app.ports, &plan), settings());
    send_with(&app, &r.alice, &probe, "probe").await.unwrap();
    let calls = plan.calls();
    assert!(calls >= 4, "a send makes several port calls: {calls}");

    let mut crashed = 0;
    let mut retried = 0;
    for k in 1..=calls {
        for after_effect in [false, true] {
            let conv = r.conversation(&[&r.alice, &r.bob]).await;
            plan.arm(k, after_effect);
            let key = format!("crash-{k}-{after_effect}");
            let first = plan
                .invocation(1, send_with(&app, &r.alice, &conv, &key))
                .await;
            plan.disarm();
            if first.is_err() {
                crashed += 1;
            }
            // A fresh execution environment takes the client's retry.
            let fresh = App::new(r.app.ports.clone(), settings());
            let seq = send_with(&fresh, &r.alice, &conv, &key).await.unwrap();
            retried += 1;
            assert_eq!(seq, Seq(1), "k={k} after={after_effect}");
            if let Ok(s) = first {
                assert_eq!(s, seq, "both answers name one seq");
            }
            assert_eq!(
                r.stored_seqs(&conv).await,
                vec![1],
                "k={k} after={after_effect}"
            );
            assert_eq!(r.store_pending(&r.bob, &conv).await, (1, 1));
        }
    }
    assert!(crashed > 0);
    outcome(
        "same client_msg_id across a crash at every port call of a send",
        retried,
        retried,
        0,
        0,
        &format!("port_calls_per_send={calls} crashed_sends={crashed} stored_once={retried}"),
    );
}

// ---- a hung DynamoDB -------------------------------------------------------------

/// send-message's Lambda timeout (template.yaml): a send must give up on a
/// hung DynamoDB before Lambda kills it, so the client gets an `internal`
/// frame naming its `client_msg_id` rather than API Gateway's bare error.
const SEND_FUNCTION_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_hung_dynamodb_costs_a_bounded_time() {
    let (proxy, url) = FaultProxy::in_front_of(&courier_tests::dynamodb_endpoint().await)
        .await
        .unwrap();
    let aws = support::aws_with(AwsEndpoints {
        dynamodb: Some(url),
        ..AwsEndpoints::default()
    })
    .await;
    let client = aws.dynamodb();
    let attempt = client
        .config()
        .timeout_config()
        .and_then(|t| t.operation_attempt_timeout())
        .expect("the DynamoDB client has an attempt timeout");
    let policy = RetryPolicy::default();
    let backoff: Duration = (0..policy.max_attempts - 1)
        .map(|n| (policy.base_delay * 2u32.pow(n)).min(policy.max_delay))
        .sum();
    let worst = attempt * policy.max_attempts + backoff;
    assert!(
        worst < SEND_FUNCTION_TIMEOUT,
        "a hung DynamoDB holds one store call for up to {worst:?} ({} attempts of {attempt:?}), \
         past send-message's {SEND_FUNCTION_TIMEOUT:?}",
        policy.max_attempts
    );

    // And the attempt timeout is what ends a hung call: one attempt, black hole.
    let store = DynamoStore::new(client, courier_tests::fresh_tables().await).with_retry_policy(
        RetryPolicy {
            max_attempts: 1,
            ..policy
        },
    );
    let conv = ConversationId::parse(&unique("conv")).unwrap();
    assert!(store.get(&conv).await.unwrap().is_none(), "reachable first");
    proxy.set_mode(Mode::BlackHole);
    let t = Instant::now();
    let r = store.get(&conv).await;
    let took = t.elapsed();
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(
        took >= attempt && took < attempt + Duration::from_secs(2),
        "{took:?} for an attempt timeout of {attempt:?}"
    );
    outcome(
        "dynamodb hung (black hole)",
        0,
        0,
        0,
        0,
        &format!(
            "one_attempt_ms={} worst_case_per_call_ms={} send_function_timeout_ms={}",
            took.as_millis(),
            worst.as_millis(),
            SEND_FUNCTION_TIMEOUT.as_millis()
        ),
    );
}
