//! `chat demo`, the binary, against a gateway started here: its exit status
//! is the verdict, so it must be 0 when the story holds and non-zero when
//! it does not.

#![allow(clippy::unwrap_used)]

use std::process::Output;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use courier_local::wiring::{self, LocalOptions, Started};
use lambda_runtime::LambdaEvent;

async fn gateway(break_acks: bool) -> Started {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    wiring::start_with(LocalOptions::default(), listener, move |_, routes| {
        if break_acks {
            // Acks are accepted and dropped: pending rows stay.
            routes.route(
                "ack",
                "ack",
                |_e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async {
                    Ok(courier_aws::edge::status(200))
                },
            )
        } else {
            routes
        }
    })
    .await
    .unwrap()
}

async fn demo(started: &Started, extra: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("demo")
        .arg("--url")
        .arg(started.gateway.ws_url())
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exits_zero_when_bob_holds_the_six_messages() {
    let started = gateway(false).await;
    let out = demo(&started, &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "#42  alice: hey",
        "#44  alice: hello??",
        "#17  carol:",
        "nothing pending for bob",
        "demo: OK",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    assert!(stdout.contains("pushes to bob's phone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exits_non_zero_when_pending_rows_are_left() {
    let started = gateway(true).await;
    let out = demo(&started, &["--timeout-secs", "2"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pending"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exits_non_zero_when_it_cannot_connect() {
    let started = gateway(false).await;
    let out = demo(&started, &["--secret", "not-the-gateway-secret"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}
