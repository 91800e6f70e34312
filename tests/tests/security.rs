//! Nobody reads or writes where they do not belong, whatever they put in a
//! frame.
//!
//! Every route handler of `functions/` is called with an API Gateway event
//! whose authorizer context says `bob` while the frame claims to be
//! `mallory` (`user_id`, `sender_id`, `from`, `creator`, `principalId` in
//! the body, a spoofed query string on `$connect`): the effect is always
//! bob's, never mallory's. And each route that names a conversation
//! (`sendMessage`, `sync` with a range, `ack`) refuses a conversation the
//! caller is not a member of — even when the frame claims the identity of
//! a member — and one that does not exist, and posts nothing about it.
//!
//! The authorizer's own attacks (alg `none`, HS256 signed with the RSA
//! public key, expired, not yet valid, wrong issuer or audience, malformed,
//! unknown `kid` floods, `Origin`) are tested in `shared/courier-aws/src/auth/` and
//! `functions/authorizer/tests/handler.rs`.

#![allow(clippy::unwrap_used)]

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use courier_core::app::{App, MemoryHandles};
use courier_core::domain::{
    Connection, ConnectionId, Conversation, ConversationId, Seq, UserId, now_millis,
};
use courier_core::ports::{
    ConnectionRegistry, ConversationStore, DeviceStore, MessageStore, PendingStore,
};
use courier_core::protocol::{ErrorCode, ServerFrame};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn cid(s: &str) -> ConversationId {
    ConversationId::parse(s).unwrap()
}

/// A route event as API Gateway sends it: identity in the authorizer
/// context, the frame in the body.
fn event(route: &str, user: Option<&str>, connection: &str, body: Option<Value>) -> Value {
    let mut context = json!({
        "routeKey": route,
        "eventType": match route { "$connect" => "CONNECT", "$disconnect" => "DISCONNECT", _ => "MESSAGE" },
        "stage": "local",
        "connectedAt": now_millis() - 60_000,
        "requestTimeEpoch": now_millis(),
        "requestId": "req-1",
        "connectionId": connection,
        "apiId": "a1b2c3d4e5",
        "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
        "identity": {"sourceIp": "127.0.0.1"},
    });
    if let Some(u) = user {
        context["authorizer"] = json!({"user_id": u, "principalId": u});
    }
    let mut e = json!({"requestContext": context, "isBase64Encoded": false});
    if let Some(b) = body {
        e["body"] = Value::String(b.to_string());
    }
    if route == "$connect" {
        e["queryStringParameters"] = json!({"token": "t", "user_id": "mallory"});
    }
    e
}

fn ws_event(v: Value) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
    LambdaEvent::new(serde_json::from_value(v).unwrap(), Context::default())
}

fn raw_event(v: Value) -> LambdaEvent<Value> {
    LambdaEvent::new(v, Context::default())
}

fn reply_frame(r: &ApiGatewayProxyResponse) -> Option<ServerFrame> {
    assert_eq!(r.status_code, 200);
    match &r.body {
        Some(Body::Text(t)) => Some(serde_json::from_str(t).unwrap()),
        None => None,
        other => panic!("unexpected body {other:?}"),
    }
}

fn error_code(r: &ApiGatewayProxyResponse) -> ErrorCode {
    match reply_frame(r) {
        Some(ServerFrame::Error { code, .. }) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// `ours` = {bob, alice}; `theirs` = {mallory, alice}; one message in each,
/// pending for the other members. bob, mallory and alice are online.
struct World {
    app: App,
    h: MemoryHandles,
}

const SPOOF: &str = "mallory";

impl World {
    async fn new() -> World {
        let (app, h) = App::in_memory();
        for (id, members) in [("ours", ["bob", "alice"]), ("theirs", ["mallory", "alice"])] {
            app.ports
                .conversations
                .create(&Conversation {
                    conversation_id: cid(id),
                    members: members.iter().map(|m| uid(m)).collect(),
                    last_seq: Seq::ZERO,
                    created_at: now_millis(),
                })
                .await
                .unwrap();
        }
        let w = World { app, h };
        w.send_as("alice", "ours", "a1").await;
        w.send_as("alice", "theirs", "a2").await;
        for u in ["bob", "mallory", "alice"] {
            w.online(u).await;
        }
        w
    }

    fn conn(user: &str) -> String {
        format!("conn-{user}")
    }

    async fn online(&self, user: &str) {
        let c = ConnectionId::parse(&Self::conn(user)).unwrap();
        self.h.gateway.open(&c);
        self.h
            .registry
            .register(
                &uid(user),
                &Connection {
                    connection_id: c,
                    connected_at: Some(now_millis() - 60_000),
                    device_id: Default::default(),
                },
            )
            .await
            .unwrap();
    }

    async fn send_as(&self, user: &str, conv: &str, key: &str) {
        let frame =
            json!({"action":"sendMessage","conversation_id":conv,"client_msg_id":key,"body":"hi"});
        let r = send_message::handle(
            &self.app,
            ws_event(event(
                "sendMessage",
                Some(user),
                &Self::conn(user),
                Some(frame),
            )),
        )
        .await
        .unwrap();
        assert!(matches!(reply_frame(&r), Some(ServerFrame::Sent { .. })));
    }

    /// Frames posted to `user`'s connection about `conv`.
    fn frames_about(&self, user: &str, conv: &str) -> usize {
        self.h
            .gateway
            .frames(&ConnectionId::parse(&Self::conn(user)).unwrap())
            .iter()
            .filter(|f| f.contains(&format!("\"conversation_id\":\"{conv}\"")))
            .count()
    }

    async fn pending(&self, user: &str, conv: &str) -> Option<(u64, u64)> {
        PendingStore::get(&self.h.store, &uid(user), &cid(conv))
            .await
            .unwrap()
            .map(|r| (r.first_undelivered_seq.get(), r.last_seq.get()))
    }

    async fn stored(&self, conv: &str) -> Vec<courier_core::domain::Message> {
        self.h.store.range(&cid(conv), Seq(1), 100).await.unwrap()
    }
}

/// Identity claims a frame may carry; none of them may count.
fn spoofed(mut frame: Value) -> Value {
    for field in ["user_id", "sender_id", "from", "creator", "principalId"] {
        frame[field] = json!(SPOOF);
    }
    frame["requestContext"] = json!({"authorizer": {"user_id": SPOOF}});
    frame
}

// ---- identity comes from the authorizer context only ----------------------

#[tokio::test]
async fn send_message_ignores_a_spoofed_sender() {
    let w = World::new().await;
    // As mallory it would be allowed into `theirs`; as bob it is not.
    let frame = spoofed(
        json!({"action":"sendMessage","conversation_id":"theirs","client_msg_id":"k1","body":"x"}),
    );
    let r = send_message::handle(
        &w.app,
        ws_event(event("sendMessage", Some("bob"), "conn-bob", Some(frame))),
    )
    .await
    .unwrap();
    assert_eq!(error_code(&r), ErrorCode::NotAMember);
    assert_eq!(w.stored("theirs").await.len(), 1, "nothing written");

    // Into bob's own conversation it is stored as bob's.
    let frame = spoofed(
        json!({"action":"sendMessage","conversation_id":"ours","client_msg_id":"k2","body":"x"}),
    );
    let r = send_message::handle(
        &w.app,
        ws_event(event("sendMessage", Some("bob"), "conn-bob", Some(frame))),
    )
    .await
    .unwrap();
    assert!(matches!(reply_frame(&r), Some(ServerFrame::Sent { .. })));
    let stored = w.stored("ours").await;
    assert_eq!(stored.last().unwrap().sender_id, uid("bob"));
}

#[tokio::test]
async fn ack_ignores_a_spoofed_user() {
    let w = World::new().await;
    // bob acks `theirs` claiming to be mallory: refused, mallory's row kept.
    let frame = spoofed(json!({"action":"ack","acks":[{"conversation_id":"theirs","seq":1}]}));
    let r = ack::handle(
        &w.app,
        ws_event(event("ack", Some("bob"), "conn-bob", Some(frame))),
    )
    .await
    .unwrap();
    assert_eq!(error_code(&r), ErrorCode::NotAMember);
    assert_eq!(w.pending("mallory", "theirs").await, Some((1, 1)));

    // bob's ack of his own conversation moves bob's row, nobody else's.
    let frame = spoofed(json!({"action":"ack","acks":[{"conversation_id":"ours","seq":1}]}));
    let r = ack::handle(
        &w.app,
        ws_event(event("ack", Some("bob"), "conn-bob", Some(frame))),
    )
    .await
    .unwrap();
    assert!(reply_frame(&r).is_none(), "an accepted ack has no reply");
    assert_eq!(w.pending("bob", "ours").await, None);
    assert_eq!(w.pending("mallory", "theirs").await, Some((1, 1)));
    // The receipt goes to alice and names bob.
    let receipts: Vec<String> =
        w.h.gateway
            .frames(&ConnectionId::parse("conn-alice").unwrap())
            .into_iter()
            .filter(|f| f.contains("receipt"))
            .collect();
    assert_eq!(receipts.len(), 1);
    assert!(
        receipts[0].contains("\"user_id\":\"bob\""),
        "{}",
        receipts[0]
    );
}

#[tokio::test]
async fn sync_ignores_a_spoofed_user() {
    let w = World::new().await;
    // A full sync claiming to be mallory delivers bob's pending, not hers.
    let frame = spoofed(json!({"action":"sync"}));
    catch_up::handle(
        &w.app,
        raw_event(event("sync", Some("bob"), "conn-bob", Some(frame))),
    )
    .await
    .unwrap();
    assert_eq!(w.frames_about("bob", "ours"), 1);
    assert_eq!(w.frames_about("bob", "theirs"), 0);

    // A range sync of mallory's conversation, claiming to be her: refused.
    let frame = spoofed(json!({"action":"sync","conversation_id":"theirs","after_seq":0}));
    let r = catch_up::handle(
        &w.app,
        raw_event(event("sync", Some("bob"), "conn-bob", Some(frame))),
    )
    .await
    .unwrap();
    let r: ApiGatewayProxyResponse = serde_json::from_value(r).unwrap();
    assert_eq!(error_code(&r), ErrorCode::NotAMember);
    assert_eq!(w.frames_about("bob", "theirs"), 0, "nothing of it posted");
}

#[tokio::test]
async fn create_conversation_makes_the_caller_the_creator() {
    let w = World::new().await;
    let frame = spoofed(json!({"action":"createConversation","members":["alice"]}));
    let r = conversations::handle(
        &w.app,
        ws_event(event(
            "createConversation",
            Some("bob"),
            "conn-bob",
            Some(frame),
        )),
    )
    .await
    .unwrap();
    let Some(ServerFrame::Conversation {
        conversation_id,
        members,
        ..
    }) = reply_frame(&r)
    else {
        panic!("no conversation frame")
    };
    assert!(members.contains(&uid("bob")));
    assert!(!members.contains(&uid(SPOOF)));
    let stored = ConversationStore::get(&w.h.store, &conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.is_member(&uid("bob")) && !stored.is_member(&uid(SPOOF)));
}

#[tokio::test]
async fn register_device_registers_for_the_caller() {
    let w = World::new().await;
    let frame = spoofed(json!({"action":"registerDevice","platform":"fcm","token":"tok-1"}));
    let r = devices::handle(
        &w.app,
        ws_event(event(
            "registerDevice",
            Some("bob"),
            "conn-bob",
            Some(frame),
        )),
    )
    .await
    .unwrap();
    assert!(!matches!(reply_frame(&r), Some(ServerFrame::Error { .. })));
    assert_eq!(
        w.h.store.by_token("tok-1").await.unwrap().unwrap().user_id,
        uid("bob")
    );
    assert!(w.h.store.for_user(&uid(SPOOF)).await.unwrap().is_empty());
}

#[tokio::test]
async fn connect_and_disconnect_touch_only_the_callers_entry() {
    let w = World::new().await;
    let before = w.h.registry.lookup(&uid(SPOOF)).await.unwrap();
    connect::handle(
        &w.app,
        ws_event(event("$connect", Some("bob"), "conn-bob-2", None)),
    )
    .await
    .unwrap();
    assert_eq!(
        w.h.registry
            .lookup(&uid("bob"))
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
            .connection_id
            .as_str(),
        "conn-bob-2"
    );
    assert_eq!(w.h.registry.lookup(&uid(SPOOF)).await.unwrap(), before);
    assert_eq!(w.h.trigger.requests().last().unwrap().user_id, uid("bob"));

    // bob's $disconnect naming mallory's connection id removes nothing of
    // hers: the compare-and-delete runs on bob's key.
    disconnect::handle(
        &w.app,
        ws_event(event("$disconnect", Some("bob"), "conn-mallory", None)),
    )
    .await
    .unwrap();
    assert_eq!(w.h.registry.lookup(&uid(SPOOF)).await.unwrap(), before);
    assert!(!w.h.registry.lookup(&uid("bob")).await.unwrap().is_empty());
}

#[tokio::test]
async fn default_route_answers_without_reading_identity_from_the_frame() {
    let w = World::new().await;
    let r = default::handle(
        &w.app,
        ws_event(event(
            "$default",
            Some("bob"),
            "conn-bob",
            Some(spoofed(json!({"action":"ping","request_id":"p"}))),
        )),
    )
    .await
    .unwrap();
    assert_eq!(
        reply_frame(&r),
        Some(ServerFrame::Pong {
            request_id: Some("p".into())
        })
    );
}

#[tokio::test]
async fn every_route_without_an_authorizer_context_is_a_fault_not_a_guess() {
    let w = World::new().await;
    let body = || Some(spoofed(json!({"action":"sync"})));
    let no_identity = |route: &str| ws_event(event(route, None, "conn-x", body()));
    assert!(
        send_message::handle(&w.app, no_identity("sendMessage"))
            .await
            .is_err()
    );
    assert!(ack::handle(&w.app, no_identity("ack")).await.is_err());
    assert!(
        conversations::handle(&w.app, no_identity("createConversation"))
            .await
            .is_err()
    );
    assert!(
        devices::handle(&w.app, no_identity("registerDevice"))
            .await
            .is_err()
    );
    assert!(
        connect::handle(&w.app, no_identity("$connect"))
            .await
            .is_err()
    );
    assert!(
        disconnect::handle(&w.app, no_identity("$disconnect"))
            .await
            .is_err()
    );
    assert!(
        default::handle(&w.app, no_identity("$default"))
            .await
            .is_err()
    );
    assert!(
        catch_up::handle(&w.app, raw_event(event("sync", None, "conn-x", body())))
            .await
            .is_err()
    );
    assert!(!w.h.registry.lookup(&uid(SPOOF)).await.unwrap().is_empty());
    assert_eq!(w.stored("ours").await.len(), 1);
}

// ---- membership, per route ----------------------------------------------------

#[tokio::test]
async fn send_refuses_a_conversation_the_sender_is_not_in_or_that_does_not_exist() {
    let w = World::new().await;
    for (conv, code) in [
        ("theirs", ErrorCode::NotAMember),
        ("nowhere", ErrorCode::ConversationNotFound),
    ] {
        let frame =
            json!({"action":"sendMessage","conversation_id":conv,"client_msg_id":"k","body":"x"});
        let r = send_message::handle(
            &w.app,
            ws_event(event("sendMessage", Some("bob"), "conn-bob", Some(frame))),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&r), code, "{conv}");
    }
    assert_eq!(w.stored("theirs").await.len(), 1);
    assert_eq!(
        w.frames_about("mallory", "theirs"),
        0,
        "a refused send posts nothing"
    );
}

#[tokio::test]
async fn range_sync_refuses_a_conversation_the_user_is_not_in_or_that_does_not_exist() {
    let w = World::new().await;
    for (conv, code) in [
        ("theirs", ErrorCode::NotAMember),
        ("nowhere", ErrorCode::ConversationNotFound),
    ] {
        let frame = json!({"action":"sync","conversation_id":conv,"after_seq":0,"limit":10});
        let r = catch_up::handle(
            &w.app,
            raw_event(event("sync", Some("bob"), "conn-bob", Some(frame))),
        )
        .await
        .unwrap();
        let r: ApiGatewayProxyResponse = serde_json::from_value(r).unwrap();
        assert_eq!(error_code(&r), code, "{conv}");
    }
    assert_eq!(w.frames_about("bob", "theirs"), 0);
}

#[tokio::test]
async fn ack_refuses_a_conversation_the_user_is_not_in_or_that_does_not_exist() {
    let w = World::new().await;
    for (conv, code) in [
        ("theirs", ErrorCode::NotAMember),
        ("nowhere", ErrorCode::ConversationNotFound),
    ] {
        let frame = json!({"action":"ack","acks":[{"conversation_id":conv,"seq":1}]});
        let r = ack::handle(
            &w.app,
            ws_event(event("ack", Some("bob"), "conn-bob", Some(frame))),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&r), code, "{conv}");
    }
    assert_eq!(w.pending("mallory", "theirs").await, Some((1, 1)));
    // No receipt naming bob reached the members of `theirs`.
    for member in ["mallory", "alice"] {
        assert!(
            !w.h.gateway
                .frames(&ConnectionId::parse(&World::conn(member)).unwrap())
                .iter()
                .any(|f| f.contains("receipt") && f.contains("theirs")),
            "{member}"
        );
    }
}
