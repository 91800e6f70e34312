//! The one Redis connection of an execution environment, shared in shape by
//! the registry ([`crate::redis`]) and the send limiter
//! ([`crate::rate_limit`]): built lazily, every command bounded, thrown away
//! after a failure.
//!
//! Two modes, chosen by [`RegistryConfig::cluster`] (`REDIS_CLUSTER`):
//!
//! - single node: a [`ConnectionManager`] on `REDIS_URL` (a local
//!   redis-server, a cluster-mode-disabled cache);
//! - cluster: a [`ClusterConnection`] seeded with `REDIS_URL`. It reads the
//!   slot map (`CLUSTER SLOTS`), sends each command to the master of its
//!   key's slot, and follows `MOVED` and `ASK`. ElastiCache Serverless is
//!   cluster-mode only (docs/deploy.md, "Redis client mode"), so the SAM
//!   template sets `REDIS_CLUSTER=true`.
//!
//! Either way a command is routed by its keys, so every script declares its
//! one key as `KEYS[1]` (`EVALSHA sha 1 key …`), and `SCRIPT LOAD` after a
//! `NOSCRIPT` goes to every master.
//!
//! Redis is a hint (docs/architecture.md, delivery rules), hence:
//!
//! - [`RedisLink::new`] never touches the network: it only parses the URL.
//!   The connection is created on first use, inside the caller's runtime
//!   (both kinds connect in the background and the first command waits).
//! - Every command, connecting included, is bounded by
//!   [`RegistryConfig::timeout`]; past it the caller gets a [`RegistryError`].
//! - After any failed command the connection is dropped and the next command
//!   builds a fresh one: neither client recovers from everything (a
//!   connection that hangs without closing, a node turned read-only after a
//!   failover), and a reconnect costs one round trip where a wedged client
//!   costs every call.
//! - No backoff loops: the single-node manager makes one connection attempt
//!   per use. The cluster client keeps three retries, because following a
//!   `MOVED` or `ASK` *is* a retry to it; its waits are capped at 100 ms and
//!   the whole call still ends at the timeout.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use courier_core::config::RegistryConfig;
use courier_core::ports::RegistryError;

/// Redirections (`MOVED`, `ASK`) and retries one cluster command may take.
const CLUSTER_RETRIES: u32 = 3;
/// Cap on the cluster client's wait between retries, in milliseconds.
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 100;

/// Built once per execution environment; boxed, as the two differ in size.
enum Client {
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

/// A connection of either kind; both are cheap handles to one multiplexed
/// connection (or one per cluster node), cloned per command.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection and the generation it was built in, so a failed command only
/// throws away the connection it failed on, not a fresh one another task
/// built meanwhile.
struct Slot {
    generation: u64,
    conn: Option<Conn>,
}

/// A lazily connected, self-healing link to Redis (one node or a cluster).
pub(crate) struct RedisLink {
    client: Client,
    timeout: Duration,
    slot: Mutex<Slot>,
}

impl RedisLink {
    /// Parses the URL; connects on first use. Fails only on a malformed URL.
    pub(crate) fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        Ok(Self {
            client: client_for(&config.url, config.cluster, config.timeout)?,
            timeout: config.timeout,
            slot: Mutex::new(Slot {
                generation: 0,
                conn: None,
            }),
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current connection, built on first use (in the background: the
    /// first command waits for it, within its timeout).
    fn conn(&self) -> Result<(u64, Conn), RegistryError> {
        let mut slot = self.lock();
        if let Some(c) = &slot.conn {
            return Ok((slot.generation, c.clone()));
        }
        let conn = match &self.client {
            Client::Single(client) => {
                let timeout = Some(self.timeout);
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(0);
                Conn::Single(
                    ConnectionManager::new_lazy_with_config((**client).clone(), config)
                        .map_err(|e| RegistryError(format!("redis client: {e}")))?,
                )
            }
            Client::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
        slot.generation += 1;
        slot.conn = Some(conn.clone());
        Ok((slot.generation, conn))
    }

    /// Forgets the connection of `generation` so the next command reconnects.
    fn discard(&self, generation: u64) {
        let mut slot = self.lock();
        if slot.generation == generation {
            slot.conn = None;
        }
    }

    /// Runs one command within the configured timeout; `op` names it in the
    /// error.
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.conn()?;
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.discard(generation);
                Err(RegistryError(format!("redis {op}: {e}")))
            }
            Err(_) => {
                self.discard(generation);
                Err(RegistryError(format!(
                    "redis {op}: no answer within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }
}

/// Checks a `REDIS_URL` for the mode without connecting (config validation).
pub(crate) fn check_url(url: &str, cluster: bool) -> Result<(), RegistryError> {
    client_for(url, cluster, Duration::from_secs(1)).map(|_| ())
}

fn client_for(url: &str, cluster: bool, timeout: Duration) -> Result<Client, RegistryError> {
    // The error text of the redis crate never includes the password.
    let invalid = |e: redis::RedisError| RegistryError(format!("invalid redis url: {e}"));
    if !cluster {
        return redis::Client::open(url)
            .map(|c| Client::Single(Box::new(c)))
            .map_err(invalid);
    }
    // The TLS mode (`rediss://`) and credentials of the seed apply to every
    // node the slot map names.
    ClusterClient::builder([url])
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .overall_response_timeout(Some(timeout))
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(1)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
        .build()
        .map(|c| Client::Cluster(Box::new(c)))
        .map_err(invalid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(url: &str, cluster: bool) -> RegistryConfig {
        let mut c = RegistryConfig::new(url);
        c.cluster = cluster;
        c
    }

    #[test]
    fn construction_needs_no_server_in_either_mode() {
        // Nothing listens on port 1: building must not care.
        for cluster in [false, true] {
            assert!(RedisLink::new(&config("redis://127.0.0.1:1", cluster)).is_ok());
            assert!(RedisLink::new(&config("rediss://cache.example:6379", cluster)).is_ok());
            assert!(check_url("http://nope", cluster).is_err());
            assert!(check_url("not a url", cluster).is_err());
        }
    }
}
