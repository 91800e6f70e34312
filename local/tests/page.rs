//! `GET /` serves two things: the WebSocket API to an upgrade, the story
//! page to a browser. These tests hold the two apart on a real gateway, and
//! check that the page's modules and its tokens work with the WebSocket API.

#![allow(clippy::unwrap_used)]

use courier_local::wiring::{self, LocalOptions, Started};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

async fn start() -> Started {
    courier_tests::init_test_logging();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    wiring::start(LocalOptions::default(), listener)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_plain_get_of_root_is_the_page_and_its_modules_are_served() {
    let started = start().await;
    let base = started.gateway.http_url();
    let http = reqwest::Client::new();

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("src=\"/app.js\""));

    for (path, holds) in [
        ("/app.js", "import { CourierClient } from '/courier.js'"),
        ("/courier.js", "export class CourierClient"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert!(r.text().await.unwrap().contains(holds), "{path}");
    }
    started.gateway.stop().await;
}

#[tokio::test]
async fn a_page_token_opens_the_websocket_on_the_same_root() {
    let started = start().await;
    let base = started.gateway.http_url();
    let v: Value = reqwest::get(format!("{base}/_local/token?user=bob"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["user"], "bob");
    let token = v["token"].as_str().unwrap();

    let url = format!("{}/?token={token}", started.gateway.ws_url());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(r#"{"action":"ping","request_id":"p1"}"#))
        .await
        .unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("socket closed before the pong");
        };
        let frame: Value = serde_json::from_str(&t).unwrap();
        if frame["type"] == "pong" {
            assert_eq!(frame["request_id"], "p1");
            break;
        }
    }
    assert!(
        !started
            .registry
            .lookup(&courier_core::domain::UserId::parse("bob").unwrap())
            .await
            .unwrap()
            .is_empty(),
        "bob is connected"
    );
    started.gateway.stop().await;
}

#[tokio::test]
async fn a_broken_upgrade_of_root_is_refused_not_answered_with_the_page() {
    let started = start().await;
    let base = started.gateway.http_url();
    // An upgrade without Sec-WebSocket-Key and Connection: Upgrade.
    let r = reqwest::Client::new()
        .get(format!("{base}/"))
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(!r.text().await.unwrap().contains("<html"));

    // Without a token the handshake is the authorizer's 401, as before.
    let err = tokio_tungstenite::connect_async(format!("{}/", started.gateway.ws_url()))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
        other => panic!("expected a 401, got {other}"),
    }
    started.gateway.stop().await;
}
