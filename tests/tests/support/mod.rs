//! Helpers shared by the adapter tests of this folder (each test file that
//! needs them says `mod support;`). The loopback HTTP server that fakes an
//! AWS endpoint is not here: it is `courier_aws::auth::testing::http`, the
//! one the auth tests use too.

#![allow(dead_code)]

use std::time::Duration;

use courier_aws::wiring::{AwsClients, AwsEndpoints};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// AWS clients with fixed test credentials and region, reading nothing of
/// the machine's AWS setup; every endpoint override as given.
pub async fn aws_with(endpoints: AwsEndpoints) -> AwsClients {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(courier_tests::TEST_REGION))
        .test_credentials()
        .load()
        .await;
    AwsClients::from_sdk_config(sdk, endpoints)
}

/// [`aws_with`] without overrides (the Management API endpoint is passed
/// per client).
pub async fn offline_aws() -> AwsClients {
    aws_with(AwsEndpoints::default()).await
}

/// `GET url` over plain HTTP/1.0; the body as text. For moto's inspection
/// endpoints, which no SDK client reaches. Panics unless the answer is 200.
pub async fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h.to_owned(), format!("/{p}")),
        None => (rest.to_owned(), "/".to_owned()),
    };
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&host))
        .await
        .expect("connect within 5 s")
        .expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("answer within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {url}: {head}"
    );
    body.to_owned()
}
