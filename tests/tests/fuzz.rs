//! Fuzzing every inbound parser with property tests: arbitrary bytes,
//! arbitrary strings, JSON-shaped values built from the protocol's own keys,
//! and mutations of valid samples.
//!
//! `cargo fuzz` needs a nightly toolchain and the `cargo-fuzz` binary; this
//! machine has a nightly toolchain but no `cargo-fuzz`, and the test command
//! runs on stable. So the targets are proptest properties, run for a bounded
//! number of cases in the test command, more on demand:
//! `FUZZ_CASES=200000 cargo test -p courier-tests --test fuzz --release`.
//!
//! Targets and what must hold for each:
//! - `Request::parse` (every client frame): never panics; an error is a
//!   well-formed `error` frame (valid JSON, a known code, a `request_id` of at
//!   most 64 characters, a bounded message that does not echo the input).
//! - The WebSocket route event, as each route handler receives it: any
//!   frame body (text or binary) gets a 200 whose reply, if any, is a valid
//!   server frame — a client's bytes are never a server fault; any event
//!   JSON at all never panics a handler.
//! - The authorizer event: any event and any `?token=` never panic and are
//!   never allowed (a mutated valid token included).
//! - The catch-up invocation payload: any JSON never panics.

#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyResponse,
    ApiGatewayWebsocketProxyRequest,
};
use aws_lambda_events::encodings::Body;
use courier_aws::auth::{AuthConfig, sign_hs256};
use courier_core::app::App;
use courier_core::domain::{Conversation, ConversationId, Seq, UserId, now_millis};
use courier_core::protocol::{ErrorCode, MAX_REQUEST_ID_LEN, Request, ServerFrame};
use lambda_runtime::{Context, LambdaEvent};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

const KEYS: &[&str] = &[
    "action",
    "request_id",
    "conversation_id",
    "client_msg_id",
    "body",
    "acks",
    "seq",
    "after_seq",
    "limit",
    "members",
    "platform",
    "token",
    "user_id",
    "sender_id",
];

const ACTIONS: &[&str] = &[
    "sendMessage",
    "ack",
    "sync",
    "createConversation",
    "registerDevice",
    "ping",
    "",
    "SENDMESSAGE",
];

/// Strings a parser meets: ids, ids with separators, unicode, controls,
/// numbers as text, very long ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.:@=-]{1,12}",
        prop::sample::select(ACTIONS).prop_map(str::to_owned),
        prop::sample::select(&["c1", "bob", "alice", "fcm", "apns", "a#b", "a|b", "a b"][..])
            .prop_map(str::to_owned),
        any::<String>(),
        "\\PC{0,40}",
        (1usize..5000).prop_map(|n| "x".repeat(n)),
        Just("\u{0}\u{1f}\u{7f}\u{feff}\u{202e}".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (0i64..5).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(|f| json!(f)),
    ]
}

/// JSON values shaped like client frames: objects keyed by the protocol's
/// keys (and a few others), any value types, nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
                        1 => any::<String>(),
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A frame object: an `action` (usually a real one) and protocol fields.
fn frame_object() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            3 => prop::sample::select(ACTIONS).prop_map(|a| json!(a)),
            1 => json_value(),
        ],
        prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..8),
    )
        .prop_map(|(action, fields)| {
            let mut m = serde_json::Map::new();
            for (k, v) in fields {
                m.insert(k.to_owned(), v);
            }
            m.insert("action".into(), action);
            Value::Object(m)
        })
}

const SAMPLES: &[&str] = &[
    r#"{"action":"sendMessage","conversation_id":"c1","client_msg_id":"u1","body":"hello??","request_id":"r1"}"#,
    r#"{"action":"ack","acks":[{"conversation_id":"c1","seq":44}]}"#,
    r#"{"action":"sync"}"#,
    r#"{"action":"sync","conversation_id":"c1","after_seq":41,"limit":200}"#,
    r#"{"action":"createConversation","members":["alice","bob"]}"#,
    r#"{"action":"registerDevice","platform":"fcm","token":"abc"}"#,
    r#"{"action":"ping","request_id":"p"}"#,
];

/// A valid sample with a few bytes replaced, inserted or removed.
fn mutated_sample() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(SAMPLES),
        prop::collection::vec((any::<u8>(), any::<prop::sample::Index>(), 0u8..3), 1..6),
    )
        .prop_map(|(s, edits)| {
            let mut b = s.as_bytes().to_vec();
            for (byte, at, kind) in edits {
                let i = at.index(b.len() + 1);
                match kind {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => b.push(byte),
                }
            }
            b
        })
}

/// Every input the frame parser could see, as text.
fn frame_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => frame_object().prop_map(|v| v.to_string()),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        2 => mutated_sample().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => any::<String>(),
    ]
}

/// What an error frame must look like, whatever caused it.
fn check_error_frame(frame: &ServerFrame, input: &str) -> Result<(), TestCaseError> {
    let json = frame.to_json();
    let back: Value = serde_json::from_str(&json)
        .map_err(|e| TestCaseError::fail(format!("error frame is not JSON: {e}")))?;
    prop_assert_eq!(back["type"].as_str(), Some("error"));
    let ServerFrame::Error {
        code,
        message,
        request_id,
        client_msg_id,
    } = frame
    else {
        return Err(TestCaseError::fail("not an error frame"));
    };
    prop_assert!(!message.is_empty());
    prop_assert!(message.len() <= 600, "message of {} bytes", message.len());
    if input.len() > 1000 {
        prop_assert!(!message.contains(input), "the input is echoed back");
    }
    prop_assert!(
        request_id
            .as_ref()
            .is_none_or(|r| r.len() <= MAX_REQUEST_ID_LEN)
    );
    prop_assert!(client_msg_id.as_ref().is_none_or(|c| c.len() <= 64));
    prop_assert!(matches!(
        code,
        ErrorCode::BadRequest
            | ErrorCode::UnknownAction
            | ErrorCode::Unauthorized
            | ErrorCode::NotAMember
            | ErrorCode::ConversationNotFound
            | ErrorCode::PayloadTooLarge
            | ErrorCode::RateLimited
            | ErrorCode::Internal
    ));
    Ok(())
}

#[test]
fn request_parse_never_panics_and_errors_are_well_formed_frames() {
    runner(3000)
        .run(&frame_text(), |input| {
            match Request::parse(&input) {
                Ok(r) => {
                    prop_assert!(
                        r.request_id
                            .as_ref()
                            .is_none_or(|id| id.len() <= MAX_REQUEST_ID_LEN)
                    );
                }
                Err(e) => check_error_frame(&e.to_frame(), &input)?,
            }
            Ok(())
        })
        .unwrap();
}

// ---- route handlers ------------------------------------------------------------

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// One app for all cases: alice and bob in `c1`, bob online.
fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let (mut app, h) = App::in_memory();
        // A payload naming a connection that is not open must not wait out
        // the 3 s window in which a 410 means "not open yet".
        app.settings.delivery.open_window = std::time::Duration::from_millis(5);
        rt().block_on(async {
            app.ports
                .conversations
                .create(&Conversation {
                    conversation_id: ConversationId::parse("c1").unwrap(),
                    members: vec![
                        UserId::parse("alice").unwrap(),
                        UserId::parse("bob").unwrap(),
                    ],
                    last_seq: Seq::ZERO,
                    created_at: now_millis(),
                })
                .await
                .unwrap();
        });
        h.gateway
            .open(&courier_core::domain::ConnectionId::parse("conn-bob").unwrap());
        app
    })
}

const ROUTES: &[&str] = &[
    "sendMessage",
    "ack",
    "sync",
    "createConversation",
    "registerDevice",
    "$default",
];

fn route_event(route: &str, body: &str, binary: bool) -> Value {
    json!({
        "requestContext": {
            "routeKey": route,
            "eventType": "MESSAGE",
            "stage": "local",
            "connectedAt": now_millis() - 60_000,
            "requestTimeEpoch": now_millis(),
            "requestId": "req",
            "connectionId": "conn-bob",
            "apiId": "a1b2c3d4e5",
            "authorizer": {"user_id": "bob", "principalId": "bob"},
        },
        "body": body,
        "isBase64Encoded": binary,
    })
}

/// Calls the handler of `route` with `event` (JSON), as the runtime would:
/// `None` when the runtime itself could not deserialize the event.
async fn call(route: &str, event: Value) -> Option<Result<Value, lambda_runtime::Error>> {
    let app = app();
    if route == "sync" {
        // catch-up takes raw JSON: a route event or an invocation payload.
        return Some(catch_up::handle(app, LambdaEvent::new(event, Context::default())).await);
    }
    let event: ApiGatewayWebsocketProxyRequest = serde_json::from_value(event).ok()?;
    let event = LambdaEvent::new(event, Context::default());
    let r = match route {
        "sendMessage" => send_message::handle(app, event).await,
        "ack" => ack::handle(app, event).await,
        "createConversation" => conversations::handle(app, event).await,
        "registerDevice" => devices::handle(app, event).await,
        _ => default::handle(app, event).await,
    };
    Some(r.map(|r| serde_json::to_value(r).unwrap()))
}

#[test]
fn route_handlers_answer_any_frame_body_with_a_valid_reply() {
    let strategy = (
        prop::sample::select(ROUTES),
        frame_text(),
        prop::bool::weighted(0.1),
    );
    runner(600)
        .run(&strategy, |(route, body, binary)| {
            let out = rt().block_on(call(route, route_event(route, &body, binary)));
            let Some(result) = out else {
                return Err(TestCaseError::fail("a valid envelope did not deserialize"));
            };
            let response = result.map_err(|e| {
                TestCaseError::fail(format!("{route}: a client's frame faulted: {e}"))
            })?;
            let response: ApiGatewayProxyResponse = serde_json::from_value(response).unwrap();
            prop_assert_eq!(response.status_code, 200);
            if let Some(Body::Text(t)) = &response.body {
                let frame: ServerFrame = serde_json::from_str(t)
                    .map_err(|e| TestCaseError::fail(format!("reply is not a frame: {e}: {t}")))?;
                if matches!(frame, ServerFrame::Error { .. }) {
                    check_error_frame(&frame, &body)?;
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn route_handlers_survive_any_event_json() {
    let strategy = (
        prop::sample::select(ROUTES),
        prop_oneof![
            json_value(),
            // A real envelope with fields replaced by anything.
            (json_value(), json_value(), json_value()).prop_map(|(ctx, auth, body)| {
                let mut e = route_event("sendMessage", "{}", false);
                e["requestContext"]["connectionId"] = ctx;
                e["requestContext"]["authorizer"] = auth;
                e["body"] = body;
                e
            }),
        ],
    );
    runner(600)
        .run(&strategy, |(route, event)| {
            // Ok, Err or "the runtime refused the event": anything but a panic.
            let _ = rt().block_on(call(route, event));
            Ok(())
        })
        .unwrap();
}

#[test]
fn catch_up_survives_any_invocation_payload() {
    let strategy = prop_oneof![
        json_value(),
        (text(), text(), number()).prop_map(|(u, c, at)| {
            json!({"user_id": u, "connection_id": c, "connected_at": at})
        }),
    ];
    runner(300)
        .run(&strategy, |payload| {
            let _ = rt().block_on(catch_up::handle(
                app(),
                LambdaEvent::new(payload, Context::default()),
            ));
            Ok(())
        })
        .unwrap();
}

// ---- the authorizer ----------------------------------------------------------

const SECRET: &[u8] = b"fuzz-secret";

fn authorizer_state() -> &'static authorizer::AuthorizerState {
    static STATE: OnceLock<authorizer::AuthorizerState> = OnceLock::new();
    STATE.get_or_init(|| authorizer::AuthorizerState::new(&AuthConfig::hs256(SECRET)).unwrap())
}

fn authorizer_request(token: Value) -> Value {
    json!({
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/local/$connect",
        "headers": {"Upgrade": "websocket"},
        "queryStringParameters": {"token": token},
        "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "abc="}
    })
}

fn valid_token() -> String {
    sign_hs256(
        SECRET,
        &json!({"sub": "bob", "exp": now_millis() / 1000 + 3600}),
    )
}

/// Runs the authorizer; `Some(true)` when it allowed the connection.
fn authorize(event: Value) -> Option<bool> {
    let request: ApiGatewayCustomAuthorizerRequestTypeRequest =
        serde_json::from_value(event).ok()?;
    let r = rt().block_on(authorizer::handle(
        authorizer_state(),
        LambdaEvent::new(request, Context::default()),
    ));
    Some(r.is_ok_and(|resp| {
        serde_json::to_value(&resp).unwrap()["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    }))
}

#[test]
fn the_authorizer_never_panics_and_never_allows_a_bad_token() {
    assert_eq!(
        authorize(authorizer_request(json!(valid_token()))),
        Some(true),
        "the good token is allowed: the property below is not vacuous"
    );
    let good = valid_token();
    let strategy = prop_oneof![
        text().prop_map(|t| (json!(t), false)),
        any::<Vec<u8>>().prop_map(|b| (json!(String::from_utf8_lossy(&b)), false)),
        json_value().prop_map(|v| (v, false)),
        // The valid token with a few characters changed.
        prop::collection::vec((any::<prop::sample::Index>(), "[A-Za-z0-9_.=-]"), 1..4).prop_map(
            move |edits| {
                let mut t: Vec<char> = good.chars().collect();
                for (at, c) in edits {
                    let i = at.index(t.len());
                    t[i] = c.chars().next().unwrap();
                }
                let t: String = t.into_iter().collect();
                let same = t == good;
                (json!(t), same)
            }
        ),
    ];
    runner(500)
        .run(&strategy, |(token, is_the_good_one)| {
            let allowed = authorize(authorizer_request(token)).unwrap_or(false);
            prop_assert!(!allowed || is_the_good_one, "a bad token was allowed");
            Ok(())
        })
        .unwrap();
    runner(300)
        .run(&json_value(), |event| {
            prop_assert_ne!(authorize(event), Some(true));
            Ok(())
        })
        .unwrap();
}
