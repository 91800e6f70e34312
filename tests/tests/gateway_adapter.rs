//! The API Gateway Management adapter against a loopback server that
//! behaves like `@connections`: what goes over the wire (method, path under
//! the stage, body bytes) and how each answer maps to the port's outcome
//! (200, 410, 413, 429 then 200, 5xx, 403). The client is the one
//! `adapters::aws` builds from `MANAGEMENT_ENDPOINT`, so the retry counts
//! below also prove the SDK's own retries are off.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use courier_aws::apigw::ApiGatewayManagement;
use courier_aws::auth::testing::http::{Recorded, Reply, StubServer};
use courier_core::domain::ConnectionId;
use courier_core::ports::{Gateway, PostError};

/// An API Gateway connection id: base64-ish, ending in `=`.
const CONN: &str = "L0SM9cOFvHcCIhw=";

fn conn() -> ConnectionId {
    ConnectionId::parse(CONN).unwrap()
}

async fn gateway(stub: &StubServer) -> ApiGatewayManagement {
    let aws = support::offline_aws().await;
    ApiGatewayManagement::new(aws.management(&format!("{}/dev", stub.url())))
}

fn error(status: u16, code: &str) -> Reply {
    Reply::json(status, r#"{"message":null}"#).header("x-amzn-ErrorType", code)
}

/// Answers `replies` in order, then repeats the last one.
fn scripted(replies: Vec<Reply>) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    let n = Arc::new(AtomicUsize::new(0));
    move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        replies[i.min(replies.len() - 1)].clone()
    }
}

#[tokio::test]
async fn post_sends_the_bytes_intact_to_the_connection_path_under_the_stage() {
    let stub = StubServer::start(|_| Reply::status(200)).await;
    let gw = gateway(&stub).await;
    // A frame near the 32 KB billing unit, with multi-byte UTF-8 in it.
    let mut frame =
        br#"{"type":"messages","conversation_id":"c1","messages":[{"body":"h\xc3\xa9llo"}]}"#
            .to_vec();
    frame.extend(std::iter::repeat_n(b'x', 32 * 1024 - frame.len()));
    gw.post(&conn(), &frame).await.unwrap();

    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, format!("/dev/@connections/{CONN}"));
    assert_eq!(reqs[0].body, frame);
    // Signed like any AWS call.
    assert!(
        reqs[0]
            .header("authorization")
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256")
    );
}

#[tokio::test]
async fn gone_410_is_typed_and_not_retried() {
    let stub = StubServer::start(|_| error(410, "GoneException")).await;
    let gw = gateway(&stub).await;
    assert_eq!(gw.post(&conn(), b"{}").await, Err(PostError::Gone));
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn a_bare_410_without_error_type_is_gone_too() {
    let stub = StubServer::start(|_| Reply::status(410)).await;
    let gw = gateway(&stub).await;
    assert_eq!(gw.post(&conn(), b"{}").await, Err(PostError::Gone));
}

#[tokio::test]
async fn payload_too_large_413_is_typed_and_not_retried() {
    let stub = StubServer::start(|_| error(413, "PayloadTooLargeException")).await;
    let gw = gateway(&stub).await;
    assert_eq!(
        gw.post(&conn(), b"{}").await,
        Err(PostError::PayloadTooLarge)
    );
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn throttled_429_is_retried_then_succeeds() {
    let stub = StubServer::start(scripted(vec![
        error(429, "LimitExceededException"),
        error(429, "LimitExceededException"),
        Reply::status(200),
    ]))
    .await;
    let gw = gateway(&stub).await;
    gw.post(&conn(), b"{\"n\":1}").await.unwrap();
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 3);
    // The same body each time.
    assert!(reqs.iter().all(|r| r.body == b"{\"n\":1}"));
}

#[tokio::test]
async fn server_error_5xx_is_retried_then_succeeds() {
    let stub = StubServer::start(scripted(vec![
        error(500, "InternalServerErrorException"),
        Reply::status(200),
    ]))
    .await;
    let gw = gateway(&stub).await;
    gw.post(&conn(), b"{}").await.unwrap();
    assert_eq!(stub.requests().len(), 2);
}

#[tokio::test]
async fn endless_throttling_gives_up_quickly_as_unavailable() {
    let stub = StubServer::start(|_| error(429, "LimitExceededException")).await;
    let gw = gateway(&stub).await;
    let started = Instant::now();
    let result = gw.post(&conn(), b"{}").await;
    assert!(
        matches!(result, Err(PostError::Unavailable(_))),
        "{result:?}"
    );
    assert_eq!(stub.requests().len(), 3, "bounded retries, SDK retries off");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn forbidden_403_is_unavailable_without_retry() {
    let stub = StubServer::start(|_| error(403, "ForbiddenException")).await;
    let gw = gateway(&stub).await;
    let result = gw.post(&conn(), b"{}").await;
    assert!(
        matches!(result, Err(PostError::Unavailable(_))),
        "{result:?}"
    );
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn an_endpoint_nobody_listens_on_is_unavailable() {
    let stub = StubServer::start(|_| Reply::status(200)).await;
    let gw = gateway(&stub).await;
    drop(stub);
    let result = gw.post(&conn(), b"{}").await;
    assert!(
        matches!(result, Err(PostError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn get_maps_times_to_millis_and_410_to_none() {
    let stub = StubServer::start(scripted(vec![
        Reply::json(
            200,
            r#"{"connectedAt":"2026-11-29T10:00:00.250Z","lastActiveAt":"2026-11-29T10:05:00Z",
                "identity":{"sourceIp":"203.0.113.7","userAgent":"courier-ios"}}"#,
        ),
        error(410, "GoneException"),
    ]))
    .await;
    let gw = gateway(&stub).await;
    let info = gw.get(&conn()).await.unwrap().unwrap();
    assert_eq!(info.connected_at, Some(1_795_946_400_250));
    assert_eq!(info.last_active_at, Some(1_795_946_700_000));
    assert_eq!(info.source_ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(gw.get(&conn()).await.unwrap(), None);

    let reqs = stub.requests();
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, format!("/dev/@connections/{CONN}"));
}

#[tokio::test]
async fn delete_sends_delete_and_types_410() {
    let stub = StubServer::start(scripted(vec![
        Reply::status(204),
        error(410, "GoneException"),
    ]))
    .await;
    let gw = gateway(&stub).await;
    gw.delete(&conn()).await.unwrap();
    assert_eq!(gw.delete(&conn()).await, Err(PostError::Gone));
    let reqs = stub.requests();
    assert_eq!(reqs[0].method, "DELETE");
    assert_eq!(reqs[0].path, format!("/dev/@connections/{CONN}"));
}
