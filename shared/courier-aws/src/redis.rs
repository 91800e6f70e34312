//! The connection registry on Redis (ElastiCache in production).
//!
//! One hash per user, `ws:{user_id}`, with a field per connected device
//! holding `"{connection_id}|{connected_at}"` (connected_at in epoch
//! milliseconds, `0` when unknown). Every write sets the key's expiry (`PEXPIRE`) a
//! little past API Gateway's 2-hour connection limit, so entries no
//! `$disconnect` ever cleaned up (a crashed function, a lost event) go with
//! the key. While another device keeps the key alive, such a dead entry
//! stays until a post to it answers 410 past the open window, which
//! removes it (compare-and-delete). The `|` separator is safe:
//! [`ConnectionId`] refuses it.
//!
//! Every operation is one Lua script on one key, so it is atomic and safe
//! on a clustered (serverless) cache: `register` compares opening times and
//! never lets an older connection replace a newer one of the same device (a
//! slow `$connect` finishing late); `remove_if` is a compare-and-delete per
//! device, so a stale `$disconnect` or a late 410 never removes a newer
//! connection. A key still holding the single-entry string of a deployment
//! from before devices is read as the device `default`, and turned into the
//! hash's `default` field at the first write.
//!
//! The semantics are exactly [`MemoryRegistry`](courier_core::adapters::memory::MemoryRegistry)'s,
//! and `tests/tests/registry_conformance.rs` holds both to the same cases.
//!
//! On a cluster the key is hashed whole: `ws:` and the id, no hash tag (the
//! `{user_id}` above is notation; ids cannot hold braces). None is needed:
//! no operation touches two keys, so no two keys ever have to share a slot;
//! and a tag shared with `rl:` would only pin a user's two keys to one node
//! for no operation's sake. Whole keys spread users over every master.
//!
//! The connection (lazy, every command bounded by `REDIS_TIMEOUT_MS`,
//! rebuilt after a failure; TLS for `rediss://`; single node or cluster by
//! `REDIS_CLUSTER`) is [`crate::redis_link`]'s. ElastiCache Serverless is
//! cluster-mode only: it needs the cluster client (docs/deploy.md, "Redis
//! client mode").

use async_trait::async_trait;

use courier_core::config::RegistryConfig;
use courier_core::domain::{Connection, ConnectionId, DeviceId, UserId};
use courier_core::ports::{ConnectionRegistry, Registered, RegistryError};

use crate::redis_link::{self, RedisLink};

/// Stores device `ARGV[1]`'s entry `ARGV[2]|ARGV[3]` unless the entry
/// holds another connection opened later (ties: the larger id wins), and
/// sets the key's expiry to `ARGV[4]` ms. 1 if stored, 0 if kept. A
/// pre-devices string value becomes the hash's `default` field first.
const REGISTER_SCRIPT: &str = r"
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  local legacy = redis.call('GET', KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'default', legacy)
end
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local bar = string.find(held, '|', 1, true)
  if bar then
    local id = string.sub(held, 1, bar - 1)
    local at = tonumber(string.sub(held, bar + 1)) or 0
    local new_at = tonumber(ARGV[3]) or 0
    if id ~= ARGV[2] and (at > new_at or (at == new_at and id > ARGV[2])) then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Every device entry of `KEYS[1]` as a flat list (device, value, …); a
/// pre-devices string entry is the device `default`.
const LOOKUP_SCRIPT: &str = r"
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'string' then return {'default', redis.call('GET', KEYS[1])} end
if t == 'hash' then return redis.call('HGETALL', KEYS[1]) end
return {}
";

/// Deletes device `ARGV[1]`'s entry only if it holds connection `ARGV[2]`.
const REMOVE_IF_SCRIPT: &str = r"
local t = redis.call('TYPE', KEYS[1]).ok
local v
if t == 'string' then
  if ARGV[1] ~= 'default' then return 0 end
  v = redis.call('GET', KEYS[1])
elseif t == 'hash' then
  v = redis.call('HGET', KEYS[1], ARGV[1])
end
if not v then return 0 end
local bar = string.find(v, '|', 1, true)
local id = v
if bar then id = string.sub(v, 1, bar - 1) end
if id ~= ARGV[2] then return 0 end
if t == 'string' then return redis.call('DEL', KEYS[1]) end
return redis.call('HDEL', KEYS[1], ARGV[1])
";

/// [`ConnectionRegistry`] over Redis.
pub struct RedisRegistry {
    link: RedisLink,
    config: RegistryConfig,
    register: redis::Script,
    lookup: redis::Script,
    remove_if: redis::Script,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisRegistry")
            .field("cluster", &self.config.cluster)
            .field("ttl", &self.config.ttl)
            .field("timeout", &self.config.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisRegistry {
    /// Parses the URL; connects on first use. Fails only on a malformed URL.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        Ok(Self {
            link: RedisLink::new(&config)?,
            config,
            register: redis::Script::new(REGISTER_SCRIPT),
            lookup: redis::Script::new(LOOKUP_SCRIPT),
            remove_if: redis::Script::new(REMOVE_IF_SCRIPT),
        })
    }

    /// Checks a `REDIS_URL` for single-node (`cluster` false) or cluster
    /// mode without connecting (used by config validation).
    pub fn check_url(url: &str, cluster: bool) -> Result<(), RegistryError> {
        redis_link::check_url(url, cluster)
    }

    pub fn key(user: &UserId) -> String {
        format!("ws:{user}")
    }

    /// An unknown opening time is stored as `0`, as entries written before
    /// it was an `Option` hold it.
    #[cfg(test)]
    fn encode(connection: &Connection) -> String {
        let at = connection.connected_at.unwrap_or(0);
        format!("{}|{at}", connection.connection_id)
    }

    fn decode(user: &UserId, device: &str, raw: &str) -> Result<Connection, RegistryError> {
        let corrupt = || RegistryError(format!("corrupt registry value at ws:{user}"));
        let (id, at) = raw.split_once('|').ok_or_else(corrupt)?;
        Ok(Connection {
            device_id: DeviceId::parse(device).map_err(|_| corrupt())?,
            connection_id: ConnectionId::parse(id).map_err(|_| corrupt())?,
            connected_at: Some(at.parse::<i64>().map_err(|_| corrupt())?).filter(|at| *at > 0),
        })
    }
}

#[async_trait]
impl ConnectionRegistry for RedisRegistry {
    async fn register(
        &self,
        user: &UserId,
        connection: &Connection,
    ) -> Result<Registered, RegistryError> {
        let key = Self::key(user);
        let device = connection.device_id.as_str().to_owned();
        let id = connection.connection_id.as_str().to_owned();
        let at = connection.connected_at.unwrap_or(0);
        // PX rather than EX so a sub-second TTL (tests) is honoured too.
        let ttl_ms = u64::try_from(self.config.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let script = &self.register;
        let stored: i64 = self
            .link
            .run("register", |mut conn| async move {
                script
                    .key(&key)
                    .arg(&device)
                    .arg(&id)
                    .arg(at)
                    .arg(ttl_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(if stored > 0 {
            Registered::Stored
        } else {
            Registered::KeptNewer
        })
    }

    async fn lookup(&self, user: &UserId) -> Result<Vec<Connection>, RegistryError> {
        let key = Self::key(user);
        let script = &self.lookup;
        let flat: Vec<String> = self
            .link
            .run("lookup", |mut conn| async move {
                script
                    .key(&key)
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [device, raw] = pair else {
                return Err(RegistryError(format!("corrupt registry hash at ws:{user}")));
            };
            out.push(Self::decode(user, device, raw)?);
        }
        out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(out)
    }

    async fn remove_if(
        &self,
        user: &UserId,
        device: &DeviceId,
        connection_id: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        let key = Self::key(user);
        let device = device.as_str().to_owned();
        let id = connection_id.as_str().to_owned();
        let script = &self.remove_if;
        let deleted: i64 = self
            .link
            .run("remove_if", |mut conn| async move {
                script
                    .key(&key)
                    .arg(&device)
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
            device_id: DeviceId::parse("phone").unwrap(),
            connection_id: ConnectionId::parse("L0SM9cOFvHcCIhw=").unwrap(),
            connected_at: Some(1_795_000_000_000),
        };
        let raw = RedisRegistry::encode(&c);
        assert_eq!(raw, "L0SM9cOFvHcCIhw=|1795000000000");
        assert_eq!(RedisRegistry::decode(&user, "phone", &raw).unwrap(), c);
        assert!(RedisRegistry::decode(&user, "phone", "no-separator").is_err());
        assert!(RedisRegistry::decode(&user, "phone", "id|not-a-number").is_err());
        assert!(RedisRegistry::decode(&user, "phone", "bad id|1").is_err());
        // Unknown opening time: stored as 0 (as older entries hold it), read
        // back as unknown.
        let unknown = Connection {
            connected_at: None,
            ..c
        };
        let raw = RedisRegistry::encode(&unknown);
        assert_eq!(raw, "L0SM9cOFvHcCIhw=|0");
        assert_eq!(
            RedisRegistry::decode(&user, "phone", &raw).unwrap(),
            unknown
        );
    }

    #[test]
    fn construction_needs_no_server_and_refuses_bad_urls() {
        // Nothing listens on port 1: building must not care.
        assert!(RedisRegistry::new(RegistryConfig::new("redis://127.0.0.1:1")).is_ok());
        assert!(RedisRegistry::new(RegistryConfig::new("rediss://cache.example:6379")).is_ok());
        assert!(RedisRegistry::check_url("http://nope", false).is_err());
        assert!(RedisRegistry::check_url("not a url", true).is_err());
    }
}
