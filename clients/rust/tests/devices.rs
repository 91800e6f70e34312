//! Several devices of one user against an in-process courier-local: each
//! device gets every message and acks its own share (an ack on one never
//! empties the other), a device acks its own sends, the device and
//! conversation lists, unlinking, and the device limit (`too_many_devices`
//! is fatal: a typed error naming the limit, no reconnect).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use courier_client::{Client, ClientConfig, ClientError, LOCAL_JWT_SECRET, Tuning, minted_token};
use courier_core::domain::{ConversationId, DeviceId, Seq, UserId};
use courier_local::wiring::{self, LocalOptions, Started};

const WAIT: Duration = Duration::from_secs(10);

async fn gateway(max_devices: usize) -> Started {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut options = LocalOptions::default();
    options.settings.devices.max_devices = max_devices;
    wiring::start_with(options, listener, |_, routes| routes)
        .await
        .unwrap()
}

fn config(started: &Started, who: &str, device: &str) -> ClientConfig {
    let user = UserId::parse(who).unwrap();
    let mut config = ClientConfig::new(
        started.gateway.ws_url(),
        user.clone(),
        minted_token(LOCAL_JWT_SECRET, &user),
    )
    .with_device(device)
    .unwrap();
    config.tuning = Tuning {
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..Tuning::default()
    };
    config
}

async fn device(started: &Started, who: &str, device: &str) -> Client {
    Client::connect(config(started, who, device)).await.unwrap()
}

async fn pending(started: &Started, who: &str) -> Vec<courier_core::domain::PendingDelivery> {
    started
        .pending
        .list(&UserId::parse(who).unwrap())
        .await
        .unwrap()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn through(c: &Client, conv: &ConversationId) -> Seq {
    c.inspect(|s| s.timeline(conv).map(|t| t.contiguous_through()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_acks_its_own_share_and_its_own_sends() {
    let started = gateway(8).await;
    let alice = device(&started, "alice", "a1").await;
    let phone = device(&started, "bob", "phone").await;
    let laptop = device(&started, "bob", "laptop").await;
    let conv = alice.create_conversation(&["alice", "bob"]).await.unwrap();
    alice.send(&conv, "one").await.unwrap();
    eventually("both devices hold 1", async || {
        through(&phone, &conv) == Seq(1) && through(&laptop, &conv) == Seq(1)
    })
    .await;
    eventually("nothing pending for bob", async || {
        pending(&started, "bob").await.is_empty()
    })
    .await;

    // The laptop sleeps; the phone's ack leaves the laptop's share.
    laptop.go_offline().await;
    alice.send(&conv, "two").await.unwrap();
    eventually("the phone holds 2", async || {
        through(&phone, &conv) == Seq(2)
    })
    .await;
    let phone_id = DeviceId::parse("phone").unwrap();
    eventually("the phone's cursor is at 2", async || {
        pending(&started, "bob")
            .await
            .iter()
            .any(|r| r.cursors.get(&phone_id) == Some(&Seq(2)))
    })
    .await;
    assert_eq!(
        pending(&started, "bob").await.len(),
        1,
        "the laptop's share waits"
    );
    laptop.go_online().await.unwrap();
    eventually("the laptop catches up", async || {
        through(&laptop, &conv) == Seq(2)
    })
    .await;
    eventually("nothing pending for bob", async || {
        pending(&started, "bob").await.is_empty()
    })
    .await;

    // The phone sends: the laptop gets it, and the phone's ack clears its own row.
    let sent = phone.send(&conv, "from my phone").await.unwrap();
    assert_eq!(sent.seq, Seq(3));
    eventually("the laptop gets it", async || {
        through(&laptop, &conv) == Seq(3)
    })
    .await;
    eventually("nothing pending for bob", async || {
        pending(&started, "bob").await.is_empty()
    })
    .await;

    let devices = phone.list_devices().await.unwrap();
    let mut ids: Vec<(&str, bool)> = devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.this_device))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![("laptop", false), ("phone", true)]);
    let page = phone.list_conversations(None, Some(10)).await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(page.conversations[0].last_seq, Seq(3));
    assert_eq!(page.conversations[0].delivered_through_seq, Seq(3));
    assert_eq!(page.next, None);

    laptop.go_offline().await;
    let unlinked = phone
        .unlink_device(&DeviceId::parse("laptop").unwrap())
        .await
        .unwrap();
    assert_eq!(unlinked.as_str(), "laptop");
    let missing = phone
        .unlink_device(&DeviceId::parse("tablet").unwrap())
        .await;
    assert!(
        matches!(
            missing,
            Err(ClientError::Request(
                courier_client::RequestError::Refused {
                    code: courier_core::protocol::ErrorCode::DeviceNotFound,
                    ..
                }
            ))
        ),
        "{missing:?}"
    );
    for c in [alice, phone, laptop] {
        c.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_the_limit_is_refused_for_good() {
    let started = gateway(2).await;
    let phone = device(&started, "bob", "phone").await;
    let laptop = device(&started, "bob", "laptop").await;
    let tablet = match Client::connect(config(&started, "bob", "tablet")).await {
        // Refused before connect looked.
        Err(ClientError::TooManyDevices { limit, .. }) => {
            assert_eq!(limit, Some(2));
            None
        }
        Ok(c) => Some(c),
        Err(e) => panic!("{e}"),
    };
    if let Some(tablet) = tablet {
        tablet
            .wait_until(WAIT, |s| s.fatal().is_some())
            .await
            .unwrap();
        assert!(matches!(
            tablet.refused_device(),
            Some(ClientError::TooManyDevices { limit: Some(2), .. })
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(tablet.inspect(|s| s.opens()), 1, "no reconnect loop");
        tablet.close();
    }
    phone.close();
    laptop.close();
}
