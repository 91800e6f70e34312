//! Per-user rate limiting of sends: the same cases against the in-memory
//! token bucket and the Redis one (a Lua script on a real redis-server, and
//! in cluster mode on a real three-master Redis Cluster, with users whose
//! buckets live on each master), and
//! the send path on top: a flood gets `rate_limited` frames and stores
//! nothing, other users are unaffected, and a limiter that cannot be asked
//! lets sends through with a log line. With the DynamoDB registry there is
//! no Redis, and the limiter is off, said at start-up.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_aws::rate_limit::RedisRateLimiter;
use courier_core::adapters::rate_limit::MemoryRateLimiter;
use courier_core::app::App;
use courier_core::config::{RateLimitConfig, RegistryConfig};
use courier_core::domain::{ClientMsgId, Conversation, ConversationId, Seq, UserId, now_millis};
use courier_core::ports::{RateDecision, RateLimiter};
use courier_core::protocol::{ErrorCode, ServerFrame};
use courier_core::services::send;
use courier_tests::cluster;
use courier_tests::proxy::{FaultProxy, Mode};

fn user(name: &str) -> UserId {
    UserId::parse(&format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
    .unwrap()
}

async fn redis_limiter(limits: RateLimitConfig) -> RedisRateLimiter {
    let mut config = RegistryConfig::new(courier_tests::redis_url().await);
    config.timeout = Duration::from_secs(2);
    RedisRateLimiter::new(&config, limits).unwrap()
}

async fn cluster_limiter(limits: RateLimitConfig) -> RedisRateLimiter {
    let mut config = RegistryConfig::new(courier_tests::redis_cluster_url().await);
    config.cluster = true;
    config.timeout = Duration::from_secs(2);
    RedisRateLimiter::new(&config, limits).unwrap()
}

fn limits(per_sec: f64, burst: u32) -> RateLimitConfig {
    RateLimitConfig { per_sec, burst }
}

async fn allowed(l: &dyn RateLimiter, u: &UserId, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if l.acquire(u).await.unwrap() == RateDecision::Allowed {
            ok += 1;
        }
    }
    ok
}

// ---- the shared cases ------------------------------------------------------

async fn a_burst_is_allowed_then_the_bucket_is_empty(l: &dyn RateLimiter) {
    let bob = user("bob");
    assert_eq!(allowed(l, &bob, 10).await, 5);
    match l.acquire(&bob).await.unwrap() {
        RateDecision::Limited { retry_after } => {
            // One token at 2/s: at most half a second away.
            assert!(retry_after <= Duration::from_millis(500), "{retry_after:?}");
            assert!(retry_after > Duration::ZERO);
        }
        RateDecision::Allowed => panic!("the bucket should be empty"),
    }
}

async fn the_bucket_refills_at_its_rate(l: &dyn RateLimiter) {
    let bob = user("bob");
    assert_eq!(allowed(l, &bob, 5).await, 5);
    // 2 tokens a second: after 600 ms one token (not two, not five).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(allowed(l, &bob, 3).await, 1);
}

async fn users_have_their_own_buckets(l: &dyn RateLimiter) {
    let (mallory, alice) = (user("mallory"), user("alice"));
    assert_eq!(allowed(l, &mallory, 50).await, 5);
    assert_eq!(allowed(l, &alice, 5).await, 5, "alice is unaffected");
}

async fn concurrent_takes_never_exceed_the_burst(l: &dyn RateLimiter) {
    let bob = user("bob");
    let results = futures::future::join_all((0..40).map(|_| l.acquire(&bob))).await;
    let ok = results
        .into_iter()
        .filter(|r| *r.as_ref().unwrap() == RateDecision::Allowed)
        .count();
    assert_eq!(ok, 5);
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use super::*;
            #[tokio::test]
            async fn memory() {
                super::$case(&MemoryRateLimiter::new(limits(2.0, 5))).await;
            }
            #[tokio::test]
            async fn redis() {
                super::$case(&redis_limiter(limits(2.0, 5)).await).await;
            }
            #[tokio::test]
            async fn redis_cluster() {
                super::$case(&cluster_limiter(limits(2.0, 5)).await).await;
            }
        }
    )*};
}

conformance!(
    a_burst_is_allowed_then_the_bucket_is_empty,
    the_bucket_refills_at_its_rate,
    users_have_their_own_buckets,
    concurrent_takes_never_exceed_the_burst,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bucket_is_atomic_across_execution_environments() {
    // Four limiters (four Lambda environments) on one Redis, one user.
    let mut limiters = Vec::new();
    for _ in 0..4 {
        limiters.push(Arc::new(redis_limiter(limits(1.0, 10)).await));
    }
    let bob = user("bob");
    let tasks: Vec<_> = limiters
        .iter()
        .map(|l| {
            let (l, bob) = (l.clone(), bob.clone());
            tokio::spawn(async move { allowed(l.as_ref(), &bob, 10).await })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 10, "forty tries, a burst of ten");
}

#[tokio::test]
async fn cluster_buckets_on_every_master_each_keep_their_own_count() {
    let seed = courier_tests::redis_cluster_url().await;
    let masters = cluster::masters(&seed).await;
    assert_eq!(masters.len(), 3, "the test cluster has three masters");
    let l = cluster_limiter(limits(2.0, 5)).await;
    let mut served = Vec::new();
    for _ in 0..1000 {
        let u = user("spread");
        let key = RedisRateLimiter::key(&u);
        let slot = cluster::key_slot(&seed, &key).await;
        let Some(master) = masters.iter().find(|m| m.serves(slot)) else {
            panic!("no master serves slot {slot}");
        };
        if served.contains(&master.id) {
            continue;
        }
        assert_eq!(allowed(&l, &u, 8).await, 5, "{master:?}");
        // The bucket is on that master, asked directly.
        let tokens: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("tokens")
            .query_async(&mut master.connection().await)
            .await
            .unwrap();
        let tokens: f64 = tokens.expect("bucket on its master").parse().unwrap();
        assert!(tokens < 1.0, "{tokens}");
        served.push(master.id.clone());
        if served.len() == masters.len() {
            return;
        }
    }
    panic!("no users found for every master: {served:?}");
}

#[tokio::test]
async fn redis_bucket_key_expires_once_it_would_be_full_again() {
    let l = redis_limiter(limits(10.0, 5)).await;
    let bob = user("bob");
    l.acquire(&bob).await.unwrap();
    let client = redis::Client::open(courier_tests::redis_url().await).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(RedisRateLimiter::key(&bob))
        .query_async(&mut c)
        .await
        .unwrap();
    // burst / rate = 500 ms, plus a second of slack.
    assert!((1..=1500).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_within_the_timeout() {
    let (proxy, url) = FaultProxy::in_front_of(&courier_tests::redis_url().await)
        .await
        .unwrap();
    let mut config = RegistryConfig::new(url);
    config.timeout = Duration::from_millis(200);
    let l = RedisRateLimiter::new(&config, limits(2.0, 5)).unwrap();
    let bob = user("bob");
    assert_eq!(l.acquire(&bob).await.unwrap(), RateDecision::Allowed);
    for mode in [Mode::Reset, Mode::BlackHole] {
        proxy.set_mode(mode);
        let t = Instant::now();
        assert!(l.acquire(&bob).await.is_err(), "{mode:?}");
        assert!(t.elapsed() < Duration::from_millis(600), "{mode:?}");
    }
    proxy.set_mode(Mode::Pass);
    // Back: a fresh connection, and the bucket kept its count.
    let mut ok = 0;
    for _ in 0..10 {
        if l.acquire(&bob).await == Ok(RateDecision::Allowed) {
            ok += 1;
        }
    }
    assert!(ok <= 5, "{ok}");
}

// ---- the send path -----------------------------------------------------------

async fn app_with(limiter: Arc<dyn RateLimiter>) -> (App, ConversationId, UserId, UserId) {
    let (app, _h) = App::in_memory();
    let app = app.with_rate_limiter(limiter);
    let (mallory, alice) = (user("mallory"), user("alice"));
    let conv = ConversationId::parse("c1").unwrap();
    app.ports
        .conversations
        .create(&Conversation {
            conversation_id: conv.clone(),
            members: vec![mallory.clone(), alice.clone()],
            last_seq: Seq::ZERO,
            created_at: now_millis(),
        })
        .await
        .unwrap();
    (app, conv, mallory, alice)
}

async fn send(app: &App, from: &UserId, conv: &ConversationId, i: usize) -> ServerFrame {
    let key = ClientMsgId::parse(&format!("{from}-{i}")).unwrap();
    send::send_message(
        app,
        from,
        &Default::default(),
        conv,
        &key,
        "hi",
        Some(format!("r{i}")),
    )
    .await
    .unwrap()
    .into_frame()
}

#[tokio::test]
async fn a_flood_gets_rate_limited_frames_and_others_are_unaffected() {
    let limiter = Arc::new(redis_limiter(limits(5.0, 10)).await);
    let (app, conv, mallory, alice) = app_with(limiter).await;
    let mut sent = 0;
    let mut refused = 0;
    for i in 0..100 {
        match send(&app, &mallory, &conv, i).await {
            ServerFrame::Sent { .. } => sent += 1,
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                client_msg_id,
                request_id,
                message,
            } => {
                // The client learns which frame to retry, and when.
                assert_eq!(client_msg_id, Some(format!("{mallory}-{i}")));
                assert_eq!(request_id, Some(format!("r{i}")));
                assert!(message.contains("retry in"), "{message}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // The burst, plus what refilled while the flood ran (5/s).
    assert!((10..=14).contains(&sent), "{sent}");
    assert_eq!(sent + refused, 100);
    let stored = app.ports.messages.range(&conv, Seq(1), 1000).await.unwrap();
    assert_eq!(stored.len(), sent, "refused sends store nothing");
    for i in 0..10 {
        assert!(
            matches!(send(&app, &alice, &conv, i).await, ServerFrame::Sent { .. }),
            "alice is unaffected"
        );
    }
    eprintln!(
        "outcome: send flood: sent=100 delivered={sent} refused={refused} lost=0 duplicated=0 \
         other_user_sent=10/10"
    );
}

#[tokio::test]
async fn a_limiter_that_cannot_be_asked_lets_sends_through() {
    let limiter = Arc::new(MemoryRateLimiter::new(limits(1.0, 1)));
    limiter.set_down(true);
    let (app, conv, mallory, _) = app_with(limiter.clone()).await;
    for i in 0..5 {
        assert!(matches!(
            send(&app, &mallory, &conv, i).await,
            ServerFrame::Sent { .. }
        ));
    }
    limiter.set_down(false);
    assert!(matches!(
        send(&app, &mallory, &conv, 99).await,
        ServerFrame::Sent { .. }
    ));
    assert!(matches!(
        send(&app, &mallory, &conv, 100).await,
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    ));
}

/// `REGISTRY_BACKEND=dynamodb`: no Redis, so send-message's limiter is off
/// (no `REDIS_URL` asked for, every send allowed), and its start-up log
/// says so.
#[tokio::test]
async fn with_the_dynamodb_registry_the_limiter_is_off_and_the_start_up_log_says_so() {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let limiter = tracing::subscriber::with_default(subscriber, || {
        courier_aws::wiring::rate_limiter_from_env(&courier_core::config::Env(|k: &str| match k {
            "REGISTRY_BACKEND" => Some("dynamodb".to_owned()),
            "REGISTRY_TABLE" => Some("registry".to_owned()),
            "RATE_LIMIT_PER_SEC" => Some("1".to_owned()),
            "RATE_LIMIT_BURST" => Some("1".to_owned()),
            _ => None,
        }))
        .unwrap()
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("rate limiter off") && text.contains("REGISTRY_BACKEND=dynamodb"),
        "{text}"
    );
    // A burst of 1 would refuse the second: nothing is refused.
    let u = user("dyn");
    for _ in 0..10 {
        assert_eq!(limiter.acquire(&u).await.unwrap(), RateDecision::Allowed);
    }
}
