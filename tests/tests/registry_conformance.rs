//! The connection registry's contract, run against the in-memory registry,
//! the Redis one on a real `redis-server`, the Redis one in cluster mode on
//! a real three-master Redis Cluster (the protocol ElastiCache Serverless
//! speaks), and the DynamoDB one on moto (a fresh table per test): the same
//! cases, the same outcomes. Then what only the real ones can show: the TTL
//! really set on the key (on the item, and the table's TTL on
//! `expires_at`); an expired item DynamoDB has not deleted yet left out; on
//! the cluster, users whose keys live on each master all served, and a slot
//! moved under a running client (its slot map stale, `MOVED` followed); and
//! Redis or DynamoDB being down (a closed port, a server that never
//! answers; for Redis, a server that goes away and comes back) costing a
//! bounded, fast `RegistryError` instead of a hang, with recovery once it is
//! back.
//!
//! Over 700 lines: one suite, the shared cases and each backend's own
//! sharing its helpers.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use courier_aws::dynamo::DynamoRegistry;
use courier_aws::redis::RedisRegistry;
use courier_core::adapters::memory::MemoryRegistry;
use courier_core::config::{DynamoRegistryConfig, RegistryConfig};
use courier_core::domain::{Connection, ConnectionId, DeviceId, UserId};
use courier_core::ports::{ConnectionRegistry, Registered};
use courier_tests::cluster::{self, Master};

fn user() -> UserId {
    UserId::parse(&format!("u-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn conn(id: &str, at: i64) -> Connection {
    Connection {
        connection_id: ConnectionId::parse(id).unwrap(),
        connected_at: Some(at),
        device_id: Default::default(),
    }
}

async fn redis_registry(ttl: Duration) -> RedisRegistry {
    let mut config = RegistryConfig::new(courier_tests::redis_url().await);
    config.ttl = ttl;
    // Generous for a loaded CI machine; the down-cases below use short ones.
    config.timeout = Duration::from_secs(2);
    RedisRegistry::new(config).unwrap()
}

async fn cluster_registry(ttl: Duration) -> RedisRegistry {
    let mut config = RegistryConfig::new(courier_tests::redis_cluster_url().await);
    config.cluster = true;
    config.ttl = ttl;
    config.timeout = Duration::from_secs(2);
    RedisRegistry::new(config).unwrap()
}

async fn dynamo_registry(ttl: Duration) -> DynamoRegistry {
    let mut config = DynamoRegistryConfig::new(courier_tests::fresh_registry_table().await);
    config.ttl = ttl;
    // Generous for a loaded CI machine (moto serves one request at a time);
    // the down-case below uses a short one.
    config.timeout = Duration::from_secs(5);
    DynamoRegistry::new(courier_tests::dynamo_client().await, config)
}

// ---- the shared cases ------------------------------------------------------

async fn register_then_lookup_then_replace(r: &dyn ConnectionRegistry) {
    let u = user();
    assert_eq!(r.lookup(&u).await.unwrap(), vec![]);
    let first = conn("AbC123=", 1_795_000_000_000);
    r.register(&u, &first).await.unwrap();
    assert_eq!(r.lookup(&u).await.unwrap(), vec![first]);
    // A newer connection replaces the older one, connected_at included.
    let second = conn("XyZ789=", 1_795_000_005_000);
    r.register(&u, &second).await.unwrap();
    assert_eq!(r.lookup(&u).await.unwrap(), vec![second]);
    // Users do not see each other's entries.
    assert_eq!(r.lookup(&user()).await.unwrap(), vec![]);
}

async fn remove_if_deletes_only_while_the_entry_holds_that_id(r: &dyn ConnectionRegistry) {
    let u = user();
    let old = conn("old-conn", 1);
    let new = conn("new-conn", 2);
    // Nothing there: nothing deleted.
    assert!(
        !r.remove_if(&u, &DeviceId::default(), &old.connection_id)
            .await
            .unwrap()
    );

    r.register(&u, &old).await.unwrap();
    r.register(&u, &new).await.unwrap();
    // A stale $disconnect (or a late 410) of the old connection must not
    // delete the new one.
    assert!(
        !r.remove_if(&u, &DeviceId::default(), &old.connection_id)
            .await
            .unwrap()
    );
    assert_eq!(r.lookup(&u).await.unwrap(), vec![new.clone()]);

    assert!(
        r.remove_if(&u, &DeviceId::default(), &new.connection_id)
            .await
            .unwrap()
    );
    assert_eq!(r.lookup(&u).await.unwrap(), vec![]);
    // Twice is harmless.
    assert!(
        !r.remove_if(&u, &DeviceId::default(), &new.connection_id)
            .await
            .unwrap()
    );
}

async fn an_id_that_is_a_prefix_of_the_stored_one_does_not_match(r: &dyn ConnectionRegistry) {
    let u = user();
    r.register(&u, &conn("abc=", 7)).await.unwrap();
    assert!(
        !r.remove_if(
            &u,
            &DeviceId::default(),
            &ConnectionId::parse("abc").unwrap()
        )
        .await
        .unwrap()
    );
    assert!(
        !r.remove_if(
            &u,
            &DeviceId::default(),
            &ConnectionId::parse("abc==").unwrap()
        )
        .await
        .unwrap()
    );
    assert!(r.lookup(&u).await.unwrap().len() == 1);
}

/// `r` must have been built with the TTL `ttl`; `grain` is how much longer
/// than `ttl` the backend may keep an entry (DynamoDB's `expires_at` is in
/// whole seconds, rounded up; Redis and memory: none). Needs
/// `grain < ttl / 2`.
async fn entries_expire_after_the_ttl_and_reregistering_restarts_it(
    r: &dyn ConnectionRegistry,
    ttl: Duration,
    grain: Duration,
) {
    let longest = ttl + grain;
    let u = user();
    let c = conn("ttl-conn", 3);
    r.register(&u, &c).await.unwrap();
    tokio::time::sleep(longest * 2 / 3).await;
    r.register(&u, &c).await.unwrap();
    tokio::time::sleep(longest * 2 / 3).await;
    // Past the longest life of the first write, within the TTL of the
    // second: still there (600 ms TTL: 800 ms after the first, 400 after
    // the second).
    assert_eq!(r.lookup(&u).await.unwrap(), vec![c]);
    tokio::time::sleep(longest * 5 / 6).await;
    assert_eq!(r.lookup(&u).await.unwrap(), vec![]);
}

fn on(device: &str, id: &str, at: i64) -> Connection {
    Connection {
        device_id: DeviceId::parse(device).unwrap(),
        ..conn(id, at)
    }
}

async fn devices_sit_side_by_side_and_go_one_by_one(r: &dyn ConnectionRegistry) {
    let u = user();
    let phone = on("phone", "p1", 10);
    let laptop = on("laptop", "l1", 20);
    r.register(&u, &phone).await.unwrap();
    r.register(&u, &laptop).await.unwrap();
    // In device order.
    assert_eq!(
        r.lookup(&u).await.unwrap(),
        vec![laptop.clone(), phone.clone()]
    );
    // The phone's connection id under the laptop: nothing removed.
    assert!(
        !r.remove_if(&u, &laptop.device_id, &phone.connection_id)
            .await
            .unwrap()
    );
    assert!(
        r.remove_if(&u, &phone.device_id, &phone.connection_id)
            .await
            .unwrap()
    );
    assert_eq!(r.lookup(&u).await.unwrap(), vec![laptop.clone()]);
    assert!(
        r.remove_if(&u, &laptop.device_id, &laptop.connection_id)
            .await
            .unwrap()
    );
    assert_eq!(r.lookup(&u).await.unwrap(), vec![]);
}

async fn an_older_connection_never_replaces_a_newer_one_of_its_device(r: &dyn ConnectionRegistry) {
    use courier_core::ports::Registered;
    let u = user();
    let newer = on("phone", "new", 2_000);
    let older = on("phone", "old", 1_000);
    assert_eq!(r.register(&u, &newer).await.unwrap(), Registered::Stored);
    // A slow `$connect` of the older connection finishing late: kept out.
    assert_eq!(r.register(&u, &older).await.unwrap(), Registered::KeptNewer);
    assert_eq!(r.lookup(&u).await.unwrap(), vec![newer.clone()]);
    // The same connection again (a ping) re-asserts it.
    assert_eq!(r.register(&u, &newer).await.unwrap(), Registered::Stored);
    // Unknown opening time counts as the oldest.
    let unknown = Connection {
        connected_at: None,
        ..on("phone", "zzz", 0)
    };
    assert_eq!(
        r.register(&u, &unknown).await.unwrap(),
        Registered::KeptNewer
    );
    // Equal opening times: the larger id wins, whichever comes first.
    let a = on("tablet", "aaa", 5_000);
    let b = on("tablet", "bbb", 5_000);
    assert_eq!(r.register(&u, &b).await.unwrap(), Registered::Stored);
    assert_eq!(r.register(&u, &a).await.unwrap(), Registered::KeptNewer);
    assert_eq!(r.lookup(&u).await.unwrap(), vec![newer, b]);
}

/// Connections of one device registered all at once: whatever the order
/// they land in, the newest stays, and each call's answer agrees with it.
async fn racing_registers_of_one_device_leave_the_newest(r: &dyn ConnectionRegistry) {
    let u = user();
    let racers: Vec<Connection> = (0..8)
        .map(|i| on("phone", &format!("race-{i}"), 1_000 + i64::from(i % 4)))
        .collect();
    let outcomes = futures::future::join_all(racers.iter().map(|c| r.register(&u, c))).await;
    // Among the latest opening time (1003), the larger id: race-7.
    let newest = racers[7].clone();
    assert_eq!(r.lookup(&u).await.unwrap(), vec![newest.clone()]);
    assert_eq!(outcomes[7].clone().unwrap(), Registered::Stored);
    // Every later attempt of an older one is kept out.
    for c in &racers[..7] {
        assert_eq!(r.register(&u, c).await.unwrap(), Registered::KeptNewer);
    }
    assert_eq!(r.lookup(&u).await.unwrap(), vec![newest]);
}

const SHORT_TTL: Duration = Duration::from_millis(600);
/// DynamoDB's expiry is in whole seconds: a TTL of a few of them.
const DYNAMO_TTL: Duration = Duration::from_secs(3);
const DYNAMO_GRAIN: Duration = Duration::from_secs(1);

macro_rules! conformance {
    ($case:ident) => {
        mod $case {
            use super::*;

            #[tokio::test]
            async fn memory() {
                super::$case(&MemoryRegistry::new()).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$case(&redis_registry(RegistryConfig::DEFAULT_TTL).await).await;
            }

            #[tokio::test]
            async fn redis_cluster() {
                super::$case(&cluster_registry(RegistryConfig::DEFAULT_TTL).await).await;
            }

            #[tokio::test]
            async fn dynamodb() {
                super::$case(&dynamo_registry(RegistryConfig::DEFAULT_TTL).await).await;
            }
        }
    };
}

conformance!(register_then_lookup_then_replace);
conformance!(remove_if_deletes_only_while_the_entry_holds_that_id);
conformance!(an_id_that_is_a_prefix_of_the_stored_one_does_not_match);
conformance!(devices_sit_side_by_side_and_go_one_by_one);
conformance!(an_older_connection_never_replaces_a_newer_one_of_its_device);
conformance!(racing_registers_of_one_device_leave_the_newest);

mod entries_expire_after_the_ttl_and_reregistering_restarts_it {
    use super::*;

    #[tokio::test]
    async fn memory() {
        super::entries_expire_after_the_ttl_and_reregistering_restarts_it(
            &MemoryRegistry::with_ttl(SHORT_TTL),
            SHORT_TTL,
            Duration::ZERO,
        )
        .await;
    }

    #[tokio::test]
    async fn redis() {
        super::entries_expire_after_the_ttl_and_reregistering_restarts_it(
            &redis_registry(SHORT_TTL).await,
            SHORT_TTL,
            Duration::ZERO,
        )
        .await;
    }

    #[tokio::test]
    async fn redis_cluster() {
        super::entries_expire_after_the_ttl_and_reregistering_restarts_it(
            &cluster_registry(SHORT_TTL).await,
            SHORT_TTL,
            Duration::ZERO,
        )
        .await;
    }

    #[tokio::test]
    async fn dynamodb() {
        super::entries_expire_after_the_ttl_and_reregistering_restarts_it(
            &dynamo_registry(DYNAMO_TTL).await,
            DYNAMO_TTL,
            DYNAMO_GRAIN,
        )
        .await;
    }
}

// ---- Redis Cluster only -------------------------------------------------------

/// One fresh user per master: users whose `ws:` key hashes to a slot of
/// that master.
async fn a_user_on_every_master(seed: &str) -> Vec<(Master, UserId)> {
    let masters = cluster::masters(seed).await;
    assert_eq!(masters.len(), 3, "the test cluster has three masters");
    let mut found: Vec<(Master, UserId)> = Vec::new();
    for _ in 0..1000 {
        let u = user();
        let slot = cluster::key_slot(seed, &RedisRegistry::key(&u)).await;
        if let Some(m) = masters.iter().find(|m| m.serves(slot))
            && !found.iter().any(|(f, _)| f.id == m.id)
        {
            found.push((m.clone(), u));
        }
        if found.len() == masters.len() {
            return found;
        }
    }
    panic!("no users found for every master: {found:?}");
}

#[tokio::test]
async fn cluster_users_on_every_master_are_each_served_from_their_own_master() {
    let seed = courier_tests::redis_cluster_url().await;
    let registry = cluster_registry(RegistryConfig::DEFAULT_TTL).await;
    for (master, u) in a_user_on_every_master(&seed).await {
        let c = conn(&format!("on-{}", master.port), 5);
        registry.register(&u, &c).await.unwrap();
        assert_eq!(registry.lookup(&u).await.unwrap(), vec![c.clone()]);
        // The hash lives on the master of its slot: asked directly, without
        // any redirection, that master has it.
        let value: Option<String> = redis::cmd("HGET")
            .arg(RedisRegistry::key(&u))
            .arg("default")
            .query_async(&mut master.connection().await)
            .await
            .unwrap();
        assert_eq!(
            value.as_deref(),
            Some(&*format!("on-{}|5", master.port)),
            "{master:?}"
        );
        assert!(
            registry
                .remove_if(&u, &DeviceId::default(), &c.connection_id)
                .await
                .unwrap()
        );
        assert_eq!(registry.lookup(&u).await.unwrap(), vec![]);
    }
}

#[tokio::test]
async fn cluster_client_follows_moved_when_a_slot_changes_master_under_it() {
    let seed = courier_tests::redis_cluster_url().await;
    let registry = cluster_registry(RegistryConfig::DEFAULT_TTL).await;
    let u = user();
    let key = RedisRegistry::key(&u);
    let c = conn("before-the-move", 7);
    // The client is connected and has the slot map from before the move.
    registry.register(&u, &c).await.unwrap();
    let from = cluster::master_of(&seed, &key).await;
    let to = cluster::masters(&seed)
        .await
        .into_iter()
        .find(|m| m.id != from.id)
        .unwrap();
    cluster::move_slot(&seed, cluster::key_slot(&seed, &key).await, &to).await;
    assert_eq!(cluster::master_of(&seed, &key).await.id, to.id);

    // The old owner now answers MOVED; the client follows it and finds the
    // entry on the new owner.
    assert_eq!(registry.lookup(&u).await.unwrap(), vec![c.clone()]);
    let newer = conn("after-the-move", 8);
    assert_eq!(
        registry.register(&u, &newer).await.unwrap(),
        Registered::Stored
    );
    let value: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("default")
        .query_async(&mut to.connection().await)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("after-the-move|8"));
    // A client built after the move goes straight to the new owner.
    let fresh = cluster_registry(RegistryConfig::DEFAULT_TTL).await;
    assert_eq!(fresh.lookup(&u).await.unwrap(), vec![newer]);
}

#[tokio::test]
async fn cluster_key_is_ws_user_with_the_configured_ttl() {
    let seed = courier_tests::redis_cluster_url().await;
    let registry = cluster_registry(RegistryConfig::DEFAULT_TTL).await;
    let u = user();
    registry
        .register(&u, &conn("ttl-on-cluster", 1))
        .await
        .unwrap();
    let key = format!("ws:{u}");
    let master = cluster::master_of(&seed, &key).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut master.connection().await)
        .await
        .unwrap();
    let ttl = RegistryConfig::DEFAULT_TTL.as_millis() as i64;
    assert!(
        pttl > ttl - 60_000 && pttl <= ttl,
        "PTTL {pttl}, configured {ttl}"
    );
}

// ---- Redis only -------------------------------------------------------------

#[tokio::test]
async fn redis_key_is_ws_user_with_the_configured_ttl() {
    let url = courier_tests::redis_url().await;
    let registry = redis_registry(RegistryConfig::DEFAULT_TTL).await;
    let u = user();
    registry
        .register(&u, &conn("L0SM9cOFvHcCIhw=", 1_795_000_000_000))
        .await
        .unwrap();

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("ws:{u}");
    // One hash per user, one field per device.
    let value: String = redis::cmd("HGET")
        .arg(&key)
        .arg("default")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(value, "L0SM9cOFvHcCIhw=|1795000000000");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let ttl = RegistryConfig::DEFAULT_TTL.as_millis() as i64;
    assert!(
        pttl > ttl - 60_000 && pttl <= ttl,
        "PTTL {pttl}, configured {ttl}"
    );
}

#[tokio::test]
async fn an_entry_from_before_devices_is_the_device_default_and_survives_the_first_write() {
    let url = courier_tests::redis_url().await;
    let registry = redis_registry(RegistryConfig::DEFAULT_TTL).await;
    let u = user();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("ws:{u}"))
        .arg("legacy|1795000000000")
        .query_async(&mut raw)
        .await
        .unwrap();
    let legacy = conn("legacy", 1_795_000_000_000);
    assert_eq!(registry.lookup(&u).await.unwrap(), vec![legacy.clone()]);
    // A new device's connection joins it instead of replacing it.
    let phone = on("phone", "p1", 1_795_000_001_000);
    registry.register(&u, &phone).await.unwrap();
    assert_eq!(
        registry.lookup(&u).await.unwrap(),
        vec![legacy.clone(), phone]
    );
    // And its disconnect removes it like any device's.
    assert!(
        registry
            .remove_if(&u, &DeviceId::default(), &legacy.connection_id)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_garbled_value_is_an_error_not_a_panic() {
    let url = courier_tests::redis_url().await;
    let registry = redis_registry(RegistryConfig::DEFAULT_TTL).await;
    let u = user();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("ws:{u}"))
        .arg("no separator here")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(registry.lookup(&u).await.is_err());
    // The registry is still usable afterwards.
    registry.register(&u, &conn("fresh", 1)).await.unwrap();
    assert!(registry.lookup(&u).await.unwrap().len() == 1);
}

// ---- DynamoDB only ----------------------------------------------------------

/// The raw item of `user`'s `device` in `table`.
async fn raw_item(
    table: &str,
    u: &UserId,
    device: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    courier_tests::dynamo_client()
        .await
        .get_item()
        .table_name(table)
        .key("user_id", AttributeValue::S(u.to_string()))
        .key("device_id", AttributeValue::S(device.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

async fn put_raw(table: &str, item: &[(&str, AttributeValue)]) {
    let mut req = courier_tests::dynamo_client()
        .await
        .put_item()
        .table_name(table);
    for (k, v) in item {
        req = req.item(*k, v.clone());
    }
    req.send().await.unwrap();
}

fn epoch_secs() -> i64 {
    courier_core::domain::now_millis() / 1000
}

#[tokio::test]
async fn dynamodb_item_is_user_device_with_the_configured_ttl_and_the_table_expires_it() {
    let registry = dynamo_registry(RegistryConfig::DEFAULT_TTL).await;
    let table = registry.config().table.clone();
    let u = user();
    let c = on("phone", "L0SM9cOFvHcCIhw=", 1_795_000_000_000);
    registry.register(&u, &c).await.unwrap();
    let item = raw_item(&table, &u, "phone").await.unwrap();
    assert_eq!(
        item["connection_id"],
        AttributeValue::S("L0SM9cOFvHcCIhw=".into())
    );
    assert_eq!(
        item["connected_at"],
        AttributeValue::N("1795000000000".into())
    );
    let AttributeValue::N(expires) = &item["expires_at"] else {
        panic!("expires_at is not a number: {item:?}");
    };
    let expires: i64 = expires.parse().unwrap();
    let ttl = i64::try_from(RegistryConfig::DEFAULT_TTL.as_secs()).unwrap();
    let now = epoch_secs();
    assert!(
        expires > now + ttl - 60 && expires <= now + ttl + 1,
        "expires_at {expires}, now {now}, ttl {ttl}"
    );
    // An unknown opening time is stored as 0, as Redis stores it.
    let unknown = Connection {
        connected_at: None,
        ..on("tablet", "t1", 0)
    };
    registry.register(&u, &unknown).await.unwrap();
    let item = raw_item(&table, &u, "tablet").await.unwrap();
    assert_eq!(item["connected_at"], AttributeValue::N("0".into()));
    // DynamoDB deletes past expires_at on its own.
    let ttl = courier_tests::dynamo_client()
        .await
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let d = ttl.time_to_live_description().unwrap();
    assert_eq!(d.attribute_name(), Some("expires_at"));
    assert!(
        matches!(
            d.time_to_live_status(),
            Some(
                aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled
                    | aws_sdk_dynamodb::types::TimeToLiveStatus::Enabling
            )
        ),
        "{d:?}"
    );
}

#[tokio::test]
async fn dynamodb_an_expired_item_not_deleted_yet_is_left_out_and_replaced() {
    let registry = dynamo_registry(RegistryConfig::DEFAULT_TTL).await;
    let table = registry.config().table.clone();
    let u = user();
    // DynamoDB's TTL deletes days late: a newer connection's item, expired
    // a minute ago, still in the table.
    put_raw(
        &table,
        &[
            ("user_id", AttributeValue::S(u.to_string())),
            ("device_id", AttributeValue::S("phone".into())),
            ("connection_id", AttributeValue::S("dead".into())),
            ("connected_at", AttributeValue::N("9000".into())),
            (
                "expires_at",
                AttributeValue::N((epoch_secs() - 60).to_string()),
            ),
        ],
    )
    .await;
    assert_eq!(registry.lookup(&u).await.unwrap(), vec![]);
    // It no longer counts as newer: an older connection takes the device.
    let older = on("phone", "alive", 1_000);
    assert_eq!(
        registry.register(&u, &older).await.unwrap(),
        Registered::Stored
    );
    assert_eq!(registry.lookup(&u).await.unwrap(), vec![older]);
}

#[tokio::test]
async fn dynamodb_a_garbled_item_is_an_error_not_a_panic_and_never_blocks_its_device() {
    let registry = dynamo_registry(RegistryConfig::DEFAULT_TTL).await;
    let table = registry.config().table.clone();
    let u = user();
    put_raw(
        &table,
        &[
            ("user_id", AttributeValue::S(u.to_string())),
            ("device_id", AttributeValue::S("default".into())),
            ("connection_id", AttributeValue::N("12".into())),
        ],
    )
    .await;
    assert!(registry.lookup(&u).await.is_err());
    // The registry is still usable, and the device's next connection
    // replaces the garbled item.
    let c = conn("fresh", 1);
    assert_eq!(registry.register(&u, &c).await.unwrap(), Registered::Stored);
    assert_eq!(registry.lookup(&u).await.unwrap(), vec![c]);
}

fn down_dynamo_registry(port: u16, timeout: Duration) -> DynamoRegistry {
    let mut config = DynamoRegistryConfig::new("nowhere");
    config.timeout = timeout;
    DynamoRegistry::new(
        courier_tests::dynamo_client_for(&format!("http://127.0.0.1:{port}")),
        config,
    )
}

#[tokio::test]
async fn dynamodb_down_or_silent_costs_at_most_the_timeout() {
    // A closed port: refused at once, retried within the bound.
    let r = down_dynamo_registry(free_port(), Duration::from_millis(300));
    every_call_fails_within(&r, Duration::from_millis(1000)).await;
    // Accepts connections and reads nothing: only the bound ends the call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let r = down_dynamo_registry(port, Duration::from_millis(300));
    every_call_fails_within(&r, Duration::from_millis(1000)).await;
    hold.abort();
}

// ---- Redis down ---------------------------------------------------------------

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn down_registry(port: u16, timeout: Duration) -> RedisRegistry {
    let mut config = RegistryConfig::new(format!("redis://127.0.0.1:{port}"));
    config.timeout = timeout;
    RedisRegistry::new(config).unwrap()
}

fn down_cluster_registry(port: u16, timeout: Duration) -> RedisRegistry {
    let mut config = RegistryConfig::new(format!("redis://127.0.0.1:{port}"));
    config.cluster = true;
    config.timeout = timeout;
    RedisRegistry::new(config).unwrap()
}

/// Every operation fails with a `RegistryError`, each within `bound`.
async fn every_call_fails_within(r: &dyn ConnectionRegistry, bound: Duration) {
    let u = user();
    let c = conn("c", 1);
    let started = Instant::now();
    assert!(r.register(&u, &c).await.is_err());
    assert!(
        started.elapsed() < bound,
        "register took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(r.lookup(&u).await.is_err());
    assert!(
        started.elapsed() < bound,
        "lookup took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(
        r.remove_if(&u, &DeviceId::default(), &c.connection_id)
            .await
            .is_err()
    );
    assert!(
        started.elapsed() < bound,
        "remove_if took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_closed_port_fails_fast_with_a_registry_error() {
    let r = down_registry(free_port(), Duration::from_millis(300));
    every_call_fails_within(&r, Duration::from_millis(1000)).await;
    let r = down_cluster_registry(free_port(), Duration::from_millis(300));
    every_call_fails_within(&r, Duration::from_millis(1000)).await;
}

#[tokio::test]
async fn a_server_that_never_answers_costs_at_most_the_timeout() {
    // Accepts connections and reads nothing, like a blackholed cache node.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let r = down_registry(port, Duration::from_millis(300));
    every_call_fails_within(&r, Duration::from_millis(1000)).await;
    let r = down_cluster_registry(port, Duration::from_millis(300));
    every_call_fails_within(&r, Duration::from_millis(1000)).await;
    hold.abort();
}

/// A redis-server of this test's own, on a port of its choosing.
struct OwnRedis(Child);

impl OwnRedis {
    fn start(port: u16) -> Self {
        Self::start_with(port, &["--port", &port.to_string()])
    }

    fn start_with(port: u16, args: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(args)
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it (apt-get install redis-server) or run scripts/test")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Retries `register` until it succeeds; panics past `within`.
async fn until_registered(r: &RedisRegistry, u: &UserId, c: &Connection, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match r.register(u, c).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "registry did not recover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn recovers_when_redis_comes_back_and_again_after_it_restarts() {
    let port = free_port();
    let r = down_registry(port, Duration::from_millis(300));
    let u = user();
    let c = conn("back-again", 9);

    // Down from the start: the registry was built anyway, calls fail fast.
    every_call_fails_within(&r, Duration::from_millis(1000)).await;

    // Up: the same registry starts working without being rebuilt.
    let server = OwnRedis::start(port);
    until_registered(&r, &u, &c, Duration::from_secs(5)).await;
    assert_eq!(r.lookup(&u).await.unwrap(), vec![c.clone()]);

    // Gone while connected: errors, fast.
    server.stop();
    every_call_fails_within(&r, Duration::from_millis(1000)).await;

    // Back (empty: no persistence): the established-then-dropped connection
    // is replaced and the registry works again.
    let _server = OwnRedis::start(port);
    until_registered(&r, &u, &c, Duration::from_secs(5)).await;
    assert_eq!(r.lookup(&u).await.unwrap(), vec![c.clone()]);
    assert!(
        r.remove_if(&u, &DeviceId::default(), &c.connection_id)
            .await
            .unwrap()
    );
}

/// A self-signed certificate for 127.0.0.1 and its key, made for this test
/// only (valid until 2126). Nothing trusts it, which is the point.
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBmjCCAUGgAwIBAgIUIGwLKTOvSeu+VEDlJvQ1vL75cbwwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyOTAyMTQyNVoYDzIxMjYxMTA1
MDIxNDI1WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATDi6136KG6cvFJ1qkY8HHYaG5WIUAf3vNIpCIgB/ah+yO8Om0rUGKo
jiIMXYmNwOBrQ8VPIqLVVrpVq86GmXEno28wbTAdBgNVHQ4EFgQUOE1u0+AnhGK4
sGuKQTxM/bca30UwHwYDVR0jBBgwFoAUOE1u0+AnhGK4sGuKQTxM/bca30UwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDRwAwRAIgSCiWmlGFM+2mp/sjMb4o29mCvX7AIJaymdV9sbUIS9cCIBHH
Pt/cfVBGZ3IAxEiPNMPOor02uzRzAqs6bkfqbnmI
-----END CERTIFICATE-----
";
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgI6XPwm91Q9aMU4rp
ElMzUv4j/prxyp92Gsbrv75LwD6hRANCAATDi6136KG6cvFJ1qkY8HHYaG5WIUAf
3vNIpCIgB/ah+yO8Om0rUGKojiIMXYmNwOBrQ8VPIqLVVrpVq86GmXEn
-----END PRIVATE KEY-----
";

#[tokio::test]
async fn rediss_speaks_tls_and_refuses_a_certificate_nobody_vouches_for() {
    let dir = std::env::temp_dir().join(format!("courier-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let log = dir.join("redis.log");
    std::fs::write(&cert, TEST_CERT).unwrap();
    std::fs::write(&key, TEST_KEY).unwrap();
    let port = free_port();
    let _server = OwnRedis::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--logfile",
            log.to_str().unwrap(),
        ],
    );
    let refusals = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(" alert ")
            .count()
    };

    for cluster in [false, true] {
        let before = refusals();
        let mut config = RegistryConfig::new(format!("rediss://127.0.0.1:{port}"));
        config.cluster = cluster;
        config.timeout = Duration::from_secs(2);
        let r = RedisRegistry::new(config).unwrap();
        let started = Instant::now();
        let e = r.lookup(&user()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "cluster {cluster}: {:?}",
            started.elapsed()
        );
        // A TLS handshake ran and the client checked the server's
        // certificate against the webpki roots, and refused it (self-signed):
        // the server logs the client's TLS alert. The single-node client also
        // says so; the cluster client reports only that it found no node.
        let deadline = Instant::now() + Duration::from_secs(2);
        while refusals() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            refusals() > before,
            "cluster {cluster}: no TLS refusal logged ({e})"
        );
        if !cluster {
            assert!(e.0.to_lowercase().contains("certificate"), "{e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
