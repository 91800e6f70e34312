//! Per-user rate limiting of sends on Redis: the token bucket of
//! `courier_core::adapters::rate_limit`, shared by every execution
//! environment.
//!
//! The whole read-refill-take-write is one Lua script on one key
//! (`rl:{user_id}`), so concurrent sends of one user in many Lambda
//! environments can never take more tokens than the bucket had, and the
//! script is safe on a clustered (serverless) cache. The clock is Redis's own
//! (`TIME`), so execution environments with skewed clocks share one notion
//! of "now". The key expires once a full bucket would have refilled: an idle
//! user costs no memory.
//!
//! The connection is the registry's kind ([`crate::redis_link`]): bounded by
//! `REDIS_TIMEOUT_MS`, never touching the network at construction, rebuilt
//! after a failure, single node or cluster by `REDIS_CLUSTER`. The script
//! names its one key as `KEYS[1]`, so a cluster client sends it to the
//! master of that key's slot; no hash tag is needed for a single key.

use std::time::Duration;

use async_trait::async_trait;
use courier_core::config::{RateLimitConfig, RegistryConfig};
use courier_core::domain::UserId;
use courier_core::ports::{RateDecision, RateLimiter, RegistryError};

use crate::redis_link::RedisLink;

/// KEYS[1] = bucket; ARGV = per_sec, burst. Returns {allowed, retry_after_ms}.
const TAKE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1])
local at = tonumber(v[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
";

/// The token bucket on Redis.
pub struct RedisRateLimiter {
    link: RedisLink,
    limits: RateLimitConfig,
    script: redis::Script,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisRateLimiter")
            .field("limits", &self.limits)
            .field("timeout", &self.link.timeout())
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// Parses the URL; connects on first use.
    pub fn new(redis: &RegistryConfig, limits: RateLimitConfig) -> Result<Self, RegistryError> {
        Ok(Self {
            link: RedisLink::new(redis)?,
            limits,
            script: redis::Script::new(TAKE_SCRIPT),
        })
    }

    pub fn key(user: &UserId) -> String {
        format!("rl:{user}")
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(&self, user: &UserId) -> Result<RateDecision, RegistryError> {
        if !self.limits.enabled() {
            return Ok(RateDecision::Allowed);
        }
        let key = Self::key(user);
        let (per_sec, burst) = (self.limits.per_sec, self.limits.burst);
        let script = &self.script;
        let (allowed, wait_ms) = self
            .link
            .run("rate limit", |mut conn| async move {
                script
                    .key(&key)
                    .arg(per_sec)
                    .arg(burst)
                    .invoke_async::<(i64, i64)>(&mut conn)
                    .await
            })
            .await?;
        Ok(if allowed == 1 {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
            }
        })
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn construction_needs_no_server() {
        let r = RedisRateLimiter::new(
            &RegistryConfig::new("redis://127.0.0.1:1"),
            RateLimitConfig::default(),
        );
        assert!(r.is_ok());
        assert_eq!(
            RedisRateLimiter::key(&UserId::parse("bob").unwrap()),
            "rl:bob"
        );
    }
}
