//! The Lambda catch-up trigger against a loopback stub of Lambda's Invoke
//! API: an asynchronous (`Event`) invoke of the configured function whose
//! payload is exactly the catch-up request, and failures that come back as
//! `TriggerError`. The client is the one `adapters::aws` builds with
//! `LAMBDA_ENDPOINT`, as `connect` does against the local gateway.

#![allow(clippy::unwrap_used)]

mod support;

use courier_aws::auth::testing::http::{Reply, StubServer};
use courier_aws::lambda::LambdaTrigger;
use courier_aws::wiring::AwsEndpoints;
use courier_core::domain::{ConnectionId, CorrelationId, UserId};
use courier_core::ports::{CatchUpRequest, CatchUpTrigger};

async fn trigger(stub: &StubServer, function: &str) -> LambdaTrigger {
    let aws = support::aws_with(AwsEndpoints {
        lambda: Some(stub.url()),
        ..AwsEndpoints::default()
    })
    .await;
    LambdaTrigger::new(aws.lambda(), function)
}

fn request() -> CatchUpRequest {
    CatchUpRequest {
        user_id: UserId::parse("bob").unwrap(),
        connection_id: ConnectionId::parse("L0SM9cOFvHcCIhw=").unwrap(),
        connected_at: Some(1_795_000_000_000),
        device_id: Default::default(),
        open_conversation: None,
        device_limit: None,
        origin: Default::default(),
        correlation_id: Some(CorrelationId::parse("Kc9dQHZoIAMFabc=").unwrap()),
    }
}

#[tokio::test]
async fn invokes_the_function_asynchronously_with_the_request_as_payload() {
    let stub = StubServer::start(|_| Reply::status(202)).await;
    let t = trigger(&stub, "courier-catch-up").await;
    t.trigger(&request()).await.unwrap();

    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/2015-03-31/functions/courier-catch-up/invocations");
    assert_eq!(r.header("x-amz-invocation-type"), Some("Event"));
    let payload: CatchUpRequest = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(payload, request());
    let raw: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        raw,
        serde_json::json!({
            "user_id": "bob",
            "device_id": "default",
            "connection_id": "L0SM9cOFvHcCIhw=",
            "connected_at": 1_795_000_000_000i64,
            "origin": "connect",
            "correlation_id": "Kc9dQHZoIAMFabc=",
        })
    );
}

#[tokio::test]
async fn a_function_arn_is_sent_as_one_path_segment() {
    let stub = StubServer::start(|_| Reply::status(202)).await;
    let arn = "arn:aws:lambda:us-east-1:123456789012:function:courier-catch-up";
    trigger(&stub, arn).await.trigger(&request()).await.unwrap();
    assert_eq!(
        stub.requests()[0].path,
        format!("/2015-03-31/functions/{arn}/invocations")
    );
}

#[tokio::test]
async fn an_unknown_function_is_a_trigger_error() {
    let stub = StubServer::start(|_| {
        Reply::json(
            404,
            r#"{"Type":"User","Message":"Function not found: courier-nope"}"#,
        )
        .header("x-amzn-ErrorType", "ResourceNotFoundException")
    })
    .await;
    let e = trigger(&stub, "courier-nope")
        .await
        .trigger(&request())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ResourceNotFound"), "{e}");
}

#[tokio::test]
async fn a_synchronous_answer_is_not_taken_for_a_queued_event() {
    // 200 means something ran the function inline: not what connect asked.
    let stub = StubServer::start(|_| Reply::json(200, "null")).await;
    let e = trigger(&stub, "courier-catch-up")
        .await
        .trigger(&request())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("202"), "{e}");
}

#[tokio::test]
async fn an_unreachable_lambda_endpoint_is_a_trigger_error() {
    let stub = StubServer::start(|_| Reply::status(202)).await;
    let t = trigger(&stub, "courier-catch-up").await;
    drop(stub);
    assert!(t.trigger(&request()).await.is_err());
}
