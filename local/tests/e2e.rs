//! Courier end to end: real WebSocket clients (`courier-client` and raw
//! tungstenite) through the local gateway running the real handlers.
//!
//! Over 700 lines: one suite, every scenario on the embedded and the Redis +
//! moto backend through one harness.
//!
//! Every scenario runs twice: on the embedded default (everything in
//! memory) and on real services (Redis for the registry, moto's DynamoDB
//! for the stores, fresh tables per test). Redis is shared by the tests of
//! a run, so each test's users get a unique suffix.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use courier_client::demo::{self, DemoOptions};
use courier_client::{Client, ClientConfig, Tuning, minted_token};
use courier_core::domain::{ConnectionId, ConversationId, UserId};
use courier_core::ports::PostError;
use courier_local::routes::CONNECT;
use courier_local::wiring::{self, LOCAL_JWT_SECRET, LocalOptions, Started};
use futures::{SinkExt, StreamExt};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    RedisAndDynamo,
}

struct Env {
    started: Started,
    suffix: String,
}

type Customize = Box<
    dyn FnOnce(
        courier_core::app::App,
        courier_local::routes::Routes,
    ) -> courier_local::routes::Routes,
>;

async fn start(backend: Backend) -> Env {
    start_with(backend, |_| {}, Box::new(|_, r| r)).await
}

async fn start_with(
    backend: Backend,
    tweak: impl FnOnce(&mut LocalOptions),
    customize: Customize,
) -> Env {
    courier_tests::init_test_logging();
    let mut options = LocalOptions::default();
    if let Backend::RedisAndDynamo = backend {
        options.redis_url = Some(courier_tests::redis_url().await);
        options.dynamodb_endpoint = Some(courier_tests::dynamodb_endpoint().await);
        options.tables = courier_tests::fresh_tables().await;
    }
    tweak(&mut options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = wiring::start_with(options, listener, customize)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    Env {
        started,
        suffix: id[..8].to_owned(),
    }
}

impl Env {
    fn name(&self, who: &str) -> String {
        format!("{who}-{}", self.suffix)
    }

    fn user(&self, who: &str) -> UserId {
        UserId::parse(&self.name(who)).unwrap()
    }

    fn ws(&self) -> String {
        self.started.gateway.ws_url()
    }

    async fn client(&self, who: &str) -> Client {
        let user = self.user(who);
        let mut config = ClientConfig::new(
            self.ws(),
            user.clone(),
            minted_token(LOCAL_JWT_SECRET, &user),
        );
        config.tuning = Tuning {
            caught_up_timeout: Duration::from_secs(3),
            send_retry: Duration::from_secs(1),
            hole_grace: Duration::from_millis(300),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ..Tuning::default()
        };
        Client::connect(config).await.unwrap()
    }

    fn token(&self, who: &str) -> String {
        courier_aws::auth::mint_hs256(
            LOCAL_JWT_SECRET.as_bytes(),
            &self.user(who),
            Duration::from_secs(600),
            None,
            None,
        )
    }

    async fn registry_entry(&self, who: &str) -> Option<ConnectionId> {
        self.started
            .registry
            .lookup(&self.user(who))
            .await
            .unwrap()
            .into_iter()
            .next()
            .map(|c| c.connection_id)
    }

    async fn pending_rows(&self, who: &str) -> usize {
        self.started
            .pending
            .list(&self.user(who))
            .await
            .unwrap()
            .len()
    }

    async fn eventually(&self, what: &str, timeout: Duration, check: impl AsyncCheck) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check.holds(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not within {timeout:?}: {what}");
    }
}

trait AsyncCheck {
    async fn holds(&self, env: &Env) -> bool;
}

struct NoPending(&'static str);
impl AsyncCheck for NoPending {
    async fn holds(&self, env: &Env) -> bool {
        env.pending_rows(self.0).await == 0
    }
}

struct NotRegistered(&'static str);
impl AsyncCheck for NotRegistered {
    async fn holds(&self, env: &Env) -> bool {
        env.registry_entry(self.0).await.is_none()
    }
}

fn contiguous(c: &Client, conv: &ConversationId) -> u64 {
    c.inspect(|s| s.timeline(conv).map_or(0, |t| t.contiguous_through().get()))
}

/// The timeline holds exactly seqs 1..=n with the bodies `body(i)`.
fn assert_timeline(c: &Client, conv: &ConversationId, n: u64, body: impl Fn(u64) -> String) {
    let t = c.timeline(conv);
    let seqs: Vec<u64> = t.iter().map(|m| m.seq.get()).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{conv}");
    for m in &t {
        assert_eq!(m.body, body(m.seq.get()), "{conv} #{}", m.seq);
    }
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$scenario(super::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_and_dynamodb() {
                super::$scenario(super::Backend::RedisAndDynamo).await
            }
        }
    )*};
}

/// The local gateway limits sends per user as send-message does: a flood
/// from one socket gets `rate_limited` frames naming each refused
/// `client_msg_id`, stores nothing for them, and another member of the same
/// conversation sends at once.
async fn a_flood_is_rate_limited_and_other_users_are_not(backend: Backend) {
    let env = start_with(
        backend,
        |o| {
            o.rate_limit = courier_core::config::RateLimitConfig {
                per_sec: 1.0,
                burst: 5,
            };
        },
        Box::new(|_, r| r),
    )
    .await;
    let (alice, bob) = (env.client("alice").await, env.client("bob").await);
    let conv = alice
        .create_conversation(&[&env.name("alice"), &env.name("bob")])
        .await
        .unwrap();
    // alice floods from a second socket of her own, frames sent back to back.
    let mut ws = raw(&env, &env.token("alice")).await.unwrap();
    let flood = 30;
    for i in 0..flood {
        let frame = json!({
            "action": "sendMessage",
            "conversation_id": conv,
            "client_msg_id": format!("flood-{i}"),
            "body": format!("f{i}"),
        });
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    let (mut sent, mut refused) = (BTreeSet::new(), BTreeSet::new());
    while sent.len() + refused.len() < flood {
        let v = next_json(&mut ws).await;
        let key = v["client_msg_id"].as_str().map(str::to_owned);
        match v["type"].as_str() {
            Some("sent") => assert!(sent.insert(key.unwrap())),
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                assert!(refused.insert(key.expect("a refusal names its frame")));
            }
            _ => {} // caught_up of the socket's own catch-up
        }
    }
    // The burst, plus what refilled while the flood ran (1/s).
    assert!((5..=8).contains(&sent.len()), "{} sent", sent.len());
    assert!(sent.is_disjoint(&refused));
    // bob, same conversation, is not limited by alice's flood.
    let seq = bob.send(&conv, "from bob").await.unwrap().seq;
    assert_eq!(
        seq.get(),
        sent.len() as u64 + 1,
        "refused sends stored nothing"
    );
    eprintln!(
        "outcome: local gateway flood: sent={flood} stored={} refused={} other_user_sent=1/1",
        sent.len(),
        refused.len()
    );
}

on_both_backends!(
    seed_story_through_the_demo,
    seed_story_through_the_sdk_adapters,
    messages_sent_during_catch_up_all_arrive,
    posting_before_connect_returns_is_gone_and_catch_up_still_delivers,
    disconnect_clears_the_registry_and_twenty_reconnects_lose_nothing,
    oversized_frames_close_with_1009_and_malformed_frames_get_errors,
    bad_tokens_are_refused_at_the_handshake,
    sdk_clients_pointed_at_the_gateway_work,
    a_lost_catch_up_is_recovered_by_the_clients_sync,
    a_capped_catch_up_is_completed_with_more_and_range_syncs,
    a_flood_is_rate_limited_and_other_users_are_not,
);

#[test]
fn the_local_secret_is_the_one_the_client_mints_with() {
    assert_eq!(LOCAL_JWT_SECRET, courier_client::LOCAL_JWT_SECRET);
}

fn demo_options(env: &Env) -> DemoOptions {
    let mut o = DemoOptions::new(&env.ws(), LOCAL_JWT_SECRET);
    o.alice = env.name("alice");
    o.bob = env.name("bob");
    o.carol = env.name("carol");
    o
}

async fn seed_story_through_the_demo(backend: Backend) {
    let env = start(backend).await;
    let outcome = demo::run(&demo_options(&env)).await.unwrap();
    assert!(
        outcome.ok(),
        "{:?}\n{}",
        outcome.problems,
        outcome.transcript
    );
    assert!(outcome.transcript.contains("hello??"));
    assert_eq!(env.pending_rows("bob").await, 0);
}

/// The demo again, with posts and the catch-up invoke going through the
/// real `ApiGatewayManagement` and `LambdaTrigger` adapters (AWS SDK) to the
/// gateway's own HTTP APIs.
async fn seed_story_through_the_sdk_adapters(backend: Backend) {
    let env = start_with(backend, |o| o.via_aws_apis = true, Box::new(|_, r| r)).await;
    let outcome = demo::run(&demo_options(&env)).await.unwrap();
    assert!(
        outcome.ok(),
        "{:?}\n{}",
        outcome.problems,
        outcome.transcript
    );
}

async fn messages_sent_during_catch_up_all_arrive(backend: Backend) {
    let env = start(backend).await;
    let (alice, bob, carol) = (
        env.client("alice").await,
        env.client("bob").await,
        env.client("carol").await,
    );
    let with_alice = alice
        .create_conversation(&[&env.name("alice"), &env.name("bob")])
        .await
        .unwrap();
    let with_carol = carol
        .create_conversation(&[&env.name("carol"), &env.name("bob")])
        .await
        .unwrap();
    bob.go_offline().await;
    let (backlog, during) = (40u64, 30u64);
    for i in 1..=backlog {
        alice.send(&with_alice, &format!("a{i}")).await.unwrap();
        carol.send(&with_carol, &format!("c{i}")).await.unwrap();
    }
    // bob connects while both keep sending.
    let senders = {
        let (alice, carol) = (alice.clone(), carol.clone());
        let (ca, cc) = (with_alice.clone(), with_carol.clone());
        tokio::spawn(async move {
            for i in backlog + 1..=backlog + during {
                alice.send(&ca, &format!("a{i}")).await.unwrap();
                carol.send(&cc, &format!("c{i}")).await.unwrap();
            }
        })
    };
    bob.go_online().await.unwrap();
    senders.await.unwrap();
    let total = backlog + during;
    bob.wait_until(Duration::from_secs(30), |s| {
        [&with_alice, &with_carol].iter().all(|c| {
            s.timeline(c)
                .is_some_and(|t| t.contiguous_through().get() == total)
        })
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "bob has {} and {} of {total}",
            contiguous(&bob, &with_alice),
            contiguous(&bob, &with_carol)
        )
    });
    assert_timeline(&bob, &with_alice, total, |i| format!("a{i}"));
    assert_timeline(&bob, &with_carol, total, |i| format!("c{i}"));
    env.eventually(
        "bob's pending rows cleared by his acks",
        Duration::from_secs(10),
        NoPending("bob"),
    )
    .await;
}

async fn posting_before_connect_returns_is_gone_and_catch_up_still_delivers(backend: Backend) {
    let early: Arc<Mutex<Vec<Result<(), PostError>>>> = Arc::default();
    let seen = early.clone();
    // `$connect` is Courier's, followed by a post to the very connection
    // (still opening) and a pause, so catch-up's first posts meet 410 too.
    let customize: Customize = Box::new(move |app, routes| {
        let app = Arc::new(app);
        routes.route(
            CONNECT,
            "connect",
            move |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
                let (app, seen) = (app.clone(), seen.clone());
                async move {
                    let id = ConnectionId::parse(
                        e.payload.request_context.connection_id.as_deref().unwrap(),
                    )
                    .unwrap();
                    let response = connect::handle(&app, e).await?;
                    let posted = app.ports.gateway.post(&id, br#"{"type":"pong"}"#).await;
                    seen.lock().unwrap().push(posted);
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    Ok(response)
                }
            },
        )
    });
    let env = start_with(backend, |_| {}, customize).await;
    let alice = env.client("alice").await;
    let bob = env.client("bob").await;
    let conv = alice
        .create_conversation(&[&env.name("alice"), &env.name("bob")])
        .await
        .unwrap();
    bob.go_offline().await;
    early.lock().unwrap().clear();
    for body in ["hey", "where are you?", "hello??"] {
        alice.send(&conv, body).await.unwrap();
    }
    bob.go_online().await.unwrap();
    assert_eq!(*early.lock().unwrap(), vec![Err(PostError::Gone)]);
    bob.wait_until(Duration::from_secs(10), |s| {
        s.timeline(&conv)
            .is_some_and(|t| t.contiguous_through().get() == 3)
            && s.caught_up_count() >= 1
    })
    .await
    .unwrap();
    let bodies: Vec<String> = bob.timeline(&conv).into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, ["hey", "where are you?", "hello??"]);
}

async fn disconnect_clears_the_registry_and_twenty_reconnects_lose_nothing(backend: Backend) {
    let env = start(backend).await;
    let alice = env.client("alice").await;
    let bob = env.client("bob").await;
    assert!(env.registry_entry("bob").await.is_some());
    bob.go_offline().await;
    env.eventually(
        "bob's registry entry removed by $disconnect",
        Duration::from_secs(5),
        NotRegistered("bob"),
    )
    .await;
    bob.go_online().await.unwrap();
    let conv = alice
        .create_conversation(&[&env.name("alice"), &env.name("bob")])
        .await
        .unwrap();

    let n = 120u64;
    let sender = {
        let (alice, conv) = (alice.clone(), conv.clone());
        tokio::spawn(async move {
            for i in 1..=n {
                alice.send(&conv, &format!("m{i}")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for round in 0..20u64 {
        tokio::time::sleep(Duration::from_millis(20 + (round * 7) % 40)).await;
        bob.go_offline().await;
        tokio::time::sleep(Duration::from_millis(10 + (round * 13) % 30)).await;
        bob.go_online().await.unwrap();
    }
    sender.await.unwrap();
    bob.wait_until(Duration::from_secs(30), |s| {
        s.timeline(&conv)
            .is_some_and(|t| t.contiguous_through().get() == n)
    })
    .await
    .unwrap_or_else(|_| panic!("bob has {} of {n}", contiguous(&bob, &conv)));
    assert_timeline(&bob, &conv, n, |i| format!("m{i}"));
    assert!(bob.inspect(|s| s.opens()) >= 22);
    env.eventually(
        "pending cleared after the last reconnect",
        Duration::from_secs(10),
        NoPending("bob"),
    )
    .await;
    assert!(env.registry_entry("bob").await.is_some());
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(env: &Env, token: &str) -> Result<Raw, u16> {
    match tokio_tungstenite::connect_async(format!("{}/?token={token}", env.ws())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("handshake failed without a status: {e}"),
    }
}

async fn next_json(ws: &mut Raw) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// The next frame of type `kind`, skipping others (a catch-up's
/// `caught_up` may come first).
async fn next_of(ws: &mut Raw, kind: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

async fn oversized_frames_close_with_1009_and_malformed_frames_get_errors(backend: Backend) {
    let env = start(backend).await;
    let mut ws = raw(&env, &env.token("bob")).await.unwrap();
    let cases = [
        ("not json", "bad_request"),
        ("[1,2]", "bad_request"),
        (r#"{"no":"action"}"#, "bad_request"),
        (
            r#"{"action":"sendMessage","conversation_id":"c1"}"#,
            "bad_request",
        ),
        (
            r#"{"action":"sendMessage","conversation_id":"c 1","client_msg_id":"k","body":"x"}"#,
            "bad_request",
        ),
        (r#"{"action":"ack","acks":[]}"#, "bad_request"),
        (r#"{"action":"sync","after_seq":-1}"#, "bad_request"),
        (r#"{"action":"fly","request_id":"r1"}"#, "unknown_action"),
    ];
    for (frame, code) in cases {
        ws.send(Message::text(frame)).await.unwrap();
        let reply = next_of(&mut ws, "error").await;
        assert_eq!(reply["code"], code, "{frame} → {reply}");
    }
    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    assert_eq!(next_of(&mut ws, "error").await["code"], "bad_request");
    // Still open: a heartbeat is answered.
    ws.send(Message::text(r#"{"action":"ping","request_id":"hb"}"#))
        .await
        .unwrap();
    assert_eq!(next_of(&mut ws, "pong").await["request_id"], "hb");

    let big = format!(
        r#"{{"action":"sendMessage","conversation_id":"c1","client_msg_id":"k1","body":"{}"}}"#,
        "x".repeat(33 * 1024)
    );
    ws.send(Message::text(big)).await.unwrap();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1009);
    env.eventually(
        "$disconnect ran after the 1009 close",
        Duration::from_secs(5),
        NotRegistered("bob"),
    )
    .await;
}

async fn bad_tokens_are_refused_at_the_handshake(backend: Backend) {
    let env = start(backend).await;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let expired = courier_aws::auth::sign_hs256(
        LOCAL_JWT_SECRET.as_bytes(),
        &serde_json::json!({"sub": env.name("bob"), "iat": now - 7200, "exp": now - 3600}),
    );
    let wrong_key = courier_aws::auth::mint_hs256(
        b"not-the-secret",
        &env.user("bob"),
        Duration::from_secs(600),
        None,
        None,
    );
    for (what, token) in [
        ("missing", ""),
        ("garbage", "garbage"),
        ("expired", &expired),
        ("wrongly signed", &wrong_key),
    ] {
        assert_eq!(raw(&env, token).await.err(), Some(401), "{what} token");
    }
    assert!(env.registry_entry("bob").await.is_none());
    assert!(raw(&env, &env.token("bob")).await.is_ok());
}

fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_lambda::config::SharedCredentialsProvider::new(
            aws_sdk_lambda::config::Credentials::new("local", "local", None, None, "tests"),
        ))
        .endpoint_url(endpoint)
        .build()
}

async fn sdk_clients_pointed_at_the_gateway_work(backend: Backend) {
    let env = start(backend).await;
    let mut ws = raw(&env, &env.token("bob")).await.unwrap();
    assert_eq!(next_of(&mut ws, "caught_up").await["messages"], 0);
    let id = env.registry_entry("bob").await.unwrap();

    let mgmt = aws_sdk_apigatewaymanagement::Client::new(&sdk_config(
        &env.started.gateway.management_endpoint(),
    ));
    mgmt.post_to_connection()
        .connection_id(id.as_str())
        .data(aws_smithy_types::Blob::new(r#"{"type":"hello"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    let info = mgmt
        .get_connection()
        .connection_id(id.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(
        info.identity().and_then(|i| i.source_ip()),
        Some("127.0.0.1")
    );

    // catch-up through the Invoke API, both ways connect would call it.
    let lambda = aws_sdk_lambda::Client::new(&sdk_config(&env.started.gateway.http_url()));
    let payload =
        serde_json::json!({"user_id": env.name("bob"), "connection_id": id.as_str()}).to_string();
    let out = lambda
        .invoke()
        .function_name("catch-up")
        .payload(aws_smithy_types::Blob::new(payload.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 200);
    assert!(out.function_error().is_none());
    let report: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(report["ending"], "caught_up", "{report}");
    next_of(&mut ws, "caught_up").await;
    let out = lambda
        .invoke()
        .function_name("catch-up")
        .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
        .payload(aws_smithy_types::Blob::new(payload))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 202);
    next_of(&mut ws, "caught_up").await;

    mgmt.delete_connection()
        .connection_id(id.as_str())
        .send()
        .await
        .unwrap();
    env.eventually(
        "$disconnect after DeleteConnection",
        Duration::from_secs(5),
        NotRegistered("bob"),
    )
    .await;
    let gone = mgmt
        .post_to_connection()
        .connection_id(id.as_str())
        .data(aws_smithy_types::Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert!(gone.into_service_error().is_gone_exception());
}

/// Lambda may drop an async invoke: here connect's catch-up invocation
/// reaches a no-op. The client sees no `caught_up`, sends `sync`, and the
/// `sync` route (the real catch-up) delivers.
async fn a_lost_catch_up_is_recovered_by_the_clients_sync(backend: Backend) {
    let customize: Customize = Box::new(|_, routes| {
        routes.function("catch-up", |_e: LambdaEvent<Value>| async {
            Ok(Value::Null)
        })
    });
    let env = start_with(backend, |_| {}, customize).await;
    let alice = env.client("alice").await;
    let bob = env.client("bob").await;
    let conv = alice
        .create_conversation(&[&env.name("alice"), &env.name("bob")])
        .await
        .unwrap();
    bob.go_offline().await;
    for i in 1..=5 {
        alice.send(&conv, &format!("m{i}")).await.unwrap();
    }
    let caught_up = bob.inspect(|s| s.caught_up_count());
    bob.go_online().await.unwrap();
    bob.wait_until(Duration::from_secs(10), |s| {
        s.caught_up_count() > caught_up
            && s.timeline(&conv)
                .is_some_and(|t| t.contiguous_through().get() == 5)
    })
    .await
    .unwrap();
    assert_timeline(&bob, &conv, 5, |i| format!("m{i}"));
}

/// A backlog over the per-conversation cap: catch-up sends the first part
/// and a `more`; the client pulls the rest with range syncs.
async fn a_capped_catch_up_is_completed_with_more_and_range_syncs(backend: Backend) {
    let env = start_with(
        backend,
        |o| o.settings.catch_up.per_conversation_cap = 4,
        Box::new(|_, r| r),
    )
    .await;
    let alice = env.client("alice").await;
    let bob = env.client("bob").await;
    let conv = alice
        .create_conversation(&[&env.name("alice"), &env.name("bob")])
        .await
        .unwrap();
    bob.go_offline().await;
    let n = 23u64;
    for i in 1..=n {
        alice.send(&conv, &format!("m{i}")).await.unwrap();
    }
    bob.go_online().await.unwrap();
    bob.wait_until(Duration::from_secs(15), |s| {
        s.timeline(&conv)
            .is_some_and(|t| t.contiguous_through().get() == n)
    })
    .await
    .unwrap_or_else(|_| panic!("bob has {} of {n}", contiguous(&bob, &conv)));
    assert_timeline(&bob, &conv, n, |i| format!("m{i}"));
    env.eventually("pending cleared", Duration::from_secs(10), NoPending("bob"))
        .await;
}

/// The client's heartbeat keeps a connection open past the idle timeout.
#[tokio::test]
async fn the_heartbeat_keeps_an_idle_connection_open() {
    let env = start_with(
        Backend::Embedded,
        |o| o.gateway.idle_timeout = Duration::from_millis(800),
        Box::new(|_, r| r),
    )
    .await;
    let user = env.user("bob");
    let mut config = ClientConfig::new(
        env.ws(),
        user.clone(),
        minted_token(LOCAL_JWT_SECRET, &user),
    );
    config.tuning.heartbeat = Duration::from_millis(250);
    let bob = Client::connect(config).await.unwrap();
    // Eight answered heartbeats, 250 ms apart: the connection has lived
    // through more than two idle timeouts (800 ms) by then.
    bob.wait_until(Duration::from_secs(15), |s| s.pongs() >= 8)
        .await
        .unwrap_or_else(|_| panic!("only {} pongs", bob.inspect(|s| s.pongs())));
    assert_eq!(
        bob.inspect(|s| s.opens()),
        1,
        "the connection never dropped"
    );
    assert!(bob.inspect(|s| s.is_open()));

    // Without the heartbeat the gateway closes it (and the client reconnects).
    let mut config = ClientConfig::new(
        env.ws(),
        user.clone(),
        minted_token(LOCAL_JWT_SECRET, &user),
    );
    config.tuning.heartbeat = Duration::from_secs(3600);
    config.tuning.caught_up_timeout = Duration::from_secs(3600);
    let quiet = Client::connect(config).await.unwrap();
    quiet
        .wait_until(Duration::from_secs(5), |s| s.opens() >= 2)
        .await
        .unwrap();
}
