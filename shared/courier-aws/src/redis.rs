//! The connection registry on Redis (ElastiCache in production).
//!
//! One key per user, `ws:{user_id}`, holding `"{connection_id}|{connected_at}"`
//! (connected_at in epoch milliseconds, `0` when unknown), written with `SET … PX ttl` so an
//! entry that no `$disconnect` ever cleaned up (a crashed function, a lost
//! event) disappears a little after API Gateway's 2-hour connection limit.
//! The `|` separator is safe: [`ConnectionId`] refuses it. `remove_if` is a
//! Lua compare-and-delete, so a stale `$disconnect` or a late 410 can never
//! delete a newer connection that replaced the entry in between; the script
//! touches one key, so it is also safe on a clustered (serverless) cache.
//!
//! The semantics are exactly [`MemoryRegistry`](courier_core::adapters::memory::MemoryRegistry)'s,
//! and `tests/tests/registry_conformance.rs` holds both to the same cases.
//!
//! Redis is a hint (docs/architecture.md, delivery rules): a function must start, and `$connect` must
//! succeed, while Redis is down or slow. Hence:
//!
//! - [`RedisRegistry::new`] never touches the network: it only parses the
//!   URL. The [`ConnectionManager`] is created on first use, lazily, inside
//!   the caller's runtime.
//! - Every command, connecting included, is bounded by
//!   [`RegistryConfig::timeout`]; past it the caller gets a [`RegistryError`]
//!   and carries on as if the user were offline.
//! - The manager reconnects by itself when a connection drops. It does not
//!   recover from everything (a connection that hangs without closing, a
//!   failed first connect that was not an I/O error, a node that turned
//!   read-only after a failover), so after any failed command the manager is
//!   dropped and the next command builds a fresh one. Failures are rare, and a
//!   reconnect costs one round trip; a wedged client costs every send.
//! - The manager itself makes a single connection attempt per use (no
//!   internal retry loop): the caller's timeout is too short for backoff to
//!   help, and the next invocation is the retry.
//!
//! `rediss://` URLs use TLS (rustls with the webpki roots), which ElastiCache
//! Serverless requires.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use courier_core::config::RegistryConfig;
use courier_core::domain::{Connection, ConnectionId, UserId};
use courier_core::ports::{ConnectionRegistry, RegistryError};

/// Deletes `KEYS[1]` only if the connection id stored in it is `ARGV[1]`.
const REMOVE_IF_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local bar = string.find(v, '|', 1, true)
local id = v
if bar then id = string.sub(v, 1, bar - 1) end
if id == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A manager and the generation it was built in, so a failed command only
/// throws away the manager it failed on, not a fresh one another task built.
struct Slot {
    generation: u64,
    manager: Option<ConnectionManager>,
}

/// [`ConnectionRegistry`] over Redis.
pub struct RedisRegistry {
    client: redis::Client,
    config: RegistryConfig,
    slot: Mutex<Slot>,
    remove_if: redis::Script,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisRegistry")
            .field("ttl", &self.config.ttl)
            .field("timeout", &self.config.timeout)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisRegistry {
    /// Parses the URL; connects on first use. Fails only on a malformed URL.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let client = Self::client_for(&config.url)?;
        Ok(Self {
            client,
            config,
            slot: Mutex::new(Slot {
                generation: 0,
                manager: None,
            }),
            remove_if: redis::Script::new(REMOVE_IF_SCRIPT),
        })
    }

    /// Checks a `REDIS_URL` without connecting (used by config validation).
    pub fn check_url(url: &str) -> Result<(), RegistryError> {
        Self::client_for(url).map(|_| ())
    }

    fn client_for(url: &str) -> Result<redis::Client, RegistryError> {
        // The error text of the redis crate never includes the password.
        redis::Client::open(url).map_err(|e| RegistryError(format!("invalid redis url: {e}")))
    }

    pub fn key(user: &UserId) -> String {
        format!("ws:{user}")
    }

    /// An unknown opening time is stored as `0`, as entries written before
    /// it was an `Option` hold it.
    fn encode(connection: &Connection) -> String {
        let at = connection.connected_at.unwrap_or(0);
        format!("{}|{at}", connection.connection_id)
    }

    fn decode(user: &UserId, raw: &str) -> Result<Connection, RegistryError> {
        let corrupt = || RegistryError(format!("corrupt registry value at ws:{user}"));
        let (id, at) = raw.split_once('|').ok_or_else(corrupt)?;
        Ok(Connection {
            connection_id: ConnectionId::parse(id).map_err(|_| corrupt())?,
            connected_at: Some(at.parse::<i64>().map_err(|_| corrupt())?).filter(|at| *at > 0),
        })
    }

    /// The current manager, built on first use.
    fn manager(&self) -> Result<(u64, ConnectionManager), RegistryError> {
        let mut slot = lock(&self.slot);
        if let Some(m) = &slot.manager {
            return Ok((slot.generation, m.clone()));
        }
        let timeout = Some(self.config.timeout);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| RegistryError(format!("redis client: {e}")))?;
        slot.generation += 1;
        slot.manager = Some(manager.clone());
        Ok((slot.generation, manager))
    }

    /// Forgets the manager of `generation` so the next command reconnects.
    fn discard(&self, generation: u64) {
        let mut slot = lock(&self.slot);
        if slot.generation == generation {
            slot.manager = None;
        }
    }

    /// Runs one command within the configured timeout.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, manager) = self.manager()?;
        let limit: Duration = self.config.timeout;
        match tokio::time::timeout(limit, f(manager)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.discard(generation);
                Err(RegistryError(format!("redis {op}: {e}")))
            }
            Err(_) => {
                self.discard(generation);
                Err(RegistryError(format!(
                    "redis {op}: no answer within {} ms",
                    limit.as_millis()
                )))
            }
        }
    }
}

#[async_trait]
impl ConnectionRegistry for RedisRegistry {
    async fn register(&self, user: &UserId, connection: &Connection) -> Result<(), RegistryError> {
        let key = Self::key(user);
        let value = Self::encode(connection);
        // PX rather than EX so a sub-second TTL (tests) is honoured too.
        let ttl_ms = u64::try_from(self.config.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.run("SET", |mut conn| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn lookup(&self, user: &UserId) -> Result<Option<Connection>, RegistryError> {
        let key = Self::key(user);
        let raw: Option<String> = self
            .run("GET", |mut conn| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await?;
        raw.map(|v| Self::decode(user, &v)).transpose()
    }

    async fn remove_if(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        let key = Self::key(user);
        let id = connection_id.as_str().to_owned();
        let script = &self.remove_if;
        let deleted: i64 = self
            .run("remove_if", |mut conn| async move {
                script
                    .key(&key)
                    .arg(&id)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(deleted > 0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_refuses_garbage() {
        let user = UserId::parse("bob").unwrap();
        let c = Connection {
            connection_id: ConnectionId::parse("L0SM9cOFvHcCIhw=").unwrap(),
            connected_at: Some(1_795_000_000_000),
        };
        let raw = RedisRegistry::encode(&c);
        assert_eq!(raw, "L0SM9cOFvHcCIhw=|1795000000000");
        assert_eq!(RedisRegistry::decode(&user, &raw).unwrap(), c);
        assert!(RedisRegistry::decode(&user, "no-separator").is_err());
        assert!(RedisRegistry::decode(&user, "id|not-a-number").is_err());
        assert!(RedisRegistry::decode(&user, "bad id|1").is_err());
        // Unknown opening time: stored as 0 (as older entries hold it), read
        // back as unknown.
        let unknown = Connection {
            connected_at: None,
            ..c
        };
        let raw = RedisRegistry::encode(&unknown);
        assert_eq!(raw, "L0SM9cOFvHcCIhw=|0");
        assert_eq!(RedisRegistry::decode(&user, &raw).unwrap(), unknown);
    }

    #[test]
    fn construction_needs_no_server_and_refuses_bad_urls() {
        // Nothing listens on port 1: building must not care.
        assert!(RedisRegistry::new(RegistryConfig::new("redis://127.0.0.1:1")).is_ok());
        assert!(RedisRegistry::new(RegistryConfig::new("rediss://cache.example:6379")).is_ok());
        assert!(RedisRegistry::check_url("http://nope").is_err());
        assert!(RedisRegistry::check_url("not a url").is_err());
    }
}
