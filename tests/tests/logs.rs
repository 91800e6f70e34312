//! Tokens, message bodies, push previews and device tokens never reach the
//! logs at info level (or above), on the happy path or the faulty one.
//!
//! One full flow through the real handlers on real Redis and moto (DynamoDB
//! and SNS, so the adapters' own log lines count too): the authorizer
//! (a good token and a forged one), device registration, a conversation,
//! sends to an offline recipient (push with a preview), `$connect`,
//! catch-up, acks, a live delivery, a malformed frame, and the faults —
//! Redis down, the rate limiter down, DynamoDB down. The logs are captured
//! as Lambda writes them (JSON, span fields included) and searched for
//! every secret the flow handled.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayWebsocketProxyRequest,
};
use aws_lambda_events::encodings::Body;
use courier_aws::auth::{AuthConfig, sign_hs256};
use courier_aws::dynamo::DynamoStore;
use courier_aws::redis::RedisRegistry;
use courier_aws::sns::SnsNotifier;
use courier_aws::wiring::AwsEndpoints;
use courier_core::adapters::memory::{MemoryGateway, MemoryTrigger};
use courier_core::adapters::rate_limit::MemoryRateLimiter;
use courier_core::app::{App, Ports, Settings};
use courier_core::config::{PushConfig, PushPreview, RateLimitConfig, RegistryConfig};
use courier_core::domain::{ConnectionId, now_millis};
use courier_core::protocol::ServerFrame;
use courier_tests::proxy::{FaultProxy, Mode};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

const SECRET: &[u8] = b"logs-test-secret";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn route(route: &str, user: &str, connection: &str, body: Option<Value>) -> Value {
    let mut e = json!({
        "requestContext": {
            "routeKey": route,
            "eventType": match route { "$connect" => "CONNECT", "$disconnect" => "DISCONNECT", _ => "MESSAGE" },
            "stage": "local",
            "connectedAt": now_millis() - 60_000,
            "requestTimeEpoch": now_millis(),
            "requestId": "req",
            "connectionId": connection,
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "identity": {"sourceIp": "127.0.0.1"},
            "authorizer": {"user_id": user, "principalId": user},
        },
        "isBase64Encoded": false,
    });
    if let Some(b) = body {
        e["body"] = Value::String(b.to_string());
    }
    e
}

fn ws(v: Value) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
    LambdaEvent::new(serde_json::from_value(v).unwrap(), Context::default())
}

fn reply(r: &aws_lambda_events::apigw::ApiGatewayProxyResponse) -> ServerFrame {
    match &r.body {
        Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
        other => panic!("no reply: {other:?}"),
    }
}

fn authorizer_event(token: &str) -> LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest> {
    let request = serde_json::from_value(json!({
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/local/$connect",
        "headers": {"Upgrade": "websocket"},
        "queryStringParameters": {"token": token},
        "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "abc="}
    }))
    .unwrap();
    LambdaEvent::new(request, Context::default())
}

async fn platform_app(sns: &aws_sdk_sns::Client, platform: &str) -> String {
    sns.create_platform_application()
        .name(unique("courier"))
        .platform(platform)
        .attributes("PlatformCredential", "not-a-real-credential")
        .send()
        .await
        .unwrap()
        .platform_application_arn()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_full_flow_with_faults_logs_no_token_body_preview_or_device_token() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Real adapters, each behind a fault proxy where the flow breaks it.
    let (redis_proxy, redis_url) = FaultProxy::in_front_of(&courier_tests::redis_url().await)
        .await
        .unwrap();
    let (dynamo_proxy, dynamo_url) =
        FaultProxy::in_front_of(&courier_tests::dynamodb_endpoint().await)
            .await
            .unwrap();
    let aws = support::aws_with(AwsEndpoints {
        dynamodb: Some(dynamo_url),
        sns: Some(courier_tests::sns_endpoint().await),
        ..AwsEndpoints::default()
    })
    .await;
    let sns = aws.sns();
    let push = PushConfig {
        preview: PushPreview::Full,
        apns_app_arn: None,
        apns_sandbox_app_arn: None,
        fcm_app_arn: Some(platform_app(&sns, "GCM").await),
    };
    let store = Arc::new(DynamoStore::new(
        aws.dynamodb(),
        courier_tests::fresh_tables().await,
    ));
    let mut registry = RegistryConfig::new(redis_url);
    registry.timeout = Duration::from_millis(300);
    let gateway = MemoryGateway::new();
    let trigger = MemoryTrigger::new();
    let ports = Ports::unwired()
        .with_store(store)
        .with_registry(Arc::new(RedisRegistry::new(registry).unwrap()))
        .with_gateway(Arc::new(gateway.clone()))
        .with_trigger(Arc::new(trigger.clone()))
        .with_notifier(Arc::new(SnsNotifier::new(sns, push.clone())));
    let mut settings = Settings {
        push,
        ..Settings::default()
    };
    settings.delivery.open_window = Duration::from_millis(200);
    let limiter = Arc::new(MemoryRateLimiter::new(RateLimitConfig::default()));
    let app = App::new(ports, settings).with_rate_limiter(limiter.clone());

    let (alice, bob) = (unique("alice"), unique("bob"));
    let (alice_conn, bob_conn) = (unique("ca"), unique("cb"));
    let device_token = unique("DEVICETOKEN");
    let bodies: Vec<String> = (1..=6).map(|i| unique(&format!("BODY{i}"))).collect();

    // The authorizer: a good token and a forged one.
    let state = authorizer::AuthorizerState::new(&AuthConfig::hs256(SECRET)).unwrap();
    let claims = |sub: &str| json!({"sub": sub, "exp": now_millis() / 1000 + 600});
    let good = sign_hs256(SECRET, &claims(&bob));
    let forged = sign_hs256(b"not-the-secret", &claims(&alice));
    authorizer::handle(&state, authorizer_event(&good))
        .await
        .unwrap();
    assert!(
        authorizer::handle(&state, authorizer_event(&forged))
            .await
            .is_err()
    );

    // bob registers a phone; alice opens a conversation with him.
    let r = devices::handle(
        &app,
        ws(route(
            "registerDevice",
            &bob,
            &bob_conn,
            Some(json!({"action":"registerDevice","platform":"fcm","token":device_token})),
        )),
    )
    .await
    .unwrap();
    assert!(matches!(reply(&r), ServerFrame::DeviceRegistered { .. }));
    let r = conversations::handle(
        &app,
        ws(route(
            "createConversation",
            &alice,
            &alice_conn,
            Some(json!({"action":"createConversation","members":[bob]})),
        )),
    )
    .await
    .unwrap();
    let ServerFrame::Conversation {
        conversation_id, ..
    } = reply(&r)
    else {
        panic!("no conversation")
    };
    let send = |body: &str, key: &str| {
        ws(route(
            "sendMessage",
            &alice,
            &alice_conn,
            Some(
                json!({"action":"sendMessage","conversation_id":conversation_id,"client_msg_id":key,"body":body}),
            ),
        ))
    };

    // bob offline: stored, pushed with a preview.
    for (i, body) in bodies[..2].iter().enumerate() {
        let r = send_message::handle(&app, send(body, &format!("k{i}")))
            .await
            .unwrap();
        assert!(matches!(reply(&r), ServerFrame::Sent { .. }));
    }

    // bob connects; catch-up; acks.
    let bob_conn_id = ConnectionId::parse(&bob_conn).unwrap();
    gateway.open(&bob_conn_id);
    connect::handle(&app, ws(route("$connect", &bob, &bob_conn, None)))
        .await
        .unwrap();
    let request = serde_json::to_value(trigger.requests().last().unwrap()).unwrap();
    catch_up::handle(&app, LambdaEvent::new(request, Context::default()))
        .await
        .unwrap();
    assert!(
        gateway
            .frames(&bob_conn_id)
            .iter()
            .any(|f| f.contains(&bodies[1]))
    );
    ack::handle(
        &app,
        ws(route(
            "ack",
            &bob,
            &bob_conn,
            Some(json!({"action":"ack","acks":[{"conversation_id":conversation_id,"seq":2}]})),
        )),
    )
    .await
    .unwrap();

    // Live delivery, then a malformed frame that carries a body.
    send_message::handle(&app, send(&bodies[2], "k2"))
        .await
        .unwrap();
    let r = send_message::handle(
        &app,
        ws(route(
            "sendMessage",
            &alice,
            &alice_conn,
            Some(json!({"action":"sendMessage","body":bodies[3]})),
        )),
    )
    .await
    .unwrap();
    assert!(matches!(reply(&r), ServerFrame::Error { .. }));

    // Faults: Redis down, the limiter down, DynamoDB down.
    redis_proxy.set_mode(Mode::Reset);
    limiter.set_down(true);
    send_message::handle(&app, send(&bodies[4], "k4"))
        .await
        .unwrap();
    redis_proxy.set_mode(Mode::Pass);
    limiter.set_down(false);
    dynamo_proxy.set_mode(Mode::Reset);
    gateway.open(&ConnectionId::parse(&alice_conn).unwrap());
    assert!(
        send_message::handle(&app, send(&bodies[5], "k5"))
            .await
            .is_err()
    );
    dynamo_proxy.set_mode(Mode::Pass);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // The capture worked, and saw the flow and its faults.
    for expected in [
        "connection authorized",
        "delivered",
        "catch-up done",
        "registry unavailable",
        "rate limiter unavailable",
        "dynamodb: giving up after retries",
    ] {
        assert!(
            text.contains(expected),
            "no {expected:?} in the logs:\n{text}"
        );
    }
    assert!(
        !text.contains("\"level\":\"DEBUG\""),
        "captured at info and above"
    );
    for body in &bodies {
        assert!(!text.contains(body.as_str()), "a body leaked:\n{text}");
    }
    assert!(
        !text.contains(&device_token),
        "a device token leaked:\n{text}"
    );
    assert!(
        !text.contains(&format!("{alice}: ")),
        "a push preview leaked:\n{text}"
    );
    for token in [&good, &forged] {
        for part in token.split('.').skip(1) {
            assert!(!text.contains(part), "a token part leaked:\n{text}");
        }
    }
    eprintln!(
        "outcome: log capture: {} lines at info+, 0 tokens, 0 bodies, 0 previews, 0 device tokens",
        text.lines().count()
    );
}
