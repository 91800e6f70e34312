//! The gateway as API Gateway and Lambda, with handlers written here: the
//! handshake (authorizer, `$connect`), route selection and route responses,
//! API Gateway's limits and timeouts, `$disconnect`, and the Management and
//! Invoke APIs through the real AWS SDK clients. No Courier handler is
//! involved, so these pin down the emulation itself; `e2e.rs` runs Courier
//! through it.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
};
use aws_lambda_events::encodings::Body;
use courier_local::routes::{CONNECT, DEFAULT, DISCONNECT, Routes};
use courier_local::{Core, GatewayConfig, Inspect, RunningGateway};
use futures::{SinkExt, StreamExt};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the test handlers saw.
#[derive(Clone)]
struct Probe {
    held: mpsc::UnboundedSender<String>,
    release: Arc<Notify>,
    disconnects: mpsc::UnboundedSender<(String, i64, String)>,
    events: mpsc::UnboundedSender<Value>,
    connect_events: Arc<Mutex<Vec<ApiGatewayWebsocketProxyRequest>>>,
}

struct Harness {
    gw: RunningGateway,
    held: mpsc::UnboundedReceiver<String>,
    release: Arc<Notify>,
    disconnects: mpsc::UnboundedReceiver<(String, i64, String)>,
    events: mpsc::UnboundedReceiver<Value>,
    connect_events: Arc<Mutex<Vec<ApiGatewayWebsocketProxyRequest>>>,
}

fn reply(v: Value) -> ApiGatewayProxyResponse {
    let mut r = ApiGatewayProxyResponse::default();
    r.status_code = 200;
    r.body = Some(Body::Text(v.to_string()));
    r
}

fn authorize(
    e: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>,
) -> Result<ApiGatewayCustomAuthorizerResponse, lambda_runtime::Error> {
    let token = e
        .payload
        .query_string_parameters
        .first("token")
        .unwrap_or("");
    let arn = e.payload.method_arn.clone().unwrap_or_default();
    let (effect, user) = match token.strip_prefix("ok-") {
        Some(user) => ("Allow", user.to_owned()),
        None if token == "deny" => ("Deny", "anonymous".to_owned()),
        None => return Err("Unauthorized".into()),
    };
    Ok(serde_json::from_value(json!({
        "principalId": user,
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": ["execute-api:Invoke"], "Effect": effect, "Resource": [arn]}]},
        "context": {"user_id": user},
    }))?)
}

fn routes(p: Probe) -> Routes {
    let connect_probe = p.clone();
    let disconnect_probe = p.clone();
    let event_probe = p.clone();
    Routes::new()
        .authorizer("authorizer", |e| async move { authorize(e) })
        .route(
            CONNECT,
            "connect",
            move |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
                let p = connect_probe.clone();
                async move {
                    p.connect_events.lock().unwrap().push(e.payload.clone());
                    let user = e.payload.request_context.authorizer.fields["user_id"].clone();
                    if user == "banned" {
                        let mut r = ApiGatewayProxyResponse::default();
                        r.status_code = 403;
                        return Ok(r);
                    }
                    if e.payload.query_string_parameters.first("hold").is_some() {
                        let id = e.payload.request_context.connection_id.clone().unwrap();
                        p.held.send(id).unwrap();
                        p.release.notified().await;
                    }
                    Ok(courier_aws::edge::status(200))
                }
            },
        )
        .route(
            DISCONNECT,
            "disconnect",
            move |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
                let p = disconnect_probe.clone();
                async move {
                    let c = &e.payload.request_context;
                    p.disconnects
                        .send((
                            c.connection_id.clone().unwrap(),
                            c.disconnect_status_code.unwrap_or(-1),
                            c.disconnect_reason.clone().unwrap_or_default(),
                        ))
                        .unwrap();
                    Ok(courier_aws::edge::status(200))
                }
            },
        )
        .route(
            "echo",
            "echo",
            |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
                let c = &e.payload.request_context;
                Ok(reply(json!({
                    "user": c.authorizer.fields.get("user_id"),
                    "principal": c.authorizer.fields.get("principalId"),
                    "route": c.route_key,
                    "event_type": c.event_type,
                    "connection_id": c.connection_id,
                    "body": e.payload.body,
                    "deadline_set": e.context.deadline > 0,
                })))
            },
        )
        .route("boom", "boom", |_e| async move {
            Err::<ApiGatewayProxyResponse, _>("boom".into())
        })
        .route(
            DEFAULT,
            "default",
            |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
                Ok(reply(
                    json!({"default": e.payload.body, "binary": e.payload.is_base64_encoded}),
                ))
            },
        )
        .function("add", |e: LambdaEvent<Value>| async move {
            let sum = e.payload["a"].as_i64().unwrap_or(0) + e.payload["b"].as_i64().unwrap_or(0);
            Ok(json!({"sum": sum}))
        })
        .function("fail", |_e: LambdaEvent<Value>| async move {
            Err::<Value, _>("nope".into())
        })
        .function("record", move |e: LambdaEvent<Value>| {
            let p = event_probe.clone();
            async move {
                p.events.send(e.payload).unwrap();
                Ok(Value::Null)
            }
        })
}

async fn start(config: GatewayConfig) -> Harness {
    let (held_tx, held) = mpsc::unbounded_channel();
    let (disc_tx, disconnects) = mpsc::unbounded_channel();
    let (ev_tx, events) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let connect_events = Arc::new(Mutex::new(Vec::new()));
    let probe = Probe {
        held: held_tx,
        release: release.clone(),
        disconnects: disc_tx,
        events: ev_tx,
        connect_events: connect_events.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = courier_local::serve(
        Core::new(config),
        routes(probe),
        Inspect::default(),
        listener,
    )
    .await
    .unwrap();
    Harness {
        gw,
        held,
        release,
        disconnects,
        events,
        connect_events,
    }
}

async fn connect(h: &Harness, query: &str) -> Result<Ws, u16> {
    let url = format!("{}/?{query}", h.gw.ws_url());
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("handshake failed without a status: {e}"),
    }
}

async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame within 5 s")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn next_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no close within 5 s");
        match msg {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before close: {e}"),
            None => return None,
        }
    }
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

fn management(gw: &RunningGateway) -> aws_sdk_apigatewaymanagement::Client {
    aws_sdk_apigatewaymanagement::Client::new(&sdk_config(&gw.management_endpoint()))
}

fn lambda(gw: &RunningGateway) -> aws_sdk_lambda::Client {
    aws_sdk_lambda::Client::new(&sdk_config(&gw.http_url()))
}

#[tokio::test]
async fn refusals_are_http_statuses_at_the_handshake() {
    let h = start(GatewayConfig::default()).await;
    assert_eq!(connect(&h, "").await.err(), Some(401));
    assert_eq!(connect(&h, "token=garbage").await.err(), Some(401));
    assert_eq!(connect(&h, "token=deny").await.err(), Some(403));
    // $connect answering 403 refuses too, after the authorizer allowed.
    assert_eq!(connect(&h, "token=ok-banned").await.err(), Some(403));
    assert!(connect(&h, "token=ok-bob").await.is_ok());
}

#[tokio::test]
async fn connect_event_is_filled_as_api_gateway_fills_it() {
    let h = start(GatewayConfig::default()).await;
    let url = format!("{}/local?token=ok-bob", h.gw.ws_url());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut()
        .insert("Origin", "http://localhost:5173".parse().unwrap());
    let (_ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let e = h.connect_events.lock().unwrap()[0].clone();
    let c = &e.request_context;
    assert_eq!(c.route_key.as_deref(), Some("$connect"));
    assert_eq!(c.event_type.as_deref(), Some("CONNECT"));
    assert_eq!(c.stage.as_deref(), Some("local"));
    assert_eq!(c.message_direction.as_deref(), Some("IN"));
    assert_eq!(
        c.domain_name.as_deref(),
        Some(h.gw.addr.to_string().as_str())
    );
    assert_eq!(c.apiid.as_deref(), Some("courierlocal"));
    assert!(c.connected_at > 0 && c.request_time_epoch >= c.connected_at);
    assert!(c.request_id.is_some() && c.request_time.is_some());
    assert_eq!(c.identity.source_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(c.authorizer.fields["user_id"], "bob");
    assert_eq!(c.authorizer.fields["principalId"], "bob");
    assert_eq!(e.headers.get("origin").unwrap(), "http://localhost:5173");
    assert_eq!(e.query_string_parameters.first("token"), Some("ok-bob"));
    let id = c.connection_id.clone().unwrap();
    assert!(
        courier_core::domain::ConnectionId::parse(&id).is_ok(),
        "{id}"
    );
}

#[tokio::test]
async fn frames_are_routed_on_action_and_answered_with_route_responses() {
    let h = start(GatewayConfig::default()).await;
    let mut ws = connect(&h, "token=ok-bob").await.unwrap();
    ws.send(Message::text(r#"{"action":"echo","x":1}"#))
        .await
        .unwrap();
    let r = next_text(&mut ws).await;
    assert_eq!(r["user"], "bob");
    assert_eq!(r["route"], "echo");
    assert_eq!(r["event_type"], "MESSAGE");
    assert_eq!(r["body"], r#"{"action":"echo","x":1}"#);
    assert_eq!(r["deadline_set"], true);

    for raw in ["not json", r#"{"action":"fly"}"#, r#"{"action":7}"#, "[]"] {
        ws.send(Message::text(raw)).await.unwrap();
        let r = next_text(&mut ws).await;
        assert_eq!(r["default"], raw, "{raw} goes to $default");
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let r = next_text(&mut ws).await;
    assert_eq!(r["binary"], true);

    // A failing integration: API Gateway's own error frame, socket stays.
    ws.send(Message::text(r#"{"action":"boom"}"#))
        .await
        .unwrap();
    let r = next_text(&mut ws).await;
    assert_eq!(r["message"], "Internal server error");
    assert!(r["connectionId"].is_string() && r["requestId"].is_string());
    ws.send(Message::text(r#"{"action":"echo"}"#))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await["route"], "echo");
}

#[tokio::test]
async fn a_frame_over_32_kb_closes_the_socket_with_1009() {
    let mut h = start(GatewayConfig::default()).await;
    let mut ws = connect(&h, "token=ok-bob").await.unwrap();
    let big = format!(r#"{{"action":"echo","pad":"{}"}}"#, "x".repeat(33 * 1024));
    ws.send(Message::text(big)).await.unwrap();
    let close = next_close(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
    let (_, code, _) = tokio::time::timeout(Duration::from_secs(5), h.disconnects.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 1009);
    // Just under the limit is fine.
    let mut ws = connect(&h, "token=ok-bob").await.unwrap();
    let ok = format!(r#"{{"action":"echo","pad":"{}"}}"#, "x".repeat(31 * 1024));
    ws.send(Message::text(ok)).await.unwrap();
    assert_eq!(next_text(&mut ws).await["route"], "echo");
}

#[tokio::test]
async fn disconnect_reports_the_client_close_code_and_posts_are_then_gone() {
    let mut h = start(GatewayConfig::default()).await;
    let mut ws = connect(&h, "token=ok-bob").await.unwrap();
    ws.send(Message::text(r#"{"action":"echo"}"#))
        .await
        .unwrap();
    let id = next_text(&mut ws).await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let (gone, code, reason) = tokio::time::timeout(Duration::from_secs(5), h.disconnects.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (gone.as_str(), code, reason.as_str()),
        (id.as_str(), 1000, "bye")
    );
    let err = management(&h.gw)
        .post_to_connection()
        .connection_id(&id)
        .data(aws_smithy_types::Blob::new("late"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());
}

#[tokio::test]
async fn idle_and_maximum_durations_close_with_1001() {
    let config = GatewayConfig {
        idle_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let mut h = start(config).await;
    let mut ws = connect(&h, "token=ok-bob").await.unwrap();
    let close = next_close(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    let (_, code, _) = h.disconnects.recv().await.unwrap();
    assert_eq!(code, 1001);

    // Frames keep an idle connection open; the maximum duration does not care.
    let config = GatewayConfig {
        idle_timeout: Duration::from_millis(400),
        max_connection_duration: Duration::from_millis(1500),
        ..GatewayConfig::default()
    };
    let h = start(config).await;
    let mut ws = connect(&h, "token=ok-bob").await.unwrap();
    let opened = std::time::Instant::now();
    let close = loop {
        ws.send(Message::text(r#"{"action":"echo"}"#))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1001);
    assert!(
        opened.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        opened.elapsed()
    );
}

#[tokio::test]
async fn posting_before_connect_returns_is_gone_then_delivered() {
    let mut h = start(GatewayConfig::default()).await;
    let url = format!("{}/?token=ok-bob&hold=1", h.gw.ws_url());
    let client = tokio::spawn(async move { tokio_tungstenite::connect_async(url).await });
    let id = h.held.recv().await.unwrap();
    let mgmt = management(&h.gw);
    let early = mgmt
        .post_to_connection()
        .connection_id(&id)
        .data(aws_smithy_types::Blob::new("early"))
        .send()
        .await
        .unwrap_err();
    assert!(early.into_service_error().is_gone_exception());
    let get = mgmt
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap_err();
    assert!(get.into_service_error().is_gone_exception());

    h.release.notify_one();
    let (mut ws, _) = client.await.unwrap().unwrap();
    mgmt.post_to_connection()
        .connection_id(&id)
        .data(aws_smithy_types::Blob::new(r#"{"hello":1}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await["hello"], 1);
}

#[tokio::test]
async fn management_api_works_through_the_sdk() {
    let h = start(GatewayConfig::default()).await;
    let mut ws = connect(&h, "token=ok-bob").await.unwrap();
    ws.send(Message::text(r#"{"action":"echo"}"#))
        .await
        .unwrap();
    let id = next_text(&mut ws).await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mgmt = management(&h.gw);

    let info = mgmt
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap();
    assert!(info.connected_at().is_some() && info.last_active_at().is_some());
    assert_eq!(info.identity().unwrap().source_ip(), Some("127.0.0.1"));

    mgmt.post_to_connection()
        .connection_id(&id)
        .data(aws_smithy_types::Blob::new(r#"{"n":1}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await["n"], 1);

    let too_big = vec![b'x'; 128 * 1024 + 1];
    let err = mgmt
        .post_to_connection()
        .connection_id(&id)
        .data(aws_smithy_types::Blob::new(too_big))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_payload_too_large_exception());

    let err = mgmt
        .post_to_connection()
        .connection_id("bm9ib2R5aGVyZQ=")
        .data(aws_smithy_types::Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());

    mgmt.delete_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap();
    assert!(next_close(&mut ws).await.is_some());
    let err = mgmt
        .delete_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());
}

#[tokio::test]
async fn invoke_api_works_through_the_sdk() {
    use aws_sdk_lambda::types::InvocationType;
    let mut h = start(GatewayConfig::default()).await;
    let client = lambda(&h.gw);

    let out = client
        .invoke()
        .function_name("add")
        .payload(aws_smithy_types::Blob::new(r#"{"a":2,"b":3}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 200);
    assert!(out.function_error().is_none());
    let v: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(v["sum"], 5);

    let out = client
        .invoke()
        .function_name("arn:aws:lambda:us-east-1:000000000000:function:record")
        .invocation_type(InvocationType::Event)
        .payload(aws_smithy_types::Blob::new(r#"{"user_id":"bob"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 202);
    let got = tokio::time::timeout(Duration::from_secs(5), h.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got["user_id"], "bob");

    let out = client.invoke().function_name("fail").send().await.unwrap();
    assert_eq!(out.function_error(), Some("Unhandled"));
    let v: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(v["errorMessage"], "nope");

    let err = client
        .invoke()
        .function_name("missing")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());

    // Route handlers are functions too: invoke `echo` with a route event.
    let out = client
        .invoke()
        .function_name("echo")
        .payload(aws_smithy_types::Blob::new(
            json!({"requestContext": {"routeKey": "echo", "connectedAt": 1, "requestTimeEpoch": 1,
                   "authorizer": {"user_id": "carol"}}, "isBase64Encoded": false})
            .to_string(),
        ))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    let body: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["user"], "carol");
}
