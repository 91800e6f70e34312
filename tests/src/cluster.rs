//! Looking inside the test Redis Cluster ([`crate::redis_cluster_url`]) with
//! plain single-node connections: which master owns a key, and moving a slot
//! from one master to another (keys included) the way a resharding does, so
//! a cluster client's cached slot map goes stale and it meets `MOVED`.

#![allow(clippy::unwrap_used)] // test kit: a failed setup step is a test failure

use redis::aio::MultiplexedConnection;

/// A master of the cluster and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub id: String,
    /// `redis://127.0.0.1:PORT`, for a single-node client.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl Master {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    /// A single-node connection to this master alone (no redirections).
    pub async fn connection(&self) -> MultiplexedConnection {
        single(&self.url).await
    }
}

async fn single(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("bad redis url {url}: {e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// The masters, from `CLUSTER NODES` as the node at `seed` sees them.
pub async fn masters(seed: &str) -> Vec<Master> {
    let mut c = single(seed).await;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER NODES on {seed}: {e}"));
    let mut out = Vec::new();
    for line in text.lines() {
        // <id> <ip:port@bus[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || !fields[2].split(',').any(|f| f == "master") {
            continue;
        }
        let addr = fields[1].split('@').next().unwrap_or_default();
        let (host, port) = addr
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("odd node address in CLUSTER NODES: {line}"));
        let port: u16 = port.parse().unwrap_or_else(|_| panic!("odd port: {line}"));
        let slots = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .map(|s| match s.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => {
                    let one: u16 = s.parse().unwrap();
                    (one, one)
                }
            })
            .collect();
        out.push(Master {
            id: fields[0].to_owned(),
            url: format!("redis://{host}:{port}"),
            host: host.to_owned(),
            port,
            slots,
        });
    }
    out.sort_by_key(|m| m.port);
    out
}

/// The hash slot of `key` (`CLUSTER KEYSLOT`).
pub async fn key_slot(seed: &str, key: &str) -> u16 {
    let mut c = single(seed).await;
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT: {e}"))
}

/// The master serving `key` now.
pub async fn master_of(seed: &str, key: &str) -> Master {
    let slot = key_slot(seed, key).await;
    masters(seed)
        .await
        .into_iter()
        .find(|m| m.serves(slot))
        .unwrap_or_else(|| panic!("no master serves slot {slot}"))
}

/// Moves `slot` with its keys to `to`, as `redis-cli --cluster reshard`
/// does: IMPORTING/MIGRATING, `MIGRATE` the keys, then tell every master the
/// new owner (the target first). Afterwards the old owner answers `MOVED`.
pub async fn move_slot(seed: &str, slot: u16, to: &Master) {
    let all = masters(seed).await;
    let from = all
        .iter()
        .find(|m| m.serves(slot))
        .unwrap_or_else(|| panic!("no master serves slot {slot}"))
        .clone();
    assert_ne!(from.id, to.id, "slot {slot} is already on {}", to.url);
    let (mut src, mut dst) = (from.connection().await, to.connection().await);
    let setslot = |how: &str, id: &str| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(how).arg(id);
        cmd
    };
    let _: () = setslot("IMPORTING", &from.id)
        .query_async(&mut dst)
        .await
        .unwrap();
    let _: () = setslot("MIGRATING", &to.id)
        .query_async(&mut src)
        .await
        .unwrap();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut src)
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg(&to.host)
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut src)
            .await
            .unwrap();
    }
    let mut order = vec![to.clone(), from.clone()];
    order.extend(all.into_iter().filter(|m| m.id != to.id && m.id != from.id));
    for m in order {
        let _: () = setslot("NODE", &to.id)
            .query_async(&mut m.connection().await)
            .await
            .unwrap();
    }
}
