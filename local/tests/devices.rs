//! Several devices of one user, end to end: real WebSocket clients
//! (`courier-client`, and raw tungstenite where a device must not ack or
//! must not reconnect) through the local gateway running the real handlers.
//!
//! Every scenario runs on the embedded default (everything in memory), on
//! real services (Redis for the registry, moto's DynamoDB for the stores,
//! fresh tables per test; Redis is shared by the tests of a run, so each
//! test's users get a unique suffix), and with the registry on a
//! three-master Redis Cluster through the cluster client, as deployed
//! (`REDIS_CLUSTER=true` in template.yaml), and with the registry in a
//! DynamoDB table on moto beside the stores (`REGISTRY_BACKEND=dynamodb`, a
//! stage with no Redis at all). The registry and pending rows are
//! read through the gateway's `/_local/registry` and `/_local/pending`
//! inspection endpoints.
//!
//! What `clients/rust/tests/devices.rs` already shows on the embedded
//! backend (both devices ack their share, own sends, the device limit as the
//! client reports it) is shown here with what only the gateway can see: which
//! device's cursor moved, which entry the registry holds, that a delivery was
//! live and not a catch-up, and the frames on the wire.
//!
//! Nothing waits by sleeping: every wait polls a condition with a deadline.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use courier_client::{
    Client, ClientConfig, ClientError, RequestError, Tuning, connect_url, minted_token,
};
use courier_core::app::App;
use courier_core::config::RateLimitConfig;
use courier_core::domain::{
    Connection, ConversationId, DeviceId, Millis, PendingDelivery, Seq, UserId, now_millis,
};
use courier_core::ports::{LinkOutcome, RateDecision};
use courier_core::protocol::{ErrorCode, ServerFrame};
use courier_local::wiring::{self, LOCAL_JWT_SECRET, LocalOptions, Started};
use futures::StreamExt;
use lambda_runtime::LambdaEvent;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);
const DAY_MS: Millis = 86_400_000;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    RedisAndDynamo,
    /// A three-master Redis Cluster and moto: the deployed shape
    /// (ElastiCache Serverless is cluster-mode only).
    ClusterAndDynamo,
    /// Everything on moto, the registry in its own table: a stage with
    /// nothing running at rest.
    DynamoOnly,
}

struct Env {
    started: Started,
    /// The very `App` the gateway's handlers run on: tests drive a handler
    /// directly with it, or reach a port (the link store) behind the
    /// clients' backs.
    app: App,
    suffix: String,
    http: reqwest::Client,
}

async fn start(backend: Backend) -> Env {
    start_with(backend, |_| {}).await
}

async fn start_with(backend: Backend, tweak: impl FnOnce(&mut LocalOptions)) -> Env {
    courier_tests::init_test_logging();
    let mut options = LocalOptions::default();
    match backend {
        Backend::Embedded => {}
        Backend::RedisAndDynamo => {
            options.redis_url = Some(courier_tests::redis_url().await);
        }
        Backend::ClusterAndDynamo => {
            options.redis_url = Some(courier_tests::redis_cluster_url().await);
            options.redis_cluster = true;
        }
        Backend::DynamoOnly => {
            options.registry_table = Some(courier_tests::fresh_registry_table().await);
        }
    }
    if !matches!(backend, Backend::Embedded) {
        options.dynamodb_endpoint = Some(courier_tests::dynamodb_endpoint().await);
        options.tables = courier_tests::fresh_tables().await;
    }
    tweak(&mut options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app: Arc<Mutex<Option<App>>> = Arc::default();
    let keep = app.clone();
    let started = wiring::start_with(options, listener, move |a, routes| {
        *keep.lock().unwrap() = Some(a);
        routes
    })
    .await
    .unwrap();
    let app = app.lock().unwrap().take().unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    Env {
        started,
        app,
        suffix: id[..8].to_owned(),
        http: reqwest::Client::new(),
    }
}

fn device_id(raw: &str) -> DeviceId {
    DeviceId::parse(raw).unwrap()
}

impl Env {
    fn name(&self, who: &str) -> String {
        format!("{who}-{}", self.suffix)
    }

    fn user(&self, who: &str) -> UserId {
        UserId::parse(&self.name(who)).unwrap()
    }

    fn config(&self, who: &str, device: &str) -> ClientConfig {
        let user = self.user(who);
        let mut config = ClientConfig::new(
            self.started.gateway.ws_url(),
            user.clone(),
            minted_token(LOCAL_JWT_SECRET, &user),
        )
        .with_device(device)
        .unwrap();
        config.tuning = Tuning {
            caught_up_timeout: Duration::from_secs(3),
            send_retry: Duration::from_secs(1),
            hole_grace: Duration::from_millis(300),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ..Tuning::default()
        };
        config
    }

    /// `who` on `device`, connected and through its first catch-up (so a
    /// later `caught_up` count tells a catch-up from a live delivery).
    async fn device(&self, who: &str, device: &str) -> Client {
        connected(Client::connect(self.config(who, device)).await.unwrap()).await
    }

    async fn conversation(&self, creator: &Client, with: &str) -> ConversationId {
        let me = creator.user().to_string();
        creator
            .create_conversation(&[&me, &self.name(with)])
            .await
            .unwrap()
    }

    async fn local<T: serde::de::DeserializeOwned>(&self, what: &str, who: &str) -> T {
        let url = format!(
            "{}/_local/{what}/{}",
            self.started.gateway.http_url(),
            self.name(who)
        );
        let response = self.http.get(&url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// `who`'s registry entries, one per connected device.
    async fn registry(&self, who: &str) -> Vec<Connection> {
        self.local("registry", who).await
    }

    async fn registered_devices(&self, who: &str) -> Vec<String> {
        let mut devices: Vec<String> = self
            .registry(who)
            .await
            .into_iter()
            .map(|c| c.device_id.to_string())
            .collect();
        devices.sort_unstable();
        devices
    }

    async fn entry(&self, who: &str, device: &str) -> Option<Connection> {
        self.registry(who)
            .await
            .into_iter()
            .find(|c| c.device_id.as_str() == device)
    }

    async fn pending(&self, who: &str) -> Vec<PendingDelivery> {
        self.local("pending", who).await
    }

    async fn row(&self, who: &str, conv: &ConversationId) -> Option<PendingDelivery> {
        self.pending(who)
            .await
            .into_iter()
            .find(|r| &r.conversation_id == conv)
    }

    /// A raw socket of `who` on `device`: it acks nothing and never
    /// reconnects.
    async fn raw(&self, who: &str, device: &str, open: Option<&ConversationId>) -> Raw {
        let token = courier_aws::auth::mint_hs256(
            LOCAL_JWT_SECRET.as_bytes(),
            &self.user(who),
            Duration::from_secs(600),
            None,
            None,
        );
        let url = connect_url(
            &self.started.gateway.ws_url(),
            &token,
            Some(&device_id(device)),
            open,
        );
        tokio_tungstenite::connect_async(url).await.unwrap().0
    }
}

async fn connected(client: Client) -> Client {
    client
        .wait_until(WAIT, |s| s.caught_up_count() >= 1)
        .await
        .unwrap();
    client
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn through(c: &Client, conv: &ConversationId) -> Seq {
    c.inspect(|s| s.timeline(conv).map(|t| t.contiguous_through()))
        .unwrap_or_default()
}

async fn holds(c: &Client, conv: &ConversationId, seq: u64, who: &str) {
    c.wait_until(WAIT, |s| {
        s.timeline(conv)
            .is_some_and(|t| t.contiguous_through() >= Seq(seq))
    })
    .await
    .unwrap_or_else(|_| panic!("{who} holds {} of {seq}", through(c, conv)));
}

fn bodies(c: &Client, conv: &ConversationId) -> Vec<String> {
    c.timeline(conv).into_iter().map(|m| m.body).collect()
}

/// `(opens, caught_up frames)`: unchanged across a delivery, the delivery
/// was a live post and not a reconnect's catch-up.
fn sessions(c: &Client) -> (u64, u64) {
    c.inspect(|s| (s.opens(), s.caught_up_count()))
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next server frame, or `None` once the socket closed.
async fn next_frame(ws: &mut Raw) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

macro_rules! on_every_backend {
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
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster_and_dynamodb() {
                super::$scenario(super::Backend::ClusterAndDynamo).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dynamodb_registry() {
                super::$scenario(super::Backend::DynamoOnly).await
            }
        }
    )*};
}

on_every_backend!(
    every_online_device_gets_live_messages,
    one_devices_ack_leaves_the_others_share_for_its_catch_up,
    the_senders_other_device_gets_what_it_sent_live_and_at_catch_up,
    a_late_connect_of_an_older_connection_keeps_the_newer_one,
    a_lost_registry_entry_heals_at_the_next_ping,
    unlink_closes_the_other_device_and_drops_its_hold,
    a_device_over_max_devices_is_told_the_limit_and_closed,
    a_device_unseen_past_the_ttl_holds_nothing_back_and_makes_room,
    a_new_device_lists_its_conversations_and_range_syncs_history,
    the_opened_conversation_comes_before_forty_nine_others,
);

/// Both of bob's devices are registered and each gets every one of alice's
/// messages live (no reconnect, no catch-up); then both acks clear the row.
async fn every_online_device_gets_live_messages(backend: Backend) {
    let env = start(backend).await;
    let alice = env.device("alice", "a1").await;
    let phone = env.device("bob", "phone").await;
    let laptop = env.device("bob", "laptop").await;
    assert_eq!(env.registered_devices("bob").await, ["laptop", "phone"]);
    let conv = env.conversation(&alice, "bob").await;
    let before = [sessions(&phone), sessions(&laptop)];
    for i in 1..=5 {
        alice.send(&conv, &format!("m{i}")).await.unwrap();
    }
    for (who, c, before) in [("phone", &phone, before[0]), ("laptop", &laptop, before[1])] {
        holds(c, &conv, 5, who).await;
        assert_eq!(bodies(c, &conv), ["m1", "m2", "m3", "m4", "m5"], "{who}");
        assert_eq!(sessions(c), before, "{who}: live, not a catch-up");
    }
    eventually("bob's row cleared by both devices' acks", async || {
        env.pending("bob").await.is_empty()
    })
    .await;
}

/// The laptop is offline while the phone gets and acks three messages: the
/// phone's cursor moves, the row stays for the laptop, the laptop's catch-up
/// on reconnect delivers exactly what it missed, and only its ack clears
/// the row.
async fn one_devices_ack_leaves_the_others_share_for_its_catch_up(backend: Backend) {
    let env = start(backend).await;
    let alice = env.device("alice", "a1").await;
    let phone = env.device("bob", "phone").await;
    let laptop = env.device("bob", "laptop").await;
    let conv = env.conversation(&alice, "bob").await;
    alice.send(&conv, "m1").await.unwrap();
    holds(&laptop, &conv, 1, "laptop").await;
    eventually("m1 acked by both", async || {
        env.pending("bob").await.is_empty()
    })
    .await;

    laptop.go_offline().await;
    eventually("the laptop's $disconnect ran", async || {
        env.registered_devices("bob").await == ["phone"]
    })
    .await;
    for i in 2..=4 {
        alice.send(&conv, &format!("m{i}")).await.unwrap();
    }
    holds(&phone, &conv, 4, "phone").await;
    let (phone_id, laptop_id) = (device_id("phone"), device_id("laptop"));
    eventually("the phone's cursor at 4", async || {
        env.row("bob", &conv)
            .await
            .is_some_and(|r| r.cursors.get(&phone_id) == Some(&Seq(4)))
    })
    .await;
    let row = env
        .row("bob", &conv)
        .await
        .expect("the laptop's share stays");
    assert_eq!((row.first_undelivered_seq, row.last_seq), (Seq(2), Seq(4)));
    assert_eq!(row.held_by(&laptop_id), Seq(1));
    assert_eq!(through(&laptop, &conv), Seq(1));

    let (_, catch_ups) = sessions(&laptop);
    laptop.go_online().await.unwrap();
    // Nothing was posted to it live (it was not registered): its catch-up
    // brings m2..m4 and ends with `caught_up`.
    laptop
        .wait_until(WAIT, |s| {
            s.caught_up_count() > catch_ups
                && s.timeline(&conv)
                    .is_some_and(|t| t.contiguous_through() == Seq(4))
        })
        .await
        .unwrap_or_else(|_| panic!("the laptop's catch-up: {:?}", through(&laptop, &conv)));
    assert_eq!(bodies(&laptop, &conv), ["m1", "m2", "m3", "m4"]);
    eventually("the laptop's ack clears the row", async || {
        env.pending("bob").await.is_empty()
    })
    .await;
}

/// alice sends from her phone: her laptop gets it live; while the laptop is
/// away her own row keeps its share, and its catch-up delivers it.
async fn the_senders_other_device_gets_what_it_sent_live_and_at_catch_up(backend: Backend) {
    let env = start(backend).await;
    let phone = env.device("alice", "phone").await;
    let laptop = env.device("alice", "laptop").await;
    let bob = env.device("bob", "b1").await;
    let conv = env.conversation(&phone, "bob").await;
    let before = sessions(&laptop);
    assert_eq!(phone.send(&conv, "p1").await.unwrap().seq, Seq(1));
    holds(&laptop, &conv, 1, "alice's laptop").await;
    assert_eq!(sessions(&laptop), before, "live, not a catch-up");
    let got = laptop.timeline(&conv);
    assert_eq!(got[0].sender_id, env.user("alice"));
    assert_eq!(got[0].body, "p1");
    holds(&bob, &conv, 1, "bob").await;
    eventually("alice's row cleared by both her devices", async || {
        env.pending("alice").await.is_empty()
    })
    .await;

    laptop.go_offline().await;
    eventually("the laptop's $disconnect ran", async || {
        env.registered_devices("alice").await == ["phone"]
    })
    .await;
    phone.send(&conv, "p2").await.unwrap();
    phone.send(&conv, "p3").await.unwrap();
    let phone_id = device_id("phone");
    eventually("the phone acked its own sends", async || {
        env.row("alice", &conv)
            .await
            .is_some_and(|r| r.held_by(&phone_id) == Seq(3))
    })
    .await;
    assert_eq!(
        env.row("alice", &conv)
            .await
            .unwrap()
            .held_by(&device_id("laptop")),
        Seq(1),
        "the laptop's share waits"
    );
    laptop.go_online().await.unwrap();
    holds(&laptop, &conv, 3, "alice's laptop").await;
    assert_eq!(bodies(&laptop, &conv), ["p1", "p2", "p3"]);
    eventually("alice's row cleared", async || {
        env.pending("alice").await.is_empty()
    })
    .await;
}

/// A `$connect` event of bob's laptop as API Gateway sends it after the
/// authorizer allowed `device=laptop` (or a `$disconnect`, with `route`).
fn laptop_event(
    env: &Env,
    route: &str,
    connection_id: &str,
    connected_at: Millis,
) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
    let event_type = if route == "$connect" {
        "CONNECT"
    } else {
        "DISCONNECT"
    };
    let event = serde_json::from_value(json!({
        "requestContext": {
            "routeKey": route,
            "eventType": event_type,
            "connectionId": connection_id,
            "connectedAt": connected_at,
            "requestTimeEpoch": now_millis(),
            "authorizer": {
                "principalId": env.name("bob"),
                "user_id": env.name("bob"),
                "device_id": "laptop",
            },
        },
        "isBase64Encoded": false,
    }))
    .unwrap();
    LambdaEvent::new(event, Default::default())
}

/// The connect handler run for an older connection of the laptop after its
/// newer one registered (a slow `$connect` finishing late) leaves the newer
/// entry, which still gets live messages; the older one's `$disconnect`
/// removes nothing. The same events with a newer `connectedAt` do replace
/// and remove: the events are read, the order is what decides.
async fn a_late_connect_of_an_older_connection_keeps_the_newer_one(backend: Backend) {
    let env = start(backend).await;
    let alice = env.device("alice", "a1").await;
    let laptop = env.device("bob", "laptop").await;
    let live = env.entry("bob", "laptop").await.unwrap();
    let at = live.connected_at.expect("the gateway gives connectedAt");

    let older = "olderConn0Aw=";
    connect::handle(&env.app, laptop_event(&env, "$connect", older, at - 60_000))
        .await
        .unwrap();
    assert_eq!(env.entry("bob", "laptop").await, Some(live.clone()));
    disconnect::handle(
        &env.app,
        laptop_event(&env, "$disconnect", older, at - 60_000),
    )
    .await
    .unwrap();
    assert_eq!(env.entry("bob", "laptop").await, Some(live.clone()));

    let conv = env.conversation(&alice, "bob").await;
    let before = sessions(&laptop);
    alice.send(&conv, "still live").await.unwrap();
    holds(&laptop, &conv, 1, "laptop").await;
    assert_eq!(sessions(&laptop), before, "live on the newer connection");

    let newer = "newerConn0Aw=";
    connect::handle(&env.app, laptop_event(&env, "$connect", newer, at + 1))
        .await
        .unwrap();
    let entry = env.entry("bob", "laptop").await.unwrap();
    assert_eq!(entry.connection_id.as_str(), newer);
    // The real connection's disconnect is now the stale one.
    disconnect::handle(
        &env.app,
        laptop_event(&env, "$disconnect", live.connection_id.as_str(), at),
    )
    .await
    .unwrap();
    assert_eq!(env.entry("bob", "laptop").await, Some(entry));
    disconnect::handle(&env.app, laptop_event(&env, "$disconnect", newer, at + 1))
        .await
        .unwrap();
    assert_eq!(env.entry("bob", "laptop").await, None);
}

/// The phone's registry entry disappears behind its back (a lost write);
/// its next `ping` puts the very same connection back, and a message then
/// reaches it live.
async fn a_lost_registry_entry_heals_at_the_next_ping(backend: Backend) {
    let env = start(backend).await;
    let alice = env.device("alice", "a1").await;
    let phone = env.device("bob", "phone").await;
    let _laptop = env.device("bob", "laptop").await;
    let live = env.entry("bob", "phone").await.unwrap();
    assert!(
        env.app
            .ports
            .registry
            .remove_if(&env.user("bob"), &device_id("phone"), &live.connection_id)
            .await
            .unwrap()
    );
    assert_eq!(env.registered_devices("bob").await, ["laptop"]);

    phone.ping().await.unwrap();
    assert_eq!(env.entry("bob", "phone").await, Some(live));

    let conv = env.conversation(&alice, "bob").await;
    let before = sessions(&phone);
    alice.send(&conv, "after the ping").await.unwrap();
    holds(&phone, &conv, 1, "phone").await;
    assert_eq!(sessions(&phone), before, "live, not a catch-up");
    assert_eq!(bodies(&phone, &conv), ["after the ping"]);
}

fn refusal(result: Result<DeviceId, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Request(RequestError::Refused { code, .. })) => code,
        other => panic!("not refused: {other:?}"),
    }
}

/// The laptop unlinks the phone (a raw socket that never acks, so it holds
/// bob's row): the phone's socket closes, its registry entry and link go,
/// and it no longer holds the row back (the laptop's next ack clears it). A
/// device cannot unlink itself; an unknown one is `device_not_found`.
async fn unlink_closes_the_other_device_and_drops_its_hold(backend: Backend) {
    let env = start(backend).await;
    let alice = env.device("alice", "a1").await;
    let laptop = env.device("bob", "laptop").await;
    let mut phone = env.raw("bob", "phone", None).await;
    while !matches!(
        next_frame(&mut phone).await,
        Some(ServerFrame::CaughtUp { .. })
    ) {}
    assert_eq!(env.registered_devices("bob").await, ["laptop", "phone"]);

    let conv = env.conversation(&alice, "bob").await;
    alice.send(&conv, "m1").await.unwrap();
    loop {
        match next_frame(&mut phone).await {
            Some(ServerFrame::Messages { messages, .. }) => {
                assert_eq!(messages[0].body, "m1");
                break;
            }
            Some(_) => {}
            None => panic!("the phone closed before m1"),
        }
    }
    let laptop_id = device_id("laptop");
    eventually("the laptop's cursor at 1", async || {
        env.row("bob", &conv)
            .await
            .is_some_and(|r| r.cursors.get(&laptop_id) == Some(&Seq(1)))
    })
    .await;
    let listed: Vec<(String, bool)> = laptop
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.device_id.to_string(), d.connected))
        .collect();
    assert_eq!(
        listed,
        [("laptop".to_owned(), true), ("phone".to_owned(), true)]
    );

    let unlinked = laptop.unlink_device(&device_id("phone")).await.unwrap();
    assert_eq!(unlinked.as_str(), "phone");
    while let Some(frame) = next_frame(&mut phone).await {
        assert!(
            !matches!(frame, ServerFrame::Messages { .. }),
            "{frame:?} after the unlink"
        );
    }
    eventually("the phone's registry entry removed", async || {
        env.registered_devices("bob").await == ["laptop"]
    })
    .await;
    let listed: Vec<String> = laptop
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(listed, ["laptop"]);

    // The row m1 left for the phone stays until the next ack looks: now
    // the laptop's ack alone clears it.
    alice.send(&conv, "m2").await.unwrap();
    holds(&laptop, &conv, 2, "laptop").await;
    eventually("bob's row cleared without the phone", async || {
        env.pending("bob").await.is_empty()
    })
    .await;

    assert_eq!(
        refusal(laptop.unlink_device(&laptop_id).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refusal(laptop.unlink_device(&device_id("tablet")).await),
        ErrorCode::DeviceNotFound
    );
    assert_eq!(
        refusal(laptop.unlink_device(&device_id("phone")).await),
        ErrorCode::DeviceNotFound
    );
}

/// With `MAX_DEVICES=2`, a third device's socket gets one
/// `too_many_devices` frame naming the limit, then is closed; it is neither
/// registered nor linked.
async fn a_device_over_max_devices_is_told_the_limit_and_closed(backend: Backend) {
    let env = start_with(backend, |o| o.settings.devices.max_devices = 2).await;
    let phone = env.device("bob", "phone").await;
    let _laptop = env.device("bob", "laptop").await;
    let mut tablet = env.raw("bob", "tablet", None).await;
    let mut frames = Vec::new();
    while let Some(frame) = next_frame(&mut tablet).await {
        frames.push(frame);
    }
    match frames.as_slice() {
        [
            ServerFrame::Error {
                code: ErrorCode::TooManyDevices,
                message,
                ..
            },
        ] => assert!(message.contains("MAX_DEVICES = 2"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.registered_devices("bob").await, ["laptop", "phone"]);
    let mut listed: Vec<String> = phone
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id.to_string())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, ["laptop", "phone"]);
}

/// Makes `device` look last seen `days` ago: unlinked, then linked again
/// at that time, through the link store the handlers use.
async fn last_seen_days_ago(env: &Env, who: &str, device: &str, days: i64) -> Millis {
    let links = &env.app.ports.links;
    let (user, device) = (env.user(who), device_id(device));
    assert!(links.unlink(&user, &device).await.unwrap());
    let then = now_millis() - days * DAY_MS;
    assert_eq!(
        links.touch(&user, &device, then, 64, 0).await.unwrap(),
        LinkOutcome::Linked
    );
    then
}

/// `MAX_DEVICES=2`, `DEVICE_TTL_DAYS` at its default (30): the offline
/// laptop holds bob's row back while it is fresh; once last seen 31 days
/// ago, the phone's ack alone clears the row, and a tablet takes the
/// laptop's place.
async fn a_device_unseen_past_the_ttl_holds_nothing_back_and_makes_room(backend: Backend) {
    let env = start_with(backend, |o| o.settings.devices.max_devices = 2).await;
    assert_eq!(env.app.settings.devices.ttl.as_secs(), 30 * 86_400);
    let alice = env.device("alice", "a1").await;
    let phone = env.device("bob", "phone").await;
    let laptop = env.device("bob", "laptop").await;
    laptop.go_offline().await;
    laptop.close();
    eventually("the laptop's $disconnect ran", async || {
        env.registered_devices("bob").await == ["phone"]
    })
    .await;
    let conv = env.conversation(&alice, "bob").await;
    alice.send(&conv, "m1").await.unwrap();
    holds(&phone, &conv, 1, "phone").await;
    let phone_id = device_id("phone");
    eventually("the phone's cursor at 1", async || {
        env.row("bob", &conv)
            .await
            .is_some_and(|r| r.cursors.get(&phone_id) == Some(&Seq(1)))
    })
    .await;
    assert!(
        env.row("bob", &conv).await.is_some(),
        "a fresh laptop holds it"
    );

    let then = last_seen_days_ago(&env, "bob", "laptop", 31).await;
    let seen: Vec<(String, Millis)> = phone
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.device_id.to_string(), d.last_seen_at))
        .collect();
    assert!(seen.contains(&("laptop".to_owned(), then)), "{seen:?}");

    alice.send(&conv, "m2").await.unwrap();
    holds(&phone, &conv, 2, "phone").await;
    eventually("the phone's ack alone clears the row", async || {
        env.pending("bob").await.is_empty()
    })
    .await;

    let tablet = Client::connect(env.config("bob", "tablet"))
        .await
        .expect("the stale laptop makes room");
    let tablet = connected(tablet).await;
    assert!(tablet.refused_device().is_none());
    let mut listed: Vec<String> = tablet
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id.to_string())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, ["phone", "tablet"]);
    assert_eq!(env.registered_devices("bob").await, ["phone", "tablet"]);
}

/// bob's new tablet is not flooded: its catch-up brings only what is
/// pending (conversation b, unread on the offline phone), not the acked
/// history of conversation a. `listConversations` shows both with members,
/// `last_seq` and the tablet's own `delivered_through_seq`; range syncs
/// then pull a's history.
async fn a_new_device_lists_its_conversations_and_range_syncs_history(backend: Backend) {
    let env = start(backend).await;
    let alice = env.device("alice", "a1").await;
    let phone = env.device("bob", "phone").await;
    let conv_a = env.conversation(&alice, "bob").await;
    for i in 1..=4 {
        alice.send(&conv_a, &format!("a{i}")).await.unwrap();
    }
    holds(&phone, &conv_a, 4, "phone").await;
    eventually("a acked by the phone", async || {
        env.pending("bob").await.is_empty()
    })
    .await;
    phone.go_offline().await;
    let conv_b = env.conversation(&alice, "bob").await;
    for i in 1..=3 {
        alice.send(&conv_b, &format!("b{i}")).await.unwrap();
    }

    let tablet = env.device("bob", "tablet").await;
    holds(&tablet, &conv_b, 3, "tablet").await;
    assert_eq!(bodies(&tablet, &conv_b), ["b1", "b2", "b3"]);
    assert!(tablet.timeline(&conv_a).is_empty(), "no flood of history");
    let tablet_id = device_id("tablet");
    eventually("the tablet's cursor on b at 3", async || {
        env.row("bob", &conv_b)
            .await
            .is_some_and(|r| r.cursors.get(&tablet_id) == Some(&Seq(3)))
    })
    .await;

    let page = tablet.list_conversations(None, Some(10)).await.unwrap();
    assert_eq!(page.next, None);
    let mut members = vec![env.user("alice"), env.user("bob")];
    members.sort();
    let mut seen: Vec<_> = page
        .conversations
        .into_iter()
        .map(|mut c| {
            c.members.sort();
            assert_eq!(c.members, members, "{}", c.conversation_id);
            (c.conversation_id, c.last_seq, c.delivered_through_seq)
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (conv_a.clone(), Seq(4), Seq(4)),
        (conv_b.clone(), Seq(3), Seq(3)),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    // The phone, which holds nothing of b, would be told otherwise: the
    // row's view of it.
    assert_eq!(
        env.row("bob", &conv_b)
            .await
            .unwrap()
            .held_by(&device_id("phone")),
        Seq(0)
    );

    for (after, limit, want) in [(0, 2, 2), (2, 100, 4)] {
        tablet
            .send_raw(
                json!({
                    "action": "sync",
                    "conversation_id": conv_a,
                    "after_seq": after,
                    "limit": limit,
                })
                .to_string(),
            )
            .unwrap();
        holds(&tablet, &conv_a, want, "tablet, a").await;
    }
    assert_eq!(bodies(&tablet, &conv_a), ["a1", "a2", "a3", "a4"]);
}

/// Fifty conversations pending for bob; his phone connects opened on the
/// one with the greatest id (last in any id order): its three messages are
/// the first frames on the socket, then the other 49 arrive.
async fn the_opened_conversation_comes_before_forty_nine_others(backend: Backend) {
    let env = start_with(backend, |o| {
        o.rate_limit = RateLimitConfig {
            per_sec: 0.0,
            burst: 0,
        }
    })
    .await;
    let alice = env.device("alice", "a1").await;
    let mut convs = Vec::new();
    for i in 0..50 {
        let conv = env.conversation(&alice, "bob").await;
        alice.send(&conv, &format!("c{i}")).await.unwrap();
        convs.push(conv);
    }
    let tapped = convs.iter().max().unwrap().clone();
    alice.send(&tapped, "t2").await.unwrap();
    alice.send(&tapped, "t3").await.unwrap();
    assert_eq!(env.pending("bob").await.len(), 50);

    let mut phone = env.raw("bob", "phone", Some(&tapped)).await;
    let mut order: Vec<(ConversationId, u64)> = Vec::new();
    loop {
        match next_frame(&mut phone).await {
            Some(ServerFrame::Messages {
                conversation_id,
                messages,
            }) => order.extend(
                messages
                    .iter()
                    .map(|m| (conversation_id.clone(), m.seq.get())),
            ),
            Some(ServerFrame::CaughtUp { .. }) => break,
            Some(_) => {}
            None => panic!("closed during catch-up"),
        }
    }
    assert_eq!(order.len(), 52, "{order:?}");
    assert_eq!(
        order[..3],
        [
            (tapped.clone(), 1),
            (tapped.clone(), 2),
            (tapped.clone(), 3)
        ],
        "the opened conversation first"
    );
    let others: std::collections::BTreeSet<_> = order[3..].iter().map(|(c, _)| c).collect();
    assert_eq!(others.len(), 49);
    assert!(!others.contains(&tapped));
}

/// `--registry dynamodb` is a deploy with no Redis: the send limit is off
/// there, as `REGISTRY_BACKEND=dynamodb` turns it off in send-message,
/// while the same limit bites on the embedded backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamodb_registry_turns_the_send_limit_off() {
    let one_a_second = |o: &mut LocalOptions| {
        o.rate_limit = RateLimitConfig {
            per_sec: 1.0,
            burst: 1,
        }
    };
    let env = start_with(Backend::Embedded, one_a_second).await;
    let alice = env.user("alice");
    assert_eq!(
        env.app.limiter.acquire(&alice).await.unwrap(),
        RateDecision::Allowed
    );
    assert!(matches!(
        env.app.limiter.acquire(&alice).await.unwrap(),
        RateDecision::Limited { .. }
    ));

    let env = start_with(Backend::DynamoOnly, one_a_second).await;
    let alice = env.user("alice");
    for _ in 0..5 {
        assert_eq!(
            env.app.limiter.acquire(&alice).await.unwrap(),
            RateDecision::Allowed
        );
    }
}

/// The DynamoDB registry lives on the stores' endpoint: without one,
/// start-up fails and says what is missing.
#[tokio::test]
async fn the_dynamodb_registry_without_an_endpoint_is_refused_at_start_up() {
    let options = LocalOptions {
        registry_table: Some("nowhere-registry".into()),
        ..LocalOptions::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(e) = wiring::start(options, listener).await else {
        panic!("started without a DynamoDB endpoint");
    };
    assert!(e.to_string().contains("--dynamodb-endpoint"), "{e:#}");
}
