//! One message whose encoded frame is over API Gateway's 32 KB client
//! frame limit (16,384 `"` characters: inside the body limit, 32 KB more
//! once JSON-escaped) must not brick the client: it fails at once with a
//! typed error, the socket stays up, and the next send goes through. Also
//! when the client's own check is loosened and the gateway closes the
//! socket with 1009: the frame is failed, never resent.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use courier_client::{
    Client, ClientConfig, ClientError, LOCAL_JWT_SECRET, RequestError, Tuning, minted_token,
};
use courier_core::domain::UserId;
use courier_local::wiring::{self, LocalOptions, Started};

async fn gateway() -> Started {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    wiring::start_with(LocalOptions::default(), listener, |_, routes| routes)
        .await
        .unwrap()
}

async fn client(started: &Started, who: &str, max_frame_bytes: usize) -> Client {
    let user = UserId::parse(who).unwrap();
    let mut config = ClientConfig::new(
        started.gateway.ws_url(),
        user.clone(),
        minted_token(LOCAL_JWT_SECRET, &user),
    );
    config.tuning = Tuning {
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        max_frame_bytes,
        // Loosened with the frame check, so a loosened client's poison
        // reaches the gateway.
        max_body_bytes: max_frame_bytes,
        max_message_frame_bytes: max_frame_bytes,
        ..Tuning::default()
    };
    Client::connect(config).await.unwrap()
}

fn poison() -> String {
    "\"".repeat(16_384)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_frame_fails_at_once_and_the_socket_stays_up() {
    let started = gateway().await;
    let alice = client(&started, "alice", courier_client::MAX_FRAME_BYTES).await;
    let conv = alice.create_conversation(&["alice", "bob"]).await.unwrap();

    let failed = tokio::time::timeout(Duration::from_secs(1), alice.send(&conv, &poison()))
        .await
        .expect("the oversize send fails within a second");
    match failed {
        Err(ClientError::Request(RequestError::FrameTooLarge { bytes, limit })) => {
            assert_eq!(limit, 32_768);
            assert!(bytes > 32_768, "{bytes}");
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(alice.inspect(|s| s.outbox_len()), 0);

    let sent = tokio::time::timeout(Duration::from_secs(5), alice.send(&conv, "hello"))
        .await
        .expect("the next send is answered")
        .unwrap();
    assert_eq!(sent.seq.get(), 1);
    assert_eq!(alice.inspect(|s| s.opens()), 1, "the socket never closed");
    alice.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_the_gateway_closes_with_1009_is_failed_and_never_resent() {
    let started = gateway().await;
    // The client's own check is loosened, so the frame reaches the gateway.
    let alice = client(&started, "alice", 1 << 20).await;
    let conv = alice.create_conversation(&["alice", "bob"]).await.unwrap();

    let failed = tokio::time::timeout(Duration::from_secs(5), alice.send(&conv, &poison()))
        .await
        .expect("the send fails once the gateway closes the socket");
    assert!(
        matches!(
            failed,
            Err(ClientError::Request(RequestError::FrameTooLarge { .. }))
        ),
        "{failed:?}"
    );
    assert_eq!(alice.inspect(|s| s.outbox_len()), 0);

    let sent = tokio::time::timeout(Duration::from_secs(5), alice.send(&conv, "hello"))
        .await
        .expect("the next send is answered")
        .unwrap();
    assert_eq!(sent.seq.get(), 1);
    // Once when the client read the gateway's 1009; twice when the
    // gateway's close raced the write and the client saw only a broken
    // socket (no code): then the second quick drop on the same send fails
    // it (Session::on_dropped). Never a third resend.
    let opens = alice.inspect(|s| s.opens());
    assert!(
        (2..=3).contains(&opens),
        "the socket came back {opens} times"
    );
    alice.close();
}
